//! Robustness suite (see docs/robustness.md): S3 faults injected by a proxy
//! between sidekv and moto, a full (and read-only) disk on a small tmpfs,
//! and HTTP abuse against the main port, each while a normal client keeps
//! working. Every test starts its own server(s) and, for S3, its own moto.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{
    Client, Fault, Opts, Proxy, S3, SECRET, Server, gauge, metric, metrics, readyz, tail, terminate, try_delete, try_incr, try_set,
    wait_caught_up, wipe,
};
use reqwest::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// key → (value, versionstamp)
use common::{State, dump, get_vs, read_db};

// ============================================================ helpers ====

/// Assert two states are equal, printing only the differing keys.
#[track_caller]
fn assert_state(got: &State, want: &State, what: &str) {
    if got == want {
        return;
    }
    let show = |v: Option<&(Vec<u8>, String)>| {
        v.map(|(b, vs)| format!("({:?}, {vs})", String::from_utf8_lossy(&b[..b.len().min(40)]))).unwrap_or_else(|| "absent".into())
    };
    let diffs: Vec<String> = got
        .keys()
        .chain(want.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|k| got.get(*k) != want.get(*k))
        .map(|k| format!("  {k}: got {}, want {}", show(got.get(k)), show(want.get(k))))
        .collect();
    panic!(
        "{what}: {} keys differ (got {} keys, want {}):\n{}",
        diffs.len(),
        got.len(),
        want.len(),
        diffs[..diffs.len().min(15)].join("\n")
    );
}

fn start(db: &Path, opts: Opts) -> Server {
    tokio::task::block_in_place(|| Server::start_at(db, opts))
}

/// A well-behaved client that keeps writing and reading back while a test
/// abuses the server; every answer must be right and quick.
struct Steady {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<(u64, Vec<String>, Duration)>,
}

#[derive(Debug)]
struct SteadyReport {
    round_trips: u64,
    errors: Vec<String>,
    max_latency: Duration,
}

