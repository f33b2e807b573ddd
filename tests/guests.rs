//! The example guests written in other languages, end to end against the real
//! binary: `examples/js-hmac` (JavaScript, componentize-js) and
//! `examples/python-allowlist` (Python, componentize-py). `make
//! examples-polyglot` builds them into target/wasm/examples/.
//!
//! Each guest is 12–19 MB and takes several seconds to compile on first load
//! (the harness gives every test its own KVSTORE_CACHE_DIR), so there are few
//! tests and each one checks a whole set of rules on one server.

mod common;

use std::path::PathBuf;

use common::{Opts, Server};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn guest_wasm(name: &str) -> PathBuf {
    let p = common::repo_root().join("target/wasm/examples").join(format!("{name}.wasm"));
    assert!(p.exists(), "{} is missing: run `make examples-polyglot`", p.display());
    p
}

/// HMAC-SHA256 (RFC 2104), written out here so the test does not share code
/// with the guest it checks.
fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new().chain_update(&ipad).chain_update(msg).finalize();
    Sha256::new().chain_update(&opad).chain_update(inner).finalize().into()
}

#[test]
fn hmac_helper_matches_rfc_4231() {
    // Test case 2 (short key) and 6 (key longer than the block size).
    assert_eq!(
        hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    assert_eq!(
        hex::encode(hmac_sha256(&[0xaa; 131], b"Test Using Larger Than Block-Size Key - Hash Key First")),
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
    );
}

// -------------------------------------------------------------- js-hmac ----

/// Longer than SHA-256's 64-byte block, so the guest must hash it first.
const HMAC_KEY: &str = "js-hmac test key / 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn sign(method: &str, path_with_query: &str, body: &[u8]) -> String {
    let mut msg = format!("{method}\n{path_with_query}\n").into_bytes();
    msg.extend_from_slice(body);
    hex::encode(hmac_sha256(HMAC_KEY.as_bytes(), &msg))
}

async fn send(http: &reqwest::Client, base: &str, method: Method, pq: &str, sig: Option<&str>, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
    let mut rb = http.request(method, format!("{base}{pq}")).body(body);
    if let Some(s) = sig {
        rb = rb.header("x-signature", s);
    }
    let r = rb.send().await.unwrap();
    (r.status(), r.bytes().await.unwrap().to_vec())
}

async fn signed(http: &reqwest::Client, base: &str, method: Method, pq: &str, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
    let sig = sign(method.as_str(), pq, &body);
    send(http, base, method, pq, Some(&sig), body).await
}

