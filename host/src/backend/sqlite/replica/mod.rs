//! Continuous backup to an object store (S3, or a directory), restore at
//! launch, fencing, and versionstamp epochs.
//!
//! Logical replication, not page shipping: the store writes every mutation
//! to the `changelog` outbox inside the same transaction as the data, and
//! hands it out through `store::outbox` (no SQL here):
//!
//! ```text
//! backup   uploader task: store.outbox_next(shipped) = whole commits ─▶ segment
//!          ─▶ zstd ─▶ create segments/<first>.seg.zst only if absent
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

pub mod objects;
pub mod segment;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::backend::sqlite::store::outbox::{FilePositions, Next, RestoreFile, file_positions};
use crate::backend::sqlite::store::versionstamp::{EPOCH_BITS, MAX_EPOCH, epoch_of, epoch_start};
use crate::backend::sqlite::store::{Durability, Store, StoreError, Versionstamp};
use crate::config::Config;
use crate::limits;
use crate::metrics::METRICS;
use objects::ObjectStore;
use segment::Segment;

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

fn io_err(path: &Path, e: impl std::fmt::Display) -> ReplicaError {
    ReplicaError::Io { path: path.display().to_string(), msg: e.to_string() }
}

/// The backup's objects, named by commit: `segments/<first commit, 20
/// digits>.seg.zst` and `snapshots/<commit, 20 digits>.sqlite3.zst`.
pub struct Remote {
    objects: Box<dyn ObjectStore>,
}

impl Remote {
    pub fn new(objects: Box<dyn ObjectStore>) -> Remote {
        Remote { objects }
    }

    pub fn describe(&self) -> String {
        self.objects.describe()
    }

    /// `key` as the object store names it (S3: with the prefix), for messages.
    pub fn name(&self, key: &str) -> String {
        self.objects.name(key)
    }

    /// Read and decode a segment object.
    pub async fn segment(&self, key: &str) -> Result<Segment, ReplicaError> {
        Segment::decode(&self.get(key).await?, &self.name(key))
    }

    pub fn segment_key(&self, first: u64) -> String {
        format!("segments/{first:020}.seg.zst")
    }

    pub fn snapshot_key(&self, counter: u64) -> String {
        format!("snapshots/{counter:020}.sqlite3.zst")
    }

    /// Create an object only if absent. `Ok(false)` = it already exists.
    pub async fn put_new(&self, key: &str, body: Vec<u8>) -> Result<bool, ReplicaError> {
        self.objects.put_new(key, body).await
    }

    pub async fn get(&self, key: &str) -> Result<Vec<u8>, ReplicaError> {
        self.objects.get(key).await
    }

    pub async fn put_new_file(&self, key: &str, path: &Path) -> Result<bool, ReplicaError> {
        self.objects.put_new_file(key, path).await
    }

    pub async fn get_to_file(&self, key: &str, path: &Path) -> Result<u64, ReplicaError> {
        self.objects.get_to_file(key, path).await
    }

