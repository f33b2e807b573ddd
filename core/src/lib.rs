//! sidekv-core: what every part of sidekv agrees on about data.
//!
//! The host's HTTP layer, its storage backends (SQLite + S3 replica,
//! PostgreSQL) and the wasm guests all link this crate, so a key that is too
//! long, a batch with too many mutations or a malformed versionstamp is
//! rejected by one definition with one message wherever it enters.
//!
//! ```text
//!  guest (wasm) ──WIT kv──▶ host bindings ─┐
//!  REST streams ───────────────────────────┼─▶ backend::Kv (validates with
//!  KV Connect (later) ─────────────────────┘   `validate`) ─▶ dyn Backend
//! ```
//!
//! | module         | what                                                     |
//! |----------------|----------------------------------------------------------|
//! | `types`        | keys (bytes), typed values, entries, writes, queries    |
//! | `validate`     | key/value/batch/query validation, cursors, counters      |
//! | `limits`       | every data limit, one definition                          |
//! | `versionstamp` | the 10-byte commit position and its 20-hex-char form     |
//! | `error`        | `StoreError`: what a store call can fail with (no HTTP)  |
//! | `status`       | the one table from a failure to its REST status          |
//!
//! There is no HTTP here on purpose: a status is a number in `status`, the
//! table the host and every guest (default and examples) answer from.

pub mod error;
pub mod limits;
pub mod status;
pub mod types;
pub mod validate;
pub mod versionstamp;

/// Unix time in milliseconds: the clock of expiry times (0 if the clock is
/// before 1970). One definition for the host, its backends and the guests.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

pub use error::StoreError;
pub use status::Failure;
pub use types::*;
pub use versionstamp::Versionstamp;
