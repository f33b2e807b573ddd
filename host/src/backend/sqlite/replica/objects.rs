//! Where the backup lives: a small object-store trait and its two
//! implementations, S3 (any S3 API) and a local directory (`file://`).
//!
//! The replica needs only four operations — list a directory, get an
//! object, create an object *only if absent*, delete — so restore,
//! retention and fencing are written once against [`ObjectStore`] and
//! unit-tested on a directory, with faults injected by a wrapper, without
//! an S3 server.
//!
//! Keys are relative to the configured prefix (`segments/…`,
//! `snapshots/…`); each implementation maps them to its own names.
//!
//! "Create only if absent" is the fencing primitive: S3's
//! `If-None-Match: *` on PUT, and for a directory a `link(2)` of a fully
//! written, fsynced temporary file onto the final name (which fails when the
//! name exists, atomically, on every POSIX filesystem).

use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::primitives::ByteStream;
use futures::future::BoxFuture;

use super::ReplicaError;
use crate::limits;

/// The operations the backup needs from an object store.
pub trait ObjectStore: Send + Sync {
    /// Keys under `dir/` (relative, e.g. `segments/000…1.seg.zst`), ascending.
    fn list<'a>(&'a self, dir: &'a str) -> BoxFuture<'a, Result<Vec<String>, ReplicaError>>;
    /// The whole object.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Vec<u8>, ReplicaError>>;
    /// Create `key` with `body` unless it exists: `Ok(false)` = it exists.
    fn put_new<'a>(&'a self, key: &'a str, body: Vec<u8>) -> BoxFuture<'a, Result<bool, ReplicaError>>;
    /// Create `key` from the file at `path`, streamed (snapshots can be
    /// larger than memory); same contract as `put_new`.
    fn put_new_file<'a>(&'a self, key: &'a str, path: &'a Path) -> BoxFuture<'a, Result<bool, ReplicaError>>;
    /// Stream the object into a new file at `path`; returns its size.
    fn get_to_file<'a>(&'a self, key: &'a str, path: &'a Path) -> BoxFuture<'a, Result<u64, ReplicaError>>;
    /// Remove `key` (absent is not an error).
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), ReplicaError>>;
    /// For logs and errors: `s3://bucket/prefix` or `file:///dir`.
    fn describe(&self) -> String;
    /// The full name of `key` as its store knows it (for messages).
    fn name(&self, key: &str) -> String {
        format!("{}/{key}", self.describe().trim_end_matches('/'))
    }
    /// `list` with each object's size and time (the console's backup panel);
    /// a store that cannot say reports 0 for both.
    fn list_meta<'a>(&'a self, dir: &'a str) -> BoxFuture<'a, Result<Vec<ObjectMeta>, ReplicaError>> {
        Box::pin(async move { Ok(self.list(dir).await?.into_iter().map(|key| ObjectMeta { key, bytes: 0, modified_ms: 0 }).collect()) })
    }
}

/// An object as `list_meta` reports it.
#[derive(Clone, Debug)]
pub struct ObjectMeta {
    /// Relative key, as `list` gives it.
    pub key: String,
    pub bytes: u64,
    /// Last modified, unix ms (0 = unknown).
    pub modified_ms: u64,
}

/// Open the store a `KVSTORE_S3_URL` names: `s3://bucket/prefix` or
/// `file:///dir`; S3 multipart uploads use parts of `part_bytes`.
pub async fn open(url: &str, part_bytes: u64) -> Result<Box<dyn ObjectStore>, ReplicaError> {
    if let Some(path) = url.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(ReplicaError::Config {
                setting: "KVSTORE_S3_URL",
                msg: format!("{url:?}: a file URL needs an absolute path (file:///dir)"),
            });
        }
        return Ok(Box::new(DirStore::new(PathBuf::from(path))?));
    }
    let (bucket, prefix) = parse_s3_url(url)?;
    Ok(Box::new(S3Store { client: s3_client().await?, bucket, prefix, part_bytes }))
}

