//! The behaviour every [`Store`] backend owes the Bus API, written once and run against each:
//! `redb` (the embedded store) always, `nats` (JetStream, a `nats-server -js` started by the
//! test) with the `nats` feature.
//!
//! Only what the Bus API relies on is asserted. Where the backends may differ by design the
//! suite asserts the common part: sequences increase within a topic (the embedded store numbers
//! each topic from 1, JetStream numbers the stream), retention keeps the newest messages and
//! drops the oldest (per topic there, per stream in JetStream).

mod store_support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use store_support::*;
use tether_bus::policy::{Action, Grant};
use tether_bus::server::now_ms;
use tether_bus::store::{
    Claimed, ConsumerConfig, DEAD_LETTER_CONSUMER, DEAD_LETTER_REASON, DEAD_LETTER_SEQUENCE,
    DEAD_LETTER_TOPIC, Delivered, NewMessage, Published, Registration, Retention, Store,
};

fn msg(topic: &str, data: &str, key: &str) -> NewMessage {
    NewMessage {
        topic: topic.into(),
        data: data.as_bytes().to_vec(),
        headers: BTreeMap::new(),
        idempotency_key: key.into(),
    }
}

fn config(pattern: &str, ack_deadline_ms: u64, max_deliver: u32) -> ConsumerConfig {
    ConsumerConfig {
        pattern: pattern.into(),
        ack_deadline: Duration::from_millis(ack_deadline_ms),
        max_deliver,
    }
}

async fn publish<S: Store>(s: &S, topic: &str, data: &str) -> u64 {
    let p = s.publish(msg(topic, data, ""), now_ms()).await.unwrap();
    assert!(!p.duplicate);
    p.sequence
}

async fn claim<S: Store>(s: &S, consumer: &str, holder: &str, max: usize) -> Claimed {
    s.claim(consumer.into(), holder.into(), now_ms(), max)
        .await
        .unwrap()
}

