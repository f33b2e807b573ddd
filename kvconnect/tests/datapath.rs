//! Protobuf messages: wire bytes worked out by hand from datapath.proto's
//! field numbers and types (protobuf encoding: key = field << 3 | wire type;
//! varint = 0, length-delimited = 2), decoding, errors, typed values.

use proptest::prelude::*;
use sidekv_kvconnect::datapath::*;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

const VS: [u8; 10] = [0, 0, 0, 0, 0, 0, 0, 1, 0, 0];

#[test]
fn enum_numbers_match_the_proto() {
    assert_eq!(SnapshotReadStatus::SrUnspecified as i32, 0);
    assert_eq!(SnapshotReadStatus::SrSuccess as i32, 1);
    assert_eq!(SnapshotReadStatus::SrReadDisabled as i32, 2);
    assert_eq!(MutationType::MSet as i32, 1);
    assert_eq!(MutationType::MDelete as i32, 2);
    assert_eq!(MutationType::MSum as i32, 3);
    assert_eq!(MutationType::MMax as i32, 4);
    assert_eq!(MutationType::MMin as i32, 5);
    assert_eq!(MutationType::MSetSuffixVersionstampedKey as i32, 9);
    assert_eq!(ValueEncoding::VeV8 as i32, 1);
    assert_eq!(ValueEncoding::VeLe64 as i32, 2);
    assert_eq!(ValueEncoding::VeBytes as i32, 3);
    assert_eq!(AtomicWriteStatus::AwUnspecified as i32, 0);
    assert_eq!(AtomicWriteStatus::AwSuccess as i32, 1);
    assert_eq!(AtomicWriteStatus::AwCheckFailure as i32, 2);
    assert_eq!(AtomicWriteStatus::AwWriteDisabled as i32, 5);
}

#[test]
fn snapshot_read_wire_format() {
    // SnapshotRead.ranges = 1 (message); ReadRange: start = 1 (bytes), end = 2
    // (bytes), limit = 3 (int32 varint), reverse = 4 (bool varint).
    let range = "0a 02 0100  12 02 01ff  18 0a  20 01";
    let bytes = hex(&format!("0a 0c {range}"));
    let req = decode_snapshot_read(&bytes).unwrap();
    assert_eq!(req, SnapshotRead { ranges: vec![ReadRange { start: vec![1, 0], end: vec![1, 0xff], limit: 10, reverse: true }] });
    assert_eq!(encode(&req), bytes);
}

#[test]
fn snapshot_read_output_wire_format() {
    // ranges = 1, read_disabled = 2, read_is_strongly_consistent = 4, status = 8.
    assert_eq!(encode(&SnapshotReadOutput::success(vec![])), hex("20 01  40 01"));
    assert_eq!(encode(&SnapshotReadOutput::read_disabled()), hex("10 01  40 02"));
    // KvEntry: key = 1, value = 2, encoding = 3, versionstamp = 4.
    let entry = KvEntry::new(vec![0x02, b'a', 0], Value::Bytes(vec![7]), VS);
    let entry_hex = "0a 03 026100  12 01 07  18 03  22 0a 00000000000000010000";
    assert_eq!(encode(&entry), hex(entry_hex));
    let out = SnapshotReadOutput::success(vec![ReadRangeOutput { values: vec![entry] }, ReadRangeOutput::default()]);
    // ReadRangeOutput.values = 1; an empty range output is an empty message.
    let expected = format!("0a 18 0a 16 {entry_hex}  0a 00  20 01  40 01");
    assert_eq!(encode(&out), hex(&expected));
    assert_eq!(decode::<SnapshotReadOutput>(&hex(&expected)).unwrap(), out);
}

#[test]
fn reserved_and_unknown_fields_are_skipped() {
    // SnapshotReadOutput field 3 (reserved; was regions_if_read_disabled) and
    // an unknown field 15, then status = SR_SUCCESS.
    let out: SnapshotReadOutput = decode(&hex("1a 03 616263  78 05  40 01")).unwrap();
    assert_eq!(out.status(), SnapshotReadStatus::SrSuccess);
    assert!(out.ranges.is_empty());
}

