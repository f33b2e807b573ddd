//! The writer thread: the only connection that writes.
//!
//! Group commit: it blocks for one message, then drains whatever else is
//! queued (up to `MAX_COMMIT_BATCH`) into one `BEGIN IMMEDIATE … COMMIT`, so
//! N concurrent writers share one fsync. Inside the commit every write that
//! applies gets the next index of the commit's versionstamp, so results stay
//! per request. A write whose condition fails, or that is invalid, changes
//! nothing and does not consume an index. An SQLite error fails every write of
//! that commit (nothing of it is visible), never just some of them.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use tokio::sync::watch;

use super::checkpointer::Checkpointer;
use super::inline::InlinePool;
use super::meta::{self, Meta};
use super::queue;
use super::sql;
use super::versionstamp::MAX_COUNTER;
use super::{Check, Condition, StoreError, Value, Versionstamp, WriteOp, WriteResult, WriterMsg, now_ms};
use crate::limits;
use sidekv_core::validate::prefix_upper_bound;
use sidekv_core::{Enqueue, QueueOp};

/// What the writer knows about the database between commits.
pub struct WriterState {
    /// The last committed commit counter.
    pub counter: u64,
    /// The last counter confirmed in S3.
    pub shipped: u64,
    pub db_id: String,
    pub commits_since_prune: u64,
    /// The last counter this database may issue (the end of its reserved
    /// epoch when backed up; see `versionstamp::EPOCH_BITS`).
    pub counter_limit: u64,
}

enum ApplyError {
    /// This request is invalid; it wrote nothing, the others proceed.
    Request(StoreError),
    /// SQLite failed; the whole commit is abandoned.
    Sql(rusqlite::Error),
}

impl From<rusqlite::Error> for ApplyError {
    fn from(e: rusqlite::Error) -> Self {
        ApplyError::Sql(e)
    }
}

type Reply = tokio::sync::oneshot::Sender<Result<WriteResult, StoreError>>;

pub(crate) fn run(
    mut conn: Connection,
    mut state: WriterState,
    rx: crossbeam_channel::Receiver<WriterMsg>,
    committed: watch::Sender<u64>,
    inline: &InlinePool,
    mut checkpointer: Checkpointer,
    replicated: bool,
) {
    let mut writes: Vec<(WriteOp, Reply)> = Vec::with_capacity(64);
    // WAL frames not yet copied into the database file by a checkpoint.
    let mut wal_dirty = false;
    loop {
        let first = match rx.recv_timeout(limits::WRITER_IDLE_CHECKPOINT) {
            Ok(m) => m,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                if wal_dirty {
                    inline.release_all();
                    // Not all of it (the background checkpointer held the
                    // WAL, a reader still needs frames): again after the
                    // next idle interval.
                    wal_dirty = !idle_checkpoint(&conn);
                }
                continue;
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        };
        wal_dirty = true;
        // Kept read snapshots end before the database changes (inline.rs).
        inline.generation().begin_step();
        inline.release_all();
        // A panic in here (a bug, a log sink that fails) must cost only the
        // writes in flight, never the writer: a dead writer fails every later
        // write, and a write queued while it unwinds would wait forever.
        let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut pending = Some(first);
            loop {
                match pending.take() {
                    Some(WriterMsg::Write(op, reply)) => writes.push((op, reply)),
                    Some(other) => {
                        // Keep order: commit the writes queued before this message.
                        commit_batch(&mut conn, &mut state, &mut writes, &committed, replicated);
                        match other {
                            WriterMsg::OnWriter(f) => f(&mut conn, &mut state),
                            WriterMsg::Sweep => {
                                if let Err(e) = sweep(&conn) {
                                    tracing::warn!(error = %e, "expiry sweep failed");
                                }
                            }
                            WriterMsg::Write(..) => unreachable!(),
                        }
                    }
                    None => {}
                }
                if writes.len() >= limits::MAX_COMMIT_BATCH {
                    break;
                }
                match rx.try_recv() {
                    Ok(m) => pending = Some(m),
                    Err(_) => break,
                }
            }
            commit_batch(&mut conn, &mut state, &mut writes, &committed, replicated);
        }));
        inline.generation().end_step();
        checkpointer.committed();
        if step.is_err() {
            // The batch's replies were dropped (its writers got an error) and
            // its transaction rolled back when it unwound.
            writes.clear();
        }
    }
    // Queue closed: shut down cleanly, leaving no WAL behind.
    checkpointer.stop();
    inline.release_all();
    if let Err(e) = conn.query_row(sql::CHECKPOINT_TRUNCATE, [], |_| Ok(())) {
        tracing::warn!(error = %e, "final WAL checkpoint failed");
    }
}

