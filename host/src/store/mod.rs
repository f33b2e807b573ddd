//! The store: SQLite underneath, kept off the async runtime.
//!
//! Data flow:
//!
//! ```text
//!  async callers ──WriteOp──▶ bounded queue ──▶ writer thread (one connection)
//!                                               BEGIN IMMEDIATE
//!                                               apply every queued write, each
//!                                               with its own versionstamp
//!                                               append them to `changelog`
//!                                               COMMIT  (one fsync: group commit)
//!                ◀──────── per-write result ─────┘   then `committed` advances
//!
//!  async callers ──closure──▶ reader threads (N connections, WAL snapshots)
//! ```
//!
//! The `changelog` table is the replication outbox (see `replica`): it is
//! written in the same transaction as the data, so a crash can never leave a
//! commit that the backup does not know about. It also serves prefix watches.
//!
//! Expired entries are filtered by every read (`expires_at > now`), so a TTL
//! takes effect at once; the writer's sweep only reclaims space.

pub mod outbox;
mod reads;
mod schema;
pub mod versionstamp;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::Connection;
use tokio::sync::{oneshot, watch};

pub use outbox::Record;
pub use reads::{Change, ChangePos, ListPage, ListQuery};
use schema::read_meta_u64;
pub use versionstamp::Versionstamp;

use crate::limits;

/// One stored key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: Vec<u8>,
    pub versionstamp: Versionstamp,
    /// Unix milliseconds after which the entry is gone.
    pub expires_at: Option<u64>,
}

/// Errors at the store boundary. `http_status` is the one mapping to HTTP.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    #[error("invalid key: {0}")]
    InvalidKey(String),
    #[error("value is {size} bytes, over the {limit}-byte limit (KVSTORE_MAX_VALUE_BYTES)")]
    ValueTooLarge { size: usize, limit: usize },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("the disk holding the database is full")]
    StorageFull,
    #[error("storage failure: {0}")]
    Internal(String),
}

impl StoreError {
    pub fn http_status(&self) -> u16 {
        match self {
            StoreError::InvalidKey(_) | StoreError::InvalidArgument(_) => 400,
            StoreError::ValueTooLarge { .. } => 413,
            StoreError::Unavailable(_) => 503,
            StoreError::StorageFull => 507,
            StoreError::Internal(_) => 500,
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        if let rusqlite::Error::SqliteFailure(code, _) = &e
            && code.code == rusqlite::ErrorCode::DiskFull
        {
            return StoreError::StorageFull;
        }
        StoreError::Internal(e.to_string())
    }
}

/// When a write counts as acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    /// After the commit is fsynced to the local disk.
    Local,
    /// After the segment holding the commit is stored in S3.
    S3,
}

/// A condition on a single-key write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Condition {
    pub if_match: Option<Versionstamp>,
    pub if_absent: bool,
    /// Write only if the key exists (HTTP `If-Match: *`).
    pub if_exists: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub key: String,
    /// `None`: the key must be absent.
    pub versionstamp: Option<Versionstamp>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MutationKind {
    Set(Vec<u8>),
    Delete,
    Sum(u64),
    Min(u64),
    Max(u64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mutation {
    pub key: String,
    pub kind: MutationKind,
    pub ttl_ms: Option<u64>,
}

/// A write request for the writer thread.
#[derive(Clone, Debug)]
pub enum WriteOp {
    Set { key: String, value: Vec<u8>, ttl_ms: Option<u64>, cond: Condition },
    Delete { key: String, cond: Condition },
    DeletePrefix { prefix: String },
    Atomic { checks: Vec<Check>, mutations: Vec<Mutation> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteResult {
    Committed { versionstamp: Versionstamp, deleted: u64 },
    PreconditionFailed,
    CheckFailed(usize),
}

/// Options for opening a store.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub max_value_bytes: usize,
    pub readers: usize,
    pub durability: Durability,
    /// True when a replica ships the changelog; history is then kept until shipped.
    pub replicated: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { max_value_bytes: limits::DEFAULT_MAX_VALUE_BYTES, readers: 2, durability: Durability::Local, replicated: false }
    }
}

type ReadJob = Box<dyn FnOnce(&mut Connection) + Send>;

/// Work run on the writer connection, serialized with writes.
type WriterJob = Box<dyn FnOnce(&mut Connection, &mut writer::WriterState) + Send>;

pub(crate) enum WriterMsg {
    Write(WriteOp, oneshot::Sender<Result<WriteResult, StoreError>>),
    /// Run maintenance on the writer connection (replica bookkeeping).
    OnWriter(WriterJob),
    Sweep,
}

struct Inner {
    path: PathBuf,
    writer_tx: Mutex<Option<crossbeam_channel::Sender<WriterMsg>>>,
    reader_tx: Mutex<Option<crossbeam_channel::Sender<ReadJob>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    committed: watch::Sender<u64>,
    shipped: watch::Sender<u64>,
    /// Why writes are refused right now (fenced, S3 down in s3 mode), if they are.
    write_block: Mutex<Option<String>>,
    write_blocked: AtomicBool,
    /// Set at shutdown: long-polls and streams end at once.
    closing: watch::Sender<bool>,
    opts: StoreOptions,
    /// Identifies this database file in the objects it ships (see `replica::segment`).
    writer_id: u64,
}

/// A cheap, cloneable handle to the store.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

pub fn validate_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::InvalidKey("the key is empty".into()));
    }
    if key.len() > limits::MAX_KEY_BYTES {
        return Err(StoreError::InvalidKey(format!("the key is {} bytes, over the {}-byte limit", key.len(), limits::MAX_KEY_BYTES)));
    }
    Ok(())
}

