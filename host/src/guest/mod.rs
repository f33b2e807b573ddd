//! The guest runtime: runs the wasm component that handles every request.
//!
//! ```text
//!  http ──Request──▶ GuestRuntime::handle ──▶ take an instance (idle pool,
//!                    or instantiate from the pre-linked component)
//!                    set epoch deadline ─▶ handler.handle(req) ─▶ kv.* host
//!                    calls (host_kv.rs) ─▶ store ─▶ back ─▶ Response
//!                    ok: instance back to the pool / trap: instance dropped
//! ```
//!
//! One component is compiled at start (or loaded from the on-disk cache of
//! precompiled code) and pre-linked (`GuestPre`). Two instance strategies:
//!
//! - `reuse` (default): an instance serves many requests, one at a time.
//!   Measured here: ~4 µs per call on a warm instance versus ~57 µs for a
//!   fresh pooled instance + call, and the fresh path dominated the request
//!   cost (see BENCHMARKS.md). An instance that traps or times out is
//!   discarded, never reused; instances are recycled after
//!   `INSTANCE_MAX_USES` calls. Guest globals persist between the requests
//!   one instance serves, so guests must not keep per-request state in them.
//! - `fresh`: a new instance per request from the pooling allocator, for
//!   guests that are not written to be reused.
//!
//! Bounds (`slots.rs`): at most `KVSTORE_MAX_INSTANCES` calls run at once,
//! each on its own instance; a request waits `INSTANCE_WAIT` for a slot,
//! then gets `GuestError::Busy` (503). A new instance is created only while
//! live instances hold less than `KVSTORE_GUEST_MEMORY_BUDGET_MB`; past it a
//! call waits (same deadline) for an instance to come back, then gets
//! `GuestError::MemoryBudget` (503). Instances and their memory are gauges.
//!
//! Sandbox: an epoch deadline per call (a ticker thread advances the epoch
//! every `EPOCH_TICK`), a linear-memory cap and table cap (`StoreLimits`), a
//! resource-table cap, a response-size cap. WASI is linked because language
//! toolchains import it, but with no preopened directories, no network, no
//! environment: the guest sees only the `config` values the operator gives it.
//!
//! Reload (`SIGHUP`): a new component is compiled beside the old one and
//! swapped in atomically; requests in flight finish on the old one.

/// Run a store call, pushing the guest's deadline back by the time spent
/// waiting for the store: the deadline bounds the guest's own work, and a
/// write that committed must never be reported as a 504.
macro_rules! store_call_off_deadline {
    ($self:ident, $e:expr) => {{
        let started = std::time::Instant::now();
        let r = $e.await;
        $self.deadline += started.elapsed();
        r
    }};
}

mod cache;
mod host_kv;
mod host_queue;
mod host_typed_kv;
mod keyvalue;
mod slots;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, StoreLimitsBuilder, Trap, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::backend::Kv;
use crate::limits;
use crate::metrics::METRICS;
use slots::{InstanceSlots, MeteredLimits};

wasmtime::component::bindgen!({
    path: "../wit",
    world: "sidekv-host",
    imports: { default: async },
    exports: { default: async },
    with: { "wasi:keyvalue/store.bucket": keyvalue::Bucket },
});

/// The generated names for what a guest exports.
type Guest = SidekvHost;
type GuestPre<T> = SidekvHostPre<T>;

pub use exports::sidekv::store::handler::{BodyStream, Request, Response};

/// The default guest, built from `guest/` and embedded at compile time.
pub static DEFAULT_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/default_guest.wasm"));

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceMode {
    /// Keep warm instances and reuse them (fast; guests must be stateless between requests).
    Reuse,
    /// A fresh instance per request from the pooling allocator.
    Fresh,
}

impl InstanceMode {
    /// The name `KVSTORE_INSTANCE_MODE` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceMode::Reuse => "reuse",
            InstanceMode::Fresh => "fresh",
        }
    }
}

/// Errors at the guest boundary; `http_status` maps them to HTTP.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("guest {guest} did not answer within its {ms} ms deadline (KVSTORE_GUEST_TIMEOUT_MS)")]
    Timeout { guest: String, ms: u64 },
    #[error("guest {guest} failed: {msg}")]
    Trap { guest: String, msg: String },
    #[error("guest {guest} returned an invalid response: {msg}")]
    BadResponse { guest: String, msg: String },
    #[error("loading guest {guest}: {msg}")]
    Load { guest: String, msg: String },
    #[error("all {max} guest instances are busy (KVSTORE_MAX_INSTANCES); retry shortly")]
    Busy { max: usize },
    #[error("guest instances hold {mib} MiB of memory, the KVSTORE_GUEST_MEMORY_BUDGET_MB budget, and all are busy; retry shortly")]
    MemoryBudget { mib: u64 },
}

