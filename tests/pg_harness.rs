//! The PostgreSQL test harness itself (tests/common/pg.rs): needs the
//! PostgreSQL binaries (`make setup-pg`), not sidekv's PostgreSQL backend.

mod common;
use common::*;

/// Held by the tests that use the shared server: one of them restarts it.
static SHARED: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// psql against a database URL: `select 1` answers `1`.
fn select_one(url: &str) -> Result<String, String> {
    let out = std::process::Command::new(pg_tool("psql"))
        .args(["-X", "-A", "-t", "-c", "select 1", url])
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The shared server: two fresh databases exist and answer, also after a restart.
#[test]
fn shared_server_two_databases_survive_restart() {
    let _g = SHARED.blocking_lock();
    let pg = pg_shared();
    assert!(std::ptr::eq(pg, pg_shared()), "one shared server per process");
    let (a, b) = (fresh_database(), fresh_database());
    assert_ne!(a, b);
    for url in [&a, &b] {
        assert!(url.starts_with(&format!("postgres://postgres@127.0.0.1:{}/t_", pg.port)), "{url}");
        assert_eq!(select_one(url).unwrap(), "1", "{url}");
    }
    let names = pg.psql("postgres", "select datname from pg_database where datname like 't\\_%' order by datname");
    for url in [&a, &b] {
        let name = url.rsplit('/').next().unwrap();
        assert!(names.lines().any(|l| l == name), "{name} not in pg_database:\n{names}");
    }
    let pid = pg.pid();
    pg.restart();
    assert_ne!(pg.pid(), pid, "a new postmaster");
    for url in [&a, &b] {
        assert_eq!(select_one(url).unwrap(), "1", "{url} after restart");
    }
}

/// An owned server: data written before a SIGKILL of the postmaster is there
/// after `restart` (crash recovery); `stop` makes it refuse connections;
/// dropping it removes its directory.
#[test]
fn owned_server_kill9_restart_keeps_data() {
    let pg = PgServer::start();
    pg.create_database("d");
    pg.psql("d", "create table t (k text primary key, v int); insert into t values ('a', 1), ('b', 2)");
    pg.kill9();
    assert!(select_one(&pg.url("d")).is_err(), "answers after kill9");
    pg.restart();
    assert_eq!(pg.psql("d", "select sum(v) from t").trim(), "3");
    pg.stop();
    assert!(!pg.is_running());
    assert!(select_one(&pg.url("d")).is_err(), "answers after stop");
    pg.restart();
    assert_eq!(pg.psql("d", "select count(*) from t").trim(), "2");
    let dir = pg.dir.clone();
    assert!(dir.join("data/PG_VERSION").is_file());
    drop(pg);
    assert!(!dir.exists(), "{} left behind", dir.display());
}

/// The backend switch: `backend_opts` adds KVSTORE_BACKEND only for postgres,
/// and keeps one a test set itself.
#[test]
fn backend_switch() {
    let _g = SHARED.blocking_lock();
    let opts = backend_opts(Opts::default());
    let set = opts.env.iter().find(|(k, _)| k == "KVSTORE_BACKEND");
    assert_eq!(set.is_some(), backend_is_postgres());
    if let Some((_, url)) = set {
        assert_eq!(select_one(url).unwrap(), "1");
    }
    let mine = backend_opts(Opts::default().env("KVSTORE_BACKEND", "postgres://x@127.0.0.1:1/x"));
    assert_eq!(mine.env.iter().filter(|(k, _)| k == "KVSTORE_BACKEND").count(), 1);
}

/// Two sidecars on one database read each other's writes; two on different
/// databases do not. Runs in every pass (it names its databases itself).
#[tokio::test(flavor = "multi_thread")]
async fn start_on_two_sidecars_share_a_database() {
    let _g = SHARED.lock().await;
    let (own, other) = tokio::task::block_in_place(|| (fresh_database(), fresh_database()));
    let (own, other) = tokio::task::block_in_place(|| (start_on(&own, Opts::default()), start_on(&other, Opts::default())));
    own.client().set("only-here", "1").await;
    assert_eq!(other.client().get("only-here").await, None, "two sidecars on different databases share data");
    assert!(!own.db.exists(), "a sidecar on PostgreSQL made its SQLite file");

    let url = tokio::task::block_in_place(fresh_database);
    let (a, b) = tokio::task::block_in_place(|| (start_on(&url, Opts::default()), start_on(&url, Opts::default())));
    a.client().set("from-a", "A").await;
    b.client().set("from-b", "B").await;
    assert_eq!(b.client().get("from-a").await.as_deref(), Some(&b"A"[..]));
    assert_eq!(a.client().get("from-b").await.as_deref(), Some(&b"B"[..]));
    assert!(!a.db.exists() && !b.db.exists(), "a sidecar on PostgreSQL made its SQLite file");
}

/// With `SIDEKV_TEST_BACKEND=postgres`, `Server::start_at` puts a server on
/// the database standing for its path: a relaunch at that path finds the
/// data; another path is another database.
#[tokio::test(flavor = "multi_thread")]
async fn start_at_keeps_one_database_per_path_on_postgres() {
    if !backend_is_postgres() {
        eprintln!("runs with SIDEKV_TEST_BACKEND=postgres (the PostgreSQL pass of make test)");
        return;
    }
    let _g = SHARED.lock().await;
    let dir = tempdir();
    let (p1, p2) = (dir.path().join("one.sqlite3"), dir.path().join("two.sqlite3"));
    let mut a = tokio::task::block_in_place(|| Server::start_at(&p1, Opts::default()));
    a.client().set("k", "v").await;
    assert!(a.backend.is_some() && !p1.exists(), "start_at on PostgreSQL used the SQLite file");
    terminate(&mut a);
    let again = tokio::task::block_in_place(|| Server::start_at(&p1, Opts::default()));
    assert_eq!(again.client().get("k").await.as_deref(), Some(&b"v"[..]), "a relaunch at the same path lost its data");
    let other = tokio::task::block_in_place(|| Server::start_at(&p2, Opts::default()));
    assert_eq!(other.client().get("k").await, None, "another path shares the database");
}