/// Claims until `done` says the claims so far are enough, for at most 10 s.
async fn claim_until<S: Store>(
    s: &S,
    consumer: &str,
    holder: &str,
    max: usize,
    mut done: impl FnMut(&[Delivered], u32) -> bool,
) -> (Vec<Delivered>, u32) {
    let until = std::time::Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    let mut dead = 0;
    loop {
        let c = claim(s, consumer, holder, max).await;
        got.extend(c.deliveries);
        dead += c.dead_lettered;
        if done(&got, dead) {
            return (got, dead);
        }
        assert!(
            std::time::Instant::now() < until,
            "claims of `{consumer}` did not get there within 10 s: {got:?}, {dead} dead letters"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn datas(ds: &[Delivered]) -> Vec<String> {
    ds.iter()
        .map(|d| String::from_utf8_lossy(&d.data).into_owned())
        .collect()
}

fn ids(ds: &[Delivered]) -> Vec<String> {
    ds.iter().map(|d| d.id.clone()).collect()
}

// ------------------------------------------------------------------------------------------------
// The cases
// ------------------------------------------------------------------------------------------------

/// Sequences increase within a topic; an idempotency key answers the first sequence again as a
/// duplicate, within its topic only, and the duplicate is stored once.
async fn publish_sequences_and_idempotency<B: Backend>(b: &B) {
    let s = b.open(Retention::default()).await;
    let a1 = publish(&s, "t.a", "one").await;
    let a2 = publish(&s, "t.a", "two").await;
    let b1 = publish(&s, "t.b", "three").await;
    assert!(a1 >= 1 && a2 > a1, "{a1} {a2}");
    assert!(b1 >= 1);
    let k = s
        .publish(msg("t.a", "keyed", "k1"), now_ms())
        .await
        .unwrap();
    assert!(!k.duplicate);
    assert!(k.sequence > a2);
    let again = s
        .publish(msg("t.a", "keyed again", "k1"), now_ms())
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.sequence, k.sequence);
    // The same key on another topic is another message.
    let other = s
        .publish(msg("t.b", "keyed elsewhere", "k1"), now_ms())
        .await
        .unwrap();
    assert!(!other.duplicate);

    s.open_consumer("instance:i:t.a".into(), config("t.a", 60_000, 5))
        .await
        .unwrap();
    let (got, _) = claim_until(&s, "instance:i:t.a", "h", 100, |g, _| g.len() >= 3).await;
    assert_eq!(datas(&got), ["one", "two", "keyed"]);
    assert_eq!(
        got.iter().map(|d| d.sequence).collect::<Vec<_>>(),
        [a1, a2, k.sequence]
    );
    assert!(
        claim(&s, "instance:i:t.a", "h", 100)
            .await
            .deliveries
            .is_empty()
    );
}

/// Every message of a matching topic, exact bytes and headers, in per-topic order, with the
/// sequence its publish answered; a topic the pattern does not match is not delivered.
async fn payloads_headers_and_per_topic_order<B: Backend>(b: &B) {
    let s = b.open(Retention::default()).await;
    let mut published = BTreeMap::new();
    let mut with_headers = msg("orders.eu", "", "");
    with_headers.data = b"\x00\xffbinary".to_vec();
    with_headers.headers = BTreeMap::from([
        ("k".to_owned(), "v".to_owned()),
        ("trace-id".to_owned(), "abc 123".to_owned()),
    ]);
    let p = s.publish(with_headers.clone(), now_ms()).await.unwrap();
    published.insert(p.sequence, with_headers.data.clone());
    let mut eu = vec![p.sequence];
    for i in 0..20 {
        let topic = if i % 3 == 0 { "orders.us" } else { "orders.eu" };
        let seq = publish(&s, topic, &format!("m{i}")).await;
        if topic == "orders.eu" {
            eu.push(seq);
        }
    }
    publish(&s, "orders.eu.deep", "not matched").await;
    publish(&s, "other", "not matched").await;

    s.open_consumer("instance:i:orders.*".into(), config("orders.*", 60_000, 5))
        .await
        .unwrap();
    // In batches of 7, each acked before the next claim.
    let mut got = Vec::new();
    while got.len() < 21 {
        let (batch, _) = claim_until(&s, "instance:i:orders.*", "h", 7, |g, _| !g.is_empty()).await;
        assert!(batch.len() <= 7);
        assert_eq!(s.ack(ids(&batch)).await.unwrap(), batch.len() as u32);
        got.extend(batch);
    }
    assert_eq!(got.len(), 21);
    assert!(
        got.iter()
            .all(|d| d.topic == "orders.eu" || d.topic == "orders.us")
    );
    assert!(got.iter().all(|d| d.redelivered == 0));
    let got_eu: Vec<u64> = got
        .iter()
        .filter(|d| d.topic == "orders.eu")
        .map(|d| d.sequence)
        .collect();
    assert_eq!(got_eu, eu);
    let us: Vec<String> = datas(&got)
        .into_iter()
        .filter(|d| ["m0", "m3", "m6", "m9", "m12", "m15", "m18"].contains(&d.as_str()))
        .collect();
    assert_eq!(us, ["m0", "m3", "m6", "m9", "m12", "m15", "m18"]);
    let first = got
        .iter()
        .find(|d| d.sequence == p.sequence && d.topic == "orders.eu");
    let first = first.expect("the message with headers");
    assert_eq!(first.data, b"\x00\xffbinary");
    assert_eq!(first.headers, with_headers.headers);
    let unique: BTreeSet<&String> = got.iter().map(|d| &d.id).collect();
    assert_eq!(unique.len(), 21, "delivery ids are distinct");
    // Nothing more.
    assert!(
        claim(&s, "instance:i:orders.*", "h", 100)
            .await
            .deliveries
            .is_empty()
    );
    // A message published later arrives on the next claim.
    let late = publish(&s, "orders.us", "late").await;
    let (got, _) = claim_until(&s, "instance:i:orders.*", "h", 100, |g, _| !g.is_empty()).await;
    assert_eq!(
        (got[0].sequence, datas(&got)),
        (late, vec!["late".to_owned()])
    );
}

/// A batch is stored as its publishes one after another would be: in its order (so per topic),
/// a key once (also one repeated within the batch), one answer per publish; the same batch
/// again stores nothing new and answers the first sequences.
async fn a_batch_is_stored_in_its_order<B: Backend>(b: &B) {
    let s = b.open(Retention::default()).await;
    let before = publish(&s, "batch.a", "before").await;
    let mut msgs: Vec<NewMessage> = (0..300)
        .map(|i| {
            let topic = if i % 3 == 0 { "batch.b" } else { "batch.a" };
            msg(topic, &format!("m{i}"), &format!("k{i}"))
        })
        .collect();
    msgs.push(msg("batch.b", "m0 again", "k0"));
    let answers: Vec<_> = s
        .publish_batch(msgs.clone(), now_ms())
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(answers.len(), 301);
    assert!(answers[..300].iter().all(|p| !p.duplicate));
    assert_eq!(
        (answers[300].sequence, answers[300].duplicate),
        (answers[0].sequence, true)
    );
    for topic in ["batch.a", "batch.b"] {
        let seqs: Vec<u64> = msgs[..300]
            .iter()
            .zip(&answers)
            .filter(|(m, _)| m.topic == topic)
            .map(|(_, p)| p.sequence)
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{topic}: {seqs:?}");
        if topic == "batch.a" {
            assert!(seqs[0] > before);
        }
    }
    let again = s.publish_batch(msgs[..300].to_vec(), now_ms()).await;
    assert_eq!(again.len(), 300);
    for (a, p) in again.iter().zip(&answers) {
        assert_eq!(
            a.as_ref().unwrap(),
            &Published {
                duplicate: true,
                ..*p
            }
        );
    }

    s.open_consumer("instance:i:batch.*".into(), config("batch.*", 60_000, 5))
        .await
        .unwrap();
    let (got, _) = claim_until(&s, "instance:i:batch.*", "h", 1000, |g, _| g.len() >= 301).await;
    assert!(
        claim(&s, "instance:i:batch.*", "h2", 1000)
            .await
            .deliveries
            .is_empty()
    );
    for topic in ["batch.a", "batch.b"] {
        let mut want: Vec<String> = msgs[..300]
            .iter()
            .filter(|m| m.topic == topic)
            .map(|m| String::from_utf8_lossy(&m.data).into_owned())
            .collect();
        if topic == "batch.a" {
            want.insert(0, "before".into());
        }
        let got: Vec<String> = got
            .iter()
            .filter(|d| d.topic == topic)
            .map(|d| String::from_utf8_lossy(&d.data).into_owned())
            .collect();
        assert_eq!(got, want, "{topic}");
    }
}

/// Each instance's consumer gets every message; the holders of one queue group's consumer share
/// them, each message going to one of them.
async fn instances_each_get_all_and_a_queue_group_splits<B: Backend>(b: &B) {
    let s = b.open(Retention::default()).await;
    for c in [
        "instance:a:jobs.*",
        "instance:b:jobs.*",
        "group:workers:jobs.*",
    ] {
        s.open_consumer(c.into(), config("jobs.*", 60_000, 5))
            .await
            .unwrap();
    }
    for i in 0..6 {
        publish(&s, "jobs.x", &format!("j{i}")).await;
    }
    let all: Vec<String> = (0..6).map(|i| format!("j{i}")).collect();
    for c in ["instance:a:jobs.*", "instance:b:jobs.*"] {
        let (got, _) = claim_until(&s, c, "h", 100, |g, _| g.len() >= 6).await;
        assert_eq!(datas(&got), all);
    }
    // Two holders, three each at most: together they get each message once.
    let g1 = claim_until(&s, "group:workers:jobs.*", "w1", 3, |g, _| g.len() >= 3)
        .await
        .0;
    let g2 = claim_until(&s, "group:workers:jobs.*", "w2", 3, |g, _| g.len() >= 3)
        .await
        .0;
    let mut split: Vec<String> = datas(&g1).into_iter().chain(datas(&g2)).collect();
    split.sort();
    assert_eq!(split, all);
    assert!(
        claim(&s, "group:workers:jobs.*", "w3", 3)
            .await
            .deliveries
            .is_empty()
    );
    assert_eq!(s.ack(ids(&g1)).await.unwrap(), 3);
    assert_eq!(s.ack(ids(&g2)).await.unwrap(), 3);
}

/// A holder's unacked claims count against its `max`; an ack makes room; an acked message is
/// not delivered again, and acking it again finds nothing pending.
async fn ack_and_in_flight_limit<B: Backend>(b: &B) {
    let s = b.open(Retention::default()).await;
    s.open_consumer("instance:i:t".into(), config("t", 300, 5))
        .await
        .unwrap();
    for i in 0..3 {
        publish(&s, "t", &format!("m{i}")).await;
    }
    let (first, _) = claim_until(&s, "instance:i:t", "h", 2, |g, _| g.len() >= 2).await;
    assert_eq!(datas(&first), ["m0", "m1"]);
    assert!(
        claim(&s, "instance:i:t", "h", 2)
            .await
            .deliveries
            .is_empty()
    );
    assert_eq!(s.ack(vec![first[0].id.clone()]).await.unwrap(), 1);
    let (third, _) = claim_until(&s, "instance:i:t", "h", 2, |g, _| !g.is_empty()).await;
    assert_eq!(datas(&third), ["m2"]);
    assert_eq!(
        s.ack(vec![first[1].id.clone(), third[0].id.clone()])
            .await
            .unwrap(),
        2
    );
    assert_eq!(s.ack(ids(&first)).await.unwrap(), 0, "acked twice");
    // Past the ack deadline, nothing acked comes back.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        claim(&s, "instance:i:t", "h", 10)
            .await
            .deliveries
            .is_empty()
    );
}

/// An unacked delivery comes again once its ack deadline passed, counted in `redelivered`.
async fn redelivery_after_the_ack_deadline<B: Backend>(b: &B) {
    let s = b.open(Retention::default()).await;
    s.open_consumer("instance:i:t".into(), config("t", 400, 10))
        .await
        .unwrap();
    let seq = publish(&s, "t", "payload").await;
    let (d0, _) = claim_until(&s, "instance:i:t", "h", 10, |g, _| !g.is_empty()).await;
    assert_eq!((d0[0].sequence, d0[0].redelivered), (seq, 0));
    // Not before the deadline.
    assert!(
        claim(&s, "instance:i:t", "h", 10)
            .await
            .deliveries
            .is_empty()
    );
    let (d1, _) = claim_until(&s, "instance:i:t", "h", 10, |g, _| !g.is_empty()).await;
    assert_eq!(
        (d1[0].sequence, d1[0].redelivered, d1[0].data.as_slice()),
        (seq, 1, &b"payload"[..])
    );
    let (d2, _) = claim_until(&s, "instance:i:t", "h", 10, |g, _| !g.is_empty()).await;
    assert_eq!((d2[0].sequence, d2[0].redelivered), (seq, 2));
    assert_eq!(s.ack(vec![d2[0].id.clone()]).await.unwrap(), 1);
}

/// A nack makes a delivery deliverable again after its delay, counted as a delivery; a nack of a
/// delivery that is not pending any more answers false.
async fn nack_with_a_delay<B: Backend>(b: &B) {
    let s = b.open(Retention::default()).await;
    s.open_consumer("instance:i:t".into(), config("t", 60_000, 10))
        .await
        .unwrap();
    publish(&s, "t", "n").await;
    let (d0, _) = claim_until(&s, "instance:i:t", "h", 10, |g, _| !g.is_empty()).await;
    let nacked_at = std::time::Instant::now();
    assert!(s.nack(d0[0].id.clone(), now_ms() + 600).await.unwrap());
    assert!(
        claim(&s, "instance:i:t", "h", 10)
            .await
            .deliveries
            .is_empty()
    );
    let (d1, _) = claim_until(&s, "instance:i:t", "h", 10, |g, _| !g.is_empty()).await;
    assert!(
        nacked_at.elapsed() >= Duration::from_millis(500),
        "{:?}",
        nacked_at.elapsed()
    );
    assert_eq!((d1[0].redelivered, d1[0].data.as_slice()), (1, &b"n"[..]));
    // Without a delay: at once.
    assert!(s.nack(d1[0].id.clone(), now_ms()).await.unwrap());
    let (d2, _) = claim_until(&s, "instance:i:t", "h", 10, |g, _| !g.is_empty()).await;
    assert_eq!(d2[0].redelivered, 2);
    assert_eq!(s.ack(vec![d2[0].id.clone()]).await.unwrap(), 1);
    assert!(
        !s.nack(d2[0].id.clone(), now_ms()).await.unwrap(),
        "nack after ack"
    );
}

/// A release gives deliveries back at once without counting them; a nack counts. A release
/// names only the holder's own deliveries; without ids it gives back all of them.
async fn release_is_uncounted_and_nack_is_counted<B: Backend>(b: &B) {
    let s = b.open(Retention::default()).await;
    s.open_consumer("group:g:t".into(), config("t", 60_000, 2))
        .await
        .unwrap();
    publish(&s, "t", "r").await;
    let (d0, _) = claim_until(&s, "group:g:t", "h1", 10, |g, _| !g.is_empty()).await;
    assert_eq!(d0[0].redelivered, 0);
    // Another holder cannot give it back.
    assert_eq!(s.release("h2".into(), ids(&d0)).await.unwrap(), 0);
    assert_eq!(s.release("h2".into(), vec![]).await.unwrap(), 0);
    // Released three times: still not counted, and never dead-lettered for it.
    let mut last = d0;
    for _ in 0..3 {
        assert_eq!(s.release("h1".into(), vec![]).await.unwrap(), 1);
        let (d, _) = claim_until(&s, "group:g:t", "h2", 10, |g, _| !g.is_empty()).await;
        assert_eq!(d[0].redelivered, 0);
        assert_eq!(s.release("h2".into(), ids(&d)).await.unwrap(), 1);
        let (d, dead) = claim_until(&s, "group:g:t", "h1", 10, |g, _| !g.is_empty()).await;
        assert_eq!((d[0].redelivered, dead), (0, 0));
        last = d;
    }
    assert!(s.nack(last[0].id.clone(), now_ms()).await.unwrap());
    let (d, _) = claim_until(&s, "group:g:t", "h1", 10, |g, _| !g.is_empty()).await;
    assert_eq!(d[0].redelivered, 1);
    // A nacked delivery is not the holder's any more: a release leaves it alone.
    assert!(s.nack(d[0].id.clone(), now_ms() + 60_000).await.unwrap());
    assert_eq!(s.release("h1".into(), vec![]).await.unwrap(), 0);
}

/// After `max_deliver` deliveries without an ack a message goes to `dlq.<topic>` with the
/// reason, its original topic, sequence and consumer, and its own headers; it is not delivered
/// again, and acking its old delivery finds nothing pending.
async fn dead_letters_after_max_deliver<B: Backend>(b: &B) {
    let s = b.open(Retention::default()).await;
    s.open_consumer("instance:i:orders.eu".into(), config("orders.eu", 300, 2))
        .await
        .unwrap();
    s.open_consumer("instance:i:dlq.>".into(), config("dlq.>", 60_000, 5))
        .await
        .unwrap();
    let mut poison = msg("orders.eu", "poison", "");
    poison.headers.insert("h".into(), "1".into());
    let seq = s.publish(poison, now_ms()).await.unwrap().sequence;
    let c = "instance:i:orders.eu";
    let (d0, _) = claim_until(&s, c, "h", 10, |g, _| !g.is_empty()).await;
    let (d1, _) = claim_until(&s, c, "h", 10, |g, _| !g.is_empty()).await;
    assert_eq!((d0[0].redelivered, d1[0].redelivered), (0, 1));
    let (more, dead) = claim_until(&s, c, "h", 10, |_, dead| dead > 0).await;
    assert!(more.is_empty(), "{more:?}");
    assert_eq!(dead, 1);
    let (dl, _) = claim_until(&s, "instance:i:dlq.>", "h", 10, |g, _| !g.is_empty()).await;
    let dead = &dl[0];
    assert_eq!(
        (dead.topic.as_str(), dead.data.as_slice()),
        ("dlq.orders.eu", &b"poison"[..])
    );
    let h = |k: &str| dead.headers.get(k).cloned().unwrap_or_default();
    assert_eq!(
        h(DEAD_LETTER_REASON),
        "delivered 2 times (max_deliver 2) without an ack; the last delivery was not acked within its ack deadline of 300 ms"
    );
    assert_eq!(h(DEAD_LETTER_TOPIC), "orders.eu");
    assert_eq!(h(DEAD_LETTER_SEQUENCE), seq.to_string());
    assert_eq!(h(DEAD_LETTER_CONSUMER), c);
    assert_eq!(h("h"), "1");
    assert_eq!(s.ack(vec![d1[0].id.clone()]).await.unwrap(), 0);
    assert_eq!(s.ack(vec![dead.id.clone()]).await.unwrap(), 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = claim(&s, c, "h", 10).await;
    assert!(
        after.deliveries.is_empty() && after.dead_lettered == 0,
        "{after:?}"
    );

    // The reason names a nack when the last delivery was nacked.
    s.open_consumer(
        "instance:i:orders.us".into(),
        config("orders.us", 60_000, 1),
    )
    .await
    .unwrap();
    publish(&s, "orders.us", "nacked").await;
    let (d, _) = claim_until(&s, "instance:i:orders.us", "h", 10, |g, _| !g.is_empty()).await;
    assert!(s.nack(d[0].id.clone(), now_ms()).await.unwrap());
    let (more, dead) = claim_until(&s, "instance:i:orders.us", "h", 10, |_, dead| dead > 0).await;
    assert!(more.is_empty());
    assert_eq!(dead, 1);
    let (dl, _) = claim_until(&s, "instance:i:dlq.>", "h", 10, |g, _| !g.is_empty()).await;
    assert_eq!(dl[0].topic, "dlq.orders.us");
    assert_eq!(
        dl[0].headers.get(DEAD_LETTER_REASON).map(String::as_str),
        Some("delivered 1 times (max_deliver 1) without an ack; the last delivery was nacked")
    );
}

/// Past `max_bytes` the oldest messages go and the newest stay; past `max_age` old messages go.
async fn retention_by_size_and_age<B: Backend>(b: &B) {
    let s = b
        .open(Retention {
            max_age: Duration::from_secs(3600),
            max_bytes: 4096,
        })
        .await;
    let body = "x".repeat(100);
    for i in 0..100 {
        publish(&s, "t.size", &format!("{i:03}{body}")).await;
    }
    s.sweep(now_ms()).await.unwrap();
    s.open_consumer("instance:i:t.size".into(), config("t.size", 60_000, 5))
        .await
        .unwrap();
    let got = claim(&s, "instance:i:t.size", "h", 1000).await.deliveries;
    let kept: Vec<String> = datas(&got).iter().map(|d| d[..3].to_owned()).collect();
    assert!(!kept.is_empty() && kept.len() < 50, "{} kept", kept.len());
    let expected: Vec<String> = (100 - kept.len()..100).map(|i| format!("{i:03}")).collect();
    assert_eq!(kept, expected, "the newest are kept, in order");

    let s = b
        .open(Retention {
            max_age: Duration::from_secs(1),
            max_bytes: 1 << 20,
        })
        .await;
    publish(&s, "t.age", "old").await;
    tokio::time::sleep(Duration::from_millis(1600)).await;
    publish(&s, "t.age", "new").await;
    s.sweep(now_ms()).await.unwrap();
    s.open_consumer("instance:i:t.age".into(), config("t.age", 60_000, 5))
        .await
        .unwrap();
    let (got, _) = claim_until(&s, "instance:i:t.age", "h", 10, |g, _| !g.is_empty()).await;
    assert_eq!(datas(&got), ["new"]);
}

/// A registration is found by its session; a new registration of the instance replaces the old
/// session; a deregistration forgets both.
async fn registry_and_sessions<B: Backend>(b: &B) {
    let s = b.open(Retention::default()).await;
    let reg = Registration {
        instance: "oms-1".into(),
        pool_type: "SignalPool".into(),
        image: "registry.local/oms:1".into(),
        tags: vec!["eu".into(), "fast".into()],
        granted: vec![
            Grant {
                topic: "signals.>".into(),
                action: Action::Publish,
            },
            Grant {
                topic: "orders.*".into(),
                action: Action::Subscribe,
            },
        ],
        session: "0123456789abcdef0123456789abcdef".into(),
    };
    s.register(reg.clone()).await.unwrap();
    assert_eq!(
        s.session(reg.session.clone()).await.unwrap(),
        Some(reg.clone())
    );
    assert_eq!(s.session("unknown".into()).await.unwrap(), None);
    let mut again = reg.clone();
    again.session = "fedcba9876543210fedcba9876543210".into();
    again.granted.truncate(1);
    s.register(again.clone()).await.unwrap();
    assert_eq!(s.session(reg.session.clone()).await.unwrap(), None);
    assert_eq!(
        s.session(again.session.clone()).await.unwrap(),
        Some(again.clone())
    );
    let other = Registration {
        instance: "oms-2".into(),
        session: "00000000000000000000000000000002".into(),
        granted: vec![],
        tags: vec![],
        ..reg.clone()
    };
    s.register(other.clone()).await.unwrap();
    assert!(s.deregister("oms-1".into()).await.unwrap());
    assert_eq!(s.session(again.session.clone()).await.unwrap(), None);
    assert!(!s.deregister("oms-1".into()).await.unwrap());
    assert_eq!(s.session(other.session.clone()).await.unwrap(), Some(other));
}

/// What one holder left unacked and released goes to the next holder of the consumer (a new
/// session of the same instance), and the consumer's position is kept.
async fn a_new_holder_resumes_the_consumer<B: Backend>(b: &B) {
    let s = b.open(Retention::default()).await;
    s.open_consumer("instance:i:t.*".into(), config("t.*", 60_000, 5))
        .await
        .unwrap();
    for i in 0..4 {
        publish(&s, "t.a", &format!("m{i}")).await;
    }
    let (old, _) = claim_until(&s, "instance:i:t.*", "session-1", 2, |g, _| g.len() >= 2).await;
    assert_eq!(s.ack(vec![old[0].id.clone()]).await.unwrap(), 1);
    assert_eq!(s.release("session-1".into(), vec![]).await.unwrap(), 1);
    // Opening it again (the new session's Subscribe) keeps its position.
    s.open_consumer("instance:i:t.*".into(), config("t.*", 30_000, 5))
        .await
        .unwrap();
    let (new, _) = claim_until(&s, "instance:i:t.*", "session-2", 10, |g, _| g.len() >= 3).await;
    let mut got = datas(&new);
    got.sort();
    assert_eq!(got, ["m1", "m2", "m3"]);
    assert!(new.iter().all(|d| d.redelivered == 0));
}

/// Each delivery id names the consumer it is of (the Bus API refuses an id of another
/// instance's consumer); a string that is no delivery id of the store names none, and acking
/// it changes nothing.
async fn delivery_ids_name_their_consumer<B: Backend>(b: &B) {
    let s = b.open(Retention::default()).await;
    for c in ["instance:a:t", "instance:b:t"] {
        s.open_consumer(c.into(), config("t", 60_000, 5))
            .await
            .unwrap();
    }
    publish(&s, "t", "m").await;
    let (a, _) = claim_until(&s, "instance:a:t", "ha", 1, |g, _| !g.is_empty()).await;
    let (b_got, _) = claim_until(&s, "instance:b:t", "hb", 1, |g, _| !g.is_empty()).await;
    assert_eq!(
        s.delivery_consumer(&a[0].id).as_deref(),
        Some("instance:a:t")
    );
    assert_eq!(
        s.delivery_consumer(&b_got[0].id).as_deref(),
        Some("instance:b:t")
    );
    for junk in ["", "no id", "$JS.ACK.X.c.1.1.1.1.0", "1 t"] {
        assert_eq!(s.delivery_consumer(junk), None, "{junk:?}");
        assert_eq!(s.ack(vec![junk.into()]).await.unwrap(), 0);
    }
    assert_eq!(s.ack(ids(&a)).await.unwrap(), 1);
    assert_eq!(s.ack(ids(&b_got)).await.unwrap(), 1);
}

// ------------------------------------------------------------------------------------------------
// One test per case and backend
// ------------------------------------------------------------------------------------------------

macro_rules! suite {
    ($backend:ident, $make:expr) => {
        mod $backend {
            use super::*;

            suite!(@cases $make;
                publish_sequences_and_idempotency,
                payloads_headers_and_per_topic_order,
                a_batch_is_stored_in_its_order,
                instances_each_get_all_and_a_queue_group_splits,
                ack_and_in_flight_limit,
                redelivery_after_the_ack_deadline,
                nack_with_a_delay,
                release_is_uncounted_and_nack_is_counted,
                dead_letters_after_max_deliver,
                retention_by_size_and_age,
                registry_and_sessions,
                a_new_holder_resumes_the_consumer,
                delivery_ids_name_their_consumer,
            );
        }
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some(backend) = $make.await else { return };
                within(super::$case(&backend)).await;
            }
        )*
    };
}

