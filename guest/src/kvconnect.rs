//! KV Connect: Deno KV clients (`Deno.openKv(url)`, npm `@deno/kv`) use
//! sidekv directly at `http://HOST:PORT/_kv`.
//!
//! ```text
//!  POST /_kv                 metadata exchange (JSON): version, databaseId,
//!                            one strong endpoint (/_kv), token, expiresAt
//!  POST /_kv/snapshot_read   ranges  ─▶ typed-kv.snapshot-read (one snapshot)
//!  POST /_kv/atomic_write    checks + mutations ─▶ typed-kv.atomic
//!  POST /_kv/watch           keys ─▶ the host's kv-watch stream (v3 frames)
//! ```
//!
//! Access goes through `authorize`, like REST: the token is the secret
//! (`Authorization: Bearer <secret>`), reads need read access, writes write
//! access. Answers follow what the clients do with them: 4xx is final (the
//! client throws), 5xx is retried, so a request that can never succeed
//! (malformed, over a limit, a queue operation) is always 4xx.

use sidekv_kvconnect::datapath::{self as dp, MutationType};
use sidekv_kvconnect::limits::{Limits, validate_atomic_write, validate_snapshot_read, validate_watch};
use sidekv_kvconnect::metadata::{self as md, DatabaseMetadata, DatapathHeaders, ProtocolVersion};

use crate::sidekv::store::typed_kv::{self, KeyRange, TypedCheck, TypedMutation, TypedMutationKind};
use crate::sidekv::store::types::{KvError, TypedEntry, TypedValue, ValueEncoding};
use crate::{Access, BodyStream, Request, Resp, Response, auth_config, authorize, header, header_str};

/// How long metadata stays valid; clients refresh it about once a minute anyway.
const METADATA_TTL_MS: u64 = 24 * 3600 * 1000;

fn plain(status: u16, msg: impl Into<String>) -> Resp {
    Response { status, headers: vec![("content-type".into(), b"text/plain".to_vec())], body: msg.into().into_bytes(), stream: None }
}

fn protobuf(body: Vec<u8>) -> Resp {
    Response { status: 200, headers: vec![("content-type".into(), md::CONTENT_TYPE_PROTOBUF.as_bytes().to_vec())], body, stream: None }
}

/// A store error: 4xx when retrying cannot help, 503 when it can.
fn store_error(e: KvError) -> Resp {
    match e {
        KvError::InvalidKey(m) => plain(400, format!("invalid key: {m}")),
        KvError::ValueTooLarge(limit) => plain(413, format!("a value is over the {limit}-byte limit")),
        KvError::InvalidArgument(m) => plain(400, m),
        KvError::Unavailable(m) => plain(503, m),
        KvError::StorageFull => plain(507, "the disk holding the database is full; nothing was written"),
        KvError::Internal(m) => plain(500, m),
    }
}

