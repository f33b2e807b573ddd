//! The backup's promises, checked on a directory object store (and fault
//! wrappers around it), without an S3 server. Process-level versions of the
//! same scenarios against moto are in tests/replication.rs.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;

use futures::future::BoxFuture;

use super::objects::DirStore;
use super::*;
use crate::backend::sqlite::store::{Condition, Encoding, ListQuery, Mutation, MutationKind, StoreOptions, Value, WriteOp, WriteResult};

/// The options a test replica runs with (its object store is passed separately).
fn config(durability: &str, sync_ms: u64) -> ReplicaOptions {
    ReplicaOptions {
        url: "file:///unused".into(),
        durability: if durability == "s3" { Durability::S3 } else { Durability::Local },
        sync_interval: Duration::from_millis(sync_ms),
        snapshot_bytes: limits::SNAPSHOT_AFTER_BYTES,
        retention: limits::DEFAULT_SNAPSHOT_RETENTION,
        part_bytes: limits::DEFAULT_S3_PART_BYTES,
    }
}

fn dir_store(d: &Path) -> Box<dyn ObjectStore> {
    Box::new(DirStore::new(d.join("backup")).unwrap())
}

fn open(path: &Path, replicated: bool) -> Store {
    Store::open(path, StoreOptions { replicated, ..Default::default() }).unwrap()
}

/// What `run` does at launch: prepare the local file, open the store, attach.
async fn launch(objects: Box<dyn ObjectStore>, db: &Path, durability: &str, sync_ms: u64) -> (Replica, Store) {
    let r = Replica::with_objects(objects, &config(durability, sync_ms));
    r.prepare_local(db).await.unwrap();
    let store = open(db, true);
    r.attach(&store).await.unwrap();
    (r, store)
}

async fn set(s: &Store, k: &str, v: &str) -> Versionstamp {
    let op = WriteOp::Set { key: k.into(), value: Value::bytes(v.as_bytes().to_vec()), ttl_ms: None, cond: Condition::default() };
    match s.write(op).await.unwrap() {
        WriteResult::Committed { versionstamp, .. } => versionstamp,
        other => panic!("{other:?}"),
    }
}

/// Every key of a database file: key → (value, versionstamp).
async fn contents(path: &Path) -> BTreeMap<String, (String, Versionstamp)> {
    let s = open(path, false);
    let page = s.list(crate::backend::sqlite::store::ListQuery { limit: 1000, ..Default::default() }).await.unwrap();
    s.close();
    page.entries
        .into_iter()
        .map(|e| (String::from_utf8(e.key).unwrap(), (String::from_utf8(e.value.bytes).unwrap(), e.versionstamp)))
        .collect()
}

async fn live(s: &Store) -> BTreeMap<String, (String, Versionstamp)> {
    let page = s.list(crate::backend::sqlite::store::ListQuery { limit: 1000, ..Default::default() }).await.unwrap();
    page.entries
        .into_iter()
        .map(|e| (String::from_utf8(e.key).unwrap(), (String::from_utf8(e.value.bytes).unwrap(), e.versionstamp)))
        .collect()
}

/// A store whose creates fail where `fail(key)` says so (S3 refusing them);
/// everything else passes through.
struct FailPuts {
    inner: Box<dyn ObjectStore>,
    fail: Box<dyn Fn(&str) -> bool + Send + Sync>,
}

impl FailPuts {
    /// A bucket policy allowing List but not Put (epoch reservations pass,
    /// so a test reaches the backup itself).
    fn deny(inner: Box<dyn ObjectStore>) -> Box<FailPuts> {
        Box::new(FailPuts { inner, fail: Box::new(|k| !k.starts_with("epochs/")) })
    }

    /// The first snapshot upload fails, nothing else.
    fn first_snapshot(inner: Box<dyn ObjectStore>) -> Box<FailPuts> {
        let failed = AtomicBool::new(false);
        Box::new(FailPuts { inner, fail: Box::new(move |k| k.starts_with("snapshots/") && !failed.swap(true, Relaxed)) })
    }