/// `s3://bucket/prefix` → (bucket, prefix without trailing slash).
pub fn parse_s3_url(url: &str) -> Result<(String, String), ReplicaError> {
    let bad = |m: &str| ReplicaError::Config { setting: "KVSTORE_S3_URL", msg: format!("{url:?}: {m}") };
    let rest = url.strip_prefix("s3://").ok_or_else(|| bad("must look like s3://bucket/prefix or file:///dir"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() || !bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.') {
        return Err(bad("the bucket name is missing or invalid"));
    }
    Ok((bucket.to_string(), prefix.trim_matches('/').to_string()))
}

// ------------------------------------------------------------------ S3 ----

fn env_nonempty(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

/// Build an S3 client from the standard AWS variables (and litestream's).
pub async fn s3_client() -> Result<Client, ReplicaError> {
    let region = env_nonempty("AWS_REGION").or_else(|| env_nonempty("AWS_DEFAULT_REGION")).unwrap_or_else(|| "us-east-1".into());
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region))
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .operation_attempt_timeout(limits::S3_OP_TIMEOUT)
                .connect_timeout(Duration::from_secs(3))
                .build(),
        )
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(3));
    let key = env_nonempty("AWS_ACCESS_KEY_ID").or_else(|| env_nonempty("LITESTREAM_ACCESS_KEY_ID"));
    let secret = env_nonempty("AWS_SECRET_ACCESS_KEY").or_else(|| env_nonempty("LITESTREAM_SECRET_ACCESS_KEY"));
    match (key, secret) {
        (Some(k), Some(s)) => {
            loader = loader.credentials_provider(aws_credential_types::Credentials::new(
                k,
                s,
                env_nonempty("AWS_SESSION_TOKEN"),
                None,
                "sidekv-env",
            ));
        }
        (Some(_), None) => {
            return Err(ReplicaError::Config {
                setting: "AWS_SECRET_ACCESS_KEY",
                msg: "AWS_ACCESS_KEY_ID is set but the secret key is not".into(),
            });
        }
        (None, Some(_)) => {
            return Err(ReplicaError::Config {
                setting: "AWS_ACCESS_KEY_ID",
                msg: "a secret key is set but the access key id is not".into(),
            });
        }
        (None, None) => {}
    }
    let endpoint = env_nonempty("AWS_ENDPOINT_URL_S3").or_else(|| env_nonempty("AWS_ENDPOINT_URL"));
    if let Some(ep) = &endpoint {
        if !(ep.starts_with("http://") || ep.starts_with("https://")) {
            return Err(ReplicaError::Config { setting: "AWS_ENDPOINT_URL", msg: format!("{ep:?} must start with http:// or https://") });
        }
        loader = loader.endpoint_url(ep);
    }
    let shared = loader.load().await;
    let mut b = aws_sdk_s3::config::Builder::from(&shared);
    if endpoint.is_some() {
        // MinIO, moto and most self-hosted S3s need path-style addressing.
        b = b.force_path_style(true);
    }
    Ok(Client::from_conf(b.build()))
}

fn sdk_msg<E: std::fmt::Debug, R: std::fmt::Debug>(e: &SdkError<E, R>) -> String {
    match e {
        SdkError::ServiceError(s) => format!("{:?}", s.err()).chars().take(300).collect(),
        SdkError::TimeoutError(_) => "timed out".into(),
        SdkError::DispatchFailure(d) => format!("could not connect: {d:?}").chars().take(300).collect(),
        other => format!("{other:?}").chars().take(300).collect(),
    }
}

fn http_status<E>(e: &SdkError<E, aws_smithy_runtime_api::http::Response>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

/// Objects under `s3://bucket/prefix/`.
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    /// Multipart part size; files larger than one part are uploaded in parts.
    part_bytes: u64,
}

impl S3Store {
    fn full(&self, rel: &str) -> String {
        if self.prefix.is_empty() { rel.to_string() } else { format!("{}/{rel}", self.prefix) }
    }

    fn err(op: &'static str, key: &str, msg: String) -> ReplicaError {
        ReplicaError::S3 { op, key: key.into(), msg }
    }
}