impl GuestError {}

/// Sandbox and runtime settings.
#[derive(Clone, Debug)]
pub struct GuestOptions {
    pub instance_mode: InstanceMode,
    pub timeout: Duration,
    pub memory_bytes: usize,
    pub max_response_bytes: usize,
    /// Most live instances (`KVSTORE_MAX_INSTANCES`).
    pub max_instances: usize,
    /// No new instance while live ones hold this much memory
    /// (`KVSTORE_GUEST_MEMORY_BUDGET_MB`).
    pub memory_budget_bytes: u64,
    pub cache_dir: Option<PathBuf>,
    /// The sidekv binary, to compile guests in a child process
    /// (`sidekv compile-guest`, `cache.rs`); `None` compiles in this one.
    pub compiler: Option<PathBuf>,
    /// Values served through the `config` interface.
    pub config: HashMap<String, String>,
    /// Let the guest write to the host's stderr (debugging).
    pub inherit_stderr: bool,
}

/// Per-instance host state.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: MeteredLimits,
    store: Kv,
    config: Arc<HashMap<String, String>>,
    /// When the current call must have finished. Time the guest spends
    /// blocked in a `kv` call (a queued commit, an S3 acknowledgement, a
    /// long-poll) pushes it back: the deadline bounds the guest's own work,
    /// and a write that committed is never reported as a 504.
    deadline: Instant,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

struct Instance {
    store: wasmtime::Store<HostState>,
    bindings: Guest,
    uses: u64,
}

/// One loaded component with its idle instances.
struct Loaded {
    name: String,
    pre: GuestPre<HostState>,
    idle: Mutex<Vec<Instance>>,
}

pub struct GuestRuntime {
    engine: Engine,
    linker: Linker<HostState>,
    current: RwLock<Arc<Loaded>>,
    opts: GuestOptions,
    config: Arc<HashMap<String, String>>,
    store: Kv,
    slots: InstanceSlots,
    /// Signalled whenever an instance goes back to the pool or is dropped.
    freed: tokio::sync::Notify,
    /// Instances being created now, and the memory the last new one started
    /// with: the budget counts them before their memory shows in the gauge,
    /// so concurrent calls cannot all create at once and overshoot it.
    creating: std::sync::atomic::AtomicU64,
    new_instance_bytes: std::sync::atomic::AtomicU64,
    _ticker: EpochTicker,
}

/// Where a guest comes from.
#[derive(Clone, Debug)]
pub enum GuestSource {
    Embedded,
    File(PathBuf),
}

impl GuestSource {
    pub fn name(&self) -> String {
        match self {
            GuestSource::Embedded => "default".into(),
            GuestSource::File(p) => p.display().to_string(),
        }
    }

    fn bytes(&self) -> Result<std::borrow::Cow<'static, [u8]>, GuestError> {
        match self {
            // Empty when the binary was built before the guest (see build.rs).
            GuestSource::Embedded if DEFAULT_GUEST.is_empty() => Err(GuestError::Load {
                guest: self.name(),
                msg: "this binary was built without the default guest (build it with `make build`), so set KVSTORE_GUEST to a guest component".into(),
            }),
            GuestSource::Embedded => Ok(std::borrow::Cow::Borrowed(DEFAULT_GUEST)),
            GuestSource::File(p) => std::fs::read(p)
                .map(std::borrow::Cow::Owned)
                .map_err(|e| GuestError::Load { guest: self.name(), msg: format!("reading {}: {e}", p.display()) }),
        }
    }
}

