//! The data path protobuf messages: `com.deno.kv.datapath` of denokv's
//! `proto/schema/datapath.proto` (protocol version 3), hand-written as
//! `prost` derives (no `build.rs`, no `protoc`).
//!
//! Field numbers, types and enum values are the `.proto`'s; reserved numbers
//! (`SnapshotReadOutput` 3, 5, 6, 7; `AtomicWriteOutput` 3;
//! `AtomicWriteStatus` 3, 4, 6) are left out and skipped as unknown fields
//! when decoding. proto3 enums are open: an enum field is an `i32` that may
//! hold a value this crate does not know; the generated getter (e.g.
//! [`Mutation::mutation_type`]) maps unknown values to the `…_UNSPECIFIED`
//! variant, and [`crate::limits`] validation rejects them.
//!
//! | message              | direction            | endpoint |
//! |----------------------|----------------------|----------|
//! | [`SnapshotRead`]     | client → server      | `POST <endpoint>/snapshot_read` |
//! | [`SnapshotReadOutput`] | server → client    | its 200 body |
//! | [`AtomicWrite`]      | client → server      | `POST <endpoint>/atomic_write` |
//! | [`AtomicWriteOutput`] | server → client     | its 200 body |
//! | [`Watch`]            | client → server      | `POST <endpoint>/watch` (v3) |
//! | [`WatchOutput`]      | server → client      | each frame of its 200 stream ([`crate::watch`]) |
//!
//! [`decode`] and [`encode`] (and the `decode_*` shorthands for the three
//! requests) wrap `prost` with an error that names the message. The
//! constructors on the output messages (`SnapshotReadOutput::success`, …)
//! fill in the fields every client version checks, so the server cannot
//! forget one (a v3 client treats a missing `status` as a fatal error).

use prost::Message;

/// A request to read some key ranges (`POST …/snapshot_read`).
#[derive(Clone, PartialEq, Message)]
pub struct SnapshotRead {
    /// The key ranges to read; the output has one [`ReadRangeOutput`] per range, in order.
    #[prost(message, repeated, tag = "1")]
    pub ranges: Vec<ReadRange>,
}

/// The response to a [`SnapshotRead`].
#[derive(Clone, PartialEq, Message)]
pub struct SnapshotReadOutput {
    /// One output per requested range, in request order.
    #[prost(message, repeated, tag = "1")]
    pub ranges: Vec<ReadRangeOutput>,
    /// v1/v2: the read is not served here (the v3 equivalent is `status = SR_READ_DISABLED`).
    #[prost(bool, tag = "2")]
    pub read_disabled: bool,
    /// Whether the server's view is strongly consistent; a strong read that
    /// gets `false` fails in the client.
    #[prost(bool, tag = "4")]
    pub read_is_strongly_consistent: bool,
    /// v3: the read's status; `SR_UNSPECIFIED` (the default) is a fatal error for a v3 client.
    #[prost(enumeration = "SnapshotReadStatus", tag = "8")]
    pub status: i32,
}

/// Status of a snapshot read or of a watch frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum SnapshotReadStatus {
    /// `SR_UNSPECIFIED = 0`: unknown; clients abort.
    SrUnspecified = 0,
    /// `SR_SUCCESS = 1`.
    SrSuccess = 1,
    /// `SR_READ_DISABLED = 2`: this endpoint cannot serve reads now; clients re-fetch metadata.
    SrReadDisabled = 2,
}

/// A key range: `start` inclusive, `end` exclusive, at most `limit` entries.
#[derive(Clone, PartialEq, Message)]
pub struct ReadRange {
    /// The first key to read (raw bytes; often an encoded key plus `0x00`).
    #[prost(bytes = "vec", tag = "1")]
    pub start: Vec<u8>,
    /// The key after the last one to read (often an encoded key plus `0x00` or `0xff`).
    #[prost(bytes = "vec", tag = "2")]
    pub end: Vec<u8>,
    /// How many entries at most; must be ≥ 1.
    #[prost(int32, tag = "3")]
    pub limit: i32,
    /// Return entries from `end` towards `start` (same inclusive/exclusive bounds).
    #[prost(bool, tag = "4")]
    pub reverse: bool,
}

