//! The HTTP front: hyper HTTP/1.1 on the main port, every request handed to
//! the guest; plus the admin endpoints on their own address.
//!
//! ```text
//!  accept ─▶ connection cap (conns.rs: evict the longest-idle, else 503)
//!         ─▶ hyper over WriteDeadline (header timeout, head size cap,
//!            writes that stall past KVSTORE_WRITE_TIMEOUT close it)
//!         ─▶ body (body.rs: size cap → 413, deadline/min rate → 408,
//!            in-flight byte budget → 503)
//!         ─▶ App::guest().handle(req) (instance cap → 503)
//!         ─▶ response (+ host-made stream: SSE watch, NDJSON export),
//!            holding the connection's RequestGuard until it is written
//! ```
//!
//! Until the store is open (restore from S3 in progress) every request gets
//! 503 with a JSON error, never an empty answer.
//!
//! Error statuses come from one place: the `HttpStatus` impls below
//! (`GuestError`, `StoreError`, `BodyError`) rendered by `error_response`,
//! which adds `Retry-After` to every 503 ("overloaded or not ready, come
//! back"); the canned refusal at the connection cap is built here too.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::header::{HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request as HttpRequest, Response as HttpResponse, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::App;
use crate::backend::{ChangePos, StoreError};
use crate::body::{self, BodyError};
use crate::conns::{Conn, ConnTable, QuickAck, RequestGuard, WriteDeadline};
use crate::guest::{BodyStream, GuestError, Request as GuestRequest, Response as GuestResponse};
use crate::limits;
use crate::metrics::METRICS;
use crate::streams;

pub type Body = BoxBody<Bytes, std::io::Error>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never: Infallible| match never {}).boxed()
}

/// A JSON error response: `{"error": msg}`; a 503 says when to retry.
/// Every error → HTTP status decision the host makes, in one place. Store
/// failures follow `sidekv_core::status`, the table guests answer from too.
pub trait HttpStatus {
    fn http_status(&self) -> u16;
}

/// Store failures: the table in `sidekv_core::status`, which the guests use too.
impl HttpStatus for StoreError {
    fn http_status(&self) -> u16 {
        self.rest_status()
    }
}

impl HttpStatus for GuestError {
    fn http_status(&self) -> u16 {
        match self {
            GuestError::Timeout { .. } => 504,
            GuestError::Busy { .. } | GuestError::MemoryBudget { .. } => 503,
            _ => 500,
        }
    }
}

impl HttpStatus for BodyError {
    fn http_status(&self) -> u16 {
        match self {
            BodyError::TooLarge { .. } => 413,
            BodyError::TooSlow { .. } => 408,
            BodyError::Busy => 503,
            BodyError::Read(_) => 400,
        }
    }
}

pub fn error_response(status: u16, msg: &str) -> HttpResponse<Body> {
    let body = serde_json::json!({ "error": msg }).to_string();
    let mut b = HttpResponse::builder().status(status).header("content-type", "application/json");
    if status == 503 {
        b = b.header(hyper::header::RETRY_AFTER, limits::RETRY_AFTER_SECS);
    }
    b.body(full(body)).expect("static response parts are valid")
}

/// An error response after which the connection closes: the request body
/// was not (fully) read, so the connection cannot be reused; say so instead
/// of letting keep-alive clients find out.
fn closing_error(status: u16, msg: &str) -> HttpResponse<Body> {
    let mut r = error_response(status, msg);
    r.headers_mut().insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    r
}

fn body_error(e: &BodyError) -> HttpResponse<Body> {
    closing_error(e.http_status(), &e.to_string())
}

/// The whole answer to a connection refused at the cap, written before
/// hyper ever sees it: 503, `Retry-After`, close.
static REFUSAL: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let body = serde_json::json!({ "error": "sidekv is at its connection cap (KVSTORE_MAX_CONNECTIONS); retry shortly" }).to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: {}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        limits::RETRY_AFTER_SECS,
        body.len()
    )
    .into_bytes()
});

/// A response body that keeps its request marked in flight until hyper has
/// taken the last frame (then the connection counts as idle).
struct TrackedBody {
    inner: Body,
    _request: RequestGuard,
}

