//! The web console (`/console/` on the admin address) in a real browser:
//! headless Chromium driven over WebDriver (chromedriver, started here on a
//! free port; `make setup-browser` installs both). Every test runs the real
//! sidekv binary, writes data over its HTTP API and checks what a person
//! sees. Screenshots land in `target/console-screenshots/`.
//!
//! The WebDriver client is the few commands these tests use, over reqwest.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use common::{Opts, S3, SECRET, Server, TempServer, free_port, repo_root, start_temp, tempdir};
use serde_json::{Value, json};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

// ------------------------------------------------------------ browser ----

struct Browser {
    http: reqwest::Client,
    base: String,
    session: String,
    driver: Child,
    _profile: tempfile::TempDir,
}

fn which(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|n| std::env::split_paths(&path).map(|d| d.join(n)).find(|p| p.is_file()))
}

impl Browser {
    async fn start() -> Browser {
        let driver_bin = which(&["chromedriver"]).expect("chromedriver is not installed: run `make setup-browser`");
        let chromium =
            which(&["chromium", "chromium-browser", "google-chrome"]).expect("chromium is not installed: run `make setup-browser`");
        let port = free_port();
        let driver = Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = http.get(format!("{base}/status")).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempdir();
        let args = vec![
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--no-first-run".into(),
            "--window-size=1440,900".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": chromium.to_string_lossy(), "args": args },
        }}});
        let mut b = Browser { http, base, session: String::new(), driver, _profile: profile };
        let v = b.cmd(reqwest::Method::POST, "/session", caps).await;
        b.session = v["sessionId"].as_str().expect("a WebDriver session id").to_string();
        b
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let url =
            if path == "/session" { format!("{}/session", self.base) } else { format!("{}/session/{}{path}", self.base, self.session) };
        let mut req = self.http.request(method.clone(), url);
        if method != reqwest::Method::GET {
            req = req.json(&body);
        }
        let r = req.send().await.expect("WebDriver request");
        let status = r.status();
        let v: Value = r.json().await.expect("WebDriver JSON");
        assert!(status.is_success(), "WebDriver {path}: {status} {v}");
        v["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", json!({ "url": url })).await;
    }

    /// Run `script` (a function body; `arguments` available) in the page.
    async fn js(&self, script: &str, args: Value) -> Value {
        self.cmd(reqwest::Method::POST, "/execute/sync", json!({ "script": script, "args": args })).await
    }

    async fn find(&self, css: &str) -> String {
        let v = self.cmd(reqwest::Method::POST, "/element", json!({ "using": "css selector", "value": css })).await;
        v[ELEMENT].as_str().expect("an element").to_string()
    }

    async fn click(&self, css: &str) {
        let id = self.find(css).await;
        self.cmd(reqwest::Method::POST, &format!("/element/{id}/click"), json!({})).await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css).await;
        self.cmd(reqwest::Method::POST, &format!("/element/{id}/clear"), json!({})).await;
        self.cmd(reqwest::Method::POST, &format!("/element/{id}/value"), json!({ "text": text })).await;
    }

    /// Press keys (WebDriver key codes for special keys: `\u{E015}` ↓,
    /// `\u{E014}` →, `\u{E007}` Enter) on whatever has the focus.
    async fn keys(&self, text: &str) {
        let actions: Vec<Value> = text
            .chars()
            .flat_map(|c| [json!({ "type": "keyDown", "value": c.to_string() }), json!({ "type": "keyUp", "value": c.to_string() })])
            .collect();
        self.cmd(reqwest::Method::POST, "/actions", json!({ "actions": [{ "type": "key", "id": "keyboard", "actions": actions }] })).await;
    }

    /// Poll `predicate` (a JS expression) until it is truthy.
    async fn wait(&self, what: &str, predicate: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let v = self.js(&format!("return !!({predicate});"), json!([])).await;
            if v == Value::Bool(true) {
                return;
            }
            if Instant::now() > deadline {
                let body = self.js("return document.body.innerText;", json!([])).await;
                let name: String = what.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
                self.screenshot(&format!("failed-{name}")).await;
                panic!("timed out waiting for {what} ({predicate}); the page says:\n{}", body.as_str().unwrap_or(""));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Wait until the page's visible text contains `text`.
    async fn wait_text(&self, text: &str, within: Duration) {
        let pred = format!("document.body.innerText.includes({})", serde_json::to_string(text).unwrap());
        self.wait(&format!("text {text:?}"), &pred, within).await;
    }

    async fn text_of(&self, css: &str) -> String {
        let v = self.js("const e = document.querySelector(arguments[0]); return e ? e.innerText : null;", json!([css])).await;
        v.as_str().unwrap_or_default().to_string()
    }

    async fn screenshot(&self, name: &str) -> PathBuf {
        let v = self.cmd(reqwest::Method::GET, "/screenshot", json!(null)).await;
        let png = B64.decode(v.as_str().expect("base64 PNG")).expect("PNG");
        let dir = repo_root().join("target/console-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// Open the console and sign in with `token`.
    async fn sign_in(&self, admin: &str, token: &str) {
        self.goto(&format!("{admin}/console/")).await;
        self.wait("the sign-in form", "!document.getElementById('signin').hidden", Duration::from_secs(10)).await;
        self.type_into("#token", token).await;
        self.click("#signin-button").await;
    }

    /// Click the tree node whose label is exactly `label` (the first one).
    async fn open_node(&self, label: &str) {
        let pred = format!(
            "[...document.querySelectorAll('#tree .node .label')].some(e => e.textContent === {})",
            serde_json::to_string(label).unwrap()
        );
        self.wait(&format!("tree node {label}"), &pred, Duration::from_secs(10)).await;
        let clicked = self
            .js(
                "const l = [...document.querySelectorAll('#tree .node .label')].find(e => e.textContent === arguments[0]); \
                 l.closest('button').setAttribute('data-test-target', '1'); return true;",
                json!([label]),
            )
            .await;
        assert_eq!(clicked, Value::Bool(true));
        self.click("[data-test-target='1']").await;
        self.js("document.querySelector(\"[data-test-target='1']\").removeAttribute('data-test-target');", json!([])).await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // End the session (closes Chromium), then chromedriver.
        let url = format!("{}/session/{}", self.base, self.session);
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async { reqwest::Client::new().delete(url).timeout(Duration::from_secs(5)).send().await.ok() });
        })
        .join();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

// ------------------------------------------------------------ helpers ----

fn console_server() -> TempServer {
    start_temp(Opts::default().env("KVSTORE_ADMIN_ADDR", "127.0.0.1:0"))
}

fn admin(s: &Server) -> String {
    s.admin_url.clone().expect("the admin address is printed")
}

async fn put(s: &Server, key: &str, value: impl Into<reqwest::Body>) {
    let r = s.client().req(reqwest::Method::PUT, &format!("/{key}")).body(value).send().await.unwrap();
    assert_eq!(r.status(), 200, "PUT /{key}: {}", r.text().await.unwrap());
}

/// Deno keys and typed values, loaded through `/_import` (the export format).
async fn import(s: &Server, lines: &[Value]) {
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let r = s.client().req(reqwest::Method::POST, "/_import").body(body).send().await.unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, 200, "import: {text}");
}

fn deno_key(parts: &[sidekv_kvconnect::key::KeyPart]) -> Vec<u8> {
    sidekv_kvconnect::key::encode_key(parts)
}

fn deno_line(key: &[u8], value: &[u8], encoding: &str) -> Value {
    json!({ "key": String::from_utf8_lossy(key), "key_b64": B64.encode(key), "value": B64.encode(value), "encoding": encoding })
}

/// A V8-serialized string (one-byte form).
fn v8_string(s: &str) -> Vec<u8> {
    let mut v = vec![0xff, 0x0f, b'"', s.len() as u8];
    v.extend_from_slice(s.as_bytes());
    v
}

fn v8_key(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&[b'"', s.len() as u8]);
    out.extend_from_slice(s.as_bytes());
}

