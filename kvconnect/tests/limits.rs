//! Limits and request validation: every limit at its boundary, every
//! structural rule, and the messages.

use sidekv_kvconnect::datapath::*;
use sidekv_kvconnect::limits::*;

const L: Limits = Limits::DENO;

fn range(start: usize, end: usize, limit: i32) -> ReadRange {
    ReadRange { start: vec![1; start], end: vec![2; end], limit, reverse: false }
}

fn set(key_len: usize, value_len: usize) -> Mutation {
    Mutation {
        key: vec![2; key_len],
        value: Some(KvValue { data: vec![0; value_len], encoding: ValueEncoding::VeV8 as i32 }),
        mutation_type: MutationType::MSet as i32,
        ..Default::default()
    }
}

fn u64_op(kind: MutationType) -> Mutation {
    Mutation { key: vec![2], value: Some(Value::U64(1).into()), mutation_type: kind as i32, ..Default::default() }
}

fn write(checks: Vec<Check>, mutations: Vec<Mutation>) -> AtomicWrite {
    AtomicWrite { checks, mutations, enqueues: vec![] }
}

fn check(key_len: usize, vs_len: usize) -> Check {
    Check { key: vec![2; key_len], versionstamp: vec![0; vs_len] }
}

#[track_caller]
fn assert_limit(r: Result<(), ValidationError>, limit: &str, field: &str, msg: &str) {
    let e = r.unwrap_err();
    assert_eq!(e.limit(), Some(limit), "{e}");
    assert_eq!(e.field(), field, "{e}");
    assert_eq!(e.to_string(), msg);
}

#[track_caller]
fn assert_invalid(r: Result<(), ValidationError>, field: &str, reason_part: &str) {
    let e = r.unwrap_err();
    assert_eq!(e.limit(), None, "{e}");
    assert_eq!(e.field(), field, "{e}");
    assert!(e.to_string().contains(reason_part), "{e} should contain {reason_part}");
}

#[test]
fn constants_are_denos() {
    assert_eq!(MAX_WRITE_KEY_SIZE_BYTES, 2048);
    assert_eq!(MAX_READ_KEY_SIZE_BYTES, 2049);
    assert_eq!(MAX_VALUE_SIZE_BYTES, 64 * 1024);
    assert_eq!(MAX_READ_RANGES, 10);
    assert_eq!(MAX_READ_ENTRIES, 1000);
    assert_eq!(MAX_CHECKS, 100);
    assert_eq!(MAX_MUTATIONS, 1000);
    assert_eq!(MAX_TOTAL_MUTATION_SIZE_BYTES, 819_200);
    assert_eq!(MAX_TOTAL_KEY_SIZE_BYTES, 81_920);
    assert_eq!(MAX_WATCHED_KEYS, 10);
    assert_eq!(Limits::default(), Limits::DENO);
}

#[test]
fn snapshot_read_limits() {
    let ok = SnapshotRead { ranges: vec![range(2049, 2049, 100); 10] };
    validate_snapshot_read(&ok, &L).unwrap();
    validate_snapshot_read(&SnapshotRead::default(), &L).unwrap();

    let r = SnapshotRead { ranges: vec![range(1, 1, 1); 11] };
    assert_limit(validate_snapshot_read(&r, &L), "MAX_READ_RANGES", "ranges", "ranges: 11 ranges exceeds MAX_READ_RANGES (10)");
    let r = SnapshotRead { ranges: vec![range(1, 1, 1), range(2050, 1, 1)] };
    assert_limit(
        validate_snapshot_read(&r, &L),
        "MAX_READ_KEY_SIZE_BYTES",
        "ranges[1].start",
        "ranges[1].start: 2050 bytes exceeds MAX_READ_KEY_SIZE_BYTES (2049)",
    );
    let r = SnapshotRead { ranges: vec![range(1, 2050, 1)] };
    assert_limit(
        validate_snapshot_read(&r, &L),
        "MAX_READ_KEY_SIZE_BYTES",
        "ranges[0].end",
        "ranges[0].end: 2050 bytes exceeds MAX_READ_KEY_SIZE_BYTES (2049)",
    );
    let r = SnapshotRead { ranges: vec![range(1, 1, 1000), range(1, 1, 1)] };
    assert_limit(
        validate_snapshot_read(&r, &L),
        "MAX_READ_ENTRIES",
        "ranges[*].limit (sum)",
        "ranges[*].limit (sum): 1001 entries exceeds MAX_READ_ENTRIES (1000)",
    );
    for bad in [0, -1, i32::MIN] {
        let r = SnapshotRead { ranges: vec![range(1, 1, 5), range(1, 1, bad)] };
        assert_invalid(validate_snapshot_read(&r, &L), "ranges[1].limit", "is not at least 1");
    }
    // start > end is an empty range, not an error.
    let r = SnapshotRead { ranges: vec![ReadRange { start: vec![9], end: vec![1], limit: 1, reverse: false }] };
    validate_snapshot_read(&r, &L).unwrap();
}