#[test]
fn atomic_write_wire_format() {
    // Check: key = 1, versionstamp = 2.
    let check = "0a 02 0261  12 0a 00000000000000010000";
    // Mutation: key = 1, value = 2 (KvValue: data = 1, encoding = 2),
    // mutation_type = 3, expire_at_ms = 4 (int64 varint), sum_min = 5,
    // sum_max = 6, sum_clamp = 7.
    let mutation = "0a 01 01  12 0c 0a 08 0500000000000000 10 02  18 03  20 e807  2a 01 aa  32 01 bb  38 01";
    // Enqueue: payload = 1, deadline_ms = 2, keys_if_undelivered = 3
    // (repeated bytes), backoff_schedule = 4 (packed uint32).
    let enqueue = "0a 01 ff  10 64  1a 01 01  1a 01 02  22 03 0a e807";
    // AtomicWrite: checks = 1, mutations = 2, enqueues = 3.
    let bytes = hex(&format!("0a 10 {check}  12 1e {mutation}  1a 10 {enqueue}"));
    let w = decode_atomic_write(&bytes).unwrap();
    assert_eq!(w.checks, vec![Check { key: vec![2, b'a'], versionstamp: VS.to_vec() }]);
    let m = &w.mutations[0];
    assert_eq!(m.key, vec![1]);
    assert_eq!(m.value, Some(KvValue { data: 5u64.to_le_bytes().to_vec(), encoding: ValueEncoding::VeLe64 as i32 }));
    assert_eq!(m.mutation_type(), MutationType::MSum);
    assert_eq!(m.expire_at_ms, 1000);
    assert_eq!((m.sum_min.as_slice(), m.sum_max.as_slice(), m.sum_clamp), (&[0xaa][..], &[0xbb][..], true));
    assert_eq!(
        w.enqueues,
        vec![Enqueue {
            payload: vec![0xff],
            deadline_ms: 100,
            keys_if_undelivered: vec![vec![1], vec![2]],
            backoff_schedule: vec![10, 1000]
        }]
    );
    assert_eq!(encode(&w), bytes);

    // Unpacked repeated uint32 (each element as its own field) decodes the same.
    let unpacked: Enqueue = decode(&hex("20 0a  20 e807")).unwrap();
    assert_eq!(unpacked.backoff_schedule, vec![10, 1000]);
}

#[test]
fn atomic_write_output_wire_format() {
    // status = 1, versionstamp = 2, failed_checks = 4 (packed uint32).
    assert_eq!(encode(&AtomicWriteOutput::success(VS)), hex("08 01  12 0a 00000000000000010000"));
    assert_eq!(encode(&AtomicWriteOutput::check_failure(vec![0, 2])), hex("08 02  22 02 00 02"));
    assert_eq!(encode(&AtomicWriteOutput::check_failure(vec![])), hex("08 02"));
    assert_eq!(encode(&AtomicWriteOutput::write_disabled()), hex("08 05"));
}

#[test]
fn watch_wire_format() {
    // Watch.keys = 1; WatchKey.key = 1.
    let w = decode_watch(&hex("0a 03 0a 01 27  0a 00")).unwrap();
    assert_eq!(w.keys, vec![WatchKey { key: vec![0x27] }, WatchKey { key: vec![] }]);
    // WatchOutput: status = 1, keys = 2; WatchKeyOutput: changed = 1, entry_if_changed = 2.
    let entry = KvEntry::new(vec![0x27], Value::U64(1), VS);
    let out = WatchOutput::success(vec![WatchKeyOutput::changed(Some(entry)), WatchKeyOutput::changed(None), WatchKeyOutput::unchanged()]);
    let entry_hex = "0a 01 27  12 08 0100000000000000  18 02  22 0a 00000000000000010000";
    let expected = format!("08 01  12 1f 08 01 12 1b {entry_hex}  12 02 08 01  12 00");
    assert_eq!(encode(&out), hex(&expected));
    assert_eq!(decode::<WatchOutput>(&hex(&expected)).unwrap(), out);
    assert_eq!(encode(&WatchOutput::read_disabled()), hex("08 02"));
}

