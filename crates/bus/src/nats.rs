//! [`NatsStore`]: the bus's [`Store`] on NATS JetStream, so that the Bus API keeps no state of
//! its own and several replicas can serve one bus (issue 14).
//!
//! How the store's model maps onto JetStream:
//!
//! | the store | JetStream |
//! |---|---|
//! | topic `orders.eu` | subject `tether.msg.orders.eu` of one stream (`TETHER`, subjects `tether.msg.>`, file storage, `--replicas N`) |
//! | sequence | the stream sequence: it increases within a topic, but numbers the whole stream (the embedded store numbers each topic from 1) |
//! | idempotency key | `Nats-Msg-Id` = `TOPIC:KEY` (a key is scoped to its topic as in the embedded store), deduplicated within the stream's duplicate window: 2 minutes, or `max_age` if shorter (the embedded store remembers a key as long as its message is kept) |
//! | retention | the stream's limits: `max_age`, and `max_bytes` for the whole stream, oldest dropped first (JetStream 2.9 has no per-subject byte limit; the embedded store limits each topic) |
//! | consumer `instance:I:P` or `group:G:P` | a durable pull consumer filtered on `P`'s subject, explicit ack, ack wait = the ack deadline, deliver all; a queue group's holders share its one durable |
//! | claim | a no-wait fetch of up to `max` minus what the holder holds; `next_wake_ms` tells the caller to claim again within [`POLL`], since a publish through another replica wakes no one here |
//! | delivery id | the message's ack subject (`$JS.ACK.<stream>.<consumer>.<delivered>.<seq>...`): any replica can ack, nack or release it |
//! | ack | `+ACK`, confirmed by the server before the answer |
//! | nack with a delay | `-NAK {"delay": ns}`, confirmed; the next delivery is counted |
//! | release | `-NAK` at once, confirmed; the next delivery is not counted (see below) |
//! | max deliver, dead letter | the consumer's `max_deliver` is unlimited: the claim that meets a message delivered `max_deliver` times already publishes it to `tether.msg.dlq.<topic>` with the reason headers (`Nats-Msg-Id` `dlq:<consumer>:<seq>`, so a retry after a crash is deduplicated), then `+TERM`s it. JetStream's own limit would stop delivering without giving us the message to move |
//! | registry and sessions | a key-value bucket (`TETHER_REGISTRY`, history 1): `instance.<hex>` holds the registration, `session.<hex>` the instance |
//! | sweep | nothing: the server applies the limits |
//!
//! What a replica keeps in memory, and what follows when the delivery is handled by another one:
//! the deliveries it handed out (by consumer and sequence, with the holder and the deadline: a
//! holder's in-flight limit, a Release of all of a holder's deliveries, and `ack`'s count of
//! deliveries that were still pending), the releases of a delivery (so that the next delivery
//! is not counted) and whether its last delivery was nacked (the dead letter's reason). An ack
//! or nack of a delivery another replica handed out is sent to the server all the same and
//! counted as pending; a release there only counts once more toward `max_deliver`.
//!
//! User headers are kept as given, but a name starting with `Nats-` (which JetStream would obey)
//! is stored as `Tether-Raw-Nats-...` and given back as it was.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, kv, stream};
use prost::Message as _;
use tokio_stream::StreamExt as _;

use crate::store::{
    Claimed, ConsumerConfig, DEAD_LETTER_CONSUMER, DEAD_LETTER_REASON, DEAD_LETTER_SEQUENCE,
    DEAD_LETTER_TOPIC, Delivered, InstanceRecord, NewMessage, Published, Registration, Result,
    Retention, Store, StoreError,
};
use crate::topic;

/// How soon a claim that found nothing should be tried again.
pub const POLL: Duration = Duration::from_millis(100);
/// How long a fetch may wait for the server's next answer.
const FETCH_WAIT: Duration = Duration::from_secs(5);
/// How long creating the stream and the bucket may take at start-up, and each request.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
const SETUP_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// JetStream's default duplicate window, used unless `max_age` is shorter.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How many acked or dead-lettered deliveries a replica remembers, to answer a second ack.
const REMEMBER_DONE: usize = 100_000;
/// The prefix a user header starting with `Nats-` is stored under.
const RAW_HEADER: &str = "Tether-Raw-";

