//! The Bus API server over real sockets: a bus on 127.0.0.1:0, gRPC clients in the test.

mod support;

use std::collections::{BTreeSet, HashMap};

use support::*;
use tether_bus_proto::v1::{
    self as v1, AckRequest, Action, NackRequest, PublishRequest, RegisterRequest, ReleaseRequest,
};
use tonic::Code;

const OPEN: Option<&str> = None;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_subscribe_ack_round_trip_with_exact_payloads() {
    let bus = Bus::start(OPEN, 256).await;
    let mut p = Client::register(
        bus.addr,
        "pub-1",
        "P",
        vec![grant("orders.>", Action::Publish)],
    )
    .await;
    let mut s = Client::register(
        bus.addr,
        "sub-1",
        "S",
        vec![grant("orders.*", Action::Subscribe)],
    )
    .await;
    assert_eq!(
        s.registered.granted,
        vec![grant("orders.*", Action::Subscribe)]
    );
    assert!(s.registered.refused.is_empty());
    assert_eq!(s.registered.protocol_major, 1);

    assert_eq!(
        p.publish("orders.eu", b"first", &[("k", "v")])
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        p.publish("orders.eu", b"\x00\xffsecond", &[])
            .await
            .unwrap(),
        2
    );
    assert_eq!(p.publish("orders.us", b"third", &[]).await.unwrap(), 1);
    assert_eq!(
        p.publish("orders.eu.deep", b"not matched", &[])
            .await
            .unwrap(),
        1
    );

    let mut stream = s.subscribe("orders.*", "", 0, 0).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(next(&mut stream).await);
    }
    let seen: BTreeSet<(String, u64, Vec<u8>, u32)> = got
        .iter()
        .map(|d| (d.topic.clone(), d.sequence, d.data.clone(), d.redelivered))
        .collect();
    assert_eq!(
        seen,
        BTreeSet::from([
            ("orders.eu".into(), 1, b"first".to_vec(), 0),
            ("orders.eu".into(), 2, b"\x00\xffsecond".to_vec(), 0),
            ("orders.us".into(), 1, b"third".to_vec(), 0),
        ])
    );
    // Per-topic order.
    let eu: Vec<u64> = got
        .iter()
        .filter(|d| d.topic == "orders.eu")
        .map(|d| d.sequence)
        .collect();
    assert_eq!(eu, vec![1, 2]);
    let first = got.iter().find(|d| d.data == b"first").unwrap();
    assert_eq!(first.headers.get("k").map(String::as_str), Some("v"));
    assert_eq!(first.subscription, "orders.*");
    assert_eq!(
        s.ack(got.iter().map(|d| d.delivery_id.clone()).collect())
            .await,
        3
    );
    // Acked twice: nothing was pending any more.
    assert_eq!(s.ack(vec![first.delivery_id.clone()]).await, 0);

    // A message published while subscribed arrives on the open stream.
    assert_eq!(p.publish("orders.us", b"live", &[]).await.unwrap(), 2);
    let live = next(&mut stream).await;
    assert_eq!(
        (live.topic.as_str(), live.sequence, live.data.as_slice()),
        ("orders.us", 2, &b"live"[..])
    );
    assert_eq!(s.ack(vec![live.delivery_id]).await, 1);
    drop(stream);
    bus.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_group_splits_messages_and_plain_subscribers_each_get_all() {
    // One unacked delivery per subscriber at a time makes the split exact.
    let bus = Bus::start(OPEN, 1).await;
    let mut p =
        Client::register(bus.addr, "pub", "P", vec![grant("jobs.>", Action::Publish)]).await;
    let sub = vec![grant("jobs.*", Action::Subscribe)];
    let mut a = Client::register(bus.addr, "worker-a", "W", sub.clone()).await;
    let mut b = Client::register(bus.addr, "worker-b", "W", sub.clone()).await;
    let mut c = Client::register(bus.addr, "watcher-c", "W", sub.clone()).await;
    let mut d = Client::register(bus.addr, "watcher-d", "W", sub).await;
    let mut ga = a.subscribe("jobs.*", "workers", 0, 0).await.unwrap();
    let mut gb = b.subscribe("jobs.*", "workers", 0, 0).await.unwrap();
    let mut pc = c.subscribe("jobs.*", "", 0, 0).await.unwrap();
    let mut pd = d.subscribe("jobs.*", "", 0, 0).await.unwrap();
    p.publish("jobs.x", b"one", &[]).await.unwrap();
    p.publish("jobs.x", b"two", &[]).await.unwrap();

    let da = next(&mut ga).await;
    let db = next(&mut gb).await;
    let group: BTreeSet<Vec<u8>> = [da.data.clone(), db.data.clone()].into();
    assert_eq!(group, BTreeSet::from([b"one".to_vec(), b"two".to_vec()]));

    for (client, stream) in [(&mut c, &mut pc), (&mut d, &mut pd)] {
        let first = next(stream).await;
        assert_eq!(first.data, b"one");
        client.ack(vec![first.delivery_id]).await;
        let second = next(stream).await;
        assert_eq!(second.data, b"two");
        client.ack(vec![second.delivery_id]).await;
    }
    assert_eq!(a.ack(vec![da.delivery_id]).await, 1);
    assert_eq!(b.ack(vec![db.delivery_id]).await, 1);
    drop((ga, gb, pc, pd));
    bus.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacked_delivery_comes_again_after_its_ack_deadline() {
    let bus = Bus::start(OPEN, 256).await;
    let mut p = Client::register(bus.addr, "pub", "P", vec![grant("t", Action::Publish)]).await;
    let mut s = Client::register(bus.addr, "sub", "S", vec![grant("t", Action::Subscribe)]).await;
    p.publish("t", b"payload", &[]).await.unwrap();
    let mut stream = s.subscribe("t", "", 300, 0).await.unwrap();
    let first = next(&mut stream).await;
    assert_eq!(
        (first.sequence, first.redelivered, first.data.as_slice()),
        (1, 0, &b"payload"[..])
    );
    let again = next(&mut stream).await;
    assert_eq!(
        (again.sequence, again.redelivered, again.data.as_slice()),
        (1, 1, &b"payload"[..])
    );
    assert_eq!(s.ack(vec![again.delivery_id]).await, 1);

    // A nack with no delay: delivered again at once, counted.
    p.publish("t", b"nacked", &[]).await.unwrap();
    let n = next(&mut stream).await;
    assert_eq!((n.sequence, n.redelivered), (2, 0));
    let r = s.req(NackRequest {
        delivery_id: n.delivery_id.clone(),
        delay_ms: 0,
    });
    s.api.nack(r).await.unwrap();
    let n2 = next(&mut stream).await;
    assert_eq!((n2.sequence, n2.redelivered), (2, 1));

    // Released: given back at once, not counted as a delivery.
    let r = s.req(ReleaseRequest {
        delivery_ids: vec![],
    });
    assert_eq!(s.api.release(r).await.unwrap().into_inner().released, 1);
    let n3 = next(&mut stream).await;
    assert_eq!((n3.sequence, n3.redelivered), (2, 1));
    assert_eq!(s.ack(vec![n3.delivery_id]).await, 1);
    drop(stream);
    bus.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_max_deliver_a_message_goes_to_its_dead_letter_topic_with_the_reason() {
    let bus = Bus::start(OPEN, 256).await;
    let mut p = Client::register(
        bus.addr,
        "pub",
        "P",
        vec![grant("orders.eu", Action::Publish)],
    )
    .await;
    let mut s = Client::register(
        bus.addr,
        "sub",
        "S",
        vec![
            grant("orders.eu", Action::Subscribe),
            grant("dlq.>", Action::Subscribe),
        ],
    )
    .await;
    p.publish("orders.eu", b"poison", &[("h", "1")])
        .await
        .unwrap();
    let mut stream = s.subscribe("orders.eu", "", 200, 2).await.unwrap();
    let d1 = next(&mut stream).await;
    let d2 = next(&mut stream).await;
    assert_eq!((d1.redelivered, d2.redelivered), (0, 1));
    let mut dlq = s.subscribe("dlq.>", "", 0, 0).await.unwrap();
    let dead = next(&mut dlq).await;
    assert_eq!(dead.topic, "dlq.orders.eu");
    assert_eq!(dead.sequence, 1);
    assert_eq!(dead.data, b"poison");
    let h = |k: &str| dead.headers.get(k).cloned().unwrap_or_default();
    assert_eq!(
        h("tether-dead-letter-reason"),
        "delivered 2 times (max_deliver 2) without an ack; the last delivery was not acked within its ack deadline of 200 ms"
    );
    assert_eq!(h("tether-dead-letter-topic"), "orders.eu");
    assert_eq!(h("tether-dead-letter-sequence"), "1");
    assert_eq!(h("h"), "1");
    // The original is not delivered a third time: acking its old delivery finds nothing pending.
    assert_eq!(s.ack(vec![d2.delivery_id]).await, 0);
    assert_eq!(s.ack(vec![dead.delivery_id]).await, 1);
    drop((stream, dlq));
    bus.stop().await;
}

const POLICY: &str = "pools:\n  SignalPool:\n    grants:\n      - { topic: \"signals.>\", action: publish }\n      - { topic: \"orders.*\", action: subscribe }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_are_requested_and_allowed_and_the_bus_enforces_them() {
    let bus = Bus::start(Some(POLICY), 256).await;
    let mut c = Client::register(
        bus.addr,
        "sig-1",
        "SignalPool",
        vec![
            grant("signals.eu", Action::Publish),
            grant("orders.>", Action::Subscribe),
            grant("orders.*", Action::Subscribe),
        ],
    )
    .await;
    assert_eq!(
        c.registered.granted,
        vec![
            grant("signals.eu", Action::Publish),
            grant("orders.*", Action::Subscribe)
        ]
    );
    assert_eq!(c.registered.refused.len(), 1);
    assert_eq!(
        c.registered.refused[0].grant,
        Some(grant("orders.>", Action::Subscribe))
    );
    assert_eq!(
        c.registered.refused[0].reason,
        "the policy gives pool type `SignalPool` and instance `sig-1` no grant to subscribe on `orders.>`"
    );

    assert_eq!(c.publish("signals.eu", b"ok", &[]).await.unwrap(), 1);
    // Allowed by the policy but not requested: not granted.
    let e = c.publish("signals.us", b"no", &[]).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert_eq!(
        e.message(),
        "instance `sig-1` has no grant to publish on `signals.us`"
    );
    let e = c.publish("orders.eu", b"no", &[]).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert_eq!(
        e.message(),
        "instance `sig-1` has no grant to publish on `orders.eu`"
    );
    let e = c.subscribe("orders.>", "", 0, 0).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert_eq!(
        e.message(),
        "instance `sig-1` has no grant to subscribe on `orders.>`"
    );
    assert!(c.subscribe("orders.*", "", 0, 0).await.is_ok());

    // A client that never registered has no session.
    let mut raw = Client::connect(bus.addr).await;
    let e = raw
        .publish(with_major(
            tether_bus_proto::v1::PublishRequest {
                topic: "signals.eu".into(),
                ..Default::default()
            },
            1,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);

    // A pool the policy does not name gets nothing, each grant refused by name.
    let other = Client::register(
        bus.addr,
        "x-1",
        "Nope",
        vec![grant("signals.eu", Action::Publish)],
    )
    .await;
    assert!(other.registered.granted.is_empty());
    assert_eq!(
        other.registered.refused[0].reason,
        "the policy names neither pool type `Nope` nor instance `x-1`"
    );
    bus.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_protocol_major_is_refused_with_failed_precondition() {
    let bus = Bus::start(OPEN, 256).await;
    let mut api = Client::connect(bus.addr).await;
    let register = || RegisterRequest {
        protocol_major: 2,
        instance_id: "future".into(),
        pool_type: "P".into(),
        ..Default::default()
    };
    let e = within(api.register(with_major(register(), 2)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().starts_with(
            "protocol major 2 is not spoken here: this peer speaks tether.bus.v1 (major 1)"
        ),
        "{}",
        e.message()
    );
    // The metadata says 1 but the message says 2.
    let e = within(api.register(with_major(register(), 1)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    // No metadata at all.
    let e = within(api.register(tonic::Request::new(register())))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(
        e.message(),
        "the call carries no `tether-bus-protocol` metadata: send `tether-bus-protocol: 1` (tether.bus.v1)"
    );
    // A stream, too, is refused at once rather than left hanging.
    let c = Client::register(bus.addr, "now", "P", vec![grant("t", Action::Subscribe)]).await;
    let mut r = c.req(tether_bus_proto::v1::SubscribeRequest {
        subscription: Some(tether_bus_proto::v1::Subscription {
            topic: "t".into(),
            ..Default::default()
        }),
    });
    r.metadata_mut()
        .insert("tether-bus-protocol", "3".parse().unwrap());
    let e = within(api.subscribe(r)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    bus.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_stops_with_subscription_streams_open() {
    let bus = Bus::start(OPEN, 256).await;
    let mut c = Client::register(
        bus.addr,
        "i",
        "P",
        vec![grant(">", Action::Publish), grant(">", Action::Subscribe)],
    )
    .await;
    let mut stream = c.subscribe("a.*", "", 0, 0).await.unwrap();
    c.publish("a.b", b"x", &[]).await.unwrap();
    let d = next(&mut stream).await;
    assert_eq!(d.data, b"x");
    // Stop returns although a stream is open, and the stream ends.
    bus.stop().await;
    let end = within(stream.message()).await;
    assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_session_of_the_instance_gets_what_the_old_one_left_unacked() {
    let bus = Bus::start(OPEN, 2).await;
    let mut p = Client::register(bus.addr, "pub", "P", vec![grant("t.*", Action::Publish)]).await;
    let mut s = Client::register(bus.addr, "sub", "S", vec![grant("t.*", Action::Subscribe)]).await;
    for i in 0..4 {
        p.publish("t.a", format!("m{i}").as_bytes(), &[])
            .await
            .unwrap();
    }
    let mut stream = s.subscribe("t.*", "", 300, 0).await.unwrap();
    let a = next(&mut stream).await;
    let b = next(&mut stream).await;
    assert_eq!((a.sequence, b.sequence), (1, 2));
    drop(stream);
    let mut s2 =
        Client::register(bus.addr, "sub", "S", vec![grant("t.*", Action::Subscribe)]).await;
    let mut stream = s2.subscribe("t.*", "", 60_000, 0).await.unwrap();
    let mut got = BTreeSet::new();
    while got.len() < 4 {
        let d = next(&mut stream).await;
        got.insert(d.sequence);
        s2.ack(vec![d.delivery_id]).await;
    }
    assert_eq!(got, BTreeSet::from([1, 2, 3, 4]));
    drop(stream);
    bus.stop().await;
}

/// A delivery is its own instance's to ack, nack and release: another instance (a client that
/// bypasses the sidecar, even one with the same subscribe grant) is refused with
/// PermissionDenied naming the consumer, and the delivery stays pending for its owner. A queue
/// group's delivery is any member's (any instance that may subscribe to the pattern may join).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_cannot_ack_nack_or_release_another_instances_delivery() {
    let bus = Bus::start(OPEN, 16).await;
    let mut p = Client::register(bus.addr, "pub", "P", vec![grant("t.*", Action::Publish)]).await;
    let sub = vec![grant("t.*", Action::Subscribe)];
    let mut a = Client::register(bus.addr, "owner", "S", sub.clone()).await;
    let mut b = Client::register(bus.addr, "intruder", "S", sub).await;
    p.publish("t.a", b"mine", &[]).await.unwrap();
    let mut stream = a.subscribe("t.*", "", 60_000, 0).await.unwrap();
    let d = next(&mut stream).await;
    let refused = format!(
        "delivery `{}` is of the consumer `instance:owner:t.*`, not one of instance `intruder`",
        d.delivery_id
    );
    let ack = b
        .api
        .ack(b.req(AckRequest {
            delivery_ids: vec![d.delivery_id.clone()],
        }))
        .await
        .unwrap_err();
    let nack = b
        .api
        .nack(b.req(NackRequest {
            delivery_id: d.delivery_id.clone(),
            delay_ms: 0,
        }))
        .await
        .unwrap_err();
    let release = b
        .api
        .release(b.req(ReleaseRequest {
            delivery_ids: vec![d.delivery_id.clone()],
        }))
        .await
        .unwrap_err();
    for s in [ack, nack, release] {
        assert_eq!((s.code(), s.message()), (Code::PermissionDenied, &*refused));
    }
    // Still pending for its owner.
    assert_eq!(a.ack(vec![d.delivery_id]).await, 1);
    drop(stream);

    // A queue group's delivery: another member acks it.
    p.publish("t.b", b"shared", &[]).await.unwrap();
    let mut grouped = a.subscribe("t.*", "workers", 60_000, 0).await.unwrap();
    // A new group consumer starts at the first message.
    let (g1, g2) = (next(&mut grouped).await, next(&mut grouped).await);
    assert_eq!((&*g1.data, &*g2.data), (&b"mine"[..], &b"shared"[..]));
    assert_eq!(b.ack(vec![g1.delivery_id, g2.delivery_id]).await, 2);
    drop(grouped);
    bus.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_register_as_a_pool_without_a_token_cannot_take_over_a_registered_instance() {
    let tokens = tempfile::tempdir().unwrap();
    std::fs::write(tokens.path().join("signal.token"), "s3cret\n").unwrap();
    let text = "pools:\n  SignalPool:\n    token_file: signal.token\n    grants:\n      - { topic: \"signals.>\", action: publish }\n";
    let policy = tether_bus::policy::parse(text, 0, tokens.path()).unwrap();
    let bus = Bus::start_with(|o| o.policy = Some(policy)).await;
    let register = |pool: &str, token: Option<&str>| RegisterRequest {
        protocol_major: 1,
        instance_id: "sig-1".into(),
        pool_type: pool.into(),
        token: token.map(str::to_owned),
        requested_grants: vec![grant("signals.eu", Action::Publish)],
        ..Default::default()
    };
    let mut api = Client::connect(bus.addr).await;
    let first = api
        .register(with_major(register("SignalPool", Some("s3cret")), 1))
        .await
        .unwrap()
        .into_inner();
    let mut owner = Client {
        api: api.clone(),
        session: first.session.clone(),
        registered: first,
    };

    // What a plugin beside the sidecar could try: the same instance, a pool asking no token.
    let e = api
        .register(with_major(register("Nope", None), 1))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert_eq!(
        e.message(),
        "instance `sig-1` is registered as pool `SignalPool`, whose token this Register (as pool `Nope`) does not carry: it cannot replace that registration"
    );
    // The owner's session was not replaced.
    assert_eq!(
        owner
            .publish("signals.eu", b"still mine", &[])
            .await
            .unwrap(),
        1
    );
    // The owner itself registers again as before (a sidecar restarting).
    let again = api
        .register(with_major(register("SignalPool", Some("s3cret")), 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.granted, vec![grant("signals.eu", Action::Publish)]);
    // Another instance may still register as a pool the policy does not name (and gets nothing).
    let other = Client::register(bus.addr, "x-1", "Nope", vec![]).await;
    assert!(other.registered.granted.is_empty());
    bus.stop().await;
}

/// PublishBatch stores its publishes in their order and answers each alone: one outside the
/// grants and one with a wildcard topic are refused by name, the others stored; a key seen
/// before answers its first sequence as a duplicate; more than 1024 publishes are refused
/// whole; a subscriber gets the stored ones in the batch's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_publishes_is_stored_in_order_and_answered_one_by_one() {
    use tether_bus_proto::v1::{PublishBatchRequest, PublishFailure, publish_outcome};
    let bus = Bus::start(OPEN, 256).await;
    let mut p = Client::register(
        bus.addr,
        "pub-1",
        "P",
        vec![grant("orders.>", Action::Publish)],
    )
    .await;
    let mut s = Client::register(
        bus.addr,
        "sub-1",
        "S",
        vec![grant("orders.*", Action::Subscribe)],
    )
    .await;
    let one = |topic: &str, data: &str, key: &str| PublishRequest {
        topic: topic.into(),
        data: data.as_bytes().to_vec(),
        headers: HashMap::new(),
        idempotency_key: key.into(),
    };
    assert_eq!(p.publish("orders.eu", b"before", &[]).await.unwrap(), 1);
    let batch = vec![
        one("orders.eu", "a", "ka"),
        one("signals.eu", "not granted", ""),
        one("orders.us", "b", "kb"),
        one("orders.*", "a wildcard", ""),
        one("orders.eu", "c", "kc"),
        one("orders.eu", "a again", "ka"),
    ];
    let answer = p
        .api
        .publish_batch(p.req(PublishBatchRequest {
            publishes: batch.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    let results: Vec<String> = answer
        .results
        .iter()
        .map(|o| match o.result.as_ref().unwrap() {
            publish_outcome::Result::Published(r) => {
                format!("{} {}", r.sequence, r.duplicate)
            }
            publish_outcome::Result::Failed(PublishFailure { code, message }) => {
                format!("{:?}: {message}", Code::from(*code))
            }
        })
        .collect();
    assert_eq!(
        results,
        [
            "2 false",
            "PermissionDenied: instance `pub-1` has no grant to publish on `signals.eu`",
            "1 false",
            "InvalidArgument: topic `orders.*`: `*` is a wildcard: a message's topic names one topic",
            "3 false",
            "2 true",
        ]
    );
    // The same batch again stores nothing new.
    let again = p
        .api
        .publish_batch(p.req(PublishBatchRequest { publishes: batch }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.results.len(), 6);
    let duplicates = again
        .results
        .iter()
        .filter(|o| {
            matches!(
                o.result,
                Some(publish_outcome::Result::Published(v1::PublishResponse {
                    duplicate: true,
                    ..
                }))
            )
        })
        .count();
    assert_eq!(duplicates, 4);

    let mut stream = s.subscribe("orders.*", "", 0, 0).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..4 {
        let d = next(&mut stream).await;
        got.push(format!(
            "{} {} {}",
            d.topic,
            d.sequence,
            String::from_utf8_lossy(&d.data)
        ));
    }
    let eu: Vec<&String> = got.iter().filter(|d| d.starts_with("orders.eu")).collect();
    assert_eq!(eu, ["orders.eu 1 before", "orders.eu 2 a", "orders.eu 3 c"]);
    assert!(got.contains(&"orders.us 1 b".to_owned()), "{got:?}");

    let e = p
        .api
        .publish_batch(p.req(PublishBatchRequest {
            publishes: vec![one("orders.eu", "x", ""); 1025],
        }))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (
            Code::InvalidArgument,
            "a batch holds at most 1024 publishes; this one holds 1025"
        )
    );
    drop(stream);
    bus.stop().await;
}
