//! The PostgreSQL backend: many sidecars, one keyspace.
//!
//! ```text
//!  sidecar A ─┐                      ┌─ sidekv_kv       (key → value, enc, version, expires_at)
//!  sidecar B ─┼── tokio-postgres ──▶ ├─ sidekv_changes  (the change feed: every mutation)
//!  sidecar C ─┘     (pool each)      ├─ sidekv_clock    (the commit counter; its row lock
//!                                    │                   orders all writers)
//!                                    └─ sidekv_leases   (one sweeper at a time)
//! ```
//!
//! In each sidecar:
//! - **reads** run as single statements on pooled connections, so each sees
//!   one snapshot containing every commit acknowledged before it started;
//! - **writes** go to one writer task that group-commits (`writer`): one
//!   transaction, one fsync per batch, ordered against every other
//!   sidecar's by the clock row;
//! - a **tailer** polls the clock every `PG_TAIL_INTERVAL` and publishes it
//!   as `committed`, which wakes long-polls and SSE streams for commits made
//!   anywhere — one query per sidecar, however many clients watch; it is
//!   also the health check behind `/readyz`;
//! - the **sweeper** deletes expired rows when this sidecar holds the lease.
//!
//! Backup is the database's job (WAL archiving, pgBackRest; CockroachDB
//! `BACKUP`): `KVSTORE_S3_URL` is refused with this backend.

mod connect;
mod pipeline;
mod plan;
mod queue;
mod sql;
mod sweep;
mod writer;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::Pool;
use sidekv_core::validate::{ByteBudget, decode_cursor, encode_cursor, history_gone, prefix_upper_bound, query_bounds};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

pub use connect::ConnectError;
use plan::Row;
use writer::{WriterMsg, unreachable};

use super::{Backend, BackendStatus, BoxFuture, NotBackedUp, StoreFuture};
use super::{
    Change, ChangePos, Encoding, Entry, Key, ListPage, ListQuery, PendingMessage, QueueMessage, QueueStats, StoreError, Value,
    Versionstamp, WriteOp, WriteResult,
};
use crate::limits;
use crate::metrics::ReplicationGauges;

/// Why the PostgreSQL backend could not start.
#[derive(Debug, thiserror::Error)]
pub enum PgOpenError {
    #[error("{0}")]
    Connect(#[from] ConnectError),
    #[error("creating or migrating the schema: {0}")]
    Migrate(String),
}

struct Shared {
    pool: Pool,
    /// Point reads, pipelined over a few shared connections.
    reads: pipeline::Pipelined,
    committed: watch::Sender<u64>,
    /// `Some(why)` while the database cannot be reached.
    down: Mutex<Option<String>>,
}

pub struct PgBackend {
    shared: Arc<Shared>,
    /// Taken at shutdown, so the writer drains its queue and stops.
    writer: Mutex<Option<mpsc::Sender<WriterMsg>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// What a PostgreSQL error means for the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ErrorClass {
    /// Serialization failure or deadlock: the transaction may be retried.
    Conflict,
    /// The server is not reachable or is going away: no connection, a
    /// connection lost, SQLSTATE class 08 (connection exception) or 57
    /// (operator intervention: shutdown, crash, cannot connect now), or
    /// 53300 (too many connections). Retryable.
    Unreachable,
    DiskFull,
    Other,
}

pub(crate) fn classify(e: &tokio_postgres::Error) -> ErrorClass {
    use tokio_postgres::error::SqlState;
    match e.code() {
        None => ErrorClass::Unreachable,
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED => ErrorClass::Conflict,
        Some(c) if *c == SqlState::DISK_FULL => ErrorClass::DiskFull,
        Some(c) if c.code().starts_with("08") || c.code().starts_with("57") || *c == SqlState::TOO_MANY_CONNECTIONS => {
            ErrorClass::Unreachable
        }
        Some(_) => ErrorClass::Other,
    }
}

/// The server's own message and SQLSTATE (tokio-postgres's `Display` says only "db error").
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => match std::error::Error::source(e) {
            Some(src) => format!("{e}: {src}"),
            None => e.to_string(),
        },
    }
}

