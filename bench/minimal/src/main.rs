//! Bench-only reference server: the least a durable key-value server over
//! HTTP/1.1 on SQLite can do, written independently of sidekv (it does not
//! link the `sidekv` crate). bench/run.sh measures sidekv and its native
//! baseline against it: the "physical limit" on this machine.
//!
//! - `GET /key`  → 200 with the raw value, 404 when absent; needs
//!   `Authorization` unless `KVSTORE_PUBLIC_READS=true`
//! - `POST /key` (or PUT) → stores the body, 200 `{"ok":true}` once the
//!   commit holding it is fsynced (group commit, `store.rs`); always needs
//!   `Authorization`
//!
//! Authorization carries `KVSTORE_SECRET` as is or as `Bearer <secret>`
//! (`auth.rs`), as with sidekv. HTTP: hyper's HTTP/1.1 server with the
//! settings sidekv uses on HTTP/1.1 (keep-alive, TCP_NODELAY, a 10 s header
//! read timeout, a 64 KiB head cap, a connection cap); no HTTP/2, no
//! metrics, no TTLs, no graceful shutdown.
//!
//! Env: PORT (8000), HOST (127.0.0.1), KVSTORE_DB, KVSTORE_SECRET,
//! KVSTORE_PUBLIC_READS. Prints `listening on http://ADDR` when ready.

mod auth;
mod store;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;

use auth::Secret;
use store::Store;

/// Longest wait for a request head (sidekv's slowloris bound).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (sidekv's).
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Largest request body (sidekv's default).
const MAX_BODY_BYTES: usize = 16 << 20;
/// Open connections at most (sidekv's default).
const MAX_CONNECTIONS: usize = 4096;

struct App {
    store: Store,
    secret: Option<Secret>,
    public_reads: bool,
}

type Resp = Response<Full<Bytes>>;

fn resp(status: u16, ctype: &str, body: impl Into<Bytes>) -> Resp {
    Response::builder().status(status).header("content-type", ctype).body(Full::new(body.into())).expect("valid response")
}

fn error(status: u16, msg: &str) -> Resp {
    resp(status, "application/json", format!("{{\"error\":{msg:?}}}"))
}

impl App {
    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let presented = req.headers().get("authorization").map(|v| v.as_bytes()).unwrap_or(b"");
        self.secret.as_ref().is_some_and(|s| s.admits(presented))
    }

    async fn handle(&self, req: Request<Incoming>) -> Resp {
        let Some(raw) = req.uri().path().strip_prefix('/').filter(|k| !k.is_empty()) else {
            return error(404, "no key");
        };
        let key = percent_encoding::percent_decode_str(raw).collect::<Vec<u8>>();
        match *req.method() {
            Method::GET => {
                if !self.public_reads && !self.authorized(&req) {
                    return error(401, "wrong or missing secret");
                }
                match self.store.get(&key) {
                    Ok(Some(v)) => resp(200, "application/octet-stream", v),
                    Ok(None) => error(404, "not found"),
                    Err(e) => error(500, &e.to_string()),
                }
            }
            Method::POST | Method::PUT => {
                if !self.authorized(&req) {
                    return error(401, "wrong or missing secret");
                }
                let body = match Limited::new(req.into_body(), MAX_BODY_BYTES).collect().await {
                    Ok(c) => c.to_bytes(),
                    Err(e) => return error(400, &e.to_string()),
                };
                match self.store.put(key, body.to_vec()).await {
                    Ok(()) => resp(200, "application/json", "{\"ok\":true}"),
                    Err(e) => error(500, &e.to_string()),
                }
            }
            _ => error(405, "GET or POST"),
        }
    }
}

fn http1() -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT).max_buf_size(MAX_HEADER_BYTES).keep_alive(true);
    b
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let db = env("KVSTORE_DB", "/tmp/sidekv-minimal.sqlite3");
    let addr = format!("{}:{}", env("HOST", "127.0.0.1"), env("PORT", "8000"));
    let app = Arc::new(App {
        store: Store::open(db.as_ref())?,
        secret: std::env::var("KVSTORE_SECRET").ok().filter(|s| !s.is_empty()).map(|s| Secret::new(&s)),
        public_reads: matches!(env("KVSTORE_PUBLIC_READS", "false").as_str(), "true" | "1"),
    });
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(serve(app, addr))
}

async fn serve(app: Arc<App>, addr: String) -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let builder = http1();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // EMFILE and friends: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = service_fn(move |req| {
            let app = app.clone();
            async move { Ok::<_, Infallible>(app.handle(req).await) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(slot);
        });
    }
}
