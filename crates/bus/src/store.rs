//! Where the bus keeps messages, consumers and the registry: the [`Store`] trait, and
//! [`RedbStore`], the embedded implementation on one redb file.
//!
//! The trait is the seam for the NATS JetStream backend, `crate::nats` (feature `nats`), whose
//! module doc maps this model onto JetStream; `tests/store_suite.rs` holds both to one suite.
//!
//! Model:
//! - one append-only log per topic, sequences 1, 2, … per topic;
//! - a durable consumer per (instance, subscription pattern), or per (group, pattern) for a queue
//!   group, with a position per topic and the pending (delivered, unacked) entries, each with the
//!   time it becomes deliverable again and its delivery count;
//! - after `max_deliver` deliveries without an ack a message goes to `dlq.<topic>` with the reason;
//! - retention by age and by size per topic, enforced on every write (and by [`Store::sweep`]).
//!
//! Durability (group commit): one committer thread owns the write transactions. It takes every
//! write waiting, runs them in one redb transaction, commits once, then answers each, so
//! concurrent publishes and acks share one fsync. In [`SyncMode::Always`] (the default) a
//! publish, ack, nack or registration is answered only after the commit that holds it is durable;
//! claims and releases are committed without an fsync of their own (losing one to a crash only
//! means an unacked message is delivered again), and the next durable commit carries them. An
//! ack asks for no fsync of its own either: its answer waits for the next durable commit (the
//! next publish's), at most 2 ms, and only then is one made for it; so a stream of
//! messages costs one fsync per batch of publishes, not one more per batch of acks. In
//! [`SyncMode::Every`] no commit waits for the disk, and a durable commit happens at least that
//! often.
//!
//! In [`SyncMode::Always`] "durable" means the transaction's record in the store's journal is
//! synced ([`journal`]: one append and one `fdatasync`, where a durable redb commit writes
//! pages all over its file); the redb file itself is made durable by a checkpoint every 500 ms (or
//! 64 MiB of journal), and a start replays the journal's records after the last checkpoint.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message as _;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};

use crate::policy::Grant;
use crate::topic;

mod journal;
use journal::Journal;

/// A failure of the store. The bus answers `UNAVAILABLE` for a transient one (the store cannot
/// be reached now: NATS disconnected, a timeout, no responders), so that the sidecar tries
/// another replica or keeps a publish in its outbox, and `INTERNAL` for the rest (disk,
/// corruption, a bug).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError {
    pub message: String,
    pub transient: bool,
    /// The call itself is at fault (a header or payload the store cannot take): the same call
    /// fails again, so it is the caller's to know, not to retry.
    pub invalid: bool,
}

impl StoreError {
    /// A failure that trying again will not cure by itself.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            transient: false,
            invalid: false,
        }
    }

    /// The request itself is refused (a bad header, a payload over the store's limit).
    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            transient: false,
            invalid: true,
        }
    }

    /// The store cannot be reached now; the same call may work later or on another replica.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            transient: true,
            invalid: false,
        }
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "store: {}", self.message)
    }
}

impl std::error::Error for StoreError {}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                Self::new(e.to_string())
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

pub type Result<T> = std::result::Result<T, StoreError>;

/// How long and how much each topic keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    pub max_age: Duration,
    pub max_bytes: u64,
}

impl Default for Retention {
    /// 7 days and 1 GiB per topic.
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: 1 << 30,
        }
    }
}

/// A message to append.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewMessage {
    pub topic: String,
    pub data: Vec<u8>,
    pub headers: BTreeMap<String, String>,
    pub idempotency_key: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Published {
    pub sequence: u64,
    pub duplicate: bool,
}

/// A registered instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    pub instance: String,
    pub pool_type: String,
    pub image: String,
    pub tags: Vec<String>,
    pub granted: Vec<Grant>,
    pub session: String,
}

/// A durable consumer's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerConfig {
    pub pattern: String,
    pub ack_deadline: Duration,
    pub max_deliver: u32,
}

/// One message handed to a subscriber.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivered {
    pub id: String,
    pub topic: String,
    pub data: Vec<u8>,
    pub headers: BTreeMap<String, String>,
    pub sequence: u64,
    pub redelivered: u32,
}

/// What one claim found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Claimed {
    pub deliveries: Vec<Delivered>,
    /// Messages moved to their dead-letter topic by this claim.
    pub dead_lettered: u32,
    /// The earliest time (ms since the epoch) a pending entry of this consumer becomes
    /// deliverable again, if any.
    pub next_wake_ms: Option<u64>,
}

/// The header a dead letter carries its reason in.
pub const DEAD_LETTER_REASON: &str = "tether-dead-letter-reason";
/// The header a dead letter carries its original topic in.
pub const DEAD_LETTER_TOPIC: &str = "tether-dead-letter-topic";
/// The header a dead letter carries its original sequence in.
pub const DEAD_LETTER_SEQUENCE: &str = "tether-dead-letter-sequence";
/// The header a dead letter carries the consumer that gave up on it in.
pub const DEAD_LETTER_CONSUMER: &str = "tether-dead-letter-consumer";

/// The store behind the bus. A method that writes returns once the write is committed, and in
/// [`SyncMode::Always`] once it is durable (claims and releases excepted: see the module doc).
pub trait Store: Send + Sync + 'static {
    fn register(&self, reg: Registration) -> impl Future<Output = Result<()>> + Send;
    fn deregister(&self, instance: String) -> impl Future<Output = Result<bool>> + Send;
    /// The registration a session belongs to.
    fn session(&self, session: String)
    -> impl Future<Output = Result<Option<Registration>>> + Send;
    /// The pool type an instance is registered with now, if it is registered.
    fn registered_pool(
        &self,
        instance: String,
    ) -> impl Future<Output = Result<Option<String>>> + Send;
    fn publish(
        &self,
        msg: NewMessage,
        now_ms: u64,
    ) -> impl Future<Output = Result<Published>> + Send;
    /// Appends several messages in the order given, as if each were published after the one
    /// before it; answers each. The writes share the store's round trips (one commit and
    /// fsync for the lot, or pipelined publishes), which is what makes a batch cheaper than as
    /// many publishes.
    fn publish_batch(
        &self,
        msgs: Vec<NewMessage>,
        now_ms: u64,
    ) -> impl Future<Output = Vec<Result<Published>>> + Send;
    /// Creates the consumer, or updates its settings.
    fn open_consumer(
        &self,
        name: String,
        config: ConsumerConfig,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Takes up to `max` deliverable messages for `holder`: due redeliveries first, then new
    /// messages in per-topic order; holder's unexpired claims count against `max`.
    fn claim(
        &self,
        consumer: String,
        holder: String,
        now_ms: u64,
        max: usize,
    ) -> impl Future<Output = Result<Claimed>> + Send;
    /// Acks deliveries; answers how many were still pending.
    fn ack(&self, ids: Vec<String>) -> impl Future<Output = Result<u32>> + Send;
    /// Makes a delivery deliverable again at `available_at_ms`; false when it is not pending.
    fn nack(&self, id: String, available_at_ms: u64) -> impl Future<Output = Result<bool>> + Send;
    /// Gives back the holder's deliveries (all of them when `ids` is empty), deliverable at once
    /// and not counted as a delivery.
    fn release(&self, holder: String, ids: Vec<String>)
    -> impl Future<Output = Result<u32>> + Send;
    /// Applies retention by age to every topic; answers how many messages were dropped.
    fn sweep(&self, now_ms: u64) -> impl Future<Output = Result<u64>> + Send;
    /// Makes every write answered so far durable (claims and releases, and everything in a
    /// periodic [`SyncMode`]); the bus calls it when it stops.
    fn flush(&self) -> impl Future<Output = Result<()>> + Send;
    /// Takes the bus's wake-up signal, for a store that others write to as well (NATS: a
    /// publish through another replica) to bump when they do; a store that only this process
    /// writes has nothing to add to the bumps of the Bus API's own calls.
    fn wake_with(&self, _wake: Arc<tokio::sync::watch::Sender<u64>>) {}
    /// The consumer a delivery id is of, when it is an id of this store (the Bus API lets a
    /// session ack, nack or release only its own consumers' deliveries); `None` otherwise.
    fn delivery_consumer(&self, id: &str) -> Option<String>;
}

// ------------------------------------------------------------------------------------------------
// redb
// ------------------------------------------------------------------------------------------------

/// The name of the store's file inside the data folder.
pub const FILE_NAME: &str = "bus.redb";

/// The memory redb may keep pages of the file in (its default is 1 GiB). What the bus reads
/// back is mostly what it wrote moments ago, and the B-trees' upper levels: a few MiB serve that.
const CACHE_BYTES: usize = 32 << 20;

const TOPICS: TableDefinition<&str, &[u8]> = TableDefinition::new("topics");
const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
const IDEMPOTENCY: TableDefinition<(&str, &str), u64> = TableDefinition::new("idempotency");
const INSTANCES: TableDefinition<&str, &[u8]> = TableDefinition::new("instances");
const SESSIONS: TableDefinition<&str, &str> = TableDefinition::new("sessions");
const CONSUMERS: TableDefinition<&str, &[u8]> = TableDefinition::new("consumers");
const POSITIONS: TableDefinition<(&str, &str), u64> = TableDefinition::new("positions");
const PENDING: TableDefinition<(&str, &str, u64), &[u8]> = TableDefinition::new("pending");
/// The store's own bookkeeping: [`JOURNAL_APPLIED`].
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The last journal record the durable state holds (see [`journal`]).
const JOURNAL_APPLIED: &str = "journal_applied";

