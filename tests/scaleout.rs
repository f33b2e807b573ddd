//! Many sidecars, one keyspace: two and three sidecars on one PostgreSQL
//! database (a real server the tests start) behave as one store —
//! linearizable across sidecars, exact counters and checks under
//! contention, watches and SSE fed by other sidecars' writes, one sweeper,
//! and no acknowledged write lost when the database restarts or a sidecar
//! is killed in the middle of its transactions.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use common::*;
use futures::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};

/// `n` sidecars on one fresh database of the shared server.
fn sidecars(n: usize) -> (String, Vec<TempServer>) {
    let db = fresh_database();
    let servers = (0..n).map(|_| start_on(&db, Opts::default().env("RUST_LOG", "warn"))).collect();
    (db, servers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn histories_are_linearizable_across_three_sidecars() {
    let (_db, s) = sidecars(3);
    let clients: Vec<Client> = s.iter().map(|s| s.client()).collect();
    let h = Histories::new();
    let mut rng = Rng::seeded();
    let mut tasks = Vec::new();
    for w in 0..9 {
        tasks.push(tokio::spawn(register_worker(clients.clone(), format!("lin/{}-", w % 2), 16, Rng(rng.next() | 1), h.clone())));
    }
    for t in tasks {
        t.await.unwrap();
    }
    h.read_all_once_more(&clients[2]).await;
    let (keys, ops) = h.assert_linearizable();
    eprintln!("three sidecars: {keys} keys, {ops} operations, all linearizable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counters_and_checks_are_exact_under_contention_across_sidecars() {
    let (_db, s) = sidecars(3);
    let clients: Vec<Client> = s.iter().map(|s| s.client()).collect();
    let cas_wins = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..12u64 {
        let c = clients[t as usize % 3].clone();
        let cas_wins = cas_wins.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20u64 {
                let sums = json!({"mutations": [
                    {"type": "sum", "key": "ctr/sum", "value": "1"},
                    {"type": "max", "key": "ctr/max", "value": (t * 100 + i).to_string()},
                    {"type": "min", "key": "ctr/min", "value": (5000 - t * 100 - i).to_string()},
                ]});
                assert_eq!(atomic(&c, sums).await.status(), 200);
                // Read-check-write increment: only one of the racers for a
                // given versionstamp may win.
                let r = c.req(Method::GET, "/ctr/cas").send().await.unwrap();
                let (check, cur) = match r.status().as_u16() {
                    404 => (Value::Null, 0u64),
                    200 => {
                        let vs = r.headers()["etag"].to_str().unwrap().trim_matches('"').to_string();
                        (Value::String(vs), r.text().await.unwrap().parse().unwrap())
                    }
                    s => panic!("GET: {s}"),
                };
                let body = json!({"checks": [{"key": "ctr/cas", "versionstamp": check}],
                                  "mutations": [{"type": "set", "key": "ctr/cas", "value": B64.encode((cur + 1).to_string())}]});
                match atomic(&c, body).await.status().as_u16() {
                    200 => {
                        cas_wins.fetch_add(1, Ordering::Relaxed);
                    }
                    409 => {}
                    s => panic!("atomic with a check: {s}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let c = &clients[0];
    assert_eq!(c.get("ctr/sum").await.unwrap(), b"240", "12 × 20 sums, each exactly once");
    assert_eq!(c.get("ctr/max").await.unwrap(), b"1119");
    assert_eq!(c.get("ctr/min").await.unwrap(), b"3881");
    let wins = cas_wins.load(Ordering::Relaxed);
    assert!(wins >= 20, "some increments must win ({wins})");
    assert_eq!(c.get("ctr/cas").await.unwrap(), wins.to_string().into_bytes(), "every winning check-and-set counted once");
}

/// Read SSE events until `want` arrive or `within` passes.
async fn sse_events(c: &Client, prefix: &str, want: usize, within: Duration, started: tokio::sync::oneshot::Sender<()>) -> Vec<Value> {
    let r = c.req(Method::GET, &format!("/_watch?prefix={prefix}")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let (mut buf, mut events) = (String::new(), Vec::new());
    let mut started = Some(started);
    let deadline = tokio::time::Instant::now() + within;
    while events.len() < want {
        let chunk = match tokio::time::timeout_at(deadline, body.next()).await {
            Ok(Some(Ok(b))) => b,
            _ => break,
        };
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        if let Some(s) = started.take() {
            let _ = s.send(());
        }
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            if let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: ")) {
                let mut v: Value = serde_json::from_str(data).unwrap();
                v["event"] = Value::String(block.lines().find_map(|l| l.strip_prefix("event: ")).unwrap_or("").into());
                events.push(v);
            }
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_and_sse_see_writes_made_through_another_sidecar() {
    let (_db, s) = sidecars(2);
    let (a, b) = (s[0].client(), s[1].client());
    // SSE on A, writes on B.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let reader = {
        let a = a.clone();
        tokio::spawn(async move { sse_events(&a, "feed/", 3, Duration::from_secs(10), tx).await })
    };
    rx.await.unwrap();
    let t0 = Instant::now();
    b.set("feed/1", "one").await;
    b.set("feed/2", "two").await;
    assert_eq!(b.req(Method::DELETE, "/feed/1").send().await.unwrap().status(), 200);
    let events = reader.await.unwrap();
    let delay = t0.elapsed();
    let got: Vec<(String, String)> =
        events.iter().map(|e| (e["event"].as_str().unwrap().into(), e["key"].as_str().unwrap().into())).collect();
    assert_eq!(got, [("set".into(), "feed/1".into()), ("set".into(), "feed/2".into()), ("delete".into(), "feed/1".into())]);
    eprintln!("SSE on sidecar A saw 3 writes made on B within {delay:?}");
    assert!(delay < Duration::from_secs(2), "delivery took {delay:?}");

    // Long-poll watch on A wakes for a write on B.
    let vs = b.set("w/k", "v1").await;
    let waiter = {
        let a = a.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            let r = a.req(Method::GET, &format!("/w/k?watch={vs}&timeout=10s")).send().await.unwrap();
            (r.status(), r.text().await.unwrap(), t.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.set("w/k", "v2").await;
    let (status, body, waited) = waiter.await.unwrap();
    assert_eq!((status.as_u16(), body.as_str()), (200, "v2"));
    assert!(waited < Duration::from_secs(3), "the watch woke after {waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expired_keys_are_swept_once_and_the_deletes_reach_the_change_feed() {
    let (db, s) = sidecars(3);
    let clients: Vec<Client> = s.iter().map(|s| s.client()).collect();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let reader = {
        let a = clients[0].clone();
        tokio::spawn(async move { sse_events(&a, "tmp/", 40, Duration::from_secs(15), tx).await })
    };
    rx.await.unwrap();
    for i in 0..20 {
        let c = &clients[i % 3];
        let r = c.req(Method::POST, &format!("/tmp/{i:02}?ttl=300")).body("x").send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    // Invisible at once...
    tokio::time::sleep(Duration::from_millis(400)).await;
    for c in &clients {
        assert_eq!(c.req(Method::GET, "/?prefix=tmp/&count=true").send().await.unwrap().json::<Value>().await.unwrap()["count"], 0);
    }
    // ...and swept by one sidecar, each delete recorded once.
    let events = reader.await.unwrap();
    let deletes: Vec<&str> = events.iter().filter(|e| e["event"] == "delete").map(|e| e["key"].as_str().unwrap()).collect();
    assert_eq!(deletes.len(), 20, "{events:#?}");
    assert_eq!(deletes.iter().collect::<HashSet<_>>().len(), 20, "each key deleted once");
    let dbname = db.rsplit('/').next().unwrap();
    let rows = pg_shared().psql(dbname, "SELECT count(*) FROM sidekv_kv WHERE key >= 'tmp/'::bytea AND key < 'tmp0'::bytea");
    assert_eq!(rows.trim(), "0", "the rows are gone");
    let holders = pg_shared().psql(dbname, "SELECT count(DISTINCT holder) FROM sidekv_leases WHERE name = 'sweeper'");
    assert_eq!(holders.trim(), "1");
}

/// A write loop that records what was acknowledged (key → versionstamp)
/// and how other answers looked, until `stop`.
async fn write_loop(c: Client, tag: String, stop: Arc<std::sync::atomic::AtomicBool>) -> (BTreeMap<String, String>, Vec<String>) {
    let (mut acked, mut refused) = (BTreeMap::new(), Vec::new());
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let key = format!("load/{tag}/{i:05}");
        match c.req(Method::POST, &format!("/{key}")).body(key.clone()).timeout(Duration::from_secs(20)).send().await {
            Ok(r) if r.status() == 200 => {
                let v: Value = r.json().await.unwrap();
                acked.insert(key, v["versionstamp"].as_str().unwrap().to_string());
            }
            Ok(r) => {
                refused.push(format!("{} {}", r.status(), r.text().await.unwrap_or_default()));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    (acked, refused)
}

async fn assert_all_present(c: &Client, acked: &BTreeMap<String, String>) {
    for (key, vs) in acked {
        let r = c.req(Method::GET, &format!("/{key}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{key} was acknowledged and is gone");
        assert_eq!(r.headers()["etag"].to_str().unwrap(), format!("\"{vs}\""), "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_restart_mid_load_loses_no_acknowledged_write() {
    let pg = PgServer::start();
    pg.create_database("kv");
    let url = pg.url("kv");
    let opts = Opts::default().env("RUST_LOG", "warn").env("KVSTORE_ADMIN_ADDR", "127.0.0.1:0");
    let s: Vec<TempServer> = (0..2).map(|_| start_on(&url, opts.clone())).collect();
    let readyz = format!("{}/readyz", s[0].admin_url.clone().unwrap());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loops: Vec<_> = (0..4).map(|w| tokio::spawn(write_loop(s[w % 2].client(), format!("w{w}"), stop.clone()))).collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    pg.stop();
    // While it is down: 503 that says so, and not ready.
    let r = s[0].client().req(Method::POST, "/down/probe").body("x").send().await.unwrap();
    let (status, text) = (r.status().as_u16(), r.text().await.unwrap());
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("PostgreSQL"), "the 503 names the database: {text}");
    let readiness = |want: u16| {
        let readyz = readyz.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let r = reqwest::get(&readyz).await.unwrap();
                let (st, text) = (r.status().as_u16(), r.text().await.unwrap());
                if st == want {
                    return text;
                }
                assert!(Instant::now() < deadline, "/readyz stayed {st}: {text}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let why = readiness(503).await;
    assert!(why.contains("PostgreSQL unreachable"), "{why}");
    pg.restart();
    readiness(200).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut acked, mut refused) = (BTreeMap::new(), Vec::new());
    for l in loops {
        let (a, r) = l.await.unwrap();
        acked.extend(a);
        refused.extend(r);
    }
    assert!(acked.len() > 50, "the load made progress ({} acknowledged)", acked.len());
    for r in &refused {
        assert!(r.starts_with("503"), "only 503s while the database was away: {r}");
    }
    assert_all_present(&s[1].client(), &acked).await;
    eprintln!("database restart: {} acknowledged writes all present; {} refused with 503", acked.len(), refused.len());
    // Writes work again through both.
    for x in &s {
        x.client().set("after/restart", "ok").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sidecar_killed_mid_transaction_stops_nobody_else() {
    let (_db, mut s) = sidecars(2);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let victim: Vec<_> = (0..4).map(|w| tokio::spawn(write_loop(s[0].client(), format!("v{w}"), stop.clone()))).collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    s[0].kill9();
    stop.store(true, Ordering::Relaxed);
    let mut acked = BTreeMap::new();
    for l in victim {
        acked.extend(l.await.unwrap().0);
    }
    // Its open transaction (and the clock lock) die with its connections:
    // the other sidecar writes at once.
    let t = Instant::now();
    let b = s[1].client();
    for i in 0..20 {
        b.set(&format!("survivor/{i}"), "x").await;
    }
    assert!(t.elapsed() < Duration::from_secs(5), "writes on the survivor took {:?}", t.elapsed());
    assert!(!acked.is_empty());
    assert_all_present(&b, &acked).await;
}

#[test]
fn s3_backup_with_postgres_is_refused_at_start() {
    let dir = tempdir();
    let mut cmd = base_command(dir.path());
    let out = cmd
        .env("KVSTORE_SECRET", SECRET)
        .env("KVSTORE_BACKEND", "postgres://nobody@127.0.0.1:1/x")
        .env("KVSTORE_S3_URL", "s3://bucket/prefix")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("KVSTORE_S3_URL") && err.contains("WAL archiving"), "{err}");
}
