//! The PostgreSQL writer: one task per sidecar that group-commits.
//!
//! It takes one queued write, drains whatever else is queued (up to
//! `MAX_COMMIT_BATCH`), and runs one transaction for all of them:
//!
//! ```text
//!  BEGIN (read committed)
//!  TAKE_COUNTER        next commit counter + the database's clock; the row
//!                      lock orders this transaction after every other writer's
//!  CURRENT (+ RANGE)   the rows the batch needs, in one statement
//!  plan::plan          outcomes decided in memory
//!  UPSERT, DELETE, LOG the final rows and the change records, in bulk
//!  COMMIT              one fsync for the whole batch
//! ```
//!
//! Because every write transaction takes the clock row first, transactions
//! of all sidecars commit strictly in counter order: once counter `c` is
//! visible, every commit below it is too. That makes the change feed's
//! watermark simply the clock's value (no gaps to wait out), and makes the
//! checks, read in read-committed mode after the lock, exact: nobody else
//! can commit between reading and writing.
//!
//! Errors: a serialization failure or deadlock is retried; a connection
//! lost before COMMIT is "unavailable, nothing written"; a connection lost
//! *during* COMMIT is `OutcomeUnknown`, naming the versionstamp it would have.

use std::collections::BTreeMap;

use deadpool_postgres::Pool;
use sidekv_core::validate::prefix_upper_bound;
use sidekv_core::versionstamp::MAX_COUNTER;
use sidekv_core::{Key, StoreError, Value, Versionstamp, WriteOp, WriteResult};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::IsolationLevel;

use super::plan::{self, Plan, Row};
use super::{decode_row, sql};
use crate::limits;

pub type Reply = oneshot::Sender<Result<WriteResult, StoreError>>;

pub enum WriterMsg {
    Write(WriteOp, Reply),
    /// Delete expired rows (logging the deletes) and prune the change feed.
    Sweep,
}

/// Why a transaction did not commit.
pub(super) enum TxError {
    /// Serialization failure or deadlock: run it again.
    Retry(tokio_postgres::Error),
    /// Nothing was written.
    Failed(StoreError),
    /// COMMIT was sent and no answer came: it may have committed.
    Unknown { plan: Plan, why: String },
}

/// Classify an error from a statement before COMMIT: nothing was written.
fn before_commit(e: tokio_postgres::Error) -> TxError {
    match super::classify(&e) {
        super::ErrorClass::Conflict => TxError::Retry(e),
        _ => TxError::Failed(super::store_error(&e)),
    }
}

/// Classify an error from COMMIT: only a definite refusal (a conflict, a
/// constraint) means "not committed"; a lost connection or a server going
/// down (SQLSTATE class 08 and 57) may have come after the commit was durable.
fn at_commit(e: tokio_postgres::Error, plan: Plan) -> TxError {
    match super::classify(&e) {
        super::ErrorClass::Unreachable => TxError::Unknown { plan, why: super::describe(&e) },
        _ => before_commit(e),
    }
}

/// What a writer hears when its COMMIT's fate is unknown.
fn unknown(vs: Versionstamp, why: &str) -> StoreError {
    StoreError::OutcomeUnknown(format!(
        "the connection to PostgreSQL broke while committing ({why}): the write may or may not have happened; \
         if it did, its versionstamp is {vs}: read the key before retrying"
    ))
}

/// The database cannot be reached (connection refused, lost, timed out).
pub fn unreachable(e: &dyn std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("PostgreSQL is unreachable ({e}); nothing was written, retry shortly"))
}

pub async fn run(pool: Pool, mut rx: mpsc::Receiver<WriterMsg>, committed: watch::Sender<u64>) {
    let mut writes: Vec<(WriteOp, Reply)> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut sweep = false;
        let mut msg = Some(first);
        while let Some(m) = msg.take() {
            match m {
                WriterMsg::Write(op, reply) => writes.push((op, reply)),
                WriterMsg::Sweep => sweep = true,
            }
            if writes.len() < limits::MAX_COMMIT_BATCH {
                msg = rx.try_recv().ok();
            }
        }
        if !writes.is_empty() {
            commit_batch(&pool, std::mem::take(&mut writes), &committed).await;
        }
        if sweep && let Err(e) = super::sweep::run(&pool, &committed).await {
            tracing::warn!(error = %e, "expiry sweep failed");
        }
    }
}

