//! The segment format: a run of whole commits from the changelog.
//!
//! ```text
//! zstd( "SKVSEG02"                 (one or more concatenated zstd frames:
//!                                     the writer compresses the header on its own)
//!       first u64 | last u64 | records u32 | flags u8 | writer u64   (big-endian)
//!       records: version i64 | index u32 | key_len u16 | key
//!                | kind u8 (0 delete, 1 set, 2 set+expiry, 3 typed set,
//!                           4 typed set+expiry, 5 queue message state,
//!                           6 queue message gone) [| expires_at u64]
//!                [| encoding u8 (kinds 3, 4)] [| value_len u32 | value]
//!       crc32c u32 of everything above )
//! ```
//!
//! `first..=last` are the commit counters the segment covers (a commit may
//! have no records, e.g. a delete-prefix that matched nothing). Segments
//! are named by `first`, so two writers continuing the same history collide
//! on the object name, which `If-None-Match: *` turns into fencing.
//!
//! `writer` identifies the database file that shipped it (random, new for
//! every restored file), so a writer can recognise its own objects after a
//! crash. Flag `BASE` marks a segment with no records that stands for
//! commits `first..=last` held only by snapshot `last`: it is how a backup
//! that must restart from a snapshot claims its place in the history (the
//! name is still the fencing token). Version 1 segments (`SKVSEG01`, no
//! flags or writer) are still read. A value that is not plain bytes (a u64
//! counter, a V8 value) is a "typed set" carrying its encoding code; plain
//! bytes keep kinds 1 and 2, so a segment of untyped data is byte-for-byte
//! what earlier versions wrote.
//!
//! Queue messages (`store::queue`) are logged under reserved keys
//! (`QUEUE_LOG_PREFIX` + id) with kinds 5 (value = the message's state) and
//! 6 (delivered or dead-lettered): a segment without queue traffic is
//! unchanged, and a sidekv from before queues refuses one with it (an
//! unknown kind) instead of restoring messages as keys.

use sidekv_core::Encoding;

use super::ReplicaError;

const MAGIC: &[u8; 8] = b"SKVSEG02";
const MAGIC_V1: &[u8; 8] = b"SKVSEG01";
/// The segment stands for commits held only by the snapshot of its last commit.
pub const BASE: u8 = 1;

pub use crate::backend::sqlite::store::outbox::Record;
use crate::backend::sqlite::store::outbox::{RecordRef, RecordSink};
use crate::backend::sqlite::store::{StoreError, queue};

/// zstd level of segments.
const LEVEL: i32 = 3;
/// zstd window of a segment's records (2^18 = 256 KiB). Level 3 would take
/// 2 MiB, and a streaming context keeps its whole window: the compressor's
/// memory while a segment is built drops from ~3.4 MiB to ~1.2 MiB, and
/// records hardly repeat across more than 256 KiB of log.
const WINDOW_LOG: u32 = 18;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub first: u64,
    pub last: u64,
    pub records: Vec<Record>,
    pub flags: u8,
    pub writer: u64,
}

impl Segment {
    pub fn is_base(&self) -> bool {
        self.flags & BASE != 0
    }

    pub fn encode(&self) -> Result<Vec<u8>, ReplicaError> {
        let mut w = SegmentWriter::new()?;
        for r in &self.records {
            w.push(&r.as_ref()).map_err(compressing)?;
        }
        w.finish(self.first, self.last, self.flags, self.writer)
    }

