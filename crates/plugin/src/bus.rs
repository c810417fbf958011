//! The publish handle: [`Bus`], and what a publish gives back.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tether_bus_proto::v1::{
    PluginMessage, PluginPublish, PublishResult, plugin_message, publish_result,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::code_and_message;

/// What the plugin's publishes queued or sent and not yet answered by the sidecar may weigh
/// together: 16 MiB, the sidecar's own budget for the publishes it took from the plugin. A
/// publish past it waits (in [`Bus::send`]) until the sidecar answered enough of those before
/// it, so a plugin that publishes faster than the bus answers does not grow its memory without
/// bound. See [`publish_weight`].
pub(crate) const PUBLISH_BUDGET: usize = 16 * 1024 * 1024;

/// The unit a publish weighs in against [`PUBLISH_BUDGET`] (as the sidecar counts it).
const PUBLISH_UNIT: usize = 1024;

/// A publish's share of [`PUBLISH_BUDGET`], counted as the sidecar counts it (its encoded size
/// in started KiB, at least one), and at most the whole budget, so that a publish larger than
/// the budget still goes (alone). Counted alike, and over a superset (what the sidecar has not
/// read yet too), the SDK's budget is spent no later than the sidecar's: the sidecar does not
/// stop reading while acks and health answers wait here.
pub(crate) fn publish_weight(publish: &PluginPublish) -> usize {
    use prost::Message as _;
    let units = publish.encoded_len().div_ceil(PUBLISH_UNIT).max(1);
    (units * PUBLISH_UNIT).min(PUBLISH_BUDGET)
}

/// A message for the session's control queue, or the end of the plugin's half of the session.
pub(crate) enum Out {
    Msg(PluginMessage),
    Close,
}

/// The plugin's half of one session: two queues, which the session's writer empties in this
/// order. The control queue (Hello, acks, nacks, health answers, the half-close) goes before any
/// publish still queued, so an ack does not wait behind the publishes and pass its deadline;
/// publishes keep their order among themselves, and only those within [`PUBLISH_BUDGET`] are
/// queued at all.
#[derive(Clone)]
pub(crate) struct OutTx {
    control: mpsc::UnboundedSender<Out>,
    publishes: mpsc::UnboundedSender<PluginMessage>,
}

/// The writer's ends of an [`OutTx`].
pub(crate) struct OutRx {
    control: mpsc::UnboundedReceiver<Out>,
    publishes: mpsc::UnboundedReceiver<PluginMessage>,
    /// The Close came (or the control queue's senders are gone): only the publishes queued before
    /// it are still sent.
    closing: bool,
}

/// A send to a session that ended.
#[derive(Debug)]
pub(crate) struct Gone;

impl OutTx {
    pub(crate) fn new() -> (OutTx, OutRx) {
        let (control, control_rx) = mpsc::unbounded_channel();
        let (publishes, publishes_rx) = mpsc::unbounded_channel();
        (
            OutTx { control, publishes },
            OutRx {
                control: control_rx,
                publishes: publishes_rx,
                closing: false,
            },
        )
    }

    /// Queues a control message (or the half-close) ahead of the queued publishes.
    pub(crate) fn send(&self, out: Out) -> Result<(), Gone> {
        self.control.send(out).map_err(|_| Gone)
    }

    /// Queues a publish after the publishes queued before it.
    fn publish(&self, message: PluginMessage) -> Result<(), Gone> {
        self.publishes.send(message).map_err(|_| Gone)
    }
}

impl OutRx {
    /// The next message to send: a control message if one waits, else the oldest publish; `None`
    /// once the half-close came and the publishes queued before it are sent.
    pub(crate) async fn next(&mut self) -> Option<PluginMessage> {
        if !self.closing {
            tokio::select! {
                biased;
                out = self.control.recv() => match out {
                    Some(Out::Msg(message)) => return Some(message),
                    Some(Out::Close) | None => self.closing = true,
                },
                Some(message) = self.publishes.recv() => return Some(message),
            }
        }
        self.publishes.try_recv().ok()
    }
}

