//! Test harness shared by the integration tests: spawns the real `sidekv`
//! binary on port 0 (reading the port from its `listening on` line) and a
//! real S3-compatible server (moto from the project's venv, or the endpoint
//! in `SIDEKV_TEST_S3_ENDPOINT`). Spawned processes get a clean environment:
//! no stray AWS_* settings are inherited.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod ops;
#[allow(unused_imports)] // each test binary uses its own subset
pub use ops::*;

pub const SECRET: &str = "test-secret";

/// The binary under test: this build's, or `SIDEKV_TEST_BIN` (to run a
/// suite against another build, e.g. to show a test fails without a fix).
pub fn bin() -> PathBuf {
    std::env::var_os("SIDEKV_TEST_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_sidekv")))
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running sidekv process.
pub struct Server {
    pub child: Child,
    pub port: u16,
    pub url: String,
    pub admin_url: Option<String>,
    pub db: PathBuf,
    pub stderr_path: PathBuf,
    pub stdout_lines: Vec<String>,
}

/// How to start a server: extra env on top of the defaults.
#[derive(Clone, Default)]
pub struct Opts {
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
    /// Wait for readiness (the `listening on` line). False for start-up failure tests.
    pub no_wait: bool,
}

impl Opts {
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.into());
        self
    }
}

pub fn base_command(dir: &Path) -> Command {
    let mut cmd = Command::new(bin());
    cmd.env_clear();
    for k in ["PATH", "HOME", "TMPDIR"] {
        if let Ok(v) = std::env::var(k) {
            cmd.env(k, v);
        }
    }
    cmd.env("RUST_LOG", "info,sidekv=debug");
    cmd.env("KVSTORE_CACHE_DIR", dir.join("cache"));
    cmd
}

impl Server {
    /// Start with the database at `db` (the directory is also used for logs).
    pub fn start_at(db: &Path, opts: Opts) -> Server {
        let dir = db.parent().unwrap().to_path_buf();
        let mut cmd = base_command(&dir);
        cmd.env("KVSTORE_SECRET", SECRET).env("PORT", "0").env("KVSTORE_DB", db);
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        cmd.args(&opts.args);
        let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let stderr_path = dir.join(format!("server-{n}.log"));
        cmd.stdout(Stdio::piped()).stderr(std::fs::File::create(&stderr_path).unwrap());
        let mut child = cmd.spawn().expect("spawning sidekv");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    // keep draining so the server never blocks on a full pipe
                }
            }
        });
        let mut s = Server { child, port: 0, url: String::new(), admin_url: None, db: db.to_path_buf(), stderr_path, stdout_lines: vec![] };
        if opts.no_wait {
            return s;
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(line) => {
                    if let Some(a) = line.strip_prefix("admin on ") {
                        s.admin_url = Some(a.trim().to_string());
                    }
                    if let Some(u) = line.strip_prefix("listening on ") {
                        s.url = u.trim().to_string();
                        s.port = s.url.rsplit(':').next().unwrap().parse().unwrap();
                        s.stdout_lines.push(line);
                        break;
                    }
                    s.stdout_lines.push(line);
                }
                Err(_) => {
                    if let Ok(Some(st)) = s.child.try_wait() {
                        panic!("sidekv exited with {st} before listening:\n{}", s.log());
                    }
                    if Instant::now() >= deadline {
                        panic!("sidekv did not print `listening on` in time:\n{}", s.log());
                    }
                }
            }
        }
        s
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit (panics after `timeout`).
    pub fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                self.kill9();
                panic!("sidekv did not exit within {timeout:?} of SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.pid(), sig) };
    }

    pub fn client(&self) -> Client {
        Client { base: self.url.clone(), http: reqwest::Client::builder().pool_max_idle_per_host(64).build().unwrap() }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A small HTTP client bound to one server, with the test secret.
#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub http: reqwest::Client,
}