/// Advances the engine epoch every `EPOCH_TICK` until dropped.
struct EpochTicker {
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl EpochTicker {
    fn start(engine: Engine) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        std::thread::Builder::new()
            .name("sidekv-epoch".into())
            .spawn(move || {
                while !s.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(limits::EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawning the epoch ticker thread");
        EpochTicker { stop }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

pub fn make_engine(opts: &GuestOptions) -> Result<Engine, GuestError> {
    let mut cfg = wasmtime::Config::new();
    cfg.wasm_component_model(true);
    cfg.epoch_interruption(true);
    cfg.cranelift_opt_level(wasmtime::OptLevel::Speed);
    if opts.instance_mode == InstanceMode::Fresh {
        let mut pool = wasmtime::PoolingAllocationConfig::new();
        // A reload briefly keeps old instances beside new ones: room for both.
        pool.total_component_instances(limits::POOLING_MAX_INSTANCES);
        pool.total_core_instances(limits::POOLING_MAX_INSTANCES * 4);
        pool.total_memories(limits::POOLING_MAX_INSTANCES * 2);
        pool.total_tables(limits::POOLING_MAX_INSTANCES * 4);
        pool.max_memory_size(opts.memory_bytes);
        pool.max_memories_per_component(4);
        pool.max_tables_per_component(16);
        pool.max_core_instances_per_component(64);
        // Reset a slot by rewriting only the pages the last instance
        // dirtied (PAGEMAP_SCAN, Linux ≥ 6.7) instead of `madvise`: no
        // TLB-shootdown IPIs, no page faults on the next instance. Where the
        // kernel lacks it, `Auto` falls back to `madvise` beyond the first
        // `FRESH_KEEP_RESIDENT` bytes.
        pool.pagemap_scan(wasmtime::Enabled::Auto);
        pool.linear_memory_keep_resident(limits::FRESH_KEEP_RESIDENT);
        pool.table_keep_resident(limits::FRESH_KEEP_RESIDENT);
        cfg.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
    }
    Engine::new(&cfg).map_err(|e| GuestError::Load { guest: "-".into(), msg: format!("creating the wasm engine: {e:#}") })
}

impl GuestRuntime {
    /// Compile (or load from cache), link and pre-instantiate the guest.
    pub fn new(source: &GuestSource, opts: GuestOptions, store: Kv) -> Result<Self, GuestError> {
        let engine = make_engine(&opts)?;
        let mut linker: Linker<HostState> = Linker::new(&engine);
        let link_err = |e: wasmtime::Error| GuestError::Load { guest: source.name(), msg: format!("{e:#}") };
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(link_err)?;
        Guest::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s).map_err(link_err)?;
        let loaded = load(&engine, &linker, source, &opts)?;
        let ticker = EpochTicker::start(engine.clone());
        let config = Arc::new(opts.config.clone());
        let max = match opts.instance_mode {
            InstanceMode::Reuse => opts.max_instances,
            InstanceMode::Fresh => opts.max_instances.min(limits::POOLING_MAX_INSTANCES as usize / 2),
        };
        let slots = InstanceSlots::new(max);
        Ok(GuestRuntime {
            engine,
            linker,
            current: RwLock::new(Arc::new(loaded)),
            opts,
            config,
            store,
            slots,
            freed: tokio::sync::Notify::new(),
            creating: std::sync::atomic::AtomicU64::new(0),
            new_instance_bytes: std::sync::atomic::AtomicU64::new(0),
            _ticker: ticker,
        })
    }

    /// Instantiate once at start, so a guest that cannot even be
    /// instantiated (start code traps, memory cap too small) fails the
    /// launch instead of every request.
    pub async fn warm_up(&self) -> Result<(), GuestError> {
        let loaded = self.current.read().unwrap().clone();
        let inst = self.instance(&loaded).await?;
        if self.opts.instance_mode == InstanceMode::Reuse {
            loaded.idle.lock().unwrap().push(inst);
        }
        Ok(())
    }

    pub fn guest_name(&self) -> String {
        self.current.read().unwrap().name.clone()
    }

    /// Replace the guest. On failure the old guest keeps serving.
    pub async fn reload(&self, source: &GuestSource) -> Result<(), GuestError> {
        let loaded = load(&self.engine, &self.linker, source, &self.opts)?;
        // Prove it instantiates before swapping it in; keep that instance.
        let inst = self.instance(&loaded).await?;
        loaded.idle.lock().unwrap().push(inst);
        *self.current.write().unwrap() = Arc::new(loaded);
        Ok(())
    }

    fn new_store(&self) -> wasmtime::Store<HostState> {
        let mut wasi = wasmtime_wasi::WasiCtxBuilder::new();
        if self.opts.inherit_stderr {
            wasi.inherit_stderr();
        }
        let mut table = ResourceTable::new();
        table.set_max_capacity(limits::GUEST_MAX_RESOURCES);
        let state = HostState {
            wasi: wasi.build(),
            table,
            limits: MeteredLimits::new(
                StoreLimitsBuilder::new()
                    .memory_size(self.opts.memory_bytes)
                    .table_elements(limits::GUEST_MAX_TABLE_ELEMENTS)
                    .trap_on_grow_failure(true)
                    .build(),
            ),
            store: self.store.clone(),
            config: self.config.clone(),
            deadline: Instant::now() + self.opts.timeout,
        };
        let mut store = wasmtime::Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        // Every tick a running guest yields to the executor (so a guest that
        // spins cannot hold a runtime thread) until its deadline passes.
        store.epoch_deadline_callback(|ctx| {
            if Instant::now() >= ctx.data().deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                // tokio's yield_now puts the task at the back of the run
                // queue; a plain self-wake would take the LIFO slot and
                // starve every other request on this worker.
                Ok(UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now())))
            }
        });
        store.set_epoch_deadline(1);
        store
    }

    /// An idle instance, or a new one while the memory budget allows; else
    /// wait (up to `INSTANCE_WAIT`) for one to come back or go away.
    async fn take_instance(&self, loaded: &Loaded) -> Result<Instance, GuestError> {
        let deadline = tokio::time::Instant::now() + limits::INSTANCE_WAIT;
        loop {
            // Registered before looking, so a release in between is not missed.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.opts.instance_mode == InstanceMode::Reuse
                && let Some(i) = loaded.idle.lock().unwrap().pop()
            {
                return Ok(i);
            }
            let held = METRICS.guest_memory_bytes.load(Relaxed);
            let creating = self.creating.fetch_add(1, SeqCst);
            let reserved = (creating + 1) * self.new_instance_bytes.load(Relaxed);
            let first = creating == 0 && METRICS.guest_instances.load(Relaxed) == 0;
            if first || held + reserved < self.opts.memory_budget_bytes {
                let made = self.instance(loaded).await;
                self.creating.fetch_sub(1, SeqCst);
                return made;
            }
            self.creating.fetch_sub(1, SeqCst);
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                METRICS.guest_busy_rejections.fetch_add(1, Relaxed);
                return Err(GuestError::MemoryBudget { mib: held >> 20 });
            }
        }
    }

