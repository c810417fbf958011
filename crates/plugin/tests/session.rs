//! The SDK against a fake sidecar on a real socket: each test plays one part of the session
//! contract in `bus.proto` and checks exactly what the plugin sent and what its callbacks saw.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use support::{Event, Sidecar, TestPlugin, event, spawn_plugin, within};
use tether_bus_proto::v1::{self, HealthAnswer, PluginAck, PluginNack, plugin_message::Kind};
use tether_plugin::{Error, Options, PublishError, Subscription};
use tonic::Status;

fn options(sidecar: &Sidecar) -> Options {
    Options::new(sidecar.addr.to_string()).connect_timeout(Duration::from_secs(20))
}

/// The test plugin, with [`options`], running against a fake sidecar: its first session
/// welcomed and `on_start` seen. The sidecar stops when dropped: keep it.
async fn started() -> (
    Sidecar,
    support::Session,
    tokio::sync::mpsc::UnboundedReceiver<Event>,
    std::sync::Arc<tokio::sync::Semaphore>,
    tokio::task::JoinHandle<Result<(), Error>>,
) {
    let mut sidecar = Sidecar::start().await;
    let (plugin, mut events, gate) = TestPlugin::new();
    let run = spawn_plugin(plugin, options(&sidecar));
    let mut session = sidecar.next().await;
    session.welcome();
    assert!(matches!(event(&mut events).await, Event::Start));
    (sidecar, session, events, gate, run)
}

fn ack(id: &str) -> Kind {
    Kind::Ack(PluginAck {
        delivery_id: id.into(),
    })
}

fn health(id: u64) -> Kind {
    Kind::Health(HealthAnswer {
        id,
        healthy: true,
        detail: "ok".into(),
    })
}

/// The fake's part of a clean stop: Stop, the half-close, then the call ends with OK.
async fn stop(mut session: support::Session) {
    session.stop();
    session.half_closed().await;
    session.end();
}

fn publish(kind: Kind) -> v1::PluginPublish {
    match kind {
        Kind::Publish(p) => p,
        other => panic!("expected a publish, got {other:?}"),
    }
}

#[tokio::test]
async fn hello_carries_the_major_the_subscriptions_and_the_client() {
    let mut sidecar = Sidecar::start().await;
    let (mut plugin, mut events, _gate) = TestPlugin::new();
    plugin.subscriptions = vec![
        Subscription::new("orders.*")
            .group("signals")
            .ack_deadline(Duration::from_secs(2))
            .max_deliver(3),
        Subscription::new("audit.>"),
    ];
    let run = spawn_plugin(plugin, options(&sidecar));

    let mut session = sidecar.next().await;
    assert_eq!(
        session.metadata.get("tether-bus-protocol").unwrap(),
        "1",
        "the metadata header"
    );
    assert_eq!(
        session.hello,
        v1::Hello {
            protocol_major: 1,
            subscriptions: vec![
                v1::Subscription {
                    topic: "orders.*".into(),
                    group: "signals".into(),
                    ack_deadline_ms: 2000,
                    max_deliver: 3,
                },
                v1::Subscription {
                    topic: "audit.>".into(),
                    group: String::new(),
                    ack_deadline_ms: 0,
                    max_deliver: 0,
                },
            ],
            client: format!("tether-plugin-rust {}", env!("CARGO_PKG_VERSION")),
        }
    );
    session.welcome();
    assert!(matches!(event(&mut events).await, Event::Start));
    stop(session).await;
    within(run).await.unwrap().unwrap();
    assert!(matches!(event(&mut events).await, Event::Stop));
}

#[tokio::test]
async fn health_waits_for_on_start_and_is_answered_beside_a_slow_message() {
    let mut sidecar = Sidecar::start().await;
    let (mut plugin, mut events, gate) = TestPlugin::new();
    plugin.publish_on_start = Some("plugin.started".into());
    let run = spawn_plugin(plugin, options(&sidecar));

    let mut session = sidecar.next().await;
    session.welcome();
    // The sidecar checks health at once; the SDK answers only after on_start returned, and
    // on_start waits here for its publish's result.
    session.health_check(1);
    let started = publish(session.recv().await);
    assert_eq!(started.topic, "plugin.started");
    assert_eq!(started.data, b"up");
    session.accept(started.request_id, 7);
    assert_eq!(session.recv().await, health(1));
    assert!(matches!(event(&mut events).await, Event::Start));
    assert!(matches!(
        event(&mut events).await,
        Event::StartPublished(Ok(7))
    ));
    assert!(matches!(event(&mut events).await, Event::Health));

    // A delivery only after the healthy answer; while it runs, health is still answered.
    session.deliver("d1", "slow");
    assert!(matches!(event(&mut events).await, Event::Entered(_)));
    session.health_check(2);
    assert_eq!(session.recv().await, health(2));
    gate.add_permits(1);
    assert_eq!(session.recv().await, ack("d1"));

    stop(session).await;
    within(run).await.unwrap().unwrap();
}