impl S3Store {
    /// A file too large for one PUT (S3 caps it at 5 GB; long single PUTs
    /// also fail more), as a multipart upload whose parts are streamed from
    /// the file. Only snapshots are this large; a snapshot's name is not a
    /// fencing token (it is published only after every segment up to its
    /// commit is ours), so "only if absent" is a check before the upload.
    async fn put_multipart(&self, full: &str, path: &Path, size: u64) -> Result<bool, ReplicaError> {
        use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
        if self.client.head_object().bucket(&self.bucket).key(full).send().await.is_ok() {
            return Ok(false);
        }
        let up = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(full)
            .send()
            .await
            .map_err(|e| Self::err("PUT", full, sdk_msg(&e)))?;
        let id = up.upload_id().unwrap_or_default().to_string();
        let result = async {
            let mut parts = Vec::new();
            let (mut offset, mut n) = (0u64, 1i32);
            while offset < size {
                let len = self.part_bytes.min(size - offset);
                let body = ByteStream::read_from()
                    .path(path)
                    .offset(offset)
                    .length(aws_sdk_s3::primitives::Length::Exact(len))
                    .build()
                    .await
                    .map_err(|e| Self::err("PUT", full, format!("reading {}: {e}", path.display())))?;
                let r = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(full)
                    .upload_id(&id)
                    .part_number(n)
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| Self::err("PUT", full, format!("part {n}: {}", sdk_msg(&e))))?;
                parts.push(CompletedPart::builder().part_number(n).set_e_tag(r.e_tag().map(str::to_string)).build());
                offset += len;
                n += 1;
            }
            self.client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(full)
                .upload_id(&id)
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                .send()
                .await
                .map_err(|e| Self::err("PUT", full, sdk_msg(&e)))
        }
        .await;
        if let Err(e) = result {
            let _ = self.client.abort_multipart_upload().bucket(&self.bucket).key(full).upload_id(&id).send().await;
            return Err(e);
        }
        Ok(true)
    }
}

impl ObjectStore for S3Store {
    fn list_meta<'a>(&'a self, dir: &'a str) -> BoxFuture<'a, Result<Vec<ObjectMeta>, ReplicaError>> {
        Box::pin(async move {
            let prefix = self.full(&format!("{dir}/"));
            let base = if self.prefix.is_empty() { 0 } else { self.prefix.len() + 1 };
            let mut out = Vec::new();
            let mut token = None;
            loop {
                let r = self
                    .client
                    .list_objects_v2()
                    .bucket(&self.bucket)
                    .prefix(&prefix)
                    .set_continuation_token(token.take())
                    .send()
                    .await
                    .map_err(|e| Self::err("LIST", &prefix, sdk_msg(&e)))?;
                for o in r.contents() {
                    if let Some(k) = o.key() {
                        let modified_ms = o.last_modified().and_then(|t| t.to_millis().ok()).unwrap_or(0).max(0) as u64;
                        out.push(ObjectMeta { key: k[base..].to_string(), bytes: o.size().unwrap_or(0).max(0) as u64, modified_ms });
                    }
                }
                match r.next_continuation_token() {
                    Some(t) if r.is_truncated() == Some(true) => token = Some(t.to_string()),
                    _ => break,
                }
            }
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
    }

    /// The keys of `list_meta` (one LIST pager for both).
    fn list<'a>(&'a self, dir: &'a str) -> BoxFuture<'a, Result<Vec<String>, ReplicaError>> {
        Box::pin(async move { Ok(self.list_meta(dir).await?.into_iter().map(|o| o.key).collect()) })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Vec<u8>, ReplicaError>> {
        Box::pin(async move {
            let full = self.full(key);
            let o =
                self.client.get_object().bucket(&self.bucket).key(&full).send().await.map_err(|e| Self::err("GET", &full, sdk_msg(&e)))?;
            Ok(o.body.collect().await.map_err(|e| Self::err("GET", &full, e.to_string()))?.into_bytes().to_vec())
        })
    }

    fn put_new<'a>(&'a self, key: &'a str, body: Vec<u8>) -> BoxFuture<'a, Result<bool, ReplicaError>> {
        Box::pin(async move {
            let full = self.full(key);
            let r = self.client.put_object().bucket(&self.bucket).key(&full).if_none_match("*").body(ByteStream::from(body)).send().await;
            match r {
                Ok(_) => Ok(true),
                Err(e) if http_status(&e) == Some(412) => Ok(false),
                Err(e) => Err(Self::err("PUT", &full, sdk_msg(&e))),
            }
        })
    }

    fn put_new_file<'a>(&'a self, key: &'a str, path: &'a Path) -> BoxFuture<'a, Result<bool, ReplicaError>> {
        Box::pin(async move {
            let full = self.full(key);
            let size = std::fs::metadata(path).map_err(|e| dir_err("PUT", path, e))?.len();
            if size > self.part_bytes {
                return self.put_multipart(&full, path, size).await;
            }
            let body =
                ByteStream::from_path(path).await.map_err(|e| Self::err("PUT", &full, format!("reading {}: {e}", path.display())))?;
            let r = self.client.put_object().bucket(&self.bucket).key(&full).if_none_match("*").body(body).send().await;
            match r {
                Ok(_) => Ok(true),
                Err(e) if http_status(&e) == Some(412) => Ok(false),
                Err(e) => Err(Self::err("PUT", &full, sdk_msg(&e))),
            }
        })
    }

    fn get_to_file<'a>(&'a self, key: &'a str, path: &'a Path) -> BoxFuture<'a, Result<u64, ReplicaError>> {
        Box::pin(async move {
            use tokio::io::AsyncWriteExt;
            let full = self.full(key);
            let o =
                self.client.get_object().bucket(&self.bucket).key(&full).send().await.map_err(|e| Self::err("GET", &full, sdk_msg(&e)))?;
            let local = |e: std::io::Error| dir_err("GET", path, e);
            let mut out = tokio::io::BufWriter::new(tokio::fs::File::create(path).await.map_err(local)?);
            let mut body = o.body;
            let mut n = 0u64;
            while let Some(chunk) = body.try_next().await.map_err(|e| Self::err("GET", &full, e.to_string()))? {
                n += chunk.len() as u64;
                out.write_all(&chunk).await.map_err(local)?;
            }
            out.flush().await.map_err(local)?;
            Ok(n)
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), ReplicaError>> {
        Box::pin(async move {
            let full = self.full(key);
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(&full)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| Self::err("DELETE", &full, sdk_msg(&e)))
        })
    }

    fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    fn name(&self, key: &str) -> String {
        self.full(key)
    }
}

// ----------------------------------------------------------- directory ----

/// Objects as files under a local directory (a mounted volume, NFS, a
/// second disk): `file:///mnt/backup`.
pub struct DirStore {
    root: PathBuf,
}

impl DirStore {
    pub fn new(root: PathBuf) -> Result<DirStore, ReplicaError> {
        std::fs::create_dir_all(&root).map_err(|e| dir_err("create", &root, e))?;
        Ok(DirStore { root })
    }

    fn path(&self, key: &str) -> Result<PathBuf, ReplicaError> {
        // Keys are made by the replica, never by clients; still, never leave the root.
        if key.split('/').any(|p| p.is_empty() || p == "." || p == "..") {
            return Err(ReplicaError::Config {
                setting: "KVSTORE_S3_URL",
                msg: format!("object key {key:?} is not a plain relative path"),
            });
        }
        Ok(self.root.join(key))
    }
}

fn dir_err(op: &'static str, path: &Path, e: std::io::Error) -> ReplicaError {
    ReplicaError::S3 { op, key: path.display().to_string(), msg: e.to_string() }
}

/// Blocking file work runs on tokio's blocking pool.
async fn blocking<R: Send + 'static>(f: impl FnOnce() -> Result<R, ReplicaError> + Send + 'static) -> Result<R, ReplicaError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ReplicaError::Io { path: "(blocking task)".into(), msg: e.to_string() })?
}

fn sync_dir(dir: &Path) -> Result<(), ReplicaError> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| dir_err("fsync", dir, e))
}

/// Write a temporary file with `fill`, fsync it, and `link(2)` it onto
/// `p`: the name appears whole or not at all, and never replaces another.
fn create_if_absent(p: &Path, fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>) -> Result<bool, ReplicaError> {
    let dir = p.parent().expect("keys have a directory").to_path_buf();
    std::fs::create_dir_all(&dir).map_err(|e| dir_err("PUT", &dir, e))?;
    let name = p.file_name().expect("keys have a name").to_string_lossy().into_owned();
    let tmp = dir.join(format!(".{name}.{:016x}.tmp", rand::random::<u64>()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create_new(&tmp)?;
        fill(&mut f)?;
        f.sync_all()
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(dir_err("PUT", p, e));
    }
    let linked = std::fs::hard_link(&tmp, p);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            sync_dir(&dir)?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(dir_err("PUT", p, e)),
    }
}

impl ObjectStore for DirStore {
    fn list_meta<'a>(&'a self, dir: &'a str) -> BoxFuture<'a, Result<Vec<ObjectMeta>, ReplicaError>> {
        Box::pin(async move {
            let keys = self.list(dir).await?;
            let paths = keys.iter().map(|k| self.path(k)).collect::<Result<Vec<_>, _>>()?;
            blocking(move || {
                Ok(keys
                    .into_iter()
                    .zip(paths)
                    .map(|(key, p)| {
                        let m = std::fs::metadata(&p).ok();
                        let modified_ms = m
                            .as_ref()
                            .and_then(|m| m.modified().ok())
                            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                            .map_or(0, |d| d.as_millis() as u64);
                        ObjectMeta { key, bytes: m.map_or(0, |m| m.len()), modified_ms }
                    })
                    .collect())
            })
            .await
        })
    }

