//! The web console, served on the admin address (`KVSTORE_ADMIN_ADDR`)
//! under `/console/`: a few static files embedded in the binary, and a small
//! JSON API behind a sign-in.
//!
//! ```text
//!  browser ──▶ /console/            index.html, app.js, app.css (embedded)
//!          ──▶ POST /console/api/login {token}
//!                 guest: GET /?limit=1 with `Authorization: Bearer <token>`
//!                 200 → session (cookie: HttpOnly, SameSite=Strict) + CSRF token
//!                 else → 401 after a delay (one failed check at a time)
//!          ──▶ /console/api/…  (cookie; mutations also need X-CSRF-Token)
//!                 scan   → guest POST /_kv/snapshot_read   (exact keys, encodings)
//!                 write  → guest POST /_kv/atomic_write
//!                 rest/… → guest REST request (count, delete prefix, SSE watch,
//!                          export, import)
//!                 metrics, backup → host-side figures (still signed in)
//! ```
//!
//! Every read and write of data is a request to the same guest runtime the
//! main port uses, carrying the session's `Authorization`: the console can
//! do exactly what the token can (a scoped token sees only its keys).
//! Sessions are random 256-bit ids, kept server-side (by their SHA-256, so
//! a lookup's timing says nothing about a valid id) with an idle and an
//! absolute expiry; the CSRF token is compared in constant time.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request as HttpRequest, Response as HttpResponse, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sidekv_kvconnect::datapath as dp;

use crate::App;
use crate::guest::{Request as GuestRequest, Response as GuestResponse};
use crate::http::{Body, HttpStatus, error_response};
use crate::metrics::METRICS;

const INDEX_HTML: &str = include_str!("static/index.html");
const APP_JS: &str = include_str!("static/app.js");
const APP_CSS: &str = include_str!("static/app.css");
const FAVICON: &str = include_str!("static/favicon.svg");

const COOKIE: &str = "sidekv_console";
const CSRF_HEADER: &str = "x-csrf-token";
/// A session ends after this long without a request…
const IDLE_EXPIRY: Duration = Duration::from_secs(30 * 60);
/// …and this long after sign-in in any case.
const MAX_AGE: Duration = Duration::from_secs(12 * 3600);
const MAX_SESSIONS: usize = 256;
/// A refused sign-in answers after this long; refusals are checked one at a
/// time, so guessing runs at most one try per delay.
const BAD_SIGN_IN_DELAY: Duration = Duration::from_secs(1);
/// Most entries one scan returns (KV Connect's own cap per read).
const MAX_SCAN: i32 = 1000;
/// The backup panel waits this long for the object store's listing.
const BACKUP_LIST_TIMEOUT: Duration = Duration::from_secs(4);

/// The strict policy of the page: its own files only, no inline script or
/// style, no framing.
const PAGE_CSP: &str = "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; object-src 'none'";
/// API answers are data: nothing in them may ever run or render.
const API_CSP: &str = "default-src 'none'; frame-ancestors 'none'; sandbox";

struct Session {
    auth: String,
    /// The prefix given at sign-in (a scoped token's part of the keys).
    scope: String,
    csrf: String,
    created: Instant,
    last_used: Instant,
    /// The KV Connect database id, from the first metadata exchange.
    database_id: Option<String>,
}

/// Sessions by the SHA-256 of their id.
static SESSIONS: LazyLock<Mutex<HashMap<[u8; 32], Session>>> = LazyLock::new(|| Mutex::new(HashMap::new()));
static SIGN_IN_GATE: LazyLock<tokio::sync::Mutex<()>> = LazyLock::new(|| tokio::sync::Mutex::new(()));

/// What a request's session gives the handlers.
#[derive(Clone)]
struct Signed {
    id_hash: [u8; 32],
    auth: String,
    scope: String,
    csrf: String,
}

type Resp = HttpResponse<Body>;

/// Does this admin path belong to the console?
pub fn handles(path: &str) -> bool {
    path == "/" || path == "/console" || path.starts_with("/console/")
}

/// Serve one console request (the admin server calls this).
pub async fn handle(app: &Arc<App>, req: HttpRequest<Incoming>) -> Resp {
    let api = req.uri().path().starts_with("/console/api/");
    let mut resp = route(app, req).await;
    let h = resp.headers_mut();
    let csp = if api { API_CSP } else { PAGE_CSP };
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(csp));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    h.insert("cross-origin-resource-policy", HeaderValue::from_static("same-origin"));
    resp
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never: std::convert::Infallible| match never {}).boxed()
}

