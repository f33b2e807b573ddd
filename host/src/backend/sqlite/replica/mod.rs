//! Continuous backup to an object store (S3, or a directory), restore at
//! launch, fencing, and versionstamp epochs.
//!
//! Logical replication, not page shipping: the store writes every mutation
//! to the `changelog` outbox inside the same transaction as the data, and
//! hands it out through `store::outbox` (no SQL here):
//!
//! ```text
//! backup   uploader task: store.outbox_next(shipped) = whole commits, each
//!          record compressed into the segment as it is read (SegmentWriter)
//!          ─▶ create segments/<first>.seg.zst only if absent
//!          ─▶ store.mark_shipped(last)  (s3 mode: wakes waiting writers)
//!          local mode: at most one segment per sync interval
//! snapshot its own task: store.snapshot_to(copy) ─▶ wait until shipped ≥ its
//!          commit ─▶ zstd to a file ─▶ streamed (multipart) PUT
//!          snapshots/<counter>.sqlite3.zst ─▶ retention; failures back off
//! restore  plan (newest snapshot ≤ target + the segments after it) ─▶ fetch
//!          and apply (streamed; segments must chain exactly) ─▶ finalize
//!          (integrity check, fsync, leftover WAL set aside, rename)
//! epochs   a database issues counters only in an epoch reserved with
//!          epochs/<e>.epoch (create-if-absent); a restored file reserves a
//!          new one above all others, so versionstamps never repeat
//! ```
//!
//! One file per stage, in the order a launch meets them: `remote` (the
//! objects and their names over an `ObjectStore`), `launch` (restore a
//! missing database, compare a present one, epochs), `restore`, `upload`
//! (the uploader, fencing, the drain at a stop), `snapshot` (snapshots, the
//! base snapshot, retention); `objects` holds the object stores, `segment`
//! the segment format. This file holds the shared state and errors.
//!
//! Layout under the prefix: `segments/<first commit, 20 digits>.seg.zst`,
//! `snapshots/<commit, 20 digits>.sqlite3.zst` (a plain SQLite file after
//! `zstd -d`) and `epochs/<epoch, 20 digits>.epoch`. Zero-padded names make
//! listing order commit order.
//!
//! Fencing (generation story): segment names are the fencing token. Two
//! writers that continue the same history both need the name of the next
//! commit; create-if-absent lets exactly one create it. The loser checks
//! whether the existing object is its own (same records, or a base segment
//! with its writer id: a retry after a lost response, or a re-ship after a
//! crash) and otherwise stops taking writes (503, readiness fails, error
//! logged). A backup that must restart from a snapshot claims its range with
//! a base segment first, so that claim is fenced the same way. At launch, a
//! local database that S3's newest segment ends past is moved aside and S3
//! is restored instead. In `s3` durability mode a write is acknowledged only
//! after an object covering its commit exists, so no acknowledged write can
//! be lost to a fenced writer; in `local` mode the fenced writer's unshipped
//! commits stay in its local file, never in the backup.

mod launch;
pub mod objects;
mod remote;
mod restore;
pub mod segment;
mod snapshot;
mod upload;

pub use launch::remove_leftovers;
pub use remote::Remote;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::backend::NotBackedUp;
use crate::backend::sqlite::store::outbox::{FilePositions, Next, RestoreFile, file_positions};
use crate::backend::sqlite::store::versionstamp::{EPOCH_BITS, MAX_EPOCH, epoch_of, epoch_start};
use crate::backend::sqlite::store::{Durability, Store, StoreError, Versionstamp};
use crate::limits;
use crate::metrics::METRICS;
use objects::ObjectStore;
use segment::{Segment, SegmentWriter};

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("{setting}: {msg}")]
    Config { setting: &'static str, msg: String },
    #[error("S3 {op} {key}: {msg}")]
    S3 { op: &'static str, key: String, msg: String },
    #[error("backup is corrupt: {0}")]
    Corrupt(String),
    #[error("backup is incomplete: {0}")]
    Gap(String),
    #[error("another writer owns this S3 path: {0}")]
    Fenced(String),
    /// The change log no longer holds the commit after this one.
    #[error("the change log no longer holds commit {}", .0 + 1)]
    HistoryPruned(u64),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("local file {path}: {msg}")]
    Io { path: String, msg: String },
}