/// `{ name: "Ada", age: 36, born: new Date(0), tags: new Set(["x"]), ids: [1, 2], big: 2n ** 64n, meta: new Map([["k", null]]), raw: new Uint8Array([1, 2, 3]), flag: true, none: undefined }`
fn v8_object() -> Vec<u8> {
    let mut v = vec![0xff, 0x0f, b'o'];
    v8_key(&mut v, "name");
    v.extend_from_slice(&[b'"', 3, b'A', b'd', b'a']);
    v8_key(&mut v, "age");
    v.extend_from_slice(&[b'I', 72]); // zigzag(36)
    v8_key(&mut v, "born");
    v.push(b'D');
    v.extend_from_slice(&0f64.to_le_bytes());
    v8_key(&mut v, "tags");
    v.extend_from_slice(&[b'\'', b'"', 1, b'x', b',', 1]);
    v8_key(&mut v, "ids");
    v.extend_from_slice(&[b'A', 2, b'I', 2, b'I', 4, b'$', 0, 2]);
    v8_key(&mut v, "big");
    v.extend_from_slice(&[b'Z', 32]); // 16 bytes, positive
    let mut digits = [0u8; 16];
    digits[8] = 1;
    v.extend_from_slice(&digits);
    v8_key(&mut v, "meta");
    v.extend_from_slice(&[b';', b'"', 1, b'k', b'0', b':', 2]);
    v8_key(&mut v, "raw");
    v.extend_from_slice(&[b'B', 3, 1, 2, 3, b'V', b'B', 0, 3, 0]);
    v8_key(&mut v, "flag");
    v.push(b'T');
    v8_key(&mut v, "none");
    v.push(b'_');
    v.extend_from_slice(&[b'{', 10]);
    v
}

