//! Settings, by concern: every option is a flag and an environment variable
//! (clap derive), grouped as denokv nests its options — HTTP, guest,
//! storage, backup, admin — each group validating itself. `Config` turns
//! them into the plain option structs the components take
//! (`BackendOptions`, `GuestOptions`, `HttpOptions`): nothing below this
//! module sees the command line or derives clap traits.
//!
//! ```text
//!  flags / env ─▶ Config { http, guest, storage, backup, admin } ─validate─▶
//!      backend_options() ─▶ backend::open  (SqliteOptions{StoreOptions, ReplicaOptions} | Postgres)
//!      guest_options()   ─▶ GuestRuntime::new
//!      http_options()    ─▶ App / http::serve
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::backend::BackendOptions;
use crate::backend::sqlite::SqliteOptions;
use crate::backend::sqlite::replica::ReplicaOptions;
use crate::backend::sqlite::store::{Durability, StoreOptions};
use crate::guest::{GuestOptions, GuestSource, InstanceMode};
use crate::limits;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{setting}: {msg}")]
    Invalid { setting: &'static str, msg: String },
}

fn invalid(setting: &'static str, msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { setting, msg: msg.into() }
}

/// `check(cond, setting, msg)`: `Err` naming the setting when `cond` fails.
fn check(ok: bool, setting: &'static str, msg: &str) -> Result<(), ConfigError> {
    if ok { Ok(()) } else { Err(invalid(setting, msg)) }
}

/// Parse "1500", "1500ms", "2s", "1m" into a duration (bare numbers are ms).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "ms"),
    };
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration like 500ms, 2s or 1m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{s:?} is not a duration like 500ms, 2s or 1m")),
    }
}

/// `local` or `s3` (the store's `Durability` stays free of clap).
fn parse_durability(s: &str) -> Result<Durability, String> {
    match s {
        "local" => Ok(Durability::Local),
        "s3" => Ok(Durability::S3),
        _ => Err(format!("{s:?} is neither `local` nor `s3`")),
    }
}

/// `reuse` or `fresh` (the guest runtime's `InstanceMode` stays free of clap).
fn parse_instance_mode(s: &str) -> Result<InstanceMode, String> {
    [InstanceMode::Reuse, InstanceMode::Fresh]
        .into_iter()
        .find(|m| m.as_str() == s)
        .ok_or_else(|| format!("{s:?} is neither `reuse` nor `fresh`"))
}

/// sidekv: a key-value store for your app, over HTTP on localhost, strongly
/// consistent on SQLite, continuously backed up to S3 and restored from S3 at
/// launch. Every request is handled by a sandboxed wasm guest that you can
/// replace with your own authorization and routing.
#[derive(Debug, Parser, Clone)]
#[command(name = "sidekv", version, about, long_about = None, max_term_width = 100)]
pub struct Config {
    /// Secret clients send as `Authorization: <secret>` or `Bearer <secret>`.
    /// When unset, a random one is generated and printed once at start.
    #[arg(long, env = "KVSTORE_SECRET", hide_env_values = true)]
    pub secret: Option<String>,

    #[command(flatten)]
    pub http: HttpArgs,

    #[command(flatten)]
    pub guest: GuestArgs,

    #[command(flatten)]
    pub storage: StorageArgs,

    #[command(flatten)]
    pub backup: BackupArgs,

    #[command(flatten)]
    pub queue: QueueArgs,

    #[command(flatten)]
    pub admin: AdminArgs,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The main port: where it listens, and what a connection may cost.
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "HTTP")]
pub struct HttpArgs {
    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub host: String,

    /// Port to listen on (0 picks a free one; the log line says which).
    #[arg(long, env = "PORT", default_value_t = 8000)]
    pub port: u16,

    /// Largest request body, in bytes (larger → 413).
    #[arg(long, env = "KVSTORE_MAX_BODY_BYTES", default_value_t = limits::DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,

    /// Most open client connections; more are closed at once.
    #[arg(long, env = "KVSTORE_MAX_CONNECTIONS", default_value_t = limits::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,

    /// The whole request body must arrive within this time (e.g. 60s);
    /// past it → 408 and the connection is closed.
    #[arg(long, env = "KVSTORE_BODY_TIMEOUT", default_value = limits::DEFAULT_BODY_TIMEOUT, value_parser = parse_duration)]
    pub body_timeout: Duration,