    async fn instance(&self, loaded: &Loaded) -> Result<Instance, GuestError> {
        if self.opts.instance_mode == InstanceMode::Reuse
            && let Some(i) = loaded.idle.lock().unwrap().pop()
        {
            return Ok(i);
        }
        // Instantiation runs guest start code: it gets the same deadline.
        let mut store = self.new_store();
        let bindings = loaded
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| GuestError::Load { guest: loaded.name.clone(), msg: format!("instantiating: {}", trap_message(&e)) })?;
        // What the next new instance will start with, for the memory budget.
        self.new_instance_bytes.store(store.data().limits.memory() as u64, Relaxed);
        Ok(Instance { store, bindings, uses: 0 })
    }

    /// Handle one request in the guest.
    pub async fn handle(&self, req: Request) -> Result<Response, GuestError> {
        // The slot is held until the call ends (the instance is back in the
        // pool or dropped by then), so live instances never exceed the cap.
        let _slot = self.slots.acquire().await.ok_or(GuestError::Busy { max: self.slots.max })?;
        let loaded = self.current.read().unwrap().clone();
        // Declared before the instance, so it fires after the instance is
        // back in the pool or dropped (and its memory off the gauge).
        let _freed = NotifyOnDrop(&self.freed);
        let mut inst = self.take_instance(&loaded).await?;
        let started = Instant::now();
        inst.store.data_mut().deadline = started + self.opts.timeout;
        inst.store.set_epoch_deadline(1);
        let result = inst.bindings.sidekv_store_handler().call_handle(&mut inst.store, &req).await;
        METRICS.guest_call(started.elapsed());
        match result {
            Ok(resp) => {
                let body_len = resp.body.len();
                if body_len > self.opts.max_response_bytes {
                    METRICS.guest_failure("bad_response");
                    tracing::warn!(guest = %loaded.name, bytes = body_len, "guest response over the size limit");
                    return Err(GuestError::BadResponse {
                        guest: loaded.name.clone(),
                        msg: format!(
                            "the body is {body_len} bytes, over the {}-byte limit (KVSTORE_MAX_RESPONSE_BYTES)",
                            self.opts.max_response_bytes
                        ),
                    });
                }
                inst.uses += 1;
                // Over the memory budget (instances grow, e.g. by lifting a
                // large body), an instance is dropped rather than kept idle:
                // the budget bounds what idle instances hold, not only how
                // many are created.
                let over_budget = METRICS.guest_memory_bytes.load(Relaxed) > self.opts.memory_budget_bytes;
                if self.opts.instance_mode == InstanceMode::Reuse && inst.uses < limits::INSTANCE_MAX_USES && !over_budget {
                    let mut idle = loaded.idle.lock().unwrap();
                    if idle.len() < limits::INSTANCE_POOL_IDLE {
                        idle.push(inst);
                    }
                }
                Ok(resp)
            }
            Err(e) => {
                // The instance may be in any state now: never reuse it.
                drop(inst);
                if matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
                    METRICS.guest_failure("timeout");
                    tracing::warn!(guest = %loaded.name, timeout_ms = self.opts.timeout.as_millis() as u64, "guest timed out");
                    Err(GuestError::Timeout { guest: loaded.name.clone(), ms: self.opts.timeout.as_millis() as u64 })
                } else {
                    METRICS.guest_failure("trap");
                    let msg = trap_message(&e);
                    tracing::warn!(guest = %loaded.name, error = %msg, "guest trapped");
                    Err(GuestError::Trap { guest: loaded.name.clone(), msg })
                }
            }
        }
    }
}

