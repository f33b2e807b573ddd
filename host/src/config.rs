//! Settings: every option is a flag and an environment variable (clap
//! derive), validated at start with messages that name the setting.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::backend::sqlite::store::Durability;
use crate::guest::InstanceMode;
use crate::limits;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{setting}: {msg}")]
    Invalid { setting: &'static str, msg: String },
}

fn invalid(setting: &'static str, msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { setting, msg: msg.into() }
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

    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub host: String,

    /// Port to listen on (0 picks a free one; the log line says which).
    #[arg(long, env = "PORT", default_value_t = 8000)]
    pub port: u16,

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

    /// A guest component (.wasm) to use instead of the built-in one.
    #[arg(long, env = "KVSTORE_GUEST")]
    pub guest: Option<PathBuf>,

    /// Let GET/HEAD of single keys through without a secret (the seed's behaviour).
    #[arg(long, env = "KVSTORE_PUBLIC_READS", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub public_reads: bool,

    /// Largest value, in bytes (larger → 413).
    #[arg(long, env = "KVSTORE_MAX_VALUE_BYTES", default_value_t = limits::DEFAULT_MAX_VALUE_BYTES)]
    pub max_value_bytes: usize,

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

    /// Most live guest instances (each holds its own linear memory); a
    /// request waits up to 2 s for one, then gets 503. Default: 32 per core.
    #[arg(long, env = "KVSTORE_MAX_INSTANCES")]
    pub max_instances: Option<usize>,

    /// No new guest instance is created, and none is kept idle, while live
    /// instances hold this many MiB of linear memory; a request waits up to
    /// 2 s for one to come back, then gets 503.
    #[arg(long, env = "KVSTORE_GUEST_MEMORY_BUDGET_MB", default_value_t = limits::DEFAULT_GUEST_MEMORY_BUDGET_MB)]
    pub guest_memory_budget_mb: u64,

    /// SQLite read connections (each on its own thread).
    #[arg(long, env = "KVSTORE_READERS", default_value_t = 2)]
    pub readers: usize,

    /// Per-request guest deadline in milliseconds (past it → 504).
    #[arg(long, env = "KVSTORE_GUEST_TIMEOUT_MS", default_value_t = limits::DEFAULT_GUEST_TIMEOUT_MS)]
    pub guest_timeout_ms: u64,

    /// Linear-memory cap per guest instance, in MiB.
    #[arg(long, env = "KVSTORE_GUEST_MEMORY_MB", default_value_t = limits::DEFAULT_GUEST_MEMORY_MB)]
    pub guest_memory_mb: u64,

    /// Largest guest response body, in bytes (larger → 500).
    #[arg(long, env = "KVSTORE_MAX_RESPONSE_BYTES", default_value_t = limits::DEFAULT_MAX_RESPONSE_BYTES)]
    pub max_response_bytes: usize,

    /// `reuse`: warm instances serve many requests (fast, the default);
    /// `fresh`: a new instance per request.
    #[arg(long, env = "KVSTORE_INSTANCE_MODE", value_enum, default_value = "reuse")]
    pub instance_mode: InstanceMode,

    /// Directory for compiled guests (trusted machine code: keep it private).
    /// Empty disables the cache.
    #[arg(long, env = "KVSTORE_CACHE_DIR", default_value = "/tmp/sidekv-cache")]
    pub cache_dir: PathBuf,

    /// Settings for the guest, `name=value`, comma-separated or repeated.
    /// Variables named `KVSTORE_GUEST_<NAME>` are passed too, as `<name>`
    /// (lower-case, `_` → `-`).
    #[arg(long = "guest-config", env = "KVSTORE_GUEST_CONFIG", value_delimiter = ',')]
    pub guest_config: Vec<String>,

    /// Let the guest write to sidekv's stderr (for debugging guests).
    #[arg(long, env = "KVSTORE_GUEST_STDERR", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub guest_stderr: bool,

    /// Backup location: `s3://bucket/prefix`, or `file:///dir` for a directory
    /// (a mounted volume); unset keeps data local only.
    /// Endpoint and credentials come from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY (or LITESTREAM_ACCESS_KEY_ID /
    /// LITESTREAM_SECRET_ACCESS_KEY), AWS_REGION (default us-east-1).
    #[arg(long, env = "KVSTORE_S3_URL")]
    pub s3_url: Option<String>,

    /// When a write is acknowledged: `local` (after the local fsync; S3 lags
    /// by at most the sync interval) or `s3` (after its segment is in S3).
    #[arg(long, env = "KVSTORE_DURABILITY", value_enum, default_value = "local")]
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

    /// Deliver queue messages by POSTing each to this URL (`http://…`; e.g.
    /// http://127.0.0.1:3000/queue). A 2xx answer acknowledges it; anything
    /// else, a timeout or a refused connection is a failed attempt. Unset:
    /// messages are only delivered to pull consumers (`POST /_queue/take`).
    #[arg(long, env = "KVSTORE_QUEUE_URL")]
    pub queue_url: Option<String>,

    /// Push deliveries in flight at once.
    #[arg(long, env = "KVSTORE_QUEUE_CONCURRENCY", default_value_t = limits::DEFAULT_QUEUE_CONCURRENCY)]
    pub queue_concurrency: usize,

    /// Time the application gets to answer one push delivery.
    #[arg(long, env = "KVSTORE_QUEUE_TIMEOUT", default_value = limits::DEFAULT_QUEUE_TIMEOUT, value_parser = parse_duration)]
    pub queue_timeout: Duration,

    /// Address for /healthz, /readyz and /metrics (e.g. 127.0.0.1:9090);
    /// unset disables them. The main port belongs to the guest.
    #[arg(long, env = "KVSTORE_ADMIN_ADDR")]
    pub admin_addr: Option<SocketAddr>,

    /// Log format: `text` or `json`. Filter with RUST_LOG (default `info`).
    #[arg(long, env = "KVSTORE_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    #[command(subcommand)]
    pub command: Option<Command>,
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
}

