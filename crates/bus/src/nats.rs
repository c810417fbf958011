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
//! | claim | a no-wait fetch of up to `max` minus what the holder holds, after arming the wake-up below; `next_wake_ms` is the earliest ack deadline of this replica's deliveries, end of a nack's delay or [`NatsOptions::poll`] ([`POLL`], 5 s: a safety net) |
//! | delivery id | the message's ack subject (`$JS.ACK.<stream>.<consumer>.<delivered>.<seq>...`), a space, and the consumer's name: any replica can ack, nack or release it. An id is accepted only when its stream is this bus's and the name gives the ack subject's durable ([`durable_name`]): never another stream's or account's ack subject; the Bus API checks the consumer is the caller's ([`Store::delivery_consumer`]) |
//! | ack | `+ACK`, confirmed by the server before the answer; the delivery counts as done here only once confirmed, so an ack that failed is sent again when repeated |
//! | nack with a delay | `-NAK {"delay": ns}`, confirmed; the next delivery is counted |
//! | release | `-NAK` at once, confirmed; the next delivery is not counted (see below). A nack or a release that the server did not confirm is undone here |
//! | errors | while the connection is not up, or when a request timed out, found no responders or got a 503, the error is transient: the Bus API answers `UNAVAILABLE`, and the sidecar moves to another replica or keeps its publish in the outbox |
//! | max deliver, dead letter | the consumer's `max_deliver` is unlimited: the claim that meets a message delivered `max_deliver` times already publishes it to `tether.msg.dlq.<topic>` with the reason headers (`Nats-Msg-Id` `dlq:<consumer>:<seq>`, so a retry after a crash is deduplicated), then `+TERM`s it. JetStream's own limit would stop delivering without giving us the message to move |
//! | registry and sessions | a key-value bucket (`TETHER_REGISTRY`, history 1): `instance.<hex>` holds the registration, `session.<hex>` the instance |
//! | sweep | nothing: the server applies the limits |
//!
//! Several replicas serve one bus: a sidecar uses one and moves to another when it fails
//! (`crate::sidecar` `link`). The session is in the bucket, so any replica knows it, and the
//! delivery id is the ack subject, so a delivery handed out by one replica is acked, nacked or
//! released through any other: `+ACK` and `-NAK` go to the server, which ignores one for a
//! message that is not pending any more (a `-NAK` through the id of an older delivery of a
//! message delivered again since gives the newer delivery back: a duplicate of work nobody
//! acked). No answered
//! publish is lost (it is in the stream), no ack is lost (the sidecar repeats it on the next
//! replica; a repeated `+ACK` is answered), and what was delivered and never acked comes again
//! after its ack deadline at the latest.
//!
//! What a replica keeps in memory, and what follows when another replica handles the delivery
//! (each harmless: a count, a delay or a word, never a lost or doubled acked message):
//! - the deliveries it handed out (by consumer and sequence, with the holder and the deadline):
//!   - a holder's in-flight limit counts only this replica's: after a move, a holder may hold up
//!     to twice `max_in_flight` until the first replica's deliveries are acked or their ack
//!     deadline passes;
//!   - a Release without ids (the session's "everything I hold", and Deregister's) gives back
//!     only what this replica handed out; what a failed replica handed out and nobody acked
//!     comes again after its ack deadline, counted once toward `max_deliver`. So the sidecar
//!     names the deliveries it holds (a Release with ids works on any replica: an id this
//!     replica holds for another holder is refused, one it does not hold is sent to the server);
//!   - `ack`'s count is of deliveries it did not see acked: an ack repeated through another
//!     replica is counted again (`tether_bus_acks_total`; the Bus API answers it all the same);
//! - the releases of a delivery, so that the next delivery is not counted: a release through
//!   one replica and the next delivery through another counts once toward `max_deliver`;
//! - whether its last delivery was nacked, for the dead letter's reason: a nack through one
//!   replica and the dead letter through another gives the ack deadline as the reason;
//! - the acked ones (the last 100,000), to answer a second ack or nack without the server: a nack
//!   of a delivery acked through another replica is answered as if it were pending (the server
//!   ignores it) instead of `NOT_FOUND`.
//!
//! Wake-up across replicas: a publish through another replica (or by anything writing to the
//! stream) must wake this replica's waiting subscriptions. Before each claim's fetch the store
//! arms a core-NATS subscription on `PREFIX.>` that the server ends after one message
//! (`UNSUB sid 1`); the message bumps the Bus API's wake-up ([`Store::wake_with`]), every idle
//! subscription claims, and the claim that finds nothing arms it again. Core subscribers see a
//! JetStream publish as any other, and the SUB goes out before the fetch on the one connection
//! (a claim that finds another arming waits until its SUB is queued), so nothing published
//! after the fetch is missed. The cost is one message per idle period per
//! replica (not every message to every replica, as an always-on subscription would cost: the
//! payload included, since core NATS cannot leave it out), and nothing at all while idle:
//! before, each subscription polled NATS every 100 ms. The core subscriber may hear of a message
//! before the stream has stored it, so a claim that found nothing within [`SETTLE`] of the
//! wake-up tries again shortly (10 ms, then doubling), whatever its pattern: the one-message
//! subscription hears only the first publish of a burst. An ack deadline or a nack's delay
//! (of this replica's deliveries) ends with no publish, and NATS's timer may fire a little after
//! ours: a claim asks to be made at that time, then, until a claim gets the message back,
//! 10 ms later, doubling, at most a second apart, for [`LATE`] (5 s). What no publish
//! announces is left to the poll ([`POLL`], 5 s, and the Bus API claims at least that often
//! anyway): a delivery handed out by another replica whose ack deadline passed, a nack or a
//! release through another replica, what was published while this replica was disconnected
//! (it also bumps the wake-up when it connects again). One of them matters after a failure:
//! a sidecar that moves here subscribes again, and what the failed replica had fetched for it
//! comes back within one ack deadline; so for one ack deadline after a Subscribe, its consumer
//! claims every [`FRESH_POLL`] (100 ms) when idle.
//! Not chosen: a pull with `expires` (JetStream's own long poll) hands the message to whoever
//! waits, so the waiting pull would have to be the claim itself, holding a request open at the
//! server per subscription per replica and not returning for an ack, a release or a shutdown;
//! a headers-only ordered consumer per replica costs a server-side consumer and each message's
//! headers on every replica.
//!
//! User headers are kept as given, but a name starting with `Nats-` (which JetStream would obey)
//! is stored as `Tether-Raw-Nats-...` and given back as it was.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, kv, stream};
use prost::Message as _;
use tokio::sync::watch;
use tokio_stream::StreamExt as _;