fn with_type(status: u16, ctype: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut r = HttpResponse::new(full(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

fn json_resp(status: u16, v: Value) -> Resp {
    with_type(status, "application/json", v.to_string())
}

async fn route(app: &Arc<App>, req: HttpRequest<Incoming>) -> Resp {
    let path = req.uri().path().to_owned();
    let get = matches!(req.method().as_str(), "GET" | "HEAD");
    match path.as_str() {
        "/" | "/console" if get => {
            let mut r = with_type(303, "text/plain", "see /console/\n");
            r.headers_mut().insert(header::LOCATION, HeaderValue::from_static("/console/"));
            r
        }
        "/console/" | "/console/index.html" if get => with_type(200, "text/html; charset=utf-8", INDEX_HTML),
        "/console/app.js" if get => with_type(200, "text/javascript; charset=utf-8", APP_JS),
        "/console/app.css" if get => with_type(200, "text/css; charset=utf-8", APP_CSS),
        "/console/favicon.svg" if get => with_type(200, "image/svg+xml", FAVICON),
        "/console/api/login" if req.method() == "POST" => sign_in(app, req).await,
        p if p.starts_with("/console/api/") => match api(app, req, &path).await {
            Ok(r) | Err(r) => r,
        },
        _ => error_response(404, "not found: the console is at /console/"),
    }
}

/// A query value: every byte but the unreserved ones percent-encoded.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-._~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

fn random_hex() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

fn hash_id(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// Equal in time independent of where they differ.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn cookie_id<B>(req: &HttpRequest<B>) -> Option<String> {
    req.headers().get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k == COOKIE && v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit())).then(|| v.to_string())
    })
}

fn session<B>(req: &HttpRequest<B>) -> Option<Signed> {
    let id_hash = hash_id(&cookie_id(req)?);
    let mut sessions = SESSIONS.lock().unwrap();
    let now = Instant::now();
    let s = sessions.get_mut(&id_hash)?;
    if now.duration_since(s.last_used) > IDLE_EXPIRY || now.duration_since(s.created) > MAX_AGE {
        sessions.remove(&id_hash);
        return None;
    }
    s.last_used = now;
    Some(Signed { id_hash, auth: s.auth.clone(), scope: s.scope.clone(), csrf: s.csrf.clone() })
}

/// A request that says it comes from another origin is refused (the
/// SameSite cookie and the CSRF token already stop it; this is a third lock).
fn foreign_origin<B>(req: &HttpRequest<B>) -> bool {
    let Some(origin) = req.headers().get(header::ORIGIN).and_then(|v| v.to_str().ok()) else { return false };
    let host = req.headers().get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    origin != format!("http://{host}") && origin != format!("https://{host}")
}

async fn read_body(app: &App, body: Incoming) -> Result<Vec<u8>, Resp> {
    match Limited::new(body, app.http.body.max_bytes).collect().await {
        Ok(b) => Ok(b.to_bytes().to_vec()),
        Err(e) => Err(error_response(413, &format!("request body refused: {e} (KVSTORE_MAX_BODY_BYTES)"))),
    }
}

/// One request to the guest runtime the main port uses.
async fn guest_call(
    app: &App,
    method: &str,
    path_with_query: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
) -> Result<GuestResponse, Resp> {
    let guest = app.guest().ok_or_else(|| error_response(503, &app.not_ready_reason()))?;
    let req = GuestRequest { method: method.to_owned(), path_with_query, headers, body };
    guest.handle(req).await.map_err(|e| error_response(e.http_status(), &e.to_string()))
}

fn auth_header(s: &str) -> (String, Vec<u8>) {
    ("authorization".into(), s.as_bytes().to_vec())
}

/// The guest's error text, for a message (JSON `error` or plain text).
fn guest_message(r: &GuestResponse) -> String {
    let text = String::from_utf8_lossy(&r.body);
    serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| text.chars().take(300).collect())
}

