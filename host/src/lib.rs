//! sidekv: a persistence sidecar. Key-value over HTTP, SQLite underneath,
//! continuous S3 backup and restore at launch, and every request handled by a
//! sandboxed, swappable wasm guest.
//!
//! Wiring (`run`): bind → serve 503s while starting → open the backend (for
//! SQLite: restore from S3 if the database is missing) → load the guest →
//! ready → serve → on shutdown: stop accepting, finish in-flight requests,
//! shut the backend down (drain the outbox to S3, close the store).
//!
//! | module    | owns                                                      |
//! |-----------|-----------------------------------------------------------|
//! | `config`  | settings by concern → plain options per component         |
//! | `limits`  | every limit, as a named constant                          |
//! | `http`    | hyper server, head limits, error → status, admin endpoints|
//! | `conns`   | connection cap, idle eviction, response-write deadline    |
//! | `body`    | request bodies: deadline, minimum rate, in-flight budget  |
//! | `guest`   | wasmtime engine, instance pool, sandbox, WIT host impls   |
//! | `backend` | the storage seam: `Backend` trait, `Kv` handle, backends  |
//! | `backend::sqlite` | SQLite file + S3 replica (backup, restore, fencing) |
//! | `streams` | SSE watch and NDJSON export bodies                        |
//! | `metrics` | Prometheus counters and histograms                        |
//! | `console` | the web console on the admin address (sessions, guest calls) |
//! | `queue`   | queue delivery: lease expiry, push to KVSTORE_QUEUE_URL   |
//! | `background` | snapshot work on its own thread at a lower CPU priority |

pub mod backend;
pub mod background;
pub mod body;
pub mod config;
pub mod conns;
pub mod console;
pub mod guest;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod queue;
pub mod streams;

use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::net::TcpListener;

use crate::backend::Kv;
use crate::config::{Config, HttpOptions, ServerInfo};
use crate::guest::{GuestRuntime, GuestSource};

/// Where start-up is; `/readyz` and 503 answers say it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Starting,
    Restoring,
    Ready,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Starting => "starting",
            Phase::Restoring => "restoring from S3",
            Phase::Ready => "ready",
        })
    }
}

/// Shared state of a running server.
pub struct App {
    pub http: HttpOptions,
    pub info: ServerInfo,
    /// Where the guest comes from (read again at SIGHUP).
    pub guest_source: GuestSource,
    kv: OnceLock<Kv>,
    guest: OnceLock<GuestRuntime>,
    phase: Mutex<Phase>,
    /// Request-body bytes in flight (`KVSTORE_MAX_INFLIGHT_BODY_BYTES`).
    pub body_budget: body::BodyBudget,
}

impl App {
    pub fn new(http: HttpOptions, info: ServerInfo, guest_source: GuestSource) -> Self {
        let body_budget = body::BodyBudget::new(http.inflight_body_bytes);
        App { http, info, guest_source, kv: OnceLock::new(), guest: OnceLock::new(), phase: Mutex::new(Phase::Starting), body_budget }
    }

    pub fn body_limits(&self) -> body::BodyLimits {
        self.http.body
    }

    pub fn kv(&self) -> Option<&Kv> {
        self.kv.get()
    }

    pub fn guest(&self) -> Option<&GuestRuntime> {
        self.guest.get()
    }

    pub fn set_phase(&self, p: Phase) {
        *self.phase.lock().unwrap() = p;
    }

    pub fn not_ready_reason(&self) -> String {
        format!("not ready: {}", self.phase.lock().unwrap())
    }

    /// What `/readyz` adds to "ready" when something is degraded but served.
    pub fn degraded(&self) -> Option<String> {
        self.kv.get().and_then(|kv| kv.status().degraded)
    }

    /// Ready = backend open and healthy, guest loaded.
    pub fn readiness(&self) -> Result<(), String> {
        if self.guest.get().is_none() {
            return Err(self.not_ready_reason());
        }
        if let Some(why) = self.kv.get().and_then(|kv| kv.status().not_ready) {
            return Err(format!("not ready: {why}"));
        }
        Ok(())
    }

    pub fn replication_gauges(&self) -> metrics::ReplicationGauges {
        self.kv.get().map(|kv| kv.status().replication).unwrap_or_default()
    }
}

/// Run the server on `listener` (and the admin endpoints on `admin`) until
/// `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    admin: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Registered first: a SIGHUP during start-up must never fall through to
    // the default action (terminate); it is handled once the guest is loaded.
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let app = Arc::new(App::new(config.http_options(), config.server_info(), config.guest.source()));
    let local = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = {
        let rx = stop_rx.clone();
        move || {
            let mut rx = rx.clone();
            async move {
                let _ = rx.wait_for(|v| *v).await;
            }
        }
    };
    let http_task = tokio::spawn(http::serve(listener, app.clone(), stopped()));
    let admin_task = admin.map(|l| tokio::spawn(http::serve_admin(l, app.clone(), stopped())));
    let (stop_at_tx, stop_at) = tokio::sync::oneshot::channel::<tokio::time::Instant>();
    {
        let app = app.clone();
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_at_tx.send(tokio::time::Instant::now());
            // End long-polls and streams first, so graceful shutdown is not
            // held up by clients that would wait for minutes.
            if let Some(kv) = app.kv() {
                kv.begin_shutdown();
            }
            let _ = stop_tx.send(true);
        });
    }

    // Open the backend (restoring from S3 first if needed); requests get
    // 503 meanwhile, saying why.
    let kv = backend::open(&config.backend_options(), || app.set_phase(Phase::Restoring)).await?;
    let _ = app.kv.set(kv.clone());
    let guest = {
        let (src, opts, kv) = (config.guest.source(), config.guest_options()?, kv.clone());
        tokio::task::spawn_blocking(move || GuestRuntime::new(&src, opts, kv)).await??
    };
    guest.warm_up().await?;
    let _ = app.guest.set(guest);

    // SIGHUP reloads the guest; a bad new guest leaves the old one serving.
    #[cfg(unix)]
    let reloader = {
        let app = app.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                let src = app.guest_source.clone();
                if let Some(g) = app.guest() {
                    match g.reload(&src).await {
                        Ok(()) => tracing::info!(guest = %src.name(), "guest reloaded"),
                        Err(e) => tracing::error!(error = %e, "guest reload failed; the previous guest keeps serving"),
                    }
                }
            }
        })
    };

    // Queue delivery (lease expiry, push) runs until the store closes.
    let push = config.queue.push()?;
    let queue_task = tokio::spawn(queue::run(kv.clone(), push));

    app.set_phase(Phase::Ready);
    println!("listening on http://{local}");
    tracing::info!(addr = %local, backend = %config.storage.describe(), guest = %config.guest.source().name(), backup = config.backup.s3_url.is_some(), "ready");

    let _ = http_task.await;
    tracing::info!("stopped accepting; in-flight requests done");
    #[cfg(unix)]
    reloader.abort();
    if let Some(t) = admin_task {
        t.abort();
    }
    queue_task.abort();
    // The stop deadline counts from the signal, in-flight requests included.
    let mut stop_at = stop_at;
    let deadline = stop_at.try_recv().unwrap_or_else(|_| tokio::time::Instant::now()) + config.http.stop_timeout;
    kv.shutdown(deadline).await?;
    Ok(())
}
