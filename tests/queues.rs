//! Queues (issue 23) against the real binary: REST enqueue / pull / ack,
//! push delivery to an application endpoint (a small HTTP server in this
//! test), backoff and dead-lettering, lease expiry, kill -9, a relaunch
//! with the disk wiped in `s3` mode, export/import and point-in-time
//! restore, and the real clients: npm `@deno/kv` enqueueing (Node), the
//! `clients/js/queue.mjs` listener under Node and Deno, and Deno's client
//! reading a dead-lettered value. On PostgreSQL (the tests' private server):
//! two sidecars share one queue, and a killed sidecar's leases expire.
//!
//! The JS clients come from `make setup-deno`; `SIDEKV_SKIP_KVCONNECT=1`
//! skips the tests that need them (with a printed reason).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ------------------------------------------------------------ helpers ----

/// One delivery the application endpoint received.
#[derive(Clone, Debug)]
struct Delivery {
    id: String,
    attempt: u32,
    encoding: String,
    body: Vec<u8>,
    at: Instant,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Answer {
    Ok,
    Fail,
    /// Accept the request and never answer.
    Hang,
    /// 200 without `connection: close`, then close the connection anyway
    /// (an application that drops idle keep-alive connections).
    OkThenDrop,
}

/// The application's push endpoint: records every delivery, answers as told.
struct App {
    port: u16,
    got: Arc<Mutex<Vec<Delivery>>>,
}

impl App {
    async fn start(answer: Answer) -> App {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let answer = Arc::new(Mutex::new(answer));
        let (g, a) = (got.clone(), answer.clone());
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                let (g, a) = (g.clone(), a.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    let head_end = loop {
                        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break p + 4;
                        }
                        match c.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                    let header = |name: &str| {
                        head.lines().find_map(|l| l.strip_prefix(&format!("{name}:")).map(|v| v.trim().to_string())).unwrap_or_default()
                    };
                    let len: usize = header("content-length").parse().unwrap_or(0);
                    while buf.len() < head_end + len {
                        match c.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    g.lock().unwrap().push(Delivery {
                        id: header("x-sidekv-message-id"),
                        attempt: header("x-sidekv-attempt").parse().unwrap_or(0),
                        encoding: header("x-sidekv-encoding"),
                        body: buf[head_end..head_end + len].to_vec(),
                        at: Instant::now(),
                    });
                    let answer = *a.lock().unwrap();
                    if answer == Answer::OkThenDrop {
                        let _ = c.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
                        return;
                    }
                    let status = match answer {
                        Answer::Ok | Answer::OkThenDrop => "200 OK",
                        Answer::Fail => "500 Internal Server Error",
                        Answer::Hang => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            return;
                        }
                    };
                    let _ = c.write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes()).await;
                });
            }
        });
        App { port, got }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/queue", self.port)
    }

    fn deliveries(&self) -> Vec<Delivery> {
        self.got.lock().unwrap().clone()
    }

    /// Wait until `pred` holds for the deliveries so far.
    async fn wait_for(&self, within: Duration, what: &str, pred: impl Fn(&[Delivery]) -> bool) -> Vec<Delivery> {
        let t0 = Instant::now();
        loop {
            let d = self.deliveries();
            if pred(&d) {
                return d;
            }
            assert!(t0.elapsed() < within, "{what}: not within {within:?}; deliveries so far: {d:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// REST enqueue; returns the message id.
async fn enqueue(c: &Client, query: &str, body: &[u8]) -> String {
    let r = c.req(Method::POST, &format!("/_queue{query}")).body(body.to_vec()).send().await.unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "enqueue {query}: {v}");
    v["id"].as_str().unwrap().to_string()
}

/// A pulled message: (id, attempt, lease, body).
type Pulled = (String, u32, String, Vec<u8>);

/// `POST /_queue/take`; `None` on 204.
async fn take(c: &Client, query: &str) -> Option<Pulled> {
    let r = c.req(Method::POST, &format!("/_queue/take{query}")).send().await.unwrap();
    match r.status().as_u16() {
        204 => None,
        200 => {
            let h = |n: &str| r.headers().get(n).unwrap().to_str().unwrap().to_string();
            let (id, attempt, lease) = (h("x-sidekv-message-id"), h("x-sidekv-attempt").parse().unwrap(), h("x-sidekv-lease"));
            Some((id, attempt, lease, r.bytes().await.unwrap().to_vec()))
        }
        s => panic!("take{query}: {s} {}", r.text().await.unwrap()),
    }
}

async fn settle(c: &Client, kind: &str, lease: &str) -> u16 {
    c.req(Method::POST, &format!("/_queue/{kind}?lease={lease}")).send().await.unwrap().status().as_u16()
}

/// Pull and ack until `want` messages were seen (each id counted once);
/// returns id → body.
async fn drain(c: &Client, want: usize, within: Duration) -> BTreeMap<String, Vec<u8>> {
    let t0 = Instant::now();
    let mut seen = BTreeMap::new();
    while seen.len() < want {
        assert!(t0.elapsed() < within, "only {} of {want} messages delivered within {within:?}: {:?}", seen.len(), seen.keys());
        if let Some((id, _, lease, body)) = take(c, "?wait=1s&visibility=10s").await {
            assert_eq!(settle(c, "ack", &lease).await, 200);
            seen.insert(id, body);
        }
    }
    seen
}

async fn status_of(rb: reqwest::RequestBuilder) -> (u16, String) {
    let r = rb.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Queue gauges are refreshed about once a second: wait for one to read `want`.
async fn wait_gauge(s: &Server, name: &str, want: f64) {
    let t0 = Instant::now();
    loop {
        let v = gauge(s, name).await;
        if v == want {
            return;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "{name} is {v}, not {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn admin() -> Opts {
    Opts::default().env("KVSTORE_ADMIN_ADDR", "127.0.0.1:0")
}

// ------------------------------------------------------------- REST ----

/// Enqueue, take with a lease, ack; a second ack of the same lease and an
/// unknown lease are 409; every bad input is a 4xx that changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_enqueue_take_ack_and_bad_input() {
    let s = start_temp(admin());
    let c = s.client();
    assert_eq!(take(&c, "?wait=0").await, None, "an empty queue");
    let id = enqueue(&c, "", b"hello").await;
    assert_eq!(id.len(), 24);
    let (got, attempt, lease, body) = take(&c, "?wait=1s").await.expect("the message");
    assert_eq!((got.as_str(), attempt, body.as_slice()), (id.as_str(), 1, b"hello".as_slice()));
    assert_eq!(take(&c, "?wait=0").await, None, "leased: not handed out twice");
    assert_eq!(settle(&c, "ack", &lease).await, 200);
    assert_eq!(settle(&c, "ack", &lease).await, 409, "already acknowledged");
    assert_eq!(settle(&c, "retry", &lease).await, 409);
    assert_eq!(settle(&c, "ack", &format!("{id}.0000000000000001")).await, 409, "unknown lease");
    assert_eq!(settle(&c, "ack", "nonsense").await, 400);
    assert_eq!(status_of(c.req(Method::POST, "/_queue/ack")).await.0, 400, "no lease");

    let bad: Vec<(String, Vec<u8>, u16)> = vec![
        ("".into(), vec![0; 64 * 1024 + 1], 413),
        (format!("?delay={}", 30u64 * 24 * 3600 * 1000 + 1), b"x".to_vec(), 400),
        ("?backoff=1,2,3,4,5,6,7,8,9,10,11".into(), b"x".to_vec(), 400),
        ("?backoff=3600001".into(), b"x".to_vec(), 400),
        ((0..11).map(|i| format!("&undelivered=k{i}")).collect::<String>().replacen('&', "?", 1), b"x".to_vec(), 400),
        ("?undelivered=_reserved".into(), b"x".to_vec(), 400),
        ("?delay=soon".into(), b"x".to_vec(), 400),
    ];
    for (q, body, want) in bad {
        let (st, text) = status_of(c.req(Method::POST, &format!("/_queue{q}")).body(body)).await;
        assert_eq!(st, want, "{q}: {text}");
        assert!(text.contains("error"), "{q}: {text}");
    }
    let (st, text) = status_of(c.req(Method::POST, "/_queue/take?visibility=10ms")).await;
    assert_eq!(st, 400, "{text}");
    // Limits accepted at their edge.
    enqueue(&c, &format!("?delay={}&backoff=3600000", 30u64 * 24 * 3600 * 1000), &vec![1; 64 * 1024]).await;
    assert_eq!(take(&c, "?wait=0").await, None, "the delayed message is not due");
    wait_gauge(&s, "sidekv_queue_pending", 1.0).await;
    wait_gauge(&s, "sidekv_queue_due", 0.0).await;
    // Without the secret: 401, like keys.
    let r = reqwest::Client::new().post(c.url("/_queue")).body("x").send().await.unwrap();
    assert_eq!(r.status(), 401);
}

/// `/_atomic` with an `enqueue` mutation: a failed check enqueues nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atomic_enqueue_is_all_or_nothing() {
    let s = start_temp(Opts::default());
    let c = s.client();
    c.set("exists", "1").await;
    let batch = |check_vs: Value, payload: &str| {
        json!({
            "checks": [{ "key": "exists", "versionstamp": check_vs }],
            "mutations": [
                { "type": "set", "key": "order/1", "value": "c2hpcHBlZA==" },
                { "type": "enqueue", "value": b64(payload), "delay": 0, "backoff_schedule": [100] },
            ]
        })
        .to_string()
    };
    let (st, body) = status_of(c.req(Method::POST, "/_atomic").body(batch(Value::Null, "failed"))).await;
    assert_eq!(st, 409, "{body}");
    assert_eq!(c.get("order/1").await, None);
    assert_eq!(take(&c, "?wait=300ms").await, None, "a failed check enqueues nothing");
    let vs = etag_of(&c, "exists").await.unwrap();
    let (st, body) = status_of(c.req(Method::POST, "/_atomic").body(batch(json!(vs), "passed"))).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(c.get("order/1").await.as_deref(), Some(b"shipped".as_slice()));
    let (_, _, lease, payload) = take(&c, "?wait=1s").await.expect("enqueued with the write");
    assert_eq!(payload, b"passed");
    assert_eq!(settle(&c, "ack", &lease).await, 200);
    let bad = json!({ "mutations": [{ "type": "enqueue", "value": b64("x"), "keys_if_undelivered": ["_x"] }] }).to_string();
    assert_eq!(status_of(c.req(Method::POST, "/_atomic").body(bad)).await.0, 400);
}

/// A lease that is neither acked nor retried expires: the attempt counts as
/// failed and the message is delivered again (attempt 2) after its backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_is_delivered_again() {
    let s = start_temp(Opts::default());
    let c = s.client();
    let id = enqueue(&c, "?backoff=100,100", b"work").await;
    let (got, attempt, lease, _) = take(&c, "?wait=1s&visibility=300ms").await.unwrap();
    assert_eq!((got.as_str(), attempt), (id.as_str(), 1));
    let t0 = Instant::now();
    let (again, attempt, _, body) = take(&c, "?wait=5s&visibility=10s").await.expect("delivered again");
    assert!(t0.elapsed() >= Duration::from_millis(250), "before the lease expired: {:?}", t0.elapsed());
    assert_eq!((again.as_str(), attempt, body.as_slice()), (id.as_str(), 2, b"work".as_slice()));
    assert_eq!(settle(&c, "ack", &lease).await, 409, "the expired lease no longer acks");
}

// ------------------------------------------------------------- push ----

/// Push: each due message is POSTed with its id, attempt and encoding; a
/// 2xx acknowledges it; a delayed message comes no earlier than its delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_delivers_due_messages_and_2xx_acks() {
    let app = App::start(Answer::Ok).await;
    let s = start_temp(admin().env("KVSTORE_QUEUE_URL", &app.url()));
    let c = s.client();
    let t0 = Instant::now();
    let late = enqueue(&c, "?delay=1500", b"later").await;
    let mut now_ids = BTreeSet::new();
    for i in 0..20 {
        now_ids.insert(enqueue(&c, "", format!("now-{i}").as_bytes()).await);
    }
    let d = app.wait_for(Duration::from_secs(10), "21 deliveries", |d| d.len() >= 21).await;
    let first: BTreeSet<String> = d[..20].iter().map(|d| d.id.clone()).collect();
    assert_eq!(first, now_ids, "the undelayed messages come first");
    let l = d.iter().find(|d| d.id == late).unwrap();
    assert!(l.at.duration_since(t0) >= Duration::from_millis(1400), "the delayed message came after {:?}", l.at.duration_since(t0));
    assert!(d.iter().all(|d| d.attempt == 1 && d.encoding == "bytes"), "{d:?}");
    assert_eq!(l.body, b"later");
    // Acked: nothing pending, nothing delivered twice.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(app.deliveries().len(), 21);
    wait_gauge(&s, "sidekv_queue_pending", 0.0).await;
    assert_eq!(gauge(&s, "sidekv_queue_delivered_total").await, 21.0);
    assert!(metrics(&s).await.contains("sidekv_queue_delivery_seconds_count 21"));
}

/// Failed attempts back off per the schedule; after the last, the payload
/// is written to every key in keys-if-undelivered (one commit) and the
/// message is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_pushes_back_off_then_dead_letter() {
    let app = App::start(Answer::Fail).await;
    let s = start_temp(admin().env("KVSTORE_QUEUE_URL", &app.url()));
    let c = s.client();
    let id = enqueue(&c, "?backoff=200,400&undelivered=dead/a&undelivered=dead/b", b"payload").await;
    let d = app.wait_for(Duration::from_secs(10), "3 attempts", |d| d.len() >= 3).await;
    assert_eq!(d.iter().map(|d| d.attempt).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert!(d.iter().all(|x| x.id == id));
    let gaps = [d[1].at - d[0].at, d[2].at - d[1].at];
    assert!(gaps[0] >= Duration::from_millis(180) && gaps[1] >= Duration::from_millis(380), "backoff gaps {gaps:?}");
    let t0 = Instant::now();
    while c.get("dead/b").await.is_none() {
        assert!(t0.elapsed() < Duration::from_secs(5), "not dead-lettered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(c.get("dead/a").await.as_deref(), Some(b"payload".as_slice()));
    assert_eq!(etag_of(&c, "dead/a").await.unwrap(), etag_of(&c, "dead/b").await.unwrap(), "both keys in one commit");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(app.deliveries().len(), 3, "gone after the last attempt");
    assert_eq!(gauge(&s, "sidekv_queue_dead_lettered_total").await, 1.0);
    assert_eq!(gauge(&s, "sidekv_queue_failed_attempts_total").await, 3.0);
    wait_gauge(&s, "sidekv_queue_pending", 0.0).await;
}

/// A refused connection is a failed attempt too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_a_failed_attempt() {
    let closed = free_port();
    let s = start_temp(Opts::default().env("KVSTORE_QUEUE_URL", &format!("http://127.0.0.1:{closed}/q")));
    let c = s.client();
    enqueue(&c, "?backoff=50&undelivered=gave-up", b"p").await;
    let t0 = Instant::now();
    while c.get("gave-up").await.is_none() {
        assert!(t0.elapsed() < Duration::from_secs(5), "not dead-lettered:\n{}", tail(&s.log(), 30));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An application endpoint that never answers holds only its delivery
/// slots: reads and writes stay fast, `/readyz` stays ready, and the
/// messages are still pending (leased) meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_app_endpoint_does_not_slow_reads_and_writes() {
    let app = App::start(Answer::Hang).await;
    let s =
        start_temp(admin().env("KVSTORE_QUEUE_URL", &app.url()).env("KVSTORE_QUEUE_TIMEOUT", "60s").env("KVSTORE_QUEUE_CONCURRENCY", "4"));
    let c = s.client();
    for i in 0..50 {
        enqueue(&c, "", format!("m{i}").as_bytes()).await;
    }
    app.wait_for(Duration::from_secs(5), "4 hanging deliveries", |d| d.len() >= 4).await;
    let mut worst = Duration::ZERO;
    let t0 = Instant::now();
    for i in 0..200 {
        let t = Instant::now();
        c.set(&format!("k{i}"), "v").await;
        assert_eq!(c.get(&format!("k{i}")).await.as_deref(), Some(b"v".as_slice()));
        worst = worst.max(t.elapsed());
    }
    assert!(worst < Duration::from_millis(500), "slowest set+get {worst:?}");
    assert!(t0.elapsed() < Duration::from_secs(10), "200 set+get took {:?}", t0.elapsed());
    assert_eq!(readyz(&s).await, 200);
    assert_eq!(app.deliveries().len(), 4, "bounded concurrency");
    wait_gauge(&s, "sidekv_queue_leased", 4.0).await;
    wait_gauge(&s, "sidekv_queue_pending", 50.0).await;
    wait_gauge(&s, "sidekv_queue_due", 46.0).await;
    assert!(gauge(&s, "sidekv_queue_oldest_due_seconds").await > 0.0);
}

// ------------------------------------------------------- durability ----

/// kill -9 with messages leased and others due: after the relaunch on the
/// same disk every message is delivered (the leased ones once their
/// leases expire).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_with_messages_leased_and_due_delivers_every_one() {
    let dir = tempdir();
    let db = dir.path().join("db.sqlite3");
    let mut s = tokio::task::block_in_place(|| Server::start_at(&db, Opts::default()));
    let c = s.client();
    let mut ids = BTreeSet::new();
    for i in 0..30 {
        ids.insert(enqueue(&c, "", format!("job-{i}").as_bytes()).await);
    }
    let mut acked = BTreeSet::new();
    for _ in 0..5 {
        let (id, _, lease, _) = take(&c, "?wait=1s&visibility=10s").await.unwrap();
        assert_eq!(settle(&c, "ack", &lease).await, 200);
        acked.insert(id);
    }
    for _ in 0..5 {
        take(&c, "?wait=1s&visibility=2s").await.unwrap(); // leased, never acked
    }
    tokio::task::block_in_place(|| s.kill9());
    let s = tokio::task::block_in_place(|| Server::start_at(&db, Opts::default()));
    let got = drain(&s.client(), 25, Duration::from_secs(20)).await;
    let want: BTreeSet<String> = ids.difference(&acked).cloned().collect();
    assert_eq!(got.keys().cloned().collect::<BTreeSet<_>>(), want);
    assert_eq!(take(&s.client(), "?wait=500ms").await, None, "acknowledged messages stay delivered");
}

struct S3Ctx {
    s3: S3,
    bucket: String,
    dir: tempfile::TempDir,
}

impl S3Ctx {
    async fn new(name: &str) -> S3Ctx {
        let s3 = tokio::task::block_in_place(S3::start);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let bucket = format!("queues-{name}-{}-{nanos}", std::process::id());
        s3.create_bucket(&bucket).await;
        S3Ctx { s3, bucket, dir: tempdir() }
    }

    fn db(&self) -> PathBuf {
        self.dir.path().join("db.sqlite3")
    }

    fn opts(&self) -> Opts {
        self.s3.env(Opts::default(), &self.bucket, "q").env("KVSTORE_DURABILITY", "s3")
    }

    fn start(&self) -> Server {
        let (db, o) = (self.db(), self.opts());
        tokio::task::block_in_place(|| Server::start_at(&db, o))
    }
}

/// `s3` durability: an enqueue is acknowledged once in S3, so after kill -9
/// and a relaunch with the disk wiped (restore from S3) every enqueued,
/// unacknowledged message is delivered — and acknowledged ones are not.
/// A point-in-time restore holds the messages pending at that commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_only_wiped_disk_in_s3_mode_restores_every_pending_message() {
    let ctx = S3Ctx::new("wipe").await;
    let mut s = ctx.start();
    let c = s.client();
    let mut ids = BTreeMap::new();
    for i in 0..20 {
        ids.insert(enqueue(&c, "", format!("job-{i}").as_bytes()).await, format!("job-{i}").into_bytes());
    }
    let point = c.set("marker", "1").await;
    for i in 20..25 {
        ids.insert(enqueue(&c, "?delay=2000", format!("job-{i}").as_bytes()).await, format!("job-{i}").into_bytes());
    }
    let mut acked = BTreeSet::new();
    for _ in 0..4 {
        let (id, _, lease, _) = take(&c, "?wait=1s").await.unwrap();
        assert_eq!(settle(&c, "ack", &lease).await, 200);
        acked.insert(id);
    }
    take(&c, "?wait=1s&visibility=60s").await.unwrap(); // leased at the kill: delivered again after the restore
    tokio::task::block_in_place(|| s.kill9());
    wipe(&ctx.db());
    let s = ctx.start();
    let want: BTreeMap<String, Vec<u8>> = ids.iter().filter(|(k, _)| !acked.contains(*k)).map(|(k, v)| (k.clone(), v.clone())).collect();
    let got = drain(&s.client(), want.len(), Duration::from_secs(20)).await;
    assert_eq!(got, want);
    drop(s);

    // Point in time: the 20 messages enqueued before `marker`, none acked yet.
    let file = ctx.dir.path().join("pitr.sqlite3");
    let mut cmd = base_command(ctx.dir.path());
    for (k, v) in &ctx.opts().env {
        cmd.env(k, v);
    }
    let out = tokio::task::block_in_place(|| cmd.args(["restore", "--to", file.to_str().unwrap(), "--at", &point]).output().unwrap());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = tokio::task::block_in_place(|| Server::start_at(&file, Opts::default()));
    let got = drain(&s.client(), 20, Duration::from_secs(20)).await;
    assert_eq!(got.values().cloned().collect::<BTreeSet<_>>(), (0..20).map(|i| format!("job-{i}").into_bytes()).collect());
    assert_eq!(take(&s.client(), "?wait=2500ms").await, None, "the later messages are not in that point in time");
}

/// `/_export` of the whole store ends with the pending messages; `/_import`
/// enqueues them again elsewhere (payload, encoding, undelivered keys).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_and_import_keep_pending_messages() {
    let a = start_temp(Opts::default());
    let ca = a.client();
    ca.set("k", "v").await;
    enqueue(&ca, "?undelivered=dl", b"one").await;
    enqueue(&ca, "?delay=500", b"two").await;
    let dump = ca.req(Method::GET, "/_export?prefix=").send().await.unwrap().text().await.unwrap();
    assert_eq!(dump.lines().filter(|l| l.contains("queue_message")).count(), 2, "{dump}");
    let b = start_temp(Opts::default());
    let cb = b.client();
    let (st, body) = status_of(cb.req(Method::POST, "/_import").body(dump)).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(cb.get("k").await.as_deref(), Some(b"v".as_slice()));
    let got = drain(&cb, 2, Duration::from_secs(10)).await;
    assert_eq!(got.values().cloned().collect::<BTreeSet<_>>(), [b"one".to_vec(), b"two".to_vec()].into_iter().collect());
}