impl Client {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }
    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path)).header("authorization", SECRET)
    }
    pub async fn set(&self, key: &str, value: impl Into<reqwest::Body>) -> String {
        let r = self.req(reqwest::Method::POST, &format!("/{key}")).body(value).send().await.unwrap();
        assert_eq!(r.status(), 200, "POST /{key}");
        let v: serde_json::Value = r.json().await.unwrap();
        v["versionstamp"].as_str().unwrap().to_string()
    }
    pub async fn get(&self, key: &str) -> Option<Vec<u8>> {
        let r = self.req(reqwest::Method::GET, &format!("/{key}")).send().await.unwrap();
        match r.status().as_u16() {
            200 => Some(r.bytes().await.unwrap().to_vec()),
            404 => None,
            s => panic!("GET /{key}: {s} {}", r.text().await.unwrap()),
        }
    }
}

/// A real S3-compatible server for tests.
pub struct S3 {
    child: Option<Child>,
    pub endpoint: String,
    pub port: u16,
}

impl S3 {
    /// moto from `.venv` (installed by `make setup`), or `SIDEKV_TEST_S3_ENDPOINT`.
    pub fn start() -> S3 {
        if let Ok(ep) = std::env::var("SIDEKV_TEST_S3_ENDPOINT") {
            return S3 { child: None, endpoint: ep, port: 0 };
        }
        let mut s = S3 { child: None, endpoint: String::new(), port: 0 };
        // The free port can be taken by another test's process between our
        // probe and moto's bind: check that moto itself answers, else retry.
        for _ in 0..10 {
            if s.spawn(free_port()) {
                return s;
            }
        }
        panic!("could not start moto_server on a free port");
    }

    fn moto_bin() -> PathBuf {
        let venv = repo_root().join(".venv/bin/moto_server");
        if venv.exists() { venv } else { PathBuf::from("moto_server") }
    }

    /// Start moto on `port`; false if something else answers there.
    fn spawn(&mut self, port: u16) -> bool {
        let mut child = Command::new(Self::moto_bin())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env_remove("AWS_CA_BUNDLE")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting moto_server (run `make setup`)");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return false; // it could not bind
            }
            if let Some(body) = http_get_raw(port, "/") {
                if body.contains("ListAllMyBucketsResult") {
                    break;
                }
                let _ = child.kill();
                let _ = child.wait();
                return false; // another server holds the port
            }
            assert!(Instant::now() < deadline, "moto did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child = Some(child);
        self.port = port;
        self.endpoint = format!("http://127.0.0.1:{port}");
        true
    }

    /// Stop the server (S3 outage). Moto keeps data in memory, so `resume`
    /// starts an empty server: use `pause`/`resume` (SIGSTOP/SIGCONT) to
    /// simulate an outage that keeps the data.
    pub fn pause(&self) {
        if let Some(c) = &self.child {
            unsafe { libc::kill(c.id() as i32, libc::SIGSTOP) };
        }
    }

    pub fn resume(&self) {
        if let Some(c) = &self.child {
            unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
        }
    }

    /// Create a bucket (moto accepts unsigned requests).
    pub async fn create_bucket(&self, bucket: &str) {
        let r = reqwest::Client::new().put(format!("{}/{bucket}", self.endpoint)).send().await.unwrap();
        assert!(r.status().is_success() || r.status() == 409, "create bucket: {}", r.status());
    }

    /// Env for a server using `s3://bucket/prefix` on this endpoint.
    pub fn env(&self, opts: Opts, bucket: &str, prefix: &str) -> Opts {
        opts.env("KVSTORE_S3_URL", &format!("s3://{bucket}/{prefix}"))
            .env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
    }

    /// Object keys under a prefix (unsigned ListObjectsV2, moto accepts it).
    pub async fn list(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let body = reqwest::Client::new()
            .get(format!("{}/{bucket}?list-type=2&prefix={prefix}", self.endpoint))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        body.split("<Key>").skip(1).map(|s| s.split("</Key>").next().unwrap().to_string()).collect()
    }

    pub async fn get_object(&self, bucket: &str, key: &str) -> Vec<u8> {
        reqwest::Client::new().get(format!("{}/{bucket}/{key}", self.endpoint)).send().await.unwrap().bytes().await.unwrap().to_vec()
    }

    pub async fn put_object(&self, bucket: &str, key: &str, body: Vec<u8>) {
        let r = reqwest::Client::new().put(format!("{}/{bucket}/{key}", self.endpoint)).body(body).send().await.unwrap();
        assert!(r.status().is_success());
    }