#[tokio::test]
async fn ok_acks_err_nacks_with_reason_and_delay_in_order() {
    let (_sidecar, mut session, mut events, _gate, run) = started().await;

    session.deliver("d1", "a");
    session.deliver("d2", "nack");
    session.deliver("d3", "b");
    assert_eq!(session.recv().await, ack("d1"));
    assert_eq!(
        session.recv().await,
        Kind::Nack(PluginNack {
            delivery_id: "d2".into(),
            delay_ms: 1500,
            reason: "cannot parse the order".into(),
        })
    );
    assert_eq!(session.recv().await, ack("d3"));

    // One at a time, in order, with the delivery's fields.
    let Event::Entered(first) = event(&mut events).await else {
        panic!("expected d1")
    };
    assert_eq!(first.topic, "orders.eu");
    assert_eq!(first.data, b"a");
    assert_eq!(
        first.headers,
        HashMap::from([("trace".to_string(), "d1".to_string())])
    );
    assert_eq!(first.header("trace"), Some("d1"));
    assert_eq!((first.sequence, first.redelivered), (41, 2));
    assert_eq!(first.subscription, "orders.*");
    let mut order = Vec::new();
    for _ in 0..5 {
        order.push(match event(&mut events).await {
            Event::Entered(m) => format!("enter {}", String::from_utf8(m.data).unwrap()),
            Event::Done(d) => format!("done {d}"),
            other => panic!("unexpected {other:?}"),
        });
    }
    assert_eq!(
        order,
        ["done a", "enter nack", "done nack", "enter b", "done b"]
    );

    stop(session).await;
    within(run).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_panicking_on_message_is_a_nack_and_the_next_message_goes_on() {
    let (_sidecar, mut session, _events, _gate, run) = started().await;
    session.deliver("d1", "panic");
    session.deliver("d2", "fine");
    assert_eq!(
        session.recv().await,
        Kind::Nack(PluginNack {
            delivery_id: "d1".into(),
            delay_ms: 0,
            reason: "on_message panicked: the order is a trap".into(),
        })
    );
    assert_eq!(session.recv().await, ack("d2"));
    stop(session).await;
    within(run).await.unwrap().unwrap();
}

#[tokio::test]
async fn publishes_are_accepted_or_refused_by_code_with_an_idempotency_key() {
    let (_sidecar, mut session, mut events, _gate, run) = started().await;

    session.deliver("d1", "publish:signals.buy");
    let p = publish(session.recv().await);
    assert_eq!(p.topic, "signals.buy");
    assert_eq!(p.data, b"publish:signals.buy");
    assert_eq!(
        p.headers,
        HashMap::from([("source".to_string(), "orders.eu".to_string())])
    );
    let (prefix, id) = p.idempotency_key.split_once('-').unwrap();
    assert_eq!(prefix.len(), 32, "{}", p.idempotency_key);
    assert!(prefix.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(id, p.request_id.to_string());
    session.accept(p.request_id, 42);
    assert_eq!(session.recv().await, ack("d1"));
    assert!(matches!(event(&mut events).await, Event::Entered(_)));
    assert!(matches!(event(&mut events).await, Event::Published(Ok(42))));
    assert!(matches!(event(&mut events).await, Event::Done(_)));

    session.deliver("d2", "publish:secret.plans");
    let p2 = publish(session.recv().await);
    assert_ne!(p2.request_id, p.request_id);
    assert_ne!(p2.idempotency_key, p.idempotency_key);
    session.refuse_publish(
        p2.request_id,
        "PERMISSION_DENIED",
        "publish on `secret.plans` is outside the instance's grants",
    );
    // The test plugin nacks with the publish error as the reason.
    let expected = "cannot publish to `secret.plans`: permission denied: publish on `secret.plans` is outside the instance's grants";
    assert_eq!(
        session.recv().await,
        Kind::Nack(PluginNack {
            delivery_id: "d2".into(),
            delay_ms: 0,
            reason: expected.into(),
        })
    );
    assert!(matches!(event(&mut events).await, Event::Entered(_)));
    match event(&mut events).await {
        Event::Published(Err(e)) => {
            assert_eq!(
                e,
                PublishError::PermissionDenied {
                    topic: "secret.plans".into(),
                    message: "publish on `secret.plans` is outside the instance's grants".into(),
                }
            );
            assert_eq!(e.to_string(), expected);
        }
        other => panic!("expected the refusal, got {other:?}"),
    }

    stop(session).await;
    within(run).await.unwrap().unwrap();
}

#[tokio::test]
async fn many_publishes_are_in_flight_at_once() {
    let (_sidecar, mut session, mut events, _gate, run) = started().await;

    session.deliver("d1", "burst:20");
    // All 20 arrive before the fake answers any of them.
    let mut publishes = Vec::new();
    for _ in 0..20 {
        publishes.push(publish(session.recv().await));
    }
    let topics: HashSet<_> = publishes.iter().map(|p| p.topic.clone()).collect();
    assert_eq!(topics, (0..20).map(|i| format!("burst.{i}")).collect());
    let keys: HashSet<_> = publishes.iter().map(|p| &p.idempotency_key).collect();
    assert_eq!(keys.len(), 20);
    // Answered in reverse order; each publish gets its own sequence.
    let sequence_of = |topic: &str| 100 + topic["burst.".len()..].parse::<u64>().unwrap();
    for p in publishes.iter().rev() {
        session.accept(p.request_id, sequence_of(&p.topic));
    }
    assert_eq!(session.recv().await, ack("d1"));
    assert!(matches!(event(&mut events).await, Event::Entered(_)));
    let mut sequences = Vec::new();
    for _ in 0..20 {
        match event(&mut events).await {
            Event::Published(Ok(s)) => sequences.push(s),
            other => panic!("unexpected {other:?}"),
        }
    }
    // The plugin awaited its tasks in topic order.
    assert_eq!(sequences, (100..120).collect::<Vec<_>>());

    stop(session).await;
    within(run).await.unwrap().unwrap();
}

/// Reads the plugin's next `n` messages.
async fn read(session: &mut support::Session, n: usize) -> Vec<Kind> {
    let mut messages = Vec::new();
    for _ in 0..n {
        messages.push(session.recv().await);
    }
    messages
}

/// The topics of the publishes among `messages`, in their order.
fn published_topics(messages: &[Kind]) -> Vec<String> {
    messages
        .iter()
        .filter_map(|m| match m {
            Kind::Publish(p) => Some(p.topic.clone()),
            _ => None,
        })
        .collect()
}

fn flood_topics(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("flood.{i}")).collect()
}

/// Collects the test plugin's events until `n` publish results came; returns them in order.
async fn publish_results(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<Event>,
    n: usize,
) -> Vec<Result<u64, PublishError>> {
    let mut results = Vec::new();
    while results.len() < n {
        if let Event::Published(result) = event(events).await {
            results.push(result);
        }
    }
    results
}

#[tokio::test]
async fn acks_and_health_answers_go_before_the_publishes_queued_before_them() {
    let (_sidecar, mut session, mut events, _gate, run) = started().await;

    // 64 publishes of 64 KiB (4 MiB: within the SDK's budget, but 4 times what the fake's
    // flow-control windows take while it reads nothing), queued before d1's ack.
    session.deliver("d1", "flood:64:65536");
    // on_message called the 64 publishes (each queued) before it returned.
    loop {
        if let Event::Done(data) = event(&mut events).await {
            assert_eq!(data, "flood:64:65536");
            break;
        }
    }
    session.deliver("d2", "x");
    session.health_check(1);
    session.health_check(2);
    // Reading nothing yet, wait until d1's ack and the first health answer are queued, after
    // the publishes: the worker enters d2 after it queued d1's ack, and health checks are
    // answered one at a time.
    let (mut entered_d2, mut checks) = (false, 0);
    while !entered_d2 || checks < 2 {
        match event(&mut events).await {
            Event::Entered(m) if m.data == b"x" => entered_d2 = true,
            Event::Health => checks += 1,
            _ => {}
        }
    }

    // 64 publishes, two acks, two health answers.
    let messages = read(&mut session, 68).await;
    let at = |wanted: &Kind| messages.iter().position(|m| m == wanted).unwrap();
    let last_publish = messages
        .iter()
        .rposition(|m| matches!(m, Kind::Publish(_)))
        .unwrap();
    assert!(
        at(&ack("d1")) < last_publish,
        "d1's ack waited behind every queued publish (at {} of {})",
        at(&ack("d1")),
        messages.len()
    );
    assert!(
        at(&health(1)) < last_publish,
        "the health answer waited behind every queued publish (at {} of {})",
        at(&health(1)),
        messages.len()
    );
    assert!(at(&ack("d1")) < at(&ack("d2")), "acks keep their order");
    assert!(at(&health(1)) < at(&health(2)));
    // The publishes keep the order they were called in.
    assert_eq!(published_topics(&messages), flood_topics(0..64));

    for m in messages {
        if let Kind::Publish(p) = m {
            session.accept(p.request_id, p.request_id);
        }
    }
    let results = publish_results(&mut events, 64).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    stop(session).await;
    within(run).await.unwrap().unwrap();
}

/// Just under 1 MiB of data: with its topic (`flood.N`) a publish weighs at most 1 MiB, so 16 of
/// them fit the SDK's 16 MiB budget and a 17th does not.
const NEAR_MIB: usize = 1024 * 1024 - 256;

#[tokio::test]
async fn publishes_past_16_mib_unanswered_wait_for_the_sidecars_answers() {
    let (_sidecar, mut session, mut events, _gate, run) = started().await;

    // 40 publishes called at once; the fake answers none yet.
    session.deliver("d1", &format!("flood:40:{NEAR_MIB}"));
    // 16 publishes and d1's ack (which may pass publishes queued before it).
    let mut received = read(&mut session, 17).await;
    assert!(
        received.contains(&ack("d1")),
        "{:?}",
        published_topics(&received)
    );
    assert_eq!(published_topics(&received), flood_topics(0..16));
    // Nothing else was sent: the next message is the answer to a health check sent now.
    session.health_check(1);
    assert_eq!(session.recv().await, health(1));

    // One answer lets one more publish go, and only one.
    let first = publish(
        received.remove(
            received
                .iter()
                .position(|m| matches!(m, Kind::Publish(_)))
                .unwrap(),
        ),
    );
    assert_eq!(first.topic, "flood.0");
    session.accept(first.request_id, 1);
    let next = publish(session.recv().await);
    assert_eq!(next.topic, "flood.16");
    session.health_check(2);
    assert_eq!(session.recv().await, health(2));

    // Answering the rest lets the others go, in order.
    received.push(Kind::Publish(next));
    let mut topics = Vec::new();
    for m in received {
        if let Kind::Publish(p) = m {
            topics.push(p.topic.clone());
            session.accept(p.request_id, p.request_id);
        }
    }
    while topics.len() < 39 {
        let p = publish(session.recv().await);
        topics.push(p.topic.clone());
        session.accept(p.request_id, p.request_id);
    }
    assert_eq!(topics, flood_topics(1..40));
    let results = publish_results(&mut events, 40).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    stop(session).await;
    within(run).await.unwrap().unwrap();
}

#[tokio::test]
async fn publishes_held_back_fail_when_the_session_ends_while_stopping() {
    let (_sidecar, mut session, mut events, _gate, run) = started().await;

    session.deliver("d1", &format!("flood:40:{NEAR_MIB}"));
    let received = read(&mut session, 17).await;
    assert_eq!(published_topics(&received), flood_topics(0..16));
    // Stop: the drain waits for all 40 results; the sidecar goes away before giving any.
    session.stop();
    loop {
        if matches!(event(&mut events).await, Event::Stop) {
            break;
        }
    }
    session.fail(Status::unavailable("the sidecar crashed"));
    within(run).await.unwrap().unwrap();
    let results = publish_results(&mut events, 40).await;
    for (i, result) in results.into_iter().enumerate() {
        assert_eq!(
            result,
            Err(PublishError::Closed {
                topic: format!("flood.{i}")
            })
        );
    }
}

#[tokio::test]
async fn stop_runs_on_stop_lets_the_message_in_flight_finish_then_half_closes() {
    let (_sidecar, mut session, mut events, gate, run) = started().await;

    session.deliver("d1", "slow+publish:signals.late");
    session.deliver("d2", "never-started");
    assert!(matches!(event(&mut events).await, Event::Entered(_)));
    session.stop();
    // on_stop runs while d1 is still in flight.
    assert!(matches!(event(&mut events).await, Event::Stop));
    gate.add_permits(1);
    // d1 still publishes, the SDK waits for the result, then acks, then half-closes.
    let late = publish(session.recv().await);
    assert_eq!(late.topic, "signals.late");
    session.accept(late.request_id, 3);
    assert_eq!(session.recv().await, ack("d1"));
    session.half_closed().await;
    session.end();
    within(run).await.unwrap().unwrap();

    assert!(matches!(event(&mut events).await, Event::Published(Ok(3))));
    assert!(matches!(event(&mut events).await, Event::Done(d) if d == "slow+publish:signals.late"));
    // d2 was never started; on_stop ran once.
    assert!(within(events.recv()).await.is_none());
}

#[tokio::test]
async fn a_local_stop_trigger_drains_the_same_way() {
    let mut sidecar = Sidecar::start().await;
    let (plugin, mut events, gate) = TestPlugin::new();
    let (trigger, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = spawn_plugin(
        plugin,
        options(&sidecar).stop_when(async {
            let _ = stopped.await;
        }),
    );
    let mut session = sidecar.next().await;
    session.welcome();
    assert!(matches!(event(&mut events).await, Event::Start));
    session.deliver("d1", "slow");
    assert!(matches!(event(&mut events).await, Event::Entered(_)));

    trigger.send(()).unwrap();
    assert!(matches!(event(&mut events).await, Event::Stop));
    gate.add_permits(1);
    assert_eq!(session.recv().await, ack("d1"));
    session.half_closed().await;
    session.end();
    within(run).await.unwrap().unwrap();
    assert!(matches!(event(&mut events).await, Event::Done(_)));
    assert!(within(events.recv()).await.is_none());
}

#[tokio::test]
async fn a_refused_session_ends_run_with_the_address_and_the_cause() {
    let mut sidecar = Sidecar::start().await;
    let (plugin, mut events, _gate) = TestPlugin::new();
    let run = spawn_plugin(plugin, options(&sidecar));
    sidecar.next().await.refuse(Status::permission_denied(
        "subscription `orders.*` (subscribe) is outside the instance's grants",
    ));
    let err = within(run).await.unwrap().unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "the sidecar at {} refused the session: PERMISSION_DENIED: subscription `orders.*` (subscribe) is outside the instance's grants",
            sidecar.addr
        )
    );
    assert!(matches!(err, Error::Refused { ref code, .. } if code == "PERMISSION_DENIED"));
    // on_start never ran.
    assert!(within(events.recv()).await.is_none());
}