/// The entries of one [`ReadRange`], in the requested direction.
#[derive(Clone, PartialEq, Message)]
pub struct ReadRangeOutput {
    /// The entries found.
    #[prost(message, repeated, tag = "1")]
    pub values: Vec<KvEntry>,
}

/// A request to check and mutate atomically (`POST …/atomic_write`).
#[derive(Clone, PartialEq, Message)]
pub struct AtomicWrite {
    /// Versionstamp checks, all of which must pass for anything to be written.
    #[prost(message, repeated, tag = "1")]
    pub checks: Vec<Check>,
    /// The mutations, applied in order.
    #[prost(message, repeated, tag = "2")]
    pub mutations: Vec<Mutation>,
    /// Queue messages, enqueued in the same transaction (npm `@deno/kv`
    /// sends them; Deno's CLI fails `enqueue` on a remote database locally).
    #[prost(message, repeated, tag = "3")]
    pub enqueues: Vec<Enqueue>,
}

/// The response to an [`AtomicWrite`].
#[derive(Clone, PartialEq, Message)]
pub struct AtomicWriteOutput {
    /// The outcome.
    #[prost(enumeration = "AtomicWriteStatus", tag = "1")]
    pub status: i32,
    /// On success, the commit's 10-byte versionstamp (clients fail on any other length).
    #[prost(bytes = "vec", tag = "2")]
    pub versionstamp: Vec<u8>,
    /// On `AW_CHECK_FAILURE`, the indexes of the failed checks (informational;
    /// Deno's clients ignore it, denokv leaves it empty).
    #[prost(uint32, repeated, tag = "4")]
    pub failed_checks: Vec<u32>,
}

/// A versionstamp check.
#[derive(Clone, PartialEq, Message)]
pub struct Check {
    /// The key to check.
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// The expected 10-byte versionstamp; empty means "the key must not exist".
    #[prost(bytes = "vec", tag = "2")]
    pub versionstamp: Vec<u8>,
}

/// One mutation.
#[derive(Clone, PartialEq, Message)]
pub struct Mutation {
    /// The key to mutate.
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// The operand; ignored for `M_DELETE` (Deno's CLI sends an empty `VE_BYTES` value there).
    #[prost(message, optional, tag = "2")]
    pub value: Option<KvValue>,
    /// What to do.
    #[prost(enumeration = "MutationType", tag = "3")]
    pub mutation_type: i32,
    /// Expiry in ms since the Unix epoch; `0` (and denokv also accepts `-1`)
    /// means never. Deno's CLI sends at least 1 for an expiring value.
    #[prost(int64, tag = "4")]
    pub expire_at_ms: i64,
    /// `M_SUM` on a `VE_V8` operand only: V8-encoded lower bound of the result.
    #[prost(bytes = "vec", tag = "5")]
    pub sum_min: Vec<u8>,
    /// `M_SUM` on a `VE_V8` operand only: V8-encoded upper bound of the result.
    #[prost(bytes = "vec", tag = "6")]
    pub sum_max: Vec<u8>,
    /// `M_SUM` on a `VE_V8` operand only: clamp to the bounds instead of failing.
    #[prost(bool, tag = "7")]
    pub sum_clamp: bool,
}

/// An encoded value.
#[derive(Clone, PartialEq, Message)]
pub struct KvValue {
    /// The value bytes, interpreted per `encoding`.
    #[prost(bytes = "vec", tag = "1")]
    pub data: Vec<u8>,
    /// How `data` is encoded.
    #[prost(enumeration = "ValueEncoding", tag = "2")]
    pub encoding: i32,
}

/// A key, its value and the versionstamp of the commit that last wrote it.
#[derive(Clone, PartialEq, Message)]
pub struct KvEntry {
    /// The key bytes.
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// The value bytes, interpreted per `encoding`.
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
    /// How `value` is encoded.
    #[prost(enumeration = "ValueEncoding", tag = "3")]
    pub encoding: i32,
    /// 10 bytes; clients fail on any other length.
    #[prost(bytes = "vec", tag = "4")]
    pub versionstamp: Vec<u8>,
}