#[derive(Clone, PartialEq, prost::Message)]
struct TopicRecord {
    #[prost(uint64, tag = "1")]
    last_seq: u64,
    #[prost(uint64, tag = "2")]
    bytes: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct MessageRecord {
    #[prost(uint64, tag = "1")]
    time_ms: u64,
    #[prost(btree_map = "string, string", tag = "2")]
    headers: BTreeMap<String, String>,
    #[prost(bytes = "vec", tag = "3")]
    data: Vec<u8>,
    #[prost(string, tag = "4")]
    idempotency_key: String,
}

/// The fields of a [`MessageRecord`] retention looks at: decoding it skips the data and
/// headers instead of copying them.
#[derive(Clone, PartialEq, prost::Message)]
struct MessageHead {
    #[prost(uint64, tag = "1")]
    time_ms: u64,
    #[prost(string, tag = "4")]
    idempotency_key: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct GrantRecord {
    #[prost(string, tag = "1")]
    pub(crate) topic: String,
    #[prost(bool, tag = "2")]
    pub(crate) subscribe: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct InstanceRecord {
    #[prost(string, tag = "1")]
    pub(crate) pool_type: String,
    #[prost(string, tag = "2")]
    pub(crate) image: String,
    #[prost(string, repeated, tag = "3")]
    pub(crate) tags: Vec<String>,
    #[prost(message, repeated, tag = "4")]
    pub(crate) granted: Vec<GrantRecord>,
    #[prost(string, tag = "5")]
    pub(crate) session: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ConsumerRecord {
    #[prost(string, tag = "1")]
    pattern: String,
    #[prost(uint64, tag = "2")]
    ack_deadline_ms: u64,
    #[prost(uint32, tag = "3")]
    max_deliver: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PendingRecord {
    /// When it may be delivered (again); its ack deadline while held.
    #[prost(uint64, tag = "1")]
    available_at_ms: u64,
    #[prost(uint32, tag = "2")]
    deliveries: u32,
    #[prost(string, tag = "3")]
    holder: String,
    /// Why it is deliverable again: "nacked", or empty for a passed ack deadline.
    #[prost(string, tag = "4")]
    last: String,
}

pub(crate) fn decode<M: prost::Message + Default>(bytes: &[u8]) -> Result<M> {
    M::decode(bytes).map_err(|e| StoreError::new(format!("a record does not decode: {e}")))
}

/// A delivery id: `SEQ TOPIC CONSUMER` (topics and consumer names hold no spaces).
fn delivery_id(consumer: &str, topic: &str, seq: u64) -> String {
    format!("{seq} {topic} {consumer}")
}

fn parse_delivery_id(id: &str) -> Option<(&str, &str, u64)> {
    let mut parts = id.splitn(3, ' ');
    let seq = parts.next()?.parse().ok()?;
    let topic = parts.next()?;
    let consumer = parts.next()?;
    Some((consumer, topic, seq))
}

/// When the store makes its commits durable (fsync).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncMode {
    /// Before answering: a publish, ack, nack or registration is answered only once it is on
    /// disk. Concurrent writes share one commit and so one fsync (group commit).
    Always,
    /// Commits are not made durable one by one; a durable sync happens at least this often. A
    /// crash of tether or of the machine loses what was answered since the last sync.
    Every(Duration),
}

/// What the committer did, for metrics and readiness.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Times the commits so far were made durable: each is one fsync (of the journal, or of
    /// the redb file at a checkpoint).
    pub syncs: AtomicU64,
    /// Of them, durable commits of the redb file (see [`journal`]).
    pub checkpoints: AtomicU64,
    /// The committer thread has stopped: nothing can be written.
    pub stopped: AtomicBool,
    /// Why the last commit failed, until one succeeds again.
    pub failing: Mutex<Option<String>>,
}

impl StoreStats {
    /// Why the store cannot take writes now, if it cannot.
    pub fn problem(&self) -> Option<String> {
        if self.stopped.load(Ordering::Relaxed) {
            return Some("the store's committer has stopped".into());
        }
        self.failing
            .lock()
            .ok()?
            .as_ref()
            .map(|e| format!("the store's last commit failed: {e}"))
    }
}

/// The embedded store: one redb file in the data folder.
///
/// Reads run on tokio's blocking threads; every write goes to one committer thread (see
/// [`SyncMode`]), which batches whatever is waiting into one transaction.
#[derive(Clone)]
pub struct RedbStore {
    db: Arc<Database>,
    jobs: std::sync::mpsc::Sender<Job>,
    stats: Arc<StoreStats>,
    sessions: Arc<Mutex<SessionCache>>,
}

/// The registrations sessions were found to belong to, so that a Bus API call does not read
/// the store to learn who calls. This process is the only writer of the file, so its own
/// register and deregister are the only changes: each clears the cache once committed, and
/// bumps `generation`, so that a lookup that read the store before the change does not put
/// what it read back. The committer clears it, in the transaction's thread, before anyone is
/// answered: a Register or Deregister whose caller went away (a timed-out call) clears it too.
#[derive(Default)]
struct SessionCache {
    generation: u64,
    known: std::collections::HashMap<String, Registration>,
}

impl SessionCache {
    /// Forgets every cached session (after a register or deregister, committed or not).
    fn changed(cache: &Mutex<SessionCache>) {
        let mut cache = cache.lock().expect("session cache");
        cache.generation += 1;
        cache.known.clear();
    }
}

impl RedbStore {
    /// Opens (or creates) `DIR/bus.redb`, creating the folder, and starts the committer thread;
    /// it stops, after a last sync, once every clone of the store is dropped.
    pub fn open(dir: &Path, retention: Retention, sync: SyncMode) -> Result<Self> {
        if !dir.exists() {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::new(format!("cannot create {}: {e}", dir.display())))?;
            // Its name must survive a power cut as the store's first writes do.
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::File::open(parent)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| {
                        StoreError::new(format!("cannot sync {}: {e}", parent.display()))
                    })?;
            }
        }
        let committer = Committer::open(dir, retention, sync)?;
        let db = committer.db.clone();
        let stats = committer.stats.clone();
        let (jobs, rx) = std::sync::mpsc::channel();
        let sessions = committer.sessions.clone();
        std::thread::Builder::new()
            .name("bus-committer".into())
            .spawn(move || committer.run(rx))
            .map_err(|e| StoreError::new(format!("cannot start the committer thread: {e}")))?;
        Ok(Self {
            db,
            jobs,
            stats,
            sessions,
        })
    }

    /// Commits, syncs and whether the store can take writes.
    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }

    /// The bytes the store file takes on disk.
    pub fn file_size(dir: &Path) -> u64 {
        std::fs::metadata(dir.join(FILE_NAME)).map_or(0, |m| m.len())
    }
}

/// Appends a message to `topic`'s log inside `txn`, then applies retention to that topic.
fn append(
    txn: &WriteTransaction,
    topic: &str,
    record: &MessageRecord,
    retention: Retention,
    now_ms: u64,
) -> Result<u64> {
    let mut topics = txn.open_table(TOPICS)?;
    let mut meta: TopicRecord = match topics.get(topic)? {
        Some(v) => decode(v.value())?,
        None => TopicRecord::default(),
    };
    let bytes = record.encode_to_vec();
    meta.last_seq += 1;
    meta.bytes += bytes.len() as u64;
    let seq = meta.last_seq;
    {
        let mut messages = txn.open_table(MESSAGES)?;
        messages.insert((topic, seq), bytes.as_slice())?;
    }
    if !record.idempotency_key.is_empty() {
        let mut idem = txn.open_table(IDEMPOTENCY)?;
        idem.insert((topic, record.idempotency_key.as_str()), seq)?;
    }
    enforce(txn, topic, &mut meta, retention, now_ms)?;
    topics.insert(topic, meta.encode_to_vec().as_slice())?;
    Ok(seq)
}

/// Drops `topic`'s oldest messages while it is over its size or they are over their age; the
/// newest message is always kept. Answers how many were dropped.
fn enforce(
    txn: &WriteTransaction,
    topic: &str,
    meta: &mut TopicRecord,
    retention: Retention,
    now_ms: u64,
) -> Result<u64> {
    let oldest_allowed = now_ms.saturating_sub(retention.max_age.as_millis() as u64);
    let mut messages = txn.open_table(MESSAGES)?;
    let mut idem = txn.open_table(IDEMPOTENCY)?;
    let mut dropped = 0;
    loop {
        let first = {
            let mut range = messages.range((topic, 0u64)..=(topic, u64::MAX))?;
            match range.next() {
                Some(entry) => {
                    let (k, v) = entry?;
                    let seq = k.value().1;
                    Some((
                        seq,
                        v.value().len() as u64,
                        decode::<MessageHead>(v.value())?,
                    ))
                }
                None => None,
            }
        };
        let Some((seq, len, record)) = first else {
            break;
        };
        let over_size = meta.bytes > retention.max_bytes;
        let too_old = record.time_ms < oldest_allowed;
        if seq == meta.last_seq || !(over_size || too_old) {
            break;
        }
        messages.remove((topic, seq))?;
        if !record.idempotency_key.is_empty() {
            idem.remove((topic, record.idempotency_key.as_str()))?;
        }
        meta.bytes = meta.bytes.saturating_sub(len);
        dropped += 1;
    }
    Ok(dropped)
}