async fn sign_in(app: &Arc<App>, req: HttpRequest<Incoming>) -> Resp {
    if foreign_origin(&req) {
        return error_response(403, "sign-in from another origin refused");
    }
    let body = match Limited::new(req.into_body(), 16 * 1024).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return error_response(413, "the sign-in request is too large"),
    };
    let form = serde_json::from_slice::<Value>(&body).unwrap_or_default();
    let field = |name: &str| form.get(name).and_then(Value::as_str).map(|t| t.trim().to_owned()).unwrap_or_default();
    let (token, scope) = (field("token"), field("prefix"));
    // Checked one at a time: a refusal holds the gate for its delay.
    let _gate = SIGN_IN_GATE.lock().await;
    let refuse = |msg: String| async move {
        tokio::time::sleep(BAD_SIGN_IN_DELAY).await;
        error_response(401, &msg)
    };
    if token.is_empty() || token.len() > 4096 || token.bytes().any(|b| b.is_ascii_control()) || scope.len() > 4096 {
        return refuse("enter the secret (KVSTORE_SECRET) or a token the guest accepts".into()).await;
    }
    let auth = if token.starts_with("Bearer ") { token } else { format!("Bearer {token}") };
    // The same check every request gets: the guest decides. A list of one
    // key (within the prefix a scoped token is limited to), or else the KV
    // Connect handshake (a token scoped to Deno keys only).
    let rest_prefix = if scope.starts_with('[') { "" } else { scope.as_str() };
    let list = format!("/?limit=1&keys_only=true&prefix={}", percent_encode(rest_prefix));
    let mut r = match guest_call(app, "GET", list, vec![auth_header(&auth)], Vec::new()).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    if r.status == 403 || (r.status != 200 && scope.starts_with('[')) {
        let headers = vec![auth_header(&auth), ("content-type".into(), b"application/json".to_vec())];
        match guest_call(app, "POST", "/_kv".into(), headers, br#"{"supportedVersions":[3]}"#.to_vec()).await {
            Ok(kv) if kv.status == 200 => r = kv,
            Ok(_) => {}
            Err(e) => return e,
        }
    }
    if r.status != 200 {
        let why = if matches!(r.status, 401 | 403) { "the secret or token was not accepted".to_string() } else { guest_message(&r) };
        return refuse(format!("Sign-in failed: {why} (the guest answered {}).", r.status)).await;
    }
    let (id, csrf) = (random_hex(), random_hex());
    {
        let mut sessions = SESSIONS.lock().unwrap();
        let now = Instant::now();
        sessions.retain(|_, s| now.duration_since(s.last_used) <= IDLE_EXPIRY && now.duration_since(s.created) <= MAX_AGE);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions.iter().min_by_key(|(_, s)| s.last_used).map(|(k, _)| *k)
        {
            sessions.remove(&oldest);
        }
        sessions.insert(
            hash_id(&id),
            Session { auth, scope: scope.clone(), csrf: csrf.clone(), created: now, last_used: now, database_id: None },
        );
    }
    let mut resp = json_resp(200, session_info(app, &csrf, &scope));
    let cookie = format!("{COOKIE}={id}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}", MAX_AGE.as_secs());
    resp.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).expect("hex cookie is a valid header"));
    resp
}

fn session_info(app: &App, csrf: &str, scope: &str) -> Value {
    let postgres = app.info.postgres;
    json!({
        "csrf": csrf,
        "scope": scope,
        "backend": if postgres { "postgres" } else { "sqlite" },
        "backend_description": app.info.backend_description,
        "backup": app.info.backup.is_some(),
        "guest": app.guest().map(|g| g.guest_name()),
        "version": env!("CARGO_PKG_VERSION"),
    })
}

async fn api(app: &Arc<App>, req: HttpRequest<Incoming>, path: &str) -> Result<Resp, Resp> {
    let Some(s) = session(&req) else {
        return Err(error_response(401, "not signed in (or the session expired): sign in again"));
    };
    let mutation = !matches!(req.method().as_str(), "GET" | "HEAD");
    if mutation {
        let sent = req.headers().get(CSRF_HEADER).map(HeaderValue::as_bytes).unwrap_or_default();
        if !ct_eq(sent, s.csrf.as_bytes()) || foreign_origin(&req) {
            return Err(error_response(403, "missing or wrong CSRF token: nothing was changed (reload the console)"));
        }
    }
    let method = req.method().as_str().to_owned();
    match (method.as_str(), path) {
        ("GET", "/console/api/session") => Ok(json_resp(200, session_info(app, &s.csrf, &s.scope))),
        ("POST", "/console/api/logout") => {
            SESSIONS.lock().unwrap().remove(&s.id_hash);
            let mut r = json_resp(200, json!({ "ok": true }));
            let gone = format!("{COOKIE}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0");
            r.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&gone).expect("valid header"));
            Ok(r)
        }
        ("GET", "/console/api/metrics") => Ok(json_resp(200, metrics(app))),
        ("GET", "/console/api/backup") => Ok(json_resp(200, backup(app).await)),
        ("GET", "/console/api/scan") => scan(app, &s, req.uri().query().unwrap_or("")).await,
        ("POST", "/console/api/write") => {
            let body = read_body(app, req.into_body()).await?;
            write(app, &s, &body).await
        }
        (_, p) if p.starts_with("/console/api/rest/") => rest(app, &s, req).await,
        _ => Err(error_response(404, &format!("no console endpoint {method} {path}"))),
    }
}

