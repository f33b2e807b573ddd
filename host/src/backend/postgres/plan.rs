//! Group-commit planning for the PostgreSQL backend, without a database.
//!
//! The writer reads, in one statement, the current rows of every key a
//! batch of writes touches (and the live keys under any delete-prefix),
//! then this module decides each write's outcome in memory — conditions,
//! checks, counters, the batch's own earlier writes — and produces the
//! final row of every touched key plus the change-log records. The writer
//! then stores both with a few bulk statements, whatever the batch size.
//!
//! Semantics are exactly the SQLite writer's: a write whose condition or
//! check fails, or that is invalid, changes nothing and takes no index; the
//! others get `Versionstamp(counter, index)` in queue order.

use std::collections::BTreeMap;

use sidekv_core::validate::prefix_upper_bound;
use sidekv_core::{Key, MutationKind, StoreError, Value, Versionstamp, WriteOp, WriteResult, mutate};

/// A live row as the transaction sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub value: Value,
    pub version: Versionstamp,
    pub expires_at: Option<i64>,
}

/// One change-log record: `value: None` is a delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeRec {
    pub version: Versionstamp,
    pub n: u32,
    pub key: Key,
    pub value: Option<Value>,
    pub expires_at: Option<i64>,
}

/// What a batch does to the database.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub results: Vec<Result<WriteResult, StoreError>>,
    /// Final state of every key the batch changed: `None` = delete the row.
    pub rows: BTreeMap<Key, Option<Row>>,
    pub changes: Vec<ChangeRec>,
    /// Writes that committed (each took an index).
    pub applied: u16,
    /// Queue messages the committed writes enqueue: (id, due at, body).
    pub enqueues: Vec<(String, i64, Vec<u8>)>,
}

/// Every key whose current row the plan needs (conditions, checks,
/// mutations); delete-prefix ranges are read separately.
pub fn keys_read(ops: &[&WriteOp]) -> Vec<Key> {
    let mut keys: Vec<Key> = Vec::new();
    for op in ops {
        match op {
            WriteOp::Set { key, .. } | WriteOp::Delete { key, .. } => keys.push(key.clone()),
            WriteOp::DeletePrefix { .. } | WriteOp::Queue(_) => {}
            WriteOp::Atomic { checks, mutations } | WriteOp::Enqueue { checks, mutations, .. } => {
                keys.extend(checks.iter().map(|c| c.key.clone()));
                // A versionstamp-suffixed key cannot exist yet: nothing to read.
                keys.extend(
                    mutations.iter().filter(|m| !matches!(m.kind, MutationKind::SetSuffixVersionstamped(_))).map(|m| m.key.clone()),
                );
            }
        }
    }
    keys.sort();
    keys.dedup();
    keys
}

/// The in-memory view: the database's live rows as read, then the batch's writes.
struct View {
    state: BTreeMap<Key, Option<Row>>,
    plan: Plan,
}

impl View {
    fn current(&self, key: &[u8]) -> Option<&Row> {
        self.state.get(key).and_then(Option::as_ref)
    }

    fn put(&mut self, key: &[u8], row: Row, n: u32) {
        self.plan.changes.push(ChangeRec {
            version: row.version,
            n,
            key: key.to_vec(),
            value: Some(row.value.clone()),
            expires_at: row.expires_at,
        });
        self.state.insert(key.to_vec(), Some(row.clone()));
        self.plan.rows.insert(key.to_vec(), Some(row));
    }

    fn delete(&mut self, key: &[u8], vs: Versionstamp, n: u32) {
        self.plan.changes.push(ChangeRec { version: vs, n, key: key.to_vec(), value: None, expires_at: None });
        self.state.insert(key.to_vec(), None);
        self.plan.rows.insert(key.to_vec(), None);
    }
}

fn expiry(now: i64, ttl: Option<u64>) -> Option<i64> {
    ttl.map(|t| now.saturating_add(t.min(i64::MAX as u64) as i64))
}

/// Decide a batch. `current` holds the live row (or `None`) of every key in
/// `keys_read(ops)` and every live key under each delete-prefix; `now` is
/// the transaction's time in Unix milliseconds.
pub fn plan(ops: &[&WriteOp], current: BTreeMap<Key, Option<Row>>, counter: u64, now: i64) -> Plan {
    let mut v = View { state: current, plan: Plan::default() };
    for op in ops {
        let vs = Versionstamp::new(counter, v.plan.applied);
        let r = apply(&mut v, op, vs, now);
        if matches!(r, Ok(WriteResult::Committed { .. })) {
            v.plan.applied += 1;
        }
        v.plan.results.push(r);
    }
    v.plan
}

