//! A real S3-compatible server for the backup tests.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::server::*;

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

/// A plain HTTP/1.1 GET over std (no runtime needed); `None` if nothing listens.
pub fn http_get_raw(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(c, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    Some(out)
}