    fn refused<'a, T: Send + 'a>(key: &'a str) -> BoxFuture<'a, Result<T, ReplicaError>> {
        Box::pin(async move { Err(ReplicaError::S3 { op: "PUT", key: key.into(), msg: "AccessDenied".into() }) })
    }
}

impl ObjectStore for FailPuts {
    fn list<'a>(&'a self, dir: &'a str) -> BoxFuture<'a, Result<Vec<String>, ReplicaError>> {
        self.inner.list(dir)
    }
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Vec<u8>, ReplicaError>> {
        self.inner.get(key)
    }
    fn put_new<'a>(&'a self, key: &'a str, body: Vec<u8>) -> BoxFuture<'a, Result<bool, ReplicaError>> {
        if (self.fail)(key) { Self::refused(key) } else { self.inner.put_new(key, body) }
    }
    fn put_new_file<'a>(&'a self, key: &'a str, path: &'a Path) -> BoxFuture<'a, Result<bool, ReplicaError>> {
        if (self.fail)(key) { Self::refused(key) } else { self.inner.put_new_file(key, path) }
    }
    fn get_to_file<'a>(&'a self, key: &'a str, path: &'a Path) -> BoxFuture<'a, Result<u64, ReplicaError>> {
        self.inner.get_to_file(key, path)
    }
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), ReplicaError>> {
        self.inner.delete(key)
    }
    fn describe(&self) -> String {
        "fail-puts".into()
    }
}

/// A store that ignores `If-None-Match` (replaces existing objects).
struct Overwrites(std::sync::Mutex<BTreeMap<String, Vec<u8>>>, AtomicBool);

impl ObjectStore for Overwrites {
    fn list<'a>(&'a self, dir: &'a str) -> BoxFuture<'a, Result<Vec<String>, ReplicaError>> {
        let keys = self.0.lock().unwrap().keys().filter(|k| k.starts_with(&format!("{dir}/"))).cloned().collect();
        Box::pin(async move { Ok(keys) })
    }
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Vec<u8>, ReplicaError>> {
        let v = self.0.lock().unwrap().get(key).cloned();
        Box::pin(async move { v.ok_or_else(|| ReplicaError::S3 { op: "GET", key: key.into(), msg: "NoSuchKey".into() }) })
    }
    fn put_new<'a>(&'a self, key: &'a str, body: Vec<u8>) -> BoxFuture<'a, Result<bool, ReplicaError>> {
        self.0.lock().unwrap().insert(key.into(), body);
        Box::pin(async move { Ok(true) })
    }
    fn put_new_file<'a>(&'a self, key: &'a str, path: &'a Path) -> BoxFuture<'a, Result<bool, ReplicaError>> {
        let body = std::fs::read(path).unwrap();
        self.put_new(key, body)
    }
    fn get_to_file<'a>(&'a self, key: &'a str, path: &'a Path) -> BoxFuture<'a, Result<u64, ReplicaError>> {
        let v = self.0.lock().unwrap().get(key).cloned().unwrap_or_default();
        std::fs::write(path, &v).unwrap();
        Box::pin(async move { Ok(v.len() as u64) })
    }
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), ReplicaError>> {
        self.1.store(true, Relaxed);
        self.0.lock().unwrap().remove(key);
        Box::pin(async move { Ok(()) })
    }
    fn describe(&self) -> String {
        "overwrites".into()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_on_a_directory_is_exact() {
    let d = tempfile::tempdir().unwrap();
    let (r, store) = launch(dir_store(d.path()), &d.path().join("db"), "local", 1000).await;
    for i in 0..20 {
        set(&store, &format!("k{}", i % 7), &format!("v{i}")).await;
    }
    r.ship_pending(&store, false).await.unwrap();
    r.snapshot_now(&store).await.unwrap();
    set(&store, "after", "snapshot").await;
    r.ship_pending(&store, false).await.unwrap();
    let want = live(&store).await;
    let commit = r.restore_to(&d.path().join("restored"), None).await.unwrap();
    assert_eq!(commit, store.committed());
    assert_eq!(contents(&d.path().join("restored")).await, want);
    store.close();
}

/// Typed values (a u64 counter, a V8 value) keep their encoding through
/// segments, snapshots and a restore: both on either side of a snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_values_survive_backup_and_restore() {
    let d = tempfile::tempdir().unwrap();
    let (r, store) = launch(dir_store(d.path()), &d.path().join("db"), "local", 1000).await;
    let typed = |k: &str, kind: MutationKind| WriteOp::Atomic {
        checks: vec![],
        mutations: vec![Mutation { key: k.as_bytes().to_vec(), kind, ttl_ms: None }],
    };
    let v8 = Value { bytes: vec![0xff, 0x0f, 0x49, 0x54], encoding: Encoding::V8 };
    store.write(typed("c1", MutationKind::Sum(41))).await.unwrap();
    store.write(typed("v1", MutationKind::Set(v8.clone()))).await.unwrap();
    r.ship_pending(&store, false).await.unwrap();
    r.snapshot_now(&store).await.unwrap();
    store.write(typed("c2", MutationKind::Max(7))).await.unwrap();
    store.write(typed("v2", MutationKind::Set(v8.clone()))).await.unwrap();
    r.ship_pending(&store, false).await.unwrap();
    r.restore_to(&d.path().join("restored"), None).await.unwrap();
    let restored = open(&d.path().join("restored"), false);
    let page = restored.list(ListQuery { limit: 100, ..Default::default() }).await.unwrap();
    let got: Vec<(Vec<u8>, Value)> = page.entries.into_iter().map(|e| (e.key, e.value)).collect();
    let want = vec![(b"c1".to_vec(), Value::u64(41)), (b"c2".to_vec(), Value::u64(7)), (b"v1".to_vec(), v8.clone()), (b"v2".to_vec(), v8)];
    assert_eq!(got, want);
    restored.close();
    store.close();
}

