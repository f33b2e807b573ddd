//! Background work at a lower CPU priority: a snapshot's copy of the
//! database and its compression are seconds of CPU at 1M keys, and on a
//! sidecar's one or two cores they competed with the writer and request
//! handling for them (POST p99 while a snapshot ran). They run on a thread
//! of their own whose nice value is raised (`limits::BACKGROUND_NICE`): a
//! thread cannot lower it again without privileges, so the thread is not
//! returned to a pool, it ends with the work.

use crate::limits;

/// Run `f` on a new thread named `name` at the background priority, and
/// wait for its result without blocking the runtime. `None` if the thread
/// could not be started or `f` panicked.
pub async fn run<R, F>(name: &str, f: F) -> Option<R>
where
    R: Send + 'static,
    F: FnOnce() -> R + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new().name(name.to_string()).spawn(move || {
        lower_priority();
        let _ = tx.send(f());
    });
    match spawned {
        Ok(_) => rx.await.ok(),
        Err(e) => {
            tracing::error!(error = %e, thread = name, "could not start a background thread");
            None
        }
    }
}

/// Raise this thread's nice value (Linux: per thread). Best effort: work
/// at normal priority is still correct.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain syscalls on this thread's own id; no memory is shared.
        let r = unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS as _, tid, limits::BACKGROUND_NICE)
        };
        if r != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower a background thread's priority");
        }
    }
}

#[cfg(test)]
mod tests {
    /// The work runs at the background nice value and its result comes back.
    #[tokio::test]
    async fn runs_niced_and_returns() {
        let nice = super::run("test-bg", || unsafe { libc::getpriority(libc::PRIO_PROCESS as _, 0) }).await;
        assert_eq!(nice, Some(crate::limits::BACKGROUND_NICE));
        assert_eq!(super::run("test-bg", || -> u8 { panic!("boom") }).await, None);
    }
}
