//! Example guest: scoped tokens.
//!
//! The operator passes the tokens through the guest config:
//!
//! ```text
//! KVSTORE_GUEST_TOKENS='app-token=rw:users/,sessions/;report-token=r:*'
//! ```
//!
//! Each entry is `token=r|rw:prefix,prefix,…` (`*` = every key). A request
//! sends `Authorization: Bearer <token>`. Routes: `GET/HEAD /{key}`,
//! `POST/PUT /{key}`, `DELETE /{key}`, `GET /?prefix=` (the prefix must lie
//! inside the token's scope). Everything else is the host's `kv` interface.
//!
//! Deno KV clients connect at `/_kv` (KV Connect) with the same tokens. A
//! prefix `kv:users/admins` scopes Deno keys: the token may use keys that
//! start with the parts `["users", "admins"]` (string parts, `/`-separated);
//! every key a request reads, watches, checks or writes must be in scope.
//!
//! ```text
//! KVSTORE_GUEST_TOKENS='app-token=rw:users/,kv:users;report-token=r:kv:reports'
//! ```
//!
//! Queue scopes: `queue:send` lets a read-write token enqueue (`POST
//! /_queue`, `kv.enqueue` over KV Connect; its `keysIfUndelivered` must be
//! in the token's key scope), `queue:receive` lets it consume (`POST
//! /_queue/take`, `/_queue/ack`, `/_queue/retry`), `queue` is both.
//!
//! ```text
//! KVSTORE_GUEST_TOKENS='producer=rw:kv:jobs,queue:send;worker=rw:kv:jobs,queue:receive'
//! ```

use sha2::{Digest, Sha256};
use std::sync::OnceLock;

wit_bindgen::generate!({ path: "../../wit", world: "guest" });

use exports::sidekv::store::handler::{BodyStream, Guest, Request, Response};
use sidekv::store::{config, kv, queue, typed_kv, types};
use sidekv_kvconnect::KeyPart;
use sidekv_kvconnect::server::{self, Access, Answer};

sidekv_kvconnect::typed_kv_store!(TypedKv, queue);

/// The decision for Deno keys: every key (or range) the request touches
/// lies under one of the token's `kv:` prefixes (`*` covers all).
fn authorize_kv(req: &Request, what: Access<'_>) -> Result<(), Answer> {
    let t = token(req).map_err(|r| server::refusal(r.status, &r.body))?;
    let all = t.prefixes.iter().any(|p| p == "*");
    let key_ok = |k: &[u8]| all || t.kv_prefixes.iter().any(|p| k.starts_with(p));
    let ok = match what {
        Access::Connect => true,
        Access::Read(ranges) => ranges.iter().all(|r| all || t.kv_prefixes.iter().any(|p| server::range_within(r, p))),
        Access::Write(checks, mutations) => {
            if !t.write {
                return Err(Answer::text(403, "this token is read-only"));
            }
            checks.iter().all(|c| key_ok(&c.key)) && mutations.iter().all(|m| key_ok(&m.key))
        }
        Access::Enqueue(messages) => {
            if !t.write || !t.queue_send {
                return Err(Answer::text(403, "this token may not enqueue (needs rw and the queue:send scope)"));
            }
            messages.iter().all(|m| m.keys_if_undelivered.iter().all(|k| key_ok(k)))
        }
    };
    if ok { Ok(()) } else { Err(Answer::text(403, "this token may not use these keys")) }
}

/// KV Connect (`/_kv`): the protocol code with this guest's scopes.
fn kv_connect(req: &Request, sub: &str) -> Response {
    let header = |name: &str| req.headers.iter().find(|(k, _)| k == name).and_then(|(_, v)| std::str::from_utf8(v).ok());
    let http = server::HttpIn { method: &req.method, sub_path: sub, header: &header, body: &req.body };
    let allow = |_: Option<&str>, what: Access<'_>| authorize_kv(req, what);
    // One database id for every token: the id of this guest's scope table.
    let id = server::uuid_from(&Sha256::digest(config::get("tokens").unwrap_or_default().as_bytes()).into());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let a = server::handle(&http, "/_kv", &id, now, &TypedKv, &allow);
    Response {
        status: a.status,
        headers: vec![("content-type".into(), a.content_type.as_bytes().to_vec())],
        body: a.body,
        stream: a.watch.map(BodyStream::KvWatch),
    }
}