pub(super) fn io_err(path: &Path, e: impl std::fmt::Display) -> ReplicaError {
    ReplicaError::Io { path: path.display().to_string(), msg: e.to_string() }
}

#[derive(Default)]
struct State {
    fenced: Option<String>,
    /// When the oldest unshipped commit was first seen.
    behind_since: Option<Instant>,
    bytes_since_snapshot: u64,
    last_snapshot: Option<Instant>,
    /// No snapshot attempt before this (backoff after a failure).
    snapshot_not_before: Option<Instant>,
    snapshot_backoff: Duration,
    /// Why the backup is not running right now, if it is not (for /readyz detail and logs).
    not_backed_up: Option<String>,
}

/// What S3 holds compared with a local database.
#[derive(Debug, PartialEq, Eq)]
pub enum Assessment {
    /// S3 holds this database's history (or a prefix of it): ship on.
    Continue,
    /// S3 holds commits past the local database: another instance wrote.
    Stale { remote_end: u64 },
    /// S3 cannot rebuild the local history from commit `after` + 1 on (a
    /// new prefix, or history S3 lost): the backup restarts from a snapshot.
    NeedsBase { after: u64 },
}

pub struct Replica {
    pub remote: Remote,
    durability: Durability,
    sync_interval: Duration,
    snapshot_bytes: u64,
    retention: usize,
    state: Mutex<State>,
    stop: Notify,
    stopping: AtomicBool,
    /// `Some(after)`: the backup must restart from a snapshot, claiming
    /// commits `after + 1 ..` (see `base_snapshot`).
    needs_base: Mutex<Option<u64>>,
    /// The launch check against S3 could not run (S3 unreachable): the
    /// uploader runs it before it ships anything.
    needs_check: AtomicBool,
    /// A snapshot task is running.
    snapshotting: AtomicBool,
    /// The versionstamp epoch reserved for the local database (`NO_EPOCH`: none yet).
    epoch: AtomicU64,
    /// Reserved at launch, to be adopted by the store once it is open (`attach`).
    epoch_to_adopt: Mutex<Option<u64>>,
}

const NO_EPOCH: u64 = u64::MAX;

pub(super) fn sync_parent(path: &Path) {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// The backup's settings (`KVSTORE_S3_URL` and its companions).
#[derive(Clone, Debug)]
pub struct ReplicaOptions {
    /// `s3://bucket/prefix` or `file:///dir`.
    pub url: String,
    pub durability: Durability,
    /// `local` mode: at most one segment per interval.
    pub sync_interval: Duration,
    /// A snapshot after this many bytes of segments shipped.
    pub snapshot_bytes: u64,
    /// Snapshots kept.
    pub retention: usize,
    /// Multipart upload part size.
    pub part_bytes: u64,
}

impl Replica {
    pub async fn new(o: &ReplicaOptions) -> Result<Replica, ReplicaError> {
        Ok(Replica::with_objects(objects::open(&o.url, o.part_bytes).await?, o))
    }

    /// A replica on any object store (tests use a directory; `o.url` is not opened).
    pub fn with_objects(objects: Box<dyn ObjectStore>, o: &ReplicaOptions) -> Replica {
        Replica {
            remote: Remote::new(objects),
            durability: o.durability,
            sync_interval: o.sync_interval,
            snapshot_bytes: o.snapshot_bytes,
            retention: o.retention,
            state: Mutex::new(State { last_snapshot: Some(Instant::now()), ..State::default() }),
            stop: Notify::new(),
            stopping: AtomicBool::new(false),
            needs_base: Mutex::new(None),
            needs_check: AtomicBool::new(false),
            snapshotting: AtomicBool::new(false),
            epoch: AtomicU64::new(NO_EPOCH),
            epoch_to_adopt: Mutex::new(None),
        }
    }

    pub fn fenced_reason(&self) -> Option<String> {
        self.state.lock().unwrap().fenced.clone()
    }

    /// Why the backup is not keeping up right now: a known reason (S3
    /// unreachable at launch, uploads failing, a base snapshot pending), or
    /// commits waiting for S3 longer than shipping them should take (an S3
    /// that hangs fails an upload only after its timeouts and retries).
    pub fn not_backed_up_reason(&self) -> Option<String> {
        let st = self.state.lock().unwrap();
        if let Some(why) = &st.not_backed_up {
            return Some(why.clone());
        }
        let expected = match self.durability {
            Durability::Local => self.sync_interval,
            Durability::S3 => Duration::ZERO,
        } + limits::BACKUP_LAG_GRACE;
        let waited = st.behind_since.map(|t| t.elapsed()).filter(|w| *w > expected)?;
        Some(format!(
            "committed writes have waited {:.0} s for S3 (shipping should take under {:.0} s)",
            waited.as_secs_f64(),
            expected.as_secs_f64()
        ))
    }

    /// The backup must restart from a snapshot claiming commits `after + 1 ..`;
    /// until it is in S3, commits up to `committed` are not backed up.
    pub(super) fn need_base(&self, after: u64, committed: u64, why: &str) {
        *self.needs_base.lock().unwrap() = Some(after);
        if committed > after {
            self.state.lock().unwrap().not_backed_up =
                Some(format!("{why}: commits {}..={committed} reach S3 only with the snapshot the backup restarts from", after + 1));
        }
    }

    pub fn lag_seconds(&self) -> f64 {
        self.state.lock().unwrap().behind_since.map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0)
    }
}

