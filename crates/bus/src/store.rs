//! Where the bus keeps messages, consumers and the registry: the [`Store`] trait, and
//! [`RedbStore`], the embedded implementation on one redb file.
//!
//! The trait is the seam for the NATS JetStream backend (issue 14): a topic maps to a subject, a
//! consumer to a durable JetStream consumer, a queue group to a shared durable.
//!
//! Model:
//! - one append-only log per topic, sequences 1, 2, … per topic;
//! - a durable consumer per (instance, subscription pattern), or per (group, pattern) for a queue
//!   group, with a position per topic and the pending (delivered, unacked) entries, each with the
//!   time it becomes deliverable again and its delivery count;
//! - after `max_deliver` deliveries without an ack a message goes to `dlq.<topic>` with the reason;
//! - retention by age and by size per topic, enforced on every write (and by [`Store::sweep`]).
//!
//! Every write is one redb transaction committed with redb's default durability (fsync before
//! `commit` returns), so a publish is answered only once it would survive a crash. Each publish is
//! its own transaction today; group commit (concurrent publishes sharing one fsync) is a later
//! optimisation behind the same trait.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use crate::policy::Grant;
use crate::topic;

/// A failure of the store itself (disk, corruption); the bus answers `INTERNAL`/`UNAVAILABLE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "store: {}", self.0)
    }
}

impl std::error::Error for StoreError {}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                Self(e.to_string())
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
    redb::CommitError
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

/// The store behind the bus. Every method that writes returns once the write is durable.
pub trait Store: Send + Sync + 'static {
    fn register(&self, reg: Registration) -> impl Future<Output = Result<()>> + Send;
    fn deregister(&self, instance: String) -> impl Future<Output = Result<bool>> + Send;
    /// The registration a session belongs to.
    fn session(&self, session: String)
    -> impl Future<Output = Result<Option<Registration>>> + Send;
    fn publish(
        &self,
        msg: NewMessage,
        now_ms: u64,
    ) -> impl Future<Output = Result<Published>> + Send;
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
}

// ------------------------------------------------------------------------------------------------
// redb
// ------------------------------------------------------------------------------------------------

/// The name of the store's file inside the data folder.
pub const FILE_NAME: &str = "bus.redb";

const TOPICS: TableDefinition<&str, &[u8]> = TableDefinition::new("topics");
const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
const IDEMPOTENCY: TableDefinition<(&str, &str), u64> = TableDefinition::new("idempotency");
const INSTANCES: TableDefinition<&str, &[u8]> = TableDefinition::new("instances");
const SESSIONS: TableDefinition<&str, &str> = TableDefinition::new("sessions");
const CONSUMERS: TableDefinition<&str, &[u8]> = TableDefinition::new("consumers");
const POSITIONS: TableDefinition<(&str, &str), u64> = TableDefinition::new("positions");
const PENDING: TableDefinition<(&str, &str, u64), &[u8]> = TableDefinition::new("pending");

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

