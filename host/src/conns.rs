//! Client connections: the cap, who gets closed to make room, and the
//! response-write deadline.
//!
//! ```text
//!  accept ─▶ ConnTable::admit ─┬─ room ─────────────────▶ Conn (served by hyper)
//!                              ├─ full, an idle conn ───▶ evict it, Conn
//!                              └─ full, none idle ──────▶ refuse: canned 503 + Retry-After
//!  Conn: every request holds a RequestGuard until its response body is
//!  done; between requests the connection is idle (since when: `idle_since`).
//! ```
//!
//! Why evict: a leaked connection pool or a crowd of keep-alive clients can
//! hold every slot while doing nothing; hyper would close them only at the
//! header timeout (10 s). At the cap, the connection idle longest (at least
//! `IDLE_EVICT_AFTER`) is closed instead, and the new client is served.
//! A connection with a request in flight is never evicted: slow bodies and
//! slow readers are ended by their own deadlines (`body.rs`,
//! `WriteDeadline`), which answer 408 or close.
//!
//! Eviction is final: the evicted connection leaves the table at once (its
//! slot goes to the new one) and is dropped by its task. A request that
//! raced in on it gets 503 with `Connection: close`.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore};

use crate::limits;
use crate::metrics::METRICS;

/// The open connections, at most `max`.
pub struct ConnTable {
    conns: Mutex<HashMap<u64, Arc<ConnState>>>,
    max: usize,
    next_id: AtomicU64,
    epoch: Instant,
    refusals: Arc<Semaphore>,
}

/// One connection's state, shared by its task, its requests and the table.
pub struct ConnState {
    id: u64,
    /// Requests whose response is not finished yet.
    busy: AtomicU32,
    /// Milliseconds since the table's epoch when `busy` last went to 0.
    idle_since: AtomicU64,
    evicted: AtomicBool,
    evict: Notify,
}

/// A connection's place in the table; frees it when dropped.
pub struct Conn {
    table: Arc<ConnTable>,
    pub state: Arc<ConnState>,
}

impl ConnTable {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(ConnTable {
            conns: Mutex::new(HashMap::new()),
            max,
            next_id: AtomicU64::new(0),
            epoch: Instant::now(),
            refusals: Arc::new(Semaphore::new(limits::MAX_PENDING_REFUSALS)),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// A place for a new connection: a free slot, or one taken from the
    /// connection idle longest. `None` when every slot is in use.
    pub fn admit(self: &Arc<Self>) -> Option<Conn> {
        let mut conns = self.conns.lock().unwrap();
        if conns.len() >= self.max && !self.evict_idle(&mut conns) {
            return None;
        }
        let id = self.next_id.fetch_add(1, Relaxed);
        // Idle from the start: a connection that sends nothing holds no work.
        let state = Arc::new(ConnState {
            id,
            busy: AtomicU32::new(0),
            idle_since: AtomicU64::new(self.now_ms()),
            evicted: AtomicBool::new(false),
            evict: Notify::new(),
        });
        conns.insert(id, state.clone());
        Some(Conn { table: self.clone(), state })
    }

    fn evict_idle(&self, conns: &mut HashMap<u64, Arc<ConnState>>) -> bool {
        let now = self.now_ms();
        let min_idle = limits::IDLE_EVICT_AFTER.as_millis() as u64;
        let victim = conns
            .values()
            .filter(|c| c.busy.load(SeqCst) == 0 && now.saturating_sub(c.idle_since.load(SeqCst)) >= min_idle)
            .min_by_key(|c| c.idle_since.load(SeqCst))
            .cloned();
        let Some(victim) = victim else { return false };
        victim.evicted.store(true, SeqCst);
        victim.evict.notify_one();
        conns.remove(&victim.id);
        METRICS.connections_evicted.fetch_add(1, Relaxed);
        true
    }

    /// Answer a connection over the cap with a canned 503 (`Retry-After`)
    /// and close it; past `MAX_PENDING_REFUSALS` refusals in progress, just
    /// close it.
    pub fn refuse(&self, mut stream: TcpStream, answer: &'static [u8]) {
        METRICS.connections_rejected.fetch_add(1, Relaxed);
        let Ok(permit) = self.refusals.clone().try_acquire_owned() else { return };
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let _ = tokio::time::timeout(limits::REFUSAL_LINGER, async {
                stream.write_all(answer).await?;
                stream.shutdown().await?;
                // Read what the client sends until it closes (or the linger
                // ends): closing with unread data would reset the
                // connection and could destroy the 503 before it is read.
                let mut sink = [0u8; 4096];
                while stream.read(&mut sink).await? > 0 {}
                io::Result::Ok(())
            })
            .await;
            drop(permit);
        });
    }
}