use crate::store::{
    Claimed, ConsumerConfig, DEAD_LETTER_CONSUMER, DEAD_LETTER_REASON, DEAD_LETTER_SEQUENCE,
    DEAD_LETTER_TOPIC, Delivered, InstanceRecord, NewMessage, Published, Registration, Result,
    Retention, Store, StoreError,
};
use crate::topic;

/// How soon a claim that found nothing is tried again when nothing woke the bus before: a
/// safety net (see the module doc), [`NatsOptions::poll`]'s default.
pub const POLL: Duration = Duration::from_secs(5);
/// How long after a wake-up through NATS a claim of a matching consumer that found nothing
/// tries again (soon, then later): the core subscription may see a publish before the stream
/// has stored it.
const SETTLE: Duration = Duration::from_millis(200);
/// How often a consumer subscribed here less than one ack deadline ago claims when idle: what a
/// failed replica handed out comes back from the server within that time, announced by no
/// publish.
const FRESH_POLL: Duration = Duration::from_millis(100);
/// How long after an ack deadline or the end of a nack's delay a claim that did not get the
/// message back keeps asking to be made again soon (then [`POLL`] is the safety net).
const LATE: Duration = Duration::from_secs(5);
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
    /// Where the user and password came from, as an error names them: `NATS_USER,
    /// NATS_PASSWORD` (the default), or the `_FILE` variables.
    pub user_from: String,
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
    /// How soon a claim that found nothing asks to be made again if nothing wakes the bus
    /// first: [`POLL`]. A publish anywhere wakes it through NATS; this is the safety net.
    pub poll: Duration,
}