// ---------------------------------------------------- real JS clients ----

fn skip_js() -> bool {
    skip_js_clients()
}

fn scripts() -> PathBuf {
    repo_root().join("tests/queues")
}

fn node(script: &str, args: &[&str]) -> Command {
    node_command(&scripts().join(script), args, SECRET)
}

fn deno(script: &str, args: &[&str]) -> Command {
    deno_command(&scripts().join(script), args, Some(SECRET))
}

/// Run a client script to completion; panics with its output and the
/// server's log unless it exits 0.
fn must_pass(cmd: Command, what: &str, s: &Server) -> String {
    let r = run_client(cmd, what);
    assert!(r.ok(), "{}\n--- server log (tail)\n{}", r.report(), tail(&s.log(), 60));
    eprintln!("{what}:\n{}", r.stdout);
    r.stdout
}

/// npm `@deno/kv` enqueues — plain, delayed, inside an atomic write with a
/// failing check and with a passing one — and the messages reach the push
/// endpoint (the script's own HTTP server) as V8 values it decodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_deno_kv_enqueues_reach_a_push_endpoint() {
    if skip_js() {
        return;
    }
    let port = free_port();
    let s = start_temp(Opts::default().env("KVSTORE_QUEUE_URL", &format!("http://127.0.0.1:{port}/queue")));
    must_pass(node("node_enqueue.mjs", &[&format!("{}/_kv", s.url), "push", &port.to_string()]), "node node_enqueue.mjs push", &s);
}