pub(crate) fn grant_record(g: &Grant) -> GrantRecord {
    GrantRecord {
        topic: g.topic.clone(),
        subscribe: g.action == crate::policy::Action::Subscribe,
    }
}

pub(crate) fn grant_of(r: &GrantRecord) -> Grant {
    Grant {
        topic: r.topic.clone(),
        action: if r.subscribe {
            crate::policy::Action::Subscribe
        } else {
            crate::policy::Action::Publish
        },
    }
}

/// Why a message went to its dead-letter topic, the same words on every backend.
pub(crate) fn dead_letter_reason(
    deliveries: u32,
    max_deliver: u32,
    nacked: bool,
    ack_deadline_ms: u64,
) -> String {
    let last = if nacked {
        "the last delivery was nacked".to_owned()
    } else {
        format!("the last delivery was not acked within its ack deadline of {ack_deadline_ms} ms")
    };
    format!("delivered {deliveries} times (max_deliver {max_deliver}) without an ack; {last}")
}

/// What the committer knows of one consumer's pending entries without reading them, so that a
/// claim reads them only when one may be due: kept up to date by every write that changes
/// them, dropped (the next claim reads them all again) when in doubt.
#[derive(Clone, Debug, Default)]
struct Summary {
    /// No pending entry becomes deliverable before this (ms since the epoch); a lower bound.
    earliest: u64,
    /// Pending entries per holder (released and nacked ones have none).
    held: std::collections::HashMap<String, usize>,
}

impl Summary {
    fn hold(&mut self, holder: &str, available_at_ms: u64) {
        self.earliest = self.earliest.min(available_at_ms);
        if !holder.is_empty() {
            *self.held.entry(holder.to_owned()).or_default() += 1;
        }
    }

    /// An entry of `holder` left (acked) or was given back; false when the summary did not
    /// count it (then it is no longer to be trusted).
    fn unhold(&mut self, holder: &str) -> bool {
        if holder.is_empty() {
            return true;
        }
        match self.held.get_mut(holder) {
            Some(n) if *n > 1 => {
                *n -= 1;
                true
            }
            Some(_) => {
                self.held.remove(holder);
                true
            }
            None => false,
        }
    }
}

/// The committer's [`Summary`] of each consumer it has claimed for.
type Summaries = std::collections::HashMap<String, Summary>;

/// Claims inside `txn`; answers what was claimed and whether anything was written.
///
/// The pending entries are read only when `summary` is missing or says one may be due; the
/// summary is then made afresh, and kept up to date otherwise.
fn claim_in(
    txn: &WriteTransaction,
    retention: Retention,
    summaries: &mut Summaries,
    consumer: &str,
    holder: &str,
    now_ms: u64,
    max: usize,
) -> Result<(Claimed, bool)> {
    let mut out = Claimed::default();
    let config: ConsumerRecord = {
        let consumers = txn.open_table(CONSUMERS)?;
        let Some(v) = consumers.get(consumer)? else {
            return Err(StoreError::new(format!("no consumer `{consumer}`")));
        };
        decode(v.value())?
    };
    let deadline = now_ms + config.ack_deadline_ms;
    // Due redeliveries first, and the holder's claims still running.
    let mut held = 0usize;
    let mut due: Vec<(String, u64, PendingRecord)> = Vec::new();
    let mut summary = match summaries.remove(consumer) {
        Some(known) if now_ms < known.earliest => {
            held = known.held.get(holder).copied().unwrap_or(0);
            if known.earliest != u64::MAX {
                out.next_wake_ms = Some(known.earliest);
            }
            known
        }
        _ => {
            let mut fresh = Summary {
                earliest: u64::MAX,
                held: std::collections::HashMap::new(),
            };
            let pending = txn.open_table(PENDING)?;
            for entry in pending.range((consumer, "", 0u64)..)? {
                let (k, v) = entry?;
                let (c, t, seq) = k.value();
                if c != consumer {
                    break;
                }
                let p: PendingRecord = decode(v.value())?;
                if p.available_at_ms <= now_ms {
                    due.push((t.to_owned(), seq, p));
                } else {
                    if p.holder == holder {
                        held += 1;
                    }
                    fresh.hold(&p.holder, p.available_at_ms);
                    out.next_wake_ms = Some(
                        out.next_wake_ms
                            .map_or(p.available_at_ms, |w| w.min(p.available_at_ms)),
                    );
                }
            }
            fresh
        }
    };
    let mut room = max.saturating_sub(held);
    let mut dead: Vec<(String, u64, MessageRecord, String)> = Vec::new();
    {
        let mut pending = txn.open_table(PENDING)?;
        let messages = txn.open_table(MESSAGES)?;
        for (t, seq, mut p) in due {
            let Some(record) = messages.get((t.as_str(), seq))? else {
                // Retention dropped it.
                pending.remove((consumer, t.as_str(), seq))?;
                continue;
            };
            let record: MessageRecord = decode(record.value())?;
            if p.deliveries >= config.max_deliver {
                pending.remove((consumer, t.as_str(), seq))?;
                let reason = dead_letter_reason(
                    p.deliveries,
                    config.max_deliver,
                    p.last == "nacked",
                    config.ack_deadline_ms,
                );
                dead.push((t, seq, record, reason));
                continue;
            }
            if room == 0 {
                out.next_wake_ms = Some(now_ms);
                summary.hold(&p.holder, p.available_at_ms);
                continue;
            }
            room -= 1;
            summary.hold(holder, deadline);
            let redelivered = p.deliveries;
            p.deliveries += 1;
            p.available_at_ms = deadline;
            p.holder = holder.to_owned();
            p.last.clear();
            pending.insert((consumer, t.as_str(), seq), p.encode_to_vec().as_slice())?;
            out.deliveries.push(Delivered {
                id: delivery_id(consumer, &t, seq),
                topic: t,
                data: record.data,
                headers: record.headers,
                sequence: seq,
                redelivered,
            });
        }
    }
    for (t, seq, mut record, reason) in dead {
        record.headers.insert(DEAD_LETTER_REASON.into(), reason);
        record.headers.insert(DEAD_LETTER_TOPIC.into(), t.clone());
        record
            .headers
            .insert(DEAD_LETTER_SEQUENCE.into(), seq.to_string());
        record
            .headers
            .insert(DEAD_LETTER_CONSUMER.into(), consumer.to_owned());
        record.idempotency_key.clear();
        record.time_ms = now_ms;
        append(
            txn,
            &topic::dead_letter_topic(&t),
            &record,
            retention,
            now_ms,
        )?;
        out.dead_lettered += 1;
    }
    // Then new messages, topic by topic, in order.
    if room > 0 {
        let names: Vec<String> = {
            let topics = txn.open_table(TOPICS)?;
            let mut names = Vec::new();
            for entry in topics.iter()? {
                let (k, _) = entry?;
                if topic::matches(&config.pattern, k.value()) {
                    names.push(k.value().to_owned());
                }
            }
            names
        };
        let mut positions = txn.open_table(POSITIONS)?;
        let mut pending = txn.open_table(PENDING)?;
        let messages = txn.open_table(MESSAGES)?;
        for t in names {
            if room == 0 {
                out.next_wake_ms = Some(now_ms);
                break;
            }
            let from = positions
                .get((consumer, t.as_str()))?
                .map_or(0, |v| v.value());
            let mut last = from;
            for entry in messages.range((t.as_str(), from + 1)..=(t.as_str(), u64::MAX))? {
                if room == 0 {
                    out.next_wake_ms = Some(now_ms);
                    break;
                }
                let (k, v) = entry?;
                let seq = k.value().1;
                let record: MessageRecord = decode(v.value())?;
                let p = PendingRecord {
                    available_at_ms: deadline,
                    deliveries: 1,
                    holder: holder.to_owned(),
                    last: String::new(),
                };
                pending.insert((consumer, t.as_str(), seq), p.encode_to_vec().as_slice())?;
                summary.hold(holder, deadline);
                out.deliveries.push(Delivered {
                    id: delivery_id(consumer, &t, seq),
                    topic: t.clone(),
                    data: record.data,
                    headers: record.headers,
                    sequence: seq,
                    redelivered: 0,
                });
                last = seq;
                room -= 1;
            }
            if last != from {
                positions.insert((consumer, t.as_str()), last)?;
            }
        }
    }
    let wrote = !out.deliveries.is_empty() || out.dead_lettered > 0;
    if wrote {
        out.next_wake_ms = Some(out.next_wake_ms.map_or(deadline, |w| w.min(deadline)));
    }
    summaries.insert(consumer.to_owned(), summary);
    Ok((out, wrote))
}

// ------------------------------------------------------------------------------------------------
// Group commit: one thread owns the write transactions
// ------------------------------------------------------------------------------------------------

