//! The sidecar's durable outbox: publishes accepted while the bus cannot take them, kept in
//! order on disk (redb) until they are forwarded.
//!
//! Group commit: one committer thread owns the write transactions. It takes every write
//! waiting (up to [`MAX_BATCH`]), runs them in one redb transaction and commits once, so
//! concurrent pushes share one fsync; a push is answered only once the commit that holds it is
//! durable. Removals of forwarded entries ask for no fsync of their own: they are committed
//! without one ([`Durability::None`]) and made durable by the next push's commit, or by the
//! committer at least every [`SYNC_EVERY`]. A removal lost to a crash only means that entry is
//! forwarded again, with the same idempotency key, and the bus stores it once.
//!
//! Each entry is a `PublishRequest` with its idempotency key (the router fills one in when the
//! plugin gave none), so forwarding an entry twice stores it once on the bus.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use prost::Message as _;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use tether_bus_proto::v1::PublishRequest;
use tokio::sync::oneshot;

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");

/// The most writes one transaction takes.
const MAX_BATCH: usize = 1024;

/// Removals committed without an fsync are made durable at least this often.
const SYNC_EVERY: Duration = Duration::from_secs(1);

/// Why the outbox cannot take or give an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxError {
    /// Taking the entry would pass the size limit.
    Full { limit: u64 },
    /// The store failed (disk, corruption).
    Store(String),
}

impl std::fmt::Display for OutboxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Full { limit } => write!(
                f,
                "the outbox is full ({limit} bytes, the sidecar config's outbox_size) while the bus is unreachable"
            ),
            Self::Store(e) => write!(f, "the outbox's store failed: {e}"),
        }
    }
}

impl std::error::Error for OutboxError {}

fn store<E: std::fmt::Display>(e: E) -> OutboxError {
    OutboxError::Store(e.to_string())
}

struct Totals {
    next: u64,
    bytes: u64,
    count: u64,
}

/// One write, as the committer runs it.
enum Op {
    Push(u64, Vec<u8>),
    Remove(Vec<u64>),
}

struct Job {
    op: Op,
    /// The entries and bytes removed (none for a push).
    reply: oneshot::Sender<Result<(u64, u64), OutboxError>>,
}

/// The outbox at `DATA_DIR/outbox.redb`.
#[derive(Clone)]
pub struct Outbox {
    db: Arc<Database>,
    totals: Arc<Mutex<Totals>>,
    committer: Arc<Committer>,
    limit: u64,
    path: PathBuf,
}

