//! Every SQL statement of the PostgreSQL backend, once, and its schema
//! migrations.
//!
//! Portability: everything here is also accepted by CockroachDB and
//! YugabyteDB (`ON CONFLICT`, `unnest` of arrays, `= ANY($1)`, `RETURNING`,
//! `FOR UPDATE`-style row locks through `UPDATE … RETURNING`), except where
//! marked **PostgreSQL-only**. Keys are `BYTEA`, which every one of them
//! orders bytewise, as the store requires.

use std::sync::LazyLock;

/// Time in Unix milliseconds as the database sees it. Every sidecar uses
/// the database's clock for expiry, so sidecars with skewed clocks still
/// agree on whether an entry has expired. `statement_timestamp()` is stable
/// within a statement (an index can use it).
pub const NOW_MS: &str = "(extract(epoch from statement_timestamp()) * 1000)::bigint";

/// Schema migrations, in order; `sidekv_migrations` records the applied ones.
/// Each runs in its own transaction together with its row in that table, so
/// sidecars starting at once apply it exactly once (the second blocks on the
/// row, then finds it applied).
pub const MIGRATIONS: &[&str] = &[
    // 1: the data, the change feed, the commit clock, leases.
    "CREATE TABLE sidekv_kv (
        key        BYTEA PRIMARY KEY,
        value      BYTEA NOT NULL,
        enc        SMALLINT NOT NULL,      -- sidekv_core::Encoding code
        version    BIGINT NOT NULL,        -- versionstamp: counter << 16 | index
        expires_at BIGINT                  -- unix ms, NULL = never
     );
     CREATE INDEX sidekv_kv_expires ON sidekv_kv (expires_at) WHERE expires_at IS NOT NULL;
     CREATE TABLE sidekv_changes (
        version    BIGINT NOT NULL,
        n          INTEGER NOT NULL,
        key        BYTEA NOT NULL,
        value      BYTEA,                  -- NULL = delete
        enc        SMALLINT NOT NULL,
        expires_at BIGINT,
        PRIMARY KEY (version, n)
     );
     -- One row: the last commit counter. Every write transaction updates it
     -- first, which orders all writers of all sidecars (see mod.rs).
     CREATE TABLE sidekv_clock (
        id           INTEGER PRIMARY KEY,
        counter      BIGINT NOT NULL,
        pruned_below BIGINT NOT NULL       -- the change feed holds commits >= this
     );
     INSERT INTO sidekv_clock VALUES (1, 0, 0);
     CREATE TABLE sidekv_leases (
        name     TEXT PRIMARY KEY,
        holder   TEXT NOT NULL,
        until_ms BIGINT NOT NULL
     );",
    // 2: queue messages (queue.rs). lease/lease_until: the current delivery
    // attempt's holder; state: payload, backoff schedule, undelivered keys.
    "CREATE TABLE sidekv_queue (
        id          TEXT PRIMARY KEY,      -- <versionstamp><index>, 24 hex chars
        due_at      BIGINT NOT NULL,       -- unix ms (the database's clock)
        attempts    INTEGER NOT NULL,      -- failed attempts so far
        lease       BIGINT,
        lease_until BIGINT,
        state       BYTEA NOT NULL
     );
     CREATE INDEX sidekv_queue_due ON sidekv_queue (due_at, id) WHERE lease IS NULL;
     CREATE INDEX sidekv_queue_leases ON sidekv_queue (lease_until) WHERE lease IS NOT NULL;",
];

pub const CREATE_MIGRATIONS: &str =
    "CREATE TABLE IF NOT EXISTS sidekv_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())";
pub const CLAIM_MIGRATION: &str = "INSERT INTO sidekv_migrations (version) VALUES ($1) ON CONFLICT (version) DO NOTHING";
pub const SCHEMA_VERSION: &str = "SELECT coalesce(max(version), 0) FROM sidekv_migrations";

// ---- reads (pool connections, one statement each: one snapshot) ----

/// One key, live now.
pub static GET: LazyLock<String> = LazyLock::new(|| {
    format!("SELECT key, value, enc, version, expires_at FROM sidekv_kv WHERE key = $1 AND (expires_at IS NULL OR expires_at > {NOW_MS})")
});