impl NatsOptions {
    pub fn new(urls: Vec<String>) -> Self {
        Self {
            urls,
            creds: None,
            user: None,
            user_from: "NATS_USER, NATS_PASSWORD".into(),
            ca: None,
            replicas: 1,
            retention: Retention::default(),
            stream: "TETHER".into(),
            prefix: "tether.msg".into(),
            bucket: "TETHER_REGISTRY".into(),
            poll: POLL,
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
    /// Its ack subject.
    subject: String,
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
    /// Deliveries nacked here with a delay: when each is deliverable again.
    due: HashMap<Key, u64>,
    /// Durables subscribed here lately: until when they claim every [`FRESH_POLL`].
    fresh: HashMap<String, u64>,
}

impl Local {
    fn finish(&mut self, key: Key) {
        self.held.remove(&key);
        self.released.remove(&key);
        self.nacked.remove(&key);
        self.due.remove(&key);
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

/// What a nack or a release changed about one delivery, to put back when the server did not
/// confirm it.
struct Undo {
    held: Option<Held>,
    released: Option<u32>,
    nacked: bool,
    due: Option<u64>,
}

impl Undo {
    /// Takes the delivery out of `held`, remembering it and the rest.
    fn take(local: &mut Local, key: &Key) -> Self {
        Self {
            held: local.held.remove(key),
            released: local.released.get(key).copied(),
            nacked: local.nacked.contains(key),
            due: local.due.get(key).copied(),
        }
    }

    /// Puts back what was, unless something newer (an ack, another claim) changed it since.
    fn restore(self, local: &mut Local, key: Key) {
        if local.done.contains(&key) || local.held.contains_key(&key) {
            return;
        }
        match self.released {
            Some(n) => local.released.insert(key.clone(), n),
            None => local.released.remove(&key),
        };
        if !self.nacked {
            local.nacked.remove(&key);
        }
        match self.due {
            Some(at) => local.due.insert(key.clone(), at),
            None => local.due.remove(&key),
        };
        if let Some(h) = self.held {
            local.held.insert(key, h);
        }
    }
}

/// A delivery id of this store, taken apart ([`NatsStore::delivery`]).
struct DeliveryId<'a> {
    /// The ack subject.
    subject: &'a str,
    /// The consumer's name.
    consumer: &'a str,
    key: Key,
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
    stream_name: String,
    registry: kv::Store,
    prefix: String,
    consumers: tokio::sync::Mutex<HashMap<String, Arc<Opened>>>,
    local: Mutex<Local>,
    poll: Duration,
    /// The bus's wake-up, once it is given ([`Store::wake_with`]).
    wake: Arc<OnceLock<Arc<watch::Sender<u64>>>>,
    /// Whether a one-message subscription on the stream's subjects is waiting ([`NatsStore::arm`]).
    armed: Arc<AtomicBool>,
    /// Held while a claim arms: a concurrent claim waits until the SUB is queued before its
    /// own fetch.
    arming: tokio::sync::Mutex<()>,
    /// The topic of the last publish that woke the bus through NATS, and when.
    woken_by: Arc<Mutex<Option<(String, u64)>>>,
    /// Dropped with the store: ends the task of an armed subscription.
    gone: watch::Sender<()>,
    /// Publishes of batches waiting for their acks ([`BATCH_WINDOW`]).
    batch_window: Arc<tokio::sync::Semaphore>,
}

/// The most publishes of batches awaiting the stream's ack at once. async-nats lets 5,000
/// acks be awaited per connection and makes a publish wait for a free one: batches that each
/// held some while waiting for more could wait on each other for ever. A batch takes its share
/// of this window at once, before it sends anything, and this is well under 5,000, so single
/// publishes (which never hold one while waiting) always find some.
const BATCH_WINDOW: usize = 4096;
/// The most publishes of one batch sent before their acks are awaited.
const BATCH_CHUNK: usize = 1024;
const _: () = assert!(
    BATCH_CHUNK <= BATCH_WINDOW,
    "a chunk takes its window at once"
);

/// Bumps the bus's wake-up, if it was given.
fn bump(wake: &OnceLock<Arc<watch::Sender<u64>>>) {
    if let Some(w) = wake.get() {
        w.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// How long a start tries again to reach a NATS server that cannot be reached yet.
const CONNECT_PATIENCE: Duration = Duration::from_secs(15);

/// The client's options: name, timeout, the wake-up on reconnect, and the credentials and CA
/// `options` name.
async fn connect_options(
    options: &NatsOptions,
    woken: Arc<OnceLock<Arc<watch::Sender<u64>>>>,
) -> Result<async_nats::ConnectOptions> {
    let mut connect = async_nats::ConnectOptions::new()
        .name("tether bus")
        .connection_timeout(Duration::from_secs(5))
        .event_callback(move |event| {
            // Back after a disconnection: what was published meanwhile woke no one.
            if matches!(event, async_nats::Event::Connected) {
                bump(&woken);
            }
            async move {
                tracing::info!("NATS: {event}");
            }
        });
    if let Some(creds) = &options.creds {
        connect = connect.credentials_file(creds).await.map_err(|e| {
            StoreError::new(format!(
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
            StoreError::new(format!(
                "cannot read the NATS CA file {}: {e}",
                ca.display()
            ))
        })?;
        connect = connect.add_root_certificates(ca.clone()).require_tls(true);
    }
    Ok(connect)
}

/// Whether a failed connection may pass by itself: the server could not be reached, reset the
/// connection or did not answer in time, or its name did not resolve yet; not a refused
/// credential, a failed TLS handshake or a malformed address.
fn may_pass(e: &async_nats::ConnectError) -> bool {
    use async_nats::ConnectErrorKind as Kind;
    match e.kind() {
        Kind::Io => !tls_handshake_failed(e),
        Kind::TimedOut | Kind::Dns => true,
        _ => false,
    }
}

/// Whether the connection failed in its TLS handshake: that comes as an I/O error of kind
/// InvalidData holding rustls's error.
fn tls_handshake_failed(e: &async_nats::ConnectError) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .is_some_and(|io| io.kind() == std::io::ErrorKind::InvalidData && io.get_ref().is_some())
}

/// What a failed connection says: a refused credential and a failed TLS handshake in words
/// that name the flag to look at (a password is never part of it: the client library does not
/// repeat it).
fn connect_problem(e: &async_nats::ConnectError, options: &NatsOptions) -> String {
    use async_nats::ConnectErrorKind as Kind;
    let source =
        std::error::Error::source(e).map_or_else(|| e.kind().to_string(), |s| s.to_string());
    let handshake = tls_handshake_failed(e);
    match e.kind() {
        Kind::AuthorizationViolation => match (&options.creds, &options.user) {
            (Some(creds), _) => format!(
                "the server refused the credentials file {} ({source})",
                creds.display()
            ),
            (None, Some((user, _))) => format!(
                "the server refused the user `{user}` and its password ({}) ({source})",
                options.user_from
            ),
            (None, None) => format!(
                "the server refused a connection without a credential ({source}): give --nats-creds, or NATS_USER and NATS_PASSWORD"
            ),
        },
        Kind::Tls | Kind::Io if e.kind() == Kind::Tls || handshake => match &options.ca {
            Some(ca) => format!("TLS failed with the CA file {}: {source}", ca.display()),
            None => format!(
                "TLS failed: {source} (--nats-ca names the CA that signed the servers' certificates)"
            ),
        },
        _ => format!("cannot connect: {e}"),
    }
}

/// Whether a NATS error says the server could not be reached or did not answer in time (a
/// request timed out, nobody answers the subject, the connection broke, JetStream answered 503),
/// rather than refusing the call: by the names of the client library's error kinds, anywhere in
/// the error's chain as `Debug` shows it.
fn transient_error(e: &impl std::fmt::Debug) -> bool {
    let text = format!("{e:?}");
    [
        "TimedOut",
        "NoResponders",
        "BrokenPipe",
        "Disconnected",
        "ConnectionClosed",
        // No stream answers the subject: a stream whose leader is being elected after the loss
        // of a node (seen in crates/cli/tests/bus_nats_cluster.rs).
        "StreamNotFound",
        "code: 503",
    ]
    .iter()
    .any(|k| text.contains(k))
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
        let failed = |what: String| StoreError::new(format!("NATS at {servers}: {what}"));
        if options.urls.is_empty() {
            return Err(StoreError::new("no NATS server named"));
        }
        let wake: Arc<OnceLock<Arc<watch::Sender<u64>>>> = Arc::default();
        // A server that cannot be reached yet (starting beside the bus, as under Compose or in
        // a Pod; or resetting a connection under load) is tried again for CONNECT_PATIENCE; a
        // refused credential or a failed TLS handshake stops the start at once.
        let deadline = tokio::time::Instant::now() + CONNECT_PATIENCE;
        let mut pause = Duration::from_millis(200);
        let client = loop {
            let connect = connect_options(options, wake.clone()).await?;
            match connect.connect(options.urls.as_slice()).await {
                Ok(client) => break client,
                Err(e) if may_pass(&e) && tokio::time::Instant::now() + pause < deadline => {
                    tracing::info!(
                        "NATS at {servers}: {}; trying again in {pause:?}",
                        connect_problem(&e, options)
                    );
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(failed(connect_problem(&e, options))),
            }
        };
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
                stream_name: options.stream.clone(),
                registry,
                prefix: options.prefix.clone(),
                consumers: tokio::sync::Mutex::new(HashMap::new()),
                local: Mutex::new(Local::default()),
                poll: options.poll,
                wake,
                armed: Arc::default(),
                arming: tokio::sync::Mutex::new(()),
                woken_by: Arc::default(),
                gone: watch::channel(()).0,
                batch_window: Arc::new(tokio::sync::Semaphore::new(BATCH_WINDOW)),
            }),
        })
    }

    /// When a claim that found nothing should try again because a publish woke the bus through
    /// NATS less than [`SETTLE`] ago: the message may not have been stored when the claim
    /// looked. Any consumer, not only those matching the publish that woke the bus: the
    /// one-message subscription hears only the first publish of a burst. Sooner at first, then
    /// less often.
    fn settling(&self, now_ms: u64) -> Option<u64> {
        let woken_by = self
            .inner
            .woken_by
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (_, at) = woken_by.as_ref()?;
        let since = now_ms.saturating_sub(*at);
        (since < SETTLE.as_millis() as u64).then(|| now_ms + since.max(10))
    }

    /// Makes sure a publish to the stream's subjects from now on wakes the bus: unless one is
    /// waiting already, subscribes (core NATS) to `PREFIX.>` for one message, which bumps the
    /// wake-up and disarms. Called by a claim before its fetch: the client sends the SUB before
    /// the fetch's request on the one connection, and the server handles them in that order, so
    /// a message the fetch does not see is seen by the subscription.
    async fn arm(&self) {
        let inner = &self.inner;
        let _one = inner.arming.lock().await;
        // Not while the connection is down: the SUB would wait for it with the lock held, and
        // the claim's fetch fails anyway.
        if inner.armed.load(Ordering::SeqCst) || self.problem().is_some() {
            return;
        }
        let subscribed = tokio::time::timeout(FETCH_WAIT, async {
            let mut sub = inner
                .client
                .subscribe(format!("{}.>", inner.prefix))
                .await?;
            // The server stops after one: a burst costs each idle replica one message, not all.
            let _ = sub.unsubscribe_after(1).await;
            Ok::<_, async_nats::SubscribeError>(sub)
        })
        .await;
        let mut sub = match subscribed {
            Ok(Ok(sub)) => sub,
            // The poll is the safety net; the next claim tries again.
            Ok(Err(e)) => {
                tracing::warn!("NATS: cannot subscribe to wake up on publishes: {e}");
                return;
            }
            Err(_) => {
                tracing::warn!(
                    "NATS: cannot subscribe to wake up on publishes: no room to send the SUB within {}s",
                    FETCH_WAIT.as_secs()
                );
                return;
            }
        };
        // Armed once the SUB is queued, before the task that disarms starts.
        inner.armed.store(true, Ordering::SeqCst);
        let (armed, wake, woken_by, mut gone) = (
            inner.armed.clone(),
            inner.wake.clone(),
            inner.woken_by.clone(),
            inner.gone.subscribe(),
        );
        let prefix = format!("{}.", inner.prefix);
        tokio::spawn(async move {
            let message = tokio::select! {
                m = sub.next() => m,
                _ = gone.changed() => return,
            };
            if let Some(topic) = message
                .as_ref()
                .and_then(|m| m.subject.as_str().strip_prefix(&prefix))
            {
                *woken_by
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some((topic.to_owned(), crate::server::now_ms()));
            }
            // Disarmed before the bump: the claim the bump causes arms again.
            armed.store(false, Ordering::SeqCst);
            bump(&wake);
        });
    }

    /// Whether the connection to NATS is up, for readiness.
    pub fn problem(&self) -> Option<String> {
        match self.inner.client.connection_state() {
            async_nats::connection::State::Connected => None,
            state => Some(format!("NATS: the connection is {state}")),
        }
    }

    /// A delivery id this store handed out, taken apart; `None` for anything else.
    fn delivery<'a>(&self, id: &'a str) -> Option<DeliveryId<'a>> {
        parse_delivery_id(id, &self.inner.stream_name)
    }