fn holds(v: &View, key: &[u8], cond: &sidekv_core::Condition) -> bool {
    let cur = v.current(key).map(|r| r.version);
    !(cond.if_exists && cur.is_none() || cond.if_absent && cur.is_some() || cond.if_match.is_some_and(|want| cur != Some(want)))
}

fn apply(v: &mut View, op: &WriteOp, vs: Versionstamp, now: i64) -> Result<WriteResult, StoreError> {
    match op {
        WriteOp::Set { key, value, ttl_ms, cond } => {
            if !holds(v, key, cond) {
                return Ok(WriteResult::PreconditionFailed);
            }
            v.put(key, Row { value: value.clone(), version: vs, expires_at: expiry(now, *ttl_ms) }, 0);
            Ok(WriteResult::Committed { versionstamp: vs, deleted: 0 })
        }
        WriteOp::Delete { key, cond } => {
            if !holds(v, key, cond) {
                return Ok(WriteResult::PreconditionFailed);
            }
            let existed = v.current(key).is_some();
            v.delete(key, vs, 0);
            Ok(WriteResult::Committed { versionstamp: vs, deleted: existed as u64 })
        }
        WriteOp::DeletePrefix { prefix } => {
            let upper = prefix_upper_bound(prefix);
            let live: Vec<Key> = v
                .state
                .range(prefix.clone()..)
                .take_while(|(k, _)| upper.as_ref().is_none_or(|u| k.as_slice() < u.as_slice()))
                .filter(|(_, row)| row.is_some())
                .map(|(k, _)| k.clone())
                .collect();
            for (n, k) in live.iter().enumerate() {
                v.delete(k, vs, n as u32);
            }
            Ok(WriteResult::Committed { versionstamp: vs, deleted: live.len() as u64 })
        }
        // Settling queue messages runs in its own transaction (`queue.rs`).
        WriteOp::Queue(_) => Err(StoreError::Internal("queue operations do not go through the writer".into())),
        WriteOp::Atomic { checks, mutations } => apply_atomic(v, checks, mutations, vs, now),
        WriteOp::Enqueue { checks, mutations, enqueues } => {
            let r = apply_atomic(v, checks, mutations, vs, now)?;
            if let WriteResult::Committed { .. } = r {
                for (i, e) in enqueues.iter().enumerate() {
                    let due = now.saturating_add(e.delay_ms.min(i64::MAX as u64) as i64);
                    v.plan.enqueues.push((sidekv_core::message_id(vs, i), due, crate::backend::queue_body::Body::of(e).encode()));
                }
            }
            Ok(r)
        }
    }
}

