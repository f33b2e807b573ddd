//! sidekv's default guest: the REST API, and who may use it.
//!
//! Every HTTP request arrives as one `handler.handle` call. This guest
//! parses the path and query, decides access in exactly one function
//! (`authorize`, constant-time), and calls the host's `kv` interface.
//!
//! | request                                   | does                                  | access |
//! |-------------------------------------------|---------------------------------------|--------|
//! | `GET/HEAD /{key}`                         | raw value, `ETag: "<versionstamp>"`   | read*  |
//! | `GET /{key}?watch=<vs>&timeout=30s`       | long-poll until it changes (304 on timeout) | read* |
//! | `POST/PUT /{key}` (`?ttl=ms`, `If-Match`, `If-None-Match: *`) | store the body | write |
//! | `DELETE /{key}` (`If-Match`)              | delete                                | write  |
//! | `GET /?prefix=&start=&end=&limit=&reverse=&cursor=&keys_only=` | list | read |
//! | `GET /?prefix=P&count=true`               | `{"count":N}`                         | read   |
//! | `DELETE /?prefix=P`                       | delete a prefix atomically            | write  |
//! | `POST /_atomic`                           | checks + mutations, all or nothing    | write  |
//! | `GET /_watch?prefix=P` (`Last-Event-ID`)  | Server-Sent Events of changes         | read   |
//! | `GET /_export?prefix=P`                   | NDJSON of every entry                 | read   |
//! | `POST /_import`                           | load NDJSON                           | write  |
//! | `POST /_kv`, `/_kv/…`                     | KV Connect: Deno KV clients (`kvconnect`) | read / write |
//! | `POST /_queue`, `/_queue/take`, `/_queue/ack`, `/_queue/retry` | queues (`queue`)   | write  |
//!
//! (*) public when the operator sets `KVSTORE_PUBLIC_READS=true`.
//! Top-level keys starting with `_` are reserved for these endpoints.

use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

wit_bindgen::generate!({ path: "../wit", world: "guest" });

use exports::sidekv::store::handler::{BodyStream, Guest, Request, Response};
use sidekv::store::typed_kv::{self, TypedMutation, TypedMutationKind};
use sidekv::store::types::{KvError, TypedValue, ValueEncoding};
use sidekv::store::{config, kv};

/// Most keys listed when the client gives no `limit`.
const DEFAULT_LIST_LIMIT: u32 = 100;
// The host's limits, from the one definition both link (sidekv-core).
use sidekv_core::limits::{MAX_KEY_BYTES, MAX_TTL_MS, MAX_WATCH_TIMEOUT_MS as MAX_WATCH_MS};
/// The default long-poll.
const DEFAULT_WATCH_MS: u32 = 30_000;
/// Lines of `/_import` committed per atomic batch.
const IMPORT_BATCH: usize = 500;

struct Component;
export!(Component);

type Resp = Response;

fn response(status: u16, ctype: &str, body: Vec<u8>) -> Resp {
    Response { status, headers: vec![("content-type".into(), ctype.as_bytes().to_vec())], body, stream: None }
}

fn json_resp(status: u16, v: Value) -> Resp {
    response(status, "application/json", v.to_string().into_bytes())
}

fn error(status: u16, msg: impl Into<String>) -> Resp {
    json_resp(status, json!({ "error": msg.into() }))
}

/// A store failure as REST shows it: the status from `sidekv_core::status`.
fn kv_error(e: KvError) -> Resp {
    use sidekv_core::Failure as F;
    let (kind, msg) = match e {
        KvError::InvalidKey(m) => (F::InvalidKey, format!("invalid key: {m}")),
        KvError::ValueTooLarge(limit) => (F::ValueTooLarge, format!("the value is over the {limit}-byte limit")),
        KvError::InvalidArgument(m) => (F::InvalidArgument, m),
        KvError::Unavailable(m) => (F::Unavailable, m),
        KvError::OutcomeUnknown(m) => (F::OutcomeUnknown, m),
        KvError::StorageFull => (F::StorageFull, "the disk holding the database is full; nothing was written".into()),
        KvError::Internal(m) => (F::Internal, m),
    };
    error(kind.rest_status(), msg)
}

// ---------------------------------------------------------------- auth ----

#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Reading one key: public when `public-reads` is on.
    ReadKey,
    /// Listing, counting, watching prefixes, exporting.
    Read,
    Write,
}

struct AuthConfig {
    /// Hashed on first use: a public read never pays for it (in `fresh`
    /// instance mode every request starts from scratch).
    secret_hash: OnceLock<Option<[u8; 32]>>,
    public_reads: bool,
}

impl AuthConfig {
    fn secret_hash(&self) -> Option<&[u8; 32]> {
        self.secret_hash
            .get_or_init(|| config::get("secret").filter(|s| !s.is_empty()).map(|s| Sha256::digest(s.as_bytes()).into()))
            .as_ref()
    }
}

fn auth_config() -> &'static AuthConfig {
    static CFG: OnceLock<AuthConfig> = OnceLock::new();
    CFG.get_or_init(|| AuthConfig {
        secret_hash: OnceLock::new(),
        public_reads: config::get("public-reads").is_some_and(|v| v == "true" || v == "1"),
    })
}

mod auth;
mod kvconnect;
mod queue;
pub use auth::secret_matches;