impl Steady {
    /// `c` should have been used once already when the test wants its
    /// (single, kept-alive) connection to exist before the abuse starts.
    fn spawn(c: Client, tag: &'static str) -> Steady {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let (stop2, ok2) = (stop.clone(), ok.clone());
        let task = tokio::spawn(async move {
            let mut errors = Vec::new();
            let mut max_latency = Duration::ZERO;
            let mut i = 0u64;
            while !stop2.load(Ordering::Relaxed) {
                let key = format!("{tag}-steady{}", i % 10);
                let val = format!("v{i}");
                let t = Instant::now();
                let w = try_set(&c, &key, val.clone()).await;
                max_latency = max_latency.max(t.elapsed());
                let t = Instant::now();
                let r = c.req(Method::GET, &format!("/{key}")).send().await;
                let got = match r {
                    Ok(r) => (r.status().as_u16(), r.bytes().await.map(|b| b.to_vec()).unwrap_or_default()),
                    Err(e) => (0, format!("{e:?}").into_bytes()),
                };
                max_latency = max_latency.max(t.elapsed());
                match (&w, &got) {
                    (Ok(_), (200, b)) if b == val.as_bytes() => {
                        ok2.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => errors.push(format!("#{i}: write {w:?}, read back {} {:?}", got.0, String::from_utf8_lossy(&got.1))),
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (i, errors, max_latency)
        });
        Steady { stop, ok, task }
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    async fn finish(self) -> SteadyReport {
        self.stop.store(true, Ordering::Relaxed);
        let (round_trips, errors, max_latency) = self.task.await.unwrap();
        SteadyReport { round_trips, errors, max_latency }
    }
}

// ========================================================= S3 faults ====

/// What the writers had acknowledged.
#[derive(Default)]
struct Acked {
    /// Last acknowledged write per key: Some(value, versionstamp) or None (deleted).
    state: BTreeMap<String, Option<(Vec<u8>, String)>>,
    /// Versionstamps of acknowledged increments of `c`.
    increments: Vec<String>,
    writes: u64,
    errors: Vec<String>,
}

/// Writer `w` owns keys `w{w}-k..`: sets (overwriting), deletes, and
/// increments of the shared counter `c`, until `stop`.
async fn s3_writer(c: Client, w: usize, stop: Arc<AtomicBool>) -> Acked {
    let mut a = Acked::default();
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("w{w}-k{:02}", i % 20);
        let value = format!("v{w}.{i}.{}", "x".repeat(i % 40));
        match try_set(&c, &key, value.clone()).await {
            Ok(vs) => {
                a.state.insert(key, Some((value.into_bytes(), vs)));
            }
            Err(e) => a.errors.push(format!("POST /{key}: {e:?}")),
        }
        a.writes += 1;
        if i.is_multiple_of(3) {
            match try_incr(&c, "c").await {
                Ok(vs) => a.increments.push(vs),
                Err(e) => a.errors.push(format!("sum c: {e:?}")),
            }
            a.writes += 1;
        }
        if i % 7 == 6 {
            let key = format!("w{w}-k{:02}", (i + 5) % 20);
            match try_delete(&c, &key).await {
                Ok(_) => {
                    a.state.insert(key, None);
                }
                Err(e) => a.errors.push(format!("DELETE /{key}: {e:?}")),
            }
            a.writes += 1;
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    a
}

/// Run 4 writers for `window`; returns the merged acknowledgements and the
/// largest outbox (commits) and replication lag (seconds) seen meanwhile.
async fn write_for(s: &Server, window: Duration) -> (Acked, f64, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..4).map(|w| tokio::spawn(s3_writer(s.client(), w, stop.clone()))).collect();
    let t0 = Instant::now();
    let (mut max_outbox, mut max_lag): (f64, f64) = (0.0, 0.0);
    while t0.elapsed() < window {
        let m = metrics(s).await;
        max_outbox = max_outbox.max(metric(&m, "sidekv_outbox_commits").unwrap());
        max_lag = max_lag.max(metric(&m, "sidekv_replication_lag_seconds").unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut all = Acked::default();
    for t in tasks {
        let a = t.await.unwrap();
        all.state.extend(a.state);
        all.increments.extend(a.increments);
        all.writes += a.writes;
        all.errors.extend(a.errors);
    }
    (all, max_outbox, max_lag)
}

fn merge(into: &mut Acked, from: Acked) {
    into.state.extend(from.state);
    into.increments.extend(from.increments);
    into.writes += from.writes;
    into.errors.extend(from.errors);
}

/// The state the store must hold: the writers' keys plus `c`.
fn expected(a: &Acked) -> State {
    let mut want: State = a.state.iter().filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v))).collect();
    if let Some(max) = a.increments.iter().max() {
        want.insert("c".into(), (a.increments.len().to_string().into_bytes(), max.clone()));
    }
    want
}

struct S3Case {
    s3: S3,
    proxy: Proxy,
    bucket: String,
    prefix: String,
    dir: tempfile::TempDir,
}

impl S3Case {
    async fn new(name: &str) -> S3Case {
        let s3 = tokio::task::block_in_place(S3::start);
        let bucket = format!("faults-{name}");
        s3.create_bucket(&bucket).await;
        let proxy = Proxy::start(&s3.endpoint).await;
        S3Case { s3, proxy, bucket, prefix: format!("{name}/data"), dir: common::tempdir() }
    }

    fn db(&self) -> PathBuf {
        self.dir.path().join("db.sqlite3")
    }

    /// Through the proxy (`via_proxy`) or straight to moto.
    fn opts(&self, via_proxy: bool) -> Opts {
        let o = self
            .s3
            .env(Opts::default(), &self.bucket, &self.prefix)
            .env("KVSTORE_DURABILITY", "local")
            .env("KVSTORE_SYNC_INTERVAL", "200ms")
            // Small, so snapshots (and retention deletes) also run under faults.
            .env("KVSTORE_SNAPSHOT_BYTES", "2000")
            .env("KVSTORE_SNAPSHOT_RETENTION", "2")
            .env("KVSTORE_ADMIN_ADDR", "127.0.0.1:0");
        if via_proxy { o.env("AWS_ENDPOINT_URL", &self.proxy.url) } else { o }
    }

    /// SIGTERM, lose the disk, relaunch straight against moto: the restored
    /// state must be exactly `want` (values and versionstamps, via list and
    /// via each key's ETag). Returns the relaunched server.
    async fn restore_and_check(&self, s: &mut Server, want: &State, what: &str) -> Server {
        terminate(s);
        assert!(!s.log().contains("FENCED"), "{what}: fenced:\n{}", tail(&s.log(), 60));
        wipe(&self.db());
        let t = Instant::now();
        let s2 = start(&self.db(), self.opts(false));
        assert!(s2.log().contains("restore complete"), "{what}: {}", s2.log());
        let c2 = s2.client();
        let restored = dump(&c2).await;
        assert_state(&restored, want, &format!("{what}: restored state"));
        for (k, v) in want {
            assert_eq!(get_vs(&c2, k).await.as_ref(), Some(v), "{what}: GET /{k} (value, ETag) after restore");
        }
        let from_snapshot = s2.log().contains("snapshot downloaded");
        eprintln!(
            "[{what}] restore of {} keys exact ({} ms including start; from a snapshot + segments: {from_snapshot})",
            want.len(),
            t.elapsed().as_millis()
        );
        s2
    }
}

/// Under `fault`, concurrent local-mode writes keep succeeding; after the
/// fault stops the backup converges; a restore from S3 is exact.
async fn s3_fault_case(name: &str, fault: Fault, window: Duration) {
    let t0 = Instant::now();
    let case = S3Case::new(name).await;
    let mut s = start(&case.db(), case.opts(true));
    let c = s.client();

    // Healthy through the proxy first.
    let (mut acked, _, _) = write_for(&s, Duration::from_millis(400)).await;
    wait_caught_up(&s, Duration::from_secs(10)).await;
    let before = case.proxy.stats();
    assert!(before.forwarded > 0 && before.faults() == 0, "{before:?}");
    let failures_before = gauge(&s, "sidekv_upload_failures_total").await;

    case.proxy.set(fault);
    let (during, max_outbox, max_lag) = write_for(&s, window).await;
    let outbox_at_end = gauge(&s, "sidekv_outbox_commits").await;
    case.proxy.set(Fault::Pass);
    let stats = case.proxy.stats();
    assert!(
        during.errors.is_empty(),
        "[{name}] local-mode writes failed under {fault:?}: {:?}",
        &during.errors[..during.errors.len().min(5)]
    );
    assert!(during.writes >= 100, "[{name}] only {} writes in {window:?}", during.writes);
    assert!(stats.faults() > before.faults(), "[{name}] no fault was injected: {stats:?}");
    let during_writes = during.writes;
    merge(&mut acked, during);

    // Converge: every commit in S3, not fenced, ready.
    let converge = wait_caught_up(&s, Duration::from_secs(25)).await;
    let m = metrics(&s).await;
    let failures = metric(&m, "sidekv_upload_failures_total").unwrap() - failures_before;
    // The catch-up segment is over KVSTORE_SNAPSHOT_BYTES: a snapshot follows it.
    let t = Instant::now();
    let mut snapshots = metric(&m, "sidekv_snapshots_total").unwrap();
    while snapshots < 1.0 {
        assert!(t.elapsed() < Duration::from_secs(10), "[{name}] no snapshot was taken:\n{}", tail(&s.log(), 30));
        tokio::time::sleep(Duration::from_millis(50)).await;
        snapshots = gauge(&s, "sidekv_snapshots_total").await;
    }
    assert_eq!(metric(&m, "sidekv_replication_fenced"), Some(0.0), "[{name}] fenced:\n{}", tail(&s.log(), 40));
    assert_eq!(readyz(&s).await, 200);
    match fault {
        Fault::Delay(d) => assert!(stats.delayed > 0 && max_lag >= d.as_secs_f64(), "[{name}] max lag {max_lag} {stats:?}"),
        Fault::LoseResponse => {
            assert!(stats.lost_responses > 0, "{stats:?}");
            assert!(
                s.log().contains("identical content; counting it as shipped"),
                "[{name}] never recognised its own segment:\n{}",
                tail(&s.log(), 40)
            );
        }
        // Half the requests pass: the outbox may be empty at any moment.
        Fault::Mixed(_) => {}
        // (Upload failures are reported, not asserted: the SDK's own
        // retries may still be in progress when the window ends.)
        _ => assert!(outbox_at_end > 0.0, "[{name}] the backup was not held up: outbox {outbox_at_end}, {stats:?}"),
    }
    // The live state is what was acknowledged.
    let want = expected(&acked);
    assert_state(&dump(&c).await, &want, &format!("[{name}] served state"));
    eprintln!(
        "[{name}] {fault:?} for {window:?}: {during_writes} writes acked (0 failed), proxy {stats:?}, upload failures {failures}, \
         max outbox {max_outbox} commits, max lag {max_lag:.2}s, outbox at heal {outbox_at_end}, caught up {} ms after heal, {snapshots} snapshots",
        converge.as_millis()
    );
    let s2 = case.restore_and_check(&mut s, &want, name).await;
    // The counter continues after the restored history.
    let vs = try_set(&s2.client(), "after", "restore").await.unwrap();
    assert!(vs > want.values().map(|v| v.1.clone()).max().unwrap(), "[{name}] {vs}");
    eprintln!("[{name}] total {} ms", t0.elapsed().as_millis());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_http_500_during_writes() {
    s3_fault_case("http500", Fault::Status(500), Duration::from_millis(4000)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_http_503_during_writes() {
    s3_fault_case("http503", Fault::Status(503), Duration::from_millis(4000)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_http_429_during_writes() {
    s3_fault_case("http429", Fault::Status(429), Duration::from_millis(4000)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_slow_responses_during_writes() {
    s3_fault_case("slow", Fault::Delay(Duration::from_millis(1500)), Duration::from_millis(3000)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_connection_resets_during_writes() {
    s3_fault_case("reset", Fault::Reset, Duration::from_millis(4000)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_put_response_lost_does_not_fence() {
    s3_fault_case("lost", Fault::LoseResponse, Duration::from_millis(4000)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_mixed_random_faults_during_writes() {
    s3_fault_case("mixed", Fault::Mixed(50), Duration::from_millis(4000)).await;
}

/// A PUT lands in S3 but its response is lost, and the process dies before
/// it learns: the next start (same disk, healthy S3) recognises the segment
/// as its own instead of fencing, ships the rest, and a restore is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_put_response_lost_then_kill9() {
    let name = "lostkill";
    let case = S3Case::new(name).await;
    let mut s = start(&case.db(), case.opts(true));
    let (mut acked, _, _) = write_for(&s, Duration::from_millis(300)).await;
    wait_caught_up(&s, Duration::from_secs(10)).await;
    case.proxy.set(Fault::LoseResponse);
    let (during, _, _) = write_for(&s, Duration::from_millis(1500)).await;
    assert!(during.errors.is_empty(), "{:?}", &during.errors[..during.errors.len().min(5)]);
    merge(&mut acked, during);
    let stats = case.proxy.stats();
    assert!(stats.lost_responses > 0, "{stats:?}");
    let outbox = gauge(&s, "sidekv_outbox_commits").await;
    assert!(outbox > 0.0);
    tokio::task::block_in_place(|| s.kill9());
    case.proxy.set(Fault::Pass);

    // Same disk, through the (now healthy) proxy.
    let mut s = start(&case.db(), case.opts(true));
    assert!(!s.log().contains("stale-"), "the local database was moved aside:\n{}", s.log());
    wait_caught_up(&s, Duration::from_secs(15)).await;
    assert!(s.log().contains("identical content; counting it as shipped"), "{}", tail(&s.log(), 40));
    assert_eq!(gauge(&s, "sidekv_replication_fenced").await, 0.0);
    let (after, _, _) = write_for(&s, Duration::from_millis(300)).await;
    assert!(after.errors.is_empty(), "{:?}", after.errors);
    merge(&mut acked, after);
    wait_caught_up(&s, Duration::from_secs(10)).await;
    let want = expected(&acked);
    assert_state(&dump(&s.client()).await, &want, "served state after kill -9 and restart");
    eprintln!("[{name}] outbox at kill -9: {outbox} commits; proxy {stats:?}");
    case.restore_and_check(&mut s, &want, name).await;
}

// ======================================================= disk faults ====

/// Unmounts on drop (after the server using it is gone).
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A small tmpfs at `dir`. A machine where it cannot be mounted (not root,
/// no CAP_SYS_ADMIN) cannot run the scenario: the test fails saying so,
/// rather than passing without having tested anything.
fn mount_tmpfs(dir: &Path, size: &str) -> Mount {
    std::fs::create_dir_all(dir).unwrap();
    let out = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .output()
        .unwrap_or_else(|e| panic!("running mount(8) for the disk-full scenario: {e}"));
    assert!(
        out.status.success(),
        "cannot mount a {size} tmpfs at {} for the disk-full scenario ({}); these tests need root (see docs/robustness.md)",
        dir.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Mount(dir.to_path_buf())
}

fn free_bytes(dir: &Path) -> u64 {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st.f_bavail as u64 * st.f_frsize as u64
}

/// A server whose database lives on a fresh 4 MiB tmpfs. With
/// `logs_on_same_disk` the server's stderr log is on that tmpfs too (the
/// harness writes it next to the database); otherwise the database path is
/// a symlink into the tmpfs, so the log stays on the big disk.
struct DiskCase {
    s: Server,
    db: PathBuf,
    mnt: PathBuf,
    opts: Opts,
    _mount: Mount,
    _dir: tempfile::TempDir,
}

impl DiskCase {
    fn start(logs_on_same_disk: bool) -> DiskCase {
        let dir = common::tempdir();
        let mnt = dir.path().join("disk");
        let mount = mount_tmpfs(&mnt, "4m");
        let db = if logs_on_same_disk {
            mnt.join("db.sqlite3")
        } else {
            let link = dir.path().join("db.sqlite3");
            std::os::unix::fs::symlink(mnt.join("db.sqlite3"), &link).unwrap();
            link
        };
        let opts = Opts::default()
            .env("RUST_LOG", "warn")
            .env("KVSTORE_ADMIN_ADDR", "127.0.0.1:0")
            .env("KVSTORE_CACHE_DIR", dir.path().join("cache").to_str().unwrap());
        let s = start(&db, opts.clone());
        DiskCase { s, db, mnt, opts, _mount: mount, _dir: dir }
    }

    /// Leave ~600 KiB free, then fill that from 4 concurrent writers with
    /// 16 KiB values until each gets a refusal. Returns (acknowledged state,
    /// refused keys, refusals).
    async fn fill(&self, acked: &mut State) -> (Vec<String>, Vec<(u16, String)>) {
        let filler = self.mnt.join("filler");
        let free0 = free_bytes(&self.mnt);
        std::fs::write(&filler, vec![0u8; (free0 - 600 * 1024) as usize]).unwrap();
        eprintln!("[disk] tmpfs 4 MiB, {} KiB free, filler leaves {} KiB", free0 / 1024, free_bytes(&self.mnt) / 1024);
        let mut tasks = Vec::new();
        for w in 0..4u8 {
            let c = Client { base: self.s.url.clone(), http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap() };
            tasks.push(tokio::spawn(async move {
                let mut acked = State::new();
                for i in 0..500 {
                    let key = format!("fill{w}-{i:03}");
                    let mut value = format!("{w}:{i}:").into_bytes();
                    value.extend(std::iter::repeat_n(b'a' + w, 16 * 1024));
                    match try_set(&c, &key, value.clone()).await {
                        Ok(vs) => {
                            acked.insert(key, (value, vs));
                        }
                        Err(e) => return (acked, Some((key, e))),
                    }
                }
                (acked, None)
            }));
        }
        let (mut refused, mut refusals) = (Vec::new(), Vec::new());
        for t in tasks {
            let (a, failed) = t.await.unwrap();
            acked.extend(a);
            let (key, e) = failed.expect("the disk never filled up");
            refused.push(key);
            refusals.push(e);
        }
        (refused, refusals)
    }

    fn free_filler(&self) {
        std::fs::remove_file(self.mnt.join("filler")).unwrap();
    }

    fn remount(&self, mode: &str) {
        let st = std::process::Command::new("mount").args(["-o", &format!("remount,{mode}")]).arg(&self.mnt).status().unwrap();
        assert!(st.success(), "remount {mode}");
    }
}

/// The database on a 4 MiB tmpfs: fill it with concurrent writers until
/// writes fail; they fail with 507, reads keep working, nothing
/// acknowledged is lost and nothing refused appears; after space is freed,
/// writes succeed again at once, and everything survives a restart. A
/// read-only filesystem at start (after a clean shutdown, after a crash) is
/// refused cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disk_full_gives_507_and_recovers() {
    let mut d = DiskCase::start(false);
    let c = d.s.client();
    let mut acked = State::new();
    acked.insert("before".into(), (b"full".to_vec(), try_set(&c, "before", "full").await.unwrap()));
    assert!(d.mnt.join("db.sqlite3-wal").exists(), "the WAL is not on the tmpfs");

    let (mut refused, refusals) = d.fill(&mut acked).await;
    for ((status, body), key) in refusals.iter().zip(&refused) {
        assert_eq!(*status, 507, "refused write {key}: {body}\n{}", tail(&d.s.log(), 20));
        assert!(body.contains("disk") && body.contains("full"), "{body}");
    }
    let free_full = free_bytes(&d.mnt);
    eprintln!(
        "[disk] {} writes of 16 KiB acked before the disk filled; the next 4 (one per writer) got 507; {} KiB left",
        acked.len() - 1,
        free_full / 1024
    );

    // Still (nearly) full: more writes, large and small, each either
    // succeed (SQLite reuses WAL space the failed commits had allocated) or
    // are refused with 507; never a 500 or a hang.
    let (mut more_ok, mut more_507) = (0, 0);
    for i in 0..10 {
        let (key, value) = if i % 2 == 0 { (format!("more{i}"), vec![b'm'; 16 * 1024]) } else { (format!("tiny{i}"), b"t".to_vec()) };
        match try_set(&c, &key, value.clone()).await {
            Ok(vs) => {
                more_ok += 1;
                acked.insert(key, (value, vs));
            }
            Err((507, _)) => {
                more_507 += 1;
                refused.push(key);
            }
            Err(e) => panic!("write {key} while full: {e:?}"),
        }
    }
    // Reads work and show exactly what was acknowledged; the server stays ready.
    assert_state(&dump(&c).await, &acked, "state while the disk is full");
    for k in &refused {
        assert_eq!(get_vs(&c, k).await, None, "refused write {k} is visible");
    }
    assert_eq!(readyz(&d.s).await, 200);
    assert!(d.s.log().contains("group commit failed"), "{}", d.s.log());

    // Free the space: writes succeed again at once.
    d.free_filler();
    let t = Instant::now();
    let vs = try_set(&c, &refused[0], "after-free")
        .await
        .unwrap_or_else(|e| panic!("first write after freeing space: {e:?}\n{}", tail(&d.s.log(), 20)));
    acked.insert(refused[0].clone(), (b"after-free".to_vec(), vs));
    for i in 0..20 {
        let k = format!("after{i}");
        let vs = try_set(&c, &k, vec![b'z'; 16 * 1024]).await.unwrap();
        acked.insert(k, (vec![b'z'; 16 * 1024], vs));
    }
    eprintln!(
        "[disk] while full, 10 more writes (5 of 16 KiB, 5 of 1 byte): {more_ok} OK, {more_507} got 507; space freed: 21 writes OK in {} ms",
        t.elapsed().as_millis()
    );
    assert_state(&dump(&c).await, &acked, "state after recovery");

    // Everything survives a clean restart.
    terminate(&mut d.s);
    assert_state(&read_db(&d.db), &acked, "database file after SIGTERM");
    d.s = start(&d.db, d.opts.clone());
    assert_state(&dump(&d.s.client()).await, &acked, "state after restart");
    terminate(&mut d.s);

    // A read-only filesystem. (Remounting a tmpfs read-only is refused
    // while files on it are open for writing, so this only happens between
    // runs.) After a clean shutdown (no -wal/-shm left) and after a crash
    // (non-empty WAL): the server refuses to start, quickly, with an error;
    // writable again, it starts with every acknowledged write.
    remove_empty_wal(&d.db);
    d.remount("ro");
    let clean = start_outcome(&d.db, &d.opts);
    d.remount("rw");
    eprintln!("[disk] start on a read-only filesystem after a clean shutdown: {clean:?}");
    match &clean {
        StartOutcome::Exited { code, stderr, after } => {
            assert_eq!(*code, Some(1), "{stderr}");
            // SQLite reports either, depending on what it trips over first.
            assert!(["unable to open database file", "readonly database", "read-only"].iter().any(|m| stderr.contains(m)), "{stderr}");
            assert!(*after < Duration::from_secs(5));
        }
        other => panic!("started on a read-only filesystem: {other:?}"),
    }
    d.s = start(&d.db, d.opts.clone());
    let vs = try_set(&d.s.client(), "before-crash", "x").await.unwrap();
    acked.insert("before-crash".into(), (b"x".to_vec(), vs));
    tokio::task::block_in_place(|| d.s.kill9());
    d.remount("ro");
    let crashed = start_outcome(&d.db, &d.opts);
    d.remount("rw");
    eprintln!("[disk] start on a read-only filesystem after kill -9: {crashed:?}");
    match &crashed {
        StartOutcome::Exited { code, stderr, after } => {
            assert_eq!(*code, Some(1), "{stderr}");
            assert!(stderr.contains("readonly database") || stderr.contains("read-only"), "{stderr}");
            assert!(*after < Duration::from_secs(5));
        }
        other => panic!("started on a read-only filesystem: {other:?}"),
    }
    d.s = start(&d.db, d.opts.clone());
    assert_state(&dump(&d.s.client()).await, &acked, "state after the read-only episodes");
    terminate(&mut d.s);
    assert_state(&read_db(&d.db), &acked, "database file at the end");
}

#[derive(Debug)]
enum StartOutcome {
    Exited {
        code: Option<i32>,
        stderr: String,
        after: Duration,
    },
    /// It printed `listening on`; what a write and `/readyz` got.
    Serving {
        write: Result<String, (u16, String)>,
        readyz: u16,
    },
}

/// Start sidekv on `db` and report whether it exits or serves (then stop it).
fn start_outcome(db: &Path, opts: &Opts) -> StartOutcome {
    use std::io::BufRead;
    let t = Instant::now();
    let log_dir = common::tempdir();
    let mut cmd = common::base_command(log_dir.path());
    cmd.env("KVSTORE_SECRET", SECRET).env("PORT", "0").env("KVSTORE_DB", db);
    for (k, v) in &opts.env {
        cmd.env(k, v);
    }
    let stderr_path = log_dir.path().join("stderr.log");
    cmd.stdout(std::process::Stdio::piped()).stderr(std::fs::File::create(&stderr_path).unwrap());
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut admin = None;
    let outcome = loop {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(50)) {
            if let Some(a) = line.strip_prefix("admin on ") {
                admin = Some(a.trim().to_string());
            }
            if let Some(url) = line.strip_prefix("listening on ") {
                let (url, admin) = (url.trim().to_string(), admin.clone());
                let (write, readyz) = std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                    rt.block_on(async {
                        let c = Client { base: url, http: reqwest::Client::new() };
                        let w = try_set(&c, "on-read-only", "x").await;
                        let r = match admin {
                            Some(a) => reqwest::get(format!("{a}/readyz")).await.unwrap().status().as_u16(),
                            None => 0,
                        };
                        (w, r)
                    })
                })
                .join()
                .unwrap();
                break StartOutcome::Serving { write, readyz };
            }
        }
        if let Some(st) = child.try_wait().unwrap() {
            break StartOutcome::Exited { code: st.code(), stderr: std::fs::read_to_string(&stderr_path).unwrap(), after: t.elapsed() };
        }
        if t.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("neither exited nor served in 20 s:\n{}", std::fs::read_to_string(&stderr_path).unwrap());
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    outcome
}

/// After a clean shutdown the WAL is empty (it may or may not be left
/// behind, depending on which connection closed last): remove it and the
/// -shm so the next start sees only the database file.
fn remove_empty_wal(db: &Path) {
    // (SQLite puts them next to the file a symlinked path points to.)
    let db = std::fs::canonicalize(db).unwrap();
    let wal = PathBuf::from(format!("{}-wal", db.display()));
    if let Ok(m) = std::fs::metadata(&wal) {
        assert_eq!(m.len(), 0, "the WAL is not empty after a clean shutdown");
        std::fs::remove_file(&wal).unwrap();
    }
    let _ = std::fs::remove_file(format!("{}-shm", db.display()));
}

/// Leave an empty -wal and a -shm next to the database, as a clean
/// shutdown of sidekv does when a reader connection closes last (the
/// writer truncates the WAL, the last reader cannot delete it). Here: a
/// test reader keeps them alive while the writer closes; copies taken then
/// are put back after the reader closes (it may delete them).
fn leave_empty_wal(db: &Path) {
    let db = &std::fs::canonicalize(db).unwrap();
    let (wal, shm) = (PathBuf::from(format!("{}-wal", db.display())), PathBuf::from(format!("{}-shm", db.display())));
    let rw = rusqlite::Connection::open(db).unwrap();
    rw.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
    // An open read transaction keeps the closing writer from deleting them.
    let ro = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    ro.execute_batch("BEGIN").unwrap();
    ro.query_row("SELECT count(*) FROM kv", [], |_| Ok(())).unwrap();
    drop(rw);
    let keep = |p: &Path| PathBuf::from(format!("{}.keep", p.display()));
    std::fs::copy(&wal, keep(&wal)).unwrap();
    std::fs::copy(&shm, keep(&shm)).unwrap();
    ro.execute_batch("COMMIT").unwrap();
    drop(ro);
    std::fs::rename(keep(&wal), &wal).unwrap();
    std::fs::rename(keep(&shm), &shm).unwrap();
    assert_eq!(std::fs::metadata(&wal).unwrap().len(), 0);
    assert!(std::fs::metadata(&shm).unwrap().len() > 0);
}

/// A clean shutdown can leave an empty -wal and a -shm behind. On a
/// read-only filesystem SQLite then opens the database read-only without an
/// error (its silent fallback); a build whose start-up did not write
/// started, reported ready, and failed every write with 500 "attempt to
/// write a readonly database". It must refuse to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_filesystem_after_clean_shutdown_refuses_to_start() {
    let mut d = DiskCase::start(false);
    try_set(&d.s.client(), "k", "v").await.unwrap();
    terminate(&mut d.s);
    leave_empty_wal(&d.db);
    d.remount("ro");
    let outcome = start_outcome(&d.db, &d.opts);
    d.remount("rw");
    eprintln!("[disk] start on a read-only filesystem with an empty -wal/-shm: {outcome:?}");
    if let StartOutcome::Serving { write, readyz } = &outcome {
        panic!("started on a read-only filesystem: /readyz {readyz}, a write got {write:?}");
    }
    assert!(matches!(outcome, StartOutcome::Exited { code: Some(1), .. }), "{outcome:?}");
}

/// The same full disk, with the server's stderr log on that disk too (as
/// with `sidekv 2>>/data/sidekv.log` and the database in /data): the first
/// failing commit logs an error, the log write fails with ENOSPC,
/// tracing-subscriber falls back to `eprintln!`, which panics, on the
/// writer thread. From then on every write fails (500 "the writer thread
/// stopped", then 503 "the store is shutting down"), even after space is
/// freed, while /readyz still says ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disk_full_with_the_log_on_the_same_disk_recovers() {
    let d = DiskCase::start(true);
    let c = Client { base: d.s.url.clone(), http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap() };
    let mut acked = State::new();
    let (refused, refusals) = d.fill(&mut acked).await;
    let statuses: Vec<u16> = refusals.iter().map(|r| r.0).collect();
    let more = try_set(&c, "more", vec![b'm'; 16 * 1024]).await;
    d.free_filler();
    let after = try_set(&c, &refused[0], "after-free").await;
    let ready = readyz(&d.s).await;
    eprintln!("[disk/log on same disk] refusals {refusals:?}; while full: {more:?}; after freeing space: {after:?}; /readyz {ready}");
    assert_eq!(statuses, vec![507; 4], "{refusals:?}");
    // (It may fit into WAL space the failed commits had allocated.)
    match more {
        Ok(vs) => {
            acked.insert("more".into(), (vec![b'm'; 16 * 1024], vs));
        }
        Err((507, _)) => {}
        Err(e) => panic!("write while full: {e:?}"),
    }
    let vs = after.unwrap_or_else(|e| panic!("write after freeing space: {e:?}"));
    acked.insert(refused[0].clone(), (b"after-free".to_vec(), vs));
    assert_state(&dump(&c).await, &acked, "state after recovery");
}

// ======================================================== HTTP abuse ====

fn addr(s: &Server) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], s.port))
}

/// What a raw exchange ended with.
#[derive(Debug, PartialEq)]
enum Raw {
    /// Bytes received before the server closed the connection.
    Closed(Vec<u8>),
    /// Reset (possibly after some bytes).
    Reset(Vec<u8>),
    /// Nothing more within the timeout (bytes so far).
    Hung(Vec<u8>),
}

impl Raw {
    fn bytes(&self) -> &[u8] {
        match self {
            Raw::Closed(b) | Raw::Reset(b) | Raw::Hung(b) => b,
        }
    }
    fn status(&self) -> Option<u16> {
        let b = self.bytes();
        let s = std::str::from_utf8(b.get(..12)?).ok()?;
        s.strip_prefix("HTTP/1.1 ")?.parse().ok()
    }
}

/// Read until the server closes (or `timeout`).
async fn read_all(s: &mut TcpStream, timeout: Duration) -> Raw {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return Raw::Hung(out),
            Ok(Ok(0)) => return Raw::Closed(out),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => return Raw::Reset(out),
        }
    }
}

/// Send `bytes` on a new connection and read what comes back until the
/// server closes it (requests should say `connection: close`). The write
/// side is not shut down: hyper (half_close off) drops a connection whose
/// client half-closes, even after a complete request.
async fn raw(s: &Server, bytes: &[u8]) -> Raw {
    let c = TcpStream::connect(addr(s)).await.unwrap();
    let (mut rd, mut wr) = c.into_split();
    // The server may answer and close before reading everything: write
    // concurrently and ignore write errors.
    let bytes = bytes.to_vec();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&bytes).await;
        wr
    });
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 8192];
    let r = loop {
        match tokio::time::timeout_at(deadline, rd.read(&mut buf)).await {
            Err(_) => break Raw::Hung(out),
            Ok(Ok(0)) => break Raw::Closed(out),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => break Raw::Reset(out),
        }
    };
    writer.abort();
    r
}

/// One parsed HTTP/1.1 response: (status, headers, body).
type Response = (u16, Vec<(String, String)>, Vec<u8>);

/// Split a byte stream into HTTP/1.1 responses.
fn parse_responses(mut b: &[u8]) -> Vec<Response> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let end = b.windows(4).position(|w| w == b"\r\n\r\n").expect("response head") + 4;
        let head = std::str::from_utf8(&b[..end]).unwrap();
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap()[9..12].parse().unwrap();
        let headers: Vec<(String, String)> =
            lines.filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))).collect();
        let len: usize = headers.iter().find(|h| h.0 == "content-length").map(|h| h.1.parse().unwrap()).expect("content-length");
        out.push((status, headers, b[end..end + len].to_vec()));
        b = &b[end + len..];
    }
    out
}

