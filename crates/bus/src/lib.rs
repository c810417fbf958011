//! The plugin bus: the Bus API server (`tether bus serve`) on a durable store.
//!
//! - [`topic`]: topics and NATS-style patterns (pure);
//! - [`policy`]: the policy file, validated with positions, and the grant decision;
//! - [`store`]: the [`store::Store`] trait and the embedded redb implementation;
//! - [`server`]: the tonic `BusApi` server.
//!
//! - [`sidecar`]: the bus sidecar (`tether sidecar`), the plugin's side of the bus.

pub mod file_error;
pub mod policy;
pub mod server;
pub mod sidecar;
pub mod store;
pub mod topic;

pub use server::{Bound, Options, ServeError, bind, serve};