    pub fn decode(compressed: &[u8], name: &str) -> Result<Segment, ReplicaError> {
        let bad = |why: &str| ReplicaError::Corrupt(format!("segment {name}: {why}"));
        let mut dec = zstd::stream::Decoder::new(compressed).map_err(|e| bad(&format!("not zstd: {e}")))?;
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut dec, &mut b).map_err(|e| bad(&format!("not zstd: {e}")))?;
        let v1 = b.get(..8) == Some(MAGIC_V1.as_slice());
        if b.len() < MAGIC.len() + 24 || !(v1 || &b[..8] == MAGIC) {
            return Err(bad("not a sidekv segment (bad magic)"));
        }
        let (body, crc) = b.split_at(b.len() - 4);
        if crc32c::crc32c(body) != u32::from_be_bytes(crc.try_into().unwrap()) {
            return Err(bad("checksum mismatch"));
        }
        let mut r = Reader { b: body, pos: 8 };
        let first = r.u64().ok_or_else(|| bad("truncated header"))?;
        let last = r.u64().ok_or_else(|| bad("truncated header"))?;
        let count = r.u32().ok_or_else(|| bad("truncated header"))?;
        let (flags, writer) =
            if v1 { (0, 0) } else { (r.u8().ok_or_else(|| bad("truncated header"))?, r.u64().ok_or_else(|| bad("truncated header"))?) };
        if flags & !BASE != 0 {
            return Err(bad("unknown flags (written by a newer sidekv?)"));
        }
        if flags & BASE != 0 && count != 0 {
            return Err(bad("a base segment with records"));
        }
        if last < first {
            return Err(bad("last commit before first"));
        }
        let mut records = Vec::with_capacity((count as usize).min(1 << 20));
        for _ in 0..count {
            let rec = (|| {
                let version = r.u64()? as i64;
                let n = r.u32()?;
                let klen = r.u16()? as usize;
                let key = r.bytes(klen)?.to_vec();
                let kind = r.u8()?;
                let (value, expires_at, encoding) = match kind {
                    0 | 6 => (None, None, Encoding::Bytes),
                    5 => {
                        let vlen = r.u32()? as usize;
                        (Some(r.bytes(vlen)?.to_vec()), None, Encoding::Bytes)
                    }
                    1..=4 => {
                        let exp = if kind % 2 == 0 { Some(r.u64()? as i64) } else { None };
                        let encoding = if kind >= 3 { Encoding::from_code(r.u8()?)? } else { Encoding::Bytes };
                        let vlen = r.u32()? as usize;
                        (Some(r.bytes(vlen)?.to_vec()), exp, encoding)
                    }
                    _ => return None,
                };
                // Queue kinds only under queue keys, and queue keys only with them.
                if (kind >= 5) != queue::is_queue_key(&key) {
                    return None;
                }
                Some(Record { version, index: n, key, value, expires_at, encoding })
            })()
            .ok_or_else(|| bad("truncated or malformed record"))?;
            let c = (rec.version as u64) >> 16;
            if c < first || c > last {
                return Err(bad("record outside the segment's commit range"));
            }
            records.push(rec);
        }
        if r.pos != body.len() {
            return Err(bad("trailing bytes"));
        }
        Ok(Segment { first, last, records, flags, writer })
    }
}

/// Encodes a segment as its records arrive, so a segment is never held as
/// records nor uncompressed: each record goes straight into a zstd frame,
/// with a running crc32c. The header, known only at the end (`last`, the
/// count), is compressed as a first frame of its own and the checksum of
/// header + records is combined from the two. Concatenated zstd frames
/// decompress to the one byte stream the format above describes (every
/// zstd decoder, this one's and `zstd -d`, reads them as one).
pub struct SegmentWriter {
    records: zstd::stream::write::Encoder<'static, Vec<u8>>,
    crc: u32,
    len: usize,
    count: u32,
    scratch: Vec<u8>,
}

fn compressing(e: std::io::Error) -> ReplicaError {
    ReplicaError::Corrupt(format!("compressing a segment: {e}"))
}

impl SegmentWriter {
    pub fn new() -> Result<SegmentWriter, ReplicaError> {
        let mut records = zstd::stream::write::Encoder::new(Vec::new(), LEVEL).map_err(compressing)?;
        records.window_log(WINDOW_LOG).map_err(compressing)?;
        Ok(SegmentWriter { records, crc: 0, len: 0, count: 0, scratch: Vec::with_capacity(256) })
    }

    pub fn push(&mut self, r: &RecordRef<'_>) -> std::io::Result<()> {
        self.scratch.clear();
        put_record(&mut self.scratch, r);
        self.crc = crc32c::crc32c_append(self.crc, &self.scratch);
        self.len += self.scratch.len();
        self.count += 1;
        std::io::Write::write_all(&mut self.records, &self.scratch)
    }

    /// The whole compressed segment.
    pub fn finish(mut self, first: u64, last: u64, flags: u8, writer: u64) -> Result<Vec<u8>, ReplicaError> {
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&first.to_be_bytes());
        header.extend_from_slice(&last.to_be_bytes());
        header.extend_from_slice(&self.count.to_be_bytes());
        header.push(flags);
        header.extend_from_slice(&writer.to_be_bytes());
        let crc = crc32c::crc32c_combine(crc32c::crc32c(&header), self.crc, self.len);
        std::io::Write::write_all(&mut self.records, &crc.to_be_bytes()).map_err(compressing)?;
        let records = self.records.finish().map_err(compressing)?;
        let mut out = zstd::bulk::compress(&header, LEVEL).map_err(compressing)?;
        out.reserve_exact(records.len());
        out.extend_from_slice(&records);
        Ok(out)
    }
}