/// The one function that decides who may do what.
fn authorize(req: &Request, access: Access) -> Result<(), Resp> {
    let cfg = auth_config();
    if access == Access::ReadKey && cfg.public_reads {
        return Ok(());
    }
    let Some(want) = cfg.secret_hash() else {
        return Err(error(401, "no secret is configured (KVSTORE_SECRET)"));
    };
    let presented = header(req, "authorization").unwrap_or(&[]);
    if secret_matches(presented, want) {
        Ok(())
    } else if presented.is_empty() {
        Err(error(401, "missing Authorization header (send `Authorization: <secret>` or `Bearer <secret>`)"))
    } else {
        Err(error(401, "wrong secret in the Authorization header"))
    }
}

// ------------------------------------------------------------- parsing ----

fn header<'a>(req: &'a Request, name: &str) -> Option<&'a [u8]> {
    req.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_slice())
}

/// A header as text. One that is present but not UTF-8 is a 400, never
/// "absent": a garbled `If-Match` must not turn into an unconditional write.
fn header_str<'a>(req: &'a Request, name: &str) -> Result<Option<&'a str>, Resp> {
    match header(req, name) {
        None => Ok(None),
        Some(v) => std::str::from_utf8(v).map(|s| Some(s.trim())).map_err(|_| error(400, format!("the {name} header is not UTF-8"))),
    }
}

/// `"<vs>"` or `<vs>`: one pair of quotes at most (an entity tag).
fn unquote(s: &str) -> &str {
    s.strip_prefix('"').and_then(|t| t.strip_suffix('"')).unwrap_or(s)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decode into UTF-8; `plus` turns `+` into a space (query strings).
fn percent_decode(s: &str, plus: bool) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let (h, l) = (b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex));
                match (h, l) {
                    (Some(h), Some(l)) => out.push(h << 4 | l),
                    _ => return Err(format!("bad percent-encoding at byte {i}")),
                }
                i += 3;
            }
            b'+' if plus => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| "it is not valid UTF-8 once percent-decoded".into())
}

struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: &str) -> Result<Query, Resp> {
        let mut v = Vec::new();
        for part in q.split('&').filter(|p| !p.is_empty()) {
            let (k, val) = part.split_once('=').unwrap_or((part, ""));
            let k = percent_decode(k, true).map_err(|e| error(400, format!("query parameter name: {e}")))?;
            let val = percent_decode(val, true).map_err(|e| error(400, format!("query parameter {k:?}: {e}")))?;
            v.push((k, val));
        }
        Ok(Query(v))
    }
    fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }
    fn flag(&self, k: &str) -> Result<bool, Resp> {
        match self.get(k) {
            None | Some("false") | Some("0") => Ok(false),
            Some("") | Some("true") | Some("1") => Ok(true),
            Some(v) => Err(error(400, format!("{k} must be true or false, got {v:?}"))),
        }
    }
    fn u64(&self, k: &str) -> Result<Option<u64>, Resp> {
        self.get(k).map(|v| decimal(v).ok_or_else(|| error(400, format!("{k} must be a non-negative integer, got {v:?}")))).transpose()
    }
}

/// A u64 written in decimal digits only (`str::parse` also takes a `+`).
fn decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A resume position of a prefix watch: `<versionstamp>` or an SSE event
/// id `<versionstamp>.<n>` (20 lowercase hex characters, `n` a u32). Whether
/// the store ever reached it is the host's answer, with its own message.
fn is_position(s: &str) -> bool {
    let (vs, n) = match s.split_once('.') {
        Some((vs, n)) => (vs, Some(n)),
        None => (s, None),
    };
    let vs_ok = vs.len() == 20 && vs.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    vs_ok && n.is_none_or(|n| decimal(n).is_some_and(|n| u32::try_from(n).is_ok()))
}

/// "30s", "500ms", "2m" or bare milliseconds.
fn parse_timeout(s: &str) -> Result<u32, Resp> {
    let bad = || error(400, format!("timeout must look like 30s, 500ms or 2m (at most {}s), got {s:?}", MAX_WATCH_MS / 1000));
    let (num, mul) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000)
    } else {
        (s, 1)
    };
    let ms = decimal(num).ok_or_else(bad)?.checked_mul(mul).ok_or_else(bad)?;
    if ms > MAX_WATCH_MS as u64 {
        return Err(bad());
    }
    Ok(ms as u32)
}

/// `?ttl=` or `X-Expire-In` (the query wins; both are checked when both
/// are given).
fn ttl(req: &Request, q: &Query) -> Result<Option<u64>, Resp> {
    let in_range = |name: &str, t: u64| {
        if (1..=MAX_TTL_MS).contains(&t) {
            Ok(t)
        } else {
            Err(error(400, format!("{name} must be 1 to {MAX_TTL_MS} milliseconds, got {t}")))
        }
    };
    let header = match header_str(req, "x-expire-in")? {
        None => None,
        Some(v) => {
            let t = decimal(v).ok_or_else(|| error(400, format!("X-Expire-In must be milliseconds, got {v:?}")))?;
            Some(in_range("X-Expire-In", t)?)
        }
    };
    let query = q.u64("ttl")?.map(|t| in_range("ttl", t)).transpose()?;
    Ok(query.or(header))
}

/// `If-Match: "<vs>"` / `If-None-Match: *` → write options.
fn conditions(req: &Request, ttl_ms: Option<u64>) -> Result<kv::WriteOptions, Resp> {
    let if_match = header_str(req, "if-match")?.map(|v| unquote(v).to_string());
    let if_absent = match header_str(req, "if-none-match")? {
        None => false,
        Some("*") => true,
        Some(v) => return Err(error(400, format!("If-None-Match supports only `*`, got {v:?}"))),
    };
    Ok(kv::WriteOptions { ttl_ms, if_match, if_absent })
}

