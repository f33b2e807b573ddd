//! Every data limit, in one place: the host enforces them (`validate`), the
//! guests read them from here instead of keeping copies.
//!
//! Each constant names the error that enforces it. Limits that operators may
//! change have a `DEFAULT_` prefix and a matching host setting.

// ---- keys and values (StoreError::InvalidKey / ValueTooLarge) ----

/// Longest key, in bytes (as Deno KV). `InvalidKey`.
pub const MAX_KEY_BYTES: usize = 2048;
/// Default largest value (`KVSTORE_MAX_VALUE_BYTES`). `ValueTooLarge`.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1 << 20;
/// Hard ceiling for `KVSTORE_MAX_VALUE_BYTES`; larger values belong in S3 itself.
pub const MAX_VALUE_BYTES_CEILING: usize = 64 << 20;

// ---- reads (StoreError::InvalidArgument) ----

/// Most entries one `list` page returns (`limit` above it → InvalidArgument).
pub const MAX_LIST_LIMIT: u32 = 1000;
/// Most ranges in one snapshot read (as Deno KV's `MAX_READ_RANGES`).
pub const MAX_SNAPSHOT_RANGES: usize = 10;
/// Most keys in one `get-many`.
pub const MAX_GET_MANY_KEYS: usize = 1000;
/// Most bytes (keys + values) one read hands out: a `list` page (also an
/// export page) stops before it would pass this and returns a cursor, a
/// prefix-watch step stops likewise, and a `get-many` over it fails with
/// `InvalidArgument`. A page always holds at least one entry, so a single
/// value larger than this (KVSTORE_MAX_VALUE_BYTES above it) still lists.
/// Why: 40 values of 900 KiB in one page grew the guest past its memory cap
/// (the JSON answer is base64, 4/3 of the values, built in guest memory).
pub const MAX_READ_BYTES: usize = 8 << 20;

// ---- writes ----

/// Most mutations in one atomic batch (as Deno KV). `InvalidArgument`.
pub const MAX_ATOMIC_MUTATIONS: usize = 1000;
/// Most checks in one atomic batch. `InvalidArgument`.
pub const MAX_ATOMIC_CHECKS: usize = 100;
/// Most write requests folded into one group commit (one transaction, one
/// fsync). The 2-byte versionstamp suffix numbers writes inside a commit, so
/// this must stay below 65536.
pub const MAX_COMMIT_BATCH: usize = 4096;
/// Longest TTL accepted: 100 years in milliseconds.
pub const MAX_TTL_MS: u64 = 100 * 365 * 24 * 3600 * 1000;

// ---- watch ----

/// Longest long-poll a client may ask for; longer → InvalidArgument.
pub const MAX_WATCH_TIMEOUT_MS: u32 = 300_000;
/// Commits of change history kept so prefix watches can resume from an
/// older versionstamp; older positions are refused (410 over HTTP).
pub const WATCH_HISTORY_COMMITS: u64 = 10_000;
/// Changes read per step of a prefix watch stream (and at most
/// `MAX_READ_BYTES` of them).
pub const WATCH_STREAM_BATCH: u32 = 500;

// ---- queues (StoreError::InvalidArgument / ValueTooLarge) ----

/// Largest queue message payload (as Deno KV: 64 KiB). `ValueTooLarge`.
pub const MAX_QUEUE_PAYLOAD_BYTES: usize = 64 << 10;
/// Longest delay before a message's first delivery (as Deno KV: 30 days).
pub const MAX_QUEUE_DELAY_MS: u64 = 30 * 24 * 3600 * 1000;
/// Most retry steps in a backoff schedule (as Deno KV).
pub const MAX_BACKOFF_STEPS: usize = 10;
/// Longest single retry step (as Deno KV: 1 hour).
pub const MAX_BACKOFF_STEP_MS: u32 = 3_600_000;
/// Deno KV's schedule when the client gives none: a message is tried at
/// most 1 + 5 times before it is dead-lettered.
pub const DEFAULT_BACKOFF_SCHEDULE: [u32; 5] = [100, 1_000, 5_000, 30_000, 60_000];
/// Most keys a message is written to when it is finally undelivered (as Deno KV).
pub const MAX_KEYS_IF_UNDELIVERED: usize = 10;
/// Most messages enqueued by one atomic write (as Deno KV, they count
/// with its mutations: mutations + enqueues ≤ `MAX_ATOMIC_MUTATIONS`).
pub const MAX_ATOMIC_ENQUEUES: usize = MAX_ATOMIC_MUTATIONS;
/// Default lease (visibility timeout) of a pulled message: unacknowledged
/// after this, the attempt counts as failed and the message is delivered again.
pub const DEFAULT_QUEUE_VISIBILITY_MS: u32 = 30_000;
/// Longest lease a consumer may ask for (12 hours).
pub const MAX_QUEUE_VISIBILITY_MS: u32 = 12 * 3600 * 1000;
/// Shortest lease a consumer may ask for.
pub const MIN_QUEUE_VISIBILITY_MS: u32 = 100;
/// Keys starting with this byte are reserved: queue messages travel
/// through the change log (and the S3 segments) under them. Neither a REST
/// key (UTF-8) nor a Deno KV key (tuple encoding) can start with it.
pub const RESERVED_KEY_BYTE: u8 = 0xff;
