//! REST helpers the suites share, each once and in its strictest form: what
//! a committed write and a JSON error look like, versionstamps and ETags,
//! base64 values, `POST /_atomic`, clients without the harness's pooling, a
//! write that must be served within a time, waiting for a process to exit.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;

use super::{Client, Server};

/// A plain client: no secret, default connection pooling.
pub fn http() -> reqwest::Client {
    reqwest::Client::new()
}

/// A client with no connection reuse: every request is a new connection,
/// as a new client of the sidecar would be.
pub fn fresh_client(s: &Server) -> Client {
    Client { base: s.url.clone(), http: reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap() }
}

/// Bytes in standard base64, as values travel in JSON bodies.
pub fn b64(b: impl AsRef<[u8]>) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b.as_ref())
}

/// A versionstamp: 20 lowercase hex digits.
pub fn is_vs(s: &str) -> bool {
    s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Expect a 200 whose body is exactly `{"ok":true,"versionstamp":…}` (this
/// text, no other field); return the versionstamp.
pub async fn committed(r: reqwest::Response, what: &str) -> String {
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, 200, "{what}: {text}");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text}"));
    let vs = v["versionstamp"].as_str().unwrap_or_else(|| panic!("{what}: {text}")).to_string();
    assert!(is_vs(&vs), "{what}: versionstamp {vs:?}");
    assert_eq!(text, format!(r#"{{"ok":true,"versionstamp":"{vs}"}}"#), "{what}");
    vs
}

/// Expect a JSON error: exactly this status, `content-type:
/// application/json`, a body that is `{"error": <non-empty string>}` and
/// nothing else; return the message.
pub async fn expect_error(r: reqwest::Response, status: u16, what: &str) -> String {
    let got = r.status().as_u16();
    let ctype = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_string());
    let text = r.text().await.unwrap();
    assert_eq!(got, status, "{what}: {text}");
    assert_eq!(ctype.as_deref(), Some("application/json"), "{what}: content-type");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text}"));
    let msg = v["error"].as_str().unwrap_or_else(|| panic!("{what}: no error field: {text}")).to_string();
    assert!(!msg.is_empty(), "{what}: empty error");
    assert_eq!(v.as_object().unwrap().len(), 1, "{what}: only `error` expected: {text}");
    msg
}

/// A response's `ETag` header as sent (quoted).
pub fn etag(r: &reqwest::Response) -> String {
    r.headers().get("etag").expect("ETag header").to_str().unwrap().to_string()
}

/// A key's versionstamp, from the `ETag` of a GET (quotes removed); None
/// when the key is absent (404). Any other status fails.
pub async fn etag_of(c: &Client, key: &str) -> Option<String> {
    let r = c.req(Method::GET, &format!("/{key}")).send().await.unwrap();
    match r.status().as_u16() {
        200 => Some(r.headers()["etag"].to_str().unwrap().trim_matches('"').to_string()),
        404 => None,
        s => panic!("GET /{key}: {s}"),
    }
}

/// `POST /_atomic` with this batch.
pub async fn atomic(c: &Client, body: Value) -> reqwest::Response {
    c.req(Method::POST, "/_atomic").body(body.to_string()).send().await.unwrap()
}

/// One legitimate write + read-back, retrying on 503 after its
/// `Retry-After` and on refused connections, until `within`. Returns how
/// long it took to be served, or what went wrong.
pub async fn served_within(c: &Client, key: &str, within: Duration) -> Result<Duration, String> {
    let t0 = Instant::now();
    let mut last = String::new();
    while t0.elapsed() < within {
        match c.req(Method::POST, &format!("/{key}")).body("legit").send().await {
            Ok(r) if r.status() == 200 => {
                let got = c.req(Method::GET, &format!("/{key}")).send().await.map_err(|e| format!("read back: {e}"))?;
                let body = got.bytes().await.map_err(|e| e.to_string())?;
                return if &body[..] == b"legit" { Ok(t0.elapsed()) } else { Err(format!("read back {body:?}")) };
            }
            Ok(r) if r.status() == 503 => {
                let retry: u64 = r.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(1);
                last = format!("503 {}", r.text().await.unwrap_or_default());
                tokio::time::sleep(Duration::from_secs(retry).min(Duration::from_millis(500))).await;
            }
            Ok(r) => return Err(format!("status {} {}", r.status(), r.text().await.unwrap_or_default())),
            Err(e) => {
                last = format!("{e:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    Err(format!("not served within {within:?}; last: {last}"))
}

/// Wait for a child process to exit (bounded).
pub fn wait_exit(child: &mut std::process::Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(Instant::now() < deadline, "the process did not exit within {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
