//! sidekv: a persistence sidecar. Key-value over HTTP, SQLite underneath,
//! continuous S3 backup and restore at launch, and every request handled by a
//! sandboxed, swappable wasm guest.
//!
//! Wiring (`run`): bind → serve 503s while starting → restore from S3 if the
//! database is missing → open the store → load the guest → ready → serve →
//! on shutdown: stop accepting, finish in-flight requests, drain the outbox
//! to S3, close the store.
//!
//! | module    | owns                                                      |
//! |-----------|-----------------------------------------------------------|
//! | `config`  | flags/env parsing and validation                          |
//! | `limits`  | every limit, as a named constant                          |
//! | `http`    | hyper server, head limits, error → status, admin endpoints|
//! | `conns`   | connection cap, idle eviction, response-write deadline    |
//! | `body`    | request bodies: deadline, minimum rate, in-flight budget  |
//! | `guest`   | wasmtime engine, instance pool, sandbox, WIT host impls   |
//! | `store`   | SQLite: writer thread (group commit), readers, changelog  |
//! | `replica` | S3: segments, snapshots, restore, fencing                 |
//! | `streams` | SSE watch and NDJSON export bodies                        |
//! | `metrics` | Prometheus counters and histograms                        |

pub mod body;
pub mod config;
pub mod conns;
pub mod guest;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod replica;
pub mod store;
pub mod streams;

use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::net::TcpListener;

use crate::config::Config;
use crate::guest::{GuestOptions, GuestRuntime, GuestSource};
use crate::replica::Replica;
use crate::store::{Store, StoreOptions};

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
    pub config: Config,
    store: OnceLock<Store>,
    guest: OnceLock<GuestRuntime>,
    replica: OnceLock<Arc<Replica>>,
    phase: Mutex<Phase>,
    /// Request-body bytes in flight (`KVSTORE_MAX_INFLIGHT_BODY_BYTES`).
    pub body_budget: body::BodyBudget,
}

impl App {
    pub fn new(config: Config) -> Self {
        let body_budget = body::BodyBudget::new(config.inflight_body_bytes());
        App {
            config,
            store: OnceLock::new(),
            guest: OnceLock::new(),
            replica: OnceLock::new(),
            phase: Mutex::new(Phase::Starting),
            body_budget,
        }
    }

    pub fn body_limits(&self) -> body::BodyLimits {
        body::BodyLimits { max_bytes: self.config.max_body_bytes, timeout: self.config.body_timeout, min_rate: self.config.body_min_rate }
    }

    pub fn store(&self) -> Option<&Store> {
        self.store.get()
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
        self.replica.get().and_then(|r| r.not_backed_up_reason()).map(|why| format!("not backed up: {why}"))
    }

    /// Ready = restore finished, store open, guest loaded, not fenced.
    pub fn readiness(&self) -> Result<(), String> {
        if self.guest.get().is_none() {
            return Err(self.not_ready_reason());
        }
        if let Some(r) = self.replica.get()
            && let Some(why) = r.fenced_reason()
        {
            return Err(format!("not ready: {why}"));
        }
        Ok(())
    }

    pub fn replication_gauges(&self) -> metrics::ReplicationGauges {
        let committed = self.store.get().map(|s| s.committed()).unwrap_or(0);
        match (self.replica.get(), self.store.get()) {
            (Some(r), Some(s)) => metrics::ReplicationGauges {
                enabled: true,
                committed,
                shipped: s.shipped(),
                lag_seconds: r.lag_seconds(),
                fenced: r.fenced_reason().is_some(),
                not_backed_up: r.not_backed_up_reason().is_some(),
            },
            _ => metrics::ReplicationGauges { committed, ..Default::default() },
        }
    }
}

pub fn guest_source(config: &Config) -> GuestSource {
    match &config.guest {
        Some(p) => GuestSource::File(p.clone()),
        None => GuestSource::Embedded,
    }
}

pub fn guest_options(config: &Config) -> anyhow::Result<GuestOptions> {
    Ok(GuestOptions {
        instance_mode: config.instance_mode,
        timeout: std::time::Duration::from_millis(config.guest_timeout_ms),
        memory_bytes: (config.guest_memory_mb as usize) << 20,
        max_response_bytes: config.max_response_bytes,
        max_instances: config.max_instances(),
        cache_dir: config.cache_dir(),
        config: config.guest_settings()?,
        inherit_stderr: config.guest_stderr,
    })
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
    let app = Arc::new(App::new(config.clone()));
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
    {
        let app = app.clone();
        tokio::spawn(async move {
            shutdown.await;
            // End long-polls and streams first, so graceful shutdown is not
            // held up by clients that would wait for minutes.
            if let Some(s) = app.store() {
                s.begin_shutdown();
            }
            let _ = stop_tx.send(true);
        });
    }

    // Restore (if needed) and open the store; requests get 503 meanwhile
    // (saying "restoring" from the start: setting up the S3 client takes time too).
    if config.s3_url.is_some() && !config.db.exists() {
        app.set_phase(Phase::Restoring);
    }
    let replica = match &config.s3_url {
        Some(url) => {
            let r = Arc::new(Replica::new(url, &config).await?);
            let _ = app.replica.set(r.clone());
            Some(r)
        }
        None => None,
    };
    if let Some(r) = &replica {
        r.prepare_local(&config.db).await?;
    }
    let store = {
        let opts = StoreOptions {
            max_value_bytes: config.max_value_bytes,
            readers: config.readers,
            durability: config.durability,
            replicated: replica.is_some(),
        };
        let db = config.db.clone();
        tokio::task::spawn_blocking(move || Store::open(&db, opts)).await??
    };
    if let Some(r) = &replica {
        r.attach(&store).await?;
    }
    let _ = app.store.set(store.clone());
    let guest = {
        let (src, opts, store) = (guest_source(&config), guest_options(&config)?, store.clone());
        tokio::task::spawn_blocking(move || GuestRuntime::new(&src, opts, store)).await??
    };
    guest.warm_up().await?;
    let _ = app.guest.set(guest);
    let replica_task = replica.as_ref().map(|r| r.clone().start(store.clone()));

    // Physically delete expired keys in the background.
    let sweeper = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(limits::EXPIRY_SWEEP_INTERVAL);
            loop {
                t.tick().await;
                store.sweep();
            }
        })
    };
    // SIGHUP reloads the guest; a bad new guest leaves the old one serving.
    #[cfg(unix)]
    let reloader = {
        let app = app.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                let src = guest_source(&app.config);
                if let Some(g) = app.guest() {
                    match g.reload(&src).await {
                        Ok(()) => tracing::info!(guest = %src.name(), "guest reloaded"),
                        Err(e) => tracing::error!(error = %e, "guest reload failed; the previous guest keeps serving"),
                    }
                }
            }
        })
    };

    app.set_phase(Phase::Ready);
    println!("listening on http://{local}");
    tracing::info!(addr = %local, db = %config.db.display(), guest = %guest_source(&config).name(), backup = config.s3_url.is_some(), "ready");

    let _ = http_task.await;
    tracing::info!("stopped accepting; in-flight requests done");
    sweeper.abort();
    #[cfg(unix)]
    reloader.abort();
    if let Some(t) = admin_task {
        t.abort();
    }
    if let (Some(r), Some(task)) = (&replica, replica_task) {
        r.shutdown(&store, task).await;
    }
    tokio::task::spawn_blocking(move || store.close()).await?;
    tracing::info!("store closed");
    Ok(())
}
