//! Launch and epochs: before the store opens, restore a missing database or
//! compare a present one with S3 (stale → set aside and restored; history S3
//! cannot rebuild → the backup restarts from a snapshot); reserve the
//! versionstamp epoch the database numbers its commits in, and roll to the
//! next one half-way through.

use super::*;

pub(super) fn set_aside(db: &Path, tag: &str) -> Result<Option<PathBuf>, ReplicaError> {
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
    pub(super) async fn check_local(&self, db: &Path) -> Result<(), ReplicaError> {
        let FilePositions { counter, shipped, pruned_below, .. } = file_positions(db)?;
        match self.assess(counter, shipped).await? {
            // The log lost commits S3 lacks (pruned while the backup was
            // off): known now, so /readyz says "not backed up" from the
            // first request until the base snapshot is in S3.
            Assessment::Continue if counter > shipped && pruned_below > shipped + 1 => {
                tracing::warn!(db = %db.display(), shipped, local_commit = counter, "the change log was pruned while the backup was off; the backup restarts with a snapshot");
                self.need_base(shipped, counter, "the change log was pruned while the backup was off");
            }
            Assessment::Continue => {}
            Assessment::NeedsBase { after } => {
                tracing::info!(db = %db.display(), local_commit = counter, "S3 cannot rebuild this database's history; the backup restarts with a snapshot");
                self.need_base(after, counter, "S3 cannot rebuild this database's history");
            }
            Assessment::Stale { remote_end } => {
                let aside = set_aside(db, "stale")?;
                // Its unshipped commits were acknowledged in `local` mode:
                // they are kept (aside), but no longer served or backed up.
                tracing::error!(
                    db = %db.display(), local_commit = counter, remote_commit = remote_end, moved_to = ?aside,
                    unshipped_commits = counter.saturating_sub(shipped),
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
    pub(super) fn unreachable_at_launch(&self, db: &Path, e: ReplicaError) -> Result<(), ReplicaError> {
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
    pub(super) async fn plan_epoch(&self, db: &Path) -> Result<(), ReplicaError> {
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
    pub(super) async fn reserve_epoch(&self, counter: u64) -> Result<u64, ReplicaError> {
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
    pub(super) async fn maybe_roll_epoch(&self, store: &Store) -> Result<(), ReplicaError> {
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
    pub(super) async fn newest_segment(&self, segments: &[(u64, String)]) -> Result<Option<Segment>, ReplicaError> {
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
}