// ------------------------------------------------------------- routing ----

impl Guest for Component {
    fn handle(req: Request) -> Response {
        route(&req).unwrap_or_else(|r| r)
    }
}

fn route(req: &Request) -> Result<Resp, Resp> {
    let (path, query) = req.path_with_query.split_once('?').unwrap_or((&req.path_with_query, ""));
    let q = Query::parse(query)?;
    let Some(raw) = path.strip_prefix('/') else {
        return Err(error(400, "the path must start with /"));
    };
    if raw.is_empty() {
        return root(req, &q);
    }
    if raw == "_kv" || raw.starts_with("_kv/") {
        return Ok(kvconnect::route(req, &raw[3..]));
    }
    if raw == "_queue" || raw.starts_with("_queue/") {
        return queue::route(req, &q, &raw[6..]);
    }
    if raw.starts_with('_') {
        return match raw {
            "_atomic" => endpoint(req, "POST", || atomic(req)),
            "_watch" => endpoint(req, "GET", || watch_prefix(req, &q)),
            "_export" => endpoint(req, "GET", || export(req, &q)),
            "_import" => endpoint(req, "POST", || import(req)),
            _ if matches!(req.method.as_str(), "GET" | "HEAD") => {
                Err(error(404, format!("no endpoint /{raw}; keys starting with _ are reserved")))
            }
            _ => {
                Err(error(400, "keys starting with _ are reserved for sidekv's endpoints (/_atomic, /_watch, /_export, /_import, /_queue)"))
            }
        };
    }
    let key = percent_decode(raw, false).map_err(|e| error(400, format!("invalid key: {e}")))?;
    // Checked again after decoding: `/%5Ffoo` is the reserved key `_foo`.
    if key.starts_with('_') {
        return Err(if matches!(req.method.as_str(), "GET" | "HEAD") {
            error(404, "not found (keys starting with _ are reserved)")
        } else {
            error(400, "keys starting with _ are reserved for sidekv's endpoints (/_atomic, /_watch, /_export, /_import)")
        });
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(error(400, format!("invalid key: {} bytes, over the {MAX_KEY_BYTES}-byte limit", key.len())));
    }
    match req.method.as_str() {
        "GET" | "HEAD" => get_key(req, &q, key),
        "POST" | "PUT" => set_key(req, &q, key),
        "DELETE" => delete_key(req, key),
        m => Err(method_not_allowed(m, "GET, HEAD, POST, PUT, DELETE")),
    }
}

fn method_not_allowed(m: &str, allow: &str) -> Resp {
    let mut r = error(405, format!("method {m} is not allowed here; use {allow}"));
    r.headers.push(("allow".into(), allow.as_bytes().to_vec()));
    r
}

fn endpoint(req: &Request, method: &str, f: impl FnOnce() -> Result<Resp, Resp>) -> Result<Resp, Resp> {
    if req.method != method {
        return Err(method_not_allowed(&req.method, method));
    }
    f()
}

fn value_response(req: &Request, e: sidekv::store::types::Entry) -> Resp {
    let mut headers = vec![
        ("content-type".into(), b"application/octet-stream".to_vec()),
        ("etag".into(), format!("\"{}\"", e.versionstamp).into_bytes()),
        ("x-versionstamp".into(), e.versionstamp.clone().into_bytes()),
    ];
    if let Some(at) = e.expires_at {
        headers.push(("x-expires-at".into(), at.to_string().into_bytes()));
    }
    let body = if req.method == "HEAD" {
        headers.push(("content-length".into(), e.value.len().to_string().into_bytes()));
        Vec::new()
    } else {
        e.value
    };
    Response { status: 200, headers, body, stream: None }
}

fn get_key(req: &Request, q: &Query, key: String) -> Result<Resp, Resp> {
    authorize(req, Access::ReadKey)?;
    // Checked even without `watch`: a bad parameter is never silently ignored.
    let timeout = q.get("timeout").map(parse_timeout).transpose()?.unwrap_or(DEFAULT_WATCH_MS);
    let if_none_match = header_str(req, "if-none-match")?;
    if let Some(since) = q.get("watch") {
        let since = match since {
            "" | "null" | "absent" => None,
            s => Some(unquote(s).to_string()),
        };
        let (changed, entry) = kv::watch(&key, since.as_deref(), timeout).map_err(kv_error)?;
        return Ok(match (changed, entry) {
            (false, _) => Response { status: 304, headers: vec![], body: vec![], stream: None },
            (true, Some(e)) => value_response(req, e),
            (true, None) => error(404, "not found"),
        });
    }
    match kv::get(&key).map_err(kv_error)? {
        Some(e) => {
            if let Some(inm) = if_none_match
                && unquote(inm) == e.versionstamp
            {
                let etag = format!("\"{}\"", e.versionstamp).into_bytes();
                return Ok(Response { status: 304, headers: vec![("etag".into(), etag)], body: vec![], stream: None });
            }
            Ok(value_response(req, e))
        }
        None if req.method == "HEAD" => Ok(Response { status: 404, headers: vec![], body: vec![], stream: None }),
        None => Err(error(404, "not found")),
    }
}

