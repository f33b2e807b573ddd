//! The replication outbox, as the replica sees it: typed reads of the
//! change log, snapshot copies, and the files a restore builds. Every SQL
//! statement the backup needs is here, once; `replica/` has none.
//!
//! ```text
//! replica ──next_batch(after)──▶ whole commits after `after` (≤ a byte cap)
//!         ◀── Batch / Empty / Pruned (the log no longer holds `after+1`:
//!                                     the backup must restart from a snapshot)
//! replica ──snapshot_to(path)──▶ VACUUM INTO path, then reset its history
//! restore ──RestoreFile──▶ check snapshot, apply records, reset history
//! ```
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
        (self.version as u64) >> 16
    }
}

/// Whole commits `first..=last` of the log (a commit may have no records).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub first: u64,
    pub last: u64,
    pub records: Vec<Record>,
    /// The byte cap ended the batch before the last commit.
    pub cut: bool,
}

/// What the log holds after a position.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Nothing was committed after it.
    Empty,
    Batch(Batch),
    /// The log no longer holds the next commit (pruned while the backup was
    /// off): segments cannot continue; a snapshot must.
    Pruned {
        pruned_below: u64,
    },
}

fn record(r: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
    Ok(Record {
        version: r.get(0)?,
        index: r.get(1)?,
        key: r.get(2)?,
        value: r.get(3)?,
        expires_at: r.get(4)?,
        encoding: super::reads::encoding(r.get(5)?),
    })
}

fn bounds(first: u64, last: u64) -> [i64; 2] {
    [Versionstamp::commit_start(first).to_i64(), Versionstamp::commit_start(last + 1).to_i64()]
}

/// Approximate encoded size of a record (for segment size caps).
pub fn record_bytes(r: &Record) -> usize {
    32 + r.key.len() + r.value.as_ref().map_or(0, Vec::len)
}

fn next_batch(c: &mut Connection, after: u64, max_bytes: usize) -> Result<Next, StoreError> {
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
    let (mut records, mut bytes, mut last, mut cut) = (Vec::new(), 0usize, committed, false);
    {
        let mut s = tx.prepare_cached(sql::LOG_RECORDS)?;
        let mut rows = s.query(bounds(first, committed))?;
        while let Some(r) = rows.next()? {
            let rec = record(r)?;
            // Cut only between commits: a segment always holds whole commits.
            if bytes >= max_bytes && records.last().is_some_and(|p: &Record| p.counter() != rec.counter()) {
                last = rec.counter() - 1;
                cut = true;
                break;
            }
            bytes += record_bytes(&rec);
            records.push(rec);
        }
    }
    tx.finish()?;
    Ok(Next::Batch(Batch { first, last, records, cut }))
}

fn range(c: &mut Connection, first: u64, last: u64) -> Result<Option<Vec<Record>>, StoreError> {
    let tx = c.transaction()?;
    let pruned_below = meta::get(&tx, Meta::PrunedBelow)?.unwrap_or(0);
    let committed = meta::get(&tx, Meta::Counter)?.unwrap_or(0);
    if first < pruned_below || last > committed {
        return Ok(None);
    }
    let mut s = tx.prepare_cached(sql::LOG_RECORDS)?;
    let out = s.query_map(bounds(first, last), record)?.collect::<Result<Vec<_>, _>>()?;
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
    /// The commits after `after`, whole, up to about `max_bytes`.
    pub async fn outbox_next(&self, after: u64, max_bytes: usize) -> Result<Next, StoreError> {
        self.read(move |c| next_batch(c, after, max_bytes)).await
    }

    /// The records of commits `first..=last`, or `None` if the log no longer
    /// holds all of them (or they are not committed).
    pub async fn outbox_range(&self, first: u64, last: u64) -> Result<Option<Vec<Record>>, StoreError> {
        self.read(move |c| range(c, first, last)).await
    }

    /// A consistent copy of the database at `path` with its history reset
    /// at the copy's commit, which is returned. The copy is made on a reader
    /// (a read transaction: writers go on), trimmed on the blocking pool.
    pub async fn snapshot_to(&self, path: &Path) -> Result<u64, StoreError> {
        let _ = std::fs::remove_file(path);
        let p = path.to_path_buf();
        self.read(move |c| Ok(c.execute(sql::VACUUM_INTO, [p.to_string_lossy().as_ref()]).map(|_| ())?)).await?;
        let p = path.to_path_buf();
        tokio::task::spawn_blocking(move || -> Result<u64, StoreError> {
            let c = Connection::open(&p)?;
            let counter = meta::get(&c, Meta::Counter)?.unwrap_or(0);
            reset_history(&c, counter)?;
            c.execute_batch(sql::VACUUM)?;
            Ok(counter)
        })
        .await
        .map_err(|e| StoreError::Internal(e.to_string()))?
    }
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