/// Wakes the calls waiting for an instance (memory budget) when dropped.
struct NotifyOnDrop<'a>(&'a tokio::sync::Notify);

impl Drop for NotifyOnDrop<'_> {
    fn drop(&mut self) {
        self.0.notify_waiters();
    }
}

fn trap_message(e: &wasmtime::Error) -> String {
    match e.downcast_ref::<Trap>() {
        Some(Trap::UnreachableCodeReached) => "it trapped (unreachable; a Rust guest panicked or aborted)".into(),
        Some(t) => format!("it trapped: {t}"),
        None => {
            // The root cause says what happened; the outer layers only add
            // "error while executing" and a wasm backtrace.
            let s = e.root_cause().to_string();
            let s = s.lines().next().unwrap_or("").trim();
            let s = if s.contains("memory growth failure") || s.contains("memory minimum size") || s.contains("growing memory") {
                "it ran out of memory (KVSTORE_GUEST_MEMORY_MB)"
            } else {
                s
            };
            s.chars().take(300).collect()
        }
    }
}

/// `sidekv compile-guest` with the flags that rebuild this engine.
fn child_compiler(opts: &GuestOptions) -> Option<cache::ChildCompiler> {
    let args =
        ["--instance-mode", opts.instance_mode.as_str(), "--guest-memory-mb", &(opts.memory_bytes >> 20).to_string()].map(String::from);
    opts.compiler.clone().map(|exe| cache::ChildCompiler { exe, args: args.to_vec() })
}

/// `sidekv compile-guest`: compile the component on stdin for the engine
/// `opts` make, machine code to stdout (`cache.rs`).
pub fn compile_guest_main(opts: &GuestOptions) -> Result<(), String> {
    let engine = make_engine(opts).map_err(|e| e.to_string())?;
    cache::compile_child_main(&engine)
}

fn load(engine: &Engine, linker: &Linker<HostState>, source: &GuestSource, opts: &GuestOptions) -> Result<Loaded, GuestError> {
    let name = source.name();
    let bytes = source.bytes()?;
    let started = Instant::now();
    let (component, origin) = cache::compile(engine, &bytes, opts.cache_dir.as_deref(), child_compiler(opts).as_ref())
        .map_err(|e| GuestError::Load { guest: name.clone(), msg: format!("compiling: {e:#}") })?;
    let pre = linker.instantiate_pre(&component).map_err(|e| {
        let msg = format!("{e:#}");
        // The version is part of every imported name: say so plainly.
        let hint = if msg.contains("sidekv:store/") && msg.contains("@0.1.") {
            "it was built against sidekv:store 0.1; rebuild it against wit/sidekv.wit (0.2.0)"
        } else {
            "does it target the sidekv:store/guest world?"
        };
        GuestError::Load { guest: name.clone(), msg: format!("linking ({hint}): {msg}") }
    })?;
    let pre = GuestPre::new(pre)
        .map_err(|e| GuestError::Load { guest: name.clone(), msg: format!("it does not export sidekv:store/handler: {e:#}") })?;
    let ms = started.elapsed().as_millis() as u64;
    let from_cache = origin == cache::Origin::Cache;
    tracing::info!(guest = %name, bytes = bytes.len(), from_cache, compiled_in = origin.as_str(), ms, "guest loaded");
    Ok(Loaded { name, pre, idle: Mutex::new(Vec::new()) })
}
