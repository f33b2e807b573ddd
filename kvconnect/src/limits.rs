//! The limits Deno's clients expect, and request validation.
//!
//! Deno's CLI checks every request against its `KvConfig` defaults
//! (`ext/kv/config.rs`) *before* sending it, so a server that enforces the
//! same numbers never rejects a request the CLI considered valid, and never
//! accepts one the CLI would refuse to make. denokv's server
//! (`proto/limits.rs`) uses the same numbers except `MAX_CHECKS` (10 there,
//! 100 in the CLI since 2024) and has no total-key-size limit; the
//! constants below take the CLI's values. A server may tighten any of them
//! through [`Limits`]; the client then gets a 400 with the message.
//!
//! [`validate_snapshot_read`], [`validate_atomic_write`] and
//! [`validate_watch`] also check what the server needs to interpret a
//! request (known enum values, 10-byte versionstamps, 8-byte LE64
//! operands), so after them the handler can use the message without further
//! checks. Every failure is a [`ValidationError`] naming the field (with its
//! index) and, for a size or count, the limit; answer it with `400` and the
//! message as a plain-text body (fatal for the client, shown to the user).

use crate::datapath::{AtomicWrite, MutationType, SnapshotRead, ValueEncoding, Watch};

/// Largest encoded key that can be written (checks, mutations): 2 KiB.
pub const MAX_WRITE_KEY_SIZE_BYTES: usize = 2048;
/// Largest key in a read range or watch: one byte more than a written key,
/// since range bounds append `0x00` or `0xff` to an encoded key.
pub const MAX_READ_KEY_SIZE_BYTES: usize = MAX_WRITE_KEY_SIZE_BYTES + 1;
/// Largest value (`KvValue.data`) over KV Connect: 64 KiB.
pub const MAX_VALUE_SIZE_BYTES: usize = 65_536;
/// Most ranges in one snapshot read (`kv.getMany` of more keys is refused client-side).
pub const MAX_READ_RANGES: usize = 10;
/// Most entries one snapshot read may ask for: the sum of its ranges' `limit`s.
pub const MAX_READ_ENTRIES: usize = 1000;
/// Most checks in one atomic write (Deno's CLI; denokv's server allows 10).
pub const MAX_CHECKS: usize = 100;
/// Most mutations plus enqueues in one atomic write.
pub const MAX_MUTATIONS: usize = 1000;
/// Most bytes one atomic write may carry: 800 KiB of check keys, mutation
/// keys and values (denokv's count; the CLI counts value-carrying keys twice,
/// so it never sends more than this).
pub const MAX_TOTAL_MUTATION_SIZE_BYTES: usize = 800 * 1024;
/// Most bytes of keys of value-carrying mutations in one atomic write: 80 KiB (Deno's CLI).
pub const MAX_TOTAL_KEY_SIZE_BYTES: usize = 80 * 1024;
/// Most keys in one watch.
pub const MAX_WATCHED_KEYS: usize = 10;
/// Largest request body worth decoding: 1 MiB. The largest valid atomic
/// write is under 900 KiB (800 KiB of payload, 100 checks with 10-byte
/// versionstamps, ~40 bytes of framing per mutation); reject a bigger body
/// with 413 before decoding it.
pub const MAX_REQUEST_BODY_BYTES: usize = 1 << 20;

/// The limits a server enforces; [`Limits::DENO`] (the default) is Deno's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_write_key_size_bytes: usize,
    pub max_read_key_size_bytes: usize,
    pub max_value_size_bytes: usize,
    pub max_read_ranges: usize,
    pub max_read_entries: usize,
    pub max_checks: usize,
    pub max_mutations: usize,
    pub max_total_mutation_size_bytes: usize,
    pub max_total_key_size_bytes: usize,
    pub max_watched_keys: usize,
}

impl Limits {
    /// The limits of Deno's CLI (`ext/kv/config.rs` defaults).
    pub const DENO: Limits = Limits {
        max_write_key_size_bytes: MAX_WRITE_KEY_SIZE_BYTES,
        max_read_key_size_bytes: MAX_READ_KEY_SIZE_BYTES,
        max_value_size_bytes: MAX_VALUE_SIZE_BYTES,
        max_read_ranges: MAX_READ_RANGES,
        max_read_entries: MAX_READ_ENTRIES,
        max_checks: MAX_CHECKS,
        max_mutations: MAX_MUTATIONS,
        max_total_mutation_size_bytes: MAX_TOTAL_MUTATION_SIZE_BYTES,
        max_total_key_size_bytes: MAX_TOTAL_KEY_SIZE_BYTES,
        max_watched_keys: MAX_WATCHED_KEYS,
    };
}

impl Default for Limits {
    fn default() -> Limits {
        Limits::DENO
    }
}