/// How to reach NATS and what to make there.
#[derive(Clone, Debug)]
pub struct NatsOptions {
    /// Server URLs: `nats://h1:4222`, `tls://h2:4222`.
    pub urls: Vec<String>,
    /// A `.creds` file (a user JWT and its NKey seed), as `nats` and `nsc` write them.
    pub creds: Option<PathBuf>,
    /// A user and password.
    pub user: Option<(String, String)>,
    /// A CA file (PEM) to check the servers' certificates with; TLS is then required.
    pub ca: Option<PathBuf>,
    /// How many copies of the stream and the bucket the cluster keeps.
    pub replicas: usize,
    pub retention: Retention,
    /// The stream's name.
    pub stream: String,
    /// The subjects' prefix: topic `T` is subject `PREFIX.T`.
    pub prefix: String,
    /// The registry's key-value bucket.
    pub bucket: String,
}

impl NatsOptions {
    pub fn new(urls: Vec<String>) -> Self {
        Self {
            urls,
            creds: None,
            user: None,
            ca: None,
            replicas: 1,
            retention: Retention::default(),
            stream: "TETHER".into(),
            prefix: "tether.msg".into(),
            bucket: "TETHER_REGISTRY".into(),
        }
    }

    /// The servers, as an error message names them.
    pub fn servers(&self) -> String {
        self.urls.join(",")
    }
}

/// A durable consumer this replica opened.
struct Opened {
    name: String,
    durable: String,
    config: ConsumerConfig,
    handle: consumer::Consumer<consumer::pull::Config>,
}

/// A delivery this replica handed out.
struct Held {
    holder: String,
    id: String,
    deadline_ms: u64,
}

/// (durable, stream sequence): one message of one consumer.
type Key = (String, u64);

#[derive(Default)]
struct Local {
    held: HashMap<Key, Held>,
    done: HashSet<Key>,
    done_order: VecDeque<Key>,
    released: HashMap<Key, u32>,
    nacked: HashSet<Key>,
}

impl Local {
    fn finish(&mut self, key: Key) {
        self.held.remove(&key);
        self.released.remove(&key);
        self.nacked.remove(&key);
        if self.done.insert(key.clone()) {
            self.done_order.push_back(key);
            while self.done_order.len() > REMEMBER_DONE {
                if let Some(old) = self.done_order.pop_front() {
                    self.done.remove(&old);
                }
            }
        }
    }
}

/// The store on NATS JetStream. Cheap to clone.
#[derive(Clone)]
pub struct NatsStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: stream::Stream,
    registry: kv::Store,
    prefix: String,
    consumers: tokio::sync::Mutex<HashMap<String, Arc<Opened>>>,
    local: Mutex<Local>,
}

fn nats_err(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("NATS: {what}: {e}"))
}

/// Creates the stream, or updates it to `config`, asking again while no answer comes (for
/// [`SETUP_TIMEOUT`]). Placing a replicated stream takes seconds on a fresh cluster, more under
/// load; and a nats-server 2.9 cluster leaves unanswered both of two identical creates that
/// arrive together (two Bus API replicas starting at once, seen in
/// crates/cli/tests/bus_nats_cluster.rs): the stream is made all the same, and the next request
/// finds it.
async fn ensure_stream(
    js: &jetstream::Context,
    config: stream::Config,
) -> std::result::Result<(), jetstream::context::CreateStreamError> {
    let mut setup = js.clone();
    setup.set_timeout(SETUP_REQUEST_TIMEOUT);
    let deadline = std::time::Instant::now() + SETUP_TIMEOUT;
    loop {
        match setup.create_or_update_stream(config.clone()).await {
            Ok(_) => return Ok(()),
            Err(e)
                if e.kind() == jetstream::context::CreateStreamErrorKind::TimedOut
                    && std::time::Instant::now() < deadline =>
            {
                tracing::info!(
                    "NATS did not answer the creation of the stream `{}` within {}s; asking again",
                    config.name,
                    SETUP_REQUEST_TIMEOUT.as_secs()
                );
            }
            Err(e) => return Err(e),
        }
    }
}

