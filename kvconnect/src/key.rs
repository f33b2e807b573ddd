//! Deno KV keys: the FoundationDB tuple layer subset that Deno encodes keys with.
//!
//! A Deno key (`Deno.KvKey`) is a list of parts; each part is a `Uint8Array`,
//! a `string`, a `bigint`, a `number` or a `boolean`. The client encodes the
//! key to bytes ([`encode_key`]) before anything reaches the server, and the
//! server only ever sees those bytes: **the byte order of encoded keys is the
//! list order** (`kv.list()` is a byte range read), so the server must store
//! keys as opaque bytes and compare them with plain `memcmp` order (SQLite
//! `BLOB` order is exactly that).
//!
//! The encoding is the FoundationDB tuple layer
//! (<https://github.com/apple/foundationdb/blob/main/design/tuple.md>), as
//! `denokv_proto::codec` implements it:
//!
//! | part                | tag byte(s)                               | payload |
//! |---------------------|-------------------------------------------|---------|
//! | `Uint8Array`        | `0x01`                                    | bytes, each `0x00` escaped as `0x00 0xff`, then a `0x00` terminator |
//! | `string`            | `0x02`                                    | UTF-8, escaped and terminated like bytes |
//! | `bigint` < 0, > 8 B | `0x0b`, then `len ^ 0xff`                 | ones' complement of the big-endian magnitude |
//! | `bigint` < 0, n B   | `0x14 - n` (`0x0c`..=`0x13`)              | ones' complement of the n-byte magnitude |
//! | `0n`                | `0x14`                                    | none |
//! | `bigint` > 0, n B   | `0x14 + n` (`0x15`..=`0x1c`)              | n-byte big-endian magnitude |
//! | `bigint` > 0, > 8 B | `0x1d`, then `len`                        | big-endian magnitude (at most 255 bytes) |
//! | `number`            | `0x21`                                    | 8 bytes: IEEE-754 bits, big-endian; positive: sign bit flipped, negative: all bits flipped; NaN canonicalized first |
//! | `false` / `true`    | `0x26` / `0x27`                           | none |
//!
//! So across types the order is bytes < string < bigint < number < false <
//! true, and within a type: byte order for bytes and strings (UTF-8 bytes,
//! not UTF-16 code units), mathematical order for bigints, and
//! `-NaN < -Infinity < … < -0 < 0 < … < Infinity < NaN` for numbers
//! ([`KeyPart`]'s `Ord` is exactly this). The `0x00 0xff` escape keeps the
//! order right when one string is a prefix of another: `"a"` (`02 61 00`)
//! sorts before `"a\0"` (`02 61 00 ff 00`) and before any `["a", …]`.
//!
//! Integers are arbitrary precision (a JS `bigint` of up to 255 magnitude
//! bytes, 2040 bits), so [`KeyInt`] is a small sign + magnitude type rather
//! than `i128`: a key written by a client with `2n ** 200n` must decode.
//! A JS `number` is always [`KeyPart::Float`], even when it is integral:
//! `[1]` and `[1n]` are different keys.
//!
//! [`decode_key`] is strict: it accepts exactly the bytes [`encode_key`]
//! produces (no over-long integers, no non-canonical NaN), so a successful
//! decode always re-encodes to the same bytes. Deno's own decoder is more
//! lenient on those two points; no Deno client ever produces them.
//!
//! Range bounds are not keys: Deno lists a prefix `p` as the range
//! `p ++ [0x00]` ..`p ++ [0xff]` and continues a cursor at `… ++ [0x00]`, so
//! never decode `ReadRange.start`/`end` (that is also why the read key limit
//! is one byte above the write key limit).

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// Tag of a byte string part (`Uint8Array`).
pub const TAG_BYTES: u8 = 0x01;
/// Tag of a UTF-8 string part.
pub const TAG_STRING: u8 = 0x02;
/// Tag of a negative integer with more than 8 magnitude bytes (a length byte follows).
pub const TAG_NEG_INT_LONG: u8 = 0x0b;
/// Tag of the integer zero; `TAG_INT_ZERO ± n` tags an n-byte integer (n ≤ 8).
pub const TAG_INT_ZERO: u8 = 0x14;
/// Tag of a positive integer with more than 8 magnitude bytes (a length byte follows).
pub const TAG_POS_INT_LONG: u8 = 0x1d;
/// Tag of a 64-bit float (`number`).
pub const TAG_FLOAT: u8 = 0x21;
/// Tag of `false`.
pub const TAG_FALSE: u8 = 0x26;
/// Tag of `true`.
pub const TAG_TRUE: u8 = 0x27;

