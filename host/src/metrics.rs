//! Process-wide metrics, rendered as Prometheus text on the admin address.
//!
//! Everything on the request path is a relaxed atomic (no locks): counters
//! indexed by method and status code, and fixed-bucket histograms. Gauges
//! that describe replication are read from their owners at scrape time.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "OTHER"];

/// Upper bounds of the latency buckets, in seconds.
const LATENCY_BOUNDS: [f64; 16] =
    [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];
/// Upper bounds of the commit batch-size buckets.
const BATCH_BOUNDS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 512.0, 4096.0];

pub struct Histogram<const N: usize> {
    bounds: [f64; N],
    counts: [AtomicU64; N],
    inf: AtomicU64,
    /// Sum in micro-units (µs for seconds histograms, units otherwise).
    sum_micros: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    const fn new(bounds: [f64; N]) -> Self {
        Histogram { bounds, counts: [const { AtomicU64::new(0) }; N], inf: AtomicU64::new(0), sum_micros: AtomicU64::new(0) }
    }

    pub fn observe(&self, v: f64) {
        self.sum_micros.fetch_add((v * 1e6) as u64, Relaxed);
        for (i, b) in self.bounds.iter().enumerate() {
            if v <= *b {
                self.counts[i].fetch_add(1, Relaxed);
                return;
            }
        }
        self.inf.fetch_add(1, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cum = 0;
        for (i, b) in self.bounds.iter().enumerate() {
            cum += self.counts[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cum}");
        }
        cum += self.inf.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cum}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_micros.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {cum}");
    }
}

pub struct Metrics {
    requests: [[AtomicU64; 600]; METHODS.len()],
    pub request_seconds: Histogram<16>,
    pub guest_call_seconds: Histogram<16>,
    pub commit_batch_writes: Histogram<10>,
    guest_traps: AtomicU64,
    guest_timeouts: AtomicU64,
    guest_bad_responses: AtomicU64,
    pub uploads_ok: AtomicU64,
    pub uploads_failed: AtomicU64,
    pub upload_bytes: AtomicU64,
    /// Unix ms of the last successful segment upload (0 = never).
    pub last_upload_ms: AtomicU64,
    pub snapshots_ok: AtomicU64,
    pub snapshot_last_seconds_micros: AtomicU64,
    pub restore_seconds_micros: AtomicU64,
    pub connections_open: AtomicU64,
    pub connections_rejected: AtomicU64,
    pub connections_evicted: AtomicU64,
    pub body_timeouts: AtomicU64,
    pub write_timeouts: AtomicU64,
    pub inflight_body_bytes: AtomicU64,
    pub body_budget_rejections: AtomicU64,
    pub guest_instances: AtomicU64,
    /// Ever created: instances are recycled, so this grows while
    /// `guest_instances` stays bounded.
    pub guest_instances_created: AtomicU64,
    pub guest_instances_busy: AtomicU64,
    pub guest_memory_bytes: AtomicU64,
    pub guest_busy_rejections: AtomicU64,
    pub read_byte_caps: AtomicU64,
    /// Queue gauges, refreshed by the queue task (`queue::run`).
    pub queue_pending: AtomicU64,
    pub queue_due: AtomicU64,
    pub queue_leased: AtomicU64,
    pub queue_oldest_due_ms: AtomicU64,
    pub queue_dead_lettered: AtomicU64,
    pub queue_delivered: AtomicU64,
    pub queue_failed_attempts: AtomicU64,
    /// Time from a message falling due to its being leased to a consumer.
    pub queue_delivery_seconds: Histogram<16>,
}