impl Config {
    /// Checks that need more than one field or the environment.
    /// The PostgreSQL URL, when `KVSTORE_BACKEND` names one.
    pub fn postgres_url(&self) -> Option<&str> {
        self.backend.as_deref().filter(|b| b.starts_with("postgres://") || b.starts_with("postgresql://"))
    }

    /// The backend for logs, without credentials.
    pub fn backend_description(&self) -> String {
        match self.postgres_url() {
            Some(url) => {
                let host = url.split_once('@').map_or(url.split_once("://").map_or(url, |x| x.1), |x| x.1);
                format!("postgres://…@{}", host.split('?').next().unwrap_or(host))
            }
            None => format!("sqlite {}", self.db.display()),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(2..=1000).contains(&self.pg_pool_size) {
            return Err(invalid("KVSTORE_PG_POOL_SIZE", "must be between 2 and 1000"));
        }
        match self.backend.as_deref() {
            None | Some("sqlite") => {}
            Some(_) if self.postgres_url().is_some() => {
                if self.s3_url.is_some() {
                    return Err(invalid(
                        "KVSTORE_S3_URL",
                        "S3 backup is for the SQLite backend; with KVSTORE_BACKEND=postgres://… the database's own backup keeps the data \
                         (PostgreSQL: WAL archiving or pgBackRest; CockroachDB: BACKUP). Unset KVSTORE_S3_URL",
                    ));
                }
            }
            Some(other) => {
                return Err(invalid(
                    "KVSTORE_BACKEND",
                    format!("{:?} is neither `sqlite` nor a postgres://… URL", other.chars().take(60).collect::<String>()),
                ));
            }
        }
        if self.max_value_bytes == 0 || self.max_value_bytes > limits::MAX_VALUE_BYTES_CEILING {
            return Err(invalid("KVSTORE_MAX_VALUE_BYTES", format!("must be between 1 and {}", limits::MAX_VALUE_BYTES_CEILING)));
        }
        if self.max_body_bytes < self.max_value_bytes {
            return Err(invalid("KVSTORE_MAX_BODY_BYTES", "must be at least KVSTORE_MAX_VALUE_BYTES"));
        }
        if self.max_connections == 0 {
            return Err(invalid("KVSTORE_MAX_CONNECTIONS", "must be at least 1"));
        }
        if self.body_timeout.is_zero() {
            return Err(invalid("KVSTORE_BODY_TIMEOUT", "must be more than 0"));
        }
        if self.write_timeout.is_zero() {
            return Err(invalid("KVSTORE_WRITE_TIMEOUT", "must be more than 0"));
        }
        if self.inflight_body_bytes() < self.max_body_bytes {
            return Err(invalid("KVSTORE_MAX_INFLIGHT_BODY_BYTES", "must be at least KVSTORE_MAX_BODY_BYTES"));
        }
        if self.max_instances() == 0 {
            return Err(invalid("KVSTORE_MAX_INSTANCES", "must be at least 1"));
        }
        if self.readers == 0 || self.readers > 64 {
            return Err(invalid("KVSTORE_READERS", "must be between 1 and 64"));
        }
        if self.guest_timeout_ms == 0 {
            return Err(invalid("KVSTORE_GUEST_TIMEOUT_MS", "must be at least 1"));
        }
        if self.guest_memory_budget_mb == 0 {
            return Err(invalid("KVSTORE_GUEST_MEMORY_BUDGET_MB", "must be at least 1"));
        }
        if self.guest_memory_mb < 2 || self.guest_memory_mb > 4096 {
            return Err(invalid("KVSTORE_GUEST_MEMORY_MB", "must be between 2 and 4096"));
        }
        if self.sync_interval.is_zero() {
            return Err(invalid("KVSTORE_SYNC_INTERVAL", "must be more than 0"));
        }
        if !(limits::MIN_S3_PART_BYTES..=limits::MAX_S3_PART_BYTES).contains(&self.s3_part_bytes) {
            return Err(invalid("KVSTORE_S3_PART_BYTES", "must be between 5 MiB (5242880) and 5 GiB, as S3 requires"));
        }
        if self.snapshot_retention == 0 {
            return Err(invalid("KVSTORE_SNAPSHOT_RETENTION", "must be at least 1"));
        }
        if let Some(u) = &self.queue_url {
            crate::queue::PushTarget::parse(u).map_err(|e| invalid("KVSTORE_QUEUE_URL", e))?;
        }
        if !(1..=1024).contains(&self.queue_concurrency) {
            return Err(invalid("KVSTORE_QUEUE_CONCURRENCY", "must be between 1 and 1024"));
        }
        if self.queue_timeout.is_zero() {
            return Err(invalid("KVSTORE_QUEUE_TIMEOUT", "must be more than 0"));
        }
        if let Some(s) = &self.secret
            && s.is_empty()
        {
            return Err(invalid("KVSTORE_SECRET", "is set but empty; unset it to get a generated one"));
        }
        if let Some(g) = &self.guest
            && !g.is_file()
        {
            return Err(invalid("KVSTORE_GUEST", format!("{} is not a file", g.display())));
        }
        if self.durability == Durability::S3 && self.s3_url.is_none() {
            return Err(invalid("KVSTORE_DURABILITY", "is `s3` but KVSTORE_S3_URL is not set"));
        }
        self.guest_settings()?;
        Ok(())
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
        for kv in &self.guest_config {
            if kv.is_empty() {
                continue;
            }
            let (k, v) = kv.split_once('=').ok_or_else(|| invalid("KVSTORE_GUEST_CONFIG", format!("{kv:?} is not name=value")))?;
            m.insert(k.trim().to_string(), v.to_string());
        }
        if let Some(s) = &self.secret {
            m.insert("secret".into(), s.clone());
        }
        m.insert("public-reads".into(), self.public_reads.to_string());
        m.insert("max-value-bytes".into(), self.max_value_bytes.to_string());
        Ok(m)
    }

    /// KVSTORE_MAX_INFLIGHT_BODY_BYTES, or its default tied to the body limit.
    pub fn inflight_body_bytes(&self) -> usize {
        self.max_inflight_body_bytes.unwrap_or(self.max_body_bytes.saturating_mul(limits::INFLIGHT_BODY_FACTOR))
    }

    /// KVSTORE_MAX_INSTANCES, or its default tied to the cores.
    pub fn max_instances(&self) -> usize {
        self.max_instances.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
            cores * limits::INSTANCES_PER_CORE
        })
    }

    pub fn listen_addr(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    pub fn cache_dir(&self) -> Option<PathBuf> {
        if self.cache_dir.as_os_str().is_empty() { None } else { Some(self.cache_dir.clone()) }
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
        ] {
            assert!(help.contains(&format!("[env: {v}")), "--help lacks {v}");
        }
    }
}