// --------------------------------------------------------------- tests ----

/// A wrong secret gets a clear error (after a delay); the right one opens
/// the console with an HttpOnly session cookie and a strict CSP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_and_a_bad_sign_in() {
    let s = console_server();
    let admin = admin(&s);
    // The page's policy and the API's answers, as any client sees them.
    let r = reqwest::get(format!("{admin}/console/")).await.unwrap();
    let csp = r.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(csp.starts_with("default-src 'self'"), "{csp}");
    let r = reqwest::get(format!("{admin}/console/api/scan")).await.unwrap();
    assert_eq!(r.status(), 401, "the API needs a session");

    let b = Browser::start().await;
    b.sign_in(&admin, "wrong-secret").await;
    let started = Instant::now();
    b.wait_text("not accepted", Duration::from_secs(10)).await;
    b.screenshot("sign-in-refused").await;
    assert!(started.elapsed() >= Duration::from_millis(800), "a refused sign-in answers after a delay");
    assert!(!b.text_of("#signin-error").await.is_empty());
    assert!(b.js("return document.getElementById('app').hidden;", json!([])).await.as_bool().unwrap());

    b.type_into("#token", SECRET).await;
    b.click("#signin-button").await;
    b.wait("the console", "!document.getElementById('app').hidden", Duration::from_secs(10)).await;
    // HttpOnly: the page's script cannot read the session cookie.
    assert_eq!(b.js("return document.cookie;", json!([])).await, json!(""));
    // Nothing secret in the address bar.
    let url = b.js("return location.href;", json!([])).await;
    assert!(!url.as_str().unwrap().contains(SECRET));
    // A reload keeps the session.
    b.goto(&format!("{admin}/console/")).await;
    b.wait("the console after a reload", "!document.getElementById('app').hidden", Duration::from_secs(10)).await;
    // Signing out ends it.
    b.click("#signout").await;
    b.wait("the sign-in form", "!document.getElementById('signin').hidden", Duration::from_secs(10)).await;
    let status = b.js("return fetch('/console/api/session').then(r => r.status);", json!([])).await;
    assert_eq!(status, json!(401));
}

