//! The data model every backend stores and every API shows.
//!
//! Keys are bytes, ordered bytewise (REST keys are their UTF-8 bytes; a Deno
//! KV tuple key is its tuple encoding). Values carry an encoding, numbered as
//! in the KV Connect protocol so no table is needed at that boundary: opaque
//! bytes (everything REST writes), V8-serialized (Deno's structured values),
//! and a little-endian u64 (`Deno.KvU64`, and every counter `sum`/`min`/`max`
//! produces, whichever API asked).

use crate::versionstamp::Versionstamp;

/// A key: bytes, compared bytewise.
pub type Key = Vec<u8>;

/// How a value's bytes are to be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Encoding {
    /// V8's structured-serialization format (Deno values).
    V8,
    /// A 64-bit unsigned integer, 8 bytes little-endian: a counter.
    Le64,
    /// Opaque bytes.
    #[default]
    Bytes,
}

impl Encoding {
    /// The stored (and KV Connect) code: 1 V8, 2 LE64, 3 bytes.
    pub fn code(self) -> u8 {
        match self {
            Encoding::V8 => 1,
            Encoding::Le64 => 2,
            Encoding::Bytes => 3,
        }
    }

    pub fn from_code(c: u8) -> Option<Encoding> {
        match c {
            1 => Some(Encoding::V8),
            2 => Some(Encoding::Le64),
            3 => Some(Encoding::Bytes),
            _ => None,
        }
    }
}

/// A stored value and its encoding.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Value {
    pub bytes: Vec<u8>,
    pub encoding: Encoding,
}

impl Value {
    pub fn bytes(bytes: Vec<u8>) -> Value {
        Value { bytes, encoding: Encoding::Bytes }
    }

    pub fn u64(n: u64) -> Value {
        Value { bytes: n.to_le_bytes().to_vec(), encoding: Encoding::Le64 }
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The value as a counter: a u64 value, or (how REST counters were
    /// stored before values were typed) bytes that are a decimal u64.
    pub fn as_counter(&self) -> Option<u64> {
        match self.encoding {
            Encoding::Le64 => Some(u64::from_le_bytes(self.bytes.as_slice().try_into().ok()?)),
            Encoding::Bytes => parse_decimal_u64(&self.bytes),
            Encoding::V8 => None,
        }
    }

    /// The bytes an untyped API shows (REST, the 0.1 WIT `kv`): bytes and
    /// V8 values as stored, a counter as decimal text — what a REST `sum`
    /// has always read back as.
    pub fn into_plain(self) -> Vec<u8> {
        match self.encoding {
            Encoding::Le64 => match self.as_counter() {
                Some(n) => n.to_string().into_bytes(),
                None => self.bytes,
            },
            _ => self.bytes,
        }
    }
}

fn parse_decimal_u64(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 20 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// One stored key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub key: Key,
    pub value: Value,
    pub versionstamp: Versionstamp,
    /// Unix milliseconds after which the entry is gone.
    pub expires_at: Option<u64>,
}

/// A condition on a single-key write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Condition {
    pub if_match: Option<Versionstamp>,
    pub if_absent: bool,
    /// Write only if the key exists (HTTP `If-Match: *`).
    pub if_exists: bool,
}

/// A condition of an atomic batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub key: Key,
    /// `None`: the key must be absent.
    pub versionstamp: Option<Versionstamp>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MutationKind {
    Set(Value),
    /// Set under the key followed by the commit's versionstamp as a Deno key
    /// part ([`versionstamp_key_suffix`]): Deno's
    /// `set-suffix-versionstamped-key`, keys that sort in commit order.
    SetSuffixVersionstamped(Value),
    Delete,
    /// Wrapping add; an absent key counts as 0.
    Sum(u64),
    /// An absent key takes the operand.
    Min(u64),
    Max(u64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mutation {
    pub key: Key,
    pub kind: MutationKind,
    pub ttl_ms: Option<u64>,
}

/// A write, as every backend takes it.
#[derive(Clone, Debug)]
pub enum WriteOp {
    Set {
        key: Key,
        value: Value,
        ttl_ms: Option<u64>,
        cond: Condition,
    },
    Delete {
        key: Key,
        cond: Condition,
    },
    DeletePrefix {
        prefix: Key,
    },
    Atomic {
        checks: Vec<Check>,
        mutations: Vec<Mutation>,
    },
    /// An atomic batch that also enqueues messages: all or nothing (a
    /// failed check enqueues nothing). Message `i` gets the id
    /// [`message_id`]`(versionstamp, i)`.
    Enqueue {
        checks: Vec<Check>,
        mutations: Vec<Mutation>,
        enqueues: Vec<Enqueue>,
    },
    /// A change to a queued message's state (settling a delivery attempt).
    Queue(QueueOp),
}

/// A message to enqueue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enqueue {
    pub payload: Value,
    /// First delivery no earlier than this many ms after the commit.
    pub delay_ms: u64,
    /// Written with the payload, in one commit, when the last attempt fails.
    pub keys_if_undelivered: Vec<Key>,
    /// Wait before each retry (ms); `None`: `limits::DEFAULT_BACKOFF_SCHEDULE`.
    /// Attempts = 1 + its length.
    pub backoff_schedule: Option<Vec<u32>>,
}

/// Settling a leased delivery attempt, or expiring leases.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueueOp {
    /// Delivered: remove the message. `PreconditionFailed` when `lease` is
    /// not the message's current, unexpired lease.
    Ack { id: String, lease: u64 },
    /// The attempt failed: schedule the next one (backoff) or dead-letter.
    /// `PreconditionFailed` as for `Ack`.
    Retry { id: String, lease: u64 },
    /// Every lease that has expired counts as a failed attempt.
    /// `PreconditionFailed` when there was none (nothing committed).
    ExpireLeases,
}

/// A leased message, as a consumer receives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueMessage {
    pub id: String,
    pub payload: Value,
    /// 1 for the first delivery attempt.
    pub attempt: u32,
    /// Present it to ack or retry.
    pub lease: u64,
    /// Unix ms when the lease expires.
    pub lease_until: u64,
    /// Unix ms when the message became due.
    pub due_at: u64,
}

