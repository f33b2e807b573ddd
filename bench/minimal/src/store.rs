//! The SQLite side: one table, point reads on a per-thread connection, and
//! one writer thread that group-commits.
//!
//! Reads run inline on whichever tokio worker thread handles the request,
//! on that thread's own read-only connection (WAL lets them run beside the
//! writer). Writes go through a bounded queue to the writer thread, which
//! takes everything queued (up to `MAX_BATCH`), applies it in one
//! transaction and commits with one fsync (WAL, `synchronous=FULL`); only
//! then is each caller answered. That is the same durability contract as
//! sidekv's local mode, with nothing else around it.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::{mpsc, oneshot};

/// Writes applied per transaction at most (sidekv caps its batches at the same size).
const MAX_BATCH: usize = 4096;
/// Writes waiting for the writer thread before `write` waits for room.
const WRITE_QUEUE: usize = 4096;
/// SQLite's page cache per connection, in KiB (negative = KiB in `PRAGMA cache_size`).
const CACHE_KIB: i64 = 8192;
/// WAL pages before a commit also checkpoints (SQLite's default is 1000).
/// A checkpoint fsyncs the database file inside that commit; fewer, larger
/// ones keep the write path from being measured at its worst.
const WAL_AUTOCHECKPOINT_PAGES: i64 = 4000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("commit failed: {0}")]
    Commit(String),
    #[error("the writer thread has stopped")]
    WriterGone,
}

struct Write {
    key: Vec<u8>,
    value: Vec<u8>,
    done: oneshot::Sender<Result<(), String>>,
}

/// Handle to the database: cheap to share (the queue's sender and a path).
pub struct Store {
    writes: mpsc::Sender<Write>,
}

/// Path of the database, for the per-thread read connections.
static DB_PATH: OnceLock<PathBuf> = OnceLock::new();

thread_local! {
    static READER: RefCell<Option<Connection>> = const { RefCell::new(None) };
}

impl Store {
    /// Create the schema (WAL mode) and start the writer thread.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open(path)?;
        let _: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "cache_size", -CACHE_KIB)?;
        conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)?;
        conn.execute("CREATE TABLE IF NOT EXISTS kv (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID", [])?;
        let _ = DB_PATH.set(path.to_path_buf());
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        std::thread::Builder::new().name("minimal-writer".into()).spawn(move || writer(conn, rx)).expect("spawn the writer thread");
        Ok(Store { writes: tx })
    }

    /// The value of `key`, read on this thread's own connection.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        READER.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.is_none() {
                *slot = Some(open_reader()?);
            }
            let conn = slot.as_ref().expect("opened above");
            let mut stmt = conn.prepare_cached("SELECT value FROM kv WHERE key = ?1")?;
            let mut rows = stmt.query([key])?;
            Ok(match rows.next()? {
                Some(row) => Some(row.get(0)?),
                None => None,
            })
        })
    }

    /// Store `value` under `key`; returns once the commit holding it is on disk.
    pub async fn put(&self, key: Vec<u8>, value: Vec<u8>) -> Result<(), StoreError> {
        let (done, answer) = oneshot::channel();
        self.writes.send(Write { key, value, done }).await.map_err(|_| StoreError::WriterGone)?;
        match answer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(msg)) => Err(StoreError::Commit(msg)),
            Err(_) => Err(StoreError::WriterGone),
        }
    }
}

fn open_reader() -> Result<Connection, StoreError> {
    let path = DB_PATH.get().ok_or(StoreError::WriterGone)?;
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    conn.pragma_update(None, "cache_size", -CACHE_KIB)?;
    Ok(conn)
}

/// The writer thread: wait for a write, take whatever else is queued, commit
/// them all at once, answer each.
fn writer(mut conn: Connection, mut rx: mpsc::Receiver<Write>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.blocking_recv_many(&mut batch, MAX_BATCH) > 0 {
        let outcome = commit(&mut conn, &batch).map_err(|e| e.to_string());
        for w in batch.drain(..) {
            let _ = w.done.send(outcome.clone());
        }
    }
}

fn commit(conn: &mut Connection, batch: &[Write]) -> Result<(), rusqlite::Error> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    {
        let mut stmt = tx.prepare_cached("INSERT OR REPLACE INTO kv (key, value) VALUES (?1, ?2)")?;
        for w in batch {
            stmt.execute((&w.key, &w.value))?;
        }
    }
    tx.commit()
}
