//! `tether run`: sidecars on a container engine, gated on readiness, beside a workload.

mod credentials;
pub mod docker;
pub mod engine;
pub mod fake;
pub mod launch;
pub mod ps;
pub mod run;
pub mod session;