const ESCAPE: u8 = 0xff;
const SIGN_BIT: u64 = 1 << 63;
const CANONICAL_NAN: u64 = 0x7ff8_0000_0000_0000;
const CANONICAL_NEG_NAN: u64 = 0xfff8_0000_0000_0000;
/// Integers of at most this many magnitude bytes use the one-byte tags.
const SHORT_INT_BYTES: usize = 8;

/// What can go wrong decoding a key or building a [`KeyInt`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key ends inside a {what} part that starts at byte {offset}")]
    UnexpectedEnd { offset: usize, what: &'static str },
    #[error("unknown key part tag 0x{tag:02x} at byte {offset}")]
    UnknownTag { offset: usize, tag: u8 },
    #[error("string key part at byte {offset} is not valid UTF-8")]
    InvalidUtf8 { offset: usize },
    #[error("integer key part at byte {offset} is not minimally encoded")]
    NonCanonicalInt { offset: usize },
    #[error("float key part at byte {offset} is a NaN with a non-canonical payload")]
    NonCanonicalFloat { offset: usize },
    #[error("integer needs {bytes} magnitude bytes; a key integer has at most 255")]
    IntTooLarge { bytes: usize },
    #[error("invalid decimal integer {0:?}")]
    InvalidDecimal(String),
    #[error("integer {0} does not fit the target type")]
    IntOutOfRange(String),
}

/// An arbitrary-precision integer key part (a JS `bigint`), as sign and
/// big-endian magnitude.
///
/// Invariants: the magnitude has no leading zero byte and at most 255 bytes;
/// zero is non-negative with an empty magnitude. Ordered mathematically.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct KeyInt {
    negative: bool,
    magnitude: Vec<u8>,
}

impl KeyInt {
    /// The most magnitude bytes an encoded key integer can have (the length byte is a `u8`).
    pub const MAX_MAGNITUDE_BYTES: usize = 255;

    /// Zero.
    pub fn zero() -> Self {
        Self::default()
    }

    /// From a sign and a big-endian magnitude (leading zero bytes are
    /// dropped; a zero magnitude gives zero whatever the sign).
    pub fn from_sign_magnitude(negative: bool, magnitude_be: &[u8]) -> Result<Self, KeyError> {
        let start = magnitude_be.iter().position(|&b| b != 0).unwrap_or(magnitude_be.len());
        let magnitude = &magnitude_be[start..];
        if magnitude.len() > Self::MAX_MAGNITUDE_BYTES {
            return Err(KeyError::IntTooLarge { bytes: magnitude.len() });
        }
        Ok(Self { negative: negative && !magnitude.is_empty(), magnitude: magnitude.to_vec() })
    }

    /// Whether the value is below zero.
    pub fn is_negative(&self) -> bool {
        self.negative
    }

    /// Whether the value is zero.
    pub fn is_zero(&self) -> bool {
        self.magnitude.is_empty()
    }

    /// The absolute value, big-endian, without leading zero bytes (empty for zero).
    pub fn magnitude_be(&self) -> &[u8] {
        &self.magnitude
    }

    fn from_u128_sign(negative: bool, abs: u128) -> Self {
        // 16 bytes never exceed the 255-byte bound.
        Self::from_sign_magnitude(negative, &abs.to_be_bytes()).unwrap_or_default()
    }

    fn to_u128_abs(&self) -> Option<u128> {
        if self.magnitude.len() > 16 {
            return None;
        }
        Some(self.magnitude.iter().fold(0u128, |acc, &b| (acc << 8) | u128::from(b)))
    }

    /// `self = self * mul + add` on the magnitude (used by decimal parsing).
    fn mul_add_small(magnitude: &mut Vec<u8>, mul: u32, add: u32) {
        let mut carry = add;
        for byte in magnitude.iter_mut().rev() {
            let v = u32::from(*byte) * mul + carry;
            *byte = (v & 0xff) as u8;
            carry = v >> 8;
        }
        while carry > 0 {
            magnitude.insert(0, (carry & 0xff) as u8);
            carry >>= 8;
        }
    }
}

macro_rules! key_int_from_signed {
    ($($t:ty),*) => {$(
        impl From<$t> for KeyInt {
            fn from(v: $t) -> Self {
                Self::from_u128_sign(v < 0, i128::from(v).unsigned_abs())
            }
        }
    )*};
}
macro_rules! key_int_from_unsigned {
    ($($t:ty),*) => {$(
        impl From<$t> for KeyInt {
            fn from(v: $t) -> Self {
                Self::from_u128_sign(false, u128::from(v))
            }
        }
    )*};
}
key_int_from_signed!(i8, i16, i32, i64, i128);
key_int_from_unsigned!(u8, u16, u32, u64, u128);

