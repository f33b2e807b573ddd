//! Queues on PostgreSQL: one `sidekv_queue` table shared by every sidecar.
//!
//! ```text
//!  enqueue  the writer's transaction (with the write's checks and mutations)
//!  take     UPDATE … WHERE id = (SELECT … FOR UPDATE SKIP LOCKED LIMIT 1):
//!           each due message is leased by exactly one sidecar per attempt
//!  ack      DELETE … WHERE lease = $2 AND lease_until > now
//!  retry /  lock the message(s) (expired leases: SKIP LOCKED, so sidecars
//!  expiry   share the work), reschedule or dead-letter; a dead letter
//!           takes a commit counter and writes its keys like any write
//! ```
//!
//! Due times and leases use the database's clock, so sidecars with skewed
//! clocks agree on when a lease has expired. A sidecar that is killed
//! leaves its leases behind; they expire and any sidecar's queue task
//! counts them as failed attempts, so the messages are delivered again.

use deadpool_postgres::Pool;
use sidekv_core::{QueueMessage, QueueOp, QueueStats, StoreError, Value, Versionstamp, WriteResult};

use super::plan::ChangeRec;
use super::writer::{TxError, log, take_counter};
use super::{pool_error, sql, store_error};
use crate::backend::queue_body::{Body, Step};
use crate::backend::{PendingMessage, QueueTimes};
use crate::limits;

fn tx_error(e: TxError) -> StoreError {
    match e {
        TxError::Failed(e) => e,
        TxError::Retry(e) => StoreError::Unavailable(format!("a queue update conflicted ({e}); retry")),
        TxError::Unknown { why, .. } => StoreError::OutcomeUnknown(why),
    }
}

pub async fn take(pool: &Pool, visibility_ms: u64) -> Result<Option<QueueMessage>, StoreError> {
    let client = pool.get().await.map_err(pool_error)?;
    let lease = (rand::random::<u64>() >> 1).max(1);
    let stmt = client.prepare_cached(&sql::QUEUE_TAKE).await.map_err(|e| store_error(&e))?;
    let Some(r) = client.query_opt(&stmt, &[&(lease as i64), &(visibility_ms as i64)]).await.map_err(|e| store_error(&e))? else {
        return Ok(None);
    };
    let state: Vec<u8> = r.get(3);
    Ok(Some(QueueMessage {
        id: r.get(0),
        payload: Body::decode(&state).map(|b| b.payload).unwrap_or_default(),
        attempt: r.get::<_, i32>(2) as u32 + 1,
        lease,
        lease_until: r.get::<_, i64>(4) as u64,
        due_at: r.get::<_, i64>(1) as u64,
    }))
}

