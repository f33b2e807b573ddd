//! The `Backend` contract: one suite, run in-process through `Kv` against
//! every backend — SQLite (`sqlite::…`) and PostgreSQL (`postgres::…`, a
//! private server from tests/common/pg.rs) — the way litestream runs one
//! replica-client suite against every client. A new backend passes this
//! suite before anything else (`host/src/backend/mod.rs` states the
//! contract; this is its executable form).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use sidekv::backend::{
    Change, ChangePos, Check, Condition, Kv, ListQuery, Mutation, MutationKind, StoreError, Value, Versionstamp, WriteOp, WriteResult,
};

#[derive(Clone, Copy, Debug)]
enum Which {
    Sqlite,
    Postgres,
}

/// A backend under test, and what keeps it alive.
struct Subject {
    kv: Kv,
    _dir: tempfile::TempDir,
}

/// Values over this are refused (`Kv::new`'s limit in these tests).
const MAX_VALUE: usize = 64 * 1024;

async fn open(which: Which) -> Subject {
    let dir = common::tempdir();
    let kv = match which {
        Which::Sqlite => {
            let store = sidekv::backend::sqlite::store::Store::open(
                &dir.path().join("db.sqlite3"),
                sidekv::backend::sqlite::store::StoreOptions { max_value_bytes: MAX_VALUE, ..Default::default() },
            )
            .unwrap();
            Kv::new(sidekv::backend::sqlite::SqliteBackend::local(store), MAX_VALUE)
        }
        Which::Postgres => {
            let url = tokio::task::block_in_place(common::fresh_database);
            Kv::new(sidekv::backend::postgres::PgBackend::open(&url, 4).await.unwrap(), MAX_VALUE)
        }
    };
    Subject { kv, _dir: dir }
}

