//! Deno key codec: fixed vectors, round trips, order, strict decoding.

use proptest::prelude::*;
use sidekv_kvconnect::key::{KeyError, KeyInt, KeyPart, decode_key, encode_key, versionstamp_key_suffix};

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn int(s: &str) -> KeyPart {
    KeyPart::Int(s.parse().unwrap())
}

fn check_vector(parts: Vec<KeyPart>, expected_hex: &str) {
    let expected = hex(expected_hex);
    assert_eq!(encode_key(&parts), expected, "encode {parts:?}");
    assert_eq!(decode_key(&expected).unwrap(), parts, "decode {expected_hex}");
}

/// Vectors from denokv's own tests: `proto/codec.rs` (`explicit_bijection`)
/// and npm `@deno/kv`'s `src/kv_key_test.ts` (`packKey/unpackKey`), written
/// here in hex.
#[test]
fn vectors_from_denokv_tests() {
    // codec.rs: string, zero-byte escape, two parts.
    check_vector(vec!["hello".into()], "02 68656c6c6f 00");
    check_vector(vec![KeyPart::Bytes(vec![1, 2, 0, 7, 8])], "01 0102 00ff 0708 00");
    check_vector(vec!["hello".into(), KeyPart::Bytes(vec![1, 2, 0, 7, 8])], "02 68656c6c6f 00 01 0102 00ff 0708 00");
    // kv_key_test.ts
    check_vector(vec!["foo".into()], "02 666f6f 00");
    check_vector(vec!["f\0o".into()], "02 66 00ff 6f 00");
    check_vector(vec![KeyPart::Float(0.0)], "21 8000000000000000");
    check_vector(vec![KeyPart::Float(123.456)], "21 c05edd2f1a9fbe77");
    check_vector(vec![KeyPart::Float(-300.0)], "21 3f8d3fffffffffff");
    check_vector(vec![KeyPart::Float(200.0)], "21 c069000000000000");
    check_vector(vec![KeyPart::Bytes(b"foo".to_vec())], "01 666f6f 00");
    check_vector(vec![KeyPart::Bytes(vec![4, 0, 4])], "01 04 00ff 04 00");
    check_vector(vec![KeyPart::False], "26");
    check_vector(vec![KeyPart::True], "27");
    check_vector(vec![int("0")], "14");
    check_vector(vec![int("-200")], "13 37");
    check_vector(vec![int("200")], "15 c8");
    check_vector(vec![int("600")], "16 0258");
    check_vector(vec![int("70000")], "17 011170");
    check_vector(vec![int("305419896")], "18 12345678");
    check_vector(vec![int("78187493520")], "19 1234567890");
    check_vector(vec![KeyPart::Int(0x1122_3344_5566u64.into())], "1a 112233445566");
    check_vector(vec![KeyPart::Int(0x0011_2233_4455_6677u64.into())], "1b 11223344556677");
    check_vector(vec![KeyPart::Int(0x1122_3344_5566_7788u64.into())], "1c 1122334455667788");
    check_vector(vec![KeyPart::Int(0x11_2233_4455_6677_8899u128.into())], "1d 09 112233445566778899");
    let big = KeyInt::from_sign_magnitude(false, &hex("1122334455667788990011223344556677889900")).unwrap();
    check_vector(vec![KeyPart::Int(big.clone())], "1d 14 1122334455667788990011223344556677889900");
    let neg_big = KeyInt::from_sign_magnitude(true, big.magnitude_be()).unwrap();
    check_vector(vec![KeyPart::Int(neg_big)], "0b eb eeddccbbaa99887766ff eeddccbbaa99887766ff");
}

