//! Queue messages in SQLite: the `queue` table, and how its changes travel
//! through the change log like every other write.
//!
//! ```text
//!  enqueue (inside a write's commit) ─▶ INSERT queue row ─┐
//!  retry / lease expired (a commit)  ─▶ UPDATE due, attempts ├─▶ changelog record
//!  ack (a commit)                    ─▶ DELETE row          │   key = QUEUE_LOG_PREFIX + id
//!  last attempt failed (a commit)    ─▶ DELETE row + set    ┘   value = the message state
//!                                        keysIfUndelivered       (None = gone)
//!  take (writer job, not logged)     ─▶ lease = random, lease_until = now + visibility
//! ```
//!
//! Every state change that matters after a crash or a restore (the message
//! exists, when it is due, how many attempts failed) is a commit with a
//! change-log record, so segments carry it to S3 and a restore (also to a
//! point in time) rebuilds the table. Leases are not logged: they only
//! matter to the running process; a restored file (and a snapshot) has
//! none, so every message is delivered again — at least once.
//!
//! The logged value: `due_at u64 | attempts u32 | enc u8 | payload_len u32 |
//! payload | steps u8 | step u32… | keys u8 | (key_len u16 | key)…`
//! (big-endian). The `queue.state` column holds the part after `attempts`.

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use sidekv_core::{Encoding, Enqueue, QueueMessage, QueueStats, Value, Versionstamp, message_id};

use super::sql;
pub use crate::backend::queue_body::{Body, Step};

/// Change-log keys of queue messages: reserved (`limits::RESERVED_KEY_BYTE`),
/// never a key of the `kv` table.
pub const QUEUE_LOG_PREFIX: &[u8] = b"\xff\xffqueue/";

pub fn is_queue_key(key: &[u8]) -> bool {
    key.starts_with(QUEUE_LOG_PREFIX)
}

fn log_key(id: &str) -> Vec<u8> {
    [QUEUE_LOG_PREFIX, id.as_bytes()].concat()
}

/// The logged value of a message in state (`due_at`, `attempts`).
fn logged(due_at: u64, attempts: u32, state: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(12 + state.len());
    v.extend_from_slice(&due_at.to_be_bytes());
    v.extend_from_slice(&attempts.to_be_bytes());
    v.extend_from_slice(state);
    v
}

/// A logged value back into (`due_at`, `attempts`, state); `None` if malformed.
pub fn parse_logged(v: &[u8]) -> Option<(u64, u32, &[u8])> {
    let due = u64::from_be_bytes(v.get(..8)?.try_into().ok()?);
    let attempts = u32::from_be_bytes(v.get(8..12)?.try_into().ok()?);
    let state = &v[12..];
    Body::decode(state)?;
    Some((due, attempts, state))
}

fn log_put(tx: &Transaction<'_>, vs: Versionstamp, n: u32, id: &str, due_at: u64, attempts: u32, state: &[u8]) -> rusqlite::Result<()> {
    let v = logged(due_at, attempts, state);
    tx.prepare_cached(sql::LOG_CHANGE)?.execute(params![vs.to_i64(), n, log_key(id), v, None::<i64>, Encoding::Bytes.code()])?;
    Ok(())
}

fn log_delete(tx: &Transaction<'_>, vs: Versionstamp, n: u32, id: &str) -> rusqlite::Result<()> {
    tx.prepare_cached(sql::LOG_CHANGE)?.execute(params![
        vs.to_i64(),
        n,
        log_key(id),
        None::<Vec<u8>>,
        None::<i64>,
        Encoding::Bytes.code()
    ])?;
    Ok(())
}

/// Enqueue `msgs` in the commit `vs`, logging them from change index `first_n`.
pub fn enqueue(tx: &Transaction<'_>, msgs: &[Enqueue], vs: Versionstamp, first_n: u32, now: u64) -> rusqlite::Result<()> {
    for (i, m) in msgs.iter().enumerate() {
        let id = message_id(vs, i);
        let due = now.saturating_add(m.delay_ms);
        let state = Body::of(m).encode();
        tx.prepare_cached(sql::QUEUE_PUT)?.execute(params![id, due as i64, 0i64, state])?;
        log_put(tx, vs, first_n + i as u32, &id, due, 0, &state)?;
    }
    Ok(())
}