    /// Counters named by the objects under `dir` (`segments` / `snapshots`), ascending.
    pub async fn list_counters(&self, dir: &str) -> Result<Vec<(u64, String)>, ReplicaError> {
        let mut out: Vec<(u64, String)> = self
            .objects
            .list(dir)
            .await?
            .into_iter()
            .filter_map(|k| {
                let name = k.strip_prefix(dir)?.strip_prefix('/')?;
                let n = name.get(..20)?.parse::<u64>().ok()?;
                (name.as_bytes().get(20) == Some(&b'.')).then_some((n, k))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    pub async fn delete(&self, key: &str) -> Result<(), ReplicaError> {
        self.objects.delete(key).await
    }

    /// `check-config`: the store answers, accepts writes and deletes, and
    /// refuses to overwrite an existing object (without that, two instances
    /// on one path cannot be fenced and would corrupt the backup).
    pub async fn probe(&self) -> Result<(), ReplicaError> {
        let key = format!("probe/{:016x}", rand::random::<u64>());
        let first = self.put_new(&key, b"sidekv check-config 1".to_vec()).await?;
        let second = self.put_new(&key, b"sidekv check-config 2".to_vec()).await;
        let kept = self.get(&key).await;
        self.delete(&key).await?;
        if !first {
            return Err(ReplicaError::Fenced(format!("the probe object {key} existed before it was written")));
        }
        match (second?, kept?) {
            (false, body) if body == b"sidekv check-config 1" => {}
            _ => {
                return Err(ReplicaError::Config {
                    setting: "KVSTORE_S3_URL",
                    msg: format!(
                        "{} ignores If-None-Match: * (a conditional PUT replaced an existing object): two sidekv instances on this path could not be fenced and would corrupt the backup; use a store that supports conditional writes (AWS S3, MinIO >= 2024, …)",
                        self.describe()
                    ),
                });
            }
        }
        self.list_counters("segments").await?;
        Ok(())
    }
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

fn set_aside(db: &Path, tag: &str) -> Result<Option<PathBuf>, ReplicaError> {
    let aside = PathBuf::from(format!("{}.{tag}-{}", db.display(), crate::backend::sqlite::store::now_ms()));
    let mut moved = false;
    // The database first: once it is gone, a crash leaves "no database"
    // (the next launch restores) and the rest is set aside then, never a
    // database paired with another file's WAL.
    for ext in ["", "-wal", "-shm"] {
        let from = PathBuf::from(format!("{}{ext}", db.display()));
        if from.exists() {
            std::fs::rename(&from, format!("{}{ext}", aside.display())).map_err(|e| io_err(&from, e))?;
            moved = true;
        }
    }
    Ok(moved.then_some(aside))
}

fn sync_parent(path: &Path) {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

fn snapshot_tmp(store: &Store) -> PathBuf {
    let dir = store.path().parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    dir.join(format!(".sidekv-snapshot-{}-{:08x}.sqlite3", std::process::id(), rand::random::<u32>()))
}

/// Remove what an interrupted snapshot or restore left beside `db`.
pub fn remove_leftovers(db: &Path) {
    let dir = db.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let restoring = format!("{}.restoring", db.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(".sidekv-snapshot-") || name.starts_with(&restoring) {
            tracing::info!(file = %e.path().display(), "removing a leftover of an interrupted snapshot or restore");
            let _ = std::fs::remove_file(e.path());
        }
    }
}

impl Replica {
    pub async fn new(url: &str, config: &Config) -> Result<Replica, ReplicaError> {
        Ok(Replica::with_objects(objects::open(url, config.s3_part_bytes).await?, config))
    }

    /// A replica on any object store (tests use a directory).
    pub fn with_objects(objects: Box<dyn ObjectStore>, config: &Config) -> Replica {
        Replica {
            remote: Remote::new(objects),
            durability: config.durability,
            sync_interval: config.sync_interval,
            snapshot_bytes: config.snapshot_bytes,
            retention: config.snapshot_retention,
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

    /// Why the backup is not running right now (S3 unreachable at launch, …).
    pub fn not_backed_up_reason(&self) -> Option<String> {
        self.state.lock().unwrap().not_backed_up.clone()
    }

    pub fn lag_seconds(&self) -> f64 {
        self.state.lock().unwrap().behind_since.map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0)
    }

    // ---------------------------------------------------------- launch ----

    /// Before the store opens: restore a missing database, or compare a
    /// present one with S3 (a stale one is set aside and restored). When S3
    /// cannot be reached and a local database exists, the server still
    /// starts: the uploader repeats the check until S3 answers.
    pub async fn prepare_local(&self, db: &Path) -> Result<(), ReplicaError> {
        remove_leftovers(db);
        if !db.exists() {
            self.restore_to(db, None).await?;
        } else if let Err(e) = self.check_local(db).await {
            return self.unreachable_at_launch(db, e);
        }
        match self.plan_epoch(db).await {
            Err(e) => self.unreachable_at_launch(db, e),
            ok => ok,
        }
    }

    /// Compare a present local database with S3; a stale one is set aside
    /// and S3 restored in its place.
    async fn check_local(&self, db: &Path) -> Result<(), ReplicaError> {
        let FilePositions { counter, shipped, .. } = file_positions(db)?;
        match self.assess(counter, shipped).await? {
            Assessment::Continue => {}
            Assessment::NeedsBase { after } => {
                tracing::info!(db = %db.display(), local_commit = counter, "S3 cannot rebuild this database's history; the backup restarts with a snapshot");
                *self.needs_base.lock().unwrap() = Some(after);
            }
            Assessment::Stale { remote_end } => {
                let aside = set_aside(db, "stale")?;
                tracing::warn!(
                    db = %db.display(), local_commit = counter, remote_commit = remote_end, moved_to = ?aside,
                    "S3 holds newer commits than the local database (another instance wrote since); keeping the local file aside and restoring from S3"
                );
                self.restore_to(db, None).await?;
            }
        }
        Ok(())
    }

    /// S3 failed during the launch checks of a present local database:
    /// serve it anyway, and let the uploader repeat the checks until S3
    /// answers. Until then the backup is off (reported in /readyz detail and
    /// metrics) and, without a reserved epoch, writes are refused.
    fn unreachable_at_launch(&self, db: &Path, e: ReplicaError) -> Result<(), ReplicaError> {
        if !matches!(e, ReplicaError::S3 { .. } | ReplicaError::Io { .. }) || !db.exists() {
            return Err(e);
        }
        tracing::warn!(error = %e, "S3 cannot be reached at launch; serving the local database, the backup starts once S3 answers");
        self.state.lock().unwrap().not_backed_up = Some(format!("S3 unreachable at launch: {e}"));
        self.needs_check.store(true, Relaxed);
        if let Some(e) = file_positions(db)?.epoch {
            self.epoch.store(e, Relaxed);
        }
        Ok(())
    }

    /// The versionstamp epoch of the local database: the one it holds, or a
    /// new one reserved now (a restored file, or one never backed up), which
    /// the store adopts when it opens (`attach`).
    async fn plan_epoch(&self, db: &Path) -> Result<(), ReplicaError> {
        let pos = file_positions(db)?;
        match pos.epoch {
            Some(e) => self.epoch.store(e, Relaxed),
            None => {
                let e = self.reserve_epoch(pos.counter).await?;
                *self.epoch_to_adopt.lock().unwrap() = Some(e);
            }
        }
        Ok(())
    }

    /// Reserve a versionstamp epoch above every epoch reserved on this path
    /// and above `counter`: `epochs/<e>.epoch`, created only if absent.
    async fn reserve_epoch(&self, counter: u64) -> Result<u64, ReplicaError> {
        let listed = self.remote.list_counters("epochs").await?;
        let above_listed = listed.last().map_or(0, |(e, _)| e + 1);
        let above_local = if counter > 0 { epoch_of(counter) + 1 } else { 0 };
        let mut e = above_listed.max(above_local);
        for _ in 0..limits::EPOCH_RESERVE_ATTEMPTS {
            if e > MAX_EPOCH {
                break;
            }
            let key = format!("epochs/{e:020}.epoch");
            let body = format!("reserved by sidekv pid {} at unix ms {}\n", std::process::id(), crate::backend::sqlite::store::now_ms());
            if self.remote.put_new(&key, body.into_bytes()).await? {
                tracing::info!(epoch = e, first_counter = epoch_start(e) + 1, "reserved a versionstamp epoch");
                return Ok(e);
            }
            e += 1; // another instance reserved it just now
        }
        Err(ReplicaError::Gap(format!("no versionstamp epoch could be reserved (tried up to {e})")))
    }

    /// Once the store is open: adopt the epoch reserved at launch (its
    /// counter jumps to the epoch's start), before any write is accepted.
    pub async fn attach(&self, store: &Store) -> Result<(), ReplicaError> {
        let pending = self.epoch_to_adopt.lock().unwrap().take();
        if let Some(e) = pending {
            let counter = store.adopt_epoch(e).await?;
            self.epoch.store(e, Relaxed);
            tracing::info!(epoch = e, counter, "new commits are numbered in the reserved epoch");
        }
        Ok(())
    }

    /// Past half of the current epoch, reserve and adopt the next one, so
    /// the writer never runs into its limit.
    async fn maybe_roll_epoch(&self, store: &Store) -> Result<(), ReplicaError> {
        let e = self.epoch.load(Relaxed);
        if e == NO_EPOCH || store.committed() < epoch_start(e) + (1 << (EPOCH_BITS - 1)) {
            return Ok(());
        }
        let next = self.reserve_epoch(store.committed()).await?;
        store.adopt_epoch(next).await?;
        self.epoch.store(next, Relaxed);
        Ok(())
    }

    /// The newest segment's commit range, read from the object itself.
    async fn newest_segment(&self, segments: &[(u64, String)]) -> Result<Option<Segment>, ReplicaError> {
        match segments.last() {
            None => Ok(None),
            Some((_, key)) => Ok(Some(self.remote.segment(key).await?)),
        }
    }

    /// Compare a database at (`counter`, `shipped`) with what S3 holds.
    pub async fn assess(&self, counter: u64, shipped: u64) -> Result<Assessment, ReplicaError> {
        let segments = self.remote.list_counters("segments").await?;
        let snapshots = self.remote.list_counters("snapshots").await?;
        let newest = self.newest_segment(&segments).await?;
        let remote_end = newest.as_ref().map(|s| s.last).max(snapshots.last().map(|s| s.0)).unwrap_or(0);
        if remote_end > counter {
            return Ok(Assessment::Stale { remote_end });
        }
        // Can a restore rebuild S3's history? A snapshot, or segments from commit 1.
        let rebuildable =
            !snapshots.is_empty() || segments.first().is_some_and(|s| s.0 <= 1) && !newest.as_ref().is_some_and(Segment::is_base);
        if counter > 0 && (!rebuildable || remote_end < shipped) {
            if remote_end < shipped {
                tracing::warn!(shipped, remote_end, "S3 lacks commits this database shipped (objects deleted, or another path?)");
            }
            return Ok(Assessment::NeedsBase { after: remote_end });
        }
        Ok(Assessment::Continue)
    }

    // --------------------------------------------------------- restore ----

    /// Restore the newest state (or the state at versionstamp `at`) into `to`.
    /// Creates no file when S3 holds nothing (first launch) and returns 0.
    pub async fn restore_to(&self, to: &Path, at: Option<Versionstamp>) -> Result<u64, ReplicaError> {
        let started = Instant::now();
        let plan = self.plan_restore(at).await?;
        if plan.snapshot.is_none() && plan.segments.is_empty() {
            if at.is_some() {
                return Err(ReplicaError::Gap("S3 holds no backup at this path".into()));
            }
            tracing::info!(backup = %self.remote.describe(), "S3 holds no backup yet; starting with an empty database");
            return Ok(0);
        }
        if let Some(dir) = to.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        }
        let tmp = PathBuf::from(format!("{}.restoring", to.display()));
        for ext in ["", "-wal", "-shm", ".zst"] {
            let _ = std::fs::remove_file(format!("{}{ext}", tmp.display()));
        }
        let result = self.build_restore(&plan, &tmp, at).await;
        let _ = std::fs::remove_file(format!("{}.zst", tmp.display()));
        let (applied, bytes, n_segments) = result?;
        Self::finalize_restore(&tmp, to)?;
        METRICS.restore_seconds_micros.store(started.elapsed().as_micros() as u64, Relaxed);
        tracing::info!(
            to = %to.display(), snapshot_commit = plan.base(), segments = n_segments, commit = applied, bytes,
            ms = started.elapsed().as_millis() as u64, "restore complete"
        );
        Ok(applied)
    }

    /// Which objects a restore to `at` (or the newest state) needs.
    async fn plan_restore(&self, at: Option<Versionstamp>) -> Result<RestorePlan, ReplicaError> {
        let target = at.map(|v| v.counter).unwrap_or(u64::MAX);
        let snapshots = self.remote.list_counters("snapshots").await?;
        let segments = self.remote.list_counters("segments").await?;
        let mut snapshot = snapshots.iter().rev().find(|(c, _)| *c <= target).cloned();
        // A snapshot holds every write of its commit: for `--at` N/i it is a
        // valid base only if no write of commit N comes after index i.
        if let (Some((c, _)), Some(v)) = (&snapshot, at)
            && *c == v.counter
            && !self.commit_ends_at(&segments, v).await?
        {
            snapshot = snapshots.iter().rev().find(|(c, _)| *c < v.counter).cloned();
        }
        let base = snapshot.as_ref().map_or(0, |s| s.0);
        // Segments from the one holding commit base+1 on (names are first commits).
        let start = segments.iter().rposition(|(f, _)| *f <= base + 1).unwrap_or(0);
        Ok(RestorePlan { snapshot, segments: segments[start..].to_vec(), target })
    }

    /// Download and apply the plan into `tmp`: (commit, bytes fetched, segments applied).
    async fn build_restore(&self, plan: &RestorePlan, tmp: &Path, at: Option<Versionstamp>) -> Result<(u64, u64, usize), ReplicaError> {
        let mut bytes = 0u64;
        let base = plan.base();
        if let Some((counter, key)) = &plan.snapshot {
            // Streamed: object → file → zstd → database file; never whole in memory.
            let zst = PathBuf::from(format!("{}.zst", tmp.display()));
            bytes += self.remote.get_to_file(key, &zst).await?;
            let (zst2, tmp2, key2) = (zst.clone(), tmp.to_path_buf(), key.clone());
            tokio::task::spawn_blocking(move || -> Result<(), ReplicaError> {
                let input = std::io::BufReader::new(std::fs::File::open(&zst2).map_err(|e| io_err(&zst2, e))?);
                let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp2).map_err(|e| io_err(&tmp2, e))?);
                zstd::stream::copy_decode(input, &mut out).map_err(|e| ReplicaError::Corrupt(format!("snapshot {key2}: {e}")))?;
                std::io::Write::flush(&mut out).map_err(|e| io_err(&tmp2, e))
            })
            .await
            .map_err(|e| io_err(tmp, e))??;
            let _ = std::fs::remove_file(&zst);
            tracing::info!(snapshot = %key, commit = counter, bytes, "snapshot downloaded");
        }
        let mut file = RestoreFile::open(tmp)?;
        if plan.snapshot.is_some() {
            file.check_snapshot(base)?;
        }
        let limit = at.map(|v| v.to_i64()).unwrap_or(i64::MAX);
        let (mut expect, mut applied, mut n_segments) = (base + 1, base, 0usize);
        let mut prev: Option<(&str, u64)> = None;
        for (i, (first, key)) in plan.segments.iter().enumerate() {
            if expect > plan.target {
                break;
            }
            // Wholly inside the snapshot when the next segment starts at or
            // before the first commit still needed: no need to fetch it.
            if plan.segments.get(i + 1).is_some_and(|(next, _)| *next <= expect) {
                continue;
            }
            if *first > expect {
                return Err(ReplicaError::Gap(format!(
                    "commit {expect} is in no segment (the next, {}, starts at {first}{}); refusing to skip it",
                    self.remote.name(key),
                    prev.map(|(k, l)| format!("; {} ends at {l}", self.remote.name(k))).unwrap_or_default()
                )));
            }
            if let Some((pk, pl)) = prev
                && *first != pl + 1
            {
                return Err(ReplicaError::Corrupt(format!(
                    "segments {} (ending at commit {pl}) and {} (starting at {first}) overlap: two histories were written to this path; restore one with `sidekv restore --at` below {first}",
                    self.remote.name(pk),
                    self.remote.name(key)
                )));
            }
            let data = self.remote.get(key).await?;
            bytes += data.len() as u64;
            let seg = Segment::decode(&data, &self.remote.name(key))?;
            if seg.first != *first {
                return Err(ReplicaError::Corrupt(format!("segment {} says it starts at commit {}", self.remote.name(key), seg.first)));
            }
            prev = Some((key.as_str(), seg.last));
            if seg.last < expect {
                continue; // wholly inside the snapshot
            }
            if seg.is_base() {
                return Err(ReplicaError::Gap(format!(
                    "commits {}..={} are held only by snapshot {}, which is not in S3{}",
                    seg.first,
                    seg.last,
                    self.remote.name(&self.remote.snapshot_key(seg.last)),
                    if plan.target < u64::MAX { " at or below the requested point" } else { "" }
                )));
            }
            file.apply(&seg.records, expect, limit)?;
            applied = seg.last.min(plan.target);
            expect = seg.last + 1;
            n_segments += 1;
            if n_segments % 50 == 0 {
                tracing::info!(segments = n_segments, bytes, commit = applied, "restoring");
            }
        }
        if let Some(v) = at
            && applied < v.counter
        {
            return Err(ReplicaError::Gap(format!("the backup ends at commit {applied}, before {v}")));
        }
        file.finish(applied)?;
        Ok((applied, bytes, n_segments))
    }

    /// fsync the rebuilt file, set aside any WAL/SHM left at the target (a
    /// dead process's unshipped pages must never be replayed into it), and
    /// rename it into place.
    fn finalize_restore(tmp: &Path, to: &Path) -> Result<(), ReplicaError> {
        std::fs::File::open(tmp).and_then(|f| f.sync_all()).map_err(|e| io_err(tmp, e))?;
        for ext in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", tmp.display()));
            let left = PathBuf::from(format!("{}{ext}", to.display()));
            if left.exists() {
                let aside = format!("{}.orphan-{}{ext}", to.display(), crate::backend::sqlite::store::now_ms());
                tracing::warn!(file = %left.display(), moved_to = %aside, "setting aside a WAL/SHM file left without its database");
                std::fs::rename(&left, &aside).map_err(|e| io_err(&left, e))?;
            }
        }
        sync_parent(to);
        std::fs::rename(tmp, to).map_err(|e| io_err(to, e))?;
        sync_parent(to);
        Ok(())
    }

    /// Whether `at` is the last write of its commit, judged from the segment
    /// holding that commit (`false` when that segment is not in S3).
    async fn commit_ends_at(&self, segments: &[(u64, String)], at: Versionstamp) -> Result<bool, ReplicaError> {
        let Some((_, key)) = segments.iter().rev().find(|(f, _)| *f <= at.counter) else {
            return Ok(false);
        };
        let seg = self.remote.segment(key).await?;
        Ok(seg.last >= at.counter && !seg.records.iter().any(|r| r.counter() == at.counter && r.version > at.to_i64()))
    }

    // ---------------------------------------------------------- backup ----

    /// Start the uploader (segments + snapshots + retention).
    pub fn start(self: Arc<Self>, store: Store) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move { self.upload_loop(store).await })
    }