    /// A NATS failure as the store's error: transient (the Bus API answers `UNAVAILABLE`, and the
    /// sidecar moves to another replica or keeps its publish in the outbox) while the connection
    /// is not up or when the error says the server did not answer ([`transient_error`]).
    fn fail(&self, what: &str, e: impl std::fmt::Display + std::fmt::Debug) -> StoreError {
        let message = format!("NATS: {what}: {e}");
        if self.problem().is_some() || transient_error(&e) {
            StoreError::unavailable(message)
        } else {
            StoreError::new(message)
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
            .map_err(|e| self.fail("the server did not confirm an ack", e))
    }

    async fn opened(&self, consumer: &str) -> Result<Arc<Opened>> {
        self.inner
            .consumers
            .lock()
            .await
            .get(consumer)
            .cloned()
            .ok_or_else(|| StoreError::new(format!("no consumer `{consumer}`")))
    }

    async fn publish_raw(
        &self,
        subject: String,
        headers: HeaderMap,
        data: Vec<u8>,
    ) -> Result<Published> {
        let sent = self.send(subject, headers, data).await?;
        self.acknowledged(sent).await
    }

    /// Hands a publish to the connection (in order with every other on it) without waiting
    /// for the stream's acknowledgement.
    async fn send(
        &self,
        subject: String,
        headers: HeaderMap,
        data: Vec<u8>,
    ) -> Result<jetstream::context::PublishAckFuture> {
        self.inner
            .js
            .publish_with_headers(subject, headers, data.into())
            .await
            .map_err(|e| {
                if e.kind() == jetstream::context::PublishErrorKind::MaxPayloadExceeded {
                    StoreError::invalid(format!(
                        "NATS: cannot publish: the message is over the server's max_payload of {} bytes",
                        self.inner.client.server_info().max_payload
                    ))
                } else {
                    self.fail("cannot publish", e)
                }
            })
    }

    /// Waits for the stream's acknowledgement of a publish [`Self::send`] handed over.
    async fn acknowledged(&self, sent: jetstream::context::PublishAckFuture) -> Result<Published> {
        let ack = sent
            .await
            .map_err(|e| self.fail("the publish was not acknowledged", e))?;
        Ok(Published {
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }

    /// A message's subject and headers: the topic's subject, and its idempotency key as the
    /// stream's message id, scoped to the topic.
    fn outgoing(&self, msg: &NewMessage) -> Result<(String, HeaderMap)> {
        let mut headers = headers_to_nats(&msg.headers)?;
        if !msg.idempotency_key.is_empty() {
            headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                format!("{}:{}", msg.topic, msg.idempotency_key).as_str(),
            );
        }
        Ok((self.subject(&msg.topic), headers))
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

/// The stream, the durable consumer and the stream sequence an ack subject names:
/// `$JS.ACK.<stream>.<consumer>.<delivered>.<seq>.<cseq>.<ts>.<pending>`, or the v2 form with
/// a domain and an account hash after `ACK`.
fn parse_ack_subject(subject: &str) -> Option<(&str, &str, u64)> {
    let t: Vec<&str> = subject.split('.').collect();
    if t.len() < 9 || t[0] != "$JS" || t[1] != "ACK" {
        return None;
    }
    let (stream, consumer, seq) = if t.len() == 9 {
        (t[2], t[3], t[5])
    } else {
        (t[4], t[5], t[7])
    };
    Some((stream, consumer, seq.parse().ok()?))
}

/// A delivery id: `<ack subject> <consumer name>`, when the ack subject is of `stream` and of
/// the durable consumer that name gives ([`durable_name`]); anything else (another stream's or
/// another account's ack subject, a name that does not match) is not a delivery of this store.
fn parse_delivery_id<'a>(id: &'a str, stream: &str) -> Option<DeliveryId<'a>> {
    let (subject, consumer) = id.split_once(' ')?;
    let (of, durable, seq) = parse_ack_subject(subject)?;
    if of != stream || durable != durable_name(consumer) {
        return None;
    }
    Some(DeliveryId {
        subject,
        consumer,
        key: (durable.to_owned(), seq),
    })
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
        let name = async_nats::HeaderName::from_str(&name).map_err(|e| {
            StoreError::invalid(format!("header `{k}` cannot be sent to NATS: {e}"))
        })?;
        let value = async_nats::HeaderValue::from_str(v).map_err(|e| {
            StoreError::invalid(format!(
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
        if let Some(old) = kv.get(&key).await.map_err(|e| self.fail("registry", e))? {
            let old: InstanceRecord = crate::store::decode(&old)?;
            if old.session != reg.session {
                kv.delete(session_key(&old.session))
                    .await
                    .map_err(|e| self.fail("registry", e))?;
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
            .map_err(|e| self.fail("registry", e))?;
        kv.put(
            session_key(&reg.session),
            reg.instance.clone().into_bytes().into(),
        )
        .await
        .map_err(|e| self.fail("registry", e))?;
        Ok(())
    }

    async fn deregister(&self, instance: String) -> Result<bool> {
        let kv = &self.inner.registry;
        let key = instance_key(&instance);
        let Some(old) = kv.get(&key).await.map_err(|e| self.fail("registry", e))? else {
            return Ok(false);
        };
        let old: InstanceRecord = crate::store::decode(&old)?;
        kv.delete(session_key(&old.session))
            .await
            .map_err(|e| self.fail("registry", e))?;
        kv.delete(&key)
            .await
            .map_err(|e| self.fail("registry", e))?;
        Ok(true)
    }

    async fn registered_pool(&self, instance: String) -> Result<Option<String>> {
        let Some(record) = self
            .inner
            .registry
            .get(instance_key(&instance))
            .await
            .map_err(|e| self.fail("registry", e))?
        else {
            return Ok(None);
        };
        let r: InstanceRecord = crate::store::decode(&record)?;
        Ok(Some(r.pool_type))
    }

    async fn session(&self, session: String) -> Result<Option<Registration>> {
        let kv = &self.inner.registry;
        let Some(instance) = kv
            .get(session_key(&session))
            .await
            .map_err(|e| self.fail("registry", e))?
        else {
            return Ok(None);
        };
        let instance = String::from_utf8_lossy(&instance).into_owned();
        let Some(record) = kv
            .get(instance_key(&instance))
            .await
            .map_err(|e| self.fail("registry", e))?
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
        let (subject, headers) = self.outgoing(&msg)?;
        self.publish_raw(subject, headers, msg.data).await
    }

    /// Pipelined: up to [`BATCH_CHUNK`] messages are handed to the connection, in order, before
    /// their acks are awaited, so a batch costs about one round trip to the stream. After a
    /// publish that failed for any reason but its own (an invalid one is the caller's to drop)
    /// nothing more is sent, in its chunk or the next: a later message of its topic must not
    /// be stored before it is sent again. The rest are answered with its error. A message JetStream did not acknowledge may still be followed by later ones that
    /// it stored, as with any pipelined JetStream publisher (a stream leader elected between
    /// the two); sent again with its key, it is stored after them.
    async fn publish_batch(&self, msgs: Vec<NewMessage>, _now_ms: u64) -> Vec<Result<Published>> {
        let mut published = Vec::with_capacity(msgs.len());
        let mut stopped: Option<StoreError> = None;
        let mut msgs = msgs.into_iter().peekable();
        while msgs.peek().is_some() {
            let chunk: Vec<NewMessage> = msgs.by_ref().take(BATCH_CHUNK).collect();
            // The window is never closed: `acquire_many` cannot fail.
            let _window = self
                .inner
                .batch_window
                .acquire_many(chunk.len() as u32)
                .await
                .ok();
            let mut sent = Vec::with_capacity(chunk.len());
            for msg in chunk {
                if let Some(e) = &stopped {
                    sent.push(Err(e.clone()));
                    continue;
                }
                let one = match self.outgoing(&msg) {
                    Ok((subject, headers)) => self.send(subject, headers, msg.data).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = &one
                    && !e.invalid
                {
                    stopped = Some(e.clone());
                }
                sent.push(one);
            }
            for one in sent {
                let answer = match one {
                    Ok(ack) => self.acknowledged(ack).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = &answer
                    && !e.invalid
                {
                    stopped.get_or_insert_with(|| e.clone());
                }
                published.push(answer);
            }
        }
        published
    }

    async fn open_consumer(&self, name: String, config: ConsumerConfig) -> Result<()> {
        let durable = durable_name(&name);
        let until = crate::server::now_ms() + config.ack_deadline.as_millis() as u64;
        self.local().fresh.insert(durable.clone(), until);
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
            .map_err(|e| self.fail(&format!("cannot create the consumer `{name}`"), e))?;
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
        let (poll_at, held, earliest) = {
            let mut local = self.local();
            // A reminder stays until a claim gets its message back (or LATE after its time):
            // NATS's own timer may fire a little after ours.
            let late = LATE.as_millis() as u64;
            local.due.retain(|_, at| *at + late > now_ms);
            local.held.retain(|_, h| h.deadline_ms + late > now_ms);
            local.fresh.retain(|_, until| *until > now_ms);
            let poll = if local.fresh.contains_key(&opened.durable) {
                FRESH_POLL.min(self.inner.poll)
            } else {
                self.inner.poll
            };
            let held = local
                .held
                .iter()
                .filter(|((d, _), h)| {
                    *d == opened.durable && h.holder == holder && h.deadline_ms > now_ms
                })
                .count();
            // An ack deadline and a nack's delay end with no publish to wake anyone; once
            // passed, claim again soon until the message comes back: 10 ms after, then
            // doubling, at most a second apart.
            let soon = |at: u64| {
                if at > now_ms {
                    at
                } else {
                    now_ms + (now_ms - at).clamp(10, 1_000)
                }
            };
            let deadlines = local
                .held
                .iter()
                .filter(|((d, _), _)| *d == opened.durable)
                .map(|(_, h)| h.deadline_ms);
            let due = local
                .due
                .iter()
                .filter(|((d, _), _)| *d == opened.durable)
                .map(|(_, at)| *at);
            (
                now_ms + poll.as_millis() as u64,
                held,
                deadlines.chain(due).map(soon).min(),
            )
        };
        let mut out = Claimed {
            next_wake_ms: Some(earliest.map_or(poll_at, |e| e.min(poll_at))),
            ..Claimed::default()
        };
        let room = max.saturating_sub(held);
        if room == 0 {
            return Ok(out);
        }
        self.arm().await;
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
            StoreError::unavailable(format!(
                "NATS: no answer to a fetch within {}s",
                FETCH_WAIT.as_secs()
            ))
        })?;
        let mut batch = fetched.map_err(|e| self.fail("cannot fetch", e))?;
        let deadline_ms = now_ms + opened.config.ack_deadline.as_millis() as u64;
        // `messages()` returns once the request is queued: the server's silence shows here. What
        // it sends after the wait goes to a dropped inbox and comes again after the ack deadline.
        let mut received = 0;
        loop {
            let m = match tokio::time::timeout(FETCH_WAIT, batch.next()).await {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(_) if received == 0 => {
                    let message = format!(
                        "NATS: no answer to a fetch from `{}` within {}s",
                        opened.name,
                        FETCH_WAIT.as_secs()
                    );
                    tracing::warn!("{message}");
                    return Err(StoreError::unavailable(message));
                }
                Err(_) => {
                    tracing::warn!(
                        "NATS: a fetch from `{}` stopped answering after {received} messages \
                         within {}s; taking those",
                        opened.name,
                        FETCH_WAIT.as_secs()
                    );
                    break;
                }
            };
            received += 1;
            let m = m.map_err(|e| self.fail("cannot fetch", e))?;
            let Some(reply) = m.reply.as_ref().map(|r| r.to_string()) else {
                continue;
            };
            let (seq, delivered) = {
                let info = m.info().map_err(|e| self.fail("a delivery", e))?;
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
                local.due.remove(&key);
                local.held.insert(
                    key,
                    Held {
                        holder: holder.clone(),
                        subject: reply.clone(),
                        deadline_ms,
                    },
                );
            }
            out.deliveries.push(Delivered {
                id: format!("{reply} {}", opened.name),
                topic,
                data: m.payload.to_vec(),
                headers,
                sequence: seq,
                redelivered: counted,
            });
        }
        if !out.deliveries.is_empty() {
            out.next_wake_ms = out.next_wake_ms.map(|w| w.min(deadline_ms));
        } else if let Some(again) = self.settling(now_ms) {
            out.next_wake_ms = out.next_wake_ms.map(|w| w.min(again));
        }
        Ok(out)
    }

    async fn ack(&self, ids: Vec<String>) -> Result<u32> {
        let mut send: Vec<(Key, String)> = Vec::new();
        {
            let local = self.local();
            for id in &ids {
                let Some(d) = self.delivery(id) else {
                    continue;
                };
                if local.done.contains(&d.key) || send.iter().any(|(k, _)| *k == d.key) {
                    continue;
                }
                send.push((d.key, d.subject.to_owned()));
            }
        }
        // Done only once the server confirmed: an ack that failed is sent again when repeated.
        let mut tasks = tokio::task::JoinSet::new();
        for (key, subject) in send {
            let this = self.clone();
            tasks.spawn(async move { (key, this.confirm(&subject, "+ACK".into()).await) });
        }
        let (mut acked, mut failed) = (0, None);
        while let Some(r) = tasks.join_next().await {
            match r {
                Ok((key, Ok(()))) => {
                    self.local().finish(key);
                    acked += 1;
                }
                Ok((_, Err(e))) => {
                    failed.get_or_insert(e);
                }
                Err(e) => {
                    failed.get_or_insert(StoreError::new(format!("an ack task failed: {e}")));
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(acked),
        }
    }

    async fn nack(&self, id: String, available_at_ms: u64) -> Result<bool> {
        let Some(d) = self.delivery(&id) else {
            return Ok(false);
        };
        let delay = available_at_ms.saturating_sub(crate::server::now_ms());
        // Noted before the server is told (a claim may meet the next delivery at once), and
        // undone if it did not confirm.
        let before = {
            let mut local = self.local();
            if local.done.contains(&d.key) {
                return Ok(false);
            }
            let before = Undo::take(&mut local, &d.key);
            local.nacked.insert(d.key.clone());
            if delay > 0 {
                local.due.insert(d.key.clone(), available_at_ms);
            }
            before
        };
        let body = if delay == 0 {
            "-NAK".to_owned()
        } else {
            format!("-NAK {{\"delay\":{}}}", u128::from(delay) * 1_000_000)
        };
        if let Err(e) = self.confirm(d.subject, body).await {
            before.restore(&mut self.local(), d.key);
            return Err(e);
        }
        Ok(true)
    }

    async fn release(&self, holder: String, ids: Vec<String>) -> Result<u32> {
        let send: Vec<(Key, String, Undo)> = {
            let mut local = self.local();
            let keys: Vec<(Key, String)> = if ids.is_empty() {
                local
                    .held
                    .iter()
                    .filter(|(_, h)| h.holder == holder)
                    .map(|(k, h)| (k.clone(), h.subject.clone()))
                    .collect()
            } else {
                ids.iter()
                    .filter_map(|id| {
                        let d = self.delivery(id)?;
                        let mine = match local.held.get(&d.key) {
                            Some(h) => h.holder == holder,
                            // Handed out by another replica (or by this one before it
                            // restarted): the server knows whether it is still pending.
                            None => !local.done.contains(&d.key) && !local.nacked.contains(&d.key),
                        };
                        mine.then(|| (d.key, d.subject.to_owned()))
                    })
                    .collect()
            };
            // Counted as released before the server is told (the next delivery may be claimed
            // at once), and undone for each the server did not confirm.
            keys.into_iter()
                .map(|(k, subject)| {
                    let before = Undo::take(&mut local, &k);
                    *local.released.entry(k.clone()).or_default() += 1;
                    (k, subject, before)
                })
                .collect()
        };
        let mut released = 0;
        let mut send = send.into_iter();
        while let Some((key, subject, before)) = send.next() {
            if let Err(e) = self.confirm(&subject, "-NAK".into()).await {
                let mut local = self.local();
                before.restore(&mut local, key);
                for (key, _, before) in send {
                    before.restore(&mut local, key);
                }
                return Err(e);
            }
            released += 1;
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
            .map_err(|e| self.fail("cannot flush", e))
    }

    fn wake_with(&self, wake: Arc<watch::Sender<u64>>) {
        let _ = self.inner.wake.set(wake);
    }

    fn delivery_consumer(&self, id: &str) -> Option<String> {
        self.delivery(id).map(|d| d.consumer.to_owned())
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
    fn delivery_ids_are_ack_subjects_and_consumer_names() {
        let c = durable_name("instance:i:t.*");
        let of = |id: &str| {
            parse_delivery_id(id, "TETHER")
                .map(|d| (d.subject.to_owned(), d.consumer.to_owned(), d.key))
        };
        let v1 = format!("$JS.ACK.TETHER.{c}.3.42.7.1700000000000000000.0");
        assert_eq!(
            of(&format!("{v1} instance:i:t.*")),
            Some((v1.clone(), "instance:i:t.*".into(), (c.clone(), 42)))
        );
        let v2 = format!("$JS.ACK.dom.acc.TETHER.{c}.3.42.7.1700000000000000000.0.x");
        assert_eq!(
            of(&format!("{v2} instance:i:t.*")),
            Some((v2, "instance:i:t.*".into(), (c.clone(), 42)))
        );
        // Another stream, a name that is not the durable's, no name, the embedded store's form.
        let other = format!("$JS.ACK.OTHER.{c}.3.42.7.1700000000000000000.0 instance:i:t.*");
        assert!(of(&other).is_none());
        assert!(of(&format!("{v1} instance:j:t.*")).is_none());
        assert!(of(&v1).is_none());
        assert!(of("1 orders.eu instance:i:orders.*").is_none());
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