#[test]
fn decode_errors_name_the_message() {
    let err = decode_snapshot_read(&hex("0a 05 01")).unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("the body is not a valid com.deno.kv.datapath.SnapshotRead protobuf message: "), "{msg}");
    let err = decode_atomic_write(&hex("ff ff ff ff ff ff ff ff ff ff ff")).unwrap_err();
    assert!(err.to_string().contains("com.deno.kv.datapath.AtomicWrite"), "{err}");
    // Wrong wire type for a known field (limit as length-delimited).
    assert!(decode::<ReadRange>(&hex("1a 01 00")).is_err());
}

#[test]
fn unknown_enum_values_survive_decoding() {
    // mutation_type = 42: proto3 enums are open; the getter says unspecified.
    let m: Mutation = decode(&hex("0a 01 01  18 2a")).unwrap();
    assert_eq!(m.mutation_type, 42);
    assert_eq!(m.mutation_type(), MutationType::MUnspecified);
}

#[test]
fn typed_values() {
    assert_eq!(Value::from_encoded(vec![1, 2], 1).unwrap(), Value::V8(vec![1, 2]));
    assert_eq!(Value::from_encoded(vec![1, 2], 3).unwrap(), Value::Bytes(vec![1, 2]));
    assert_eq!(Value::from_encoded(hex("0201000000000000"), 2).unwrap(), Value::U64(258));
    assert_eq!(Value::from_encoded(vec![1], 2).unwrap_err(), CodecError::Le64Length(1));
    assert_eq!(Value::from_encoded(vec![], 0).unwrap_err(), CodecError::UnknownValueEncoding(0));
    assert_eq!(
        Value::from_encoded(vec![], 7).unwrap_err().to_string(),
        "unknown value encoding 7 (expected VE_V8=1, VE_LE64=2 or VE_BYTES=3)"
    );
    let kv: KvValue = Value::U64(u64::MAX).into();
    assert_eq!(kv, KvValue { data: vec![0xff; 8], encoding: 2 });
    assert_eq!(Value::try_from(kv).unwrap(), Value::U64(u64::MAX));
    assert_eq!(Value::V8(vec![]).encoding(), ValueEncoding::VeV8);
}

fn mutation_strategy() -> impl Strategy<Value = Mutation> {
    (
        prop::collection::vec(any::<u8>(), 0..8),
        prop::option::of((prop::collection::vec(any::<u8>(), 0..8), 0i32..4)),
        prop_oneof![Just(1i32), Just(2), Just(3), Just(4), Just(5), Just(9), any::<i32>()],
        any::<i64>(),
        prop::collection::vec(any::<u8>(), 0..3),
        any::<bool>(),
    )
        .prop_map(|(key, value, mutation_type, expire_at_ms, sum_min, sum_clamp)| Mutation {
            key,
            value: value.map(|(data, encoding)| KvValue { data, encoding }),
            mutation_type,
            expire_at_ms,
            sum_min: sum_min.clone(),
            sum_max: sum_min,
            sum_clamp,
        })
}

proptest! {
    #[test]
    fn atomic_write_round_trips(
        checks in prop::collection::vec((prop::collection::vec(any::<u8>(), 0..8), prop::collection::vec(any::<u8>(), 0..11)), 0..4),
        mutations in prop::collection::vec(mutation_strategy(), 0..4),
        schedule in prop::collection::vec(any::<u32>(), 0..4),
    ) {
        let w = AtomicWrite {
            checks: checks.into_iter().map(|(key, versionstamp)| Check { key, versionstamp }).collect(),
            mutations,
            enqueues: vec![Enqueue { payload: vec![1], deadline_ms: -5, keys_if_undelivered: vec![], backoff_schedule: schedule }],
        };
        prop_assert_eq!(decode_atomic_write(&encode(&w)).unwrap(), w);
    }

    #[test]
    fn decoding_garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = decode_snapshot_read(&bytes);
        let _ = decode_atomic_write(&bytes);
        let _ = decode_watch(&bytes);
        let _ = decode::<WatchOutput>(&bytes);
    }
}
