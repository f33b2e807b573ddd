//! Every limit sidekv enforces, in one place.
//!
//! Each constant names the error that enforces it, so a reader can go from
//! "why did I get this 4xx" to the number and back. Limits that operators
//! may change have a `DEFAULT_` prefix and a matching setting in `config`.

use std::time::Duration;

/// The data limits (keys, values, reads, batches, watches) are defined once
/// in `sidekv_core::limits`, shared with the guests.
pub use sidekv_core::limits::*;

// ---- writes ----

/// Attempts of a compare-and-set loop (wasi:keyvalue `increment`) before
/// it reports contention to the guest.
pub const MAX_CAS_RETRIES: usize = 100;
/// Writes queued for the writer thread beyond which new writes wait
/// (backpressure). Writes in flight are bounded by the guest instances
/// (`POOLING_MAX_INSTANCES` at most) and the streams, far below this. The
/// SQLite writer's queue is an array channel that allocates and touches
/// every slot up front: at 16 Ki slots it held 1.9 MiB of RSS (heaptrack).
pub const WRITE_QUEUE_DEPTH: usize = 1024;

/// Page cache of each SQLite connection (the writer, the readers, the
/// inline readers): RSS is bounded by this times the connections.
pub const CONNECTION_CACHE_KIB: usize = 8 * 1024;

// ---- streams ----

/// Frames a host-made stream (SSE watch, NDJSON export) may queue ahead of
/// the client. With a page of up to `MAX_READ_BYTES` per frame this bounds a
/// slow reader's memory to a few pages; the write deadline ends a reader
/// that stopped.
pub const STREAM_QUEUE_FRAMES: usize = 2;

// ---- background maintenance ----

/// How often expired keys are physically deleted (they are invisible to
/// reads from the moment they expire).
pub const EXPIRY_SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Most expired keys deleted per sweep transaction, so a sweep never holds
/// the writer for long.
pub const EXPIRY_SWEEP_BATCH: usize = 1000;

// ---- guest sandbox (guest::GuestError) ----