#[test]
fn atomic_write_counts_and_sizes() {
    validate_atomic_write(&AtomicWrite::default(), &L).unwrap();
    validate_atomic_write(&write(vec![check(2049, 10); 100], vec![set(2048, 65_536)]), &L).unwrap();

    assert_limit(
        validate_atomic_write(&write(vec![check(1, 0); 101], vec![]), &L),
        "MAX_CHECKS",
        "checks",
        "checks: 101 checks exceeds MAX_CHECKS (100)",
    );
    assert_limit(
        validate_atomic_write(&write(vec![], vec![set(1, 0); 1001]), &L),
        "MAX_MUTATIONS",
        "mutations",
        "mutations: 1001 mutations and enqueues exceeds MAX_MUTATIONS (1000)",
    );
    assert_limit(
        validate_atomic_write(&write(vec![check(1, 0), check(2050, 0)], vec![]), &L),
        "MAX_READ_KEY_SIZE_BYTES",
        "checks[1].key",
        "checks[1].key: 2050 bytes exceeds MAX_READ_KEY_SIZE_BYTES (2049)",
    );
    assert_limit(
        validate_atomic_write(&write(vec![], vec![set(1, 1), set(1, 1), set(2049, 1)]), &L),
        "MAX_WRITE_KEY_SIZE_BYTES",
        "mutations[2].key",
        "mutations[2].key: 2049 bytes exceeds MAX_WRITE_KEY_SIZE_BYTES (2048)",
    );
    assert_limit(
        validate_atomic_write(&write(vec![], vec![set(1, 65_537)]), &L),
        "MAX_VALUE_SIZE_BYTES",
        "mutations[0].value",
        "mutations[0].value: 65537 bytes exceeds MAX_VALUE_SIZE_BYTES (65536)",
    );
    // 12 sets of 2 KiB keys and 64 KiB values: 12 * 67584 = 811008 bytes, under 800 KiB;
    // one more check key of 8193 bytes' worth pushes it over.
    let m = vec![set(2048, 65_536); 12];
    validate_atomic_write(&write(vec![], m.clone()), &L).unwrap();
    let over = write(vec![check(2049, 0); 5], m);
    assert_limit(
        validate_atomic_write(&over, &L),
        "MAX_TOTAL_MUTATION_SIZE_BYTES",
        "checks and mutations (total size)",
        "checks and mutations (total size): 821253 bytes exceeds MAX_TOTAL_MUTATION_SIZE_BYTES (819200)",
    );
    // 41 value-carrying mutations with 2 KiB keys: 83968 > 81920 key bytes.
    assert_limit(
        validate_atomic_write(&write(vec![], vec![set(2048, 0); 41]), &L),
        "MAX_TOTAL_KEY_SIZE_BYTES",
        "mutations[*].key (total size)",
        "mutations[*].key (total size): 83968 bytes exceeds MAX_TOTAL_KEY_SIZE_BYTES (81920)",
    );
    // Deletes carry no value: their keys don't count towards the key total.
    let deletes = vec![Mutation { key: vec![2; 2048], mutation_type: MutationType::MDelete as i32, ..Default::default() }; 41];
    validate_atomic_write(&write(vec![], deletes), &L).unwrap();
    // A server may tighten a limit.
    let tight = Limits { max_checks: 10, ..Limits::DENO };
    assert_limit(
        validate_atomic_write(&write(vec![check(1, 0); 11], vec![]), &tight),
        "MAX_CHECKS",
        "checks",
        "checks: 11 checks exceeds MAX_CHECKS (10)",
    );
}