/// REST keys open as a tree split at `/` with counts; Deno keys by their
/// typed tuple parts; values decoded (JSON, text, bytes, V8, KvU64).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_and_deno_key_trees_with_decoded_values() {
    use sidekv_kvconnect::key::{KeyInt, KeyPart};
    // Backed up to a directory (on SQLite), so the page shows its normal state.
    let backup = tempdir();
    let mut opts = Opts::default().env("KVSTORE_ADMIN_ADDR", "127.0.0.1:0");
    if !common::backend_is_postgres() {
        opts = opts.env("KVSTORE_S3_URL", &format!("file://{}", backup.path().display()));
    }
    let s = start_temp(opts);
    put(&s, "users/1/name", "Ada Lovelace").await;
    put(&s, "users/1/profile", r#"{"lang":"en","langs":["en","fr"],"admin":true}"#).await;
    put(&s, "users/1/photo", vec![0x89u8, b'P', b'N', b'G', 0, 1, 2, 0xff]).await;
    put(&s, "users/2/name", "Grace Hopper").await;
    put(&s, "config", "debug=false").await;
    let users = KeyPart::String("users".into());
    let k1 = deno_key(&[users.clone(), KeyPart::Int(KeyInt::from_sign_magnitude(false, &[7]).unwrap()), KeyPart::String("profile".into())]);
    let k2 = deno_key(&[users.clone(), KeyPart::Float(2.5), KeyPart::True]);
    let k3 = deno_key(&[KeyPart::String("counters".into()), KeyPart::Bytes(vec![0, 255])]);
    let k4 = deno_key(&[users.clone(), KeyPart::Int(KeyInt::from_sign_magnitude(false, &[7]).unwrap()), KeyPart::String("nick".into())]);
    let k5 = deno_key(&[users.clone(), KeyPart::Int(KeyInt::from_sign_magnitude(false, &[7]).unwrap()), KeyPart::String("regex".into())]);
    import(
        &s,
        &[
            deno_line(&k1, &v8_object(), "v8"),
            deno_line(&k2, &v8_string("hello from Deno"), "v8"),
            deno_line(&k3, b"42", "le64"), // the export writes a u64 as decimal text
            deno_line(&k4, b"raw bytes", "bytes"),
            deno_line(&k5, &[0xff, 0x0f, b'R', 1, b'a', 0], "v8"),
        ],
    )
    .await;
    // A prefix with more children than one page.
    let many: Vec<Value> = (0..250).map(|i| json!({ "key": format!("many/{i:05}"), "value": B64.encode("v") })).collect();
    import(&s, &many).await;
    let admin = admin(&s);
    let b = Browser::start().await;
    b.sign_in(&admin, SECRET).await;

    // Paging: 100 children at a time.
    b.open_node("many/").await;
    b.wait_text("250 keys under this prefix", Duration::from_secs(10)).await;
    let shown = "[...document.querySelectorAll('#tree .node .label')].filter(e => e.textContent.startsWith('00')).length";
    b.wait("the first page", &format!("{shown} === 100"), Duration::from_secs(10)).await;
    b.click("#tree .more").await;
    b.wait("the second page", &format!("{shown} === 200"), Duration::from_secs(10)).await;
    b.click("#tree .more").await;
    b.wait("the last page", &format!("{shown} === 250 && !document.querySelector('#tree .more')"), Duration::from_secs(10)).await;
    b.open_node("many/").await; // close it again

    // REST: users/ → 1/ → name, profile (JSON), photo (bytes).
    b.open_node("users/").await;
    b.wait_text("4 keys under this prefix", Duration::from_secs(10)).await;
    b.open_node("1/").await;
    b.open_node("profile").await;
    b.wait("the JSON value", "document.getElementById('value-text')?.textContent.includes('\"langs\": [')", Duration::from_secs(10)).await;
    assert!(b.text_of("#value-meta").await.contains("JSON"));
    b.open_node("photo").await;
    b.wait(
        "the hex dump",
        "document.getElementById('value-text')?.textContent.includes('89 50 4e 47 00 01 02 ff')",
        Duration::from_secs(10),
    )
    .await;
    b.open_node("name").await;
    b.wait("the text value", "document.getElementById('value-text')?.textContent === 'Ada Lovelace'", Duration::from_secs(10)).await;
    // Per-prefix counts appear beside the folders.
    b.wait("the count of users/", "[...document.querySelectorAll('#tree .node')].some(n => n.innerText.includes('users/') && /\\b4\\b/.test(n.querySelector('.count').textContent))", Duration::from_secs(10)).await;

    // Deno: ["users"] → 7n → "profile" (a V8 object), with the part types.
    b.open_node("\"users\"").await;
    b.open_node("7n").await;
    b.wait(
        "the bigint badge",
        "[...document.querySelectorAll('#tree .type')].some(t => t.textContent === 'bigint')",
        Duration::from_secs(10),
    )
    .await;
    b.open_node("\"profile\"").await;
    b.wait("the V8 object", "document.getElementById('value-text')?.textContent.includes('name: \"Ada\"')", Duration::from_secs(10)).await;
    let v = b.text_of("#value-text").await;
    for want in [
        "age: 36",
        "born: Date(1970-01-01T00:00:00.000Z)",
        "Set(1)",
        "\"x\"",
        "big: 18446744073709551616n",
        "Map(1)",
        "\"k\" => null",
        "Uint8Array(3) [010203]",
        "flag: true",
        "none: undefined",
        "ids: [",
    ] {
        assert!(v.contains(want), "{want:?} missing from the decoded V8 value:\n{v}");
    }
    b.screenshot("keys").await;
    b.open_node("\"regex\"").await;
    b.wait(
        "an opaque V8 value",
        "document.getElementById('value-text')?.textContent.includes('V8 value, 6 bytes')",
        Duration::from_secs(10),
    )
    .await;
    b.open_node("\"nick\"").await;
    b.wait("a Deno bytes value", "document.getElementById('value-text')?.textContent === 'raw bytes'", Duration::from_secs(10)).await;
    b.open_node("2.5").await;
    b.wait("the number badge", "[...document.querySelectorAll('#tree .type')].some(t => t.textContent === 'num')", Duration::from_secs(10))
        .await;
    b.open_node("true").await;
    b.wait("a V8 string", "document.getElementById('value-text')?.textContent === '\"hello from Deno\"'", Duration::from_secs(10)).await;
    b.open_node("\"counters\"").await;
    b.open_node("b\"00ff\"").await;
    b.wait("a KvU64", "document.getElementById('value-text')?.textContent === 'Deno.KvU64(42n)'", Duration::from_secs(10)).await;

    // Search by prefix, REST and Deno syntax.
    b.type_into("#search", "users/2/").await;
    b.click("#search-form button").await;
    b.wait(
        "the search result",
        "document.getElementById('tree').innerText.includes('name') && !document.getElementById('tree').innerText.includes('1/')",
        Duration::from_secs(10),
    )
    .await;
    b.type_into("#search", "[\"users\", 7n]").await;
    b.click("#search-form button").await;
    b.wait("the Deno search result", "document.getElementById('tree').innerText.includes('\"nick\"')", Duration::from_secs(10)).await;

    // The load charts draw from the live metrics: some traffic first
    // (bounded: at most 3 s, at most 3000 requests; a few 404s too).
    b.click("#tab-load").await;
    let c = s.client();
    let until = Instant::now() + Duration::from_secs(3);
    for i in 0..3000u32 {
        if Instant::now() > until {
            break;
        }
        let key = if i % 10 == 0 { format!("missing/{i}") } else { "users/1/name".to_string() };
        let _ = c.req(reqwest::Method::GET, &format!("/{key}")).send().await;
        if i % 4 == 0 {
            put(&s, &format!("load/{}", i % 50), "x").await;
        }
    }
    b.wait("the request chart", "document.querySelectorAll('#chart-requests path').length > 0", Duration::from_secs(10)).await;
    b.wait("the latency chart", "document.getElementById('legend-latency').textContent.includes('p99')", Duration::from_secs(10)).await;
    b.screenshot("load").await;
}