/// The same enqueues, consumed by a pull consumer: `clients/js/queue.mjs`
/// (`listenQueue`) under Node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_deno_kv_enqueues_reach_a_pull_consumer_on_node() {
    if skip_js() {
        return;
    }
    let s = start_temp(Opts::default());
    must_pass(node("node_enqueue.mjs", &[&format!("{}/_kv", s.url), "pull", &s.url]), "node node_enqueue.mjs pull", &s);
}

/// `clients/js/queue.mjs` under Deno: messages enqueued by npm `@deno/kv`,
/// delivered to a `listenQueue` handler that fails the first attempt of
/// each (so each is retried and handled once more).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_queue_module_runs_under_deno() {
    if skip_js() {
        return;
    }
    deno_bin();
    let s = start_temp(Opts::default());
    must_pass(node("node_enqueue.mjs", &[&format!("{}/_kv", s.url), "only-enqueue"]), "node node_enqueue.mjs only-enqueue", &s);
    let out = must_pass(deno("listen.mjs", &[&s.url, "3"]), "deno listen.mjs", &s);
    assert!(out.contains("received 3 messages"), "{out}");
}

/// Backoff, then dead-letter: npm `@deno/kv` enqueues with
/// keysIfUndelivered (and its fixed backoff schedule); every push attempt fails; Deno's own
/// client then reads the value from the undelivered key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_is_read_back_with_denos_client() {
    if skip_js() {
        return;
    }
    deno_bin();
    let app = App::start(Answer::Fail).await;
    let s = start_temp(Opts::default().env("KVSTORE_QUEUE_URL", &app.url()));
    must_pass(node("node_enqueue.mjs", &[&format!("{}/_kv", s.url), "dead-letter"]), "node node_enqueue.mjs dead-letter", &s);
    // npm @deno/kv always sends the schedule [100, 200, 400, 800]: 5 attempts.
    let d = app.wait_for(Duration::from_secs(15), "5 attempts", |d| d.len() >= 5).await;
    assert_eq!(d.iter().map(|d| (d.attempt, d.encoding.as_str())).collect::<Vec<_>>(), (1..=5).map(|a| (a, "v8")).collect::<Vec<_>>());
    let c = s.client();
    let t0 = Instant::now();
    // The Deno key ["failed", "job-7"] as REST sees it.
    while c.get("%02failed%00%02job-7%00").await.is_none() {
        assert!(t0.elapsed() < Duration::from_secs(5), "not dead-lettered:\n{}", tail(&s.log(), 30));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    must_pass(deno("deno_read_dead.ts", &[&format!("{}/_kv", s.url)]), "deno deno_read_dead.ts", &s);
}