#[derive(Clone, PartialEq, prost::Message)]
struct GrantRecord {
    #[prost(string, tag = "1")]
    topic: String,
    #[prost(bool, tag = "2")]
    subscribe: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
struct InstanceRecord {
    #[prost(string, tag = "1")]
    pool_type: String,
    #[prost(string, tag = "2")]
    image: String,
    #[prost(string, repeated, tag = "3")]
    tags: Vec<String>,
    #[prost(message, repeated, tag = "4")]
    granted: Vec<GrantRecord>,
    #[prost(string, tag = "5")]
    session: String,
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

fn decode<M: prost::Message + Default>(bytes: &[u8]) -> Result<M> {
    M::decode(bytes).map_err(|e| StoreError(format!("a record does not decode: {e}")))
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

/// The embedded store: one redb file in the data folder.
#[derive(Clone)]
pub struct RedbStore {
    db: Arc<Database>,
    retention: Retention,
}

impl RedbStore {
    /// Opens (or creates) `DIR/bus.redb`, creating the folder.
    pub fn open(dir: &Path, retention: Retention) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join(FILE_NAME);
        let db = Database::create(&path)
            .map_err(|e| StoreError(format!("cannot open {}: {e}", path.display())))?;
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
        }
        txn.commit()?;
        Ok(Self {
            db: Arc::new(db),
            retention,
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database, Retention) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let db = self.db.clone();
        let retention = self.retention;
        tokio::task::spawn_blocking(move || f(&db, retention))
            .await
            .map_err(|e| StoreError(format!("a store task failed: {e}")))?
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
                        decode::<MessageRecord>(v.value())?,
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

fn grant_record(g: &Grant) -> GrantRecord {
    GrantRecord {
        topic: g.topic.clone(),
        subscribe: g.action == crate::policy::Action::Subscribe,
    }
}

fn grant_of(r: &GrantRecord) -> Grant {
    Grant {
        topic: r.topic.clone(),
        action: if r.subscribe {
            crate::policy::Action::Subscribe
        } else {
            crate::policy::Action::Publish
        },
    }
}

fn claim_sync(
    db: &Database,
    retention: Retention,
    consumer: &str,
    holder: &str,
    now_ms: u64,
    max: usize,
) -> Result<Claimed> {
    let txn = db.begin_write()?;
    let mut out = Claimed::default();
    let config: ConsumerRecord = {
        let consumers = txn.open_table(CONSUMERS)?;
        let Some(v) = consumers.get(consumer)? else {
            return Err(StoreError(format!("no consumer `{consumer}`")));
        };
        decode(v.value())?
    };
    // Due redeliveries first, and the holder's claims still running.
    let mut held = 0usize;
    let mut due: Vec<(String, u64, PendingRecord)> = Vec::new();
    {
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
                out.next_wake_ms = Some(
                    out.next_wake_ms
                        .map_or(p.available_at_ms, |w| w.min(p.available_at_ms)),
                );
            }
        }
    }
    let mut room = max.saturating_sub(held);
    let deadline = now_ms + config.ack_deadline_ms;
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
                let last = if p.last == "nacked" {
                    "the last delivery was nacked".to_owned()
                } else {
                    format!(
                        "the last delivery was not acked within its ack deadline of {} ms",
                        config.ack_deadline_ms
                    )
                };
                let reason = format!(
                    "delivered {} times (max_deliver {}) without an ack; {last}",
                    p.deliveries, config.max_deliver
                );
                dead.push((t, seq, record, reason));
                continue;
            }
            if room == 0 {
                out.next_wake_ms = Some(now_ms);
                continue;
            }
            room -= 1;
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
            &txn,
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
    if !out.deliveries.is_empty() || out.dead_lettered > 0 {
        out.next_wake_ms = Some(out.next_wake_ms.map_or(deadline, |w| w.min(deadline)));
        txn.commit()?;
    } else {
        txn.abort()?;
    }
    Ok(out)
}

impl Store for RedbStore {
    async fn register(&self, reg: Registration) -> Result<()> {
        self.blocking(move |db, _| {
            let txn = db.begin_write()?;
            {
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
                    pool_type: reg.pool_type,
                    image: reg.image,
                    tags: reg.tags,
                    granted: reg.granted.iter().map(grant_record).collect(),
                    session: reg.session.clone(),
                };
                instances.insert(reg.instance.as_str(), record.encode_to_vec().as_slice())?;
                sessions.insert(reg.session.as_str(), reg.instance.as_str())?;
            }
            txn.commit()?;
            Ok(())
        })
        .await
    }

    async fn deregister(&self, instance: String) -> Result<bool> {
        self.blocking(move |db, _| {
            let txn = db.begin_write()?;
            let found = {
                let mut instances = txn.open_table(INSTANCES)?;
                let mut sessions = txn.open_table(SESSIONS)?;
                let old = instances
                    .remove(instance.as_str())?
                    .map(|v| decode::<InstanceRecord>(v.value()))
                    .transpose()?;
                match old {
                    Some(old) => {
                        sessions.remove(old.session.as_str())?;
                        true
                    }
                    None => false,
                }
            };
            txn.commit()?;
            Ok(found)
        })
        .await
    }

