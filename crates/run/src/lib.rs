//! `tether run`: sidecars on a container engine, gated on readiness, beside a workload.

pub mod launch;
pub mod ps;
pub mod run;
pub mod session;
