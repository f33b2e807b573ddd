//! sidekv-kvconnect: the codec of Deno's **KV Connect** protocol, the
//! protocol `Deno.openKv("https://…")` and npm `@deno/kv` speak to a remote
//! KV server. Pure data: no HTTP, no I/O, builds for `wasm32-wasip2`.
//!
//! Sources: denokv's `proto/kv-connect.md` (the spec),
//! `proto/schema/datapath.proto`, `proto/codec.rs`, `proto/limits.rs`,
//! `denokv/main.rs` (the reference server), `remote/lib.rs` (the client in
//! Deno's CLI) and Deno's `ext/kv` (client-side limits and key handling).
//!
//! | module       | what |
//! |--------------|------|
//! | [`metadata`] | the JSON metadata exchange, version negotiation, data path headers, bearer tokens |
//! | [`datapath`] | the protobuf messages (`SnapshotRead`, `AtomicWrite`, `Watch`, outputs), `decode`/`encode`, typed values |
//! | [`key`]      | Deno's key tuple encoding (`encode_key`/`decode_key`), key order |
//! | [`limits`]   | the limits Deno's clients expect, `validate_*` for the three requests |
//! | [`watch`]    | the length-prefixed watch stream frames and keep-alives |
//!
//! # Protocol flow (what the server does)
//!
//! 1. **Metadata exchange** — `POST <url the user opened>`, JSON
//!    ([`metadata`]). Check `Authorization: Bearer <access token>`
//!    ([`metadata::parse_bearer`], constant-time compare), parse the body
//!    ([`metadata::parse_metadata_request`]), pick the version
//!    ([`metadata::negotiate`]) and answer `200`,
//!    `Content-Type: application/json`, with a
//!    [`metadata::DatabaseMetadata`]: the version, the database id (a
//!    lowercase UUID), the data path endpoint URL(s), the token for the data
//!    path and its expiry.
//! 2. **Data path** — `POST <endpoint>/snapshot_read`, `/atomic_write`,
//!    `/watch`, protobuf bodies ([`datapath`]). For each: check the bearer
//!    token (the one returned in the metadata) and
//!    [`metadata::datapath_version`] (the `x-denokv-version` /
//!    `x-denokv-database-id` or v1 `x-transaction-domain-id` headers), cap
//!    the body at [`limits::MAX_REQUEST_BODY_BYTES`], [`datapath::decode`],
//!    `limits::validate_*`, execute, and answer `200` with
//!    `Content-Type: application/x-protobuf` (watch:
//!    `application/octet-stream`) and the output message. Never redirect.
//!    - `snapshot_read`: one [`datapath::ReadRangeOutput`] per requested
//!      range, in order; each range is `start..end` (raw bytes, `start`
//!      inclusive, `end` exclusive) by byte order, at most `limit` entries,
//!      from the `end` side when `reverse`. Answer with
//!      [`datapath::SnapshotReadOutput::success`].
//!    - `atomic_write`: all checks (a key's current 10-byte versionstamp, or
//!      empty = absent) then all mutations, atomically. A failed check is
//!      **not** an HTTP error: answer `200` with
//!      [`datapath::AtomicWriteOutput::check_failure`] (the client returns
//!      `{ ok: false }`); success is
//!      [`datapath::AtomicWriteOutput::success`] with the commit's
//!      versionstamp (Deno shows it as 20 hex digits, the same form as
//!      sidekv's). `sum`/`min`/`max` work on `VE_LE64` values (absent key:
//!      the operand; a non-LE64 stored value: 400) and denokv clears the
//!      expiry on them; `setSuffixVersionstampedKey` writes
//!      `key ++ key::versionstamp_key_suffix(vs)`; `expire_at_ms > 0`
//!      expires the value at that time.
//!    - `watch` (v3): a never-ending stream of length-prefixed
//!      [`datapath::WatchOutput`] frames plus keep-alives ([`watch`]).
//!
//! # Errors, as the clients treat them
//!
//! | answer | Deno's CLI and npm `@deno/kv` |
//! |---|---|
//! | `200` + message | success (or the status inside the message) |
//! | `4xx` + plain-text body | **permanent**: the operation fails with the body in the message (`KV Connect failed to call '…' (status=400): …`); use it for bad tokens (401), undecodable bodies, limit violations (400), unsupported features |
//! | `5xx` | **retryable**: the client retries with exponential backoff, without limit (the user's call hangs meanwhile); use only for transient trouble (503 while starting or overloaded, 500 on an internal error) |
//! | `3xx` | metadata: followed; data path: treated as a permanent error |
//! | network error | retried like `5xx` |
//!
//! Because a `5xx` (or a dropped connection) on `atomic_write` makes the
//! client send the same write again, a write that may have committed must
//! not be answered `5xx` if applying it twice is wrong (a `sum`, a
//! versionstamped key, a write without checks): an "outcome unknown" is
//! better reported as a 4xx, which the user sees, than silently doubled.
//!
//! The responses carry statuses the clients act on: `SR_READ_DISABLED` /
//! `AW_WRITE_DISABLED` (re-fetch metadata; Deno's CLI currently just fails),
//! `AW_UNSPECIFIED` (fails), `SR_UNSPECIFIED` in v3 (fails: always set
//! `status`).

pub mod datapath;
pub mod glue;
pub mod key;
pub mod limits;
pub mod metadata;
pub mod server;
pub mod watch;

pub use datapath::{CodecError, decode, encode};
pub use key::{KeyError, KeyInt, KeyPart, decode_key, encode_key};
pub use limits::{Limits, ValidationError, validate_atomic_write, validate_snapshot_read, validate_watch};
pub use metadata::{DatabaseMetadata, MetadataError, ProtocolVersion, negotiate, negotiate_version};
pub use watch::{FrameDecoder, FrameError, WatchFrame};
