//! The background checkpointer: copies the WAL into the database file while
//! writes go on, so that the writer's own checkpoints are short.
//!
//! SQLite checkpoints inside a commit: once the WAL passes
//! `wal_autocheckpoint` pages, the committing connection (our writer
//! thread) copies every page the WAL holds into the database file and
//! fsyncs it before the commit returns, and every write queued behind it
//! waits. On a small database those pages are few (the same ones rewritten);
//! on a large one they are thousands of distinct pages spread over the file.
//! Measured at 1M keys under a POST load: p99 12–14 ms with the writer
//! checkpointing, 3.4–3.8 ms with no checkpoint at all (bench/analysis.md).
//!
//! So a thread of its own, on a connection of its own, runs PASSIVE
//! checkpoints while the writer keeps committing:
//!
//! ```text
//!  writer:        commit ─ commit ─ commit ─ … ─ commit (WAL ≥ 4000 pages:
//!                   │ nudge (at most one per interval)   its checkpoint copies
//!                   ▼                                    only what is left)
//!  checkpointer:  PASSIVE checkpoint: copy the frames no reader still
//!                 needs into the database file, fsync it
//! ```
//!
//! A PASSIVE checkpoint never blocks the writer or readers, and never
//! waits for them. It cannot restart the WAL (that needs every frame copied
//! while no write runs), so the writer's checkpoint still runs at the
//! threshold, and its idle and final checkpoints stay as they were: the
//! background one only leaves them less to copy. Crash safety is SQLite's
//! own: a checkpoint interrupted anywhere is redone from the WAL.

use std::path::Path;
use std::thread::JoinHandle;
use std::time::Instant;

use rusqlite::Connection;

use super::StoreError;
use super::schema;
use super::sql;
use crate::limits;

/// The writer's handle to the checkpointer thread. Dropping it (or
/// [`Checkpointer::stop`]) ends the thread after its current checkpoint.
pub(crate) struct Checkpointer {
    nudge: Option<crossbeam_channel::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    last: Option<Instant>,
}

impl Checkpointer {
    /// Open a connection to the database at `path` and start the thread.
    pub fn start(path: &Path) -> Result<Checkpointer, StoreError> {
        let conn = schema::open_checkpointer(path)?;
        // One slot: nudges that arrive while a checkpoint runs become one.
        let (tx, rx) = crossbeam_channel::bounded::<()>(1);
        let thread = std::thread::Builder::new()
            .name("sidekv-checkpoint".into())
            .spawn(move || {
                let mut failing = false;
                while rx.recv().is_ok() {
                    failing = checkpoint(&conn, failing);
                }
            })
            .map_err(|e| StoreError::Internal(format!("spawning the checkpoint thread: {e}")))?;
        Ok(Checkpointer { nudge: Some(tx), thread: Some(thread), last: None })
    }

    /// The writer ended a step (usually a commit): ask for a checkpoint, at most one per
    /// `CHECKPOINT_BACKGROUND_INTERVAL` (each ends in an fsync of the
    /// database file). Never blocks.
    pub fn committed(&mut self) {
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < limits::CHECKPOINT_BACKGROUND_INTERVAL) {
            return;
        }
        self.last = Some(now);
        if let Some(tx) = &self.nudge {
            let _ = tx.try_send(());
        }
    }

    /// End the thread and wait for it (before the writer's final
    /// checkpoint, which must not find this one holding the WAL).
    pub fn stop(&mut self) {
        self.nudge.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One PASSIVE checkpoint; whether it failed. Logged when checkpoints
/// start failing and when they work again, not on every attempt (a full
/// disk fails one per nudge, up to 50 a second).
fn checkpoint(conn: &Connection, failing: bool) -> bool {
    match conn.query_row(sql::CHECKPOINT_PASSIVE, [], |_| Ok(())) {
        Err(e) => {
            if !failing {
                tracing::warn!(error = %e, "background WAL checkpoint failed (the writer's own checkpoints still run)");
            }
            true
        }
        Ok(()) => {
            if failing {
                tracing::info!("background WAL checkpoints work again");
            }
            false
        }
    }
}
