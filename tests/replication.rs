//! Replication end to end: the real binary, a real S3 (moto), crashes,
//! outages, fencing, corruption, snapshots and point-in-time restore.
//!
//! Every test starts its own moto and uses its own bucket and prefix.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::{Client, Opts, S3, Server, gauge, terminate, terminate_not_backed_up, try_set, wait_caught_up, wipe};

/// key → (value, versionstamp)
use common::{State, dump, get_vs, read_db};

struct Ctx {
    s3: S3,
    bucket: String,
    prefix: String,
    dir: tempfile::TempDir,
}

impl Ctx {
    async fn new(name: &str) -> Ctx {
        let s3 = tokio::task::block_in_place(S3::start);
        // Unique per run too, in case SIDEKV_TEST_S3_ENDPOINT points at a long-lived server.
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let bucket = format!("repl-{name}-{}-{nanos}", std::process::id());
        s3.create_bucket(&bucket).await;
        Ctx { s3, bucket, prefix: format!("{name}/data"), dir: common::tempdir() }
    }

    /// Pause/resume need the moto process this harness started.
    fn can_pause(&self) -> bool {
        if self.s3.port == 0 {
            eprintln!("SIDEKV_TEST_S3_ENDPOINT is set: cannot simulate an S3 outage; skipping");
        }
        self.s3.port != 0
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn db(&self) -> PathBuf {
        self.path("db.sqlite3")
    }

    fn opts(&self, extra: &[(&str, &str)]) -> Opts {
        let mut o = self.s3.env(Opts::default(), &self.bucket, &self.prefix).env("NO_COLOR", "1");
        for (k, v) in extra {
            o = o.env(k, v);
        }
        o
    }

    fn start(&self, db: &Path, extra: &[(&str, &str)]) -> Server {
        let opts = self.opts(extra);
        tokio::task::block_in_place(|| Server::start_at(db, opts))
    }

    /// A `sidekv` subcommand with this test's S3 settings and a clean env.
    fn command(&self, args: &[&str], extra: &[(&str, &str)]) -> Output {
        let mut cmd = common::base_command(self.dir.path());
        for (k, v) in &self.opts(extra).env {
            cmd.env(k, v);
        }
        cmd.args(args);
        tokio::task::block_in_place(|| cmd.output().expect("running sidekv"))
    }

    fn restore(&self, to: &Path, at: Option<&str>) -> Output {
        let to = to.to_str().unwrap();
        let mut args = vec!["restore", "--to", to];
        if let Some(at) = at {
            args.extend(["--at", at]);
        }
        self.command(&args, &[])
    }

    /// Object keys under `prefix/<dir>/`.
    async fn objects(&self, dir: &str) -> Vec<String> {
        let mut v = self.s3.list(&self.bucket, &format!("{}/{dir}/", self.prefix)).await;
        v.sort();
        v
    }
}

fn text(o: &Output) -> String {
    plain(&format!("status {}\nstdout:\n{}\nstderr:\n{}", o.status, String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

/// Without ANSI colour sequences (the env sets NO_COLOR; this is belt and braces).
fn plain(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(ch) = it.next() {
        if ch == '\u{1b}' {
            for c in it.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(ch);
        }
    }
    out
}

fn log(s: &Server) -> String {
    plain(&s.log())
}

/// The counter of a `segments/<20 digits>.seg.zst` or `snapshots/<20 digits>...` key.
fn counter_of(key: &str) -> u64 {
    key.rsplit('/').next().unwrap()[..20].parse().unwrap()
}

fn vs_counter(vs: &str) -> u64 {
    u64::from_str_radix(&vs[..16], 16).unwrap()
}

/// The first counter of the epoch after the one holding `counter` (epochs
/// are 2^32 counters; a restore moves to the next one).
fn next_epoch_start(counter: u64) -> u64 {
    ((counter >> 32) + 1) << 32
}

async fn delete(c: &Client, key: &str) -> String {
    let r = c.req(reqwest::Method::DELETE, &format!("/{key}")).send().await.unwrap();
    assert_eq!(r.status(), 200, "DELETE /{key}");
    let v: serde_json::Value = r.json().await.unwrap();
    v["versionstamp"].as_str().unwrap().to_string()
}

fn meta_u64(path: &Path, name: &str) -> Option<u64> {
    let c = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    c.query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| r.get::<_, i64>(0)).ok().map(|v| v as u64)
}

fn assert_has_all(restored: &State, acked: &State, what: &str) {
    let mut missing = Vec::new();
    for (k, v) in acked {
        match restored.get(k) {
            Some(got) if got == v => {}
            Some(got) => panic!(
                "{what}: {k} restored as ({:?}, {}), acknowledged as ({:?}, {})",
                String::from_utf8_lossy(&got.0),
                got.1,
                String::from_utf8_lossy(&v.0),
                v.1
            ),
            None => missing.push(k.clone()),
        }
    }
    assert!(missing.is_empty(), "{what}: {} acknowledged writes lost, e.g. {:?}", missing.len(), &missing[..missing.len().min(10)]);
}

// ---------------------------------------------- SIGTERM, lost disk ----

/// N acknowledged concurrent writes survive SIGTERM + losing the disk:
/// identical values and versionstamps, and the counter continues past them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relaunch_after_sigterm_restores_every_acknowledged_write() {
    let ctx = Ctx::new("relaunch").await;
    let db = ctx.db();
    // A long sync interval: nothing ships on its own, so what reaches S3 is
    // what the SIGTERM drain sends.
    let env = [("KVSTORE_DURABILITY", "local"), ("KVSTORE_SYNC_INTERVAL", "60s")];
    let mut s = ctx.start(&db, &env);
    let c = s.client();
    let n = 400;
    let mut tasks = Vec::new();
    for w in 0..8 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in (w..n).step_by(8) {
                let key = format!("k{i:04}");
                let value = format!("value-{i}-{}", "x".repeat(i % 50));
                let vs = try_set(&c, &key, value.clone()).await.unwrap_or_else(|e| panic!("write {key}: {e:?}"));
                acked.push((key, (value.into_bytes(), vs)));
            }
            acked
        }));
    }
    let mut acked = State::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert_eq!(acked.len(), n);
    // A few overwrites and a delete, so the replay has to get order right.
    for i in 0..10 {
        let key = format!("k{i:04}");
        let value = format!("second-{i}");
        let vs = try_set(&c, &key, value.clone()).await.unwrap();
        acked.insert(key, (value.into_bytes(), vs));
    }
    let deleted_vs = delete(&c, "k0399").await;
    acked.remove("k0399");
    assert_eq!(dump(&c).await, acked, "served state before the restart");
    assert_eq!(ctx.objects("segments").await, Vec::<String>::new(), "nothing should ship before the 60 s interval");
    terminate(&mut s);
    assert!(log(&s).contains("outbox drained to S3"), "{}", log(&s));
    assert!(!ctx.objects("segments").await.is_empty());
    wipe(&db);

    let s2 = ctx.start(&db, &env);
    assert!(log(&s2).contains("restore complete"), "{}", log(&s2));
    let c2 = s2.client();
    let restored = dump(&c2).await;
    assert_eq!(restored.len(), acked.len());
    assert_eq!(restored, acked);
    // Spot-check single GETs: value and ETag.
    for k in ["k0000", "k0005", "k0123", "k0398"] {
        assert_eq!(get_vs(&c2, k).await.as_ref(), acked.get(k), "{k}");
    }
    assert_eq!(get_vs(&c2, "k0399").await, None);
    let max = acked.values().map(|(_, vs)| vs.clone()).max().unwrap();
    let vs = try_set(&c2, "after", "restart").await.unwrap();
    assert!(vs > max && vs > deleted_vs, "new versionstamp {vs} must be after every restored one (max {max}, delete {deleted_vs})");
    // A restored database numbers its commits in a new epoch (never reusing
    // a versionstamp a lost disk may have handed out).
    assert_eq!(vs_counter(&vs), next_epoch_start(vs_counter(&deleted_vs)) + 1, "the counter continues in a new epoch");
}