/// The kind of a [`Mutation`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum MutationType {
    /// `M_UNSPECIFIED = 0`: invalid.
    MUnspecified = 0,
    /// `M_SET = 1`: set the value.
    MSet = 1,
    /// `M_DELETE = 2`: delete the key.
    MDelete = 2,
    /// `M_SUM = 3`: wrapping add of two LE64 values (absent key: the operand).
    MSum = 3,
    /// `M_MAX = 4`: max of two LE64 values (absent key: the operand).
    MMax = 4,
    /// `M_MIN = 5`: min of two LE64 values (absent key: the operand).
    MMin = 5,
    /// `M_SET_SUFFIX_VERSIONSTAMPED_KEY = 9`: set `key ++ versionstamp_key_suffix(commit versionstamp)`.
    MSetSuffixVersionstampedKey = 9,
}

/// How a value is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ValueEncoding {
    /// `VE_UNSPECIFIED = 0`: invalid.
    VeUnspecified = 0,
    /// `VE_V8 = 1`: V8 `ValueSerializer` bytes (any JS value), opaque to the server.
    VeV8 = 1,
    /// `VE_LE64 = 2`: a `Deno.KvU64`, 8 bytes little-endian.
    VeLe64 = 2,
    /// `VE_BYTES = 3`: a `Uint8Array`, raw.
    VeBytes = 3,
}

/// The outcome of an [`AtomicWrite`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum AtomicWriteStatus {
    /// `AW_UNSPECIFIED = 0`: failed for an unknown reason; clients do not retry.
    AwUnspecified = 0,
    /// `AW_SUCCESS = 1`: committed; `versionstamp` is set.
    AwSuccess = 1,
    /// `AW_CHECK_FAILURE = 2`: a check failed, nothing was written (the client returns `{ ok: false }`).
    AwCheckFailure = 2,
    /// `AW_WRITE_DISABLED = 5`: this endpoint cannot write now.
    AwWriteDisabled = 5,
}

/// A queue message (see [`AtomicWrite::enqueues`]).
#[derive(Clone, PartialEq, Message)]
pub struct Enqueue {
    /// V8-encoded payload.
    #[prost(bytes = "vec", tag = "1")]
    pub payload: Vec<u8>,
    /// Delivery time, ms since the Unix epoch.
    #[prost(int64, tag = "2")]
    pub deadline_ms: i64,
    /// Keys to write the payload to if delivery finally fails.
    #[prost(bytes = "vec", repeated, tag = "3")]
    pub keys_if_undelivered: Vec<Vec<u8>>,
    /// Retry delays in ms.
    #[prost(uint32, repeated, tag = "4")]
    pub backoff_schedule: Vec<u32>,
}

/// A request to watch keys (`POST …/watch`, protocol v3).
#[derive(Clone, PartialEq, Message)]
pub struct Watch {
    /// The keys; every [`WatchOutput`] has one [`WatchKeyOutput`] per key, in order.
    #[prost(message, repeated, tag = "1")]
    pub keys: Vec<WatchKey>,
}

/// One frame of the watch stream.
#[derive(Clone, PartialEq, Message)]
pub struct WatchOutput {
    /// Must be `SR_SUCCESS` (`SR_READ_DISABLED` makes clients re-fetch metadata; anything else is fatal).
    #[prost(enumeration = "SnapshotReadStatus", tag = "1")]
    pub status: i32,
    /// One per watched key, in request order.
    #[prost(message, repeated, tag = "2")]
    pub keys: Vec<WatchKeyOutput>,
}

/// A watched key.
#[derive(Clone, PartialEq, Message)]
pub struct WatchKey {
    /// The key bytes.
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
}

