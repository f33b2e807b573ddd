//! Continuous S3 backup, restore at launch, and fencing.
//!
//! Logical replication, not page shipping: the store writes every mutation
//! to the `changelog` outbox inside the same transaction as the data, so:
//!
//! ```text
//! backup   uploader task: rows of commits (shipped, committed] ─▶ segment
//!          ─▶ zstd ─▶ PUT segments/<first>.seg.zst  If-None-Match: *
//!          ─▶ store.mark_shipped(last)  (s3 mode: wakes waiting writers)
//! snapshot VACUUM INTO (a consistent copy) ─▶ ship up to its commit first
//!          ─▶ zstd ─▶ PUT snapshots/<counter>.sqlite3.zst ─▶ retention
//! restore  newest snapshot ≤ target ─▶ segments after it, in order,
//!          continuity + checksums checked ─▶ fsync ─▶ rename into place
//! ```
//!
//! Layout under `s3://bucket/prefix/`: `segments/<first commit, 20 digits>.seg.zst`
//! and `snapshots/<commit, 20 digits>.sqlite3.zst` (a plain SQLite file after
//! `zstd -d`). Zero-padded names make listing order commit order.
//!
//! Fencing (generation story): segment names are the fencing token. Two
//! writers that continue the same history both need the name of the next
//! commit; `If-None-Match: *` lets exactly one create it. The loser checks
//! whether the existing object is byte-for-byte its own (a retry after a lost
//! response, or a re-ship after a crash: then it is simply shipped) and
//! otherwise stops taking writes (503, readiness fails, error logged). At
//! launch, a local database older than S3 (another instance wrote since) is
//! moved aside and S3 is restored instead. In `s3` durability mode a write is
//! acknowledged only after its segment was created, so no acknowledged write
//! can be lost to a fenced writer; in `local` mode the fenced writer's
//! unshipped commits stay in its local file, never in the backup.

pub mod segment;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::primitives::ByteStream;
use rusqlite::{Connection, params};
use tokio::sync::Notify;

use crate::config::Config;
use crate::limits;
use crate::metrics::METRICS;
use crate::store::{Durability, Store, StoreError, Versionstamp};
use segment::{Record, Segment};

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
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("local file {path}: {msg}")]
    Io { path: String, msg: String },
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> ReplicaError {
    ReplicaError::Io { path: path.display().to_string(), msg: e.to_string() }
}

/// `s3://bucket/prefix` → (bucket, prefix without trailing slash).
pub fn parse_s3_url(url: &str) -> Result<(String, String), ReplicaError> {
    let bad = |m: &str| ReplicaError::Config { setting: "KVSTORE_S3_URL", msg: format!("{url:?}: {m}") };
    let rest = url.strip_prefix("s3://").ok_or_else(|| bad("must look like s3://bucket/prefix"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() || !bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.') {
        return Err(bad("the bucket name is missing or invalid"));
    }
    Ok((bucket.to_string(), prefix.trim_matches('/').to_string()))
}

fn env_nonempty(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

/// Build an S3 client from the standard AWS variables (and litestream's).
pub async fn s3_client() -> Result<Client, ReplicaError> {
    let region = env_nonempty("AWS_REGION").or_else(|| env_nonempty("AWS_DEFAULT_REGION")).unwrap_or_else(|| "us-east-1".into());
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region))
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .operation_attempt_timeout(limits::S3_OP_TIMEOUT)
                .connect_timeout(Duration::from_secs(3))
                .build(),
        )
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(3));
    let key = env_nonempty("AWS_ACCESS_KEY_ID").or_else(|| env_nonempty("LITESTREAM_ACCESS_KEY_ID"));
    let secret = env_nonempty("AWS_SECRET_ACCESS_KEY").or_else(|| env_nonempty("LITESTREAM_SECRET_ACCESS_KEY"));
    match (key, secret) {
        (Some(k), Some(s)) => {
            loader = loader.credentials_provider(aws_credential_types::Credentials::new(
                k,
                s,
                env_nonempty("AWS_SESSION_TOKEN"),
                None,
                "sidekv-env",
            ));
        }
        (Some(_), None) => {
            return Err(ReplicaError::Config { setting: "AWS_SECRET_ACCESS_KEY", msg: "AWS_ACCESS_KEY_ID is set but the secret key is not".into() })
        }
        (None, Some(_)) => {
            return Err(ReplicaError::Config { setting: "AWS_ACCESS_KEY_ID", msg: "a secret key is set but the access key id is not".into() })
        }
        (None, None) => {}
    }
    let endpoint = env_nonempty("AWS_ENDPOINT_URL_S3").or_else(|| env_nonempty("AWS_ENDPOINT_URL"));
    if let Some(ep) = &endpoint {
        if !(ep.starts_with("http://") || ep.starts_with("https://")) {
            return Err(ReplicaError::Config { setting: "AWS_ENDPOINT_URL", msg: format!("{ep:?} must start with http:// or https://") });
        }
        loader = loader.endpoint_url(ep);
    }
    let shared = loader.load().await;
    let mut b = aws_sdk_s3::config::Builder::from(&shared);
    if endpoint.is_some() {
        // MinIO, moto and most self-hosted S3s need path-style addressing.
        b = b.force_path_style(true);
    }
    Ok(Client::from_conf(b.build()))
}