/// `X-Versionstamp` on every committed write (the host logs it per request).
fn with_vs(mut r: Resp, vs: &str) -> Resp {
    r.headers.push(("x-versionstamp".into(), vs.as_bytes().to_vec()));
    r
}

fn commit_response(o: kv::WriteOutcome) -> Resp {
    match o {
        kv::WriteOutcome::Committed(vs) => with_vs(json_resp(200, json!({ "ok": true, "versionstamp": vs })), &vs),
        kv::WriteOutcome::PreconditionFailed => json_resp(412, json!({ "ok": false })),
    }
}

fn set_key(req: &Request, q: &Query, key: String) -> Result<Resp, Resp> {
    authorize(req, Access::Write)?;
    let opts = conditions(req, ttl(req, q)?)?;
    Ok(commit_response(kv::set(&key, &req.body, &opts).map_err(kv_error)?))
}

fn delete_key(req: &Request, key: String) -> Result<Resp, Resp> {
    authorize(req, Access::Write)?;
    let opts = conditions(req, None)?;
    Ok(commit_response(kv::delete(&key, &opts).map_err(kv_error)?))
}

/// `?prefix=`: no longer than the longest key (empty = every key). Checked
/// here, before a stream starts, so `/_export` and `/_watch` answer 400
/// instead of breaking off a 200.
fn prefix_param(q: &Query) -> Result<String, Resp> {
    let p = q.get("prefix").unwrap_or("");
    if p.len() > MAX_KEY_BYTES {
        return Err(error(400, format!("prefix is {} bytes, over the {MAX_KEY_BYTES}-byte key limit", p.len())));
    }
    Ok(p.to_string())
}

/// The key a list cursor stands for: a cursor is the base64url (no padding)
/// of the last key of a page, and only valid with the same prefix.
fn cursor_key(cursor: &str, prefix: &str) -> Result<String, Resp> {
    let bad =
        || error(400, "the cursor is not one this server returned (pass back the `cursor` of the previous page, with the same prefix)");
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    let key = String::from_utf8(bytes).map_err(|_| bad())?;
    if key.is_empty() || key.len() > MAX_KEY_BYTES || !key.starts_with(prefix) {
        return Err(bad());
    }
    Ok(key)
}

fn list_query(q: &Query) -> Result<kv::ListQuery, Resp> {
    let limit = match q.u64("limit")? {
        None => DEFAULT_LIST_LIMIT,
        Some(l) => u32::try_from(l).map_err(|_| error(400, "limit is too large"))?,
    };
    let prefix = prefix_param(q)?;
    // Checked for `count=true` too, which ignores it: a bad parameter is
    // never silently accepted.
    let cursor = q.get("cursor").filter(|c| !c.is_empty()).map(str::to_string);
    if let Some(c) = &cursor {
        cursor_key(c, &prefix)?;
    }
    Ok(kv::ListQuery {
        prefix,
        start: q.get("start").map(str::to_string),
        end: q.get("end").map(str::to_string),
        limit,
        reverse: q.flag("reverse")?,
        cursor,
        keys_only: q.flag("keys_only")?,
    })
}

fn root(req: &Request, q: &Query) -> Result<Resp, Resp> {
    match req.method.as_str() {
        "GET" => {
            authorize(req, Access::Read)?;
            let lq = list_query(q)?;
            if q.flag("count")? {
                let n = kv::count(&lq).map_err(kv_error)?;
                return Ok(json_resp(200, json!({ "count": n })));
            }
            let page = kv::list(&lq).map_err(kv_error)?;
            let entries: Vec<Value> = page
                .entries
                .into_iter()
                .map(|e| {
                    let mut o = json!({ "key": e.key, "versionstamp": e.versionstamp });
                    if !lq.keys_only {
                        o["value"] = Value::String(B64.encode(&e.value));
                    }
                    if let Some(at) = e.expires_at {
                        o["expires_at"] = json!(at);
                    }
                    o
                })
                .collect();
            Ok(json_resp(200, json!({ "entries": entries, "cursor": page.cursor })))
        }
        "DELETE" => {
            authorize(req, Access::Write)?;
            let prefix = prefix_param(q)?;
            if prefix.is_empty() {
                return Err(error(400, "DELETE / needs a non-empty ?prefix= (deleting everything at once is not supported)"));
            }
            let r = kv::delete_prefix(&prefix).map_err(kv_error)?;
            Ok(json_resp(200, json!({ "ok": true, "deleted": r.deleted, "versionstamp": r.versionstamp })))
        }
        m => Err(method_not_allowed(m, "GET, DELETE")),
    }
}

// -------------------------------------------------------------- atomic ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AtomicBody {
    #[serde(default)]
    checks: Vec<Value>,
    #[serde(default)]
    mutations: Vec<Value>,
}

fn parse_check(i: usize, v: &Value) -> Result<kv::Check, Resp> {
    let bad = |m: &str| error(400, format!("checks[{i}]: {m}"));
    let o = v.as_object().ok_or_else(|| bad("must be an object"))?;
    let key = o.get("key").and_then(Value::as_str).ok_or_else(|| bad("needs a string \"key\""))?;
    let versionstamp = match o.get("versionstamp") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(bad("\"versionstamp\" must be a string or null")),
    };
    Ok(kv::Check { key: key.to_string(), versionstamp })
}