// ------------------------------------------ kill -9, s3 durability ----

/// `KVSTORE_DURABILITY=s3`: a 200 means the write is in S3. Concurrent
/// writers, SIGKILL mid-load, the disk is lost: every acknowledged write is
/// restored with its value and versionstamp, and nothing that was never sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_in_s3_mode_loses_no_acknowledged_write() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let ctx = Ctx::new("kill9s3").await;
    let db = ctx.db();
    let env = [("KVSTORE_DURABILITY", "s3")];
    let mut s = ctx.start(&db, &env);
    let c = s.client();
    let acked_count = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (c, acked_count) = (c.clone(), acked_count.clone());
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut attempted = Vec::new();
            for i in 0..2000 {
                let key = format!("w{w}-{i:05}");
                let value = format!("v{w}.{i}");
                attempted.push((key.clone(), value.clone()));
                match try_set(&c, &key, value.clone()).await {
                    Ok(vs) => {
                        acked.push((key, (value.into_bytes(), vs)));
                        acked_count.fetch_add(1, Ordering::SeqCst);
                    }
                    // The server is gone: stop.
                    Err((0, _)) => break,
                    Err((st, body)) => return Err(format!("{key}: {st} {body}")),
                }
            }
            Ok((acked, attempted))
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked_count.load(Ordering::SeqCst) < 300 {
        assert!(Instant::now() < deadline, "too slow: {} writes in 30 s", acked_count.load(Ordering::SeqCst));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::task::block_in_place(|| s.kill9());
    let mut acked = State::new();
    let mut attempted = BTreeMap::new();
    for t in tasks {
        let (a, at) = t.await.unwrap().expect("no write may fail before the kill");
        acked.extend(a);
        attempted.extend(at);
    }
    assert!(acked.len() >= 300);
    wipe(&db);

    let s2 = ctx.start(&db, &env);
    let restored = dump(&s2.client()).await;
    assert_has_all(&restored, &acked, "s3 durability after kill -9");
    // Whatever else came back was really sent (in flight at the kill): at most one per writer.
    let extra: Vec<&String> = restored.keys().filter(|k| !acked.contains_key(*k)).collect();
    assert!(extra.len() <= 8, "more unacknowledged writes restored than were in flight: {extra:?}");
    for k in extra {
        assert_eq!(restored[k].0, attempted[k].as_bytes(), "{k}");
    }
    let max = restored.values().map(|v| v.1.clone()).max().unwrap();
    let vs = try_set(&s2.client(), "after", "x").await.unwrap();
    assert!(vs > max, "{vs} <= {max}");
}

// --------------------------------------- kill -9, local durability ----

/// `KVSTORE_DURABILITY=local`: after SIGKILL and a lost disk, the restored
/// state is a prefix of the acknowledged history (no holes), and writes
/// acknowledged well before the crash (>2 s, sync interval 200 ms) are in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_in_local_mode_restores_a_prefix() {
    let ctx = Ctx::new("kill9local").await;
    let db = ctx.db();
    let env = [("KVSTORE_DURABILITY", "local"), ("KVSTORE_SYNC_INTERVAL", "200ms")];
    let mut s = ctx.start(&db, &env);
    let c = s.client();
    let writer = tokio::spawn(async move {
        let mut acked: Vec<(String, Instant)> = Vec::new();
        for i in 0..1_000_000usize {
            match try_set(&c, &format!("k{i:06}"), i.to_string()).await {
                Ok(vs) => acked.push((vs, Instant::now())),
                Err((0, _)) => return (acked, i),
                Err(e) => panic!("write {i}: {e:?}"),
            }
        }
        unreachable!()
    });
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let killed_at = Instant::now();
    tokio::task::block_in_place(|| s.kill9());
    let (acked, attempted) = writer.await.unwrap();
    assert!(acked.len() > 100, "only {} writes acknowledged", acked.len());
    // k{attempted} was in flight at the kill: it may or may not have committed.
    assert!(attempted == acked.len());
    wipe(&db);

    let s2 = ctx.start(&db, &env);
    let restored = dump(&s2.client()).await;
    let m = restored.len();
    for (i, (k, (v, vs))) in restored.iter().enumerate() {
        assert_eq!(k, &format!("k{i:06}"), "hole in the restored history: {} keys restored but k{i:06} is missing", m);
        assert_eq!(v, i.to_string().as_bytes(), "{k}");
        if i < acked.len() {
            assert_eq!(vs, &acked[i].0, "{k} versionstamp");
        }
    }
    assert!(m <= attempted + 1, "restored {m} keys but only {} writes were sent", attempted + 1);
    let old = acked.iter().filter(|(_, t)| killed_at.duration_since(*t) > Duration::from_secs(2)).count();
    assert!(old > 0);
    assert!(m >= old, "writes acknowledged >2 s before the kill were lost: restored {m}, needed {old} (acked {})", acked.len());
    eprintln!("local mode kill -9: {} acked, {m} restored, {old} acked >2 s before the kill", acked.len());
    if m > 0 {
        let last = &restored[&format!("k{:06}", m - 1)].1;
        let vs = try_set(&s2.client(), "after", "x").await.unwrap();
        // Not last + 1: the writes after `last` were acknowledged and lost
        // with the disk; their versionstamps are never handed out again.
        assert_eq!(vs_counter(&vs), next_epoch_start(vs_counter(last)) + 1);
    }
}

// ------------------------------------------------------ S3 outages ----