/// One write, as the committer thread runs it.
#[derive(Debug)]
enum Op {
    Register(Registration),
    Deregister(String),
    Publish(NewMessage, u64),
    /// Several publishes in one write: all stored, in order, or none.
    PublishMany(Vec<NewMessage>, u64),
    OpenConsumer(String, ConsumerConfig),
    Claim {
        consumer: String,
        holder: String,
        now_ms: u64,
        max: usize,
    },
    Ack(Vec<String>),
    Nack(String, u64),
    Release(String, Vec<String>),
    Sweep(u64),
    /// Makes every earlier write durable.
    Flush,
    /// Makes every earlier write durable in the redb file itself (a checkpoint, with the
    /// journal): what the bus does when it stops, so that a start has nothing to replay.
    Checkpoint,
}

/// What a write answers.
enum Done {
    Unit,
    Bool(bool),
    Published(Published),
    PublishedMany(Vec<Published>),
    Claimed(Claimed),
    Count(u32),
    Dropped(u64),
}

/// What a write did to its transaction.
#[derive(Clone, Copy, Default)]
struct Effect {
    /// It changed something: the transaction must be committed.
    wrote: bool,
    /// Its caller may only be answered once it is durable (in [`SyncMode::Always`]).
    durable: bool,
    /// Its caller may only be answered once it is durable, but it need not be made durable at
    /// once: it may wait for the next durable commit (in [`SyncMode::Always`]).
    defer: bool,
}

impl Effect {
    const NONE: Self = Self {
        wrote: false,
        durable: false,
        defer: false,
    };
    /// Its answer may only be given once the store is durable up to it, whether it wrote or
    /// not: a write that found its effect already there (a publish's idempotency key, a
    /// consumer as configured) may have found it in a commit not yet durable.
    fn durable(wrote: bool) -> Self {
        Self {
            wrote,
            durable: true,
            defer: false,
        }
    }
    fn lazy(wrote: bool) -> Self {
        Self {
            wrote,
            durable: false,
            defer: false,
        }
    }
    fn deferred(wrote: bool) -> Self {
        Self {
            wrote,
            durable: false,
            defer: true,
        }
    }
}

struct Job {
    op: Op,
    /// None for the committer's own flush.
    reply: Option<Reply>,
}

/// The most writes one transaction takes.
const MAX_BATCH: usize = 1024;
/// The message bytes after which a transaction takes no more writes (it holds at least one).
const MAX_BATCH_BYTES: usize = 64 << 20;

/// Appends one message in `txn`, or finds its idempotency key stored; answers whether it wrote.
fn publish_in(
    txn: &WriteTransaction,
    msg: &NewMessage,
    now_ms: u64,
    retention: Retention,
) -> Result<(Published, bool)> {
    if !msg.idempotency_key.is_empty() {
        let idem = txn.open_table(IDEMPOTENCY)?;
        if let Some(seq) = idem.get((msg.topic.as_str(), msg.idempotency_key.as_str()))? {
            let done = Published {
                sequence: seq.value(),
                duplicate: true,
            };
            return Ok((done, false));
        }
    }
    let record = MessageRecord {
        time_ms: now_ms,
        headers: msg.headers.clone(),
        data: msg.data.clone(),
        idempotency_key: msg.idempotency_key.clone(),
    };
    let sequence = append(txn, &msg.topic, &record, retention, now_ms)?;
    let done = Published {
        sequence,
        duplicate: false,
    };
    Ok((done, true))
}

/// Applies one write to `txn`.
fn apply(
    txn: &WriteTransaction,
    op: &Op,
    retention: Retention,
    summaries: &mut Summaries,
) -> Result<(Done, Effect)> {
    match op {
        Op::Register(reg) => {
            let mut instances = txn.open_table(INSTANCES)?;
            let mut sessions = txn.open_table(SESSIONS)?;
            let old = instances
                .get(reg.instance.as_str())?
                .map(|v| decode::<InstanceRecord>(v.value()))
                .transpose()?;
            if let Some(old) = old {
                sessions.remove(old.session.as_str())?;
            }
            let record = InstanceRecord {
                pool_type: reg.pool_type.clone(),
                image: reg.image.clone(),
                tags: reg.tags.clone(),
                granted: reg.granted.iter().map(grant_record).collect(),
                session: reg.session.clone(),
            };
            instances.insert(reg.instance.as_str(), record.encode_to_vec().as_slice())?;
            sessions.insert(reg.session.as_str(), reg.instance.as_str())?;
            Ok((Done::Unit, Effect::durable(true)))
        }
        Op::Deregister(instance) => {
            let mut instances = txn.open_table(INSTANCES)?;
            let mut sessions = txn.open_table(SESSIONS)?;
            let old = instances
                .remove(instance.as_str())?
                .map(|v| decode::<InstanceRecord>(v.value()))
                .transpose()?;
            let found = match old {
                Some(old) => {
                    sessions.remove(old.session.as_str())?;
                    true
                }
                None => false,
            };
            Ok((Done::Bool(found), Effect::durable(found)))
        }
        Op::Publish(msg, now_ms) => {
            let (done, wrote) = publish_in(txn, msg, *now_ms, retention)?;
            Ok((Done::Published(done), Effect::durable(wrote)))
        }
        Op::PublishMany(msgs, now_ms) => {
            let mut done = Vec::with_capacity(msgs.len());
            let mut wrote = false;
            for msg in msgs {
                let (d, w) = publish_in(txn, msg, *now_ms, retention)?;
                done.push(d);
                wrote |= w;
            }
            Ok((Done::PublishedMany(done), Effect::durable(wrote)))
        }
        Op::OpenConsumer(name, config) => {
            let record = ConsumerRecord {
                pattern: config.pattern.clone(),
                ack_deadline_ms: config.ack_deadline.as_millis() as u64,
                max_deliver: config.max_deliver,
            }
            .encode_to_vec();
            let mut consumers = txn.open_table(CONSUMERS)?;
            let same = consumers
                .get(name.as_str())?
                .is_some_and(|v| v.value() == record.as_slice());
            if !same {
                consumers.insert(name.as_str(), record.as_slice())?;
            }
            Ok((Done::Unit, Effect::durable(!same)))
        }
        Op::Claim {
            consumer,
            holder,
            now_ms,
            max,
        } => {
            let (claimed, wrote) =
                claim_in(txn, retention, summaries, consumer, holder, *now_ms, *max)?;
            // A claim lost to a crash only means its messages are delivered again.
            Ok((Done::Claimed(claimed), Effect::lazy(wrote)))
        }
        Op::Ack(ids) => {
            let mut pending = txn.open_table(PENDING)?;
            let mut acked = 0;
            for id in ids {
                let Some(key) = parse_delivery_id(id) else {
                    continue;
                };
                let Some(old) = pending.remove(key)? else {
                    continue;
                };
                acked += 1;
                if let Some(summary) = summaries.get_mut(key.0) {
                    let p: PendingRecord = decode(old.value())?;
                    if !summary.unhold(&p.holder) {
                        summaries.remove(key.0);
                    }
                }
            }
            Ok((Done::Count(acked), Effect::deferred(acked > 0)))
        }
        Op::Nack(id, available_at_ms) => {
            let Some(key) = parse_delivery_id(id) else {
                return Ok((Done::Bool(false), Effect::NONE));
            };
            let mut pending = txn.open_table(PENDING)?;
            let p = pending
                .get(key)?
                .map(|v| decode::<PendingRecord>(v.value()))
                .transpose()?;
            let found = match p {
                Some(mut p) => {
                    if let Some(summary) = summaries.get_mut(key.0) {
                        if summary.unhold(&p.holder) {
                            summary.earliest = summary.earliest.min(*available_at_ms);
                        } else {
                            summaries.remove(key.0);
                        }
                    }
                    p.available_at_ms = *available_at_ms;
                    p.last = "nacked".into();
                    // Given back: a later Release by the same holder leaves it (and its count)
                    // alone.
                    p.holder.clear();
                    pending.insert(key, p.encode_to_vec().as_slice())?;
                    true
                }
                None => false,
            };
            Ok((Done::Bool(found), Effect::durable(found)))
        }
        Op::Release(holder, ids) => {
            // Released entries are deliverable at once: every consumer's pending entries are
            // read again at its next claim.
            summaries.clear();
            let mut pending = txn.open_table(PENDING)?;
            let mut changed: Vec<((String, String, u64), PendingRecord)> = Vec::new();
            if ids.is_empty() {
                for entry in pending.iter()? {
                    let (k, v) = entry?;
                    let p: PendingRecord = decode(v.value())?;
                    if p.holder == *holder && p.available_at_ms > 0 {
                        let (c, t, s) = k.value();
                        changed.push(((c.to_owned(), t.to_owned(), s), p));
                    }
                }
            } else {
                for id in ids {
                    let Some((c, t, s)) = parse_delivery_id(id) else {
                        continue;
                    };
                    if let Some(v) = pending.get((c, t, s))? {
                        let p: PendingRecord = decode(v.value())?;
                        if p.holder == *holder {
                            changed.push(((c.to_owned(), t.to_owned(), s), p));
                        }
                    }
                }
            }
            let released = changed.len() as u32;
            for ((c, t, s), mut p) in changed {
                p.available_at_ms = 0;
                p.deliveries = p.deliveries.saturating_sub(1);
                p.holder.clear();
                pending.insert((c.as_str(), t.as_str(), s), p.encode_to_vec().as_slice())?;
            }
            // A release lost to a crash only means its messages wait for their ack deadline.
            Ok((Done::Count(released), Effect::lazy(released > 0)))
        }
        Op::Sweep(now_ms) => {
            let names: Vec<String> = {
                let topics = txn.open_table(TOPICS)?;
                let mut v = Vec::new();
                for e in topics.iter()? {
                    v.push(e?.0.value().to_owned());
                }
                v
            };
            let mut topics = txn.open_table(TOPICS)?;
            let mut dropped = 0;
            for t in names {
                let mut meta: TopicRecord = match topics.get(t.as_str())? {
                    Some(v) => decode(v.value())?,
                    None => continue,
                };
                let n = enforce(txn, &t, &mut meta, retention, *now_ms)?;
                if n > 0 {
                    topics.insert(t.as_str(), meta.encode_to_vec().as_slice())?;
                    dropped += n;
                }
            }
            Ok((Done::Dropped(dropped), Effect::lazy(dropped > 0)))
        }
        Op::Flush | Op::Checkpoint => Ok((
            Done::Unit,
            Effect {
                wrote: false,
                durable: true,
                defer: false,
            },
        )),
    }
}