    fn fence(&self, store: &Store, why: String) {
        tracing::error!(reason = %why, "FENCED: another writer owns this S3 path; refusing writes (reads still served)");
        self.state.lock().unwrap().fenced = Some(why.clone());
        store.block_writes(format!("writes refused: {why}"));
        store.wake_shipped_waiters();
    }

    /// Sleep for `d`, or return `false` at shutdown.
    async fn pause(&self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => !self.stopping.load(Relaxed),
            _ = self.stop.notified() => false,
        }
    }

    /// The launch check, repeated by the uploader when S3 was down at launch.
    /// The store is open now, so a stale database cannot be swapped: it is
    /// fenced instead (a restart restores).
    async fn check_running(&self, store: &Store) -> Result<(), ReplicaError> {
        match self.assess(store.committed(), store.shipped()).await? {
            Assessment::Continue => {}
            Assessment::NeedsBase { after } => *self.needs_base.lock().unwrap() = Some(after),
            Assessment::Stale { remote_end } => {
                return Err(ReplicaError::Fenced(format!(
                    "S3 holds commits up to {remote_end}, past this database's {}; restart sidekv to restore from S3",
                    store.committed()
                )));
            }
        }
        if self.epoch.load(Relaxed) == NO_EPOCH {
            let e = self.reserve_epoch(store.committed()).await?;
            store.adopt_epoch(e).await?;
            self.epoch.store(e, Relaxed);
        }
        self.needs_check.store(false, Relaxed);
        self.state.lock().unwrap().not_backed_up = None;
        tracing::info!("S3 answers; the backup starts");
        Ok(())
    }

    /// One step of the uploader's work: check, base snapshot, or ship.
    async fn upload_step(&self, store: &Store, one_segment: bool) -> Result<(), ReplicaError> {
        if self.needs_check.load(Relaxed) {
            self.check_running(store).await?;
        }
        let base = *self.needs_base.lock().unwrap();
        if let Some(after) = base {
            self.base_snapshot(store, after).await?;
            *self.needs_base.lock().unwrap() = None;
        }
        self.maybe_roll_epoch(store).await?;
        self.ship_pending(store, one_segment).await
    }

    async fn upload_loop(self: Arc<Self>, store: Store) {
        let mut commits = store.subscribe_commits();
        let mut backoff = Duration::from_millis(100);
        // Local mode ships once per interval, counted from the start too.
        let mut last_ship: Option<Instant> = Some(Instant::now());
        loop {
            if self.stopping.load(Relaxed) {
                return;
            }
            if self.fenced_reason().is_some() {
                self.stop.notified().await;
                return;
            }
            let setup = self.needs_check.load(Relaxed) || self.needs_base.lock().unwrap().is_some();
            if !setup && store.committed() <= store.shipped() {
                self.state.lock().unwrap().behind_since = None;
                tokio::select! {
                    _ = commits.changed() => {}
                    _ = self.stop.notified() => return,
                }
            }
            self.state.lock().unwrap().behind_since.get_or_insert_with(Instant::now);
            // Local mode: at most one segment per sync interval, however fast
            // commits come (S3 requests cost money); s3 mode ships at once
            // and batches whatever committed while the last PUT was in flight.
            if self.durability == Durability::Local
                && !setup
                && let Some(wait) = last_ship.map(|t| self.sync_interval.saturating_sub(t.elapsed()))
                && !wait.is_zero()
                && !self.pause(wait).await
            {
                return;
            }
            last_ship = Some(Instant::now());
            match self.upload_step(&store, self.durability == Durability::Local).await {
                Ok(()) => {
                    backoff = Duration::from_millis(100);
                    if self.durability == Durability::S3 && store.write_block_reason().is_some() && self.fenced_reason().is_none() {
                        tracing::info!("S3 answers again; accepting writes");
                        store.unblock_writes();
                    }
                    self.maybe_start_snapshot(&store);
                }
                Err(ReplicaError::Fenced(why)) => self.fence(&store, why),
                Err(ReplicaError::HistoryPruned(after)) => {
                    tracing::warn!(
                        shipped = after,
                        "the change log no longer holds the next commit to ship (the backup was off); restarting the backup with a snapshot"
                    );
                    *self.needs_base.lock().unwrap() = Some(after);
                }
                Err(e) => {
                    METRICS.uploads_failed.fetch_add(1, Relaxed);
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "upload failed; commits stay in the outbox");
                    if self.durability == Durability::S3 {
                        store.block_writes(format!("S3 is unreachable and KVSTORE_DURABILITY=s3: {e}"));
                        store.wake_shipped_waiters();
                    }
                    if !self.pause(backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(limits::UPLOAD_BACKOFF_MAX);
                }
            }
        }
    }

    /// Ship committed-but-unshipped commits as segments: all of them, or
    /// (`one_segment`) one segment unless the size cap cut it.
    pub async fn ship_pending(&self, store: &Store, one_segment: bool) -> Result<(), ReplicaError> {
        loop {
            let shipped = store.shipped();
            let batch = match store.outbox_next(shipped, limits::SEGMENT_MAX_BYTES).await? {
                Next::Empty => return Ok(()),
                Next::Pruned { .. } => return Err(ReplicaError::HistoryPruned(shipped)),
                Next::Batch(b) => b,
            };
            let cut = batch.cut;
            let seg = Segment { first: batch.first, last: batch.last, records: batch.records, flags: 0, writer: store.writer_id() };
            self.ship_segment(store, seg).await?;
            if store.shipped() >= store.committed() {
                self.state.lock().unwrap().behind_since = None;
            }
            if one_segment && !cut {
                return Ok(());
            }
        }
    }

    /// Create one segment (or find it already there, ours) and mark it shipped.
    async fn ship_segment(&self, store: &Store, seg: Segment) -> Result<(), ReplicaError> {
        let key = self.remote.segment_key(seg.first);
        let body = seg.encode()?;
        let len = body.len() as u64;
        if !self.remote.put_new(&key, body).await? {
            // The name is taken: ours (a retry, or a re-ship after a crash) or another writer's.
            let existing = self.remote.segment(&key).await?;
            let mine = if existing.is_base() {
                existing.writer == store.writer_id()
            } else {
                store.outbox_range(existing.first, existing.last).await?.as_ref() == Some(&existing.records)
            };
            if !mine {
                return Err(ReplicaError::Fenced(format!(
                    "segment {} (commits {}..={}) was written by another instance",
                    self.remote.name(&key),
                    existing.first,
                    existing.last
                )));
            }
            tracing::info!(segment = %key, "segment already in S3 with identical content; counting it as shipped");
            store.mark_shipped(existing.last).await?;
            // It is in S3 all the same: it counts towards the next snapshot.
            self.state.lock().unwrap().bytes_since_snapshot += len;
            return Ok(());
        }
        store.mark_shipped(seg.last).await?;
        METRICS.uploads_ok.fetch_add(1, Relaxed);
        METRICS.upload_bytes.fetch_add(len, Relaxed);
        METRICS.last_upload_ms.store(crate::backend::sqlite::store::now_ms(), Relaxed);
        tracing::debug!(segment = %key, first = seg.first, last = seg.last, records = seg.records.len(), bytes = len, "segment shipped");
        self.state.lock().unwrap().bytes_since_snapshot += len;
        Ok(())
    }

    /// Restart the backup from a snapshot when S3 cannot rebuild the local
    /// history after commit `after` (a new prefix, the change log pruned
    /// while the backup was off, history S3 lost). In order, so that no
    /// commit counts as shipped before an object covering it exists:
    /// 1. copy the database locally (commit C);
    /// 2. claim commits `after+1..=C` with a base segment named `after+1`
    ///    (the fencing token: a second writer continuing from `after` loses);
    /// 3. upload snapshot C;
    /// 4. only now mark C shipped (s3-mode writes up to C are acknowledged).
    async fn base_snapshot(&self, store: &Store, after: u64) -> Result<(), ReplicaError> {
        let tmp = snapshot_tmp(store);
        let result = async {
            let counter = store.snapshot_to(&tmp).await?;
            if counter > after {
                let marker = Segment { first: after + 1, last: counter, records: vec![], flags: segment::BASE, writer: store.writer_id() };
                let key = self.remote.segment_key(marker.first);
                if !self.remote.put_new(&key, marker.encode()?).await? {
                    let existing = self.remote.segment(&key).await?;
                    if !(existing.is_base() && existing.writer == store.writer_id()) {
                        return Err(ReplicaError::Fenced(format!("segment {} was written by another instance", self.remote.name(&key))));
                    }
                    // Ours, from an attempt that did not finish: the snapshot below covers it.
                }
            }
            self.upload_snapshot(&tmp, counter).await?;
            store.mark_shipped(counter).await?;
            Ok(counter)
        }
        .await;
        let _ = std::fs::remove_file(&tmp);
        let counter = result?;
        tracing::info!(after, commit = counter, "the backup restarted from a snapshot");
        self.snapshot_done();
        self.apply_retention().await
    }

    /// Compress `file` (a snapshot copy at `counter`) to a temporary file and
    /// create `snapshots/<counter>` from it, streamed.
    async fn upload_snapshot(&self, file: &Path, counter: u64) -> Result<(), ReplicaError> {
        let started = Instant::now();
        let zst = PathBuf::from(format!("{}.zst", file.display()));
        let (src, dst) = (file.to_path_buf(), zst.clone());
        let compressed = tokio::task::spawn_blocking(move || -> Result<u64, ReplicaError> {
            let input = std::io::BufReader::new(std::fs::File::open(&src).map_err(|e| io_err(&src, e))?);
            let out = std::fs::File::create(&dst).map_err(|e| io_err(&dst, e))?;
            let mut enc = zstd::stream::Encoder::new(std::io::BufWriter::new(out), 3).map_err(|e| io_err(&dst, e))?;
            std::io::copy(&mut { input }, &mut enc).map_err(|e| io_err(&src, e))?;
            let mut w = enc.finish().map_err(|e| io_err(&dst, e))?;
            std::io::Write::flush(&mut w).map_err(|e| io_err(&dst, e))?;
            Ok(std::fs::metadata(&dst).map_err(|e| io_err(&dst, e))?.len())
        })
        .await
        .map_err(|e| io_err(file, e))?;
        let result = match compressed {
            Ok(bytes) => {
                let key = self.remote.snapshot_key(counter);
                self.remote.put_new_file(&key, &zst).await.map(|created| {
                    tracing::info!(snapshot = %key, commit = counter, bytes, created, ms = started.elapsed().as_millis() as u64, "snapshot stored");
                })
            }
            Err(e) => Err(e),
        };
        let _ = std::fs::remove_file(&zst);
        METRICS.snapshot_last_seconds_micros.store(started.elapsed().as_micros() as u64, Relaxed);
        result
    }

    fn snapshot_done(&self) {
        let mut st = self.state.lock().unwrap();
        st.bytes_since_snapshot = 0;
        st.last_snapshot = Some(Instant::now());
        st.snapshot_not_before = None;
        st.snapshot_backoff = Duration::ZERO;
        METRICS.snapshots_ok.fetch_add(1, Relaxed);
    }

    fn snapshot_due(&self) -> bool {
        let st = self.state.lock().unwrap();
        if st.snapshot_not_before.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        let due_bytes = st.bytes_since_snapshot >= self.snapshot_bytes;
        let due_time = st.bytes_since_snapshot > 0 && st.last_snapshot.is_none_or(|t| t.elapsed() >= limits::SNAPSHOT_INTERVAL);
        due_bytes || due_time
    }

    /// Start a snapshot beside shipping when one is due: the copy,
    /// compression and upload take long on a big database, and segments
    /// must keep flowing meanwhile. A failure is retried with backoff.
    fn maybe_start_snapshot(self: &Arc<Self>, store: &Store) {
        if !self.snapshot_due() || self.snapshotting.swap(true, Relaxed) {
            return;
        }
        let (me, store) = (self.clone(), store.clone());
        tokio::spawn(async move {
            let r = me.snapshot_now(&store).await;
            if let Err(e) = &r {
                let mut st = me.state.lock().unwrap();
                st.snapshot_backoff = (st.snapshot_backoff * 2).clamp(limits::SNAPSHOT_RETRY_MIN, limits::SNAPSHOT_RETRY_MAX);
                st.snapshot_not_before = Some(Instant::now() + st.snapshot_backoff);
                tracing::warn!(error = %e, retry_in_s = st.snapshot_backoff.as_secs(), "snapshot failed; will retry");
            }
            me.snapshotting.store(false, Relaxed);
        });
    }

    /// Take and upload a snapshot now (after shipping everything it holds),
    /// then apply retention.
    pub async fn snapshot_now(&self, store: &Store) -> Result<(), ReplicaError> {
        let tmp = snapshot_tmp(store);
        let result = async {
            let counter = store.snapshot_to(&tmp).await?;
            // Never publish a snapshot ahead of the segments: a fenced writer's
            // snapshot must not become the newest state in S3.
            let mut shipped = store.subscribe_shipped();
            let caught_up =
                matches!(tokio::time::timeout(limits::S3_ACK_TIMEOUT * 6, shipped.wait_for(|s| *s >= counter)).await, Ok(Ok(_)));
            if !caught_up || self.fenced_reason().is_some() {
                return Err(ReplicaError::Gap(format!("commit {counter} of the snapshot is not shipped yet")));
            }
            self.upload_snapshot(&tmp, counter).await
        }
        .await;
        let _ = std::fs::remove_file(&tmp);
        result?;
        self.snapshot_done();
        self.apply_retention().await
    }

    /// Keep the newest `retention` snapshots and the segments after the oldest kept one.
    async fn apply_retention(&self) -> Result<(), ReplicaError> {
        let snapshots = self.remote.list_counters("snapshots").await?;
        if snapshots.len() <= self.retention {
            return Ok(());
        }
        let keep_from = snapshots[snapshots.len() - self.retention].0;
        for (_, key) in &snapshots[..snapshots.len() - self.retention] {
            self.remote.delete(key).await?;
        }
        let segments = self.remote.list_counters("segments").await?;
        // A segment can go when it ends before keep_from (the next one starts
        // at or before it); the one holding commit keep_from stays, so a
        // point-in-time restore inside that commit can still be checked.
        for w in segments.windows(2) {
            if w[1].0 <= keep_from {
                self.remote.delete(&w[0].1).await?;
            }
        }
        Ok(())
    }

    /// On SIGTERM: ship what is left (bounded wait), then stop the uploader.
    pub async fn shutdown(&self, store: &Store, task: tokio::task::JoinHandle<()>) {
        self.stopping.store(true, Relaxed);
        self.stop.notify_waiters();
        // A snapshot in progress is abandoned (the next start takes one);
        // the drain below is what must not be lost.
        let abort = task.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), task).await.is_err() {
            abort.abort();
        }
        if self.fenced_reason().is_some() {
            tracing::error!(unshipped_commits = store.committed().saturating_sub(store.shipped()), "fenced: the outbox was not drained");
            return;
        }
        let pending = store.committed().saturating_sub(store.shipped());
        // The whole step: a check or base snapshot still pending runs first.
        match tokio::time::timeout(limits::SHUTDOWN_DRAIN_TIMEOUT, self.upload_step(store, false)).await {
            Ok(Ok(())) => tracing::info!(commits = pending, "outbox drained to S3"),
            Ok(Err(e)) => tracing::error!(
                error = %e, unshipped_commits = store.committed().saturating_sub(store.shipped()),
                "could not drain the outbox to S3 before exiting; the commits are safe in the local database and ship at the next start"
            ),
            Err(_) => tracing::error!(
                unshipped_commits = store.committed().saturating_sub(store.shipped()),
                timeout_s = limits::SHUTDOWN_DRAIN_TIMEOUT.as_secs(),
                "draining the outbox to S3 timed out; the commits are safe in the local database and ship at the next start"
            ),
        }
    }
}

/// The objects a restore reads.
struct RestorePlan {
    snapshot: Option<(u64, String)>,
    /// From the one holding the first commit after the snapshot, in order.
    segments: Vec<(u64, String)>,
    target: u64,
}

impl RestorePlan {
    fn base(&self) -> u64 {
        self.snapshot.as_ref().map_or(0, |s| s.0)
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