/// A cloneable handle that publishes through the sidecar. Usable from any task, with any number
/// of publishes in flight at once; a publish waiting when the connection drops is sent again
/// (with the same idempotency key) once the SDK reconnected.
#[derive(Clone)]
pub struct Bus {
    pub(crate) shared: Arc<Shared>,
}

/// One message to publish, with its headers and, optionally, its idempotency key.
///
/// ```
/// use tether_plugin::Publish;
/// let publish = Publish::new("signals.buy", b"AAPL".to_vec())
///     .header("source-topic", "orders.eu")
///     .idempotency_key("orders.eu-41");
/// ```
#[derive(Debug, Clone)]
pub struct Publish {
    topic: String,
    data: Vec<u8>,
    headers: HashMap<String, String>,
    idempotency_key: Option<String>,
}

impl Publish {
    /// A message on `topic` (concrete: no wildcards) with `data` as its body.
    pub fn new(topic: impl Into<String>, data: impl Into<Vec<u8>>) -> Publish {
        Publish {
            topic: topic.into(),
            data: data.into(),
            headers: HashMap::new(),
            idempotency_key: None,
        }
    }

    /// Adds (or replaces) a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Publish {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// The key the bus stores the message under once: a publish retried with the same key on the
    /// same topic is answered with the first one's sequence. Without it the SDK makes a random
    /// one, so only the SDK's own resends are deduplicated.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Publish {
        self.idempotency_key = Some(key.into());
        self
    }
}

/// The sidecar took a message: it is durable, on the bus or in the sidecar's outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Published {
    /// The message's sequence in its topic's log; 0 while it waits in the sidecar's outbox.
    pub sequence: u64,
}

impl Published {
    /// True when the message waits in the sidecar's outbox (the bus was unreachable); it is
    /// durable all the same.
    pub fn in_outbox(&self) -> bool {
        self.sequence == 0
    }
}

/// Why a publish did not succeed: one variant per refusal code of the protocol, one for other
/// codes, and one for a session that ended before the sidecar answered.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublishError {
    /// `PERMISSION_DENIED`: the topic is outside the instance's grants.
    PermissionDenied {
        /// The topic of the publish.
        topic: String,
        /// The sidecar's message (it names the topic and the action).
        message: String,
    },
    /// `INVALID_ARGUMENT`: a wildcard or a malformed topic.
    InvalidTopic {
        /// The topic of the publish.
        topic: String,
        /// The sidecar's message.
        message: String,
    },
    /// `RESOURCE_EXHAUSTED`: the sidecar's outbox is full (the bus is unreachable and many
    /// messages wait); try again later.
    OutboxFull {
        /// The topic of the publish.
        topic: String,
        /// The sidecar's message.
        message: String,
    },
    /// `UNAVAILABLE`: the sidecar is stopping and the bus is unreachable.
    Unavailable {
        /// The topic of the publish.
        topic: String,
        /// The sidecar's message.
        message: String,
    },
    /// Another refusal code, from a newer sidecar.
    Refused {
        /// The topic of the publish.
        topic: String,
        /// The code's name as the sidecar sent it.
        code: String,
        /// The sidecar's message.
        message: String,
    },
    /// The session with the sidecar ended for good (the plugin stopped, or the sidecar could not
    /// be reached again) before the sidecar answered. The message may or may not be stored.
    Closed {
        /// The topic of the publish.
        topic: String,
    },
}

impl PublishError {
    /// The topic of the publish that failed.
    pub fn topic(&self) -> &str {
        match self {
            PublishError::PermissionDenied { topic, .. }
            | PublishError::InvalidTopic { topic, .. }
            | PublishError::OutboxFull { topic, .. }
            | PublishError::Unavailable { topic, .. }
            | PublishError::Refused { topic, .. }
            | PublishError::Closed { topic } => topic,
        }
    }

