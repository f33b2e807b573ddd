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
//!                                               │ nudge (≤ 1 per 20 ms)
//!                                               ▼
//!                                   checkpoint thread: WAL ─▶ database file
//!
//!  async callers ──closure──▶ reader threads (N connections, WAL snapshots)
//!
//!  point reads (get, get-many,   ──▶ an inline connection, on the caller's
//!  one-key snapshot reads)           thread; the reader threads when all
//!                                    inline connections are busy
//! ```
//!
//! Point reads run inline because they are bounded (one B-tree descent per
//! key, at most `INLINE_GET_MANY_MAX` keys or one-key ranges) and take a few µs on cached pages,
//! less than the two thread switches of a hand-off to a reader thread
//! (measured: BENCHMARKS.md). An inline connection keeps its read snapshot
//! open between reads until the writer's next step (`inline.rs`), so a run
//! of reads with no write between them pays the WAL read lock once. Lists,
//! counts and change feeds, whose cost grows with the data, always go to
//! the reader threads.
//!
//! The `changelog` table is the replication outbox (see `replica`): it is
//! written in the same transaction as the data, so a crash can never leave a
//! commit that the backup does not know about. It also serves prefix watches.
//!
//! Expired entries are filtered by every read (`expires_at > now`), so a TTL
//! takes effect at once; the writer's sweep only reclaims space.

mod checkpointer;
mod inline;
mod meta;
pub mod outbox;
pub mod queue;
mod reads;
mod schema;
mod sql;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rusqlite::Connection;
use tokio::sync::{oneshot, watch};

use meta::Meta;
pub use outbox::Record;
pub use sidekv_core::versionstamp;
pub use sidekv_core::{
    Change, ChangePos, Check, Condition, Encoding, Entry, Key, ListPage, ListQuery, Mutation, MutationKind, StoreError, Value,
    Versionstamp, WriteOp, WriteResult,
};

use crate::limits;

/// When a write counts as acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// After the commit is fsynced to the local disk.
    Local,
    /// After the segment holding the commit is stored in S3.
    S3,
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
    /// Connections for inline point reads, with their kept snapshots.
    inline: Arc<inline::InlinePool>,
    /// The replica's connection (`outbox`), opened on first use.
    outbox: Arc<Mutex<outbox::OutboxSlot>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    committed: watch::Sender<u64>,
    shipped: watch::Sender<u64>,
    /// Why writes are refused right now (fenced, S3 down in s3 mode), if they are.
    write_block: Mutex<Option<String>>,
    write_blocked: AtomicBool,
    opts: StoreOptions,
    /// Identifies this database file in the objects it ships (see `replica::segment`).
    writer_id: u64,
}

/// A cheap, cloneable handle to the store.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

pub use sidekv_core::now_ms;