impl TryFrom<&KeyInt> for i128 {
    type Error = KeyError;
    fn try_from(v: &KeyInt) -> Result<Self, KeyError> {
        let out_of_range = || KeyError::IntOutOfRange(v.to_string());
        let abs = v.to_u128_abs().ok_or_else(out_of_range)?;
        if v.negative {
            if abs == 1u128 << 127 { Ok(i128::MIN) } else { i128::try_from(abs).map(|a| -a).map_err(|_| out_of_range()) }
        } else {
            i128::try_from(abs).map_err(|_| out_of_range())
        }
    }
}

impl TryFrom<&KeyInt> for i64 {
    type Error = KeyError;
    fn try_from(v: &KeyInt) -> Result<Self, KeyError> {
        i64::try_from(i128::try_from(v)?).map_err(|_| KeyError::IntOutOfRange(v.to_string()))
    }
}

impl Ord for KeyInt {
    fn cmp(&self, other: &Self) -> Ordering {
        // The magnitudes have no leading zeros, so a longer one is larger.
        let by_magnitude = self.magnitude.len().cmp(&other.magnitude.len()).then_with(|| self.magnitude.cmp(&other.magnitude));
        match (self.negative, other.negative) {
            (false, false) => by_magnitude,
            (true, true) => by_magnitude.reverse(),
            (true, false) => Ordering::Less,
            (false, true) => Ordering::Greater,
        }
    }
}

impl PartialOrd for KeyInt {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for KeyInt {
    /// Decimal, with a leading `-` when negative (no `n` suffix).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.magnitude.is_empty() {
            return f.write_str("0");
        }
        // Base 10^9 limbs, least significant first.
        const BASE: u64 = 1_000_000_000;
        let mut limbs: Vec<u64> = Vec::new();
        for &byte in &self.magnitude {
            let mut carry = u64::from(byte);
            for limb in limbs.iter_mut() {
                let v = *limb * 256 + carry;
                *limb = v % BASE;
                carry = v / BASE;
            }
            while carry > 0 {
                limbs.push(carry % BASE);
                carry /= BASE;
            }
        }
        let mut out = String::new();
        if self.negative {
            out.push('-');
        }
        let mut iter = limbs.iter().rev();
        if let Some(first) = iter.next() {
            out.push_str(&first.to_string());
        }
        for limb in iter {
            out.push_str(&format!("{limb:09}"));
        }
        f.write_str(&out)
    }
}

impl fmt::Debug for KeyInt {
    /// Like a JS bigint literal: `-42n`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}n")
    }
}

impl FromStr for KeyInt {
    type Err = KeyError;
    /// Decimal with an optional leading `-` (an optional trailing `n`, as in a
    /// JS bigint literal, is accepted too).
    fn from_str(s: &str) -> Result<Self, KeyError> {
        let invalid = || KeyError::InvalidDecimal(s.chars().take(64).collect());
        let body = s.strip_suffix('n').unwrap_or(s);
        let (negative, digits) = match body.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, body),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        let mut magnitude = Vec::new();
        for d in digits.bytes() {
            Self::mul_add_small(&mut magnitude, 10, u32::from(d - b'0'));
            if magnitude.first() == Some(&0) {
                magnitude.remove(0);
            }
            if magnitude.len() > Self::MAX_MAGNITUDE_BYTES {
                return Err(KeyError::IntTooLarge { bytes: magnitude.len() });
            }
        }
        Self::from_sign_magnitude(negative, &magnitude)
    }
}

/// One part of a Deno KV key.
///
/// `Eq`/`Ord` follow Deno's key order (the order of the encoded bytes):
/// bytes < string < int < float < false < true; floats by IEEE total order
/// after NaN canonicalization (so `-0.0 < 0.0` and all NaNs of one sign are
/// equal).
#[derive(Clone, Debug)]
pub enum KeyPart {
    /// A `Uint8Array`.
    Bytes(Vec<u8>),
    /// A `string`.
    String(String),
    /// A `bigint`.
    Int(KeyInt),
    /// A `number` (always, even when integral).
    Float(f64),
    /// `false`.
    False,
    /// `true`.
    True,
}

impl KeyPart {
    fn type_rank(&self) -> u8 {
        match self {
            KeyPart::Bytes(_) => 0,
            KeyPart::String(_) => 1,
            KeyPart::Int(_) => 2,
            KeyPart::Float(_) => 3,
            KeyPart::False => 4,
            KeyPart::True => 5,
        }
    }
}