/// A failed statement (outside a commit) as the store reports it: nothing was written.
pub(crate) fn store_error(e: &tokio_postgres::Error) -> StoreError {
    match classify(e) {
        ErrorClass::Unreachable => unreachable(&describe(e)),
        ErrorClass::DiskFull => StoreError::StorageFull,
        ErrorClass::Conflict => StoreError::Unavailable(format!("PostgreSQL: {}; retry", describe(e))),
        ErrorClass::Other => StoreError::Internal(format!("PostgreSQL: {}", describe(e))),
    }
}

/// No connection from the pool: the database is unreachable (or the pool exhausted for long).
pub(crate) fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match &e {
        deadpool_postgres::PoolError::Backend(pe) => unreachable(&describe(pe)),
        _ => unreachable(&e),
    }
}

fn sql_err(e: tokio_postgres::Error) -> StoreError {
    store_error(&e)
}

/// A `sidekv_kv` row (key, value, enc, version, expires_at) as an entry's parts.
pub(crate) fn decode_row(r: &tokio_postgres::Row) -> Result<(Key, Row), StoreError> {
    let enc: i16 = r.get(2);
    let encoding = u8::try_from(enc).ok().and_then(Encoding::from_code).unwrap_or_default();
    Ok((r.get(0), Row { value: Value { bytes: r.get(1), encoding }, version: Versionstamp::from_i64(r.get(3)), expires_at: r.get(4) }))
}

fn entry(r: &tokio_postgres::Row) -> Result<Entry, StoreError> {
    let (key, row) = decode_row(r)?;
    Ok(Entry { key, value: row.value, versionstamp: row.version, expires_at: row.expires_at.map(|v| v as u64) })
}

impl PgBackend {
    /// Connect (retrying until the database answers), migrate the schema,
    /// and start the writer, the tailer and the sweeper.
    pub async fn open(url: &str, pool_size: usize) -> Result<PgBackend, PgOpenError> {
        let config = connect::pg_config(url, |k| std::env::var(k).ok())?;
        let reads = pipeline::Pipelined::new(config.clone(), connect::tls()?, limits::PG_PIPELINED_CONNECTIONS);
        let pool = connect::pool(config, pool_size)?;
        let mut backoff = Duration::from_millis(100);
        let counter = loop {
            match migrate(&pool).await {
                Ok(c) => break c,
                Err(MigrateError::Unreachable(why)) => {
                    tracing::warn!(error = %why, retry_in_ms = backoff.as_millis() as u64, "PostgreSQL is not reachable yet");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(limits::PG_BACKOFF_MAX);
                }
                Err(MigrateError::Failed(why)) => return Err(PgOpenError::Migrate(why)),
            }
        };
        let shared = Arc::new(Shared { pool: pool.clone(), reads, committed: watch::channel(counter).0, down: Mutex::new(None) });
        let (tx, rx) = mpsc::channel(limits::WRITE_QUEUE_DEPTH);
        let me = format!("{:016x}", rand::random::<u64>());
        let tasks = vec![
            tokio::spawn(writer::run(pool.clone(), rx, shared.committed.clone())),
            tokio::spawn(tail(shared.clone())),
            tokio::spawn(sweeper(pool, tx.clone(), me)),
        ];
        Ok(PgBackend { shared, writer: Mutex::new(Some(tx)), tasks: Mutex::new(tasks) })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.shared.pool.get().await.map_err(pool_error)
    }