/// The committer: takes every write waiting, runs them in one transaction, commits once, then
/// answers each. One fsync serves the whole batch.
struct Committer {
    db: Arc<Database>,
    /// The store's session cache, cleared once a register or deregister was committed (or
    /// failed), before any answer.
    sessions: Arc<Mutex<SessionCache>>,
    retention: Retention,
    sync: SyncMode,
    /// Since when commits that are not durable yet exist.
    unsynced_since: Option<Instant>,
    stats: Arc<StoreStats>,
    /// What the committed transactions left pending, per consumer.
    summaries: Summaries,
    /// Answers committed but not durable yet, for writes that may wait for the next durable
    /// commit (acks in [`SyncMode::Always`]), and since when the oldest waits.
    deferred: Vec<(Reply, Done)>,
    deferred_since: Option<Instant>,
    /// In [`SyncMode::Always`]: where commits are made durable between checkpoints.
    journal: Option<Journal>,
    /// Since when commits that the redb file does not hold durably exist (the next
    /// checkpoint's due time counts from it).
    uncheckpointed_since: Option<Instant>,
    /// When the last checkpoint failed, until one succeeds.
    checkpoint_failed: Option<Instant>,
}

type Reply = tokio::sync::oneshot::Sender<Result<Done>>;

/// How long an ack may wait, in [`SyncMode::Always`], for a durable commit to share (the next
/// publish's); after that it gets one of its own.
const DEFER_AT_MOST: Duration = Duration::from_millis(2);

/// How often, and after how many journal bytes, a checkpoint makes the redb file durable: the
/// most a restart replays. Each costs one durable redb commit of the pages written since the
/// last one, during which the committer takes nothing else: at 1,000 msg/s about 8 ms every 2 s,
/// 2-3 ms every 500 ms, which keeps bench/bus's p99.9 near its p99.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);
const CHECKPOINT_BYTES: u64 = 64 << 20;