/// Defect 1: a base snapshot counted every commit as shipped before the
/// snapshot was in S3, so `s3`-mode writes were acknowledged with S3 empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_snapshot_ships_nothing_before_it_is_stored() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("db");
    {
        let s = open(&db, false);
        set(&s, "old", "history").await;
        s.close();
    }
    let (r, store) = launch(FailPuts::deny(dir_store(d.path())), &db, "s3", 1000).await;
    assert_eq!(*r.needs_base.lock().unwrap(), Some(0), "an empty S3 path needs a base snapshot");
    let err = r.upload_step(&store, false).await.unwrap_err();
    assert!(matches!(err, ReplicaError::S3 { .. }), "{err}");
    assert_eq!(store.shipped(), 0, "nothing may count as shipped while S3 refuses every PUT");
    store.close();
}

/// Defect 4: restore spliced overlapping histories; it must fail, naming both objects.
#[tokio::test]
async fn restore_refuses_overlapping_segments() {
    let d = tempfile::tempdir().unwrap();
    let r = Replica::with_objects(dir_store(d.path()), &config("local", 1000));
    let rec = |c: u64, v: &str| crate::backend::sqlite::store::Record {
        version: (c << 16) as i64,
        index: 0,
        key: b"k".to_vec(),
        value: Some(v.as_bytes().to_vec()),
        expires_at: None,
        encoding: Encoding::Bytes,
    };
    let a = Segment { first: 1, last: 4, records: (1..=4).map(|c| rec(c, "a")).collect(), flags: 0, writer: 1 };
    let b = Segment { first: 3, last: 5, records: (3..=5).map(|c| rec(c, "b")).collect(), flags: 0, writer: 2 };
    r.remote.put_new(&r.remote.segment_key(1), a.encode().unwrap()).await.unwrap();
    r.remote.put_new(&r.remote.segment_key(3), b.encode().unwrap()).await.unwrap();
    let err = r.restore_to(&d.path().join("restored"), None).await.unwrap_err().to_string();
    assert!(
        err.contains("overlap") && err.contains("segments/00000000000000000001") && err.contains("segments/00000000000000000003"),
        "{err}"
    );
    assert!(!d.path().join("restored").exists());
}

/// Defect 4: the launch check compared the local commit with the newest
/// segment's *first* commit, so a database inside that segment passed.
#[tokio::test]
async fn a_database_inside_the_newest_segment_is_stale() {
    let d = tempfile::tempdir().unwrap();
    let r = Replica::with_objects(dir_store(d.path()), &config("local", 1000));
    let seg = Segment { first: 1, last: 60, records: vec![], flags: 0, writer: 1 };
    r.remote.put_new(&r.remote.segment_key(1), seg.encode().unwrap()).await.unwrap();
    assert_eq!(r.assess(50, 50).await.unwrap(), Assessment::Stale { remote_end: 60 });
    assert_eq!(r.assess(60, 60).await.unwrap(), Assessment::Continue);
}