    pub async fn delete_object(&self, bucket: &str, key: &str) {
        reqwest::Client::new().delete(format!("{}/{bucket}/{key}", self.endpoint)).send().await.unwrap();
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A fresh temporary directory for one test.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("sidekv-test-").tempdir().unwrap()
}

/// Signed object access. Moto 5 answers unsigned GETs (and overwrites) of
/// objects with 403, so `get_object` / `put_object` / `delete_object` above
/// only work for new objects; these go through the AWS SDK instead.
impl S3 {
    pub fn sdk(&self) -> aws_sdk_s3::Client {
        let conf = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .credentials_provider(aws_sdk_s3::config::Credentials::new("test", "test", None, None, "sidekv-tests"))
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    pub async fn get_signed(&self, bucket: &str, key: &str) -> Vec<u8> {
        let o = self.sdk().get_object().bucket(bucket).key(key).send().await.unwrap_or_else(|e| panic!("GET {key}: {e:?}"));
        o.body.collect().await.unwrap().into_bytes().to_vec()
    }

    pub async fn put_signed(&self, bucket: &str, key: &str, body: Vec<u8>) {
        self.sdk()
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(aws_sdk_s3::primitives::ByteStream::from(body))
            .send()
            .await
            .unwrap_or_else(|e| panic!("PUT {key}: {e:?}"));
    }

    pub async fn delete_signed(&self, bucket: &str, key: &str) {
        self.sdk().delete_object().bucket(bucket).key(key).send().await.unwrap_or_else(|e| panic!("DELETE {key}: {e:?}"));
    }
}

/// A server plus the temporary directory holding its database and logs.
/// Fields drop in order: the server is killed before the directory goes.
pub struct TempServer {
    pub s: Server,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for TempServer {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.s
    }
}

impl std::ops::DerefMut for TempServer {
    fn deref_mut(&mut self) -> &mut Server {
        &mut self.s
    }
}

/// Start a server on a fresh temporary database.
pub fn start_temp(opts: Opts) -> TempServer {
    let dir = tempdir();
    let s = Server::start_at(&dir.path().join("db.sqlite3"), opts);
    TempServer { s, _dir: dir }
}

/// Key → (value, versionstamp): a server's whole state.
pub type State = std::collections::BTreeMap<String, (Vec<u8>, String)>;

/// Every live entry, through the list API (following cursors).
pub async fn dump(c: &Client) -> State {
    use base64::Engine as _;
    let mut out = State::new();
    let mut cursor = String::new();
    loop {
        let r = c.req(reqwest::Method::GET, "/").query(&[("limit", "1000"), ("cursor", cursor.as_str())]).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.unwrap();
        for e in v["entries"].as_array().unwrap() {
            let value = base64::engine::general_purpose::STANDARD.decode(e["value"].as_str().unwrap()).unwrap();
            out.insert(e["key"].as_str().unwrap().to_string(), (value, e["versionstamp"].as_str().unwrap().to_string()));
        }
        match v["cursor"].as_str() {
            Some(c) if !c.is_empty() => cursor = c.to_string(),
            _ => break,
        }
    }
    out
}

/// A plain HTTP/1.1 GET over std (no runtime needed); `None` if nothing listens.
fn http_get_raw(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(c, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    Some(out)
}

/// GET one key: (value, versionstamp from the ETag).
pub async fn get_vs(c: &Client, key: &str) -> Option<(Vec<u8>, String)> {
    let r = c.req(reqwest::Method::GET, &format!("/{key}")).send().await.unwrap();
    match r.status().as_u16() {
        200 => {
            let etag = r.headers().get("etag").expect("ETag").to_str().unwrap().trim_matches('"').to_string();
            Some((r.bytes().await.unwrap().to_vec(), etag))
        }
        404 => None,
        s => panic!("GET /{key}: {s} {}", r.text().await.unwrap()),
    }
}

/// Every entry of a database file, read directly (after an integrity check).
pub fn read_db(path: &Path) -> State {
    let c = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let ok: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(ok, "ok", "integrity_check of {}", path.display());
    let mut s = c.prepare("SELECT CAST(key AS TEXT), value, version FROM kv ORDER BY key").unwrap();
    s.query_map([], |r| {
        let v = r.get::<_, i64>(2)? as u64;
        Ok((r.get::<_, String>(0)?, (r.get::<_, Vec<u8>>(1)?, format!("{:016x}{:04x}", v >> 16, v & 0xffff))))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}