// ------------------------------------------------------------- data ----

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| v.to_string())
    })
}

fn b64url_param(query: &str, name: &str) -> Result<Vec<u8>, String> {
    let v = query_param(query, name).unwrap_or_default();
    B64URL.decode(v.trim_end_matches('=')).map_err(|_| format!("`{name}` must be base64url"))
}

/// The KV Connect database id for this session (one metadata exchange).
async fn database_id(app: &App, s: &Signed) -> Result<String, Resp> {
    if let Some(id) = SESSIONS.lock().unwrap().get(&s.id_hash).and_then(|x| x.database_id.clone()) {
        return Ok(id);
    }
    let headers = vec![auth_header(&s.auth), ("content-type".into(), b"application/json".to_vec())];
    let r = guest_call(app, "POST", "/_kv".into(), headers, br#"{"supportedVersions":[3]}"#.to_vec()).await?;
    if r.status != 200 {
        return Err(error_response(r.status, &format!("the guest refused KV Connect: {}", guest_message(&r))));
    }
    let id = serde_json::from_slice::<Value>(&r.body)
        .ok()
        .and_then(|v| v.get("databaseId").and_then(Value::as_str).map(str::to_owned))
        .ok_or_else(|| error_response(502, "the guest's KV Connect metadata has no databaseId"))?;
    if let Some(x) = SESSIONS.lock().unwrap().get_mut(&s.id_hash) {
        x.database_id = Some(id.clone());
    }
    Ok(id)
}

/// A KV Connect data-path call through the guest; the protobuf answer.
async fn kv_connect(app: &App, s: &Signed, sub: &str, body: Vec<u8>) -> Result<Vec<u8>, Resp> {
    let db = database_id(app, s).await?;
    let headers = vec![
        auth_header(&s.auth),
        ("content-type".into(), b"application/x-protobuf".to_vec()),
        ("x-denokv-version".into(), b"3".to_vec()),
        ("x-denokv-database-id".into(), db.into_bytes()),
    ];
    let r = guest_call(app, "POST", format!("/_kv{sub}"), headers, body).await?;
    if r.status != 200 {
        return Err(error_response(r.status, &guest_message(&r)));
    }
    Ok(r.body)
}

fn encoding_name(e: i32) -> &'static str {
    match dp::ValueEncoding::try_from(e) {
        Ok(dp::ValueEncoding::VeV8) => "v8",
        Ok(dp::ValueEncoding::VeLe64) => "le64",
        _ => "bytes",
    }
}

fn encoding_of(name: &str) -> Option<dp::ValueEncoding> {
    match name {
        "bytes" => Some(dp::ValueEncoding::VeBytes),
        "v8" => Some(dp::ValueEncoding::VeV8),
        "le64" => Some(dp::ValueEncoding::VeLe64),
        _ => None,
    }
}

/// `GET /console/api/scan?start=&end=&limit=&reverse=` (bounds base64url):
/// exact keys and typed values, through the guest's KV Connect.
async fn scan(app: &App, s: &Signed, query: &str) -> Result<Resp, Resp> {
    let bad = |m: String| error_response(400, &m);
    let start = b64url_param(query, "start").map_err(bad)?;
    let mut end = b64url_param(query, "end").map_err(bad)?;
    if end.is_empty() {
        end = vec![0xff];
    }
    let limit = query_param(query, "limit").and_then(|l| l.parse::<i32>().ok()).unwrap_or(100).clamp(1, MAX_SCAN);
    let reverse = query_param(query, "reverse").is_some_and(|v| v == "true" || v == "1");
    let read = dp::SnapshotRead { ranges: vec![dp::ReadRange { start, end, limit, reverse }] };
    let out = kv_connect(app, s, "/snapshot_read", dp::encode(&read)).await?;
    let out: dp::SnapshotReadOutput = dp::decode(&out).map_err(|e| error_response(502, &format!("the guest's answer: {e}")))?;
    let entries: Vec<Value> = out
        .ranges
        .into_iter()
        .flat_map(|r| r.values)
        .map(|e| {
            json!({
                "key": B64.encode(&e.key),
                "value": B64.encode(&e.value),
                "encoding": encoding_name(e.encoding),
                "versionstamp": hex::encode(&e.versionstamp),
            })
        })
        .collect();
    Ok(json_resp(200, json!({ "entries": entries, "limit": limit })))
}