/// Vectors worked out by hand from the tuple-layer rules in the module docs
/// (FoundationDB `design/tuple.md`: ones' complement for negatives, sign
/// flip for floats).
#[test]
fn vectors_from_the_encoding_rules() {
    check_vector(vec![], "");
    check_vector(vec![int("1")], "15 01");
    check_vector(vec![int("-1")], "13 fe");
    check_vector(vec![int("255")], "15 ff");
    check_vector(vec![int("-255")], "13 00");
    check_vector(vec![int("256")], "16 0100");
    check_vector(vec![int("-256")], "12 feff");
    check_vector(vec![KeyPart::Int(i64::MAX.into())], "1c 7fffffffffffffff");
    check_vector(vec![KeyPart::Int(i64::MIN.into())], "0c 7fffffffffffffff");
    check_vector(vec![KeyPart::Int(u64::MAX.into())], "1c ffffffffffffffff");
    check_vector(vec![int("18446744073709551616")], "1d 09 010000000000000000"); // 2^64
    check_vector(vec![int("-18446744073709551616")], "0b f6 feffffffffffffffff"); // -2^64
    check_vector(vec![KeyPart::Float(1.0)], "21 bff0000000000000");
    check_vector(vec![KeyPart::Float(-1.0)], "21 400fffffffffffff");
    check_vector(vec![KeyPart::Float(-0.0)], "21 7fffffffffffffff");
    check_vector(vec![KeyPart::Float(f64::INFINITY)], "21 fff0000000000000");
    check_vector(vec![KeyPart::Float(f64::NEG_INFINITY)], "21 000fffffffffffff");
    check_vector(vec![KeyPart::Float(f64::NAN)], "21 fff8000000000000");
    check_vector(vec![KeyPart::Float(-f64::NAN)], "21 0007ffffffffffff");
    check_vector(vec![KeyPart::String(String::new())], "02 00");
    check_vector(vec![KeyPart::Bytes(vec![])], "01 00");
    check_vector(vec![KeyPart::Bytes(vec![0])], "01 00ff 00");
    check_vector(vec!["é".into()], "02 c3a9 00");
    check_vector(vec!["users".into(), int("42"), KeyPart::True], "02 7573657273 00 15 2a 27");
}

#[test]
fn nan_payloads_are_canonicalized_when_encoding() {
    let odd_nan = f64::from_bits(0x7ff8_0000_0000_0001);
    assert_eq!(encode_key(&[KeyPart::Float(odd_nan)]), encode_key(&[KeyPart::Float(f64::NAN)]));
    assert_eq!(KeyPart::Float(odd_nan), KeyPart::Float(f64::NAN));
    let odd_neg_nan = f64::from_bits(0xfff0_0000_0000_0001);
    assert_eq!(encode_key(&[KeyPart::Float(odd_neg_nan)]), hex("21 0007ffffffffffff"));
}

/// `setSuffixVersionstampedKey`: the suffix is the string part of the hex
/// versionstamp (denokv `sqlite/backend.rs`).
#[test]
fn versionstamp_suffix_is_a_hex_string_part() {
    let vs = [0, 0, 0, 0, 0, 0, 0, 1, 0, 0];
    let suffix = versionstamp_key_suffix(&vs);
    assert_eq!(decode_key(&suffix).unwrap(), vec![KeyPart::String("00000000000000010000".into())]);
    let vs = [0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3, 0xff, 0x10];
    assert_eq!(suffix.len(), 22);
    assert_eq!(decode_key(&versionstamp_key_suffix(&vs)).unwrap(), vec![KeyPart::String("deadbeef00010203ff10".into())]);
}