/// Checks, then every mutation decided before any is applied.
fn apply_atomic(
    v: &mut View,
    checks: &[sidekv_core::Check],
    mutations: &[sidekv_core::Mutation],
    vs: Versionstamp,
    now: i64,
) -> Result<WriteResult, StoreError> {
    for (i, c) in checks.iter().enumerate() {
        if v.current(&c.key).map(|r| r.version) != c.versionstamp {
            return Ok(WriteResult::CheckFailed(i));
        }
    }
    // Decide every mutation against a scratch view first: an invalid
    // one leaves no trace of the batch.
    let mut scratch: BTreeMap<Key, Option<Value>> = BTreeMap::new();
    let mut planned = Vec::with_capacity(mutations.len());
    for (i, m) in mutations.iter().enumerate() {
        let key = m.key_at(vs);
        let cur = match scratch.get(&key) {
            Some(x) => x.clone(),
            None => v.current(&key).map(|r| r.value.clone()),
        };
        let new = mutate(&m.kind, cur.as_ref())
            .map_err(|why| StoreError::InvalidArgument(format!("mutations[{i}]: key {:?} {why}", String::from_utf8_lossy(&key))))?;
        scratch.insert(key.clone(), new.clone());
        planned.push((key, m.ttl_ms, new));
    }
    for (n, (key, ttl, new)) in planned.into_iter().enumerate() {
        match new {
            Some(value) => v.put(&key, Row { value, version: vs, expires_at: expiry(now, ttl) }, n as u32),
            None => v.delete(&key, vs, n as u32),
        }
    }
    Ok(WriteResult::Committed { versionstamp: vs, deleted: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sidekv_core::{Check, Condition, Mutation};

    fn set(k: &str, v: &str) -> WriteOp {
        WriteOp::Set { key: k.into(), value: Value::bytes(v.into()), ttl_ms: None, cond: Condition::default() }
    }

    fn row(v: &str, c: u64) -> Option<Row> {
        Some(Row { value: Value::bytes(v.into()), version: Versionstamp::new(c, 0), expires_at: None })
    }

    #[test]
    fn later_writes_in_a_batch_see_earlier_ones_and_failures_take_no_index() {
        let ops = [
            set("a", "1"),
            WriteOp::Set {
                key: "a".into(),
                value: Value::bytes("x".into()),
                ttl_ms: None,
                cond: Condition { if_absent: true, ..Default::default() },
            },
            WriteOp::Atomic {
                checks: vec![Check { key: "a".into(), versionstamp: Some(Versionstamp::new(8, 0)) }],
                mutations: vec![Mutation { key: "n".into(), kind: MutationKind::Sum(2), ttl_ms: None }],
            },
            WriteOp::Atomic {
                checks: vec![],
                mutations: vec![
                    Mutation { key: "n".into(), kind: MutationKind::Sum(2), ttl_ms: Some(10) },
                    Mutation { key: "n".into(), kind: MutationKind::Sum(3), ttl_ms: None },
                ],
            },
        ];
        let refs: Vec<&WriteOp> = ops.iter().collect();
        let cur = keys_read(&refs).into_iter().map(|k| (k, None)).collect();
        let p = plan(&refs, cur, 9, 1000);
        assert_eq!(p.results[0], Ok(WriteResult::Committed { versionstamp: Versionstamp::new(9, 0), deleted: 0 }));
        assert_eq!(p.results[1], Ok(WriteResult::PreconditionFailed));
        assert_eq!(p.results[2], Ok(WriteResult::CheckFailed(0)));
        assert_eq!(p.results[3], Ok(WriteResult::Committed { versionstamp: Versionstamp::new(9, 1), deleted: 0 }));
        assert_eq!(p.applied, 2);
        assert_eq!(p.rows[b"n".as_slice()].as_ref().unwrap().value, Value::u64(5));
        assert_eq!(p.changes.len(), 3, "one set of a, two mutations of n");
        assert_eq!(p.changes[1].expires_at, Some(1010));
    }

    #[test]
    fn an_invalid_mutation_leaves_no_trace() {
        let ops = [WriteOp::Atomic {
            checks: vec![],
            mutations: vec![
                Mutation { key: "a".into(), kind: MutationKind::Set(Value::bytes("1".into())), ttl_ms: None },
                Mutation { key: "t".into(), kind: MutationKind::Sum(1), ttl_ms: None },
            ],
        }];
        let refs: Vec<&WriteOp> = ops.iter().collect();
        let cur = BTreeMap::from([(b"a".to_vec(), None), (b"t".to_vec(), row("text", 1))]);
        let p = plan(&refs, cur, 2, 0);
        assert!(matches!(&p.results[0], Err(StoreError::InvalidArgument(m)) if m.contains("mutations[1]")));
        assert!(p.rows.is_empty() && p.changes.is_empty() && p.applied == 0);
    }

    #[test]
    fn delete_prefix_counts_live_keys_including_the_batch_s_own() {
        let ops = [set("p/new", "1"), WriteOp::DeletePrefix { prefix: "p/".into() }, set("p/after", "2")];
        let refs: Vec<&WriteOp> = ops.iter().collect();
        let cur = BTreeMap::from([
            (b"p/new".to_vec(), None),
            (b"p/old".to_vec(), row("o", 1)),
            (b"q".to_vec(), row("q", 1)),
            (b"p/after".to_vec(), None),
        ]);
        let p = plan(&refs, cur, 5, 0);
        assert_eq!(p.results[1], Ok(WriteResult::Committed { versionstamp: Versionstamp::new(5, 1), deleted: 2 }));
        assert_eq!(p.rows[b"p/new".as_slice()], None);
        assert_eq!(p.rows[b"p/old".as_slice()], None);
        assert!(p.rows[b"p/after".as_slice()].is_some());
        assert!(!p.rows.contains_key(b"q".as_slice()));
    }
}