    /// Minimum average request-body rate in bytes/s, applied after a 2 s
    /// grace (slower → 408, connection closed). 0 turns it off.
    #[arg(long, env = "KVSTORE_BODY_MIN_RATE", default_value_t = limits::DEFAULT_BODY_MIN_RATE)]
    pub body_min_rate: u64,

    /// A connection whose response writes make no progress for this long
    /// (the client stopped reading) is closed.
    #[arg(long, env = "KVSTORE_WRITE_TIMEOUT", default_value = limits::DEFAULT_WRITE_TIMEOUT, value_parser = parse_duration)]
    pub write_timeout: Duration,

    /// Bytes of request bodies in flight at once (being read or handled);
    /// a body that does not fit waits up to 2 s, then gets 503.
    /// Default: 4 × KVSTORE_MAX_BODY_BYTES.
    #[arg(long, env = "KVSTORE_MAX_INFLIGHT_BODY_BYTES")]
    pub max_inflight_body_bytes: Option<usize>,

    /// Stop deadline: from SIGTERM to exit, finishing in-flight requests and
    /// shipping every commit to S3 (a snapshot too, if the backup must
    /// restart from one). Keep it below the platform's grace period
    /// (Kubernetes: 30 s). Past it, or with S3 down, sidekv exits with
    /// status 3 and says how many commits are only on the local disk.
    #[arg(long, env = "KVSTORE_STOP_TIMEOUT", default_value = limits::DEFAULT_STOP_TIMEOUT, value_parser = parse_duration)]
    pub stop_timeout: Duration,
}

impl HttpArgs {
    fn validate(&self) -> Result<(), ConfigError> {
        check(self.max_connections > 0, "KVSTORE_MAX_CONNECTIONS", "must be at least 1")?;
        check(!self.body_timeout.is_zero(), "KVSTORE_BODY_TIMEOUT", "must be more than 0")?;
        check(!self.write_timeout.is_zero(), "KVSTORE_WRITE_TIMEOUT", "must be more than 0")?;
        check(
            self.inflight_body_bytes() >= self.max_body_bytes,
            "KVSTORE_MAX_INFLIGHT_BODY_BYTES",
            "must be at least KVSTORE_MAX_BODY_BYTES",
        )?;
        check(self.stop_timeout >= Duration::from_secs(1), "KVSTORE_STOP_TIMEOUT", "must be at least 1s")
    }

    /// KVSTORE_MAX_INFLIGHT_BODY_BYTES, or its default tied to the body limit.
    pub fn inflight_body_bytes(&self) -> usize {
        self.max_inflight_body_bytes.unwrap_or(self.max_body_bytes.saturating_mul(limits::INFLIGHT_BODY_FACTOR))
    }