async fn commit_batch(pool: &Pool, batch: Vec<(WriteOp, Reply)>, committed: &watch::Sender<u64>) {
    crate::metrics::METRICS.commit_batch_writes.observe(batch.len() as f64);
    let ops: Vec<&WriteOp> = batch.iter().map(|(op, _)| op).collect();
    let mut attempt = 0;
    let outcome = loop {
        attempt += 1;
        match transaction(pool, &ops).await {
            Err(TxError::Retry(e)) if attempt < limits::PG_TX_RETRIES => {
                tracing::debug!(error = %e, attempt, "write transaction conflicted; retrying");
            }
            Err(TxError::Retry(e)) => {
                break Err(TxError::Failed(StoreError::Unavailable(format!("write conflicts persisted: {e}; retry"))));
            }
            other => break other,
        }
    };
    match outcome {
        Ok((plan, counter)) => {
            if let Some(c) = counter {
                committed.send_if_modified(|v| (c > *v).then(|| *v = c).is_some());
            }
            for ((_, reply), r) in batch.into_iter().zip(plan.results) {
                let _ = reply.send(r);
            }
        }
        Err(TxError::Failed(e)) => {
            for (_, reply) in batch {
                let _ = reply.send(Err(e.clone()));
            }
        }
        Err(TxError::Unknown { plan, why }) => {
            tracing::error!(error = %why, writes = plan.applied, "the connection broke during COMMIT; its outcome is unknown");
            for ((_, reply), r) in batch.into_iter().zip(plan.results) {
                let _ = reply.send(match r {
                    Ok(WriteResult::Committed { versionstamp, .. }) => Err(unknown(versionstamp, &why)),
                    other => other,
                });
            }
        }
        Err(TxError::Retry(_)) => unreachable!("retries end in Failed"),
    }
}

/// One attempt: the plan and, when something was written, its counter.
async fn transaction(pool: &Pool, ops: &[&WriteOp]) -> Result<(Plan, Option<u64>), TxError> {
    let mut client = pool.get().await.map_err(|e| TxError::Failed(super::pool_error(e)))?;
    let tx = client.build_transaction().isolation_level(IsolationLevel::ReadCommitted).start().await.map_err(before_commit)?;
    let (counter, now) = take_counter(&tx).await?;
    let mut current: BTreeMap<Key, Option<Row>> = BTreeMap::new();
    let keys = plan::keys_read(ops);
    let stmt = tx.prepare_cached(sql::CURRENT).await.map_err(before_commit)?;
    for r in tx.query(&stmt, &[&keys, &now]).await.map_err(before_commit)? {
        let (k, row) = decode_row(&r).map_err(TxError::Failed)?;
        current.insert(k, Some(row));
    }
    for k in keys {
        current.entry(k).or_insert(None);
    }
    for op in ops {
        if let WriteOp::DeletePrefix { prefix } = op {
            let upper = prefix_upper_bound(prefix);
            let stmt = tx.prepare_cached(sql::CURRENT_RANGE).await.map_err(before_commit)?;
            for r in tx.query(&stmt, &[prefix, &upper, &now]).await.map_err(before_commit)? {
                let (k, row) = decode_row(&r).map_err(TxError::Failed)?;
                current.entry(k).or_insert(Some(row));
            }
        }
    }
    let plan = plan::plan(ops, current, counter, now);
    if plan.applied == 0 {
        // Nothing to write: the counter is not used (rolled back).
        let _ = tx.rollback().await;
        return Ok((plan, None));
    }
    store(&tx, &plan).await?;
    match tx.commit().await {
        Ok(()) => Ok((plan, Some(counter))),
        Err(e) => Err(at_commit(e, plan)),
    }
}