    fn list<'a>(&'a self, dir: &'a str) -> BoxFuture<'a, Result<Vec<String>, ReplicaError>> {
        Box::pin(async move {
            let d = self.path(dir)?;
            let dir = dir.to_string();
            blocking(move || {
                let mut out = Vec::new();
                let entries = match std::fs::read_dir(&d) {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
                    Err(e) => return Err(dir_err("LIST", &d, e)),
                };
                for e in entries {
                    let name = e.map_err(|e| dir_err("LIST", &d, e))?.file_name().to_string_lossy().into_owned();
                    // In-progress writes are dot-files; never report them.
                    if !name.starts_with('.') {
                        out.push(format!("{dir}/{name}"));
                    }
                }
                out.sort();
                Ok(out)
            })
            .await
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Vec<u8>, ReplicaError>> {
        Box::pin(async move {
            let p = self.path(key)?;
            blocking(move || std::fs::read(&p).map_err(|e| dir_err("GET", &p, e))).await
        })
    }

    fn put_new<'a>(&'a self, key: &'a str, body: Vec<u8>) -> BoxFuture<'a, Result<bool, ReplicaError>> {
        Box::pin(async move {
            let p = self.path(key)?;
            blocking(move || create_if_absent(&p, |f| std::io::Write::write_all(f, &body))).await
        })
    }

    fn put_new_file<'a>(&'a self, key: &'a str, path: &'a Path) -> BoxFuture<'a, Result<bool, ReplicaError>> {
        Box::pin(async move {
            let p = self.path(key)?;
            let src = path.to_path_buf();
            blocking(move || {
                create_if_absent(&p, |f| {
                    let mut from = std::fs::File::open(&src)?;
                    std::io::copy(&mut from, f).map(|_| ())
                })
            })
            .await
        })
    }

    fn get_to_file<'a>(&'a self, key: &'a str, path: &'a Path) -> BoxFuture<'a, Result<u64, ReplicaError>> {
        Box::pin(async move {
            let p = self.path(key)?;
            let to = path.to_path_buf();
            blocking(move || std::fs::copy(&p, &to).map_err(|e| dir_err("GET", &p, e))).await
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), ReplicaError>> {
        Box::pin(async move {
            let p = self.path(key)?;
            blocking(move || match std::fs::remove_file(&p) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(dir_err("DELETE", &p, e)),
            })
            .await
        })
    }

    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_urls() {
        assert_eq!(parse_s3_url("s3://b/p/q/").unwrap(), ("b".into(), "p/q".into()));
        assert_eq!(parse_s3_url("s3://bucket").unwrap(), ("bucket".into(), "".into()));
        assert!(parse_s3_url("http://b/p").is_err());
        assert!(parse_s3_url("s3:///p").is_err());
        assert!(parse_s3_url("s3://Bad_Bucket/p").is_err());
    }

    #[tokio::test]
    async fn dir_store_creates_only_if_absent() {
        let d = tempfile::tempdir().unwrap();
        let s = DirStore::new(d.path().join("backup")).unwrap();
        assert!(s.list("segments").await.unwrap().is_empty());
        assert!(s.put_new("segments/b", b"one".to_vec()).await.unwrap());
        assert!(!s.put_new("segments/b", b"two".to_vec()).await.unwrap(), "an existing name is never replaced");
        assert_eq!(s.get("segments/b").await.unwrap(), b"one");
        assert!(s.put_new("segments/a", vec![]).await.unwrap());
        assert_eq!(s.list("segments").await.unwrap(), vec!["segments/a", "segments/b"]);
        s.delete("segments/a").await.unwrap();
        s.delete("segments/a").await.unwrap();
        assert_eq!(s.list("segments").await.unwrap(), vec!["segments/b"]);
        assert!(s.get("../etc").await.is_err());
        // No temporary files are left behind.
        assert_eq!(std::fs::read_dir(d.path().join("backup/segments")).unwrap().count(), 1);
    }

    #[tokio::test]
    async fn dir_store_races_have_one_winner() {
        let d = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(DirStore::new(d.path().to_path_buf()).unwrap());
        let tasks: Vec<_> = (0..8u8)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move { s.put_new("segments/x", vec![i]).await.unwrap() })
            })
            .collect();
        let mut won = 0;
        for t in tasks {
            won += usize::from(t.await.unwrap());
        }
        assert_eq!(won, 1);
    }
}