fn commit_batch(
    conn: &mut Connection,
    state: &mut WriterState,
    writes: &mut Vec<(WriteOp, Reply)>,
    committed: &watch::Sender<u64>,
    replicated: bool,
) {
    if writes.is_empty() {
        return;
    }
    let batch: Vec<(WriteOp, Reply)> = std::mem::take(writes);
    crate::metrics::METRICS.commit_batch_writes.observe(batch.len() as f64);
    let counter = state.counter + 1;
    if counter > MAX_COUNTER || counter > state.counter_limit {
        let err = if counter > MAX_COUNTER {
            StoreError::Internal("the commit counter is exhausted".into())
        } else {
            StoreError::Unavailable("no versionstamp range is reserved in S3 for new commits yet (S3 unreachable?); retry shortly".into())
        };
        for (_, reply) in batch {
            let _ = reply.send(Err(err.clone()));
        }
        return;
    }
    let now = now_ms();
    let mut results: Vec<Result<WriteResult, StoreError>> = Vec::with_capacity(batch.len());
    let outcome = (|| -> Result<u16, rusqlite::Error> {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut index: u16 = 0;
        for (op, _) in &batch {
            let vs = Versionstamp::new(counter, index);
            match apply(&tx, op, vs, now) {
                Ok(r) => {
                    if matches!(r, WriteResult::Committed { .. }) {
                        index += 1;
                    }
                    results.push(Ok(r));
                }
                Err(ApplyError::Request(e)) => results.push(Err(e)),
                Err(ApplyError::Sql(e)) => return Err(e),
            }
        }
        if index > 0 {
            meta::set(&tx, Meta::Counter, counter)?;
            tx.commit()?;
        } else {
            tx.rollback()?;
        }
        Ok(index)
    })();
    match outcome {
        Ok(applied) => {
            if applied > 0 {
                state.counter = counter;
                committed.send_replace(counter);
                state.commits_since_prune += 1;
            }
            for ((_, reply), r) in batch.into_iter().zip(results) {
                let _ = reply.send(r);
            }
            if state.commits_since_prune >= limits::PRUNE_EVERY_COMMITS {
                state.commits_since_prune = 0;
                match prune(conn, state, replicated) {
                    // More is left: take the next slice after the next commit,
                    // not all of it now (it would stall every queued write).
                    Ok(PRUNE_BATCH_ROWS_USIZE) => state.commits_since_prune = limits::PRUNE_EVERY_COMMITS,
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "pruning the change log failed"),
                }
            }
        }
        Err(e) => {
            let err = StoreError::from(e);
            tracing::error!(error = %err, writes = batch.len(), "group commit failed; nothing of it was written");
            for (_, reply) in batch {
                let _ = reply.send(Err(err.clone()));
            }
        }
    }
}

/// The live versionstamp of `key` inside the transaction.
fn current_version(tx: &Transaction<'_>, key: &[u8], now: u64) -> rusqlite::Result<Option<Versionstamp>> {
    let mut stmt = tx.prepare_cached(sql::ENTRY_VERSION)?;
    Ok(stmt.query_row(params![key, now as i64], |r| r.get::<_, i64>(0)).optional()?.map(Versionstamp::from_i64))
}

fn current_value(tx: &Transaction<'_>, key: &[u8], now: u64) -> rusqlite::Result<Option<Value>> {
    let mut stmt = tx.prepare_cached(sql::ENTRY_VALUE)?;
    stmt.query_row(params![key, now as i64], |r| Ok(Value { bytes: r.get(0)?, encoding: super::reads::encoding(r.get(1)?) })).optional()
}

fn condition_holds(tx: &Transaction<'_>, key: &[u8], cond: &Condition, now: u64) -> rusqlite::Result<bool> {
    if cond.if_match.is_none() && !cond.if_absent && !cond.if_exists {
        return Ok(true);
    }
    let cur = current_version(tx, key, now)?;
    if cond.if_exists && cur.is_none() {
        return Ok(false);
    }
    if cond.if_absent && cur.is_some() {
        return Ok(false);
    }
    if let Some(want) = cond.if_match {
        return Ok(cur == Some(want));
    }
    Ok(true)
}

