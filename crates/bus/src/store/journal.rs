//! The store's journal (`bus.journal` beside `bus.redb`): a write-ahead log that makes a commit
//! durable with one append and one `fdatasync`, instead of a durable redb commit (several
//! scattered page writes, an fsync, a header). Used in [`SyncMode::Always`](super::SyncMode).
//!
//! Every transaction the committer runs is committed to redb without an fsync, then its writes
//! (the [`Op`]s that changed something, in order) are appended here as one record; a write that
//! must be durable before its answer waits for the record's sync. Every so often a
//! *checkpoint* makes redb durable (one durable commit, which also records the last record it
//! holds) and the journal starts again from its beginning. Opening the store replays the
//! records after the last checkpoint through the same code that ran them, in the same order:
//! each write is deterministic given the store before it (its times travel in the op).
//!
//! A record: `len: u32, crc: u32, seq: u64, payload: [u8; len]` (little-endian; the CRC-32
//! covers `seq` and the payload). Sequences follow each other without a gap. Reading stops at
//! the first record that is torn (short, or its CRC does not match) or out of sequence, which is
//! where the last sync ended: after a restart from the beginning the file still holds older
//! records past the newer ones, and theirs are lower sequences. The file is overwritten in place
//! (the blocks it once grew to are reused), so most syncs change no file size or block map and
//! cost one data write.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use prost::Message as _;

use super::{
    ConsumerConfig, ConsumerRecord, InstanceRecord, NewMessage, Op, Registration, Result,
    Retention, StoreError, grant_of,
};

/// The name of the journal inside the data folder.
pub const FILE_NAME: &str = "bus.journal";

const HEADER: usize = 16;

/// A record larger than this is taken as garbage (a torn length): the largest batch of
/// publishes the bus takes is far smaller.
const MAX_RECORD: usize = 1 << 30;

/// A record read back.
pub(super) struct Record {
    pub(super) seq: u64,
    pub(super) ops: Vec<Op>,
    /// The retention the writes ran under (replayed under it: what a publish or a claim drops
    /// depends on it, and the flags may differ at the next start).
    pub(super) retention: Retention,
}

/// The journal: appended to by the committer thread alone.
pub(super) struct Journal {
    file: File,
    path: PathBuf,
    /// Where the buffered records go: the end of what this round wrote.
    end: u64,
    /// Records appended and not yet written.
    buf: Vec<u8>,
    /// The sequence of the last record appended.
    last: u64,
    /// A write or sync failed: what the file holds past `end` is unknown, so only a checkpoint
    /// (which makes redb durable and starts the journal again) makes anything durable now.
    broken: bool,
}

