//! The plugin bus: the Bus API server (`tether bus serve`) on a durable store.
//!
//! - [`topic`]: topics and NATS-style patterns (pure);
//! - [`policy`]: the policy file, validated with positions, and the grant decision;
//! - [`store`]: the [`store::Store`] trait and the embedded redb implementation;
//! - `nats` (feature `nats`): the store on NATS JetStream;
//! - [`server`]: the tonic `BusApi` server;
//! - [`http`]: a small HTTP/1 server for `/healthz`, `/readyz` and `/metrics`;
//! - [`tls`]: the server's certificate and key, and [`tls::client_tls`] for clients.
//!
//! - [`sidecar`]: the bus sidecar (`tether sidecar`), the plugin's side of the bus.

pub mod file_error;
pub mod http;
#[cfg(feature = "nats")]
pub mod nats;
pub mod policy;
pub mod server;
pub mod sidecar;
pub mod store;
pub mod tls;
pub mod topic;

pub use server::{Backend, Bound, Metrics, Options, ServeError, Stopped, bind, serve};

/// An error and its sources on one line, each part once (transport errors repeat their
/// source's text).
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}
