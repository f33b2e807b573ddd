//! Every SQL statement of the SQLite store, once, by name (as
//! `postgres/sql.rs` keeps PostgreSQL's): the schema and its migrations,
//! then the statements by table. The modules that run them (`reads`,
//! `writer`, `outbox`, `queue`, `inline`, `meta`) hold no SQL text of
//! their own, so a newcomer reads the whole storage format here.
//!
//! Parameters are positional (`?1`, `?2`, …); each statement says what they
//! are. Times are unix milliseconds; a versionstamp is stored as the i64
//! `counter << 16 | index` (`Versionstamp::to_i64`), so one integer orders
//! commits and the changes inside them.

/// The current schema, created idempotently (`IF NOT EXISTS`) inside the
/// first transaction that opens a file. The `meta` rows are listed in `meta.rs`.
pub const SCHEMA: &str = "
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
-- Named positions and identities of this file (meta.rs lists them).
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value
) WITHOUT ROWID;
";

/// Schema 1 → 2: typed values. Existing values are bytes (code 3, the default).
pub const MIGRATE_1_TO_2: &str = "
ALTER TABLE kv ADD COLUMN enc INTEGER NOT NULL DEFAULT 3;
ALTER TABLE changelog ADD COLUMN enc INTEGER NOT NULL DEFAULT 3;
UPDATE meta SET value = 2 WHERE name = 'schema';
";

/// Schema 2 → 3: the queue table (created by `SCHEMA` if missing).
pub const MIGRATE_2_TO_3: &str = "UPDATE meta SET value = 3 WHERE name = 'schema';";

// ------------------------------------------------------------ connection ----

/// A deferred read transaction: the snapshot starts at the first read.
pub const BEGIN: &str = "BEGIN";
pub const COMMIT: &str = "COMMIT";
/// Returns the journal mode now in force (`wal` when the switch worked).
pub const JOURNAL_WAL: &str = "PRAGMA journal_mode=WAL";
/// Copy every WAL frame into the database and truncate the WAL (at shutdown,
/// after a restore): the file then stands alone.
pub const CHECKPOINT_TRUNCATE: &str = "PRAGMA wal_checkpoint(TRUNCATE)";
/// Copy what no reader still needs; never waits for readers (idle writer).
pub const CHECKPOINT_PASSIVE: &str = "PRAGMA wal_checkpoint(PASSIVE)";
/// A checked copy of the database at ?1 (a path), from a read transaction.
pub const VACUUM_INTO: &str = "VACUUM INTO ?1";
pub const VACUUM: &str = "VACUUM";
/// A connection whose writes need no fsync (it only makes a copy).
pub const SYNC_OFF: &str = "PRAGMA synchronous=OFF";
/// A temporary file (a snapshot's copy): no rollback journal, no fsync.
pub const SCRATCH_FILE: &str = "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF";
/// Integrity checks; each returns one row `ok` when the file is sound.
pub const QUICK_CHECK: &str = "PRAGMA quick_check";
pub const INTEGRITY_CHECK: &str = "PRAGMA integrity_check";

// -------------------------------------------------------------------- kv ----

/// The live entry at ?1 (not expired at ?2): key, value, version, expires_at, enc.
pub const GET_ENTRY: &str = "SELECT key, value, version, expires_at, enc FROM kv
     WHERE key = ?1 AND (expires_at IS NULL OR expires_at > ?2)";
/// The live entry's versionstamp at ?1 (not expired at ?2): checks.
pub const ENTRY_VERSION: &str = "SELECT version FROM kv WHERE key = ?1 AND (expires_at IS NULL OR expires_at > ?2)";
/// The live entry's value and encoding at ?1 (not expired at ?2): counters.
pub const ENTRY_VALUE: &str = "SELECT value, enc FROM kv WHERE key = ?1 AND (expires_at IS NULL OR expires_at > ?2)";
// The statements that change `kv`, used by the writer and by a restore.
/// ?1 key, ?2 value, ?3 version, ?4 expires_at, ?5 enc.
pub const PUT_ENTRY: &str = "INSERT OR REPLACE INTO kv (key, value, version, expires_at, enc) VALUES (?1, ?2, ?3, ?4, ?5)";
pub const DELETE_ENTRY: &str = "DELETE FROM kv WHERE key = ?1";
/// Keys (with their expiry) from ?1 up to, not including, ?2.
pub const KEYS_IN_RANGE: &str = "SELECT key, expires_at FROM kv WHERE key >= ?1 AND key < ?2";
/// Keys (with their expiry) from ?1 to the end of the keyspace (?2 is NULL).
pub const KEYS_FROM: &str = "SELECT key, expires_at FROM kv WHERE key >= ?1 AND ?2 IS NULL";
/// At most ?2 entries expired at ?1 (the writer's sweep, in slices).
pub const SWEEP_EXPIRED: &str =
    "DELETE FROM kv WHERE key IN (SELECT key FROM kv WHERE expires_at IS NOT NULL AND expires_at <= ?1 LIMIT ?2)";

