//! `tether bus serve` as a real process: flags and policy checked before anything starts, and no
//! acknowledged message lost to a `kill -9`.
#![allow(clippy::print_stderr)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tether_bus_proto::v1::bus_api_client::BusApiClient;
use tether_bus_proto::v1::{
    AckRequest, Action, Grant, PublishRequest, RegisterRequest, SubscribeRequest, Subscription,
};
use tether_bus_proto::{PROTOCOL_HEADER, SESSION_HEADER};
use tonic::transport::Channel;

/// How long any wait may take before the test fails as hung. Never a measurement.
const HANG: Duration = Duration::from_secs(120);

fn tether() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tether"))
}

#[test]
fn a_malformed_policy_is_reported_with_file_line_and_column_and_nothing_starts() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "pools:\n  SignalPool:\n    grants:\n      - { topic: \"signals.>\", action: publsh }\n      - { topic: \"a..b\", action: subscribe }\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let out = tether()
        .args(["bus", "serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .arg("--policy")
        .arg(&policy)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let p = policy.display();
    for expected in [
        "error: pools.SignalPool.grants[0].action: unknown action `publsh`".to_owned(),
        format!("--> {p}:4:39"),
        "error: pools.SignalPool.grants[1].topic: topic `a..b`: token 2 is empty (two dots, or a dot at an end)".to_owned(),
        format!("--> {p}:5:18"),
        "error: found 2 problems in the policy file; nothing was started".to_owned(),
    ] {
        assert!(stderr.contains(&expected), "{expected:?} not in:\n{stderr}");
    }
    assert!(!data.exists(), "the data folder was created");
}

#[test]
fn a_bad_listen_address_is_one_error_and_exit_1() {
    let out = tether()
        .args(["bus", "serve", "--listen", "localhost"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: --listen `localhost` is not an address\n  = hint: an IP address and a port: 127.0.0.1:8443, 0.0.0.0:8443, [::1]:8443\n"
    );
}

#[test]
fn a_bad_http_address_is_one_error_and_exit_1() {
    let out = tether()
        .args(["bus", "serve", "--listen", "127.0.0.1:0", "--http", "9090"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: --http `9090` is not an address\n  = hint: an IP address and a port: 127.0.0.1:8443, 0.0.0.0:8443, [::1]:8443\n"
    );
}

#[test]
fn http_serves_health_readiness_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let served = serve_with(&dir.path().join("data"), &["--http", "127.0.0.1:0"]);
    let line = served.stderr.recv_timeout(HANG).unwrap();
    let http: SocketAddr = line
        .strip_prefix("tether bus: /healthz, /readyz and /metrics on http://")
        .unwrap_or_else(|| panic!("{line}"))
        .parse()
        .unwrap();
    assert_eq!(http_get(http, "/healthz"), "HTTP/1.0 200 OK\nok\n");
    assert_eq!(
        http_get(http, "/readyz"),
        "HTTP/1.0 200 OK\n{\"ready\":true}\n"
    );
    let metrics = http_get(http, "/metrics");
    assert!(
        metrics.contains("\ntether_bus_messages_published_total 0\n"),
        "{metrics}"
    );
    stop(served);
    assert!(std::net::TcpStream::connect(http).is_err());
}

/// `GET path` over HTTP/1.0: the status line, then the body.
fn http_get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(HANG)).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer.lines().next().unwrap_or_default().to_owned();
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    format!("{status}\n{body}")
}