/// An edit made in the console is what the REST API reads back; a prefix
/// delete names its count and removes exactly that prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edit_a_value_and_read_it_back_over_rest() {
    let s = console_server();
    put(&s, "notes/today", "draft").await;
    put(&s, "tmp/a", "1").await;
    put(&s, "tmp/b", "2").await;
    let b = Browser::start().await;
    b.sign_in(&admin(&s), SECRET).await;
    b.open_node("notes/").await;
    b.open_node("today").await;
    b.wait("the value", "document.getElementById('value-text')?.textContent === 'draft'", Duration::from_secs(10)).await;
    b.click("#edit-value").await;
    b.type_into("#edit-text", "final text, edited").await;
    b.click("#save-value").await;
    b.wait("the saved value", "document.getElementById('value-text')?.textContent === 'final text, edited'", Duration::from_secs(10)).await;
    assert_eq!(s.client().get("notes/today").await.unwrap(), "final text, edited".as_bytes());

    // Create a key, then delete the tmp/ prefix (the dialog names the count).
    b.click("#new-key").await;
    b.type_into("#create-key", "notes/new").await;
    b.type_into("#create-value", "{\"made\": \"in the console\"}").await;
    b.click("#create-form button[type=submit]").await;
    b.wait(
        "the new key",
        "document.getElementById('value-text')?.textContent.includes('\"made\": \"in the console\"')",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(s.client().get("notes/new").await.unwrap(), br#"{"made": "in the console"}"#);
    b.open_node("tmp/").await;
    b.wait_text("2 keys under this prefix", Duration::from_secs(10)).await;
    b.click("#prefix-delete").await;
    b.wait(
        "the confirmation",
        "document.getElementById('confirm').open && document.getElementById('confirm-ok').textContent === 'Delete 2 keys'",
        Duration::from_secs(10),
    )
    .await;
    b.click("#confirm-ok").await;
    b.wait_text("Deleted 2 keys", Duration::from_secs(10)).await;
    assert_eq!(s.client().get("tmp/a").await, None);
    assert_eq!(s.client().get("notes/today").await.unwrap(), "final text, edited".as_bytes());

    // Export (the link the page offers, fetched with the session) and import.
    b.type_into("#search", "notes/").await;
    b.click("#search-form button").await;
    b.wait("the notes/ root", "document.getElementById('tree-root-label').textContent.includes('notes/')", Duration::from_secs(10)).await;
    let href = b.js("return document.getElementById('export').getAttribute('href');", json!([])).await;
    assert_eq!(href, json!("/console/api/rest/_export?prefix=notes%2F"));
    let ndjson = b.js("return fetch(arguments[0]).then(r => r.text());", json!([href])).await;
    let ndjson = ndjson.as_str().unwrap().to_string();
    assert_eq!(ndjson.lines().count(), 2, "{ndjson}");
    assert!(ndjson.contains("\"key\":\"notes/today\""), "{ndjson}");
    let dir = tempdir();
    let file = dir.path().join("import.ndjson");
    let moved = ndjson.replace("notes/", "imported/");
    std::fs::write(&file, &moved).unwrap();
    let input = b.find("#import").await;
    b.cmd(reqwest::Method::POST, &format!("/element/{input}/value"), json!({ "text": file.to_str().unwrap() })).await;
    b.wait_text("Imported 2 entries", Duration::from_secs(10)).await;
    assert_eq!(s.client().get("imported/today").await.unwrap(), "final text, edited".as_bytes());
}

/// The watch panel shows a write made over REST, live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_panel_shows_a_rest_write() {
    let s = console_server();
    let b = Browser::start().await;
    b.sign_in(&admin(&s), SECRET).await;
    b.wait("the console", "!document.getElementById('app').hidden", Duration::from_secs(10)).await;
    b.click("#tab-watch").await;
    b.type_into("#watch-prefix", "live/").await;
    b.click("#watch-toggle").await;
    b.wait_text("live: changes under", Duration::from_secs(10)).await;
    put(&s, "other/x", "not watched").await;
    put(&s, "live/sensor", "21.5 °C").await;
    b.wait("the change row", "document.getElementById('watch-rows').innerText.includes('live/sensor')", Duration::from_secs(10)).await;
    let rows = b.text_of("#watch-rows").await;
    assert!(rows.contains("21.5 °C") && rows.contains("set"), "{rows}");
    assert!(!rows.contains("other/x"), "a key outside the prefix was shown: {rows}");
    let r = s.client().req(reqwest::Method::DELETE, "/live/sensor").send().await.unwrap();
    assert_eq!(r.status(), 200);
    b.wait("the delete row", "document.getElementById('watch-rows').innerText.includes('delete')", Duration::from_secs(10)).await;
    b.screenshot("watch").await;
}

