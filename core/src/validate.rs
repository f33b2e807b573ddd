//! Validation of everything a caller hands the store, and the small codecs
//! every backend shares (cursors, prefix ranges). Backends receive only
//! calls that passed these checks (`host::backend::Kv` runs them).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::limits;
use crate::types::{Check, Enqueue, Key, ListQuery, Mutation, MutationKind, QueueOp, WriteOp, WriteResult};
use crate::{StoreError, Versionstamp};

pub fn validate_key(key: &[u8]) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::InvalidKey("the key is empty".into()));
    }
    if key.len() > limits::MAX_KEY_BYTES {
        return Err(StoreError::InvalidKey(format!("the key is {} bytes, over the {}-byte limit", key.len(), limits::MAX_KEY_BYTES)));
    }
    Ok(())
}

/// A key a write may change: valid, and not in the reserved range
/// (`limits::RESERVED_KEY_BYTE`, where queue messages are logged).
pub fn validate_write_key(key: &[u8]) -> Result<(), StoreError> {
    validate_key(key)?;
    if key[0] == limits::RESERVED_KEY_BYTE {
        return Err(StoreError::InvalidKey(format!("keys starting with byte 0x{:02x} are reserved for sidekv", limits::RESERVED_KEY_BYTE)));
    }
    Ok(())
}

/// Deno KV's rules for a message: payload size, delay, backoff schedule,
/// undelivered keys.
pub fn validate_enqueue(e: &Enqueue) -> Result<(), StoreError> {
    if e.payload.len() > limits::MAX_QUEUE_PAYLOAD_BYTES {
        return Err(StoreError::ValueTooLarge { size: e.payload.len(), limit: limits::MAX_QUEUE_PAYLOAD_BYTES });
    }
    if e.delay_ms > limits::MAX_QUEUE_DELAY_MS {
        return Err(StoreError::InvalidArgument(format!(
            "delay {} ms is over the {} ms (30 days) limit",
            e.delay_ms,
            limits::MAX_QUEUE_DELAY_MS
        )));
    }
    if let Some(b) = &e.backoff_schedule {
        if b.len() > limits::MAX_BACKOFF_STEPS {
            return Err(StoreError::InvalidArgument(format!(
                "a backoff schedule has at most {} steps, got {}",
                limits::MAX_BACKOFF_STEPS,
                b.len()
            )));
        }
        if let Some((i, s)) = b.iter().enumerate().find(|(_, s)| **s > limits::MAX_BACKOFF_STEP_MS) {
            return Err(StoreError::InvalidArgument(format!(
                "backoff step {i} is {s} ms, over the {} ms (1 hour) limit",
                limits::MAX_BACKOFF_STEP_MS
            )));
        }
    }
    if e.keys_if_undelivered.len() > limits::MAX_KEYS_IF_UNDELIVERED {
        return Err(StoreError::InvalidArgument(format!(
            "at most {} keys if undelivered, got {}",
            limits::MAX_KEYS_IF_UNDELIVERED,
            e.keys_if_undelivered.len()
        )));
    }
    for (i, k) in e.keys_if_undelivered.iter().enumerate() {
        validate_write_key(k).map_err(|err| StoreError::InvalidArgument(format!("keys_if_undelivered[{i}]: {err}")))?;
    }
    Ok(())
}

pub fn validate_get_many(keys: &[Key]) -> Result<(), StoreError> {
    if keys.len() > limits::MAX_GET_MANY_KEYS {
        return Err(StoreError::InvalidArgument(format!("get-many takes at most {} keys, got {}", limits::MAX_GET_MANY_KEYS, keys.len())));
    }
    keys.iter().try_for_each(|k| validate_key(k))
}

pub fn validate_query(q: &ListQuery) -> Result<(), StoreError> {
    if q.limit == 0 || q.limit > limits::MAX_LIST_LIMIT {
        return Err(StoreError::InvalidArgument(format!("limit must be between 1 and {}, got {}", limits::MAX_LIST_LIMIT, q.limit)));
    }
    if q.prefix.len() > limits::MAX_KEY_BYTES {
        return Err(StoreError::InvalidArgument("the prefix is longer than the longest key".into()));
    }
    Ok(())
}

pub fn validate_watch_timeout(ms: u32) -> Result<(), StoreError> {
    if ms > limits::MAX_WATCH_TIMEOUT_MS {
        return Err(StoreError::InvalidArgument(format!("watch timeout {ms} ms is over the {} ms limit", limits::MAX_WATCH_TIMEOUT_MS)));
    }
    Ok(())
}

fn check_ttl(t: Option<u64>) -> Result<(), StoreError> {
    match t {
        Some(0) => Err(StoreError::InvalidArgument("ttl must be at least 1 ms".into())),
        Some(t) if t > limits::MAX_TTL_MS => {
            Err(StoreError::InvalidArgument(format!("ttl {t} ms is over the {} ms limit", limits::MAX_TTL_MS)))
        }
        _ => Ok(()),
    }
}

