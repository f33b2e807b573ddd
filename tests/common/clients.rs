//! The real JavaScript clients the KV Connect and queue suites run as child
//! processes: the `deno` CLI (from the project venv) and Node with npm
//! `@deno/kv` (`make setup-deno`), in a clean environment, killed when they
//! hang. `SIDEKV_SKIP_KVCONNECT=1` skips every test that needs them, saying so.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::server::repo_root;

/// How long one client script may run before it is killed (it hung).
pub const SCRIPT_TIMEOUT: Duration = Duration::from_secs(240);

/// True (after saying why) when the real clients are not to be run.
pub fn skip_js_clients() -> bool {
    if std::env::var("SIDEKV_SKIP_KVCONNECT").as_deref() == Ok("1") {
        eprintln!("skipped: SIDEKV_SKIP_KVCONNECT=1 (the real Deno/Node clients are not run)");
        return true;
    }
    false
}

pub fn deno_bin() -> PathBuf {
    let p = repo_root().join(".venv/bin/deno");
    assert!(p.is_file(), "{} is missing: run `make setup-deno` (or set SIDEKV_SKIP_KVCONNECT=1 to skip these tests)", p.display());
    p
}

pub fn node_bin() -> PathBuf {
    let ok = Command::new("node").arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    assert!(ok, "`node` is not on PATH: run `make setup-deno` (or set SIDEKV_SKIP_KVCONNECT=1 to skip these tests)");
    let pkg = repo_root().join("tests/kvconnect/node/node_modules/@deno/kv/package.json");
    assert!(pkg.is_file(), "{} is missing: run `make setup-deno` (or set SIDEKV_SKIP_KVCONNECT=1 to skip these tests)", pkg.display());
    PathBuf::from("node")
}

/// A clean environment for a client: no proxies or tokens inherited.
pub fn clean(cmd: &mut Command) {
    cmd.env_clear();
    for k in ["PATH", "HOME", "TMPDIR", "LANG"] {
        if let Ok(v) = std::env::var(k) {
            cmd.env(k, v);
        }
    }
    cmd.env("NO_COLOR", "1");
}

/// `deno run` of `script` with `DENO_KV_ACCESS_TOKEN` (Deno's own client)
/// and `KVCONNECT_TOKEN` set to `token` (both unset if `None`).
pub fn deno_command(script: &Path, args: &[&str], token: Option<&str>) -> Command {
    let mut cmd = Command::new(deno_bin());
    clean(&mut cmd);
    cmd.env("DENO_NO_UPDATE_CHECK", "1").env("DENO_DIR", repo_root().join(".venv/deno-dir"));
    if let Some(t) = token {
        cmd.env("DENO_KV_ACCESS_TOKEN", t).env("KVCONNECT_TOKEN", t);
    }
    cmd.args(["run", "--quiet", "--no-prompt", "--unstable-kv", "--allow-net", "--allow-env", "--allow-read"]);
    cmd.arg(script).args(args);
    cmd
}

/// `node` on `script` with `KVCONNECT_TOKEN = token` (openKv's accessToken).
pub fn node_command(script: &Path, args: &[&str], token: &str) -> Command {
    let mut cmd = Command::new(node_bin());
    clean(&mut cmd);
    cmd.env("KVCONNECT_TOKEN", token);
    cmd.arg(script).args(args);
    cmd
}

/// A finished client run.
pub struct Ran {
    pub what: String,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl Ran {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    pub fn report(&self) -> String {
        format!(
            "{} exited with {:?} after {:.1?}\n--- stdout\n{}\n--- stderr\n{}",
            self.what,
            self.code,
            self.took,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

/// Run a client to completion (killed after `SCRIPT_TIMEOUT`), off the async runtime.
pub fn run_client(mut cmd: Command, what: &str) -> Ran {
    tokio::task::block_in_place(|| {
        let t0 = Instant::now();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what}: {e} (run `make setup-deno`)"));
        let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let o = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let e = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        let code = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st.code();
            }
            if t0.elapsed() > SCRIPT_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut stderr = e.join().unwrap();
        if code.is_none() && t0.elapsed() > SCRIPT_TIMEOUT {
            stderr.push_str(&format!("\n(killed: still running after {SCRIPT_TIMEOUT:?})"));
        }
        Ran { what: what.to_string(), code, stdout: o.join().unwrap(), stderr, took: t0.elapsed() }
    })
}