fn parse_mutation(i: usize, v: &Value) -> Result<kv::Mutation, Resp> {
    let bad = |m: &str| error(400, format!("mutations[{i}]: {m}"));
    let o = v.as_object().ok_or_else(|| bad("must be an object"))?;
    let key = o.get("key").and_then(Value::as_str).ok_or_else(|| bad("needs a string \"key\""))?;
    if key.starts_with('_') {
        return Err(bad("keys starting with _ are reserved"));
    }
    let ttl_ms = match o.get("ttl") {
        None | Some(Value::Null) => None,
        Some(t) => Some(t.as_u64().ok_or_else(|| bad("\"ttl\" must be milliseconds"))?),
    };
    let counter = || -> Result<u64, Resp> {
        match o.get("value") {
            Some(Value::String(s)) => s.parse().map_err(|_| bad("\"value\" must be a decimal u64 string")),
            Some(Value::Number(n)) => n.as_u64().ok_or_else(|| bad("\"value\" must be a decimal u64")),
            _ => Err(bad("needs a \"value\" (decimal u64)")),
        }
    };
    let kind = match o.get("type").and_then(Value::as_str) {
        Some("set") => {
            let b = o.get("value").and_then(Value::as_str).ok_or_else(|| bad("set needs a base64 string \"value\""))?;
            kv::MutationKind::Set(B64.decode(b).map_err(|_| bad("\"value\" is not valid base64"))?)
        }
        Some("delete") => kv::MutationKind::Delete,
        Some("sum") => kv::MutationKind::Sum(counter()?),
        Some("min") => kv::MutationKind::Min(counter()?),
        Some("max") => kv::MutationKind::Max(counter()?),
        Some(t) => return Err(bad(&format!("unknown type {t:?} (set, delete, sum, min, max, enqueue)"))),
        None => return Err(bad("needs a \"type\"")),
    };
    Ok(kv::Mutation { key: key.to_string(), kind, ttl_ms })
}

/// The body of `/_atomic`: a JSON object (serde alone would also take the
/// array `[checks, mutations]`).
type AtomicBatch = (Vec<kv::Check>, Vec<kv::Mutation>, Vec<sidekv::store::queue::NewMessage>);

