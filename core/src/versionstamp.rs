//! Versionstamps: 10-byte commit positions shown as 20 lowercase hex chars.
//!
//! The first 8 bytes are the commit counter (one per group commit, +1 each),
//! the last 2 number the writes inside that commit, so every acknowledged
//! write has its own, strictly increasing versionstamp, and the counter alone
//! names a commit for replication and point-in-time restore. In SQLite the
//! pair is one INTEGER (`counter << 16 | index`), which orders identically.

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Versionstamp {
    pub counter: u64,
    pub index: u16,
}

/// The counter must fit in 47 bits so that `counter << 16 | index` fits a
/// positive SQLite INTEGER (i64). At one commit per microsecond that lasts
/// four years of uninterrupted commits; real loads commit far less often.
pub const MAX_COUNTER: u64 = (1 << 47) - 1;

/// Commits per versionstamp epoch. With S3 backup on, a database issues
/// counters only inside epochs reserved in S3 (`replica`): a restore starts
/// a new epoch above every reserved one, so a versionstamp handed out by a
/// database that died with unshipped commits is never handed out again.
pub const EPOCH_BITS: u32 = 32;

/// The first counter of epoch `e` (commits start at `epoch_start(e) + 1`).
pub fn epoch_start(e: u64) -> u64 {
    e << EPOCH_BITS
}

/// The last counter of epoch `e`.
pub fn epoch_end(e: u64) -> u64 {
    (epoch_start(e + 1) - 1).min(MAX_COUNTER)
}

/// The epoch holding `counter`.
pub fn epoch_of(counter: u64) -> u64 {
    counter >> EPOCH_BITS
}

/// Epochs available: `MAX_COUNTER` bounds them.
pub const MAX_EPOCH: u64 = MAX_COUNTER >> EPOCH_BITS;

impl Versionstamp {
    pub const ZERO: Versionstamp = Versionstamp { counter: 0, index: 0 };

    pub fn new(counter: u64, index: u16) -> Self {
        Versionstamp { counter, index }
    }

    /// The SQLite representation.
    pub fn to_i64(self) -> i64 {
        debug_assert!(self.counter <= MAX_COUNTER);
        ((self.counter << 16) | self.index as u64) as i64
    }

    pub fn from_i64(v: i64) -> Self {
        let v = v as u64;
        Versionstamp { counter: v >> 16, index: (v & 0xffff) as u16 }
    }

    /// The 10 bytes (counter big-endian, then index big-endian), as KV Connect carries it.
    pub fn to_bytes(self) -> [u8; 10] {
        let mut b = [0u8; 10];
        b[..8].copy_from_slice(&self.counter.to_be_bytes());
        b[8..].copy_from_slice(&self.index.to_be_bytes());
        b
    }

    /// Whether a store can ever issue this versionstamp. Every 20-hex string
    /// parses (a client may hold any of them, e.g. one from another
    /// database), but counters past `MAX_COUNTER` are never issued: a check
    /// or `If-Match` naming one simply fails, as for any version no entry has.
    pub fn issuable(self) -> bool {
        self.counter <= MAX_COUNTER
    }

    /// From the 10 bytes KV Connect carries.
    pub fn from_bytes(b: [u8; 10]) -> Self {
        let mut counter = [0u8; 8];
        counter.copy_from_slice(&b[..8]);
        Versionstamp { counter: u64::from_be_bytes(counter), index: u16::from_be_bytes([b[8], b[9]]) }
    }

    /// The first versionstamp of commit `counter`.
    pub fn commit_start(counter: u64) -> Self {
        Versionstamp { counter, index: 0 }
    }
}

impl Versionstamp {
    /// The 20 lowercase hex characters, without formatting machinery: every
    /// read returns one (header, JSON, the guest's entry), and `{:016x}`
    /// went through padding and a `write_char` per digit.
    pub fn to_hex(self) -> [u8; 20] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 20];
        for (i, b) in self.to_bytes().into_iter().enumerate() {
            out[2 * i] = HEX[(b >> 4) as usize];
            out[2 * i + 1] = HEX[(b & 0xf) as usize];
        }
        out
    }
}

