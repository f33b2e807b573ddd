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
    let mut stmt = conn.prepare_cached(text)?;
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
        for row in rows.take(limit as usize) {
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

#[cfg(test)]
mod tests {
    use rusqlite::StatementStatus;

    use super::super::{Store, StoreOptions, Value, WriteOp, schema, sql};
    use super::*;

    /// Each list page's text is the common part, then the upper bound, then
    /// the cursor's side, then the order, exactly.
    #[test]
    fn list_page_texts_are_their_parts_in_order() {
        for upper in [false, true] {
            for (after, cursor) in [(sql::After::Start, ""), (sql::After::Above, " AND key > ?"), (sql::After::Below, " AND key < ?")] {
                for reverse in [false, true] {
                    let want = format!(
                        "SELECT key, value, version, expires_at, enc FROM kv WHERE (expires_at IS NULL OR expires_at > ?) AND key >= ?{}{cursor}{}",
                        if upper { " AND key < ?" } else { "" },
                        if reverse { " ORDER BY key DESC" } else { " ORDER BY key ASC" }
                    );
                    assert_eq!(sql::list_entries(upper, after, reverse), want);
                }
            }
        }
    }

    /// Every shape of the list and change-feed statements, as text.
    fn read_statements() -> Vec<String> {
        let mut texts = vec![sql::GET_ENTRY.to_string(), sql::count_entries(true).into(), sql::count_entries(false).into()];
        for upper in [false, true] {
            for after in [sql::After::Start, sql::After::Above, sql::After::Below] {
                for reverse in [false, true] {
                    texts.push(sql::list_entries(upper, after, reverse).into());
                }
            }
            texts.push(sql::changes_after(upper).into());
        }
        texts
    }

    /// A cached read statement is compiled once, not once per read. A
    /// statement whose plan reads a bound value (a `LIMIT ?`) is re-prepared
    /// by SQLite every time that value is bound; profiled, the parser and
    /// planner were the largest cost of a KV Connect `get`.
    #[tokio::test]
    async fn reads_never_recompile_their_statements() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("t.sqlite3");
        let s = Store::open(&path, StoreOptions::default()).unwrap();
        let set = |k: &str, ttl_ms| WriteOp::Set { key: k.into(), value: Value::bytes(b"v".to_vec()), ttl_ms, cond: Default::default() };
        for k in ["a", "b", "c"] {
            s.write(set(k, Some(3_600_000))).await.unwrap();
        }
        let mut conn = schema::open_reader(&path).unwrap();
        let q = |start: &[u8], end: &[u8], limit, reverse| ListQuery {
            start: Some(start.to_vec()),
            end: (!end.is_empty()).then(|| end.to_vec()),
            limit,
            reverse,
            ..Default::default()
        };
        let now = sidekv_core::now_ms();
        for i in 0..20 {
            let now = now + i;
            assert!(get(&conn, b"a", now).unwrap().is_some());
            assert_eq!(list(&conn, &q(b"a", b"a\0", 1, false), now).unwrap().entries.len(), 1);
            let page = list(&conn, &q(b"a", b"", 2 + i as u32 % 2, true), now).unwrap();
            let next = ListQuery { cursor: page.cursor.clone(), ..q(b"a", b"", 1, true) };
            assert_eq!(list(&conn, &next, now).unwrap().entries.len(), 1);
            assert_eq!(count(&conn, &q(b"a", b"c", 10, false), now).unwrap(), 2);
            let after = ChangePos { vs: Versionstamp::ZERO, index: None };
            assert_eq!(changes(&mut conn, b"", after, 2 + i as u32 % 2).unwrap().len(), 2 + i as usize % 2);
        }
        for text in read_statements() {
            let reprepared = conn.prepare_cached(&text).unwrap().get_status(StatementStatus::RePrepare);
            assert_eq!(reprepared, 0, "re-prepared {reprepared} times: {text}");
        }
        s.close();
    }

    /// With no `LIMIT` in the statements, a page must come off an index in
    /// its order: a sort would read the whole range before the first row.
    #[test]
    fn list_and_change_pages_never_sort() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("t.sqlite3"), StoreOptions::default()).unwrap();
        let conn = schema::open_reader(&d.path().join("t.sqlite3")).unwrap();
        for text in read_statements() {
            let mut plan = conn.prepare(&format!("EXPLAIN QUERY PLAN {text}")).unwrap();
            let n = plan.parameter_count();
            let args = (0..n).map(|_| Sql::Integer(1));
            let steps: Vec<String> = plan.query_map(params_from_iter(args), |r| r.get(3)).unwrap().map(Result::unwrap).collect();
            assert!(!steps.iter().any(|p| p.contains("TEMP B-TREE")), "{text}: {steps:?}");
        }
        s.close();
    }
}