impl NatsStore {
    /// Connects, then creates or updates the stream and the registry bucket. A server that
    /// cannot be reached, a refused credential or a JetStream that is off is an error naming
    /// the servers.
    pub async fn connect(options: &NatsOptions) -> Result<Self> {
        let servers = options.servers();
        let failed = |what: String| StoreError(format!("NATS at {servers}: {what}"));
        if options.urls.is_empty() {
            return Err(StoreError("no NATS server named".into()));
        }
        let mut connect = async_nats::ConnectOptions::new()
            .name("tether bus")
            .connection_timeout(Duration::from_secs(5))
            .event_callback(|event| async move {
                tracing::info!("NATS: {event}");
            });
        if let Some(creds) = &options.creds {
            connect = connect.credentials_file(creds).await.map_err(|e| {
                StoreError(format!(
                    "cannot use the NATS credentials file {}: {e}",
                    creds.display()
                ))
            })?;
        }
        if let Some((user, password)) = &options.user {
            connect = connect.user_and_password(user.clone(), password.clone());
        }
        if let Some(ca) = &options.ca {
            std::fs::metadata(ca).map_err(|e| {
                StoreError(format!(
                    "cannot read the NATS CA file {}: {e}",
                    ca.display()
                ))
            })?;
            connect = connect.add_root_certificates(ca.clone()).require_tls(true);
        }
        let client = connect
            .connect(options.urls.as_slice())
            .await
            .map_err(|e| failed(format!("cannot connect: {e}")))?;
        let js = jetstream::new(client.clone());
        let retention = options.retention;
        let stream_config = stream::Config {
            name: options.stream.clone(),
            subjects: vec![format!("{}.>", options.prefix)],
            max_age: retention.max_age,
            max_bytes: i64::try_from(retention.max_bytes).unwrap_or(i64::MAX),
            num_replicas: options.replicas,
            duplicate_window: DUPLICATE_WINDOW.min(retention.max_age),
            storage: stream::StorageType::File,
            discard: stream::DiscardPolicy::Old,
            retention: stream::RetentionPolicy::Limits,
            ..Default::default()
        };
        ensure_stream(&js, stream_config).await.map_err(|e| {
            failed(format!(
                "cannot create the stream `{}`: {e}",
                options.stream
            ))
        })?;
        let stream = js
            .get_stream(&options.stream)
            .await
            .map_err(|e| failed(format!("cannot open the stream `{}`: {e}", options.stream)))?;
        // The bucket's stream made as the client library would, without its account query,
        // whose answer a 2.9 server words differently.
        ensure_stream(
            &js,
            stream::Config {
                name: format!("KV_{}", options.bucket),
                description: Some("tether bus: registered instances and their sessions".into()),
                subjects: vec![format!("$KV.{}.>", options.bucket)],
                max_messages_per_subject: 1,
                max_message_size: -1,
                storage: stream::StorageType::File,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                num_replicas: options.replicas,
                discard: stream::DiscardPolicy::New,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| {
            failed(format!(
                "cannot create the key-value bucket `{}`: {e}",
                options.bucket
            ))
        })?;
        let registry = js.get_key_value(&options.bucket).await.map_err(|e| {
            failed(format!(
                "cannot open the key-value bucket `{}`: {e}",
                options.bucket
            ))
        })?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                js,
                stream,
                registry,
                prefix: options.prefix.clone(),
                consumers: tokio::sync::Mutex::new(HashMap::new()),
                local: Mutex::new(Local::default()),
            }),
        })
    }

    /// Whether the connection to NATS is up, for readiness.
    pub fn problem(&self) -> Option<String> {
        match self.inner.client.connection_state() {
            async_nats::connection::State::Connected => None,
            state => Some(format!("NATS: the connection is {state}")),
        }
    }

    fn local(&self) -> std::sync::MutexGuard<'_, Local> {
        self.inner
            .local
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn subject(&self, topic: &str) -> String {
        format!("{}.{topic}", self.inner.prefix)
    }

    fn topic_of<'a>(&self, subject: &'a str) -> &'a str {
        subject
            .strip_prefix(self.inner.prefix.as_str())
            .and_then(|s| s.strip_prefix('.'))
            .unwrap_or(subject)
    }

    /// Sends an ack kind to a delivery's ack subject and waits for the server's confirmation.
    async fn confirm(&self, id: &str, body: String) -> Result<()> {
        self.inner
            .client
            .request(id.to_owned(), body.into())
            .await
            .map(|_| ())
            .map_err(|e| nats_err("the server did not confirm an ack", e))
    }

    async fn opened(&self, consumer: &str) -> Result<Arc<Opened>> {
        self.inner
            .consumers
            .lock()
            .await
            .get(consumer)
            .cloned()
            .ok_or_else(|| StoreError(format!("no consumer `{consumer}`")))
    }

    async fn publish_raw(
        &self,
        subject: String,
        headers: HeaderMap,
        data: Vec<u8>,
    ) -> Result<Published> {
        let ack = self
            .inner
            .js
            .publish_with_headers(subject, headers, data.into())
            .await
            .map_err(|e| nats_err("cannot publish", e))?
            .await
            .map_err(|e| nats_err("the publish was not acknowledged", e))?;
        Ok(Published {
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }
}

/// A consumer's durable name: its name's letters, digits, `-` and `_` (others as `_`, at most
/// 48), then a hash of the whole name, since JetStream names allow no `.`, `*`, `>` or `:`.
pub fn durable_name(name: &str) -> String {
    let readable: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(48)
        .collect();
    // FNV-1a, 64 bits: stable across builds and machines.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{readable}_{hash:016x}")
}

/// The consumer and stream sequence an ack subject names:
/// `$JS.ACK.<stream>.<consumer>.<delivered>.<seq>.<cseq>.<ts>.<pending>`, or the v2 form with
/// a domain and an account hash after `ACK`.
pub fn parse_delivery_id(id: &str) -> Option<(String, u64)> {
    let t: Vec<&str> = id.split('.').collect();
    if t.len() < 9 || t[0] != "$JS" || t[1] != "ACK" {
        return None;
    }
    let (consumer, seq) = if t.len() == 9 {
        (t[3], t[5])
    } else {
        (t[5], t[7])
    };
    Some((consumer.to_owned(), seq.parse().ok()?))
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn headers_to_nats(headers: &BTreeMap<String, String>) -> Result<HeaderMap> {
    let mut out = HeaderMap::new();
    for (k, v) in headers {
        let name = if k.to_ascii_lowercase().starts_with("nats-") {
            format!("{RAW_HEADER}{k}")
        } else {
            k.clone()
        };
        let name = async_nats::HeaderName::from_str(&name)
            .map_err(|e| StoreError(format!("header `{k}` cannot be sent to NATS: {e}")))?;
        let value = async_nats::HeaderValue::from_str(v).map_err(|e| {
            StoreError(format!(
                "the value of header `{k}` cannot be sent to NATS: {e}"
            ))
        })?;
        out.insert(name, value);
    }
    Ok(out)
}

fn headers_from_nats(headers: Option<&HeaderMap>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(headers) = headers else {
        return out;
    };
    for (name, values) in headers.iter() {
        let name: &str = name.as_ref();
        if name.to_ascii_lowercase().starts_with("nats-") {
            continue;
        }
        let name = name.strip_prefix(RAW_HEADER).unwrap_or(name);
        if let Some(v) = values.first() {
            out.insert(name.to_owned(), v.as_str().to_owned());
        }
    }
    out
}

fn instance_key(instance: &str) -> String {
    format!("instance.{}", hex(instance))
}

fn session_key(session: &str) -> String {
    format!("session.{}", hex(session))
}

impl Store for NatsStore {
    async fn register(&self, reg: Registration) -> Result<()> {
        let kv = &self.inner.registry;
        let key = instance_key(&reg.instance);
        if let Some(old) = kv.get(&key).await.map_err(|e| nats_err("registry", e))? {
            let old: InstanceRecord = crate::store::decode(&old)?;
            if old.session != reg.session {
                kv.delete(session_key(&old.session))
                    .await
                    .map_err(|e| nats_err("registry", e))?;
            }
        }
        let record = InstanceRecord {
            pool_type: reg.pool_type.clone(),
            image: reg.image.clone(),
            tags: reg.tags.clone(),
            granted: reg.granted.iter().map(crate::store::grant_record).collect(),
            session: reg.session.clone(),
        };
        kv.put(&key, record.encode_to_vec().into())
            .await
            .map_err(|e| nats_err("registry", e))?;
        kv.put(
            session_key(&reg.session),
            reg.instance.clone().into_bytes().into(),
        )
        .await
        .map_err(|e| nats_err("registry", e))?;
        Ok(())
    }

    async fn deregister(&self, instance: String) -> Result<bool> {
        let kv = &self.inner.registry;
        let key = instance_key(&instance);
        let Some(old) = kv.get(&key).await.map_err(|e| nats_err("registry", e))? else {
            return Ok(false);
        };
        let old: InstanceRecord = crate::store::decode(&old)?;
        kv.delete(session_key(&old.session))
            .await
            .map_err(|e| nats_err("registry", e))?;
        kv.delete(&key).await.map_err(|e| nats_err("registry", e))?;
        Ok(true)
    }

    async fn session(&self, session: String) -> Result<Option<Registration>> {
        let kv = &self.inner.registry;
        let Some(instance) = kv
            .get(session_key(&session))
            .await
            .map_err(|e| nats_err("registry", e))?
        else {
            return Ok(None);
        };
        let instance = String::from_utf8_lossy(&instance).into_owned();
        let Some(record) = kv
            .get(instance_key(&instance))
            .await
            .map_err(|e| nats_err("registry", e))?
        else {
            return Ok(None);
        };
        let r: InstanceRecord = crate::store::decode(&record)?;
        // A session key left behind by a Register that raced another is not the instance's.
        if r.session != session {
            return Ok(None);
        }
        Ok(Some(Registration {
            instance,
            pool_type: r.pool_type,
            image: r.image,
            tags: r.tags,
            granted: r.granted.iter().map(crate::store::grant_of).collect(),
            session: r.session,
        }))
    }

    async fn publish(&self, msg: NewMessage, _now_ms: u64) -> Result<Published> {
        let mut headers = headers_to_nats(&msg.headers)?;
        if !msg.idempotency_key.is_empty() {
            headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                format!("{}:{}", msg.topic, msg.idempotency_key).as_str(),
            );
        }
        self.publish_raw(self.subject(&msg.topic), headers, msg.data)
            .await
    }

    async fn open_consumer(&self, name: String, config: ConsumerConfig) -> Result<()> {
        let durable = durable_name(&name);
        let mut consumers = self.inner.consumers.lock().await;
        if consumers.get(&name).is_some_and(|o| o.config == config) {
            return Ok(());
        }
        let handle = self
            .inner
            .stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(durable.clone()),
                description: Some(format!(
                    "tether bus consumer `{name}`, max_deliver {}",
                    config.max_deliver
                )),
                filter_subject: self.subject(&config.pattern),
                deliver_policy: consumer::DeliverPolicy::All,
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: config.ack_deadline,
                // Dead letters are ours: see the module doc.
                max_deliver: -1,
                max_ack_pending: 100_000,
                ..Default::default()
            })
            .await
            .map_err(|e| nats_err(&format!("cannot create the consumer `{name}`"), e))?;
        consumers.insert(
            name.clone(),
            Arc::new(Opened {
                name,
                durable,
                config,
                handle,
            }),
        );
        Ok(())
    }

    async fn claim(
        &self,
        consumer: String,
        holder: String,
        now_ms: u64,
        max: usize,
    ) -> Result<Claimed> {
        let opened = self.opened(&consumer).await?;
        let poll_at = now_ms + POLL.as_millis() as u64;
        let (held, earliest) = {
            let local = self.local();
            let mine = local.held.iter().filter(|((d, _), h)| {
                *d == opened.durable && h.holder == holder && h.deadline_ms > now_ms
            });
            mine.fold((0usize, None::<u64>), |(n, e), (_, h)| {
                (
                    n + 1,
                    Some(e.map_or(h.deadline_ms, |e| e.min(h.deadline_ms))),
                )
            })
        };
        let mut out = Claimed {
            next_wake_ms: Some(earliest.map_or(poll_at, |e| e.min(poll_at))),
            ..Claimed::default()
        };
        let room = max.saturating_sub(held);
        if room == 0 {
            return Ok(out);
        }
        // A pull request that reaches no consumer leader (its node cut off the network) is never
        // answered, and a no-wait fetch has no expiry of its own: without a bound the claim, and
        // with it the subscription, stopped without an error (crates/cli/tests/bus_nats_cluster.rs).
        // What such a request may still bring is delivered again after the ack deadline.
        let fetched = tokio::time::timeout(
            FETCH_WAIT,
            opened.handle.fetch().max_messages(room).messages(),
        )
        .await
        .map_err(|_| {
            StoreError(format!(
                "NATS: no answer to a fetch within {}s",
                FETCH_WAIT.as_secs()
            ))
        })?;
        let mut batch = fetched.map_err(|e| nats_err("cannot fetch", e))?;
        let deadline_ms = now_ms + opened.config.ack_deadline.as_millis() as u64;
        while let Ok(Some(m)) = tokio::time::timeout(FETCH_WAIT, batch.next()).await {
            let m = m.map_err(|e| nats_err("cannot fetch", e))?;
            let Some(reply) = m.reply.as_ref().map(|r| r.to_string()) else {
                continue;
            };
            let (seq, delivered) = {
                let info = m.info().map_err(|e| nats_err("a delivery", e))?;
                (info.stream_sequence, info.delivered.max(1) as u32)
            };
            let key: Key = (opened.durable.clone(), seq);
            let (released, nacked) = {
                let local = self.local();
                (
                    local.released.get(&key).copied().unwrap_or(0),
                    local.nacked.contains(&key),
                )
            };
            let counted = (delivered - 1).saturating_sub(released);
            let topic = self.topic_of(m.subject.as_str()).to_owned();
            let headers = headers_from_nats(m.headers.as_ref());
            if counted >= opened.config.max_deliver {
                self.dead_letter(
                    &opened,
                    &topic,
                    seq,
                    headers,
                    m.payload.to_vec(),
                    counted,
                    nacked,
                )
                .await?;
                self.confirm(&reply, "+TERM".into()).await?;
                self.local().finish(key);
                out.dead_lettered += 1;
                continue;
            }
            {
                let mut local = self.local();
                local.nacked.remove(&key);
                local.held.insert(
                    key,
                    Held {
                        holder: holder.clone(),
                        id: reply.clone(),
                        deadline_ms,
                    },
                );
            }
            out.deliveries.push(Delivered {
                id: reply,
                topic,
                data: m.payload.to_vec(),
                headers,
                sequence: seq,
                redelivered: counted,
            });
        }
        if !out.deliveries.is_empty() {
            out.next_wake_ms = out.next_wake_ms.map(|w| w.min(deadline_ms));
        }
        Ok(out)
    }

    async fn ack(&self, ids: Vec<String>) -> Result<u32> {
        let mut send = Vec::new();
        {
            let local = self.local();
            for id in ids {
                let Some(key) = parse_delivery_id(&id) else {
                    continue;
                };
                if local.done.contains(&key) {
                    continue;
                }
                send.push((key, id));
            }
        }
        let acked = send.len() as u32;
        let mut tasks = tokio::task::JoinSet::new();
        for (key, id) in send {
            let this = self.clone();
            tasks.spawn(async move {
                this.confirm(&id, "+ACK".into()).await?;
                // Done once the server confirmed: an ack that failed (a node lost, a leader
                // being elected) and is sent again must reach the server, not be skipped.
                this.local().finish(key);
                Ok::<(), StoreError>(())
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.map_err(|e| StoreError(format!("an ack task failed: {e}")))??;
        }
        Ok(acked)
    }

    async fn nack(&self, id: String, available_at_ms: u64) -> Result<bool> {
        let Some(key) = parse_delivery_id(&id) else {
            return Ok(false);
        };
        {
            let mut local = self.local();
            if local.done.contains(&key) {
                return Ok(false);
            }
            local.held.remove(&key);
            local.nacked.insert(key);
        }
        let delay = available_at_ms.saturating_sub(crate::server::now_ms());
        let body = if delay == 0 {
            "-NAK".to_owned()
        } else {
            format!("-NAK {{\"delay\":{}}}", u128::from(delay) * 1_000_000)
        };
        self.confirm(&id, body).await?;
        Ok(true)
    }

    async fn release(&self, holder: String, ids: Vec<String>) -> Result<u32> {
        let send: Vec<String> = {
            let mut local = self.local();
            let keys: Vec<Key> = if ids.is_empty() {
                local
                    .held
                    .iter()
                    .filter(|(_, h)| h.holder == holder)
                    .map(|(k, _)| k.clone())
                    .collect()
            } else {
                ids.iter()
                    .filter_map(|id| parse_delivery_id(id))
                    .filter(|k| local.held.get(k).is_some_and(|h| h.holder == holder))
                    .collect()
            };
            keys.into_iter()
                .filter_map(|k| {
                    let held = local.held.remove(&k)?;
                    *local.released.entry(k).or_default() += 1;
                    Some(held.id)
                })
                .collect()
        };
        let released = send.len() as u32;
        for id in send {
            self.confirm(&id, "-NAK".into()).await?;
        }
        Ok(released)
    }

    async fn sweep(&self, _now_ms: u64) -> Result<u64> {
        // The server applies the stream's limits.
        Ok(0)
    }

    async fn flush(&self) -> Result<()> {
        self.inner
            .client
            .flush()
            .await
            .map_err(|e| nats_err("cannot flush", e))
    }
}

impl NatsStore {
    /// Publishes a message that was delivered `deliveries` times to its dead-letter topic.
    #[allow(clippy::too_many_arguments)]
    async fn dead_letter(
        &self,
        opened: &Opened,
        topic: &str,
        seq: u64,
        mut headers: BTreeMap<String, String>,
        data: Vec<u8>,
        deliveries: u32,
        nacked: bool,
    ) -> Result<()> {
        let reason = crate::store::dead_letter_reason(
            deliveries,
            opened.config.max_deliver,
            nacked,
            opened.config.ack_deadline.as_millis() as u64,
        );
        headers.insert(DEAD_LETTER_REASON.into(), reason);
        headers.insert(DEAD_LETTER_TOPIC.into(), topic.to_owned());
        headers.insert(DEAD_LETTER_SEQUENCE.into(), seq.to_string());
        headers.insert(DEAD_LETTER_CONSUMER.into(), opened.name.clone());
        let mut nats_headers = headers_to_nats(&headers)?;
        nats_headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("dlq:{}:{seq}", opened.durable).as_str(),
        );
        self.publish_raw(
            self.subject(&topic::dead_letter_topic(topic)),
            nats_headers,
            data,
        )
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durable_names_are_valid_and_distinct() {
        let a = durable_name("instance:sub-1:orders.*");
        assert!(a.starts_with("instance_sub-1_orders___"), "{a}");
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        );
        assert_ne!(a, durable_name("instance:sub-1:orders.>"));
        assert_eq!(a, durable_name("instance:sub-1:orders.*"));
    }

    #[test]
    fn delivery_ids_are_ack_subjects() {
        assert_eq!(
            parse_delivery_id("$JS.ACK.TETHER.c_1.3.42.7.1700000000000000000.0"),
            Some(("c_1".into(), 42))
        );
        assert_eq!(
            parse_delivery_id("$JS.ACK.dom.acc.TETHER.c_1.3.42.7.1700000000000000000.0.x"),
            Some(("c_1".into(), 42))
        );
        assert_eq!(parse_delivery_id("1 orders.eu instance:i:orders.*"), None);
    }

    #[test]
    fn nats_headers_are_kept_apart() {
        let h = BTreeMap::from([
            ("Nats-Msg-Id".to_owned(), "mine".to_owned()),
            ("k".to_owned(), "v".to_owned()),
        ]);
        let n = headers_to_nats(&h).unwrap();
        assert!(n.get(async_nats::header::NATS_MESSAGE_ID).is_none());
        assert_eq!(headers_from_nats(Some(&n)), h);
    }
}
