//! Read queries, run on reader connections. Every read filters expired
//! entries, so a TTL is exact without waiting for the sweep.
//!
//! Every read is bounded in bytes as well as in entries (`ByteBudget`,
//! `limits::MAX_READ_BYTES`): rows are pulled one at a time and a page
//! stops before the entry that would pass the budget, with a cursor to its
//! predecessor, so the next page starts exactly at the entry left out.

use rusqlite::{Connection, OptionalExtension, params_from_iter, types::Value as Sql};
use sidekv_core::validate::{ByteBudget, decode_cursor, encode_cursor, history_gone, prefix_upper_bound, query_bounds};
use sidekv_core::{Change, ChangePos, Encoding, Entry, ListPage, ListQuery, Value};

use super::StoreError;
use super::Versionstamp;
use super::meta::{self, Meta};
use super::sql;
use crate::limits;

/// A byte budget that counts the pages it cuts (`sidekv_read_byte_caps_total`).
fn admit(budget: &mut ByteBudget, n: usize) -> bool {
    let ok = budget.admit(n);
    if !ok {
        crate::metrics::METRICS.read_byte_caps.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    ok
}

/// A stored encoding code; an unknown one (a newer sidekv wrote it) reads as bytes.
pub fn encoding(code: i64) -> Encoding {
    u8::try_from(code).ok().and_then(Encoding::from_code).unwrap_or_default()
}

fn row_to_entry(r: &rusqlite::Row<'_>, keys_only: bool) -> rusqlite::Result<Entry> {
    let bytes: Vec<u8> = if keys_only { Vec::new() } else { r.get(1)? };
    let expires_at: Option<i64> = r.get(3)?;
    Ok(Entry {
        key: r.get(0)?,
        value: Value { bytes, encoding: encoding(r.get(4)?) },
        versionstamp: Versionstamp::from_i64(r.get(2)?),
        expires_at: expires_at.map(|v| v as u64),
    })
}

pub fn get(conn: &Connection, key: &[u8], now: u64) -> Result<Option<Entry>, StoreError> {
    let mut stmt = conn.prepare_cached(sql::GET_ENTRY)?;
    Ok(stmt.query_row(rusqlite::params![key, now as i64], |r| row_to_entry(r, false)).optional()?)
}

fn entry_bytes(e: &Entry) -> usize {
    e.key.len() + e.value.len()
}

/// Every key from one snapshot: the caller runs it inside one read transaction.
pub fn get_many(tx: &Connection, keys: &[Vec<u8>], now: u64) -> Result<Vec<Option<Entry>>, StoreError> {
    let mut out = Vec::with_capacity(keys.len());
    let mut budget = ByteBudget::new(limits::MAX_READ_BYTES);
    for k in keys {
        let e = get(tx, k, now)?;
        // get-many has no cursor to continue with: over the budget it fails
        // as a whole instead of returning a partial answer.
        if !admit(&mut budget, e.as_ref().map_or(0, entry_bytes)) {
            return Err(StoreError::InvalidArgument(format!(
                "get-many answer is over the {}-byte read limit; ask for fewer keys",
                limits::MAX_READ_BYTES
            )));
        }
        out.push(e);
    }
    Ok(out)
}

pub fn list(conn: &Connection, q: &ListQuery, now: u64) -> Result<ListPage, StoreError> {
    let (lower, upper) = query_bounds(q);
    let cursor = q.cursor.as_deref().map(|c| decode_cursor(c, &q.prefix)).transpose()?;
    let after = match (&cursor, q.reverse) {
        (None, _) => sql::After::Start,
        (Some(_), false) => sql::After::Above,
        (Some(_), true) => sql::After::Below,
    };
    let text = sql::list_entries(upper.is_some(), after, q.reverse);
    let mut args: Vec<Sql> = vec![Sql::Integer(now as i64), Sql::Blob(lower)];
    args.extend(upper.map(Sql::Blob));
    args.extend(cursor.map(Sql::Blob));
    args.push(Sql::Integer(q.limit as i64 + 1));
    let mut stmt = conn.prepare_cached(&text)?;
    let rows = stmt.query_map(params_from_iter(args), |r| row_to_entry(r, q.keys_only))?;
    let (mut entries, mut budget) = (Vec::new(), ByteBudget::new(limits::MAX_READ_BYTES));
    for row in rows {
        let e = row?;
        // A row beyond `limit`, or one that does not fit the byte budget,
        // exists: the page ends before it and the cursor resumes there.
        if entries.len() == q.limit as usize || !admit(&mut budget, entry_bytes(&e)) {
            let cursor = entries.last().map(|e: &Entry| encode_cursor(&e.key));
            return Ok(ListPage { entries, cursor });
        }
        entries.push(e);
    }
    Ok(ListPage { entries, cursor: None })
}

pub fn count(conn: &Connection, q: &ListQuery, now: u64) -> Result<u64, StoreError> {
    let (lower, upper) = query_bounds(q);
    let mut stmt = conn.prepare_cached(sql::count_entries(upper.is_some()))?;
    let mut args: Vec<Sql> = vec![Sql::Integer(now as i64), Sql::Blob(lower)];
    args.extend(upper.map(Sql::Blob));
    let n: i64 = stmt.query_row(params_from_iter(args), |r| r.get(0))?;
    Ok(n as u64)
}

/// Logged changes under `prefix` after `after`, oldest first. Fails with
/// `InvalidArgument` when the history after `after` has been pruned.
pub fn changes(conn: &mut Connection, prefix: &[u8], after: ChangePos, limit: u32) -> Result<Vec<Change>, StoreError> {
    let tx = conn.transaction()?;
    let pruned_below = meta::get(&tx, Meta::PrunedBelow)?.unwrap_or(0);
    if after.vs.counter + 1 < pruned_below {
        return Err(history_gone(after.vs, pruned_below));
    }
    let upper = prefix_upper_bound(prefix);
    let n_after = after.index.map(i64::from).unwrap_or(i64::MAX);
    let mut args: Vec<Sql> =
        vec![Sql::Integer(after.vs.to_i64()), Sql::Integer(after.vs.to_i64()), Sql::Integer(n_after), Sql::Blob(prefix.to_vec())];
    let text = sql::changes_after(upper.is_some());
    args.extend(upper.map(Sql::Blob));
    args.push(Sql::Integer(limit as i64));
    let mut out = Vec::new();
    {
        let mut stmt = tx.prepare_cached(text)?;
        let rows = stmt.query_map(params_from_iter(args), |r| {
            let value: Option<Vec<u8>> = r.get(2)?;
            let enc = encoding(r.get(5)?);
            Ok(Change {
                versionstamp: Versionstamp::from_i64(r.get(0)?),
                index: r.get(4)?,
                key: r.get(1)?,
                value: value.map(|bytes| Value { bytes, encoding: enc }),
                expires_at: r.get::<_, Option<i64>>(3)?.map(|v| v as u64),
            })
        })?;
        // The caller resumes after the last change returned, so stopping
        // early at the byte budget loses nothing.
        let mut budget = ByteBudget::new(limits::MAX_READ_BYTES);
        for row in rows {
            let c = row?;
            if !admit(&mut budget, c.key.len() + c.value.as_ref().map_or(0, Value::len)) {
                break;
            }
            out.push(c);
        }
    }
    tx.finish()?;
    Ok(out)
}
