//! The SQLite backend: one database file, written by one writer thread
//! (group commit), read by a few reader threads, continuously backed up to
//! S3 by the replica and restored from it at launch.
//!
//! ```text
//!  open: [S3 restore if the file is missing] → Store::open → Replica::attach
//!        → uploader task (segments, snapshots) + expiry sweeper
//!  Backend calls → Store (rusqlite on its own threads, never on the runtime)
//!  shutdown: stop the sweeper, drain the outbox to S3, close the file
//! ```
//!
//! rusqlite is used only below this module (`store`), and S3 only by
//! `replica`: nothing else in sidekv knows either exists.

pub mod commands;
pub mod replica;
pub mod store;

use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;

use self::replica::{Replica, ReplicaError, ReplicaOptions};
use self::store::{Store, StoreOptions};
use super::{Backend, BackendStatus, BoxFuture, NotBackedUp, StoreFuture};
use super::{
    Change, ChangePos, Entry, Key, ListPage, ListQuery, PendingMessage, QueueMessage, QueueStats, StoreError, WriteOp, WriteResult,
};
use crate::limits;
use crate::metrics::ReplicationGauges;

/// Why the SQLite backend could not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Replica(#[from] ReplicaError),
    #[error("opening the store: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// The SQLite backend's settings: the file, the store, and the backup.
#[derive(Clone, Debug)]
pub struct SqliteOptions {
    pub db: std::path::PathBuf,
    pub store: StoreOptions,
    /// `None`: no backup (the data stays on this disk only).
    pub backup: Option<ReplicaOptions>,
}

struct Tasks {
    replica: Option<JoinHandle<()>>,
    sweeper: JoinHandle<()>,
}

pub struct SqliteBackend {
    store: Store,
    replica: Option<Arc<Replica>>,
    tasks: Mutex<Option<Tasks>>,
}

impl SqliteBackend {
    /// Restore from S3 if configured and the file is missing (`restoring` is
    /// called first, so callers can say so), open the file, attach the
    /// replica and start the backup and the expiry sweeper.
    pub async fn open(o: &SqliteOptions, restoring: impl FnOnce()) -> Result<SqliteBackend, OpenError> {
        if o.backup.is_some() && !o.db.exists() {
            restoring();
        }
        let replica = match &o.backup {
            Some(r) => Some(Arc::new(Replica::new(r).await?)),
            None => None,
        };
        if let Some(r) = &replica {
            r.prepare_local(&o.db).await?;
        }
        let opts = StoreOptions { replicated: replica.is_some(), ..o.store.clone() };
        let db = o.db.clone();
        let store = tokio::task::spawn_blocking(move || Store::open(&db, opts)).await??;
        if let Some(r) = &replica {
            r.attach(&store).await?;
        }
        let replica_task = replica.as_ref().map(|r| r.clone().start(store.clone()));
        Ok(SqliteBackend::with_tasks(store, replica, replica_task))
    }

    /// A backend on an existing, open store, with no backup (tests, tools).
    pub fn local(store: Store) -> SqliteBackend {
        SqliteBackend::with_tasks(store, None, None)
    }

    fn with_tasks(store: Store, replica: Option<Arc<Replica>>, replica_task: Option<JoinHandle<()>>) -> SqliteBackend {
        // Physically delete expired keys in the background (reads already hide them).
        let sweeper = {
            let store = store.clone();
            tokio::spawn(async move {
                let mut t = tokio::time::interval(limits::EXPIRY_SWEEP_INTERVAL);
                loop {
                    t.tick().await;
                    store.sweep();
                }
            })
        };
        SqliteBackend { store, replica, tasks: Mutex::new(Some(Tasks { replica: replica_task, sweeper })) }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }
}

impl Backend for SqliteBackend {
    fn get(&self, key: Key) -> StoreFuture<'_, Option<Entry>> {
        Box::pin(self.store.get(key))
    }

    fn get_many(&self, keys: Vec<Key>) -> StoreFuture<'_, Vec<Option<Entry>>> {
        Box::pin(self.store.get_many(keys))
    }

    fn list(&self, q: ListQuery) -> StoreFuture<'_, ListPage> {
        Box::pin(self.store.list(q))
    }

    fn count(&self, q: ListQuery) -> StoreFuture<'_, u64> {
        Box::pin(self.store.count(q))
    }

    fn snapshot_read(&self, queries: Vec<ListQuery>) -> StoreFuture<'_, Vec<ListPage>> {
        Box::pin(self.store.snapshot_read(queries))
    }

    fn write(&self, op: WriteOp) -> StoreFuture<'_, WriteResult> {
        Box::pin(self.store.write(op))
    }

    fn changes(&self, prefix: Key, after: ChangePos, limit: u32) -> StoreFuture<'_, Vec<Change>> {
        Box::pin(self.store.changes(prefix, after, limit))
    }

    fn queue_take(&self, visibility_ms: u64) -> StoreFuture<'_, Option<QueueMessage>> {
        Box::pin(self.store.queue_take(visibility_ms))
    }

    fn queue_next_event(&self) -> StoreFuture<'_, super::QueueTimes> {
        Box::pin(self.store.queue_next_event())
    }

    fn queue_stats(&self) -> StoreFuture<'_, QueueStats> {
        Box::pin(self.store.queue_stats())
    }

    fn queue_list(&self, after: String, limit: u32) -> StoreFuture<'_, Vec<PendingMessage>> {
        Box::pin(self.store.queue_list(after, limit))
    }

    fn committed(&self) -> u64 {
        self.store.committed()
    }

    fn subscribe_commits(&self) -> tokio::sync::watch::Receiver<u64> {
        self.store.subscribe_commits()
    }

    fn status(&self) -> BackendStatus {
        let committed = self.store.committed();
        match &self.replica {
            Some(r) => BackendStatus {
                not_ready: r.fenced_reason(),
                degraded: r.not_backed_up_reason().map(|why| format!("not backed up: {why}")),
                replication: ReplicationGauges {
                    enabled: true,
                    committed,
                    shipped: self.store.shipped(),
                    lag_seconds: r.lag_seconds(),
                    fenced: r.fenced_reason().is_some(),
                    not_backed_up: r.not_backed_up_reason().is_some(),
                },
            },
            None => BackendStatus { replication: ReplicationGauges { committed, ..Default::default() }, ..Default::default() },
        }
    }

    fn backup_report(&self) -> BoxFuture<'_, Option<Result<serde_json::Value, String>>> {
        Box::pin(async move {
            let r = self.replica.as_ref()?;
            Some(r.report(self.store.shipped()).await.map_err(|e| e.to_string()))
        })
    }

    fn shutdown(&self, deadline: tokio::time::Instant) -> BoxFuture<'_, Result<(), NotBackedUp>> {
        Box::pin(async move {
            let Some(tasks) = self.tasks.lock().unwrap().take() else { return Ok(()) };
            tasks.sweeper.abort();
            let drained = match (&self.replica, tasks.replica) {
                (Some(r), Some(task)) => r.shutdown(&self.store, task, deadline).await,
                _ => Ok(()),
            };
            let store = self.store.clone();
            let _ = tokio::task::spawn_blocking(move || store.close()).await;
            tracing::info!("store closed");
            drained
        })
    }
}

/// A `Kv` on a throwaway SQLite file with no backup (check-config, tools, tests).
pub fn scratch(path: &std::path::Path) -> Result<super::Kv, StoreError> {
    let store = Store::open(path, StoreOptions::default())?;
    Ok(super::Kv::new(SqliteBackend::local(store), crate::limits::DEFAULT_MAX_VALUE_BYTES))
}