    fn from_refusal(topic: String, code: String, message: String) -> PublishError {
        match code.as_str() {
            "PERMISSION_DENIED" => PublishError::PermissionDenied { topic, message },
            "INVALID_ARGUMENT" => PublishError::InvalidTopic { topic, message },
            "RESOURCE_EXHAUSTED" => PublishError::OutboxFull { topic, message },
            "UNAVAILABLE" => PublishError::Unavailable { topic, message },
            _ => PublishError::Refused {
                topic,
                code,
                message,
            },
        }
    }
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let topic = self.topic();
        let (what, message) = match self {
            PublishError::PermissionDenied { message, .. } => ("permission denied", message),
            PublishError::InvalidTopic { message, .. } => ("invalid topic", message),
            PublishError::OutboxFull { message, .. } => ("the sidecar's outbox is full", message),
            PublishError::Unavailable { message, .. } => (
                "the sidecar is stopping and the bus is unreachable",
                message,
            ),
            PublishError::Refused { code, message, .. } => {
                return write!(
                    f,
                    "cannot publish to `{topic}`: refused with {}",
                    code_and_message(code, message)
                );
            }
            PublishError::Closed { .. } => {
                return write!(
                    f,
                    "cannot publish to `{topic}`: the session with the sidecar ended before it answered"
                );
            }
        };
        write!(
            f,
            "cannot publish to `{topic}`: {}",
            code_and_message(what, message)
        )
    }
}

impl std::error::Error for PublishError {}

impl Bus {
    /// Publishes `data` on `topic` and waits until the sidecar accepted it (it is then durable)
    /// or refused it.
    pub async fn publish(
        &self,
        topic: impl Into<String>,
        data: impl Into<Vec<u8>>,
    ) -> Result<Published, PublishError> {
        self.send(Publish::new(topic, data)).await
    }

    /// [`Bus::publish`] with headers.
    pub async fn publish_with<K, V>(
        &self,
        topic: impl Into<String>,
        data: impl Into<Vec<u8>>,
        headers: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Published, PublishError>
    where
        K: Into<String>,
        V: Into<String>,
    {
        let mut publish = Publish::new(topic, data);
        for (k, v) in headers {
            publish = publish.header(k, v);
        }
        self.send(publish).await
    }

    /// Publishes a [`Publish`] (headers, idempotency key) and waits for the sidecar's answer.
    pub async fn send(&self, publish: Publish) -> Result<Published, PublishError> {
        let shared = &self.shared;
        let request_id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let Publish {
            topic,
            data,
            headers,
            idempotency_key,
        } = publish;
        let message = PluginPublish {
            request_id,
            topic: topic.clone(),
            data,
            headers,
            idempotency_key: idempotency_key
                .unwrap_or_else(|| format!("{}-{request_id}", shared.key_prefix)),
        };
        let weight = publish_weight(&message);
        let (reply, answer) = oneshot::channel();
        {
            let mut state = shared.lock();
            if state.closed {
                return Err(PublishError::Closed { topic });
            }
            let pending = Pending {
                message,
                reply,
                weight,
            };
            if state.waiting.is_empty() && state.fits(weight) {
                state.admit(request_id, pending);
            } else {
                // Past the budget: queued by `Shared::resolve` once the sidecar answered enough
                // of the publishes before it, in the order they were called.
                state.waiting.insert(request_id, pending);
            }
            shared.pending_count.send_replace(state.count());
        }
        // A caller that gives up while its publish waits for the budget withdraws it (it was
        // never sent); one already queued or sent stays, as before, until the sidecar answers.
        let _withdraw = Withdraw { shared, request_id };
        answer.await.unwrap_or(Err(PublishError::Closed { topic }))
    }

    /// The instance id the sidecar's Welcome named.
    pub fn instance_id(&self) -> String {
        self.shared
            .instance_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bus")
            .field("instance_id", &self.instance_id())
            .finish_non_exhaustive()
    }
}

struct Pending {
    message: PluginPublish,
    reply: oneshot::Sender<Result<Published, PublishError>>,
    /// Its share of [`PUBLISH_BUDGET`].
    weight: usize,
}

#[derive(Default)]
struct State {
    /// The live session's outgoing half; None between sessions.
    out: Option<OutTx>,
    /// Publishes queued or sent (or to send on the next session) and not answered yet, by
    /// request id.
    pending: BTreeMap<u64, Pending>,
    /// What `pending` weighs; at most [`PUBLISH_BUDGET`].
    weight: usize,
    /// Publishes held back by [`PUBLISH_BUDGET`], by request id (the order they were called).
    waiting: BTreeMap<u64, Pending>,
    /// The plugin stopped: no more publishes.
    closed: bool,
}

impl State {
    /// Publishes waiting for their result, sent or not.
    fn count(&self) -> usize {
        self.pending.len() + self.waiting.len()
    }

