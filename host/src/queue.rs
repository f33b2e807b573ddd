//! Queue delivery: the background task that expires leases, pushes due
//! messages to the application (`KVSTORE_QUEUE_URL`), and keeps the queue
//! gauges fresh. Pull consumers lease messages through the guest
//! (`queue.take`); both use the same leases.
//!
//! ```text
//!  loop ─▶ ExpireLeases (a commit: each expired lease is a failed attempt)
//!       ─▶ push on: while a delivery slot is free and a message is due:
//!             lease it (timeout + margin) ─▶ task: POST url
//!                 2xx ─▶ Ack      anything else / timeout / refused ─▶ Retry
//!       ─▶ sleep until the next due time or lease expiry, a commit, or QUEUE_TICK
//! ```
//!
//! At least once: a message is removed only by an `Ack` under its current
//! lease. A delivery whose answer is lost, or that outlives its lease, is
//! delivered again; consumers make handling idempotent by message id.
//! Deliveries run on their own tasks with bounded concurrency, so a slow
//! or dead application endpoint never holds the writer or a request.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use tokio::sync::Semaphore;

use crate::backend::{Encoding, Kv, QueueMessage, QueueOp, now_ms};
use crate::limits;
use crate::metrics::METRICS;

/// Where push deliveries go: plain HTTP (the application beside sidekv).
#[derive(Clone, Debug)]
pub struct PushTarget {
    pub host: String,
    pub port: u16,
    /// Path and query.
    pub path: String,
    /// `Host` header value.
    pub authority: String,
}

impl PushTarget {
    pub fn parse(url: &str) -> Result<PushTarget, String> {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!("{url:?}: only http:// is supported (the application runs beside sidekv)"));
        }
        let auth = uri.authority().ok_or_else(|| format!("{url:?} has no host"))?;
        let host = auth.host().trim_start_matches('[').trim_end_matches(']').to_string();
        Ok(PushTarget {
            host,
            port: auth.port_u16().unwrap_or(80),
            path: uri.path_and_query().map_or("/".to_string(), |p| p.as_str().to_string()),
            authority: auth.as_str().to_string(),
        })
    }
}

/// The name of a value encoding in the `x-sidekv-encoding` header.
pub fn encoding_name(e: Encoding) -> &'static str {
    match e {
        Encoding::V8 => "v8",
        Encoding::Le64 => "le64",
        Encoding::Bytes => "bytes",
    }
}

/// Push settings.
#[derive(Clone, Debug)]
pub struct Push {
    pub target: PushTarget,
    pub concurrency: usize,
    pub timeout: Duration,
}

/// Run until the store closes.
pub async fn run(kv: Kv, push: Option<Push>) {
    let slots = Arc::new(Semaphore::new(push.as_ref().map_or(1, |p| p.concurrency)));
    let conns = Conns::default();
    let mut commits = kv.subscribe_commits();
    let mut last_tick = tokio::time::Instant::now() - limits::QUEUE_TICK;
    while !kv.is_closing() {
        commits.borrow_and_update();
        // Commits wake this loop often under load: the writer is only
        // asked for something when a lease expired or a message is due for
        // push (one indexed read tells).
        let t = kv.backend().queue_next_event().await.unwrap_or_default();
        let now = now_ms();
        let ticked = last_tick.elapsed() >= limits::QUEUE_TICK;
        if t.lease_expiry.is_some_and(|at| at <= now)
            && let Err(e) = kv.queue_settle(QueueOp::ExpireLeases).await
        {
            tracing::debug!(error = %e, "expiring queue leases failed; retrying");
        }
        if let Some(p) = &push
            && t.due.is_some_and(|at| at <= now)
            && let Err(e) = push_due(&kv, p, &slots, &conns).await
        {
            tracing::debug!(error = %e, "taking due queue messages failed; retrying");
            tokio::select! {
                _ = tokio::time::sleep(limits::QUEUE_ERROR_BACKOFF) => {}
                _ = kv.closing() => return,
            }
        }
        if ticked {
            refresh_gauges(&kv).await;
            last_tick = tokio::time::Instant::now();
        }
        // Sleep until a lease expires or (push on, a delivery slot free) a
        // message falls due; a commit (an enqueue, a settled delivery) wakes earlier.
        let t = kv.backend().queue_next_event().await.unwrap_or_default();
        let slot_free = push.is_some() && slots.available_permits() > 0;
        let mut wake = t.lease_expiry;
        if slot_free {
            wake = match (wake, t.due) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        let wait = wake.map_or(limits::QUEUE_TICK, |at| {
            Duration::from_millis(at.saturating_sub(now_ms()) + 1).clamp(limits::QUEUE_MIN_SLEEP, limits::QUEUE_TICK)
        });
        tokio::select! {
            r = commits.changed() => {
                if r.is_err() { return; }
                // Under a write load every commit wakes this loop: take
                // them in rounds of at least QUEUE_MIN_SLEEP (one indexed
                // read each), not one read per commit.
                tokio::time::sleep(limits::QUEUE_MIN_SLEEP).await;
            }
            _ = tokio::time::sleep(wait) => {}
            _ = kv.closing() => return,
        }
    }
}

async fn refresh_gauges(kv: &Kv) {
    if let Ok(s) = kv.backend().queue_stats().await {
        METRICS.queue_pending.store(s.pending, Relaxed);
        METRICS.queue_due.store(s.due, Relaxed);
        METRICS.queue_leased.store(s.leased, Relaxed);
        METRICS.queue_oldest_due_ms.store(s.oldest_due_ms, Relaxed);
    }
}

/// Lease due messages while delivery slots are free; each goes to its own task.
async fn push_due(kv: &Kv, p: &Push, slots: &Arc<Semaphore>, conns: &Conns) -> Result<(), crate::backend::StoreError> {
    let lease_ms = (p.timeout + limits::QUEUE_PUSH_LEASE_MARGIN).as_millis().min(limits::MAX_QUEUE_VISIBILITY_MS as u128) as u32;
    loop {
        let Ok(permit) = slots.clone().try_acquire_owned() else { return Ok(()) };
        let Some(m) = kv.queue_take(lease_ms, Duration::ZERO).await? else { return Ok(()) };
        let (kv, p, conns) = (kv.clone(), p.clone(), conns.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let outcome = deliver(&p, &m, &conns).await;
            let op = match &outcome {
                Ok(()) => QueueOp::Ack { id: m.id.clone(), lease: m.lease },
                Err(why) => {
                    tracing::info!(id = %m.id, attempt = m.attempt, error = %why, "queue delivery failed; it is retried (backoff) or dead-lettered");
                    QueueOp::Retry { id: m.id.clone(), lease: m.lease }
                }
            };
            match kv.queue_settle(op).await {
                Ok(true) => {}
                Ok(false) => tracing::warn!(id = %m.id, "a delivery outlived its lease; the message is delivered again"),
                Err(e) => tracing::warn!(id = %m.id, error = %e, "settling a delivery failed; its lease expires and it is delivered again"),
            }
        });
    }
}