fn sdk_msg<E: std::fmt::Debug, R: std::fmt::Debug>(e: &SdkError<E, R>) -> String {
    match e {
        SdkError::ServiceError(s) => format!("{:?}", s.err()).chars().take(300).collect(),
        SdkError::TimeoutError(_) => "timed out".into(),
        SdkError::DispatchFailure(d) => format!("could not connect: {:?}", d).chars().take(300).collect(),
        other => format!("{other:?}").chars().take(300).collect(),
    }
}

fn http_status<E>(e: &SdkError<E, aws_smithy_runtime_api::http::Response>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

/// The S3 side: objects under one prefix.
pub struct Remote {
    client: Client,
    bucket: String,
    prefix: String,
}

impl Remote {
    fn key(&self, rel: &str) -> String {
        if self.prefix.is_empty() { rel.to_string() } else { format!("{}/{rel}", self.prefix) }
    }

    pub fn segment_key(&self, first: u64) -> String {
        self.key(&format!("segments/{first:020}.seg.zst"))
    }

    pub fn snapshot_key(&self, counter: u64) -> String {
        self.key(&format!("snapshots/{counter:020}.sqlite3.zst"))
    }

    /// Create an object only if absent. `Ok(false)` = it already exists.
    pub async fn put_new(&self, key: &str, body: Vec<u8>) -> Result<bool, ReplicaError> {
        let r = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .if_none_match("*")
            .body(ByteStream::from(body))
            .send()
            .await;
        match r {
            Ok(_) => Ok(true),
            Err(e) if http_status(&e) == Some(412) => Ok(false),
            Err(e) => Err(ReplicaError::S3 { op: "PUT", key: key.into(), msg: sdk_msg(&e) }),
        }
    }

    pub async fn get(&self, key: &str) -> Result<Vec<u8>, ReplicaError> {
        let r = self.client.get_object().bucket(&self.bucket).key(key).send().await;
        match r {
            Ok(o) => Ok(o
                .body
                .collect()
                .await
                .map_err(|e| ReplicaError::S3 { op: "GET", key: key.into(), msg: e.to_string() })?
                .into_bytes()
                .to_vec()),
            Err(e) => Err(ReplicaError::S3 { op: "GET", key: key.into(), msg: sdk_msg(&e) }),
        }
    }

    /// Counters named by the objects under `dir` (`segments` / `snapshots`), ascending.
    pub async fn list_counters(&self, dir: &str) -> Result<Vec<(u64, String)>, ReplicaError> {
        let prefix = self.key(&format!("{dir}/"));
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let r = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| ReplicaError::S3 { op: "LIST", key: prefix.clone(), msg: sdk_msg(&e) })?;
            for o in r.contents() {
                let Some(k) = o.key() else { continue };
                let name = &k[prefix.len()..];
                if let Some(n) = name.split('.').next().and_then(|d| d.parse::<u64>().ok()) {
                    if name.len() > 20 && name.as_bytes()[20] == b'.' {
                        out.push((n, k.to_string()));
                    }
                }
            }
            match r.next_continuation_token() {
                Some(t) if r.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        out.sort();
        Ok(out)
    }

    pub async fn delete(&self, key: &str) -> Result<(), ReplicaError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| ReplicaError::S3 { op: "DELETE", key: key.into(), msg: sdk_msg(&e) })
    }

    /// `check-config`: the bucket answers and accepts writes and deletes.
    pub async fn probe(&self) -> Result<(), ReplicaError> {
        let key = self.key(&format!("probe/{:016x}", rand::random::<u64>()));
        self.put_new(&key, b"sidekv check-config".to_vec()).await?;
        self.delete(&key).await?;
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
    last_snapshot_counter: u64,
}

