//! The secret check, kept free of any WIT import so it can be measured
//! natively (bench/auth-timing includes this file).

use sha2::{Digest, Sha256};

/// Equality of two 32-byte digests without early exit.
pub fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for i in 0..32 {
        diff |= a[i] ^ b[i];
    }
    std::hint::black_box(diff) == 0
}

/// Does the presented `Authorization` value carry the secret (as is, or as
/// `Bearer <secret>`)? Candidates are hashed, then compared in constant
/// time, so the time taken depends neither on the secret nor on how much of
/// it the presented value gets right; only, through the hash, on the
/// presented value's own length.
pub fn secret_matches(presented: &[u8], want: &[u8; 32]) -> bool {
    let raw_ok = ct_eq(&Sha256::digest(presented).into(), want);
    // A `Bearer ` prefix is public knowledge: branching on it leaks nothing
    // about the secret, and saves a second hash on the common path.
    let bearer_ok = match presented.strip_prefix(b"Bearer ") {
        Some(token) => ct_eq(&Sha256::digest(token).into(), want),
        None => false,
    };
    (raw_ok | bearer_ok) & !presented.is_empty()
}
