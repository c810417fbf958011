//! The health endpoint: `/healthz`, `/readyz` and `/status`, served from the supervisor's latest
//! snapshot; and, with `health.control: true`, the control operations as JSON over HTTP
//! (`POST /control`, served by [`crate::control`]).

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
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
            tokio::spawn(connection(stream, shared.clone(), control.clone()));
        }
    });
    Ok(())
}

/// The largest request body `/control` reads.
const MAX_BODY: usize = 64 * 1024;

/// One HTTP/1 connection: requests in turn, while the client keeps it open (HTTP/1.1 unless
/// `connection: close`; HTTP/1.0 with `connection: keep-alive`).
async fn connection(stream: TcpStream, shared: Shared, control: Option<Handle>) {
    let mut stream = BufReader::new(stream);
    loop {
        let head = match tether_probe::read_head(&mut stream).await {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(e) => {
                let status = if e.kind() == std::io::ErrorKind::InvalidData {
                    431
                } else {
                    400
                };
                let _ = respond(&mut stream, &Head::bad(), status, None).await;
                return;
            }
        };
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        let Ok(httparse::Status::Complete(_)) = req.parse(&head) else {
            let _ = respond(&mut stream, &Head::bad(), 400, None).await;
            return;
        };
        let Some(head) = Head::of(&req) else {
            let _ = respond(&mut stream, &Head::bad(), 400, None).await;
            return;
        };
        let (status, body) = if head.path == "/control" || head.path.starts_with("/control/") {
            match read_body(&mut stream, &head).await {
                Ok(body) => control_answer(&head.method, &body, control.as_ref()).await,
                Err(e) => {
                    let why = json!({"error": format!("cannot read the request: {e}")});
                    let _ = respond(&mut stream, &head.closing(), 400, Some(why)).await;
                    return;
                }
            }
        } else {
            answer(&head.method, &head.path, &shared)
        };
        // An unread body would be taken for the next request.
        let head = if head.body { head.closing() } else { head };
        if respond(&mut stream, &head, status, Some(body))
            .await
            .is_err()
            || !head.keep_alive
        {
            return;
        }
    }
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
    /// `None`: a `content-length` that is not a number.
    fn of(req: &httparse::Request) -> Option<Head> {
        let target = req.path.unwrap_or("/");
        let target = match target.strip_prefix("http://") {
            Some(rest) => rest.find('/').map_or("/", |i| &rest[i..]),
            None => target,
        };
        let path = target.split('?').next().unwrap_or_default().to_owned();
        let version = req.version.unwrap_or(1);
        let has = |name: &str, token: &str| {
            req.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case(name)
                    && String::from_utf8_lossy(h.value)
                        .split(',')
                        .any(|t| t.trim().eq_ignore_ascii_case(token))
            })
        };
        let value = |name: &str| {
            req.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).trim().to_owned())
        };
        let chunked = has("transfer-encoding", "chunked");
        let length = match value("content-length") {
            Some(v) => Some(v.parse::<usize>().ok()?),
            None => None,
        };
        Some(Head {
            method: req.method.unwrap_or_default().to_owned(),
            path,
            version,
            keep_alive: if version == 0 {
                has("connection", "keep-alive")
            } else {
                !has("connection", "close")
            },
            body: chunked || length.is_some_and(|n| n > 0) || value("transfer-encoding").is_some(),
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

/// Reads a request's body, `content-length` or chunked, up to [`MAX_BODY`].
async fn read_body(stream: &mut BufReader<TcpStream>, head: &Head) -> std::io::Result<Vec<u8>> {
    let too_large = || invalid("length limit exceeded");
    if !head.body {
        return Ok(Vec::new());
    }
    if head.expects_continue {
        let version = if head.version == 0 { "1.0" } else { "1.1" };
        let line = format!("HTTP/{version} 100 Continue\r\n\r\n");
        stream.get_mut().write_all(line.as_bytes()).await?;
    }
    if !head.chunked {
        let Some(n) = head.length else {
            return Err(invalid("unsupported transfer-encoding"));
        };
        if n > MAX_BODY {
            return Err(too_large());
        }
        let mut body = vec![0; n];
        stream.read_exact(&mut body).await?;
        return Ok(body);
    }
    let mut body = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        (&mut *stream)
            .take(1024)
            .read_until(b'\n', &mut line)
            .await?;
        let size = match httparse::parse_chunk_size(&line) {
            Ok(httparse::Status::Complete((_, size))) => size,
            _ => {
                return Err(invalid("bad chunk size"));
            }
        };
        if size == 0 {
            // Trailers, through the empty line.
            loop {
                line.clear();
                (&mut *stream)
                    .take(8192)
                    .read_until(b'\n', &mut line)
                    .await?;
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
        stream.read_exact(&mut body[at..]).await?;
        let mut end = [0u8; 2];
        stream.read_exact(&mut end).await?;
        if &end != b"\r\n" {
            return Err(invalid("bad chunk end"));
        }
    }
}

/// A request this listener cannot read, and why.
fn invalid(why: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why)
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
        431 => "Request Header Fields Too Large",
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
        tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                tokio::spawn(connection(s, snapshots.clone(), Some(control.clone())));
            }
        });
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

    /// Whether the server hung up: the next read finds the end of the stream.
    async fn closed(s: &mut BufReader<TcpStream>) -> bool {
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        rest.is_empty()
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
    async fn a_body_over_the_limit_or_a_bad_request_is_400_and_the_end() {
        let addr = listener().await;
        let mut s = connect(addr).await;
        let over = MAX_BODY + 1;
        s.get_mut()
            .write_all(
                format!("POST /control HTTP/1.1\r\ncontent-length: {over}\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
        let (head, body) = read_answer(&mut s, false).await;
        assert!(head.starts_with("http/1.1 400 bad request\r\n"), "{head}");
        assert_eq!(
            body,
            "{\"error\":\"cannot read the request: length limit exceeded\"}\n"
        );
        assert!(closed(&mut s).await);
        for bad in [
            "GET /healthz\r\n\r\n",
            "GET /healthz HTTP/1.1\r\ncontent-length: ten\r\n\r\n",
        ] {
            let mut s = connect(addr).await;
            s.get_mut().write_all(bad.as_bytes()).await.unwrap();
            let (head, body) = read_answer(&mut s, false).await;
            assert!(
                head.starts_with("http/1.1 400 bad request\r\n"),
                "{bad:?}: {head}"
            );
            assert_eq!(body, "");
            assert!(closed(&mut s).await);
        }
    }
}
