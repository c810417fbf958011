//! `/healthz` and `/readyz` of the sidecar, as Kubernetes probes read them.
//!
//! - `/healthz`: 200 while the sidecar runs and the plugin answers health checks; 503 after
//!   `health_failures` (3) failed checks in a row, so a liveness probe restarts a hung plugin.
//! - `/readyz`: 200 only when registered, grants recovered, the plugin connected and healthy,
//!   and not draining; a 503 names what is missing in JSON.
//! - `/readyz?bus`: only the sidecar's own part (registered, grants recovered): what a
//!   Kubernetes startupProbe of a native sidecar can wait for before the plugin starts.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use super::route::{Readiness, Router};

/// Binds `addr` and serves in the background; answers the bound address.
pub async fn serve(router: Router, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let router = router.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let r = router.readiness();
                    async move { Ok::<_, Infallible>(answer(&req, &r)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(local)
}

fn answer<B>(req: &Request<B>, r: &Readiness) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, json!({"error": "use GET"}));
    }
    match req.uri().path() {
        "/healthz" => {
            let body = json!({
                "alive": r.live(),
                "failed_checks": r.failures,
                "limit": r.failure_limit,
            });
            let code = if r.live() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            reply(code, body)
        }
        "/readyz" => {
            let only_bus = req.uri().query() == Some("bus");
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
            let code = if missing.is_empty() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            reply(code, body)
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            json!({"error": "not found", "paths": ["/healthz", "/readyz"]}),
        ),
    }
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut text = body.to_string();
    text.push('\n');
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(text)))
        .expect("a static response is valid")
}