/// Keys `$1`, live now, in one snapshot.
pub static GET_MANY: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT key, value, enc, version, expires_at FROM sidekv_kv WHERE key = ANY($1) AND (expires_at IS NULL OR expires_at > {NOW_MS})"
    )
});

/// A list page: `$1` lower bound (inclusive), `$2` upper bound (exclusive,
/// NULL = none), `$3` cursor (exclusive, NULL = none), `$4` limit.
pub fn list(reverse: bool, keys_only: bool) -> String {
    let value = if keys_only { "''::bytea" } else { "value" };
    let (cursor, order) = if reverse { ("key < $3", "DESC") } else { ("key > $3", "ASC") };
    format!(
        "SELECT key, {value}, enc, version, expires_at FROM sidekv_kv
         WHERE key >= $1 AND ($2::bytea IS NULL OR key < $2) AND ($3::bytea IS NULL OR {cursor})
           AND (expires_at IS NULL OR expires_at > {NOW_MS})
         ORDER BY key {order} LIMIT $4"
    )
}

pub static COUNT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT count(*) FROM sidekv_kv WHERE key >= $1 AND ($2::bytea IS NULL OR key < $2)
           AND (expires_at IS NULL OR expires_at > {NOW_MS})"
    )
});

pub const CLOCK: &str = "SELECT counter, pruned_below FROM sidekv_clock WHERE id = 1";

/// Changes after (`$1` version, `$2` n) under [`$3`, `$4`), oldest first, at most `$5`.
pub const CHANGES: &str = "SELECT version, n, key, value, enc, expires_at FROM sidekv_changes
     WHERE (version > $1 OR (version = $1 AND n > $2)) AND key >= $3 AND ($4::bytea IS NULL OR key < $4)
     ORDER BY version, n LIMIT $5";

// ---- writes (the writer's transaction, after TAKE_COUNTER) ----

/// Take the next commit counter. The row lock it takes is held until the
/// transaction ends, so write transactions of every sidecar run one at a
/// time and commit in counter order; the commit's time comes with it.
pub const TAKE_COUNTER: &str =
    "UPDATE sidekv_clock SET counter = counter + 1 WHERE id = 1 RETURNING counter, (extract(epoch from clock_timestamp()) * 1000)::bigint";

/// Current rows of keys `$1`, live at `$2` (the transaction's time).
pub const CURRENT: &str =
    "SELECT key, value, enc, version, expires_at FROM sidekv_kv WHERE key = ANY($1) AND (expires_at IS NULL OR expires_at > $2)";

/// Live rows under [`$1`, `$2`) at `$3` (a delete-prefix).
pub const CURRENT_RANGE: &str = "SELECT key, value, enc, version, expires_at FROM sidekv_kv
     WHERE key >= $1 AND ($2::bytea IS NULL OR key < $2) AND (expires_at IS NULL OR expires_at > $3)";

/// Store final rows (one per key).
pub const UPSERT: &str = "INSERT INTO sidekv_kv (key, value, enc, version, expires_at)
     SELECT * FROM unnest($1::bytea[], $2::bytea[], $3::smallint[], $4::bigint[], $5::bigint[])
     ON CONFLICT (key) DO UPDATE SET value = excluded.value, enc = excluded.enc, version = excluded.version, expires_at = excluded.expires_at";

pub const DELETE: &str = "DELETE FROM sidekv_kv WHERE key = ANY($1)";

pub const LOG: &str = "INSERT INTO sidekv_changes (version, n, key, value, enc, expires_at)
     SELECT * FROM unnest($1::bigint[], $2::integer[], $3::bytea[], $4::bytea[], $5::smallint[], $6::bigint[])";

// ---- maintenance (one sidecar at a time: the sweeper lease) ----

