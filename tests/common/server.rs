//! The sidekv process under test, its options, and a client for it.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

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
    /// `KVSTORE_BACKEND` it was started with (a PostgreSQL URL), if any.
    pub backend: Option<String>,
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
        let opts = super::pg::backend_opts_at(db, opts);
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
        let backend = opts.env.iter().rev().find(|(k, _)| k == "KVSTORE_BACKEND").map(|(_, v)| v.clone());
        let mut s = Server {
            child,
            port: 0,
            url: String::new(),
            admin_url: None,
            db: db.to_path_buf(),
            stderr_path,
            stdout_lines: vec![],
            backend,
        };
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

    /// `opts` for a relaunch on this server's data: the same database file
    /// and, on PostgreSQL, the same database.
    pub fn same_store(&self, opts: Opts) -> Opts {
        match &self.backend {
            Some(url) => opts.env("KVSTORE_BACKEND", url),
            None => opts,
        }
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

/// Start a server on a fresh temporary database: a SQLite file, or with
/// `SIDEKV_TEST_BACKEND=postgres` a fresh database on the shared PostgreSQL
/// (the directory still holds the logs and the cache; see `Server::start_at`).
pub fn start_temp(opts: Opts) -> TempServer {
    let dir = tempdir();
    let s = Server::start_at(&dir.path().join("db.sqlite3"), opts);
    TempServer { s, _dir: dir }
}

/// A fresh temporary directory for one test.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("sidekv-test-").tempdir().unwrap()
}
