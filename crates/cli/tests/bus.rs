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

/// A running `tether bus serve` and the address it said it listens on.
struct Served {
    child: Child,
    addr: SocketAddr,
    stderr: std::sync::mpsc::Receiver<String>,
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

const TOTAL: usize = 4_000;
const KILL_AFTER: usize = 1_500;
const PUBLISHERS: usize = 16;

#[derive(Default)]
struct Seen {
    /// payload -> sequence, for every publish the bus answered.
    published: BTreeMap<String, u64>,
    /// Sequences whose ack the bus answered, before the kill.
    acked: BTreeSet<u64>,
    /// Sequences delivered before the kill.
    delivered: BTreeSet<u64>,
}

#[test]
fn kill_9_in_a_stream_of_acknowledged_publishes_loses_none_and_redelivers_only_unacked() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));

    // First life: publishers and a subscriber that acks as it goes; kill -9 in the middle.
    let mut first = serve(&data);
    let addr = first.addr;
    rt.block_on({
        let seen = seen.clone();
        async move {
            let (mut sub, sub_session) = register(addr, "consumer", Action::Subscribe).await;
            let mut stream = sub
                .subscribe(req(
                    SubscribeRequest {
                        subscription: Some(Subscription {
                            topic: "stream.*".into(),
                            ack_deadline_ms: 1000,
                            // Slow acks on a busy machine must not turn into dead letters.
                            max_deliver: 1_000_000,
                            ..Default::default()
                        }),
                    },
                    &sub_session,
                ))
                .await
                .unwrap()
                .into_inner();
            let consumer = {
                let seen = seen.clone();
                tokio::spawn(async move {
                    while let Ok(Some(d)) = stream.message().await {
                        seen.lock().unwrap().delivered.insert(d.sequence);
                        let r = req(
                            AckRequest {
                                delivery_ids: vec![d.delivery_id],
                            },
                            &sub_session,
                        );
                        if sub.ack(r).await.is_err() {
                            return;
                        }
                        seen.lock().unwrap().acked.insert(d.sequence);
                    }
                })
            };
            let (publisher, pub_session) = register(addr, "producer", Action::Publish).await;
            let mut tasks = Vec::new();
            for w in 0..PUBLISHERS {
                let mut api = publisher.clone();
                let session = pub_session.clone();
                let seen = seen.clone();
                tasks.push(tokio::spawn(async move {
                    for i in (w..TOTAL).step_by(PUBLISHERS) {
                        let payload = format!("m-{i}");
                        let r = req(
                            PublishRequest {
                                topic: "stream.n".into(),
                                data: payload.clone().into_bytes(),
                                ..Default::default()
                            },
                            &session,
                        );
                        match api.publish(r).await {
                            Ok(answer) => {
                                seen.lock()
                                    .unwrap()
                                    .published
                                    .insert(payload, answer.into_inner().sequence);
                            }
                            Err(_) => return,
                        }
                    }
                }));
            }
            let deadline = tokio::time::Instant::now() + HANG;
            while seen.lock().unwrap().published.len() < KILL_AFTER {
                assert!(tokio::time::Instant::now() < deadline, "publishes stalled");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            first.child.kill().unwrap(); // SIGKILL
            first.child.wait().unwrap();
            for t in tasks {
                let _ = t.await;
            }
            let _ = consumer.await;
        }
    });
    let (published, acked_before, delivered_before) = {
        let s = seen.lock().unwrap();
        (s.published.clone(), s.acked.clone(), s.delivered.clone())
    };
    assert!(
        published.len() >= KILL_AFTER && published.len() < TOTAL,
        "killed at {}",
        published.len()
    );
    eprintln!(
        "killed after {} acknowledged publishes, {} delivered and {} acked",
        published.len(),
        delivered_before.len(),
        acked_before.len()
    );

    // Second life on the same data: every acknowledged message arrives, none acked comes again.
    let mut second = serve(&data);
    let addr = second.addr;
    let acked = acked_before.clone();
    let (after, sentinel_seq) = rt.block_on(async move {
        let acked_before = acked;
        let (mut sub, session) = register(addr, "consumer", Action::Subscribe).await;
        let mut stream = sub
            .subscribe(req(
                SubscribeRequest {
                    subscription: Some(Subscription {
                        topic: "stream.*".into(),
                        ack_deadline_ms: 60_000,
                        max_deliver: 1_000_000,
                        ..Default::default()
                    }),
                },
                &session,
            ))
            .await
            .unwrap()
            .into_inner();
        let (mut publisher, pub_session) = register(addr, "producer", Action::Publish).await;
        let sentinel = publisher
            .publish(req(
                PublishRequest {
                    topic: "stream.n".into(),
                    data: b"sentinel".to_vec(),
                    ..Default::default()
                },
                &pub_session,
            ))
            .await
            .unwrap()
            .into_inner()
            .sequence;
        let must: BTreeSet<u64> = published
            .values()
            .copied()
            .filter(|s| !acked_before.contains(s))
            .chain([sentinel])
            .collect();
        let by_seq: BTreeMap<u64, String> =
            published.iter().map(|(p, s)| (*s, p.clone())).collect();
        let mut after: BTreeMap<u64, u32> = BTreeMap::new();
        let mut missing = must.clone();
        while !missing.is_empty() {
            let d = tokio::time::timeout(HANG, stream.message())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "{} acknowledged messages never came, e.g. {:?}",
                        missing.len(),
                        missing.iter().take(5).collect::<Vec<_>>()
                    )
                })
                .unwrap()
                .unwrap();
            if let Some(payload) = by_seq.get(&d.sequence) {
                assert_eq!(
                    String::from_utf8_lossy(&d.data),
                    *payload,
                    "sequence {}",
                    d.sequence
                );
            }
            *after.entry(d.sequence).or_default() += 1;
            missing.remove(&d.sequence);
            sub.ack(req(
                AckRequest {
                    delivery_ids: vec![d.delivery_id],
                },
                &session,
            ))
            .await
            .unwrap();
        }
        (after, sentinel)
    });
    let again: Vec<u64> = after
        .keys()
        .copied()
        .filter(|s| acked_before.contains(s))
        .collect();
    assert_eq!(
        again,
        Vec::<u64>::new(),
        "acked before the kill, delivered again after it"
    );
    let twice: Vec<(&u64, &u32)> = after.iter().filter(|(_, n)| **n > 1).collect();
    assert_eq!(
        twice,
        Vec::<(&u64, &u32)>::new(),
        "delivered twice after the restart"
    );
    assert!(after.contains_key(&sentinel_seq));

    // SIGTERM: a clean stop, exit 0.
    let pid = second.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = second.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let mut lines = Vec::new();
    while let Ok(l) = second.stderr.recv_timeout(HANG) {
        lines.push(l);
    }
    assert_eq!(
        lines.last().map(String::as_str),
        Some("tether bus: stopped"),
        "{lines:?}"
    );
    drop(first.stderr);
}
