//! Upload: the uploader task ships whole commits from the outbox as
//! segments (create-if-absent: the fencing token), marks them shipped (s3
//! mode: wakes the waiting writers), retries with backoff, and at a stop
//! drains everything the backup needs before the deadline.

use super::*;

/// Sleep until `t`, or forever.
async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// An encoded segment on its way to the object store.
pub(super) struct Shipment {
    first: u64,
    last: u64,
    records: usize,
    body: Vec<u8>,
}

impl Replica {
    /// Start the uploader (segments + snapshots + retention).
    pub fn start(self: Arc<Self>, store: Store) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move { self.upload_loop(store).await })
    }

    pub(super) fn fence(&self, store: &Store, why: String) {
        tracing::error!(reason = %why, "FENCED: another writer owns this S3 path; refusing writes (reads still served)");
        self.state.lock().unwrap().fenced = Some(why.clone());
        store.block_writes(format!("writes refused: {why}"));
        store.wake_shipped_waiters();
    }

    /// Sleep for `d`, or return `false` at shutdown.
    pub(super) async fn pause(&self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => !self.stopping.load(Relaxed),
            _ = self.stop.notified() => false,
        }
    }

    /// The launch check, repeated by the uploader when S3 was down at launch.
    /// The store is open now, so a stale database cannot be swapped: it is
    /// fenced instead (a restart restores).
    pub(super) async fn check_running(&self, store: &Store) -> Result<(), ReplicaError> {
        match self.assess(store.committed(), store.shipped()).await? {
            Assessment::Continue => {}
            Assessment::NeedsBase { after } => self.need_base(after, store.committed(), "S3 cannot rebuild this database's history"),
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
        tracing::info!("S3 answers; the backup starts");
        Ok(())
    }

    /// `upload_step`, with its outcome recorded once for every caller (the
    /// uploader and the drain at a stop): success clears "not backed up", a
    /// pruned log schedules a base snapshot, any other failure but a fence
    /// is counted and reported as "not backed up".
    async fn step(&self, store: &Store, one_segment: bool) -> Result<(), ReplicaError> {
        let r = self.upload_step(store, one_segment).await;
        match &r {
            Ok(()) => self.state.lock().unwrap().not_backed_up = None,
            Err(ReplicaError::HistoryPruned(after)) => self.history_pruned(*after, store),
            Err(ReplicaError::Fenced(_)) => {}
            Err(e) => {
                METRICS.uploads_failed.fetch_add(1, Relaxed);
                self.state.lock().unwrap().not_backed_up = Some(format!("uploads to S3 are failing: {e}"));
            }
        }
        r
    }

    /// One step of the uploader's work: check, base snapshot, or ship.
    pub(super) async fn upload_step(&self, store: &Store, one_segment: bool) -> Result<(), ReplicaError> {
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

    pub(super) async fn upload_loop(self: Arc<Self>, store: Store) {
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
                let recheck = self.snapshot_recheck_at();
                tokio::select! {
                    _ = commits.changed() => {}
                    _ = self.stop.notified() => return,
                    _ = sleep_until(recheck) => {
                        self.maybe_start_snapshot(&store);
                        continue;
                    }
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
            match self.step(&store, self.durability == Durability::Local).await {
                Ok(()) => {
                    backoff = Duration::from_millis(100);
                    if self.durability == Durability::S3 && store.write_block_reason().is_some() && self.fenced_reason().is_none() {
                        tracing::info!("S3 answers again; accepting writes");
                        store.unblock_writes();
                    }
                    self.maybe_start_snapshot(&store);
                }
                Err(ReplicaError::Fenced(why)) => self.fence(&store, why),
                Err(ReplicaError::HistoryPruned(_)) => {}
                Err(e) => {
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
            // Encoded while it is read, on the outbox's thread.
            let batch = match store.outbox_next(shipped, limits::SEGMENT_MAX_BYTES, SegmentWriter::new()?).await? {
                Next::Empty => return Ok(()),
                Next::Pruned { .. } => return Err(ReplicaError::HistoryPruned(shipped)),
                Next::Batch(b) => b,
            };
            let cut = batch.cut;
            let body = batch.records.finish(batch.first, batch.last, 0, store.writer_id())?;
            self.ship_segment(store, Shipment { first: batch.first, last: batch.last, records: batch.count, body }).await?;
            if store.shipped() >= store.committed() {
                self.state.lock().unwrap().behind_since = None;
            }
            if one_segment && !cut {
                return Ok(());
            }
        }
    }

    /// Create one segment (or find it already there, ours) and mark it shipped.
    pub(super) async fn ship_segment(&self, store: &Store, seg: Shipment) -> Result<(), ReplicaError> {
        let key = self.remote.segment_key(seg.first);
        let Shipment { body, .. } = seg;
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
        tracing::debug!(segment = %key, first = seg.first, last = seg.last, records = seg.records, bytes = len, "segment shipped");
        self.state.lock().unwrap().bytes_since_snapshot += len;
        Ok(())
    }

    pub(super) fn history_pruned(&self, after: u64, store: &Store) {
        tracing::warn!(
            shipped = after,
            "the change log no longer holds the next commit to ship (the backup was off); restarting the backup with a snapshot"
        );
        self.need_base(after, store.committed(), "the change log was pruned while the backup was off");
    }

    /// On SIGTERM: stop the uploader, then finish what the backup needs —
    /// a pending check, a base snapshot, every unshipped commit — retrying
    /// until `deadline`. `Err` names the commits left only on this disk.
    pub async fn shutdown(
        &self,
        store: &Store,
        task: tokio::task::JoinHandle<()>,
        deadline: tokio::time::Instant,
    ) -> Result<(), NotBackedUp> {
        self.stopping.store(true, Relaxed);
        self.stop.notify_waiters();
        // A periodic snapshot in progress is abandoned (the next start takes
        // one); the drain below is what must not be lost.
        let abort = task.abort_handle();
        let uploader_stop = deadline.min(tokio::time::Instant::now() + limits::UPLOADER_STOP_WAIT);
        if tokio::time::timeout_at(uploader_stop, task).await.is_err() {
            abort.abort();
        }
        let pending = store.committed().saturating_sub(store.shipped());
        let result = match self.fenced_reason() {
            Some(why) => Err(format!("fenced: {why}")),
            None => match tokio::time::timeout_at(deadline, self.drain(store)).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err("the stop deadline (KVSTORE_STOP_TIMEOUT) passed before S3 had them".to_string()),
            },
        };
        match result {
            Ok(()) => {
                tracing::info!(commits = pending, "outbox drained to S3");
                Ok(())
            }
            Err(reason) => {
                let e = NotBackedUp {
                    commits: store.committed().saturating_sub(store.shipped()),
                    last: store.committed(),
                    acknowledged: self.durability == Durability::Local,
                    db: store.path().display().to_string(),
                    reason,
                };
                tracing::error!(error = %e, "the backup is incomplete at exit; the next start on this disk ships the rest");
                Err(e)
            }
        }
    }

    /// Ship everything committed, retrying failed steps (with backoff) and
    /// restarting from a snapshot when the log was pruned; only a fence ends it.
    pub(super) async fn drain(&self, store: &Store) -> Result<(), ReplicaError> {
        let mut backoff = Duration::from_millis(100);
        loop {
            let setup = self.needs_check.load(Relaxed) || self.needs_base.lock().unwrap().is_some();
            if !setup && store.shipped() >= store.committed() {
                return Ok(());
            }
            match self.step(store, false).await {
                Ok(()) | Err(ReplicaError::HistoryPruned(_)) => {}
                Err(ReplicaError::Fenced(why)) => {
                    self.fence(store, why.clone());
                    return Err(ReplicaError::Fenced(why));
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "draining the outbox at shutdown failed; retrying until the stop deadline");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(limits::UPLOAD_BACKOFF_MAX);
                }
            }
        }
    }
}
