//! Restore: plan (the newest snapshot at or below the target and the segments
//! after it), fetch and apply (streamed; segments must chain exactly, a gap
//! or an overlap is an error naming the objects), finalize (fsync, leftover
//! WAL set aside, rename into place).

use super::*;

impl Replica {
    /// Restore the newest state (or the state at versionstamp `at`) into `to`.
    /// Creates no file when S3 holds nothing (first launch) and returns 0.
    pub async fn restore_to(&self, to: &Path, at: Option<Versionstamp>) -> Result<u64, ReplicaError> {
        let started = Instant::now();
        if let Some(v) = at.filter(|v| !v.issuable()) {
            return Err(ReplicaError::Gap(format!(
                "{v} is past every commit a store can issue (its counter is over 47 bits); no backup reaches it"
            )));
        }
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
    pub(super) async fn plan_restore(&self, at: Option<Versionstamp>) -> Result<RestorePlan, ReplicaError> {
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
    pub(super) async fn build_restore(
        &self,
        plan: &RestorePlan,
        tmp: &Path,
        at: Option<Versionstamp>,
    ) -> Result<(u64, u64, usize), ReplicaError> {
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
    pub(super) fn finalize_restore(tmp: &Path, to: &Path) -> Result<(), ReplicaError> {
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
    pub(super) async fn commit_ends_at(&self, segments: &[(u64, String)], at: Versionstamp) -> Result<bool, ReplicaError> {
        let Some((_, key)) = segments.iter().rev().find(|(f, _)| *f <= at.counter) else {
            return Ok(false);
        };
        let seg = self.remote.segment(key).await?;
        Ok(seg.last >= at.counter && !seg.records.iter().any(|r| r.counter() == at.counter && r.version > at.to_i64()))
    }
}

/// The objects a restore reads.
pub(super) struct RestorePlan {
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
