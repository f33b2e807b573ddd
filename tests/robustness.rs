//! Robustness: a crash loop (kill -9 at random moments, relaunch with and
//! without the local database) and a linearizability check of concurrent
//! histories recorded across crashes.
//!
//! Quick profile in `make test`; `make soak` sets SIDEKV_SOAK=1 for the long
//! one (SIDEKV_CRASH_ROUNDS overrides the round count).

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

fn rounds(quick: usize, soak: usize) -> usize {
    if let Ok(n) = std::env::var("SIDEKV_CRASH_ROUNDS") {
        return n.parse().unwrap();
    }
    if std::env::var("SIDEKV_SOAK").is_ok() { soak } else { quick }
}

/// What a worker knows about one of its keys.
#[derive(Clone, Debug, Default)]
struct KeyModel {
    /// Last acknowledged state: value (None = deleted) and its versionstamp.
    acked: Option<(Option<Vec<u8>>, String)>,
    /// States of writes whose outcome is unknown (in flight at the kill).
    maybe: Vec<Option<Vec<u8>>>,
}

static ACKED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Every write in a test run gets its own id, so no two writes (even of
/// different rounds, whose workers restart their own counting) carry the
/// same bytes. The soak once failed with "value right but versionstamp
/// differs" because a worker of a later round, counting from 1 again, wrote
/// the very bytes of an acknowledged write of an earlier round, in flight at
/// the kill: the checker took the applied maybe-write for a re-stamped one.
static WRITE_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn value_for(worker: usize, size: usize) -> Vec<u8> {
    let id = WRITE_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut v = format!("w{worker}-i{id}-").into_bytes();
    let mut x = id.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    while v.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push(x as u8);
    }
    v
}

async fn worker(c: Client, w: usize, model: Arc<Mutex<HashMap<String, KeyModel>>>, seed: u64, stop: Arc<std::sync::atomic::AtomicBool>) {
    let mut rng = Rng(seed | 1);
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let key = format!("w{w}/k{}", rng.below(8));
        let current = model.lock().unwrap().get(&key).cloned().unwrap_or_default();
        let op = rng.below(10);
        let size = [64usize, 200, 1024, 8192, 65536][rng.below(5) as usize];
        let (req, new_state): (reqwest::RequestBuilder, Option<Vec<u8>>) = if op < 6 {
            let v = value_for(w, size);
            (c.req(reqwest::Method::POST, &format!("/{key}")).body(v.clone()), Some(v))
        } else if op < 8 {
            (c.req(reqwest::Method::DELETE, &format!("/{key}")), None)
        } else {
            // Conditional write on what we believe is current.
            let v = value_for(w, size);
            let mut r = c.req(reqwest::Method::POST, &format!("/{key}")).body(v.clone());
            r = match &current.acked {
                Some((Some(_), vs)) => r.header("if-match", format!("\"{vs}\"")),
                _ => r.header("if-none-match", "*"),
            };
            (r, Some(v))
        };
        model.lock().unwrap().entry(key.clone()).or_default().maybe.push(new_state.clone());
        match req.timeout(Duration::from_secs(20)).send().await {
            Ok(r) if r.status() == 200 => {
                let body: serde_json::Value = r.json().await.unwrap();
                let vs = body["versionstamp"].as_str().unwrap().to_string();
                let mut m = model.lock().unwrap();
                let km = m.get_mut(&key).unwrap();
                if let Some((_, prev)) = &km.acked {
                    assert!(vs > *prev, "versionstamps must increase: {vs} after {prev} on {key}");
                }
                km.acked = Some((new_state, vs));
                km.maybe.clear();
                ACKED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(r) if r.status() == 412 => {
                let mut m = model.lock().unwrap();
                m.get_mut(&key).unwrap().maybe.pop();
                // Only possible if our belief was stale, i.e. an earlier maybe-write applied.
                assert!(!m[&key].maybe.is_empty() || op >= 8, "unexpected 412 on {key}");
            }
            Ok(r) if r.status().is_server_error() => {
                // 503 while shutting down: outcome unknown, stays in `maybe`.
            }
            Ok(r) => panic!("unexpected {} on {key}: {}", r.status(), r.text().await.unwrap_or_default()),
            Err(_) => {
                // Connection died (kill -9): outcome unknown.
                return;
            }
        }
    }
}