/// This database's id: a UUID derived from the secret, so it is stable
/// across restarts and sidecars sharing the secret.
fn database_id() -> String {
    let seed = auth_config().secret_hash.unwrap_or([0; 32]);
    let mut b: [u8; 16] = seed[..16].try_into().unwrap_or([0; 16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

fn now_ms() -> u64 {
    crate::now_ms()
}

/// `/_kv` and below: `sub` is what follows `/_kv` ("" or "/snapshot_read"...).
pub fn route(req: &Request, sub: &str) -> Result<Resp, Resp> {
    if req.method != "POST" {
        return Err(crate::method_not_allowed(&req.method, "POST"));
    }
    match sub {
        "" => metadata(req),
        "/snapshot_read" => snapshot_read(req),
        "/atomic_write" => atomic_write(req),
        "/watch" => watch(req),
        _ => Err(plain(404, format!("no KV Connect endpoint /_kv{sub}"))),
    }
}

fn metadata(req: &Request) -> Result<Resp, Resp> {
    authorize(req, Access::Read)?;
    let ask = md::parse_metadata_request(&req.body).map_err(|e| plain(e.http_status(), e.to_string()))?;
    let version = md::negotiate(&ask, &md::SUPPORTED_VERSIONS).map_err(|e| plain(e.http_status(), e.to_string()))?;
    let endpoint = if version.allows_relative_endpoint_urls() {
        "/_kv".to_string()
    } else {
        let host = header_str(req, "host")?.ok_or_else(|| plain(400, "KV Connect version 1 needs a Host header"))?;
        format!("http://{host}/_kv")
    };
    let auth = header_str(req, "authorization")?.unwrap_or_default();
    let token = md::parse_bearer(auth).unwrap_or(auth);
    let expires = (now_ms() + METADATA_TTL_MS) as i64;
    let meta = DatabaseMetadata::new(version, &database_id(), &endpoint, token, expires);
    meta.validate().map_err(|e| plain(500, e.to_string()))?;
    Ok(Response {
        status: 200,
        headers: vec![("content-type".into(), md::CONTENT_TYPE_JSON.as_bytes().to_vec())],
        body: meta.to_json().into_bytes(),
        stream: None,
    })
}

/// The version a data path request speaks (its headers must name this database).
fn datapath(req: &Request) -> Result<ProtocolVersion, Resp> {
    let h = |name| header(req, name).and_then(|v| std::str::from_utf8(v).ok());
    let headers = DatapathHeaders {
        denokv_version: h(md::HEADER_DENOKV_VERSION),
        denokv_database_id: h(md::HEADER_DENOKV_DATABASE_ID),
        transaction_domain_id: h(md::HEADER_TRANSACTION_DOMAIN_ID),
    };
    md::datapath_version(&headers, &database_id()).map_err(|e| plain(e.http_status(), e.to_string()))
}

fn entry(e: TypedEntry) -> Result<dp::KvEntry, Resp> {
    let vs = versionstamp_bytes(&e.versionstamp)?;
    let value = match e.value.encoding {
        ValueEncoding::V8 => dp::Value::V8(e.value.data),
        ValueEncoding::Bytes => dp::Value::Bytes(e.value.data),
        ValueEncoding::Le64 => match <[u8; 8]>::try_from(e.value.data.as_slice()) {
            Ok(b) => dp::Value::U64(u64::from_le_bytes(b)),
            Err(_) => dp::Value::Bytes(e.value.data),
        },
    };
    Ok(dp::KvEntry::new(e.key, value, vs))
}

fn versionstamp_bytes(vs: &str) -> Result<[u8; 10], Resp> {
    let mut out = [0u8; 10];
    if vs.len() != 20 {
        return Err(plain(500, format!("the store returned versionstamp {vs:?}")));
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&vs[2 * i..2 * i + 2], 16).map_err(|_| plain(500, format!("the store returned versionstamp {vs:?}")))?;
    }
    Ok(out)
}

fn snapshot_read(req: &Request) -> Result<Resp, Resp> {
    authorize(req, Access::Read)?;
    datapath(req)?;
    let read = dp::decode_snapshot_read(&req.body).map_err(|e| plain(400, e.to_string()))?;
    validate_snapshot_read(&read, &Limits::DENO).map_err(|e| plain(400, e.to_string()))?;
    let ranges: Vec<KeyRange> = read
        .ranges
        .into_iter()
        .map(|r| KeyRange { start: r.start, end: r.end, limit: r.limit.max(0) as u32, reverse: r.reverse })
        .collect();
    let pages = typed_kv::snapshot_read(&ranges).map_err(store_error)?;
    let outputs = pages
        .into_iter()
        .map(|entries| Ok(dp::ReadRangeOutput { values: entries.into_iter().map(entry).collect::<Result<_, Resp>>()? }))
        .collect::<Result<Vec<_>, Resp>>()?;
    Ok(protobuf(dp::encode(&dp::SnapshotReadOutput::success(outputs))))
}

fn typed(v: dp::Value) -> TypedValue {
    match v {
        dp::Value::V8(data) => TypedValue { data, encoding: ValueEncoding::V8 },
        dp::Value::U64(n) => TypedValue { data: n.to_le_bytes().to_vec(), encoding: ValueEncoding::Le64 },
        dp::Value::Bytes(data) => TypedValue { data, encoding: ValueEncoding::Bytes },
    }
}

fn mutation(i: usize, m: dp::Mutation, now: u64) -> Result<TypedMutation, Resp> {
    let bad = |why: &str| plain(400, format!("mutations[{i}]: {why}"));
    let value = || -> Result<dp::Value, Resp> {
        let v = m.value.clone().ok_or_else(|| bad("needs a value"))?;
        dp::Value::try_from(v).map_err(|e| bad(&e.to_string()))
    };
    let operand = || -> Result<u64, Resp> {
        match value()? {
            dp::Value::U64(n) => Ok(n),
            _ => Err(bad("sum, min and max need a Deno.KvU64 operand")),
        }
    };
    let kind = match MutationType::try_from(m.mutation_type) {
        Ok(MutationType::MSet) => TypedMutationKind::Set(typed(value()?)),
        Ok(MutationType::MDelete) => TypedMutationKind::Delete,
        Ok(MutationType::MSum) => TypedMutationKind::Sum(operand()?),
        Ok(MutationType::MMin) => TypedMutationKind::Min(operand()?),
        Ok(MutationType::MMax) => TypedMutationKind::Max(operand()?),
        Ok(MutationType::MSetSuffixVersionstampedKey) => TypedMutationKind::SetSuffixVersionstamped(typed(value()?)),
        _ => return Err(bad(&format!("unsupported mutation type {}", m.mutation_type))),
    };
    // An absolute expiry becomes a TTL; one already past expires at once.
    let ttl_ms = (m.expire_at_ms > 0).then(|| (m.expire_at_ms as u64).saturating_sub(now).max(1));
    Ok(TypedMutation { key: m.key, kind, ttl_ms })
}

fn atomic_write(req: &Request) -> Result<Resp, Resp> {
    authorize(req, Access::Write)?;
    datapath(req)?;
    let write = dp::decode_atomic_write(&req.body).map_err(|e| plain(400, e.to_string()))?;
    validate_atomic_write(&write, &Limits::DENO).map_err(|e| plain(400, e.to_string()))?;
    let checks = write
        .checks
        .into_iter()
        .map(|c| {
            let versionstamp = match c.versionstamp.len() {
                0 => None,
                _ => Some(c.versionstamp.iter().map(|b| format!("{b:02x}")).collect::<String>()),
            };
            TypedCheck { key: c.key, versionstamp }
        })
        .collect::<Vec<_>>();
    let now = now_ms();
    let mutations = write.mutations.into_iter().enumerate().map(|(i, m)| mutation(i, m, now)).collect::<Result<Vec<_>, Resp>>()?;
    let out = match typed_kv::atomic(&checks, &mutations).map_err(store_error)? {
        crate::kv::AtomicOutcome::Committed(vs) => dp::AtomicWriteOutput::success(versionstamp_bytes(&vs)?),
        crate::kv::AtomicOutcome::CheckFailed(i) => dp::AtomicWriteOutput::check_failure(vec![i]),
    };
    Ok(protobuf(dp::encode(&out)))
}

fn watch(req: &Request) -> Result<Resp, Resp> {
    authorize(req, Access::Read)?;
    if !datapath(req)?.supports_watch() {
        return Err(plain(400, "watch needs KV Connect version 3"));
    }
    let w = dp::decode_watch(&req.body).map_err(|e| plain(400, e.to_string()))?;
    validate_watch(&w, &Limits::DENO).map_err(|e| plain(400, e.to_string()))?;
    let keys = w.keys.into_iter().map(|k| k.key).collect();
    Ok(Response {
        status: 200,
        headers: vec![("content-type".into(), md::CONTENT_TYPE_WATCH.as_bytes().to_vec())],
        body: vec![],
        stream: Some(BodyStream::KvWatch(keys)),
    })
}