/// Which side of a list cursor a page continues on.
#[derive(Clone, Copy)]
pub enum After {
    /// No cursor: the page starts at the range's start.
    Start,
    /// Keys above the cursor (ascending pages).
    Above,
    /// Keys below the cursor (descending pages).
    Below,
}

/// A list page: parameters now, lower bound, [upper bound], [cursor].
/// One of 12 shapes (each cached by the connection), because
/// an absent bound must not be a `NULL` test the planner cannot range-scan.
///
/// No `LIMIT ?`: the caller stops stepping after `limit + 1` rows, which
/// costs the same (rows come off the key order one step at a time), while
/// a bound `LIMIT` is a value the planner reads, so SQLite re-prepared the
/// statement on every execution (parser and planner: the largest cost of a
/// KV Connect `get`; `reads::tests::reads_never_recompile_their_statements`).
pub fn list_entries(upper: bool, after: After, reverse: bool) -> &'static str {
    // Spelled out, not built per call: a page's text is the key of the
    // connection's statement cache, and building it allocated on every list
    // (every KV Connect read).
    macro_rules! ascending_and_descending {
        ($bounds:literal) => {{
            [
                concat!(
                    "SELECT key, value, version, expires_at, enc FROM kv WHERE (expires_at IS NULL OR expires_at > ?) AND key >= ?",
                    $bounds,
                    " ORDER BY key ASC"
                ),
                concat!(
                    "SELECT key, value, version, expires_at, enc FROM kv WHERE (expires_at IS NULL OR expires_at > ?) AND key >= ?",
                    $bounds,
                    " ORDER BY key DESC"
                ),
            ]
        }};
    }
    let pages = match (upper, after) {
        (false, After::Start) => ascending_and_descending!(""),
        (false, After::Above) => ascending_and_descending!(" AND key > ?"),
        (false, After::Below) => ascending_and_descending!(" AND key < ?"),
        (true, After::Start) => ascending_and_descending!(" AND key < ?"),
        (true, After::Above) => ascending_and_descending!(" AND key < ? AND key > ?"),
        (true, After::Below) => ascending_and_descending!(" AND key < ? AND key < ?"),
    };
    pages[usize::from(reverse)]
}

/// Live entries in a range: parameters now, lower bound, [upper bound].
pub fn count_entries(upper: bool) -> &'static str {
    if upper {
        "SELECT count(*) FROM kv WHERE (expires_at IS NULL OR expires_at > ?) AND key >= ? AND key < ?"
    } else {
        "SELECT count(*) FROM kv WHERE (expires_at IS NULL OR expires_at > ?) AND key >= ?"
    }
}

// ------------------------------------------------------------- changelog ----

/// ?1 version, ?2 n (index in the commit), ?3 key, ?4 value (NULL: deleted),
/// ?5 expires_at, ?6 enc.
pub const LOG_CHANGE: &str = "INSERT INTO changelog (version, n, key, value, expires_at, enc) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
/// The records of versions in [?1, ?2), in order (the backup's segments).
pub const LOG_RECORDS: &str =
    "SELECT version, n, key, value, expires_at, enc FROM changelog WHERE version >= ?1 AND version < ?2 ORDER BY version, n";

/// Changes of the keyspace after a position (watch, KV Connect): parameters
/// version, version, n (after (version, n)), lower bound, [upper bound].
/// Queue records (keys from 0xff) are not changes of the keyspace. No
/// `LIMIT ?`, for the reason given at `list_entries`: the caller stops.
pub fn changes_after(upper: bool) -> &'static str {
    if upper {
        "SELECT version, key, value, expires_at, n, enc FROM changelog WHERE (version > ? OR (version = ? AND n > ?)) AND key >= ? AND key < x'ff' AND key < ? ORDER BY version, n"
    } else {
        "SELECT version, key, value, expires_at, n, enc FROM changelog WHERE (version > ? OR (version = ? AND n > ?)) AND key >= ? AND key < x'ff' ORDER BY version, n"
    }
}

