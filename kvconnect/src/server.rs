//! The server side of KV Connect, for any guest: routing of `/_kv` requests,
//! decoding, validation against Deno's limits, access checks, and the
//! answers — generic over the store (`Store`) and over who may do what
//! (`Access`), so a guest with its own authorization (scoped tokens) serves
//! Deno clients with the same code as the default guest.
//!
//! ```text
//!  POST <base>                 metadata exchange (JSON): version, databaseId,
//!                              one strong endpoint (<base>), token, expiresAt
//!  POST <base>/snapshot_read   ranges  ─▶ Store::snapshot_read (one snapshot)
//!  POST <base>/atomic_write    checks + mutations (+ enqueues) ─▶ Store::atomic
//!                              (Store::atomic_enqueue)
//!  POST <base>/watch           keys ─▶ Answer::watch (the host streams frames)
//! ```
//!
//! Statuses follow what the clients do with them: 4xx is final (the client
//! throws), 5xx is retried forever, so a request that can never succeed
//! (malformed, over a limit, not allowed) is 4xx.

use crate::datapath::{self as dp, MutationType};
use crate::limits::{Limits, validate_atomic_write, validate_snapshot_read, validate_watch};
use crate::metadata::{self as md, DatabaseMetadata, DatapathHeaders};
use sidekv_core::Versionstamp;

/// How long metadata stays valid; clients refresh it about once a minute anyway.
pub const METADATA_TTL_MS: u64 = 24 * 3600 * 1000;

/// A request as the guest received it.
pub struct HttpIn<'a, 'h> {
    pub method: &'a str,
    /// What follows the base path: "" (metadata), "/snapshot_read", "/atomic_write", "/watch".
    pub sub_path: &'a str,
    /// A header's value by lower-case name.
    pub header: &'h dyn Fn(&str) -> Option<&'a str>,
    pub body: &'a [u8],
}

/// The answer to send; `watch` asks the host for a KV Connect watch stream of these keys.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub watch: Option<Vec<Vec<u8>>>,
}

impl Answer {
    pub fn text(status: u16, msg: impl Into<String>) -> Answer {
        Answer { status, content_type: "text/plain", body: msg.into().into_bytes(), watch: None }
    }

    fn protobuf(body: Vec<u8>) -> Answer {
        Answer { status: 200, content_type: md::CONTENT_TYPE_PROTOBUF, body, watch: None }
    }
}

/// A key range of a snapshot read: keys >= start and < end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Range {
    pub start: Vec<u8>,
    pub end: Vec<u8>,
    pub limit: u32,
    pub reverse: bool,
}