pub static METRICS: Metrics = Metrics {
    requests: [const { [const { AtomicU64::new(0) }; 600] }; METHODS.len()],
    request_seconds: Histogram::new(LATENCY_BOUNDS),
    guest_call_seconds: Histogram::new(LATENCY_BOUNDS),
    commit_batch_writes: Histogram::new(BATCH_BOUNDS),
    guest_traps: AtomicU64::new(0),
    guest_timeouts: AtomicU64::new(0),
    guest_bad_responses: AtomicU64::new(0),
    uploads_ok: AtomicU64::new(0),
    uploads_failed: AtomicU64::new(0),
    upload_bytes: AtomicU64::new(0),
    last_upload_ms: AtomicU64::new(0),
    snapshots_ok: AtomicU64::new(0),
    snapshot_last_seconds_micros: AtomicU64::new(0),
    restore_seconds_micros: AtomicU64::new(0),
    connections_open: AtomicU64::new(0),
    connections_rejected: AtomicU64::new(0),
    connections_evicted: AtomicU64::new(0),
    body_timeouts: AtomicU64::new(0),
    write_timeouts: AtomicU64::new(0),
    inflight_body_bytes: AtomicU64::new(0),
    body_budget_rejections: AtomicU64::new(0),
    guest_instances: AtomicU64::new(0),
    guest_instances_created: AtomicU64::new(0),
    guest_instances_busy: AtomicU64::new(0),
    guest_memory_bytes: AtomicU64::new(0),
    guest_busy_rejections: AtomicU64::new(0),
    read_byte_caps: AtomicU64::new(0),
    queue_pending: AtomicU64::new(0),
    queue_due: AtomicU64::new(0),
    queue_leased: AtomicU64::new(0),
    queue_oldest_due_ms: AtomicU64::new(0),
    queue_dead_lettered: AtomicU64::new(0),
    queue_delivered: AtomicU64::new(0),
    queue_failed_attempts: AtomicU64::new(0),
    queue_delivery_seconds: Histogram::new(QUEUE_LATENCY_BOUNDS),
};

/// Upper bounds of the queue delivery-latency buckets, in seconds.
const QUEUE_LATENCY_BOUNDS: [f64; 16] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0];

/// Replication figures read at scrape time.
#[derive(Clone, Debug, Default)]
pub struct ReplicationGauges {
    pub enabled: bool,
    pub committed: u64,
    pub shipped: u64,
    pub lag_seconds: f64,
    pub fenced: bool,
    /// The backup is not running (S3 unreachable since launch).
    pub not_backed_up: bool,
}

impl Metrics {
    pub fn request(&self, method: &str, status: u16, elapsed: Duration) {
        let m = METHODS.iter().position(|m| *m == method).unwrap_or(METHODS.len() - 1);
        let s = (status as usize).min(599);
        self.requests[m][s].fetch_add(1, Relaxed);
        self.request_seconds.observe(elapsed.as_secs_f64());
    }

    pub fn guest_call(&self, elapsed: Duration) {
        self.guest_call_seconds.observe(elapsed.as_secs_f64());
    }

    pub fn guest_failure(&self, kind: &str) {
        match kind {
            "timeout" => &self.guest_timeouts,
            "trap" => &self.guest_traps,
            _ => &self.guest_bad_responses,
        }
        .fetch_add(1, Relaxed);
    }