impl Committer {
    /// Opens (or creates) the store in `dir` with every table, and replays its journal.
    fn open(dir: &Path, retention: Retention, sync: SyncMode) -> Result<Self> {
        let path = dir.join(FILE_NAME);
        let journal_path = dir.join(journal::FILE_NAME);
        // A journal without its store file: its records are writes on a store that is gone
        // (replayed onto an empty one they would make a part of it); refused before anything
        // is created, so that a second start refuses too.
        if !path.exists() && std::fs::metadata(&journal_path).is_ok_and(|m| m.len() > 0) {
            return Err(StoreError::new(format!(
                "{} holds writes of the store file {}, which is not there: put the store file back, or remove the journal too to start an empty store",
                journal_path.display(),
                path.display()
            )));
        }
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| StoreError::new(format!("cannot open {}: {e}", path.display())))?;
        let txn = db.begin_write()?;
        {
            txn.open_table(TOPICS)?;
            txn.open_table(MESSAGES)?;
            txn.open_table(IDEMPOTENCY)?;
            txn.open_table(INSTANCES)?;
            txn.open_table(SESSIONS)?;
            txn.open_table(CONSUMERS)?;
            txn.open_table(POSITIONS)?;
            txn.open_table(PENDING)?;
            txn.open_table(META)?;
        }
        txn.commit()?;
        let mut this = Self {
            db: Arc::new(db),
            sessions: Arc::default(),
            retention,
            sync,
            unsynced_since: None,
            stats: Arc::new(StoreStats::default()),
            summaries: Summaries::new(),
            deferred: Vec::new(),
            deferred_since: None,
            journal: None,
            uncheckpointed_since: None,
            checkpoint_failed: None,
        };
        if sync == SyncMode::Always || journal_path.exists() {
            this.replay(&journal_path)?;
            if sync != SyncMode::Always {
                this.journal = None;
            }
        }
        Ok(this)
    }

    /// Opens the journal and applies the records the redb file does not hold yet, then makes
    /// them durable in the file (a checkpoint).
    fn replay(&mut self, path: &Path) -> Result<()> {
        let applied = {
            let txn = self.db.begin_read()?;
            let meta = txn.open_table(META)?;
            meta.get(JOURNAL_APPLIED)?.map_or(0, |v| v.value())
        };
        let (journal, records) = Journal::open(path, applied)?;
        self.journal = Some(journal);
        let (count, last) = (records.len(), records.last().map_or(0, |r| r.seq));
        for record in records {
            let mut txn = self.db.begin_write()?;
            for op in &record.ops {
                // Under the retention it ran under: what a publish or a claim drops depends
                // on it, and this start's flags may say otherwise.
                apply(&txn, op, record.retention, &mut self.summaries).map_err(|e| {
                    StoreError::new(format!(
                        "cannot replay record {} of {}: {}",
                        record.seq,
                        path.display(),
                        e.message
                    ))
                })?;
            }
            txn.set_durability(Durability::None)?;
            txn.commit()?;
        }
        self.summaries.clear();
        if count > 0 {
            self.checkpoint()?;
            tracing::info!(
                "replayed {count} journal records (up to {last}) of {} into the store",
                path.display()
            );
        }
        // The store holds all of it durably now: records left past a torn one must not be
        // read after a later crash.
        if let Some(journal) = self.journal.as_mut() {
            journal.clear()?;
        }
        Ok(())
    }

    /// Makes the redb file durable, noting the last journal record it holds, and starts the
    /// journal again.
    fn checkpoint(&mut self) -> Result<()> {
        let Some(last) = self.journal.as_ref().map(Journal::last) else {
            return Ok(());
        };
        let txn = self.disk(self.db.begin_write())?;
        txn.open_table(META)?.insert(JOURNAL_APPLIED, last)?;
        self.disk(txn.commit())?;
        if let Some(journal) = self.journal.as_mut() {
            journal.restart();
        }
        self.unsynced_since = None;
        self.uncheckpointed_since = None;
        self.stats.syncs.fetch_add(1, Ordering::Relaxed);
        self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Makes every commit so far durable: the journal's sync, or a checkpoint when the
    /// journal cannot be written.
    fn make_durable(&mut self) -> Result<()> {
        let Some(journal) = self.journal.as_mut() else {
            return self.checkpoint();
        };
        match journal.sync() {
            Ok(()) => {
                self.unsynced_since = None;
                self.stats.syncs.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                tracing::warn!("{}; making the store durable by a checkpoint", e.message);
                self.checkpoint()
            }
        }
    }

    /// A checkpoint when the last was long enough ago or the journal grew large; its failure
    /// fails the writes that waited for a sync, and it is tried again later.
    fn checkpoint_if_due(&mut self) {
        // After a failed checkpoint the next waits for the interval, whatever the journal's size.
        let due = self
            .uncheckpointed_since
            .is_some_and(|s| s.elapsed() >= CHECKPOINT_EVERY)
            || (self
                .checkpoint_failed
                .is_none_or(|f| f.elapsed() >= CHECKPOINT_EVERY)
                && self
                    .journal
                    .as_ref()
                    .is_some_and(|j| j.len() >= CHECKPOINT_BYTES));
        if !due {
            return;
        }
        match self.checkpoint() {
            Ok(()) => {
                self.checkpoint_failed = None;
                self.answer_deferred(None);
            }
            Err(e) => {
                tracing::error!("a checkpoint of the bus's store failed: {e}");
                self.uncheckpointed_since = Some(Instant::now());
                self.checkpoint_failed = Some(Instant::now());
                if self.journal.as_ref().is_some_and(Journal::broken) {
                    self.answer_deferred(Some(&e));
                }
            }
        }
    }

    fn run(mut self, jobs: std::sync::mpsc::Receiver<Job>) {
        use std::sync::mpsc::RecvTimeoutError;
        loop {
            // The next durable commit due without a write asking for it: the periodic sync,
            // or deferred answers that waited long enough.
            let periodic = match (self.sync, self.unsynced_since) {
                (SyncMode::Every(every), Some(since)) => Some(since + every),
                _ => None,
            };
            let deferred = self.deferred_since.map(|since| since + DEFER_AT_MOST);
            let checkpoint = self
                .uncheckpointed_since
                .map(|since| since + CHECKPOINT_EVERY);
            let due = [periodic, deferred, checkpoint].into_iter().flatten().min();
            let first = match due {
                Some(at) => match jobs.recv_timeout(at.saturating_duration_since(Instant::now())) {
                    Ok(job) => Some(job),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                },
                None => match jobs.recv() {
                    Ok(job) => Some(job),
                    Err(_) => break,
                },
            };
            // MAX_BATCH counts writes, a batch of publishes as its messages: one transaction
            // must not grow so large that the claims and acks in it wait long for their answer.
            // And a transaction's publishes carry at most MAX_BATCH_BYTES (its journal record
            // holds them).
            let weight = |job: &Job| match &job.op {
                Op::PublishMany(msgs, _) => msgs.len().max(1),
                _ => 1,
            };
            let bytes = |job: &Job| match &job.op {
                Op::PublishMany(msgs, _) => msgs.iter().map(|m| m.data.len()).sum(),
                Op::Publish(m, _) => m.data.len(),
                _ => 0,
            };
            let mut batch: Vec<Job> = Vec::new();
            let (mut writes, mut size) = (0usize, 0usize);
            let mut next = first;
            while let Some(job) = next.take().or_else(|| jobs.try_recv().ok()) {
                writes += weight(&job);
                size += bytes(&job);
                batch.push(job);
                if writes >= MAX_BATCH || size >= MAX_BATCH_BYTES {
                    break;
                }
            }
            // Deferred answers that waited long enough: this batch is made durable (a flush
            // makes the whole transaction so), whatever else it holds.
            if self
                .deferred_since
                .is_some_and(|s| s.elapsed() >= DEFER_AT_MOST)
            {
                batch.push(Job {
                    op: Op::Flush,
                    reply: None,
                });
            }
            self.run_batch(batch);
            self.checkpoint_if_due();
        }
        // Every handle is gone: make what was committed durable, in the redb file (nothing to
        // replay at the next start).
        if self.journal.is_some() {
            match self.checkpoint() {
                Ok(()) => self.answer_deferred(None),
                Err(e) => {
                    tracing::error!("the last checkpoint of the bus's store failed: {e}");
                    let e = self.make_durable().err();
                    self.answer_deferred(e.as_ref());
                }
            }
        } else if self.unsynced_since.is_some() {
            match self.commit(&[Op::Flush]) {
                Ok(_) => self.answer_deferred(None),
                Err(e) => {
                    tracing::error!("the last sync of the bus's store failed: {e}");
                    self.answer_deferred(Some(&e));
                }
            }
        }
        self.stats.stopped.store(true, Ordering::Relaxed);
    }

    /// Answers every deferred write: its result once durable, or the error of the commit that
    /// was to make it so.
    fn answer_deferred(&mut self, failed: Option<&StoreError>) {
        self.deferred_since = None;
        for (reply, done) in self.deferred.drain(..) {
            let _ = reply.send(match failed {
                None => Ok(done),
                Some(e) => Err(e.clone()),
            });
        }
    }

    fn run_batch(&mut self, batch: Vec<Job>) {
        let (ops, replies): (Vec<Op>, Vec<_>) = batch.into_iter().map(|j| (j.op, j.reply)).unzip();
        match self.commit(&ops) {
            Ok(committed) => self.answer(replies, committed),
            Err(e) if ops.len() <= 1 => {
                for reply in replies.into_iter().flatten() {
                    let _ = reply.send(Err(e.clone()));
                }
                // A failed flush leaves what waited for it unanswered by a sync: say so.
                if matches!(ops.first(), Some(Op::Flush | Op::Checkpoint)) {
                    self.answer_deferred(Some(&e));
                }
            }
            Err(_) => {
                // One write failed the batch: run each alone, so that only it fails.
                for (op, reply) in ops.into_iter().zip(replies) {
                    match self.commit(std::slice::from_ref(&op)) {
                        Ok(committed) => self.answer(vec![reply], committed),
                        Err(e) => {
                            if let Some(reply) = reply {
                                let _ = reply.send(Err(e));
                            }
                        }
                    }
                }
            }
        }
    }

    /// Answers the writes of a committed transaction: at once, or (for a write that asked to be
    /// durable and may wait) once a durable commit holds it, which may be this one.
    fn answer(&mut self, replies: Vec<Option<Reply>>, committed: Committed) {
        if let Some(e) = committed.not_durable {
            // Committed, and so seen by later reads, but not durable: no write is answered as
            // done (a publish sent again is stored once by its idempotency key).
            for reply in replies.into_iter().flatten() {
                let _ = reply.send(Err(e.clone()));
            }
            self.answer_deferred(Some(&e));
            return;
        }
        for (reply, (done, defer)) in replies.into_iter().zip(committed.done) {
            let Some(reply) = reply else { continue };
            if defer && !committed.durable {
                self.deferred_since.get_or_insert_with(Instant::now);
                self.deferred.push((reply, done));
            } else {
                let _ = reply.send(Ok(done));
            }
        }
        if committed.durable {
            self.answer_deferred(None);
        }
    }

    fn commit(&mut self, ops: &[Op]) -> Result<Committed> {
        let done = self.try_commit(ops);
        if done.is_err() {
            // What the failed transaction would have left is not what the file holds.
            self.summaries.clear();
        }
        if ops
            .iter()
            .any(|op| matches!(op, Op::Register(_) | Op::Deregister(_)))
        {
            SessionCache::changed(&self.sessions);
        }
        done
    }

    /// Runs `ops` in one transaction and commits it: durably (one fsync) when a write asks for
    /// it in [`SyncMode::Always`], when the sync interval has passed, or for a flush.
    fn try_commit(&mut self, ops: &[Op]) -> Result<Committed> {
        let mut txn = self.disk(self.db.begin_write())?;
        let mut done = Vec::with_capacity(ops.len());
        let mut effect = Effect::NONE;
        let mut flush = false;
        // The writes that changed something, for the journal.
        let mut wrote = Vec::new();
        for op in ops {
            let (d, e) = apply(&txn, op, self.retention, &mut self.summaries)?;
            // In SyncMode::Always an ack is durable before it is answered, but it need not
            // have a sync of its own: it waits (at most DEFER_AT_MOST) for the next durable
            // commit. An ack that found nothing to remove waits too, unless everything is
            // durable once this transaction is committed (`answer` sees `Committed.durable`):
            // its first try may be unsynced, in an earlier commit or earlier in this one.
            let defer = self.sync == SyncMode::Always && e.defer;
            done.push((d, defer));
            if e.wrote {
                wrote.push(op);
            }
            effect.wrote |= e.wrote;
            effect.durable |= e.durable;
            flush |= matches!(op, Op::Flush | Op::Checkpoint);
        }
        let durable = flush
            || match self.sync {
                SyncMode::Always => effect.durable,
                SyncMode::Every(every) => self.unsynced_since.is_some_and(|s| s.elapsed() >= every),
            };
        if self.journal.is_some() {
            // Committed to redb without an fsync, then journaled; durable once the journal is
            // synced (or a checkpoint made the file durable).
            if effect.wrote {
                txn.set_durability(Durability::None)?;
                self.disk(txn.commit())?;
                if let Some(journal) = self.journal.as_mut() {
                    journal.append(wrote, self.retention);
                }
                self.unsynced_since.get_or_insert_with(Instant::now);
                self.uncheckpointed_since.get_or_insert_with(Instant::now);
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
            } else {
                txn.abort()?;
            }
            let not_durable = if ops.iter().any(|op| matches!(op, Op::Checkpoint)) {
                // The bus's stop: durable in the store file if it can be, else in the journal
                // (replayed at the next start).
                match self.checkpoint() {
                    Ok(()) => None,
                    Err(e) => {
                        tracing::error!("a checkpoint of the bus's store failed: {e}");
                        self.make_durable().err()
                    }
                }
            } else if durable && self.unsynced_since.is_some() {
                self.make_durable().err()
            } else {
                None
            };
            return Ok(Committed {
                done,
                durable: self.unsynced_since.is_none(),
                not_durable,
            });
        }
        if durable && (effect.wrote || self.unsynced_since.is_some()) {
            self.disk(txn.commit())?;
            self.unsynced_since = None;
            self.stats.syncs.fetch_add(1, Ordering::Relaxed);
        } else if effect.wrote {
            txn.set_durability(Durability::None)?;
            self.disk(txn.commit())?;
            self.unsynced_since.get_or_insert_with(Instant::now);
        } else {
            txn.abort()?;
            return Ok(Committed {
                done,
                durable: self.unsynced_since.is_none(),
                not_durable: None,
            });
        }
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        Ok(Committed {
            done,
            durable: self.unsynced_since.is_none(),
            not_durable: None,
        })
    }

    /// Notes whether a transaction could begin or commit: readiness reports a failing disk.
    fn disk<T, E: Into<StoreError>>(&self, result: std::result::Result<T, E>) -> Result<T> {
        let result = result.map_err(Into::into);
        if let Ok(mut failing) = self.stats.failing.lock() {
            *failing = result.as_ref().err().map(ToString::to_string);
        }
        result
    }
}

/// A committed transaction: each write's answer and whether it may have to wait, and whether
/// everything committed so far is durable.
struct Committed {
    done: Vec<(Done, bool)>,
    durable: bool,
    /// The transaction was committed but could not be made durable, when it had to be.
    not_durable: Option<StoreError>,
}

