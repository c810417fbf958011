//! `tether sidecar` as a real process beside a real `tether bus serve`, with plugins speaking the
//! protocol on loopback: the environment checked before anything starts, each fatal start-up
//! step, two pairs exchanging messages, grants, health, the drain's order, and the outbox across
//! a `kill -9`.
#![allow(clippy::print_stderr)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tether_bus_proto::v1::{PluginPublish, plugin_message, publish_result, sidecar_message};
use tokio::sync::mpsc;

#[path = "support/sidecar.rs"]
mod sidecar_support;
use sidecar_support::*;

fn bus(data: &Path, extra: &[&str]) -> (Proc, SocketAddr) {
    bus_on(data, "127.0.0.1:0", extra)
}

fn bus_on(data: &Path, listen: &str, extra: &[&str]) -> (Proc, SocketAddr) {
    let mut cmd = tether();
    cmd.args(["bus", "serve", "--listen", listen, "--data"])
        .arg(data)
        .args(extra);
    let mut p = Proc::spawn(cmd);
    let addr = p.addr_after("tether bus: listening on ");
    (p, addr)
}

/// Polls `path` until its status is `code`; answers the body.
async fn until_status(addr: SocketAddr, path: &str, code: u16) -> String {
    let until = Instant::now() + HANG;
    loop {
        let (c, body) = get(addr, path);
        if c == code {
            return body;
        }
        assert!(Instant::now() < until, "{path} stayed {c}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn a_malformed_environment_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let out = tether()
        .arg("sidecar")
        .env_clear()
        .env("NO_COLOR", "1")
        .env("POOL_TYPE", "Signal Pool")
        .env(
            "REQUESTED_GRANTS",
            r#"[{"topic":"orders.*","action":"read"}]"#,
        )
        .env("SIDECAR_ADDR", "9191")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: INSTANCE_ID is not set\n  = hint: allowed: 1 to 128 letters, digits, `.`, `-` or `_`, unique per instance: oms-1\n\
         error: POOL_TYPE `Signal Pool` is not a valid name\n  = hint: allowed: 1 to 128 letters, digits, `.`, `-` or `_`: SignalPool\n\
         error: REQUESTED_GRANTS[0].action `read` is not an action\n  = hint: allowed: a JSON array of {\"topic\": PATTERN, \"action\": \"publish\" or \"subscribe\"}: [{\"topic\":\"signals.>\",\"action\":\"publish\"}]\n\
         error: SIDECAR_ADDR `9191` is not an address\n  = hint: allowed: an IP address and a port: 127.0.0.1:9191\n\
         error: the environment is not usable; nothing was started\n"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    std::fs::write(
        dir.path().join("sidecar.yaml"),
        "drain_timeout: 20\nhealth_interval: fast\n",
    )
    .unwrap();
    let out = tether()
        .arg("sidecar")
        .env_clear()
        .env("NO_COLOR", "1")
        .env("INSTANCE_ID", "a")
        .env("POOL_TYPE", "P")
        .env("SIDECAR_CONFIG", "sidecar.yaml")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: health_interval: `fast` is not a duration"),
        "{stderr}"
    );
    assert!(stderr.contains("sidecar.yaml:2:18"), "{stderr}");
    assert!(
        stderr.ends_with("error: found 1 problem in the sidecar config; nothing was started\n"),
        "{stderr}"
    );
    assert!(!dir.path().join(".tether").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_fatal_start_up_step_exits_3_naming_the_step() {
    let dir = tempfile::tempdir().unwrap();
    // Step 1: nothing listens where the Bus API should be.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = closed.local_addr().unwrap();
    drop(closed);
    let (code, said) =
        spawn_sidecar(dir.path(), nowhere, "s1", &[], "connect_timeout: 1s\n").wait();
    assert_eq!(code, Some(3), "{said}");
    assert!(
        said.contains(&format!(
            "error: start-up step 1/8 (connect to the Bus API) failed: cannot reach the Bus API at http://{nowhere} within 1s: "
        )),
        "{said}"
    );

    // Steps 2 and 3: a bus whose policy asks for a token, and gives pool TestPool nothing.
    std::fs::write(dir.path().join("token"), "secret-one\n").unwrap();
    std::fs::write(
        dir.path().join("policy.yaml"),
        "instances:\n  locked:\n    token_file: token\n    grants: [{ topic: a.b, action: publish }]\npools:\n  TestPool:\n    grants: [{ topic: allowed.x, action: publish }]\n",
    )
    .unwrap();
    let policy = dir.path().join("policy.yaml");
    let (_bus, addr) = bus(
        &dir.path().join("bus"),
        &["--policy", policy.to_str().unwrap()],
    );
    let (code, said) = spawn_sidecar(dir.path(), addr, "locked", &["publish:a.b"], "").wait();
    assert_eq!(code, Some(3), "{said}");
    assert!(
        said.contains(&format!("error: start-up step 2/8 (register) failed: the Bus API at http://{addr} refused: the policy asks instance `locked` for a token and the Register carries none (Unauthenticated)")),
        "{said}"
    );
    assert!(!said.contains("secret-one"));
    let (code, said) = spawn_sidecar(dir.path(), addr, "s3", &["publish:orders.x"], "").wait();
    assert_eq!(code, Some(3), "{said}");
    assert!(
        said.contains("error: start-up step 3/8 (recover grants) failed: the bus gave none of the 1 requested grants: the policy gives pool type `TestPool` and instance `s3` no grant to publish on `orders.x`"),
        "{said}"
    );

    // Step 7: no plugin comes; then a plugin that subscribes outside the grants.
    let (code, said) = spawn_sidecar(
        dir.path(),
        addr,
        "s7",
        &["publish:allowed.x"],
        "accept_timeout: 1s\n",
    )
    .wait();
    assert_eq!(code, Some(3), "{said}");
    assert!(
        said.contains(
            "error: start-up step 7/8 (accept the plugin) failed: no plugin connected to 127.0.0.1:"
        ),
        "{said}"
    );
    assert!(
        said.contains("within 1s (the sidecar config's accept_timeout)"),
        "{said}"
    );
    // Steps 1-6 were each logged as they completed, in order.
    let steps: Vec<usize> = (1..=6)
        .map(|n| {
            said.find(&format!("step {n}/8 ("))
                .unwrap_or_else(|| panic!("step {n} not logged: {said}"))
        })
        .collect();
    assert!(steps.windows(2).all(|w| w[0] < w[1]), "{said}");

    let mut s = sidecar(dir.path(), addr, "s7b", &["publish:allowed.x"], "");
    let refused = Plugin::connect(s.addr, &["secret.*"], "")
        .await
        .err()
        .unwrap();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        refused.message(),
        "instance `s7b` has no grant to subscribe on `secret.*`"
    );
    s.proc.wait_for("failed");
    let (code, said) = s.proc.wait();
    assert_eq!(code, Some(3), "{said}");
    assert!(said.contains("error: start-up step 7/8 (accept the plugin) failed: the plugin's session was refused: instance `s7b` has no grant to subscribe on `secret.*` (PermissionDenied)"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pairs_exchange_messages_both_ways_within_their_grants() {
    let dir = tempfile::tempdir().unwrap();
    let (_bus, addr) = bus(&dir.path().join("bus"), &[]);
    let mut oms = sidecar(
        dir.path(),
        addr,
        "oms-1",
        &["publish:orders.>", "subscribe:signals.*"],
        "",
    );
    let mut sig = sidecar(
        dir.path(),
        addr,
        "sig-1",
        &["subscribe:orders.*", "publish:signals.>"],
        "",
    );
    let mut a = Plugin::connect(oms.addr, &["signals.*"], "").await.unwrap();
    let mut b = Plugin::connect(sig.addr, &["orders.*"], "").await.unwrap();
    assert_eq!(a.welcome.instance_id, "oms-1");
    assert_eq!(a.welcome.granted.len(), 2);
    // Routing begins after the first health answer; the readiness says so.
    oms.proc
        .wait_for("step 8/8 (begin routing): delivering signals.*");
    sig.proc
        .wait_for("step 8/8 (begin routing): delivering orders.*");
    until_status(oms.health, "/readyz", 200).await;
    until_status(sig.health, "/readyz", 200).await;

    let (r, _) = a.publish("orders.eu", b"buy 10").await;
    assert_eq!(accepted(&r), 1);
    let d = b.delivery().await;
    assert_eq!(
        (d.topic.as_str(), d.data.as_slice(), d.redelivered),
        ("orders.eu", &b"buy 10"[..], 0)
    );
    assert_eq!(d.subscription, "orders.*");
    b.ack(&d.delivery_id).await;

    let (r, _) = b.publish("signals.buy", b"go").await;
    assert_eq!(accepted(&r), 1);
    let d = a.delivery().await;
    assert_eq!(
        (d.topic.as_str(), d.data.as_slice()),
        ("signals.buy", &b"go"[..])
    );
    a.ack(&d.delivery_id).await;

    // Outside the grants: refused by the sidecar, naming topic and action.
    let (r, _) = a.publish("signals.sell", b"x").await;
    let publish_result::Result::Refused(refusal) = r else {
        panic!("published outside the grants");
    };
    assert_eq!(refusal.code, "PERMISSION_DENIED");
    assert_eq!(
        refusal.message,
        "instance `oms-1` has no grant to publish on `signals.sell`"
    );
    let (r, _) = a.publish("orders.*", b"x").await;
    let publish_result::Result::Refused(refusal) = r else {
        panic!("published to a pattern");
    };
    assert_eq!(refusal.code, "INVALID_ARGUMENT");

    // One plugin session at a time.
    let second = Plugin::connect(oms.addr, &[], "").await.err().unwrap();
    assert_eq!(second.code(), tonic::Code::AlreadyExists);

    // What each sidecar counted, on its health listener.
    until_metrics(
        oms.health,
        &[
            "tether_sidecar_publishes_sent_total 1",
            "tether_sidecar_publishes_kept_total 0",
            "tether_sidecar_publishes_refused_total 2",
            "tether_sidecar_publishes_in_flight 0",
            "tether_sidecar_deliveries_total 1",
            "tether_sidecar_redeliveries_total 0",
            "tether_sidecar_deliveries_in_flight 0",
            "tether_sidecar_acks_total 1",
            "tether_sidecar_nacks_total 0",
            "tether_sidecar_outbox_publishes 0",
            "tether_sidecar_bus_replica_moves_total 0",
        ],
    )
    .await;
    until_metrics(
        sig.health,
        &[
            "tether_sidecar_publishes_sent_total 1",
            "tether_sidecar_publishes_refused_total 0",
            "tether_sidecar_deliveries_total 1",
            "tether_sidecar_acks_total 1",
        ],
    )
    .await;
    let (code, body) = get(oms.health, "/metrics");
    assert_eq!(code, 200);
    assert!(
        body.contains("# HELP tether_sidecar_acks_total Deliveries the plugin acked.\n# TYPE tether_sidecar_acks_total counter\ntether_sidecar_acks_total 1\n"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_stops_answering_turns_readyz_then_healthz_503() {
    let dir = tempfile::tempdir().unwrap();
    let (_bus, addr) = bus(&dir.path().join("bus"), &[]);
    let mut s = sidecar(
        dir.path(),
        addr,
        "hc-1",
        &["publish:hc.x"],
        "health_interval: 1s\nhealth_timeout: 500ms\n",
    );
    let p = Plugin::connect(s.addr, &[], "").await.unwrap();
    // Answer until routing began, then go silent (but stay connected).
    s.proc.wait_for("step 8/8 (begin routing)");
    until_status(s.health, "/readyz", 200).await;
    p.answer_health.store(false, Ordering::SeqCst);
    let body = until_status(s.health, "/readyz", 503).await;
    assert!(
        body.starts_with(r#"{"ready":false,"missing":["plugin_healthy"],"registered":true,"grants_recovered":true,"plugin_connected":true,"plugin_healthy":false"#),
        "{body}"
    );
    let body = until_status(s.health, "/healthz", 503).await;
    assert_eq!(body, r#"{"alive":false,"failed_checks":3,"limit":3}"#);
    // The sidecar's own part stays ready: what a startupProbe waits for.
    assert_eq!(get(s.health, "/readyz?bus").0, 200);
    s.proc
        .wait_for("the plugin did not answer a health check within 500ms (3 in a row)");
    // Counted (at least those three: checks go on every second).
    let failed = metric(s.health, "tether_sidecar_health_checks_failed_total");
    assert!(failed >= 3, "{failed} failed checks counted");
    drop(p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_closed_with_a_health_check_unanswered_is_no_failed_check() {
    let dir = tempfile::tempdir().unwrap();
    let (_bus, addr) = bus(&dir.path().join("bus"), &[]);
    // One check within the test (the first, sent at once), and no answer can be late.
    let mut s = sidecar(
        dir.path(),
        addr,
        "hc-2",
        &["publish:hc.x"],
        "health_interval: 1h\nhealth_timeout: 1h\n",
    );
    let mut p = Plugin::connect_answering(s.addr, &[], "", false)
        .await
        .unwrap();
    assert!(
        matches!(p.next().await, Some(sidecar_message::Kind::HealthCheck(_))),
        "no health check"
    );
    // The plugin stops before it answered (an SDK told to stop as it started) and closes.
    p.close().await;
    s.proc.wait_for("the plugin closed its session 1");
    s.proc.signal("-TERM");
    let (code, said) = std::mem::replace(&mut s.proc, Proc::spawn(Command::new("true"))).wait();
    assert_eq!(code, Some(0), "{said}");
    assert!(
        !said.contains("did not answer a health check"),
        "a closed session's check counted as unanswered:\n{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_order_and_the_unacked_goes_to_another_instance() {
    let dir = tempfile::tempdir().unwrap();
    let (_bus, addr) = bus(&dir.path().join("bus"), &[]);
    let mut pub_side = sidecar(dir.path(), addr, "feeder", &["publish:jobs.>"], "");
    let mut feeder = Plugin::connect(pub_side.addr, &[], "").await.unwrap();
    pub_side.proc.wait_for("step 8/8");
    // One delivery in flight at a time, so the second waits in the sidecar.
    let mut w1 = sidecar(
        dir.path(),
        addr,
        "worker-1",
        &["subscribe:jobs.*"],
        "max_in_flight: 1\n",
    );
    let mut p1 = Plugin::connect(w1.addr, &["jobs.*"], "workers")
        .await
        .unwrap();
    w1.proc.wait_for("step 8/8");
    for body in [&b"job-1"[..], b"job-2"] {
        let (r, _) = feeder.publish("jobs.a", body).await;
        accepted(&r);
    }
    let first = p1.delivery().await;
    assert_eq!(first.data, b"job-1");

    w1.proc.signal("-TERM");
    // From the plugin's side: Stop comes, and no delivery after it.
    match p1.next().await {
        Some(sidecar_message::Kind::Stop(stop)) => assert_eq!(stop.drain_timeout_ms, 20_000),
        other => panic!("expected Stop, got {other:?}"),
    }
    // The in-flight message is finished and acked after Stop; then the plugin closes.
    p1.ack(&first.delivery_id).await;
    let rest = p1.close().await;
    assert!(
        rest.iter()
            .all(|m| !matches!(m, sidecar_message::Kind::Delivery(_))),
        "a delivery after Stop: {rest:?}"
    );
    let (code, said) = std::mem::replace(&mut w1.proc, Proc::spawn(Command::new("true"))).wait();
    assert_eq!(code, Some(0), "{said}");
    let order = [
        "stopping: no new deliveries",
        "sent stop to the plugin",
        "the plugin closed its session",
        "deregistered from the Bus API",
        "tether sidecar: drained and deregistered",
    ];
    let at: Vec<usize> = order
        .iter()
        .map(|l| {
            said.find(l)
                .unwrap_or_else(|| panic!("{l:?} not in:\n{said}"))
        })
        .collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "out of order:\n{said}");

    // Another instance of the group gets job-2 (released, never processed by worker-1), and
    // never job-1 (acked).
    let mut w2 = sidecar(dir.path(), addr, "worker-2", &["subscribe:jobs.*"], "");
    let mut p2 = Plugin::connect(w2.addr, &["jobs.*"], "workers")
        .await
        .unwrap();
    w2.proc.wait_for("step 8/8");
    let d = p2.delivery().await;
    assert_eq!(d.data, b"job-2");
    p2.ack(&d.delivery_id).await;
    let (r, _) = feeder.publish("jobs.a", b"job-3").await;
    accepted(&r);
    let d = p2.delivery().await;
    assert_eq!(d.data, b"job-3", "job-1 was delivered again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_timeout_and_a_second_signal_end_it_at_once_saying_so() {
    let dir = tempfile::tempdir().unwrap();
    let (_bus, addr) = bus(&dir.path().join("bus"), &[]);
    let mut feeder_side = sidecar(dir.path(), addr, "feeder", &["publish:jobs.>"], "");
    let mut feeder = Plugin::connect(feeder_side.addr, &[], "").await.unwrap();
    feeder_side.proc.wait_for("step 8/8");

    // A plugin that never finishes its message: the drain timeout passes.
    let mut w = sidecar(
        dir.path(),
        addr,
        "slow",
        &["subscribe:jobs.*"],
        "drain_timeout: 1s\n",
    );
    let mut p = Plugin::connect(w.addr, &["jobs.*"], "").await.unwrap();
    w.proc.wait_for("step 8/8");
    let (r, _) = feeder.publish("jobs.a", b"stuck").await;
    accepted(&r);
    let held = p.delivery().await;
    w.proc.signal("-TERM");
    let (code, said) = std::mem::replace(&mut w.proc, Proc::spawn(Command::new("true"))).wait();
    assert_eq!(code, Some(4), "{said}");
    assert!(
        said.contains("error: the drain timeout (1s) passed with 1 delivery in flight: released to the bus, which delivers it again"),
        "{said}"
    );
    drop(p);

    // The released message comes again, to the same instance started again, redelivered.
    let mut w = sidecar(dir.path(), addr, "slow", &["subscribe:jobs.*"], "");
    let mut p = Plugin::connect(w.addr, &["jobs.*"], "").await.unwrap();
    w.proc.wait_for("step 8/8");
    let again = p.delivery().await;
    assert_eq!(again.data, b"stuck");
    assert_eq!(again.sequence, held.sequence);
    assert!(again.redelivered >= 1);

    // A second SIGTERM during the drain: at once, 128+15.
    w.proc.signal("-TERM");
    w.proc.wait_for("sent stop to the plugin");
    w.proc.signal("-TERM");
    let (code, said) = std::mem::replace(&mut w.proc, Proc::spawn(Command::new("true"))).wait();
    assert_eq!(code, Some(143), "{said}");
    assert!(
        said.contains("error: a second signal (15) during the drain: stopped at once; 1 deliveries in flight are delivered again after their ack deadline"),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_kept_in_the_outbox_survive_a_kill_9_of_the_sidecar() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("bus");
    let (mut bus1, addr) = bus(&data, &[]);
    let mut s = sidecar(dir.path(), addr, "out-1", &["publish:audit.>"], "");
    let mut p = Plugin::connect(s.addr, &[], "").await.unwrap();
    s.proc.wait_for("step 8/8");
    let (r, _) = p.publish("audit.a", b"before").await;
    assert_eq!(accepted(&r), 1);

    // The bus goes away: publishes are accepted into the outbox (sequence 0), in order.
    bus1.signal("-KILL");
    let _ = bus1.child.wait();
    for i in 0..3 {
        let (r, _) = p.publish("audit.a", format!("kept-{i}").as_bytes()).await;
        assert_eq!(accepted(&r), 0);
    }
    // The sidecar dies too, with them only on its disk.
    s.proc.signal("-KILL");
    drop(p);
    let _ = s.proc.child.wait();

    let (_bus2, addr2) = bus_on(&data, &addr.to_string(), &[]);
    assert_eq!(addr2, addr);
    let mut s = Proc::spawn({
        let mut c = Command::new(env!("CARGO_BIN_EXE_tether"));
        c.arg("sidecar");
        c
    });
    drop(std::mem::replace(
        &mut s,
        spawn_sidecar(
            dir.path(),
            addr,
            "out-1",
            &["publish:audit.>", "subscribe:audit.>"],
            "",
        ),
    ));
    s.wait_for("step 4/8 (recover local state): outbox");
    let line = s.wait_for("publishes to forward");
    assert!(line.contains("with 3 publishes to forward"), "{line}");
    let plugin_addr = s.addr_after("plugins connect to ");
    let mut p = Plugin::connect(plugin_addr, &["audit.>"], "")
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 4 {
        let d = p.delivery().await;
        got.push(String::from_utf8(d.data.clone()).unwrap());
        p.ack(&d.delivery_id).await;
    }
    assert_eq!(got, ["before", "kept-0", "kept-1", "kept-2"]);
}

/// The Rust SDK end to end: two plugins in this process, each beside its own real sidecar.
mod rust_sdk {
    use std::sync::Mutex;

    use tether_plugin::{BoxError, Bus, Message, Nack, Plugin, PublishError};
    use tokio::sync::mpsc::UnboundedSender;

    use super::*;

    /// Publishes three orders at start; reports each signal that comes back.
    pub struct OrderDesk {
        pub signals: UnboundedSender<String>,
    }

    impl Plugin for OrderDesk {
        fn subscriptions(&self) -> Vec<tether_plugin::Subscription> {
            vec![tether_plugin::Subscription::new("signals.*")]
        }

        async fn on_start(&self, bus: &Bus) -> Result<(), BoxError> {
            for kind in ["buy", "sell", "hold"] {
                bus.publish("orders.new", kind.as_bytes().to_vec()).await?;
            }
            Ok(())
        }

        async fn on_message(&self, _bus: &Bus, msg: Message) -> Result<(), Nack> {
            let _ = self.signals.send(format!(
                "{} {} from {}",
                msg.topic,
                String::from_utf8_lossy(&msg.data),
                msg.header("source-topic").unwrap_or("?")
            ));
            Ok(())
        }
    }

    /// Turns each order into a signal; tries once to publish outside its grants.
    pub struct SignalMaker {
        pub events: Arc<Mutex<Vec<String>>>,
    }

    impl Plugin for SignalMaker {
        fn subscriptions(&self) -> Vec<tether_plugin::Subscription> {
            vec![tether_plugin::Subscription::new("orders.*").group("makers")]
        }

        async fn on_message(&self, bus: &Bus, msg: Message) -> Result<(), Nack> {
            // One topic, so its order is kept; the kind is the payload.
            let kind = String::from_utf8_lossy(&msg.data).into_owned();
            if kind == "hold" {
                let denied = bus.publish("orders.more", b"x".to_vec()).await;
                let event = match denied {
                    Err(PublishError::PermissionDenied { .. }) => {
                        format!("denied: {}", denied.unwrap_err())
                    }
                    other => format!("not denied: {other:?}"),
                };
                self.events.lock().unwrap().push(event);
            }
            self.events.lock().unwrap().push(format!("handled {kind}"));
            // Last, so that every event is recorded when the test sees the signal.
            bus.publish_with(
                format!("signals.{kind}"),
                msg.data.clone(),
                [("source-topic", msg.topic.as_str())],
            )
            .await?;
            Ok(())
        }

        async fn on_stop(&self) {
            self.events.lock().unwrap().push("on_stop".into());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_sdk_exchanges_messages_through_real_sidecars_and_drains_on_sigterm() {
    use rust_sdk::{OrderDesk, SignalMaker};
    let dir = tempfile::tempdir().unwrap();
    let (_bus, addr) = bus(&dir.path().join("bus"), &[]);
    let mut desk_side = sidecar(
        dir.path(),
        addr,
        "desk",
        &["publish:orders.>", "subscribe:signals.*"],
        "",
    );
    let mut maker_side = sidecar(
        dir.path(),
        addr,
        "maker",
        &["subscribe:orders.*", "publish:signals.>"],
        "",
    );

    let events = Arc::new(std::sync::Mutex::new(Vec::new()));
    let maker = tokio::spawn(tether_plugin::run_with(
        SignalMaker {
            events: events.clone(),
        },
        tether_plugin::Options::new(maker_side.addr.to_string()).signals(false),
    ));
    maker_side.proc.wait_for("step 8/8");
    let (signals, mut received) = mpsc::unbounded_channel();
    let (stop_desk, desk_stopped) = tokio::sync::oneshot::channel::<()>();
    let desk = tokio::spawn(tether_plugin::run_with(
        OrderDesk { signals },
        tether_plugin::Options::new(desk_side.addr.to_string())
            .signals(false)
            .stop_when(async move {
                let _ = desk_stopped.await;
            }),
    ));
    desk_side.proc.wait_for("step 8/8");
    let mut got = Vec::new();
    while got.len() < 3 {
        got.push(
            tokio::time::timeout(HANG, received.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    // Three signal topics: order is kept per topic only.
    got.sort();
    assert_eq!(
        got,
        [
            "signals.buy buy from orders.new",
            "signals.hold hold from orders.new",
            "signals.sell sell from orders.new"
        ]
    );

    // SIGTERM to the maker's sidecar: the plugin's on_stop runs and its run returns Ok.
    maker_side.proc.signal("-TERM");
    tokio::time::timeout(HANG, maker)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let (code, said) =
        std::mem::replace(&mut maker_side.proc, Proc::spawn(Command::new("true"))).wait();
    assert_eq!(code, Some(0), "{said}");
    assert_eq!(
        *events.lock().unwrap(),
        [
            "handled buy",
            "handled sell",
            "denied: cannot publish to `orders.more`: permission denied: instance `maker` has no grant to publish on `orders.more`",
            "handled hold",
            "on_stop"
        ]
    );
    let _ = stop_desk.send(());
    tokio::time::timeout(HANG, desk)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_sidecars_ride_out_a_bus_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("bus");
    let (mut bus1, addr) = bus(&data, &["--http", "127.0.0.1:0"]);
    let metrics = bus1.addr_after("/metrics on http://");
    let mut a = sidecar(
        dir.path(),
        addr,
        "pub-1",
        &["publish:feed.>"],
        "outbox_size: 2KiB\n",
    );
    let mut b = sidecar(dir.path(), addr, "sub-1", &["subscribe:feed.>"], "");
    let mut publisher = Plugin::connect(a.addr, &[], "").await.unwrap();
    let mut subscriber = Plugin::connect(b.addr, &["feed.>"], "").await.unwrap();
    a.proc.wait_for("step 8/8");
    b.proc.wait_for("step 8/8");
    let (r, _) = publisher.publish("feed.x", b"one").await;
    assert_eq!(accepted(&r), 1);
    let d = subscriber.delivery().await;
    assert_eq!(d.data, b"one");
    subscriber.ack(&d.delivery_id).await;
    // The sidecar passes acks on in batches: kill the bus once this one is durable there (an
    // ack still on its way would make "one" come again, as at-least-once allows).
    let until = Instant::now() + HANG;
    while !get(metrics, "/metrics")
        .1
        .contains("tether_bus_acks_total 1")
    {
        assert!(Instant::now() < until, "the ack never reached the bus");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    bus1.signal("-KILL");
    let _ = bus1.child.wait();
    let (r, _) = publisher.publish("feed.x", b"two").await;
    assert_eq!(accepted(&r), 0, "kept in the outbox while the bus is down");
    a.proc.wait_for("wait in the outbox");
    // The outbox does not grow without bound: past its size, a publish is refused.
    let (r, _) = publisher.publish("feed.x", &[b'x'; 4096]).await;
    let publish_result::Result::Refused(full) = r else {
        panic!("a publish past the outbox's size was accepted");
    };
    assert_eq!(full.code, "RESOURCE_EXHAUSTED");
    assert_eq!(
        full.message,
        "the outbox is full (2048 bytes, the sidecar config's outbox_size) while the bus is unreachable"
    );

    let (_bus2, addr2) = bus_on(&data, &addr.to_string(), &[]);
    assert_eq!(addr2, addr);
    // The outbox is forwarded and the subscription resumes, with nothing acked delivered again.
    let d = subscriber.delivery().await;
    assert_eq!((d.data.as_slice(), d.sequence), (&b"two"[..], 2));
    subscriber.ack(&d.delivery_id).await;
    // Once the outbox is empty, publishes go straight to the bus again.
    a.proc
        .wait_for("the outbox is empty: 1 publish forwarded to the bus");
    let (r, _) = publisher.publish("feed.x", b"three").await;
    assert_eq!(accepted(&r), 3);
    let d = subscriber.delivery().await;
    assert_eq!((d.data.as_slice(), d.sequence), (&b"three"[..], 3));
    // "one" and "three" went straight to the bus, "two" through the outbox, the fourth was
    // refused; the subscriber saw each once.
    until_metrics(
        a.health,
        &[
            "tether_sidecar_publishes_sent_total 2",
            "tether_sidecar_publishes_kept_total 1",
            "tether_sidecar_publishes_refused_total 1",
            "tether_sidecar_outbox_forwarded_total 1",
            "tether_sidecar_outbox_dropped_total 0",
            "tether_sidecar_outbox_publishes 0",
        ],
    )
    .await;
    until_metrics(
        b.health,
        &[
            "tether_sidecar_deliveries_total 3",
            "tether_sidecar_redeliveries_total 0",
        ],
    )
    .await;
}

/// A sidecar gone without closing its connection (its node lost or cut off; here a stopped
/// process) answers none of the bus's pings: the bus closes the connection, and the
/// subscription stream on it ends, instead of being held open for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_ends_the_subscription_of_a_sidecar_that_stops_answering() {
    let dir = tempfile::tempdir().unwrap();
    let (mut bus, addr) = bus(&dir.path().join("bus"), &["--http", "127.0.0.1:0"]);
    let metrics = bus.addr_after("/metrics on http://");
    let mut s = sidecar(dir.path(), addr, "sub-1", &["subscribe:feed.>"], "");
    let _plugin = Plugin::connect(s.addr, &["feed.>"], "").await.unwrap();
    s.proc.wait_for("step 8/8");
    until_metrics(metrics, &["tether_bus_consumers 1"]).await;
    s.proc.signal("-STOP");
    until_metrics(metrics, &["tether_bus_consumers 0"]).await;
}

/// The next line of `proc` with `needle`, waiting up to `wait` (a drain of a large outbox may
/// take longer than `HANG`).
fn wait_long(proc: &mut Proc, needle: &str, wait: Duration) -> String {
    let until = Instant::now() + wait;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match proc.lines.recv_timeout(left) {
            Ok(line) => {
                proc.seen.push(line.clone());
                if line.contains(needle) {
                    return line;
                }
            }
            Err(_) => panic!(
                "no line with {needle:?} within {}s; the process said:\n{}",
                wait.as_secs(),
                proc.seen.join("\n")
            ),
        }
    }
}

/// An outbox holding several topics interleaved drains with each topic's publishes in the
/// order the plugin made them. It prints the drain's rate (no assertion on it): with
/// `OUTBOX_DRAIN_N=20000` (default 2,000) and `OUTBOX_DRAIN_TOPICS` (default 16) it is the
/// measurement of README's sidecar section.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_of_interleaved_topics_drains_in_order_per_topic() {
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .map_or(default, |v| v.parse().expect(name))
    };
    let n = env("OUTBOX_DRAIN_N", 2000);
    let topics = env("OUTBOX_DRAIN_TOPICS", 16);
    let rounds = n.div_ceil(topics);
    let n = rounds * topics;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("bus");
    let (mut bus1, addr) = bus(&data, &[]);
    let mut s = sidecar(dir.path(), addr, "drain-1", &["publish:drain.>"], "");
    let mut p = Plugin::connect(s.addr, &[], "").await.unwrap();
    s.proc.wait_for("step 8/8");
    bus1.signal("-KILL");
    let _ = bus1.child.wait();

    // Each round publishes once to every topic, all in flight at once; a topic's next publish
    // is made once its last one was answered, so each topic's order is the plugin's.
    let started = Instant::now();
    for round in 0..rounds {
        let first = p.next_request + 1;
        for t in 0..topics {
            p.next_request += 1;
            p.tx.send(send(plugin_message::Kind::Publish(PluginPublish {
                request_id: p.next_request,
                topic: format!("drain.t{t}"),
                data: round.to_string().into_bytes(),
                ..Default::default()
            })))
            .await
            .unwrap();
        }
        let mut answered = 0;
        while answered < topics {
            match p.next().await {
                Some(sidecar_message::Kind::PublishResult(r)) if r.request_id >= first => {
                    assert_eq!(accepted(&r.result.unwrap()), 0, "kept in the outbox");
                    answered += 1;
                }
                other => panic!("expected a publish's result, got {other:?}"),
            }
        }
    }
    let pushed = started.elapsed();
    eprintln!(
        "outbox: {n} publishes on {topics} topics ({topics} in flight) kept in {:.1}s ({:.0} msg/s)",
        pushed.as_secs_f64(),
        n as f64 / pushed.as_secs_f64()
    );

    let (_bus2, addr2) = bus_on(&data, &addr.to_string(), &[]);
    assert_eq!(addr2, addr);
    let started = Instant::now();
    let wait = HANG.max(Duration::from_millis(100) * n as u32);
    wait_long(&mut s.proc, "the bus takes publishes again", wait);
    let resumed = started.elapsed();
    let line = wait_long(&mut s.proc, "the outbox is empty", wait);
    let drained = started.elapsed();
    assert!(
        line.contains(&format!(
            "the outbox is empty: {n} publishes forwarded to the bus"
        )),
        "{line}"
    );
    eprintln!(
        "outbox: {n} publishes drained {:.1}s after the bus started ({:.0} msg/s; {:.1}s of it waiting for the forwarder's backoff and the first answers)",
        drained.as_secs_f64(),
        n as f64 / drained.as_secs_f64(),
        resumed.as_secs_f64(),
    );

    // Every publish arrives once, each topic's in order.
    let r = sidecar(dir.path(), addr, "drain-2", &["subscribe:drain.>"], "");
    let mut c = Plugin::connect(r.addr, &["drain.>"], "").await.unwrap();
    let mut next = vec![0usize; topics];
    for _ in 0..n {
        let d = c.delivery().await;
        c.ack(&d.delivery_id).await;
        let t: usize = d.topic.strip_prefix("drain.t").unwrap().parse().unwrap();
        let round: usize = String::from_utf8(d.data).unwrap().parse().unwrap();
        assert_eq!(
            (round, d.redelivered),
            (next[t], 0),
            "on drain.t{t}, out of order or again"
        );
        next[t] += 1;
    }
    assert_eq!(next, vec![rounds; topics]);
}

#[path = "../../bus/tests/support/certs.rs"]
mod certs;
use certs::ca_and_server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_speaks_tls_to_the_bus_and_refuses_an_unknown_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = ca_and_server();
    let (other_ca, _, _) = ca_and_server();
    for (name, text) in [
        ("ca.pem", &ca),
        ("cert.pem", &cert),
        ("key.pem", &key),
        ("other-ca.pem", &other_ca),
    ] {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let p = |n: &str| dir.path().join(n).display().to_string();
    let (_bus, addr) = bus(
        &dir.path().join("bus"),
        &["--tls-cert", &p("cert.pem"), "--tls-key", &p("key.pem")],
    );
    let url = format!("https://localhost:{}", addr.port());

    // Trusting the bus's CA: connected over TLS, and a publish goes through.
    let mut cmd = tether();
    cmd.arg("sidecar")
        .env_clear()
        .env("INSTANCE_ID", "tls-1")
        .env("POOL_TYPE", "TestPool")
        .env(
            "REQUESTED_GRANTS",
            r#"[{"topic":"secure.>","action":"publish"}]"#,
        )
        .env("SIDECAR_BUS_API_URL", &url)
        .env("SIDECAR_ADDR", "127.0.0.1:0")
        .env("SIDECAR_HEALTH_ADDR", "127.0.0.1:0")
        .env("SIDECAR_CONFIG", dir.path().join("tls.yaml"));
    std::fs::write(
        dir.path().join("tls.yaml"),
        format!("data_dir: tls-data\nca_file: {}\n", p("ca.pem")),
    )
    .unwrap();
    let mut s = Proc::spawn(cmd);
    s.wait_for(&format!(
        "step 1/8 (connect to the Bus API): connected to {url}"
    ));
    let plugin_addr = s.addr_after("plugins connect to ");
    let mut plugin = Plugin::connect(plugin_addr, &[], "").await.unwrap();
    s.wait_for("step 8/8");
    let (r, _) = plugin.publish("secure.x", b"over tls").await;
    assert_eq!(accepted(&r), 1);

    // Trusting another CA: step 1 fails, naming the certificate problem.
    std::fs::write(
        dir.path().join("other.yaml"),
        format!(
            "data_dir: other-data\nca_file: {}\nconnect_timeout: 1s\n",
            p("other-ca.pem")
        ),
    )
    .unwrap();
    let mut cmd = tether();
    cmd.arg("sidecar")
        .env_clear()
        .env("INSTANCE_ID", "tls-2")
        .env("POOL_TYPE", "TestPool")
        .env("SIDECAR_BUS_API_URL", &url)
        .env("SIDECAR_ADDR", "127.0.0.1:0")
        .env("SIDECAR_HEALTH_ADDR", "127.0.0.1:0")
        .env("SIDECAR_CONFIG", dir.path().join("other.yaml"));
    let (code, said) = Proc::spawn(cmd).wait();
    assert_eq!(code, Some(3), "{said}");
    assert!(
        said.contains(&format!(
            "error: start-up step 1/8 (connect to the Bus API) failed: cannot reach the Bus API at {url} within 1s: "
        )),
        "{said}"
    );
    assert!(said.contains("invalid peer certificate"), "{said}");
}