struct Token {
    hash: [u8; 32],
    write: bool,
    prefixes: Vec<String>,
    /// `kv:` prefixes, as Deno key tuple encodings.
    kv_prefixes: Vec<Vec<u8>>,
    /// `queue:send` / `queue`: may enqueue.
    queue_send: bool,
    /// `queue:receive` / `queue`: may take, ack and retry.
    queue_receive: bool,
}

/// `users/admins` → the tuple encoding of `["users", "admins"]`.
fn deno_prefix(p: &str) -> Vec<u8> {
    let parts: Vec<KeyPart> = p.split('/').filter(|s| !s.is_empty()).map(|s| KeyPart::String(s.to_string())).collect();
    sidekv_kvconnect::encode_key(&parts)
}

fn tokens() -> &'static [Token] {
    static T: OnceLock<Vec<Token>> = OnceLock::new();
    T.get_or_init(|| {
        config::get("tokens")
            .unwrap_or_default()
            .split(';')
            .filter_map(|e| {
                let (tok, scope) = e.trim().split_once('=')?;
                let (perm, prefixes) = scope.split_once(':')?;
                let all: Vec<String> = prefixes.split(',').map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect();
                let has = |s: &str| all.iter().any(|p| p == s || p == "queue");
                Some(Token {
                    hash: Sha256::digest(tok.as_bytes()).into(),
                    write: perm == "rw",
                    queue_send: has("queue:send"),
                    queue_receive: has("queue:receive"),
                    kv_prefixes: all.iter().filter_map(|p| p.strip_prefix("kv:")).map(deno_prefix).collect(),
                    prefixes: all.into_iter().filter(|p| !p.starts_with("kv:") && !p.starts_with("queue")).collect(),
                })
            })
            .collect()
    })
}

fn reply(status: u16, body: &str) -> Response {
    Response { status, headers: vec![("content-type".into(), b"application/json".to_vec())], body: body.as_bytes().to_vec(), stream: None }
}

