//! A private PostgreSQL for the tests, and the backend switch.
//!
//! `PgServer::start()` runs initdb in a temporary directory and a postmaster
//! on a free port of 127.0.0.1 (trust auth, user `postgres`, Unix socket in
//! the same directory, log in `postgres.log` there). The binaries come from
//! the newest `/usr/lib/postgresql/*/bin` (`make setup-pg` installs them), or
//! from PATH. As root, initdb and postgres run as the `postgres` user.
//!
//! `pg_shared()` is one server per test process, started on first use;
//! `fresh_database()` makes a new database on it and returns its URL. A static
//! is never dropped, so the shared server is stopped and its directory removed
//! by an `atexit` handler; and every postmaster is spawned from one thread
//! that lives as long as the process, with `PR_SET_PDEATHSIG` = SIGQUIT
//! (immediate shutdown), so even a test process killed with SIGKILL leaves no
//! postgres behind (only its temporary directory).
//!
//! `SIDEKV_TEST_BACKEND=postgres` makes `Server::start_at` (and so
//! `start_temp`) put each server on a database of the shared server
//! (`KVSTORE_BACKEND`), one per database path; unset or `sqlite` keeps the
//! SQLite file. A test that is about SQLite itself (its file, WAL, disk) has
//! `sqlite_only` in its name: the PostgreSQL pass filters those out by name
//! (`--skip sqlite_only`), so cargo counts them as filtered, never as passed.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, TryLockError, mpsc};
use std::time::{Duration, Instant};

use super::server::*;

/// The directory holding initdb/postgres/psql/createdb/pg_isready/pgbench:
/// the newest `/usr/lib/postgresql/<version>/bin`, or `None` to use PATH.
pub fn pg_bin_dir() -> Option<PathBuf> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let mut found: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let bin = e.path().join("bin");
                let version = e.file_name().to_str()?.split('.').map(|p| p.parse().ok()).collect::<Option<Vec<u32>>>()?;
                bin.join("initdb").is_file().then_some((version, bin))
            })
            .collect();
        found.sort();
        found.pop().map(|(_, bin)| bin)
    })
    .clone()
}

/// One PostgreSQL program, by name.
pub fn pg_tool(name: &str) -> PathBuf {
    pg_bin_dir().map(|d| d.join(name)).unwrap_or_else(|| PathBuf::from(name))
}

/// As root, the `postgres` user's (uid, gid): initdb and postgres refuse root.
fn run_as() -> Option<(u32, u32)> {
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let pw = unsafe { libc::getpwnam(c"postgres".as_ptr()) };
    assert!(!pw.is_null(), "running as root, but there is no `postgres` user to run PostgreSQL as (run `make setup-pg`)");
    Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawn from a thread that lives as long as the process. The parent-death
/// signal fires when the spawning *thread* exits, and test threads end with
/// their test; this one ends only with the process.
fn spawn_from_lasting_thread(cmd: Command) -> std::io::Result<Child> {
    static TX: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    let tx = TX.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("pg-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .unwrap();
        tx
    });
    let (reply, answer) = mpsc::channel();
    tx.send((cmd, reply)).unwrap();
    answer.recv().unwrap()
}

/// A PostgreSQL server of the tests' own, in a temporary directory.
pub struct PgServer {
    pub port: u16,
    /// The temporary directory: `data/`, the Unix socket, `postgres.log`.
    pub dir: PathBuf,
    pub data: PathBuf,
    pub log_path: PathBuf,
    user: Option<(u32, u32)>,
    child: Mutex<Option<Child>>,
    /// The postmaster's pid (0 when stopped), readable without the lock (at exit).
    pid: AtomicI32,
}

impl PgServer {
    /// initdb in a new temporary directory, then a postmaster on a free port; panics with the log on failure.
    pub fn start() -> PgServer {
        let dir = tempfile::Builder::new().prefix("sidekv-pg-").tempdir().unwrap().keep();
        let user = run_as();
        let c_dir = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
        unsafe {
            libc::chmod(c_dir.as_ptr(), 0o755);
            if let Some((uid, gid)) = user {
                assert_eq!(libc::chown(c_dir.as_ptr(), uid, gid), 0, "chown {}", dir.display());
            }
        }
        let data = dir.join("data");
        let log_path = dir.join("postgres.log");
        let mut s = PgServer { port: 0, dir: dir.clone(), data, log_path, user, child: Mutex::new(None), pid: AtomicI32::new(0) };

        let initdb_log = dir.join("initdb.log");
        let mut cmd = Command::new(pg_tool("initdb"));
        cmd.arg("-D").arg(&s.data).args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"]);
        s.as_pg_user(&mut cmd);
        let out = std::fs::File::create(&initdb_log).unwrap();
        let st = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .status()
            .unwrap_or_else(|e| panic!("running {} ({e}): run `make setup-pg`", pg_tool("initdb").display()));
        assert!(st.success(), "initdb failed ({st}):\n{}", std::fs::read_to_string(&initdb_log).unwrap_or_default());

        // The free port can be taken between the probe and the bind: retry on another.
        let mut last = String::new();
        for _ in 0..10 {
            s.port = free_port();
            match s.spawn_postmaster(Duration::from_secs(60)) {
                Ok(()) => return s,
                Err(log) if log.contains("could not bind") || log.contains("another server") => last = log,
                Err(log) => panic!("PostgreSQL did not start on port {}:\n{log}", s.port),
            }
        }
        panic!("PostgreSQL found no free port:\n{last}");
    }