    /// Whether a publish of `weight` fits beside those pending.
    fn fits(&self, weight: usize) -> bool {
        self.weight + weight <= PUBLISH_BUDGET
    }

    /// Makes a publish pending and queues it on the live session, if any.
    fn admit(&mut self, request_id: u64, pending: Pending) {
        self.weight += pending.weight;
        if let Some(out) = &self.out {
            // A send to a session that just ended fails; the publish stays pending and is sent
            // again on the next session.
            let _ = out.publish(publish_message(pending.message.clone()));
        }
        self.pending.insert(request_id, pending);
    }

    /// Admits the publishes held back, oldest first, while they fit.
    fn admit_waiting(&mut self) {
        while let Some(weight) = self.waiting.first_key_value().map(|(_, p)| p.weight) {
            if !self.fits(weight) {
                break;
            }
            if let Some((request_id, pending)) = self.waiting.pop_first() {
                self.admit(request_id, pending);
            }
        }
    }
}

/// Withdraws a publish still held back by the budget when its caller stops waiting.
struct Withdraw<'a> {
    shared: &'a Shared,
    request_id: u64,
}

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        if state.waiting.remove(&self.request_id).is_some() {
            // It may have held back smaller publishes behind it.
            state.admit_waiting();
            self.shared.pending_count.send_replace(state.count());
        }
    }
}

/// The state behind every clone of a [`Bus`].
pub(crate) struct Shared {
    next_id: AtomicU64,
    key_prefix: String,
    state: Mutex<State>,
    pending_count: watch::Sender<usize>,
    instance_id: Mutex<String>,
}

