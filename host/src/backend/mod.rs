//! The storage seam: one trait every backend implements, and `Kv`, the
//! handle the rest of the host uses.
//!
//! ```text
//!  guest bindings (kv, wasi:keyvalue) ─┐
//!  streams (SSE watch, NDJSON export) ─┼─▶ Kv ── validates (sidekv_core::validate),
//!  App / http (readiness, metrics) ────┘        long-poll watch, shutdown signal
//!                                                 │
//!                                                 ▼ dyn Backend
//!                          ┌──────────────────────┴─────────────────────┐
//!                   sqlite::SqliteBackend                     postgres::PgBackend
//!                   (one file, writer thread,                 (one shared database,
//!                    S3 replica, restore at launch)            many sidecars)
//! ```
//!
//! A backend takes only validated calls and implements the logical
//! operations; everything built on top of them (long-poll `watch`, the SSE
//! prefix stream, export) lives once, here and in `streams`, and works the
//! same on every backend. The contract every backend keeps:
//!
//! - **Linearizable**: a call that starts after a write was acknowledged
//!   sees it (or something newer); an atomic batch is all or nothing, its
//!   checks evaluated in the same transaction as its mutations.
//! - **Versionstamps** strictly increase per key and totally order commits;
//!   `committed()` is a position below which no commit can still appear,
//!   so the change feed never skips one.
//! - **Expired entries are never returned** by any read.

pub mod postgres;
pub mod queue_body;
pub mod sqlite;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use sidekv_core::validate;
use tokio::sync::watch;

pub use sidekv_core::{
    Change, ChangePos, Check, Condition, Encoding, Enqueue, Entry, Key, ListPage, ListQuery, Mutation, MutationKind, PendingMessage,
    QueueMessage, QueueOp, QueueStats, StoreError, Value, Versionstamp, WriteOp, WriteResult,
};

use crate::metrics::ReplicationGauges;

/// When the queue next needs attention (unix ms; `None`: nothing of that kind).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueTimes {
    /// The earliest due time of an unleased message.
    pub due: Option<u64>,
    /// The earliest lease expiry.
    pub lease_expiry: Option<u64>,
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
/// What every store call returns.
pub type StoreFuture<'a, T> = BoxFuture<'a, Result<T, StoreError>>;

/// How a backend is doing, for `/readyz` and `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct BackendStatus {
    /// `Some(why)`: not ready (fenced, database unreachable).
    pub not_ready: Option<String>,
    /// `Some(why)`: serving, but something is degraded (not backed up).
    pub degraded: Option<String>,
    pub replication: ReplicationGauges,
}

/// The logical operations of a key-value store. Calls arrive validated.
pub trait Backend: Send + Sync + 'static {
    fn get(&self, key: Key) -> StoreFuture<'_, Option<Entry>>;
    /// Every key from one consistent snapshot.
    fn get_many(&self, keys: Vec<Key>) -> StoreFuture<'_, Vec<Option<Entry>>>;
    fn list(&self, q: ListQuery) -> StoreFuture<'_, ListPage>;
    fn count(&self, q: ListQuery) -> StoreFuture<'_, u64>;
    /// Several range queries answered from one consistent snapshot (KV
    /// Connect's `snapshot_read`, Deno's `getMany`).
    fn snapshot_read(&self, queries: Vec<ListQuery>) -> StoreFuture<'_, Vec<ListPage>>;
    /// Apply a write and wait until it is acknowledged (durable).
    fn write(&self, op: WriteOp) -> StoreFuture<'_, WriteResult>;
    /// Logged changes under `prefix` strictly after `after`, oldest first,
    /// at most `limit` (and `MAX_READ_BYTES`). `InvalidArgument` when `after`
    /// is older than the kept history.
    fn changes(&self, prefix: Key, after: ChangePos, limit: u32) -> StoreFuture<'_, Vec<Change>>;
    /// Lease the next due queue message (due time, then id order) for
    /// `visibility_ms`; `None` when none is due. Enqueueing and settling a
    /// lease are writes (`WriteOp::Enqueue`, `WriteOp::Queue`).
    fn queue_take(&self, visibility_ms: u64) -> StoreFuture<'_, Option<QueueMessage>>;
    /// Unix ms when an unleased message next falls due and a lease next expires.
    fn queue_next_event(&self) -> StoreFuture<'_, QueueTimes>;
    fn queue_stats(&self) -> StoreFuture<'_, QueueStats>;
    /// Pending messages in id order after `after` ("" = from the start).
    fn queue_list(&self, after: String, limit: u32) -> StoreFuture<'_, Vec<PendingMessage>>;
    /// The newest commit counter whose changes are all visible: the change
    /// feed is complete up to here.
    fn committed(&self) -> u64;
    /// Notified (with `committed()`) whenever commits become visible,
    /// including commits made by other processes sharing the store.
    fn subscribe_commits(&self) -> watch::Receiver<u64>;
    fn status(&self) -> BackendStatus;
    /// What the backup holds, for the console (`None`: no backup of sidekv's
    /// own; a PostgreSQL database is backed up by its own tooling).
    fn backup_report(&self) -> BoxFuture<'_, Option<Result<serde_json::Value, String>>> {
        Box::pin(async { None })
    }
    /// Finish queued work (drain the backup) and close, by `deadline`.
    /// Called once. `Err` says which committed writes are not in the backup.
    fn shutdown(&self, deadline: tokio::time::Instant) -> BoxFuture<'_, Result<(), NotBackedUp>>;
}