    pub fn listen_addr(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// The guest: which component, and the sandbox it runs in.
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Guest")]
pub struct GuestArgs {
    /// A guest component (.wasm) to use instead of the built-in one.
    #[arg(long = "guest", env = "KVSTORE_GUEST")]
    pub path: Option<PathBuf>,

    /// Let GET/HEAD of single keys through without a secret (the seed's behaviour).
    #[arg(long, env = "KVSTORE_PUBLIC_READS", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub public_reads: bool,

    /// Most live guest instances (each holds its own linear memory); a
    /// request waits up to 2 s for one, then gets 503. Default: 32 per core.
    #[arg(long, env = "KVSTORE_MAX_INSTANCES")]
    pub max_instances: Option<usize>,

    /// No new guest instance is created, and none is kept idle, while live
    /// instances hold this many MiB of linear memory; a request waits up to
    /// 2 s for one to come back, then gets 503.
    #[arg(long = "guest-memory-budget-mb", env = "KVSTORE_GUEST_MEMORY_BUDGET_MB", default_value_t = limits::DEFAULT_GUEST_MEMORY_BUDGET_MB)]
    pub memory_budget_mb: u64,

    /// Per-request guest deadline in milliseconds (past it → 504).
    #[arg(long = "guest-timeout-ms", env = "KVSTORE_GUEST_TIMEOUT_MS", default_value_t = limits::DEFAULT_GUEST_TIMEOUT_MS)]
    pub timeout_ms: u64,

    /// Linear-memory cap per guest instance, in MiB.
    #[arg(long = "guest-memory-mb", env = "KVSTORE_GUEST_MEMORY_MB", default_value_t = limits::DEFAULT_GUEST_MEMORY_MB)]
    pub memory_mb: u64,

    /// Largest guest response body, in bytes (larger → 500).
    #[arg(long, env = "KVSTORE_MAX_RESPONSE_BYTES", default_value_t = limits::DEFAULT_MAX_RESPONSE_BYTES)]
    pub max_response_bytes: usize,

    /// `reuse`: warm instances serve many requests (fast, the default);
    /// `fresh`: a new instance per request.
    #[arg(long, env = "KVSTORE_INSTANCE_MODE", default_value = "reuse", value_parser = parse_instance_mode)]
    pub instance_mode: InstanceMode,

    /// Directory for compiled guests (trusted machine code: keep it private).
    /// Empty disables the cache.
    #[arg(long, env = "KVSTORE_CACHE_DIR", default_value = "/tmp/sidekv-cache")]
    pub cache_dir: PathBuf,

    /// Not a setting: the running binary, set by `main` so that guests are
    /// compiled in a child process (`GuestOptions::compiler`).
    #[arg(skip)]
    pub compiler: Option<PathBuf>,

    /// Settings for the guest, `name=value`, comma-separated or repeated.
    /// Variables named `KVSTORE_GUEST_<NAME>` are passed too, as `<name>`
    /// (lower-case, `_` → `-`).
    #[arg(long = "guest-config", env = "KVSTORE_GUEST_CONFIG", value_delimiter = ',')]
    pub config: Vec<String>,

    /// Let the guest write to sidekv's stderr (for debugging guests).
    #[arg(long = "guest-stderr", env = "KVSTORE_GUEST_STDERR", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub stderr: bool,
}

impl GuestArgs {
    fn validate(&self) -> Result<(), ConfigError> {
        check(self.max_instances() > 0, "KVSTORE_MAX_INSTANCES", "must be at least 1")?;
        check(self.timeout_ms > 0, "KVSTORE_GUEST_TIMEOUT_MS", "must be at least 1")?;
        check(self.memory_budget_mb > 0, "KVSTORE_GUEST_MEMORY_BUDGET_MB", "must be at least 1")?;
        check((2..=4096).contains(&self.memory_mb), "KVSTORE_GUEST_MEMORY_MB", "must be between 2 and 4096")?;
        if let Some(g) = &self.path
            && !g.is_file()
        {
            return Err(invalid("KVSTORE_GUEST", format!("{} is not a file", g.display())));
        }
        Ok(())
    }

    /// KVSTORE_MAX_INSTANCES, or its default tied to the cores.
    pub fn max_instances(&self) -> usize {
        self.max_instances.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
            cores * limits::INSTANCES_PER_CORE
        })
    }

    pub fn source(&self) -> GuestSource {
        match &self.path {
            Some(p) => GuestSource::File(p.clone()),
            None => GuestSource::Embedded,
        }
    }

    pub fn cache_dir(&self) -> Option<PathBuf> {
        if self.cache_dir.as_os_str().is_empty() { None } else { Some(self.cache_dir.clone()) }
    }
}

/// Where the data lives.
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Storage")]
pub struct StorageArgs {
    /// Where the data lives: unset (or `sqlite`) for the local SQLite file
    /// `KVSTORE_DB`, backed up to `KVSTORE_S3_URL`; or a PostgreSQL URL
    /// (`postgres://user:password@host:port/db?sslmode=require`, libpq's
    /// `PG*` variables fill what the URL leaves out) that many sidecars share.
    #[arg(long, env = "KVSTORE_BACKEND", hide_env_values = true)]
    pub backend: Option<String>,

    /// Connections one sidecar keeps to PostgreSQL (with a postgres:// backend).
    #[arg(long, env = "KVSTORE_PG_POOL_SIZE", default_value_t = limits::DEFAULT_PG_POOL_SIZE)]
    pub pg_pool_size: usize,