fn check_value(len: usize, max: usize) -> Result<(), StoreError> {
    if len > max { Err(StoreError::ValueTooLarge { size: len, limit: max }) } else { Ok(()) }
}

/// Everything about a write that can be judged without the data.
pub fn validate_write(op: &WriteOp, max_value_bytes: usize) -> Result<(), StoreError> {
    match op {
        WriteOp::Set { key, value, ttl_ms, .. } => {
            validate_write_key(key)?;
            check_value(value.len(), max_value_bytes)?;
            check_ttl(*ttl_ms)
        }
        WriteOp::Delete { key, .. } => validate_write_key(key),
        WriteOp::DeletePrefix { prefix } => {
            if prefix.is_empty() {
                return Err(StoreError::InvalidArgument("delete-prefix needs a non-empty prefix".into()));
            }
            validate_write_key(prefix)
        }
        WriteOp::Atomic { checks, mutations } => validate_batch(checks, mutations, max_value_bytes),
        WriteOp::Enqueue { checks, mutations, enqueues } => {
            if enqueues.len() > limits::MAX_ATOMIC_ENQUEUES {
                return Err(StoreError::InvalidArgument(format!(
                    "an atomic batch enqueues at most {} messages, got {}",
                    limits::MAX_ATOMIC_ENQUEUES,
                    enqueues.len()
                )));
            }
            if mutations.len() + enqueues.len() > limits::MAX_ATOMIC_MUTATIONS {
                return Err(StoreError::InvalidArgument(format!(
                    "an atomic batch takes at most {} mutations and enqueues, got {}",
                    limits::MAX_ATOMIC_MUTATIONS,
                    mutations.len() + enqueues.len()
                )));
            }
            for (i, e) in enqueues.iter().enumerate() {
                validate_enqueue(e).map_err(|err| match err {
                    e @ StoreError::ValueTooLarge { .. } => e,
                    e => StoreError::InvalidArgument(format!("enqueues[{i}]: {e}")),
                })?;
            }
            validate_batch(checks, mutations, max_value_bytes)
        }
        WriteOp::Queue(QueueOp::Ack { id, .. } | QueueOp::Retry { id, .. }) => validate_message_id(id),
        WriteOp::Queue(QueueOp::ExpireLeases) => Ok(()),
    }
}

/// A write whose condition names a versionstamp no store issues (see
/// [`Versionstamp::issuable`]) fails its check without reading anything: no
/// entry can have that version. Backends store versions as 47-bit counters,
/// so such a value must never reach them (it would wrap onto a real one).
pub fn never_issued_condition(op: &WriteOp) -> Option<WriteResult> {
    let never = |v: &Option<Versionstamp>| v.is_some_and(|v| !v.issuable());
    match op {
        WriteOp::Set { cond, .. } | WriteOp::Delete { cond, .. } if never(&cond.if_match) => Some(WriteResult::PreconditionFailed),
        WriteOp::Atomic { checks, .. } => checks.iter().position(|c| never(&c.versionstamp)).map(WriteResult::CheckFailed),
        _ => None,
    }
}

/// A message id as `types::message_id` makes it: 24 lowercase hex characters.
pub fn validate_message_id(id: &str) -> Result<(), StoreError> {
    if id.len() != 24 || !id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(StoreError::InvalidArgument(format!("{id:?} is not a message id (24 lowercase hex characters)")));
    }
    Ok(())
}