// ------------------------------------------------------------- console ----

impl Replica {
    /// What the console's backup panel shows: the snapshots, segments and
    /// epochs in the store (each epoch was reserved by a database that
    /// started a backup here or was restored: the restore history), and the
    /// points in time a restore can reach, as `sidekv restore --at` values.
    pub async fn report(&self, shipped: u64) -> Result<serde_json::Value, ReplicaError> {
        use serde_json::json;
        let counter_of = |key: &str| key.rsplit('/').next().and_then(|n| n.get(..20)).and_then(|n| n.parse::<u64>().ok());
        let at = |c: u64| format!("{c:016x}ffff");
        let snapshots = self.remote.objects.list_meta("snapshots").await?;
        let segments = self.remote.objects.list_meta("segments").await?;
        let epochs = self.remote.objects.list_meta("epochs").await?;
        let snaps: Vec<_> = snapshots
            .iter()
            .filter_map(|o| {
                let c = counter_of(&o.key)?;
                Some(json!({ "commit": c, "key": self.remote.name(&o.key), "bytes": o.bytes, "time_ms": o.modified_ms, "at": at(c) }))
            })
            .collect();
        let seg_first: Vec<u64> = segments.iter().filter_map(|o| counter_of(&o.key)).collect();
        let newest = segments.last().map(
            |o| json!({ "first_commit": counter_of(&o.key), "key": self.remote.name(&o.key), "bytes": o.bytes, "time_ms": o.modified_ms }),
        );
        let history: Vec<_> = epochs
            .iter()
            .filter_map(|o| {
                let e = counter_of(&o.key)?;
                Some(json!({ "epoch": e, "first_commit": epoch_start(e) + 1, "time_ms": o.modified_ms }))
            })
            .collect();
        // The oldest reachable state: commit 1 when the segments start there,
        // else the oldest snapshot.
        let earliest = if seg_first.first().is_some_and(|f| *f <= 1) { Some(1) } else { snaps.first().and_then(|s| s["commit"].as_u64()) };
        let mut points: Vec<serde_json::Value> =
            snaps.iter().map(|s| json!({ "commit": s["commit"], "at": s["at"], "time_ms": s["time_ms"], "what": "snapshot" })).collect();
        if shipped > 0 {
            let t = METRICS.last_upload_ms.load(Relaxed);
            points.push(json!({ "commit": shipped, "at": at(shipped), "time_ms": t, "what": "newest shipped commit" }));
        }
        Ok(json!({
            "store": self.remote.describe(),
            "durability": format!("{:?}", self.durability).to_lowercase(),
            "sync_interval_ms": self.sync_interval.as_millis() as u64,
            "snapshots": snaps,
            "segments": { "count": segments.len(), "bytes": segments.iter().map(|o| o.bytes).sum::<u64>(), "newest": newest },
            "restore_history": history,
            "restore_range": { "earliest": earliest.map(at), "latest": (shipped > 0).then(|| at(shipped)) },
            "points": points,
        }))
    }
}

#[cfg(test)]
mod tests;