#[test]
fn a_bad_tls_file_is_named_and_nothing_starts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cert = dir.path().join("bus.crt");
    std::fs::write(&cert, "not a certificate\n").unwrap();
    let key = dir.path().join("bus.key");
    let run = |args: &[&std::ffi::OsStr]| {
        let out = tether()
            .args(["bus", "serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(&data)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let hint =
        "  = hint: --tls-cert: the certificate chain, --tls-key: its private key, both PEM\n";
    let (code, stderr) = run(&[
        "--tls-cert".as_ref(),
        cert.as_os_str(),
        "--tls-key".as_ref(),
        key.as_os_str(),
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "error: the TLS certificate file {} cannot be used: it holds no PEM certificate (-----BEGIN CERTIFICATE-----)\n{hint}",
            cert.display()
        )
    );
    let (code, stderr) = run(&["--tls-cert".as_ref(), cert.as_os_str()]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        stderr,
        "error: --tls-cert and --tls-key go together: give both, or neither\n"
    );
    assert!(!data.exists(), "the data folder was created");
}

#[test]
fn a_bad_sync_is_one_error_and_exit_1() {
    for (value, message) in [
        ("sometimes", "error: --sync `sometimes`: "),
        ("0s", "error: --sync `0s` is zero\n"),
    ] {
        let out = tether()
            .args(["bus", "serve", "--listen", "127.0.0.1:0", "--sync", value])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.starts_with(message), "{stderr}");
        assert!(
            stderr.ends_with(
                "  = hint: `always` (fsync before every answer) or how often to fsync: 100ms, 1s\n"
            ),
            "{stderr}"
        );
    }
}

/// SIGTERM and what it prints last.
fn stop(mut served: Served) -> Vec<String> {
    let pid = served.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = served.child.wait().unwrap();
    let mut lines = Vec::new();
    while let Ok(l) = served.stderr.recv_timeout(HANG) {
        lines.push(l);
    }
    assert_eq!(status.code(), Some(0), "{lines:?}");
    lines
}

#[test]
fn with_a_periodic_sync_a_clean_stop_keeps_every_answered_publish() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // An hour: nothing is fsynced before the stop.
    let first = serve_with(&data, &["--sync", "1h"]);
    let addr = first.addr;
    rt.block_on(async move {
        let (mut api, session) = register(addr, "producer", Action::Publish).await;
        for i in 0..20 {
            let r = req(
                PublishRequest {
                    topic: "stream.n".into(),
                    data: format!("m-{i}").into_bytes(),
                    ..Default::default()
                },
                &session,
            );
            assert_eq!(api.publish(r).await.unwrap().into_inner().sequence, i + 1);
        }
    });
    let lines = stop(first);
    assert!(
        lines.iter().any(|l| l.contains(
            "warning: --sync 1h: writes are answered before they reach the disk; a crash of tether or of this machine loses the publishes and acks of about the last 1h"
        )),
        "{lines:?}"
    );
    let second = serve(&data);
    let addr = second.addr;
    rt.block_on(async move {
        let (mut api, session) = register(addr, "producer", Action::Publish).await;
        let r = req(
            PublishRequest {
                topic: "stream.n".into(),
                data: b"after".to_vec(),
                ..Default::default()
            },
            &session,
        );
        assert_eq!(api.publish(r).await.unwrap().into_inner().sequence, 21);
    });
    stop(second);
}

/// An `instances:` entry whose grants no token guards is warned of at start, with the policy
/// file, its line and the instance; one with a token_file is not.
#[test]
fn an_instance_without_a_token_is_warned_of_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(dir.path().join("guarded.token"), "s3cret\n").unwrap();
    std::fs::write(
        &policy,
        "instances:\n  guarded:\n    grants: [{ topic: audit, action: publish }]\n    token_file: guarded.token\n  oms-1:\n    grants: [{ topic: \"dlq.orders.>\", action: subscribe }]\n",
    )
    .unwrap();
    let served = serve_with(
        &dir.path().join("data"),
        &["--policy", policy.to_str().unwrap()],
    );
    let lines = stop(served);
    let warnings: Vec<&String> = lines.iter().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(
        warnings,
        [&format!(
            "warning: {}:5:3: instances.oms-1: no token_file: its grants go to anyone who registers as instance `oms-1` (a Register names its own pool type, and one without a token asks for none); give it a token_file",
            policy.display()
        )],
        "{lines:?}"
    );
}

/// A running `tether bus serve` and the address it said it listens on.
struct Served {
    child: Child,
    addr: SocketAddr,
    stderr: std::sync::mpsc::Receiver<String>,
}

/// A test that fails leaves no bus behind (it would hold the test's output open).
impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    /// SIGKILL, and wait until it is gone.
    fn kill_9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

fn serve(data: &Path) -> Served {
    serve_with(data, &[])
}

