//! The replication outbox, as the replica sees it: typed reads of the
//! change log, snapshot copies, and the files a restore builds. Every SQL
//! statement the backup needs is here, once; `replica/` has none.
//!
//! ```text
//! replica ──outbox_next(after, sink)──▶ whole commits after `after` (≤ a byte
//!         cap), each record handed to `sink` as it is read (the replica's
//!         sink compresses it into the segment: a batch is never held whole)
//!         ◀── Batch / Empty / Pruned (the log no longer holds `after+1`:
//!                                     the backup must restart from a snapshot)
//! replica ──snapshot_to(path)──▶ VACUUM INTO path, then reset its history
//! restore ──RestoreFile──▶ check snapshot, apply records, reset history
//! ```
//!
//! The outbox reads on a connection of its own with a small page cache
//! (`limits::OUTBOX_CACHE_KIB`): it reads each log page once, and on the
//! shared readers it filled each one's 8 MiB cache with log pages that
//! nothing reads again (8–9 MiB of RSS per reader with the backup on).
//!
//! "Reset history" (one definition, [`reset_history`]) makes a database say
//! "everything up to commit N is in the backup, and the log holds nothing
//! before N+1": a snapshot and a restored file both start that way.

use std::path::Path;

use rusqlite::{Connection, params};

use sidekv_core::Encoding;

use super::meta::{self, Meta};
use super::sql;
use super::{Store, StoreError, Versionstamp};
use crate::limits;

/// The outbox connection: opened on first use (a store never backed up
/// never opens it), closed with the store.
#[derive(Default)]
pub(super) enum OutboxSlot {
    #[default]
    Unopened,
    Open(Connection),
    Closed,
}

/// One logged mutation of a commit; `value: None` is a delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Versionstamp as stored (`counter << 16 | index`).
    pub version: i64,
    /// Position of the mutation inside its commit.
    pub index: u32,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
    pub expires_at: Option<i64>,
    /// How `value` is encoded (bytes for a delete).
    pub encoding: Encoding,
}

impl Record {
    pub fn counter(&self) -> u64 {
        self.as_ref().counter()
    }

    pub fn as_ref(&self) -> RecordRef<'_> {
        RecordRef {
            version: self.version,
            index: self.index,
            key: &self.key,
            value: self.value.as_deref(),
            expires_at: self.expires_at,
            encoding: self.encoding,
        }
    }
}

/// A [`Record`] borrowed from the row it is read from.
#[derive(Clone, Copy, Debug)]
pub struct RecordRef<'a> {
    pub version: i64,
    pub index: u32,
    pub key: &'a [u8],
    pub value: Option<&'a [u8]>,
    pub expires_at: Option<i64>,
    pub encoding: Encoding,
}

impl RecordRef<'_> {
    pub fn counter(&self) -> u64 {
        (self.version as u64) >> 16
    }

    /// Approximate encoded size (for segment size caps).
    pub fn approx_bytes(&self) -> usize {
        32 + self.key.len() + self.value.map_or(0, <[u8]>::len)
    }

    pub fn to_owned(&self) -> Record {
        Record {
            version: self.version,
            index: self.index,
            key: self.key.to_vec(),
            value: self.value.map(<[u8]>::to_vec),
            expires_at: self.expires_at,
            encoding: self.encoding,
        }
    }
}

/// Takes a batch's records one at a time, in log order, as they are read.
pub trait RecordSink: Send + 'static {
    fn record(&mut self, r: &RecordRef<'_>) -> Result<(), StoreError>;
}

/// Collects the records (tests; the check of a segment found already in S3
/// reads them with `outbox_range`).
#[cfg(test)]
impl RecordSink for Vec<Record> {
    fn record(&mut self, r: &RecordRef<'_>) -> Result<(), StoreError> {
        self.push(r.to_owned());
        Ok(())
    }
}

/// Whole commits `first..=last` of the log (a commit may have no records),
/// their `count` records handed to `records` as they were read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch<S> {
    pub first: u64,
    pub last: u64,
    pub records: S,
    pub count: usize,
    /// The byte cap ended the batch before the last commit.
    pub cut: bool,
}

/// What the log holds after a position.
#[derive(Debug, PartialEq, Eq)]
pub enum Next<S> {
    /// Nothing was committed after it.
    Empty,
    Batch(Batch<S>),
    /// The log no longer holds the next commit (pruned while the backup was
    /// off): segments cannot continue; a snapshot must.
    Pruned {
        pruned_below: u64,
    },
}