pub struct Replica {
    pub remote: Remote,
    durability: Durability,
    sync_interval: Duration,
    snapshot_bytes: u64,
    retention: usize,
    state: Mutex<State>,
    stop: Notify,
    stopping: std::sync::atomic::AtomicBool,
    /// The local database has history S3 lacks (a new, empty S3 prefix):
    /// start the backup with a snapshot, since the early segments are gone.
    needs_base_snapshot: std::sync::atomic::AtomicBool,
}

impl Replica {
    pub async fn new(url: &str, config: &Config) -> Result<Replica, ReplicaError> {
        let (bucket, prefix) = parse_s3_url(url)?;
        let client = s3_client().await?;
        Ok(Replica {
            remote: Remote { client, bucket, prefix },
            durability: config.durability,
            sync_interval: config.sync_interval,
            snapshot_bytes: config.snapshot_bytes,
            retention: config.snapshot_retention,
            state: Mutex::new(State { last_snapshot: Some(Instant::now()), ..State::default() }),
            stop: Notify::new(),
            stopping: std::sync::atomic::AtomicBool::new(false),
            needs_base_snapshot: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn fenced_reason(&self) -> Option<String> {
        self.state.lock().unwrap().fenced.clone()
    }

    pub fn lag_seconds(&self) -> f64 {
        self.state.lock().unwrap().behind_since.map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0)
    }

    /// A local database that S3 has moved past (another instance wrote after
    /// this file's last commit) is moved aside and replaced by a restore.
    pub async fn check_local_against_remote(&self, db: &Path) -> Result<(), ReplicaError> {
        let local_counter = {
            let conn = Connection::open(db).map_err(|e| io_err(db, e))?;
            crate::store::read_meta_u64(&conn, "counter")?.unwrap_or(0)
        };
        let segments = self.remote.list_counters("segments").await?;
        let snapshots = self.remote.list_counters("snapshots").await?;
        // No snapshot and no segment from commit 1: S3 cannot rebuild this
        // history (a new prefix, or a first snapshot that never finished).
        let rebuildable = !snapshots.is_empty() || segments.first().is_some_and(|s| s.0 <= 1);
        let remote_latest = segments.last().map(|s| s.0).unwrap_or(0);
        if !rebuildable && local_counter > 0 && remote_latest <= local_counter {
            tracing::info!(db = %db.display(), local_commit = local_counter, "S3 holds no backup at this path yet; it starts with a snapshot of the local database");
            self.needs_base_snapshot.store(true, Relaxed);
            return Ok(());
        }
        let remote_min_latest = segments.last().map(|s| s.0).max(snapshots.last().map(|s| s.0)).unwrap_or(0);
        if remote_min_latest > local_counter {
            let aside = PathBuf::from(format!("{}.stale-{}", db.display(), crate::store::now_ms()));
            tracing::warn!(
                db = %db.display(), local_commit = local_counter, remote_commit_at_least = remote_min_latest, moved_to = %aside.display(),
                "S3 holds newer commits than the local database (another instance wrote since); keeping the local file aside and restoring from S3"
            );
            for ext in ["", "-wal", "-shm"] {
                let from = PathBuf::from(format!("{}{ext}", db.display()));
                if from.exists() {
                    std::fs::rename(&from, format!("{}{ext}", aside.display())).map_err(|e| io_err(&from, e))?;
                }
            }
            self.restore_to(db, None).await?;
        }
        Ok(())
    }

    /// Restore the newest state (or the state at versionstamp `at`) into `to`.
    /// Creates an empty database when S3 holds nothing (first launch).
    pub async fn restore_to(&self, to: &Path, at: Option<Versionstamp>) -> Result<u64, ReplicaError> {
        let started = Instant::now();
        let target = at.map(|v| v.counter).unwrap_or(u64::MAX);
        let snapshots = self.remote.list_counters("snapshots").await?;
        let segments = self.remote.list_counters("segments").await?;
        let mut snap = snapshots.iter().rev().find(|(c, _)| *c <= target).cloned();
        // A snapshot holds every write of its commit: for `--at` N/i it is a
        // valid base only if no write of commit N comes after index i.
        if let (Some((c, _)), Some(v)) = (&snap, at) {
            if *c == v.counter && !self.commit_ends_at(&segments, v).await? {
                snap = snapshots.iter().rev().find(|(c, _)| *c < v.counter).cloned();
            }
        }
        if snapshots.is_empty() && segments.is_empty() {
            if at.is_some() {
                return Err(ReplicaError::Gap("S3 holds no backup at this path".into()));
            }
            tracing::info!(bucket = %self.remote.bucket, prefix = %self.remote.prefix, "S3 holds no backup yet; starting with an empty database");
            return Ok(0);
        }
        let tmp = PathBuf::from(format!("{}.restoring", to.display()));
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", tmp.display()));
        }
        if let Some(dir) = to.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
            }
        }
        let mut bytes = 0u64;
        let base = match &snap {
            Some((counter, key)) => {
                let data = self.remote.get(key).await?;
                bytes += data.len() as u64;
                // Stream to the file: a snapshot expands several-fold.
                let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(|e| io_err(&tmp, e))?);
                zstd::stream::copy_decode(&data[..], &mut out).map_err(|e| ReplicaError::Corrupt(format!("snapshot {key}: {e}")))?;
                std::io::Write::flush(&mut out).map_err(|e| io_err(&tmp, e))?;
                drop(out);
                tracing::info!(snapshot = %key, commit = counter, bytes = data.len(), "snapshot downloaded");
                drop(data);
                *counter
            }
            None => 0,
        };
        let mut conn = {
            let (c, _) = crate::store::open_writer(&tmp)?;
            c
        };
        if snap.is_some() {
            let found = crate::store::read_meta_u64(&conn, "counter")?.unwrap_or(0);
            if found != base {
                return Err(ReplicaError::Corrupt(format!("snapshot named for commit {base} holds commit {found}")));
            }
            let ok: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0)).map_err(StoreError::from)?;
            if ok != "ok" {
                return Err(ReplicaError::Corrupt(format!("snapshot for commit {base} fails quick_check: {ok}")));
            }
        }
        // Segments covering base+1 onward, in order, without gaps.
        let start = segments.iter().rposition(|(f, _)| *f <= base + 1).unwrap_or(0);
        let mut expect = base + 1;
        let mut applied = base;
        let mut n_segments = 0usize;
        for (i, (first, key)) in segments.iter().enumerate().skip(start) {
            if expect > target {
                break;
            }
            // Wholly inside the snapshot when the next segment starts at or
            // before the first commit we still need: no need to fetch it.
            if segments.get(i + 1).is_some_and(|(next, _)| *next <= expect) {
                continue;
            }
            if *first > expect {
                return Err(ReplicaError::Gap(format!(
                    "commit {expect} is in no segment (next segment {key} starts at {first}); refusing to skip it"
                )));
            }
            let data = self.remote.get(key).await?;
            bytes += data.len() as u64;
            let seg = Segment::decode(&data, key)?;
            if seg.first != *first {
                return Err(ReplicaError::Corrupt(format!("segment {key} says it starts at commit {}", seg.first)));
            }
            if seg.last < expect {
                continue; // wholly inside the snapshot
            }
            let limit = at.map(|v| v.to_i64()).unwrap_or(i64::MAX);
            let tx = conn.transaction().map_err(StoreError::from)?;
            for r in &seg.records {
                let c = (r.version as u64) >> 16;
                if c < expect || r.version > limit {
                    continue;
                }
                apply_record(&tx, r).map_err(StoreError::from)?;
            }
            tx.commit().map_err(StoreError::from)?;
            applied = seg.last.min(target);
            expect = seg.last + 1;
            n_segments += 1;
            if n_segments % 50 == 0 {
                tracing::info!(segments = n_segments, bytes, commit = applied, "restoring");
            }
        }
        if let Some(v) = at {
            if applied < v.counter {
                return Err(ReplicaError::Gap(format!("the backup ends at commit {applied}, before {v}")));
            }
        }
        conn.execute_batch("DELETE FROM changelog;").map_err(StoreError::from)?;
        conn.execute("UPDATE meta SET value = ?1 WHERE name IN ('counter', 'shipped')", params![applied as i64])
            .map_err(StoreError::from)?;
        conn.execute(
            "INSERT INTO meta VALUES ('pruned_below', ?1) ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            params![(applied + 1) as i64],
        )
        .map_err(StoreError::from)?;
        let ok: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).map_err(StoreError::from)?;
        if ok != "ok" {
            return Err(ReplicaError::Corrupt(format!("the restored database fails integrity_check: {ok}")));
        }
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).map_err(StoreError::from)?;
        drop(conn);
        let f = std::fs::File::open(&tmp).map_err(|e| io_err(&tmp, e))?;
        f.sync_all().map_err(|e| io_err(&tmp, e))?;
        std::fs::rename(&tmp, to).map_err(|e| io_err(to, e))?;
        for ext in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", tmp.display()));
        }
        if let Some(dir) = to.parent() {
            if let Ok(d) = std::fs::File::open(if dir.as_os_str().is_empty() { Path::new(".") } else { dir }) {
                let _ = d.sync_all();
            }
        }
        METRICS.restore_seconds_micros.store(started.elapsed().as_micros() as u64, Relaxed);
        tracing::info!(
            to = %to.display(), snapshot_commit = base, segments = n_segments, commit = applied, bytes,
            ms = started.elapsed().as_millis() as u64, "restore complete"
        );
        Ok(applied)
    }

    /// Whether `at` is the last write of its commit, judged from the segment
    /// holding that commit (`false` when that segment is not in S3).
    async fn commit_ends_at(&self, segments: &[(u64, String)], at: Versionstamp) -> Result<bool, ReplicaError> {
        let Some((_, key)) = segments.iter().rev().find(|(f, _)| *f <= at.counter) else {
            return Ok(false);
        };
        let seg = Segment::decode(&self.remote.get(key).await?, key)?;
        Ok(seg.last >= at.counter
            && !seg.records.iter().any(|r| (r.version as u64) >> 16 == at.counter && r.version > at.to_i64()))
    }

    /// Start the uploader (segments + snapshots + retention).
    pub fn start(self: Arc<Self>, store: Store) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move { self.upload_loop(store).await })
    }

    fn fence(&self, store: &Store, why: String) {
        tracing::error!(reason = %why, "FENCED: another writer owns this S3 path; refusing writes (reads still served)");
        self.state.lock().unwrap().fenced = Some(why.clone());
        store.block_writes(format!("writes refused: {why}"));
        store.poke_waiters();
    }

    async fn upload_loop(&self, store: Store) {
        let mut commits = store.subscribe_commits();
        let mut backoff = Duration::from_millis(100);
        while self.needs_base_snapshot.load(Relaxed) && !self.stopping.load(Relaxed) {
            match self.base_snapshot(&store).await {
                Ok(()) => self.needs_base_snapshot.store(false, Relaxed),
                Err(ReplicaError::Fenced(why)) => return self.fence(&store, why),
                Err(e) => {
                    tracing::warn!(error = %e, "the first snapshot of this S3 path failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.stop.notified() => return,
                    }
                    backoff = (backoff * 2).min(limits::UPLOAD_BACKOFF_MAX);
                }
            }
        }
        loop {
            if self.stopping.load(Relaxed) {
                return;
            }
            if self.fenced_reason().is_some() {
                self.stop.notified().await;
                return;
            }
            // Wait for work: s3 mode ships as soon as anything commits (group
            // commit batches whatever arrives meanwhile); local mode every interval.
            if store.committed() <= store.shipped() {
                self.state.lock().unwrap().behind_since = None;
                tokio::select! {
                    _ = commits.changed() => {}
                    _ = self.stop.notified() => return,
                }
                if self.durability == Durability::Local {
                    self.state.lock().unwrap().behind_since.get_or_insert_with(Instant::now);
                    tokio::select! {
                        _ = tokio::time::sleep(self.sync_interval) => {}
                        _ = self.stop.notified() => return,
                    }
                }
            }
            self.state.lock().unwrap().behind_since.get_or_insert_with(Instant::now);
            match self.ship_pending(&store).await {
                Ok(()) => {
                    backoff = Duration::from_millis(100);
                    if self.durability == Durability::S3 && store.write_block_reason().is_some() && self.fenced_reason().is_none() {
                        tracing::info!("S3 answers again; accepting writes");
                        store.unblock_writes();
                    }
                    if let Err(e) = self.maybe_snapshot(&store, false).await {
                        tracing::warn!(error = %e, "snapshot failed; will retry");
                    }
                }
                Err(ReplicaError::Fenced(why)) => self.fence(&store, why),
                Err(e) => {
                    METRICS.uploads_failed.fetch_add(1, Relaxed);
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "upload failed; commits stay in the outbox");
                    if self.durability == Durability::S3 {
                        store.block_writes(format!("S3 is unreachable and KVSTORE_DURABILITY=s3: {e}"));
                        store.poke_waiters();
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.stop.notified() => return,
                    }
                    backoff = (backoff * 2).min(limits::UPLOAD_BACKOFF_MAX);
                }
            }
        }
    }

    /// Ship every committed-but-unshipped commit, in segments.
    pub async fn ship_pending(&self, store: &Store) -> Result<(), ReplicaError> {
        loop {
            let shipped = store.shipped();
            let Some(seg) = store.read(move |c| read_segment(c, shipped)).await? else {
                return Ok(());
            };
            let key = self.remote.segment_key(seg.first);
            let body = seg.encode()?;
            let len = body.len() as u64;
            if !self.remote.put_new(&key, body).await? {
                // The name is taken: ours (a retry, or a re-ship after a crash) or another writer's.
                let existing = Segment::decode(&self.remote.get(&key).await?, &key)?;
                let mine = store
                    .read({
                        let (f, l) = (existing.first, existing.last);
                        move |c| read_range(c, f, l)
                    })
                    .await?;
                if mine.as_ref() != Some(&existing.records) {
                    return Err(ReplicaError::Fenced(format!(
                        "segment {key} (commits {}..={}) was written by another instance",
                        existing.first, existing.last
                    )));
                }
                tracing::info!(segment = %key, "segment already in S3 with identical content; counting it as shipped");
                store.mark_shipped(existing.last).await?;
                continue;
            }
            store.mark_shipped(seg.last).await?;
            METRICS.uploads_ok.fetch_add(1, Relaxed);
            METRICS.upload_bytes.fetch_add(len, Relaxed);
            METRICS.last_upload_ms.store(crate::store::now_ms(), Relaxed);
            tracing::debug!(segment = %key, first = seg.first, last = seg.last, records = seg.records.len(), bytes = len, "segment shipped");
            self.state.lock().unwrap().bytes_since_snapshot += len;
            if store.shipped() >= store.committed() {
                self.state.lock().unwrap().behind_since = None;
            }
        }
    }

    /// First backup of an existing database into an empty S3 path: the
    /// changelog before `shipped` is gone, so segments alone cannot rebuild
    /// it. Mark everything shipped, snapshot, and let segments follow.
    async fn base_snapshot(&self, store: &Store) -> Result<(), ReplicaError> {
        // Segments may only start after the snapshot: pretend nothing is
        // shipped beyond what the snapshot will hold by shipping nothing
        // first and snapshotting at the committed counter directly.
        let committed = store.committed();
        store.mark_shipped(committed).await?;
        self.maybe_snapshot(store, true).await
    }

    /// Take and upload a snapshot when enough was shipped since the last one
    /// (or `force`), then apply retention.
    pub async fn maybe_snapshot(&self, store: &Store, force: bool) -> Result<(), ReplicaError> {
        {
            let st = self.state.lock().unwrap();
            let due_bytes = st.bytes_since_snapshot >= self.snapshot_bytes;
            let due_time = st.bytes_since_snapshot > 0 && st.last_snapshot.is_none_or(|t| t.elapsed() >= limits::SNAPSHOT_INTERVAL);
            if !(force || due_bytes || due_time) {
                return Ok(());
            }
        }
        let started = Instant::now();
        let dir = store.path().parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
        let tmp = dir.join(format!(".sidekv-snapshot-{}.sqlite3", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let tmp2 = tmp.clone();
        // The copy is made on a reader thread; trimming it runs on the
        // blocking pool: neither may hold a runtime thread for seconds.
        let counter = match store
            .read(move |c| {
                c.execute("VACUUM INTO ?1", [tmp2.to_string_lossy().as_ref()])?;
                Ok(())
            })
            .await
        {
            Ok(()) => {
                let tmp3 = tmp.clone();
                tokio::task::spawn_blocking(move || -> Result<u64, StoreError> {
                    let c = Connection::open(&tmp3)?;
                    let counter = crate::store::read_meta_u64(&c, "counter")?.unwrap_or(0);
                    c.execute_batch("DELETE FROM changelog;")?;
                    c.execute("UPDATE meta SET value = ?1 WHERE name = 'shipped'", [counter as i64])?;
                    c.execute(
                        "INSERT INTO meta VALUES ('pruned_below', ?1) ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                        [(counter + 1) as i64],
                    )?;
                    c.execute_batch("VACUUM;")?;
                    Ok(counter)
                })
                .await
                .map_err(|e| StoreError::Internal(e.to_string()))
                .and_then(|r| r)
            }
            Err(e) => Err(e),
        };
        let result = async {
            let counter = counter?;
            // Never publish a snapshot ahead of the segments: a fenced writer's
            // snapshot must not become the newest state in S3.
            self.ship_pending(store).await?;
            if store.shipped() < counter {
                return Err(ReplicaError::Gap("commits in the snapshot are not shipped yet".into()));
            }
            let tmp3 = tmp.clone();
            let compressed = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, ReplicaError> {
                let file = std::fs::File::open(&tmp3).map_err(|e| io_err(&tmp3, e))?;
                let mut compressed = Vec::new();
                zstd::stream::copy_encode(std::io::BufReader::new(file), &mut compressed, 3).map_err(|e| io_err(&tmp3, e))?;
                Ok(compressed)
            })
            .await
            .map_err(|e| io_err(&tmp, e))??;
            let compressed_len = compressed.len();
            let key = self.remote.snapshot_key(counter);
            let created = self.remote.put_new(&key, compressed).await?;
            tracing::info!(snapshot = %key, commit = counter, bytes = compressed_len, created, ms = started.elapsed().as_millis() as u64, "snapshot stored");
            Ok(counter)
        }
        .await;
        let _ = std::fs::remove_file(&tmp);
        let counter = result?;
        {
            let mut st = self.state.lock().unwrap();
            st.bytes_since_snapshot = 0;
            st.last_snapshot = Some(Instant::now());
            st.last_snapshot_counter = counter;
        }
        METRICS.snapshots_ok.fetch_add(1, Relaxed);
        METRICS.snapshot_last_seconds_micros.store(started.elapsed().as_micros() as u64, Relaxed);
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
        match tokio::time::timeout(limits::SHUTDOWN_DRAIN_TIMEOUT, self.ship_pending(store)).await {
            Ok(Ok(())) => tracing::info!(commits = pending, "outbox drained to S3"),
            Ok(Err(e)) => tracing::error!(
                error = %e, unshipped_commits = store.committed().saturating_sub(store.shipped()),
                "could not drain the outbox to S3 before exiting; the commits are safe in the local database and ship at the next start"
            ),
            Err(_) => tracing::error!(
                unshipped_commits = store.committed().saturating_sub(store.shipped()), timeout_s = limits::SHUTDOWN_DRAIN_TIMEOUT.as_secs(),
                "draining the outbox to S3 timed out; the commits are safe in the local database and ship at the next start"
            ),
        }
    }
}