/// Idle keep-alive connections to the push target (at most one per delivery
/// slot): a TCP and HTTP handshake per message would cost more than the
/// delivery itself.
#[derive(Clone, Default)]
struct Conns(Arc<std::sync::Mutex<Vec<SendRequest<Full<Bytes>>>>>);

impl Conns {
    /// An idle connection that is still open (`true`: reused), or a new one.
    async fn get(&self, t: &PushTarget) -> Result<(SendRequest<Full<Bytes>>, bool), String> {
        loop {
            let idle = self.0.lock().unwrap().pop();
            match idle {
                Some(s) if s.is_ready() => return Ok((s, true)),
                Some(_) => continue, // closed by the application: drop it
                None => return Ok((self.connect(t).await?, false)),
            }
        }
    }

    async fn connect(&self, t: &PushTarget) -> Result<SendRequest<Full<Bytes>>, String> {
        let stream = tokio::net::TcpStream::connect((t.host.as_str(), t.port)).await.map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.map_err(|e| format!("handshake: {e}"))?;
        // Ends when the sender is dropped or the application closes it.
        tokio::spawn(conn);
        Ok(sender)
    }

    fn put(&self, s: SendRequest<Full<Bytes>>, cap: usize) {
        let mut idle = self.0.lock().unwrap();
        if idle.len() < cap {
            idle.push(s);
        }
    }
}

/// POST one message; `Ok` only for a 2xx answer within the timeout.
async fn deliver(p: &Push, m: &QueueMessage, conns: &Conns) -> Result<(), String> {
    let request = || {
        hyper::Request::post(p.target.path.as_str())
            .header("host", p.target.authority.as_str())
            .header("content-type", "application/octet-stream")
            .header("x-sidekv-message-id", m.id.as_str())
            .header("x-sidekv-attempt", m.attempt.to_string())
            .header("x-sidekv-encoding", encoding_name(m.payload.encoding))
            .body(Full::new(Bytes::from(m.payload.bytes.clone())))
            .map_err(|e| e.to_string())
    };
    let attempt = async {
        let (mut sender, reused) = conns.get(&p.target).await?;
        let resp = match sender.send_request(request()?).await {
            Ok(r) => r,
            // A kept connection that failed before an answer came (the
            // application closed or reset it meanwhile) is not a failed
            // attempt: send once more on a new connection. At least once
            // allows the duplicate if the first copy did arrive.
            Err(_) if reused => {
                sender = conns.connect(&p.target).await?;
                sender.send_request(request()?).await.map_err(|e| format!("request: {e}"))?
            }
            Err(e) => return Err(format!("request: {e}")),
        };
        let status = resp.status();
        // Read the whole answer, so the connection can carry the next one.
        let read = resp.into_body().collect().await.is_ok();
        if read {
            conns.put(sender, p.concurrency);
        }
        if status.is_success() { Ok(()) } else { Err(format!("the application answered {status}")) }
    };
    match tokio::time::timeout(p.timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {:?} (KVSTORE_QUEUE_TIMEOUT)", p.timeout)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_targets() {
        let t = PushTarget::parse("http://127.0.0.1:3000/queue?x=1").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.path.as_str(), t.authority.as_str()), ("127.0.0.1", 3000, "/queue?x=1", "127.0.0.1:3000"));
        assert_eq!(PushTarget::parse("http://localhost").unwrap().path, "/");
        assert!(PushTarget::parse("https://x/").is_err());
        assert!(PushTarget::parse("not a url").is_err());
    }
}