fn expiry(now: u64, ttl: Option<u64>) -> Option<i64> {
    ttl.map(|t| now.saturating_add(t) as i64)
}

fn put(tx: &Transaction<'_>, key: &[u8], value: &Value, vs: Versionstamp, n: u32, expires_at: Option<i64>) -> rusqlite::Result<()> {
    let enc = value.encoding.code();
    tx.prepare_cached(sql::PUT_ENTRY)?.execute(params![key, value.bytes, vs.to_i64(), expires_at, enc])?;
    tx.prepare_cached(sql::LOG_CHANGE)?.execute(params![vs.to_i64(), n, key, value.bytes, expires_at, enc])?;
    Ok(())
}

fn del(tx: &Transaction<'_>, key: &[u8], vs: Versionstamp, n: u32) -> rusqlite::Result<()> {
    tx.prepare_cached(sql::DELETE_ENTRY)?.execute(params![key])?;
    tx.prepare_cached(sql::LOG_CHANGE)?.execute(params![
        vs.to_i64(),
        n,
        key,
        None::<Vec<u8>>,
        None::<i64>,
        Value::default().encoding.code()
    ])?;
    Ok(())
}

fn apply(tx: &Transaction<'_>, op: &WriteOp, vs: Versionstamp, now: u64) -> Result<WriteResult, ApplyError> {
    match op {
        WriteOp::Set { key, value, ttl_ms, cond } => {
            if !condition_holds(tx, key, cond, now)? {
                return Ok(WriteResult::PreconditionFailed);
            }
            put(tx, key, value, vs, 0, expiry(now, *ttl_ms))?;
            Ok(WriteResult::Committed { versionstamp: vs, deleted: 0 })
        }
        WriteOp::Delete { key, cond } => {
            if !condition_holds(tx, key, cond, now)? {
                return Ok(WriteResult::PreconditionFailed);
            }
            let existed = current_version(tx, key, now)?.is_some();
            del(tx, key, vs, 0)?;
            Ok(WriteResult::Committed { versionstamp: vs, deleted: existed as u64 })
        }
        WriteOp::DeletePrefix { prefix } => {
            let keys: Vec<(Vec<u8>, Option<i64>)> = {
                let (sql, upper) = match prefix_upper_bound(prefix) {
                    Some(u) => (sql::KEYS_IN_RANGE, Some(u)),
                    None => (sql::KEYS_FROM, None),
                };
                let mut s = tx.prepare_cached(sql)?;
                s.query_map(params![prefix, upper], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?
            };
            let mut live = 0u64;
            for (n, (k, exp)) in keys.iter().enumerate() {
                if exp.is_none_or(|e| e as u64 > now) {
                    live += 1;
                }
                del(tx, k, vs, n as u32)?;
            }
            Ok(WriteResult::Committed { versionstamp: vs, deleted: live })
        }
        WriteOp::Atomic { checks, mutations } => apply_atomic(tx, checks, mutations, &[], vs, now),
        WriteOp::Enqueue { checks, mutations, enqueues } => apply_atomic(tx, checks, mutations, enqueues, vs, now),
        WriteOp::Queue(op) => apply_queue(tx, op, vs, now),
    }
}

/// Settle a delivery attempt, or expire leases: each a commit of its own
/// (index `vs`), logged so the backup and a restore see the same queue.
fn apply_queue(tx: &Transaction<'_>, op: &QueueOp, vs: Versionstamp, now: u64) -> Result<WriteResult, ApplyError> {
    // Dead-lettering writes the payload to each key like any set (no expiry).
    let put_dead_letter = |tx: &Transaction<'_>, key: &[u8], value: &Value, n: u32| put(tx, key, value, vs, n, None);
    let mut n = 0u32;
    let (mut dead, mut failed) = (0u64, 0u64);
    let mut count = |f: queue::Failed| {
        failed += 1;
        if let queue::Failed::DeadLettered = f {
            dead += 1;
        }
    };
    match op {
        QueueOp::Ack { id, lease } => {
            if !queue::holds_lease(tx, id, *lease, now)? {
                return Ok(WriteResult::PreconditionFailed);
            }
            queue::ack(tx, id, vs)?;
        }
        QueueOp::Retry { id, lease } => {
            if !queue::holds_lease(tx, id, *lease, now)? {
                return Ok(WriteResult::PreconditionFailed);
            }
            count(queue::fail(tx, id, vs, &mut n, now, &put_dead_letter)?);
        }
        QueueOp::ExpireLeases => {
            let ids = queue::expired_leases(tx, now, limits::QUEUE_EXPIRE_BATCH)?;
            if ids.is_empty() {
                return Ok(WriteResult::PreconditionFailed);
            }
            for id in ids {
                count(queue::fail(tx, &id, vs, &mut n, now, &put_dead_letter)?);
            }
        }
    }
    let m = &crate::metrics::METRICS;
    m.queue_dead_lettered.fetch_add(dead, std::sync::atomic::Ordering::Relaxed);
    m.queue_failed_attempts.fetch_add(failed, std::sync::atomic::Ordering::Relaxed);
    Ok(WriteResult::Committed { versionstamp: vs, deleted: 0 })
}

/// All reads and validation first, writes last: a failed check or an invalid
/// mutation leaves no trace (denokv commits the earlier mutations of a
/// failing batch; we do not).
fn apply_atomic(
    tx: &Transaction<'_>,
    checks: &[Check],
    mutations: &[super::Mutation],
    enqueues: &[Enqueue],
    vs: Versionstamp,
    now: u64,
) -> Result<WriteResult, ApplyError> {
    for (i, c) in checks.iter().enumerate() {
        if current_version(tx, &c.key, now)? != c.versionstamp {
            return Ok(WriteResult::CheckFailed(i));
        }
    }
    // The batch's view of each key it touches: Some(value) or None (deleted).
    let mut overlay: HashMap<Vec<u8>, Option<Value>> = HashMap::new();
    // (key, new value or None for a delete, expiry)
    let mut planned: Vec<(Vec<u8>, Option<Value>, Option<i64>)> = Vec::with_capacity(mutations.len());
    for (i, m) in mutations.iter().enumerate() {
        let key = m.key_at(vs);
        let current = match overlay.get(&key) {
            Some(v) => v.clone(),
            None => current_value(tx, &key, now)?,
        };
        let new = sidekv_core::mutate(&m.kind, current.as_ref()).map_err(|why| {
            ApplyError::Request(StoreError::InvalidArgument(format!("mutations[{i}]: key {:?} {why}", String::from_utf8_lossy(&key))))
        })?;
        overlay.insert(key.clone(), new.clone());
        planned.push((key, new, expiry(now, m.ttl_ms)));
    }
    let logged = planned.len() as u32;
    for (n, (key, value, exp)) in planned.into_iter().enumerate() {
        match value {
            Some(v) => put(tx, &key, &v, vs, n as u32, exp)?,
            None => del(tx, &key, vs, n as u32)?,
        }
    }
    queue::enqueue(tx, enqueues, vs, logged, now)?;
    Ok(WriteResult::Committed { versionstamp: vs, deleted: 0 })
}

/// Copy the WAL into the database file once writes pause. SQLite's own
/// checkpoint runs only when the WAL passes `wal_autocheckpoint` pages, and
/// the background one (`checkpointer.rs`) at most every 20 ms while writes
/// go on, so the last frames of a burst (an import: up to 32 MB) could stay
/// there indefinitely,
/// and every read then looks pages up through the WAL index and reads many
/// from the WAL file: measured at 1M keys, 2.5 page reads per GET instead
/// of 1. PASSIVE: never waits for readers, never blocks them. False when
/// frames are left to copy (to try again after the next idle interval).
fn idle_checkpoint(conn: &Connection) -> bool {
    // The pragma's row: busy (1: another checkpoint held the WAL), frames
    // in the WAL, frames copied.
    let done = conn.query_row(sql::CHECKPOINT_PASSIVE, [], |r| Ok(r.get::<_, i64>(0)? == 0 && r.get::<_, i64>(1)? == r.get::<_, i64>(2)?));
    done.unwrap_or_else(|e| {
        // Not retried every idle second: the next write's step tries again.
        tracing::warn!(error = %e, "idle WAL checkpoint failed");
        true
    })
}

fn sweep(conn: &Connection) -> rusqlite::Result<usize> {
    let mut s = conn.prepare_cached(sql::SWEEP_EXPIRED)?;
    s.execute(params![now_ms() as i64, limits::EXPIRY_SWEEP_BATCH as i64])
}

const PRUNE_BATCH_ROWS_USIZE: usize = limits::PRUNE_BATCH_ROWS as usize;

/// Drop the oldest change-log rows that are shipped (or not replicated) and
/// older than the watch history: at most `PRUNE_BATCH_ROWS` per call, so a
/// backlog (a bulk import leaves one row per key) is cleared in slices of a
/// few milliseconds between commits. Returns how many rows went.
fn prune(conn: &Connection, state: &WriterState, replicated: bool) -> rusqlite::Result<usize> {
    let history_floor = state.counter.saturating_sub(limits::WATCH_HISTORY_COMMITS) + 1;
    let below = if replicated { history_floor.min(state.shipped + 1) } else { history_floor };
    let cut = Versionstamp::commit_start(below).to_i64();
    let slice_end: Option<(i64, i64)> = conn
        .prepare_cached(sql::PRUNE_SLICE_END)?
        .query_row(params![cut, limits::PRUNE_BATCH_ROWS], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let (deleted, pruned_below) = match slice_end {
        // The commit holding the first kept row may have lost earlier rows:
        // history is whole only after it.
        Some((version, n)) => {
            let deleted = conn.prepare_cached(sql::PRUNE_BEFORE_ROW)?.execute(params![version, n])?;
            (deleted, Versionstamp::from_i64(version).counter + 1)
        }
        None => (conn.prepare_cached(sql::PRUNE_BELOW)?.execute([cut])?, below),
    };
    meta::raise(conn, Meta::PrunedBelow, pruned_below)?;
    Ok(deleted)
}

pub(crate) fn mark_shipped(conn: &mut Connection, state: &mut WriterState, counter: u64) -> Result<(), StoreError> {
    if counter <= state.shipped {
        return Ok(());
    }
    meta::set(conn, Meta::Shipped, counter)?;
    state.shipped = counter;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::meta::{self, Meta};
    use super::*;

    fn log_rows(conn: &Connection) -> i64 {
        conn.query_row("SELECT count(*) FROM changelog", [], |r| r.get(0)).unwrap()
    }

    /// A backlog (here: one commit per 500 keys, as `/_import` leaves it)
    /// goes in bounded slices, never in one long delete that stalls the
    /// writes queued behind it; history stays whole after `pruned_below`.
    #[test]
    fn prune_takes_a_backlog_in_bounded_slices() {
        let dir = tempfile::tempdir().unwrap();
        let (mut conn, mut state) = super::super::schema::open_writer(&dir.path().join("t.sqlite3")).unwrap();
        let commits = 20u64;
        let tx = conn.transaction().unwrap();
        for c in 1..=commits {
            for n in 0..500u32 {
                del(&tx, format!("k{c}/{n}").as_bytes(), Versionstamp::new(c, 0), n).unwrap();
            }
        }
        tx.commit().unwrap();
        state.counter = commits + limits::WATCH_HISTORY_COMMITS;
        let total = log_rows(&conn) as usize;
        let mut passes = 0;
        loop {
            let deleted = prune(&conn, &state, false).unwrap();
            assert!(deleted <= limits::PRUNE_BATCH_ROWS as usize, "one pass deleted {deleted} rows");
            passes += 1;
            let left = log_rows(&conn) as u64;
            let below = meta::get(&conn, Meta::PrunedBelow).unwrap().unwrap();
            // Every commit at or after `pruned_below` is still whole.
            let whole: i64 = conn
                .query_row("SELECT count(*) FROM changelog WHERE version >= ?1", [Versionstamp::commit_start(below).to_i64()], |r| r.get(0))
                .unwrap();
            assert_eq!(whole as u64, (commits + 1).saturating_sub(below) * 500, "pruned_below {below}");
            if left == 0 {
                break;
            }
            assert!(passes < 100);
        }
        assert_eq!(passes, total.div_ceil(limits::PRUNE_BATCH_ROWS as usize));
        assert_eq!(meta::get(&conn, Meta::PrunedBelow).unwrap(), Some(commits + 1));
    }
}
