//! Bench-only native baseline: sidekv's store (`Kv` over the SQLite backend:
//! group-commit writer, reader pool) behind the same hyper HTTP/1.1 settings as `sidekv::http::serve`,
//! with the seed-compatible routing done in Rust instead of the wasm guest:
//!
//! - `GET /key`  → the raw value, 404 when absent; needs `Authorization`
//!   unless `KVSTORE_PUBLIC_READS=true` (as with sidekv)
//! - `POST /key` → `{"ok":true,"versionstamp":"…"}`; needs `Authorization`
//!
//! `Authorization` carries `KVSTORE_SECRET` (raw or `Bearer`), checked by the
//! default guest's own `secret_matches` (guest/src/auth.rs, compiled in here),
//! so both paths pay the same for it.
//!
//! - `GET /_metrics` → sidekv's Prometheus metrics (request histogram)
//!
//! Env: PORT (8000), HOST (127.0.0.1), KVSTORE_DB, KVSTORE_SECRET, KVSTORE_PUBLIC_READS,
//! NATIVE_HTTP=h1 (HTTP/1.1-only server instead of the auto h1 + h2c one).
//! Prints `listening on http://ADDR` when ready. Not a product: no admin
//! endpoints, no TTLs, no conditions, no graceful shutdown.

#[path = "../../../guest/src/auth.rs"]
mod auth;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use sidekv::backend::{Condition, Kv, Value, WriteOp, WriteResult};
use sidekv::http::HttpStatus;
use sidekv::limits;
use sidekv::metrics::METRICS;
use tokio::sync::Semaphore;

struct App {
    store: Kv,
    /// SHA-256 of KVSTORE_SECRET, the form `auth::secret_matches` takes.
    secret: Option<[u8; 32]>,
    public_reads: bool,
}

impl App {
    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let presented = req.headers().get("authorization").map(|v| v.as_bytes()).unwrap_or(b"");
        self.secret.as_ref().is_some_and(|want| auth::secret_matches(presented, want))
    }
}

fn resp(status: u16, ctype: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder().status(status).header("content-type", ctype).body(Full::new(body.into())).unwrap()
}

fn json_error(status: u16, msg: &str) -> Response<Full<Bytes>> {
    resp(status, "application/json", format!("{{\"error\":{msg:?}}}"))
}

async fn handle(app: &App, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let Some(raw) = req.uri().path().strip_prefix('/').filter(|k| !k.is_empty()) else {
        return json_error(404, "no key");
    };
    if raw == "_metrics" {
        // sidekv's own request histogram (same bookkeeping), for bench/bench.py.
        return resp(200, "text/plain", METRICS.render(&Default::default()));
    }
    let Ok(key) = percent_encoding::percent_decode_str(raw).decode_utf8().map(|k| k.into_owned()) else {
        return json_error(400, "invalid key");
    };
    match *req.method() {
        Method::GET if !app.public_reads && !app.authorized(&req) => json_error(401, "wrong or missing secret"),
        Method::GET => match app.store.get(key.into_bytes()).await {
            Ok(Some(e)) => {
                let vs = e.versionstamp.to_string();
                Response::builder()
                    .header("content-type", "application/octet-stream")
                    .header("etag", format!("\"{vs}\""))
                    .header("x-versionstamp", vs)
                    .body(Full::new(Bytes::from(e.value.into_plain())))
                    .unwrap()
            }
            Ok(None) => json_error(404, "not found"),
            Err(e) => json_error(e.http_status(), &e.to_string()),
        },
        Method::POST | Method::PUT => {
            if !app.authorized(&req) {
                return json_error(401, "wrong or missing secret");
            }
            let body = match Limited::new(req.into_body(), limits::DEFAULT_MAX_BODY_BYTES).collect().await {
                Ok(c) => c.to_bytes(),
                Err(e) => return json_error(400, &e.to_string()),
            };
            let op = WriteOp::Set { key: key.into_bytes(), value: Value::bytes(body.to_vec()), ttl_ms: None, cond: Condition::default() };
            match app.store.write(op).await {
                Ok(WriteResult::Committed { versionstamp, .. }) => {
                    resp(200, "application/json", format!("{{\"ok\":true,\"versionstamp\":\"{versionstamp}\"}}"))
                }
                Ok(_) => resp(412, "application/json", "{\"ok\":false}"),
                Err(e) => json_error(e.http_status(), &e.to_string()),
            }
        }
        _ => json_error(405, "GET or POST"),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let db = env("KVSTORE_DB", "/tmp/sidekv-native.sqlite3");
    let addr = format!("{}:{}", env("HOST", "127.0.0.1"), env("PORT", "8000"));
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let store = sidekv::backend::sqlite::scratch(db.as_ref())?;
        let secret = std::env::var("KVSTORE_SECRET").ok().filter(|s| !s.is_empty());
        let public_reads = std::env::var("KVSTORE_PUBLIC_READS").is_ok_and(|v| v == "true" || v == "1");
        let app = Arc::new(App { store, secret: secret.map(|s| Sha256::digest(s.as_bytes()).into()), public_reads });
        let listener = tokio::net::TcpListener::bind(&addr).await?;
        println!("listening on http://{}", listener.local_addr()?);
        let conns = Arc::new(Semaphore::new(limits::DEFAULT_MAX_CONNECTIONS));
        // NATIVE_HTTP=h1: hyper's HTTP/1.1-only server with the same HTTP/1.1
        // settings, to measure what the auto (h1 + h2c) builder costs HTTP/1.1.
        let http1_only = std::env::var("NATIVE_HTTP").is_ok_and(|v| v == "h1");
        loop {
            let (stream, _) = listener.accept().await?;
            let Ok(permit) = conns.clone().try_acquire_owned() else { continue };
            let _ = stream.set_nodelay(true);
            let app = app.clone();
            let service = service_fn(move |req: Request<Incoming>| {
                let app = app.clone();
                async move {
                    // Same per-request bookkeeping as sidekv's http::handle.
                    let started = Instant::now();
                    let method = req.method().as_str().to_owned();
                    let r = handle(&app, req).await;
                    METRICS.request(&method, r.status().as_u16(), started.elapsed());
                    Ok::<_, Infallible>(r)
                }
            });
            let io = TokioIo::new(stream);
            if http1_only {
                let conn = http1_builder().serve_connection(io, service);
                tokio::spawn(async move {
                    let _ = conn.await;
                    drop(permit);
                });
            } else {
                let conn = sidekv::http::connection_builder().serve_connection(io, service);
                tokio::spawn(async move {
                    let _ = conn.await;
                    drop(permit);
                });
            }
        }
    })
}

/// The HTTP/1.1 half of `sidekv::http::connection_builder`, on its own.
fn http1_builder() -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits::HEADER_READ_TIMEOUT)
        .max_buf_size(limits::MAX_HEADER_BYTES)
        .keep_alive(true);
    b
}