    async fn read_changes(&self, prefix: Key, after: ChangePos, limit: u32) -> Result<Vec<Change>, StoreError> {
        let mut client = self.client().await?;
        // One snapshot for the history bound and the rows.
        let tx = snapshot(&mut client).await?;
        let clock = tx.query_one(sql::CLOCK, &[]).await.map_err(sql_err)?;
        let pruned_below = clock.get::<_, i64>(1) as u64;
        if after.vs.counter + 1 < pruned_below {
            return Err(history_gone(after.vs, pruned_below));
        }
        let n_after = after.index.map_or(i32::MAX, |n| n.min(i32::MAX as u32) as i32);
        let upper = prefix_upper_bound(&prefix);
        let stmt = tx.prepare_cached(sql::CHANGES).await.map_err(sql_err)?;
        let rows = tx.query(&stmt, &[&after.vs.to_i64(), &n_after, &prefix, &upper, &(limit as i64)]).await.map_err(sql_err)?;
        let mut budget = ByteBudget::new(limits::MAX_READ_BYTES);
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let value: Option<Vec<u8>> = r.get(3);
            let enc: i16 = r.get(4);
            let encoding = u8::try_from(enc).ok().and_then(Encoding::from_code).unwrap_or_default();
            let c = Change {
                versionstamp: Versionstamp::from_i64(r.get(0)),
                index: r.get::<_, i32>(1) as u32,
                key: r.get(2),
                value: value.map(|bytes| Value { bytes, encoding }),
                expires_at: r.get::<_, Option<i64>>(5).map(|v| v as u64),
            };
            if !budget.admit(c.key.len() + c.value.as_ref().map_or(0, Value::len)) {
                break;
            }
            out.push(c);
        }
        let _ = tx.commit().await;
        Ok(out)
    }
}

/// `check-config`: connect once and say what is there (server version,
/// sidekv's schema version, 0 before the first start).
pub async fn check(url: &str) -> Result<String, String> {
    let config = connect::pg_config(url, |k| std::env::var(k).ok()).map_err(|e| e.to_string())?;
    let pool = connect::pool(config, 1).map_err(|e| e.to_string())?;
    let client = pool.get().await.map_err(|e| match e {
        deadpool_postgres::PoolError::Backend(pe) => format!("unreachable: {}", describe(&pe)),
        other => format!("unreachable: {other}"),
    })?;
    let version: String = client.query_one("SHOW server_version", &[]).await.map_err(|e| describe(&e))?.get(0);
    let schema = match client.query_one(sql::SCHEMA_VERSION, &[]).await {
        Ok(r) => r.get::<_, i32>(0),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => 0,
        Err(e) => return Err(describe(&e)),
    };
    Ok(format!("reachable, PostgreSQL {version}, sidekv schema version {schema} (this sidekv: {})", sql::MIGRATIONS.len()))
}

/// A read-only transaction on one snapshot (repeatable read): several
/// statements that see the same commits.
async fn snapshot(client: &mut deadpool_postgres::Object) -> Result<deadpool_postgres::Transaction<'_>, StoreError> {
    client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(sql_err)
}

/// One list page, on a connection or inside a transaction.
async fn list_page(client: &impl deadpool_postgres::GenericClient, q: &ListQuery) -> Result<ListPage, StoreError> {
    let (lower, upper) = query_bounds(q);
    let cursor = q.cursor.as_deref().map(|c| decode_cursor(c, &q.prefix)).transpose()?;
    let stmt = client.prepare_cached(&sql::list(q.reverse, q.keys_only)).await.map_err(sql_err)?;
    let rows = client.query(&stmt, &[&lower, &upper, &cursor, &(q.limit as i64 + 1)]).await.map_err(sql_err)?;
    let (mut entries, mut budget) = (Vec::new(), ByteBudget::new(limits::MAX_READ_BYTES));
    for r in &rows {
        let e = entry(r)?;
        if entries.len() == q.limit as usize || !budget.admit(e.key.len() + e.value.len()) {
            let cursor = entries.last().map(|e: &Entry| encode_cursor(&e.key));
            return Ok(ListPage { entries, cursor });
        }
        entries.push(e);
    }
    Ok(ListPage { entries, cursor: None })
}

enum MigrateError {
    Unreachable(String),
    Failed(String),
}