/// Take or renew lease `$1` for holder `$2` until `$3` ms; a row comes back
/// only if this holder has it.
pub const TAKE_LEASE: &str = "INSERT INTO sidekv_leases (name, holder, until_ms) VALUES ($1, $2, $3)
     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until_ms = excluded.until_ms
       WHERE sidekv_leases.holder = excluded.holder OR sidekv_leases.until_ms < (extract(epoch from clock_timestamp()) * 1000)::bigint
     RETURNING holder";

/// Expired rows at `$1`, at most `$2` (inside the sweep's write transaction).
pub const EXPIRED: &str = "SELECT key FROM sidekv_kv WHERE expires_at IS NOT NULL AND expires_at <= $1 ORDER BY expires_at LIMIT $2";

/// Drop change-feed history below version `$1` (the first of a commit).
pub const PRUNE: &str = "DELETE FROM sidekv_changes WHERE version < $1";
pub const SET_PRUNED: &str = "UPDATE sidekv_clock SET pruned_below = greatest(pruned_below, $1) WHERE id = 1";

// ---- queues (queue.rs; due times and leases use the database's clock) ----

/// New messages (the writer's transaction): `$1` ids, `$2` due times, `$3` bodies.
pub const QUEUE_INSERT: &str = "INSERT INTO sidekv_queue (id, due_at, attempts, state)
     SELECT id, due, 0, st FROM unnest($1::text[], $2::bigint[], $3::bytea[]) AS t(id, due, st)";

/// Lease the due message first in line to lease `$1` for `$2` ms. `SKIP
/// LOCKED`: sidecars taking at once each get a different message (or none).
pub static QUEUE_TAKE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE sidekv_queue SET lease = $1, lease_until = {NOW_MS} + $2
         WHERE id = (SELECT id FROM sidekv_queue WHERE lease IS NULL AND due_at <= {NOW_MS}
                     ORDER BY due_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)
           AND lease IS NULL
         RETURNING id, due_at, attempts, state, lease_until"
    )
});

/// Delivered: gone, if `$2` is still its unexpired lease.
pub static QUEUE_ACK: LazyLock<String> =
    LazyLock::new(|| format!("DELETE FROM sidekv_queue WHERE id = $1 AND lease = $2 AND lease_until > {NOW_MS} RETURNING id"));

/// Lock one message (a retry): its attempts, body, lease, and the time.
pub static QUEUE_LOCK: LazyLock<String> =
    LazyLock::new(|| format!("SELECT attempts, state, lease, lease_until, {NOW_MS} FROM sidekv_queue WHERE id = $1 FOR UPDATE"));

/// Lock up to `$1` messages whose lease has expired (others may be locking some).
pub static QUEUE_EXPIRED: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT id, attempts, state, {NOW_MS} FROM sidekv_queue WHERE lease IS NOT NULL AND lease_until <= {NOW_MS}
         ORDER BY lease_until LIMIT $1 FOR UPDATE SKIP LOCKED"
    )
});

pub const QUEUE_RESCHEDULE: &str = "UPDATE sidekv_queue SET due_at = $2, attempts = $3, lease = NULL, lease_until = NULL WHERE id = $1";
pub const QUEUE_DELETE: &str = "DELETE FROM sidekv_queue WHERE id = $1";

/// Earliest due time of an unleased message, earliest lease expiry.
pub const QUEUE_TIMES: &str = "SELECT (SELECT min(due_at) FROM sidekv_queue WHERE lease IS NULL),
            (SELECT min(lease_until) FROM sidekv_queue WHERE lease IS NOT NULL)";

/// Pending, due, leased, the oldest due time, and now.
pub static QUEUE_STATS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT count(*), coalesce(sum(CASE WHEN lease IS NULL AND due_at <= {NOW_MS} THEN 1 ELSE 0 END), 0),
                coalesce(sum(CASE WHEN lease IS NOT NULL THEN 1 ELSE 0 END), 0),
                min(CASE WHEN lease IS NULL AND due_at <= {NOW_MS} THEN due_at END), {NOW_MS}
         FROM sidekv_queue"
    )
});

/// Pending messages after id `$1`, at most `$2`.
pub const QUEUE_LIST: &str = "SELECT id, due_at, attempts, state FROM sidekv_queue WHERE id > $1 ORDER BY id LIMIT $2";