    /// The protective limits: what is in use, and how often each one
    /// triggered (docs/robustness.md, "Hostile and broken clients").
    fn render_limits(&self, out: &mut String) {
        let counters: [(&str, &str, &AtomicU64); 7] = [
            ("sidekv_connections_evicted_total", "Idle connections closed at the cap to admit a new one.", &self.connections_evicted),
            ("sidekv_body_timeouts_total", "Requests answered 408: body too slow (KVSTORE_BODY_TIMEOUT / _MIN_RATE).", &self.body_timeouts),
            (
                "sidekv_write_timeouts_total",
                "Connections closed because the client stopped reading (KVSTORE_WRITE_TIMEOUT).",
                &self.write_timeouts,
            ),
            ("sidekv_body_budget_rejections_total", "Requests answered 503: in-flight body budget full.", &self.body_budget_rejections),
            (
                "sidekv_guest_busy_rejections_total",
                "Requests answered 503: no free guest instance (KVSTORE_MAX_INSTANCES).",
                &self.guest_busy_rejections,
            ),
            ("sidekv_read_byte_caps_total", "Reads cut short (page + cursor) or refused by the per-read byte cap.", &self.read_byte_caps),
            ("sidekv_guest_instances_created_total", "Guest instances created.", &self.guest_instances_created),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", v.load(Relaxed));
        }
        let gauges: [(&str, &str, &AtomicU64); 4] = [
            ("sidekv_inflight_body_bytes", "Request-body bytes reserved in the in-flight budget.", &self.inflight_body_bytes),
            ("sidekv_guest_instances", "Live guest instances (busy + idle).", &self.guest_instances),
            ("sidekv_guest_instances_busy", "Guest instances handling a request.", &self.guest_instances_busy),
            ("sidekv_guest_memory_bytes", "Linear memory of live guest instances.", &self.guest_memory_bytes),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}", v.load(Relaxed));
        }
    }

    pub fn render(&self, repl: &ReplicationGauges) -> String {
        let mut out = String::with_capacity(8192);
        out.push_str(
            "# HELP sidekv_requests_total HTTP requests on the main port by method and status.\n# TYPE sidekv_requests_total counter\n",
        );
        for (mi, m) in METHODS.iter().enumerate() {
            for (s, c) in self.requests[mi].iter().enumerate() {
                let n = c.load(Relaxed);
                if n > 0 {
                    let _ = writeln!(out, "sidekv_requests_total{{method=\"{m}\",status=\"{s}\"}} {n}");
                }
            }
        }
        self.request_seconds.render(&mut out, "sidekv_request_duration_seconds", "Time from request head to response head.");
        self.guest_call_seconds.render(
            &mut out,
            "sidekv_guest_call_duration_seconds",
            "Time spent in handler.handle, host calls included.",
        );
        self.commit_batch_writes.render(&mut out, "sidekv_commit_batch_writes", "Writes per group commit (one fsync each).");
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        let gauge = |out: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        counter(&mut out, "sidekv_guest_traps_total", "Guest calls that trapped.", self.guest_traps.load(Relaxed));
        counter(&mut out, "sidekv_guest_timeouts_total", "Guest calls stopped at their deadline.", self.guest_timeouts.load(Relaxed));
        counter(
            &mut out,
            "sidekv_guest_bad_responses_total",
            "Guest responses rejected (too large, invalid).",
            self.guest_bad_responses.load(Relaxed),
        );
        gauge(&mut out, "sidekv_connections_open", "Open client connections.", self.connections_open.load(Relaxed) as f64);
        counter(
            &mut out,
            "sidekv_connections_rejected_total",
            "Connections closed at once because the cap was reached.",
            self.connections_rejected.load(Relaxed),
        );
        self.render_limits(&mut out);
        gauge(
            &mut out,
            "sidekv_queue_pending",
            "Queue messages not yet delivered or dead-lettered.",
            self.queue_pending.load(Relaxed) as f64,
        );
        gauge(&mut out, "sidekv_queue_due", "Queue messages due now and not leased.", self.queue_due.load(Relaxed) as f64);
        gauge(
            &mut out,
            "sidekv_queue_leased",
            "Queue messages leased to a consumer (push or pull).",
            self.queue_leased.load(Relaxed) as f64,
        );
        gauge(
            &mut out,
            "sidekv_queue_oldest_due_seconds",
            "Age of the oldest due, unleased queue message (0 when none).",
            self.queue_oldest_due_ms.load(Relaxed) as f64 / 1e3,
        );
        counter(
            &mut out,
            "sidekv_queue_dead_lettered_total",
            "Queue messages whose last attempt failed (written to keysIfUndelivered, then dropped).",
            self.queue_dead_lettered.load(Relaxed),
        );
        counter(&mut out, "sidekv_queue_delivered_total", "Queue messages acknowledged.", self.queue_delivered.load(Relaxed));
        counter(
            &mut out,
            "sidekv_queue_failed_attempts_total",
            "Delivery attempts that failed (error answer, timeout, refused connection, retry, expired lease).",
            self.queue_failed_attempts.load(Relaxed),
        );
        self.queue_delivery_seconds.render(
            &mut out,
            "sidekv_queue_delivery_seconds",
            "Time from a queue message falling due to its being handed to a consumer (push or pull).",
        );
        gauge(&mut out, "sidekv_commit_counter", "Last committed commit counter.", repl.committed as f64);
        gauge(&mut out, "sidekv_replication_enabled", "1 when S3 backup is configured.", repl.enabled as u8 as f64);
        if repl.enabled {
            gauge(&mut out, "sidekv_replication_shipped_counter", "Last commit counter confirmed in S3.", repl.shipped as f64);
            gauge(&mut out, "sidekv_outbox_commits", "Commits not yet in S3.", repl.committed.saturating_sub(repl.shipped) as f64);
            gauge(
                &mut out,
                "sidekv_replication_lag_seconds",
                "Age of the oldest commit not yet in S3 (0 when caught up).",
                repl.lag_seconds,
            );
            gauge(
                &mut out,
                "sidekv_replication_fenced",
                "1 when another writer owns the S3 path and writes are refused.",
                repl.fenced as u8 as f64,
            );
            gauge(
                &mut out,
                "sidekv_backup_stalled",
                "1 while the backup cannot start (S3 unreachable since launch); local writes are kept and ship once it answers.",
                repl.not_backed_up as u8 as f64,
            );
            counter(&mut out, "sidekv_uploads_total", "Segments stored in S3.", self.uploads_ok.load(Relaxed));
            counter(&mut out, "sidekv_upload_failures_total", "Failed segment uploads (retried).", self.uploads_failed.load(Relaxed));
            counter(&mut out, "sidekv_upload_bytes_total", "Compressed bytes of segments stored in S3.", self.upload_bytes.load(Relaxed));
            gauge(
                &mut out,
                "sidekv_last_upload_timestamp_seconds",
                "Unix time of the last successful upload.",
                self.last_upload_ms.load(Relaxed) as f64 / 1e3,
            );
            counter(&mut out, "sidekv_snapshots_total", "Snapshots stored in S3.", self.snapshots_ok.load(Relaxed));
            gauge(
                &mut out,
                "sidekv_snapshot_last_duration_seconds",
                "Duration of the last snapshot.",
                self.snapshot_last_seconds_micros.load(Relaxed) as f64 / 1e6,
            );
            gauge(
                &mut out,
                "sidekv_restore_duration_seconds",
                "Duration of the restore at launch (0 = none).",
                self.restore_seconds_micros.load(Relaxed) as f64 / 1e6,
            );
        }
        out
    }
}

