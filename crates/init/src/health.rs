//! The health endpoint: `/healthz`, `/readyz` and `/status`, served from the supervisor's latest
//! snapshot; and, with `health.control: true`, the control operations as JSON over HTTP
//! (`POST /control`, served by [`crate::control`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::timeout;

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

/// How long a client has to send a request's head, and again its body: a connection that sends
/// nothing, or too slowly, is closed then.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a kept-alive connection may wait for its next request before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once; one more is answered 503 (when that fits the socket at once)
/// and closed, so idle clients cannot take every file descriptor of PID 1.
pub const MAX_CONNECTIONS: usize = 64;
/// The pause after accept() failed for want of a resource (EMFILE, ENFILE, ENOBUFS, ENOMEM), so
/// that a listener out of file descriptors waits instead of spinning.
pub const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// The listener's limits: [`HEAD_TIMEOUT`], [`IDLE_TIMEOUT`] and [`MAX_CONNECTIONS`] unless a
/// test says otherwise.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub head: Duration,
    pub idle: Duration,
    pub connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            head: HEAD_TIMEOUT,
            idle: IDLE_TIMEOUT,
            connections: MAX_CONNECTIONS,
        }
    }
}

/// Binds now (so a taken port is reported before anything starts) and serves in the background.
/// `control`: the control operations are served on `/control` too.
pub async fn serve(listen: &str, shared: Shared, control: Option<Handle>) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    tokio::spawn(accept(listener, shared, control, Limits::default()));
    Ok(())
}

/// Accepts connections for ever, each served on a task of its own while a slot is free.
async fn accept(listener: TcpListener, shared: Shared, control: Option<Handle>, limits: Limits) {
    let slots = Arc::new(Semaphore::new(limits.connections));
    let mut errors = AcceptErrors::default();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                errors.failed(&e, "the health listener").await;
                continue;
            }
        };
        errors.accepted();
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Not read: the answer goes out at once if it fits, and the socket is closed.
            let _ = stream.try_write(BUSY);
            continue;
        };
        let (shared, control) = (shared.clone(), control.clone());
        tokio::spawn(async move {
            connection(stream, shared, control, limits).await;
            drop(slot);
        });
    }
}

/// The answer to a connection over [`MAX_CONNECTIONS`].
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 33\r\nconnection: close\r\n\r\n{\"error\":\"too many connections\"}\n";

/// What a listener does after accept() failed: at once again when only that connection was
/// lost; else after [`ACCEPT_PAUSE`], saying so once until a connection is accepted again.
#[derive(Debug, Default)]
pub(crate) struct AcceptErrors {
    said: bool,
}

/// The decision of [`AcceptErrors::after`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct AfterError {
    pub pause: Option<Duration>,
    pub say: bool,
}

impl AcceptErrors {
    pub(crate) fn accepted(&mut self) {
        self.said = false;
    }

    pub(crate) fn after(&mut self, e: &std::io::Error) -> AfterError {
        use std::io::ErrorKind::{ConnectionAborted, ConnectionReset, Interrupted};
        if matches!(e.kind(), ConnectionAborted | ConnectionReset | Interrupted) {
            return AfterError {
                pause: None,
                say: false,
            };
        }
        AfterError {
            pause: Some(ACCEPT_PAUSE),
            say: !std::mem::replace(&mut self.said, true),
        }
    }

    /// [`Self::after`], carried out.
    pub(crate) async fn failed(&mut self, e: &std::io::Error, what: &str) {
        let after = self.after(e);
        if after.say {
            tracing::warn!(
                "{what}: cannot accept a connection: {}; trying again every {} ms",
                tether_probe::plain(e),
                ACCEPT_PAUSE.as_millis()
            );
        }
        if let Some(pause) = after.pause {
            tokio::time::sleep(pause).await;
        }
    }
}

/// The largest request body `/control` reads.
const MAX_BODY: usize = 64 * 1024;