fn json(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(b)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_hmac_guest_accepts_only_signed_requests() {
    let dir = common::tempdir();
    let s = Server::start_at(
        &dir.path().join("db.sqlite3"),
        Opts::default().env("KVSTORE_GUEST", guest_wasm("js-hmac").to_str().unwrap()).env("KVSTORE_GUEST_HMAC_KEY", HMAC_KEY),
    );
    let http = reqwest::Client::new();
    let base = s.url.as_str();

    // A valid signature: write, then read back the exact bytes.
    let (st, b) = signed(&http, base, Method::POST, "/greeting", b"hello".to_vec()).await;
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&b));
    let v = json(&b);
    assert_eq!(v["ok"], true);
    let vs = v["versionstamp"].as_str().unwrap();
    assert!(vs.len() == 20 && vs.bytes().all(|c| c.is_ascii_hexdigit()), "{vs}");
    let (st, b) = signed(&http, base, Method::GET, "/greeting", vec![]).await;
    assert_eq!((st, b.as_slice()), (StatusCode::OK, &b"hello"[..]));

    // Upper-case hex is the same signature.
    let sig = sign("GET", "/greeting", b"").to_uppercase();
    let (st, b) = send(&http, base, Method::GET, "/greeting", Some(&sig), vec![]).await;
    assert_eq!((st, b.as_slice()), (StatusCode::OK, &b"hello"[..]));

    // Everything that is not the right signature for this exact request is 401,
    // and none of it writes anything.
    let good_put = sign("POST", "/greeting", b"evil");
    let wrong_key = {
        let mut m = b"POST\n/greeting\n".to_vec();
        m.extend_from_slice(b"evil");
        hex::encode(hmac_sha256(b"another key", &m))
    };
    // (what, method, path, signature header, body)
    type Case<'a> = (&'a str, Method, &'a str, Option<String>, &'a [u8]);
    let cases: Vec<Case<'_>> = vec![
        ("no signature", Method::POST, "/greeting", None, b"evil"),
        ("empty signature", Method::POST, "/greeting", Some(String::new()), b"evil"),
        ("not hex", Method::POST, "/greeting", Some("zz".repeat(32)), b"evil"),
        ("truncated", Method::POST, "/greeting", Some(good_put[..62].to_string()), b"evil"),
        ("extended", Method::POST, "/greeting", Some(format!("{good_put}00")), b"evil"),
        ("wrong key", Method::POST, "/greeting", Some(wrong_key), b"evil"),
        ("other body", Method::POST, "/greeting", Some(good_put.clone()), b"evil!"),
        ("other path", Method::POST, "/greeting2", Some(good_put.clone()), b"evil"),
        ("other query", Method::POST, "/greeting?x=1", Some(good_put.clone()), b"evil"),
        ("other method", Method::PUT, "/greeting", Some(good_put.clone()), b"evil"),
        ("a GET's signature on DELETE", Method::DELETE, "/greeting", Some(sign("GET", "/greeting", b"")), b""),
    ];
    for (what, m, pq, sig, body) in cases {
        let (st, b) = send(&http, base, m, pq, sig.as_deref(), body.to_vec()).await;
        assert_eq!(st, 401, "{what}: {}", String::from_utf8_lossy(&b));
    }
    // The host's own secret means nothing to this guest.
    let r = http.get(format!("{base}/greeting")).header("authorization", common::SECRET).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let (st, b) = signed(&http, base, Method::GET, "/greeting", vec![]).await;
    assert_eq!((st, b.as_slice()), (StatusCode::OK, &b"hello"[..]), "the rejected requests wrote nothing");

    // The guest's SHA-256 across block boundaries: signed messages of every
    // length from 9 to 149 bytes (across the padding boundaries at 55/56
    // and 119/120 bytes).
    for n in 0..=140usize {
        let body: Vec<u8> = (0..n).map(|i| (i * 7 + n) as u8).collect();
        let (st, b) = signed(&http, base, Method::PUT, "/len", body).await;
        assert_eq!(st, 200, "body of {n} bytes: {}", String::from_utf8_lossy(&b));
    }

    // A large binary value, with a percent-encoded key and a query string
    // (signed exactly as sent; the key is the decoded path).
    let big: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let (st, b) = signed(&http, base, Method::POST, "/dir%2Fbig?note=1", big.clone()).await;
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&b));
    let (st, b) = signed(&http, base, Method::GET, "/dir%2Fbig", vec![]).await;
    assert_eq!(st, 200);
    assert!(b == big, "the large value round-trips");

    // A store error (a key over the 2048-byte limit) reaches the client as
    // the guest maps it: invalid-key → 400 with the host's message.
    let long = format!("/{}", "k".repeat(3000));
    let (st, b) = signed(&http, base, Method::GET, &long, vec![]).await;
    assert_eq!(st, 400, "{}", String::from_utf8_lossy(&b));
    assert!(json(&b)["error"].as_str().is_some_and(|m| !m.is_empty()));

    // DELETE, then the key is gone.
    let (st, b) = signed(&http, base, Method::DELETE, "/greeting", vec![]).await;
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&b));
    assert_eq!(json(&b)["ok"], true);
    let (st, _) = signed(&http, base, Method::GET, "/greeting", vec![]).await;
    assert_eq!(st, 404);
}

// ----------------------------------------------------- python-allowlist ----

