//! Helpers of the sidecar tests, shared by `sidecar.rs` and `bus_nats.rs`: a tether process
//! read line by line, a sidecar started up to its plugin listener, and a plugin speaking the
//! session protocol by hand.
#![allow(dead_code, clippy::print_stderr)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use tether_bus_proto::PROTOCOL_HEADER;
use tether_bus_proto::v1::plugin_service_client::PluginServiceClient;
use tether_bus_proto::v1::{
    HealthAnswer, Hello, PluginAck, PluginMessage, PluginPublish, Subscription, Welcome,
    plugin_message, publish_result, sidecar_message,
};
use tokio::sync::mpsc;

/// `GET path` over HTTP/1.0: the status code and the body.
pub fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(HANG)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let code = text[9..12].parse().unwrap();
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or("")
        .trim()
        .to_owned();
    (code, body)
}

/// Polls `/metrics` at `addr` until it has every line of `lines` (exact lines, such as
/// `tether_sidecar_acks_total 1`); fails as hung after [`HANG`], showing the last body.
pub async fn until_metrics(addr: SocketAddr, lines: &[&str]) {
    let until = Instant::now() + HANG;
    loop {
        let (_, body) = get(addr, "/metrics");
        if lines.iter().all(|want| body.lines().any(|l| l == *want)) {
            return;
        }
        assert!(Instant::now() < until, "not all of {lines:?} in\n{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of the metric `name` in `/metrics` at `addr` now.
pub fn metric(addr: SocketAddr, name: &str) -> u64 {
    let (_, body) = get(addr, "/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{body}"))
}

/// How long any wait may take before the test fails as hung. Never a measurement.
pub const HANG: Duration = Duration::from_secs(120);

pub fn tether() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tether"))
}

/// A tether process whose stderr is read line by line.
pub struct Proc {
    pub child: Child,
    pub lines: std_mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Proc {
    pub fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = std_mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Waits for a line containing `needle`; answers the line.
    pub fn wait_for(&mut self, needle: &str) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        let until = Instant::now() + HANG;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line with {needle:?}; the process said:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// The address after `prefix` in the first line that has it.
    pub fn addr_after(&mut self, prefix: &str) -> SocketAddr {
        let line = self.wait_for(prefix);
        let rest = &line[line.find(prefix).unwrap() + prefix.len()..];
        rest.split([' ', ','])
            .next()
            .unwrap()
            .trim_start_matches("http://")
            .parse()
            .unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} failed");
    }

    /// Waits for the exit; answers the code and everything it said.
    pub fn wait(mut self) -> (Option<i32>, String) {
        let status = self.child.wait().unwrap();
        while let Ok(l) = self.lines.recv_timeout(HANG) {
            self.seen.push(l);
        }
        (status.code(), self.seen.join("\n"))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Sidecar {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub health: SocketAddr,
}

/// A sidecar for `instance` with `grants` (`publish:topic`, `subscribe:topic`), its config file's
/// text, started up to its plugin listener.
pub fn sidecar(
    dir: &Path,
    bus: impl std::fmt::Display,
    instance: &str,
    grants: &[&str],
    config: &str,
) -> Sidecar {
    let proc = spawn_sidecar(dir, bus, instance, grants, config);
    let mut proc = proc;
    let health = proc.addr_after("/healthz, /readyz and /metrics on ");
    let addr = proc.addr_after("plugins connect to ");
    Sidecar { proc, addr, health }
}

pub fn spawn_sidecar(
    dir: &Path,
    bus: impl std::fmt::Display,
    instance: &str,
    grants: &[&str],
    config: &str,
) -> Proc {
    let grants: Vec<String> = grants
        .iter()
        .map(|g| {
            let (action, topic) = g.split_once(':').unwrap();
            format!(r#"{{"topic":"{topic}","action":"{action}"}}"#)
        })
        .collect();
    let config_file = dir.join(format!("{instance}.yaml"));
    std::fs::write(&config_file, format!("data_dir: {instance}-data\n{config}")).unwrap();
    let mut cmd = tether();
    cmd.arg("sidecar")
        .env_clear()
        .env("INSTANCE_ID", instance)
        .env("POOL_TYPE", "TestPool")
        .env("REQUESTED_GRANTS", format!("[{}]", grants.join(",")))
        .env("SIDECAR_BUS_API_URL", bus.to_string())
        .env("SIDECAR_ADDR", "127.0.0.1:0")
        .env("SIDECAR_HEALTH_ADDR", "127.0.0.1:0")
        .env("SIDECAR_CONFIG", &config_file);
    Proc::spawn(cmd)
}

/// A plugin speaking the session protocol by hand. A background task answers health checks
/// (while `answer_health` is set; otherwise it passes them on too) and passes everything else
/// on.
pub struct Plugin {
    pub tx: mpsc::Sender<PluginMessage>,
    pub rx: mpsc::UnboundedReceiver<Option<sidecar_message::Kind>>,
    pub welcome: Welcome,
    pub answer_health: Arc<AtomicBool>,
    pub next_request: u64,
}

pub fn send(kind: plugin_message::Kind) -> PluginMessage {
    PluginMessage { kind: Some(kind) }
}

impl Plugin {
    pub async fn connect(
        addr: SocketAddr,
        topics: &[&str],
        group: &str,
    ) -> Result<Self, tonic::Status> {
        Self::connect_answering(addr, topics, group, true).await
    }

    /// `connect`, with health checks answered from the first one only when `answer_health`.
    pub async fn connect_answering(
        addr: SocketAddr,
        topics: &[&str],
        group: &str,
        answer_health: bool,
    ) -> Result<Self, tonic::Status> {
        let mut client = PluginServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(1024);
        tx.send(send(plugin_message::Kind::Hello(Hello {
            protocol_major: 1,
            subscriptions: topics
                .iter()
                .map(|t| Subscription {
                    topic: (*t).into(),
                    group: group.into(),
                    ..Default::default()
                })
                .collect(),
            client: "test-plugin".into(),
        })))
        .await
        .unwrap();
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        request
            .metadata_mut()
            .insert(PROTOCOL_HEADER, "1".parse().unwrap());
        let mut inbound = client.session(request).await?.into_inner();
        let first = inbound.message().await?.expect("a first message");
        let Some(sidecar_message::Kind::Welcome(welcome)) = first.kind else {
            panic!("the first message is not Welcome: {first:?}");
        };
        let answer_health = Arc::new(AtomicBool::new(answer_health));
        let (out, rx) = mpsc::unbounded_channel();
        let answering = answer_health.clone();
        // Weak: dropping the plugin's sender ends its side of the session.
        let health_tx = tx.downgrade();
        tokio::spawn(async move {
            loop {
                let m = match inbound.message().await {
                    Ok(Some(m)) => m,
                    Ok(None) | Err(_) => {
                        let _ = out.send(None);
                        return;
                    }
                };
                match m.kind {
                    Some(sidecar_message::Kind::HealthCheck(c))
                        if answering.load(Ordering::SeqCst) =>
                    {
                        if let Some(health_tx) = health_tx.upgrade() {
                            let _ = health_tx
                                .send(send(plugin_message::Kind::Health(HealthAnswer {
                                    id: c.id,
                                    healthy: true,
                                    detail: String::new(),
                                })))
                                .await;
                        }
                    }
                    other => {
                        if out.send(other).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(Self {
            tx,
            rx,
            welcome,
            answer_health,
            next_request: 0,
        })
    }

    /// The next message that is not a health check; `None` when the session ended.
    pub async fn next(&mut self) -> Option<sidecar_message::Kind> {
        tokio::time::timeout(HANG, self.rx.recv())
            .await
            .expect("the sidecar sent nothing")
            .flatten()
    }

    /// Ends the plugin's side of the session and waits for the sidecar to end its side;
    /// answers what came in between.
    pub async fn close(self) -> Vec<sidecar_message::Kind> {
        let Plugin { tx, mut rx, .. } = self;
        drop(tx);
        let mut rest = Vec::new();
        while let Some(Some(k)) = tokio::time::timeout(HANG, rx.recv()).await.unwrap() {
            rest.push(k);
        }
        rest
    }

    pub async fn delivery(&mut self) -> tether_bus_proto::v1::Delivery {
        match self.next().await {
            Some(sidecar_message::Kind::Delivery(d)) => d,
            other => panic!("expected a delivery, got {other:?}"),
        }
    }

    pub async fn ack(&self, id: &str) {
        self.tx
            .send(send(plugin_message::Kind::Ack(PluginAck {
                delivery_id: id.into(),
            })))
            .await
            .unwrap();
    }

    /// Publishes and waits for the result (other messages in between are returned too).
    pub async fn publish(
        &mut self,
        topic: &str,
        data: &[u8],
    ) -> (publish_result::Result, Vec<sidecar_message::Kind>) {
        self.next_request += 1;
        let id = self.next_request;
        self.tx
            .send(send(plugin_message::Kind::Publish(PluginPublish {
                request_id: id,
                topic: topic.into(),
                data: data.to_vec(),
                ..Default::default()
            })))
            .await
            .unwrap();
        let mut other = Vec::new();
        loop {
            match self.next().await {
                Some(sidecar_message::Kind::PublishResult(r)) if r.request_id == id => {
                    return (r.result.unwrap(), other);
                }
                Some(k) => other.push(k),
                None => panic!("the session ended before the publish's result"),
            }
        }
    }
}

pub fn accepted(r: &publish_result::Result) -> u64 {
    match r {
        publish_result::Result::Accepted(a) => a.sequence,
        publish_result::Result::Refused(r) => panic!("refused: {} {}", r.code, r.message),
    }
}
