//! The control socket: `tether ctl` (and, with `health.control: true`, `POST /control` on the
//! health listener) asks the running init for its status, to start, stop, restart or signal
//! daemons, for their recent output, to reload the declaration, or to shut down.
//!
//! The protocol is JSON lines over a Unix stream socket, one request per connection. The
//! client writes one object (`{"op": "stop", "daemons": ["db"]}`); the init answers with lines:
//! first, for operations that change something, `{"changes": [...]}` (what it is about to do,
//! daemon by daemon, and why); for `logs`, one `{"line", "stream"}` object per line; and last
//! an object with `"ok"` and `"code"` (the exit code `tether ctl` returns), and for a change
//! the daemons' states once they settled (running, backing off, or done).
//!
//! The decisions are the core's ([`crate::core::Request`]); this module only carries requests
//! to the event loop and waits, on the published snapshots, for their effect.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot, watch};

use crate::core::Change;
use crate::health::Snapshot;
use crate::logs::Ring;

/// The largest request line read.
const MAX_REQUEST: u64 = 64 * 1024;

/// Where `tether init` listens and `tether ctl` connects unless told otherwise:
/// `$XDG_RUNTIME_DIR/tether/init.sock`, else `/run/tether/init.sock`.
pub fn default_socket() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("tether").join("init.sock"),
        None => PathBuf::from("/run/tether/init.sock"),
    }
}

/// What the control server asks of the event loop.
pub(crate) enum Ask {
    Start(Vec<String>),
    Stop(Vec<String>),
    Restart(Vec<String>),
    Signal(String, i32),
    Reload,
    Shutdown,
}

/// The event loop's answer.
pub(crate) enum Answer {
    /// Done, daemon by daemon; `notes` say what a reload did not apply.
    Done {
        changes: Vec<Change>,
        notes: Vec<String>,
    },
    /// Refused, nothing changed. `detail`: a reload's rendered diagnostics; `diagnostics`:
    /// the same as JSON.
    Refused {
        message: String,
        detail: Option<String>,
        diagnostics: Vec<Value>,
    },
}

pub(crate) struct Asked {
    pub ask: Ask,
    pub reply: oneshot::Sender<Answer>,
}

/// Each daemon's recent lines, by name, shared by the event loop (which makes them) and the
/// control server (which reads them).
pub(crate) type Rings = Arc<Mutex<HashMap<String, Arc<Ring>>>>;

/// What a connection needs to answer: the way to the event loop, its snapshots, the rings.
#[derive(Clone)]
pub(crate) struct Handle {
    pub asks: mpsc::UnboundedSender<Asked>,
    pub snapshots: watch::Receiver<Snapshot>,
    pub rings: Rings,
}

/// Exit codes of `tether ctl`, carried in each final answer.
pub mod code {
    pub const OK: u8 = 0;
    /// Refused: an unknown daemon, a bad request, an invalid declaration; nothing changed.
    pub const REFUSED: u8 = 1;
    /// No init answers, or it ended before the answer.
    pub const UNREACHABLE: u8 = 2;
    /// Done, but not as asked: a daemon did not start or become ready.
    pub const NOT_AS_ASKED: u8 = 3;
}

fn refused(message: impl Into<String>) -> Value {
    json!({"ok": false, "code": code::REFUSED, "error": message.into()})
}

// ----- the server -----

/// Why the socket could not be made.
#[derive(Debug)]
pub(crate) enum BindError {
    /// Another init answers there, or the path is not ours to replace: nothing may start.
    Fatal(String),
    /// The folder cannot be made or written (a non-root user without `XDG_RUNTIME_DIR`).
    Unavailable(String),
}

/// The bound socket; removes its file when dropped, unless someone replaced it.
pub(crate) struct Bound {
    pub listener: UnixListener,
    path: PathBuf,
    inode: u64,
}

impl Drop for Bound {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.inode) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Makes the socket at `path`: its folder with mode 0700 when missing, the socket 0600. A
/// socket nobody answers on (left by an init that was killed) is replaced; one that answers is
/// an error, as is a file that is not a socket.
pub(crate) fn bind(path: &Path) -> Result<Bound, BindError> {
    use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
    let shown = path.display();
    let unavailable = |what: &str, e: std::io::Error| {
        let text = format!("{what}: {}", tether_probe::plain(&e));
        match e.kind() {
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
                BindError::Unavailable(text)
            }
            _ => BindError::Fatal(text),
        }
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| unavailable(&format!("cannot make the folder {}", dir.display()), e))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => {
                    return Err(BindError::Fatal(format!(
                        "another tether init is listening on the control socket {shown}"
                    )));
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    // Stale: its init is gone.
                    std::fs::remove_file(path).map_err(|e| {
                        unavailable(&format!("cannot replace the stale socket {shown}"), e)
                    })?;
                }
                Err(e) => {
                    return Err(unavailable(
                        &format!("cannot tell whether {shown} is in use"),
                        e,
                    ));
                }
            }
        }
        Ok(_) => {
            return Err(BindError::Fatal(format!(
                "{shown} exists and is not a socket; tether will not replace it"
            )));
        }
        Err(_) => {}
    }
    // Made with no access for others from the first instant, then said so explicitly.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let listener = std::os::unix::net::UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = listener.map_err(|e| unavailable(&format!("cannot listen on {shown}"), e))?;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    let inode = std::fs::symlink_metadata(path).map_or(0, |m| m.ino());
    listener
        .set_nonblocking(true)
        .and_then(|()| UnixListener::from_std(listener))
        .map(|listener| Bound {
            listener,
            path: path.to_path_buf(),
            inode,
        })
        .map_err(|e| BindError::Fatal(format!("cannot listen on {shown}: {e}")))
}