    /// cwd, environment and (as root) user for initdb/postgres.
    fn as_pg_user(&self, cmd: &mut Command) {
        cmd.current_dir(&self.dir).env("LC_ALL", "C").env_remove("PGDATA").env_remove("PGPORT").env_remove("PGHOST");
        if let Some((uid, gid)) = self.user {
            cmd.uid(uid).gid(gid);
        }
    }

    fn child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The postmaster on `self.port`; Err(log of this attempt) if it exits or another server answers there.
    fn spawn_postmaster(&self, within: Duration) -> Result<(), String> {
        let mut guard = self.child();
        assert!(guard.is_none(), "PostgreSQL is already running");
        let log_start = std::fs::metadata(&self.log_path).map(|m| m.len()).unwrap_or(0);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log_path).unwrap();
        let mut cmd = Command::new(pg_tool("postgres"));
        cmd.arg("-D").arg(&self.data).arg("-p").arg(self.port.to_string()).arg("-k").arg(&self.dir);
        for c in ["listen_addresses=127.0.0.1", "shared_buffers=128MB", "max_connections=300", "fsync=on"] {
            cmd.args(["-c", c]);
        }
        self.as_pg_user(&mut cmd);
        cmd.stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
        let parent = std::process::id() as i32;
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Immediate shutdown if this process dies without stopping it.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    libc::_exit(1); // the parent is already gone
                }
                Ok(())
            });
        }
        let mut child = spawn_from_lasting_thread(cmd)
            .unwrap_or_else(|e| panic!("spawning {} ({e}): run `make setup-pg`", pg_tool("postgres").display()));
        let this_log = || {
            let mut f = std::fs::File::open(&self.log_path).unwrap();
            std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(log_start)).unwrap();
            let mut s = String::new();
            let _ = f.read_to_string(&mut s);
            s
        };
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return Err(format!("postgres exited with {st}:\n{}", this_log()));
            }
            let ready = Command::new(pg_tool("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-p", &self.port.to_string()])
                .stdin(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ready {
                // Ours, and not another server that holds the port?
                match self.try_psql("postgres", "SHOW data_directory") {
                    Ok(d) if Path::new(d.trim()) == self.data => {}
                    other => {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(format!("another server answers on port {}: {other:?}\n{}", self.port, this_log()));
                    }
                }
                self.pid.store(child.id() as i32, Ordering::SeqCst);
                *guard = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("postgres not ready within {within:?}:\n{}", this_log()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `postgres://postgres@127.0.0.1:PORT/db`
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// `createdb` (panics with its stderr on failure).
    pub fn create_database(&self, name: &str) {
        let out = Command::new(pg_tool("createdb"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", name])
            .stdin(Stdio::null())
            .output()
            .expect("running createdb");
        assert!(out.status.success(), "createdb {name}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Run SQL in `db` with psql (unaligned, tuples only): its stdout, or Err(stderr).
    pub fn try_psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(pg_tool("psql"))
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres"])
            .args(["-p", &self.port.to_string(), "-d", db, "-c", sql])
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running psql: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// `try_psql`, panicking on failure.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.try_psql(db, sql).unwrap_or_else(|e| panic!("psql -d {db} -c {sql:?}: {e}"))
    }

    pub fn pid(&self) -> i32 {
        self.pid.load(Ordering::SeqCst)
    }

    pub fn is_running(&self) -> bool {
        self.child().as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Send `sig` to the postmaster and wait up to `grace` for it to exit, then SIGKILL.
    fn stop_with(guard: &mut Option<Child>, pid: &AtomicI32, sig: i32, grace: Duration) {
        if let Some(mut c) = guard.take() {
            unsafe { libc::kill(c.id() as i32, sig) };
            let deadline = Instant::now() + grace;
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        pid.store(0, Ordering::SeqCst);
    }

    /// Fast shutdown (SIGINT: sessions are ended, a checkpoint is written) and wait.
    pub fn stop(&self) {
        Self::stop_with(&mut self.child(), &self.pid, libc::SIGINT, Duration::from_secs(60));
    }

    /// SIGKILL the postmaster (its backends notice and exit on their own); `restart` recovers.
    pub fn kill9(&self) {
        Self::stop_with(&mut self.child(), &self.pid, libc::SIGKILL, Duration::ZERO);
    }

    /// Stop (if running), then start again on the same data directory and port.
    /// After `kill9` the old backends may still hold the shared memory for a
    /// moment: PostgreSQL refuses to start until they are gone, so retry.
    pub fn restart(&self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.spawn_postmaster(Duration::from_secs(60)) {
                Ok(()) => return,
                Err(log) if Instant::now() < deadline && log.contains("pre-existing shared memory block") => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(log) => panic!("PostgreSQL did not restart on port {}:\n{log}", self.port),
            }
        }
    }

    /// Stop without waiting for a checkpoint (SIGQUIT: the data is thrown away) and remove the directory.
    /// Safe at exit: never blocks on the lock.
    fn teardown(&self) {
        match self.child.try_lock() {
            Ok(mut g) => Self::stop_with(&mut g, &self.pid, libc::SIGQUIT, Duration::from_secs(10)),
            Err(TryLockError::Poisoned(p)) => Self::stop_with(&mut p.into_inner(), &self.pid, libc::SIGQUIT, Duration::from_secs(10)),
            Err(TryLockError::WouldBlock) => {
                let pid = self.pid();
                if pid > 0 {
                    unsafe { libc::kill(pid, libc::SIGQUIT) };
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.teardown();
    }
}

static SHARED: OnceLock<PgServer> = OnceLock::new();

extern "C" fn stop_shared_at_exit() {
    if let Some(s) = SHARED.get() {
        s.teardown();
    }
}

/// The test process's one PostgreSQL, started on first use, stopped at exit.
pub fn pg_shared() -> &'static PgServer {
    SHARED.get_or_init(|| {
        let s = PgServer::start();
        unsafe { libc::atexit(stop_shared_at_exit) };
        s
    })
}

/// A new, uniquely named database on the shared server: its URL.
pub fn fresh_database() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let name = format!("t_{}_{}_{nanos}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
    let pg = pg_shared();
    pg.create_database(&name);
    pg.url(&name)
}

/// `SIDEKV_TEST_BACKEND`: unset or `sqlite` → false, `postgres` → true.
pub fn backend_is_postgres() -> bool {
    match std::env::var("SIDEKV_TEST_BACKEND").as_deref() {
        Err(_) | Ok("") | Ok("sqlite") => false,
        Ok("postgres") => true,
        Ok(other) => panic!("SIDEKV_TEST_BACKEND={other}: expected `sqlite` or `postgres`"),
    }
}

/// For a test that only makes sense on SQLite (or S3): true, after printing why, when it should skip.
pub fn skip_on_postgres(why: &str) -> bool {
    if backend_is_postgres() {
        eprintln!("skipped with SIDEKV_TEST_BACKEND=postgres: {why}");
    }
    backend_is_postgres()
}

/// `opts` for the backend under test: with `SIDEKV_TEST_BACKEND=postgres`,
/// `KVSTORE_BACKEND` on a fresh database (unless `opts` already names one).
pub fn backend_opts(opts: Opts) -> Opts {
    if backend_is_postgres() && !opts.env.iter().any(|(k, _)| k == "KVSTORE_BACKEND") {
        opts.env("KVSTORE_BACKEND", &fresh_database())
    } else {
        opts
    }
}

/// `opts` for a server whose store is "at" `db`: with
/// `SIDEKV_TEST_BACKEND=postgres`, `KVSTORE_BACKEND` on the database that
/// stands for that path — one per path, made on first use — so a relaunch at
/// the same path finds its data, as it would in the SQLite file (unless
/// `opts` names a backend itself). `Server::start_at` applies it, so every
/// suite of the PostgreSQL pass really runs on PostgreSQL.
pub fn backend_opts_at(db: &Path, opts: Opts) -> Opts {
    if !backend_is_postgres() || opts.env.iter().any(|(k, _)| k == "KVSTORE_BACKEND") {
        return opts;
    }
    static BY_PATH: Mutex<std::collections::BTreeMap<PathBuf, String>> = Mutex::new(std::collections::BTreeMap::new());
    let url = BY_PATH.lock().unwrap_or_else(|e| e.into_inner()).entry(db.to_path_buf()).or_insert_with(fresh_database).clone();
    opts.env("KVSTORE_BACKEND", &url)
}

/// A server on the PostgreSQL database `url` (several may share one), with
/// a temporary directory of its own for logs and the cache.
pub fn start_on(url: &str, opts: Opts) -> TempServer {
    start_temp(opts.env("KVSTORE_BACKEND", url))
}