impl fmt::Display for Versionstamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = self.to_hex();
        // Hex digits are ASCII: the conversion cannot fail.
        f.write_str(std::str::from_utf8(&hex).map_err(|_| fmt::Error)?)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a versionstamp is 20 lowercase hex characters, got {0:?}")]
pub struct BadVersionstamp(pub String);

/// Any 20 lowercase hex characters (the 10 bytes of KV Connect's
/// versionstamps); whether the store could have issued it is
/// [`Versionstamp::issuable`]'s question, not a syntax error.
impl FromStr for Versionstamp {
    type Err = BadVersionstamp;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadVersionstamp(s.chars().take(40).collect());
        if s.len() != 20 || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(bad());
        }
        let counter = u64::from_str_radix(&s[..16], 16).map_err(|_| bad())?;
        let index = u16::from_str_radix(&s[16..], 16).map_err(|_| bad())?;
        Ok(Versionstamp { counter, index })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_orders() {
        let a = Versionstamp::new(1, 0);
        let b = Versionstamp::new(1, 1);
        let c = Versionstamp::new(2, 0);
        assert_eq!(a.to_string(), "00000000000000010000");
        assert_eq!(c.to_string(), "00000000000000020000");
        for v in [a, b, c, Versionstamp::new(MAX_COUNTER, 65535)] {
            assert_eq!(v.to_string().parse::<Versionstamp>().unwrap(), v);
            assert_eq!(Versionstamp::from_bytes(v.to_bytes()), v);
            assert_eq!(Versionstamp::from_i64(v.to_i64()), v);
        }
        let never = Versionstamp::new(u64::MAX, 7);
        assert_eq!(Versionstamp::from_bytes(never.to_bytes()), never);
        assert_eq!(never.to_string().parse::<Versionstamp>().unwrap(), never);
        assert!(a < b && b < c);
        assert!(a.to_string() < b.to_string() && b.to_string() < c.to_string());
        assert!(a.to_i64() < b.to_i64() && b.to_i64() < c.to_i64());
    }

    #[test]
    fn rejects_malformed() {
        for s in
            ["", "0000000000000001000", "000000000000000100000", "0000000000000001000G", "0000000000000001000A", "+000000000000001000a"]
        {
            assert!(s.parse::<Versionstamp>().is_err(), "{s}");
        }
    }

    /// The hex form is the counter's 16 digits then the index's 4, as
    /// `{:016x}{:04x}` writes them, at every digit position.
    #[test]
    fn hex_matches_the_formatted_fields() {
        let mut seeds = vec![(0u64, 0u16), (MAX_COUNTER, u16::MAX), (u64::MAX, 1)];
        for shift in 0..64 {
            seeds.push((0xf << shift >> 4 | 1 << shift, (shift as u16 * 2731) ^ 0xa5a5));
        }
        for (counter, index) in seeds {
            let v = Versionstamp::new(counter, index);
            assert_eq!(v.to_string(), format!("{counter:016x}{index:04x}"));
            assert_eq!(v.to_string().parse::<Versionstamp>().unwrap(), v);
        }
    }

    /// Issue 22: denokv's e2e check `"1" + existing.substring(1)` was a 400
    /// ("… got \"10000000000000040000\""); it is a well-formed versionstamp
    /// that no store issues.
    #[test]
    fn parses_every_well_formed_versionstamp_and_knows_which_are_issued() {
        for (s, issued) in [
            ("10000000000000040000", false),
            ("ffffffffffffffffffff", false),
            ("00008000000000000000", false),
            ("00007fffffffffffffff", true),
            ("00000000000000040000", true),
        ] {
            let v = s.parse::<Versionstamp>().unwrap();
            assert_eq!(v.to_string(), s);
            assert_eq!(v.issuable(), issued, "{s}");
        }
    }
}