/// Default per-request guest deadline (`KVSTORE_GUEST_TIMEOUT_MS`); past it → 504.
pub const DEFAULT_GUEST_TIMEOUT_MS: u64 = 5_000;
/// Granularity of the epoch deadline: one engine tick.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);
/// Default linear-memory cap per guest instance (`KVSTORE_GUEST_MEMORY_MB`).
pub const DEFAULT_GUEST_MEMORY_MB: u64 = 128;
/// Table elements per guest instance.
pub const GUEST_MAX_TABLE_ELEMENTS: usize = 20_000;
/// Host resources (WASI streams, ...) a guest may hold at once.
pub const GUEST_MAX_RESOURCES: usize = 1_000;
/// Default largest guest response body (`KVSTORE_MAX_RESPONSE_BYTES`); larger → 500.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 32 << 20;
/// Requests one reused instance serves before it is recycled, bounding any
/// slow leak inside a guest.
pub const INSTANCE_MAX_USES: u64 = 100_000;
/// Most idle instances kept for reuse (never more than `KVSTORE_MAX_INSTANCES`
/// exist in all).
pub const INSTANCE_POOL_IDLE: usize = 64;
/// Default cap on live guest instances (`KVSTORE_MAX_INSTANCES`): this many
/// per core. A call holds its instance while it waits for the store (a
/// commit's fsync, an S3 acknowledgement, a long-poll), and a group commit
/// can only batch the writes whose calls hold an instance, so the count
/// cap is high; memory is bounded by `DEFAULT_GUEST_MEMORY_BUDGET_MB`.
pub const INSTANCES_PER_CORE: usize = 32;
/// Default `KVSTORE_GUEST_MEMORY_BUDGET_MB`: no new instance is created,
/// and none is kept idle, while live instances hold this much linear memory
/// (a call then waits for one to come back). ~1 MiB per Rust instance, 10–20 MiB per JS or Python
/// one: the budget, not the count, decides how many a large guest gets.
pub const DEFAULT_GUEST_MEMORY_BUDGET_MB: u64 = 128;
/// How long a request waits for a free guest instance before it gets 503
/// with `Retry-After` (`GuestError::Busy`).
pub const INSTANCE_WAIT: Duration = Duration::from_secs(2);
/// Most concurrent instances with the pooling allocator (fresh mode).
pub const POOLING_MAX_INSTANCES: u32 = 256;
/// Most connections for point reads run inline on runtime threads (one per
/// core, up to this).
pub const INLINE_READERS_MAX: usize = 8;
/// A get-many of at most this many keys runs inline too; larger ones go to
/// the reader threads.
pub const INLINE_GET_MANY_MAX: usize = 16;
/// The writer checkpoints the WAL into the database file once no write has
/// come for this long.
pub const WRITER_IDLE_CHECKPOINT: Duration = Duration::from_secs(1);
/// The writer checkpoints inside the commit that takes the WAL past this
/// many pages (8 KiB each: 32 MB), and the WAL restarts from its start.
pub const WAL_AUTOCHECKPOINT_PAGES: i64 = 4000;
/// While writes go on, the background checkpointer copies the WAL into the
/// database file at most this often (each copy ends in an fsync of it), so
/// the writer's own checkpoint finds little left to copy. POST p99 at 1M
/// keys (bench/analysis.md): 5 ms 3.4, 20 ms 4.2, 50 ms 5.0, 100 ms
/// 7.7–9.4 ms; 11–13.5 ms without the background checkpointer.
pub const CHECKPOINT_BACKGROUND_INTERVAL: Duration = Duration::from_millis(20);
/// The writer prunes the change log every this many commits...
pub const PRUNE_EVERY_COMMITS: u64 = 256;
/// ...deleting at most this many rows at a time (~1–2 ms of writer time), so
/// a backlog never stalls the writes queued behind it.
pub const PRUNE_BATCH_ROWS: i64 = 2048;
/// Bytes of each pooled memory and table kept resident between `fresh`
/// instances and reset in place (only dirtied pages, with PAGEMAP_SCAN).
pub const FRESH_KEEP_RESIDENT: usize = 16 << 20;

// ---- HTTP (enforced in `http`: 413, 431, connection close) ----

/// Default largest request body (`KVSTORE_MAX_BODY_BYTES`); larger → 413.
/// Must leave room for a max-size value base64-encoded inside `/_atomic`.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 << 20;
/// A client must send its full request head within this time, or the
/// connection is closed (slowloris).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (request line + headers); larger → 431.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Streams one HTTP/2 connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 128;
/// Streams a client may open and reset before the server accepted them
/// (the "rapid reset" attack): past it, GOAWAY.
pub const H2_MAX_PENDING_RESET_STREAMS: usize = 20;
/// Streams the server may have to reset for a client's protocol errors
/// before it ends the connection.
pub const H2_MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;
/// HTTP/2 keep-alive: a PING after this much silence...
pub const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// ...and the connection is closed when its answer takes longer than this.
pub const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Default cap on open client connections (`KVSTORE_MAX_CONNECTIONS`).
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// At the cap, a connection with no request in flight that has been idle
/// this long is closed to make room for a new one (oldest first). Younger
/// idle connections are spared: a client that just got an answer is likely
/// about to reuse its connection, and closing it then races its request.
pub const IDLE_EVICT_AFTER: Duration = Duration::from_secs(1);
/// `Retry-After` (seconds) of every 503 that says "overloaded, come back":
/// connection cap, in-flight body budget, no free guest instance.
pub const RETRY_AFTER_SECS: u64 = 1;
/// A connection refused at the cap gets a canned 503; the server then reads
/// (and discards) what the client sends for up to this long before closing,
/// so the close is not a reset that destroys the 503 in flight.
pub const REFUSAL_LINGER: Duration = Duration::from_millis(500);
/// Refusals being written at once; past it, connections over the cap are
/// just closed (a flood must not turn into a task per connection).
pub const MAX_PENDING_REFUSALS: usize = 256;
/// Default whole-body deadline (`KVSTORE_BODY_TIMEOUT`); past it → 408 and
/// the connection is closed.
pub const DEFAULT_BODY_TIMEOUT: &str = "60s";
/// Default minimum body rate in bytes/s (`KVSTORE_BODY_MIN_RATE`): after
/// `BODY_RATE_GRACE`, a body must have arrived at this average rate, or it
/// gets 408 (one byte every 5 s is cut after ~2 s, not after the timeout).
pub const DEFAULT_BODY_MIN_RATE: u64 = 64 * 1024;
/// Time a body gets before the minimum rate applies (TCP slow start, a
/// client that sends its head and body in two writes).
pub const BODY_RATE_GRACE: Duration = Duration::from_secs(2);
/// Default response-write deadline (`KVSTORE_WRITE_TIMEOUT`): a connection
/// whose writes make no progress this long (the client stopped reading) is
/// closed, releasing its slot and its buffered response.
pub const DEFAULT_WRITE_TIMEOUT: &str = "10s";
/// Default in-flight body budget (`KVSTORE_MAX_INFLIGHT_BODY_BYTES`) as a
/// multiple of KVSTORE_MAX_BODY_BYTES: bytes of request bodies being read or
/// handled at once. A request whose body does not fit waits
/// `BODY_BUDGET_WAIT`, then gets 503 with `Retry-After`.
pub const INFLIGHT_BODY_FACTOR: usize = 4;
/// How long a body waits for room in the in-flight budget.
pub const BODY_BUDGET_WAIT: Duration = Duration::from_secs(2);
/// How long graceful shutdown waits for in-flight requests (at most half
/// of the stop deadline: the rest is the backup's).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