/// The row's record, borrowed from it.
fn record_ref<'r>(r: &'r rusqlite::Row<'_>) -> rusqlite::Result<RecordRef<'r>> {
    let value = match r.get_ref(3)? {
        rusqlite::types::ValueRef::Null => None,
        v => Some(v.as_bytes()?),
    };
    Ok(RecordRef {
        version: r.get(0)?,
        index: r.get(1)?,
        key: r.get_ref(2)?.as_bytes()?,
        value,
        expires_at: r.get(4)?,
        encoding: super::reads::encoding(r.get(5)?),
    })
}

fn bounds(first: u64, last: u64) -> [i64; 2] {
    [Versionstamp::commit_start(first).to_i64(), Versionstamp::commit_start(last + 1).to_i64()]
}

fn next_batch<S: RecordSink>(c: &mut Connection, after: u64, max_bytes: usize, mut sink: S) -> Result<Next<S>, StoreError> {
    let tx = c.transaction()?;
    let committed = meta::get(&tx, Meta::Counter)?.unwrap_or(0);
    if committed <= after {
        return Ok(Next::Empty);
    }
    let pruned_below = meta::get(&tx, Meta::PrunedBelow)?.unwrap_or(0);
    if pruned_below > after + 1 {
        return Ok(Next::Pruned { pruned_below });
    }
    let first = after + 1;
    let (mut count, mut bytes, mut last, mut cut, mut prev) = (0usize, 0usize, committed, false, None);
    {
        let mut s = tx.prepare_cached(sql::LOG_RECORDS)?;
        let mut rows = s.query(bounds(first, committed))?;
        while let Some(r) = rows.next()? {
            let rec = record_ref(r)?;
            let counter = rec.counter();
            // Cut only between commits: a segment always holds whole commits.
            if bytes >= max_bytes && prev.is_some_and(|p| p != counter) {
                (last, cut) = (counter - 1, true);
                break;
            }
            bytes += rec.approx_bytes();
            prev = Some(counter);
            count += 1;
            sink.record(&rec)?;
        }
    }
    tx.finish()?;
    Ok(Next::Batch(Batch { first, last, records: sink, count, cut }))
}

fn range(c: &mut Connection, first: u64, last: u64) -> Result<Option<Vec<Record>>, StoreError> {
    let tx = c.transaction()?;
    let pruned_below = meta::get(&tx, Meta::PrunedBelow)?.unwrap_or(0);
    let committed = meta::get(&tx, Meta::Counter)?.unwrap_or(0);
    if first < pruned_below || last > committed {
        return Ok(None);
    }
    let mut s = tx.prepare_cached(sql::LOG_RECORDS)?;
    let out = s.query_map(bounds(first, last), |r| Ok(record_ref(r)?.to_owned()))?.collect::<Result<Vec<_>, _>>()?;
    Ok(Some(out))
}

/// Make `conn` say: commits up to `counter` are all in the backup, and the
/// log holds nothing before `counter + 1`.
fn reset_history(conn: &Connection, counter: u64) -> Result<(), StoreError> {
    // A restored or snapshotted file is a new writer: it gets its own id when opened.
    // Nor does it inherit the versionstamp epoch: it must reserve its own.
    // Nor any queue lease: every pending message is delivered again.
    conn.execute(sql::CLEAR_LOG, [])?;
    meta::remove(conn, Meta::Writer)?;
    meta::remove(conn, Meta::Epoch)?;
    conn.execute(sql::QUEUE_DROP_LEASES, [])?;
    meta::set(conn, Meta::Counter, counter)?;
    meta::set(conn, Meta::Shipped, counter)?;
    meta::set(conn, Meta::PrunedBelow, counter + 1)?;
    Ok(())
}

fn check(conn: &Connection, pragma: &str, what: &str) -> Result<(), StoreError> {
    let ok: String = conn.query_row(pragma, [], |r| r.get(0))?;
    if ok != "ok" {
        return Err(StoreError::Internal(format!("{what} fails {pragma}: {ok}")));
    }
    Ok(())
}

impl Store {
    /// The commits after `after`, whole, up to about `max_bytes`, each
    /// record handed to `sink` as it is read (on the outbox connection, off
    /// the async runtime).
    pub async fn outbox_next<S: RecordSink>(&self, after: u64, max_bytes: usize, sink: S) -> Result<Next<S>, StoreError> {
        self.on_outbox(move |c| next_batch(c, after, max_bytes, sink)).await
    }