impl Shared {
    pub(crate) fn new() -> Shared {
        Shared {
            next_id: AtomicU64::new(1),
            key_prefix: random_prefix(),
            state: Mutex::new(State::default()),
            pending_count: watch::Sender::new(0),
            instance_id: Mutex::new(String::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No code panics while holding the lock; a poisoned lock still holds consistent state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set_instance_id(&self, id: String) {
        *self.instance_id.lock().unwrap_or_else(|e| e.into_inner()) = id;
    }

    /// A session is up: publish through it, and send it whatever waits, in the order it was
    /// published.
    pub(crate) fn attach(&self, out: &OutTx) {
        let mut state = self.lock();
        if !state.pending.is_empty() {
            tracing::info!(
                count = state.pending.len(),
                "sending again the publishes the lost session did not answer"
            );
        }
        for pending in state.pending.values() {
            let _ = out.publish(publish_message(pending.message.clone()));
        }
        state.out = Some(out.clone());
    }

    /// The session is gone: publishes wait for the next one.
    pub(crate) fn detach(&self) {
        self.lock().out = None;
    }

    /// Hands a PublishResult to the publish that waits for it.
    pub(crate) fn resolve(&self, result: PublishResult) {
        let pending = {
            let mut state = self.lock();
            let pending = state.pending.remove(&result.request_id);
            if let Some(pending) = &pending {
                state.weight -= pending.weight;
                state.admit_waiting();
            }
            self.pending_count.send_replace(state.count());
            pending
        };
        let Some(Pending { message, reply, .. }) = pending else {
            tracing::debug!(
                request_id = result.request_id,
                "a publish result for no waiting publish (answered before)"
            );
            return;
        };
        let topic = message.topic;
        let outcome = match result.result {
            Some(publish_result::Result::Accepted(a)) => Ok(Published {
                sequence: a.sequence,
            }),
            Some(publish_result::Result::Refused(r)) => {
                Err(PublishError::from_refusal(topic, r.code, r.message))
            }
            None => Err(PublishError::Refused {
                topic,
                code: "UNKNOWN".to_string(),
                message: "the sidecar's result carried neither accepted nor refused".to_string(),
            }),
        };
        let _ = reply.send(outcome);
    }

    /// Waits until no publish waits for its result (sent or held back by the budget).
    pub(crate) async fn idle(&self) {
        let mut count = self.pending_count.subscribe();
        let _ = count.wait_for(|n| *n == 0).await;
    }

    /// Ends the plugin's half of the session if no publish waits for its result; from then on
    /// publishing fails with [`PublishError::Closed`].
    pub(crate) fn close_if_idle(&self, out: &OutTx) -> bool {
        let mut state = self.lock();
        if state.count() != 0 {
            return false;
        }
        state.closed = true;
        state.out = None;
        let _ = out.send(Out::Close);
        true
    }

    /// The plugin is done: every waiting publish fails with [`PublishError::Closed`].
    pub(crate) fn close(&self) {
        let pending = {
            let mut state = self.lock();
            state.closed = true;
            state.out = None;
            let mut pending = std::mem::take(&mut state.pending);
            pending.append(&mut state.waiting);
            state.weight = 0;
            self.pending_count.send_replace(0);
            pending
        };
        for (_, Pending { message, reply, .. }) in pending {
            let _ = reply.send(Err(PublishError::Closed {
                topic: message.topic,
            }));
        }
    }
}

fn publish_message(publish: PluginPublish) -> PluginMessage {
    PluginMessage {
        kind: Some(plugin_message::Kind::Publish(publish)),
    }
}

/// 128 random bits in hex: the part of the SDK's idempotency keys that tells this process's
/// publishes from every other's (the request id makes each key unique within it).
fn random_prefix() -> String {
    let mut bytes = [0u8; 16];
    if let Err(e) = getrandom::fill(&mut bytes) {
        // No randomness from the OS: fall back on what differs between processes and runs.
        tracing::warn!("no random bytes from the OS ({e}); idempotency keys use time and pid");
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes[..12].copy_from_slice(&nanos.to_le_bytes()[..12]);
        bytes[12..].copy_from_slice(&std::process::id().to_le_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_codes_map_to_variants() {
        let t = || "signals.x".to_string();
        let m = || "why".to_string();
        assert_eq!(
            PublishError::from_refusal(t(), "PERMISSION_DENIED".into(), m()),
            PublishError::PermissionDenied {
                topic: t(),
                message: m()
            }
        );
        assert_eq!(
            PublishError::from_refusal(t(), "INVALID_ARGUMENT".into(), m()),
            PublishError::InvalidTopic {
                topic: t(),
                message: m()
            }
        );
        assert_eq!(
            PublishError::from_refusal(t(), "RESOURCE_EXHAUSTED".into(), m()),
            PublishError::OutboxFull {
                topic: t(),
                message: m()
            }
        );
        assert_eq!(
            PublishError::from_refusal(t(), "UNAVAILABLE".into(), m()),
            PublishError::Unavailable {
                topic: t(),
                message: m()
            }
        );
        let other = PublishError::from_refusal(t(), "DATA_LOSS".into(), m());
        assert_eq!(
            other.to_string(),
            "cannot publish to `signals.x`: refused with DATA_LOSS: why"
        );
        assert_eq!(
            PublishError::OutboxFull {
                topic: t(),
                message: String::new()
            }
            .to_string(),
            "cannot publish to `signals.x`: the sidecar's outbox is full"
        );
        assert_eq!(
            PublishError::Closed { topic: t() }.to_string(),
            "cannot publish to `signals.x`: the session with the sidecar ended before it answered"
        );
    }

    #[test]
    fn a_publish_weighs_its_data_topic_and_headers_within_bounds() {
        let publish = |data: usize, headers: &[(&str, &str)]| PluginPublish {
            topic: "t.x".into(),
            data: vec![0; data],
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            idempotency_key: "counted too".into(),
            request_id: 1,
        };
        assert_eq!(publish_weight(&publish(0, &[])), 1024);
        // Encoded: 990 + 3 (data) + 5 (topic) + 13 (key) + 2 (request id) = 1,013 bytes.
        assert_eq!(publish_weight(&publish(990, &[])), 1024);
        // 1,033 bytes encoded: a second KiB started, as the sidecar counts it.
        assert_eq!(publish_weight(&publish(1010, &[])), 2048);
        assert_eq!(publish_weight(&publish(2000, &[("ab", "cde")])), 2048);
        assert_eq!(
            publish_weight(&publish(PUBLISH_BUDGET * 2, &[])),
            PUBLISH_BUDGET
        );
    }

    /// Polls `call` once: the SDK has queued it, or holds it back, when this returns.
    async fn call_once<F: std::future::Future + Unpin>(call: &mut F) {
        let first = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(std::pin::Pin::new(&mut *call).poll(cx))
        })
        .await;
        assert!(first.is_pending());
    }

    fn queued_topics(rx: &mut OutRx) -> Vec<String> {
        std::iter::from_fn(|| rx.publishes.try_recv().ok())
            .map(|m| match m.kind {
                Some(plugin_message::Kind::Publish(p)) => p.topic,
                other => panic!("not a publish: {other:?}"),
            })
            .collect()
    }

    #[tokio::test]
    async fn held_back_publishes_go_in_call_order_and_a_dropped_one_never_goes() {
        let bus = Bus {
            shared: Arc::new(Shared::new()),
        };
        let (out, mut rx) = OutTx::new();
        bus.shared.attach(&out);
        // `a` leaves 2 KiB of the budget (its encoded size rounds up to the KiB): `b` (3 KiB)
        // waits, and `c` (1 KiB) waits behind it.
        let mut a = Box::pin(bus.publish("a", vec![0; PUBLISH_BUDGET - 2048 - 100]));
        let mut b = Box::pin(bus.publish("b", vec![0; 2200]));
        let mut c = Box::pin(bus.publish("c", vec![]));
        call_once(&mut a).await;
        call_once(&mut b).await;
        call_once(&mut c).await;
        assert_eq!(queued_topics(&mut rx), ["a"]);
        // `b`'s caller gives up: `b` is withdrawn, and `c` now fits.
        drop(b);
        assert_eq!(queued_topics(&mut rx), ["c"]);
        assert_eq!(bus.shared.lock().count(), 2);
        // Answering `a` sends nothing more.
        bus.shared.resolve(PublishResult {
            request_id: 1,
            result: Some(publish_result::Result::Accepted(
                tether_bus_proto::v1::PublishAccepted { sequence: 7 },
            )),
        });
        assert_eq!(a.await, Ok(Published { sequence: 7 }));
        assert_eq!(queued_topics(&mut rx), Vec::<String>::new());
        // The end of the plugin fails what still waits.
        bus.shared.close();
        assert_eq!(c.await, Err(PublishError::Closed { topic: "c".into() }));
    }

    #[tokio::test]
    async fn the_writer_sends_control_messages_first_and_half_closes_after_the_publishes() {
        let publish = |topic: &str| {
            publish_message(PluginPublish {
                topic: topic.into(),
                ..PluginPublish::default()
            })
        };
        let ack = |id: &str| PluginMessage {
            kind: Some(plugin_message::Kind::Ack(tether_bus_proto::v1::PluginAck {
                delivery_id: id.into(),
            })),
        };
        let (out, mut rx) = OutTx::new();
        out.publish(publish("p1")).unwrap();
        out.publish(publish("p2")).unwrap();
        out.send(Out::Msg(ack("d1"))).unwrap();
        out.send(Out::Msg(ack("d2"))).unwrap();
        out.send(Out::Close).unwrap();
        out.send(Out::Msg(ack("after the close"))).unwrap();
        let mut sent = Vec::new();
        while let Some(message) = rx.next().await {
            sent.push(message);
        }
        assert_eq!(sent, [ack("d1"), ack("d2"), publish("p1"), publish("p2")]);
    }

    #[test]
    fn prefixes_are_random_hex() {
        let a = random_prefix();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, random_prefix());
    }
}