/// Deno's documented key order (`denokv_proto::KeyPart` docs and the Deno
/// manual's key space page): bytes < string < bigint < number < false <
/// true, and within numbers -NaN < -Infinity < … < -0 < 0 < … < Infinity < NaN.
#[test]
fn encoded_order_is_denos_documented_order() {
    let two_pow_70: KeyInt = "1180591620717411303424".parse().unwrap();
    let minus_two_pow_70: KeyInt = "-1180591620717411303424".parse().unwrap();
    let ascending = vec![
        KeyPart::Bytes(vec![]),
        KeyPart::Bytes(vec![0]),
        KeyPart::Bytes(vec![0, 0]),
        KeyPart::Bytes(vec![1]),
        KeyPart::Bytes(vec![0xff]),
        KeyPart::String(String::new()),
        KeyPart::String("\0".into()),
        KeyPart::String("A".into()),
        KeyPart::String("a".into()),
        KeyPart::String("a\0".into()),
        KeyPart::String("ab".into()),
        KeyPart::String("é".into()),        // U+00E9: UTF-8 c3 a9
        KeyPart::String("\u{ffff}".into()), // ef bf bf
        KeyPart::String("😀".into()),       // f0 9f 98 80 (UTF-16 order would put it before U+FFFF)
        KeyPart::Int(minus_two_pow_70),
        KeyPart::Int(i64::MIN.into()),
        KeyPart::Int((-256).into()),
        KeyPart::Int((-255).into()),
        KeyPart::Int((-1).into()),
        KeyPart::Int(0.into()),
        KeyPart::Int(1.into()),
        KeyPart::Int(255.into()),
        KeyPart::Int(256.into()),
        KeyPart::Int(u64::MAX.into()),
        KeyPart::Int(two_pow_70),
        KeyPart::Float(-f64::NAN),
        KeyPart::Float(f64::NEG_INFINITY),
        KeyPart::Float(-100.0),
        KeyPart::Float(-1.0),
        KeyPart::Float(-0.5),
        KeyPart::Float(-f64::MIN_POSITIVE),
        KeyPart::Float(-0.0),
        KeyPart::Float(0.0),
        KeyPart::Float(f64::MIN_POSITIVE),
        KeyPart::Float(0.5),
        KeyPart::Float(1.0),
        KeyPart::Float(100.0),
        KeyPart::Float(f64::INFINITY),
        KeyPart::Float(f64::NAN),
        KeyPart::False,
        KeyPart::True,
    ];
    for pair in ascending.windows(2) {
        assert!(pair[0] < pair[1], "KeyPart order: {:?} < {:?}", pair[0], pair[1]);
        let (a, b) = (encode_key(&pair[..1]), encode_key(&pair[1..]));
        assert!(a < b, "byte order: {:?} ({a:02x?}) < {:?} ({b:02x?})", pair[0], pair[1]);
    }
    // A key sorts before its extensions, and the 0x00 escape keeps
    // ["a", anything] below ["a\0"].
    let keys = [vec![KeyPart::from("a")], vec![KeyPart::from("a"), KeyPart::True], vec![KeyPart::from("a\0")]];
    for pair in keys.windows(2) {
        assert!(pair[0] < pair[1]);
        assert!(encode_key(&pair[0]) < encode_key(&pair[1]));
    }
}

#[test]
fn decode_errors_name_the_problem_and_offset() {
    let cases: &[(&str, KeyError)] = &[
        ("ff", KeyError::UnknownTag { offset: 0, tag: 0xff }),
        ("26 00", KeyError::UnknownTag { offset: 1, tag: 0x00 }),
        ("02 6162", KeyError::UnexpectedEnd { offset: 0, what: "string" }),
        ("01 00ff", KeyError::UnexpectedEnd { offset: 0, what: "bytes" }),
        ("16 01", KeyError::UnexpectedEnd { offset: 0, what: "integer" }),
        ("1d", KeyError::UnexpectedEnd { offset: 0, what: "integer" }),
        ("21 8000", KeyError::UnexpectedEnd { offset: 0, what: "float" }),
        ("02 ff00", KeyError::InvalidUtf8 { offset: 0 }),
        ("15 00", KeyError::NonCanonicalInt { offset: 0 }),   // 0 in one byte
        ("13 ff", KeyError::NonCanonicalInt { offset: 0 }),   // -0 in one byte
        ("16 0001", KeyError::NonCanonicalInt { offset: 0 }), // leading zero byte
        ("1d 08 0102030405060708", KeyError::NonCanonicalInt { offset: 0 }), // long form for 8 bytes
        ("0b f7 fefefefefefefefe", KeyError::NonCanonicalInt { offset: 0 }),
        ("21 fff8000000000001", KeyError::NonCanonicalFloat { offset: 0 }),
    ];
    for (input, expected) in cases {
        assert_eq!(decode_key(&hex(input)).unwrap_err(), *expected, "{input}");
    }
    let msg = decode_key(&hex("27 42")).unwrap_err().to_string();
    assert_eq!(msg, "unknown key part tag 0x42 at byte 1");
}