/// Judge what the server serves for one key against the model: the last
/// acknowledged state (with its exact versionstamp), or one of the writes
/// whose outcome was unknown (which is then adopted as the known state).
fn judge(key: &str, km: &mut KeyModel, got: Option<Vec<u8>>, etag: Option<String>) -> Result<(), String> {
    let acked_value = km.acked.as_ref().map(|(v, _)| v.clone()).unwrap_or(None);
    let acked_vs = km.acked.as_ref().map(|(_, vs)| vs.clone());
    let exact = got == acked_value && (got.is_none() || etag == acked_vs);
    if exact {
        return Ok(());
    }
    if !km.maybe.contains(&got) {
        if got == acked_value {
            return Err(format!("{key}: value right but versionstamp differs (acknowledged {acked_vs:?}, served {etag:?})"));
        }
        return Err(format!(
            "{key}: an acknowledged write was lost or a phantom appeared (got {:?} bytes, acked {:?} bytes, {} maybe-writes)",
            got.as_ref().map(|v| v.len()),
            acked_value.as_ref().map(|v| v.len()),
            km.maybe.len()
        ));
    }
    // It applied: that is now the known state. A write in flight when the
    // server died came after the last acknowledged one, so its versionstamp
    // must be newer (an older or equal one is a re-stamp or a rollback).
    // A maybe-delete that applied has no versionstamp to compare.
    if got.is_some() {
        let Some(served) = etag else {
            return Err(format!("{key}: a value served without a versionstamp"));
        };
        if let Some(acked) = acked_vs.as_ref().filter(|a| !a.is_empty())
            && served <= *acked
        {
            return Err(format!("{key}: adopting a maybe-write whose versionstamp {served} is not newer than the acknowledged {acked}"));
        }
        km.acked = Some((got, served));
    } else {
        km.acked = Some((None, acked_vs.unwrap_or_default()));
    }
    Ok(())
}

#[test]
fn judge_tells_a_restamped_write_from_an_applied_maybe_write() {
    let v = b"w2-i17-".to_vec();
    let acked = || KeyModel { acked: Some((Some(v.clone()), "00000000000094be0000".into())), maybe: vec![] };
    // The soak's false alarm: a maybe-write of the very same bytes applied.
    let mut km = KeyModel { maybe: vec![Some(v.clone())], ..acked() };
    judge("k", &mut km, Some(v.clone()), Some("00000000000094f60001".into())).unwrap();
    assert_eq!(km.acked.as_ref().unwrap().1, "00000000000094f60001");
    // The same bytes under another versionstamp with no write in flight: a real re-stamp.
    assert!(judge("k", &mut acked(), Some(v.clone()), Some("00000000000094f60001".into())).is_err());
    // A maybe-write served under a versionstamp older than the acknowledged one: never adopted.
    let mut km = KeyModel { maybe: vec![Some(b"other".to_vec())], ..acked() };
    assert!(judge("k", &mut km, Some(b"other".to_vec()), Some("00000000000094bd0000".into())).is_err());
    let mut km = KeyModel { maybe: vec![Some(b"other".to_vec())], ..acked() };
    assert!(judge("k", &mut km, Some(b"other".to_vec()), Some("00000000000094be0000".into())).is_err());
    // Lost acknowledged write.
    assert!(judge("k", &mut acked(), None, None).is_err());
    assert!(judge("k", &mut acked(), Some(v), Some("00000000000094be0000".into())).is_ok());
    // Values never repeat, across rounds or workers.
    assert_ne!(value_for(2, 64), value_for(2, 64));
}