impl Store {
    /// Open (creating if needed) the database at `path` and start the writer
    /// and reader threads.
    pub fn open(path: &Path, opts: StoreOptions) -> Result<Store, StoreError> {
        let (conn, mut state) = schema::open_writer(path)?;
        let writer_id = meta::get(&conn, Meta::Writer)?.unwrap_or(0);
        if opts.replicated {
            // Backed up: commits only inside the epoch reserved in S3; until
            // the replica reserves one (`adopt_epoch`), none.
            state.counter_limit = match meta::get(&conn, Meta::Epoch)? {
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
            inline: Arc::new(inline::InlinePool::default()),
            outbox: Arc::default(),
            threads: Mutex::new(Vec::new()),
            committed,
            shipped: shipped_tx,
            write_block: Mutex::new(None),
            write_blocked: AtomicBool::new(false),
            opts: opts.clone(),
            writer_id,
        });
        let mut threads = Vec::new();
        {
            let committed = inner.committed.clone();
            let replicated = opts.replicated;
            let inline = inner.inline.clone();
            let checkpointer = checkpointer::Checkpointer::start(path)?;
            threads.push(
                std::thread::Builder::new()
                    .name("sidekv-writer".into())
                    .spawn(move || writer::run(conn, state, writer_rx, committed, &inline, checkpointer, replicated))
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
        let inline = std::thread::available_parallelism().map_or(1, |n| n.get()).min(limits::INLINE_READERS_MAX);
        for _ in 0..inline {
            inner.inline.add(schema::open_reader(path)?);
        }
        Ok(Store { inner })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Drop the change log below commit `below` and record it, as the
    /// writer's pruning does while no replica ships (tests of what a
    /// pruned history means to the replica and to watchers).
    #[cfg(test)]
    pub(crate) async fn prune_log_below(&self, below: u64) -> Result<(), StoreError> {
        self.on_writer(move |c, _| {
            c.execute(sql::PRUNE_BELOW, [Versionstamp::commit_start(below).to_i64()])?;
            Ok(meta::set(c, Meta::PrunedBelow, below)?)
        })
        .await
    }

    /// Issue counters in epoch `e` (reserved in S3 by the replica) from now
    /// on: the counter jumps to the epoch's start if it is below it.
    pub async fn adopt_epoch(&self, e: u64) -> Result<u64, StoreError> {
        let me = self.clone();
        self.on_writer(move |conn, state| {
            let start = versionstamp::epoch_start(e);
            let tx = conn.transaction()?;
            meta::set(&tx, Meta::Epoch, e)?;
            if state.counter < start {
                meta::set(&tx, Meta::Counter, start)?;
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

    /// Run a bounded point read on an idle inline connection, on this
    /// thread, in one snapshot; `None` when every inline connection is in
    /// use (or closed).
    fn read_inline<R>(&self, f: impl FnOnce(&Connection) -> Result<R, StoreError>) -> Option<Result<R, StoreError>> {
        self.inner.inline.read(f)
    }

    pub async fn get(&self, key: Key) -> Result<Option<Entry>, StoreError> {
        if let Some(r) = self.read_inline(|c| reads::get(c, &key, now_ms())) {
            return r;
        }
        self.read(move |c| reads::get(c, &key, now_ms())).await
    }

    pub async fn get_many(&self, keys: Vec<Key>) -> Result<Vec<Option<Entry>>, StoreError> {
        if keys.len() <= limits::INLINE_GET_MANY_MAX
            && let Some(r) = self.read_inline(|c| reads::get_many(c, &keys, now_ms()))
        {
            return r;
        }
        self.read(move |c| {
            // One read transaction: every key from the same snapshot.
            let tx = c.transaction()?;
            let r = reads::get_many(&tx, &keys, now_ms());
            tx.finish()?;
            r
        })
        .await
    }

    pub async fn list(&self, q: ListQuery) -> Result<ListPage, StoreError> {
        self.read(move |c| reads::list(c, &q, now_ms())).await
    }

    /// Several range queries in one read transaction (one snapshot). Point
    /// reads (KV Connect's `get` and `getMany` ask for ranges that hold one
    /// key each) run inline like `get_many`; real ranges go to the readers.
    pub async fn snapshot_read(&self, queries: Vec<ListQuery>) -> Result<Vec<ListPage>, StoreError> {
        let list_all = |c: &Connection, queries: &[ListQuery]| {
            let now = now_ms();
            queries.iter().map(|q| reads::list(c, q, now)).collect::<Result<Vec<_>, _>>()
        };
        if queries.len() <= limits::INLINE_GET_MANY_MAX
            && queries.iter().all(is_point_range)
            && let Some(r) = self.read_inline(|c| list_all(c, &queries))
        {
            return r;
        }
        self.read(move |c| {
            let tx = c.transaction()?;
            let pages = list_all(&tx, &queries)?;
            tx.finish()?;
            Ok(pages)
        })
        .await
    }

    pub async fn count(&self, q: ListQuery) -> Result<u64, StoreError> {
        self.read(move |c| reads::count(c, &q, now_ms())).await
    }

    /// Changes under `prefix` strictly after `after`, oldest first.
    /// `Err(InvalidArgument)` when `after` is older than the kept history.
    pub async fn changes(&self, prefix: Key, after: ChangePos, limit: u32) -> Result<Vec<Change>, StoreError> {
        self.read(move |c| reads::changes(c, &prefix, after, limit)).await
    }

    /// Lease the next due queue message for `visibility_ms` (a writer job:
    /// serialized with the commits that settle messages).
    pub async fn queue_take(&self, visibility_ms: u64) -> Result<Option<sidekv_core::QueueMessage>, StoreError> {
        if let Some(why) = self.write_block_reason() {
            return Err(StoreError::Unavailable(why));
        }
        self.on_writer(move |c, _| queue::take(c, now_ms(), visibility_ms)).await
    }

    /// When a queue message next falls due or a lease expires (unix ms).
    pub async fn queue_next_event(&self) -> Result<crate::backend::QueueTimes, StoreError> {
        self.read(|c| queue::next_event(c)).await
    }

    pub async fn queue_stats(&self) -> Result<sidekv_core::QueueStats, StoreError> {
        self.read(|c| queue::stats(c, now_ms())).await
    }

    /// Pending messages in id order after `after` (for `/_export`).
    pub async fn queue_list(&self, after: String, limit: u32) -> Result<Vec<sidekv_core::PendingMessage>, StoreError> {
        self.read(move |c| {
            Ok(queue::list(c, &after, limit)?
                .into_iter()
                .map(|(id, due_at, attempts, b)| sidekv_core::PendingMessage {
                    id,
                    due_at,
                    attempts,
                    payload: b.payload,
                    backoff_schedule: b.backoff,
                    keys_if_undelivered: b.keys,
                })
                .collect())
        })
        .await
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

    fn writer(&self) -> Result<crossbeam_channel::Sender<WriterMsg>, StoreError> {
        self.inner.writer_tx.lock().unwrap().clone().ok_or_else(|| StoreError::Unavailable("the store is shutting down".into()))
    }

    /// Queue a write and wait until it is acknowledged under the configured
    /// durability mode.
    pub async fn write(&self, op: WriteOp) -> Result<WriteResult, StoreError> {
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
            StoreError::OutcomeUnknown(format!(
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
        self.inner.inline.clear();
        *self.inner.outbox.lock().unwrap() = outbox::OutboxSlot::Closed;
        let threads = std::mem::take(&mut *self.inner.threads.lock().unwrap());
        for t in threads {
            let _ = t.join();
        }
    }
}

/// A range that can hold one key at most: `start..start ++ [0]`, the shape
/// of KV Connect's point reads. Reading it is one B-tree descent, bounded
/// like `get` whatever the data (expired rows included), so it may run
/// inline on a runtime thread.
fn is_point_range(q: &ListQuery) -> bool {
    match (&q.start, &q.end) {
        (Some(s), Some(e)) => q.cursor.is_none() && e.len() == s.len() + 1 && e.starts_with(s) && e.last() == Some(&0),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("t.sqlite3"), StoreOptions::default()).unwrap();
        (dir, s)
    }

    fn set(key: &str, v: &[u8]) -> WriteOp {
        WriteOp::Set { key: key.into(), value: Value::bytes(v.to_vec()), ttl_ms: None, cond: Condition::default() }
    }

    fn committed(r: WriteResult) -> Versionstamp {
        match r {
            WriteResult::Committed { versionstamp, .. } => versionstamp,
            other => panic!("not committed: {other:?}"),
        }
    }

    /// Keys in the database file alone, as a restore from a copy of it
    /// without its WAL would see them.
    fn keys_in_file_alone(file: &std::path::Path) -> i64 {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("copy.sqlite3");
        std::fs::copy(file, &copy).unwrap();
        let conn = rusqlite::Connection::open(&copy).unwrap();
        // No table yet: the schema itself is still only in the WAL.
        conn.query_row("SELECT count(*) FROM kv", [], |r| r.get(0)).unwrap_or(0)
    }

    /// Writes below the autocheckpoint threshold reach the database file
    /// once writes pause, not only at close (the WAL left by an import made
    /// every later read slower): all of them, the last ones included.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_is_checkpointed_when_writes_pause() {
        let (d, s) = open();
        let file = d.path().join("t.sqlite3");
        for i in 0..500 {
            s.write(set(&format!("k{i}"), &[b'v'; 1024])).await.unwrap();
        }
        let deadline = std::time::Instant::now() + limits::WRITER_IDLE_CHECKPOINT * 5;
        while keys_in_file_alone(&file) < 500 {
            assert!(std::time::Instant::now() < deadline, "the WAL was not checkpointed after writes paused");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        s.close();
    }

    /// The database file takes in the WAL while writes go on, with no pause
    /// and below the writer's autocheckpoint threshold: the background
    /// checkpointer's work (before it, the file did not change until writes
    /// paused for `WRITER_IDLE_CHECKPOINT` or the WAL reached 4000 pages).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_is_checkpointed_while_writes_go_on() {
        let (d, s) = open();
        let file = d.path().join("t.sqlite3");
        let before = std::fs::metadata(&file).unwrap().len();
        // Writes back to back (the writer never idles for its idle
        // checkpoint), 300 × ~4 WAL pages: below the autocheckpoint's 4000.
        let grew = async {
            for i in 0..300 {
                s.write(set(&format!("k{i}"), &[b'v'; 100])).await.unwrap();
                if std::fs::metadata(&file).unwrap().len() > before {
                    return true;
                }
            }
            false
        };
        assert!(grew.await, "the database file did not change in 300 writes");
        s.close();
    }

    /// Point reads on every inline connection, as fast as they go, keeping
    /// read snapshots open (inline.rs) until `stop`.
    fn hammer_point_reads(s: &Store, stop: &Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<u64>> {
        (0..4)
            .map(|_| {
                let (s, stop) = (s.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        s.get(b"k".to_vec()).await.unwrap();
                        n += 1;
                        tokio::task::yield_now().await;
                    }
                    n
                })
            })
            .collect()
    }

    /// A kept read snapshot never hides a write acknowledged before the
    /// read started, while other reads keep snapshots open all the time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kept_read_snapshots_never_hide_an_acknowledged_write() {
        let (_d, s) = open();
        let stop = Arc::new(AtomicBool::new(false));
        let readers = hammer_point_reads(&s, &stop);
        for i in 0..1000u32 {
            committed(s.write(set("k", &i.to_be_bytes())).await.unwrap());
            for _ in 0..3 {
                let got = s.get(b"k".to_vec()).await.unwrap().expect("the acknowledged key is missing");
                assert_eq!(got.value.bytes, i.to_be_bytes(), "write {i} was acknowledged, a later read returned an older value");
                let many = s.get_many(vec![b"k".to_vec()]).await.unwrap();
                assert_eq!(many[0].as_ref().unwrap().value.bytes, i.to_be_bytes(), "get-many after write {i}");
            }
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            assert!(r.await.unwrap() > 0);
        }
        s.close();
    }

    /// Kept read snapshots do not stop the WAL from being checkpointed and
    /// restarted under a steady write load: it stays near its autocheckpoint
    /// size instead of growing with everything written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_stays_bounded_while_point_reads_keep_snapshots() {
        let (d, s) = open();
        let wal = d.path().join("t.sqlite3-wal");
        let stop = Arc::new(AtomicBool::new(false));
        let readers = hammer_point_reads(&s, &stop);
        // ~3 × 8 KiB pages per commit: about 100 MB through the WAL, three
        // times its autocheckpoint size (4000 pages of 8 KiB).
        for i in 0..4000 {
            s.write(set(&format!("w{}", i % 500), &[b'v'; 8000])).await.unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            r.await.unwrap();
        }
        let size = std::fs::metadata(&wal).unwrap().len();
        assert!(size < 48 << 20, "the WAL grew to {} MiB: checkpoints could not restart it", size >> 20);
        s.close();
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
        let all = s.list(ListQuery { prefix: b"t".to_vec(), limit: 1000, ..Default::default() }).await.unwrap();
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
                Mutation { key: b"a".to_vec(), kind: MutationKind::Set(Value::bytes(b"1".to_vec())), ttl_ms: None },
                Mutation { key: b"text".to_vec(), kind: MutationKind::Sum(1), ttl_ms: None },
            ],
        };
        let e = s.write(op).await.unwrap_err();
        assert!(matches!(&e, StoreError::InvalidArgument(m) if m.contains("mutations[1]")), "{e}");
        assert_eq!(s.get(b"a".to_vec()).await.unwrap(), None);
        assert_eq!(s.committed(), before, "nothing committed");
        let failed = WriteOp::Atomic {
            checks: vec![Check { key: b"text".to_vec(), versionstamp: None }],
            mutations: vec![Mutation { key: b"b".to_vec(), kind: MutationKind::Delete, ttl_ms: None }],
        };
        assert_eq!(s.write(failed).await.unwrap(), WriteResult::CheckFailed(0));
        s.close();
    }

    #[tokio::test]
    async fn versionstamped_keys_take_the_commit_s_versionstamp() {
        let (_d, s) = open();
        let m = |v: &[u8]| Mutation {
            key: b"\x02log\x00".to_vec(),
            kind: MutationKind::SetSuffixVersionstamped(Value::bytes(v.to_vec())),
            ttl_ms: None,
        };
        let a = committed(s.write(WriteOp::Atomic { checks: vec![], mutations: vec![m(b"first")] }).await.unwrap());
        let b = committed(s.write(WriteOp::Atomic { checks: vec![], mutations: vec![m(b"second")] }).await.unwrap());
        let page = s.list(ListQuery { prefix: b"\x02log\x00".to_vec(), limit: 10, ..Default::default() }).await.unwrap();
        let got: Vec<(Vec<u8>, Vec<u8>)> = page.entries.into_iter().map(|e| (e.key, e.value.bytes)).collect();
        let key = |vs: Versionstamp| [b"\x02log\x00".as_slice(), &sidekv_core::versionstamp_key_suffix(vs)].concat();
        assert_eq!(got, vec![(key(a), b"first".to_vec()), (key(b), b"second".to_vec())], "in commit order, under their own versionstamps");
        s.close();
    }

    #[tokio::test]
    async fn counters_and_conditions() {
        let (_d, s) = open();
        let sum = |n| WriteOp::Atomic {
            checks: vec![],
            mutations: vec![Mutation { key: b"c".to_vec(), kind: MutationKind::Sum(n), ttl_ms: None }],
        };
        committed(s.write(sum(5)).await.unwrap());
        committed(s.write(sum(7)).await.unwrap());
        assert_eq!(s.get(b"c".to_vec()).await.unwrap().unwrap().value, Value::u64(12));
        let vs = s.get(b"c".to_vec()).await.unwrap().unwrap().versionstamp;
        let stale = WriteOp::Set {
            key: b"c".to_vec(),
            value: Value::bytes(b"x".to_vec()),
            ttl_ms: None,
            cond: Condition { if_match: Some(Versionstamp::new(1, 0)), if_absent: false, if_exists: false },
        };
        assert_eq!(s.write(stale).await.unwrap(), WriteResult::PreconditionFailed);
        let fresh = WriteOp::Set {
            key: b"c".to_vec(),
            value: Value::bytes(b"x".to_vec()),
            ttl_ms: None,
            cond: Condition { if_match: Some(vs), if_absent: false, if_exists: false },
        };
        committed(s.write(fresh).await.unwrap());
        let absent = WriteOp::Set {
            key: b"c".to_vec(),
            value: Value::bytes(b"y".to_vec()),
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
            s.write(WriteOp::Set { key: b"t".to_vec(), value: Value::bytes(b"v".to_vec()), ttl_ms: Some(50), cond: Condition::default() })
                .await
                .unwrap(),
        );
        assert!(s.get(b"t".to_vec()).await.unwrap().is_some());
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(s.get(b"t".to_vec()).await.unwrap().is_none());
        let q = ListQuery { limit: 10, ..Default::default() };
        assert_eq!(s.count(q.clone()).await.unwrap(), 0);
        s.sweep();
        let rows: i64 = s.on_writer(|c, _| Ok(c.query_row("SELECT count(*) FROM kv", [], |r| r.get(0))?)).await.unwrap();
        assert_eq!(rows, 0, "the sweep deleted the expired row");
        s.close();
    }

    /// More writes at once than the writer's queue holds: with the writer
    /// held up, the writes that find the queue full wait for room (off the
    /// runtime), and once it goes on every write commits once, with its own
    /// versionstamp.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_beyond_the_queue_depth_wait_and_all_commit() {
        let (_d, s) = open();
        let (release, held) = std::sync::mpsc::channel::<()>();
        let hold = tokio::spawn({
            let s = s.clone();
            async move {
                s.on_writer(move |_, _| {
                    held.recv().unwrap();
                    Ok(())
                })
                .await
            }
        });
        let n = limits::WRITE_QUEUE_DEPTH * 3;
        let writes: Vec<_> = (0..n)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move { committed(s.write(set(&format!("k{i}"), b"v")).await.unwrap()) })
            })
            .collect();
        // The queue fills up while the writer is held.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while s.writer().unwrap().len() < limits::WRITE_QUEUE_DEPTH {
            assert!(std::time::Instant::now() < deadline, "the write queue never filled");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        release.send(()).unwrap();
        hold.await.unwrap().unwrap();
        let mut stamps = std::collections::HashSet::new();
        for w in writes {
            assert!(stamps.insert(w.await.unwrap()));
        }
        assert_eq!(s.count(ListQuery { limit: u32::MAX, ..Default::default() }).await.unwrap(), n as u64);
        s.close();
    }
}