/// An S3 outage: in local mode writes keep succeeding and everything ships
/// once S3 is back; in s3 mode a write fails fast with 503 and writes
/// succeed again after S3 returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_outage() {
    let ctx = Ctx::new("outage").await;
    if !ctx.can_pause() {
        return;
    }
    // ---- local mode ----
    let db = ctx.db();
    let env = [("KVSTORE_DURABILITY", "local"), ("KVSTORE_SYNC_INTERVAL", "200ms"), ("KVSTORE_ADMIN_ADDR", "127.0.0.1:0")];
    let mut s = ctx.start(&db, &env);
    let c = s.client();
    let mut acked = State::new();
    for i in 0..20 {
        let (k, v) = (format!("before-{i:03}"), format!("b{i}"));
        acked.insert(k.clone(), (v.clone().into_bytes(), try_set(&c, &k, v).await.unwrap()));
    }
    wait_caught_up(&s, Duration::from_secs(10)).await;
    ctx.s3.pause();
    let started = Instant::now();
    for i in 0..200 {
        let (k, v) = (format!("during-{i:03}"), format!("d{i}"));
        let t = Instant::now();
        let vs = try_set(&c, &k, v.clone()).await.unwrap_or_else(|e| panic!("local mode write during an S3 outage: {e:?}"));
        // Well under the 10 s an s3-mode write would wait: local mode does not wait for S3.
        assert!(t.elapsed() < Duration::from_secs(5), "a local-mode write took {:?} during the outage", t.elapsed());
        acked.insert(k, (v.into_bytes(), vs));
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let outbox = gauge(&s, "sidekv_outbox_commits").await;
    assert!(outbox >= 200.0, "S3 is paused, yet only {outbox} commits wait in the outbox");
    assert!(started.elapsed() < Duration::from_secs(20));
    ctx.s3.resume();
    wait_caught_up(&s, Duration::from_secs(60)).await;
    terminate(&mut s);
    wipe(&db);
    let mut s = ctx.start(&db, &env);
    assert_eq!(dump(&s.client()).await, acked, "state restored after the outage");
    terminate(&mut s);

    // ---- s3 mode (another prefix) ----
    let db2 = ctx.path("s3mode.sqlite3");
    // A generous guest deadline keeps this about the store's behaviour;
    // `s3_mode_outage_with_default_settings_answers_503` covers the defaults.
    let url = format!("s3://{}/{}-s3mode", ctx.bucket, ctx.prefix);
    let env2 = [("KVSTORE_DURABILITY", "s3"), ("KVSTORE_S3_URL", &url), ("KVSTORE_GUEST_TIMEOUT_MS", "30000")];
    let mut s = ctx.start(&db2, &env2);
    let c = s.client();
    let mut acked = State::new();
    for i in 0..5 {
        let (k, v) = (format!("ok-{i}"), format!("o{i}"));
        acked.insert(k.clone(), (v.clone().into_bytes(), try_set(&c, &k, v).await.unwrap()));
    }
    ctx.s3.pause();
    let t = Instant::now();
    let (a, b) = tokio::join!(try_set(&c, "lost-1", "x"), try_set(&c, "lost-2", "y"));
    let took = t.elapsed();
    for r in [&a, &b] {
        match r {
            Err((503, msg)) => assert!(msg.contains("S3"), "503 message should say why: {msg}"),
            other => panic!("s3 mode write while S3 is down: expected 503, got {other:?}"),
        }
    }
    assert!(took < Duration::from_secs(15), "s3-mode writes took {took:?} to fail");
    ctx.s3.resume();
    let t = Instant::now();
    let vs = loop {
        match try_set(&c, "back", "z").await {
            Ok(vs) => break vs,
            Err((503, _)) if t.elapsed() < Duration::from_secs(45) => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(e) => panic!("s3 mode after S3 came back: {e:?}\n{}", log(&s)),
        }
    };
    eprintln!("s3 mode: writes failed after {took:?}; accepted again {:?} after resume", t.elapsed());
    acked.insert("back".into(), (b"z".to_vec(), vs));
    for i in 0..5 {
        let (k, v) = (format!("again-{i}"), format!("a{i}"));
        acked.insert(k.clone(), (v.clone().into_bytes(), try_set(&c, &k, v).await.unwrap()));
    }
    terminate(&mut s);
    wipe(&db2);
    let s = ctx.start(&db2, &env2);
    let restored = dump(&s.client()).await;
    assert_has_all(&restored, &acked, "s3 mode after the outage");
    // The 503s said "committed locally, not acknowledged": they shipped later.
    let extra: Vec<_> = restored.keys().filter(|k| !acked.contains_key(*k)).cloned().collect();
    assert!(extra.iter().all(|k| k == "lost-1" || k == "lost-2"), "{extra:?}");
}

/// With default settings, an s3-mode write during an S3 outage gets the
/// store's explanatory 503 ("did not reach S3 within 10s ..."), not a 504
/// from the guest deadline (5 s by default, shorter than the 10 s ack wait):
/// time spent waiting for the store must not count against the guest.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_mode_outage_with_default_settings_answers_503() {
    let ctx = Ctx::new("outagedefault").await;
    if !ctx.can_pause() {
        return;
    }
    let db = ctx.db();
    let mut s = ctx.start(&db, &[("KVSTORE_DURABILITY", "s3")]);
    let c = s.client();
    try_set(&c, "ok", "1").await.unwrap();
    ctx.s3.pause();
    let t = Instant::now();
    let r = try_set(&c, "during", "2").await;
    let took = t.elapsed();
    ctx.s3.resume();
    let msg = match r {
        Err((503, msg)) => msg,
        other => panic!("expected 503 after {took:?}, got {other:?}"),
    };
    assert!(msg.contains("S3") && msg.contains("not acknowledged"), "{msg}");
    assert!(took < Duration::from_secs(15));
    // The 503 names the versionstamp the write committed under, so the
    // client can tell its fate: here it shipped once S3 answered.
    let vs = msg.split("versionstamp ").nth(1).and_then(|r| r.get(..20)).unwrap_or_else(|| panic!("no versionstamp in {msg:?}"));
    assert_eq!(get_vs(&c, "during").await.map(|(_, e)| e).as_deref(), Some(vs));
    terminate(&mut s);
}

// --------------------------------------------------------- fencing ----

