//! Operations: the example guests, health/readiness, metrics, JSON logs,
//! `check-config`, the Dockerfile and the README's settings. Misbehaving
//! guests and hot reload are tests/sandbox.rs.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;

fn wasm(name: &str) -> PathBuf {
    guest_wasm(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_tokens_example() {
    let dir = tempdir();
    let s = Server::start_at(
        &dir.path().join("db.sqlite3"),
        Opts::default()
            .env("KVSTORE_GUEST", wasm("scoped_tokens_guest.wasm").to_str().unwrap())
            .env("KVSTORE_GUEST_TOKENS", "app-token=rw:users/,sessions/;report-token=r:*"),
    );
    let http = reqwest::Client::new();
    let u = |p: &str| format!("{}{p}", s.url);
    let send = |m: reqwest::Method, p: &str, tok: Option<&str>| {
        let mut r = http.request(m, u(p)).body("v");
        if let Some(t) = tok {
            r = r.header("authorization", format!("Bearer {t}"));
        }
        r.send()
    };
    use reqwest::Method as M;
    assert_eq!(send(M::POST, "/users/1", Some("app-token")).await.unwrap().status(), 200);
    assert_eq!(send(M::POST, "/admin/1", Some("app-token")).await.unwrap().status(), 403);
    assert_eq!(send(M::POST, "/users/2", Some("report-token")).await.unwrap().status(), 403);
    assert_eq!(send(M::GET, "/users/1", Some("report-token")).await.unwrap().status(), 200);
    assert_eq!(send(M::GET, "/users/1", Some("wrong")).await.unwrap().status(), 401);
    assert_eq!(send(M::GET, "/users/1", None).await.unwrap().status(), 401);
    let list = send(M::GET, "/?prefix=users/", Some("app-token")).await.unwrap().text().await.unwrap();
    assert_eq!(list, r#"{"keys":["users/1"]}"#);
    assert_eq!(send(M::GET, "/?prefix=", Some("app-token")).await.unwrap().status(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics() {
    let dir = tempdir();
    let s = Server::start_at(&dir.path().join("db.sqlite3"), Opts::default().env("KVSTORE_ADMIN_ADDR", "127.0.0.1:0"));
    let admin = s.admin_url.clone().expect("admin address printed");
    assert_eq!(reqwest::get(format!("{admin}/healthz")).await.unwrap().status(), 200);
    assert_eq!(reqwest::get(format!("{admin}/readyz")).await.unwrap().status(), 200);
    let c = s.client();
    for i in 0..7 {
        c.set(&format!("m{i}"), "x").await;
    }
    for _ in 0..3 {
        assert_eq!(c.http.get(c.url("/nope")).header("authorization", SECRET).send().await.unwrap().status(), 404);
    }
    let text = reqwest::get(format!("{admin}/metrics")).await.unwrap().text().await.unwrap();
    assert_eq!(metric(&text, r#"sidekv_requests_total{method="POST",status="200"}"#), Some(7.0), "{text}");
    assert_eq!(metric(&text, r#"sidekv_requests_total{method="GET",status="404"}"#), Some(3.0), "{text}");
    assert!(metric(&text, "sidekv_commit_batch_writes_count").unwrap_or(0.0) >= 7.0);
    assert!(metric(&text, "sidekv_guest_call_duration_seconds_count").unwrap_or(0.0) >= 10.0);
    parse_prometheus(&text);
    assert!(!text.contains(SECRET));

    // `sidekv health` (the container HEALTHCHECK) agrees.
    let addr = admin.trim_start_matches("http://");
    let st = base_command(dir.path()).args(["health", "--addr", addr]).status().unwrap();
    assert!(st.success());
    let st = base_command(dir.path()).args(["health", "--addr", &format!("127.0.0.1:{}", free_port())]).status().unwrap();
    assert!(!st.success());
}

/// A strict-enough parser of the Prometheus text format: every sample line
/// is `name{labels} value` with a declared TYPE, values are numbers, and
/// histogram buckets are cumulative.
fn parse_prometheus(text: &str) {
    let mut types = std::collections::HashMap::new();
    let mut last_bucket: Option<(String, f64)> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let (n, t) = (it.next().unwrap(), it.next().unwrap());
            assert!(["counter", "gauge", "histogram"].contains(&t), "{line}");
            types.insert(n.to_string(), t.to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {line:?}"));
        let v: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name = series.split('{').next().unwrap();
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{line}");
        if let Some(labels) = series.strip_prefix(name)
            && !labels.is_empty()
        {
            assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
            for kv in labels[1..labels.len() - 1].split(',') {
                let (k, val) = kv.split_once('=').unwrap_or_else(|| panic!("{line}"));
                assert!(!k.is_empty() && val.starts_with('"') && val.ends_with('"'), "{line}");
            }
        }
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|b| types.get(*b).is_some_and(|t| t == "histogram"));
        let declared = base.unwrap_or(name);
        assert!(types.contains_key(declared), "no TYPE for {name}");
        if name.ends_with("_bucket") {
            if let Some((prev_name, prev)) = &last_bucket
                && prev_name == name
            {
                assert!(v >= *prev, "buckets not cumulative: {line}");
            }
            last_bucket = Some((name.to_string(), v));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_parse_and_never_hold_the_secret_or_values() {
    let dir = tempdir();
    let mut s =
        Server::start_at(&dir.path().join("db.sqlite3"), Opts::default().env("KVSTORE_LOG_FORMAT", "json").env("RUST_LOG", "debug"));
    let c = s.client();
    c.set("k", "very-private-value-123").await;
    let _ = c.http.get(c.url("/k")).header("authorization", "wrong-secret-xyz").send().await.unwrap();
    s.terminate(Duration::from_secs(20));
    let log = s.log();
    let mut n = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v.get("level").is_some() && v.get("timestamp").is_some(), "{line}");
        n += 1;
    }
    assert!(n >= 3, "{log}");
    assert!(log.contains("\"versionstamp\""), "a debug line per request carries the versionstamp: {log}");
    for secret in [SECRET, "very-private-value-123", "wrong-secret-xyz"] {
        assert!(!log.contains(secret), "log holds {secret:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_restore_then_serves() {
    let s3 = S3::start();
    s3.create_bucket("ready").await;
    s3.pause();
    let dir = tempdir();
    let (port, admin) = (free_port(), free_port());
    let opts =
        s3.env(Opts::default(), "ready", "p").env("KVSTORE_ADMIN_ADDR", &format!("127.0.0.1:{admin}")).env("PORT", &port.to_string());
    let mut cmd = base_command(dir.path());
    cmd.env("KVSTORE_SECRET", SECRET).env("KVSTORE_DB", dir.path().join("db.sqlite3"));
    for (k, v) in &opts.env {
        cmd.env(k, v);
    }
    cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let ready_url = format!("http://127.0.0.1:{admin}/readyz");
    let r = loop {
        if let Ok(r) = http.get(&ready_url).send().await {
            break r;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(r.status(), 503);
    let body = r.text().await.unwrap();
    assert!(body.contains("restoring"), "{body}");
    let main = http.get(format!("http://127.0.0.1:{port}/k")).header("authorization", SECRET).send().await.unwrap();
    assert_eq!(main.status(), 503, "requests during restore get 503, not empty answers");
    s3.resume();
    let deadline = Instant::now() + Duration::from_secs(60);
    while http.get(&ready_url).send().await.map(|r| r.status().as_u16()).unwrap_or(0) != 200 {
        assert!(Instant::now() < deadline, "never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let main = http.get(format!("http://127.0.0.1:{port}/k")).header("authorization", SECRET).send().await.unwrap();
    assert_eq!(main.status(), 404);
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_reports_problems() {
    let s3 = S3::start();
    s3.create_bucket("check-cfg").await;
    let dir = tempdir();
    let run = |opts: Opts| {
        let mut cmd = base_command(dir.path());
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        cmd.env("KVSTORE_DB", dir.path().join("db.sqlite3")).arg("check-config");
        cmd.output().unwrap()
    };
    let good = run(s3.env(Opts::default(), "check-cfg", "p"));
    let out = String::from_utf8_lossy(&good.stdout);
    assert!(good.status.success(), "{out}");
    assert!(out.contains("reachable, writable") && out.contains("guest default loads"), "{out}");
    let bad = run(s3.env(Opts::default(), "no-such-bucket", "p"));
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stdout).contains("FAIL S3"));
    let bad_url = run(Opts::default().env("KVSTORE_S3_URL", "http://nope"));
    assert_eq!(bad_url.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad_url.stdout).contains("KVSTORE_S3_URL"));
}

/// The Dockerfile's build stage cannot run here (no registry): keep it
/// honest, and keep its runtime stage the one `make image` builds and
/// tests/container.rs runs (Containerfile.runtime).
#[test]
fn dockerfile_matches_the_project() {
    let root = repo_root();
    let df = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let makefile = std::fs::read_to_string(root.join("Makefile")).unwrap();
    let mut copies = 0;
    for line in df.lines() {
        let l = line.trim();
        if let Some(rest) = l.strip_prefix("COPY ") {
            if rest.starts_with("--from") {
                continue;
            }
            let parts: Vec<&str> = rest.split_whitespace().collect();
            for src in &parts[..parts.len() - 1] {
                assert!(root.join(src).exists(), "Dockerfile copies {src}, which does not exist");
                copies += 1;
            }
        }
        if let Some(cmd) = l.strip_prefix("RUN make ") {
            let target = cmd.split_whitespace().next().unwrap();
            assert!(makefile.lines().any(|m| m.starts_with(&format!("{target}:"))), "Makefile has no target {target}");
        }
        for script in l.split_whitespace().filter(|w| w.starts_with("scripts/")) {
            assert!(root.join(script).exists(), "Dockerfile runs {script}, which does not exist");
        }
    }
    assert!(copies >= 5);
    assert!(df.contains("scripts/build-image.sh rootfs"), "the build stage lays out the runtime filesystem as `make image` does");
    // Every workspace member the build needs is copied.
    let ws = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let members = ws.split("members = [").nth(1).unwrap().split(']').next().unwrap();
    for m in members.split(',').map(|m| m.trim().trim_matches('"')).filter(|m| !m.is_empty()) {
        assert!(
            df.lines()
                .any(|l| l.starts_with("COPY ")
                    && (l.contains(&format!(" {m} ")) || m.starts_with(l.split_whitespace().nth(1).unwrap_or("-")))),
            "workspace member {m} is not copied into the image"
        );
    }
    // The runtime stage is Containerfile.runtime (which `make image` builds
    // and tests/container.rs runs), but for where its filesystem comes from.
    let instructions = |text: &str| -> Vec<String> {
        let stage = text.split("\nFROM scratch AS runtime\n").nth(1).expect("a `FROM scratch AS runtime` stage");
        stage.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string).collect()
    };
    let runtime = std::fs::read_to_string(root.join("Containerfile.runtime")).unwrap();
    let from_build = instructions(&df);
    let from_context = instructions(&runtime);
    assert_eq!(from_build[0], "COPY --from=build /src/target/image/rootfs/ /");
    assert_eq!(from_context[0], "COPY rootfs/ /");
    assert_eq!(from_build[1..], from_context[1..], "the Dockerfile's runtime stage and Containerfile.runtime differ");
    let stage = runtime.split("\nFROM scratch AS runtime\n").nth(1).unwrap();
    // The image's settings are real settings with matching defaults.
    let help = String::from_utf8(std::process::Command::new(bin()).arg("--help").output().unwrap().stdout).unwrap();
    let env_block = stage.split("\nENV ").nth(1).unwrap().split("\n#").next().unwrap();
    let mut settings = 0;
    for pair in env_block.split_whitespace().filter(|p| p.contains('=')) {
        let (k, v) = pair.split_once('=').unwrap();
        if k == "PATH" {
            assert_eq!(v, "/usr/local/bin", "where scripts/build-image.sh installs sidekv");
            continue;
        }
        settings += 1;
        assert!(help.contains(&format!("[env: {k}")), "image sets {k}, which sidekv does not read");
        if k == "PORT" || k == "KVSTORE_DB" {
            assert!(help.contains(&format!("[default: {v}]")), "image {k}={v} differs from the binary's default");
        }
    }
    assert!(settings >= 5);
    assert!(stage.contains("EXPOSE 8000"));
    assert!(stage.contains("HEALTHCHECK") && stage.contains("\"sidekv\", \"health\""));
    assert!(help.contains("health"), "the HEALTHCHECK subcommand exists");
    assert!(stage.contains("\nUSER 10001:10001\n"), "runs as non-root");
    assert!(stage.contains("\nVOLUME /tmp\n"), "/tmp is writable on a read-only root filesystem");
    let build_image = std::fs::read_to_string(root.join("scripts/build-image.sh")).unwrap();
    assert!(build_image.contains("usr/local/bin/sidekv") && build_image.contains("chmod 1777 \"$CTX/rootfs/tmp\""));
    let di = std::fs::read_to_string(root.join(".dockerignore")).unwrap();
    assert!(di.lines().any(|l| l.trim() == "target"));
}

/// A guest that uses only wasi:keyvalue runs on sidekv, on the same store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasi_keyvalue_guest_runs_on_the_same_store() {
    let dir = tempdir();
    let db = dir.path().join("db.sqlite3");
    let mut s = Server::start_at(&db, Opts::default().env("KVSTORE_GUEST", wasm("kv_only_guest.wasm").to_str().unwrap()));
    let http = reqwest::Client::new();
    let u = |p: &str| format!("{}{p}", s.url);
    let text = |r: reqwest::Response| async move { (r.status().as_u16(), r.text().await.unwrap()) };
    assert_eq!(text(http.post(u("/a")).body("1").send().await.unwrap()).await, (200, "ok".into()));
    assert_eq!(text(http.get(u("/a")).send().await.unwrap()).await, (200, "1".into()));
    assert_eq!(text(http.get(u("/exists/a")).send().await.unwrap()).await, (200, "true".into()));
    assert_eq!(text(http.get(u("/nope")).send().await.unwrap()).await, (404, "not found".into()));
    // Buckets are prefixes.
    assert_eq!(text(http.post(u("/x?bucket=users")).body("u").send().await.unwrap()).await.0, 200);
    assert_eq!(text(http.get(u("/x?bucket=users")).send().await.unwrap()).await, (200, "u".into()));
    assert_eq!(text(http.get(u("/x")).send().await.unwrap()).await.0, 404);
    // Concurrent increments: every one counted, each result distinct.
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (http, url) = (http.clone(), u("/incr/n"));
        tasks.push(tokio::spawn(
            async move { http.post(url).body("1").send().await.unwrap().text().await.unwrap().parse::<u64>().unwrap() },
        ));
    }
    let mut got: Vec<u64> = Vec::new();
    for t in tasks {
        got.push(t.await.unwrap());
    }
    got.sort();
    assert_eq!(got, (1..=20).collect::<Vec<_>>());
    assert_eq!(text(http.post(u("/batch")).body("b1=x;b2=y").send().await.unwrap()).await.0, 200);
    assert_eq!(text(http.get(u("/many/b1,zz,b2")).send().await.unwrap()).await, (200, "b1=x,-,b2=y".into()));
    // list-keys pages through more than one store page.
    let many: String = (0..1500).map(|i| format!("p{i:04}=v")).collect::<Vec<_>>().join(";");
    assert_eq!(http.post(u("/batch?bucket=pages")).body(many).send().await.unwrap().status(), 200);
    let (st, keys) = text(http.get(u("/?bucket=pages")).send().await.unwrap()).await;
    assert_eq!(st, 200);
    let keys: Vec<&str> = keys.split(',').collect();
    assert_eq!(keys.len(), 1500);
    assert_eq!(keys[0], "p0000");
    assert_eq!(keys[1499], "p1499");
    assert_eq!(text(http.delete(u("/a")).send().await.unwrap()).await.0, 200);
    s.terminate(Duration::from_secs(20));

    // The default guest sees the same data.
    let s = Server::start_at(&db, Opts::default());
    let c = s.client();
    assert_eq!(c.get("n").await.unwrap(), b"20");
    assert_eq!(c.get("users/x").await.unwrap(), b"u");
    assert_eq!(c.get("a").await, None);
}

/// Turning backup on for a database that already has history (or pointing
/// it at a new, empty prefix): the backup starts with a snapshot, so a
/// restore rebuilds everything, not just the commits made afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_only_enabling_backup_on_an_existing_database_backs_up_all_of_it() {
    let s3 = S3::start();
    s3.create_bucket("late-backup").await;
    let dir = tempdir();
    let db = dir.path().join("db.sqlite3");
    let mut s = Server::start_at(&db, Opts::default());
    let c = s.client();
    let mut want = Vec::new();
    for i in 0..30 {
        want.push((format!("before/{i}"), c.set(&format!("before/{i}"), format!("b{i}")).await));
    }
    s.terminate(Duration::from_secs(20));

    let opts = || s3.env(Opts::default(), "late-backup", "p").env("KVSTORE_SYNC_INTERVAL", "100ms");
    let mut s = Server::start_at(&db, opts());
    let c = s.client();
    for i in 0..10 {
        want.push((format!("after/{i}"), c.set(&format!("after/{i}"), format!("a{i}")).await));
    }
    s.terminate(Duration::from_secs(30));
    assert!(s.log().contains("starts with a snapshot"), "{}", s.log());
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", db.display()));
    }
    let s = Server::start_at(&db, opts());
    let c = s.client();
    for (k, vs) in &want {
        let r = c.req(reqwest::Method::GET, &format!("/{k}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{k} lost:\n{}", s.log());
        assert_eq!(r.headers()["etag"].to_str().unwrap(), format!("\"{vs}\""));
    }
}

/// Every setting `sidekv --help` lists is in the README's configuration
/// table, with the same default.
/// A cache miss compiles the guest in a child process (`sidekv
/// compile-guest`), so the compiler's memory never becomes the server's; the
/// next start maps the cached code. Garbage given to the child is refused
/// with a message and a failing exit status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_are_compiled_in_a_child_process_then_cached() {
    let dir = tempdir();
    let db = dir.path().join("db.sqlite3");
    let loaded = |s: &Server| s.log().lines().find(|l| l.contains("guest loaded")).map(str::to_string).unwrap_or_default();
    let mut s = Server::start_at(&db, Opts::default());
    assert!(loaded(&s).contains("compiled_in=\"child process\""), "{}", loaded(&s));
    s.client().set("k", "v").await;
    s.terminate(Duration::from_secs(10));
    let s = Server::start_at(&db, Opts::default());
    assert!(loaded(&s).contains("from_cache=true"), "{}", loaded(&s));
    assert_eq!(s.client().get("k").await.as_deref(), Some(&b"v"[..]));

    let mut child = base_command(dir.path())
        .arg("compile-guest")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"not a component").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("compiling:"), "{err}");
}

#[test]
fn readme_documents_every_setting() {
    let help = String::from_utf8(std::process::Command::new(bin()).arg("--help").output().unwrap().stdout).unwrap();
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let mut n = 0;
    for (i, _) in help.match_indices("[env: ") {
        let var: String = help[i + 6..].chars().take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_').collect();
        let row = readme.lines().find(|l| l.starts_with('|') && l.contains(&format!("`{var}`")));
        let row = row.unwrap_or_else(|| panic!("README's configuration table lacks {var}"));
        // The default shown by --help, if any, appears in the row.
        let after = &help[i..];
        // This option's text ends where the next option or group begins.
        let block_end = ["\n\n", "\n      -"].iter().filter_map(|sep| after.find(sep)).min().unwrap_or(after.len());
        if let Some(d) = after[..block_end].split("[default: ").nth(1) {
            let d = d.split(']').next().unwrap();
            assert!(
                row.contains(d) || (var == "KVSTORE_SYNC_INTERVAL" && row.contains("1s")),
                "README row for {var} does not show its default {d:?}: {row}"
            );
        }
        n += 1;
    }
    assert!(n >= 20, "only {n} settings found in --help");
}