/// A message waiting for delivery, as `/_export` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingMessage {
    pub id: String,
    pub due_at: u64,
    /// Failed attempts so far.
    pub attempts: u32,
    pub payload: Value,
    pub backoff_schedule: Vec<u32>,
    pub keys_if_undelivered: Vec<Key>,
}

/// How many messages are in which state (for `/metrics`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Every message not yet delivered or dead-lettered.
    pub pending: u64,
    /// Due now and not leased.
    pub due: u64,
    /// Leased to a consumer (push or pull) right now.
    pub leased: u64,
    /// Age (ms) of the oldest due, unleased message; 0 when none.
    pub oldest_due_ms: u64,
}

/// The id of the `index`-th message enqueued by the write committed as
/// `vs`: 24 lowercase hex characters that sort in enqueue order.
pub fn message_id(vs: Versionstamp, index: usize) -> String {
    format!("{vs}{:04x}", index)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteResult {
    /// `deleted`: live keys a delete or delete-prefix removed.
    Committed {
        versionstamp: Versionstamp,
        deleted: u64,
    },
    PreconditionFailed,
    CheckFailed(usize),
}

/// A range query.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListQuery {
    pub prefix: Key,
    pub start: Option<Key>,
    pub end: Option<Key>,
    pub limit: u32,
    pub reverse: bool,
    /// An opaque cursor this server returned (`validate::encode_cursor`).
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
    pub key: Key,
    pub value: Option<Value>,
    pub expires_at: Option<u64>,
}

/// A position in the change history: after mutation `index` of the write with
/// versionstamp `vs` (`index: None` = after that whole write).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChangePos {
    pub vs: Versionstamp,
    pub index: Option<u32>,
}

/// Bytes a versionstamp-suffixed key grows by.
pub const VERSIONSTAMP_SUFFIX_BYTES: usize = 22;

/// The key part `set-suffix-versionstamped-key` appends: the versionstamp
/// as a Deno key string part (tag 0x02, its 20 hex characters, 0x00), so
/// such keys decode as ordinary Deno keys and sort in commit order.
pub fn versionstamp_key_suffix(vs: Versionstamp) -> [u8; VERSIONSTAMP_SUFFIX_BYTES] {
    let mut out = [0u8; VERSIONSTAMP_SUFFIX_BYTES];
    out[0] = 0x02;
    out[1..21].copy_from_slice(vs.to_string().as_bytes());
    out
}