/// Two instances on one S3 path: exactly one keeps writing, the other is
/// fenced (503 naming another writer, FENCED in its log, not ready), and the
/// backup is exactly the winner's history.
async fn fencing(name: &str, seeded: bool) {
    let ctx = Ctx::new(name).await;
    let env = [("KVSTORE_DURABILITY", "local"), ("KVSTORE_SYNC_INTERVAL", "200ms"), ("KVSTORE_ADMIN_ADDR", "127.0.0.1:0")];
    // Optionally a history both instances restore at launch.
    let mut seed = State::new();
    if seeded {
        let mut s = ctx.start(&ctx.path("seed.sqlite3"), &env);
        let c = s.client();
        for i in 0..30 {
            let (k, v) = (format!("seed-{i:02}"), format!("s{i}"));
            seed.insert(k.clone(), (v.clone().into_bytes(), try_set(&c, &k, v).await.unwrap()));
        }
        terminate(&mut s);
    }
    let (db_a, db_b) = (ctx.path("a.sqlite3"), ctx.path("b.sqlite3"));
    let mut a = ctx.start(&db_a, &env);
    let mut b = ctx.start(&db_b, &env);
    assert_eq!(dump(&a.client()).await, seed);
    assert_eq!(dump(&b.client()).await, seed);
    let run = |c: Client, name: &'static str| {
        tokio::spawn(async move {
            let mut acked = State::new();
            let t = Instant::now();
            let mut i = 0;
            while t.elapsed() < Duration::from_secs(5) {
                let (k, v) = (format!("{name}-{i:04}"), format!("{name}{i}"));
                match try_set(&c, &k, v.clone()).await {
                    Ok(vs) => {
                        acked.insert(k, (v.into_bytes(), vs));
                    }
                    Err(e) => return (acked, Some((e, t.elapsed()))),
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (acked, None)
        })
    };
    let (ra, rb) = (run(a.client(), "a"), run(b.client(), "b"));
    let (ra, rb) = (ra.await.unwrap(), rb.await.unwrap());
    let (winner, loser, w_acked, l_err, w_db, wn, ln) = match (&ra.1, &rb.1) {
        (None, Some(e)) => (&mut a, &mut b, ra.0.clone(), e.clone(), &db_a, "a", "b"),
        (Some(e), None) => (&mut b, &mut a, rb.0.clone(), e.clone(), &db_b, "b", "a"),
        _ => panic!("expected exactly one fenced writer: a {:?}, b {:?}\nA:\n{}\nB:\n{}", ra.1, rb.1, log(&a), log(&b)),
    };
    let ((status, msg), when) = l_err;
    eprintln!("{name}: {ln} fenced after {when:?}: {msg}");
    assert_eq!(status, 503, "{msg}");
    assert!(msg.contains("another"), "the 503 should name another writer: {msg}");
    assert!(when < Duration::from_secs(4), "fenced only after {when:?}");
    assert!(log(loser).contains("FENCED"), "{}", log(loser));
    assert!(!log(winner).contains("FENCED"), "{}", log(winner));
    // The loser still serves reads, is not ready, and keeps refusing writes.
    assert!(get_vs(&loser.client(), &format!("{ln}-0000")).await.is_some());
    assert_eq!(reqwest::get(format!("{}/readyz", loser.admin_url.as_ref().unwrap())).await.unwrap().status(), 503);
    assert_eq!(reqwest::get(format!("{}/readyz", winner.admin_url.as_ref().unwrap())).await.unwrap().status(), 200);
    assert_eq!(gauge(loser, "sidekv_replication_fenced").await, 1.0);
    assert!(matches!(try_set(&loser.client(), "late", "x").await, Err((503, _))));
    assert!(w_acked.len() > 50);

    terminate(winner);
    // The loser's acknowledged local-mode writes exist only on its disk: its
    // stop says so (exit 3) instead of exiting as if backed up.
    let loser_log = terminate_not_backed_up(loser, Duration::from_secs(30));
    assert!(plain(&loser_log).contains("fenced"), "{}", plain(&loser_log));
    let winner_state = read_db(w_db);
    let mut expected = seed.clone();
    expected.extend(w_acked);
    assert_eq!(winner_state, expected, "the winner's local database holds the seed and what it acknowledged");
    let to = ctx.path("restored.sqlite3");
    let out = ctx.restore(&to, None);
    assert!(out.status.success(), "{}", text(&out));
    let restored = read_db(&to);
    assert_eq!(restored, winner_state, "the backup is exactly writer {wn}'s history");
    assert!(!restored.keys().any(|k| k.starts_with(ln)), "writer {ln}'s writes leaked into the backup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fencing_two_writers_from_empty() {
    fencing("fenceempty", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fencing_two_writers_from_a_restored_state() {
    fencing("fencerestored", true).await;
}

// -------------------------------------- corrupt or missing backups ----

/// Start a server expected to fail at launch: it must exit non-zero without
/// ever answering a read with 200. Returns its log.
async fn serve_must_fail(ctx: &Ctx, db: &Path, extra: &[(&str, &str)]) -> String {
    let port = common::free_port().to_string();
    let mut env: Vec<(&str, &str)> = extra.to_vec();
    env.push(("PORT", &port));
    let mut opts = ctx.opts(&env);
    opts.no_wait = true;
    let mut s = Server::start_at(db, opts);
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "sidekv kept running on a corrupt backup:\n{}", log(&s));
        if let Ok(r) = http.get(format!("http://127.0.0.1:{port}/k00")).header("authorization", common::SECRET).send().await {
            assert_ne!(r.status(), 200, "sidekv served a read from a backup it could not restore");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success(), "sidekv exited with {status}:\n{}", log(&s));
    assert!(!db.exists(), "a failed restore left a database behind at {}", db.display());
    log(&s)
}

/// A corrupted or missing segment makes restore (at launch and with
/// `sidekv restore`) fail loudly, naming the problem, and serve nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupt_or_missing_segment_fails_loudly() {
    let ctx = Ctx::new("corrupt").await;
    let db = ctx.db();
    // s3 mode and sequential writes: one segment per write.
    let env = [("KVSTORE_DURABILITY", "s3")];
    let mut s = ctx.start(&db, &env);
    let c = s.client();
    let mut acked = State::new();
    for i in 0..12 {
        let (k, v) = (format!("k{i:02}"), format!("value {i}"));
        acked.insert(k.clone(), (v.clone().into_bytes(), try_set(&c, &k, v).await.unwrap()));
    }
    terminate(&mut s);
    let segs = ctx.objects("segments").await;
    assert!(segs.len() >= 5, "expected a segment per write, got {segs:?}");
    let mid = segs[segs.len() / 2].clone();
    let original = ctx.s3.get_signed(&ctx.bucket, &mid).await;
    wipe(&db);

    // 1. Garbage instead of a segment.
    ctx.s3.put_signed(&ctx.bucket, &mid, b"this is not a segment at all".to_vec()).await;
    let log = serve_must_fail(&ctx, &db, &env).await;
    assert!(log.contains("corrupt") && log.contains(&mid), "the failure should say the segment is corrupt:\n{log}");
    let to = ctx.path("r1.sqlite3");
    let out = ctx.restore(&to, None);
    assert!(!out.status.success() && text(&out).contains("corrupt"), "{}", text(&out));
    assert!(!to.exists());

    // 2. A valid zstd frame around a segment with one flipped bit: the checksum catches it.
    let mut raw = zstd::decode_all(&original[..]).unwrap();
    let n = raw.len();
    raw[n - 8] ^= 0x10;
    ctx.s3.put_signed(&ctx.bucket, &mid, zstd::encode_all(&raw[..], 3).unwrap()).await;
    let log = serve_must_fail(&ctx, &db, &env).await;
    assert!(log.contains("checksum"), "the failure should name the checksum:\n{log}");
    let out = ctx.restore(&to, None);
    assert!(!out.status.success() && text(&out).contains("checksum mismatch"), "{}", text(&out));

    // 3. The original bytes back: restore works and is exact (the failures were the corruption).
    ctx.s3.put_signed(&ctx.bucket, &mid, original).await;
    let out = ctx.restore(&to, None);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(read_db(&to), acked);

    // 4. A missing middle segment: restore refuses to skip the gap and names the commit.
    ctx.s3.delete_signed(&ctx.bucket, &mid).await;
    let gap = format!("commit {} is in no segment", counter_of(&mid));
    let to2 = ctx.path("r2.sqlite3");
    let out = ctx.restore(&to2, None);
    assert!(!out.status.success() && text(&out).contains(&gap), "expected {gap:?}:\n{}", text(&out));
    assert!(!to2.exists());
    let log = serve_must_fail(&ctx, &db, &env).await;
    assert!(log.contains(&gap), "expected {gap:?}:\n{log}");
}

// ----------------------------------------- snapshots and retention ----

/// key, value (None = delete), versionstamp: what was acknowledged, in any order.
type History = Vec<(String, Option<Vec<u8>>, String)>;

/// The state the history produces up to and including versionstamp `at`.
fn state_at(h: &History, at: &str) -> State {
    let mut ops: Vec<_> = h.iter().filter(|op| op.2.as_str() <= at).collect();
    ops.sort_by(|a, b| a.2.cmp(&b.2));
    let mut s = State::new();
    for (k, v, vs) in ops {
        match v {
            Some(v) => s.insert(k.clone(), (v.clone(), vs.clone())),
            None => s.remove(k),
        };
    }
    s
}

/// Hard-to-compress text, deterministic.
fn noise(seed: u64, len: usize) -> String {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut s = String::with_capacity(len);
    while s.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push_str(&format!("{x:016x}"));
    }
    s.truncate(len);
    s
}

/// Small `KVSTORE_SNAPSHOT_BYTES`: snapshots are taken, are plain
/// zstd-compressed SQLite holding exactly the state at their commit,
/// retention keeps the newest N (and drops segments they cover), and a
/// restore after losing the disk starts from the newest one and is exact.
/// `sidekv snapshot` adds one by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshots_and_retention() {
    let ctx = Ctx::new("snapshots").await;
    let db = ctx.db();
    let env = [
        ("KVSTORE_DURABILITY", "local"),
        ("KVSTORE_SYNC_INTERVAL", "200ms"),
        ("KVSTORE_SNAPSHOT_BYTES", "2000"),
        ("KVSTORE_SNAPSHOT_RETENTION", "2"),
        ("KVSTORE_ADMIN_ADDR", "127.0.0.1:0"),
    ];
    let mut s = ctx.start(&db, &env);
    let c = s.client();
    let mut hist = History::new();
    for round in 0..6u64 {
        for j in 0..30u64 {
            let k = format!("k{:02}", (round * 13 + j) % 50);
            let v = noise(round * 1000 + j, 300);
            let vs = try_set(&c, &k, v.clone()).await.unwrap();
            hist.push((k, Some(v.into_bytes()), vs));
        }
        let k = format!("k{:02}", (round * 7) % 50);
        let vs = delete(&c, &k).await;
        hist.push((k, None, vs));
        // Segments ship (and snapshots are taken) while the next round writes.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    wait_caught_up(&s, Duration::from_secs(10)).await;
    let last_vs = hist.iter().map(|h| h.2.clone()).max().unwrap();
    let full = state_at(&hist, &last_vs);
    assert_eq!(dump(&c).await, full);
    let taken = gauge(&s, "sidekv_snapshots_total").await;
    assert!(taken >= 3.0, "only {taken} snapshots were taken:\n{}", log(&s));
    terminate(&mut s);

    // Retention: the newest 2 snapshots, and only segments after the oldest kept one.
    let snaps = ctx.objects("snapshots").await;
    assert_eq!(snaps.len(), 2, "retention 2 after {taken} snapshots: {snaps:?}");
    let keep_from = counter_of(&snaps[0]);
    let segs = ctx.objects("segments").await;
    assert!(counter_of(&segs[0]) > 1, "retention should have deleted the first segments: {segs:?}");
    assert!(counter_of(&segs[0]) <= keep_from + 1, "the segment holding commit {} is gone: {segs:?}", keep_from + 1);
    for w in segs.windows(2) {
        // w[0] holds commits up to w[1] - 1: kept only if that reaches keep_from.
        assert!(counter_of(&w[1]) > keep_from, "{} ends before snapshot {keep_from} but was kept", w[0]);
    }
    // Each snapshot is zstd(SQLite) holding exactly the state at its commit.
    for key in &snaps {
        let raw = zstd::decode_all(&ctx.s3.get_signed(&ctx.bucket, key).await[..]).unwrap();
        assert_eq!(&raw[..16], b"SQLite format 3\0", "{key} is not a plain SQLite file");
        let f = ctx.path(&format!("snap-{}.sqlite3", counter_of(key)));
        std::fs::write(&f, &raw).unwrap();
        let counter = counter_of(key);
        assert_eq!(meta_u64(&f, "counter"), Some(counter), "{key}");
        let at = format!("{counter:016x}ffff");
        assert_eq!(read_db(&f), state_at(&hist, &at), "contents of {key}");
    }
    // Point in time within what retention kept: snapshot + segments, exact.
    let mut points: Vec<String> = hist.iter().map(|h| h.2.clone()).filter(|p| vs_counter(p) >= keep_from).collect();
    points.sort();
    let step = (points.len() / 12).max(1);
    for (i, p) in points.iter().enumerate().filter(|(i, _)| i % step == 0 || *i == 0) {
        let to = ctx.path(&format!("pit-{i}.sqlite3"));
        let out = ctx.restore(&to, Some(p));
        assert!(out.status.success(), "--at {p}: {}", text(&out));
        assert_eq!(read_db(&to), state_at(&hist, p), "restore --at {p}");
    }
    // Before the oldest kept snapshot: gone, and restore says so.
    let early = hist.iter().map(|h| h.2.clone()).min().unwrap();
    let out = ctx.restore(&ctx.path("early.sqlite3"), Some(&early));
    assert!(!out.status.success() && text(&out).contains("is in no segment"), "{}", text(&out));
    if which_zstd() {
        let f = ctx.path("cli.sqlite3.zst");
        std::fs::write(&f, ctx.s3.get_signed(&ctx.bucket, &snaps[1]).await).unwrap();
        let st = std::process::Command::new("zstd").args(["-q", "-d"]).arg(&f).status().unwrap();
        assert!(st.success());
        assert_eq!(read_db(&ctx.path("cli.sqlite3")), state_at(&hist, &format!("{:016x}ffff", counter_of(&snaps[1]))));
    }

    // Restore after losing the disk starts from the newest snapshot.
    wipe(&db);
    let mut s = ctx.start(&db, &env);
    let newest = counter_of(&snaps[1]);
    let log = log(&s);
    assert!(log.contains("snapshot downloaded") && log.contains(&format!("snapshot_commit={newest}")), "{log}");
    let c = s.client();
    assert_eq!(dump(&c).await, full, "restored from snapshot {newest} + segments");
    // More writes, then `sidekv snapshot` by hand (server stopped).
    for i in 0..5 {
        let (k, v) = (format!("late-{i}"), format!("l{i}"));
        let vs = try_set(&c, &k, v.clone()).await.unwrap();
        hist.push((k, Some(v.into_bytes()), vs));
    }
    terminate(&mut s);
    let final_counter = meta_u64(&db, "counter").unwrap();
    let out = ctx.command(&["snapshot"], &[("KVSTORE_DB", db.to_str().unwrap()), ("KVSTORE_SNAPSHOT_RETENTION", "2")]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("snapshot stored"), "{}", text(&out));
    let snaps = ctx.objects("snapshots").await;
    assert_eq!(snaps.len(), 2, "{snaps:?}");
    assert_eq!(counter_of(&snaps[1]), final_counter, "{snaps:?}");
    let to = ctx.path("from-snapshot.sqlite3");
    let out = ctx.restore(&to, None);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&format!("snapshot_commit={final_counter}")), "{}", text(&out));
    let last_vs = hist.iter().map(|h| h.2.clone()).max().unwrap();
    assert_eq!(read_db(&to), state_at(&hist, &last_vs));
}