impl hyper::body::Body for TrackedBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The protocol settings of the main port. HTTP/1.1: head timeout
/// (slowloris), head size cap (431), keep-alive. HTTP/2 with prior
/// knowledge (h2c, what Deno's KV client sends even to `http://`), detected
/// from the connection preface on the same port: concurrent-stream cap,
/// header-list cap, caps on reset streams (the rapid-reset attack ends in
/// GOAWAY), keep-alive pings that close dead peers. Body deadlines, the
/// in-flight body budget, the connection cap and the write deadline apply
/// to both. Public so the bench's native baseline runs the very same stack.
pub fn connection_builder() -> &'static auto::Builder<TokioExecutor> {
    static BUILDER: LazyLock<auto::Builder<TokioExecutor>> = LazyLock::new(|| {
        let mut b = auto::Builder::new(TokioExecutor::new());
        b.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits::HEADER_READ_TIMEOUT)
            .max_buf_size(limits::MAX_HEADER_BYTES)
            .keep_alive(true);
        b.http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits::H2_MAX_CONCURRENT_STREAMS)
            .max_header_list_size(limits::MAX_HEADER_BYTES as u32)
            .max_pending_accept_reset_streams(limits::H2_MAX_PENDING_RESET_STREAMS)
            .max_local_error_reset_streams(limits::H2_MAX_LOCAL_ERROR_RESET_STREAMS)
            .keep_alive_interval(limits::H2_KEEPALIVE_INTERVAL)
            .keep_alive_timeout(limits::H2_KEEPALIVE_TIMEOUT);
        b
    });
    &BUILDER
}

/// Serve the main port until `shutdown` resolves, then stop accepting and
/// wait (bounded) for in-flight requests.
pub async fn serve(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    let conns = ConnTable::new(app.http.max_connections);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Some(slot) = conns.admit() else {
            conns.refuse(stream, &REFUSAL);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let slot = Arc::new(slot);
        let io = TokioIo::new(WriteDeadline::new(QuickAck::new(stream), app.http.write_timeout));
        let conn = connection_builder().serve_connection(io, service(app.clone(), slot.clone()));
        tokio::spawn(run_connection(graceful.watch(conn), slot));
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(limits::SHUTDOWN_GRACE.min(app.http.stop_timeout / 2)) => {
            tracing::warn!("in-flight requests did not finish within the shutdown grace period");
        }
    }
}

/// The request handler of one connection: marks each request in flight
/// for the connection table until its response body is done.
fn service(
    app: Arc<App>,
    slot: Arc<Conn>,
) -> impl hyper::service::Service<
    HttpRequest<Incoming>,
    Response = HttpResponse<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<HttpResponse<Body>, Infallible>> + Send,
> + Send
+ 'static {
    service_fn(move |req| {
        let (app, request) = (app.clone(), slot.begin_request());
        async move {
            if request.evicted() {
                // Raced with an eviction: the slot is already someone else's.
                return Ok(closing_error(503, "this idle connection was closed to make room for another (KVSTORE_MAX_CONNECTIONS)"));
            }
            let resp = handle(app, req).await;
            Ok(resp.map(|inner| TrackedBody { inner, _request: request }.boxed()))
        }
    })
}

/// Drive one connection until it ends, or until the table evicts it while
/// idle (then it is dropped: no request is lost).
async fn run_connection<E: std::fmt::Display>(conn: impl Future<Output = Result<(), E>>, slot: Arc<Conn>) {
    METRICS.connections_open.fetch_add(1, Relaxed);
    tokio::pin!(conn);
    let ended = tokio::select! {
        r = &mut conn => Some(r),
        _ = slot.evicted() => None,
    };
    // A request that raced in on an evicted connection gets its 503 first.
    let ended = match ended {
        None if slot.state.is_busy() => Some(conn.await),
        other => other,
    };
    if let Some(Err(e)) = ended {
        tracing::debug!(error = %e, "connection ended with an error");
    }
    METRICS.connections_open.fetch_sub(1, Relaxed);
}