async fn as_client(
    http: &reqwest::Client,
    base: &str,
    method: Method,
    key: &str,
    client: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, Vec<u8>) {
    let mut rb = http.request(method, format!("{base}/{key}")).body(body);
    if let Some(c) = client {
        rb = rb.header("x-client-id", c);
    }
    let r = rb.send().await.unwrap();
    (r.status(), r.bytes().await.unwrap().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_allowlist_guest_lets_in_only_listed_clients() {
    let dir = common::tempdir();
    let db = dir.path().join("db.sqlite3");
    let guest = guest_wasm("python-allowlist");
    let opts = Opts::default().env("KVSTORE_GUEST", guest.to_str().unwrap()).env("KVSTORE_GUEST_CLIENTS", "billing, reports,frontend-7");
    let http = reqwest::Client::new();
    let value: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    {
        let s = Server::start_at(&db, opts.clone());
        let base = s.url.as_str();

        // A listed client writes; another listed client reads the same bytes.
        let (st, b) = as_client(&http, base, Method::POST, "invoices/1", Some("billing"), value.clone()).await;
        assert_eq!(st, 200, "{}", String::from_utf8_lossy(&b));
        let v = json(&b);
        assert_eq!(v["ok"], true);
        assert_eq!(v["versionstamp"].as_str().unwrap().len(), 20);
        let (st, b) = as_client(&http, base, Method::GET, "invoices/1", Some("reports"), vec![]).await;
        assert_eq!(st, 200);
        assert!(b == value, "the value round-trips");
        let (st, _) = as_client(&http, base, Method::GET, "invoices/2", Some("frontend-7"), vec![]).await;
        assert_eq!(st, 404);

        // Anyone not exactly on the list is 403, reads and writes alike.
        for (what, client) in [
            ("no header", None),
            ("empty", Some("")),
            ("unknown", Some("mallory")),
            ("a prefix of an id", Some("bill")),
            ("an id plus more", Some("billing2")),
            ("another case", Some("Billing")),
            ("the whole list", Some("billing, reports,frontend-7")),
            ("the host secret", Some(common::SECRET)),
        ] {
            for m in [Method::GET, Method::POST] {
                let (st, b) = as_client(&http, base, m.clone(), "invoices/1", client, b"overwritten".to_vec()).await;
                assert_eq!(st, 403, "{what} ({m}): {}", String::from_utf8_lossy(&b));
            }
        }
        let r = http.get(format!("{base}/invoices/1")).header("authorization", common::SECRET).send().await.unwrap();
        assert_eq!(r.status(), 403, "the host's secret means nothing to this guest");

        // A store error (a key over the 2048-byte limit) becomes a 400.
        let (st, b) = as_client(&http, base, Method::POST, &"k".repeat(3000), Some("billing"), b"v".to_vec()).await;
        assert_eq!(st, 400, "{}", String::from_utf8_lossy(&b));
        assert!(json(&b)["error"].as_str().is_some_and(|m| !m.is_empty()));

        // Only GET and POST/PUT are routed.
        let (st, _) = as_client(&http, base, Method::DELETE, "invoices/1", Some("billing"), vec![]).await;
        assert_eq!(st, 405);
        let (st, b) = as_client(&http, base, Method::GET, "invoices/1", Some("reports"), vec![]).await;
        assert_eq!(st, 200);
        assert!(b == value, "denied requests wrote nothing");
    }

    // The same guest with a fresh instance per request (the pooling
    // allocator) and the data from the first run.
    let s = Server::start_at(&db, opts.env("KVSTORE_INSTANCE_MODE", "fresh"));
    let base = s.url.as_str();
    let (st, b) = as_client(&http, base, Method::GET, "invoices/1", Some("frontend-7"), vec![]).await;
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&b));
    assert!(b == value);
    let (st, _) = as_client(&http, base, Method::PUT, "invoices/1", Some("mallory"), b"x".to_vec()).await;
    assert_eq!(st, 403);
    let (st, b) = as_client(&http, base, Method::PUT, "invoices/1", Some("reports"), b"paid".to_vec()).await;
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&b));
    let (st, b) = as_client(&http, base, Method::GET, "invoices/1", Some("billing"), vec![]).await;
    assert_eq!((st, b.as_slice()), (StatusCode::OK, &b"paid"[..]));
}