/// NaN with any payload becomes the canonical quiet NaN of its sign (as Deno does before encoding).
pub fn canonicalize_f64(x: f64) -> f64 {
    if x.is_nan() { f64::from_bits(if x.is_sign_negative() { CANONICAL_NEG_NAN } else { CANONICAL_NAN }) } else { x }
}

impl Ord for KeyPart {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (KeyPart::Bytes(a), KeyPart::Bytes(b)) => a.cmp(b),
            (KeyPart::String(a), KeyPart::String(b)) => a.as_bytes().cmp(b.as_bytes()),
            (KeyPart::Int(a), KeyPart::Int(b)) => a.cmp(b),
            (KeyPart::Float(a), KeyPart::Float(b)) => canonicalize_f64(*a).total_cmp(&canonicalize_f64(*b)),
            _ => self.type_rank().cmp(&other.type_rank()),
        }
    }
}

impl PartialOrd for KeyPart {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for KeyPart {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for KeyPart {}

impl From<&str> for KeyPart {
    fn from(s: &str) -> Self {
        KeyPart::String(s.to_owned())
    }
}

impl From<String> for KeyPart {
    fn from(s: String) -> Self {
        KeyPart::String(s)
    }
}

impl From<bool> for KeyPart {
    fn from(b: bool) -> Self {
        if b { KeyPart::True } else { KeyPart::False }
    }
}

impl From<KeyInt> for KeyPart {
    fn from(i: KeyInt) -> Self {
        KeyPart::Int(i)
    }
}

impl From<f64> for KeyPart {
    fn from(x: f64) -> Self {
        KeyPart::Float(x)
    }
}

impl From<Vec<u8>> for KeyPart {
    fn from(b: Vec<u8>) -> Self {
        KeyPart::Bytes(b)
    }
}

/// Encode a key (a list of parts) to the bytes a Deno client sends.
pub fn encode_key(parts: &[KeyPart]) -> Vec<u8> {
    let mut out = Vec::new();
    for part in parts {
        encode_key_part_into(&mut out, part);
    }
    out
}

/// Append the encoding of one part to `out` (a key is its parts' encodings concatenated).
pub fn encode_key_part_into(out: &mut Vec<u8>, part: &KeyPart) {
    match part {
        KeyPart::Bytes(b) => encode_escaped(out, TAG_BYTES, b),
        KeyPart::String(s) => encode_escaped(out, TAG_STRING, s.as_bytes()),
        KeyPart::Int(i) => encode_int(out, i),
        KeyPart::Float(x) => {
            out.push(TAG_FLOAT);
            out.extend_from_slice(&float_to_key_bytes(*x));
        }
        KeyPart::False => out.push(TAG_FALSE),
        KeyPart::True => out.push(TAG_TRUE),
    }
}

fn encode_escaped(out: &mut Vec<u8>, tag: u8, data: &[u8]) {
    out.push(tag);
    for &b in data {
        out.push(b);
        if b == 0 {
            out.push(ESCAPE);
        }
    }
    out.push(0);
}

fn encode_int(out: &mut Vec<u8>, i: &KeyInt) {
    let n = i.magnitude.len();
    if n == 0 {
        out.push(TAG_INT_ZERO);
        return;
    }
    // n ≤ 255 by KeyInt's invariant, so the casts are exact.
    match (i.negative, n <= SHORT_INT_BYTES) {
        (false, true) => out.push(TAG_INT_ZERO + n as u8),
        (false, false) => out.extend_from_slice(&[TAG_POS_INT_LONG, n as u8]),
        (true, true) => out.push(TAG_INT_ZERO - n as u8),
        (true, false) => out.extend_from_slice(&[TAG_NEG_INT_LONG, (n as u8) ^ 0xff]),
    }
    if i.negative {
        out.extend(i.magnitude.iter().map(|b| !b));
    } else {
        out.extend_from_slice(&i.magnitude);
    }
}

fn float_to_key_bytes(x: f64) -> [u8; 8] {
    let bits = canonicalize_f64(x).to_bits();
    let flipped = if bits & SIGN_BIT != 0 { !bits } else { bits ^ SIGN_BIT };
    flipped.to_be_bytes()
}

fn float_from_key_bytes(bytes: [u8; 8]) -> f64 {
    let u = u64::from_be_bytes(bytes);
    f64::from_bits(if u & SIGN_BIT == 0 { !u } else { u ^ SIGN_BIT })
}

/// Decode key bytes into parts. Strict: see the module docs.
pub fn decode_key(bytes: &[u8]) -> Result<Vec<KeyPart>, KeyError> {
    let mut parts = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let (part, next) = decode_part(bytes, pos)?;
        parts.push(part);
        pos = next;
    }
    Ok(parts)
}

fn take<'a>(bytes: &'a [u8], from: usize, n: usize, offset: usize, what: &'static str) -> Result<&'a [u8], KeyError> {
    bytes.get(from..from + n).ok_or(KeyError::UnexpectedEnd { offset, what })
}

/// Decode the part starting at `offset`; returns it and the offset after it.
fn decode_part(bytes: &[u8], offset: usize) -> Result<(KeyPart, usize), KeyError> {
    let tag = bytes[offset];
    let body = offset + 1;
    match tag {
        TAG_BYTES => {
            let (data, next) = decode_escaped(bytes, body, offset, "bytes")?;
            Ok((KeyPart::Bytes(data), next))
        }
        TAG_STRING => {
            let (data, next) = decode_escaped(bytes, body, offset, "string")?;
            let s = String::from_utf8(data).map_err(|_| KeyError::InvalidUtf8 { offset })?;
            Ok((KeyPart::String(s), next))
        }
        TAG_INT_ZERO => Ok((KeyPart::Int(KeyInt::zero()), body)),
        TAG_NEG_INT_LONG..=TAG_POS_INT_LONG => {
            let negative = tag < TAG_INT_ZERO;
            let long = tag == TAG_POS_INT_LONG || tag == TAG_NEG_INT_LONG;
            let (n, start) = if long {
                let len_byte = *bytes.get(body).ok_or(KeyError::UnexpectedEnd { offset, what: "integer" })?;
                let n = usize::from(if negative { len_byte ^ 0xff } else { len_byte });
                if n <= SHORT_INT_BYTES {
                    return Err(KeyError::NonCanonicalInt { offset });
                }
                (n, body + 1)
            } else {
                (usize::from(tag.abs_diff(TAG_INT_ZERO)), body)
            };
            let raw = take(bytes, start, n, offset, "integer")?;
            let magnitude: Vec<u8> = if negative { raw.iter().map(|b| !b).collect() } else { raw.to_vec() };
            if magnitude.first() == Some(&0) {
                return Err(KeyError::NonCanonicalInt { offset });
            }
            Ok((KeyPart::Int(KeyInt { negative, magnitude }), start + n))
        }
        TAG_FLOAT => {
            let raw = take(bytes, body, 8, offset, "float")?;
            let mut arr = [0u8; 8];
            arr.copy_from_slice(raw);
            let x = float_from_key_bytes(arr);
            if x.to_bits() != canonicalize_f64(x).to_bits() {
                return Err(KeyError::NonCanonicalFloat { offset });
            }
            Ok((KeyPart::Float(x), body + 8))
        }
        TAG_FALSE => Ok((KeyPart::False, body)),
        TAG_TRUE => Ok((KeyPart::True, body)),
        _ => Err(KeyError::UnknownTag { offset, tag }),
    }
}

/// Unescape `0x00 0xff` → `0x00` up to the terminating lone `0x00`.
fn decode_escaped(bytes: &[u8], mut pos: usize, offset: usize, what: &'static str) -> Result<(Vec<u8>, usize), KeyError> {
    let mut out = Vec::new();
    while let Some(&b) = bytes.get(pos) {
        pos += 1;
        if b == 0 {
            if bytes.get(pos) == Some(&ESCAPE) {
                out.push(0);
                pos += 1;
            } else {
                return Ok((out, pos));
            }
        } else {
            out.push(b);
        }
    }
    Err(KeyError::UnexpectedEnd { offset, what })
}

/// The bytes a `setSuffixVersionstampedKey` mutation appends to its key: the
/// commit's versionstamp as a string part of 20 lowercase hex digits
/// (`0x02`, 20 ASCII bytes, `0x00`), as denokv's SQLite backend does. The
/// stored key is `mutation.key ++ versionstamp_key_suffix(&vs)`.
pub fn versionstamp_key_suffix(versionstamp: &[u8; 10]) -> [u8; 22] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 22];
    out[0] = TAG_STRING;
    for (i, b) in versionstamp.iter().enumerate() {
        out[1 + 2 * i] = HEX[usize::from(b >> 4)];
        out[2 + 2 * i] = HEX[usize::from(b & 0xf)];
    }
    // out[21] stays 0x00, the string terminator (hex digits never need escaping).
    out
}