impl Outbox {
    /// Opens (or creates) the outbox in `dir`, counts what a previous run left in it, and
    /// starts its committer thread (which ends when the last handle is dropped).
    pub fn open(dir: &Path, limit: u64) -> Result<Self, OutboxError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| OutboxError::Store(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join("outbox.redb");
        // It is read only to forward what waits in it, oldest first: a small cache serves that
        // (redb's default is 1 GiB).
        let db = Database::builder()
            .set_cache_size(1 << 20)
            .create(&path)
            .map_err(|e| OutboxError::Store(format!("cannot open {}: {e}", path.display())))?;
        let txn = db.begin_write().map_err(store)?;
        txn.open_table(ENTRIES).map_err(store)?;
        txn.commit().map_err(store)?;
        let (mut next, mut bytes, mut count) = (1, 0, 0);
        {
            let read = db.begin_read().map_err(store)?;
            let table = read.open_table(ENTRIES).map_err(store)?;
            for entry in table.iter().map_err(store)? {
                let (k, v) = entry.map_err(store)?;
                next = k.value() + 1;
                bytes += v.value().len() as u64;
                count += 1;
            }
            debug_assert_eq!(count, table.len().unwrap_or(count));
        }
        let db = Arc::new(db);
        let (jobs, rx) = mpsc::channel();
        let thread_db = db.clone();
        let thread = std::thread::Builder::new()
            .name("outbox-commit".into())
            .spawn(move || commit_loop(&thread_db, &rx))
            .map_err(|e| OutboxError::Store(format!("cannot start the committer thread: {e}")))?;
        Ok(Self {
            db,
            totals: Arc::new(Mutex::new(Totals { next, bytes, count })),
            committer: Arc::new(Committer {
                jobs: Some(jobs),
                thread: Some(thread),
            }),
            limit,
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Entries waiting.
    pub fn len(&self) -> u64 {
        self.totals.lock().expect("outbox totals").count
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends a publish; returns once it is durable.
    pub async fn push(&self, request: &PublishRequest) -> Result<u64, OutboxError> {
        let bytes = request.encode_to_vec();
        let size = bytes.len() as u64;
        let (reply, answer) = oneshot::channel();
        let key = {
            let mut t = self.totals.lock().expect("outbox totals");
            if t.bytes + size > self.limit {
                return Err(OutboxError::Full { limit: self.limit });
            }
            // Reserved now so that concurrent pushes keep their order and the limit.
            let key = t.next;
            self.committer.send(Job {
                op: Op::Push(key, bytes),
                reply,
            })?;
            t.bytes += size;
            t.count += 1;
            t.next += 1;
            key
        };
        let written = answer.await.unwrap_or_else(|_| {
            Err(OutboxError::Store(
                "the committer thread has stopped".into(),
            ))
        });
        if let Err(e) = written {
            let mut t = self.totals.lock().expect("outbox totals");
            t.bytes -= size;
            t.count -= 1;
            return Err(e);
        }
        Ok(key)
    }

    /// Up to `max` of the oldest entries, oldest first.
    pub async fn oldest(&self, max: usize) -> Result<Vec<(u64, PublishRequest)>, OutboxError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let read = db.begin_read().map_err(store)?;
            let table = read.open_table(ENTRIES).map_err(store)?;
            let mut out = Vec::new();
            for entry in table.iter().map_err(store)?.take(max) {
                let (k, v) = entry.map_err(store)?;
                out.push((k.value(), PublishRequest::decode(v.value()).map_err(store)?));
            }
            Ok(out)
        })
        .await
        .map_err(store)?
    }

    /// Removes entries once the bus has them; returns once the removal is committed (not
    /// necessarily durable: see the module's doc).
    pub async fn remove(&self, keys: Vec<u64>) -> Result<(), OutboxError> {
        if keys.is_empty() {
            return Ok(());
        }
        let (reply, answer) = oneshot::channel();
        self.committer.send(Job {
            op: Op::Remove(keys),
            reply,
        })?;
        let (count, bytes) = answer.await.unwrap_or_else(|_| {
            Err(OutboxError::Store(
                "the committer thread has stopped".into(),
            ))
        })?;
        let mut t = self.totals.lock().expect("outbox totals");
        t.bytes -= bytes;
        t.count -= count;
        Ok(())
    }
}

/// The committer thread's handle: the last outbox handle dropped ends the thread and waits for
/// its last commit, so that the file can be opened again at once.
struct Committer {
    /// Sent to under `totals`' lock by pushes, so that jobs arrive in key order.
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Committer {
    fn send(&self, job: Job) -> Result<(), OutboxError> {
        self.jobs
            .as_ref()
            .and_then(|j| j.send(job).ok())
            .ok_or_else(|| OutboxError::Store("the committer thread has stopped".into()))
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The committer: every job waiting in one transaction, one commit, then every answer. It
/// ends when every sender is gone, with a last durable commit of what it left unsynced.
fn commit_loop(db: &Database, rx: &mpsc::Receiver<Job>) {
    let mut unsynced_since: Option<Instant> = None;
    loop {
        let first = match unsynced_since {
            None => match rx.recv() {
                Ok(j) => Some(j),
                Err(_) => return,
            },
            Some(since) => match rx.recv_timeout(SYNC_EVERY.saturating_sub(since.elapsed())) {
                Ok(j) => Some(j),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = sync(db);
                    return;
                }
            },
        };
        let mut jobs: Vec<Job> = first.into_iter().collect();
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let pushes = jobs.iter().any(|j| matches!(j.op, Op::Push(..)));
        let durable = pushes || unsynced_since.is_some_and(|s| s.elapsed() >= SYNC_EVERY);
        let result = write(db, &jobs, durable);
        if result.is_ok() {
            if durable {
                unsynced_since = None;
            } else {
                unsynced_since.get_or_insert_with(Instant::now);
            }
        }
        match result {
            Ok(removed) => {
                for (job, r) in jobs.into_iter().zip(removed) {
                    let _ = job.reply.send(Ok(r));
                }
            }
            Err(e) => {
                for job in jobs {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// One transaction with every job; answers the entries and bytes each removed.
fn write(db: &Database, jobs: &[Job], durable: bool) -> Result<Vec<(u64, u64)>, OutboxError> {
    let mut txn = db.begin_write().map_err(store)?;
    if !durable {
        txn.set_durability(Durability::None).map_err(store)?;
    }
    let mut removed = Vec::with_capacity(jobs.len());
    {
        let mut table = txn.open_table(ENTRIES).map_err(store)?;
        for job in jobs {
            removed.push(match &job.op {
                Op::Push(key, bytes) => {
                    table.insert(*key, bytes.as_slice()).map_err(store)?;
                    (0, 0)
                }
                Op::Remove(keys) => {
                    let (mut count, mut size) = (0, 0);
                    for key in keys {
                        if let Some(v) = table.remove(*key).map_err(store)? {
                            count += 1;
                            size += v.value().len() as u64;
                        }
                    }
                    (count, size)
                }
            });
        }
    }
    txn.commit().map_err(store)?;
    Ok(removed)
}

/// An empty durable commit: what earlier commits left unsynced reaches the disk.
fn sync(db: &Database) -> Result<(), OutboxError> {
    let txn = db.begin_write().map_err(store)?;
    txn.open_table(ENTRIES).map_err(store)?;
    txn.commit().map_err(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(topic: &str, key: &str) -> PublishRequest {
        PublishRequest {
            topic: topic.into(),
            data: vec![7; 10],
            headers: Default::default(),
            idempotency_key: key.into(),
        }
    }

    #[tokio::test]
    async fn entries_survive_a_reopen_in_order_and_the_limit_holds() {
        let dir = tempfile::tempdir().unwrap();
        let one = request("a.b", "k1");
        let size = one.encoded_len() as u64;
        {
            let outbox = Outbox::open(dir.path(), size * 2).unwrap();
            assert_eq!(outbox.push(&one).await.unwrap(), 1);
            assert_eq!(outbox.push(&request("a.b", "k2")).await.unwrap(), 2);
            assert_eq!(
                outbox.push(&request("a.b", "k3")).await,
                Err(OutboxError::Full { limit: size * 2 })
            );
            assert_eq!(outbox.len(), 2);
        }
        let outbox = Outbox::open(dir.path(), size * 2).unwrap();
        assert_eq!(outbox.len(), 2);
        let keys = |v: Vec<(u64, PublishRequest)>| -> Vec<(u64, String)> {
            v.into_iter().map(|(k, r)| (k, r.idempotency_key)).collect()
        };
        assert_eq!(
            keys(outbox.oldest(1).await.unwrap()),
            [(1, "k1".to_owned())]
        );
        outbox.remove(vec![1]).await.unwrap();
        assert_eq!(outbox.push(&request("a.b", "k3")).await.unwrap(), 3);
        assert_eq!(
            keys(outbox.oldest(10).await.unwrap()),
            [(2, "k2".to_owned()), (3, "k3".to_owned())]
        );
        // A key already gone counts for nothing.
        outbox.remove(vec![1, 2, 3]).await.unwrap();
        assert!(outbox.is_empty());
        assert_eq!(outbox.oldest(10).await.unwrap(), []);
    }

    /// Concurrent pushes share commits and keep their keys' order; removals without an fsync
    /// of their own are on the disk after a reopen.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_pushes_are_all_durable_and_removals_persist() {
        let dir = tempfile::tempdir().unwrap();
        {
            let outbox = Outbox::open(dir.path(), 1 << 20).unwrap();
            let mut tasks = Vec::new();
            for i in 0..200 {
                let outbox = outbox.clone();
                tasks.push(tokio::spawn(async move {
                    outbox
                        .push(&request("a.b", &format!("k{i}")))
                        .await
                        .unwrap()
                }));
            }
            let mut keys = Vec::new();
            for t in tasks {
                keys.push(t.await.unwrap());
            }
            keys.sort_unstable();
            assert_eq!(keys, (1..=200).collect::<Vec<u64>>());
            assert_eq!(outbox.len(), 200);
            outbox.remove((1..=150).collect()).await.unwrap();
            assert_eq!(outbox.len(), 50);
        }
        // The committer made its last removal durable when the outbox was dropped.
        let outbox = Outbox::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(outbox.len(), 50);
        let first = outbox.oldest(1).await.unwrap();
        assert_eq!(first[0].0, 151);
    }
}
