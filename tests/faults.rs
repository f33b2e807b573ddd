//! Storage faults (see docs/robustness.md): S3 faults injected by a proxy
//! between sidekv and moto while writers keep writing, and a full (and
//! read-only) disk on a small tmpfs. Every test starts its own server(s)
//! and, for S3, its own moto. HTTP abuse is tests/hostile.rs.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{
    Client, Fault, Opts, Proxy, S3, SECRET, Server, gauge, metric, metrics, readyz, tail, terminate, try_delete, try_incr, try_set,
    wait_caught_up, wipe,
};

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
        // Generous: a snapshot that failed under the fault retries after a
        // backoff (5 s, then 10 s), and a busy machine slows the copy.
        assert!(t.elapsed() < Duration::from_secs(30), "[{name}] no snapshot was taken:\n{}", tail(&s.log(), 30));
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