impl Mutation {
    /// The key this mutation writes in a commit with versionstamp `vs`.
    pub fn key_at(&self, vs: Versionstamp) -> Key {
        match self.kind {
            MutationKind::SetSuffixVersionstamped(_) => {
                let mut k = self.key.clone();
                k.extend_from_slice(&versionstamp_key_suffix(vs));
                k
            }
            _ => self.key.clone(),
        }
    }
}

/// Apply a mutation to a key's current value (`None` = absent): the new
/// value, or `None` for a delete. One definition of counter semantics for
/// every backend; `Err` when a counter meets a value that is not one.
pub fn mutate(kind: &MutationKind, current: Option<&Value>) -> Result<Option<Value>, String> {
    let operand = || -> Result<Option<u64>, String> {
        match current {
            None => Ok(None),
            Some(v) => v.as_counter().map(Some).ok_or_else(|| "holds a value that is not a u64 counter".to_string()),
        }
    };
    Ok(match kind {
        MutationKind::Set(v) | MutationKind::SetSuffixVersionstamped(v) => Some(v.clone()),
        MutationKind::Delete => None,
        MutationKind::Sum(x) => Some(Value::u64(operand()?.unwrap_or(0).wrapping_add(*x))),
        MutationKind::Min(x) => Some(Value::u64(operand()?.map_or(*x, |c| c.min(*x)))),
        MutationKind::Max(x) => Some(Value::u64(operand()?.map_or(*x, |c| c.max(*x)))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_accept_u64_and_decimal_text_and_produce_u64() {
        assert_eq!(mutate(&MutationKind::Sum(5), None).unwrap(), Some(Value::u64(5)));
        let legacy = Value::bytes(b"12".to_vec());
        assert_eq!(mutate(&MutationKind::Sum(1), Some(&legacy)).unwrap(), Some(Value::u64(13)));
        assert_eq!(mutate(&MutationKind::Sum(2), Some(&Value::u64(u64::MAX))).unwrap(), Some(Value::u64(1)));
        assert_eq!(mutate(&MutationKind::Min(3), Some(&Value::u64(7))).unwrap(), Some(Value::u64(3)));
        assert_eq!(mutate(&MutationKind::Max(3), None).unwrap(), Some(Value::u64(3)));
        assert!(mutate(&MutationKind::Sum(1), Some(&Value::bytes(b"x".to_vec()))).is_err());
        assert!(mutate(&MutationKind::Sum(1), Some(&Value { bytes: vec![1], encoding: Encoding::V8 })).is_err());
        assert!(mutate(&MutationKind::Sum(1), Some(&Value { bytes: vec![1, 2], encoding: Encoding::Le64 })).is_err());
    }

    #[test]
    fn versionstamped_keys_append_a_deno_string_part() {
        let m = Mutation { key: b"\x02q\x00".to_vec(), kind: MutationKind::SetSuffixVersionstamped(Value::bytes(vec![])), ttl_ms: None };
        let k = m.key_at(Versionstamp::new(0x1234, 5));
        assert_eq!(k, [b"\x02q\x00".as_slice(), b"\x0200000000000012340005\x00"].concat());
        // Later commits sort later; other kinds keep their key.
        assert!(m.key_at(Versionstamp::new(0x1235, 0)) > k);
        let set = Mutation { key: b"a".to_vec(), kind: MutationKind::Delete, ttl_ms: None };
        assert_eq!(set.key_at(Versionstamp::new(9, 9)), b"a");
    }

    #[test]
    fn plain_view_shows_counters_as_decimal_text() {
        assert_eq!(Value::u64(42).into_plain(), b"42");
        assert_eq!(Value::bytes(b"x".to_vec()).into_plain(), b"x");
        for c in 1..=3 {
            assert_eq!(Encoding::from_code(c).unwrap().code(), c);
        }
        assert_eq!(Encoding::from_code(0), None);
    }

    #[test]
    fn decimal_counters_parse_only_decimal_u64() {
        assert_eq!(parse_decimal_u64(b"0"), Some(0));
        assert_eq!(parse_decimal_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_decimal_u64(b"18446744073709551616"), None);
        assert_eq!(parse_decimal_u64(b"-1"), None);
        assert_eq!(parse_decimal_u64(b""), None);
        assert_eq!(parse_decimal_u64(b" 1"), None);
    }
}