#[test]
fn key_int_conversions() {
    for v in [0i128, 1, -1, 255, -256, i64::MAX as i128, i128::MAX, i128::MIN] {
        let k = KeyInt::from(v);
        assert_eq!(i128::try_from(&k).unwrap(), v);
        assert_eq!(k.to_string(), v.to_string());
        assert_eq!(v.to_string().parse::<KeyInt>().unwrap(), k);
    }
    assert_eq!(format!("{:?}", KeyInt::from(-42)), "-42n");
    assert_eq!("123n".parse::<KeyInt>().unwrap(), KeyInt::from(123));
    assert_eq!("-0".parse::<KeyInt>().unwrap(), KeyInt::zero());
    assert!(!"-0".parse::<KeyInt>().unwrap().is_negative());
    for bad in ["", "-", "1.5", "12a", "+1", " 1"] {
        assert!(matches!(bad.parse::<KeyInt>(), Err(KeyError::InvalidDecimal(_))), "{bad:?}");
    }
    let too_big = "1".repeat(700); // > 2040 bits
    assert!(matches!(too_big.parse::<KeyInt>(), Err(KeyError::IntTooLarge { .. })));
    assert!(KeyInt::from_sign_magnitude(false, &[1; 256]).is_err());
    assert_eq!(KeyInt::from_sign_magnitude(false, &[0, 0, 1]).unwrap().magnitude_be(), &[1]);
    assert!(i64::try_from(&KeyInt::from(u64::MAX)).is_err());
    assert!(i128::try_from(&KeyInt::from_sign_magnitude(false, &[1; 17]).unwrap()).is_err());
    // The largest key integer round-trips.
    let max = KeyInt::from_sign_magnitude(true, &[0xff; 255]).unwrap();
    let encoded = encode_key(&[KeyPart::Int(max.clone())]);
    assert_eq!(&encoded[..2], &[0x0b, 0x00]);
    assert_eq!(decode_key(&encoded).unwrap(), vec![KeyPart::Int(max.clone())]);
    assert_eq!(max.to_string().parse::<KeyInt>().unwrap(), max);
}

fn key_int_strategy() -> impl Strategy<Value = KeyInt> {
    prop_oneof![
        any::<i64>().prop_map(KeyInt::from),
        any::<i128>().prop_map(KeyInt::from),
        (any::<bool>(), prop::collection::vec(any::<u8>(), 0..40)).prop_map(|(neg, mag)| KeyInt::from_sign_magnitude(neg, &mag).unwrap()),
    ]
}

fn key_part_strategy() -> impl Strategy<Value = KeyPart> {
    prop_oneof![
        prop::collection::vec(prop_oneof![Just(0u8), Just(0xffu8), any::<u8>()], 0..12).prop_map(KeyPart::Bytes),
        "(\\PC|\\x00){0,8}".prop_map(KeyPart::String),
        key_int_strategy().prop_map(KeyPart::Int),
        any::<u64>().prop_map(|bits| KeyPart::Float(f64::from_bits(bits))),
        prop_oneof![Just(0.0), Just(-0.0), Just(1.0), Just(-1.0), Just(f64::NAN), Just(f64::INFINITY)].prop_map(KeyPart::Float),
        Just(KeyPart::False),
        Just(KeyPart::True),
    ]
}

fn key_strategy() -> impl Strategy<Value = Vec<KeyPart>> {
    prop::collection::vec(key_part_strategy(), 0..5)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn round_trip(key in key_strategy()) {
        let bytes = encode_key(&key);
        let decoded = decode_key(&bytes).unwrap();
        prop_assert_eq!(&decoded, &key);
        prop_assert_eq!(encode_key(&decoded), bytes);
    }

    #[test]
    fn byte_order_is_key_order(a in key_strategy(), b in key_strategy()) {
        prop_assert_eq!(encode_key(&a).cmp(&encode_key(&b)), a.cmp(&b), "{:?} vs {:?}", a, b);
    }

    #[test]
    fn int_order_and_decimal_match_i128(a in any::<i128>(), b in any::<i128>()) {
        let (ka, kb) = (KeyInt::from(a), KeyInt::from(b));
        prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
        prop_assert_eq!(ka.to_string(), a.to_string());
        prop_assert_eq!(encode_key(&[KeyPart::Int(ka)]).cmp(&encode_key(&[KeyPart::Int(kb)])), a.cmp(&b));
    }

    #[test]
    fn big_int_decimal_round_trip(k in key_int_strategy()) {
        prop_assert_eq!(k.to_string().parse::<KeyInt>().unwrap(), k);
    }

    /// Strictness: whatever decodes re-encodes to the same bytes, and
    /// arbitrary input never panics.
    #[test]
    fn decode_is_a_bijection_on_what_it_accepts(bytes in prop::collection::vec(
        prop_oneof![Just(0x00u8), Just(0x01), Just(0x02), Just(0x0b), Just(0x14), Just(0x15), Just(0x1d), Just(0x21), Just(0x26), Just(0xff), any::<u8>()],
        0..24,
    )) {
        if let Ok(parts) = decode_key(&bytes) {
            prop_assert_eq!(encode_key(&parts), bytes);
        }
    }
}