/// The backup panel shows a new segment after a write, and says "not backed
/// up" loudly when S3 stops answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_only_backup_panel_shows_segments_and_not_backed_up() {
    if common::skip_on_postgres("S3 backup is for the SQLite backend") {
        return;
    }
    let s3 = tokio::task::block_in_place(S3::start);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let bucket = format!("console-{}-{nanos}", std::process::id());
    s3.create_bucket(&bucket).await;
    let dir = tempdir();
    let opts = s3
        .env(Opts::default(), &bucket, "console/data")
        .env("KVSTORE_ADMIN_ADDR", "127.0.0.1:0")
        .env("KVSTORE_SYNC_INTERVAL", "200ms")
        .env("AWS_MAX_ATTEMPTS", "1");
    let s = Server::start_at(&dir.path().join("db.sqlite3"), opts);
    put(&s, "first", "1").await;
    let b = Browser::start().await;
    b.sign_in(&admin(&s), SECRET).await;
    b.wait("the console", "!document.getElementById('app').hidden", Duration::from_secs(10)).await;
    b.click("#tab-backup").await;
    b.wait("the backed-up banner", "document.getElementById('backup-banner').innerText.startsWith('Backed up')", Duration::from_secs(20))
        .await;
    let shipped = |t: String| t.trim_start_matches("commit ").trim().parse::<u64>().unwrap_or(0);
    let before = shipped(b.text_of("#shipped-commit").await);
    assert!(before >= 1, "the first write is shipped");
    put(&s, "second", "2").await;
    let pred = format!("parseInt((document.getElementById('shipped-commit')?.innerText || '').replace('commit ', '')) > {before}");
    b.wait("a new segment", &pred, Duration::from_secs(20)).await;
    b.wait(
        "a restore command",
        "document.getElementById('restore-points').innerText.includes('sidekv restore --to restored.sqlite3 --at ')",
        Duration::from_secs(10),
    )
    .await;
    b.wait(
        "the restore history",
        "document.getElementById('restore-history').innerText.includes('backup started')",
        Duration::from_secs(10),
    )
    .await;
    b.screenshot("backup").await;

    s3.pause();
    put(&s, "third", "3").await;
    b.wait("NOT BACKED UP", "document.getElementById('backup-banner').innerText.includes('NOT BACKED UP')", Duration::from_secs(30)).await;
    assert!(b.text_of("#backup-pill").await.contains("NOT BACKED UP"));
    b.screenshot("backup-down").await;
    s3.resume();
    b.wait("backed up again", "document.getElementById('backup-banner').innerText.startsWith('Backed up')", Duration::from_secs(30)).await;
}