/// `POST /console/api/write` `{"checks":[{key, versionstamp|null}],
/// "mutations":[{key, type: set|delete, value, encoding, expire_at_ms?}]}`
/// (keys and values base64): one atomic write through the guest.
async fn write(app: &App, s: &Signed, body: &[u8]) -> Result<Resp, Resp> {
    let bad = |m: &str| error_response(400, m);
    let v: Value = serde_json::from_slice(body).map_err(|e| bad(&format!("not JSON: {e}")))?;
    let b64 = |v: &Value, what: &str| -> Result<Vec<u8>, String> {
        match v.as_str() {
            Some(t) => B64.decode(t).map_err(|_| format!("{what} is not base64")),
            None => Err(format!("{what} must be a base64 string")),
        }
    };
    let mut checks = Vec::new();
    for c in v.get("checks").and_then(Value::as_array).into_iter().flatten() {
        let versionstamp = match c.get("versionstamp") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(h)) => hex::decode(h).map_err(|_| bad("a check's versionstamp must be 20 hex digits"))?,
            Some(_) => return Err(bad("a check's versionstamp must be a string or null")),
        };
        checks.push(dp::Check { key: b64(&c["key"], "a check's key").map_err(|m| bad(&m))?, versionstamp });
    }
    let mut mutations = Vec::new();
    for m in v.get("mutations").and_then(Value::as_array).into_iter().flatten() {
        let key = b64(&m["key"], "a mutation's key").map_err(|m| bad(&m))?;
        let expire_at_ms = m.get("expire_at_ms").and_then(Value::as_i64).unwrap_or(0);
        let (mutation_type, value) = match m.get("type").and_then(Value::as_str) {
            Some("set") => {
                let enc =
                    encoding_of(m.get("encoding").and_then(Value::as_str).unwrap_or("bytes")).ok_or_else(|| bad("unknown encoding"))?;
                (
                    dp::MutationType::MSet,
                    Some(dp::KvValue { data: b64(&m["value"], "a mutation's value").map_err(|m| bad(&m))?, encoding: enc.into() }),
                )
            }
            Some("delete") => (dp::MutationType::MDelete, None),
            _ => return Err(bad("a mutation's type must be \"set\" or \"delete\"")),
        };
        mutations.push(dp::Mutation { key, value, mutation_type: mutation_type.into(), expire_at_ms, ..Default::default() });
    }
    if mutations.is_empty() {
        return Err(bad("no mutations"));
    }
    let w = dp::AtomicWrite { checks, mutations, enqueues: Vec::new() };
    let out = kv_connect(app, s, "/atomic_write", dp::encode(&w)).await?;
    let out: dp::AtomicWriteOutput = dp::decode(&out).map_err(|e| error_response(502, &format!("the guest's answer: {e}")))?;
    match dp::AtomicWriteStatus::try_from(out.status) {
        Ok(dp::AtomicWriteStatus::AwSuccess) => Ok(json_resp(200, json!({ "ok": true, "versionstamp": hex::encode(out.versionstamp) }))),
        Ok(dp::AtomicWriteStatus::AwCheckFailure) => {
            Err(error_response(409, "the key changed since it was read (or exists already): nothing was written; reload it"))
        }
        _ => Err(error_response(503, "the write was refused (write disabled)")),
    }
}

/// `/console/api/rest/<path>?<query>`: the guest's REST API with the
/// session's credentials (counts, prefix deletes, the SSE watch, export,
/// import). Values come back as data, never as a page.
async fn rest(app: &Arc<App>, s: &Signed, req: HttpRequest<Incoming>) -> Result<Resp, Resp> {
    let (parts, body) = req.into_parts();
    let rest = &parts.uri.path()["/console/api/rest".len()..];
    let path_with_query = match parts.uri.query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_string(),
    };
    let mut headers = vec![auth_header(&s.auth)];
    for name in ["content-type", "if-match", "if-none-match", "last-event-id", "accept"] {
        if let Some(v) = parts.headers.get(name) {
            headers.push((name.to_string(), v.as_bytes().to_vec()));
        }
    }
    let body = read_body(app, body).await?;
    let r = guest_call(app, parts.method.as_str(), path_with_query, headers, body).await?;
    let mut resp = crate::http::to_http(app, r).await.map_err(|e| error_response(500, &format!("the guest's answer: {e}")))?;
    let ctype = resp.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let known = ["application/json", "text/event-stream", "application/x-ndjson"].iter().any(|t| ctype.starts_with(t));
    if !known {
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    }
    Ok(resp)
}