suite!(redb, RedbBackend::new());
#[cfg(feature = "nats")]
suite!(nats, NatsBackend::new());

/// Two Bus API replicas on one NATS (a sidecar moved from one to the other): a delivery handed
/// out by one is acked, released or nacked through the other, since its id is the JetStream ack
/// subject; an ack repeated through the other (its first answer lost with a replica) is answered
/// at once; a release through the replica that claims next is not counted. The ack deadline is
/// short (3 s) so that the end can wait past it: what was acked, through either replica, never
/// comes again, while the one delivery left unacked does.
#[cfg(feature = "nats")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_replicas_take_each_others_deliveries() {
    use tether_bus::nats::{NatsOptions, NatsStore};
    let Some(backend) = NatsBackend::new().await else {
        return;
    };
    within(async {
        let options = NatsOptions::new(vec![backend.server.url.clone()]);
        let a = NatsStore::connect(&options).await.unwrap();
        let b = NatsStore::connect(&options).await.unwrap();
        let c = "instance:i:t";
        for s in [&a, &b] {
            s.open_consumer(c.into(), config("t", 3_000, 5))
                .await
                .unwrap();
        }
        for i in 0..4 {
            publish(&a, "t", &format!("m{i}")).await;
        }
        let (d, _) = claim_until(&a, c, "h", 4, |g, _| g.len() >= 4).await;
        assert_eq!(datas(&d), ["m0", "m1", "m2", "m3"]);
        assert_eq!(b.ack(vec![d[0].id.clone()]).await.unwrap(), 1);
        assert_eq!(a.ack(vec![d[1].id.clone()]).await.unwrap(), 1);
        b.ack(vec![d[1].id.clone()]).await.unwrap();
        assert_eq!(
            b.release("h".into(), vec![d[2].id.clone()]).await.unwrap(),
            1
        );
        let (again, _) = claim_until(&b, c, "h", 10, |g, _| !g.is_empty()).await;
        assert_eq!(
            (datas(&again), again[0].redelivered),
            (vec!["m2".into()], 0)
        );
        assert!(b.nack(d[3].id.clone(), now_ms()).await.unwrap());
        let (last, _) = claim_until(&b, c, "h", 10, |g, _| !g.is_empty()).await;
        assert_eq!((datas(&last), last[0].redelivered), (vec!["m3".into()], 1));
        assert_eq!(
            a.ack(vec![again[0].id.clone(), last[0].id.clone()])
                .await
                .unwrap(),
            2
        );
        // One more, claimed and left unacked: it comes again once its ack deadline passed,
        // after those of every message above (all claimed before it). Until then, and with it,
        // nothing acked comes again, through either replica.
        publish(&a, "t", "unacked").await;
        let (held, _) = claim_until(&a, c, "h", 10, |g, _| !g.is_empty()).await;
        assert_eq!(
            (datas(&held), held[0].redelivered),
            (vec!["unacked".into()], 0)
        );
        let until = std::time::Instant::now() + Duration::from_secs(30);
        let mut back = Vec::new();
        'wait: loop {
            for s in [&a, &b] {
                back.extend(claim(s, c, "h", 10).await.deliveries);
                if !back.is_empty() {
                    break 'wait;
                }
            }
            assert!(
                std::time::Instant::now() < until,
                "the unacked delivery did not come again within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            (datas(&back), back[0].redelivered),
            (vec!["unacked".into()], 1)
        );
        for s in [&a, &b] {
            let after = claim(s, c, "h", 10).await;
            assert!(after.deliveries.is_empty(), "{after:?}");
        }
        assert_eq!(b.ack(ids(&back)).await.unwrap(), 1);
    })
    .await;
}