/// Check the server against the model; adopt maybe-applied writes that did apply.
async fn verify(c: &Client, model: &Mutex<HashMap<String, KeyModel>>) -> String {
    let keys: Vec<String> = model.lock().unwrap().keys().cloned().collect();
    let mut max_vs = String::new();
    for key in keys {
        let r = c.req(reqwest::Method::GET, &format!("/{key}")).send().await.unwrap();
        let (got, etag) = match r.status().as_u16() {
            200 => {
                let etag = r.headers()["etag"].to_str().unwrap().trim_matches('"').to_string();
                (Some(r.bytes().await.unwrap().to_vec()), Some(etag))
            }
            404 => (None, None),
            s => panic!("GET {key}: {s}"),
        };
        let mut m = model.lock().unwrap();
        let km = m.get_mut(&key).unwrap();
        judge(&key, km, got, etag).unwrap_or_else(|e| panic!("{e}"));
        km.maybe.clear();
        if let Some((_, vs)) = &km.acked
            && *vs > max_vs
        {
            max_vs = vs.clone();
        }
    }
    max_vs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_loses_no_acknowledged_write() {
    let n = rounds(20, 500);
    let s3 = S3::start();
    s3.create_bucket("crash-loop").await;
    let dir = tempdir();
    let db = dir.path().join("db.sqlite3");
    let opts = || {
        s3.env(Opts::default(), "crash-loop", "p")
            .env("KVSTORE_DURABILITY", "s3")
            .env("KVSTORE_SNAPSHOT_BYTES", "200000")
            .env("RUST_LOG", "warn")
    };
    let mut rng = Rng::seeded();
    let model: Arc<Mutex<HashMap<String, KeyModel>>> = Arc::default();
    let mut high_water = String::new();
    let started = Instant::now();
    let mut wiped = 0;
    for round in 0..n {
        let wipe = round % 2 == 1;
        if wipe {
            wiped += 1;
            for ext in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{ext}", db.display()));
            }
        } else if db.exists() {
            let conn = rusqlite::Connection::open(&db).unwrap();
            let ok: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
            assert_eq!(ok, "ok", "round {round}: integrity_check after kill -9");
        }
        let mut s = Server::start_at(&db, opts());
        let c = s.client();
        let max_vs = verify(&c, &model).await;
        assert!(max_vs >= high_water, "round {round}: state went back in time ({max_vs} < {high_water})");
        high_water = max_vs;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let workers: Vec<_> = (0..4).map(|w| tokio::spawn(worker(c.clone(), w, model.clone(), rng.next(), stop.clone()))).collect();
        tokio::time::sleep(Duration::from_millis(150 + rng.below(500))).await;
        s.kill9();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in workers {
            w.await.unwrap();
        }
    }
    let s = Server::start_at(&db, opts());
    let final_vs = verify(&s.client(), &model).await;
    let vs = s.client().set("after-the-storm", "x").await;
    assert!(vs > final_vs, "new writes get larger versionstamps");
    let keys = model.lock().unwrap().len();
    eprintln!(
        "crash loop: {n} rounds ({wiped} with the local database wiped), {} acknowledged writes over {keys} keys, in {:?}",
        ACKED.load(std::sync::atomic::Ordering::Relaxed),
        started.elapsed()
    );
    assert!(ACKED.load(std::sync::atomic::Ordering::Relaxed) > n as u64 * 4, "the load did not get going");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_are_linearizable_across_crashes() {
    let n_rounds = rounds(3, 50);
    let dir = tempdir();
    let db = dir.path().join("db.sqlite3");
    let mut rng = Rng::seeded();
    let h = Histories::new();
    for round in 0..n_rounds {
        let mut s = Server::start_at(&db, Opts::default().env("RUST_LOG", "warn"));
        let mut tasks = Vec::new();
        for _client in 0..6 {
            tasks.push(tokio::spawn(register_worker(vec![s.client()], format!("lin/r{round}-"), 12, Rng(rng.next() | 1), h.clone())));
        }
        // Crash in the middle of every other round.
        if round % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(30 + rng.below(60))).await;
            s.kill9();
        }
        for t in tasks {
            t.await.unwrap();
        }
        drop(s);
    }
    // The state after the last crash is part of the history: read every key once more.
    let s = Server::start_at(&db, Opts::default());
    h.read_all_once_more(&s.client()).await;
    let (keys, total) = h.assert_linearizable();
    eprintln!("linearizability: {keys} keys, {total} operations, {n_rounds} rounds, all linearizable");
}

#[test]
fn checker_accepts_and_rejects() {
    let e = |op, outcome, invoke, ret| Event { op, outcome, invoke, ret };
    // Sequential and consistent.
    assert!(linearizable(&[e(Op::Write(1), Outcome::Ok, 0, 1), e(Op::Read, Outcome::Value(Some(1)), 2, 3)]));
    // A stale read after a completed write is not linearizable.
    assert!(!linearizable(&[
        e(Op::Write(1), Outcome::Ok, 0, 1),
        e(Op::Write(2), Outcome::Ok, 2, 3),
        e(Op::Read, Outcome::Value(Some(1)), 4, 5)
    ]));
    // Overlapping: either order is fine.
    assert!(linearizable(&[e(Op::Write(1), Outcome::Ok, 0, 10), e(Op::Read, Outcome::Value(None), 1, 2)]));
    // An unknown write may be observed later, or never.
    assert!(linearizable(&[e(Op::Write(7), Outcome::Unknown, 0, u64::MAX), e(Op::Read, Outcome::Value(Some(7)), 5, 6)]));
    assert!(linearizable(&[e(Op::Write(7), Outcome::Unknown, 0, u64::MAX), e(Op::Read, Outcome::Value(None), 5, 6)]));
    // But not un-observed once seen.
    assert!(!linearizable(&[
        e(Op::Write(7), Outcome::Unknown, 0, u64::MAX),
        e(Op::Read, Outcome::Value(Some(7)), 5, 6),
        e(Op::Read, Outcome::Value(None), 7, 8)
    ]));
    // CAS that succeeded against the wrong value is caught.
    assert!(!linearizable(&[e(Op::Write(1), Outcome::Ok, 0, 1), e(Op::Cas { expect: Some(2), new: 3 }, Outcome::Ok, 2, 3)]));
}
