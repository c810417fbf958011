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

pub mod client;
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
    causes(&e.to_string(), e.source())
}

/// `first`, then each of `source`'s chain once, on one line; tonic's generic `transport error`
/// is left out when a cause follows it (it says nothing they do not).
pub(crate) fn causes(
    first: &str,
    mut source: Option<&(dyn std::error::Error + 'static)>,
) -> String {
    let mut parts: Vec<String> = Vec::new();
    if !first.is_empty() {
        parts.push(first.to_owned());
    }
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    if parts.len() > 1 {
        parts.retain(|p| p != "transport error");
    }
    parts.join(": ")
}