/// One HTTP/1 connection: requests in turn, while the client keeps it open (HTTP/1.1 unless
/// `connection: close`; HTTP/1.0 with `connection: keep-alive`), each head within
/// `limits.head` and each next request begun within `limits.idle`.
async fn connection(stream: TcpStream, shared: Shared, control: Option<Handle>, limits: Limits) {
    let mut stream = BufReader::new(stream);
    let mut first = true;
    loop {
        // A kept-alive connection waits for the first byte of its next request.
        if !std::mem::take(&mut first) {
            match timeout(limits.idle, stream.fill_buf()).await {
                Ok(Ok(bytes)) if !bytes.is_empty() => {}
                _ => return,
            }
        }
        let head = match timeout(limits.head, tether_probe::read_head(&mut stream)).await {
            Err(_) | Ok(Ok(None)) => return,
            Ok(Ok(Some(head))) => head,
            Ok(Err(e)) => {
                let status = if e.kind() == std::io::ErrorKind::InvalidData {
                    431
                } else {
                    400
                };
                let _ = send(&mut stream, &Head::bad(), status, None, limits).await;
                return;
            }
        };
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        let Ok(httparse::Status::Complete(_)) = req.parse(&head) else {
            let _ = send(&mut stream, &Head::bad(), 400, None, limits).await;
            return;
        };
        let head = match Head::of(&req) {
            Ok(head) => head,
            Err((status, why)) => {
                let _ = send(
                    &mut stream,
                    &Head::bad(),
                    status,
                    Some(json!({"error": why})),
                    limits,
                )
                .await;
                return;
            }
        };
        let (status, body) = if head.path == "/control" || head.path.starts_with("/control/") {
            match timeout(limits.head, read_body(&mut stream, &head)).await {
                Err(_) => return,
                Ok(Ok(body)) => control_answer(&head.method, &body, control.as_ref()).await,
                Ok(Err((status, why))) => {
                    let why = json!({"error": format!("cannot read the request: {why}")});
                    let _ = send(&mut stream, &head.closing(), status, Some(why), limits).await;
                    return;
                }
            }
        } else {
            answer(&head.method, &head.path, &shared)
        };
        // An unread body would be taken for the next request.
        let head = if head.body { head.closing() } else { head };
        if !send(&mut stream, &head, status, Some(body), limits).await || !head.keep_alive {
            return;
        }
    }
}

/// [`respond`] within `limits.head`: whether the answer went out.
async fn send(
    stream: &mut BufReader<TcpStream>,
    head: &Head,
    status: u16,
    body: Option<Value>,
    limits: Limits,
) -> bool {
    matches!(
        timeout(limits.head, respond(stream, head, status, body)).await,
        Ok(Ok(()))
    )
}

/// What a request said that its answer depends on.
struct Head {
    method: String,
    /// Without the query, as for `GET http://host/path?q` too.
    path: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    version: u8,
    keep_alive: bool,
    /// `content-length` (not 0) or `transfer-encoding` came with it.
    body: bool,
    length: Option<usize>,
    chunked: bool,
    expects_continue: bool,
}

