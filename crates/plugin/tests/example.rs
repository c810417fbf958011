//! The `signals` example as a process, against the fake sidecar: it turns an order into a
//! signal, and SIGTERM stops it cleanly (exit 0). Signals go to a child process, never to the
//! test runner.

mod support;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;

use support::{Sidecar, within};
use tether_bus_proto::v1::{self, PluginAck, plugin_message::Kind};

/// `target/<profile>/examples/signals`, which `cargo test -p tether-plugin` builds.
fn example() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("examples/signals");
    assert!(
        path.exists(),
        "{} is not built: run `cargo test -p tether-plugin` (it builds the examples)",
        path.display()
    );
    path
}

#[tokio::test]
async fn the_signals_example_signals_each_order_and_stops_on_sigterm() {
    let mut sidecar = Sidecar::start().await;
    let mut child = tokio::process::Command::new(example())
        .env_clear()
        .env("SIDECAR_ADDR", sidecar.addr.to_string())
        .env("SIDECAR_CONNECT_TIMEOUT", "20s")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let mut session = sidecar.next().await;
    assert_eq!(
        session.hello.subscriptions,
        [v1::Subscription {
            topic: "orders.*".into(),
            group: "signals".into(),
            ack_deadline_ms: 0,
            max_deliver: 0,
        }]
    );
    session.welcome();
    session.deliver("d1", "AAPL buy 10");
    let Kind::Publish(signal) = session.recv().await else {
        panic!("expected the signal")
    };
    assert_eq!(signal.topic, "signals.eu");
    assert_eq!(signal.data, b"AAPL buy 10");
    assert_eq!(
        signal.headers,
        HashMap::from([
            ("source-topic".to_string(), "orders.eu".to_string()),
            ("source-sequence".to_string(), "41".to_string()),
        ])
    );
    assert_eq!(signal.idempotency_key, "orders.eu-41");
    session.accept(signal.request_id, 5);
    assert_eq!(
        session.recv().await,
        Kind::Ack(PluginAck {
            delivery_id: "d1".into()
        })
    );

    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    session.half_closed().await;
    session.end();
    let status = within(child.wait()).await.unwrap();
    assert_eq!(status.code(), Some(0));
}
