//! Read queries, run on reader connections. Every read filters expired
//! entries, so a TTL is exact without waiting for the sweep.
//!
//! Every read is bounded in bytes as well as in entries (`ByteBudget`,
//! `limits::MAX_READ_BYTES`): rows are pulled one at a time and a page
//! stops before the entry that would pass the budget, with a cursor to its
//! predecessor, so the next page starts exactly at the entry left out.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rusqlite::{Connection, OptionalExtension, params_from_iter, types::Value};

use super::{Entry, StoreError, Versionstamp, validate_key};
use crate::limits;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListQuery {
    pub prefix: String,
    pub start: Option<String>,
    pub end: Option<String>,
    pub limit: u32,
    pub reverse: bool,
    pub cursor: Option<String>,
    pub keys_only: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListPage {
    pub entries: Vec<Entry>,
    pub cursor: Option<String>,
}

/// One logged mutation; `value: None` is a delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub versionstamp: Versionstamp,
    /// Position of this mutation inside its commit (a batch or a
    /// delete-prefix has many mutations under one versionstamp).
    pub index: u32,
    pub key: String,
    pub value: Option<Vec<u8>>,
    pub expires_at: Option<u64>,
}

impl ListQuery {
    pub fn validate(&self) -> Result<(), StoreError> {
        if self.limit == 0 || self.limit > limits::MAX_LIST_LIMIT {
            return Err(StoreError::InvalidArgument(format!("limit must be between 1 and {}, got {}", limits::MAX_LIST_LIMIT, self.limit)));
        }
        if self.prefix.len() > limits::MAX_KEY_BYTES {
            return Err(StoreError::InvalidArgument("the prefix is longer than the longest key".into()));
        }
        Ok(())
    }
}

/// The smallest byte string greater than every string starting with `prefix`;
/// `None` when there is none (empty prefix or all 0xff).
pub fn prefix_upper_bound(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut p = prefix.to_vec();
    while let Some(last) = p.pop() {
        if last < 0xff {
            p.push(last + 1);
            return Some(p);
        }
    }
    None
}

pub fn encode_cursor(key: &str) -> String {
    URL_SAFE_NO_PAD.encode(key.as_bytes())
}

pub fn decode_cursor(c: &str) -> Result<String, StoreError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(c.as_bytes())
        .map_err(|_| StoreError::InvalidArgument("the cursor is not one this server returned".into()))?;
    let key = String::from_utf8(bytes).map_err(|_| StoreError::InvalidArgument("the cursor is not one this server returned".into()))?;
    validate_key(&key).map_err(|_| StoreError::InvalidArgument("the cursor is not one this server returned".into()))?;
    Ok(key)
}

fn row_to_entry(r: &rusqlite::Row<'_>, keys_only: bool) -> rusqlite::Result<Entry> {
    let key: Vec<u8> = r.get(0)?;
    let value: Vec<u8> = if keys_only { Vec::new() } else { r.get(1)? };
    let version: i64 = r.get(2)?;
    let expires_at: Option<i64> = r.get(3)?;
    Ok(Entry {
        // Keys only ever enter the store as validated UTF-8.
        key: String::from_utf8(key).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
        value,
        versionstamp: Versionstamp::from_i64(version),
        expires_at: expires_at.map(|v| v as u64),
    })
}

pub fn get(conn: &Connection, key: &str, now: u64) -> Result<Option<Entry>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT key, value, version, expires_at FROM kv
         WHERE key = ?1 AND (expires_at IS NULL OR expires_at > ?2)",
    )?;
    Ok(stmt.query_row(rusqlite::params![key.as_bytes(), now as i64], |r| row_to_entry(r, false)).optional()?)
}

/// Bytes one read may hand out. `admit` answers whether an entry of `n`
/// bytes still fits; the first entry always does (a page is never empty).
pub struct ByteBudget {
    used: usize,
    max: usize,
}