fn apply_record(tx: &rusqlite::Transaction<'_>, r: &Record) -> rusqlite::Result<()> {
    match &r.value {
        Some(v) => tx.execute(
            "INSERT OR REPLACE INTO kv (key, value, version, expires_at) VALUES (?1, ?2, ?3, ?4)",
            params![r.key, v, r.version, r.expires_at],
        )?,
        None => tx.execute("DELETE FROM kv WHERE key = ?1", params![r.key])?,
    };
    Ok(())
}

fn read_records(c: &Connection, from: i64, to: i64) -> rusqlite::Result<Vec<Record>> {
    let mut s = c.prepare_cached(
        "SELECT version, n, key, value, expires_at FROM changelog WHERE version >= ?1 AND version < ?2 ORDER BY version, n",
    )?;
    s.query_map(params![from, to], |r| {
        Ok(Record { version: r.get(0)?, n: r.get(1)?, key: r.get(2)?, value: r.get(3)?, expires_at: r.get(4)? })
    })?
    .collect()
}

/// The next segment after `shipped`: whole commits up to `SEGMENT_MAX_BYTES`.
fn read_segment(c: &mut Connection, shipped: u64) -> Result<Option<Segment>, StoreError> {
    let tx = c.transaction()?;
    let committed = crate::store::read_meta_u64(&tx, "counter")?.unwrap_or(0);
    if committed <= shipped {
        return Ok(None);
    }
    let first = shipped + 1;
    let mut records = Vec::new();
    let mut bytes = 0usize;
    let mut last = committed;
    {
        let mut s = tx.prepare_cached(
            "SELECT version, n, key, value, expires_at FROM changelog WHERE version >= ?1 AND version < ?2 ORDER BY version, n",
        )?;
        let mut rows = s.query(params![
            Versionstamp::commit_start(first).to_i64(),
            Versionstamp::commit_start(committed + 1).to_i64()
        ])?;
        while let Some(r) = rows.next()? {
            let rec = Record { version: r.get(0)?, n: r.get(1)?, key: r.get(2)?, value: r.get(3)?, expires_at: r.get(4)? };
            let c = (rec.version as u64) >> 16;
            if bytes >= limits::SEGMENT_MAX_BYTES && records.last().is_some_and(|p: &Record| ((p.version as u64) >> 16) != c) {
                last = c - 1;
                break;
            }
            bytes += 32 + rec.key.len() + rec.value.as_ref().map_or(0, Vec::len);
            records.push(rec);
        }
    }
    tx.finish()?;
    Ok(Some(Segment { first, last, records }))
}

/// The local records of commits `first..=last`, or `None` if they are no longer kept.
fn read_range(c: &mut Connection, first: u64, last: u64) -> Result<Option<Vec<Record>>, StoreError> {
    let pruned_below = crate::store::read_meta_u64(c, "pruned_below")?.unwrap_or(0);
    let committed = crate::store::read_meta_u64(c, "counter")?.unwrap_or(0);
    if first < pruned_below || last > committed {
        return Ok(None);
    }
    Ok(Some(read_records(c, Versionstamp::commit_start(first).to_i64(), Versionstamp::commit_start(last + 1).to_i64())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_urls() {
        assert_eq!(parse_s3_url("s3://b/p/q/").unwrap(), ("b".into(), "p/q".into()));
        assert_eq!(parse_s3_url("s3://bucket").unwrap(), ("bucket".into(), "".into()));
        assert!(parse_s3_url("http://b/p").is_err());
        assert!(parse_s3_url("s3:///p").is_err());
        assert!(parse_s3_url("s3://Bad_Bucket/p").is_err());
    }
}