    async fn session(&self, session: String) -> Result<Option<Registration>> {
        self.blocking(move |db, _| {
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
    }

    async fn publish(&self, msg: NewMessage, now_ms: u64) -> Result<Published> {
        self.blocking(move |db, retention| {
            let txn = db.begin_write()?;
            if !msg.idempotency_key.is_empty() {
                let idem = txn.open_table(IDEMPOTENCY)?;
                if let Some(seq) = idem.get((msg.topic.as_str(), msg.idempotency_key.as_str()))? {
                    return Ok(Published {
                        sequence: seq.value(),
                        duplicate: true,
                    });
                }
            }
            let record = MessageRecord {
                time_ms: now_ms,
                headers: msg.headers,
                data: msg.data,
                idempotency_key: msg.idempotency_key,
            };
            let sequence = append(&txn, &msg.topic, &record, retention, now_ms)?;
            txn.commit()?;
            Ok(Published {
                sequence,
                duplicate: false,
            })
        })
        .await
    }

    async fn open_consumer(&self, name: String, config: ConsumerConfig) -> Result<()> {
        self.blocking(move |db, _| {
            let record = ConsumerRecord {
                pattern: config.pattern,
                ack_deadline_ms: config.ack_deadline.as_millis() as u64,
                max_deliver: config.max_deliver,
            };
            let txn = db.begin_write()?;
            {
                let mut consumers = txn.open_table(CONSUMERS)?;
                let same = consumers
                    .get(name.as_str())?
                    .is_some_and(|v| v.value() == record.encode_to_vec().as_slice());
                if same {
                    drop(consumers);
                    txn.abort()?;
                    return Ok(());
                }
                consumers.insert(name.as_str(), record.encode_to_vec().as_slice())?;
            }
            txn.commit()?;
            Ok(())
        })
        .await
    }

    async fn claim(
        &self,
        consumer: String,
        holder: String,
        now_ms: u64,
        max: usize,
    ) -> Result<Claimed> {
        self.blocking(move |db, retention| {
            claim_sync(db, retention, &consumer, &holder, now_ms, max)
        })
        .await
    }

    async fn ack(&self, ids: Vec<String>) -> Result<u32> {
        self.blocking(move |db, _| {
            let txn = db.begin_write()?;
            let mut acked = 0;
            {
                let mut pending = txn.open_table(PENDING)?;
                for id in &ids {
                    if let Some(key) = parse_delivery_id(id)
                        && pending.remove(key)?.is_some()
                    {
                        acked += 1;
                    }
                }
            }
            txn.commit()?;
            Ok(acked)
        })
        .await
    }

    async fn nack(&self, id: String, available_at_ms: u64) -> Result<bool> {
        self.blocking(move |db, _| {
            let Some(key) = parse_delivery_id(&id) else {
                return Ok(false);
            };
            let txn = db.begin_write()?;
            let found = {
                let mut pending = txn.open_table(PENDING)?;
                let p = pending
                    .get(key)?
                    .map(|v| decode::<PendingRecord>(v.value()))
                    .transpose()?;
                match p {
                    Some(mut p) => {
                        p.available_at_ms = available_at_ms;
                        p.last = "nacked".into();
                        // Given back: a later Release by the same holder leaves it (and its
                        // count) alone.
                        p.holder.clear();
                        pending.insert(key, p.encode_to_vec().as_slice())?;
                        true
                    }
                    None => false,
                }
            };
            txn.commit()?;
            Ok(found)
        })
        .await
    }

    async fn release(&self, holder: String, ids: Vec<String>) -> Result<u32> {
        self.blocking(move |db, _| {
            let txn = db.begin_write()?;
            let mut released = 0;
            {
                let mut pending = txn.open_table(PENDING)?;
                let mut changed: Vec<((String, String, u64), PendingRecord)> = Vec::new();
                if ids.is_empty() {
                    for entry in pending.iter()? {
                        let (k, v) = entry?;
                        let p: PendingRecord = decode(v.value())?;
                        if p.holder == holder && p.available_at_ms > 0 {
                            let (c, t, s) = k.value();
                            changed.push(((c.to_owned(), t.to_owned(), s), p));
                        }
                    }
                } else {
                    for id in &ids {
                        let Some((c, t, s)) = parse_delivery_id(id) else {
                            continue;
                        };
                        if let Some(v) = pending.get((c, t, s))? {
                            let p: PendingRecord = decode(v.value())?;
                            if p.holder == holder {
                                changed.push(((c.to_owned(), t.to_owned(), s), p));
                            }
                        }
                    }
                }
                for ((c, t, s), mut p) in changed {
                    p.available_at_ms = 0;
                    p.deliveries = p.deliveries.saturating_sub(1);
                    p.holder.clear();
                    pending.insert((c.as_str(), t.as_str(), s), p.encode_to_vec().as_slice())?;
                    released += 1;
                }
            }
            txn.commit()?;
            Ok(released)
        })
        .await
    }

    async fn sweep(&self, now_ms: u64) -> Result<u64> {
        self.blocking(move |db, retention| {
            let txn = db.begin_write()?;
            let mut dropped = 0;
            {
                let names: Vec<String> = {
                    let topics = txn.open_table(TOPICS)?;
                    let mut v = Vec::new();
                    for e in topics.iter()? {
                        v.push(e?.0.value().to_owned());
                    }
                    v
                };
                let mut topics = txn.open_table(TOPICS)?;
                for t in names {
                    let mut meta: TopicRecord = match topics.get(t.as_str())? {
                        Some(v) => decode(v.value())?,
                        None => continue,
                    };
                    let n = enforce(&txn, &t, &mut meta, retention, now_ms)?;
                    if n > 0 {
                        topics.insert(t.as_str(), meta.encode_to_vec().as_slice())?;
                        dropped += n;
                    }
                }
            }
            if dropped > 0 {
                txn.commit()?;
            } else {
                txn.abort()?;
            }
            Ok(dropped)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
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
}
