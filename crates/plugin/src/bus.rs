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

/// What travels to the sidecar: a message, or the end of the plugin's half of the session.
pub(crate) enum Out {
    Msg(PluginMessage),
    Close,
}

pub(crate) type OutTx = mpsc::UnboundedSender<Out>;

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
        let (reply, answer) = oneshot::channel();
        {
            let mut state = shared.lock();
            if state.closed {
                return Err(PublishError::Closed { topic });
            }
            if let Some(out) = &state.out {
                // A send to a session that just ended fails; the publish stays pending and is
                // sent again on the next session.
                let _ = out.send(Out::Msg(publish_message(message.clone())));
            }
            state.pending.insert(request_id, Pending { message, reply });
            shared.pending_count.send_replace(state.pending.len());
        }
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
}

#[derive(Default)]
struct State {
    /// The live session's outgoing half; None between sessions.
    out: Option<OutTx>,
    /// Publishes sent (or to send) and not answered yet, by request id.
    pending: BTreeMap<u64, Pending>,
    /// The plugin stopped: no more publishes.
    closed: bool,
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
            let _ = out.send(Out::Msg(publish_message(pending.message.clone())));
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
            self.pending_count.send_replace(state.pending.len());
            pending
        };
        let Some(Pending { message, reply }) = pending else {
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

    /// Waits until no publish waits for its result.
    pub(crate) async fn idle(&self) {
        let mut count = self.pending_count.subscribe();
        let _ = count.wait_for(|n| *n == 0).await;
    }

    /// Ends the plugin's half of the session if no publish waits for its result; from then on
    /// publishing fails with [`PublishError::Closed`].
    pub(crate) fn close_if_idle(&self, out: &OutTx) -> bool {
        let mut state = self.lock();
        if !state.pending.is_empty() {
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
            let pending = std::mem::take(&mut state.pending);
            self.pending_count.send_replace(0);
            pending
        };
        for (_, Pending { message, reply }) in pending {
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
    fn prefixes_are_random_hex() {
        let a = random_prefix();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, random_prefix());
    }
}