fn which_zstd() -> bool {
    std::process::Command::new("zstd").arg("--version").output().is_ok_and(|o| o.status.success())
}

// ------------------------------------------- point-in-time restore ----

/// Concurrent writes until the newest commit holds at least two writes.
/// Returns them (all acknowledged).
async fn burst_until_shared_last_commit(c: &Client, hist: &mut History, tag: &str) {
    for attempt in 0..20 {
        let mut tasks = Vec::new();
        for j in 0..24 {
            let c = c.clone();
            let (k, v) = (format!("{tag}{attempt:02}-{j:02}"), format!("burst {attempt} {j}"));
            tasks.push(tokio::spawn(async move {
                let vs = try_set(&c, &k, v.clone()).await.unwrap();
                (k, Some(v.into_bytes()), vs)
            }));
        }
        for t in tasks {
            hist.push(t.await.unwrap());
        }
        let last = hist.iter().map(|h| vs_counter(&h.2)).max().unwrap();
        if hist.iter().filter(|h| vs_counter(&h.2) == last).count() >= 2 {
            return;
        }
    }
    panic!("20 bursts of concurrent writes never shared the last commit");
}

/// `sidekv restore --at VS` is the state as of VS, for every acknowledged
/// versionstamp, including one in the middle of a group commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn point_in_time_restore() {
    let ctx = Ctx::new("pitr").await;
    let db = ctx.db();
    let env = [("KVSTORE_DURABILITY", "local"), ("KVSTORE_SYNC_INTERVAL", "200ms")];
    let mut s = ctx.start(&db, &env);
    let c = s.client();
    let mut hist = History::new();
    let set = async |hist: &mut History, k: &str, v: &str| {
        let vs = try_set(&c, k, v.to_string()).await.unwrap();
        hist.push((k.to_string(), Some(v.as_bytes().to_vec()), vs.clone()));
        vs
    };
    let vs1 = set(&mut hist, "a", "v1").await;
    set(&mut hist, "b", "b1").await;
    set(&mut hist, "c", "c1").await;
    let vs2 = set(&mut hist, "a", "v2").await;
    let vs_del = delete(&c, "b").await;
    hist.push(("b".into(), None, vs_del.clone()));
    set(&mut hist, "c", "c2").await;
    burst_until_shared_last_commit(&c, &mut hist, "e").await;
    set(&mut hist, "z", "last").await;
    assert!(vs1 < vs2 && vs2 < vs_del);
    let latest = hist.iter().map(|h| h.2.clone()).max().unwrap();
    assert_eq!(dump(&c).await, state_at(&hist, &latest));
    terminate(&mut s);

    // a = v1 as of vs1, and nothing later.
    let to = ctx.path("at-vs1.sqlite3");
    let out = ctx.restore(&to, Some(&vs1));
    assert!(out.status.success(), "{}", text(&out));
    let got = read_db(&to);
    assert_eq!(got, BTreeMap::from([("a".to_string(), (b"v1".to_vec(), vs1.clone()))]));
    // As of the delete: b is gone, a = v2.
    let to = ctx.path("at-del.sqlite3");
    assert!(ctx.restore(&to, Some(&vs_del)).status.success());
    let got = read_db(&to);
    assert_eq!(got.get("a"), Some(&(b"v2".to_vec(), vs2.clone())));
    assert_eq!(got.get("b"), None);
    assert_eq!(got.get("c").map(|v| &v.0[..]), Some(&b"c1"[..]));
    // Every acknowledged versionstamp, including mid-commit ones.
    let mut points: Vec<String> = hist.iter().map(|h| h.2.clone()).collect();
    points.sort();
    let mut mid_commit = 0;
    for (i, p) in points.iter().enumerate() {
        if !p.ends_with("0000") {
            mid_commit += 1;
        }
        let to = ctx.path(&format!("at-{i}.sqlite3"));
        let out = ctx.restore(&to, Some(p));
        assert!(out.status.success(), "--at {p}: {}", text(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("at commit {}", vs_counter(p))), "{}", text(&out));
        assert_eq!(read_db(&to), state_at(&hist, p), "restore --at {p}");
    }
    assert!(mid_commit > 0, "no group commit held two writes");
    // --at the latest = the full state = the server's own file.
    assert_eq!(read_db(&ctx.path(&format!("at-{}.sqlite3", points.len() - 1))), read_db(&db));
    // Past the end of the backup, and nonsense, are refused.
    let beyond = format!("{:016x}0000", vs_counter(&latest) + 5);
    let out = ctx.restore(&ctx.path("beyond.sqlite3"), Some(&beyond));
    assert!(!out.status.success() && text(&out).contains("ends at commit"), "{}", text(&out));
    assert!(!ctx.path("beyond.sqlite3").exists());
    let out = ctx.restore(&ctx.path("bad.sqlite3"), Some("yesterday"));
    assert!(!out.status.success() && text(&out).contains("--at"), "{}", text(&out));
}

