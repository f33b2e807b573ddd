//! Opening a SQLite file: connection settings, the schema (its text in
//! `sql.rs`) created or migrated, and the writer's starting state.
//!
//! Keys are stored as BLOBs (their UTF-8 bytes) so every comparison is a
//! plain memcmp and a prefix's upper bound is a byte increment. A snapshot of
//! this database is readable with the `sqlite3` CLI:
//! `SELECT CAST(key AS TEXT), value FROM kv`.

use std::path::Path;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use super::StoreError;
use super::meta::{self, Meta};
use super::sql;
use super::writer::WriterState;
use crate::limits;

/// 2: values carry an encoding (`enc`: 1 V8, 2 little-endian u64, 3 bytes).
/// 3: the `queue` table (Deno KV queues; see `queue.rs`).
pub const SCHEMA_VERSION: i64 = 3;

fn base_pragmas(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "cache_size", -(limits::CONNECTION_CACHE_KIB as i64))?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(())
}

/// Open the writer connection, creating the schema, and read its state.
pub fn open_writer(path: &Path) -> Result<(Connection, WriterState), StoreError> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Internal(format!("creating {}: {e}", dir.display())))?;
    }
    let mut conn = Connection::open(path).map_err(|e| StoreError::Internal(format!("opening {}: {e}", path.display())))?;
    // 8 KiB pages (before anything is written; ignored for an existing
    // file): a WITHOUT ROWID row stays in its page up to ~2 KiB instead of
    // ~1 KiB, so typical 1 KiB values do not each spill into an overflow
    // page. Measured: 4 KiB pages stored 100k × 1 KiB in 468 MB (4.5× the data).
    conn.pragma_update(None, "page_size", 8192)?;
    let mode: String = conn.query_row(sql::JOURNAL_WAL, [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Internal(format!("could not switch {} to WAL (got {mode})", path.display())));
    }
    base_pragmas(&conn)?;
    // The writer's checkpoint keeps the WAL from growing without bound; the
    // background one (`checkpointer.rs`) leaves it little to copy.
    conn.pragma_update(None, "wal_autocheckpoint", limits::WAL_AUTOCHECKPOINT_PAGES)?;
    // One transaction (one fsync) for the whole schema: start-up on an empty
    // database otherwise paid an fsync per statement.
    let db_id = format!("{:016x}", rand::random::<u64>());
    // Positive, so it reads back as the same i64 SQLite stores.
    let writer = rand::random::<u64>() >> 1;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(sql::SCHEMA)?;
    meta::init(&tx, Meta::Schema, &SCHEMA_VERSION)?;
    meta::init(&tx, Meta::Counter, &0i64)?;
    meta::init(&tx, Meta::Shipped, &0i64)?;
    meta::init(&tx, Meta::DbId, &db_id)?;
    meta::init(&tx, Meta::Writer, &(writer as i64))?;
    tx.commit()?;
    let found = meta::get(&conn, Meta::Schema)?.map(|v| v as i64);
    match found {
        None => return Err(StoreError::Internal("the schema row is missing after creation".into())),
        Some(v) if v == SCHEMA_VERSION => {}
        Some(1) => migrate(&mut conn, &[sql::MIGRATE_1_TO_2, sql::MIGRATE_2_TO_3])?,
        Some(2) => migrate(&mut conn, &[sql::MIGRATE_2_TO_3])?,
        Some(v) => {
            return Err(StoreError::Internal(format!(
                "{} has schema version {v}; this sidekv understands {SCHEMA_VERSION}",
                path.display()
            )));
        }
    }
    let counter = meta::get(&conn, Meta::Counter)?.unwrap_or(0);
    let shipped = meta::get(&conn, Meta::Shipped)?.unwrap_or(0);
    let db_id = meta::get_text(&conn, Meta::DbId)?.ok_or_else(|| StoreError::Internal("the db_id row is missing".into()))?;
    Ok((conn, WriterState { counter, shipped, db_id, commits_since_prune: 0, counter_limit: super::versionstamp::MAX_COUNTER }))
}

/// Run `steps` (each ends by recording its schema version) in one transaction.
fn migrate(conn: &mut Connection, steps: &[&str]) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for step in steps {
        tx.execute_batch(step)?;
    }
    Ok(tx.commit()?)
}

/// Open a read-only connection to an existing database.
pub fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn =
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI)
            .map_err(|e| StoreError::Internal(format!("opening {} for reading: {e}", path.display())))?;
    base_pragmas(&conn)?;
    Ok(conn)
}

/// The background checkpointer's connection (`checkpointer.rs`): it
/// writes the database file but runs no transaction; a checkpoint copies
/// frames from the WAL file straight into it, so its page cache (allocated
/// as pages are used) stays empty.
pub fn open_checkpointer(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(|e| StoreError::Internal(format!("opening {} for checkpoints: {e}", path.display())))?;
    base_pragmas(&conn)?;
    Ok(conn)
}

/// A read-only connection whose page cache holds at most `cache_kib`: for
/// reads that touch each page once (the change log, a snapshot copy).
pub fn open_small_reader(path: &Path, cache_kib: usize) -> Result<Connection, StoreError> {
    let conn = open_reader(path)?;
    conn.pragma_update(None, "cache_size", -(cache_kib as i64))?;
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
        let schema: i64 = s.on_writer(|c, _| super::super::meta::get(c, super::super::meta::Meta::Schema)).await.unwrap().unwrap() as i64;
        assert_eq!(schema, super::SCHEMA_VERSION);
        s.close();
    }
}