/// Which token is presented. Compares against every token without stopping
/// early, on hashes, so timing reveals nothing about the tokens.
fn token(req: &Request) -> Result<&'static Token, Response> {
    let presented = req.headers.iter().find(|(k, _)| k == "authorization").map(|(_, v)| v.as_slice()).unwrap_or(&[]);
    let presented = presented.strip_prefix(b"Bearer ").unwrap_or(presented);
    let h: [u8; 32] = Sha256::digest(presented).into();
    let mut found: Option<&Token> = None;
    for t in tokens() {
        let mut diff = 0u8;
        for (a, b) in t.hash.iter().zip(h.iter()) {
            diff |= a ^ b;
        }
        if std::hint::black_box(diff) == 0 {
            found = Some(t);
        }
    }
    found.filter(|_| !presented.is_empty()).ok_or_else(|| reply(401, r#"{"error":"unknown or missing bearer token"}"#))
}

/// The one decision for REST: does the presented token's scope cover `key`
/// for this kind of access.
fn authorize(req: &Request, key: &str, write: bool) -> Result<(), Response> {
    let t = token(req)?;
    if write && !t.write {
        return Err(reply(403, r#"{"error":"this token is read-only"}"#));
    }
    if !t.prefixes.iter().any(|p| p == "*" || key.starts_with(p.as_str())) {
        return Err(reply(403, r#"{"error":"this token may not use this key"}"#));
    }
    Ok(())
}

/// A store failure, with the REST status of `sidekv_core::status` (the table
/// the host and the default guest answer from).
fn err(e: sidekv::store::types::KvError) -> Response {
    use sidekv::store::types::KvError::*;
    use sidekv_core::Failure as F;
    let (kind, m) = match e {
        InvalidKey(m) => (F::InvalidKey, m),
        InvalidArgument(m) => (F::InvalidArgument, m),
        ValueTooLarge(l) => (F::ValueTooLarge, format!("value over {l} bytes")),
        Unavailable(m) => (F::Unavailable, m),
        OutcomeUnknown(m) => (F::OutcomeUnknown, m),
        StorageFull => (F::StorageFull, "disk full".to_string()),
        Internal(m) => (F::Internal, m),
    };
    reply(kind.rest_status(), &format!("{{\"error\":{m:?}}}"))
}

struct Component;
export!(Component);

impl Guest for Component {
    fn handle(req: Request) -> Response {
        let (path, query) = req.path_with_query.split_once('?').unwrap_or((&req.path_with_query, ""));
        if let Some(sub) = path.strip_prefix("/_kv").filter(|s| s.is_empty() || s.starts_with('/')) {
            return kv_connect(&req, sub);
        }
        if let Some(sub) = path.strip_prefix("/_queue").filter(|s| s.is_empty() || s.starts_with('/')) {
            return rest_queue(&req, sub, query);
        }
        let key = path.trim_start_matches('/').to_string();
        if key.is_empty() && req.method == "GET" {
            let prefix = query.split('&').find_map(|p| p.strip_prefix("prefix=")).unwrap_or("").to_string();
            if let Err(r) = authorize(&req, &prefix, false) {
                return r;
            }
            let q = kv::ListQuery { prefix, start: None, end: None, limit: 100, reverse: false, cursor: None, keys_only: true };
            return match kv::list(&q) {
                Ok(page) => {
                    let keys: Vec<String> = page.entries.iter().map(|e| format!("{:?}", e.key)).collect();
                    reply(200, &format!("{{\"keys\":[{}]}}", keys.join(",")))
                }
                Err(e) => err(e),
            };
        }
        let write = !matches!(req.method.as_str(), "GET" | "HEAD");
        if let Err(r) = authorize(&req, &key, write) {
            return r;
        }
        let opts = kv::WriteOptions { ttl_ms: None, if_match: None, if_absent: false };
        let r = match req.method.as_str() {
            "GET" | "HEAD" => match kv::get(&key) {
                Ok(Some(e)) => Ok(Response { status: 200, headers: vec![], body: e.value, stream: None }),
                Ok(None) => Ok(reply(404, r#"{"error":"not found"}"#)),
                Err(e) => Err(e),
            },
            "POST" | "PUT" => kv::set(&key, &req.body, &opts).map(|o| match o {
                kv::WriteOutcome::Committed(vs) => reply(200, &format!(r#"{{"ok":true,"versionstamp":"{vs}"}}"#)),
                kv::WriteOutcome::PreconditionFailed => reply(412, r#"{"ok":false}"#),
            }),
            "DELETE" => kv::delete(&key, &opts).map(|_| reply(200, r#"{"ok":true}"#)),
            _ => Ok(reply(405, r#"{"error":"method not allowed"}"#)),
        };
        r.unwrap_or_else(err)
    }
}

/// The REST queue routes, under the token's queue scopes: `POST /_queue`
/// (body = payload, `?delay=ms`), `POST /_queue/take?wait=ms`, `POST
/// /_queue/ack?lease=L`, `POST /_queue/retry?lease=L`.
fn rest_queue(req: &Request, sub: &str, query: &str) -> Response {
    let t = match token(req) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let param = |name: &str| query.split('&').find_map(|p| p.strip_prefix(name)?.strip_prefix('=')).unwrap_or("");
    let send = sub.is_empty();
    if req.method != "POST" {
        return reply(405, r#"{"error":"queue endpoints take POST"}"#);
    }
    if !t.write || !(if send { t.queue_send } else { t.queue_receive }) {
        return reply(403, r#"{"error":"this token lacks the queue scope for this"}"#);
    }
    let r = match sub {
        "" => {
            let msg = queue::NewMessage {
                value: types::TypedValue { data: req.body.clone(), encoding: types::ValueEncoding::Bytes },
                delay_ms: param("delay").parse().unwrap_or(0),
                keys_if_undelivered: vec![],
                backoff_schedule: None,
            };
            queue::atomic(&[], &[], &[msg]).map(|o| match o {
                kv::AtomicOutcome::Committed(vs) => reply(200, &format!(r#"{{"ok":true,"id":"{vs}0000"}}"#)),
                kv::AtomicOutcome::CheckFailed(_) => reply(500, r#"{"error":"unexpected check failure"}"#),
            })
        }
        "/take" => queue::take(30_000, param("wait").parse().unwrap_or(0)).map(|m| match m {
            None => Response { status: 204, headers: vec![], body: vec![], stream: None },
            Some(m) => Response {
                status: 200,
                headers: vec![
                    ("x-sidekv-message-id".into(), m.id.into_bytes()),
                    ("x-sidekv-attempt".into(), m.attempt.to_string().into_bytes()),
                    ("x-sidekv-lease".into(), m.lease.into_bytes()),
                ],
                body: m.value.data,
                stream: None,
            },
        }),
        "/ack" | "/retry" => {
            let lease = param("lease");
            let held = if sub == "/ack" { queue::ack(lease) } else { queue::retry(lease) };
            held.map(|h| if h { reply(200, r#"{"ok":true}"#) } else { reply(409, r#"{"ok":false,"error":"not the current lease"}"#) })
        }
        _ => Ok(reply(404, r#"{"error":"no such queue endpoint"}"#)),
    };
    r.unwrap_or_else(err)
}