/// Keys and values holding markup and control characters are shown as
/// text; nothing in them runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_keys_and_values_render_as_text() {
    let s = console_server();
    let script_key = "xss/<script>window.__xss=1</script>";
    let img_key = "xss/\"><img src=x onerror=\"window.__xss=2\">";
    let ctl_key = "xss/bell\u{7}tab\u{1}";
    let enc = |k: &str| k.bytes().map(|b| format!("%{b:02X}")).collect::<String>();
    put(&s, &enc(script_key), "<img src=x onerror=\"window.__xss=3\">").await;
    put(&s, &enc(img_key), "<script>window.__xss=4</script>").await;
    put(&s, &enc(ctl_key), "line1\u{1b}[31mred\u{7}").await;
    let b = Browser::start().await;
    b.sign_in(&admin(&s), SECRET).await;
    b.open_node("xss/").await;
    // REST keys split at `/`, also the one in `</script>`.
    b.open_node("<script>window.__xss=1</").await;
    b.open_node("script>").await;
    b.wait(
        "the markup value as text",
        "document.getElementById('value-text')?.textContent === '<img src=x onerror=\"window.__xss=3\">'",
        Duration::from_secs(10),
    )
    .await;
    b.open_node("\"><img src=x onerror=\"window.__xss=2\">").await;
    b.wait(
        "the script value as text",
        "document.getElementById('value-text')?.textContent === '<script>window.__xss=4</script>'",
        Duration::from_secs(10),
    )
    .await;
    b.open_node("bell\\x07tab\\x01").await;
    b.wait(
        "control characters made visible",
        "document.getElementById('value-text')?.textContent === 'line1\\\\x1b[31mred\\\\x07'",
        Duration::from_secs(10),
    )
    .await;
    // Also through the watch panel.
    b.click("#tab-watch").await;
    b.type_into("#watch-prefix", "xss/").await;
    b.click("#watch-toggle").await;
    b.wait_text("live: changes under", Duration::from_secs(10)).await;
    put(&s, &enc("xss/<svg onload=window.__xss=5>"), "<iframe src=javascript:window.__xss=6>").await;
    b.wait(
        "the hostile change row",
        "document.getElementById('watch-rows').innerText.includes('<svg onload=window.__xss=5>')",
        Duration::from_secs(10),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(b.js("return typeof window.__xss;", json!([])).await, json!("undefined"), "hostile data ran");
    assert_eq!(
        b.js("return document.querySelectorAll('img, script:not([src]), iframe, svg:not([id^=chart])').length;", json!([])).await,
        json!(0)
    );
    b.click("#tab-keys").await;
    b.screenshot("hostile").await;
}

/// A mutation without the session's CSRF token (or with a wrong one) is
/// refused with 403 and changes nothing, from the browser and from outside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_without_the_csrf_token_changes_nothing() {
    let s = console_server();
    put(&s, "keep", "original").await;
    let admin = admin(&s);
    let b = Browser::start().await;
    b.sign_in(&admin, SECRET).await;
    b.wait("the console", "!document.getElementById('app').hidden", Duration::from_secs(10)).await;
    let key = B64.encode("keep");
    let val = B64.encode("overwritten");
    let body = json!({ "mutations": [{ "key": key, "type": "set", "value": val, "encoding": "bytes" }] }).to_string();
    let script = "return fetch(arguments[0], { method: arguments[1], headers: arguments[2], body: arguments[3] }).then(r => r.status);";
    let no_token = b.js(script, json!(["/console/api/write", "POST", { "content-type": "application/json" }, body])).await;
    assert_eq!(no_token, json!(403));
    let wrong = b
        .js(script, json!(["/console/api/write", "POST", { "content-type": "application/json", "x-csrf-token": "0".repeat(64) }, body]))
        .await;
    assert_eq!(wrong, json!(403));
    let del = b.js(script, json!(["/console/api/rest/?prefix=k", "DELETE", {}, null])).await;
    assert_eq!(del, json!(403));
    let put_rest = b.js(script, json!(["/console/api/rest/keep", "PUT", {}, "overwritten"])).await;
    assert_eq!(put_rest, json!(403));
    assert_eq!(s.client().get("keep").await.unwrap(), b"original");

    // Outside the browser: sign in over HTTP, then try without the token.
    let http = reqwest::Client::new();
    let r = http.post(format!("{admin}/console/api/login")).json(&json!({ "token": SECRET })).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    let cookie = cookie.split(';').next().unwrap().to_string();
    let csrf = r.json::<Value>().await.unwrap()["csrf"].as_str().unwrap().to_string();
    let post = |token: Option<&str>| {
        let mut req = http.post(format!("{admin}/console/api/write")).header("cookie", &cookie).body(body.clone());
        if let Some(t) = token {
            req = req.header("x-csrf-token", t);
        }
        req.send()
    };
    assert_eq!(post(None).await.unwrap().status(), 403);
    assert_eq!(post(Some("nope")).await.unwrap().status(), 403);
    assert_eq!(s.client().get("keep").await.unwrap(), b"original");
    // Another origin is refused even with the token.
    let r = http
        .post(format!("{admin}/console/api/write"))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .header("origin", "http://evil.example")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(s.client().get("keep").await.unwrap(), b"original");
    // With it, the same request goes through the guest and writes.
    assert_eq!(post(Some(&csrf)).await.unwrap().status(), 200);
    assert_eq!(s.client().get("keep").await.unwrap(), b"overwritten");
}

/// Without S3 the banner says the database is not backed up; on
/// PostgreSQL it says backups are the database's own job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_panel_on_either_backend() {
    let s = console_server();
    let b = Browser::start().await;
    b.sign_in(&admin(&s), SECRET).await;
    b.wait("the console", "!document.getElementById('app').hidden", Duration::from_secs(10)).await;
    b.click("#tab-backup").await;
    if common::backend_is_postgres() {
        b.wait_text("backups belong to the database's own tooling", Duration::from_secs(10)).await;
        assert!(b.text_of("#backend-pill").await.contains("PostgreSQL"));
    } else {
        b.wait_text("NOT BACKED UP — KVSTORE_S3_URL is not set", Duration::from_secs(10)).await;
        assert!(b.text_of("#backup-pill").await.contains("NOT BACKED UP"));
    }
}