/// A publish through replica B wakes replica A through NATS itself: A's safety-net poll is an
/// hour long and nothing of A's runs between the claims, so A's wake-up signal can only be
/// bumped by what A hears from NATS (before, A learnt of B's publish only from its 100 ms poll,
/// and its wake-up signal was never bumped). Each round A's next claim finds B's message; a
/// publish to a topic A's consumer does not match wakes A too (one signal for the bus) but
/// gives it nothing.
#[cfg(feature = "nats")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_a_publish_through_one_replica_wakes_the_others() {
    use std::sync::Arc;
    use tether_bus::nats::{NatsOptions, NatsStore};
    let Some(backend) = NatsBackend::new().await else {
        return;
    };
    within(async {
        let mut options = NatsOptions::new(vec![backend.server.url.clone()]);
        options.poll = Duration::from_secs(3600);
        let a = NatsStore::connect(&options).await.unwrap();
        let b = NatsStore::connect(&options).await.unwrap();
        let (wake, mut woken) = tokio::sync::watch::channel(0u64);
        a.wake_with(Arc::new(wake));
        let c = "group:g:t.*";
        a.open_consumer(c.into(), config("t.*", 2_000, 5))
            .await
            .unwrap();
        // For one ack deadline after a subscribe, an idle claim asks to be made again in 100 ms
        // (see `FRESH_POLL`); after it, in an hour.
        let until = std::time::Instant::now() + Duration::from_secs(30);
        while claim(&a, c, "h", 10).await.next_wake_ms < Some(now_ms() + 1_800_000) {
            assert!(std::time::Instant::now() < until, "still polling often");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for round in 0..5 {
            // Nothing to take: A would claim again in an hour if nothing woke it (after the
            // first round, a little sooner too: the last wake-up matched, see `SETTLE`).
            let idle = claim(&a, c, "h", 10).await;
            assert!(idle.deliveries.is_empty(), "{idle:?}");
            if round == 0 {
                let wake_at = idle.next_wake_ms.expect("a time to claim again");
                assert!(wake_at > now_ms() + 1_800_000, "{idle:?}");
            }
            woken.borrow_and_update();
            let data = format!("m{round}");
            publish(&b, "t.x", &data).await;
            // Bumped by NATS (within's 60 s stop a hang).
            woken.changed().await.unwrap();
            let (got, _) = claim_until(&a, c, "h", 10, |g, _| !g.is_empty()).await;
            assert_eq!(datas(&got), [data]);
            assert_eq!(a.ack(ids(&got)).await.unwrap(), 1);
        }
        claim(&a, c, "h", 10).await;
        woken.borrow_and_update();
        publish(&b, "other", "not for A's consumer").await;
        woken.changed().await.unwrap();
        let after = claim(&a, c, "h", 10).await;
        assert!(after.deliveries.is_empty(), "{after:?}");
    })
    .await;
}