/// Apply the migrations not yet applied; the clock's counter afterwards.
async fn migrate(pool: &Pool) -> Result<u64, MigrateError> {
    let mut client = pool.get().await.map_err(|e| MigrateError::Unreachable(pool_error(e).to_string()))?;
    let failed = |e: tokio_postgres::Error| {
        if e.code().is_none() { MigrateError::Unreachable(e.to_string()) } else { MigrateError::Failed(e.to_string()) }
    };
    // Two sidecars creating the table at once can collide on the catalog;
    // the loser retries and finds it.
    for attempt in 0.. {
        match client.batch_execute(sql::CREATE_MIGRATIONS).await {
            Ok(()) => break,
            Err(e) if e.code().is_some() && attempt < 3 => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => return Err(failed(e)),
        }
    }
    for (i, m) in sql::MIGRATIONS.iter().enumerate() {
        let version = i as i32 + 1;
        let tx = client.transaction().await.map_err(failed)?;
        // The row first: a concurrent migrator blocks here until this commits.
        if tx.execute(sql::CLAIM_MIGRATION, &[&version]).await.map_err(failed)? == 0 {
            tx.rollback().await.map_err(failed)?;
            continue;
        }
        tx.batch_execute(m).await.map_err(failed)?;
        tx.commit().await.map_err(failed)?;
        tracing::info!(version, "PostgreSQL schema migrated");
    }
    let found: i32 = client.query_one(sql::SCHEMA_VERSION, &[]).await.map_err(failed)?.get(0);
    if found as usize > sql::MIGRATIONS.len() {
        return Err(MigrateError::Failed(format!(
            "the database has schema version {found}; this sidekv knows up to {} (a newer sidekv migrated it)",
            sql::MIGRATIONS.len()
        )));
    }
    let clock = client.query_one(sql::CLOCK, &[]).await.map_err(failed)?;
    Ok(clock.get::<_, i64>(0) as u64)
}

/// Publish the commit clock (commits from every sidecar), and track health.
async fn tail(shared: Arc<Shared>) {
    let mut wait = limits::PG_TAIL_INTERVAL;
    loop {
        tokio::time::sleep(wait).await;
        let polled = async {
            let client = shared.pool.get().await.map_err(|e| pool_error(e).to_string())?;
            let stmt = client.prepare_cached(sql::CLOCK).await.map_err(|e| e.to_string())?;
            client.query_one(&stmt, &[]).await.map(|r| r.get::<_, i64>(0) as u64).map_err(|e| describe(&e))
        };
        match tokio::time::timeout(limits::PG_CONNECT_TIMEOUT, polled).await.unwrap_or_else(|_| Err("timed out".into())) {
            Ok(c) => {
                if shared.down.lock().unwrap().take().is_some() {
                    tracing::info!("PostgreSQL reachable again");
                }
                shared.committed.send_if_modified(|v| (c > *v).then(|| *v = c).is_some());
                wait = limits::PG_TAIL_INTERVAL;
            }
            Err(why) => {
                let mut down = shared.down.lock().unwrap();
                if down.is_none() {
                    tracing::error!(error = %why, "PostgreSQL unreachable");
                }
                *down = Some(format!("PostgreSQL unreachable: {why}"));
                wait = (wait * 2).min(limits::PG_BACKOFF_MAX);
            }
        }
    }
}

/// Every interval: take (or renew) the sweeper lease; the holder sweeps.
async fn sweeper(pool: Pool, writer: mpsc::Sender<WriterMsg>, me: String) {
    let mut t = tokio::time::interval(limits::EXPIRY_SWEEP_INTERVAL);
    loop {
        t.tick().await;
        match sweep::take_lease(&pool, &me).await {
            Ok(true) => {
                let _ = writer.try_send(WriterMsg::Sweep);
            }
            Ok(false) => {}
            Err(e) => tracing::debug!(error = %e, "sweeper lease"),
        }
    }
}

