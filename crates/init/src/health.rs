//! The health endpoint: `/healthz`, `/readyz` and `/status`, served from the supervisor's latest
//! snapshot; and, with `health.control: true`, the control operations as JSON over HTTP
//! (`POST /control`, served by [`crate::control`]).

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::control::Handle;

/// What the endpoint reports, replaced by the supervisor after every change.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// `steps`, `starting`, `running`, `stopping`.
    pub phase: &'static str,
    pub daemons: Vec<DaemonStatus>,
    /// When supervision began: `since` counts from here.
    pub began: Option<Instant>,
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
    /// When its process started, counted from the beginning of supervision.
    pub since: Option<Duration>,
    /// At rest after a requested operation: running, backing off, or done.
    pub settled: bool,
    /// No longer declared (a reload), still stopping.
    pub removed: bool,
}

pub type Shared = watch::Receiver<Snapshot>;

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
            "daemons": self.daemons.iter().map(|d| self.daemon_json(d)).collect::<Vec<_>>(),
        })
    }

    /// How long a daemon's process has been running.
    pub fn uptime(&self, d: &DaemonStatus) -> Option<Duration> {
        let began = self.began?;
        Some(began.elapsed().saturating_sub(d.since?))
    }

    pub fn daemon_json(&self, d: &DaemonStatus) -> Value {
        json!({
            "name": d.name,
            "state": d.state,
            "pid": d.pid,
            "uptime_ms": self.uptime(d).map(|u| u.as_millis() as u64),
            "restarts": d.restarts,
            "last_exit": d.last_exit,
            "ready": d.ready,
        })
    }
}

/// Binds now (so a taken port is reported before anything starts) and serves in the background.
/// `control`: the control operations are served on `/control` too.
pub async fn serve(listen: &str, shared: Shared, control: Option<Handle>) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let shared = shared.clone();
            let control = control.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let shared = shared.clone();
                    let control = control.clone();
                    async move {
                        if req.uri().path() == "/control"
                            || req.uri().path().starts_with("/control/")
                        {
                            return Ok::<_, Infallible>(control_answer(req, control).await);
                        }
                        Ok::<_, Infallible>(answer(&req, &shared))
                    }
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
    let snap = shared.borrow().clone();
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

/// The largest request body `/control` reads.
const MAX_BODY: usize = 64 * 1024;

/// `POST /control` with one request object (as `tether ctl` sends on the socket); the answer is
/// the object `tether ctl --json` prints, with the status code saying how it went.
async fn control_answer(
    req: Request<hyper::body::Incoming>,
    control: Option<Handle>,
) -> Response<Full<Bytes>> {
    let Some(control) = control else {
        return reply(
            StatusCode::FORBIDDEN,
            json!({"error": "control over HTTP is off", "hint": "declare `init.health.control: true`, or use `tether ctl` on the control socket"}),
        );
    };
    if req.method() != Method::POST {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"error": "use POST with a JSON request, for example {\"op\": \"status\"}"}),
        );
    }
    let body = match http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({"error": format!("cannot read the request: {e}")}),
            );
        }
    };
    let answer = control.answer_whole(&body).await;
    let status = match answer.get("code").and_then(Value::as_u64) {
        Some(0) => StatusCode::OK,
        Some(1) => StatusCode::BAD_REQUEST,
        Some(3) => StatusCode::CONFLICT,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    reply(status, answer)
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