/// Defect 5: with the log pruned (backup off for a while), a segment was
/// shipped that silently lacked commits. Now the backup restarts from a
/// snapshot, and a restore is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruned_history_restarts_from_a_snapshot() {
    let d = tempfile::tempdir().unwrap();
    let (r, store) = launch(dir_store(d.path()), &d.path().join("db"), "local", 1000).await;
    set(&store, "a", "1").await;
    r.ship_pending(&store, false).await.unwrap();
    let shipped = store.shipped();
    set(&store, "b", "2").await;
    set(&store, "c", "3").await;
    prune_log(&store).await;
    let err = r.ship_pending(&store, false).await.unwrap_err();
    assert!(matches!(err, ReplicaError::HistoryPruned(s) if s == shipped), "{err}");
    assert_eq!(store.shipped(), shipped, "no partial segment was shipped");
    *r.needs_base.lock().unwrap() = Some(shipped);
    r.upload_step(&store, false).await.unwrap();
    assert_eq!(store.shipped(), store.committed());
    r.restore_to(&d.path().join("restored"), None).await.unwrap();
    assert_eq!(contents(&d.path().join("restored")).await, live(&store).await);
    store.close();
}

/// Two databases with different histories both starting a backup on one
/// empty path: the second is fenced at its base claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_base_snapshots_on_one_path_fence_the_second() {
    let d = tempfile::tempdir().unwrap();
    for (name, n) in [("a", 1), ("b", 3)] {
        let s = open(&d.path().join(name), false);
        for i in 0..n {
            set(&s, "who", &format!("{name}{i}")).await;
        }
        s.close();
    }
    let (ra, a) = launch(dir_store(d.path()), &d.path().join("a"), "local", 1000).await;
    let (rb, b) = launch(dir_store(d.path()), &d.path().join("b"), "local", 1000).await;
    *ra.needs_base.lock().unwrap() = Some(0);
    *rb.needs_base.lock().unwrap() = Some(0);
    ra.upload_step(&a, false).await.unwrap();
    let err = rb.upload_step(&b, false).await.unwrap_err();
    assert!(matches!(err, ReplicaError::Fenced(_)), "{err}");
    r_restore_matches(&ra, d.path(), &a).await;
    a.close();
    b.close();
}

fn deadline(secs: u64) -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(secs)
}

/// Prune the change log below the newest commit, as the writer does while no replica ships.
async fn prune_log(store: &Store) {
    let below = store.committed();
    store.prune_log_below(below).await.unwrap();
}

/// Issue 22: a stop right after a launch whose log was pruned while the
/// backup was off exited 0 with the commits only on the local disk ("the
/// change log no longer holds commit …"). The stop now takes the base
/// snapshot, and a restore has every commit; the launch already says "not
/// backed up" until then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_right_after_launch_takes_the_pending_base_snapshot() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("db");
    let (r, store) = launch(dir_store(d.path()), &db, "local", 60_000).await;
    set(&store, "a", "1").await;
    r.ship_pending(&store, false).await.unwrap();
    for i in 0..5 {
        set(&store, &format!("k{i}"), "v").await;
    }
    prune_log(&store).await;
    store.close();
    drop(r);
    // Relaunch with the backup on; stop before the uploader's first interval.
    let (r, store) = launch(dir_store(d.path()), &db, "local", 60_000).await;
    let why = r.not_backed_up_reason().expect("a launch with a pruned log is not backed up");
    assert!(why.contains("pruned"), "{why}");
    let after = set(&store, "after-relaunch", "v").await;
    let r = Arc::new(r);
    let task = r.clone().start(store.clone());
    r.shutdown(&store, task, deadline(20)).await.unwrap();
    assert_eq!(store.shipped(), store.committed());
    assert_eq!(r.not_backed_up_reason(), None);
    let to = d.path().join("restored");
    r.restore_to(&to, None).await.unwrap();
    let restored = contents(&to).await;
    assert_eq!(restored, live(&store).await);
    assert_eq!(restored["after-relaunch"].1, after);
    store.close();
}