/// A token the guest scopes to part of the keys (the scoped-tokens example
/// guest): it signs in with its prefix, sees the keys under it, and the
/// console cannot read anything else with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_only_a_scoped_token_sees_only_its_keys() {
    use sidekv_kvconnect::key::{KeyInt, KeyPart};
    if common::skip_on_postgres("one SQLite file is served by two guests in turn") {
        return;
    }
    let dir = tempdir();
    let db = dir.path().join("db.sqlite3");
    // Data first, through the default guest.
    let mut s = Server::start_at(&db, Opts::default());
    let seven = KeyPart::Int(KeyInt::from_sign_magnitude(false, &[7]).unwrap());
    let mine = deno_key(&[KeyPart::String("users".into()), seven.clone(), KeyPart::String("name".into())]);
    let theirs = deno_key(&[KeyPart::String("admins".into()), seven, KeyPart::String("name".into())]);
    import(&s, &[deno_line(&mine, &v8_string("Ada"), "v8"), deno_line(&theirs, &v8_string("root secret"), "v8")]).await;
    common::terminate(&mut s);
    let opts = Opts::default()
        .env("KVSTORE_ADMIN_ADDR", "127.0.0.1:0")
        .env("KVSTORE_GUEST", common::guest_wasm("scoped_tokens_guest.wasm").to_str().unwrap())
        .env("KVSTORE_GUEST_TOKENS", "deno-users-token=rw:kv:users");
    let s = Server::start_at(&db, opts);
    let b = Browser::start().await;
    b.sign_in(&admin(&s), "not-a-token").await;
    b.wait_text("not accepted", Duration::from_secs(10)).await;
    b.type_into("#token", "deno-users-token").await;
    b.js("document.querySelector('details.scope').open = true;", json!([])).await;
    b.type_into("#scope", "[\"users\"]").await;
    b.click("#signin-button").await;
    b.wait("the console", "!document.getElementById('app').hidden", Duration::from_secs(10)).await;
    b.open_node("7n").await;
    b.open_node("\"name\"").await;
    b.wait("its own value", "document.getElementById('value-text')?.textContent === '\"Ada\"'", Duration::from_secs(10)).await;
    // Everything else is refused by the guest.
    b.type_into("#search", "").await;
    b.click("#search-form button").await;
    b.wait("the refusal", "document.getElementById('tree-status').textContent.includes('not')", Duration::from_secs(10)).await;
    b.type_into("#search", "[\"admins\"]").await;
    b.click("#search-form button").await;
    b.wait(
        "the refusal",
        "document.getElementById('tree-status').textContent.length > 0 && !document.getElementById('tree').innerText.includes('7n')",
        Duration::from_secs(10),
    )
    .await;
    let page = b.js("return document.body.innerText;", json!([])).await;
    assert!(!page.as_str().unwrap().contains("root secret"), "a key outside the token's scope was shown");
}

/// The console works from the keyboard: `/` to search, arrows in the tree,
/// Enter to open a key, digits for the sections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyboard_navigation() {
    let s = console_server();
    put(&s, "users/1/name", "Ada Lovelace").await;
    put(&s, "users/2/name", "Grace Hopper").await;
    let b = Browser::start().await;
    b.sign_in(&admin(&s), SECRET).await;
    b.wait("the tree", "document.getElementById('tree').innerText.includes('users/')", Duration::from_secs(10)).await;
    b.js("document.activeElement.blur();", json!([])).await;
    b.keys("/").await;
    b.wait("the search box focused", "document.activeElement.id === 'search'", Duration::from_secs(5)).await;
    b.keys("users/\u{E007}").await;
    b.wait("the search result", "document.getElementById('tree-root-label').textContent.includes('users/')", Duration::from_secs(10)).await;
    b.wait("its folders", "document.querySelectorAll('#tree .node').length === 2", Duration::from_secs(10)).await;
    b.js("document.querySelector('#tree .node').focus();", json!([])).await;
    b.keys("\u{E014}").await; // → opens 1/
    b.wait("1/ opened", "document.querySelectorAll('#tree .node').length === 3", Duration::from_secs(10)).await;
    b.keys("\u{E015}\u{E007}").await; // ↓ to name, Enter
    b.wait("the value", "document.getElementById('value-text')?.textContent === 'Ada Lovelace'", Duration::from_secs(10)).await;
    b.keys("3").await;
    b.wait("the backup section", "!document.getElementById('panel-backup').hidden", Duration::from_secs(5)).await;
    b.keys("1").await;
    b.wait("the keys section", "!document.getElementById('panel-keys').hidden", Duration::from_secs(5)).await;
}