#[test]
fn atomic_write_structure() {
    assert_invalid(validate_atomic_write(&write(vec![check(0, 0)], vec![]), &L), "checks[0].key", "is empty");
    assert_invalid(
        validate_atomic_write(&write(vec![check(1, 0), check(1, 9)], vec![]), &L),
        "checks[1].versionstamp",
        "is 9 bytes; expected 10",
    );
    assert_invalid(validate_atomic_write(&write(vec![], vec![set(0, 1)]), &L), "mutations[0].key", "is empty");

    let mut m = set(1, 1);
    m.mutation_type = 0;
    assert_invalid(validate_atomic_write(&write(vec![], vec![m.clone()]), &L), "mutations[0].mutation_type", "unknown mutation type 0");
    m.mutation_type = 6;
    assert_invalid(validate_atomic_write(&write(vec![], vec![m]), &L), "mutations[0].mutation_type", "unknown mutation type 6");

    let mut m = set(1, 1);
    m.value = None;
    assert_invalid(validate_atomic_write(&write(vec![], vec![m]), &L), "mutations[0].value", "set needs a value");
    let mut m = set(1, 1);
    m.value.as_mut().unwrap().encoding = 0;
    assert_invalid(validate_atomic_write(&write(vec![], vec![m]), &L), "mutations[0].value.encoding", "unknown value encoding 0");
    let mut m = set(1, 7);
    m.value.as_mut().unwrap().encoding = ValueEncoding::VeLe64 as i32;
    assert_invalid(validate_atomic_write(&write(vec![], vec![m]), &L), "mutations[0].value", "VE_LE64 value must be 8 bytes, not 7");

    for kind in [MutationType::MSum, MutationType::MMin, MutationType::MMax] {
        validate_atomic_write(&write(vec![], vec![u64_op(kind)]), &L).unwrap();
        let mut m = u64_op(kind);
        m.value = Some(KvValue { data: vec![1], encoding: ValueEncoding::VeV8 as i32 });
        assert_invalid(validate_atomic_write(&write(vec![], vec![m]), &L), "mutations[0].value", "needs a Deno.KvU64 (VE_LE64) operand");
    }
    let mut ssvk = set(3, 3);
    ssvk.mutation_type = MutationType::MSetSuffixVersionstampedKey as i32;
    validate_atomic_write(&write(vec![], vec![ssvk]), &L).unwrap();

    // Delete: the value is ignored (Deno's CLI sends an empty VE_BYTES one).
    let del = Mutation {
        key: vec![2],
        mutation_type: MutationType::MDelete as i32,
        value: Some(KvValue { data: vec![], encoding: ValueEncoding::VeBytes as i32 }),
        ..Default::default()
    };
    validate_atomic_write(&write(vec![], vec![del]), &L).unwrap();

    for ok in [-1, 0, 1, i64::MAX] {
        let mut m = set(1, 1);
        m.expire_at_ms = ok;
        validate_atomic_write(&write(vec![], vec![m]), &L).unwrap();
    }
    let mut m = set(1, 1);
    m.expire_at_ms = -2;
    assert_invalid(validate_atomic_write(&write(vec![], vec![m]), &L), "mutations[0].expire_at_ms", "-2 is negative");

    // Enqueues keep Deno's queue limits.
    let q = |e: Enqueue| AtomicWrite { enqueues: vec![e], ..Default::default() };
    validate_atomic_write(&q(Enqueue { payload: vec![1; 65_536], ..Default::default() }), &L).unwrap();
    assert!(validate_atomic_write(&q(Enqueue { payload: vec![1; 65_537], ..Default::default() }), &L).is_err());
    assert!(validate_atomic_write(&q(Enqueue { backoff_schedule: vec![1; 11], ..Default::default() }), &L).is_err());
    assert_invalid(
        validate_atomic_write(&q(Enqueue { backoff_schedule: vec![3_600_001], ..Default::default() }), &L),
        "enqueues[0].backoff_schedule[0]",
        "over MAX_BACKOFF_STEP_MS",
    );
    assert!(validate_atomic_write(&q(Enqueue { keys_if_undelivered: vec![vec![2]; 11], ..Default::default() }), &L).is_err());
    assert_invalid(
        validate_atomic_write(&q(Enqueue { keys_if_undelivered: vec![vec![]], ..Default::default() }), &L),
        "enqueues[0].keys_if_undelivered[0]",
        "is empty",
    );
}

#[test]
fn watch_limits() {
    let keys = |n: usize, len: usize| Watch { keys: vec![WatchKey { key: vec![2; len] }; n] };
    validate_watch(&keys(10, 2049), &L).unwrap();
    validate_watch(&keys(0, 0), &L).unwrap();
    assert_limit(validate_watch(&keys(11, 1), &L), "MAX_WATCHED_KEYS", "keys", "keys: 11 keys exceeds MAX_WATCHED_KEYS (10)");
    let mut w = keys(3, 1);
    w.keys[2].key = vec![0; 2050];
    assert_limit(
        validate_watch(&w, &L),
        "MAX_READ_KEY_SIZE_BYTES",
        "keys[2].key",
        "keys[2].key: 2050 bytes exceeds MAX_READ_KEY_SIZE_BYTES (2049)",
    );
}

/// The largest valid atomic write fits `MAX_REQUEST_BODY_BYTES`.
#[test]
fn largest_valid_write_fits_the_body_cap() {
    // Total payload at the cap: 100 checks of 2049-byte keys (204900 bytes)
    // plus mutations up to 819200; then pad the mutation count to 1000 with
    // minimal ones that add 2 bytes each (1-byte key, 1-byte value): the
    // total is exactly MAX_TOTAL_MUTATION_SIZE_BYTES.
    let mut mutations = vec![set(2048, 65_536); 9]; // 608256 bytes
    mutations.push(set(2048, 819_200 - 204_900 - 608_256 - 2048 - 2 * 990));
    mutations.extend(std::iter::repeat_n(set(1, 1), 990));
    let w = AtomicWrite {
        checks: (0..100).map(|i| Check { key: vec![i as u8 + 1; 2049], versionstamp: vec![0; 10] }).collect(),
        mutations,
        enqueues: vec![],
    };
    validate_atomic_write(&w, &L).unwrap();
    assert_eq!(w.mutations.len(), 1000);
    let len = encode(&w).len();
    assert!(len < MAX_REQUEST_BODY_BYTES, "{len}");
}