// ------------------------------------------------- metrics and backup ----

fn metrics(app: &App) -> Value {
    let mut v = METRICS.console_json();
    v["t_ms"] = json!(crate::backend::now_ms());
    v["committed"] = json!(app.kv().map_or(0, |kv| kv.committed()));
    v
}

async fn backup(app: &App) -> Value {
    let info = &app.info;
    let postgres = info.postgres;
    let sync_interval = info.backup.as_ref().map_or(std::time::Duration::ZERO, |b| b.sync_interval);
    let Some(kv) = app.kv() else {
        return json!({ "backend": if postgres { "postgres" } else { "sqlite" }, "starting": app.not_ready_reason() });
    };
    let st = kv.status();
    let g = &st.replication;
    let lag_commits = g.committed.saturating_sub(g.shipped);
    let warning = if postgres {
        None
    } else if !g.enabled {
        Some("not backed up: KVSTORE_S3_URL is not set, so this database lives only on this disk".to_string())
    } else if let Some(why) = &st.not_ready {
        Some(format!("not backed up: {why}"))
    } else {
        // The replica says when commits wait for S3 longer than they should
        // (`Replica::not_backed_up_reason`): one judgement, shown everywhere.
        st.degraded.clone()
    };
    let mut out = json!({
        "backend": if postgres { "postgres" } else { "sqlite" },
        "backend_description": info.backend_description,
        "enabled": g.enabled,
        "durability": info.backup.as_ref().map_or("local".to_string(), |b| format!("{:?}", b.durability).to_lowercase()),
        // s3://bucket/prefix or file:///dir: no credentials in it.
        "store": info.backup.as_ref().map(|b| b.url.clone()),
        "sync_interval_ms": sync_interval.as_millis() as u64,
        "committed": g.committed,
        "shipped": g.shipped,
        "lag_commits": lag_commits,
        "lag_seconds": g.lag_seconds,
        "fenced": g.fenced,
        "not_backed_up": g.not_backed_up,
        "degraded": st.degraded,
        "not_ready": st.not_ready,
        "backed_up": !postgres && warning.is_none(),
        "warning": warning,
        "metrics": METRICS.console_json(),
    });
    if g.enabled {
        match tokio::time::timeout(BACKUP_LIST_TIMEOUT, kv.backend().backup_report()).await {
            Ok(Some(Ok(report))) => out["report"] = report,
            Ok(Some(Err(e))) => out["report_error"] = json!(e),
            Ok(None) => {}
            Err(_) => out["report_error"] = json!(format!("the object store did not answer within {} s", BACKUP_LIST_TIMEOUT.as_secs())),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding() {
        assert_eq!(percent_encode("users/a b&c=1"), "users%2Fa%20b%26c%3D1");
        assert_eq!(percent_encode("\u{2}x\0"), "%02x%00");
    }

    #[test]
    fn constant_time_equality() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert!(!ct_eq(b"", b"a"));
    }

    #[test]
    fn cookie_parsing_takes_only_well_formed_ids() {
        let id = "a".repeat(64);
        let req = HttpRequest::builder().header("cookie", format!("x=1; {COOKIE}={id}; y=2")).body(()).unwrap();
        assert_eq!(cookie_id(&req), Some(id));
        let req = HttpRequest::builder().header("cookie", format!("{COOKIE}=../etc")).body(()).unwrap();
        assert_eq!(cookie_id(&req), None);
    }

    #[test]
    fn origin_check() {
        let same = HttpRequest::builder().header("host", "127.0.0.1:9090").header("origin", "http://127.0.0.1:9090").body(()).unwrap();
        assert!(!foreign_origin(&same));
        let other = HttpRequest::builder().header("host", "127.0.0.1:9090").header("origin", "http://evil.example").body(()).unwrap();
        assert!(foreign_origin(&other));
        let none = HttpRequest::builder().header("host", "127.0.0.1:9090").body(()).unwrap();
        assert!(!foreign_origin(&none));
    }
}