impl Conn {
    /// Mark a request as started; the guard marks it finished when dropped.
    pub fn begin_request(&self) -> RequestGuard {
        self.state.busy.fetch_add(1, SeqCst);
        RequestGuard { table: self.table.clone(), state: self.state.clone() }
    }

    /// Resolves when the table evicts this connection (its task then drops
    /// it, after answering a request that raced in, if any).
    pub async fn evicted(&self) {
        self.state.evict.notified().await;
    }
}

impl ConnState {
    pub fn is_evicted(&self) -> bool {
        self.evicted.load(SeqCst)
    }

    pub fn is_busy(&self) -> bool {
        self.busy.load(SeqCst) > 0
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.table.conns.lock().unwrap().remove(&self.state.id);
    }
}

/// A request in flight on a connection (held by its response body).
pub struct RequestGuard {
    table: Arc<ConnTable>,
    state: Arc<ConnState>,
}

impl RequestGuard {
    pub fn evicted(&self) -> bool {
        self.state.is_evicted()
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.state.idle_since.store(self.table.now_ms(), SeqCst);
        self.state.busy.fetch_sub(1, SeqCst);
    }
}

/// The client connection preface of HTTP/2 with prior knowledge.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// A TCP connection that, once it turns out to be HTTP/2, re-arms
/// `TCP_QUICKACK` after every read. HTTP/2 clients (Deno's KV client) send
/// a request's HEADERS and DATA frames in separate small writes; with Nagle
/// on their side, the DATA waits for the ACK of the HEADERS, which Linux
/// delays up to 40 ms when the server has nothing to send yet. Measured: a
/// Deno `get` took ~44 ms without it. HTTP/1.1 connections are untouched
/// (no extra system call).
pub struct QuickAck {
    inner: tokio::net::TcpStream,
    /// `None` until the first bytes arrive; then whether this is HTTP/2.
    h2: Option<bool>,
}

impl QuickAck {
    pub fn new(inner: tokio::net::TcpStream) -> Self {
        QuickAck { inner, h2: None }
    }
}

impl AsyncRead for QuickAck {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r
            && buf.filled().len() > before
        {
            let got = &buf.filled()[before..];
            let h2 = *self.h2.get_or_insert_with(|| got.starts_with(&H2_PREFACE[..got.len().min(H2_PREFACE.len())]));
            if h2 {
                let _ = socket2::SockRef::from(&self.inner).set_tcp_quickack(true);
            }
        }
        r
    }
}

impl AsyncWrite for QuickAck {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A socket whose writes fail once they have made no progress for
/// `timeout`: a client that stops reading cannot hold its connection, its
/// slot and the response buffered for it. Reads pass through untouched
/// (hyper's header timeout and `body.rs` bound them).
pub struct WriteDeadline<T> {
    inner: T,
    timeout: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> WriteDeadline<T> {
    pub fn new(inner: T, timeout: Duration) -> Self {
        WriteDeadline { inner, timeout, stalled: None }
    }

    /// Progress resets the clock; `Pending` starts it (once) and fails the
    /// write when it runs out.
    fn check<R>(&mut self, r: Poll<io::Result<R>>, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        if r.is_ready() {
            self.stalled = None;
            return r;
        }
        let timeout = self.timeout;
        let sleep = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if sleep.as_mut().poll(cx).is_ready() {
            METRICS.write_timeouts.fetch_add(1, Relaxed);
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading (KVSTORE_WRITE_TIMEOUT)")));
        }
        Poll::Pending
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteDeadline<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(r, cx)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(r, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