fn k(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn set(key: &str, v: &str) -> WriteOp {
    WriteOp::Set { key: k(key), value: Value::bytes(k(v)), ttl_ms: None, cond: Condition::default() }
}

fn query(prefix: &str) -> ListQuery {
    ListQuery { prefix: k(prefix), limit: 1000, ..Default::default() }
}

async fn committed(kv: &Kv, op: WriteOp) -> Versionstamp {
    match kv.write(op).await.unwrap() {
        WriteResult::Committed { versionstamp, .. } => versionstamp,
        other => panic!("expected a commit, got {other:?}"),
    }
}

fn atomic(checks: Vec<Check>, mutations: Vec<(&str, MutationKind)>) -> WriteOp {
    WriteOp::Atomic { checks, mutations: mutations.into_iter().map(|(key, kind)| Mutation { key: k(key), kind, ttl_ms: None }).collect() }
}

async fn value_of(kv: &Kv, key: &str) -> Option<(Value, Versionstamp)> {
    kv.get(k(key)).await.unwrap().map(|e| (e.value, e.versionstamp))
}

// ------------------------------------------------------------ contract ----

/// Linearizable: a read that starts after a write was acknowledged sees it
/// (point read, multi-key read, list and count), under concurrent writers.
async fn reads_see_every_acknowledged_write(which: Which) {
    let s = open(which).await;
    let mut tasks = Vec::new();
    for w in 0..6 {
        let kv = s.kv.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..40 {
                let key = format!("lin/{w}");
                let vs = committed(&kv, set(&key, &format!("{i}"))).await;
                let (v, got_vs) = value_of(&kv, &key).await.expect("an acknowledged write is readable");
                assert_eq!((v.bytes, got_vs), (k(&format!("{i}")), vs), "get after the ack");
                let many = kv.get_many(vec![k(&key)]).await.unwrap();
                assert_eq!(many[0].as_ref().map(|e| e.versionstamp), Some(vs), "get_many after the ack");
                let listed = kv.list(query(&key)).await.unwrap();
                assert_eq!(listed.entries.iter().map(|e| e.versionstamp).collect::<Vec<_>>(), vec![vs], "list after the ack");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(s.kv.count(query("lin/")).await.unwrap(), 6);
}

/// Atomic batches: checks evaluated in the same transaction as the
/// mutations; all or nothing; one versionstamp for the whole batch.
async fn atomic_batches_are_all_or_nothing(which: Which) {
    let s = open(which).await;
    let kv = &s.kv;
    let va = committed(kv, set("a", "1")).await;
    let ok = atomic(
        vec![Check { key: k("a"), versionstamp: Some(va) }, Check { key: k("absent"), versionstamp: None }],
        vec![("b", MutationKind::Set(Value::bytes(k("B")))), ("c", MutationKind::Set(Value::bytes(k("C")))), ("a", MutationKind::Delete)],
    );
    let vs = committed(kv, ok).await;
    assert!(vs > va);
    assert_eq!(value_of(kv, "b").await.unwrap().1, vs);
    assert_eq!(value_of(kv, "c").await.unwrap().1, vs);
    assert_eq!(value_of(kv, "a").await, None);
    // A stale check (index 1) fails the batch: nothing written.
    let stale = atomic(
        vec![Check { key: k("b"), versionstamp: Some(vs) }, Check { key: k("c"), versionstamp: Some(va) }],
        vec![("d", MutationKind::Set(Value::bytes(k("D")))), ("b", MutationKind::Delete)],
    );
    assert_eq!(kv.write(stale).await.unwrap(), WriteResult::CheckFailed(1));
    assert_eq!(value_of(kv, "d").await, None);
    assert_eq!(value_of(kv, "b").await.unwrap().1, vs);
    // "Absent" on a present key fails; a versionstamp no store issues fails too.
    let present = atomic(vec![Check { key: k("b"), versionstamp: None }], vec![("d", MutationKind::Delete)]);
    assert_eq!(kv.write(present).await.unwrap(), WriteResult::CheckFailed(0));
    let never: Versionstamp = format!("1{}", &vs.to_string()[1..]).parse().unwrap();
    let never = atomic(vec![Check { key: k("b"), versionstamp: Some(never) }], vec![("d", MutationKind::Set(Value::bytes(k("x"))))]);
    assert_eq!(kv.write(never).await.unwrap(), WriteResult::CheckFailed(0));
    // Single-key conditions.
    let cas = |key: &str, vs| WriteOp::Set {
        key: k(key),
        value: Value::bytes(k("x")),
        ttl_ms: None,
        cond: Condition { if_match: Some(vs), ..Default::default() },
    };
    assert_eq!(kv.write(cas("b", va)).await.unwrap(), WriteResult::PreconditionFailed);
    committed(kv, cas("b", vs)).await;
    let absent_only =
        WriteOp::Set { key: k("b"), value: Value::bytes(k("y")), ttl_ms: None, cond: Condition { if_absent: true, ..Default::default() } };
    assert_eq!(kv.write(absent_only).await.unwrap(), WriteResult::PreconditionFailed);
    assert_eq!(value_of(kv, "b").await.unwrap().0.bytes, k("x"));
    assert_eq!(value_of(kv, "d").await, None);
}

/// Counters: sum (wrapping), min, max; an absent key takes the operand; a
/// counter on a value that is not one fails the whole batch.
async fn counters_follow_deno_semantics(which: Which) {
    let s = open(which).await;
    let kv = &s.kv;
    let op = |kind| atomic(vec![], vec![("n", kind)]);
    committed(kv, op(MutationKind::Sum(5))).await;
    committed(kv, op(MutationKind::Sum(u64::MAX))).await;
    assert_eq!(value_of(kv, "n").await.unwrap().0, Value::u64(4), "5 + (2^64 - 1) wraps to 4");
    committed(kv, op(MutationKind::Max(10))).await;
    committed(kv, op(MutationKind::Min(7))).await;
    assert_eq!(value_of(kv, "n").await.unwrap().0, Value::u64(7));
    committed(kv, atomic(vec![], vec![("m", MutationKind::Min(3)), ("x", MutationKind::Max(9))])).await;
    assert_eq!(value_of(kv, "m").await.unwrap().0, Value::u64(3));
    assert_eq!(value_of(kv, "x").await.unwrap().0, Value::u64(9));
    committed(kv, set("text", "not a number")).await;
    let bad = atomic(vec![], vec![("side", MutationKind::Set(Value::bytes(k("s")))), ("text", MutationKind::Sum(1))]);
    assert!(kv.write(bad).await.is_err(), "sum on a non-counter must fail");
    assert_eq!(value_of(kv, "side").await, None, "a failed batch wrote part of itself");
    assert_eq!(value_of(kv, "text").await.unwrap().0.bytes, k("not a number"));
}

/// Versionstamps strictly increase across commits and per key, and
/// `committed()` never goes back and covers every acknowledged write.
async fn versionstamps_totally_order_commits(which: Which) {
    let s = open(which).await;
    let kv = &s.kv;
    let mut commits = kv.subscribe_commits();
    let mut prev = Versionstamp::ZERO;
    for i in 0..50 {
        let vs = committed(kv, set(&format!("v/{}", i % 7), "x")).await;
        assert!(vs > prev, "{vs} after {prev}");
        assert!(kv.committed() >= vs.counter, "committed() {} is behind an acknowledged write {vs}", kv.committed());
        prev = vs;
    }
    let deleted = kv.write(WriteOp::DeletePrefix { prefix: k("v/") }).await.unwrap();
    match deleted {
        WriteResult::Committed { versionstamp, deleted } => {
            assert!(versionstamp > prev);
            assert_eq!(deleted, 7);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(kv.count(query("v/")).await.unwrap(), 0);
    tokio::time::timeout(Duration::from_secs(5), commits.changed()).await.expect("subscribers hear of commits").unwrap();
}

/// The change feed holds every mutation under a prefix, in commit order,
/// and resumes from any position without a gap or a repeat.
async fn the_change_feed_is_complete_and_resumes(which: Which) {
    let s = open(which).await;
    let kv = &s.kv;
    let start = ChangePos { vs: Versionstamp::new(kv.committed(), u16::MAX), index: None };
    let mut tasks = Vec::new();
    for w in 0..4 {
        let kv = kv.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for i in 0..10 {
                mine.push((committed(&kv, set(&format!("feed/{w}/{i}"), "v")).await, format!("feed/{w}/{i}")));
                committed(&kv, set(&format!("other/{w}/{i}"), "v")).await;
            }
            mine
        }));
    }
    let mut want: Vec<(Versionstamp, String)> = Vec::new();
    for t in tasks {
        want.extend(t.await.unwrap());
    }
    committed(kv, atomic(vec![], vec![("feed/batch/a", MutationKind::Set(Value::bytes(k("1")))), ("feed/batch/b", MutationKind::Delete)]))
        .await;
    want.sort();
    let all: Vec<Change> = kv.changes(k("feed/"), start, 1000).await.unwrap();
    let singles: Vec<(Versionstamp, String)> = all
        .iter()
        .filter(|c| !c.key.starts_with(b"feed/batch"))
        .map(|c| (c.versionstamp, String::from_utf8(c.key.clone()).unwrap()))
        .collect();
    assert_eq!(singles, want, "every single write under the prefix, in commit order");
    assert!(all.iter().all(|c| c.key.starts_with(b"feed/")), "a change outside the prefix");
    let batch: Vec<&Change> = all.iter().filter(|c| c.key.starts_with(b"feed/batch")).collect();
    assert_eq!(batch.len(), 2, "both mutations of the batch");
    assert_eq!(batch[0].versionstamp, batch[1].versionstamp);
    assert_eq!((batch[0].index, batch[1].index), (0, 1));
    assert!(batch[1].value.is_none(), "a delete is a change without a value");
    let order: Vec<(Versionstamp, u32)> = all.iter().map(|c| (c.versionstamp, c.index)).collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "changes out of order: {order:?}");
    // Resume after each position: exactly the rest.
    for cut in [0, 7, 20, all.len() - 1] {
        let pos = ChangePos { vs: all[cut].versionstamp, index: Some(all[cut].index) };
        let rest = kv.changes(k("feed/"), pos, 1000).await.unwrap();
        assert_eq!(rest, all[cut + 1..].to_vec(), "resume after change {cut}");
    }
    // After a whole write (index None): the batch's changes are skipped together.
    let after_batch = kv.changes(k("feed/"), ChangePos { vs: batch[0].versionstamp, index: None }, 1000).await.unwrap();
    assert!(after_batch.is_empty(), "{after_batch:?}");
    let limited = kv.changes(k("feed/"), start, 5).await.unwrap();
    assert_eq!(limited, all[..5].to_vec(), "a limit takes the oldest first");
}

/// An expired entry is never returned, by any read, before or after the
/// sweeper removes it.
async fn expired_entries_are_never_returned(which: Which) {
    let s = open(which).await;
    let kv = &s.kv;
    let ttl = |key: &str, ms| WriteOp::Set { key: k(key), value: Value::bytes(k("v")), ttl_ms: Some(ms), cond: Condition::default() };
    committed(kv, ttl("ttl/short", 300)).await;
    committed(kv, ttl("ttl/long", 600_000)).await;
    committed(kv, atomic(vec![], vec![("ttl/batch", MutationKind::Set(Value::bytes(k("b"))))])).await;
    let e = kv.get(k("ttl/short")).await.unwrap().expect("readable before it expires");
    assert!(e.expires_at.is_some_and(|at| at > sidekv_core::now_ms()), "{e:?}");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(kv.get(k("ttl/short")).await.unwrap(), None, "get");
    assert_eq!(
        kv.get_many(vec![k("ttl/short"), k("ttl/long")]).await.unwrap().iter().map(Option::is_some).collect::<Vec<_>>(),
        [false, true]
    );
    let listed: Vec<Vec<u8>> = kv.list(query("ttl/")).await.unwrap().entries.into_iter().map(|e| e.key).collect();
    assert_eq!(listed, vec![k("ttl/batch"), k("ttl/long")], "list");
    assert_eq!(kv.count(query("ttl/")).await.unwrap(), 2, "count");
    let snap = kv.snapshot_read(vec![query("ttl/s"), query("ttl/l")]).await.unwrap();
    assert_eq!(snap.iter().map(|p| p.entries.len()).collect::<Vec<_>>(), [0, 1], "snapshot_read");
    // An expired key counts as absent for a condition.
    let absent = atomic(vec![Check { key: k("ttl/short"), versionstamp: None }], vec![("ttl/short", MutationKind::Sum(1))]);
    committed(kv, absent).await;
    assert_eq!(value_of(kv, "ttl/short").await.unwrap().0, Value::u64(1));
}

/// Limits and errors: the same refusal, with the same kind, on every backend.
async fn limits_and_errors_are_the_same_everywhere(which: Which) {
    let s = open(which).await;
    let kv = &s.kv;
    assert!(matches!(kv.write(set("", "v")).await, Err(StoreError::InvalidKey(_))));
    let long = "k".repeat(sidekv_core::limits::MAX_KEY_BYTES + 1);
    assert!(matches!(kv.get(k(&long)).await, Err(StoreError::InvalidKey(_))));
    let big = WriteOp::Set { key: k("big"), value: Value::bytes(vec![0; MAX_VALUE + 1]), ttl_ms: None, cond: Condition::default() };
    assert!(matches!(kv.write(big).await, Err(StoreError::ValueTooLarge { .. })));
    let too_many: Vec<(String, MutationKind)> =
        (0..=sidekv_core::limits::MAX_ATOMIC_MUTATIONS).map(|i| (format!("m{i}"), MutationKind::Delete)).collect();
    let op = WriteOp::Atomic {
        checks: vec![],
        mutations: too_many.iter().map(|(key, kind)| Mutation { key: k(key), kind: kind.clone(), ttl_ms: None }).collect(),
    };
    assert!(matches!(kv.write(op).await, Err(StoreError::InvalidArgument(_))));
    assert!(matches!(kv.list(ListQuery { limit: 0, ..query("") }).await, Err(StoreError::InvalidArgument(_))));
    assert!(matches!(kv.write(WriteOp::DeletePrefix { prefix: vec![] }).await, Err(StoreError::InvalidArgument(_))));
    // Nothing of the refused writes exists.
    assert_eq!(kv.count(query("")).await.unwrap(), 0);
    // Values keep their encoding.
    let typed: BTreeMap<&str, Value> = [
        ("t/bytes", Value::bytes(vec![0, 255])),
        ("t/u64", Value::u64(42)),
        ("t/v8", Value { bytes: vec![0xff, 0x0f, 0x22, 0x01, 0x61], encoding: sidekv_core::Encoding::V8 }),
    ]
    .into();
    for (key, v) in &typed {
        committed(kv, WriteOp::Set { key: k(key), value: v.clone(), ttl_ms: None, cond: Condition::default() }).await;
    }
    for (key, v) in &typed {
        assert_eq!(&value_of(kv, key).await.unwrap().0, v, "{key}");
    }
}

macro_rules! contract_suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Which::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Which::Postgres).await
                }
            )*
        }
    };
}

contract_suite!(
    reads_see_every_acknowledged_write,
    atomic_batches_are_all_or_nothing,
    counters_follow_deno_semantics,
    versionstamps_totally_order_commits,
    the_change_feed_is_complete_and_resumes,
    expired_entries_are_never_returned,
    limits_and_errors_are_the_same_everywhere,
);