impl Backend for PgBackend {
    fn get(&self, key: Key) -> StoreFuture<'_, Option<Entry>> {
        Box::pin(async move { self.shared.reads.get(&key).await?.as_ref().map(entry).transpose() })
    }

    fn get_many(&self, keys: Vec<Key>) -> StoreFuture<'_, Vec<Option<Entry>>> {
        Box::pin(async move {
            let client = self.client().await?;
            let stmt = client.prepare_cached(&sql::GET_MANY).await.map_err(sql_err)?;
            let rows = client.query(&stmt, &[&keys]).await.map_err(sql_err)?;
            let mut found: std::collections::HashMap<Key, Entry> = std::collections::HashMap::with_capacity(rows.len());
            for r in &rows {
                let e = entry(r)?;
                found.insert(e.key.clone(), e);
            }
            let mut budget = ByteBudget::new(limits::MAX_READ_BYTES);
            let mut out = Vec::with_capacity(keys.len());
            for k in &keys {
                let e = found.get(k).cloned();
                if !budget.admit(e.as_ref().map_or(0, |e| e.key.len() + e.value.len())) {
                    return Err(StoreError::InvalidArgument(format!(
                        "get-many answer is over the {}-byte read limit; ask for fewer keys",
                        limits::MAX_READ_BYTES
                    )));
                }
                out.push(e);
            }
            Ok(out)
        })
    }

    fn list(&self, q: ListQuery) -> StoreFuture<'_, ListPage> {
        Box::pin(async move {
            let client = self.client().await?;
            list_page(&client, &q).await
        })
    }

    fn snapshot_read(&self, queries: Vec<ListQuery>) -> StoreFuture<'_, Vec<ListPage>> {
        Box::pin(async move {
            let mut client = self.client().await?;
            let tx = snapshot(&mut client).await?;
            let mut pages = Vec::with_capacity(queries.len());
            for q in &queries {
                pages.push(list_page(&tx, q).await?);
            }
            let _ = tx.commit().await;
            Ok(pages)
        })
    }

    fn count(&self, q: ListQuery) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            let (lower, upper) = query_bounds(&q);
            let client = self.client().await?;
            let stmt = client.prepare_cached(&sql::COUNT).await.map_err(sql_err)?;
            Ok(client.query_one(&stmt, &[&lower, &upper]).await.map_err(sql_err)?.get::<_, i64>(0) as u64)
        })
    }

    fn write(&self, op: WriteOp) -> StoreFuture<'_, WriteResult> {
        Box::pin(async move {
            if let WriteOp::Queue(q) = op {
                return queue::settle(&self.shared.pool, q).await;
            }
            let (tx, rx) = oneshot::channel();
            let closed = || StoreError::Unavailable("the store is shutting down".into());
            let writer = self.writer.lock().unwrap().clone().ok_or_else(closed)?;
            writer.send(WriterMsg::Write(op, tx)).await.map_err(|_| closed())?;
            rx.await.map_err(|_| StoreError::Internal("the writer task stopped".into()))?
        })
    }

    fn changes(&self, prefix: Key, after: ChangePos, limit: u32) -> StoreFuture<'_, Vec<Change>> {
        Box::pin(self.read_changes(prefix, after, limit))
    }

    fn queue_take(&self, visibility_ms: u64) -> StoreFuture<'_, Option<QueueMessage>> {
        Box::pin(queue::take(&self.shared.pool, visibility_ms))
    }

    fn queue_next_event(&self) -> StoreFuture<'_, super::QueueTimes> {
        Box::pin(queue::times(&self.shared.pool))
    }

    fn queue_stats(&self) -> StoreFuture<'_, QueueStats> {
        Box::pin(queue::stats(&self.shared.pool))
    }

    fn queue_list(&self, after: String, limit: u32) -> StoreFuture<'_, Vec<PendingMessage>> {
        Box::pin(queue::list(&self.shared.pool, after, limit))
    }

    fn committed(&self) -> u64 {
        *self.shared.committed.borrow()
    }

    fn subscribe_commits(&self) -> watch::Receiver<u64> {
        self.shared.committed.subscribe()
    }

    fn status(&self) -> BackendStatus {
        BackendStatus {
            not_ready: self.shared.down.lock().unwrap().clone(),
            degraded: None,
            replication: ReplicationGauges { committed: self.committed(), ..Default::default() },
        }
    }

    fn shutdown(&self, deadline: tokio::time::Instant) -> BoxFuture<'_, Result<(), NotBackedUp>> {
        Box::pin(async move {
            // The writer finishes what is queued when its queue closes; the
            // tailer and sweeper just stop.
            let tasks = std::mem::take(&mut *self.tasks.lock().unwrap());
            let mut tasks = tasks.into_iter();
            let writer = tasks.next();
            for t in tasks {
                t.abort();
            }
            self.writer.lock().unwrap().take();
            if let Some(w) = writer {
                let until = deadline.min(tokio::time::Instant::now() + limits::SHUTDOWN_GRACE);
                let _ = tokio::time::timeout_at(until, w).await;
            }
            self.shared.pool.close();
            // PostgreSQL's own backup keeps what it committed.
            Ok(())
        })
    }
}