impl Journal {
    /// Opens (or creates) the journal at `path` and reads the records after `applied` (the
    /// last one the store's durable state holds): it answers them, in order, to be replayed,
    /// and the journal, whose next record follows the last one read.
    pub(super) fn open(path: &Path, applied: u64) -> Result<(Self, Vec<Record>)> {
        let io = |what: &str, e: std::io::Error| {
            StoreError::new(format!("cannot {what} {}: {e}", path.display()))
        };
        let created = !path.exists();
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| io("open", e))?;
        if created {
            // The file's name must survive a power cut as its records do.
            let dir = path.parent().unwrap_or(Path::new("."));
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io("sync the folder of", e))?;
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(|e| io("read", e))?;
        let mut replay = Vec::new();
        let mut last = applied;
        for (seq, payload) in records(&bytes) {
            if seq <= applied {
                continue;
            }
            if seq != last + 1 {
                // A record that does not follow the store's state: the rest is not ours to
                // apply. Only a journal from another store could start like this.
                return Err(StoreError::new(format!(
                    "{} does not follow {}: its record {seq} comes after {last}; move it aside to open the store as it was last made durable",
                    path.display(),
                    super::FILE_NAME
                )));
            }
            let (ops, retention) = decode_ops(payload).map_err(|e| {
                StoreError::new(format!(
                    "{}: record {seq} does not decode ({}): was it written by a newer tether?",
                    path.display(),
                    e.message
                ))
            })?;
            replay.push(Record {
                seq,
                ops,
                retention,
            });
            last = seq;
        }
        let journal = Self {
            file,
            path: path.to_owned(),
            end: 0,
            buf: Vec::new(),
            last,
            broken: false,
        };
        Ok((journal, replay))
    }

    /// The sequence of the last record appended.
    pub(super) fn last(&self) -> u64 {
        self.last
    }

    /// Bytes appended since the last checkpoint.
    pub(super) fn len(&self) -> u64 {
        self.end + self.buf.len() as u64
    }

    pub(super) fn broken(&self) -> bool {
        self.broken
    }

    /// Appends a record of `ops`, run under `retention` (written at the next
    /// [`sync`](Self::sync)).
    pub(super) fn append<'a>(
        &mut self,
        ops: impl IntoIterator<Item = &'a Op>,
        retention: Retention,
    ) {
        self.last += 1;
        if self.broken {
            // Only a checkpoint makes anything durable now, and it covers this record.
            return;
        }
        let payload = encode_ops(ops, retention);
        if payload.len() > MAX_RECORD {
            // It could not be read back: let a checkpoint make it durable instead.
            self.broken = true;
            self.buf.clear();
            return;
        }
        let seq = self.last.to_le_bytes();
        let crc = checksum(&seq, &payload);
        self.buf
            .extend_from_slice(&(payload.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(&crc.to_le_bytes());
        self.buf.extend_from_slice(&seq);
        self.buf.extend_from_slice(&payload);
    }

    /// Writes what was appended and waits until it is on disk.
    pub(super) fn sync(&mut self) -> Result<()> {
        if self.broken {
            return Err(StoreError::new(format!(
                "{} failed earlier and waits for a checkpoint",
                self.path.display()
            )));
        }
        let result = self
            .file
            .write_all_at(&self.buf, self.end)
            .and_then(|()| self.file.sync_data());
        match result {
            Ok(()) => {
                self.end += self.buf.len() as u64;
                self.buf.clear();
                Ok(())
            }
            Err(e) => {
                self.broken = true;
                self.buf.clear();
                Err(StoreError::new(format!(
                    "cannot write {}: {e}",
                    self.path.display()
                )))
            }
        }
    }

    /// The store's durable state now holds every record appended: start again from the
    /// beginning of the file.
    pub(super) fn restart(&mut self) {
        self.end = 0;
        self.buf.clear();
        self.broken = false;
    }

    /// Empties the file, once the store's durable state holds every record in it (after a
    /// start). Records past a torn one may be left from before a crash, with sequences the
    /// next round will use again: they must not be read after a later crash.
    pub(super) fn clear(&mut self) -> Result<()> {
        self.restart();
        self.file
            .set_len(0)
            .and_then(|()| self.file.sync_all())
            .map_err(|e| StoreError::new(format!("cannot empty {}: {e}", self.path.display())))
    }
}

/// The CRC-32 of a record's sequence and payload.
fn checksum(seq: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(seq);
    h.update(payload);
    h.finalize()
}

/// The records of `bytes` from its start, up to the first torn one or the first out of
/// sequence (where the last sync ended).
fn records(bytes: &[u8]) -> Vec<(u64, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    let mut previous: Option<u64> = None;
    while bytes.len() - at >= HEADER {
        let word = |i: usize| u32::from_le_bytes(bytes[at + i..at + i + 4].try_into().unwrap());
        let len = word(0) as usize;
        let crc = word(4);
        let seq_bytes = &bytes[at + 8..at + 16];
        let seq = u64::from_le_bytes(seq_bytes.try_into().unwrap());
        if len > MAX_RECORD || bytes.len() - at - HEADER < len {
            break;
        }
        let payload = &bytes[at + HEADER..at + HEADER + len];
        if checksum(seq_bytes, payload) != crc {
            break;
        }
        if previous.is_some_and(|p| seq != p + 1) {
            break;
        }
        previous = Some(seq);
        out.push((seq, payload));
        at += HEADER + len;
    }
    out
}

// ------------------------------------------------------------------------------------------------
// Ops as records
// ------------------------------------------------------------------------------------------------

#[derive(Clone, PartialEq, prost::Message)]
struct EntryRecord {
    #[prost(message, repeated, tag = "1")]
    ops: Vec<OpRecord>,
    #[prost(uint64, tag = "2")]
    max_age_ms: u64,
    #[prost(uint64, tag = "3")]
    max_bytes: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct OpRecord {
    #[prost(oneof = "Kind", tags = "1, 2, 3, 4, 5, 6, 7, 8, 9")]
    kind: Option<Kind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum Kind {
    #[prost(message, tag = "1")]
    Register(RegisterRecord),
    #[prost(string, tag = "2")]
    Deregister(String),
    #[prost(message, tag = "3")]
    Publish(PublishRecord),
    #[prost(message, tag = "4")]
    OpenConsumer(OpenConsumerRecord),
    #[prost(message, tag = "5")]
    Claim(ClaimRecord),
    #[prost(message, tag = "6")]
    Ack(IdsRecord),
    #[prost(message, tag = "7")]
    Nack(NackRecord),
    #[prost(message, tag = "8")]
    Release(IdsRecord),
    #[prost(uint64, tag = "9")]
    Sweep(u64),
}

#[derive(Clone, PartialEq, prost::Message)]
struct RegisterRecord {
    #[prost(string, tag = "1")]
    instance: String,
    #[prost(message, optional, tag = "2")]
    record: Option<InstanceRecord>,
}

/// One publish or several: replayed as several (the store's effect is the same).
#[derive(Clone, PartialEq, prost::Message)]
struct PublishRecord {
    #[prost(message, repeated, tag = "1")]
    messages: Vec<NewMessageRecord>,
    #[prost(uint64, tag = "2")]
    now_ms: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct NewMessageRecord {
    #[prost(string, tag = "1")]
    topic: String,
    #[prost(bytes = "vec", tag = "2")]
    data: Vec<u8>,
    #[prost(btree_map = "string, string", tag = "3")]
    headers: BTreeMap<String, String>,
    #[prost(string, tag = "4")]
    idempotency_key: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct OpenConsumerRecord {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "2")]
    config: Option<ConsumerRecord>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ClaimRecord {
    #[prost(string, tag = "1")]
    consumer: String,
    #[prost(string, tag = "2")]
    holder: String,
    #[prost(uint64, tag = "3")]
    now_ms: u64,
    #[prost(uint64, tag = "4")]
    max: u64,
}

/// An ack's ids, or a release's holder and ids.
#[derive(Clone, PartialEq, prost::Message)]
struct IdsRecord {
    #[prost(string, tag = "1")]
    holder: String,
    #[prost(string, repeated, tag = "2")]
    ids: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct NackRecord {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(uint64, tag = "2")]
    available_at_ms: u64,
}

fn message_record(m: &NewMessage) -> NewMessageRecord {
    NewMessageRecord {
        topic: m.topic.clone(),
        data: m.data.clone(),
        headers: m.headers.clone(),
        idempotency_key: m.idempotency_key.clone(),
    }
}

fn encode_ops<'a>(ops: impl IntoIterator<Item = &'a Op>, retention: Retention) -> Vec<u8> {
    let ops = ops
        .into_iter()
        .filter_map(|op| {
            let kind = match op {
                Op::Register(reg) => Kind::Register(RegisterRecord {
                    instance: reg.instance.clone(),
                    record: Some(InstanceRecord {
                        pool_type: reg.pool_type.clone(),
                        image: reg.image.clone(),
                        tags: reg.tags.clone(),
                        granted: reg.granted.iter().map(super::grant_record).collect(),
                        session: reg.session.clone(),
                    }),
                }),
                Op::Deregister(instance) => Kind::Deregister(instance.clone()),
                Op::Publish(msg, now_ms) => Kind::Publish(PublishRecord {
                    messages: vec![message_record(msg)],
                    now_ms: *now_ms,
                }),
                Op::PublishMany(msgs, now_ms) => Kind::Publish(PublishRecord {
                    messages: msgs.iter().map(message_record).collect(),
                    now_ms: *now_ms,
                }),
                Op::OpenConsumer(name, config) => Kind::OpenConsumer(OpenConsumerRecord {
                    name: name.clone(),
                    config: Some(ConsumerRecord {
                        pattern: config.pattern.clone(),
                        ack_deadline_ms: config.ack_deadline.as_millis() as u64,
                        max_deliver: config.max_deliver,
                    }),
                }),
                Op::Claim {
                    consumer,
                    holder,
                    now_ms,
                    max,
                } => Kind::Claim(ClaimRecord {
                    consumer: consumer.clone(),
                    holder: holder.clone(),
                    now_ms: *now_ms,
                    max: *max as u64,
                }),
                Op::Ack(ids) => Kind::Ack(IdsRecord {
                    holder: String::new(),
                    ids: ids.clone(),
                }),
                Op::Nack(id, available_at_ms) => Kind::Nack(NackRecord {
                    id: id.clone(),
                    available_at_ms: *available_at_ms,
                }),
                Op::Release(holder, ids) => Kind::Release(IdsRecord {
                    holder: holder.clone(),
                    ids: ids.clone(),
                }),
                Op::Sweep(now_ms) => Kind::Sweep(*now_ms),
                // Write nothing.
                Op::Flush | Op::Checkpoint => return None,
            };
            Some(OpRecord { kind: Some(kind) })
        })
        .collect();
    EntryRecord {
        ops,
        max_age_ms: retention.max_age.as_millis() as u64,
        max_bytes: retention.max_bytes,
    }
    .encode_to_vec()
}

fn decode_ops(payload: &[u8]) -> Result<(Vec<Op>, Retention)> {
    let entry: EntryRecord = super::decode(payload)?;
    let retention = Retention {
        max_age: std::time::Duration::from_millis(entry.max_age_ms),
        max_bytes: entry.max_bytes,
    };
    let ops = entry
        .ops
        .into_iter()
        .map(|op| {
            let missing = || StoreError::new("a journal op without its fields");
            Ok(match op.kind.ok_or_else(missing)? {
                Kind::Register(r) => {
                    let record = r.record.ok_or_else(missing)?;
                    Op::Register(Registration {
                        instance: r.instance,
                        pool_type: record.pool_type,
                        image: record.image,
                        tags: record.tags,
                        granted: record.granted.iter().map(grant_of).collect(),
                        session: record.session,
                    })
                }
                Kind::Deregister(instance) => Op::Deregister(instance),
                Kind::Publish(p) => Op::PublishMany(
                    p.messages
                        .into_iter()
                        .map(|m| NewMessage {
                            topic: m.topic,
                            data: m.data,
                            headers: m.headers,
                            idempotency_key: m.idempotency_key,
                        })
                        .collect(),
                    p.now_ms,
                ),
                Kind::OpenConsumer(c) => {
                    let config = c.config.ok_or_else(missing)?;
                    Op::OpenConsumer(
                        c.name,
                        ConsumerConfig {
                            pattern: config.pattern,
                            ack_deadline: std::time::Duration::from_millis(config.ack_deadline_ms),
                            max_deliver: config.max_deliver,
                        },
                    )
                }
                Kind::Claim(c) => Op::Claim {
                    consumer: c.consumer,
                    holder: c.holder,
                    now_ms: c.now_ms,
                    max: c.max as usize,
                },
                Kind::Ack(a) => Op::Ack(a.ids),
                Kind::Nack(n) => Op::Nack(n.id, n.available_at_ms),
                Kind::Release(r) => Op::Release(r.holder, r.ids),
                Kind::Sweep(now_ms) => Op::Sweep(now_ms),
            })
        })
        .collect::<Result<_>>()?;
    Ok((ops, retention))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(topic: &str) -> Op {
        Op::Publish(
            NewMessage {
                topic: topic.into(),
                data: b"data".to_vec(),
                headers: BTreeMap::from([("h".into(), "v".into())]),
                idempotency_key: "k".into(),
            },
            7,
        )
    }

    fn topics(replay: &[Record]) -> Vec<(u64, String)> {
        replay
            .iter()
            .flat_map(|r| {
                assert_eq!(r.retention, RETENTION);
                r.ops.iter().map(move |op| match op {
                    Op::PublishMany(m, 7) => (r.seq, m[0].topic.clone()),
                    _ => panic!("not a publish"),
                })
            })
            .collect()
    }

    /// A new journal at `path` with the publishes `a.1`, `a.2` and `a.3` synced, as records 1-3.
    fn three_synced(path: &Path) -> Journal {
        let (mut j, _) = Journal::open(path, 0).unwrap();
        for t in ["a.1", "a.2", "a.3"] {
            j.append([&publish(t)], RETENTION);
        }
        j.sync().unwrap();
        j
    }

    const RETENTION: Retention = Retention {
        max_age: std::time::Duration::from_secs(60),
        max_bytes: 1000,
    };

    /// Synced records come back in order; one appended and not synced does not.
    #[test]
    fn synced_records_are_read_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let (mut j, replay) = Journal::open(&path, 0).unwrap();
        assert!(replay.is_empty());
        j.append([&publish("a.1")], RETENTION);
        j.append([&publish("a.2")], RETENTION);
        j.sync().unwrap();
        j.append([&publish("a.3")], RETENTION);
        drop(j);
        let (j, replay) = Journal::open(&path, 0).unwrap();
        assert_eq!(
            topics(&replay),
            [(1, "a.1".to_owned()), (2, "a.2".to_owned())]
        );
        assert_eq!(j.last(), 2);
        // The store already holds record 1.
        let (_, replay) = Journal::open(&path, 1).unwrap();
        assert_eq!(topics(&replay), [(2, "a.2".to_owned())]);
    }

    /// A record cut short by a crash, or one whose bytes changed, ends what is read.
    #[test]
    fn reading_stops_at_a_torn_or_damaged_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        three_synced(&path);
        let full = std::fs::read(&path).unwrap();
        let one = full.len() / 3;

        std::fs::write(&path, &full[..full.len() - 1]).unwrap();
        let (_, replay) = Journal::open(&path, 0).unwrap();
        assert_eq!(topics(&replay).len(), 2);

        let mut damaged = full.clone();
        damaged[one + HEADER + 3] ^= 1;
        std::fs::write(&path, &damaged).unwrap();
        let (_, replay) = Journal::open(&path, 0).unwrap();
        assert_eq!(topics(&replay), [(1, "a.1".to_owned())]);
    }

    /// After a checkpoint the journal is written again from its start: the older records
    /// left past the newer ones are not read as newer.
    #[test]
    fn older_records_past_a_restart_are_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let mut j = three_synced(&path);
        // The store made records 1-3 durable.
        j.restart();
        j.append([&publish("b.4")], RETENTION);
        j.sync().unwrap();
        drop(j);
        let (j, replay) = Journal::open(&path, 3).unwrap();
        assert_eq!(topics(&replay), [(4, "b.4".to_owned())]);
        assert_eq!(j.last(), 4);
        // The store's state is older than the journal's first record: refused by name.
        let e = Journal::open(&path, 2).map(|_| ()).unwrap_err();
        assert!(
            e.message.contains("its record 4 comes after 2"),
            "{}",
            e.message
        );
    }

    /// A start empties the journal once the store holds it: records past a torn one, left
    /// from before a crash, would otherwise follow the next round's records of the same
    /// sequences and be read after a later crash.
    #[test]
    fn records_left_past_a_torn_one_are_not_read_after_a_later_crash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let (mut j, _) = Journal::open(&path, 0).unwrap();
        j.append([&publish("a.1")], RETENTION);
        j.append([&publish("a.2")], RETENTION);
        j.sync().unwrap();
        drop(j);
        // The disk kept record 2's block, not record 1's.
        let mut torn = std::fs::read(&path).unwrap();
        torn[HEADER + 1] ^= 1;
        std::fs::write(&path, &torn).unwrap();
        let (mut j, replay) = Journal::open(&path, 0).unwrap();
        assert!(replay.is_empty());
        j.clear().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        // The next round's record 1, as long as the lost one; then a crash.
        j.append([&publish("b.1")], RETENTION);
        j.sync().unwrap();
        drop(j);
        let (_, replay) = Journal::open(&path, 0).unwrap();
        assert_eq!(topics(&replay), [(1, "b.1".to_owned())]);
    }

    /// Every write round-trips through its record.
    #[test]
    fn ops_round_trip() {
        let ops = vec![
            Op::Register(Registration {
                instance: "i".into(),
                pool_type: "P".into(),
                image: "img".into(),
                tags: vec!["t".into()],
                granted: vec![crate::policy::Grant {
                    topic: "a.>".into(),
                    action: crate::policy::Action::Subscribe,
                }],
                session: "s".into(),
            }),
            Op::Deregister("i".into()),
            Op::PublishMany(vec![NewMessage::default()], 3),
            Op::OpenConsumer(
                "c".into(),
                ConsumerConfig {
                    pattern: "a.*".into(),
                    ack_deadline: std::time::Duration::from_millis(1500),
                    max_deliver: 4,
                },
            ),
            Op::Claim {
                consumer: "c".into(),
                holder: "h".into(),
                now_ms: 9,
                max: 10,
            },
            Op::Ack(vec!["1 a.b c".into()]),
            Op::Nack("1 a.b c".into(), 11),
            Op::Release("h".into(), vec![]),
            Op::Sweep(12),
        ];
        let (back, retention) = decode_ops(&encode_ops(&ops, RETENTION)).unwrap();
        assert_eq!(format!("{back:?}"), format!("{ops:?}"));
        assert_eq!(retention, RETENTION);
    }
}