/// A stop that could not finish what the backup needs: these commits are
/// only on the local disk. The process exits non-zero saying so, because a
/// relaunch anywhere else (a lost disk) would not have them.
#[derive(Debug, thiserror::Error)]
#[error(
    "{commits} {} commits (up to commit {last}) are not in the backup, only in the local database {db}: {reason}",
    if *.acknowledged { "acknowledged" } else { "committed (not yet acknowledged)" }
)]
pub struct NotBackedUp {
    pub commits: u64,
    pub last: u64,
    /// Whether clients were told these writes succeeded (`local` durability).
    pub acknowledged: bool,
    pub db: String,
    pub reason: String,
}

struct KvInner {
    backend: Box<dyn Backend>,
    max_value_bytes: usize,
    /// Set at shutdown: long-polls and streams end at once.
    closing: watch::Sender<bool>,
}

/// The store as the host uses it: a cheap, cloneable handle over a backend
/// that validates every call first and builds watches on the change feed.
#[derive(Clone)]
pub struct Kv {
    inner: Arc<KvInner>,
}

impl Kv {
    pub fn new(backend: impl Backend, max_value_bytes: usize) -> Kv {
        Kv { inner: Arc::new(KvInner { backend: Box::new(backend), max_value_bytes, closing: watch::channel(false).0 }) }
    }

    pub fn backend(&self) -> &dyn Backend {
        self.inner.backend.as_ref()
    }

    pub async fn get(&self, key: Key) -> Result<Option<Entry>, StoreError> {
        validate::validate_key(&key)?;
        self.backend().get(key).await
    }

    pub async fn get_many(&self, keys: Vec<Key>) -> Result<Vec<Option<Entry>>, StoreError> {
        validate::validate_get_many(&keys)?;
        self.backend().get_many(keys).await
    }

    pub async fn list(&self, q: ListQuery) -> Result<ListPage, StoreError> {
        validate::validate_query(&q)?;
        self.backend().list(q).await
    }

    /// Range queries from one snapshot, each validated (at most `MAX_SNAPSHOT_RANGES`).
    pub async fn snapshot_read(&self, queries: Vec<ListQuery>) -> Result<Vec<ListPage>, StoreError> {
        if queries.len() > sidekv_core::limits::MAX_SNAPSHOT_RANGES {
            return Err(StoreError::InvalidArgument(format!(
                "a snapshot read takes at most {} ranges, got {}",
                sidekv_core::limits::MAX_SNAPSHOT_RANGES,
                queries.len()
            )));
        }
        queries.iter().try_for_each(validate::validate_query)?;
        self.backend().snapshot_read(queries).await
    }

    /// Live keys in the query's range (`limit`, `cursor`, `reverse` ignored).
    pub async fn count(&self, q: ListQuery) -> Result<u64, StoreError> {
        if q.prefix.len() > sidekv_core::limits::MAX_KEY_BYTES {
            return Err(StoreError::InvalidArgument("the prefix is longer than the longest key".into()));
        }
        self.backend().count(q).await
    }

    pub async fn write(&self, op: WriteOp) -> Result<WriteResult, StoreError> {
        validate::validate_write(&op, self.inner.max_value_bytes)?;
        if let Some(failed) = validate::never_issued_condition(&op) {
            return Ok(failed);
        }
        self.backend().write(op).await
    }