// --------------------------------------------------------- PostgreSQL ----

/// Two sidecars on one PostgreSQL database push one shared queue to one
/// application: every message is delivered exactly once when every
/// attempt succeeds (`FOR UPDATE SKIP LOCKED`: one sidecar per attempt),
/// whichever sidecar it was enqueued through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_sidecars_deliver_each_attempt_once() {
    let app = App::start(Answer::Ok).await;
    let db = fresh_database();
    let opts = || Opts::default().env("KVSTORE_QUEUE_URL", &app.url()).env("KVSTORE_QUEUE_CONCURRENCY", "4").env("RUST_LOG", "warn");
    let a = tokio::task::block_in_place(|| start_on(&db, opts()));
    let b = tokio::task::block_in_place(|| start_on(&db, opts()));
    let (ca, cb) = (a.client(), b.client());
    let mut ids = BTreeSet::new();
    for i in 0..100 {
        let c = if i % 2 == 0 { &ca } else { &cb };
        ids.insert(enqueue(c, "", format!("m{i}").as_bytes()).await);
    }
    app.wait_for(Duration::from_secs(20), "100 deliveries", |d| d.len() >= 100).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let d = app.deliveries();
    let got: BTreeSet<String> = d.iter().map(|d| d.id.clone()).collect();
    assert_eq!(got, ids);
    assert_eq!(d.len(), 100, "a message was delivered twice");
    assert!(d.iter().all(|d| d.attempt == 1));
    assert_eq!(take(&ca, "?wait=0").await, None);
}