/// Whether `lease` is the current, unexpired lease of message `id`.
pub fn holds_lease(tx: &Transaction<'_>, id: &str, lease: u64, now: u64) -> rusqlite::Result<bool> {
    let row: Option<(Option<i64>, Option<i64>)> =
        tx.prepare_cached(sql::QUEUE_LEASE_OF)?.query_row([id], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
    Ok(matches!(row, Some((Some(l), Some(until))) if l as u64 == lease && until as u64 > now))
}

/// Delivered: the message is gone (change index 0).
pub fn ack(tx: &Transaction<'_>, id: &str, vs: Versionstamp) -> rusqlite::Result<()> {
    tx.prepare_cached(sql::QUEUE_DELETE)?.execute([id])?;
    log_delete(tx, vs, 0, id)
}

/// Writes one `kv` entry (and logs it) at a change index: how a dead
/// letter reaches its keys.
pub type PutEntry<'a> = dyn Fn(&Transaction<'_>, &[u8], &Value, u32) -> rusqlite::Result<()> + 'a;

/// What a failed attempt led to.
pub enum Failed {
    /// Another attempt is scheduled.
    Retry,
    /// That was the last attempt: the payload was written to the message's
    /// keys and the message is gone.
    DeadLettered,
    /// The message no longer exists.
    Gone,
}