fn atomic_body(body: &[u8]) -> Result<AtomicBatch, Resp> {
    let bad = |e: &dyn std::fmt::Display| error(400, format!("the body is not a valid atomic batch: {e}"));
    let v: Value = serde_json::from_slice(body).map_err(|e| bad(&e))?;
    if !v.is_object() {
        return Err(bad(&r#"it must be a JSON object {"checks": [...], "mutations": [...]}"#));
    }
    let body: AtomicBody = serde_json::from_value(v).map_err(|e| bad(&e))?;
    let checks = body.checks.iter().enumerate().map(|(i, c)| parse_check(i, c)).collect::<Result<Vec<_>, _>>()?;
    let (mut mutations, mut enqueues) = (Vec::new(), Vec::new());
    for (i, m) in body.mutations.iter().enumerate() {
        match m.as_object() {
            Some(o) if o.get("type").and_then(Value::as_str) == Some("enqueue") => enqueues.push(queue::parse_enqueue(i, o)?),
            _ => mutations.push(parse_mutation(i, m)?),
        }
    }
    Ok((checks, mutations, enqueues))
}

/// `/_atomic` with enqueues goes through `queue.atomic`, with typed keys and values.
fn atomic_with_enqueues(
    checks: Vec<kv::Check>,
    mutations: Vec<kv::Mutation>,
    enqueues: Vec<sidekv::store::queue::NewMessage>,
) -> Result<kv::AtomicOutcome, KvError> {
    let checks: Vec<typed_kv::TypedCheck> =
        checks.into_iter().map(|c| typed_kv::TypedCheck { key: c.key.into_bytes(), versionstamp: c.versionstamp }).collect();
    let mutations: Vec<TypedMutation> = mutations
        .into_iter()
        .map(|m| TypedMutation {
            key: m.key.into_bytes(),
            ttl_ms: m.ttl_ms,
            kind: match m.kind {
                kv::MutationKind::Set(v) => TypedMutationKind::Set(TypedValue { data: v, encoding: ValueEncoding::Bytes }),
                kv::MutationKind::Delete => TypedMutationKind::Delete,
                kv::MutationKind::Sum(x) => TypedMutationKind::Sum(x),
                kv::MutationKind::Min(x) => TypedMutationKind::Min(x),
                kv::MutationKind::Max(x) => TypedMutationKind::Max(x),
            },
        })
        .collect();
    sidekv::store::queue::atomic(&checks, &mutations, &enqueues)
}

fn atomic(req: &Request) -> Result<Resp, Resp> {
    authorize(req, Access::Write)?;
    let (checks, mutations, enqueues) = atomic_body(&req.body)?;
    let outcome = if enqueues.is_empty() { kv::atomic(&checks, &mutations) } else { atomic_with_enqueues(checks, mutations, enqueues) };
    match outcome.map_err(kv_error)? {
        kv::AtomicOutcome::Committed(vs) => Ok(with_vs(json_resp(200, json!({ "ok": true, "versionstamp": vs })), &vs)),
        kv::AtomicOutcome::CheckFailed(i) => Ok(json_resp(409, json!({ "ok": false, "failed_check": i }))),
    }
}

// ------------------------------------------------------ watch / export ----

fn stream(ctype: &str, s: BodyStream) -> Resp {
    Response {
        status: 200,
        headers: vec![("content-type".into(), ctype.as_bytes().to_vec()), ("cache-control".into(), b"no-cache".to_vec())],
        body: Vec::new(),
        stream: Some(s),
    }
}

fn watch_prefix(req: &Request, q: &Query) -> Result<Resp, Resp> {
    authorize(req, Access::Read)?;
    let prefix = prefix_param(q)?;
    // Both are checked when both are given, though `after` wins.
    let last_event_id = header_str(req, "last-event-id")?;
    for (name, v) in [("after", q.get("after")), ("Last-Event-ID", last_event_id)] {
        if let Some(v) = v.filter(|v| !v.is_empty() && !is_position(v)) {
            return Err(error(400, format!("{name} must be a versionstamp or an event id <versionstamp>.<n>, got {v:?}")));
        }
    }
    let after = q.get("after").or(last_event_id).filter(|s| !s.is_empty()).map(str::to_string);
    Ok(stream("text/event-stream", BodyStream::WatchPrefix((prefix, after))))
}

fn export(req: &Request, q: &Query) -> Result<Resp, Resp> {
    authorize(req, Access::Read)?;
    Ok(stream("application/x-ndjson", BodyStream::Export(prefix_param(q)?)))
}

use sidekv_core::now_ms;

/// Load NDJSON (`{"key":…,"value":<base64>,"expires_at":<unix ms>?}` per
/// line, the `/_export` format) in atomic batches. Every bad line is
/// reported by number and skipped; good lines are imported. If the store
/// rejects a batch, its lines are retried one by one so the error lands on
/// the line that caused it.
fn import(req: &Request) -> Result<Resp, Resp> {
    authorize(req, Access::Write)?;
    let text = std::str::from_utf8(&req.body).map_err(|_| error(400, "the body is not UTF-8 NDJSON"))?;
    let max_value = config::get("max-value-bytes").and_then(|v| v.parse::<usize>().ok()).unwrap_or(usize::MAX);
    let mut errors: Vec<Value> = Vec::new();
    let mut batch: Vec<(usize, TypedMutation)> = Vec::new();
    let mut imported = 0u64;
    let mut expired = 0u64;
    let now = now_ms();
    let describe = |e: KvError| match e {
        KvError::InvalidKey(m) => format!("invalid key: {m}"),
        KvError::ValueTooLarge(l) => format!("the value is over the {l}-byte limit"),
        KvError::InvalidArgument(m) | KvError::Unavailable(m) | KvError::OutcomeUnknown(m) | KvError::Internal(m) => m,
        KvError::StorageFull => "the disk is full".into(),
    };
    // Typed, so Deno values (V8, u64) and binary keys come back exactly.
    let flush = |batch: &mut Vec<(usize, TypedMutation)>, imported: &mut u64, errors: &mut Vec<Value>| -> Result<(), Resp> {
        if batch.is_empty() {
            return Ok(());
        }
        let muts: Vec<TypedMutation> = batch.iter().map(|(_, m)| m.clone()).collect();
        match typed_kv::atomic(&[], &muts) {
            Ok(_) => *imported += batch.len() as u64,
            Err(KvError::Unavailable(m)) => return Err(error(503, format!("{m} ({imported} lines imported before this)"))),
            Err(KvError::StorageFull) => return Err(error(507, format!("the disk is full ({imported} lines imported before this)"))),
            Err(_) => {
                for (line, m) in batch.iter() {
                    match typed_kv::atomic(&[], std::slice::from_ref(m)) {
                        Ok(_) => *imported += 1,
                        Err(e) => errors.push(json!({ "line": line, "error": describe(e) })),
                    }
                }
            }
        }
        batch.clear();
        Ok(())
    };
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        // A pending queue message (a whole-store export ends with them).
        if line.contains("\"queue_message\"") {
            let r = queue::import_line(line, now).and_then(|m| {
                sidekv::store::queue::atomic(&[], &[], std::slice::from_ref(&m)).map_err(&describe)?;
                Ok(())
            });
            match r {
                Ok(()) => imported += 1,
                Err(e) => errors.push(json!({ "line": n, "error": e })),
            }
            continue;
        }
        match import_line(line, now, max_value) {
            Ok(Some(m)) => {
                batch.push((n, m));
                if batch.len() >= IMPORT_BATCH {
                    flush(&mut batch, &mut imported, &mut errors)?;
                }
            }
            Ok(None) => expired += 1,
            Err(e) => errors.push(json!({ "line": n, "error": e })),
        }
    }
    flush(&mut batch, &mut imported, &mut errors)?;
    errors.sort_by_key(|e| e["line"].as_u64());
    let status = if errors.is_empty() { 200 } else { 400 };
    Ok(json_resp(status, json!({ "ok": errors.is_empty(), "imported": imported, "skipped_expired": expired, "errors": errors })))
}

/// One NDJSON line (the export format) as a typed set; `None` when it has expired.
fn import_line(line: &str, now: u64, max_value: usize) -> Result<Option<TypedMutation>, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    // `key` is always there (the export writes it); `key_b64`, when given,
    // is the exact key (one that is not UTF-8).
    let text_key = v.get("key").and_then(Value::as_str).ok_or("needs a string \"key\"")?;
    let key: Vec<u8> = match v.get("key_b64") {
        Some(k) => B64.decode(k.as_str().ok_or("\"key_b64\" must be a base64 string")?).map_err(|_| "\"key_b64\" is not valid base64")?,
        None => text_key.as_bytes().to_vec(),
    };
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(format!("key must be 1..={MAX_KEY_BYTES} bytes"));
    }
    if key[0] == b'_' {
        return Err("keys starting with _ are reserved".into());
    }
    let value = v.get("value").and_then(Value::as_str).ok_or("needs a base64 string \"value\"")?;
    let value = B64.decode(value).map_err(|_| "\"value\" is not valid base64".to_string())?;
    if value.len() > max_value {
        return Err(format!("the value is {} bytes, over the {max_value}-byte limit", value.len()));
    }
    let value = match v.get("encoding").and_then(Value::as_str).unwrap_or("bytes") {
        "bytes" => TypedValue { data: value, encoding: ValueEncoding::Bytes },
        "v8" => TypedValue { data: value, encoding: ValueEncoding::V8 },
        "le64" => {
            let n = std::str::from_utf8(&value).ok().and_then(|s| s.parse::<u64>().ok()).ok_or("a le64 \"value\" is a decimal u64")?;
            TypedValue { data: n.to_le_bytes().to_vec(), encoding: ValueEncoding::Le64 }
        }
        other => return Err(format!("\"encoding\" {other:?} is not bytes, v8 or le64")),
    };
    let ttl_ms = match v.get("expires_at") {
        None | Some(Value::Null) => None,
        Some(at) => {
            let at = at.as_u64().ok_or("\"expires_at\" must be unix milliseconds")?;
            if at <= now {
                return Ok(None);
            }
            if at - now > MAX_TTL_MS {
                return Err("\"expires_at\" is more than 100 years away".into());
            }
            Some(at - now)
        }
    };
    Ok(Some(TypedMutation { key, kind: TypedMutationKind::Set(value), ttl_ms }))
}