impl Metrics {
    /// The figures the console's load charts draw (cumulative; the page
    /// takes differences between polls): main-port requests by status
    /// class, the latency histogram, guest instances and memory, uploads.
    pub fn console_json(&self) -> serde_json::Value {
        let mut classes = [0u64; 6];
        for row in &self.requests {
            for (s, c) in row.iter().enumerate() {
                classes[(s / 100).min(5)] += c.load(Relaxed);
            }
        }
        let h = &self.request_seconds;
        let counts: Vec<u64> = h.counts.iter().map(|c| c.load(Relaxed)).chain([h.inf.load(Relaxed)]).collect();
        serde_json::json!({
            "requests": { "2xx": classes[2], "3xx": classes[3], "4xx": classes[4], "5xx": classes[5] },
            "latency": { "bounds": h.bounds, "counts": counts },
            "guest_instances": self.guest_instances.load(Relaxed),
            "guest_instances_busy": self.guest_instances_busy.load(Relaxed),
            "guest_memory_bytes": self.guest_memory_bytes.load(Relaxed),
            "connections_open": self.connections_open.load(Relaxed),
            "uploads_ok": self.uploads_ok.load(Relaxed),
            "uploads_failed": self.uploads_failed.load(Relaxed),
            "upload_bytes": self.upload_bytes.load(Relaxed),
            "last_upload_ms": self.last_upload_ms.load(Relaxed),
            "snapshots_ok": self.snapshots_ok.load(Relaxed),
            "restore_seconds": self.restore_seconds_micros.load(Relaxed) as f64 / 1e6,
        })
    }
}
