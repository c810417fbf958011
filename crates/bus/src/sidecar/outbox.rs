//! The sidecar's durable outbox: publishes accepted while the bus cannot take them, kept in
//! order on disk (redb, one fsync per append) until they are forwarded.
//!
//! Each entry is a `PublishRequest` with its idempotency key, so forwarding an entry twice (a
//! crash between the bus's answer and the removal here) stores it once on the bus.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use prost::Message as _;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use tether_bus_proto::v1::PublishRequest;

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");

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

/// The outbox at `DATA_DIR/outbox.redb`.
#[derive(Clone)]
pub struct Outbox {
    db: Arc<Database>,
    totals: Arc<Mutex<Totals>>,
    limit: u64,
    path: PathBuf,
}

impl Outbox {
    /// Opens (or creates) the outbox in `dir`, and counts what a previous run left in it.
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
        Ok(Self {
            db: Arc::new(db),
            totals: Arc::new(Mutex::new(Totals { next, bytes, count })),
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
        let key = {
            let mut t = self.totals.lock().expect("outbox totals");
            if t.bytes + size > self.limit {
                return Err(OutboxError::Full { limit: self.limit });
            }
            // Reserved now so that concurrent pushes keep their order and the limit.
            t.bytes += size;
            t.count += 1;
            t.next += 1;
            t.next - 1
        };
        let db = self.db.clone();
        let written = tokio::task::spawn_blocking(move || -> Result<(), OutboxError> {
            let txn = db.begin_write().map_err(store)?;
            {
                let mut table = txn.open_table(ENTRIES).map_err(store)?;
                table.insert(key, bytes.as_slice()).map_err(store)?;
            }
            txn.commit().map_err(store)
        })
        .await
        .map_err(store)
        .and_then(|r| r);
        if let Err(e) = written {
            let mut t = self.totals.lock().expect("outbox totals");
            t.bytes -= size;
            t.count -= 1;
            return Err(e);
        }
        Ok(key)
    }

    /// The oldest entry, if any.
    pub async fn first(&self) -> Result<Option<(u64, PublishRequest)>, OutboxError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let read = db.begin_read().map_err(store)?;
            let table = read.open_table(ENTRIES).map_err(store)?;
            let Some((k, v)) = table.first().map_err(store)? else {
                return Ok(None);
            };
            let request = PublishRequest::decode(v.value()).map_err(store)?;
            Ok(Some((k.value(), request)))
        })
        .await
        .map_err(store)?
    }

    /// Removes an entry once the bus has it.
    pub async fn remove(&self, key: u64) -> Result<(), OutboxError> {
        let db = self.db.clone();
        let removed = tokio::task::spawn_blocking(move || -> Result<u64, OutboxError> {
            let txn = db.begin_write().map_err(store)?;
            let size = {
                let mut table = txn.open_table(ENTRIES).map_err(store)?;
                let removed = table.remove(key).map_err(store)?;
                removed.map_or(0, |v| v.value().len() as u64)
            };
            txn.commit().map_err(store)?;
            Ok(size)
        })
        .await
        .map_err(store)??;
        if removed > 0 {
            let mut t = self.totals.lock().expect("outbox totals");
            t.bytes -= removed;
            t.count -= 1;
        }
        Ok(())
    }
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
        let (k, first) = outbox.first().await.unwrap().unwrap();
        assert_eq!((k, first.idempotency_key.as_str()), (1, "k1"));
        outbox.remove(k).await.unwrap();
        assert_eq!(outbox.push(&request("a.b", "k3")).await.unwrap(), 3);
        let (k, second) = outbox.first().await.unwrap().unwrap();
        assert_eq!((k, second.idempotency_key.as_str()), (2, "k2"));
        outbox.remove(2).await.unwrap();
        outbox.remove(3).await.unwrap();
        assert!(outbox.is_empty());
        assert_eq!(outbox.first().await.unwrap(), None);
    }
}