/// A delivery of another stream (another bus on the same NATS account) is not this store's:
/// its id names no consumer here, and an ack, nack or release of it through this store sends
/// nothing (the message stays pending for its own bus).
#[cfg(feature = "nats")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_another_streams_delivery_is_not_acked() {
    let Some(backend) = NatsBackend::new().await else {
        return;
    };
    within(async {
        let (mine, other) = (
            backend.open(Retention::default()).await,
            backend.open(Retention::default()).await,
        );
        let c = "instance:i:t";
        for s in [&mine, &other] {
            s.open_consumer(c.into(), config("t", 60_000, 5))
                .await
                .unwrap();
        }
        publish(&mine, "t", "m").await;
        let (d, _) = claim_until(&mine, c, "h", 1, |g, _| !g.is_empty()).await;
        assert_eq!(other.delivery_consumer(&d[0].id), None);
        assert_eq!(other.ack(ids(&d)).await.unwrap(), 0);
        assert!(!other.nack(d[0].id.clone(), now_ms()).await.unwrap());
        assert_eq!(other.release("h".into(), ids(&d)).await.unwrap(), 0);
        assert_eq!(mine.ack(ids(&d)).await.unwrap(), 1);
    })
    .await;
}

/// A store on the NATS server at `url` with the consumer `c` opened.
#[cfg(feature = "nats")]
async fn nats_store_with(
    url: &str,
    c: &str,
    consumer: ConsumerConfig,
) -> tether_bus::nats::NatsStore {
    use tether_bus::nats::{NatsOptions, NatsStore};
    let s = NatsStore::connect(&NatsOptions::new(vec![url.to_owned()]))
        .await
        .unwrap();
    s.open_consumer(c.into(), consumer).await.unwrap();
    s
}

