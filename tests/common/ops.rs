//! Client-side helpers the integration suites share: writes that report
//! their status instead of panicking, metric scraping, waiting for the
//! backup to catch up, stopping a server, wiping its disk.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{Client, Server};

/// Send a request; Ok(versionstamp) on 200, Err((status or 0, body)) otherwise.
/// A 200 must carry the same versionstamp in its body and `x-versionstamp`.
async fn versionstamp_of(req: reqwest::RequestBuilder) -> Result<String, (u16, String)> {
    let r = req.send().await.map_err(|e| (0, format!("{e:?}")))?;
    let status = r.status().as_u16();
    let hdr = r.headers().get("x-versionstamp").map(|h| h.to_str().unwrap().to_string());
    let body = r.text().await.map_err(|e| (0, format!("{e:?}")))?;
    if status != 200 {
        return Err((status, body));
    }
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let vs = v["versionstamp"].as_str().unwrap().to_string();
    if let Some(h) = hdr {
        assert_eq!(h, vs, "x-versionstamp header vs body");
    }
    Ok(vs)
}

/// POST a value.
pub async fn try_set(c: &Client, key: &str, value: impl Into<reqwest::Body>) -> Result<String, (u16, String)> {
    versionstamp_of(c.req(reqwest::Method::POST, &format!("/{key}")).body(value)).await
}

/// DELETE a key.
pub async fn try_delete(c: &Client, key: &str) -> Result<String, (u16, String)> {
    versionstamp_of(c.req(reqwest::Method::DELETE, &format!("/{key}"))).await
}

/// POST /_atomic with one `sum` of 1 on `key`.
pub async fn try_incr(c: &Client, key: &str) -> Result<String, (u16, String)> {
    let body = serde_json::json!({ "mutations": [{ "type": "sum", "key": key, "value": "1" }] }).to_string();
    versionstamp_of(c.req(reqwest::Method::POST, "/_atomic").body(body)).await
}

/// A sample from a Prometheus text page: `name value` or `name{labels} value`.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.trim().parse().ok())
}

/// The admin `/metrics` page.
pub async fn metrics(s: &Server) -> String {
    let admin = s.admin_url.as_ref().expect("start with KVSTORE_ADMIN_ADDR");
    reqwest::get(format!("{admin}/metrics")).await.unwrap().text().await.unwrap()
}

/// Scrape one gauge or counter from the admin endpoint.
pub async fn gauge(s: &Server, name: &str) -> f64 {
    let body = metrics(s).await;
    metric(&body, name).unwrap_or_else(|| panic!("{name} not in /metrics:\n{body}"))
}

/// Status of the admin `/readyz`.
pub async fn readyz(s: &Server) -> u16 {
    let admin = s.admin_url.as_ref().expect("start with KVSTORE_ADMIN_ADDR");
    reqwest::get(format!("{admin}/readyz")).await.unwrap().status().as_u16()
}

/// Wait until every commit is in S3; returns how long it took.
pub async fn wait_caught_up(s: &Server, within: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        if gauge(s, "sidekv_outbox_commits").await == 0.0 {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < within, "the outbox did not drain within {within:?}:\n{}", tail(&s.log(), 60));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The last `n` lines of a log.
pub fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// SIGTERM a server and require a clean exit within 30 s.
pub fn terminate(s: &mut Server) {
    let st = tokio::task::block_in_place(|| s.terminate(Duration::from_secs(30)));
    assert!(st.success(), "sidekv exited with {st} after SIGTERM:\n{}", tail(&s.log(), 60));
}

/// Exit status of a stop that left commits outside the backup (`main.rs`).
pub const EXIT_NOT_BACKED_UP: i32 = 3;

/// SIGTERM a server that cannot finish its backup: it must exit with
/// `EXIT_NOT_BACKED_UP` within `within`, saying what is not backed up.
/// Returns its log.
pub fn terminate_not_backed_up(s: &mut Server, within: Duration) -> String {
    let t0 = Instant::now();
    let st = tokio::task::block_in_place(|| s.terminate(within + Duration::from_secs(30)));
    let log = s.log();
    assert_eq!(st.code(), Some(EXIT_NOT_BACKED_UP), "exit status after SIGTERM:\n{}", tail(&log, 60));
    assert!(t0.elapsed() < within, "the stop took {:?}, over {within:?}", t0.elapsed());
    assert!(log.contains("are not in the backup"), "the exit must say which commits are not backed up:\n{}", tail(&log, 30));
    log
}

/// Remove the database and its WAL/SHM files.
pub fn wipe(db: &Path) {
    for ext in ["", "-wal", "-shm"] {
        let p = PathBuf::from(format!("{}{ext}", db.display()));
        if p.exists() {
            std::fs::remove_file(&p).unwrap();
        }
    }
    assert!(!db.exists());
}

/// A guest built into target/wasm by `make guest` / `make examples`.
pub fn guest_wasm(file: &str) -> PathBuf {
    let p = super::repo_root().join("target/wasm/wasm32-wasip2/release").join(file);
    assert!(p.is_file(), "{} is missing: build the guests with `make guest examples`", p.display());
    p
}