/// The first change-log row kept when the oldest ?2 rows below version ?1 go.
pub const PRUNE_SLICE_END: &str = "SELECT version, n FROM changelog WHERE version < ?1 ORDER BY version, n LIMIT 1 OFFSET ?2";
/// Rows before (?1 version, ?2 n).
pub const PRUNE_BEFORE_ROW: &str = "DELETE FROM changelog WHERE (version, n) < (?1, ?2)";
/// Rows below version ?1.
pub const PRUNE_BELOW: &str = "DELETE FROM changelog WHERE version < ?1";
pub const CLEAR_LOG: &str = "DELETE FROM changelog";

// ------------------------------------------------------------------ meta ----

/// The value of row ?1.
pub const META_GET: &str = "SELECT value FROM meta WHERE name = ?1";
/// Row ?1 := ?2.
pub const META_SET: &str = "INSERT INTO meta VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET value = excluded.value";
/// Row ?1 := max(its value, ?2): positions that only move forward.
pub const META_RAISE: &str = "INSERT INTO meta VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET value = max(value, excluded.value)";
/// Row ?1 := ?2 unless it exists (a new file's identities).
pub const META_INIT: &str = "INSERT OR IGNORE INTO meta VALUES (?1, ?2)";
pub const META_REMOVE: &str = "DELETE FROM meta WHERE name = ?1";

// ----------------------------------------------------------------- queue ----

/// ?1 id, ?2 due_at, ?3 attempts, ?4 state; a new message has no lease.
pub const QUEUE_PUT: &str =
    "INSERT OR REPLACE INTO queue (id, due_at, attempts, lease, lease_until, state) VALUES (?1, ?2, ?3, NULL, NULL, ?4)";
pub const QUEUE_DELETE: &str = "DELETE FROM queue WHERE id = ?1";
/// The lease and its expiry of message ?1.
pub const QUEUE_LEASE_OF: &str = "SELECT lease, lease_until FROM queue WHERE id = ?1";
/// Failed attempts so far and state of message ?1.
pub const QUEUE_ATTEMPTS: &str = "SELECT attempts, state FROM queue WHERE id = ?1";
/// Message ?1 falls due again at ?2, unleased (attempts unchanged).
pub const QUEUE_POSTPONE: &str = "UPDATE queue SET due_at = ?2, lease = NULL, lease_until = NULL WHERE id = ?1";
/// Message ?1 is retried at ?2 after ?3 failed attempts, unleased.
pub const QUEUE_RETRY: &str = "UPDATE queue SET due_at = ?2, attempts = ?3, lease = NULL, lease_until = NULL WHERE id = ?1";
/// At most ?2 messages whose lease expired by ?1, oldest expiry first.
pub const QUEUE_EXPIRED_LEASES: &str = "SELECT id FROM queue WHERE lease IS NOT NULL AND lease_until <= ?1 ORDER BY lease_until LIMIT ?2";
/// The next unleased message due by ?1: id, due_at, attempts, state.
pub const QUEUE_NEXT_DUE: &str =
    "SELECT id, due_at, attempts, state FROM queue WHERE lease IS NULL AND due_at <= ?1 ORDER BY due_at, id LIMIT 1";
/// Message ?1 is leased as ?2 until ?3.
pub const QUEUE_LEASE: &str = "UPDATE queue SET lease = ?2, lease_until = ?3 WHERE id = ?1";
/// When the next unleased message falls due.
pub const QUEUE_FIRST_DUE: &str = "SELECT min(due_at) FROM queue WHERE lease IS NULL";
/// When the next lease expires.
pub const QUEUE_FIRST_LEASE_EXPIRY: &str = "SELECT min(lease_until) FROM queue WHERE lease IS NOT NULL";
/// At ?1: messages, due now, leased, the oldest due time.
pub const QUEUE_STATS: &str = "SELECT count(*), sum(lease IS NULL AND due_at <= ?1), sum(lease IS NOT NULL),
        min(CASE WHEN lease IS NULL AND due_at <= ?1 THEN due_at END) FROM queue";
/// At most ?2 messages after id ?1, in id order: id, due_at, attempts, state.
pub const QUEUE_PAGE: &str = "SELECT id, due_at, attempts, state FROM queue WHERE id > ?1 ORDER BY id LIMIT ?2";
/// Every lease dropped (a restored or snapshotted file: delivered again).
pub const QUEUE_DROP_LEASES: &str = "UPDATE queue SET lease = NULL, lease_until = NULL WHERE lease IS NOT NULL";