#[allow(clippy::zombie_processes, reason = "the test kills and waits for it")]
fn serve_with(data: &Path, args: &[&str]) -> Served {
    let mut child = tether()
        .args(["bus", "serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    loop {
        let line = rx.recv_timeout(HANG).expect("no `listening on` line");
        if let Some(rest) = line.strip_prefix("tether bus: listening on ") {
            let addr = rest.split(' ').next().unwrap().parse().unwrap();
            return Served {
                child,
                addr,
                stderr: rx,
            };
        }
    }
}

fn req<T>(msg: T, session: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert(PROTOCOL_HEADER, "1".parse().unwrap());
    if !session.is_empty() {
        r.metadata_mut()
            .insert(SESSION_HEADER, session.parse().unwrap());
    }
    r
}

async fn register(
    addr: SocketAddr,
    instance: &str,
    action: Action,
) -> (BusApiClient<Channel>, String) {
    let mut api = BusApiClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let answer = api
        .register(req(
            RegisterRequest {
                protocol_major: 1,
                instance_id: instance.into(),
                pool_type: "Test".into(),
                requested_grants: vec![Grant {
                    topic: "stream.*".into(),
                    action: action as i32,
                }],
                ..Default::default()
            },
            "",
        ))
        .await
        .unwrap()
        .into_inner();
    (api, answer.session)
}

/// The stream of the kill -9 test: 100,000 messages of 1 KB, 64 publishes in flight.
const TOTAL: usize = 100_000;
const IN_FLIGHT: usize = 64;
const SIZE: usize = 1024;
/// Ids per Ack call, and Ack calls in flight, of the subscribers.
const ACK_BATCH: usize = 128;
const ACKS_IN_FLIGHT: usize = 4;

/// Message `i`: its number, padded to 1 KB.
fn payload(i: usize) -> Vec<u8> {
    let mut v = format!("m-{i:06}-").into_bytes();
    v.resize(SIZE, b'.');
    v
}

/// What a subscriber saw.
#[derive(Default)]
struct Consumed {
    /// Sequence -> how many times it was delivered.
    delivered: BTreeMap<u64, u32>,
    /// Sequences whose ack the bus answered.
    acked: BTreeSet<u64>,
    /// Sequences whose ack was sent, answered or not: one unanswered when the bus was killed
    /// may or may not have been committed, so it may or may not come again.
    ack_sent: BTreeSet<u64>,
    /// Deliveries whose payload is not the one published with that sequence.
    wrong: Vec<u64>,
}

/// Subscribes to `stream.*` as `consumer` and acks the first `ack_first` deliveries it gets, in
/// batches with several Ack calls in flight, and no more, until the stream ends (the bus is gone).
async fn consume(
    addr: SocketAddr,
    ack_deadline_ms: u32,
    ack_first: usize,
    published: Arc<BTreeMap<u64, usize>>,
    seen: Arc<Mutex<Consumed>>,
) {
    let (api, session) = register(addr, "consumer", Action::Subscribe).await;
    let mut stream = api
        .clone()
        .subscribe(req(
            SubscribeRequest {
                subscription: Some(Subscription {
                    topic: "stream.*".into(),
                    ack_deadline_ms,
                    // Slow acks on a busy machine must not turn into dead letters.
                    max_deliver: 1_000_000,
                    ..Default::default()
                }),
            },
            &session,
        ))
        .await
        .unwrap()
        .into_inner();
    let permits = Arc::new(tokio::sync::Semaphore::new(ACKS_IN_FLIGHT));
    let mut batch: Vec<(String, u64)> = Vec::new();
    let mut to_ack = ack_first;
    loop {
        let next = if batch.is_empty() {
            stream.message().await
        } else {
            // A short lull: ack what we hold rather than wait for a full batch.
            match tokio::time::timeout(Duration::from_millis(20), stream.message()).await {
                Ok(next) => next,
                Err(_) => {
                    ack(&api, &session, &permits, &seen, std::mem::take(&mut batch)).await;
                    continue;
                }
            }
        };
        let Ok(Some(d)) = next else { return };
        {
            let mut seen = seen.lock().unwrap();
            *seen.delivered.entry(d.sequence).or_default() += 1;
            if let Some(i) = published.get(&d.sequence)
                && d.data != payload(*i)
            {
                seen.wrong.push(d.sequence);
            }
        }
        if to_ack > 0 {
            to_ack -= 1;
            batch.push((d.delivery_id, d.sequence));
        }
        if batch.len() >= ACK_BATCH || (to_ack == 0 && !batch.is_empty()) {
            ack(&api, &session, &permits, &seen, std::mem::take(&mut batch)).await;
        }
    }
}

/// Sends one Ack call for `batch` in the background; its sequences count as acked once the bus
/// answered it.
async fn ack(
    api: &BusApiClient<Channel>,
    session: &str,
    permits: &Arc<tokio::sync::Semaphore>,
    seen: &Arc<Mutex<Consumed>>,
    batch: Vec<(String, u64)>,
) {
    let permit = permits.clone().acquire_owned().await.unwrap();
    let (ids, seqs): (Vec<String>, Vec<u64>) = batch.into_iter().unzip();
    seen.lock().unwrap().ack_sent.extend(seqs.iter().copied());
    let r = req(AckRequest { delivery_ids: ids }, session);
    let mut api = api.clone();
    let seen = seen.clone();
    tokio::spawn(async move {
        if api.ack(r).await.is_ok() {
            seen.lock().unwrap().acked.extend(seqs);
        }
        drop(permit);
    });
}

/// Waits until `done` holds, failing as hung after [`HANG`].
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + HANG;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "{what}: stalled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn kill_9_loses_no_answered_publish_and_redelivers_only_unacked_messages() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let started = std::time::Instant::now();
    // First life: 64 publishes in flight; kill -9 once half the stream was answered.
    let mut first = serve(&data);
    let addr = first.addr;
    let answered: Arc<Mutex<BTreeMap<u64, usize>>> = Arc::default();
    rt.block_on({
        let answered = answered.clone();
        async move {
            let (publisher, session) = register(addr, "producer", Action::Publish).await;
            let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let mut tasks = Vec::new();
            for _ in 0..IN_FLIGHT {
                let (mut api, session) = (publisher.clone(), session.clone());
                let (next, answered) = (next.clone(), answered.clone());
                tasks.push(tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= TOTAL {
                            return;
                        }
                        let r = req(
                            PublishRequest {
                                topic: "stream.n".into(),
                                data: payload(i),
                                ..Default::default()
                            },
                            &session,
                        );
                        match api.publish(r).await {
                            Ok(a) => {
                                let seq = a.into_inner().sequence;
                                let old = answered.lock().unwrap().insert(seq, i);
                                assert_eq!(old, None, "sequence {seq} answered twice");
                            }
                            Err(_) => return,
                        }
                    }
                }));
            }
            until("publishing", || answered.lock().unwrap().len() >= TOTAL / 2).await;
            first.kill_9();
            for t in tasks {
                t.await.unwrap();
            }
        }
    });
    let published = Arc::new(answered.lock().unwrap().clone());
    eprintln!("publishing took {:.1?}", started.elapsed());
    assert!(
        published.len() < TOTAL,
        "the kill came after the last publish"
    );

    // Second life: every answered publish is there; a subscriber acks the first half of what it
    // gets and holds the next ones unacked; kill -9 with acks in flight.
    let mut second = serve(&data);
    let addr = second.addr;
    let life2 = Arc::new(Mutex::new(Consumed::default()));
    rt.block_on({
        let (published, life2) = (published.clone(), life2.clone());
        async move {
            let half = published.len() / 2;
            let consumer =
                tokio::spawn(consume(addr, 2_000, half, published.clone(), life2.clone()));
            // Deliveries past the half: held unacked (a subscriber holds up to 256).
            until("delivering", || {
                life2.lock().unwrap().delivered.len() >= half + 200
            })
            .await;
            second.kill_9();
            consumer.await.unwrap();
        }
    });
    let (acked, ack_sent, delivered_before) = {
        let l = life2.lock().unwrap();
        assert_eq!(l.wrong, Vec::<u64>::new(), "payloads that do not match");
        (l.acked.clone(), l.ack_sent.clone(), l.delivered.clone())
    };

    eprintln!(
        "consuming and acking: {:.1?} since the start",
        started.elapsed()
    );
    // Third life: what was not acked comes (again), what was acked does not.
    let third = serve(&data);
    let addr = third.addr;
    let life3 = Arc::new(Mutex::new(Consumed::default()));
    let must: BTreeSet<u64> = published
        .keys()
        .copied()
        .filter(|s| !ack_sent.contains(s))
        .collect();
    rt.block_on({
        let (published, life3, must) = (published.clone(), life3.clone(), must.clone());
        async move {
            let consumer =
                tokio::spawn(consume(addr, 60_000, usize::MAX, published, life3.clone()));
            until("redelivery", || {
                let l = life3.lock().unwrap();
                must.iter().all(|s| l.delivered.contains_key(s))
            })
            .await;
            consumer.abort();
        }
    });
    let l = life3.lock().unwrap();
    assert_eq!(l.wrong, Vec::<u64>::new(), "payloads that do not match");
    let again: Vec<u64> = l
        .delivered
        .keys()
        .copied()
        .filter(|s| acked.contains(s))
        .collect();
    assert_eq!(
        again,
        Vec::<u64>::new(),
        "acked before the kill, delivered after it"
    );
    let twice: Vec<(&u64, &u32)> = l.delivered.iter().filter(|(_, n)| **n > 1).collect();
    assert_eq!(
        twice,
        Vec::<(&u64, &u32)>::new(),
        "delivered twice after the restart"
    );
    let in_log = l
        .delivered
        .keys()
        .chain(acked.iter())
        .max()
        .copied()
        .unwrap_or(0);
    eprintln!(
        "publishes answered before kill -9: {} of {TOTAL} (the log holds {in_log}, the rest were in flight)",
        published.len()
    );
    eprintln!(
        "then delivered: {}, acks answered before kill -9: {}; after the restart: {} delivered, {} of them again (delivered unacked before), none acked",
        delivered_before.len(),
        acked.len(),
        l.delivered.len(),
        l.delivered
            .keys()
            .filter(|s| delivered_before.contains_key(s))
            .count()
    );
    drop(l);

    eprintln!("redelivery: {:.1?} since the start", started.elapsed());
    // SIGTERM: a clean stop, exit 0.
    let lines = stop(third);
    assert_eq!(
        lines.last().map(String::as_str),
        Some("tether bus: stopped"),
        "{lines:?}"
    );
}