// ---- PostgreSQL backend (backend::postgres) ----

/// Default connections one sidecar keeps to PostgreSQL (`KVSTORE_PG_POOL_SIZE`):
/// the writer's, the tailer's and the readers'.
pub const DEFAULT_PG_POOL_SIZE: usize = 16;
/// Shared connections that carry every sidecar's point reads, pipelined
/// (`backend::postgres::pipeline`); the pool serves everything else.
pub const PG_PIPELINED_CONNECTIONS: usize = 4;
/// Connecting (TCP + TLS + authentication) gives up after this.
pub const PG_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often each sidecar polls the commit clock, so watches and SSE see
/// commits made through other sidecars within about this long.
pub const PG_TAIL_INTERVAL: Duration = Duration::from_millis(25);
/// Longest wait between reconnection attempts while the database is down.
pub const PG_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Attempts of a write transaction that failed with a serialization
/// failure or deadlock (SQLSTATE 40001 / 40P01) before the writes fail.
pub const PG_TX_RETRIES: usize = 5;
/// How long the sweeper lease lasts without renewal (one sidecar sweeps).
pub const PG_SWEEP_LEASE: Duration = Duration::from_secs(5);
/// History of the change feed is pruned once it is this many commits past
/// the kept window (so pruning is not a commit of its own every second).
pub const PG_PRUNE_SLACK: u64 = 1_000;

// ---- replication (replica::ReplicaError) ----