fn validate_batch(checks: &[Check], mutations: &[Mutation], max_value_bytes: usize) -> Result<(), StoreError> {
    if checks.len() > limits::MAX_ATOMIC_CHECKS {
        return Err(StoreError::InvalidArgument(format!(
            "an atomic batch takes at most {} checks, got {}",
            limits::MAX_ATOMIC_CHECKS,
            checks.len()
        )));
    }
    if mutations.len() > limits::MAX_ATOMIC_MUTATIONS {
        return Err(StoreError::InvalidArgument(format!(
            "an atomic batch takes at most {} mutations, got {}",
            limits::MAX_ATOMIC_MUTATIONS,
            mutations.len()
        )));
    }
    for (i, c) in checks.iter().enumerate() {
        validate_key(&c.key).map_err(|e| StoreError::InvalidArgument(format!("checks[{i}]: {e}")))?;
    }
    for (i, m) in mutations.iter().enumerate() {
        let ctx = |e: StoreError| match e {
            e @ StoreError::ValueTooLarge { .. } => e,
            e => StoreError::InvalidArgument(format!("mutations[{i}]: {e}")),
        };
        validate_write_key(&m.key).map_err(ctx)?;
        match &m.kind {
            MutationKind::Set(v) => check_value(v.len(), max_value_bytes).map_err(ctx)?,
            MutationKind::SetSuffixVersionstamped(v) => {
                check_value(v.len(), max_value_bytes).map_err(ctx)?;
                if m.key.len() + crate::types::VERSIONSTAMP_SUFFIX_BYTES > limits::MAX_KEY_BYTES {
                    return Err(ctx(StoreError::InvalidKey(format!(
                        "the key with its versionstamp suffix would be {} bytes, over the {}-byte limit",
                        m.key.len() + crate::types::VERSIONSTAMP_SUFFIX_BYTES,
                        limits::MAX_KEY_BYTES
                    ))));
                }
            }
            _ => {}
        }
        check_ttl(m.ttl_ms).map_err(ctx)?;
    }
    Ok(())
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

/// Lower (inclusive) and upper (exclusive) key bounds of a query, before its cursor.
pub fn query_bounds(q: &ListQuery) -> (Vec<u8>, Option<Vec<u8>>) {
    let mut lower = q.prefix.clone();
    if let Some(s) = &q.start
        && s.as_slice() > lower.as_slice()
    {
        lower = s.clone();
    }
    let mut upper = prefix_upper_bound(&q.prefix);
    if let Some(e) = &q.end {
        upper = Some(match upper {
            Some(u) if u.as_slice() < e.as_slice() => u,
            _ => e.clone(),
        });
    }
    (lower, upper)
}

pub fn encode_cursor(key: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(key)
}

/// The key a cursor stands for; it must lie under the query's prefix.
pub fn decode_cursor(c: &str, prefix: &[u8]) -> Result<Key, StoreError> {
    let bad = || StoreError::InvalidArgument("the cursor is not one this server returned".into());
    let key = URL_SAFE_NO_PAD.decode(c.as_bytes()).map_err(|_| bad())?;
    validate_key(&key).map_err(|_| bad())?;
    if !key.starts_with(prefix) {
        return Err(StoreError::InvalidArgument("the cursor belongs to another prefix".into()));
    }
    Ok(key)
}

/// Why a change feed cannot answer: `after` is older than the kept history.
pub fn history_gone(after: Versionstamp, pruned_below: u64) -> StoreError {
    StoreError::HistoryGone(format!(
        "changes after {after} are no longer kept; the oldest resumable versionstamp is {}",
        Versionstamp::commit_start(pruned_below.saturating_sub(1))
    ))
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

    pub fn admit(&mut self, n: usize) -> bool {
        if self.used > 0 && self.used.saturating_add(n) > self.max {
            return false;
        }
        self.used += n;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Mutation, Value};

    #[test]
    fn prefix_bounds() {
        assert_eq!(prefix_upper_bound(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_upper_bound(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_upper_bound(b"\xff\xff"), None);
        assert_eq!(prefix_upper_bound(b""), None);
    }

    #[test]
    fn cursor_round_trip_and_garbage() {
        assert_eq!(decode_cursor(&encode_cursor("a/b ü".as_bytes()), b"a/").unwrap(), "a/b ü".as_bytes());
        assert!(decode_cursor("!!!", b"").is_err());
        assert!(decode_cursor("", b"").is_err());
        assert!(decode_cursor(&encode_cursor(b"zz"), b"a").is_err());
    }

    #[test]
    fn limits_are_enforced_with_clear_errors() {
        let long = vec![b'k'; limits::MAX_KEY_BYTES + 1];
        let set = |k: Vec<u8>, n: usize| WriteOp::Set { key: k, value: Value::bytes(vec![0; n]), ttl_ms: None, cond: Default::default() };
        assert!(matches!(validate_write(&set(long, 1), 10), Err(StoreError::InvalidKey(_))));
        assert!(matches!(validate_write(&set(b"k".to_vec(), 11), 10), Err(StoreError::ValueTooLarge { size: 11, limit: 10 })));
        let q = ListQuery { limit: limits::MAX_LIST_LIMIT + 1, ..Default::default() };
        assert!(matches!(validate_query(&q), Err(StoreError::InvalidArgument(_))));
        let batch = WriteOp::Atomic {
            checks: vec![],
            mutations: vec![Mutation { key: b"a".to_vec(), kind: MutationKind::Sum(1), ttl_ms: Some(0) }],
        };
        let e = validate_write(&batch, 10).unwrap_err();
        assert!(e.to_string().starts_with("mutations[0]: ttl"), "{e}");
    }
}

#[cfg(test)]
mod never_issued_tests {
    use super::*;
    use crate::types::{Check, Condition, Value};

    #[test]
    fn conditions_on_never_issued_versionstamps_fail_without_a_read() {
        let never: Versionstamp = "10000000000000040000".parse().unwrap();
        let real: Versionstamp = "00000000000000040000".parse().unwrap();
        let set = |v| WriteOp::Set {
            key: b"a".to_vec(),
            value: Value::bytes(b"v".to_vec()),
            ttl_ms: None,
            cond: Condition { if_match: Some(v), ..Default::default() },
        };
        assert_eq!(never_issued_condition(&set(never)), Some(WriteResult::PreconditionFailed));
        assert_eq!(never_issued_condition(&set(real)), None);
        let atomic = WriteOp::Atomic {
            checks: vec![Check { key: b"a".to_vec(), versionstamp: Some(real) }, Check { key: b"b".to_vec(), versionstamp: Some(never) }],
            mutations: vec![],
        };
        assert_eq!(never_issued_condition(&atomic), Some(WriteResult::CheckFailed(1)));
    }
}