/// Serves connections until the runtime ends.
pub(crate) fn serve(bound: Bound, handle: Handle) {
    tokio::spawn(async move {
        let bound = bound;
        let mut errors = crate::health::AcceptErrors::default();
        loop {
            let stream = match bound.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    errors.failed(&e, "the control socket").await;
                    continue;
                }
            };
            errors.accepted();
            let handle = handle.clone();
            tokio::spawn(async move { handle.connection(stream).await });
        }
    });
}

/// Where the lines of an answer go: a socket (as they come) or a list (HTTP).
trait Sink {
    async fn line(&mut self, v: Value) -> bool;
}

struct Socket(tokio::net::unix::OwnedWriteHalf);

impl Sink for Socket {
    async fn line(&mut self, v: Value) -> bool {
        let mut text = v.to_string();
        text.push('\n');
        self.0.write_all(text.as_bytes()).await.is_ok()
    }
}

impl Sink for Vec<Value> {
    async fn line(&mut self, v: Value) -> bool {
        self.push(v);
        true
    }
}

impl Handle {
    async fn connection(&self, stream: tokio::net::UnixStream) {
        let (read, write) = stream.into_split();
        let mut read = tokio::io::BufReader::new(read);
        let mut line = String::new();
        let mut limited = (&mut read).take(MAX_REQUEST);
        let mut sink = Socket(write);
        if limited.read_line(&mut line).await.is_err() {
            return;
        }
        let request = match serde_json::from_str::<Value>(&line) {
            Ok(v) => v,
            Err(e) => {
                sink.line(refused(format!("not a JSON request: {e}"))).await;
                return;
            }
        };
        let follows = request.get("follow").and_then(Value::as_bool) == Some(true);
        let answer = if follows {
            tokio::select! {
                a = self.answer(&request, &mut sink, true) => a,
                // The client went away (Ctrl-C on `logs -f`): stop following a quiet daemon
                // now rather than at its next line.
                _ = closed(&mut read) => return,
            }
        } else {
            // A client that closes its writing side after the request (`nc -N`) still gets
            // its answer.
            self.answer(&request, &mut sink, true).await
        };
        sink.line(answer).await;
    }

    /// The answer to an HTTP request body: the final object, with the lines that came
    /// before it under `lines` (log lines) and `changes`.
    pub async fn answer_whole(&self, body: &[u8]) -> Value {
        let request = match serde_json::from_slice::<Value>(body) {
            Ok(v) => v,
            Err(e) => return refused(format!("not a JSON request: {e}")),
        };
        let mut lines: Vec<Value> = Vec::new();
        let mut answer = self.answer(&request, &mut lines, false).await;
        let log_lines: Vec<Value> = lines
            .into_iter()
            .filter(|l| l.get("line").is_some())
            .collect();
        if let Some(o) = answer.as_object_mut()
            && request.get("op").and_then(Value::as_str) == Some("logs")
        {
            o.insert("lines".into(), Value::Array(log_lines));
        }
        answer
    }