#[tokio::test]
async fn a_refusal_in_the_stream_is_a_refusal_too() {
    let mut sidecar = Sidecar::start().await;
    let (plugin, _events, _gate) = TestPlugin::new();
    let run = spawn_plugin(plugin, options(&sidecar));
    let mut session = sidecar.next().await;
    session.answer();
    session.fail(Status::failed_precondition(
        "protocol major 1 is not spoken here",
    ));
    let err = within(run).await.unwrap().unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "the sidecar at {} refused the session: FAILED_PRECONDITION: protocol major 1 is not spoken here",
            sidecar.addr
        )
    );
}

#[tokio::test]
async fn a_failing_on_start_ends_run_with_its_error() {
    let mut sidecar = Sidecar::start().await;
    let (mut plugin, _events, _gate) = TestPlugin::new();
    plugin.fail_start = true;
    let run = spawn_plugin(plugin, options(&sidecar));
    let mut session = sidecar.next().await;
    session.welcome();
    let err = within(run).await.unwrap().unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "the plugin's on_start failed (sidecar at {}): no configuration at /etc/plugin.yaml",
            sidecar.addr
        )
    );
}

#[tokio::test]
async fn a_lost_connection_is_dialled_again_and_waiting_publishes_are_resent() {
    let mut sidecar = Sidecar::start().await;
    let (plugin, mut events, _gate) = TestPlugin::new();
    let run = spawn_plugin(plugin, options(&sidecar));
    let mut first = sidecar.next().await;
    first.welcome();
    assert!(matches!(event(&mut events).await, Event::Start));
    first.deliver("d1", "publish:signals.buy");
    let sent = publish(first.recv().await);
    let hello = first.hello.clone();
    // The connection drops before the publish's result.
    first.fail(Status::unavailable("the sidecar restarts"));

    let mut second = sidecar.next().await;
    assert_eq!(second.hello, hello, "Hello again, the same");
    assert_eq!(second.metadata.get("tether-bus-protocol").unwrap(), "1");
    second.welcome();
    let resent = publish(second.recv().await);
    assert_eq!(resent, sent, "the same request id, topic, data and key");
    second.accept(resent.request_id, 9);
    second.health_check(5);
    assert_eq!(second.recv().await, health(5));

    assert!(matches!(event(&mut events).await, Event::Entered(_)));
    assert!(matches!(event(&mut events).await, Event::Published(Ok(9))));
    assert!(matches!(event(&mut events).await, Event::Done(_)));
    assert!(matches!(event(&mut events).await, Event::Health));
    // d1's ack belonged to the lost session: the bus delivers d1 again instead.
    second.deliver("d1-again", "a");
    assert_eq!(second.recv().await, ack("d1-again"));

    stop(second).await;
    within(run).await.unwrap().unwrap();
    // on_start ran once, on_stop once.
    assert!(matches!(event(&mut events).await, Event::Entered(_)));
    assert!(matches!(event(&mut events).await, Event::Done(_)));
    assert!(matches!(event(&mut events).await, Event::Stop));
    assert!(within(events.recv()).await.is_none());
}