    /// The records of commits `first..=last`, or `None` if the log no longer
    /// holds all of them (or they are not committed).
    pub async fn outbox_range(&self, first: u64, last: u64) -> Result<Option<Vec<Record>>, StoreError> {
        self.on_outbox(move |c| range(c, first, last)).await
    }

    /// Run `f` on the outbox connection (opened on first use, with a small
    /// page cache), on the blocking pool.
    async fn on_outbox<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let slot = self.inner.outbox.clone();
        let path = self.path().to_path_buf();
        tokio::task::spawn_blocking(move || {
            let mut conn = slot.lock().unwrap();
            let conn = match &mut *conn {
                OutboxSlot::Closed => return Err(StoreError::Unavailable("the store is closed".into())),
                OutboxSlot::Open(c) => c,
                slot @ OutboxSlot::Unopened => {
                    *slot = OutboxSlot::Open(super::schema::open_small_reader(&path, limits::OUTBOX_CACHE_KIB)?);
                    let OutboxSlot::Open(c) = slot else { unreachable!() };
                    c
                }
            };
            f(conn)
        })
        .await
        .map_err(|e| StoreError::Internal(format!("an outbox read failed: {e}")))?
    }

    /// A consistent copy of the database at `path` with its history reset
    /// at the copy's commit, which is returned. The copy is made on a
    /// connection of its own with a small page cache (a read transaction:
    /// writers go on; it reads every page once), then trimmed, on a
    /// background thread (`crate::background`). Neither step fsyncs: the copy
    /// is a temporary file the replica compresses and deletes (a crash
    /// discards it), and a 300 MB fsync queued the writer's commits behind it.
    pub async fn snapshot_to(&self, path: &Path) -> Result<u64, StoreError> {
        let _ = std::fs::remove_file(path);
        let (src, p) = (self.path().to_path_buf(), path.to_path_buf());
        crate::background::run("sidekv-snapshot", move || copy_trimmed(&src, &p))
            .await
            .unwrap_or_else(|| Err(StoreError::Internal("the snapshot thread failed".into())))
    }
}

fn copy_trimmed(src: &Path, copy: &Path) -> Result<u64, StoreError> {
    {
        let c = super::schema::open_small_reader(src, limits::OUTBOX_CACHE_KIB)?;
        // VACUUM INTO writes with the source connection's `synchronous`.
        c.execute_batch(sql::SYNC_OFF)?;
        c.execute(sql::VACUUM_INTO, [copy.to_string_lossy().as_ref()])?;
    }
    let c = Connection::open(copy)?;
    c.execute_batch(sql::SCRATCH_FILE)?;
    let counter = meta::get(&c, Meta::Counter)?.unwrap_or(0);
    reset_history(&c, counter)?;
    c.execute_batch(sql::VACUUM)?;
    Ok(counter)
}

/// Where a database file stands, read without opening a store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FilePositions {
    /// The last commit.
    pub counter: u64,
    /// The last commit in the backup.
    pub shipped: u64,
    /// The versionstamp epoch reserved for it, if any.
    pub epoch: Option<u64>,
    /// The change log holds no commit below this one.
    pub pruned_below: u64,
}

/// A database file's positions (all zero / none when the file does not exist).
pub fn file_positions(path: &Path) -> Result<FilePositions, StoreError> {
    if !path.exists() {
        return Ok(FilePositions::default());
    }
    // Read-write open: a WAL database cannot always be opened read-only.
    let conn = Connection::open(path).map_err(|e| StoreError::Internal(format!("opening {}: {e}", path.display())))?;
    Ok(FilePositions {
        counter: meta::get(&conn, Meta::Counter)?.unwrap_or(0),
        shipped: meta::get(&conn, Meta::Shipped)?.unwrap_or(0),
        epoch: meta::get(&conn, Meta::Epoch)?,
        pruned_below: meta::get(&conn, Meta::PrunedBelow)?.unwrap_or(0),
    })
}

/// A database file being rebuilt by a restore: a snapshot (or nothing),
/// then segments' records applied in order, then its history reset.
pub struct RestoreFile {
    conn: Connection,
}

impl RestoreFile {
    /// Open (creating the schema if the file is new) the file at `path`.
    pub fn open(path: &Path) -> Result<RestoreFile, StoreError> {
        Ok(RestoreFile { conn: super::schema::open_writer(path)?.0 })
    }

    /// A downloaded snapshot must hold exactly commit `counter` and be sound.
    pub fn check_snapshot(&self, counter: u64) -> Result<(), StoreError> {
        let found = meta::get(&self.conn, Meta::Counter)?.unwrap_or(0);
        if found != counter {
            return Err(StoreError::Internal(format!("the snapshot named for commit {counter} holds commit {found}")));
        }
        check(&self.conn, sql::QUICK_CHECK, &format!("the snapshot for commit {counter}"))
    }

