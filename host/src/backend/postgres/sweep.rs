//! Expiry sweeping and change-feed pruning for the PostgreSQL backend.
//!
//! Reads never return an expired entry (they compare with the database's
//! clock), so sweeping only reclaims space — but the deletes it makes are
//! recorded in the change feed, so a prefix watch sees an expired key go.
//! One sidecar sweeps at a time: each one tries to take or renew the
//! `sweeper` lease every `EXPIRY_SWEEP_INTERVAL`, and only the holder asks
//! its writer to sweep (so the sweep is serialized with its own writes and
//! takes a commit counter like any write).

use deadpool_postgres::Pool;
use sidekv_core::Versionstamp;
use tokio::sync::watch;
use tokio_postgres::IsolationLevel;

use super::plan::ChangeRec;
use super::sql;
use super::writer::{TxError, log, take_counter};
use crate::limits;

/// Try to hold the sweeper lease for `holder`: true when this sidecar has it.
pub async fn take_lease(pool: &Pool, holder: &str) -> Result<bool, String> {
    let client = pool.get().await.map_err(|e| super::pool_error(e).to_string())?;
    let stmt = client.prepare_cached(sql::TAKE_LEASE).await.map_err(|e| e.to_string())?;
    let until = crate::backend::now_ms() as i64 + limits::PG_SWEEP_LEASE.as_millis() as i64;
    let rows = client.query(&stmt, &[&"sweeper", &holder, &until]).await.map_err(|e| e.to_string())?;
    Ok(!rows.is_empty())
}

/// One sweep transaction: delete up to `EXPIRY_SWEEP_BATCH` expired rows
/// under a new commit, and prune change history past the kept window.
pub async fn run(pool: &Pool, committed: &watch::Sender<u64>) -> Result<(), TxError> {
    let mut client = pool.get().await.map_err(|e| TxError::Failed(super::pool_error(e)))?;
    let tx = client.build_transaction().isolation_level(IsolationLevel::ReadCommitted).start().await.map_err(fail)?;
    let (counter, now) = take_counter(&tx).await?;
    let stmt = tx.prepare_cached(sql::EXPIRED).await.map_err(fail)?;
    let expired: Vec<Vec<u8>> =
        tx.query(&stmt, &[&now, &(limits::EXPIRY_SWEEP_BATCH as i64)]).await.map_err(fail)?.iter().map(|r| r.get(0)).collect();
    let clock = tx.query_one(sql::CLOCK, &[]).await.map_err(fail)?;
    let pruned_below = clock.get::<_, i64>(1) as u64;
    let below = counter.saturating_sub(limits::WATCH_HISTORY_COMMITS) + 1;
    let prune = below > pruned_below + limits::PG_PRUNE_SLACK;
    if expired.is_empty() && !prune {
        let _ = tx.rollback().await;
        return Ok(());
    }
    if !expired.is_empty() {
        let stmt = tx.prepare_cached(sql::DELETE).await.map_err(fail)?;
        tx.execute(&stmt, &[&expired]).await.map_err(fail)?;
        let vs = Versionstamp::new(counter, 0);
        let changes: Vec<ChangeRec> = expired
            .into_iter()
            .enumerate()
            .map(|(n, key)| ChangeRec { version: vs, n: n as u32, key, value: None, expires_at: None })
            .collect();
        log(&tx, &changes).await?;
    }
    if prune {
        tx.execute(sql::PRUNE, &[&Versionstamp::commit_start(below).to_i64()]).await.map_err(fail)?;
        tx.execute(sql::SET_PRUNED, &[&(below as i64)]).await.map_err(fail)?;
    }
    tx.commit().await.map_err(fail)?;
    committed.send_if_modified(|v| (counter > *v).then(|| *v = counter).is_some());
    Ok(())
}

fn fail(e: tokio_postgres::Error) -> TxError {
    TxError::Failed(super::store_error(&e))
}
