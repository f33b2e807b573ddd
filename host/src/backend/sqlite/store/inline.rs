//! Point reads on the caller's thread, on a read snapshot kept open across
//! reads for as long as no write can have changed the database.
//!
//! A WAL read transaction costs a lock round on the shared-memory index
//! (`unixShmLock`: `fcntl`s and a mutex the runtime threads contend for)
//! when it starts and ends; for a point read on cached pages that was the
//! largest single cost (bench/analysis.md). So an inline connection keeps
//! its read transaction open after a read, tagged with the write generation
//! it was taken at, and the next read on it reuses the snapshot when the
//! generation has not moved.
//!
//! ```text
//!  writer thread: gen odd ─▶ release every kept snapshot ─▶ BEGIN IMMEDIATE …
//!                 COMMIT (acks sent) ─▶ gen even
//!  inline read:   g0 = gen; kept snapshot tagged g0 (even)? ─▶ read on it
//!                 else: end it, BEGIN, read, g1 = gen;
//!                 keep the snapshot only if g0 == g1 and even
//! ```
//!
//! Why a read is never stale: every change to the database happens on the
//! writer thread inside a step that makes the generation odd before it
//! starts and even after it ends (`WriteGeneration`). A snapshot is kept only
//! when the generation was the same even number before it started and after
//! it was taken, i.e. no step ran meanwhile: it is exactly the database at
//! that generation. It is reused only while the generation is still that
//! number, i.e. no step has started since, so it still is the database.
//! Anything a client saw acknowledged was acknowledged inside a step, after
//! the odd bump, so a read that starts after the acknowledgement finds the
//! generation moved and takes a new snapshot.
//!
//! Why the WAL still gets checkpointed: a kept snapshot pins the WAL frames
//! it reads. The writer ends every idle connection's kept snapshot at the
//! start of each step (`release_all`), before its commit and the automatic
//! checkpoint after it, so checkpoints see what they saw when every read
//! was its own transaction; the idle checkpoint and the final one do the
//! same first.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

use rusqlite::Connection;

use super::StoreError;
use super::sql;

/// Counts the writer's steps: odd while one runs, even between them.
#[derive(Default)]
pub struct WriteGeneration(AtomicU64);

impl WriteGeneration {
    /// The writer is about to change the database (the generation turns odd).
    pub fn begin_step(&self) {
        self.0.fetch_add(1, SeqCst);
    }

    /// The writer's step is over (the generation turns even).
    pub fn end_step(&self) {
        self.0.fetch_add(1, SeqCst);
    }

    fn now(&self) -> u64 {
        self.0.load(SeqCst)
    }
}

/// A read-only connection and the generation of the snapshot it keeps open.
struct InlineConn {
    conn: Connection,
    kept: Option<u64>,
}

impl InlineConn {
    /// Run `f` inside one read transaction: the kept one when it is still
    /// the database, else a new one (kept afterwards when no step ran).
    fn read<R>(&mut self, generation: &WriteGeneration, f: impl FnOnce(&Connection) -> Result<R, StoreError>) -> Result<R, StoreError> {
        let g0 = generation.now();
        if g0.is_multiple_of(2) && self.kept == Some(g0) {
            let r = f(&self.conn);
            if r.is_err() {
                self.release();
            }
            return r;
        }
        self.release();
        self.conn.prepare_cached(sql::BEGIN)?.execute([])?;
        let r = f(&self.conn);
        if r.is_ok() && g0.is_multiple_of(2) && generation.now() == g0 {
            self.kept = Some(g0);
        } else {
            self.end();
        }
        r
    }

    /// End the kept snapshot, if any.
    fn release(&mut self) {
        if self.kept.take().is_some() {
            self.end();
        }
    }

    fn end(&mut self) {
        if !self.conn.is_autocommit() {
            // A read-only transaction: COMMIT only releases its read lock.
            if let Err(e) = self.conn.prepare_cached(sql::COMMIT).and_then(|mut s| s.execute([])) {
                tracing::warn!(error = %e, "ending an inline read transaction failed");
            }
        }
    }
}

/// The inline connections not in use right now.
#[derive(Default)]
pub struct InlinePool {
    idle: Mutex<Vec<InlineConn>>,
    generation: WriteGeneration,
}

impl InlinePool {
    pub fn add(&self, conn: Connection) {
        self.idle.lock().unwrap().push(InlineConn { conn, kept: None });
    }

    pub fn generation(&self) -> &WriteGeneration {
        &self.generation
    }

    /// Run a bounded read on an idle connection, on this thread, in one
    /// snapshot; `None` when every connection is in use (or closed).
    pub fn read<R>(&self, f: impl FnOnce(&Connection) -> Result<R, StoreError>) -> Option<Result<R, StoreError>> {
        let mut c = self.idle.lock().unwrap().pop()?;
        let r = c.read(&self.generation, f);
        self.idle.lock().unwrap().push(c);
        Some(r)
    }

    /// End every idle connection's kept snapshot (the writer, before it
    /// changes the database or checkpoints). A connection in use now ends
    /// or drops its own: its generation check sees the step.
    pub fn release_all(&self) {
        for c in self.idle.lock().unwrap().iter_mut() {
            c.release();
        }
    }

    /// Close every idle connection.
    pub fn clear(&self) {
        self.idle.lock().unwrap().clear();
    }
}
