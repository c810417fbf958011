//! The backends the store suite runs against.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use tether_bus::store::{RedbStore, Retention, Store, SyncMode};

/// A place to open fresh stores of one backend.
pub trait Backend {
    type S: Store;
    /// A new, empty store with this retention.
    fn open(&self, retention: Retention) -> impl Future<Output = Self::S>;
}

/// Waits for `f` at most 60 s: a case that hangs fails with a message instead.
pub async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("the case did not finish within 60 s")
}

/// The embedded store, each opened in a new folder.
pub struct RedbBackend {
    dir: tempfile::TempDir,
}

impl RedbBackend {
    pub async fn new() -> Option<Self> {
        Some(Self {
            dir: tempfile::tempdir().unwrap(),
        })
    }
}

impl Backend for RedbBackend {
    type S = RedbStore;
    async fn open(&self, retention: Retention) -> RedbStore {
        let dir = tempfile::tempdir_in(self.dir.path()).unwrap().keep();
        RedbStore::open(&dir, retention, SyncMode::Always).unwrap()
    }
}