    /// SQLite database file. When it is missing and S3 backup is on, it is
    /// restored from S3 before serving.
    #[arg(long, env = "KVSTORE_DB", default_value = "/tmp/sidekv.sqlite3")]
    pub db: PathBuf,

    /// SQLite read connections (each on its own thread).
    #[arg(long, env = "KVSTORE_READERS", default_value_t = 2)]
    pub readers: usize,

    /// Largest value, in bytes (larger → 413).
    #[arg(long, env = "KVSTORE_MAX_VALUE_BYTES", default_value_t = limits::DEFAULT_MAX_VALUE_BYTES)]
    pub max_value_bytes: usize,
}

impl StorageArgs {
    fn validate(&self) -> Result<(), ConfigError> {
        check((2..=1000).contains(&self.pg_pool_size), "KVSTORE_PG_POOL_SIZE", "must be between 2 and 1000")?;
        match self.backend.as_deref() {
            None | Some("sqlite") => {}
            Some(_) if self.postgres_url().is_some() => {}
            Some(other) => {
                return Err(invalid(
                    "KVSTORE_BACKEND",
                    format!("{:?} is neither `sqlite` nor a postgres://… URL", other.chars().take(60).collect::<String>()),
                ));
            }
        }
        check(
            self.max_value_bytes > 0 && self.max_value_bytes <= limits::MAX_VALUE_BYTES_CEILING,
            "KVSTORE_MAX_VALUE_BYTES",
            &format!("must be between 1 and {}", limits::MAX_VALUE_BYTES_CEILING),
        )?;
        check((1..=64).contains(&self.readers), "KVSTORE_READERS", "must be between 1 and 64")
    }

    /// The PostgreSQL URL, when `KVSTORE_BACKEND` names one.
    pub fn postgres_url(&self) -> Option<&str> {
        self.backend.as_deref().filter(|b| b.starts_with("postgres://") || b.starts_with("postgresql://"))
    }

    /// The backend for logs, without credentials.
    pub fn describe(&self) -> String {
        match self.postgres_url() {
            Some(url) => {
                let host = url.split_once('@').map_or(url.split_once("://").map_or(url, |x| x.1), |x| x.1);
                format!("postgres://…@{}", host.split('?').next().unwrap_or(host))
            }
            None => format!("sqlite {}", self.db.display()),
        }
    }
}

/// The SQLite backend's continuous backup.
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Backup (SQLite)")]
pub struct BackupArgs {
    /// Backup location: `s3://bucket/prefix`, or `file:///dir` for a directory
    /// (a mounted volume); unset keeps data local only.
    /// Endpoint and credentials come from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY (or LITESTREAM_ACCESS_KEY_ID /
    /// LITESTREAM_SECRET_ACCESS_KEY), AWS_REGION (default us-east-1).
    #[arg(long, env = "KVSTORE_S3_URL")]
    pub s3_url: Option<String>,

    /// When a write is acknowledged: `local` (after the local fsync; S3 lags
    /// by at most the sync interval) or `s3` (after its segment is in S3).
    #[arg(long, env = "KVSTORE_DURABILITY", default_value = "local", value_parser = parse_durability)]
    pub durability: Durability,

    /// How often the outbox ships to S3 in `local` mode (e.g. 1s, 250ms).
    #[arg(long, env = "KVSTORE_SYNC_INTERVAL", default_value = limits::DEFAULT_SYNC_INTERVAL, value_parser = parse_duration)]
    pub sync_interval: Duration,

    /// Snapshots to keep in S3 (with the segments after the oldest kept one).
    #[arg(long, env = "KVSTORE_SNAPSHOT_RETENTION", default_value_t = limits::DEFAULT_SNAPSHOT_RETENTION)]
    pub snapshot_retention: usize,

    /// Take a snapshot after this much segment data (bytes) was shipped.
    #[arg(long, env = "KVSTORE_SNAPSHOT_BYTES", default_value_t = limits::SNAPSHOT_AFTER_BYTES)]
    pub snapshot_bytes: u64,

    /// Part size (bytes) of multipart uploads: snapshots larger than one
    /// part go to S3 in parts of this size (5 MiB .. 5 GiB).
    #[arg(long, env = "KVSTORE_S3_PART_BYTES", default_value_t = limits::DEFAULT_S3_PART_BYTES)]
    pub s3_part_bytes: u64,
}