    /// Carries one request out; lines before the last go to `sink`; returns the last.
    async fn answer(&self, request: &Value, sink: &mut impl Sink, may_follow: bool) -> Value {
        let op = request.get("op").and_then(Value::as_str).unwrap_or("");
        let names = || -> Vec<String> {
            request
                .get("daemons")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        let daemon = request
            .get("daemon")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let wait = request.get("wait").and_then(Value::as_bool).unwrap_or(true);
        let ask = match op {
            "status" => return self.status(),
            "logs" => {
                let tail = request
                    .get("tail")
                    .and_then(Value::as_u64)
                    .map(|t| t as usize);
                let follow = request
                    .get("follow")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                if follow && !may_follow {
                    return refused(
                        "`follow` needs the control socket; over HTTP, ask again with `tail`",
                    );
                }
                return self.logs(&daemon, tail, follow, sink).await;
            }
            "start" => Ask::Start(names()),
            "stop" => Ask::Stop(names()),
            "restart" => Ask::Restart(names()),
            "signal" => {
                let given = request.get("signal").map(|s| match s {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                });
                let Some(given) = given else {
                    return refused("`signal` needs a signal: HUP, SIGUSR1, 10");
                };
                match tether_spec::model::Signal::parse(&given) {
                    Some(s) => Ask::Signal(daemon, s.number),
                    None => {
                        return refused(format!(
                            "`{given}` is not a signal (use a name such as HUP or SIGUSR1, or a number from 1 to 31)"
                        ));
                    }
                }
            }
            "reload" => Ask::Reload,
            "shutdown" => Ask::Shutdown,
            other => {
                return refused(format!(
                    "`{other}` is not an operation (status, start, stop, restart, signal, logs, reload, shutdown)"
                ));
            }
        };
        let shutdown = matches!(ask, Ask::Shutdown);
        let (tx, rx) = oneshot::channel();
        if self.asks.send(Asked { ask, reply: tx }).is_err() {
            return json!({"ok": false, "code": code::UNREACHABLE, "error": "tether init is ending"});
        }
        let Ok(answer) = rx.await else {
            return json!({"ok": false, "code": code::UNREACHABLE, "error": "tether init ended before it answered"});
        };
        let (changes, notes) = match answer {
            Answer::Refused {
                message,
                detail,
                diagnostics,
            } => {
                return json!({"ok": false, "code": code::REFUSED, "error": message, "detail": detail, "diagnostics": diagnostics});
            }
            Answer::Done { changes, notes } => (changes, notes),
        };
        let listed: Vec<Value> = changes
            .iter()
            .map(|c| json!({"daemon": c.daemon, "what": c.what, "why": c.why}))
            .collect();
        if !sink.line(json!({"changes": listed, "notes": notes})).await {
            return Value::Null;
        }
        if shutdown {
            return self.until_ended().await;
        }
        let touched: Vec<(String, &'static str)> = changes
            .iter()
            .filter(|c| matches!(c.what, "start" | "stop" | "restart" | "add" | "remove"))
            .map(|c| (c.daemon.clone(), c.what))
            .collect();
        if !wait {
            return json!({"ok": true, "code": code::OK, "changes": listed, "notes": notes});
        }
        self.settled(&touched, listed, notes).await
    }

    fn status(&self) -> Value {
        let snap = self.snapshots.borrow().clone();
        let mut v = snap.status();
        if let Some(o) = v.as_object_mut() {
            o.insert("ok".into(), true.into());
            o.insert("code".into(), code::OK.into());
            // Removed daemons still stopping are not part of the bundle any more.
            let daemons: Vec<Value> = snap
                .daemons
                .iter()
                .filter(|d| !d.removed)
                .map(|d| snap.daemon_json(d))
                .collect();
            o.insert("daemons".into(), daemons.into());
        }
        v
    }

    /// Waits until every touched daemon is at rest; then says how each ended up.
    async fn settled(
        &self,
        touched: &[(String, &'static str)],
        changes: Vec<Value>,
        notes: Vec<String>,
    ) -> Value {
        let mut rx = self.snapshots.clone();
        loop {
            let snap = rx.borrow_and_update().clone();
            let at_rest = touched.iter().all(|(name, _)| {
                snap.daemons
                    .iter()
                    .filter(|d| d.name == *name)
                    .all(|d| d.settled)
            });
            if at_rest {
                let mut failed = Vec::new();
                let mut daemons = Vec::new();
                for (name, what) in touched {
                    let Some(d) = snap.daemons.iter().find(|d| d.name == *name && !d.removed)
                    else {
                        continue;
                    };
                    daemons.push(snap.daemon_json(d));
                    let wanted_up = matches!(*what, "start" | "restart" | "add");
                    if wanted_up && !matches!(d.state, "running" | "completed") {
                        let how = d
                            .last_exit
                            .as_deref()
                            .map(|e| format!(": {e}"))
                            .unwrap_or_default();
                        failed.push(format!("{} is {}{how}", d.name, d.state));
                    }
                }
                let mut v = json!({"ok": failed.is_empty(), "code": code::OK, "changes": changes, "notes": notes, "daemons": daemons});
                if !failed.is_empty() {
                    v["code"] = code::NOT_AS_ASKED.into();
                    v["error"] = format!("not started as asked: {}", failed.join("; ")).into();
                }
                return v;
            }
            if rx.changed().await.is_err() {
                return json!({"ok": false, "code": code::UNREACHABLE, "error": "tether init ended before the daemons settled"});
            }
        }
    }

    /// After `shutdown`: answers once every daemon is done, or the init is gone.
    async fn until_ended(&self) -> Value {
        let mut rx = self.snapshots.clone();
        loop {
            let done = {
                let snap = rx.borrow_and_update();
                snap.daemons.iter().all(|d| d.pid.is_none()) && snap.phase == "stopping"
            };
            if done || rx.changed().await.is_err() {
                return json!({"ok": true, "code": code::OK});
            }
        }
    }

    async fn logs(
        &self,
        daemon: &str,
        tail: Option<usize>,
        follow: bool,
        sink: &mut impl Sink,
    ) -> Value {
        let known: Vec<String> = self
            .snapshots
            .borrow()
            .daemons
            .iter()
            .filter(|d| !d.removed)
            .map(|d| d.name.clone())
            .collect();
        if !known.iter().any(|k| k == daemon) {
            let all: Vec<&str> = known.iter().map(String::as_str).collect();
            let hint = tether_spec::values::did_you_mean(daemon, &all)
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_default();
            return refused(format!(
                "no daemon named `{daemon}` in this bundle (it has: {}){hint}",
                if all.is_empty() {
                    "none".to_owned()
                } else {
                    all.join(", ")
                }
            ));
        }
        let ring = {
            let mut rings = self.rings.lock().unwrap_or_else(|e| e.into_inner());
            rings.entry(daemon.to_owned()).or_default().clone()
        };
        let line = |l: crate::logs::RingLine| json!({"line": String::from_utf8_lossy(&l.text), "stream": l.stream});
        let mut next = ring.next();
        // Registered before reading, so that no batch slips between the read and the wait.
        let mut grew = std::pin::pin!(ring.grew.notified());
        grew.as_mut().enable();
        for l in ring.tail(tail) {
            if !sink.line(line(l)).await {
                return Value::Null;
            }
        }
        if !follow {
            return json!({"ok": true, "code": code::OK});
        }
        loop {
            grew.as_mut().await;
            grew.set(ring.grew.notified());
            grew.as_mut().enable();
            let (lines, missed) = ring.since(next);
            if missed > 0 && !sink.line(json!({"missed": missed})).await {
                return Value::Null;
            }
            for l in lines {
                next = l.number + 1;
                if !sink.line(line(l)).await {
                    return Value::Null;
                }
            }
        }
    }
}

/// Resolves when the peer closes its side (or sends more than it should).
async fn closed(read: &mut tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>) {
    let mut buf = [0u8; 64];
    loop {
        match read.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => continue,
        }
    }
}

// ----- the client -----

/// Why `tether ctl` got no answer.
#[derive(Debug)]
pub struct ClientError {
    pub message: String,
    pub hint: Option<String>,
}

/// Sends one request to the init at `socket`; hands each line before the last to `each`, and
/// returns the last (with `"ok"` and `"code"`). An init that closes the connection after a
/// `shutdown` without a last word has ended, as asked.
pub fn request(
    socket: &Path,
    request: &Value,
    mut each: impl FnMut(&Value),
) -> Result<Value, ClientError> {
    let shown = socket.display();
    let mut stream = std::os::unix::net::UnixStream::connect(socket).map_err(|e| {
        let (message, hint) = match e.kind() {
            std::io::ErrorKind::NotFound => (
                format!("no tether init is listening on {shown} (there is no such socket)"),
                "is `tether init` running? Name its socket with --socket PATH (its `init.control.socket`)",
            ),
            std::io::ErrorKind::ConnectionRefused => (
                format!("nothing answers on {shown} (its tether init has ended)"),
                "start `tether init` again; it replaces the stale socket",
            ),
            std::io::ErrorKind::PermissionDenied => (
                format!("cannot connect to {shown}: permission denied"),
                "the socket is for the user tether init runs as (mode 0600)",
            ),
            _ => (
                format!("cannot connect to {shown}: {}", tether_probe::plain(&e)),
                "name the socket with --socket PATH",
            ),
        };
        ClientError {
            message,
            hint: Some(hint.to_owned()),
        }
    })?;
    let lost = |e: std::io::Error| ClientError {
        message: format!("lost the connection to tether init at {shown}: {e}"),
        hint: None,
    };
    let mut text = request.to_string();
    text.push('\n');
    stream.write_all(text.as_bytes()).map_err(lost)?;
    let shutdown = request.get("op").and_then(Value::as_str) == Some("shutdown");
    let reader = BufReader::new(stream);
    for line in reader.lines() {
        let line = line.map_err(lost)?;
        let v: Value = serde_json::from_str(&line).map_err(|e| ClientError {
            message: format!("tether init answered something that is not JSON: {e}"),
            hint: None,
        })?;
        if v.get("ok").is_some() {
            return Ok(v);
        }
        each(&v);
    }
    if shutdown {
        return Ok(json!({"ok": true, "code": code::OK}));
    }
    Err(ClientError {
        message: "tether init closed the connection before it answered (is it shutting down?)"
            .into(),
        hint: None,
    })
}