/// A sidecar killed with messages leased: their leases expire and another
/// sidecar delivers them again (attempt 2); a failed last attempt writes the
/// undelivered key, readable through any sidecar.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_killed_sidecars_leases_are_delivered_by_another() {
    let db = fresh_database();
    let mut a = tokio::task::block_in_place(|| start_on(&db, Opts::default()));
    let b = tokio::task::block_in_place(|| start_on(&db, Opts::default()));
    let (ca, cb) = (a.client(), b.client());
    let mut ids = BTreeSet::new();
    for i in 0..3 {
        ids.insert(enqueue(&ca, &format!("?backoff=100&undelivered=dl/{i}"), format!("m{i}").as_bytes()).await);
    }
    for _ in 0..3 {
        take(&ca, "?wait=1s&visibility=1s").await.expect("leased by a");
    }
    assert_eq!(take(&cb, "?wait=0").await, None, "leased by a: not handed to b");
    tokio::task::block_in_place(|| a.kill9());
    let mut again = BTreeSet::new();
    let t0 = Instant::now();
    while again.len() < 3 {
        assert!(t0.elapsed() < Duration::from_secs(15), "redelivered only {again:?}:\n{}", tail(&b.log(), 30));
        if let Some((id, attempt, lease, _)) = take(&cb, "?wait=1s&visibility=10s").await {
            assert_eq!(attempt, 2, "{id}");
            assert_eq!(settle(&cb, "retry", &lease).await, 200);
            again.insert(id);
        }
    }
    assert_eq!(again, ids);
    for i in 0..3 {
        assert_eq!(cb.get(&format!("dl/{i}")).await, Some(format!("m{i}").into_bytes()), "dead-lettered after its last attempt");
    }
    assert_eq!(take(&cb, "?wait=300ms").await, None);
}