/// Issue 22: a stop that cannot reach S3 ends at its deadline with an error
/// naming the commits only on this disk (it used to log and exit 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_that_cannot_ship_says_how_many_commits_are_not_backed_up() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("db");
    let objects = FailPuts::deny(dir_store(d.path()));
    let (r, store) = launch(objects, &db, "local", 60_000).await;
    for i in 0..3 {
        set(&store, &format!("k{i}"), "v").await;
    }
    let r = Arc::new(r);
    let task = r.clone().start(store.clone());
    let t0 = Instant::now();
    let err = r.shutdown(&store, task, deadline(2)).await.unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(5), "the stop overran its deadline: {:?}", t0.elapsed());
    assert_eq!(err.commits, 3, "{err}");
    assert!(err.acknowledged);
    assert!(err.to_string().contains("3 acknowledged commits"), "{err}");
    assert!(r.not_backed_up_reason().is_some());
    store.close();
}

async fn r_restore_matches(r: &Replica, d: &Path, s: &Store) {
    let to = d.join(format!("restored-{}", rand::random::<u32>()));
    r.restore_to(&to, None).await.unwrap();
    assert_eq!(contents(&to).await, live(s).await);
}

/// Defect 8: check-config must notice a store that ignores `If-None-Match: *`.
#[tokio::test]
async fn the_probe_detects_a_store_without_conditional_writes() {
    let remote = Remote::new(Box::new(Overwrites(Default::default(), AtomicBool::new(false))));
    let err = remote.probe().await.unwrap_err().to_string();
    assert!(err.contains("If-None-Match"), "{err}");
    let d = tempfile::tempdir().unwrap();
    Remote::new(dir_store(d.path())).probe().await.unwrap();
}

/// Defect 7: in local mode the uploader shipped back to back under load.
/// At most one segment per sync interval now, however fast commits come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_mode_ships_at_most_one_segment_per_interval() {
    let d = tempfile::tempdir().unwrap();
    let (r, store) = launch(dir_store(d.path()), &d.path().join("db"), "local", 400).await;
    let r = Arc::new(r);
    let task = r.clone().start(store.clone());
    let t0 = Instant::now();
    let mut i = 0;
    while t0.elapsed() < Duration::from_millis(2000) {
        set(&store, &format!("k{}", i % 50), "v").await;
        i += 1;
    }
    let elapsed = t0.elapsed();
    r.shutdown(&store, task, deadline(10)).await.unwrap();
    let segments = r.remote.list_counters("segments").await.unwrap().len();
    // One per interval, plus the first (immediate) one and the drain at shutdown.
    let bound = (elapsed.as_millis() / 400) as usize + 2;
    assert!(i > 50, "the load did not get going ({i} writes)");
    assert!(segments <= bound, "{segments} segments for {i} commits in {elapsed:?} (at most {bound})");
    assert_eq!(store.shipped(), store.committed());
    store.close();
}

/// Defect 3: a WAL left at the target path (the dead process's unshipped
/// writes) was replayed into the restored database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leftover_wal_is_never_replayed_into_a_restore() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("db");
    let (r, store) = launch(dir_store(d.path()), &db, "local", 1000).await;
    set(&store, "k", "shipped").await;
    r.ship_pending(&store, false).await.unwrap();
    set(&store, "k", "unshipped").await;
    // kill -9 now: the unshipped write lives only in db-wal. The disk loses db.
    let target = d.path().join("again");
    std::fs::copy(format!("{}-wal", db.display()), format!("{}-wal", target.display())).unwrap();
    std::fs::copy(format!("{}-shm", db.display()), format!("{}-shm", target.display())).unwrap();
    store.close();
    r.restore_to(&target, None).await.unwrap();
    assert_eq!(contents(&target).await["k"].0, "shipped");
}