/// The uploader's sink: records from the outbox go straight into the segment.
impl RecordSink for SegmentWriter {
    fn record(&mut self, r: &RecordRef<'_>) -> Result<(), StoreError> {
        self.push(r).map_err(|e| StoreError::Internal(format!("compressing a segment: {e}")))
    }
}

/// Magic, first, last, count, flags, writer.
const HEADER_LEN: usize = 8 + 8 + 8 + 4 + 1 + 8;

fn put_record(b: &mut Vec<u8>, r: &RecordRef<'_>) {
    b.extend_from_slice(&r.version.to_be_bytes());
    b.extend_from_slice(&r.index.to_be_bytes());
    b.extend_from_slice(&(r.key.len() as u16).to_be_bytes());
    b.extend_from_slice(r.key);
    let queued = queue::is_queue_key(r.key);
    match (r.value, r.expires_at) {
        (None, _) if queued => b.push(6),
        (Some(v), _) if queued => {
            b.push(5);
            b.extend_from_slice(&(v.len() as u32).to_be_bytes());
            b.extend_from_slice(v);
        }
        (None, _) => b.push(0),
        (Some(v), exp) => {
            let typed = r.encoding != Encoding::Bytes;
            b.push(1 + exp.is_some() as u8 + 2 * typed as u8);
            if let Some(e) = exp {
                b.extend_from_slice(&(e as u64).to_be_bytes());
            }
            if typed {
                b.push(r.encoding.code());
            }
            b.extend_from_slice(&(v.len() as u32).to_be_bytes());
            b.extend_from_slice(v);
        }
    }
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.bytes(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.bytes(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.bytes(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.bytes(8)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Segment {
        Segment {
            first: 5,
            last: 7,
            records: vec![
                Record {
                    version: (5 << 16),
                    index: 0,
                    key: b"a".to_vec(),
                    value: Some(b"1".to_vec()),
                    expires_at: None,
                    encoding: Encoding::Bytes,
                },
                Record { version: (6 << 16) | 2, index: 1, key: b"b".to_vec(), value: None, expires_at: None, encoding: Encoding::Bytes },
                Record {
                    version: 7 << 16,
                    index: 0,
                    key: "ü".as_bytes().to_vec(),
                    value: Some(vec![0, 255]),
                    expires_at: Some(99),
                    encoding: Encoding::Bytes,
                },
            ],
            flags: 0,
            writer: 42,
        }
    }

    fn typed() -> Segment {
        Segment {
            first: 8,
            last: 8,
            records: vec![
                Record {
                    version: 8 << 16,
                    index: 0,
                    key: b"c".to_vec(),
                    value: Some(vec![5, 0, 0, 0, 0, 0, 0, 0]),
                    expires_at: None,
                    encoding: Encoding::Le64,
                },
                Record {
                    version: 8 << 16,
                    index: 1,
                    key: b"d".to_vec(),
                    value: Some(vec![0xff, 0x0f]),
                    expires_at: Some(7),
                    encoding: Encoding::V8,
                },
            ],
            flags: 0,
            writer: 42,
        }
    }

    fn queued() -> Segment {
        let key = [crate::backend::sqlite::store::queue::QUEUE_LOG_PREFIX, b"000000000000000900000000"].concat();
        Segment {
            first: 9,
            last: 9,
            records: vec![
                Record {
                    version: 9 << 16,
                    index: 0,
                    key: key.clone(),
                    value: Some(vec![7; 20]),
                    expires_at: None,
                    encoding: Encoding::Bytes,
                },
                Record { version: 9 << 16, index: 1, key, value: None, expires_at: None, encoding: Encoding::Bytes },
            ],
            flags: 0,
            writer: 42,
        }
    }

    #[test]
    fn round_trip() {
        for s in [sample(), typed(), queued()] {
            assert_eq!(Segment::decode(&s.encode().unwrap(), "t").unwrap(), s);
        }
    }

    /// A streamed segment (header frame + records frame) decompresses to
    /// the byte layout of a single-frame one, which decodes the same: what
    /// an earlier sidekv wrote and what it reads.
    #[test]
    fn streamed_frames_are_the_single_frame_layout() {
        for s in [sample(), typed(), queued(), Segment { records: vec![], flags: BASE, ..sample() }] {
            let raw = zstd::decode_all(&s.encode().unwrap()[..]).unwrap();
            assert_eq!(&raw[..8], MAGIC);
            assert_eq!(&raw[8..16], &s.first.to_be_bytes());
            assert_eq!(&raw[16..24], &s.last.to_be_bytes());
            assert_eq!(&raw[24..28], &(s.records.len() as u32).to_be_bytes());
            assert_eq!(raw.len(), HEADER_LEN + s.records.iter().map(encoded_len).sum::<usize>() + 4);
            assert_eq!(Segment::decode(&zstd::bulk::compress(&raw, 3).unwrap(), "single").unwrap(), s);
        }
    }

    fn encoded_len(r: &Record) -> usize {
        let mut b = Vec::new();
        put_record(&mut b, &r.as_ref());
        b.len()
    }

    /// A segment much larger than the compressor's window and its blocks,
    /// with values that do not compress, round-trips.
    #[test]
    fn large_segments_round_trip() {
        let mut x = 1u64;
        let records: Vec<Record> = (0..3000u64)
            .map(|i| Record {
                version: ((10 + i / 3) << 16) as i64 | (i % 3) as i64,
                index: (i % 3) as u32,
                key: format!("key/{i:06}").into_bytes(),
                value: Some(
                    (0..500)
                        .map(|_| {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            x as u8
                        })
                        .collect(),
                ),
                expires_at: None,
                encoding: Encoding::Bytes,
            })
            .collect();
        let s = Segment { first: 10, last: 1009, records, flags: 0, writer: 7 };
        let enc = s.encode().unwrap();
        assert!(enc.len() > 1 << WINDOW_LOG, "incompressible: {} bytes", enc.len());
        assert_eq!(Segment::decode(&enc, "big").unwrap(), s);
    }

    #[test]
    fn untyped_records_keep_the_earlier_layout() {
        // Kinds 1 and 2 only: an older sidekv reads backups of untyped data.
        let raw = zstd::decode_all(&sample().encode().unwrap()[..]).unwrap();
        let kinds: Vec<u8> = [37 + 8 + 4 + 2 + 1, 37 + 8 + 4 + 2 + 1 + 1 + 4 + 1 + 8 + 4 + 2 + 1].iter().map(|&i| raw[i]).collect();
        assert_eq!(kinds, [1, 0]);
    }

    #[test]
    fn reads_version_1() {
        let s = Segment { writer: 0, ..sample() };
        let mut raw = zstd::decode_all(&s.encode().unwrap()[..]).unwrap();
        raw.truncate(raw.len() - 4);
        raw.drain(28..37); // flags + writer
        raw[..8].copy_from_slice(MAGIC_V1);
        let crc = crc32c::crc32c(&raw);
        raw.extend_from_slice(&crc.to_be_bytes());
        assert_eq!(Segment::decode(&zstd::bulk::compress(&raw, 3).unwrap(), "v1").unwrap(), s);
    }

    #[test]
    fn detects_corruption() {
        let enc = sample().encode().unwrap();
        let mut raw = zstd::decode_all(&enc[..]).unwrap();
        raw[20] ^= 1;
        let bad = zstd::bulk::compress(&raw, 3).unwrap();
        assert!(matches!(Segment::decode(&bad, "t"), Err(ReplicaError::Corrupt(m)) if m.contains("checksum")));
        assert!(Segment::decode(b"garbage", "t").is_err());
        assert!(Segment::decode(&enc[..enc.len() / 2], "t").is_err());
    }

    proptest! {
        // The decoder never panics, whatever it is fed.
        #[test]
        fn decoder_total(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Segment::decode(&data, "fuzz");
            if let Ok(c) = zstd::bulk::compress(&data, 1) { let _ = Segment::decode(&c, "fuzz"); }
            let mut framed = MAGIC.to_vec(); framed.extend_from_slice(&data);
            let crc = crc32c::crc32c(&framed); framed.extend_from_slice(&crc.to_be_bytes());
            let _ = Segment::decode(&zstd::bulk::compress(&framed, 1).unwrap(), "fuzz");
        }
    }
}