/// A stored entry for an answer.
pub struct Entry {
    pub key: Vec<u8>,
    pub value: dp::Value,
    pub versionstamp: [u8; 10],
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckReq {
    pub key: Vec<u8>,
    /// `None`: the key must be absent.
    pub versionstamp: Option<[u8; 10]>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MutationOp {
    Set(dp::Value),
    Delete,
    Sum(u64),
    Min(u64),
    Max(u64),
    SetSuffixVersionstamped(dp::Value),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MutationReq {
    pub key: Vec<u8>,
    pub op: MutationOp,
    /// Expire this long after the commit (from the client's absolute `expire_at_ms`).
    pub ttl_ms: Option<u64>,
}

/// A message to enqueue with an atomic write (`kv.enqueue`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnqueueReq {
    /// Deno's clients send V8-serialized payloads.
    pub payload: dp::Value,
    /// From the client's absolute `deadline_ms`; 0 when it is past.
    pub delay_ms: u64,
    pub keys_if_undelivered: Vec<Vec<u8>>,
    /// `None` when the client sent none: the server's default (Deno's).
    pub backoff_schedule: Option<Vec<u32>>,
}

pub enum AtomicResult {
    Committed([u8; 10]),
    /// The index of a failed check.
    CheckFailed(u32),
}

/// Why the store refused; the guest maps its own errors into these.
pub enum Failure {
    /// The request can never succeed (4xx with this status).
    Permanent(u16, String),
    /// Try again later (503): unavailable, fenced, outcome unknown...
    Retry(String),
    /// The store failed (500).
    Internal(String),
}

impl Failure {
    fn answer(self) -> Answer {
        match self {
            Failure::Permanent(status, m) => Answer::text(status, m),
            Failure::Retry(m) => Answer::text(503, m),
            Failure::Internal(m) => Answer::text(500, m),
        }
    }
}

/// The store, as a guest reaches it.
pub trait Store {
    /// Every range from one consistent snapshot.
    fn snapshot_read(&self, ranges: &[Range]) -> Result<Vec<Vec<Entry>>, Failure>;
    /// All or nothing.
    fn atomic(&self, checks: &[CheckReq], mutations: &[MutationReq]) -> Result<AtomicResult, Failure>;
    /// All or nothing, enqueueing `enqueues` in the same transaction (a
    /// failed check enqueues nothing). A store without queues refuses (400).
    fn atomic_enqueue(&self, checks: &[CheckReq], mutations: &[MutationReq], enqueues: &[EnqueueReq]) -> Result<AtomicResult, Failure> {
        let _ = (checks, mutations, enqueues);
        Err(Failure::Permanent(400, "queues (kv.enqueue) are not supported by this server's guest".into()))
    }
}

/// The guest's access rule: the `Authorization` header and what the request
/// does; `Err` is the answer (401/403).
pub type Authorize<'a> = dyn Fn(Option<&str>, Access<'_>) -> Result<(), Answer> + 'a;

/// What a request wants to do; the guest decides (its `authorize`).
pub enum Access<'a> {
    /// The metadata exchange: may this token use the database at all?
    Connect,
    /// Read these ranges / watch these keys (as one-key ranges).
    Read(&'a [Range]),
    /// Check `checks` and write `mutations` (versionstamp-suffixed keys: their prefix).
    Write(&'a [CheckReq], &'a [MutationReq]),
    /// Enqueue messages (asked after `Write` of the same request); each
    /// may write its payload to its `keys_if_undelivered` later.
    Enqueue(&'a [EnqueueReq]),
}

/// Handle one request under the base path. `authorize` gets the
/// `Authorization` header's value and what the request does; its `Err` is
/// the answer (401/403). `database_id` is a lowercase UUID; `now_ms` the
/// wall clock.
pub fn handle(req: &HttpIn<'_, '_>, base: &str, database_id: &str, now_ms: u64, store: &dyn Store, authorize: &Authorize<'_>) -> Answer {
    if req.method != "POST" {
        return Answer::text(405, format!("KV Connect endpoints take POST, not {}", req.method));
    }
    let auth = (req.header)("authorization");
    let run = || -> Result<Answer, Answer> {
        match req.sub_path {
            "" => metadata(req, auth, base, database_id, now_ms, authorize),
            "/snapshot_read" => snapshot_read(req, auth, database_id, store, authorize),
            "/atomic_write" => atomic_write(req, auth, database_id, now_ms, store, authorize),
            "/watch" => watch(req, auth, database_id, authorize),
            other => Err(Answer::text(404, format!("no KV Connect endpoint {base}{other}"))),
        }
    };
    run().unwrap_or_else(|a| a)
}

fn metadata(
    req: &HttpIn<'_, '_>,
    auth: Option<&str>,
    base: &str,
    database_id: &str,
    now_ms: u64,
    authorize: &Authorize<'_>,
) -> Result<Answer, Answer> {
    authorize(auth, Access::Connect)?;
    let ask = md::parse_metadata_request(req.body).map_err(|e| Answer::text(e.http_status(), e.to_string()))?;
    let version = md::negotiate(&ask, &md::SUPPORTED_VERSIONS).map_err(|e| Answer::text(e.http_status(), e.to_string()))?;
    let endpoint = if version.allows_relative_endpoint_urls() {
        base.to_string()
    } else {
        let host = (req.header)("host").ok_or_else(|| Answer::text(400, "KV Connect version 1 needs a Host header"))?;
        format!("http://{host}{base}")
    };
    let token = auth.map(|a| md::parse_bearer(a).unwrap_or(a)).unwrap_or_default();
    let meta = DatabaseMetadata::new(version, database_id, &endpoint, token, (now_ms + METADATA_TTL_MS) as i64);
    meta.validate().map_err(|e| Answer::text(500, e.to_string()))?;
    Ok(Answer { status: 200, content_type: md::CONTENT_TYPE_JSON, body: meta.to_json().into_bytes(), watch: None })
}

/// The data path headers must name this database.
fn datapath(req: &HttpIn<'_, '_>, database_id: &str) -> Result<md::ProtocolVersion, Answer> {
    let headers = DatapathHeaders {
        denokv_version: (req.header)(md::HEADER_DENOKV_VERSION),
        denokv_database_id: (req.header)(md::HEADER_DENOKV_DATABASE_ID),
        transaction_domain_id: (req.header)(md::HEADER_TRANSACTION_DOMAIN_ID),
    };
    md::datapath_version(&headers, database_id).map_err(|e| Answer::text(e.http_status(), e.to_string()))
}

fn snapshot_read(
    req: &HttpIn<'_, '_>,
    auth: Option<&str>,
    database_id: &str,
    store: &dyn Store,
    authorize: &Authorize<'_>,
) -> Result<Answer, Answer> {
    datapath(req, database_id)?;
    let read = dp::decode_snapshot_read(req.body).map_err(|e| Answer::text(400, e.to_string()))?;
    validate_snapshot_read(&read, &Limits::DENO).map_err(|e| Answer::text(400, e.to_string()))?;
    let ranges: Vec<Range> =
        read.ranges.into_iter().map(|r| Range { start: r.start, end: r.end, limit: r.limit.max(0) as u32, reverse: r.reverse }).collect();
    authorize(auth, Access::Read(&ranges))?;
    let pages = store.snapshot_read(&ranges).map_err(Failure::answer)?;
    let outputs = pages
        .into_iter()
        .map(|entries| dp::ReadRangeOutput {
            values: entries.into_iter().map(|e| dp::KvEntry::new(e.key, e.value, e.versionstamp)).collect(),
        })
        .collect();
    Ok(Answer::protobuf(dp::encode(&dp::SnapshotReadOutput::success(outputs))))
}

fn mutation(i: usize, m: dp::Mutation, now_ms: u64) -> Result<MutationReq, Answer> {
    let bad = |why: &str| Answer::text(400, format!("mutations[{i}]: {why}"));
    let value = || -> Result<dp::Value, Answer> {
        let v = m.value.clone().ok_or_else(|| bad("needs a value"))?;
        dp::Value::try_from(v).map_err(|e| bad(&e.to_string()))
    };
    let operand = || -> Result<u64, Answer> {
        match value()? {
            dp::Value::U64(n) => Ok(n),
            _ => Err(bad("sum, min and max need a Deno.KvU64 operand")),
        }
    };
    let op = match MutationType::try_from(m.mutation_type) {
        Ok(MutationType::MSet) => MutationOp::Set(value()?),
        Ok(MutationType::MDelete) => MutationOp::Delete,
        Ok(MutationType::MSum) => MutationOp::Sum(operand()?),
        Ok(MutationType::MMin) => MutationOp::Min(operand()?),
        Ok(MutationType::MMax) => MutationOp::Max(operand()?),
        Ok(MutationType::MSetSuffixVersionstampedKey) => MutationOp::SetSuffixVersionstamped(value()?),
        _ => return Err(bad(&format!("unsupported mutation type {}", m.mutation_type))),
    };
    // An absolute expiry becomes a TTL; one already past expires at once.
    let ttl_ms = (m.expire_at_ms > 0).then(|| (m.expire_at_ms as u64).saturating_sub(now_ms).max(1));
    Ok(MutationReq { key: m.key, op, ttl_ms })
}

fn enqueue(i: usize, e: dp::Enqueue, now_ms: u64) -> Result<EnqueueReq, Answer> {
    let delay_ms = (e.deadline_ms.max(0) as u64).saturating_sub(now_ms);
    if delay_ms > sidekv_core::limits::MAX_QUEUE_DELAY_MS {
        return Err(Answer::text(
            400,
            format!(
                "enqueues[{i}]: a delay of {delay_ms} ms is over MAX_QUEUE_DELAY_MS ({} ms, 30 days)",
                sidekv_core::limits::MAX_QUEUE_DELAY_MS
            ),
        ));
    }
    Ok(EnqueueReq {
        payload: dp::Value::V8(e.payload),
        delay_ms,
        keys_if_undelivered: e.keys_if_undelivered,
        backoff_schedule: (!e.backoff_schedule.is_empty()).then_some(e.backoff_schedule),
    })
}

fn atomic_write(
    req: &HttpIn<'_, '_>,
    auth: Option<&str>,
    database_id: &str,
    now_ms: u64,
    store: &dyn Store,
    authorize: &Authorize<'_>,
) -> Result<Answer, Answer> {
    datapath(req, database_id)?;
    let write = dp::decode_atomic_write(req.body).map_err(|e| Answer::text(400, e.to_string()))?;
    validate_atomic_write(&write, &Limits::DENO).map_err(|e| Answer::text(400, e.to_string()))?;
    let checks: Vec<CheckReq> = write
        .checks
        .into_iter()
        .enumerate()
        .map(|(i, c)| match c.versionstamp.len() {
            0 => Ok(CheckReq { key: c.key, versionstamp: None }),
            _ => <[u8; 10]>::try_from(c.versionstamp.as_slice())
                .map(|vs| CheckReq { key: c.key.clone(), versionstamp: Some(vs) })
                .map_err(|_| Answer::text(400, format!("checks[{i}]: a versionstamp is 10 bytes"))),
        })
        .collect::<Result<_, _>>()?;
    let mutations = write.mutations.into_iter().enumerate().map(|(i, m)| mutation(i, m, now_ms)).collect::<Result<Vec<_>, _>>()?;
    let enqueues = write.enqueues.into_iter().enumerate().map(|(i, e)| enqueue(i, e, now_ms)).collect::<Result<Vec<_>, _>>()?;
    authorize(auth, Access::Write(&checks, &mutations))?;
    let result = if enqueues.is_empty() {
        store.atomic(&checks, &mutations)
    } else {
        authorize(auth, Access::Enqueue(&enqueues))?;
        store.atomic_enqueue(&checks, &mutations, &enqueues)
    };
    let out = match result.map_err(Failure::answer)? {
        AtomicResult::Committed(vs) => dp::AtomicWriteOutput::success(vs),
        AtomicResult::CheckFailed(i) => dp::AtomicWriteOutput::check_failure(vec![i]),
    };
    Ok(Answer::protobuf(dp::encode(&out)))
}

fn watch(req: &HttpIn<'_, '_>, auth: Option<&str>, database_id: &str, authorize: &Authorize<'_>) -> Result<Answer, Answer> {
    if !datapath(req, database_id)?.supports_watch() {
        return Err(Answer::text(400, "watch needs KV Connect version 3"));
    }
    let w = dp::decode_watch(req.body).map_err(|e| Answer::text(400, e.to_string()))?;
    validate_watch(&w, &Limits::DENO).map_err(|e| Answer::text(400, e.to_string()))?;
    let keys: Vec<Vec<u8>> = w.keys.into_iter().map(|k| k.key).collect();
    let ranges: Vec<Range> = keys.iter().map(|k| Range { start: k.clone(), end: one_after(k), limit: 1, reverse: false }).collect();
    authorize(auth, Access::Read(&ranges))?;
    Ok(Answer { status: 200, content_type: md::CONTENT_TYPE_WATCH, body: vec![], watch: Some(keys) })
}

/// The smallest key after `k`: the one-key range [k, k\0).
fn one_after(k: &[u8]) -> Vec<u8> {
    let mut e = k.to_vec();
    e.push(0);
    e
}

/// A versionstamp's 20 hex characters (as the WIT and REST show it): the
/// codec of `sidekv_core::Versionstamp`.
pub fn versionstamp_hex(vs: &[u8; 10]) -> String {
    Versionstamp::from_bytes(*vs).to_string()
}

/// The 10 bytes of a 20-hex-character versionstamp.
pub fn versionstamp_from_hex(s: &str) -> Option<[u8; 10]> {
    s.parse::<Versionstamp>().ok().map(Versionstamp::to_bytes)
}

/// A guest's `Resp`-independent view of an authorization failure: turn a
/// REST-style response (status + body) into a protocol answer.
pub fn refusal(status: u16, body: &[u8]) -> Answer {
    Answer::text(status, String::from_utf8_lossy(body).into_owned())
}

/// A UUID (version-4 shaped) from the first 16 bytes of `seed`: a stable
/// database id derived from something stable (a secret's hash).
pub fn uuid_from(seed: &[u8; 32]) -> String {
    let mut b: [u8; 16] = seed[..16].try_into().unwrap_or([0; 16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// Whether every key of `range` starts with `prefix` (for prefix-scoped access).
pub fn range_within(range: &Range, prefix: &[u8]) -> bool {
    let upper = sidekv_core::validate::prefix_upper_bound(prefix);
    range.start.as_slice() >= prefix && upper.as_deref().is_none_or(|u| range.end.as_slice() <= u)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// A store in memory, recording what it was asked.
    #[derive(Default)]
    struct Mem {
        writes: RefCell<Vec<(Vec<CheckReq>, Vec<MutationReq>)>>,
    }

    impl Store for Mem {
        fn snapshot_read(&self, ranges: &[Range]) -> Result<Vec<Vec<Entry>>, Failure> {
            Ok(ranges
                .iter()
                .map(|r| vec![Entry { key: r.start.clone(), value: dp::Value::U64(7), versionstamp: [0, 0, 0, 0, 0, 0, 0, 1, 0, 0] }])
                .collect())
        }
        fn atomic(&self, checks: &[CheckReq], mutations: &[MutationReq]) -> Result<AtomicResult, Failure> {
            self.writes.borrow_mut().push((checks.to_vec(), mutations.to_vec()));
            Ok(AtomicResult::Committed([0, 0, 0, 0, 0, 0, 0, 2, 0, 0]))
        }
    }

    const DB: &str = "00000000-0000-4000-8000-000000000000";

    fn call(sub: &str, headers: &[(&str, &str)], body: &[u8], store: &Mem, allow: bool) -> Answer {
        let h = |name: &str| headers.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
        let req = HttpIn { method: "POST", sub_path: sub, header: &h, body };
        let authorize = |_: Option<&str>, _: Access<'_>| if allow { Ok(()) } else { Err(Answer::text(403, "not for this token")) };
        handle(&req, "/_kv", DB, 1_000, store, &authorize)
    }

    const V3: &[(&str, &str)] = &[("authorization", "Bearer t"), ("x-denokv-version", "3"), ("x-denokv-database-id", DB)];

    #[test]
    fn metadata_echoes_the_token_and_names_one_strong_endpoint() {
        let a = call("", &[("authorization", "Bearer tok")], br#"{"supportedVersions":[1,2,3]}"#, &Mem::default(), true);
        assert_eq!((a.status, a.content_type), (200, "application/json"));
        let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(v["version"], 3);
        assert_eq!(v["token"], "tok");
        assert_eq!(v["endpoints"][0]["url"], "/_kv");
        assert_eq!(v["endpoints"][0]["consistency"], "strong");
        assert_eq!(call("", &[], b"", &Mem::default(), false).status, 403);
    }

    #[test]
    fn writes_are_decoded_authorized_and_answered() {
        let m = dp::Mutation {
            key: b"k".to_vec(),
            value: Some(dp::Value::U64(3).into()),
            mutation_type: MutationType::MSum as i32,
            expire_at_ms: 1_500,
            ..Default::default()
        };
        let body = dp::encode(&dp::AtomicWrite { mutations: vec![m], ..Default::default() });
        let store = Mem::default();
        let a = call("/atomic_write", V3, &body, &store, true);
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
        let out: dp::AtomicWriteOutput = dp::decode(&a.body).unwrap();
        assert_eq!(out.versionstamp, vec![0, 0, 0, 0, 0, 0, 0, 2, 0, 0]);
        assert_eq!(store.writes.borrow()[0].1, vec![MutationReq { key: b"k".to_vec(), op: MutationOp::Sum(3), ttl_ms: Some(500) }]);
        // Refused by the guest: nothing reaches the store.
        let store = Mem::default();
        assert_eq!(call("/atomic_write", V3, &body, &store, false).status, 403);
        assert!(store.writes.borrow().is_empty());
        // A database id of another database is a permanent error.
        let wrong =
            [("authorization", "Bearer t"), ("x-denokv-version", "3"), ("x-denokv-database-id", "11111111-0000-4000-8000-000000000000")];
        assert!((400..500).contains(&call("/atomic_write", &wrong, &body, &Mem::default(), true).status));
        // A sum of a non-u64 is a 400.
        let m = dp::Mutation {
            key: b"k".to_vec(),
            value: Some(dp::Value::Bytes(vec![1]).into()),
            mutation_type: MutationType::MSum as i32,
            ..Default::default()
        };
        let body = dp::encode(&dp::AtomicWrite { mutations: vec![m], ..Default::default() });
        assert_eq!(call("/atomic_write", V3, &body, &Mem::default(), true).status, 400);
    }

    #[test]
    fn watches_hand_the_keys_to_the_host() {
        let body = dp::encode(&dp::Watch { keys: vec![dp::WatchKey { key: b"a".to_vec() }] });
        let a = call("/watch", V3, &body, &Mem::default(), true);
        assert_eq!((a.status, a.watch), (200, Some(vec![b"a".to_vec()])));
    }

    #[test]
    fn versionstamps_and_ids() {
        let vs = [0, 0, 0, 0, 0, 0, 0, 1, 0, 2];
        assert_eq!(versionstamp_hex(&vs), "00000000000000010002");
        assert_eq!(versionstamp_from_hex("00000000000000010002"), Some(vs));
        assert_eq!(versionstamp_from_hex("0000000000000001000"), None);
        assert_eq!(versionstamp_from_hex("0000000000000001000g"), None);
        let id = uuid_from(&[0xab; 32]);
        assert_eq!(id, "abababab-abab-4bab-abab-abababababab");
        assert!(crate::metadata::DatabaseMetadata::new(crate::metadata::ProtocolVersion::V3, &id, "/_kv", "t", 1).validate().is_ok());
    }

    #[test]
    fn prefix_scopes() {
        let r = |s: &[u8], e: &[u8]| Range { start: s.to_vec(), end: e.to_vec(), limit: 1, reverse: false };
        assert!(range_within(&r(b"\x02users\x00\x00", b"\x02users\x00\xff"), b"\x02users\x00"));
        assert!(!range_within(&r(b"\x02users\x00", b"\x02v"), b"\x02users\x00"));
        assert!(!range_within(&r(b"\x02a", b"\x02users\x00\xff"), b"\x02users\x00"));
    }
}