impl Head {
    /// `Err`: the status and the reason a request is refused (and its connection closed) for
    /// how it says where its body ends (RFC 9112 6.1 and 6.3).
    fn of(req: &httparse::Request) -> Result<Head, (u16, &'static str)> {
        let target = req.path.unwrap_or("/");
        let target = match target.strip_prefix("http://") {
            Some(rest) => rest.find('/').map_or("/", |i| &rest[i..]),
            None => target,
        };
        let path = target.split('?').next().unwrap_or_default().to_owned();
        let version = req.version.unwrap_or(1);
        // Each comma-separated value of every header `name`.
        let tokens = |name: &str| -> Vec<String> {
            req.headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .flat_map(|h| {
                    String::from_utf8_lossy(h.value)
                        .split(',')
                        .map(|t| t.trim().to_ascii_lowercase())
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let has = |name: &str, token: &str| tokens(name).iter().any(|t| t == token);
        // `content-length: 5, 5` (or twice the same) is one length; two different ones are not.
        let mut length = None;
        for v in tokens("content-length") {
            let n = v
                .parse::<usize>()
                .map_err(|_| (400, "content-length is not a number"))?;
            if length.is_some_and(|l| l != n) {
                return Err((400, "two different content-length values"));
            }
            length = Some(n);
        }
        let codings = tokens("transfer-encoding");
        let chunked = !codings.is_empty();
        if chunked && length.is_some() {
            return Err((400, "both content-length and transfer-encoding"));
        }
        match codings.iter().position(|c| c == "chunked") {
            _ if !chunked => {}
            Some(i) if i + 1 == codings.len() && codings.len() == 1 => {}
            Some(i) if i + 1 == codings.len() => {
                return Err((501, "transfer-encoding other than chunked"));
            }
            _ => return Err((400, "transfer-encoding whose last coding is not chunked")),
        }
        Ok(Head {
            method: req.method.unwrap_or_default().to_owned(),
            path,
            version,
            keep_alive: if version == 0 {
                has("connection", "keep-alive")
            } else {
                !has("connection", "close")
            },
            body: chunked || length.is_some_and(|n| n > 0),
            length,
            chunked,
            expects_continue: has("expect", "100-continue"),
        })
    }

    /// For a request that could not be read.
    fn bad() -> Head {
        Head {
            method: String::new(),
            path: String::new(),
            version: 1,
            keep_alive: false,
            body: false,
            length: None,
            chunked: false,
            expects_continue: false,
        }
    }

    fn closing(self) -> Head {
        Head {
            keep_alive: false,
            ..self
        }
    }
}

/// Reads a request's body, `content-length` or chunked, up to [`MAX_BODY`]; `100 Continue`
/// first when the client waits for it and the length is not already over the limit. `Err`:
/// the status to answer (413 over the limit, 400 unreadable) and why.
async fn read_body(
    stream: &mut BufReader<TcpStream>,
    head: &Head,
) -> Result<Vec<u8>, (u16, String)> {
    let too_large = || (413, format!("the body is over {MAX_BODY} bytes"));
    let unreadable = |e: std::io::Error| (400, tether_probe::plain(&e));
    if !head.body {
        return Ok(Vec::new());
    }
    if head.length.is_some_and(|n| n > MAX_BODY) {
        return Err(too_large());
    }
    if head.expects_continue {
        let version = if head.version == 0 { "1.0" } else { "1.1" };
        let line = format!("HTTP/{version} 100 Continue\r\n\r\n");
        stream
            .get_mut()
            .write_all(line.as_bytes())
            .await
            .map_err(unreadable)?;
    }
    if let (false, Some(n)) = (head.chunked, head.length) {
        let mut body = vec![0; n];
        stream.read_exact(&mut body).await.map_err(unreadable)?;
        return Ok(body);
    }
    let mut body = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        (&mut *stream)
            .take(1024)
            .read_until(b'\n', &mut line)
            .await
            .map_err(unreadable)?;
        let Ok(httparse::Status::Complete((_, size))) = httparse::parse_chunk_size(&line) else {
            return Err((400, "bad chunk size".into()));
        };
        if size == 0 {
            // Trailers, through the empty line.
            loop {
                line.clear();
                (&mut *stream)
                    .take(8192)
                    .read_until(b'\n', &mut line)
                    .await
                    .map_err(unreadable)?;
                if line.is_empty() || line == b"\r\n" || line == b"\n" {
                    return Ok(body);
                }
            }
        }
        if body.len() as u64 + size > MAX_BODY as u64 {
            return Err(too_large());
        }
        let at = body.len();
        body.resize(at + size as usize, 0);
        stream
            .read_exact(&mut body[at..])
            .await
            .map_err(unreadable)?;
        let mut end = [0u8; 2];
        stream.read_exact(&mut end).await.map_err(unreadable)?;
        if &end != b"\r\n" {
            return Err((400, "bad chunk end".into()));
        }
    }
}

/// Writes one answer: JSON (none for HEAD), with `content-length` and `date`.
async fn respond(
    stream: &mut BufReader<TcpStream>,
    head: &Head,
    status: u16,
    body: Option<Value>,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        // The reason phrase is optional (RFC 9112 4): none rather than a wrong one.
        _ => "",
    };
    let text = body.map(|b| b.to_string() + "\n").unwrap_or_default();
    let version = if head.version == 0 { "1.0" } else { "1.1" };
    let connection = match (head.keep_alive, head.version) {
        (false, _) => "connection: close\r\n",
        (true, 0) => "connection: keep-alive\r\n",
        (true, _) => "",
    };
    let kind = if text.is_empty() {
        ""
    } else {
        "content-type: application/json\r\n"
    };
    let mut out = format!(
        "HTTP/{version} {status} {reason}\r\n{kind}content-length: {}\r\n{connection}date: {}\r\n\r\n",
        text.len(),
        httpdate::fmt_http_date(std::time::SystemTime::now()),
    );
    if head.method != "HEAD" {
        out.push_str(&text);
    }
    let stream = stream.get_mut();
    stream.write_all(out.as_bytes()).await?;
    stream.flush().await
}

fn answer(method: &str, path: &str, shared: &Shared) -> (u16, Value) {
    if method != "GET" && method != "HEAD" {
        return (405, json!({"error": "use GET"}));
    }
    let snap = shared.borrow().clone();
    match path {
        "/healthz" => (200, json!({"alive": true, "phase": snap.phase})),
        "/readyz" => {
            if snap.is_ready() {
                (200, json!({"ready": true}))
            } else {
                (
                    503,
                    json!({"ready": false, "phase": snap.phase, "not_ready": snap.not_ready()}),
                )
            }
        }
        "/status" | "/" => (200, snap.status()),
        _ => (
            404,
            json!({"error": "not found", "paths": ["/healthz", "/readyz", "/status"]}),
        ),
    }
}

/// `POST /control` with one request object (as `tether ctl` sends on the socket); the answer is
/// the object `tether ctl --json` prints, with the status code saying how it went.
async fn control_answer(method: &str, body: &[u8], control: Option<&Handle>) -> (u16, Value) {
    let Some(control) = control else {
        return (
            403,
            json!({"error": "control over HTTP is off", "hint": "declare `init.health.control: true`, or use `tether ctl` on the control socket"}),
        );
    };
    if method != "POST" {
        return (
            405,
            json!({"error": "use POST with a JSON request, for example {\"op\": \"status\"}"}),
        );
    }
    let answer = control.answer_whole(body).await;
    let status = match answer.get("code").and_then(Value::as_u64) {
        Some(0) => 200,
        Some(1) => 400,
        Some(3) => 409,
        _ => 503,
    };
    (status, answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A health listener on a free port with one daemon `db`, running; control over HTTP on.
    async fn listener() -> std::net::SocketAddr {
        listener_with(Limits::default()).await
    }

    /// The same, with these limits.
    async fn listener_with(limits: Limits) -> std::net::SocketAddr {
        let snapshot = Snapshot {
            phase: "running",
            daemons: vec![DaemonStatus {
                name: "db".into(),
                state: "running",
                pid: Some(42),
                restarts: 0,
                last_exit: None,
                ready: Some(true),
                awaited: true,
                since: None,
                settled: true,
                removed: false,
            }],
            began: None,
        };
        let (keep, snapshots) = watch::channel(snapshot);
        std::mem::forget(keep);
        let (asks, _) = tokio::sync::mpsc::unbounded_channel();
        let control = Handle {
            asks,
            snapshots: snapshots.clone(),
            rings: Default::default(),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(accept(listener, snapshots, Some(control), limits));
        addr
    }

    /// One answer: its head (status line and headers, lower-cased names) and its body, read
    /// by its content-length (none for HEAD).
    async fn read_answer(s: &mut BufReader<TcpStream>, head_only: bool) -> (String, String) {
        let head = tether_probe::read_head(s)
            .await
            .unwrap()
            .expect("an answer");
        let head = String::from_utf8(head).unwrap().to_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map_or(0, |n| n.trim().parse().unwrap());
        let mut body = vec![0; if head_only { 0 } else { length }];
        s.read_exact(&mut body).await.unwrap();
        (head, String::from_utf8(body).unwrap())
    }

    async fn connect(addr: std::net::SocketAddr) -> BufReader<TcpStream> {
        BufReader::new(TcpStream::connect(addr).await.unwrap())
    }

    /// Whether the server hung up: the next read finds the end of the stream (or a reset, when
    /// it closed before reading what was sent). A server that never does fails the test after
    /// a minute.
    async fn closed(s: &mut BufReader<TcpStream>) -> bool {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut rest))
            .await
            .expect("the server did not close the connection within a minute");
        match read {
            Ok(_) => rest.is_empty(),
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }

    /// Whether the server hung up on a new connection that sent `bytes` and nothing more.
    async fn sent_then_closed(addr: std::net::SocketAddr, bytes: &[u8]) -> bool {
        let mut s = connect(addr).await;
        s.get_mut().write_all(bytes).await.unwrap();
        closed(&mut s).await
    }

    #[tokio::test]
    async fn requests_follow_each_other_on_one_connection_until_close() {
        let addr = listener().await;
        let mut s = connect(addr).await;
        // Two requests sent at once, then a third that closes.
        let pipelined =
            "GET /healthz HTTP/1.1\r\nhost: x\r\n\r\nGET /readyz?x=1 HTTP/1.1\r\nhost: x\r\n\r\n";
        s.get_mut().write_all(pipelined.as_bytes()).await.unwrap();
        let (head, body) = read_answer(&mut s, false).await;
        assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
        assert!(
            head.contains("content-type: application/json\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\ndate: "), "{head}");
        assert_eq!(body, "{\"alive\":true,\"phase\":\"running\"}\n");
        let (head, body) = read_answer(&mut s, false).await;
        assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
        assert_eq!(body, "{\"ready\":true}\n");
        s.get_mut()
            .write_all(b"GET /nope HTTP/1.1\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let (head, body) = read_answer(&mut s, false).await;
        assert!(head.starts_with("http/1.1 404 not found\r\n"), "{head}");
        assert!(head.contains("connection: close\r\n"), "{head}");
        assert!(body.contains("\"paths\""), "{body}");
        assert!(closed(&mut s).await);
    }

    #[tokio::test]
    async fn head_has_the_length_without_the_body_and_http_1_0_closes() {
        let addr = listener().await;
        let mut s = connect(addr).await;
        s.get_mut()
            .write_all(b"HEAD /healthz HTTP/1.0\r\n\r\n")
            .await
            .unwrap();
        let (head, body) = read_answer(&mut s, true).await;
        assert!(head.starts_with("http/1.0 200 ok\r\n"), "{head}");
        let json = "{\"alive\":true,\"phase\":\"running\"}\n";
        assert!(
            head.contains(&format!("content-length: {}\r\n", json.len())),
            "{head}"
        );
        assert_eq!(body, "");
        assert!(closed(&mut s).await);
        let mut s = connect(addr).await;
        s.get_mut()
            .write_all(b"POST /status HTTP/1.1\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        let (head, body) = read_answer(&mut s, false).await;
        assert!(
            head.starts_with("http/1.1 405 method not allowed\r\n"),
            "{head}"
        );
        assert_eq!(body, "{\"error\":\"use GET\"}\n");
    }

    #[tokio::test]
    async fn control_reads_a_chunked_body_after_100_continue() {
        let addr = listener().await;
        let mut s = connect(addr).await;
        s.get_mut()
            .write_all(
                b"POST /control HTTP/1.1\r\nexpect: 100-continue\r\ntransfer-encoding: chunked\r\n\r\n",
            )
            .await
            .unwrap();
        let go_on = tether_probe::read_head(&mut s).await.unwrap().unwrap();
        assert_eq!(go_on, b"HTTP/1.1 100 Continue\r\n\r\n");
        s.get_mut()
            .write_all(b"6\r\n{\"op\":\r\na; ext=1\r\n \"status\"}\r\n0\r\n\r\n")
            .await
            .unwrap();
        let (head, body) = read_answer(&mut s, false).await;
        assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["ok"], true, "{body}");
        assert_eq!(v["daemons"][0]["name"], "db", "{body}");
        assert_eq!(v["daemons"][0]["pid"], 42, "{body}");
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_413_before_100_continue_and_a_bad_request_400() {
        let addr = listener().await;
        let mut s = connect(addr).await;
        let over = MAX_BODY + 1;
        s.get_mut()
            .write_all(
                format!("POST /control HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: {over}\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
        // The refusal, not `100 Continue`, is the first answer.
        let (head, body) = read_answer(&mut s, false).await;
        assert!(
            head.starts_with("http/1.1 413 content too large\r\n"),
            "{head}"
        );
        assert!(head.contains("connection: close\r\n"), "{head}");
        assert_eq!(
            body,
            "{\"error\":\"cannot read the request: the body is over 65536 bytes\"}\n"
        );
        assert!(closed(&mut s).await);
        let chunked = "transfer-encoding: chunked";
        for (bad, why) in [
            ("GET /healthz\r\n\r\n", None),
            (
                "GET /healthz HTTP/1.1\r\ncontent-length: ten\r\n\r\n",
                Some("content-length is not a number"),
            ),
            // RFC 9112 6.1: a request smuggled past one reader of its length and not another.
            (
                &format!("POST /control HTTP/1.1\r\ncontent-length: 5\r\n{chunked}\r\n\r\n"),
                Some("both content-length and transfer-encoding"),
            ),
            (
                &format!("POST /control HTTP/1.1\r\n{chunked}\r\ncontent-length: 0\r\n\r\n"),
                Some("both content-length and transfer-encoding"),
            ),
            (
                "POST /control HTTP/1.1\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
                Some("two different content-length values"),
            ),
            (
                "POST /control HTTP/1.1\r\ncontent-length: 5, 6\r\n\r\n",
                Some("two different content-length values"),
            ),
            (
                "POST /control HTTP/1.1\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
                Some("transfer-encoding whose last coding is not chunked"),
            ),
        ] {
            let mut s = connect(addr).await;
            s.get_mut().write_all(bad.as_bytes()).await.unwrap();
            let (head, body) = read_answer(&mut s, false).await;
            assert!(
                head.starts_with("http/1.1 400 bad request\r\n"),
                "{bad:?}: {head}"
            );
            assert!(head.contains("connection: close\r\n"), "{bad:?}: {head}");
            match why {
                Some(why) => assert_eq!(body, format!("{{\"error\":\"{why}\"}}\n"), "{bad:?}"),
                None => assert_eq!(body, "", "{bad:?}"),
            }
            assert!(closed(&mut s).await, "{bad:?}");
        }
        // The same length twice is one length.
        let mut s = connect(addr).await;
        s.get_mut()
            .write_all(
                b"GET /healthz HTTP/1.1\r\ncontent-length: 0, 0\r\ncontent-length: 0\r\n\r\n",
            )
            .await
            .unwrap();
        let (head, _) = read_answer(&mut s, false).await;
        assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    }

    /// Limits for a test: heads and idle waits of 200 ms, two connections.
    fn short() -> Limits {
        Limits {
            head: Duration::from_millis(200),
            idle: Duration::from_millis(200),
            connections: 2,
        }
    }

    #[tokio::test]
    async fn a_client_that_sends_nothing_or_too_slowly_or_idles_is_closed() {
        let addr = listener_with(short()).await;
        // Nothing at all.
        let mut s = connect(addr).await;
        assert!(closed(&mut s).await);
        // Half a head (slowloris).
        assert!(sent_then_closed(addr, b"GET /healthz HTTP/1.1\r\nhost: x\r\n").await);
        // Half a body.
        assert!(
            sent_then_closed(
                addr,
                b"POST /control HTTP/1.1\r\ncontent-length: 20\r\n\r\n{\"op\""
            )
            .await
        );
        // An answered request, then nothing on the kept-alive connection: closed when idle.
        let addr = listener_with(Limits {
            head: Duration::from_secs(600),
            ..short()
        })
        .await;
        let mut s = connect(addr).await;
        s.get_mut()
            .write_all(b"GET /healthz HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let (head, _) = read_answer(&mut s, false).await;
        assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
        assert!(!head.contains("connection: close"), "{head}");
        assert!(closed(&mut s).await);
    }

    #[tokio::test]
    async fn a_connection_over_the_limit_is_503_and_a_freed_slot_serves_again() {
        let addr = listener_with(Limits {
            head: Duration::from_secs(600),
            ..short()
        })
        .await;
        // Two connections that send nothing hold both slots (accepted in this order).
        let one = connect(addr).await;
        let _two = connect(addr).await;
        let mut third = connect(addr).await;
        let (head, body) = read_answer(&mut third, false).await;
        assert!(
            head.starts_with("http/1.1 503 service unavailable\r\n"),
            "{head}"
        );
        assert!(head.contains("connection: close\r\n"), "{head}");
        assert_eq!(body, "{\"error\":\"too many connections\"}\n");
        assert!(closed(&mut third).await);
        // Once one of them hangs up, its slot serves the next client.
        drop(one);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut s = connect(addr).await;
            s.get_mut()
                .write_all(b"GET /healthz HTTP/1.1\r\n\r\n")
                .await
                .unwrap();
            let (head, _) = read_answer(&mut s, false).await;
            if head.starts_with("http/1.1 200 ok\r\n") {
                break;
            }
            assert!(head.starts_with("http/1.1 503 "), "{head}");
            assert!(Instant::now() < deadline, "the freed slot never served");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[test]
    fn accept_pauses_after_a_lack_of_descriptors_and_says_so_once() {
        let emfile = || std::io::Error::from_raw_os_error(24);
        let pause = Some(ACCEPT_PAUSE);
        let mut errors = AcceptErrors::default();
        assert_eq!(errors.after(&emfile()), AfterError { pause, say: true });
        assert_eq!(errors.after(&emfile()), AfterError { pause, say: false });
        let enfile = std::io::Error::from_raw_os_error(23);
        assert_eq!(errors.after(&enfile), AfterError { pause, say: false });
        // A peer that gave up before accept() costs nothing: no pause, nothing said.
        let aborted = std::io::Error::from(std::io::ErrorKind::ConnectionAborted);
        assert_eq!(
            errors.after(&aborted),
            AfterError {
                pause: None,
                say: false
            }
        );
        // Said again after a connection came through.
        errors.accepted();
        assert_eq!(errors.after(&emfile()), AfterError { pause, say: true });
    }
}
