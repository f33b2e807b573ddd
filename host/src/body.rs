//! Reading request bodies: size cap, deadline, minimum rate, and the
//! in-flight byte budget.
//!
//! ```text
//!  head parsed ─▶ Content-Length over the cap? ─▶ 413
//!             ─▶ reserve the declared length in the BodyBudget
//!                (waits BODY_BUDGET_WAIT, then 503 + Retry-After)
//!             ─▶ frames into one Vec (no second copy), each frame before
//!                the deadline: min(timeout, grace + received / min_rate)
//!                (408 + close past it); chunked bodies reserve as they grow
//!             ─▶ (Vec, Reservation) ─▶ the guest; the reservation is held
//!                until the guest has answered
//! ```
//!
//! Why a budget: a body is buffered whole, then copied into the guest's
//! linear memory (and the guest may copy it again while parsing), so memory
//! grows with the body bytes in flight, not with the connection count. The
//! budget bounds those bytes; GETs (no body) never touch it.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::limits;
use crate::metrics::METRICS;

/// Why a body was not read; `http_status` maps it to HTTP.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the request body is over the {max}-byte limit (KVSTORE_MAX_BODY_BYTES)")]
    TooLarge { max: usize },
    #[error("the request body was too slow: {received} bytes in {secs:.1} s (KVSTORE_BODY_TIMEOUT, KVSTORE_BODY_MIN_RATE)")]
    TooSlow { received: usize, secs: f64 },
    #[error("too many request bodies in flight (KVSTORE_MAX_INFLIGHT_BODY_BYTES); retry shortly")]
    Busy,
    #[error("reading the request body: {0}")]
    Read(String),
}

impl BodyError {}

/// How long a body may take.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimits {
    pub max_bytes: usize,
    pub timeout: Duration,
    /// Bytes/s after `BODY_RATE_GRACE`; 0 = no rate check.
    pub min_rate: u64,
}

impl BodyLimits {
    /// The deadline for the next frame, given what has arrived so far.
    fn deadline(&self, started: Instant, received: usize) -> Instant {
        let mut allowed = self.timeout;
        if self.min_rate > 0 {
            let earned = Duration::from_secs_f64(received as f64 / self.min_rate as f64);
            allowed = allowed.min(limits::BODY_RATE_GRACE + earned);
        }
        started + allowed
    }
}

/// Bytes of request bodies in flight at once (`KVSTORE_MAX_INFLIGHT_BODY_BYTES`).
pub struct BodyBudget {
    sem: Arc<Semaphore>,
}

/// Bytes reserved in the budget; given back when dropped.
pub struct Reservation {
    /// `None` once merged into another reservation.
    permit: Option<OwnedSemaphorePermit>,
}

impl Reservation {
    fn bytes(&self) -> usize {
        self.permit.as_ref().map_or(0, |p| p.num_permits())
    }

    fn absorb(&mut self, mut other: Reservation) {
        if let (Some(mine), Some(theirs)) = (self.permit.as_mut(), other.permit.take()) {
            mine.merge(theirs);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        METRICS.inflight_body_bytes.fetch_sub(self.bytes() as u64, Relaxed);
    }
}

impl BodyBudget {
    pub fn new(bytes: usize) -> Self {
        BodyBudget { sem: Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS))) }
    }

    /// Reserve `bytes`, waiting up to `BODY_BUDGET_WAIT` for room.
    async fn reserve(&self, bytes: usize) -> Result<Reservation, BodyError> {
        let n = u32::try_from(bytes).map_err(|_| BodyError::Busy)?;
        let permit = match self.sem.clone().try_acquire_many_owned(n) {
            Ok(p) => p,
            Err(_) => match tokio::time::timeout(limits::BODY_BUDGET_WAIT, self.sem.clone().acquire_many_owned(n)).await {
                Ok(Ok(p)) => p,
                _ => {
                    METRICS.body_budget_rejections.fetch_add(1, Relaxed);
                    return Err(BodyError::Busy);
                }
            },
        };
        METRICS.inflight_body_bytes.fetch_add(bytes as u64, Relaxed);
        Ok(Reservation { permit: Some(permit) })
    }

    /// Make `r` (possibly none yet) cover `bytes`: chunked bodies reserve
    /// as they arrive, at least 64 KiB at a time but never past `max`.
    async fn cover(&self, r: &mut Option<Reservation>, bytes: usize, max: usize) -> Result<(), BodyError> {
        let have = r.as_ref().map_or(0, Reservation::bytes);
        if bytes <= have {
            return Ok(());
        }
        let step = (bytes - have).max((64 * 1024).min(max.saturating_sub(have)));
        let more = self.reserve(step).await?;
        match r {
            Some(r) => r.absorb(more),
            None => *r = Some(more),
        }
        Ok(())
    }
}

/// Read a whole body within `lim`, reserving its bytes in `budget`.
pub async fn read(
    mut body: Incoming,
    declared: Option<usize>,
    lim: &BodyLimits,
    budget: &BodyBudget,
) -> Result<(Vec<u8>, Option<Reservation>), BodyError> {
    let mut reservation = None;
    if let Some(n) = declared.filter(|n| *n > 0) {
        reservation = Some(budget.reserve(n).await?);
    }
    let started = Instant::now();
    let mut buf = Vec::with_capacity(declared.unwrap_or(0));
    loop {
        let frame = match tokio::time::timeout_at(lim.deadline(started, buf.len()).into(), body.frame()).await {
            Err(_) => {
                METRICS.body_timeouts.fetch_add(1, Relaxed);
                return Err(BodyError::TooSlow { received: buf.len(), secs: started.elapsed().as_secs_f64() });
            }
            Ok(None) => return Ok((buf, reservation)),
            Ok(Some(Err(e))) => return Err(BodyError::Read(e.to_string())),
            Ok(Some(Ok(f))) => f,
        };
        let Ok(data) = frame.into_data() else { continue };
        let total = buf.len() + data.len();
        if total > lim.max_bytes {
            return Err(BodyError::TooLarge { max: lim.max_bytes });
        }
        budget.cover(&mut reservation, total, lim.max_bytes).await?;
        buf.extend_from_slice(&data);
    }
}