/// The state of one watched key in a [`WatchOutput`].
#[derive(Clone, PartialEq, Message)]
pub struct WatchKeyOutput {
    /// Whether the key changed since the previous frame (every key must be
    /// `changed` in the first frame: Deno fails on "unchanged" before a value).
    #[prost(bool, tag = "1")]
    pub changed: bool,
    /// When changed: the entry, or `None` if the key does not exist (now).
    #[prost(message, optional, tag = "2")]
    pub entry_if_changed: Option<KvEntry>,
}

/// What went wrong decoding a data path message or interpreting a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("the body is not a valid {message} protobuf message: {source}")]
    Protobuf {
        message: &'static str,
        #[source]
        source: prost::DecodeError,
    },
    #[error("unknown value encoding {0} (expected VE_V8=1, VE_LE64=2 or VE_BYTES=3)")]
    UnknownValueEncoding(i32),
    #[error("a VE_LE64 value must be exactly 8 bytes, not {0}")]
    Le64Length(usize),
}

/// A data path message: its `.proto` name for error messages.
pub trait DatapathMessage: Message + Default {
    /// The message's full protobuf name, e.g. `com.deno.kv.datapath.SnapshotRead`.
    const NAME: &'static str;
}

macro_rules! datapath_message {
    ($($t:ident),*) => {$(
        impl DatapathMessage for $t {
            const NAME: &'static str = concat!("com.deno.kv.datapath.", stringify!($t));
        }
    )*};
}
datapath_message!(
    SnapshotRead,
    SnapshotReadOutput,
    ReadRange,
    ReadRangeOutput,
    AtomicWrite,
    AtomicWriteOutput,
    Check,
    Mutation,
    KvValue,
    KvEntry,
    Enqueue,
    Watch,
    WatchOutput,
    WatchKey,
    WatchKeyOutput
);

/// Decode a message from protobuf bytes.
pub fn decode<M: DatapathMessage>(bytes: &[u8]) -> Result<M, CodecError> {
    M::decode(bytes).map_err(|source| CodecError::Protobuf { message: M::NAME, source })
}

/// Encode a message to protobuf bytes.
pub fn encode<M: DatapathMessage>(message: &M) -> Vec<u8> {
    message.encode_to_vec()
}

/// Decode a `POST …/snapshot_read` body.
pub fn decode_snapshot_read(body: &[u8]) -> Result<SnapshotRead, CodecError> {
    decode(body)
}

/// Decode a `POST …/atomic_write` body.
pub fn decode_atomic_write(body: &[u8]) -> Result<AtomicWrite, CodecError> {
    decode(body)
}

/// Decode a `POST …/watch` body.
pub fn decode_watch(body: &[u8]) -> Result<Watch, CodecError> {
    decode(body)
}

/// A value with its encoding interpreted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// `VE_V8`: V8-serialized bytes, opaque to the server.
    V8(Vec<u8>),
    /// `VE_LE64`: a `Deno.KvU64`.
    U64(u64),
    /// `VE_BYTES`: a `Uint8Array`.
    Bytes(Vec<u8>),
}

impl Value {
    /// Interpret `data` per the wire `encoding`.
    pub fn from_encoded(data: Vec<u8>, encoding: i32) -> Result<Value, CodecError> {
        match ValueEncoding::try_from(encoding) {
            Ok(ValueEncoding::VeV8) => Ok(Value::V8(data)),
            Ok(ValueEncoding::VeBytes) => Ok(Value::Bytes(data)),
            Ok(ValueEncoding::VeLe64) => {
                let arr: [u8; 8] = data.as_slice().try_into().map_err(|_| CodecError::Le64Length(data.len()))?;
                Ok(Value::U64(u64::from_le_bytes(arr)))
            }
            Ok(ValueEncoding::VeUnspecified) | Err(_) => Err(CodecError::UnknownValueEncoding(encoding)),
        }
    }

    /// The wire encoding of this value.
    pub fn encoding(&self) -> ValueEncoding {
        match self {
            Value::V8(_) => ValueEncoding::VeV8,
            Value::U64(_) => ValueEncoding::VeLe64,
            Value::Bytes(_) => ValueEncoding::VeBytes,
        }
    }

