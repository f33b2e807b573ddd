//! The container image, for real: `make image` builds `sidekv:latest`
//! (Containerfile.runtime: a static musl sidekv on an empty base) into
//! podman's local storage, and these tests run it with podman and runc
//! (scripts/podman.sh), tear it down and relaunch it. Every container uses
//! the host network on free ports, gets its environment explicitly, and is
//! removed when its guard drops, also when a test fails.
//!
//! Nothing is skipped: without podman or the image the tests fail and say
//! what to run (`make test` runs both first).

mod common;

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::*;

const DEMO_SECRET: &str = "denorocks";

/// The image under test: `SIDEKV_TEST_IMAGE`, else what `make image` builds.
fn image() -> String {
    std::env::var("SIDEKV_TEST_IMAGE").unwrap_or_else(|_| "sidekv:latest".into())
}

fn podman() -> Command {
    let mut c = Command::new(repo_root().join("scripts/podman.sh"));
    c.env_remove("CONTAINERS_CONF");
    c
}

fn run_podman(args: &[&str]) -> Output {
    podman().args(args).output().unwrap_or_else(|e| panic!("running scripts/podman.sh {args:?}: {e}"))
}

/// Run podman, panic unless it succeeds; its stdout.
fn podman_ok(args: &[&str]) -> String {
    let out = run_podman(args);
    assert!(out.status.success(), "podman {args:?} failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Podman and the image are there, else a panic that says how to get them.
fn require_image() {
    let found = Command::new("podman").arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    assert!(found, "podman is missing: run scripts/setup-container.sh, then `make image` (`make test` does both)");
    let exists = run_podman(&["image", "exists", &image()]);
    assert!(exists.status.success(), "the image {} is not in podman's local storage: run `make image` (`make test` runs it)", image());
}

/// A running container; removed (with its anonymous volumes) on drop.
struct Container {
    name: String,
    port: u16,
    admin: u16,
}

/// How to run one.
#[derive(Default, Clone)]
struct Run {
    env: Vec<(String, String)>,
    podman_args: Vec<String>,
}

impl Run {
    fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
    fn arg(mut self, a: &str) -> Self {
        self.podman_args.push(a.into());
        self
    }
    /// The S3 settings for `s3://bucket/prefix` on the test's moto server.
    fn s3(mut self, s3: &S3, bucket: &str, prefix: &str) -> Self {
        self.env.extend(s3.env(Opts::default(), bucket, prefix).env);
        self
    }
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl Container {
    /// `podman run -d` on the host network, on free ports, and wait until
    /// /readyz answers 200 (any restore from S3 is done).
    fn start(run: &Run) -> Container {
        require_image();
        let name = format!("sidekv-test-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst));
        let port = free_port();
        let admin = std::iter::repeat_with(free_port).find(|p| *p != port).unwrap();
        let mut args: Vec<String> = ["run", "-d", "--name", &name, "--network", "host"].iter().map(|s| s.to_string()).collect();
        args.extend(run.podman_args.iter().cloned());
        let mut env = vec![
            ("HOST".to_string(), "127.0.0.1".to_string()),
            ("PORT".into(), port.to_string()),
            ("KVSTORE_ADMIN_ADDR".into(), format!("127.0.0.1:{admin}")),
            ("KVSTORE_SECRET".into(), DEMO_SECRET.into()),
            ("RUST_LOG".into(), "info".into()),
        ];
        env.extend(run.env.iter().cloned());
        for (k, v) in env {
            args.push("--env".into());
            args.push(format!("{k}={v}"));
        }
        args.push(image());
        let c = Container { name, port, admin };
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        podman_ok(&argv);
        c.wait_ready();
        c
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if http_status(self.admin, "/readyz") == Some(200) {
                return;
            }
            let state = podman_ok(&["inspect", "--format", "{{.State.Status}}", &self.name]);
            assert!(state.trim() == "running", "container {} is {} before ready:\n{}", self.name, state.trim(), self.logs());
            assert!(Instant::now() < deadline, "container {} not ready in time:\n{}", self.name, self.logs());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn logs(&self) -> String {
        let out = run_podman(&["logs", &self.name]);
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }

    fn client(&self) -> Client {
        Client { base: format!("http://127.0.0.1:{}", self.port), http: reqwest::Client::new() }
    }

    fn inspect(&self, format: &str) -> String {
        podman_ok(&["inspect", "--format", format, &self.name]).trim().to_string()
    }

    /// The container's main process, as the host sees it.
    fn pid(&self) -> u32 {
        self.inspect("{{.State.Pid}}").parse().unwrap()
    }

    fn exit_code(&self) -> i32 {
        self.inspect("{{.State.ExitCode}}").parse().unwrap()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = run_podman(&["rm", "-f", "-v", "-t", "0", &self.name]);
    }
}

/// The status of a plain HTTP GET on 127.0.0.1 (`None` if nothing answers).
fn http_status(port: u16, path: &str) -> Option<u16> {
    http_get_raw(port, path)?.split_whitespace().nth(1)?.parse().ok()
}

/// Write `n` keys through the API; the acknowledged state.
async fn write_keys(c: &Client, prefix: &str, n: usize) -> State {
    let mut want = State::new();
    for i in 0..n {
        let key = format!("{prefix}/{i:04}");
        let value = format!("value {i} of {prefix}").into_bytes();
        let r = c.http.post(c.url(&format!("/{key}"))).header("authorization", DEMO_SECRET).body(value.clone()).send().await.unwrap();
        assert_eq!(r.status(), 200, "POST /{key}");
        let v: serde_json::Value = r.json().await.unwrap();
        want.insert(key, (value, v["versionstamp"].as_str().unwrap().to_string()));
    }
    want
}

/// The image is what the Dockerfile promises: non-root, health check,
/// ports, stop signal, no base image.
#[test]
fn image_configuration() {
    require_image();
    let out = podman_ok(&["image", "inspect", &image()]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let img = &v[0];
    let config = &img["Config"];
    assert_eq!(config["User"], "10001:10001");
    assert_eq!(config["Entrypoint"], serde_json::json!(["sidekv"]));
    assert_eq!(config["StopSignal"], "SIGTERM");
    for p in ["8000/tcp", "9090/tcp"] {
        assert!(config["ExposedPorts"].get(p).is_some(), "EXPOSE {p}: {config}");
    }
    assert!(config["Volumes"].get("/tmp").is_some(), "VOLUME /tmp: {config}");
    let hc = &img["Healthcheck"];
    assert_eq!(hc["Test"], serde_json::json!(["CMD", "sidekv", "health"]), "{img}");
    // One layer: the filesystem from the build context, nothing underneath.
    assert_eq!(img["RootFS"]["Layers"].as_array().unwrap().len(), 1, "{}", img["RootFS"]);
    let size = img["Size"].as_u64().unwrap();
    println!("{} is {size} bytes", image());
}

/// The seed's curl session, against the container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_session_works_against_the_container() {
    let c = Container::start(&Run::default().env("KVSTORE_PUBLIC_READS", "true"));
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{}/foo", c.port);
    // curl --data-binary 'bar' -X POST -H "Authorization: denorocks" http://localhost:8000/foo
    let r = http.post(&url).header("authorization", DEMO_SECRET).body("bar").send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", c.logs());
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["versionstamp"].as_str().unwrap().len(), 20, "{v}");
    // curl http://localhost:8000/foo
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "bar");
    // Writes still need the secret.
    let r = http.post(&url).body("nope").send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(http.get(&url).send().await.unwrap().text().await.unwrap(), "bar");
}

/// A container backed up to S3 takes writes, is stopped (SIGTERM, the
/// image's STOPSIGNAL) and removed; a new container from the same image,
/// on an empty filesystem, restores from S3 and serves every acknowledged
/// write with its versionstamp.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_removed_and_relaunched_it_serves_every_acknowledged_write() {
    let s3 = S3::start();
    s3.create_bucket("container-stop").await;
    let run = Run::default().s3(&s3, "container-stop", "app");
    let want = {
        let a = Container::start(&run);
        let want = write_keys(&a.client(), "k", 200).await;
        let t = Instant::now();
        podman_ok(&["stop", "-t", "30", &a.name]);
        let logs = a.logs();
        assert_eq!(a.exit_code(), 0, "a clean exit on SIGTERM:\n{logs}");
        assert!(logs.contains("SIGTERM"), "{logs}");
        println!("podman stop took {:?}", t.elapsed());
        podman_ok(&["rm", "-v", &a.name]);
        want
    };
    // A new container: its /tmp (the image's VOLUME) is a new, empty volume.
    let b = Container::start(&run);
    assert_eq!(dump_as(&b.client(), DEMO_SECRET).await, want, "{}", b.logs());
    // And it goes on taking writes, in a new epoch above the old versionstamps.
    let more = write_keys(&b.client(), "after", 1).await;
    let last_before = want.values().map(|(_, vs)| vs.clone()).max().unwrap();
    assert!(more.values().all(|(_, vs)| *vs > last_before));
}

/// `KVSTORE_DURABILITY=s3`: a write is acknowledged once it is in S3, so a
/// container killed outright (`podman kill`, SIGKILL) and removed loses
/// none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_in_s3_durability_mode_it_loses_no_acknowledged_write() {
    let s3 = S3::start();
    s3.create_bucket("container-kill").await;
    let run = Run::default().s3(&s3, "container-kill", "app").env("KVSTORE_DURABILITY", "s3");
    let want = {
        let a = Container::start(&run);
        // Concurrent writers: several commits share each S3 upload.
        let mut tasks = Vec::new();
        for w in 0..4 {
            let c = a.client();
            tasks.push(tokio::spawn(async move { write_keys(&c, &format!("w{w}"), 25).await }));
        }
        let mut want = State::new();
        for t in tasks {
            want.extend(t.await.unwrap());
        }
        podman_ok(&["kill", &a.name]);
        let _ = run_podman(&["wait", &a.name]);
        assert_eq!(a.exit_code(), 137, "SIGKILL:\n{}", a.logs());
        podman_ok(&["rm", "-v", &a.name]);
        want
    };
    assert_eq!(want.len(), 100);
    let b = Container::start(&run);
    assert_eq!(dump_as(&b.client(), DEMO_SECRET).await, want, "{}", b.logs());
}

/// The health check reports healthy, the process is not root, and a
/// read-only root filesystem works: with a tmpfs on /tmp, and (as Docker's
/// `--read-only` alone gives) with only the image's /tmp volume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_non_root_and_read_only() {
    for run in [
        Run::default().arg("--read-only").arg("--tmpfs").arg("/tmp:rw,mode=1777"),
        Run::default().arg("--read-only").arg("--read-only-tmpfs=false"),
    ] {
        let c = Container::start(&run);
        // The image's HEALTHCHECK (`sidekv health`, the admin /readyz).
        let hc = run_podman(&["healthcheck", "run", &c.name]);
        assert!(hc.status.success(), "healthcheck: {}{}", String::from_utf8_lossy(&hc.stdout), String::from_utf8_lossy(&hc.stderr));
        assert_eq!(c.inspect("{{.State.Health.Status}}"), "healthy");
        assert_eq!(podman_ok(&["exec", &c.name, "sidekv", "health"]).trim(), "ready");
        // Non-root, as the host's kernel sees the process.
        let status = std::fs::read_to_string(format!("/proc/{}/status", c.pid())).unwrap();
        for field in ["Uid:", "Gid:"] {
            let line = status.lines().find(|l| l.starts_with(field)).unwrap();
            assert!(line.split_whitespace().skip(1).all(|id| id == "10001"), "{line}");
        }
        // The root filesystem is read-only; /tmp (the database) is not.
        assert_eq!(c.inspect("{{.HostConfig.ReadonlyRootfs}}"), "true");
        let cl = c.client();
        let r = cl.http.post(cl.url("/ro")).header("authorization", DEMO_SECRET).body("v").send().await.unwrap();
        assert_eq!(r.status(), 200, "{}", c.logs());
        let r = cl.http.get(cl.url("/ro")).header("authorization", DEMO_SECRET).send().await.unwrap();
        assert_eq!(r.text().await.unwrap(), "v");
    }
}