/// The next commit counter and the database's time (Unix ms).
pub(super) async fn take_counter(tx: &deadpool_postgres::Transaction<'_>) -> Result<(u64, i64), TxError> {
    let stmt = tx.prepare_cached(sql::TAKE_COUNTER).await.map_err(before_commit)?;
    let row = tx.query_one(&stmt, &[]).await.map_err(before_commit)?;
    let counter = row.get::<_, i64>(0) as u64;
    if counter > MAX_COUNTER {
        return Err(TxError::Failed(StoreError::Internal("the commit counter is exhausted".into())));
    }
    Ok((counter, row.get(1)))
}

/// Write a plan's final rows and change records (three statements).
async fn store(tx: &deadpool_postgres::Transaction<'_>, plan: &Plan) -> Result<(), TxError> {
    let (mut keys, mut values, mut encs, mut versions, mut expiries) = (vec![], vec![], vec![], vec![], vec![]);
    let mut deleted: Vec<&[u8]> = vec![];
    for (k, row) in &plan.rows {
        match row {
            Some(r) => {
                keys.push(k.as_slice());
                values.push(r.value.bytes.as_slice());
                encs.push(r.value.encoding.code() as i16);
                versions.push(r.version.to_i64());
                expiries.push(r.expires_at);
            }
            None => deleted.push(k.as_slice()),
        }
    }
    if !keys.is_empty() {
        let stmt = tx.prepare_cached(sql::UPSERT).await.map_err(before_commit)?;
        tx.execute(&stmt, &[&keys, &values, &encs, &versions, &expiries]).await.map_err(before_commit)?;
    }
    if !deleted.is_empty() {
        let stmt = tx.prepare_cached(sql::DELETE).await.map_err(before_commit)?;
        tx.execute(&stmt, &[&deleted]).await.map_err(before_commit)?;
    }
    if !plan.enqueues.is_empty() {
        let ids: Vec<&str> = plan.enqueues.iter().map(|e| e.0.as_str()).collect();
        let dues: Vec<i64> = plan.enqueues.iter().map(|e| e.1).collect();
        let bodies: Vec<&[u8]> = plan.enqueues.iter().map(|e| e.2.as_slice()).collect();
        let stmt = tx.prepare_cached(sql::QUEUE_INSERT).await.map_err(before_commit)?;
        tx.execute(&stmt, &[&ids, &dues, &bodies]).await.map_err(before_commit)?;
    }
    log(tx, &plan.changes).await
}

/// Append change records.
pub(super) async fn log(tx: &deadpool_postgres::Transaction<'_>, changes: &[plan::ChangeRec]) -> Result<(), TxError> {
    if changes.is_empty() {
        return Ok(());
    }
    let versions: Vec<i64> = changes.iter().map(|c| c.version.to_i64()).collect();
    let ns: Vec<i32> = changes.iter().map(|c| c.n as i32).collect();
    let keys: Vec<&[u8]> = changes.iter().map(|c| c.key.as_slice()).collect();
    let values: Vec<Option<&[u8]>> = changes.iter().map(|c| c.value.as_ref().map(|v| v.bytes.as_slice())).collect();
    let encs: Vec<i16> = changes.iter().map(|c| c.value.as_ref().map_or(Value::default().encoding, |v| v.encoding).code() as i16).collect();
    let expiries: Vec<Option<i64>> = changes.iter().map(|c| c.expires_at).collect();
    let stmt = tx.prepare_cached(sql::LOG).await.map_err(before_commit)?;
    tx.execute(&stmt, &[&versions, &ns, &keys, &values, &encs, &expiries]).await.map_err(before_commit)?;
    Ok(())
}

impl std::fmt::Display for TxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TxError::Retry(e) => write!(f, "conflict: {e}"),
            TxError::Failed(e) => write!(f, "{e}"),
            TxError::Unknown { why, .. } => write!(f, "outcome unknown: {why}"),
        }
    }
}