#[cfg(test)]
mod tests {
    use super::auth::ct_eq;
    use super::*;
    use proptest::prelude::*;

    proptest! {
        // Request parsing never panics, whatever bytes arrive.
        #[test]
        fn parsing_is_total(s in ".*", raw in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = percent_decode(&s, false);
            let _ = percent_decode(&s, true);
            let _ = Query::parse(&s);
            let _ = parse_timeout(&s);
            let lossy = String::from_utf8_lossy(&raw).into_owned();
            let _ = percent_decode(&lossy, true);
        }

        // Decoding inverts encoding for every string.
        #[test]
        fn percent_round_trip(s in "\\PC*") {
            let enc: String = s.bytes().map(|b| format!("%{b:02X}")).collect();
            prop_assert_eq!(percent_decode(&enc, false).unwrap(), s);
        }

        // The auth decision: exactly the secret, raw or as a bearer token.
        #[test]
        fn secret_matches_exactly(secret in "[ -~]{1,40}", other in proptest::collection::vec(any::<u8>(), 0..80)) {
            let want: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
            prop_assert!(secret_matches(secret.as_bytes(), &want));
            let bearer = format!("Bearer {secret}");
            prop_assert!(secret_matches(bearer.as_bytes(), &want));
            let expected = other == secret.as_bytes() || other.strip_prefix(b"Bearer ") == Some(secret.as_bytes());
            prop_assert_eq!(secret_matches(&other, &want), expected);
        }
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb", false).unwrap(), "a/b");
        assert_eq!(percent_decode("a+b", false).unwrap(), "a+b");
        assert_eq!(percent_decode("a+b", true).unwrap(), "a b");
        assert_eq!(percent_decode("%C3%BC", false).unwrap(), "ü");
        assert!(percent_decode("%zz", false).is_err());
        assert!(percent_decode("%C3", false).is_err());
        assert!(percent_decode("%", false).is_err());
    }

    #[test]
    fn timeouts() {
        assert!(matches!(parse_timeout("30s"), Ok(30_000)));
        assert!(matches!(parse_timeout("250ms"), Ok(250)));
        assert!(matches!(parse_timeout("2m"), Ok(120_000)));
        assert!(parse_timeout("10m").is_err());
        assert!(parse_timeout("soon").is_err());
    }

