//! The SQLite schema and connection settings.
//!
//! Keys are stored as BLOBs (their UTF-8 bytes) so every comparison is a
//! plain memcmp and a prefix's upper bound is a byte increment. A snapshot of
//! this database is readable with the `sqlite3` CLI:
//! `SELECT CAST(key AS TEXT), value FROM kv`.

use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::StoreError;
use super::writer::WriterState;

/// 2: values carry an encoding (`enc`: 1 V8, 2 little-endian u64, 3 bytes).
/// 3: the `queue` table (Deno KV queues; see `queue.rs`).
pub const SCHEMA_VERSION: i64 = 3;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS kv (
    key        BLOB PRIMARY KEY,
    value      BLOB NOT NULL,
    version    INTEGER NOT NULL,   -- versionstamp: counter << 16 | index
    expires_at INTEGER,            -- unix ms, NULL = never
    enc        INTEGER NOT NULL DEFAULT 3  -- sidekv_core::Encoding code
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kv_expires ON kv(expires_at) WHERE expires_at IS NOT NULL;
-- The replication outbox and watch history: every mutation, in commit order.
-- value NULL = delete. Counters are logged as the value they produced, so a
-- replay is only sets and deletes.
CREATE TABLE IF NOT EXISTS changelog (
    version    INTEGER NOT NULL,
    n          INTEGER NOT NULL,
    key        BLOB NOT NULL,
    value      BLOB,
    expires_at INTEGER,
    enc        INTEGER NOT NULL DEFAULT 3,
    PRIMARY KEY (version, n)
) WITHOUT ROWID;
-- counter: last commit; shipped: last commit confirmed in S3;
-- db_id: identity of this database's history (kept across restores);
-- writer: identity of this file as a backup writer (new after every restore);
-- epoch: the versionstamp epoch reserved in S3 for this file (absent: none).
-- Queue messages not yet delivered (see queue.rs). state: encoding,
-- payload, backoff schedule, keys if undelivered. lease: who holds the
-- current delivery attempt (not logged; a restored file has none).
CREATE TABLE IF NOT EXISTS queue (
    id          TEXT PRIMARY KEY,   -- <versionstamp><index>, 24 hex chars
    due_at      INTEGER NOT NULL,   -- unix ms of the next attempt
    attempts    INTEGER NOT NULL,   -- failed attempts so far
    lease       INTEGER,
    lease_until INTEGER,
    state       BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS queue_due ON queue(due_at, id) WHERE lease IS NULL;
CREATE INDEX IF NOT EXISTS queue_leases ON queue(lease_until) WHERE lease IS NOT NULL;
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value
) WITHOUT ROWID;
";

/// Schema 1 → 2: typed values. Existing values are bytes (code 3, the default).
const MIGRATE_1_TO_2: &str = "
ALTER TABLE kv ADD COLUMN enc INTEGER NOT NULL DEFAULT 3;
ALTER TABLE changelog ADD COLUMN enc INTEGER NOT NULL DEFAULT 3;
UPDATE meta SET value = 2 WHERE name = 'schema';
";

/// Schema 2 → 3: the queue table (created by `SCHEMA` if missing).
const MIGRATE_2_TO_3: &str = "UPDATE meta SET value = 3 WHERE name = 'schema';";

// The statements that change `kv`, each defined once (the writer and a
// restore both apply changes with them).
pub const PUT_ENTRY: &str = "INSERT OR REPLACE INTO kv (key, value, version, expires_at, enc) VALUES (?1, ?2, ?3, ?4, ?5)";
pub const DELETE_ENTRY: &str = "DELETE FROM kv WHERE key = ?1";
pub const LOG_CHANGE: &str = "INSERT INTO changelog (version, n, key, value, expires_at, enc) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

fn base_pragmas(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "cache_size", -8192)?; // 8 MiB per connection
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(())
}

pub fn read_meta_u64(conn: &Connection, name: &str) -> Result<Option<u64>, StoreError> {
    Ok(conn.query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| r.get::<_, i64>(0)).optional()?.map(|v| v as u64))
}

