//! Bounds on guest instances, and what they cost.
//!
//! Every live instance owns its own linear memory (~2 MiB for the Rust
//! guest, ~18 MiB for a componentize-py guest), so memory grows with the
//! number of instances, not with the number of requests. `InstanceSlots`
//! caps the instances in use at once (`KVSTORE_MAX_INSTANCES`): a request
//! takes a slot before it takes (or creates) an instance and gives it back
//! when the call ends. Because a new instance is only created when no idle
//! one is left, busy + idle never exceeds the cap either.
//!
//! `MeteredLimits` is the per-instance resource limiter: wasmtime's
//! `StoreLimits` (the memory and table caps) plus accounting of the memory
//! each instance holds, kept in the `sidekv_guest_memory_bytes` and
//! `sidekv_guest_instances` gauges for as long as the instance lives.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::{ResourceLimiter, StoreLimits};

use crate::limits;
use crate::metrics::METRICS;

/// Permission to run one guest call; frees the slot when dropped.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        METRICS.guest_instances_busy.fetch_sub(1, Relaxed);
    }
}

/// At most `max` guest calls (and so instances) at once.
pub struct InstanceSlots {
    sem: Arc<Semaphore>,
    pub max: usize,
}

impl InstanceSlots {
    pub fn new(max: usize) -> Self {
        InstanceSlots { sem: Arc::new(Semaphore::new(max)), max }
    }

    /// Wait up to `INSTANCE_WAIT` for a slot; `None` when none came free.
    pub async fn acquire(&self) -> Option<Slot> {
        let permit = match self.sem.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => match tokio::time::timeout(limits::INSTANCE_WAIT, self.sem.clone().acquire_owned()).await {
                Ok(Ok(p)) => p,
                _ => {
                    METRICS.guest_busy_rejections.fetch_add(1, Relaxed);
                    return None;
                }
            },
        };
        METRICS.guest_instances_busy.fetch_add(1, Relaxed);
        Some(Slot { _permit: permit })
    }
}

/// `StoreLimits` plus the instance's memory, reported to the gauges.
pub struct MeteredLimits {
    inner: StoreLimits,
    memory: usize,
}

impl MeteredLimits {
    /// Linear memory this instance holds.
    pub fn memory(&self) -> usize {
        self.memory
    }

    pub fn new(inner: StoreLimits) -> Self {
        METRICS.guest_instances.fetch_add(1, Relaxed);
        METRICS.guest_instances_created.fetch_add(1, Relaxed);
        MeteredLimits { inner, memory: 0 }
    }
}

impl Drop for MeteredLimits {
    fn drop(&mut self) {
        METRICS.guest_instances.fetch_sub(1, Relaxed);
        METRICS.guest_memory_bytes.fetch_sub(self.memory as u64, Relaxed);
    }
}

impl ResourceLimiter for MeteredLimits {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let allowed = self.inner.memory_growing(current, desired, maximum)?;
        if allowed {
            // Also called for each memory's initial allocation (current 0).
            let grown = desired.saturating_sub(current);
            self.memory += grown;
            METRICS.guest_memory_bytes.fetch_add(grown as u64, Relaxed);
        }
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.memory_grow_failed(error)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}