impl BackupArgs {
    fn validate(&self) -> Result<(), ConfigError> {
        check(!self.sync_interval.is_zero(), "KVSTORE_SYNC_INTERVAL", "must be more than 0")?;
        check(
            (limits::MIN_S3_PART_BYTES..=limits::MAX_S3_PART_BYTES).contains(&self.s3_part_bytes),
            "KVSTORE_S3_PART_BYTES",
            "must be between 5 MiB (5242880) and 5 GiB, as S3 requires",
        )?;
        check(self.snapshot_retention > 0, "KVSTORE_SNAPSHOT_RETENTION", "must be at least 1")?;
        check(self.durability == Durability::Local || self.s3_url.is_some(), "KVSTORE_DURABILITY", "is `s3` but KVSTORE_S3_URL is not set")
    }

    /// The replica's options, when backup is on.
    pub fn replica_options(&self) -> Option<ReplicaOptions> {
        self.s3_url.as_ref().map(|url| ReplicaOptions {
            url: url.clone(),
            durability: self.durability,
            sync_interval: self.sync_interval,
            snapshot_bytes: self.snapshot_bytes,
            retention: self.snapshot_retention,
            part_bytes: self.s3_part_bytes,
        })
    }
}

/// Queue delivery: push to the application (pull needs no settings).
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Queues")]
pub struct QueueArgs {
    /// Deliver queue messages by POSTing each to this URL (`http://…`; e.g.
    /// http://127.0.0.1:3000/queue). A 2xx answer acknowledges it; anything
    /// else, a timeout or a refused connection is a failed attempt. Unset:
    /// messages are only delivered to pull consumers (`POST /_queue/take`).
    #[arg(long = "queue-url", env = "KVSTORE_QUEUE_URL")]
    pub url: Option<String>,

    /// Push deliveries in flight at once.
    #[arg(long = "queue-concurrency", env = "KVSTORE_QUEUE_CONCURRENCY", default_value_t = limits::DEFAULT_QUEUE_CONCURRENCY)]
    pub concurrency: usize,

    /// Time the application gets to answer one push delivery; past it the
    /// attempt has failed.
    #[arg(long = "queue-timeout", env = "KVSTORE_QUEUE_TIMEOUT", default_value = limits::DEFAULT_QUEUE_TIMEOUT, value_parser = parse_duration)]
    pub timeout: Duration,
}

impl QueueArgs {
    fn validate(&self) -> Result<(), ConfigError> {
        self.push()?;
        check((1..=1024).contains(&self.concurrency), "KVSTORE_QUEUE_CONCURRENCY", "must be between 1 and 1024")?;
        check(!self.timeout.is_zero(), "KVSTORE_QUEUE_TIMEOUT", "must be more than 0")
    }

    /// The push delivery these settings ask for (`None`: pull only).
    pub fn push(&self) -> Result<Option<crate::queue::Push>, ConfigError> {
        let Some(u) = &self.url else { return Ok(None) };
        Ok(Some(crate::queue::Push {
            target: crate::queue::PushTarget::parse(u).map_err(|e| invalid("KVSTORE_QUEUE_URL", e))?,
            concurrency: self.concurrency,
            timeout: self.timeout,
        }))
    }
}

/// Operations: the admin address and the logs.
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Admin and logs")]
pub struct AdminArgs {
    /// Address for /healthz, /readyz and /metrics (e.g. 127.0.0.1:9090);
    /// unset disables them. The main port belongs to the guest.
    #[arg(long = "admin-addr", env = "KVSTORE_ADMIN_ADDR")]
    pub addr: Option<SocketAddr>,

