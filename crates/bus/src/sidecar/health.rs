//! `/healthz`, `/readyz` and `/metrics` of the sidecar, as Kubernetes probes and Prometheus read
//! them, on [`crate::http`].
//!
//! - `/healthz`: 200 while the sidecar runs and the plugin answers health checks; 503 after
//!   `health_failures` (3) failed checks in a row, so a liveness probe restarts a hung plugin.
//! - `/readyz`: 200 only when registered, grants recovered, the plugin connected and healthy,
//!   and not draining; a 503 names what is missing in JSON.
//! - `/readyz?bus`: only the sidecar's own part (registered, grants recovered): what a
//!   Kubernetes startupProbe of a native sidecar can wait for before the plugin starts.
//! - `/metrics`: what the sidecar counted, in the Prometheus text format (`metrics.rs`).

use std::net::SocketAddr;

use serde_json::json;
use tokio::net::TcpListener;

use super::route::{Readiness, Router};
use crate::http::{Method, Reply};

/// Binds `addr` and serves in the background; answers the bound address.
pub async fn serve(router: Router, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let routes = move |_: &Method, path: &str, query: Option<&str>| match path {
        "/metrics" => Reply {
            status: 200,
            content_type: crate::http::PROMETHEUS,
            body: router.metrics(),
        },
        _ => answer(path, query, &router.readiness()),
    };
    tokio::spawn(crate::http::serve(listener, routes, std::future::pending()));
    Ok(local)
}

fn answer(path: &str, query: Option<&str>, r: &Readiness) -> Reply {
    let code = |ok: bool| if ok { 200 } else { 503 };
    match path {
        "/healthz" => {
            let body = json!({
                "alive": r.live(),
                "failed_checks": r.failures,
                "limit": r.failure_limit,
            });
            Reply::json(code(r.live()), format!("{body}\n"))
        }
        "/readyz" => {
            let only_bus = query == Some("bus");
            let missing: Vec<&str> = r
                .missing()
                .into_iter()
                .filter(|m| !only_bus || matches!(*m, "registered" | "grants_recovered"))
                .collect();
            let body = json!({
                "ready": missing.is_empty(),
                "missing": missing,
                "registered": r.registered,
                "grants_recovered": r.grants_recovered,
                "plugin_connected": r.plugin_connected,
                "plugin_healthy": r.plugin_healthy,
                "draining": r.draining,
            });
            Reply::json(code(missing.is_empty()), format!("{body}\n"))
        }
        other => Reply::not_found(other),
    }
}