/// Point in time inside a group commit when a snapshot was taken at exactly
/// that commit: the snapshot holds the commit's later writes too, so it must
/// not be the base of the restore.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn point_in_time_inside_a_snapshotted_commit() {
    let ctx = Ctx::new("pitrsnap").await;
    let db = ctx.db();
    let env = [("KVSTORE_DURABILITY", "local"), ("KVSTORE_SYNC_INTERVAL", "200ms")];
    let mut s = ctx.start(&db, &env);
    let c = s.client();
    let mut hist = History::new();
    for i in 0..5 {
        let (k, v) = (format!("k{i}"), format!("v{i}"));
        hist.push((k.clone(), Some(v.clone().into_bytes()), try_set(&c, &k, v).await.unwrap()));
    }
    burst_until_shared_last_commit(&c, &mut hist, "e").await;
    terminate(&mut s);
    let last = hist.iter().map(|h| vs_counter(&h.2)).max().unwrap();
    let out = ctx.command(&["snapshot"], &[("KVSTORE_DB", db.to_str().unwrap())]);
    assert!(out.status.success(), "{}", text(&out));
    let snaps = ctx.objects("snapshots").await;
    assert_eq!(snaps.iter().map(|k| counter_of(k)).collect::<Vec<_>>(), vec![last]);
    // The first write of the last commit: its later writes must not be restored.
    let at = format!("{last:016x}0000");
    assert!(hist.iter().any(|h| h.2 == at));
    let to = ctx.path("mid.sqlite3");
    let out = ctx.restore(&to, Some(&at));
    assert!(out.status.success(), "{}", text(&out));
    let got = read_db(&to);
    let want = state_at(&hist, &at);
    let extra: Vec<_> = got.iter().filter(|(k, _)| !want.contains_key(*k)).map(|(k, v)| format!("{k}@{}", v.1)).collect();
    assert_eq!(got, want, "restore --at {at} holds writes after {at}: {extra:?}");
}

// --------------------------------------------- the restore command ----

/// `sidekv restore` reports progress and what it restored, refuses to
/// overwrite an existing file, and fails when S3 holds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restore_command_progress_and_refusals() {
    let ctx = Ctx::new("restorecmd").await;
    let db = ctx.db();
    let env = [("KVSTORE_DURABILITY", "s3")];
    // Nothing in S3 yet.
    let to = ctx.path("empty.sqlite3");
    let out = ctx.restore(&to, None);
    assert!(!out.status.success() && text(&out).contains("no backup"), "{}", text(&out));
    assert!(!to.exists());

    let mut s = ctx.start(&db, &env);
    let c = s.client();
    let mut acked = State::new();
    for i in 0..60 {
        let (k, v) = (format!("k{i:02}"), format!("v{i}"));
        acked.insert(k.clone(), (v.clone().into_bytes(), try_set(&c, &k, v).await.unwrap()));
    }
    terminate(&mut s);
    let segs = ctx.objects("segments").await;
    assert!(segs.len() >= 50, "expected a segment per s3-mode write: {}", segs.len());
    let counter = meta_u64(&db, "counter").unwrap();

    let to = ctx.path("restored.sqlite3");
    let out = ctx.restore(&to, None);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("restoring") && t.contains("segments=50"), "no progress line after 50 segments:\n{t}");
    assert!(t.contains("restore complete") && t.contains(&format!("segments={}", segs.len())), "{t}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("restored {} at commit {counter}", to.display())), "{t}");
    assert_eq!(read_db(&to), acked);

    // An existing file is never overwritten.
    let before = std::fs::read(&to).unwrap();
    let out = ctx.restore(&to, None);
    assert!(!out.status.success() && text(&out).contains("exists"), "{}", text(&out));
    assert_eq!(std::fs::read(&to).unwrap(), before);
    let out = ctx.restore(&db, None);
    assert!(!out.status.success() && text(&out).contains("exists"), "{}", text(&out));
}

// ---------------------------------------------- kill -9, same disk ----

/// SIGKILL mid-load in local mode, restart on the same disk: every
/// acknowledged write is still there (local fsync), the outbox left behind
/// (including a segment that may have reached S3 unrecorded) ships without
/// the instance fencing itself, and a later restore from S3 has it all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_then_restart_on_the_same_disk_ships_the_rest() {
    let ctx = Ctx::new("kill9same").await;
    let db = ctx.db();
    let env = [("KVSTORE_DURABILITY", "local"), ("KVSTORE_SYNC_INTERVAL", "200ms"), ("KVSTORE_ADMIN_ADDR", "127.0.0.1:0")];
    let mut s = ctx.start(&db, &env);
    let mut tasks = Vec::new();
    for w in 0..4 {
        let c = s.client();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..100_000 {
                let (k, v) = (format!("w{w}-{i:05}"), format!("{w}.{i}"));
                match try_set(&c, &k, v.clone()).await {
                    Ok(vs) => acked.push((k, (v.into_bytes(), vs))),
                    Err((0, _)) => break,
                    Err(e) => panic!("{k}: {e:?}"),
                }
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(2000)).await;
    tokio::task::block_in_place(|| s.kill9());
    let mut acked = State::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    let s = ctx.start(&db, &env);
    let served = dump(&s.client()).await;
    assert_has_all(&served, &acked, "same disk after kill -9");
    assert!(served.len() <= acked.len() + 4);
    wait_caught_up(&s, Duration::from_secs(20)).await;
    assert!(!log(&s).contains("FENCED"), "the restarted instance fenced itself:\n{}", log(&s));
    let mut s = s;
    let c = s.client();
    let vs = try_set(&c, "after-restart", "x").await.unwrap();
    let mut want = served.clone();
    want.insert("after-restart".into(), (b"x".to_vec(), vs));
    terminate(&mut s);
    let to = ctx.path("restored.sqlite3");
    let out = ctx.restore(&to, None);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(read_db(&to), want);
}

// ------------------------------------------------------- backup defects ----