    fn req(headers: &[(&str, &[u8])]) -> Request {
        Request {
            method: "POST".into(),
            path_with_query: "/k".into(),
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_vec())).collect(),
            body: vec![],
        }
    }

    fn status<T>(r: Result<T, Resp>) -> u16 {
        match r {
            Ok(_) => 200,
            Err(e) => e.status,
        }
    }

    const VS: &str = "00000000000000010000";

    // A conditional header that is not UTF-8 was read as absent, which
    // turned a conditional write into an unconditional one.
    #[test]
    fn garbled_condition_headers_are_rejected_not_dropped() {
        for name in ["if-match", "if-none-match", "x-expire-in"] {
            let r = req(&[(name, b"\xff\xfe")]);
            assert_eq!(status(ttl(&r, &Query(vec![])).and_then(|t| conditions(&r, t))), 400, "{name}");
        }
    }

    // If-Match is an entity tag: one pair of quotes, or none.
    #[test]
    fn if_match_strips_one_pair_of_quotes() {
        let quoted = format!("\"{VS}\"");
        let opts = conditions(&req(&[("if-match", quoted.as_bytes())]), None).unwrap_or_else(|_| panic!("accepted"));
        assert_eq!(opts.if_match.as_deref(), Some(VS));
        let opts = conditions(&req(&[("if-match", VS.as_bytes())]), None).unwrap_or_else(|_| panic!("accepted"));
        assert_eq!(opts.if_match.as_deref(), Some(VS));
        // Anything else goes to the store as is (which rejects it), not trimmed into a valid one.
        for odd in [format!("\"{VS}"), format!("\"\"{VS}\"\"")] {
            let opts = conditions(&req(&[("if-match", odd.as_bytes())]), None).unwrap_or_else(|_| panic!("accepted"));
            assert_ne!(opts.if_match.as_deref(), Some(VS), "{odd}");
        }
    }

    // A parameter that does not apply (the query's ttl wins over the
    // header; count ignores the cursor) was accepted whatever it held.
    #[test]
    fn parameters_that_do_not_apply_are_still_checked() {
        let q = Query::parse("ttl=5").unwrap_or_else(|_| panic!("parses"));
        assert_eq!(status(ttl(&req(&[("x-expire-in", b"soon")]), &q)), 400);
        assert_eq!(status(ttl(&req(&[("x-expire-in", b"0")]), &q)), 400);
        assert!(matches!(ttl(&req(&[("x-expire-in", b"7")]), &q), Ok(Some(5))));
        let q = Query::parse("count=true&cursor=%21%21%21").unwrap_or_else(|_| panic!("parses"));
        assert_eq!(status(list_query(&q)), 400);
    }

    // Numbers are decimal digits only (`str::parse` also takes `+5`).
    #[test]
    fn numbers_are_digits_only() {
        let q = Query::parse("ttl=%2B5&limit=%2B5").unwrap_or_else(|_| panic!("parses"));
        assert_eq!(status(q.u64("ttl")), 400);
        assert_eq!(status(q.u64("limit")), 400);
        assert!(parse_timeout("+5s").is_err());
        assert_eq!(status(ttl(&req(&[("x-expire-in", b"+5")]), &Query(vec![]))), 400);
        assert_eq!(decimal("0018446744073709551615"), Some(u64::MAX));
        assert_eq!(decimal("18446744073709551616"), None);
    }

    // A prefix longer than the longest key is refused before any stream
    // starts (export used to answer 200 and then break the stream off).
    #[test]
    fn prefixes_and_cursors() {
        let long = "p".repeat(MAX_KEY_BYTES + 1);
        assert_eq!(status(prefix_param(&Query(vec![("prefix".into(), long)]))), 400);
        assert!(prefix_param(&Query(vec![("prefix".into(), "p".repeat(MAX_KEY_BYTES))])).is_ok());
        let cursor = URL_SAFE_NO_PAD.encode("users/7");
        assert_eq!(cursor_key(&cursor, "users/").ok(), Some("users/7".to_string()));
        assert!(cursor_key(&cursor, "groups/").is_err());
        assert!(cursor_key(&format!("{cursor}="), "").is_err());
        assert!(cursor_key(&URL_SAFE_NO_PAD.encode([0xff, 0xfe]), "").is_err());
        assert!(cursor_key("", "").is_err());
    }

    // serde's derived Deserialize also takes a struct as an array of its
    // fields: `[[], []]` was committed as an empty batch.
    #[test]
    fn atomic_body_is_an_object() {
        assert_eq!(status(atomic_body(b"[[], []]")), 400);
        assert_eq!(status(atomic_body(b"[]")), 400);
        assert_eq!(status(atomic_body(b"null")), 400);
        assert_eq!(status(atomic_body(br#"{"checks": [], "extra": 1}"#)), 400);
        let (c, m, e) =
            atomic_body(br#"{"checks": [{"key": "a", "versionstamp": null}], "mutations": [{"type": "sum", "key": "n", "value": "2"}]}"#)
                .unwrap_or_else(|_| panic!("valid"));
        assert_eq!((c.len(), m.len(), e.len()), (1, 1, 0));
        let (_, m, e) = atomic_body(br#"{"mutations": [{"type": "enqueue", "value": "aGk=", "delay": 5, "backoff_schedule": [1]}]}"#)
            .unwrap_or_else(|_| panic!("valid"));
        assert_eq!((m.len(), e.len(), e[0].delay_ms, e[0].value.data.as_slice()), (0, 1, 5, b"hi".as_slice()));
        assert_eq!(status(atomic_body(br#"{"mutations": [{"type": "enqueue", "value": "!"}]}"#)), 400);
        assert_eq!(status(atomic_body(br#"{"mutations": [{"type": "enqueue", "value": "aGk=", "keys_if_undelivered": [1]}]}"#)), 400);
        assert!(atomic_body(b"{}").is_ok());
    }

    #[test]
    fn watch_positions() {
        assert!(is_position(VS));
        assert!(is_position(&format!("{VS}.0")));
        assert!(is_position(&format!("{VS}.4294967295")));
        assert!(is_position("00007fffffffffffffff"));
        // Well-formed but never issued: the host answers that (it is past the newest commit).
        assert!(is_position("00008000000000000000"));
        assert!(is_position("10000000000000040000"));
        assert!(!is_position(&format!("{VS}.4294967296")));
        assert!(!is_position(&format!("{VS}.")));
        assert!(!is_position(&format!("{VS}.+1")));
        assert!(!is_position("0000000000000001000G"));
        assert!(!is_position("0000000000000001000A"));
        assert!(!is_position(""));
    }

    #[test]
    fn constant_time_eq() {
        let a: [u8; 32] = Sha256::digest(b"x").into();
        let b: [u8; 32] = Sha256::digest(b"y").into();
        assert!(ct_eq(&a, &a));
        assert!(!ct_eq(&a, &b));
    }
}