    /// Lease the next due message, waiting up to `wait` for one (woken by
    /// commits and by due times). `None` when none came.
    pub async fn queue_take(&self, visibility_ms: u32, wait: Duration) -> Result<Option<QueueMessage>, StoreError> {
        let lim = sidekv_core::limits::MIN_QUEUE_VISIBILITY_MS..=sidekv_core::limits::MAX_QUEUE_VISIBILITY_MS;
        if !lim.contains(&visibility_ms) {
            return Err(StoreError::InvalidArgument(format!(
                "visibility timeout {visibility_ms} ms is outside {}..={} ms",
                lim.start(),
                lim.end()
            )));
        }
        validate::validate_watch_timeout(wait.as_millis().min(u32::MAX as u128) as u32)?;
        let mut commits = self.subscribe_commits();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            commits.borrow_and_update();
            // One indexed read first: the writer is asked only when something is due.
            let next = self.backend().queue_next_event().await?.due;
            if next.is_some_and(|at| at <= now_ms())
                && let Some(m) = self.backend().queue_take(visibility_ms as u64).await?
            {
                let late_ms = now_ms().saturating_sub(m.due_at);
                crate::metrics::METRICS.queue_delivery_seconds.observe(late_ms as f64 / 1e3);
                return Ok(Some(m));
            }
            // Due but taken by another consumer first: check again shortly.
            let wake = next
                .map(|at| tokio::time::Instant::now() + Duration::from_millis(at.saturating_sub(now_ms()).max(20) + 1))
                .filter(|w| *w < deadline)
                .unwrap_or(deadline);
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::select! {
                r = commits.changed() => {
                    if r.is_err() { return Ok(None); }
                    // Every commit wakes a waiting consumer: look again in
                    // rounds, not once per commit of a write load.
                    tokio::time::sleep(crate::limits::QUEUE_MIN_SLEEP).await;
                }
                _ = self.closing() => return Ok(None),
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// Settle a leased attempt: `true` when it was the current lease.
    pub async fn queue_settle(&self, op: QueueOp) -> Result<bool, StoreError> {
        let acked = matches!(op, QueueOp::Ack { .. });
        match self.write(WriteOp::Queue(op)).await? {
            WriteResult::Committed { .. } => {
                if acked {
                    crate::metrics::METRICS.queue_delivered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    pub async fn changes(&self, prefix: Key, after: ChangePos, limit: u32) -> Result<Vec<Change>, StoreError> {
        self.backend().changes(prefix, after, limit).await
    }

    pub fn committed(&self) -> u64 {
        self.backend().committed()
    }

    pub fn subscribe_commits(&self) -> watch::Receiver<u64> {
        self.backend().subscribe_commits()
    }

    pub fn status(&self) -> BackendStatus {
        self.backend().status()
    }

    /// Shutdown has begun: long-polls return and streams end.
    pub fn begin_shutdown(&self) {
        self.inner.closing.send_replace(true);
    }

    pub fn is_closing(&self) -> bool {
        *self.inner.closing.borrow()
    }

    /// Resolves when shutdown begins.
    pub async fn closing(&self) {
        let mut rx = self.inner.closing.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Drain and close the backend, by `deadline`.
    pub async fn shutdown(&self, deadline: tokio::time::Instant) -> Result<(), NotBackedUp> {
        self.begin_shutdown();
        self.backend().shutdown(deadline).await
    }

    /// Long-poll one key until its versionstamp differs from `since` (`None`
    /// = "I saw it absent"), it expires, or `timeout` passes. Works on every
    /// backend: it re-reads the key at each commit notification.
    pub async fn watch(&self, key: Key, since: Option<Versionstamp>, timeout: Duration) -> Result<(bool, Option<Entry>), StoreError> {
        validate::validate_key(&key)?;
        let mut commits = self.subscribe_commits();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            commits.borrow_and_update();
            let current = self.backend().get(key.clone()).await?;
            let now_vs = current.as_ref().map(|e| e.versionstamp);
            if now_vs != since {
                return Ok((true, current));
            }
            // Wake at the next commit, or when the current entry expires.
            let expiry = current.as_ref().and_then(|e| e.expires_at).map(|at| {
                let in_ms = at.saturating_sub(now_ms()) + 1;
                tokio::time::Instant::now() + Duration::from_millis(in_ms)
            });
            let wake = match expiry {
                Some(e) if e < deadline => e,
                _ => deadline,
            };
            tokio::select! {
                r = commits.changed() => { if r.is_err() { return Ok((false, current)); } }
                _ = self.closing() => return Ok((false, current)),
                _ = tokio::time::sleep_until(wake) => {
                    if wake == deadline { return Ok((false, current)); }
                }
            }
        }
    }
}

pub use sidekv_core::now_ms;

/// Which backend to open, with its own options (built by `config`).
#[derive(Clone, Debug)]
pub enum BackendOptions {
    Sqlite(sqlite::SqliteOptions),
    Postgres { url: String, pool_size: usize, max_value_bytes: usize },
}

/// Open the backend `opts` selects. `restoring` is called if the SQLite
/// backend restores from S3 first (start-up answers then say so).
pub async fn open(opts: &BackendOptions, restoring: impl FnOnce()) -> anyhow::Result<Kv> {
    let kv = match opts {
        BackendOptions::Postgres { url, pool_size, max_value_bytes } => {
            Kv::new(postgres::PgBackend::open(url, *pool_size).await?, *max_value_bytes)
        }
        BackendOptions::Sqlite(o) => Kv::new(sqlite::SqliteBackend::open(o, restoring).await?, o.store.max_value_bytes),
    };
    Ok(kv)
}
