//! Snapshots: a consistent copy of the database (`VACUUM INTO`), published
//! only once every commit it holds is shipped, compressed and streamed to
//! `snapshots/<commit>`; the base snapshot a backup restarts from (claiming
//! its range with a base segment first); retention.

use super::*;

pub(super) fn snapshot_tmp(store: &Store) -> PathBuf {
    let dir = store.path().parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    dir.join(format!(".sidekv-snapshot-{}-{:08x}.sqlite3", std::process::id(), rand::random::<u32>()))
}

impl Replica {
    /// Restart the backup from a snapshot when S3 cannot rebuild the local
    /// history after commit `after` (a new prefix, the change log pruned
    /// while the backup was off, history S3 lost). In order, so that no
    /// commit counts as shipped before an object covering it exists:
    /// 1. copy the database locally (commit C);
    /// 2. claim commits `after+1..=C` with a base segment named `after+1`
    ///    (the fencing token: a second writer continuing from `after` loses);
    /// 3. upload snapshot C;
    /// 4. only now mark C shipped (s3-mode writes up to C are acknowledged).
    pub(super) async fn base_snapshot(&self, store: &Store, after: u64) -> Result<(), ReplicaError> {
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
    pub(super) async fn upload_snapshot(&self, file: &Path, counter: u64) -> Result<(), ReplicaError> {
        let started = Instant::now();
        let zst = PathBuf::from(format!("{}.zst", file.display()));
        let (src, dst) = (file.to_path_buf(), zst.clone());
        // At the background priority (`crate::background`): seconds of CPU at 1M keys.
        let compressed = crate::background::run("sidekv-snapshot-zstd", move || -> Result<u64, ReplicaError> {
            let input = std::io::BufReader::new(std::fs::File::open(&src).map_err(|e| io_err(&src, e))?);
            let out = std::fs::File::create(&dst).map_err(|e| io_err(&dst, e))?;
            let mut enc = zstd::stream::Encoder::new(std::io::BufWriter::new(out), 3).map_err(|e| io_err(&dst, e))?;
            std::io::copy(&mut { input }, &mut enc).map_err(|e| io_err(&src, e))?;
            let mut w = enc.finish().map_err(|e| io_err(&dst, e))?;
            std::io::Write::flush(&mut w).map_err(|e| io_err(&dst, e))?;
            Ok(std::fs::metadata(&dst).map_err(|e| io_err(&dst, e))?.len())
        })
        .await
        .ok_or_else(|| io_err(file, "the compression thread failed"))?;
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

    pub(super) fn snapshot_done(&self) {
        let mut st = self.state.lock().unwrap();
        st.bytes_since_snapshot = 0;
        st.last_snapshot = Some(Instant::now());
        st.snapshot_not_before = None;
        st.snapshot_backoff = Duration::ZERO;
        METRICS.snapshots_ok.fetch_add(1, Relaxed);
    }

    pub(super) fn snapshot_due(&self) -> bool {
        let st = self.state.lock().unwrap();
        if st.snapshot_not_before.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        let due_bytes = st.bytes_since_snapshot >= self.snapshot_bytes;
        let due_time = st.bytes_since_snapshot > 0 && st.last_snapshot.is_none_or(|t| t.elapsed() >= limits::SNAPSHOT_INTERVAL);
        due_bytes || due_time
    }

    /// When the uploader, idle, must look at snapshots again: a snapshot is
    /// due by bytes but waits for its retry backoff (or for the one still
    /// running to end). Without this, a snapshot that failed while writes
    /// were stopping was never retried until the next write.
    pub(super) fn snapshot_recheck_at(&self) -> Option<Instant> {
        let st = self.state.lock().unwrap();
        if st.bytes_since_snapshot < self.snapshot_bytes {
            return None;
        }
        if self.snapshotting.load(Relaxed) {
            return Some(Instant::now() + limits::SNAPSHOT_RECHECK);
        }
        Some(st.snapshot_not_before.unwrap_or_else(Instant::now))
    }

    /// Start a snapshot beside shipping when one is due: the copy,
    /// compression and upload take long on a big database, and segments
    /// must keep flowing meanwhile. A failure is retried with backoff.
    pub(super) fn maybe_start_snapshot(self: &Arc<Self>, store: &Store) {
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
    pub(super) async fn apply_retention(&self) -> Result<(), ReplicaError> {
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
}