#[tokio::test]
async fn a_session_ended_without_a_stop_is_dialled_again() {
    let mut sidecar = Sidecar::start().await;
    let (plugin, mut events, _gate) = TestPlugin::new();
    let run = spawn_plugin(plugin, options(&sidecar));
    let mut first = sidecar.next().await;
    first.welcome();
    assert!(matches!(event(&mut events).await, Event::Start));
    // The call ends with OK, but no Stop came: that is a lost session too.
    first.end();
    let mut second = sidecar.next().await;
    second.welcome();
    second.deliver("d1", "a");
    assert_eq!(second.recv().await, ack("d1"));
    stop(second).await;
    within(run).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_sidecar_that_comes_up_late_is_reached() {
    let addr = free_addr().await;
    let (plugin, mut events, _gate) = TestPlugin::new();
    let run = spawn_plugin(
        plugin,
        Options::new(addr.to_string()).connect_timeout(Duration::from_secs(20)),
    );
    tokio::task::yield_now().await;
    let mut sidecar = Sidecar::on(addr).await;
    let mut session = sidecar.next().await;
    session.welcome();
    assert!(matches!(event(&mut events).await, Event::Start));
    stop(session).await;
    within(run).await.unwrap().unwrap();
}

#[tokio::test]
async fn no_sidecar_within_the_connect_timeout_is_an_error_naming_the_address() {
    let addr = free_addr().await;
    let (plugin, mut events, _gate) = TestPlugin::new();
    let run = spawn_plugin(
        plugin,
        Options::new(addr.to_string()).connect_timeout(Duration::from_millis(300)),
    );
    let err = within(run).await.unwrap().unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "cannot reach the sidecar at {addr} within 300ms: tcp connect error: Connection refused (os error 111)"
        )
    );
    assert!(matches!(
        err,
        Error::Connect {
            reconnecting: false,
            ..
        }
    ));
    assert!(within(events.recv()).await.is_none());
}

#[tokio::test]
async fn a_stop_while_connecting_returns_ok_without_callbacks() {
    let addr = free_addr().await;
    let (plugin, mut events, _gate) = TestPlugin::new();
    let (trigger, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = spawn_plugin(
        plugin,
        Options::new(addr.to_string()).stop_when(async {
            let _ = stopped.await;
        }),
    );
    trigger.send(()).unwrap();
    within(run).await.unwrap().unwrap();
    assert!(within(events.recv()).await.is_none());
}

/// An address nothing listens on (bound, then released).
async fn free_addr() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}