    /// Log format: `text` or `json`. Filter with RUST_LOG (default `info`).
    #[arg(long, env = "KVSTORE_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

#[derive(Debug, Subcommand, Clone)]
pub enum Command {
    /// Serve (the default when no subcommand is given).
    Serve,
    /// Restore the database from S3 into a file, without serving.
    Restore {
        /// Where to write the restored database (must not exist).
        #[arg(long)]
        to: PathBuf,
        /// Restore the state as of this versionstamp (point in time);
        /// default: the newest state in S3.
        #[arg(long)]
        at: Option<String>,
    },
    /// Upload a snapshot of the local database to S3 now (the server must
    /// not be running on it).
    Snapshot,
    /// Exit 0 if the server's admin endpoint says it is ready (for HEALTHCHECK).
    Health {
        /// Admin address to ask (default: KVSTORE_ADMIN_ADDR).
        #[arg(long)]
        addr: Option<SocketAddr>,
    },
    /// Validate the settings: S3 reachable and writable, guest loads.
    CheckConfig,
    /// Internal: compile the guest component on stdin for this engine
    /// (`--instance-mode`, `--guest-memory-mb`), machine code on stdout. The
    /// server runs it as a child so that the compiler's memory is not its own.
    #[command(hide = true)]
    CompileGuest,
}

/// What the server says about itself (the console, logs): no secrets.
#[derive(Clone, Debug)]
pub struct ServerInfo {
    pub postgres: bool,
    /// The backend without credentials (`StorageArgs::describe`).
    pub backend_description: String,
    /// The backup's settings, when it is on (the URL holds no credentials).
    pub backup: Option<ReplicaOptions>,
}

/// What the HTTP server and `App` take.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    pub max_connections: usize,
    pub write_timeout: Duration,
    pub stop_timeout: Duration,
    pub inflight_body_bytes: usize,
    pub body: crate::body::BodyLimits,
}