impl RedbStore {
    async fn write(&self, op: Op) -> Result<Done> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Job {
                op,
                reply: Some(reply),
            })
            .map_err(|_| StoreError::new("the store's committer has stopped"))?;
        answer
            .await
            .map_err(|_| StoreError::new("the store's committer stopped before answering"))?
    }
}

fn unexpected(what: &str) -> StoreError {
    StoreError::new(format!(
        "the committer answered a {what} with something else"
    ))
}

impl Store for RedbStore {
    async fn register(&self, reg: Registration) -> Result<()> {
        match self.write(Op::Register(reg)).await? {
            Done::Unit => Ok(()),
            _ => Err(unexpected("register")),
        }
    }

    async fn deregister(&self, instance: String) -> Result<bool> {
        match self.write(Op::Deregister(instance)).await? {
            Done::Bool(found) => Ok(found),
            _ => Err(unexpected("deregister")),
        }
    }

    async fn registered_pool(&self, instance: String) -> Result<Option<String>> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || -> Result<Option<String>> {
            let txn = db.begin_read()?;
            let instances = txn.open_table(INSTANCES)?;
            let Some(v) = instances.get(instance.as_str())? else {
                return Ok(None);
            };
            let r: InstanceRecord = decode(v.value())?;
            Ok(Some(r.pool_type))
        })
        .await
        .map_err(|e| StoreError::new(format!("a store task failed: {e}")))?
    }

    async fn session(&self, session: String) -> Result<Option<Registration>> {
        let generation = {
            let cache = self.sessions.lock().expect("session cache");
            if let Some(reg) = cache.known.get(&session) {
                return Ok(Some(reg.clone()));
            }
            cache.generation
        };
        let db = self.db.clone();
        let key = session.clone();
        let found = tokio::task::spawn_blocking(move || -> Result<Option<Registration>> {
            let txn = db.begin_read()?;
            let sessions = txn.open_table(SESSIONS)?;
            let Some(instance) = sessions.get(session.as_str())? else {
                return Ok(None);
            };
            let instance = instance.value().to_owned();
            let instances = txn.open_table(INSTANCES)?;
            let Some(v) = instances.get(instance.as_str())? else {
                return Ok(None);
            };
            let r: InstanceRecord = decode(v.value())?;
            Ok(Some(Registration {
                instance,
                pool_type: r.pool_type,
                image: r.image,
                tags: r.tags,
                granted: r.granted.iter().map(grant_of).collect(),
                session: r.session,
            }))
        })
        .await
        .map_err(|e| StoreError::new(format!("a store task failed: {e}")))??;
        if let Some(reg) = &found {
            let mut cache = self.sessions.lock().expect("session cache");
            if cache.generation == generation {
                cache.known.insert(key, reg.clone());
            }
        }
        Ok(found)
    }

    async fn publish(&self, msg: NewMessage, now_ms: u64) -> Result<Published> {
        match self.write(Op::Publish(msg, now_ms)).await? {
            Done::Published(p) => Ok(p),
            _ => Err(unexpected("publish")),
        }
    }

    /// One write: the messages are stored in one transaction, in order, all or none (so that
    /// no later message of a topic is stored when an earlier one failed).
    async fn publish_batch(&self, msgs: Vec<NewMessage>, now_ms: u64) -> Vec<Result<Published>> {
        let n = msgs.len();
        match self.write(Op::PublishMany(msgs, now_ms)).await {
            Ok(Done::PublishedMany(done)) if done.len() == n => done.into_iter().map(Ok).collect(),
            Ok(_) => vec![Err(unexpected("batch of publishes")); n],
            Err(e) => vec![Err(e); n],
        }
    }

    async fn open_consumer(&self, name: String, config: ConsumerConfig) -> Result<()> {
        match self.write(Op::OpenConsumer(name, config)).await? {
            Done::Unit => Ok(()),
            _ => Err(unexpected("consumer")),
        }
    }

    async fn claim(
        &self,
        consumer: String,
        holder: String,
        now_ms: u64,
        max: usize,
    ) -> Result<Claimed> {
        let op = Op::Claim {
            consumer,
            holder,
            now_ms,
            max,
        };
        match self.write(op).await? {
            Done::Claimed(c) => Ok(c),
            _ => Err(unexpected("claim")),
        }
    }

    fn delivery_consumer(&self, id: &str) -> Option<String> {
        parse_delivery_id(id).map(|(consumer, _, _)| consumer.to_owned())
    }

    async fn ack(&self, ids: Vec<String>) -> Result<u32> {
        match self.write(Op::Ack(ids)).await? {
            Done::Count(n) => Ok(n),
            _ => Err(unexpected("ack")),
        }
    }

    async fn nack(&self, id: String, available_at_ms: u64) -> Result<bool> {
        match self.write(Op::Nack(id, available_at_ms)).await? {
            Done::Bool(found) => Ok(found),
            _ => Err(unexpected("nack")),
        }
    }

    async fn release(&self, holder: String, ids: Vec<String>) -> Result<u32> {
        match self.write(Op::Release(holder, ids)).await? {
            Done::Count(n) => Ok(n),
            _ => Err(unexpected("release")),
        }
    }

    async fn sweep(&self, now_ms: u64) -> Result<u64> {
        match self.write(Op::Sweep(now_ms)).await? {
            Done::Dropped(n) => Ok(n),
            _ => Err(unexpected("sweep")),
        }
    }

    async fn flush(&self) -> Result<()> {
        match self.write(Op::Checkpoint).await? {
            Done::Unit => Ok(()),
            _ => Err(unexpected("flush")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn delivery_ids_round_trip() {
        let id = delivery_id("group:g:orders.*", "orders.eu", 42);
        assert_eq!(id, "42 orders.eu group:g:orders.*");
        assert_eq!(
            parse_delivery_id(&id),
            Some(("group:g:orders.*", "orders.eu", 42))
        );
        assert_eq!(parse_delivery_id("x y z"), None);
        assert_eq!(parse_delivery_id("1 y"), None);
    }

    fn msg(topic: &str, data: &str, key: &str) -> NewMessage {
        NewMessage {
            topic: topic.into(),
            data: data.as_bytes().to_vec(),
            headers: BTreeMap::new(),
            idempotency_key: key.into(),
        }
    }

    /// Whether they share a transaction or not, concurrent writes get what they would alone:
    /// distinct sequences, one answer per idempotency key, and a failing write fails alone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_answer_as_if_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path(), Retention::default(), SyncMode::Always).unwrap();
        let mut tasks = Vec::new();
        for i in 0..200 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let key = if i % 2 == 0 {
                    format!("k{}", i / 4)
                } else {
                    String::new()
                };
                store.publish(msg("t.a", &format!("m{i}"), &key), 1).await
            }));
        }
        let bad = tokio::spawn({
            let store = store.clone();
            async move { store.claim("nobody".into(), "h".into(), 1, 10).await }
        });
        let mut fresh = BTreeSet::new();
        let mut duplicates = 0;
        for t in tasks {
            let p = t.await.unwrap().unwrap();
            if p.duplicate {
                duplicates += 1;
            } else {
                assert!(fresh.insert(p.sequence), "sequence {} twice", p.sequence);
            }
        }
        // Keys k0..k49 each appear twice (i = 4n and 4n + 2).
        assert_eq!(duplicates, 50);
        assert_eq!(fresh, (1..=150).collect::<BTreeSet<u64>>());
        assert_eq!(
            bad.await.unwrap(),
            Err(StoreError::new("no consumer `nobody`"))
        );
    }

    /// The consumer the committer tests open as `c`: `t.*`, at most 5 deliveries.
    fn consumer(ack_deadline: Duration) -> ConsumerConfig {
        ConsumerConfig {
            pattern: "t.*".into(),
            ack_deadline,
            max_deliver: 5,
        }
    }

    /// A claim of up to 10 of consumer `c`'s messages by `holder` at `now_ms`.
    fn claim(holder: &str, now_ms: u64) -> Op {
        Op::Claim {
            consumer: "c".into(),
            holder: holder.into(),
            now_ms,
            max: 10,
        }
    }

    /// Runs `ops` as one batch of the committer; answers their replies.
    fn run(c: &mut Committer, ops: Vec<Op>) -> Vec<tokio::sync::oneshot::Receiver<Result<Done>>> {
        let mut answers = Vec::new();
        let batch = ops
            .into_iter()
            .map(|op| {
                let (reply, answer) = tokio::sync::oneshot::channel();
                answers.push(answer);
                Job {
                    op,
                    reply: Some(reply),
                }
            })
            .collect();
        c.run_batch(batch);
        answers
    }

    /// What a machine that lost power now would find of `dir`'s store: its files as they are
    /// on disk (redb's non-durable commits are not in the file's durable state).
    fn crash_image(dir: &Path) -> tempfile::TempDir {
        let image = tempfile::tempdir().unwrap();
        for name in [FILE_NAME, journal::FILE_NAME] {
            std::fs::copy(dir.join(name), image.path().join(name)).unwrap();
        }
        image
    }

    /// `--sync always` answers a write once its journal record is synced, before the redb
    /// file holds it durably: after a crash, opening the store replays the journal, and every
    /// answered publish and ack is there. Without the journal the file alone has lost them.
    #[tokio::test]
    async fn a_crash_loses_no_answered_write_the_journal_holds() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Committer::open(dir.path(), Retention::default(), SyncMode::Always).unwrap();
        let config = consumer(Duration::from_millis(1000));
        let mut answers = run(
            &mut c,
            vec![
                Op::OpenConsumer("c".into(), config.clone()),
                Op::Publish(msg("t.a", "m1", ""), 1),
                Op::PublishMany(vec![msg("t.a", "m2", "k2"), msg("t.b", "m3", "")], 1),
            ],
        );
        answers.push(run(&mut c, vec![claim("h", 2)]).remove(0));
        let Ok(Ok(Done::Claimed(claimed))) = answers.pop().unwrap().try_recv() else {
            panic!("the claim is answered at once");
        };
        assert_eq!(claimed.deliveries.len(), 3);
        let first = claimed.deliveries[0].id.clone();
        let mut acked = run(&mut c, vec![Op::Ack(vec![first.clone()])]);
        // The ack waits for a sync; the flush (the committer's own, after 2 ms) makes it.
        assert!(acked[0].try_recv().is_err(), "answered before a sync");
        run(&mut c, vec![Op::Flush]);
        answers.append(&mut acked);
        for mut a in answers {
            assert!(matches!(a.try_recv(), Ok(Ok(_))), "a write not answered");
        }
        assert_eq!(c.stats.checkpoints.load(Ordering::Relaxed), 0);

        let image = crash_image(dir.path());
        let without_journal = crash_image(dir.path());
        drop(c);
        let store = RedbStore::open(image.path(), Retention::default(), SyncMode::Always).unwrap();
        assert_eq!(store.stats().checkpoints.load(Ordering::Relaxed), 1);
        store
            .open_consumer("c".into(), config.clone())
            .await
            .unwrap();
        // Past the ack deadline: the two unacked come again, the acked one does not.
        let again = store
            .claim("c".into(), "h2".into(), 5_000, 10)
            .await
            .unwrap();
        let got: Vec<(&str, &[u8], u32)> = again
            .deliveries
            .iter()
            .map(|d| (d.topic.as_str(), d.data.as_slice(), d.redelivered))
            .collect();
        assert_eq!(got, [("t.a", &b"m2"[..], 1), ("t.b", &b"m3"[..], 1)]);
        let dup = store.publish(msg("t.a", "m2", "k2"), 6).await.unwrap();
        assert_eq!((dup.sequence, dup.duplicate), (2, true));
        drop(store);

        // The same crash without the journal: the file's durable state is from before.
        let image = without_journal;
        std::fs::copy(
            image.path().join(journal::FILE_NAME),
            dir.path().join("kept.journal"),
        )
        .unwrap();
        std::fs::remove_file(image.path().join(journal::FILE_NAME)).unwrap();
        let store = RedbStore::open(image.path(), Retention::default(), SyncMode::Always).unwrap();
        assert_eq!(
            store.claim("c".into(), "h".into(), 5_000, 10).await,
            Err(StoreError::new("no consumer `c`"))
        );
        drop(store);

        // The journal without its store file: refused, not replayed onto an empty store.
        let lone = tempfile::tempdir().unwrap();
        std::fs::copy(
            dir.path().join("kept.journal"),
            lone.path().join(journal::FILE_NAME),
        )
        .unwrap();
        let Err(e) = RedbStore::open(lone.path(), Retention::default(), SyncMode::Always) else {
            panic!("a journal without its store file was opened");
        };
        assert!(
            e.message.ends_with(
                "bus.redb, which is not there: put the store file back, or remove the journal too to start an empty store"
            ),
            "{}",
            e.message
        );
        // Nothing was made: a second start refuses too.
        assert!(!lone.path().join(FILE_NAME).exists());
    }

    /// A journal record is replayed under the retention it ran under, not the next start's:
    /// here the first message was dropped by a 2,500-byte limit; restarted without that limit
    /// it stays dropped (sequences, and so delivery ids, stay as answered).
    #[tokio::test]
    async fn a_replay_keeps_the_retention_the_writes_ran_under() {
        let dir = tempfile::tempdir().unwrap();
        let small = Retention {
            max_age: Duration::from_secs(3600),
            max_bytes: 2_500,
        };
        let mut c = Committer::open(dir.path(), small, SyncMode::Always).unwrap();
        let config = consumer(Duration::from_secs(30));
        let kib = "x".repeat(1000);
        run(
            &mut c,
            vec![
                Op::OpenConsumer("c".into(), config.clone()),
                Op::Publish(msg("t.a", &format!("1{kib}"), ""), 1),
                Op::Publish(msg("t.a", &format!("2{kib}"), ""), 1),
                Op::Publish(msg("t.a", &format!("3{kib}"), ""), 1),
            ],
        );
        let image = crash_image(dir.path());
        drop(c);
        let store = RedbStore::open(image.path(), Retention::default(), SyncMode::Always).unwrap();
        let claimed = store.claim("c".into(), "h".into(), 2, 10).await.unwrap();
        let got: Vec<(u64, u8)> = claimed
            .deliveries
            .iter()
            .map(|d| (d.sequence, d.data[0]))
            .collect();
        assert_eq!(got, [(2, b'2'), (3, b'3')]);
    }

    /// A write that finds its effect already there (a publish's idempotency key) is answered
    /// only once what it found is durable: after a claim (committed without a sync), the
    /// duplicate publish makes a sync.
    #[test]
    fn a_duplicate_publish_is_answered_once_the_store_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Committer::open(dir.path(), Retention::default(), SyncMode::Always).unwrap();
        let config = consumer(Duration::from_secs(30));
        run(
            &mut c,
            vec![
                Op::OpenConsumer("c".into(), config),
                Op::Publish(msg("t.a", "m", "k"), 1),
            ],
        );
        run(&mut c, vec![claim("h", 1)]);
        let syncs = c.stats.syncs.load(Ordering::Relaxed);
        let mut dup = run(&mut c, vec![Op::Publish(msg("t.a", "m", "k"), 2)]);
        assert!(matches!(
            dup.remove(0).try_recv(),
            Ok(Ok(Done::Published(Published {
                sequence: 1,
                duplicate: true
            })))
        ));
        assert_eq!(c.stats.syncs.load(Ordering::Relaxed), syncs + 1);
        assert!(c.unsynced_since.is_none());
    }

    /// Two acks of one delivery in one batch (`--sync always`): the first removes it, the
    /// second finds nothing; neither is answered before a durable commit holds the removal. An
    /// ack that finds nothing once everything is durable is answered at once.
    #[test]
    fn an_ack_that_finds_nothing_waits_for_the_sync_of_the_ack_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Committer::open(dir.path(), Retention::default(), SyncMode::Always).unwrap();
        let config = consumer(Duration::from_secs(30));
        run(
            &mut c,
            vec![
                Op::OpenConsumer("c".into(), config),
                Op::Publish(msg("t.a", "m", ""), 1),
            ],
        );
        let mut claimed = run(&mut c, vec![claim("h", 1)]);
        let Ok(Ok(Done::Claimed(claimed))) = claimed.remove(0).try_recv() else {
            panic!("the claim is answered at once");
        };
        let id = claimed.deliveries[0].id.clone();
        // Everything so far durable: only the first ack's removal is not.
        run(&mut c, vec![Op::Flush]);
        let syncs = c.stats.syncs.load(Ordering::Relaxed);

        let mut acks = run(
            &mut c,
            vec![Op::Ack(vec![id.clone()]), Op::Ack(vec![id.clone()])],
        );
        assert_eq!(
            c.stats.syncs.load(Ordering::Relaxed),
            syncs,
            "acks ask no sync"
        );
        for a in &mut acks {
            assert!(
                matches!(
                    a.try_recv(),
                    Err(tokio::sync::oneshot::error::TryRecvError::Empty)
                ),
                "an ack was answered before the removal was durable"
            );
        }
        run(&mut c, vec![Op::Flush]);
        let counts: Vec<u32> = acks
            .into_iter()
            .map(|mut a| match a.try_recv() {
                Ok(Ok(Done::Count(n))) => n,
                _ => panic!("an ack is not answered after the sync"),
            })
            .collect();
        assert_eq!(counts, [1, 0]);

        // Everything is durable: an ack that finds nothing has nothing to wait for.
        let mut again = run(&mut c, vec![Op::Ack(vec![id])]);
        assert!(matches!(again[0].try_recv(), Ok(Ok(Done::Count(0)))));
    }

    /// With a periodic sync, writes are answered before any fsync, and a flush (as the bus does
    /// when it stops) makes them durable: they are there after a reopen.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_periodic_sync_keeps_what_was_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let every = SyncMode::Every(Duration::from_secs(3600));
        {
            let store = RedbStore::open(dir.path(), Retention::default(), every).unwrap();
            for i in 0..10 {
                store
                    .publish(msg("t.a", &format!("m{i}"), ""), 1)
                    .await
                    .unwrap();
            }
            store.flush().await.unwrap();
        }
        // The committer closes the file once it saw the last handle go.
        let mut tries = 0;
        let store = loop {
            match RedbStore::open(dir.path(), Retention::default(), SyncMode::Always) {
                Ok(s) => break s,
                Err(_) if tries < 2000 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("the store does not open again: {e}"),
            }
        };
        let p = store.publish(msg("t.a", "after", ""), 1).await.unwrap();
        assert_eq!(p.sequence, 11);
    }
}