async fn handle(app: Arc<App>, req: HttpRequest<Incoming>) -> HttpResponse<Body> {
    let started = Instant::now();
    let method = req.method().clone();
    // The path only: a query string may carry credentials of a custom guest.
    let path = if tracing::enabled!(tracing::Level::DEBUG) { req.uri().path().to_owned() } else { String::new() };
    let resp = handle_inner(&app, req).await;
    let elapsed = started.elapsed();
    METRICS.request(method.as_str(), resp.status().as_u16(), elapsed);
    if tracing::enabled!(tracing::Level::DEBUG) {
        let vs = resp.headers().get("x-versionstamp").and_then(|v| v.to_str().ok()).unwrap_or("");
        tracing::debug!(method = %method, path = %path, status = resp.status().as_u16(), us = elapsed.as_micros() as u64, versionstamp = vs, "request");
    }
    resp
}

/// `uri.to_string().len()` without formatting it (no allocation per
/// request): the parts `Uri`'s `Display` writes, in every request-target
/// form (origin, absolute, authority, asterisk).
fn target_len(uri: &hyper::Uri) -> usize {
    uri.scheme_str().map_or(0, |s| s.len() + "://".len())
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path().len()
        + uri.query().map_or(0, |q| q.len() + 1)
}

/// Bytes of the request head as received (request line, headers, CRLFs).
fn head_bytes<B>(req: &HttpRequest<B>) -> usize {
    let line = req.method().as_str().len() + target_len(req.uri()) + " HTTP/1.1\r\n".len() + 1;
    line + req.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum::<usize>() + 2
}

async fn handle_inner(app: &Arc<App>, req: HttpRequest<Incoming>) -> HttpResponse<Body> {
    // hyper's max_buf_size only catches a head that is still incomplete when
    // the buffer fills; one that arrives whole in a single read may be up to
    // twice as large.
    if head_bytes(&req) > limits::MAX_HEADER_BYTES {
        return error_response(431, &format!("the request head is over the {}-byte limit", limits::MAX_HEADER_BYTES));
    }
    let Some(guest) = app.guest() else {
        return error_response(503, &app.not_ready_reason());
    };
    let lim = app.body_limits();
    let declared = req.headers().get(hyper::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > lim.max_bytes as u64) {
        return body_error(&BodyError::TooLarge { max: lim.max_bytes });
    }
    let (parts, body) = req.into_parts();
    // Held until the guest has answered: the body lives on in the guest's
    // copy of the request until then.
    // A request without a body (most GETs) skips the reader and its deadline.
    let read = if body.is_end_stream() {
        Ok((Vec::new(), None))
    } else {
        body::read(body, declared.map(|n| n as usize), &lim, &app.body_budget).await
    };
    let (body, _reservation) = match read {
        Ok(b) => b,
        Err(e) => return body_error(&e),
    };
    let path_with_query = parts.uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "/".into());
    let headers = parts.headers.iter().map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec())).collect();
    let greq = GuestRequest { method: parts.method.as_str().to_owned(), path_with_query, headers, body };
    match guest.handle(greq).await {
        Ok(resp) => match to_http(app, resp).await {
            Ok(r) => r,
            Err(msg) => {
                METRICS.guest_failure("bad_response");
                tracing::warn!(guest = %guest.guest_name(), error = %msg, "guest returned an invalid response");
                error_response(500, &format!("guest {} returned an invalid response: {msg}", guest.guest_name()))
            }
        },
        Err(e) => error_response(e.http_status(), &e.to_string()),
    }
}

