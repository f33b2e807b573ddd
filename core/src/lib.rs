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
//!
//! There is no HTTP here on purpose: the host maps `StoreError` to a status
//! in exactly one place (`http::status`), guests map the WIT variant
//! themselves.

pub mod error;
pub mod limits;
pub mod types;
pub mod validate;
pub mod versionstamp;

pub use error::StoreError;
pub use types::*;
pub use versionstamp::Versionstamp;