/// A versionstamp handed out by a local-mode write that died with the disk
/// (acknowledged, never shipped) is never handed out again after the
/// relaunch restores from S3; and a resume position beyond anything issued
/// is refused, not silently accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versionstamps_only_grow_across_a_restore() {
    let ctx = Ctx::new("epochs").await;
    let db = ctx.db();
    let env = [("KVSTORE_SYNC_INTERVAL", "500ms"), ("KVSTORE_ADMIN_ADDR", "127.0.0.1:0")];
    let mut s = ctx.start(&db, &env);
    let c = s.client();
    try_set(&c, "k", "shipped").await.unwrap();
    wait_caught_up(&s, Duration::from_secs(20)).await;
    // With a long interval now: the next write is acknowledged but not shipped.
    terminate(&mut s);
    let mut s = ctx.start(&db, &[("KVSTORE_SYNC_INTERVAL", "60m")]);
    let lost = try_set(&s.client(), "k", "lost with the disk").await.unwrap();
    s.kill9();
    wipe(&db);
    let s = ctx.start(&db, &env);
    let c = s.client();
    assert_eq!(get_vs(&c, "k").await.unwrap().0, b"shipped");
    let next = try_set(&c, "k", "after the restore").await.unwrap();
    assert!(next > lost, "versionstamp {next} issued after {lost} had been acknowledged for other data");
    // A compare-and-set against the lost versionstamp must fail.
    let r = c.req(reqwest::Method::POST, "/k").header("if-match", format!("\"{lost}\"")).body("cas").send().await.unwrap();
    assert_eq!(r.status(), 412);
}

/// Deleting only the database after kill -9 leaves its WAL (the dead
/// process's unshipped writes) beside it; the restore must not replay it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leftover_wal_is_not_replayed_after_kill9() {
    let ctx = Ctx::new("wal").await;
    let db = ctx.db();
    let env = [("KVSTORE_SYNC_INTERVAL", "60m"), ("KVSTORE_ADMIN_ADDR", "127.0.0.1:0"), ("KVSTORE_DURABILITY", "s3")];
    let mut s = ctx.start(&db, &env);
    let c = s.client();
    for i in 0..5 {
        try_set(&c, &format!("k{i}"), "shipped").await.unwrap();
    }
    terminate(&mut s);
    // Local mode with a long interval: these stay in the local WAL only.
    let mut s = ctx.start(&db, &[("KVSTORE_SYNC_INTERVAL", "60m")]);
    let c = s.client();
    for i in 0..5 {
        try_set(&c, &format!("k{i}"), "unshipped").await.unwrap();
    }
    s.kill9();
    let wal = PathBuf::from(format!("{}-wal", db.display()));
    assert!(wal.exists() && std::fs::metadata(&wal).unwrap().len() > 0, "the scenario needs a WAL");
    std::fs::remove_file(&db).unwrap();
    let s = ctx.start(&db, &env);
    let c = s.client();
    for i in 0..5 {
        assert_eq!(get_vs(&c, &format!("k{i}")).await.unwrap().0, b"shipped", "k{i}");
    }
    assert!(!wal.exists() || std::fs::metadata(&wal).unwrap().len() == 0 || log(&s).contains("setting aside"), "{}", log(&s));
}

/// Local mode under sustained writes: at most about one segment per sync interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_mode_put_rate_is_bounded_by_the_interval() {
    let ctx = Ctx::new("putrate").await;
    let db = ctx.db();
    let mut s = ctx.start(&db, &[("KVSTORE_SYNC_INTERVAL", "1s")]);
    let c = s.client();
    let t0 = Instant::now();
    let mut n = 0;
    while t0.elapsed() < Duration::from_secs(4) {
        let keys: Vec<String> = (0..8).map(|w| format!("w{w}")).collect();
        let futs: Vec<_> = keys.iter().map(|k| try_set(&c, k, format!("{n}"))).collect();
        for f in futures::future::join_all(futs).await {
            f.unwrap();
        }
        n += 1;
    }
    let elapsed = t0.elapsed();
    terminate(&mut s);
    let segments = ctx.objects("segments").await.len();
    // One per interval, plus the drain at shutdown.
    let bound = elapsed.as_secs() as usize + 2;
    assert!(n > 20, "the load did not get going");
    assert!(segments <= bound, "{segments} segments in {elapsed:?} of load (at most {bound})");
}