/// A delivery attempt of `id` failed: schedule the next attempt after the
/// backoff step, or write the payload to its undelivered keys and drop it.
/// Uses change indexes from `*n` on. `put` writes one `kv` entry (and logs it).
pub fn fail(tx: &Transaction<'_>, id: &str, vs: Versionstamp, n: &mut u32, now: u64, put: &PutEntry<'_>) -> rusqlite::Result<Failed> {
    let row: Option<(i64, Vec<u8>)> = tx.prepare_cached(sql::QUEUE_ATTEMPTS)?.query_row([id], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
    let Some((attempts, state)) = row else { return Ok(Failed::Gone) };
    let attempts = attempts as u32 + 1;
    let Some(body) = Body::decode(&state) else {
        // Unreadable (written by a newer sidekv?): keep it, try again later.
        tracing::error!(id, "a queue message's stored state is malformed; it is kept and retried in an hour");
        let due = now + 3_600_000;
        tx.prepare_cached(sql::QUEUE_POSTPONE)?.execute(params![id, due as i64])?;
        return Ok(Failed::Retry);
    };
    if let Step::Retry(due) = body.after_failure(attempts, now) {
        tx.prepare_cached(sql::QUEUE_RETRY)?.execute(params![id, due as i64, attempts as i64])?;
        log_put(tx, vs, *n, id, due, attempts, &state)?;
        *n += 1;
        return Ok(Failed::Retry);
    }
    for k in &body.keys {
        put(tx, k, &body.payload, *n)?;
        *n += 1;
    }
    tx.prepare_cached(sql::QUEUE_DELETE)?.execute([id])?;
    log_delete(tx, vs, *n, id)?;
    *n += 1;
    Ok(Failed::DeadLettered)
}

/// Messages whose lease has expired (oldest first), at most `limit`.
pub fn expired_leases(tx: &Transaction<'_>, now: u64, limit: usize) -> rusqlite::Result<Vec<String>> {
    let mut s = tx.prepare_cached(sql::QUEUE_EXPIRED_LEASES)?;
    s.query_map(params![now as i64, limit as i64], |r| r.get(0))?.collect()
}

/// Lease the next due message (on the writer connection; not logged).
pub fn take(conn: &Connection, now: u64, visibility_ms: u64) -> Result<Option<QueueMessage>, sidekv_core::StoreError> {
    let row: Option<(String, i64, i64, Vec<u8>)> = conn
        .prepare_cached(sql::QUEUE_NEXT_DUE)?
        .query_row([now as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .optional()?;
    let Some((id, due_at, attempts, state)) = row else { return Ok(None) };
    // Positive, so it reads back as the same i64.
    let lease = (rand::random::<u64>() >> 1).max(1);
    let until = now + visibility_ms;
    conn.prepare_cached(sql::QUEUE_LEASE)?.execute(params![id, lease as i64, until as i64])?;
    let payload = Body::decode(&state).map(|b| b.payload).unwrap_or_default();
    Ok(Some(QueueMessage { id, payload, attempt: attempts as u32 + 1, lease, lease_until: until, due_at: due_at as u64 }))
}

/// When an unleased message next falls due, and a lease next expires.
pub fn next_event(conn: &Connection) -> Result<crate::backend::QueueTimes, sidekv_core::StoreError> {
    let due: Option<i64> = conn.prepare_cached(sql::QUEUE_FIRST_DUE)?.query_row([], |r| r.get(0))?;
    let lease: Option<i64> = conn.prepare_cached(sql::QUEUE_FIRST_LEASE_EXPIRY)?.query_row([], |r| r.get(0))?;
    Ok(crate::backend::QueueTimes { due: due.map(|v| v as u64), lease_expiry: lease.map(|v| v as u64) })
}

pub fn stats(conn: &Connection, now: u64) -> Result<QueueStats, sidekv_core::StoreError> {
    let (pending, due, leased, oldest): (i64, Option<i64>, Option<i64>, Option<i64>) =
        conn.prepare_cached(sql::QUEUE_STATS)?.query_row([now as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
    Ok(QueueStats {
        pending: pending as u64,
        due: due.unwrap_or(0) as u64,
        leased: leased.unwrap_or(0) as u64,
        oldest_due_ms: oldest.map_or(0, |o| now.saturating_sub(o as u64)),
    })
}

/// Every pending message (for `/_export`), in id order after `after`, at most `limit`.
pub fn list(conn: &Connection, after: &str, limit: u32) -> Result<Vec<(String, u64, u32, Body)>, sidekv_core::StoreError> {
    let mut s = conn.prepare_cached(sql::QUEUE_PAGE)?;
    let rows = s.query_map(params![after, limit as i64], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?, r.get::<_, Vec<u8>>(3)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, due, attempts, state) = row?;
        if let Some(b) = Body::decode(&state) {
            out.push((id, due as u64, attempts as u32, b));
        }
    }
    Ok(out)
}

/// A restore applies a logged queue record: the message in that state, or gone.
pub fn apply_record(tx: &Transaction<'_>, key: &[u8], value: Option<&[u8]>) -> Result<(), sidekv_core::StoreError> {
    let id = std::str::from_utf8(&key[QUEUE_LOG_PREFIX.len()..])
        .map_err(|_| sidekv_core::StoreError::Internal("a queue record's id is not text".into()))?;
    match value {
        None => {
            tx.prepare_cached(sql::QUEUE_DELETE)?.execute([id])?;
        }
        Some(v) => {
            let (due, attempts, state) =
                parse_logged(v).ok_or_else(|| sidekv_core::StoreError::Internal(format!("queue record {id} is malformed")))?;
            tx.prepare_cached(sql::QUEUE_PUT)?.execute(params![id, due as i64, attempts as i64, state])?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_state_round_trips() {
        let b = Body { payload: Value { bytes: vec![1, 2, 3], encoding: Encoding::V8 }, backoff: vec![10, 20], keys: vec![b"a".to_vec()] };
        let v = logged(99, 2, &b.encode());
        let (due, attempts, state) = parse_logged(&v).unwrap();
        assert_eq!((due, attempts), (99, 2));
        let back = Body::decode(state).unwrap();
        assert_eq!((back.payload, back.backoff, back.keys), (b.payload, b.backoff, b.keys));
        assert!(parse_logged(&v[..v.len() - 1]).is_none());
    }
}

#[cfg(test)]
mod store_tests {
    use super::super::outbox::RestoreFile;
    use super::super::{Check, Store, StoreOptions, Value, Versionstamp, WriteOp, WriteResult};
    use super::is_queue_key;
    use sidekv_core::{Enqueue, QueueOp};

    fn msg(p: &[u8], backoff: Vec<u32>, keys: Vec<Vec<u8>>) -> Enqueue {
        Enqueue { payload: Value::bytes(p.to_vec()), delay_ms: 0, keys_if_undelivered: keys, backoff_schedule: Some(backoff) }
    }

    fn enqueue(m: Enqueue) -> WriteOp {
        WriteOp::Enqueue { checks: vec![], mutations: vec![], enqueues: vec![m] }
    }

    /// Enqueue (all or nothing with checks), take, settle, dead-letter, and
    /// a replay of the change log rebuilds the pending messages.
    #[tokio::test]
    async fn the_queue_lives_in_the_store_and_its_log() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("q.sqlite3"), StoreOptions::default()).unwrap();
        let failed = WriteOp::Enqueue {
            checks: vec![Check { key: b"x".to_vec(), versionstamp: Some(Versionstamp::new(1, 0)) }],
            mutations: vec![],
            enqueues: vec![msg(b"no", vec![], vec![])],
        };
        assert_eq!(s.write(failed).await.unwrap(), WriteResult::CheckFailed(0));
        assert_eq!(s.queue_take(1000).await.unwrap(), None, "a failed check enqueues nothing");

        s.write(enqueue(msg(b"a", vec![0], vec![b"dl".to_vec()]))).await.unwrap();
        let m = s.queue_take(1000).await.unwrap().unwrap();
        assert_eq!((m.payload.bytes.as_slice(), m.attempt), (b"a".as_slice(), 1));
        assert_eq!(s.queue_take(1000).await.unwrap(), None, "leased");
        let wrong = WriteOp::Queue(QueueOp::Ack { id: m.id.clone(), lease: m.lease ^ 1 });
        assert_eq!(s.write(wrong).await.unwrap(), WriteResult::PreconditionFailed);
        let retry = |id: &str, lease| WriteOp::Queue(QueueOp::Retry { id: id.to_string(), lease });
        assert!(matches!(s.write(retry(&m.id, m.lease)).await.unwrap(), WriteResult::Committed { .. }));
        let m2 = s.queue_take(1000).await.unwrap().unwrap();
        assert_eq!((m2.id.as_str(), m2.attempt), (m.id.as_str(), 2));
        // The schedule had one step: this failure is the last.
        assert!(matches!(s.write(retry(&m2.id, m2.lease)).await.unwrap(), WriteResult::Committed { .. }));
        assert_eq!(s.get(b"dl".to_vec()).await.unwrap().unwrap().value, Value::bytes(b"a".to_vec()));
        assert_eq!(s.queue_take(1000).await.unwrap(), None);
        assert_eq!(s.queue_stats().await.unwrap().pending, 0);

        s.write(enqueue(msg(b"b", vec![], vec![]))).await.unwrap();
        let leased = s.queue_take(60_000).await.unwrap().unwrap();
        s.write(enqueue(msg(b"c", vec![], vec![]))).await.unwrap();
        let records = s.outbox_range(1, s.committed()).await.unwrap().unwrap();
        assert!(records.iter().any(|r| is_queue_key(&r.key)));
        // The watch feed does not show them.
        let changes = s.changes(vec![], sidekv_core::ChangePos { vs: Versionstamp::ZERO, index: None }, 100).await.unwrap();
        assert!(changes.iter().all(|c| !is_queue_key(&c.key)) && !changes.is_empty());

        let restored = d.path().join("r.sqlite3");
        let mut f = RestoreFile::open(&restored).unwrap();
        f.apply(&records, 1, i64::MAX).unwrap();
        f.finish(s.committed()).unwrap();
        s.close();
        let r = Store::open(&restored, StoreOptions::default()).unwrap();
        let mut got = Vec::new();
        while let Some(m) = r.queue_take(1000).await.unwrap() {
            got.push(m.payload.bytes);
        }
        got.sort();
        assert_eq!(got, vec![b"b".to_vec(), b"c".to_vec()], "pending messages come back, unleased (b was leased: {})", leased.id);
        assert_eq!(r.get(b"dl".to_vec()).await.unwrap().unwrap().value, Value::bytes(b"a".to_vec()));
        r.close();
    }
}