impl ByteBudget {
    pub fn new(max: usize) -> Self {
        ByteBudget { used: 0, max }
    }

    fn admit(&mut self, n: usize) -> bool {
        if self.used > 0 && self.used.saturating_add(n) > self.max {
            crate::metrics::METRICS.read_byte_caps.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return false;
        }
        self.used += n;
        true
    }
}

fn entry_bytes(e: &Entry) -> usize {
    e.key.len() + e.value.len()
}

pub fn get_many(conn: &mut Connection, keys: &[String], now: u64) -> Result<Vec<Option<Entry>>, StoreError> {
    // One read transaction: every key from the same snapshot.
    let tx = conn.transaction()?;
    let mut out = Vec::with_capacity(keys.len());
    let mut budget = ByteBudget::new(limits::MAX_READ_BYTES);
    for k in keys {
        let e = get(&tx, k, now)?;
        // get-many has no cursor to continue with: over the budget it fails
        // as a whole instead of returning a partial answer.
        if !budget.admit(e.as_ref().map_or(0, entry_bytes)) {
            return Err(StoreError::InvalidArgument(format!(
                "get-many answer is over the {}-byte read limit; ask for fewer keys",
                limits::MAX_READ_BYTES
            )));
        }
        out.push(e);
    }
    tx.finish()?;
    Ok(out)
}

/// Lower (inclusive) and upper (exclusive) byte bounds of a query, before the cursor.
fn bounds(q: &ListQuery) -> (Vec<u8>, Option<Vec<u8>>) {
    let mut lower = q.prefix.as_bytes().to_vec();
    if let Some(s) = &q.start
        && s.as_bytes() > lower.as_slice()
    {
        lower = s.as_bytes().to_vec();
    }
    let mut upper = prefix_upper_bound(q.prefix.as_bytes());
    if let Some(e) = &q.end {
        upper = Some(match upper {
            Some(u) if u.as_slice() < e.as_bytes() => u,
            _ => e.as_bytes().to_vec(),
        });
    }
    (lower, upper)
}

pub fn list(conn: &Connection, q: &ListQuery, now: u64) -> Result<ListPage, StoreError> {
    let (lower, upper) = bounds(q);
    let cursor = q.cursor.as_deref().map(decode_cursor).transpose()?;
    if let Some(c) = &cursor
        && !c.as_bytes().starts_with(q.prefix.as_bytes())
    {
        return Err(StoreError::InvalidArgument("the cursor belongs to another prefix".into()));
    }
    let mut sql = String::from("SELECT key, value, version, expires_at FROM kv WHERE (expires_at IS NULL OR expires_at > ?) AND key >= ?");
    let mut args: Vec<Value> = vec![Value::Integer(now as i64), Value::Blob(lower)];
    if let Some(u) = upper {
        sql.push_str(" AND key < ?");
        args.push(Value::Blob(u));
    }
    if let Some(c) = &cursor {
        sql.push_str(if q.reverse { " AND key < ?" } else { " AND key > ?" });
        args.push(Value::Blob(c.as_bytes().to_vec()));
    }
    sql.push_str(if q.reverse { " ORDER BY key DESC LIMIT ?" } else { " ORDER BY key ASC LIMIT ?" });
    args.push(Value::Integer(q.limit as i64 + 1));
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params_from_iter(args), |r| row_to_entry(r, q.keys_only))?;
    let (mut entries, mut budget) = (Vec::new(), ByteBudget::new(limits::MAX_READ_BYTES));
    for row in rows {
        let e = row?;
        // A row beyond `limit`, or one that does not fit the byte budget,
        // exists: the page ends before it and the cursor resumes there.
        if entries.len() == q.limit as usize || !budget.admit(entry_bytes(&e)) {
            let cursor = entries.last().map(|e: &Entry| encode_cursor(&e.key));
            return Ok(ListPage { entries, cursor });
        }
        entries.push(e);
    }
    Ok(ListPage { entries, cursor: None })
}