/// Default time between outbox uploads in `local` durability mode
/// (`KVSTORE_SYNC_INTERVAL`).
pub const DEFAULT_SYNC_INTERVAL: &str = "1s";
/// Largest uncompressed segment; a bigger backlog ships as several segments.
pub const SEGMENT_MAX_BYTES: usize = 16 << 20;
/// How often an idle uploader looks again at a due snapshot still running.
pub const SNAPSHOT_RECHECK: Duration = Duration::from_secs(1);
/// Nice value of a snapshot's copy and compression (`background`): the
/// writer and request handling get the cores first.
pub const BACKGROUND_NICE: i32 = 10;
/// Page cache of the replica's connection to the change log and of a
/// snapshot's copy (each reads a page once; see `store::outbox`).
pub const OUTBOX_CACHE_KIB: usize = 256;
/// A new snapshot is taken once this many bytes of segments were shipped
/// since the last one...
pub const SNAPSHOT_AFTER_BYTES: u64 = 64 << 20;
/// ...or this much time passed with any segment shipped.
pub const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(3600);
/// Snapshots kept in S3 (with every segment after the oldest of them).
pub const DEFAULT_SNAPSHOT_RETENTION: usize = 3;
/// In `s3` mode, a write fails with 503 if its segment is not in S3 by then.
pub const S3_ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Timeout of one S3 operation attempt.
pub const S3_OP_TIMEOUT: Duration = Duration::from_secs(10);
/// First wait before retrying a failed snapshot (doubles each failure)...
pub const SNAPSHOT_RETRY_MIN: Duration = Duration::from_secs(5);
/// ...up to this: a failing snapshot must not copy the database over and over.
pub const SNAPSHOT_RETRY_MAX: Duration = Duration::from_secs(600);
/// Tries to reserve a versionstamp epoch when others take the candidates first.
pub const EPOCH_RESERVE_ATTEMPTS: usize = 64;
/// Default part size of multipart uploads (`KVSTORE_S3_PART_BYTES`):
/// snapshots larger than one part are uploaded in parts (S3 caps a single
/// PUT at 5 GB, and allows 10 000 parts: 640 GB at this size).
pub const DEFAULT_S3_PART_BYTES: u64 = 64 << 20;
/// S3's smallest part (all but the last).
pub const MIN_S3_PART_BYTES: u64 = 5 << 20;
/// S3's largest part.
pub const MAX_S3_PART_BYTES: u64 = 5 << 30;
/// Commits unshipped this long past the sync interval (`s3` mode: past
/// their commit) make `/readyz` say "not backed up" before any upload has
/// failed: a hanging S3 fails an attempt only after its timeouts and retries.
pub const BACKUP_LAG_GRACE: Duration = Duration::from_secs(5);
/// Backoff ceiling between failed uploads.
pub const UPLOAD_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Default stop deadline (`KVSTORE_STOP_TIMEOUT`): from SIGTERM to exit,
/// in-flight requests and the drain to S3 included. Below Kubernetes'
/// default 30 s grace period, so the drain ends before SIGKILL could.
pub const DEFAULT_STOP_TIMEOUT: &str = "25s";
/// At a stop, how long the uploader may finish its current step before it
/// is cancelled and the drain takes over.
pub const UPLOADER_STOP_WAIT: Duration = Duration::from_secs(2);

// ---- queues (`queue`; data limits are in sidekv_core::limits) ----

/// Most expired leases turned into failed attempts in one commit.
pub const QUEUE_EXPIRE_BATCH: usize = 1000;
/// Default deliveries in flight at once to `KVSTORE_QUEUE_URL`
/// (`KVSTORE_QUEUE_CONCURRENCY`).
pub const DEFAULT_QUEUE_CONCURRENCY: usize = 8;
/// Default time the application gets to answer one push delivery
/// (`KVSTORE_QUEUE_TIMEOUT`); past it the attempt has failed.
pub const DEFAULT_QUEUE_TIMEOUT: &str = "30s";
/// A pushed message's lease outlasts the delivery timeout by this much, so
/// an attempt still in flight is never handed out twice.
pub const QUEUE_PUSH_LEASE_MARGIN: Duration = Duration::from_secs(5);
/// The queue task wakes at least this often (lease expiry, gauges), even
/// with nothing due.
pub const QUEUE_TICK: Duration = Duration::from_secs(1);
/// The queue task never sleeps less than this between rounds (a message
/// due now whose delivery slots are full must not make it spin), and it and
/// waiting pull consumers look at the queue at most this often when woken
/// by commits (a write load must not cost a queue read per commit).
pub const QUEUE_MIN_SLEEP: Duration = Duration::from_millis(5);
/// After a failed store call, the queue task waits this long before trying again.
pub const QUEUE_ERROR_BACKOFF: Duration = Duration::from_secs(1);
/// Default `?wait=` of a pull (`POST /_queue/take`).
pub const DEFAULT_QUEUE_WAIT_MS: u32 = 30_000;