/// Ack, retry, or expire leases. `PreconditionFailed` when the lease is
/// not the message's current one (or no lease had expired).
pub async fn settle(pool: &Pool, op: QueueOp) -> Result<WriteResult, StoreError> {
    let mut client = pool.get().await.map_err(pool_error)?;
    if let QueueOp::Ack { id, lease } = &op {
        let stmt = client.prepare_cached(&sql::QUEUE_ACK).await.map_err(|e| store_error(&e))?;
        let gone = client.query_opt(&stmt, &[id, &(*lease as i64)]).await.map_err(|e| store_error(&e))?;
        return Ok(match gone {
            Some(_) => WriteResult::Committed { versionstamp: Versionstamp::ZERO, deleted: 0 },
            None => WriteResult::PreconditionFailed,
        });
    }
    let tx = client.transaction().await.map_err(|e| store_error(&e))?;
    // (id, failed attempts after this one, body, the database's time)
    let mut failed: Vec<(String, u32, Vec<u8>, i64)> = Vec::new();
    match &op {
        QueueOp::Retry { id, lease } => {
            let stmt = tx.prepare_cached(&sql::QUEUE_LOCK).await.map_err(|e| store_error(&e))?;
            let Some(r) = tx.query_opt(&stmt, &[id]).await.map_err(|e| store_error(&e))? else {
                return Ok(WriteResult::PreconditionFailed);
            };
            let (held, until, now): (Option<i64>, Option<i64>, i64) = (r.get(2), r.get(3), r.get(4));
            if held != Some(*lease as i64) || until.is_none_or(|u| u <= now) {
                return Ok(WriteResult::PreconditionFailed);
            }
            failed.push((id.clone(), r.get::<_, i32>(0) as u32 + 1, r.get(1), now));
        }
        QueueOp::ExpireLeases => {
            let stmt = tx.prepare_cached(&sql::QUEUE_EXPIRED).await.map_err(|e| store_error(&e))?;
            for r in tx.query(&stmt, &[&(limits::QUEUE_EXPIRE_BATCH as i64)]).await.map_err(|e| store_error(&e))? {
                failed.push((r.get(0), r.get::<_, i32>(1) as u32 + 1, r.get(2), r.get(3)));
            }
            if failed.is_empty() {
                return Ok(WriteResult::PreconditionFailed);
            }
        }
        QueueOp::Ack { .. } => unreachable!("handled above"),
    }
    let mut dead: Vec<Body> = Vec::new();
    for (id, attempts, state, now) in failed.iter() {
        let step = match Body::decode(state) {
            Some(b) => {
                let s = b.after_failure(*attempts, *now as u64);
                if s == Step::DeadLetter {
                    dead.push(b);
                }
                s
            }
            // Unreadable (a newer sidekv wrote it?): keep it, try in an hour.
            None => Step::Retry(*now as u64 + 3_600_000),
        };
        match step {
            Step::Retry(due) => {
                let stmt = tx.prepare_cached(sql::QUEUE_RESCHEDULE).await.map_err(|e| store_error(&e))?;
                tx.execute(&stmt, &[id, &(due as i64), &(*attempts as i32)]).await.map_err(|e| store_error(&e))?;
            }
            Step::DeadLetter => {
                let stmt = tx.prepare_cached(sql::QUEUE_DELETE).await.map_err(|e| store_error(&e))?;
                tx.execute(&stmt, &[id]).await.map_err(|e| store_error(&e))?;
            }
        }
    }
    let mut versionstamp = Versionstamp::ZERO;
    if dead.iter().any(|b| !b.keys.is_empty()) {
        // Dead letters write keys: a commit like any write, in counter order.
        let (counter, _) = take_counter(&tx).await.map_err(tx_error)?;
        let vs = Versionstamp::new(counter, 0);
        // One row per key: the last dead letter to name a key wins.
        let mut rows: std::collections::BTreeMap<&[u8], &Value> = std::collections::BTreeMap::new();
        for b in &dead {
            for k in &b.keys {
                rows.insert(k.as_slice(), &b.payload);
            }
        }
        let changes: Vec<ChangeRec> = rows
            .iter()
            .enumerate()
            .map(|(n, (k, v))| ChangeRec { version: vs, n: n as u32, key: k.to_vec(), value: Some((*v).clone()), expires_at: None })
            .collect();
        let keys: Vec<&[u8]> = rows.keys().copied().collect();
        let values: Vec<&[u8]> = rows.values().map(|v| v.bytes.as_slice()).collect();
        let encs: Vec<i16> = rows.values().map(|v| v.encoding.code() as i16).collect();
        let versions: Vec<i64> = vec![vs.to_i64(); keys.len()];
        let expiries: Vec<Option<i64>> = vec![None; keys.len()];
        let stmt = tx.prepare_cached(sql::UPSERT).await.map_err(|e| store_error(&e))?;
        tx.execute(&stmt, &[&keys, &values, &encs, &versions, &expiries]).await.map_err(|e| store_error(&e))?;
        log(&tx, &changes).await.map_err(tx_error)?;
        versionstamp = vs;
    }
    tx.commit().await.map_err(|e| store_error(&e))?;
    let m = &crate::metrics::METRICS;
    m.queue_failed_attempts.fetch_add(failed.len() as u64, std::sync::atomic::Ordering::Relaxed);
    m.queue_dead_lettered.fetch_add(dead.len() as u64, std::sync::atomic::Ordering::Relaxed);
    Ok(WriteResult::Committed { versionstamp, deleted: 0 })
}

pub async fn times(pool: &Pool) -> Result<QueueTimes, StoreError> {
    let client = pool.get().await.map_err(pool_error)?;
    let r = client.query_one(sql::QUEUE_TIMES, &[]).await.map_err(|e| store_error(&e))?;
    Ok(QueueTimes { due: r.get::<_, Option<i64>>(0).map(|v| v as u64), lease_expiry: r.get::<_, Option<i64>>(1).map(|v| v as u64) })
}

pub async fn stats(pool: &Pool) -> Result<QueueStats, StoreError> {
    let client = pool.get().await.map_err(pool_error)?;
    let r = client.query_one(sql::QUEUE_STATS.as_str(), &[]).await.map_err(|e| store_error(&e))?;
    let now: i64 = r.get(4);
    Ok(QueueStats {
        pending: r.get::<_, i64>(0) as u64,
        due: r.get::<_, i64>(1) as u64,
        leased: r.get::<_, i64>(2) as u64,
        oldest_due_ms: r.get::<_, Option<i64>>(3).map_or(0, |o| now.saturating_sub(o).max(0) as u64),
    })
}

pub async fn list(pool: &Pool, after: String, limit: u32) -> Result<Vec<PendingMessage>, StoreError> {
    let client = pool.get().await.map_err(pool_error)?;
    let rows = client.query(sql::QUEUE_LIST, &[&after, &(limit as i64)]).await.map_err(|e| store_error(&e))?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            let state: Vec<u8> = r.get(3);
            let b = Body::decode(&state)?;
            Some(PendingMessage {
                id: r.get(0),
                due_at: r.get::<_, i64>(1) as u64,
                attempts: r.get::<_, i32>(2) as u32,
                payload: b.payload,
                backoff_schedule: b.backoff,
                keys_if_undelivered: b.keys,
            })
        })
        .collect())
}