/// S3 unreachable at launch with a local database present: serve it (local
/// mode), report not-backed-up, and start the backup once S3 answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_down_at_launch_serves_the_local_database() {
    let ctx = Ctx::new("launchdown").await;
    if !ctx.can_pause() {
        return;
    }
    let db = ctx.db();
    let env = [("KVSTORE_SYNC_INTERVAL", "200ms"), ("KVSTORE_ADMIN_ADDR", "127.0.0.1:0")];
    let mut s = ctx.start(&db, &env);
    try_set(&s.client(), "k", "v1").await.unwrap();
    terminate(&mut s);
    ctx.s3.pause();
    let s = ctx.start(&db, &[("KVSTORE_SYNC_INTERVAL", "200ms"), ("KVSTORE_ADMIN_ADDR", "127.0.0.1:0"), ("AWS_MAX_ATTEMPTS", "1")]);
    let c = s.client();
    assert_eq!(get_vs(&c, "k").await.unwrap().0, b"v1");
    try_set(&c, "k", "v2").await.unwrap();
    assert_eq!(gauge(&s, "sidekv_backup_stalled").await, 1.0);
    assert!(gauge(&s, "sidekv_outbox_commits").await >= 1.0);
    let admin = s.admin_url.clone().unwrap();
    let ready = reqwest::get(format!("{admin}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    assert!(ready.text().await.unwrap().contains("not backed up"));
    ctx.s3.resume();
    wait_caught_up(&s, Duration::from_secs(30)).await;
    assert_eq!(gauge(&s, "sidekv_backup_stalled").await, 0.0);
    drop(s);
    wipe(&db);
    let s = ctx.start(&db, &env);
    assert_eq!(get_vs(&s.client(), "k").await.unwrap().0, b"v2");
}

/// A snapshot larger than one part goes to S3 as a multipart upload, and
/// restores from it exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_snapshots_upload_in_parts_and_restore() {
    let ctx = Ctx::new("multipart").await;
    let db = ctx.db();
    let env = [
        ("KVSTORE_S3_PART_BYTES", "5242880"),
        ("KVSTORE_SNAPSHOT_BYTES", "1000000"),
        ("KVSTORE_SYNC_INTERVAL", "100ms"),
        ("KVSTORE_ADMIN_ADDR", "127.0.0.1:0"),
    ];
    let mut s = ctx.start(&db, &env);
    let c = s.client();
    let mut acked = State::new();
    for i in 0..16u64 {
        // Incompressible: the compressed snapshot is over one 5 MiB part.
        let mut x = (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let v: Vec<u8> = (0..400_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let k = format!("big/{i}");
        acked.insert(k.clone(), (v.clone(), try_set(&c, &k, v).await.unwrap()));
    }
    wait_caught_up(&s, Duration::from_secs(30)).await;
    terminate(&mut s);
    // A snapshot of everything (`sidekv snapshot`, server stopped): over one part.
    let out = ctx.command(&["snapshot"], &[("KVSTORE_DB", db.to_str().unwrap()), ("KVSTORE_S3_PART_BYTES", "5242880")]);
    assert!(out.status.success(), "{}", text(&out));
    let snaps = ctx.objects("snapshots").await;
    let last = acked.values().map(|(_, vs)| vs_counter(vs)).max().unwrap();
    assert_eq!(snaps.last().map(|k| counter_of(k)), Some(last), "{snaps:?}");
    let size = ctx.s3.get_signed(&ctx.bucket, snaps.last().unwrap()).await.len();
    assert!(size > 5 << 20, "the snapshot ({size} bytes) should need more than one part");
    wipe(&db);
    let s = ctx.start(&db, &env);
    assert!(log(&s).contains("snapshot downloaded"), "{}", log(&s));
    let c = s.client();
    for (k, want) in &acked {
        assert_eq!(get_vs(&c, k).await.as_ref(), Some(want), "{k}");
    }
}

/// Two databases with different histories starting a backup on one empty
/// path at the same moment: one owns the path; the other is fenced (or, if
/// it looked after the first had claimed it, set its file aside and
/// restored). Either way S3 holds one history, and a restore is exactly it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_databases_starting_a_backup_on_one_path_do_not_mix() {
    let ctx = Ctx::new("twobase").await;
    let (da, db) = (ctx.path("a.sqlite3"), ctx.path("b.sqlite3"));
    // Histories made without backup.
    for (path, who, n) in [(&da, "a", 3), (&db, "b", 5)] {
        let mut s = tokio::task::block_in_place(|| Server::start_at(path, Opts::default()));
        for i in 0..n {
            try_set(&s.client(), &format!("k{i}"), format!("{who}{i}")).await.unwrap();
        }
        terminate(&mut s);
    }
    let env = [("KVSTORE_SYNC_INTERVAL", "100ms"), ("KVSTORE_ADMIN_ADDR", "127.0.0.1:0")];
    let (oa, ob) = (ctx.opts(&env), ctx.opts(&env));
    let (pa, pb) = (da.clone(), db.clone());
    let ta = std::thread::spawn(move || Server::start_at(&pa, oa));
    let tb = std::thread::spawn(move || Server::start_at(&pb, ob));
    let (mut sa, mut sb) = (ta.join().unwrap(), tb.join().unwrap());
    // Wait until each either caught up with S3 or was fenced.
    let t0 = Instant::now();
    let settled = |fenced: f64, outbox: f64| fenced == 1.0 || outbox == 0.0;
    loop {
        let (fa, oa) = (gauge(&sa, "sidekv_replication_fenced").await, gauge(&sa, "sidekv_outbox_commits").await);
        let (fb, ob) = (gauge(&sb, "sidekv_replication_fenced").await, gauge(&sb, "sidekv_outbox_commits").await);
        if settled(fa, oa) && settled(fb, ob) {
            assert!(fa + fb <= 1.0, "both fenced:\n{}\n{}", log(&sa), log(&sb));
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "did not settle:\n{}\n{}", log(&sa), log(&sb));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (state_a, state_b) = (dump(&sa.client()).await, dump(&sb.client()).await);
    let fenced_a = gauge(&sa, "sidekv_replication_fenced").await == 1.0;
    let fenced_b = gauge(&sb, "sidekv_replication_fenced").await == 1.0;
    sa.kill9();
    sb.kill9();
    // The path's one history: the owner's (a loser that restored serves it too).
    let to = ctx.path("restored.sqlite3");
    let out = ctx.restore(&to, None);
    assert!(out.status.success(), "{}", text(&out));
    let restored = read_db(&to);
    eprintln!("two databases, one path: fenced a {fenced_a}, b {fenced_b}");
    let owner = if fenced_a { &state_b } else { &state_a };
    assert_eq!(&restored, owner, "S3 holds a mix of two histories (fenced: a {fenced_a}, b {fenced_b})");
    if !fenced_a && !fenced_b {
        assert_eq!(state_a, state_b, "neither was fenced, so one restored the other's history");
    }
    let values: Vec<String> = restored.values().map(|(v, _)| String::from_utf8_lossy(v).into_owned()).collect();
    assert!(values.iter().all(|v| v.starts_with('a')) || values.iter().all(|v| v.starts_with('b')), "{values:?}");
}

// ---------------------------------------------------------- graceful stop ----

/// Issue 22: the backup was off long enough for the change log to be pruned
/// past what S3 holds; a relaunch with the backup on, stopped within its
/// first second, exited 0 while its acknowledged commits were only on the
/// local disk ("the change log no longer holds commit …"). The stop now
/// finishes the base snapshot first: after wiping the disk, a relaunch has
/// every key, the one written after the relaunch too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stop_right_after_the_backup_restarts_waits_for_its_snapshot() {
    let ctx = Ctx::new("stopbase").await;
    let db = ctx.db();
    let mut s = ctx.start(&db, &[("KVSTORE_SYNC_INTERVAL", "200ms"), ("KVSTORE_ADMIN_ADDR", "127.0.0.1:0")]);
    let mut acked = State::new();
    let vs = try_set(&s.client(), "first", "shipped").await.unwrap();
    acked.insert("first".into(), (b"shipped".to_vec(), vs));
    wait_caught_up(&s, Duration::from_secs(20)).await;
    terminate(&mut s);

    // The backup off: more commits than the change log keeps (10,000).
    let mut off = tokio::task::block_in_place(|| Server::start_at(&db, Opts::default().env("NO_COLOR", "1")));
    let c = off.client();
    for i in 0..10_700u32 {
        let (k, v) = (format!("k{:03}", i % 300), format!("v{i}"));
        let vs = try_set(&c, &k, v.clone()).await.unwrap();
        acked.insert(k, (v.into_bytes(), vs));
    }
    terminate(&mut off);

    // The backup on again, stopped at once: nothing has had time to ship.
    let mut s = ctx.start(&db, &[("KVSTORE_SYNC_INTERVAL", "60s")]);
    let vs = try_set(&s.client(), "after-relaunch", "v").await.unwrap();
    acked.insert("after-relaunch".into(), (b"v".to_vec(), vs));
    terminate(&mut s);
    wipe(&db);

    let s = ctx.start(&db, &[]);
    assert!(log(&s).contains("restore complete"), "{}", log(&s));
    assert_has_all(&dump(&s.client()).await, &acked, "after SIGTERM and a wiped disk");
}

/// Issue 22: with S3 down, a stop waited its drain timeout and exited 0 as
/// if backed up. Now `/readyz` says "not backed up" while uploads fail, the
/// stop ends at KVSTORE_STOP_TIMEOUT with exit status 3 naming the commits
/// only on this disk, and the next start on that disk ships them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stop_with_s3_down_exits_3_and_says_what_is_not_backed_up() {
    let ctx = Ctx::new("stopdown").await;
    if !ctx.can_pause() {
        return;
    }
    let db = ctx.db();
    let env = [("KVSTORE_SYNC_INTERVAL", "200ms"), ("KVSTORE_ADMIN_ADDR", "127.0.0.1:0"), ("AWS_MAX_ATTEMPTS", "1")];
    let mut s = ctx.start(&db, &[env[0], env[1], env[2], ("KVSTORE_STOP_TIMEOUT", "3s")]);
    let c = s.client();
    try_set(&c, "k", "v1").await.unwrap();
    wait_caught_up(&s, Duration::from_secs(20)).await;
    ctx.s3.pause();
    try_set(&c, "k", "v2").await.unwrap();
    let admin = s.admin_url.clone().unwrap();
    let t0 = Instant::now();
    loop {
        let body = reqwest::get(format!("{admin}/readyz")).await.unwrap().text().await.unwrap();
        if body.contains("not backed up") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "/readyz never said \"not backed up\" while S3 was down: {body}\n{}", log(&s));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(gauge(&s, "sidekv_backup_stalled").await, 1.0);
    let stop_log = plain(&terminate_not_backed_up(&mut s, Duration::from_secs(12)));
    assert!(stop_log.contains("acknowledged commits"), "{stop_log}");

    ctx.s3.resume();
    let mut s = ctx.start(&db, &env);
    wait_caught_up(&s, Duration::from_secs(30)).await;
    terminate(&mut s);
    wipe(&db);
    let s = ctx.start(&db, &env);
    assert_eq!(get_vs(&s.client(), "k").await.unwrap().0, b"v2");
}