    /// Apply, in one transaction, the records of commits from `from` on
    /// whose versionstamp is at most `limit`.
    pub fn apply(&mut self, records: &[Record], from: u64, limit: i64) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut put = tx.prepare_cached(sql::PUT_ENTRY)?;
            let mut del = tx.prepare_cached(sql::DELETE_ENTRY)?;
            for r in records.iter().filter(|r| r.counter() >= from && r.version <= limit) {
                if super::queue::is_queue_key(&r.key) {
                    super::queue::apply_record(&tx, &r.key, r.value.as_deref())?;
                    continue;
                }
                match &r.value {
                    Some(v) => put.execute(params![r.key, v, r.version, r.expires_at, r.encoding.code()])?,
                    None => del.execute([&r.key])?,
                };
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Reset the history at `counter`, check integrity, and leave a single
    /// self-contained file (the WAL checkpointed into it and truncated).
    pub fn finish(self, counter: u64) -> Result<(), StoreError> {
        reset_history(&self.conn, counter)?;
        check(&self.conn, sql::INTEGRITY_CHECK, "the restored database")?;
        self.conn.query_row(sql::CHECKPOINT_TRUNCATE, [], |_| Ok(()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Mutation, MutationKind, StoreOptions, Value, WriteOp};
    use super::*;

    fn open() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let opts = StoreOptions { replicated: true, ..StoreOptions::default() };
        let s = Store::open(&d.path().join("o.sqlite3"), opts).unwrap();
        (d, s)
    }

    /// Commits of two 1000-byte sets each.
    async fn pairs(s: &Store, n: usize) {
        s.adopt_epoch(1).await.unwrap();
        for i in 0..n {
            let m = |k: String| Mutation { key: k.into_bytes(), kind: MutationKind::Set(Value::bytes(vec![b'v'; 1000])), ttl_ms: None };
            s.write(WriteOp::Atomic { checks: vec![], mutations: vec![m(format!("a{i}")), m(format!("b{i}"))] }).await.unwrap();
        }
    }

    /// The byte cap cuts a batch between commits only, says so, and the
    /// next batch goes on from there: together they are the whole log.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_are_cut_between_commits_at_the_byte_cap() {
        let (_d, s) = open();
        pairs(&s, 20).await;
        let start = s.committed() - 20;
        let Next::Batch(one) = s.outbox_next(start, 5_000, Vec::new()).await.unwrap() else { panic!("no batch") };
        assert!(one.cut, "5000 bytes hold fewer than 20 commits of 2 KB");
        assert_eq!((one.first, one.count, one.records.len()), (start + 1, 6, 6), "whole commits up to the first past the cap");
        assert_eq!(one.last, start + 3);
        assert!(one.records.iter().all(|r| r.counter() <= one.last));
        let Next::Batch(rest) = s.outbox_next(one.last, usize::MAX, Vec::new()).await.unwrap() else { panic!("no batch") };
        assert!(!rest.cut);
        assert_eq!((rest.first, rest.last, rest.count), (one.last + 1, s.committed(), 34));
        let whole = s.outbox_range(start + 1, s.committed()).await.unwrap().unwrap();
        assert_eq!([one.records, rest.records].concat(), whole);
        assert_eq!(s.outbox_next(s.committed(), usize::MAX, Vec::new()).await.unwrap(), Next::Empty);
        s.close();
        let closed = s.outbox_next(start, usize::MAX, Vec::new()).await.unwrap_err();
        assert!(matches!(closed, StoreError::Unavailable(_)), "{closed}");
    }

    /// The outbox reads on its own connection with the small cache, never
    /// on a shared reader (whose 8 MiB cache it filled with log pages).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_outbox_reads_on_its_own_small_connection() {
        let (_d, s) = open();
        pairs(&s, 3).await;
        let reader: i64 = s.read(|c| Ok(c.query_row("PRAGMA cache_size", [], |r| r.get(0))?)).await.unwrap();
        assert_eq!(reader, -(limits::CONNECTION_CACHE_KIB as i64));
        let outbox: i64 = s.on_outbox(|c| Ok(c.query_row("PRAGMA cache_size", [], |r| r.get(0))?)).await.unwrap();
        assert_eq!(outbox, -(limits::OUTBOX_CACHE_KIB as i64));
        s.close();
    }
}