/// An ack NATS did not confirm (the server went away) is a transient error (the Bus API answers
/// `UNAVAILABLE`), and the same ack made again once NATS is back is sent and answered as acked,
/// so the message does not come again after its ack deadline. Before, the first ack marked the
/// delivery done: the second sent nothing, answered 0, and NATS delivered the message again.
#[cfg(feature = "nats")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_an_ack_nats_did_not_confirm_is_sent_again() {
    let Some(mut server) = NatsServer::start(&[]).await else {
        return;
    };
    tokio::time::timeout(Duration::from_secs(120), async {
        let c = "instance:i:t";
        let s = nats_store_with(&server.url, c, config("t", 2_000, 5)).await;
        publish(&s, "t", "m").await;
        let (d, _) = claim_until(&s, c, "h", 1, |g, _| !g.is_empty()).await;
        server.stop();
        let failed = s.ack(ids(&d)).await.unwrap_err();
        assert!(failed.transient, "{failed}");
        server.start_again().await;
        let until = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            match s.ack(ids(&d)).await {
                Ok(n) => {
                    assert_eq!(n, 1, "the ack was sent and the delivery was pending");
                    break;
                }
                Err(e) => {
                    assert!(e.transient, "{e}");
                    assert!(std::time::Instant::now() < until, "NATS is not back: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        // Past its ack deadline (2 s), it does not come again.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = claim(&s, c, "h2", 10).await;
        assert!(after.deliveries.is_empty(), "{after:?}");
    })
    .await
    .expect("the case did not finish within 120 s");
}

/// A claim whose fetch the server does not answer (frozen, the connection still open) fails
/// as unavailable, rather than answering "nothing to deliver" as if the consumer were empty;
/// once the server answers again, the message is claimed.
#[cfg(feature = "nats")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_a_fetch_the_server_does_not_answer_is_an_error() {
    let Some(server) = NatsServer::start(&[]).await else {
        return;
    };
    tokio::time::timeout(Duration::from_secs(120), async {
        let c = "instance:i:t";
        let s = nats_store_with(&server.url, c, config("t", 30_000, 5)).await;
        server.pause();
        let failed = s.claim(c.into(), "h".into(), now_ms(), 10).await;
        server.resume();
        let failed = failed.unwrap_err();
        assert!(failed.transient, "{failed}");
        assert!(
            failed
                .message
                .contains("no answer to a fetch from `instance:i:t`"),
            "{failed}"
        );
        publish(&s, "t", "m").await;
        let (d, _) = claim_until(&s, c, "h", 1, |g, _| !g.is_empty()).await;
        assert_eq!(datas(&d), ["m"]);
    })
    .await
    .expect("the case did not finish within 120 s");
}

/// NATS's timers (the ack wait, a nack's delay) may fire a little after ours. A claim made at
/// an ack deadline or at the end of a nack's delay that finds nothing yet asks to be made again
/// soon (10 ms, doubling, at most a second apart), until the messages are back, instead of
/// leaving them to the safety poll (an hour here, 5 s by default). First a claim as of a time
/// past both while NATS's timers have not fired (as a claim a moment early by NATS's clock is);
/// then claims as the Bus API makes them, each at the time the last one asked for, until both
/// messages come back, never asked to wait for the poll.
#[cfg(feature = "nats")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_a_claim_before_natss_timers_fired_asks_again_soon() {
    use tether_bus::nats::{NatsOptions, NatsStore};
    let Some(backend) = NatsBackend::new().await else {
        return;
    };
    within(async {
        let mut options = NatsOptions::new(vec![backend.server.url.clone()]);
        options.poll = Duration::from_secs(3600);
        let s = NatsStore::connect(&options).await.unwrap();
        let c = "instance:i:t";
        s.open_consumer(c.into(), config("t", 3_000, 5))
            .await
            .unwrap();
        publish(&s, "t", "held").await;
        publish(&s, "t", "nacked").await;
        let (d, _) = claim_until(&s, c, "h", 2, |g, _| g.len() >= 2).await;
        let t = now_ms();
        assert!(s.nack(d[1].id.clone(), t + 3_000).await.unwrap());
        // The held one's ack deadline and the nacked one's delay have passed by this claim's
        // clock, not by NATS's.
        let at = t + 3_000;
        let early = s.claim(c.into(), "h".into(), at, 10).await.unwrap();
        assert!(early.deliveries.is_empty(), "{early:?}");
        let wake = early.next_wake_ms.expect("a time to claim again");
        assert!(wake <= at + 1_000, "asked to wait {} ms", wake - at);

        let until = std::time::Instant::now() + Duration::from_secs(30);
        let mut back = Vec::new();
        while back.len() < 2 {
            let claimed = claim(&s, c, "h", 10).await;
            back.extend(datas(&claimed.deliveries));
            let wake = claimed.next_wake_ms.expect("a time to claim again");
            let now = now_ms();
            assert!(wake <= now + 3_500, "asked to wait {} ms", wake - now);
            assert!(std::time::Instant::now() < until, "not back: {back:?}");
            tokio::time::sleep(Duration::from_millis(wake.saturating_sub(now))).await;
        }
        back.sort();
        assert_eq!(back, ["held", "nacked"]);
    })
    .await;
}

/// A NATS server that cannot be reached when the bus starts (it starts beside the bus, as under
/// Compose or in a Pod) is tried again: the store connects once it is up. Before, the first
/// refused connection stopped the start.
#[cfg(feature = "nats")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_a_server_that_comes_up_after_the_bus_starts_is_reached() {
    use tether_bus::nats::{NatsOptions, NatsStore};
    let Some(mut server) = NatsServer::start(&[]).await else {
        return;
    };
    server.stop();
    let url = server.url.clone();
    let connecting =
        tokio::spawn(async move { NatsStore::connect(&NatsOptions::new(vec![url])).await });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.start_again().await;
    let store = connecting
        .await
        .unwrap()
        .expect("connected once the server is up");
    store
        .publish(
            NewMessage {
                topic: "t.a".into(),
                ..Default::default()
            },
            1,
        )
        .await
        .unwrap();
}