/// Open the writer connection, creating the schema, and read its state.
pub fn open_writer(path: &Path) -> Result<(Connection, WriterState), StoreError> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Internal(format!("creating {}: {e}", dir.display())))?;
    }
    let conn = Connection::open(path).map_err(|e| StoreError::Internal(format!("opening {}: {e}", path.display())))?;
    // 8 KiB pages (before anything is written; ignored for an existing
    // file): a WITHOUT ROWID row stays in its page up to ~2 KiB instead of
    // ~1 KiB, so typical 1 KiB values do not each spill into an overflow
    // page. Measured: 4 KiB pages stored 100k × 1 KiB in 468 MB (4.5× the data).
    conn.pragma_update(None, "page_size", 8192)?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Internal(format!("could not switch {} to WAL (got {mode})", path.display())));
    }
    base_pragmas(&conn)?;
    // Checkpoints run in the writer; keep the WAL from growing without bound.
    conn.pragma_update(None, "wal_autocheckpoint", 4000)?;
    // One transaction (one fsync) for the whole schema: start-up on an empty
    // database otherwise paid an fsync per statement.
    let db_id = format!("{:016x}", rand::random::<u64>());
    // Positive, so it reads back as the same i64 SQLite stores.
    let writer = rand::random::<u64>() >> 1;
    conn.execute_batch(&format!(
        "BEGIN IMMEDIATE;
         {SCHEMA}
         INSERT OR IGNORE INTO meta VALUES ('schema', {SCHEMA_VERSION});
         INSERT OR IGNORE INTO meta VALUES ('counter', 0);
         INSERT OR IGNORE INTO meta VALUES ('shipped', 0);
         INSERT OR IGNORE INTO meta VALUES ('db_id', '{db_id}');
         INSERT OR IGNORE INTO meta VALUES ('writer', {writer});
         COMMIT;"
    ))?;
    let found: Option<i64> = conn.query_row("SELECT value FROM meta WHERE name = 'schema'", [], |r| r.get(0)).optional()?;
    match found {
        None => return Err(StoreError::Internal("the schema row is missing after creation".into())),
        Some(v) if v == SCHEMA_VERSION => {}
        Some(1) => conn.execute_batch(&format!("BEGIN IMMEDIATE; {MIGRATE_1_TO_2} {MIGRATE_2_TO_3} COMMIT;"))?,
        Some(2) => conn.execute_batch(&format!("BEGIN IMMEDIATE; {MIGRATE_2_TO_3} COMMIT;"))?,
        Some(v) => {
            return Err(StoreError::Internal(format!(
                "{} has schema version {v}; this sidekv understands {SCHEMA_VERSION}",
                path.display()
            )));
        }
    }
    let counter = read_meta_u64(&conn, "counter")?.unwrap_or(0);
    let shipped = read_meta_u64(&conn, "shipped")?.unwrap_or(0);
    let db_id: String = conn.query_row("SELECT value FROM meta WHERE name='db_id'", [], |r| r.get(0))?;
    Ok((conn, WriterState { counter, shipped, db_id, commits_since_prune: 0, counter_limit: super::versionstamp::MAX_COUNTER }))
}

/// Open a read-only connection to an existing database.
pub fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn =
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI)
            .map_err(|e| StoreError::Internal(format!("opening {} for reading: {e}", path.display())))?;
    base_pragmas(&conn)?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::super::{ListQuery, Mutation, MutationKind, Store, StoreOptions, Value, WriteOp};

    /// A database written by schema 1 (untyped values) opens, is migrated,
    /// reads its values as bytes, and a REST counter stored as decimal text
    /// keeps counting (now as a u64 value).
    #[tokio::test]
    async fn schema_1_files_are_migrated() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("v1.sqlite3");
        {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE kv (key BLOB PRIMARY KEY, value BLOB NOT NULL, version INTEGER NOT NULL, expires_at INTEGER) WITHOUT ROWID;
                 CREATE TABLE changelog (version INTEGER NOT NULL, n INTEGER NOT NULL, key BLOB NOT NULL, value BLOB, expires_at INTEGER,
                                         PRIMARY KEY (version, n)) WITHOUT ROWID;
                 CREATE TABLE meta (name TEXT PRIMARY KEY, value) WITHOUT ROWID;
                 INSERT INTO meta VALUES ('schema', 1), ('counter', 2), ('shipped', 0), ('db_id', 'x'), ('writer', 5);
                 INSERT INTO kv VALUES (CAST('a' AS BLOB), CAST('hello' AS BLOB), 65536, NULL);
                 INSERT INTO kv VALUES (CAST('n' AS BLOB), CAST('41' AS BLOB), 131072, NULL);",
            )
            .unwrap();
        }
        let s = Store::open(&path, StoreOptions::default()).unwrap();
        let sum =
            WriteOp::Atomic { checks: vec![], mutations: vec![Mutation { key: b"n".to_vec(), kind: MutationKind::Sum(1), ttl_ms: None }] };
        s.write(sum).await.unwrap();
        let page = s.list(ListQuery { limit: 10, ..Default::default() }).await.unwrap();
        let got: Vec<_> = page.entries.into_iter().map(|e| (e.key, e.value)).collect();
        assert_eq!(got, vec![(b"a".to_vec(), Value::bytes(b"hello".to_vec())), (b"n".to_vec(), Value::u64(42))]);
        let schema: i64 =
            s.on_writer(|c, _| Ok(c.query_row("SELECT value FROM meta WHERE name = 'schema'", [], |r| r.get(0))?)).await.unwrap();
        assert_eq!(schema, super::SCHEMA_VERSION);
        s.close();
    }
}