/// `tether bus ARGS…` with `stdin`: its exit code, stdout and stderr.
fn bus_cli(args: &[&str], stdin: &str) -> (Option<i32>, String, String) {
    use std::io::Write as _;
    let mut child = tether()
        .arg("bus")
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    // A command that never ends (a tail short of its --count) fails the test as hung.
    let pid = child.id();
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if finished.recv_timeout(HANG).is_err() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    });
    let out = child.wait_with_output().unwrap();
    let _ = done.send(());
    watchdog.join().unwrap();
    assert!(
        out.status.code().is_some(),
        "`tether bus {}` hung and was killed; it said:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The messages `tail --json` printed, as (topic, sequence, data), sorted.
fn tailed(stdout: &str) -> Vec<(String, u64, String)> {
    let mut all: Vec<(String, u64, String)> = stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["topic"].as_str().unwrap().to_owned(),
                v["sequence"].as_u64().unwrap(),
                v["data"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    all.sort();
    all
}

/// `tether bus publish` and `tail` as a user runs them: a message from the argument or from
/// stdin, headers, `--json`, `--count`; a tail acks what it prints (the next one goes on after
/// it), and `--no-ack` gives back what it printed (the next one prints it again).
#[test]
fn publish_and_tail_from_a_shell() {
    let dir = tempfile::tempdir().unwrap();
    let served = serve(&dir.path().join("data"));
    let bus = served.addr.to_string();
    let ok = |out: (Option<i32>, String, String)| {
        assert_eq!(out.0, Some(0), "{}", out.2);
        out.1
    };

    assert_eq!(
        ok(bus_cli(
            &["publish", "--bus", &bus, "orders.eu", "buy 10"],
            ""
        )),
        "published on orders.eu: sequence 1\n"
    );
    assert_eq!(
        ok(bus_cli(
            &[
                "publish",
                "--bus",
                &bus,
                "--header",
                "content-type=text/plain",
                "--json",
                "orders.us"
            ],
            "two\nlines"
        )),
        "{\"topic\":\"orders.us\",\"sequence\":1}\n"
    );

    // A look without taking, as another instance.
    let peek = |n: &str| {
        ok(bus_cli(
            &[
                "tail",
                "--bus",
                &bus,
                "--instance",
                "peek",
                "--no-ack",
                "--json",
                "--count",
                n,
                "orders.>",
            ],
            "",
        ))
    };
    let both = vec![
        ("orders.eu".to_owned(), 1, "buy 10".to_owned()),
        ("orders.us".to_owned(), 1, "two\nlines".to_owned()),
    ];
    assert_eq!(tailed(&peek("2")), both);

    // The default instance's own consumer: both, as text, acked.
    let text = ok(bus_cli(
        &["tail", "--bus", &bus, "--count", "2", "orders.>"],
        "",
    ));
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        [
            "orders.eu #1: buy 10",
            "orders.us #1 content-type=text/plain: two\\nlines"
        ]
    );
    ok(bus_cli(
        &["publish", "--bus", &bus, "orders.eu", "sell 5"],
        "",
    ));
    // Acked before: only the new one.
    assert_eq!(
        ok(bus_cli(
            &["tail", "--bus", &bus, "--count", "1", "orders.>"],
            ""
        )),
        "orders.eu #2: sell 5\n"
    );
    // Given back before: all three for `peek`.
    let mut all = both;
    all.push(("orders.eu".to_owned(), 2, "sell 5".to_owned()));
    all.sort();
    assert_eq!(tailed(&peek("3")), all);
}

#[test]
fn publish_and_tail_refuse_what_they_cannot_do_with_one_error() {
    // Checked before anything is dialed.
    let (code, out, err) = bus_cli(&["publish", "--bus", "127.0.0.1:1", "orders.*", "x"], "");
    assert_eq!((code, out.as_str()), (Some(1), ""), "{err}");
    assert!(err.starts_with("error: the topic: "), "{err}");
    let (code, _, err) = bus_cli(&["publish", "--header", "novalue", "orders.eu", "x"], "");
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(
        err,
        "error: --header `novalue` is not NAME=VALUE\n  = hint: --header content-type=application/json\n"
    );
    let (code, _, err) = bus_cli(&["tail", "--bus", "127.0.0.1:1", "orders..x"], "");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.starts_with("error: the pattern `orders..x`: "), "{err}");
    // TLS asked for both ways, or not at all.
    let (code, _, err) = bus_cli(
        &[
            "publish",
            "--bus",
            "http://127.0.0.1:1",
            "--ca-file",
            "ca.pem",
            "a.b",
            "x",
        ],
        "",
    );
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(
        err,
        "error: --ca-file is for TLS and --bus http://127.0.0.1:1 says plain http\n  = hint: https://HOST:PORT, or HOST:PORT alone, with --ca-file\n"
    );
    let (code, _, err) = bus_cli(&["tail", "--bus", "https://127.0.0.1:1", "a.>"], "");
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.starts_with("error: --bus https://127.0.0.1:1 is TLS and no CA file was given\n"),
        "{err}"
    );
    // No bus there.
    let (code, _, err) = bus_cli(&["publish", "--bus", "127.0.0.1:1", "orders.eu", "x"], "");
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.starts_with("error: cannot reach the Bus API at http://127.0.0.1:1: "),
        "{err}"
    );

    // A policy that gives the CLI's pool nothing, and a pool with a token.
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(dir.path().join("ops.token"), "ops-secret\n").unwrap();
    std::fs::write(
        &policy,
        "pools:\n  Ops:\n    grants: [{ topic: \"orders.>\", action: publish }]\n    token_file: ops.token\n",
    )
    .unwrap();
    let served = serve_with(
        &dir.path().join("data"),
        &["--policy", policy.to_str().unwrap()],
    );
    let bus = served.addr.to_string();
    let (code, _, err) = bus_cli(&["publish", "--bus", &bus, "orders.eu", "x"], "");
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.starts_with("error: the bus did not give instance `tether-cli-publish-"),
        "{err}"
    );
    assert!(
        err.contains("` of pool `TetherCli` the grant to publish on `orders.eu`: "),
        "{err}"
    );
    assert!(
        err.contains("  = hint: register as an instance or pool the bus's policy gives it to"),
        "{err}"
    );
    let token = dir.path().join("ops.token");
    let (code, out, err) = bus_cli(
        &[
            "publish",
            "--bus",
            &bus,
            "--pool",
            "Ops",
            "--token-file",
            token.to_str().unwrap(),
            "orders.eu",
            "x",
        ],
        "",
    );
    assert_eq!(
        (code, out.as_str()),
        (Some(0), "published on orders.eu: sequence 1\n"),
        "{err}"
    );
    // The token never shows.
    assert!(!err.contains("ops-secret"), "{err}");
}