/// Why a request was rejected. Both variants name the offending field
/// with its index (`mutations[3].value`); answer `400`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// A size or count is over a limit.
    #[error("{field}: {actual} {unit} exceeds {limit} ({max})")]
    LimitExceeded { field: String, limit: &'static str, unit: &'static str, max: usize, actual: usize },
    /// A field has a value the protocol (or this server) does not allow.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

impl ValidationError {
    /// The offending field, e.g. `ranges[2].limit`.
    pub fn field(&self) -> &str {
        match self {
            ValidationError::LimitExceeded { field, .. } | ValidationError::Invalid { field, .. } => field,
        }
    }

    /// The name of the exceeded limit constant, if a limit was exceeded.
    pub fn limit(&self) -> Option<&'static str> {
        match self {
            ValidationError::LimitExceeded { limit, .. } => Some(limit),
            ValidationError::Invalid { .. } => None,
        }
    }
}

fn over(field: impl Into<String>, limit: &'static str, unit: &'static str, max: usize, actual: usize) -> Result<(), ValidationError> {
    if actual > max { Err(ValidationError::LimitExceeded { field: field.into(), limit, unit, max, actual }) } else { Ok(()) }
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ValidationError {
    ValidationError::Invalid { field: field.into(), reason: reason.into() }
}

/// Validate a snapshot read: range count, key sizes, `limit ≥ 1` and the
/// total of the limits. `start > end` is not an error (the range is empty).
pub fn validate_snapshot_read(req: &SnapshotRead, limits: &Limits) -> Result<(), ValidationError> {
    over("ranges", "MAX_READ_RANGES", "ranges", limits.max_read_ranges, req.ranges.len())?;
    let mut total: usize = 0;
    for (i, r) in req.ranges.iter().enumerate() {
        over(format!("ranges[{i}].start"), "MAX_READ_KEY_SIZE_BYTES", "bytes", limits.max_read_key_size_bytes, r.start.len())?;
        over(format!("ranges[{i}].end"), "MAX_READ_KEY_SIZE_BYTES", "bytes", limits.max_read_key_size_bytes, r.end.len())?;
        let limit = usize::try_from(r.limit)
            .ok()
            .filter(|&l| l >= 1)
            .ok_or_else(|| invalid(format!("ranges[{i}].limit"), format!("{} is not at least 1", r.limit)))?;
        total += limit;
    }
    over("ranges[*].limit (sum)", "MAX_READ_ENTRIES", "entries", limits.max_read_entries, total)
}

/// Validate an atomic write: counts, key and value sizes, total sizes, and
/// that every check and mutation is interpretable:
///
/// - check versionstamps are empty or 10 bytes;
/// - mutation types are known (`M_UNSPECIFIED` and unknown numbers are rejected);
/// - keys of checks and mutations are non-empty (Deno refuses the empty key);
/// - `set`, `sum`, `min`, `max` and `setSuffixVersionstampedKey` carry a
///   value with a known encoding (`delete`'s value is ignored);
/// - `sum`, `min` and `max` operands are `VE_LE64` of 8 bytes: `sum` on a
///   `VE_V8` number with `sum_min`/`sum_max`/`sum_clamp` would need a V8
///   deserializer, which the server does not have (Deno's public API only
///   sums `Deno.KvU64`);
/// - `expire_at_ms` is ≥ -1 (0 and -1 mean "never");
/// - enqueues keep Deno's queue limits (`sidekv_core::limits`: payload
///   64 KiB, ≤ 10 non-empty undelivered keys, ≤ 10 backoff steps of ≤ 1 h;
///   the delay is checked against the clock by the server).
pub fn validate_atomic_write(req: &AtomicWrite, limits: &Limits) -> Result<(), ValidationError> {
    over("checks", "MAX_CHECKS", "checks", limits.max_checks, req.checks.len())?;
    over("mutations", "MAX_MUTATIONS", "mutations and enqueues", limits.max_mutations, req.mutations.len() + req.enqueues.len())?;
    use sidekv_core::limits as q;
    over("enqueues", "MAX_ATOMIC_ENQUEUES", "enqueues", q::MAX_ATOMIC_ENQUEUES, req.enqueues.len())?;
    for (i, e) in req.enqueues.iter().enumerate() {
        over(format!("enqueues[{i}].payload"), "MAX_QUEUE_PAYLOAD_BYTES", "bytes", q::MAX_QUEUE_PAYLOAD_BYTES, e.payload.len())?;
        over(
            format!("enqueues[{i}].keys_if_undelivered"),
            "MAX_KEYS_IF_UNDELIVERED",
            "keys",
            q::MAX_KEYS_IF_UNDELIVERED,
            e.keys_if_undelivered.len(),
        )?;
        for (j, k) in e.keys_if_undelivered.iter().enumerate() {
            if k.is_empty() {
                return Err(invalid(format!("enqueues[{i}].keys_if_undelivered[{j}]"), "is empty"));
            }
            over(
                format!("enqueues[{i}].keys_if_undelivered[{j}]"),
                "MAX_WRITE_KEY_SIZE_BYTES",
                "bytes",
                limits.max_write_key_size_bytes,
                k.len(),
            )?;
        }
        over(format!("enqueues[{i}].backoff_schedule"), "MAX_BACKOFF_STEPS", "steps", q::MAX_BACKOFF_STEPS, e.backoff_schedule.len())?;
        if let Some((j, s)) = e.backoff_schedule.iter().enumerate().find(|(_, s)| **s > q::MAX_BACKOFF_STEP_MS) {
            return Err(invalid(
                format!("enqueues[{i}].backoff_schedule[{j}]"),
                format!("{s} ms is over MAX_BACKOFF_STEP_MS ({} ms, 1 hour)", q::MAX_BACKOFF_STEP_MS),
            ));
        }
    }

    let mut total_payload: usize = 0;
    let mut total_keys: usize = 0;
    for (i, c) in req.checks.iter().enumerate() {
        if c.key.is_empty() {
            return Err(invalid(format!("checks[{i}].key"), "is empty"));
        }
        over(format!("checks[{i}].key"), "MAX_READ_KEY_SIZE_BYTES", "bytes", limits.max_read_key_size_bytes, c.key.len())?;
        if !c.versionstamp.is_empty() && c.versionstamp.len() != 10 {
            return Err(invalid(
                format!("checks[{i}].versionstamp"),
                format!("is {} bytes; expected 10 (or 0 for \"absent\")", c.versionstamp.len()),
            ));
        }
        total_payload += c.key.len();
    }

    for (i, m) in req.mutations.iter().enumerate() {
        if m.key.is_empty() {
            return Err(invalid(format!("mutations[{i}].key"), "is empty"));
        }
        over(format!("mutations[{i}].key"), "MAX_WRITE_KEY_SIZE_BYTES", "bytes", limits.max_write_key_size_bytes, m.key.len())?;
        total_payload += m.key.len();

        let kind = MutationType::try_from(m.mutation_type)
            .ok()
            .filter(|k| *k != MutationType::MUnspecified)
            .ok_or_else(|| invalid(format!("mutations[{i}].mutation_type"), format!("unknown mutation type {}", m.mutation_type)))?;
        if m.expire_at_ms < -1 {
            return Err(invalid(format!("mutations[{i}].expire_at_ms"), format!("{} is negative", m.expire_at_ms)));
        }
        if kind == MutationType::MDelete {
            continue;
        }

        let field = format!("mutations[{i}].value");
        let value = m.value.as_ref().ok_or_else(|| invalid(&field, format!("is missing; {} needs a value", mutation_name(kind))))?;
        let encoding = ValueEncoding::try_from(value.encoding)
            .ok()
            .filter(|e| *e != ValueEncoding::VeUnspecified)
            .ok_or_else(|| invalid(format!("{field}.encoding"), format!("unknown value encoding {}", value.encoding)))?;
        over(&field, "MAX_VALUE_SIZE_BYTES", "bytes", limits.max_value_size_bytes, value.data.len())?;
        if encoding == ValueEncoding::VeLe64 && value.data.len() != 8 {
            return Err(invalid(&field, format!("a VE_LE64 value must be 8 bytes, not {}", value.data.len())));
        }
        if matches!(kind, MutationType::MSum | MutationType::MMin | MutationType::MMax) && encoding != ValueEncoding::VeLe64 {
            return Err(invalid(&field, format!("{} needs a Deno.KvU64 (VE_LE64) operand", mutation_name(kind))));
        }
        total_payload += value.data.len();
        total_keys += m.key.len();
    }

    over(
        "checks and mutations (total size)",
        "MAX_TOTAL_MUTATION_SIZE_BYTES",
        "bytes",
        limits.max_total_mutation_size_bytes,
        total_payload,
    )?;
    over("mutations[*].key (total size)", "MAX_TOTAL_KEY_SIZE_BYTES", "bytes", limits.max_total_key_size_bytes, total_keys)
}

fn mutation_name(kind: MutationType) -> &'static str {
    match kind {
        MutationType::MUnspecified => "unspecified",
        MutationType::MSet => "set",
        MutationType::MDelete => "delete",
        MutationType::MSum => "sum",
        MutationType::MMax => "max",
        MutationType::MMin => "min",
        MutationType::MSetSuffixVersionstampedKey => "setSuffixVersionstampedKey",
    }
}

/// Validate a watch: key count and key sizes (an empty list is valid: the
/// stream then carries one empty frame; denokv ends it there).
pub fn validate_watch(req: &Watch, limits: &Limits) -> Result<(), ValidationError> {
    over("keys", "MAX_WATCHED_KEYS", "keys", limits.max_watched_keys, req.keys.len())?;
    for (i, k) in req.keys.iter().enumerate() {
        over(format!("keys[{i}].key"), "MAX_READ_KEY_SIZE_BYTES", "bytes", limits.max_read_key_size_bytes, k.key.len())?;
    }
    Ok(())
}