    /// The wire bytes and encoding.
    pub fn into_encoded(self) -> (Vec<u8>, ValueEncoding) {
        match self {
            Value::V8(d) => (d, ValueEncoding::VeV8),
            Value::U64(n) => (n.to_le_bytes().to_vec(), ValueEncoding::VeLe64),
            Value::Bytes(d) => (d, ValueEncoding::VeBytes),
        }
    }
}

impl TryFrom<KvValue> for Value {
    type Error = CodecError;
    fn try_from(v: KvValue) -> Result<Value, CodecError> {
        Value::from_encoded(v.data, v.encoding)
    }
}

impl From<Value> for KvValue {
    fn from(v: Value) -> KvValue {
        let (data, encoding) = v.into_encoded();
        KvValue { data, encoding: encoding.into() }
    }
}

impl KvEntry {
    /// An entry for a read or watch output.
    pub fn new(key: Vec<u8>, value: Value, versionstamp: [u8; 10]) -> KvEntry {
        let (value, encoding) = value.into_encoded();
        KvEntry { key, value, encoding: encoding.into(), versionstamp: versionstamp.to_vec() }
    }
}

impl SnapshotReadOutput {
    /// A successful read, right for every protocol version: `status =
    /// SR_SUCCESS` (v3), `read_disabled = false` (v1/v2),
    /// `read_is_strongly_consistent = true`. `ranges` must have one output
    /// per requested range, in request order.
    pub fn success(ranges: Vec<ReadRangeOutput>) -> SnapshotReadOutput {
        SnapshotReadOutput { ranges, read_disabled: false, read_is_strongly_consistent: true, status: SnapshotReadStatus::SrSuccess.into() }
    }

    /// Reads are not served here now (clients re-fetch metadata, then fail or retry).
    pub fn read_disabled() -> SnapshotReadOutput {
        SnapshotReadOutput {
            ranges: Vec::new(),
            read_disabled: true,
            read_is_strongly_consistent: false,
            status: SnapshotReadStatus::SrReadDisabled.into(),
        }
    }
}

impl AtomicWriteOutput {
    /// Committed at `versionstamp`.
    pub fn success(versionstamp: [u8; 10]) -> AtomicWriteOutput {
        AtomicWriteOutput { status: AtomicWriteStatus::AwSuccess.into(), versionstamp: versionstamp.to_vec(), failed_checks: Vec::new() }
    }

    /// A check failed; nothing was written. `failed_checks` may be empty.
    pub fn check_failure(failed_checks: Vec<u32>) -> AtomicWriteOutput {
        AtomicWriteOutput { status: AtomicWriteStatus::AwCheckFailure.into(), versionstamp: Vec::new(), failed_checks }
    }

    /// Writes are not served here now.
    pub fn write_disabled() -> AtomicWriteOutput {
        AtomicWriteOutput { status: AtomicWriteStatus::AwWriteDisabled.into(), versionstamp: Vec::new(), failed_checks: Vec::new() }
    }
}

impl WatchOutput {
    /// A frame with `status = SR_SUCCESS`; `keys` has one output per watched key, in order.
    pub fn success(keys: Vec<WatchKeyOutput>) -> WatchOutput {
        WatchOutput { status: SnapshotReadStatus::SrSuccess.into(), keys }
    }

    /// Reads are not served here now (the client re-fetches metadata and re-watches once).
    pub fn read_disabled() -> WatchOutput {
        WatchOutput { status: SnapshotReadStatus::SrReadDisabled.into(), keys: Vec::new() }
    }
}

impl WatchKeyOutput {
    /// The key changed: its entry now, or `None` if it does not exist.
    pub fn changed(entry: Option<KvEntry>) -> WatchKeyOutput {
        WatchKeyOutput { changed: true, entry_if_changed: entry }
    }

    /// The key did not change since the previous frame (never in the first frame).
    pub fn unchanged() -> WatchKeyOutput {
        WatchKeyOutput { changed: false, entry_if_changed: None }
    }
}