/// Defect 2: after a restore the counter continued from S3's last commit,
/// so a versionstamp already handed out (a local-mode write lost with the
/// disk) was handed out again, for different data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versionstamps_are_never_reissued_after_a_restore() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("db");
    let launch = || async {
        let r = Replica::with_objects(dir_store(d.path()), &config("local", 1000));
        r.prepare_local(&db).await.unwrap();
        let store = open(&db, true);
        r.attach(&store).await.unwrap();
        (r, store)
    };
    let (r, store) = launch().await;
    set(&store, "a", "1").await;
    r.ship_pending(&store, false).await.unwrap();
    let lost = set(&store, "a", "2, never shipped").await;
    store.close();
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", db.display()));
    }
    // Relaunch on an empty disk: restore, then new writes.
    let (r, store) = launch().await;
    assert_eq!(live(&store).await["a"].0, "1");
    let next = set(&store, "a", "3").await;
    assert!(next > lost, "{next} was issued after {lost} had been handed out");
    // The jump is part of the backed-up history: a restore is still exact.
    r.ship_pending(&store, false).await.unwrap();
    r_restore_matches(&r, d.path(), &store).await;
    // A restored file used as a live database reserves an epoch of its own.
    let copy = d.path().join("copy");
    r.restore_to(&copy, None).await.unwrap();
    let r2 = Replica::with_objects(dir_store(d.path()), &config("local", 1000));
    r2.prepare_local(&copy).await.unwrap();
    let s2 = open(&copy, true);
    r2.attach(&s2).await.unwrap();
    assert!(set(&s2, "b", "x").await.counter > next.counter + (1 << 31));
    s2.close();
    store.close();
}

/// Until the replica has reserved an epoch, a backed-up store issues nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backed_up_store_without_an_epoch_refuses_writes() {
    let d = tempfile::tempdir().unwrap();
    let store = open(&d.path().join("db"), true);
    let op = WriteOp::Set { key: "k".into(), value: Value::bytes(b"v".to_vec()), ttl_ms: None, cond: Condition::default() };
    assert!(matches!(store.write(op).await, Err(StoreError::Unavailable(_))));
    store.adopt_epoch(0).await.unwrap();
    set(&store, "k", "v").await;
    store.close();
}

/// Defect 9: an aborted snapshot or restore left its files beside the database.
#[test]
fn leftovers_of_interrupted_snapshots_and_restores_are_removed() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("db.sqlite3");
    for f in [
        ".sidekv-snapshot-12-0a0b0c0d.sqlite3",
        ".sidekv-snapshot-12-0a0b0c0d.sqlite3.zst",
        "db.sqlite3.restoring",
        "db.sqlite3.restoring-wal",
    ] {
        std::fs::write(d.path().join(f), b"x").unwrap();
    }
    std::fs::write(&db, b"keep").unwrap();
    std::fs::write(d.path().join("other.sqlite3"), b"keep").unwrap();
    remove_leftovers(&db);
    let mut left: Vec<String> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    left.sort();
    assert_eq!(left, ["db.sqlite3", "other.sqlite3"]);
}

/// A snapshot that failed is retried after its backoff even when no write
/// comes after it (before, the uploader only looked at snapshots after
/// shipping a segment: the retry waited for the next write, up to an hour).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_snapshot_is_retried_while_writes_pause() {
    let d = tempfile::tempdir().unwrap();
    let objects = FailPuts::first_snapshot(dir_store(d.path()));
    let r = Replica::with_objects(objects, &ReplicaOptions { snapshot_bytes: 1, ..config("local", 50) });
    let db = d.path().join("db");
    r.prepare_local(&db).await.unwrap();
    let store = open(&db, true);
    r.attach(&store).await.unwrap();
    let r = Arc::new(r);
    let task = r.clone().start(store.clone());
    for i in 0..5 {
        set(&store, &format!("k{i}"), "v").await;
    }
    let t0 = Instant::now();
    while r.remote.list_counters("snapshots").await.unwrap().is_empty() {
        assert!(t0.elapsed() < limits::SNAPSHOT_RETRY_MIN * 4, "no snapshot {:?} after the writes stopped", t0.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(t0.elapsed() >= limits::SNAPSHOT_RETRY_MIN / 2, "the first snapshot should have failed");
    r.shutdown(&store, task, deadline(10)).await.unwrap();
    store.close();
}