pub(crate) async fn to_http(app: &Arc<App>, resp: GuestResponse) -> Result<HttpResponse<Body>, String> {
    let status = StatusCode::from_u16(resp.status)
        .ok()
        .filter(|s| s.as_u16() >= 200)
        .ok_or_else(|| format!("status {} is not a final HTTP status", resp.status))?;
    let mut out = HttpResponse::builder().status(status);
    let headers = out.headers_mut().expect("builder is fresh");
    for (name, value) in resp.headers {
        let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("header name {name:?} is invalid"))?;
        let v = HeaderValue::from_bytes(&value).map_err(|_| format!("the value of header {name:?} is invalid"))?;
        headers.append(n, v);
    }
    let body = match resp.stream {
        None => full(resp.body),
        Some(stream) => {
            let kv = app.kv().ok_or("the store is not open")?.clone();
            // Check a watch's start position before committing to a 200.
            let stream = match stream {
                BodyStream::WatchPrefix((prefix, after)) => {
                    let pos = match streams::start_position(&kv, after.as_deref()) {
                        Ok(p) => p,
                        Err(e) => return Ok(error_response(400, &format!("bad resume position: {e}"))),
                    };
                    let prefix = prefix.into_bytes();
                    match kv.changes(prefix.clone(), pos, 1).await {
                        Ok(_) => StreamKind::Watch(prefix, pos),
                        Err(e) => return Ok(error_response(e.http_status(), &e.to_string())),
                    }
                }
                BodyStream::Export(prefix) => StreamKind::Export(prefix.into_bytes()),
                BodyStream::KvWatch(keys) => StreamKind::KvWatch(keys),
            };
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(limits::STREAM_QUEUE_FRAMES);
            let prologue = resp.body;
            tokio::spawn(async move {
                if !prologue.is_empty() && tx.send(Ok(Frame::data(Bytes::from(prologue)))).await.is_err() {
                    return;
                }
                match stream {
                    StreamKind::Watch(prefix, pos) => streams::watch_prefix(kv, prefix, pos, tx).await,
                    StreamKind::Export(prefix) => streams::export(kv, prefix, tx).await,
                    StreamKind::KvWatch(keys) => streams::kv_watch(kv, keys, tx).await,
                }
            });
            StreamBody::new(tokio_stream_from(rx)).boxed()
        }
    };
    out.body(body).map_err(|e| e.to_string())
}

/// Which streaming body a guest asked for.
enum StreamKind {
    Watch(Vec<u8>, ChangePos),
    Export(Vec<u8>),
    KvWatch(Vec<Vec<u8>>),
}

fn tokio_stream_from<T: Send + 'static>(mut rx: tokio::sync::mpsc::Receiver<T>) -> impl futures::Stream<Item = T> + Send + Sync + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// The admin address: liveness, readiness and metrics, served by the host,
/// and the console (`console`, under `/console/`).
pub async fn serve_admin(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r { Ok(s) => s, Err(_) => { tokio::time::sleep(Duration::from_millis(50)).await; continue; } },
            _ = &mut shutdown => return,
        };
        let app = app.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: HttpRequest<Incoming>| {
                let app = app.clone();
                async move {
                    if crate::console::handles(req.uri().path()) {
                        return Ok::<_, Infallible>(crate::console::handle(&app, req).await);
                    }
                    Ok::<_, Infallible>(admin(&app, req.uri().path()))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits::HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn admin(app: &App, path: &str) -> HttpResponse<Body> {
    match path {
        "/healthz" => HttpResponse::new(full("ok\n")),
        "/readyz" => match app.readiness() {
            Ok(()) => match app.degraded() {
                None => HttpResponse::new(full("ready\n")),
                Some(why) => HttpResponse::new(full(format!("ready ({why})\n"))),
            },
            Err(why) => error_response(503, &why),
        },
        "/metrics" => HttpResponse::builder()
            .header("content-type", "text/plain; version=0.0.4")
            .body(full(METRICS.render(&app.replication_gauges())))
            .expect("static response parts are valid"),
        _ => error_response(404, "admin endpoints: /healthz, /readyz, /metrics, /console/"),
    }
}

/// `sidekv health`: ask the admin endpoint whether the server is ready.
pub async fn probe_ready(addr: std::net::SocketAddr) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let io = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connecting to {addr}: {e}"))?;
        s.write_all(b"GET /readyz HTTP/1.1\r\nhost: sidekv\r\nconnection: close\r\n\r\n").await.map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&buf);
        if text.starts_with("HTTP/1.1 200") { Ok(()) } else { Err(text.split("\r\n\r\n").nth(1).unwrap_or("no answer").trim().to_string()) }
    };
    tokio::time::timeout(Duration::from_secs(3), io).await.map_err(|_| "timed out".to_string())?
}

#[cfg(test)]
mod target_len_tests {
    use super::target_len;

    #[test]
    fn equals_the_formatted_length_in_every_form() {
        for t in ["/", "/k/a%20b?x=1&y", "/?", "http://h:8/p?q", "http://h", "h:443", "*", "/a?"] {
            let uri: hyper::Uri = t.parse().unwrap();
            assert_eq!(target_len(&uri), uri.to_string().len(), "{t:?}");
        }
    }
}