impl Store {
    /// Open (creating if needed) the database at `path` and start the writer
    /// and reader threads.
    pub fn open(path: &Path, opts: StoreOptions) -> Result<Store, StoreError> {
        let (conn, mut state) = schema::open_writer(path)?;
        let writer_id = read_meta_u64(&conn, "writer")?.unwrap_or(0);
        if opts.replicated {
            // Backed up: commits only inside the epoch reserved in S3; until
            // the replica reserves one (`adopt_epoch`), none.
            state.counter_limit = match read_meta_u64(&conn, "epoch")? {
                Some(e) => versionstamp::epoch_end(e),
                None => state.counter,
            };
        }
        let counter = state.counter;
        let shipped = state.shipped;
        let (writer_tx, writer_rx) = crossbeam_channel::bounded(limits::WRITE_QUEUE_DEPTH);
        let (reader_tx, reader_rx) = crossbeam_channel::unbounded::<ReadJob>();
        let (committed, _) = watch::channel(counter);
        let (shipped_tx, _) = watch::channel(shipped);
        let inner = Arc::new(Inner {
            path: path.to_path_buf(),
            writer_tx: Mutex::new(Some(writer_tx)),
            reader_tx: Mutex::new(Some(reader_tx)),
            threads: Mutex::new(Vec::new()),
            committed,
            shipped: shipped_tx,
            write_block: Mutex::new(None),
            write_blocked: AtomicBool::new(false),
            closing: watch::channel(false).0,
            opts: opts.clone(),
            writer_id,
        });
        let mut threads = Vec::new();
        {
            let committed = inner.committed.clone();
            let replicated = opts.replicated;
            threads.push(
                std::thread::Builder::new()
                    .name("sidekv-writer".into())
                    .spawn(move || writer::run(conn, state, writer_rx, committed, replicated))
                    .map_err(|e| StoreError::Internal(format!("spawning the writer thread: {e}")))?,
            );
        }
        for i in 0..opts.readers.max(1) {
            let mut conn = schema::open_reader(path)?;
            let rx = reader_rx.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("sidekv-reader-{i}"))
                    .spawn(move || {
                        while let Ok(job) = rx.recv() {
                            job(&mut conn);
                        }
                    })
                    .map_err(|e| StoreError::Internal(format!("spawning a reader thread: {e}")))?,
            );
        }
        *inner.threads.lock().unwrap() = threads;
        Ok(Store { inner })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Issue counters in epoch `e` (reserved in S3 by the replica) from now
    /// on: the counter jumps to the epoch's start if it is below it.
    pub async fn adopt_epoch(&self, e: u64) -> Result<u64, StoreError> {
        let me = self.clone();
        self.on_writer(move |conn, state| {
            let start = versionstamp::epoch_start(e);
            let tx = conn.transaction()?;
            tx.execute("INSERT OR REPLACE INTO meta VALUES ('epoch', ?1)", [e as i64])?;
            if state.counter < start {
                tx.execute("UPDATE meta SET value = ?1 WHERE name = 'counter'", [start as i64])?;
            }
            tx.commit()?;
            if state.counter < start {
                state.counter = start;
                me.inner.committed.send_replace(start);
            }
            state.counter_limit = versionstamp::epoch_end(e);
            Ok(state.counter)
        })
        .await
    }

    /// This database file's writer identity (new for every restored file).
    pub fn writer_id(&self) -> u64 {
        self.inner.writer_id
    }

    pub fn options(&self) -> &StoreOptions {
        &self.inner.opts
    }

    /// Run `f` on a reader connection, off the async runtime.
    pub async fn read<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: ReadJob = Box::new(move |conn| {
            let _ = tx.send(f(conn));
        });
        {
            let guard = self.inner.reader_tx.lock().unwrap();
            let sender = guard.as_ref().ok_or_else(|| StoreError::Unavailable("the store is closed".into()))?;
            sender.send(job).map_err(|_| StoreError::Unavailable("the store is closed".into()))?;
        }
        rx.await.map_err(|_| StoreError::Internal("a reader thread died".into()))?
    }

    pub async fn get(&self, key: String) -> Result<Option<Entry>, StoreError> {
        validate_key(&key)?;
        self.read(move |c| reads::get(c, &key, now_ms())).await
    }

    pub async fn get_many(&self, keys: Vec<String>) -> Result<Vec<Option<Entry>>, StoreError> {
        if keys.len() > limits::MAX_GET_MANY_KEYS {
            return Err(StoreError::InvalidArgument(format!(
                "get-many takes at most {} keys, got {}",
                limits::MAX_GET_MANY_KEYS,
                keys.len()
            )));
        }
        for k in &keys {
            validate_key(k)?;
        }
        self.read(move |c| reads::get_many(c, &keys, now_ms())).await
    }

    pub async fn list(&self, q: ListQuery) -> Result<ListPage, StoreError> {
        q.validate()?;
        self.read(move |c| reads::list(c, &q, now_ms())).await
    }

    pub async fn count(&self, q: ListQuery) -> Result<u64, StoreError> {
        self.read(move |c| reads::count(c, &q, now_ms())).await
    }

    /// Changes under `prefix` strictly after `after`, oldest first.
    /// `Err(InvalidArgument)` when `after` is older than the kept history.
    pub async fn changes(&self, prefix: String, after: ChangePos, limit: u32) -> Result<Vec<Change>, StoreError> {
        self.read(move |c| reads::changes(c, &prefix, after, limit)).await
    }

    /// Refuse writes (with this message) until `unblock_writes`.
    pub fn block_writes(&self, why: String) {
        *self.inner.write_block.lock().unwrap() = Some(why);
        self.inner.write_blocked.store(true, Ordering::SeqCst);
    }

    pub fn unblock_writes(&self) {
        *self.inner.write_block.lock().unwrap() = None;
        self.inner.write_blocked.store(false, Ordering::SeqCst);
    }

    pub fn write_block_reason(&self) -> Option<String> {
        if !self.inner.write_blocked.load(Ordering::Relaxed) {
            return None;
        }
        self.inner.write_block.lock().unwrap().clone()
    }

    fn validate_write(&self, op: &WriteOp) -> Result<(), StoreError> {
        let max = self.inner.opts.max_value_bytes;
        let check_value = |v: &[u8]| {
            if v.len() > max { Err(StoreError::ValueTooLarge { size: v.len(), limit: max }) } else { Ok(()) }
        };
        let check_ttl = |t: Option<u64>| match t {
            Some(0) => Err(StoreError::InvalidArgument("ttl must be at least 1 ms".into())),
            Some(t) if t > limits::MAX_TTL_MS => {
                Err(StoreError::InvalidArgument(format!("ttl {t} ms is over the {} ms limit", limits::MAX_TTL_MS)))
            }
            _ => Ok(()),
        };
        match op {
            WriteOp::Set { key, value, ttl_ms, .. } => {
                validate_key(key)?;
                check_value(value)?;
                check_ttl(*ttl_ms)
            }
            WriteOp::Delete { key, .. } => validate_key(key),
            WriteOp::DeletePrefix { prefix } => {
                if prefix.is_empty() {
                    return Err(StoreError::InvalidArgument("delete-prefix needs a non-empty prefix".into()));
                }
                validate_key(prefix)
            }
            WriteOp::Atomic { checks, mutations } => {
                if checks.len() > limits::MAX_ATOMIC_CHECKS {
                    return Err(StoreError::InvalidArgument(format!(
                        "an atomic batch takes at most {} checks, got {}",
                        limits::MAX_ATOMIC_CHECKS,
                        checks.len()
                    )));
                }
                if mutations.len() > limits::MAX_ATOMIC_MUTATIONS {
                    return Err(StoreError::InvalidArgument(format!(
                        "an atomic batch takes at most {} mutations, got {}",
                        limits::MAX_ATOMIC_MUTATIONS,
                        mutations.len()
                    )));
                }
                for (i, c) in checks.iter().enumerate() {
                    validate_key(&c.key).map_err(|e| StoreError::InvalidArgument(format!("checks[{i}]: {e}")))?;
                }
                for (i, m) in mutations.iter().enumerate() {
                    let ctx = |e: StoreError| match e {
                        StoreError::ValueTooLarge { size, limit } => StoreError::ValueTooLarge { size, limit },
                        e => StoreError::InvalidArgument(format!("mutations[{i}]: {e}")),
                    };
                    validate_key(&m.key).map_err(ctx)?;
                    if let MutationKind::Set(v) = &m.kind {
                        check_value(v).map_err(ctx)?;
                    }
                    check_ttl(m.ttl_ms).map_err(ctx)?;
                }
                Ok(())
            }
        }
    }

    fn writer(&self) -> Result<crossbeam_channel::Sender<WriterMsg>, StoreError> {
        self.inner.writer_tx.lock().unwrap().clone().ok_or_else(|| StoreError::Unavailable("the store is shutting down".into()))
    }

    /// Queue a write and wait until it is acknowledged under the configured
    /// durability mode.
    pub async fn write(&self, op: WriteOp) -> Result<WriteResult, StoreError> {
        self.validate_write(&op)?;
        if let Some(why) = self.write_block_reason() {
            return Err(StoreError::Unavailable(why));
        }
        let (tx, rx) = oneshot::channel();
        let sender = self.writer()?;
        // The queue is bounded: when it is full, wait for room off the runtime.
        match sender.try_send(WriterMsg::Write(op, tx)) {
            Ok(()) => {}
            Err(crossbeam_channel::TrySendError::Full(msg)) => {
                tokio::task::spawn_blocking(move || sender.send(msg))
                    .await
                    .map_err(|e| StoreError::Internal(e.to_string()))?
                    .map_err(|_| StoreError::Unavailable("the store is shutting down".into()))?;
            }
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => {
                return Err(StoreError::Unavailable("the store is shutting down".into()));
            }
        }
        let result = rx.await.map_err(|_| StoreError::Internal("the writer thread stopped".into()))??;
        if self.inner.opts.durability == Durability::S3
            && let WriteResult::Committed { versionstamp, .. } = &result
        {
            self.wait_shipped(*versionstamp).await?;
        }
        Ok(result)
    }

    /// In `s3` mode: wait until the commit of `vs` is in S3. A 503 from here
    /// names the versionstamp the write committed under locally, so its
    /// client can tell its fate later (a GET whose ETag is that versionstamp:
    /// it shipped; anything older after a lost disk: it did not).
    async fn wait_shipped(&self, vs: Versionstamp) -> Result<(), StoreError> {
        let mut rx = self.inner.shipped.subscribe();
        let unacked = |why: String| {
            StoreError::Unavailable(format!(
                "committed locally as versionstamp {vs} but not acknowledged: {why}; it ships to S3 when S3 answers, unless this disk is lost first"
            ))
        };
        let wait = async {
            loop {
                if *rx.borrow_and_update() >= vs.counter {
                    return Ok(());
                }
                if let Some(why) = self.write_block_reason() {
                    return Err(unacked(why));
                }
                if rx.changed().await.is_err() {
                    return Err(unacked("the store is shutting down".into()));
                }
            }
        };
        match tokio::time::timeout(limits::S3_ACK_TIMEOUT, wait).await {
            Ok(r) => r,
            Err(_) => Err(unacked(format!("it did not reach S3 within {:?} (KVSTORE_DURABILITY=s3)", limits::S3_ACK_TIMEOUT))),
        }
    }

    /// The newest committed commit counter.
    pub fn committed(&self) -> u64 {
        *self.inner.committed.borrow()
    }

    pub fn subscribe_commits(&self) -> watch::Receiver<u64> {
        self.inner.committed.subscribe()
    }

    /// The newest counter confirmed in S3.
    pub fn shipped(&self) -> u64 {
        *self.inner.shipped.borrow()
    }

    pub fn subscribe_shipped(&self) -> watch::Receiver<u64> {
        self.inner.shipped.subscribe()
    }

    /// Record that every commit up to `counter` is in S3: persist it and
    /// release the changelog rows no longer needed.
    pub async fn mark_shipped(&self, counter: u64) -> Result<(), StoreError> {
        self.on_writer(move |conn, state| writer::mark_shipped(conn, state, counter)).await?;
        self.inner.shipped.send_if_modified(|v| {
            if counter > *v {
                *v = counter;
                true
            } else {
                false
            }
        });
        Ok(())
    }

    /// Wake s3-mode waiters so they see a new write block.
    pub fn wake_shipped_waiters(&self) {
        self.inner.shipped.send_modify(|_| {});
    }

    /// Run `f` on the writer connection, serialized with writes.
    pub async fn on_writer<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection, &mut writer::WriterState) -> Result<R, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let sender = self.writer()?;
        sender
            .send(WriterMsg::OnWriter(Box::new(move |c, s| {
                let _ = tx.send(f(c, s));
            })))
            .map_err(|_| StoreError::Unavailable("the store is shutting down".into()))?;
        rx.await.map_err(|_| StoreError::Internal("the writer thread stopped".into()))?
    }

    /// Delete expired keys now (the background sweep calls this).
    pub fn sweep(&self) {
        if let Some(s) = self.inner.writer_tx.lock().unwrap().as_ref() {
            let _ = s.try_send(WriterMsg::Sweep);
        }
    }

    /// Stop the threads after the queued work is done, and checkpoint the WAL.
    pub fn close(&self) {
        self.inner.writer_tx.lock().unwrap().take();
        self.inner.reader_tx.lock().unwrap().take();
        let threads = std::mem::take(&mut *self.inner.threads.lock().unwrap());
        for t in threads {
            let _ = t.join();
        }
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

    /// Long-poll one key until its versionstamp differs from `since`.
    pub async fn watch(&self, key: String, since: Option<Versionstamp>, timeout: Duration) -> Result<(bool, Option<Entry>), StoreError> {
        validate_key(&key)?;
        let mut commits = self.subscribe_commits();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            commits.borrow_and_update();
            let k = key.clone();
            let current = self.read(move |c| reads::get(c, &k, now_ms())).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("t.sqlite3"), StoreOptions::default()).unwrap();
        (dir, s)
    }

    fn set(key: &str, v: &[u8]) -> WriteOp {
        WriteOp::Set { key: key.into(), value: v.to_vec(), ttl_ms: None, cond: Condition::default() }
    }

    fn committed(r: WriteResult) -> Versionstamp {
        match r {
            WriteResult::Committed { versionstamp, .. } => versionstamp,
            other => panic!("not committed: {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn group_commit_gives_every_write_its_own_increasing_versionstamp() {
        let (_d, s) = open();
        let mut tasks = Vec::new();
        for t in 0..8 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let mut last = Versionstamp::ZERO;
                for i in 0..50 {
                    let vs = committed(s.write(set(&format!("t{t}/{i}"), b"x")).await.unwrap());
                    assert!(vs > last);
                    last = vs;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let all = s.list(ListQuery { prefix: "t".into(), limit: 1000, ..Default::default() }).await.unwrap();
        assert_eq!(all.entries.len(), 400);
        let distinct: std::collections::HashSet<_> = all.entries.iter().map(|e| e.versionstamp).collect();
        assert_eq!(distinct.len(), 400);
        // Fewer commits than writes: the writer batched them.
        assert!(s.committed() <= 400);
        s.close();
    }

    #[tokio::test]
    async fn failing_atomic_batch_leaves_no_trace() {
        let (_d, s) = open();
        committed(s.write(set("text", b"not a number")).await.unwrap());
        let before = s.committed();
        let op = WriteOp::Atomic {
            checks: vec![],
            mutations: vec![
                Mutation { key: "a".into(), kind: MutationKind::Set(b"1".to_vec()), ttl_ms: None },
                Mutation { key: "text".into(), kind: MutationKind::Sum(1), ttl_ms: None },
            ],
        };
        let e = s.write(op).await.unwrap_err();
        assert!(matches!(&e, StoreError::InvalidArgument(m) if m.contains("mutations[1]")), "{e}");
        assert_eq!(s.get("a".into()).await.unwrap(), None);
        assert_eq!(s.committed(), before, "nothing committed");
        let failed = WriteOp::Atomic {
            checks: vec![Check { key: "text".into(), versionstamp: None }],
            mutations: vec![Mutation { key: "b".into(), kind: MutationKind::Delete, ttl_ms: None }],
        };
        assert_eq!(s.write(failed).await.unwrap(), WriteResult::CheckFailed(0));
        s.close();
    }

    #[tokio::test]
    async fn counters_and_conditions() {
        let (_d, s) = open();
        let sum =
            |n| WriteOp::Atomic { checks: vec![], mutations: vec![Mutation { key: "c".into(), kind: MutationKind::Sum(n), ttl_ms: None }] };
        committed(s.write(sum(5)).await.unwrap());
        committed(s.write(sum(7)).await.unwrap());
        assert_eq!(s.get("c".into()).await.unwrap().unwrap().value, b"12");
        let vs = s.get("c".into()).await.unwrap().unwrap().versionstamp;
        let stale = WriteOp::Set {
            key: "c".into(),
            value: b"x".to_vec(),
            ttl_ms: None,
            cond: Condition { if_match: Some(Versionstamp::new(1, 0)), if_absent: false, if_exists: false },
        };
        assert_eq!(s.write(stale).await.unwrap(), WriteResult::PreconditionFailed);
        let fresh = WriteOp::Set {
            key: "c".into(),
            value: b"x".to_vec(),
            ttl_ms: None,
            cond: Condition { if_match: Some(vs), if_absent: false, if_exists: false },
        };
        committed(s.write(fresh).await.unwrap());
        let absent = WriteOp::Set {
            key: "c".into(),
            value: b"y".to_vec(),
            ttl_ms: None,
            cond: Condition { if_match: None, if_absent: true, if_exists: false },
        };
        assert_eq!(s.write(absent).await.unwrap(), WriteResult::PreconditionFailed);
        s.close();
    }

    #[tokio::test]
    async fn ttl_hides_at_once_and_sweep_reclaims() {
        let (_d, s) = open();
        committed(
            s.write(WriteOp::Set { key: "t".into(), value: b"v".to_vec(), ttl_ms: Some(50), cond: Condition::default() }).await.unwrap(),
        );
        assert!(s.get("t".into()).await.unwrap().is_some());
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(s.get("t".into()).await.unwrap().is_none());
        let q = ListQuery { prefix: "".into(), limit: 10, ..Default::default() };
        assert_eq!(s.count(q.clone()).await.unwrap(), 0);
        s.sweep();
        let rows: i64 = s.on_writer(|c, _| Ok(c.query_row("SELECT count(*) FROM kv", [], |r| r.get(0))?)).await.unwrap();
        assert_eq!(rows, 0, "the sweep deleted the expired row");
        s.close();
    }

    #[tokio::test]
    async fn limits_are_enforced_with_clear_errors() {
        let (_d, s) = open();
        let long = "k".repeat(limits::MAX_KEY_BYTES + 1);
        assert!(matches!(s.write(set(&long, b"v")).await, Err(StoreError::InvalidKey(_))));
        let big = vec![0u8; limits::DEFAULT_MAX_VALUE_BYTES + 1];
        assert!(matches!(s.write(set("k", &big)).await, Err(StoreError::ValueTooLarge { .. })));
        let q = ListQuery { limit: limits::MAX_LIST_LIMIT + 1, ..Default::default() };
        assert!(matches!(s.list(q).await, Err(StoreError::InvalidArgument(_))));
        s.close();
    }
}