impl Config {
    /// Every group's own checks, then those across groups.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.http.validate()?;
        self.guest.validate()?;
        self.storage.validate()?;
        self.backup.validate()?;
        self.queue.validate()?;
        if self.storage.postgres_url().is_some() && self.backup.s3_url.is_some() {
            return Err(invalid(
                "KVSTORE_S3_URL",
                "S3 backup is for the SQLite backend; with KVSTORE_BACKEND=postgres://… the database's own backup keeps the data \
                 (PostgreSQL: WAL archiving or pgBackRest; CockroachDB: BACKUP). Unset KVSTORE_S3_URL",
            ));
        }
        check(
            self.http.max_body_bytes >= self.storage.max_value_bytes,
            "KVSTORE_MAX_BODY_BYTES",
            "must be at least KVSTORE_MAX_VALUE_BYTES",
        )?;
        if let Some(s) = &self.secret
            && s.is_empty()
        {
            return Err(invalid("KVSTORE_SECRET", "is set but empty; unset it to get a generated one"));
        }
        self.guest_settings()?;
        Ok(())
    }

    /// The storage backend these settings select.
    pub fn backend_options(&self) -> BackendOptions {
        let max_value_bytes = self.storage.max_value_bytes;
        match self.storage.postgres_url() {
            Some(url) => BackendOptions::Postgres { url: url.to_string(), pool_size: self.storage.pg_pool_size, max_value_bytes },
            None => BackendOptions::Sqlite(self.sqlite_options()),
        }
    }

    /// The SQLite file, its store and (with backup on) its replica.
    pub fn sqlite_options(&self) -> SqliteOptions {
        let backup = self.backup.replica_options();
        SqliteOptions {
            db: self.storage.db.clone(),
            store: StoreOptions {
                max_value_bytes: self.storage.max_value_bytes,
                readers: self.storage.readers,
                durability: self.backup.durability,
                replicated: backup.is_some(),
            },
            backup,
        }
    }

    pub fn guest_options(&self) -> Result<GuestOptions, ConfigError> {
        let g = &self.guest;
        Ok(GuestOptions {
            instance_mode: g.instance_mode,
            timeout: Duration::from_millis(g.timeout_ms),
            memory_bytes: (g.memory_mb as usize) << 20,
            max_response_bytes: g.max_response_bytes,
            max_instances: g.max_instances(),
            memory_budget_bytes: g.memory_budget_mb.saturating_mul(1 << 20),
            cache_dir: g.cache_dir(),
            compiler: g.compiler.clone(),
            config: self.guest_settings()?,
            inherit_stderr: g.stderr,
        })
    }

    pub fn http_options(&self) -> HttpOptions {
        let h = &self.http;
        HttpOptions {
            max_connections: h.max_connections,
            write_timeout: h.write_timeout,
            stop_timeout: h.stop_timeout,
            inflight_body_bytes: h.inflight_body_bytes(),
            body: crate::body::BodyLimits { max_bytes: h.max_body_bytes, timeout: h.body_timeout, min_rate: h.body_min_rate },
        }
    }

    pub fn server_info(&self) -> ServerInfo {
        ServerInfo {
            postgres: self.storage.postgres_url().is_some(),
            backend_description: self.storage.describe(),
            backup: self.backup.replica_options(),
        }
    }

    /// The values the guest sees through `config.get`.
    pub fn guest_settings(&self) -> Result<HashMap<String, String>, ConfigError> {
        let mut m = HashMap::new();
        for (k, v) in std::env::vars() {
            if let Some(name) = k.strip_prefix("KVSTORE_GUEST_") {
                if matches!(name, "CONFIG" | "STDERR" | "TIMEOUT_MS" | "MEMORY_MB") {
                    continue;
                }
                m.insert(name.to_ascii_lowercase().replace('_', "-"), v);
            }
        }
        for kv in &self.guest.config {
            if kv.is_empty() {
                continue;
            }
            let (k, v) = kv.split_once('=').ok_or_else(|| invalid("KVSTORE_GUEST_CONFIG", format!("{kv:?} is not name=value")))?;
            m.insert(k.trim().to_string(), v.to_string());
        }
        if let Some(s) = &self.secret {
            m.insert("secret".into(), s.clone());
        }
        m.insert("public-reads".into(), self.guest.public_reads.to_string());
        m.insert("max-value-bytes".into(), self.storage.max_value_bytes.to_string());
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("250").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("1h").is_err());
    }

    #[test]
    fn help_names_every_env_var() {
        use clap::CommandFactory;
        let help = Config::command().render_long_help().to_string();
        for v in [
            "KVSTORE_SECRET",
            "PORT",
            "HOST",
            "KVSTORE_DB",
            "KVSTORE_GUEST",
            "KVSTORE_MAX_VALUE_BYTES",
            "KVSTORE_S3_URL",
            "KVSTORE_DURABILITY",
            "KVSTORE_SYNC_INTERVAL",
            "KVSTORE_ADMIN_ADDR",
            "KVSTORE_STOP_TIMEOUT",
            "KVSTORE_INSTANCE_MODE",
        ] {
            assert!(help.contains(&format!("[env: {v}")), "--help lacks {v}");
        }
        for heading in ["HTTP:", "Guest:", "Storage:", "Backup (SQLite):", "Admin and logs:"] {
            assert!(help.contains(heading), "--help lacks the {heading} group");
        }
    }

    /// Every flag keeps its name across the regrouping (scripts and unit
    /// files use them), and the groups turn into the options components take.
    #[test]
    fn flags_keep_their_names_and_become_options() {
        let c = Config::try_parse_from([
            "sidekv",
            "--durability",
            "s3",
            "--sync-interval",
            "250ms",
            "--s3-url",
            "s3://b/p",
            "--db",
            "/x/db.sqlite3",
            "--readers",
            "3",
            "--instance-mode",
            "fresh",
            "--guest-timeout-ms",
            "7",
            "--guest-memory-mb",
            "16",
            "--admin-addr",
            "127.0.0.1:9",
            "--stop-timeout",
            "3s",
            "--max-value-bytes",
            "100",
        ])
        .unwrap();
        c.validate().unwrap();
        let s = c.sqlite_options();
        assert_eq!(s.db, PathBuf::from("/x/db.sqlite3"));
        assert_eq!((s.store.readers, s.store.durability, s.store.replicated, s.store.max_value_bytes), (3, Durability::S3, true, 100));
        let r = s.backup.unwrap();
        assert_eq!((r.url.as_str(), r.sync_interval), ("s3://b/p", Duration::from_millis(250)));
        let g = c.guest_options().unwrap();
        assert_eq!((g.instance_mode, g.timeout, g.memory_bytes), (InstanceMode::Fresh, Duration::from_millis(7), 16 << 20));
        assert_eq!(c.http_options().stop_timeout, Duration::from_secs(3));
        assert!(Config::try_parse_from(["sidekv", "--durability", "sometimes"]).is_err());
        let bad = Config::try_parse_from(["sidekv", "--durability", "s3"]).unwrap();
        assert!(bad.validate().unwrap_err().to_string().starts_with("KVSTORE_DURABILITY"));
    }
}