pub fn count(conn: &Connection, q: &ListQuery, now: u64) -> Result<u64, StoreError> {
    let (lower, upper) = bounds(q);
    let mut sql = String::from("SELECT count(*) FROM kv WHERE (expires_at IS NULL OR expires_at > ?) AND key >= ?");
    let mut args: Vec<Value> = vec![Value::Integer(now as i64), Value::Blob(lower)];
    if let Some(u) = upper {
        sql.push_str(" AND key < ?");
        args.push(Value::Blob(u));
    }
    let mut stmt = conn.prepare_cached(&sql)?;
    let n: i64 = stmt.query_row(params_from_iter(args), |r| r.get(0))?;
    Ok(n as u64)
}

/// A position in the change history: after mutation `index` of the write with
/// versionstamp `vs` (`index: None` = after that whole write).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChangePos {
    pub vs: Versionstamp,
    pub index: Option<u32>,
}

/// Why `changes` cannot answer.
pub fn history_gone(after: Versionstamp, pruned_below: u64) -> StoreError {
    StoreError::InvalidArgument(format!(
        "changes after {after} are no longer kept; the oldest resumable versionstamp is {}",
        Versionstamp::commit_start(pruned_below.saturating_sub(1))
    ))
}

/// Logged changes under `prefix` after `after`, oldest first. Fails with
/// `InvalidArgument` when the history after `after` has been pruned.
pub fn changes(conn: &mut Connection, prefix: &str, after: ChangePos, limit: u32) -> Result<Vec<Change>, StoreError> {
    let tx = conn.transaction()?;
    let pruned_below = super::read_meta_u64(&tx, "pruned_below")?.unwrap_or(0);
    if after.vs.counter + 1 < pruned_below {
        return Err(history_gone(after.vs, pruned_below));
    }
    let mut sql = String::from(
        "SELECT version, key, value, expires_at, n FROM changelog WHERE (version > ? OR (version = ? AND n > ?)) AND key >= ?",
    );
    let n_after = after.index.map(i64::from).unwrap_or(i64::MAX);
    let mut args: Vec<Value> = vec![
        Value::Integer(after.vs.to_i64()),
        Value::Integer(after.vs.to_i64()),
        Value::Integer(n_after),
        Value::Blob(prefix.as_bytes().to_vec()),
    ];
    if let Some(u) = prefix_upper_bound(prefix.as_bytes()) {
        sql.push_str(" AND key < ?");
        args.push(Value::Blob(u));
    }
    sql.push_str(" ORDER BY version, n LIMIT ?");
    args.push(Value::Integer(limit as i64));
    let mut out = Vec::new();
    {
        let mut stmt = tx.prepare_cached(&sql)?;
        let rows = stmt.query_map(params_from_iter(args), |r| {
            let key: Vec<u8> = r.get(1)?;
            Ok(Change {
                versionstamp: Versionstamp::from_i64(r.get(0)?),
                index: r.get(4)?,
                key: String::from_utf8_lossy(&key).into_owned(),
                value: r.get(2)?,
                expires_at: r.get::<_, Option<i64>>(3)?.map(|v| v as u64),
            })
        })?;
        // The caller resumes after the last change returned, so stopping
        // early at the byte budget loses nothing.
        let mut budget = ByteBudget::new(limits::MAX_READ_BYTES);
        for row in rows {
            let c = row?;
            if !budget.admit(c.key.len() + c.value.as_ref().map_or(0, Vec::len)) {
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
    use super::*;

    #[test]
    fn prefix_bounds() {
        assert_eq!(prefix_upper_bound(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_upper_bound(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_upper_bound(b"\xff\xff"), None);
        assert_eq!(prefix_upper_bound(b""), None);
    }

    #[test]
    fn cursor_round_trip_and_garbage() {
        assert_eq!(decode_cursor(&encode_cursor("a/b ü")).unwrap(), "a/b ü");
        assert!(decode_cursor("!!!").is_err());
        assert!(decode_cursor("").is_err());
    }
}
