//! The health endpoint: `/healthz`, `/readyz` and `/status`, served from the supervisor's latest
//! snapshot.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// What the endpoint reports, replaced by the supervisor after every change.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// `steps`, `starting`, `running`, `stopping`.
    pub phase: &'static str,
    pub daemons: Vec<DaemonStatus>,
}

#[derive(Clone, Debug)]
pub struct DaemonStatus {
    pub name: String,
    pub state: &'static str,
    pub pid: Option<i32>,
    pub restarts: u32,
    pub last_exit: Option<String>,
    /// `None`: the daemon has no readiness check.
    pub ready: Option<bool>,
    /// Counts against `/readyz` while not ready.
    pub awaited: bool,
}

pub type Shared = Arc<Mutex<Snapshot>>;

impl Snapshot {
    pub fn not_ready(&self) -> Vec<Value> {
        self.daemons
            .iter()
            .filter(|d| d.awaited && d.ready != Some(true))
            .map(|d| json!({"name": d.name, "state": d.state}))
            .collect()
    }

    pub fn is_ready(&self) -> bool {
        self.phase == "running" && self.not_ready().is_empty()
    }

    pub fn status(&self) -> Value {
        json!({
            "phase": self.phase,
            "ready": self.is_ready(),
            "daemons": self.daemons.iter().map(|d| json!({
                "name": d.name,
                "state": d.state,
                "pid": d.pid,
                "restarts": d.restarts,
                "last_exit": d.last_exit,
                "ready": d.ready,
            })).collect::<Vec<_>>(),
        })
    }
}

/// Binds now (so a taken port is reported before anything starts) and serves in the background.
pub async fn serve(listen: &str, shared: Shared) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(answer(&req, &shared)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(())
}

fn answer<B>(req: &Request<B>, shared: &Shared) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, json!({"error": "use GET"}));
    }
    let snap = shared.lock().unwrap_or_else(|e| e.into_inner()).clone();
    match req.uri().path() {
        "/healthz" => reply(StatusCode::OK, json!({"alive": true, "phase": snap.phase})),
        "/readyz" => {
            if snap.is_ready() {
                reply(StatusCode::OK, json!({"ready": true}))
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"ready": false, "phase": snap.phase, "not_ready": snap.not_ready()}),
                )
            }
        }
        "/status" | "/" => reply(StatusCode::OK, snap.status()),
        _ => reply(
            StatusCode::NOT_FOUND,
            json!({"error": "not found", "paths": ["/healthz", "/readyz", "/status"]}),
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