/// Latency that means a request waited for the slowloris connections to
/// be cut (the 10 s header timeout), not a busy machine.
const STARVED: Duration = Duration::from_secs(5);

/// 200 slowloris connections (a partial request head, one more byte every
/// 500 ms) do not slow a normal client, and are closed at the 10 s header
/// timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slowloris_does_not_starve_and_is_cut_at_the_header_timeout() {
    let dir = common::tempdir();
    let s = start(&dir.path().join("db.sqlite3"), Opts::default().env("KVSTORE_ADMIN_ADDR", "127.0.0.1:0"));
    let a = addr(&s);
    let steady = Steady::spawn(s.client(), "loris");
    let t0 = Instant::now();
    let mut lorises = Vec::new();
    for i in 0..200 {
        lorises.push(tokio::spawn(async move {
            let mut c = TcpStream::connect(a).await.unwrap();
            let opened = Instant::now();
            c.write_all(format!("GET /loris{i} HTTP/1.1\r\nhost: x\r\nauthorization: ").as_bytes()).await.unwrap();
            // Drip the rest of a never-ending header, one byte per 500 ms,
            // until the server closes the connection.
            let mut buf = [0u8; 1024];
            let mut got = Vec::new();
            loop {
                tokio::select! {
                    r = c.read(&mut buf) => {
                        match r {
                            Ok(0) | Err(_) => return (opened.elapsed(), got),
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {
                        if c.write_all(b"x").await.is_err() {
                            return (opened.elapsed(), got);
                        }
                    }
                }
                if opened.elapsed() > Duration::from_secs(20) {
                    return (opened.elapsed(), b"STILL OPEN AFTER 20 s".to_vec());
                }
            }
        }));
    }
    // While they hang on: the normal client is served, quickly.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let open = gauge(&s, "sidekv_connections_open").await;
    assert!(open >= 200.0, "the slowloris connections are not open: {open}");
    let ok_mid = steady.ok();
    let t = Instant::now();
    assert_eq!(get_vs(&s.client(), "loris-steady0").await.map(|v| v.0.is_empty()), Some(false));
    let fresh = t.elapsed();
    let mut closed_after = Vec::new();
    for l in lorises {
        let (after, got) = l.await.unwrap();
        assert!(got.is_empty() || got.starts_with(b"HTTP/1.1 408"), "slowloris got {:?}", String::from_utf8_lossy(&got));
        closed_after.push(after);
    }
    let report = steady.finish().await;
    closed_after.sort();
    let (min, max) = (closed_after[0], closed_after[closed_after.len() - 1]);
    eprintln!(
        "[slowloris] 200 connections open {open}; a fresh client's GET took {} ms meanwhile; steady client: {} round trips, max latency {} ms, {} errors; \
         slowloris connections closed after {:.1}..{:.1} s (whole test {:.1} s)",
        fresh.as_millis(),
        report.round_trips,
        report.max_latency.as_millis(),
        report.errors.len(),
        min.as_secs_f64(),
        max.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(ok_mid >= 20 && report.round_trips > ok_mid, "steady client starved: {ok_mid} then {report:?}");
    // Starved means waiting for the 10 s header timeout to cut the
    // lorises; a busy 2-core machine can take a second on its own.
    assert!(fresh < STARVED, "a fresh GET took {fresh:?}");
    assert!(report.max_latency < STARVED, "{report:?}");
    assert!(min >= Duration::from_millis(9500) && max <= Duration::from_secs(13), "closed after {min:?}..{max:?}, want ~10 s");
    // Every connection is gone once the clients are (the steady client's
    // pool closes its connection when the client is dropped).
    let deadline = Instant::now() + Duration::from_secs(3);
    while gauge(&s, "sidekv_connections_open").await != 0.0 {
        assert!(Instant::now() < deadline, "connections left open: {}", gauge(&s, "sidekv_connections_open").await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Oversized heads and bodies, garbage, bad keys, pipelining: each gets the
/// right answer and the server stays correct for a normal client.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_and_oversized_requests() {
    let dir = common::tempdir();
    let s =
        start(&dir.path().join("db.sqlite3"), Opts::default().env("KVSTORE_MAX_BODY_BYTES", "4096").env("KVSTORE_MAX_VALUE_BYTES", "1024"));
    let steady = Steady::spawn(s.client(), "abuse");
    let auth = format!("authorization: {SECRET}\r\n");

    // Heads over the 64 KiB limit that hyper catches (see
    // `header_of_100_kib_gets_431` for one it does not): 200 KiB in one
    // header, 100 KiB over 2000 headers (hyper also caps headers at 100).
    for (what, head) in [
        ("200 KiB header", format!("x-big: {}\r\n", "a".repeat(200 * 1024))),
        ("2000 headers", (0..2000).map(|i| format!("x-h{i}: {}\r\n", "b".repeat(40))).collect()),
    ] {
        let r = raw(&s, format!("GET /k HTTP/1.1\r\nhost: x\r\n{auth}connection: close\r\n{head}\r\n").as_bytes()).await;
        assert_eq!(r.status(), Some(431), "{what}: {:?}", String::from_utf8_lossy(&r.bytes()[..r.bytes().len().min(200)]));
    }

    // Bodies over KVSTORE_MAX_BODY_BYTES → 413: declared, actually sent, chunked.
    let r = raw(&s, format!("POST /big HTTP/1.1\r\nhost: x\r\n{auth}connection: close\r\ncontent-length: 10737418240\r\n\r\n").as_bytes())
        .await;
    assert_eq!(r.status(), Some(413), "10 GiB content-length");
    let mut req = format!("POST /big HTTP/1.1\r\nhost: x\r\n{auth}connection: close\r\ncontent-length: 1048576\r\n\r\n").into_bytes();
    req.extend(vec![b'x'; 1 << 20]);
    let r = raw(&s, &req).await;
    assert_eq!(r.status(), Some(413), "1 MiB body");
    let mut req = format!("POST /big HTTP/1.1\r\nhost: x\r\n{auth}connection: close\r\ntransfer-encoding: chunked\r\n\r\n").into_bytes();
    for _ in 0..64 {
        req.extend(b"400\r\n");
        req.extend(vec![b'y'; 1024]);
        req.extend(b"\r\n");
    }
    req.extend(b"0\r\n\r\n");
    let r = raw(&s, &req).await;
    assert_eq!(r.status(), Some(413), "64 KiB chunked body");
    // Body under the body limit but value over the value limit → 413; at the limit → 200.
    let c = s.client();
    assert_eq!(try_set(&c, "big", vec![b'v'; 1025]).await.unwrap_err().0, 413);
    let vs = try_set(&c, "big", vec![b'v'; 1024]).await.unwrap();
    assert_eq!(get_vs(&c, "big").await, Some((vec![b'v'; 1024], vs)));

    // Garbage and malformed request lines → 400 or closed, never a hang.
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("binary garbage", garbage),
        ("NUL bytes", vec![0u8; 100]),
        ("no method", b"/k HTTP/1.1\r\nhost: x\r\n\r\n".to_vec()),
        ("no version", b"GET /k\r\nhost: x\r\n\r\n".to_vec()),
        ("bad version", b"GET /k HTTP/9.9\r\nhost: x\r\n\r\n".to_vec()),
        ("two spaces", b"GET  /k  HTTP/1.1\r\nhost: x\r\n\r\n".to_vec()),
        ("header without colon", b"GET /k HTTP/1.1\r\nhost x\r\n\r\n".to_vec()),
        ("bad content-length", b"POST /k HTTP/1.1\r\nhost: x\r\ncontent-length: abc\r\n\r\n".to_vec()),
        ("two content-lengths", b"POST /k HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab".to_vec()),
        ("bad chunk size", b"POST /k HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n".to_vec()),
        ("non-ASCII in path", b"GET /\xff\xfe HTTP/1.1\r\nhost: x\r\n\r\n".to_vec()),
        ("control char in header", b"GET /k HTTP/1.1\r\nhost: x\r\nx-a: a\x01b\r\n\r\n".to_vec()),
    ];
    let mut outcomes = Vec::new();
    for (what, bytes) in cases.iter().chain(&cases).chain(&cases) {
        let r = raw(&s, bytes).await;
        let ok = match &r {
            Raw::Closed(b) | Raw::Reset(b) => b.is_empty() || r.status() == Some(400),
            Raw::Hung(_) => false,
        };
        assert!(ok, "{what}: {r:?}");
        outcomes.push(format!("{what}: {}", r.status().map(|s| s.to_string()).unwrap_or_else(|| "closed".into())));
    }
    outcomes.truncate(cases.len());
    eprintln!("[abuse] malformed (each sent 3 times): {}", outcomes.join(", "));

    // Invalid UTF-8 and bad percent-encoding in keys → 400 (GET and POST).
    for path in ["/%ff%fe", "/%c3%28", "/%zz", "/a%", "/a%4", "/%ed%a0%80", "/?prefix=%ff", "/?prefix=%g0"] {
        for method in ["GET", "POST"] {
            if path.starts_with("/?") && method == "POST" {
                continue;
            }
            let r =
                raw(&s, format!("{method} {path} HTTP/1.1\r\nhost: x\r\n{auth}content-length: 1\r\nconnection: close\r\n\r\nv").as_bytes())
                    .await;
            assert_eq!(r.status(), Some(400), "{method} {path}: {:?}", String::from_utf8_lossy(r.bytes()));
            let body = String::from_utf8_lossy(r.bytes());
            assert!(body.contains("percent-encoding") || body.contains("UTF-8"), "{method} {path}: {body}");
        }
    }

    // Pipelining: three requests in one write → three responses, in order.
    let mut c1 = TcpStream::connect(addr(&s)).await.unwrap();
    let reqs = format!(
        "POST /piped HTTP/1.1\r\nhost: x\r\n{auth}content-length: 3\r\n\r\none\
         GET /piped HTTP/1.1\r\nhost: x\r\n{auth}\r\n\
         GET /piped-missing HTTP/1.1\r\nhost: x\r\n{auth}connection: close\r\n\r\n"
    );
    c1.write_all(reqs.as_bytes()).await.unwrap();
    let r = read_all(&mut c1, Duration::from_secs(5)).await;
    assert!(matches!(r, Raw::Closed(_)), "{r:?}");
    let resps = parse_responses(r.bytes());
    assert_eq!(resps.len(), 3, "{:?}", String::from_utf8_lossy(r.bytes()));
    assert_eq!(resps[0].0, 200);
    let v: serde_json::Value = serde_json::from_slice(&resps[0].2).unwrap();
    let vs = v["versionstamp"].as_str().unwrap();
    assert_eq!(resps[1].0, 200);
    assert_eq!(resps[1].2, b"one");
    assert_eq!(resps[1].1.iter().find(|h| h.0 == "etag").map(|h| h.1.clone()), Some(format!("\"{vs}\"")));
    assert_eq!(resps[2].0, 404);
    // Ten pipelined writes then a read of the same key: the read sees the last.
    let mut reqs = String::new();
    for i in 0..10 {
        reqs += &format!("POST /piped2 HTTP/1.1\r\nhost: x\r\n{auth}content-length: {}\r\n\r\nv{i}", format!("v{i}").len());
    }
    reqs += &format!("GET /piped2 HTTP/1.1\r\nhost: x\r\n{auth}connection: close\r\n\r\n");
    let mut c2 = TcpStream::connect(addr(&s)).await.unwrap();
    c2.write_all(reqs.as_bytes()).await.unwrap();
    let resps = parse_responses(read_all(&mut c2, Duration::from_secs(5)).await.bytes());
    assert_eq!(resps.len(), 11);
    let stamps: Vec<String> = resps[..10]
        .iter()
        .map(|r| {
            assert_eq!(r.0, 200);
            serde_json::from_slice::<serde_json::Value>(&r.2).unwrap()["versionstamp"].as_str().unwrap().to_string()
        })
        .collect();
    assert!(stamps.windows(2).all(|w| w[0] < w[1]), "versionstamps out of order: {stamps:?}");
    assert_eq!((resps[10].0, resps[10].2.as_slice()), (200, &b"v9"[..]));

    // The normal client must have been served throughout (and still is).
    let deadline = Instant::now() + Duration::from_secs(5);
    while steady.ok() < 20 {
        assert!(Instant::now() < deadline, "the normal client made only {} round trips", steady.ok());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let report = steady.finish().await;
    eprintln!(
        "[abuse] steady client: {} round trips, max latency {} ms, {} errors",
        report.round_trips,
        report.max_latency.as_millis(),
        report.errors.len()
    );
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(report.round_trips > 0);
    assert!(report.max_latency < Duration::from_secs(2), "{report:?}");
}

/// A 100 KiB header is over the 64 KiB head limit (limits::MAX_HEADER_BYTES,
/// "larger → 431"), whether it arrives in one write or dripped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_of_100_kib_gets_431() {
    let dir = common::tempdir();
    let s = start(&dir.path().join("db.sqlite3"), Opts::default());
    let req =
        format!("GET /k HTTP/1.1\r\nhost: x\r\nauthorization: {SECRET}\r\nconnection: close\r\nx-big: {}\r\n\r\n", "a".repeat(100 * 1024));
    // Dripped in 4 KiB pieces.
    let mut c = TcpStream::connect(addr(&s)).await.unwrap();
    for chunk in req.as_bytes().chunks(4096) {
        if c.write_all(chunk).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let dripped = read_all(&mut c, Duration::from_secs(5)).await;
    // In one write.
    let at_once = raw(&s, req.as_bytes()).await;
    eprintln!("[431] 100 KiB header dripped: {:?}; in one write: {:?}", dripped.status(), at_once.status());
    assert_eq!(dripped.status(), Some(431));
    assert_eq!(at_once.status(), Some(431), "{:?}", String::from_utf8_lossy(at_once.bytes()));
}

fn nofile_limit() -> u64 {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) }, 0);
    r.rlim_cur
}

/// 2000 concurrent connections against KVSTORE_MAX_CONNECTIONS=500: the
/// server answers as many as it has room for, refuses the rest at once with
/// 503 + Retry-After (none hangs), and a normal client on an existing
/// connection keeps being served. Once the served flood connections have
/// idled a second, a fresh client gets in by evicting one of them;
/// afterwards new connections work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connection_flood_is_capped_and_excess_closed() {
    let limit = nofile_limit();
    let n: usize = 2000.min(limit.saturating_sub(300) as usize);
    assert!(n >= 600, "RLIMIT_NOFILE {limit} is too low for this test");
    let dir = common::tempdir();
    let s = start(
        &dir.path().join("db.sqlite3"),
        Opts::default().env("KVSTORE_MAX_CONNECTIONS", "500").env("KVSTORE_ADMIN_ADDR", "127.0.0.1:0"),
    );
    let a = addr(&s);
    // The normal client: one kept-alive connection, opened before the flood.
    let normal = Client { base: s.url.clone(), http: reqwest::Client::builder().pool_max_idle_per_host(1).build().unwrap() };
    try_set(&normal, "flood", "value").await.unwrap();
    let steady = Steady::spawn(normal.clone(), "flood");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let open_before = gauge(&s, "sidekv_connections_open").await as usize;
    let rejected_before = gauge(&s, "sidekv_connections_rejected_total").await as usize;
    assert_eq!(open_before, 1, "the normal client should hold exactly one connection");

    // Each flood connection sends a GET and, if answered, holds the connection
    // until every flood connection has an outcome.
    let release = Arc::new(tokio::sync::Notify::new());
    let done = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (release, done) = (release.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let released = release.notified();
            let outcome = async {
                let mut c = match tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(a)).await {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => return ("connect error", format!("{e}"), Duration::ZERO),
                    Err(_) => return ("connect timeout", String::new(), Duration::ZERO),
                };
                let t = Instant::now();
                if c.write_all(format!("GET /flood HTTP/1.1\r\nhost: x\r\nauthorization: {SECRET}\r\n\r\n").as_bytes()).await.is_err() {
                    return ("closed", String::new(), t.elapsed());
                }
                let mut got = Vec::new();
                let mut buf = [0u8; 1024];
                loop {
                    match tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf)).await {
                        Err(_) => return ("hung", String::from_utf8_lossy(&got).to_string(), t.elapsed()),
                        Ok(Ok(0)) | Ok(Err(_)) => {
                            let text = String::from_utf8_lossy(&got).to_string();
                            return if text.starts_with("HTTP/1.1 503") && text.contains("retry-after: 1\r\n") {
                                ("refused", String::new(), t.elapsed())
                            } else if got.is_empty() {
                                // More than MAX_PENDING_REFUSALS at once: closed without a word.
                                ("closed", String::new(), t.elapsed())
                            } else {
                                ("partial", text, t.elapsed())
                            };
                        }
                        Ok(Ok(k)) => {
                            got.extend_from_slice(&buf[..k]);
                            if got.ends_with(b"value") {
                                let text = String::from_utf8_lossy(&got).to_string();
                                let lat = t.elapsed();
                                done.fetch_add(1, Ordering::SeqCst);
                                released.await;
                                drop(c);
                                return if text.starts_with("HTTP/1.1 200") {
                                    ("served", String::new(), lat)
                                } else {
                                    ("wrong", text, lat)
                                };
                            }
                        }
                    }
                }
            };
            let r = outcome.await;
            if r.0 != "served" && r.0 != "wrong" {
                done.fetch_add(1, Ordering::SeqCst);
            }
            r
        }));
    }
    // Wait until every flood connection has its outcome (served ones hold on).
    let deadline = Instant::now() + Duration::from_secs(30);
    while done.load(Ordering::SeqCst) < n as u64 {
        assert!(Instant::now() < deadline, "only {} of {n} flood connections got an outcome in 30 s", done.load(Ordering::SeqCst));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all_outcomes = t0.elapsed();
    let open_during = gauge(&s, "sidekv_connections_open").await as usize;
    let ok_during = steady.ok();
    // Once the served flood connections have idled long enough to be
    // evicted, a fresh client gets in at the cap (never the normal client's
    // connection: it is reused every 20 ms).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let evicted_before = gauge(&s, "sidekv_connections_evicted_total").await as usize;
    let fresh = reqwest::Client::new().get(format!("{}/flood", s.url)).header("authorization", SECRET).send().await;
    let fresh_served = fresh.as_ref().is_ok_and(|r| r.status() == 200);
    let evicted = gauge(&s, "sidekv_connections_evicted_total").await as usize - evicted_before;
    release.notify_waiters();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut max_served_latency = Duration::ZERO;
    let mut max_closed_latency = Duration::ZERO;
    for t in tasks {
        let (kind, detail, lat) = t.await.unwrap();
        assert!(matches!(kind, "served" | "refused" | "closed"), "flood connection: {kind} {detail:?}");
        *counts.entry(kind).or_default() += 1;
        if kind == "served" {
            max_served_latency = max_served_latency.max(lat);
        } else {
            max_closed_latency = max_closed_latency.max(lat);
        }
    }
    let served = counts.get("served").copied().unwrap_or(0);
    let refused = counts.get("refused").copied().unwrap_or(0);
    let closed = refused + counts.get("closed").copied().unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rejected = gauge(&s, "sidekv_connections_rejected_total").await as usize - rejected_before;
    // ...and once the flood is gone, it can.
    let after = try_set(&s.client(), "after-flood", "ok").await;
    let open_after = gauge(&s, "sidekv_connections_open").await as usize;
    let report = steady.finish().await;
    eprintln!(
        "[flood] RLIMIT_NOFILE {limit}, {n} connections, cap 500 (1 held by the normal client): {served} served (max {} ms), \
         {closed} refused at once ({refused} with a 503, the rest closed; max {} ms), rejected counter +{rejected}, open during {open_during}, after {open_after}; \
         all outcomes in {} ms; fresh client at the cap served: {fresh_served} (evicted {evicted}); normal client: {} ok during, {} round trips, \
         max latency {} ms, {} errors",
        max_served_latency.as_millis(),
        max_closed_latency.as_millis(),
        all_outcomes.as_millis(),
        ok_during,
        report.round_trips,
        report.max_latency.as_millis(),
        report.errors.len()
    );
    assert_eq!(served + closed, n);
    // More than the free slots when the flood outlasted IDLE_EVICT_AFTER.
    assert!(served >= 500 - open_before, "served {served} < free slots");
    assert_eq!(open_during, 500, "open connections at the cap");
    assert_eq!(rejected, closed, "every refused connection was counted");
    assert!(fresh_served && evicted == 1, "a fresh client at the cap: {fresh:?}, evicted {evicted}");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(report.max_latency < Duration::from_secs(2), "{report:?}");
    assert!(ok_during >= 3, "normal client starved during the flood: {ok_during}");
    assert!(after.is_ok(), "after the flood: {after:?}");
    assert!(open_after <= 2, "connections left open: {open_after}");
}