/// The scoped-tokens example guest: `queue:send` may enqueue (REST and KV
/// Connect) but not consume, `queue:receive` may consume but not enqueue,
/// a token without a queue scope may do neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_tokens_have_queue_scopes() {
    let s = start_temp(
        Opts::default()
            .env("KVSTORE_GUEST", guest_wasm("scoped_tokens_guest.wasm").to_str().unwrap())
            .env("KVSTORE_GUEST_TOKENS", "producer=rw:jobs/,queue:send;worker=rw:jobs/,queue:receive;plain=rw:jobs/"),
    );
    let post = |tok: &'static str, path: &str, body: &'static str| {
        reqwest::Client::new().post(format!("{}{path}", s.url)).header("authorization", format!("Bearer {tok}")).body(body)
    };
    assert_eq!(status_of(post("worker", "/_queue", "x")).await.0, 403);
    assert_eq!(status_of(post("plain", "/_queue", "x")).await.0, 403);
    let (st, body) = status_of(post("producer", "/_queue", "job-1")).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(status_of(post("producer", "/_queue/take", "")).await.0, 403);
    let r = post("worker", "/_queue/take?wait=1000", "").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let lease = r.headers()["x-sidekv-lease"].to_str().unwrap().to_string();
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"job-1");
    assert_eq!(status_of(post("plain", &format!("/_queue/ack?lease={lease}"), "")).await.0, 403);
    assert_eq!(status_of(post("worker", &format!("/_queue/ack?lease={lease}"), "")).await.0, 200);
}

/// Push keeps connections to the application alive; one the application
/// closed is sent again on a new connection, never counted as a failed
/// attempt (which would move a message towards its dead letter).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_survives_an_application_that_drops_keep_alive_connections() {
    let app = App::start(Answer::OkThenDrop).await;
    let s = start_temp(Opts::default().env("KVSTORE_QUEUE_URL", &app.url()).env("KVSTORE_QUEUE_CONCURRENCY", "2"));
    let c = s.client();
    for i in 0..200 {
        let r = c.req(Method::POST, "/_queue").body(format!("m{i}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
    let got = app
        .wait_for(Duration::from_secs(60), "200 messages pushed", |d| d.iter().map(|x| &x.body).collect::<BTreeSet<_>>().len() == 200)
        .await;
    assert!(
        got.iter().all(|d| d.attempt == 1),
        "a dropped connection counted as a failed attempt: {:?}",
        got.iter().map(|d| d.attempt).collect::<Vec<_>>()
    );
}
