//! Where the backup lives: a small object-store trait and its two
//! implementations, S3 (any S3 API, `s3.rs`) and a local directory
//! (`file://`, `dir.rs`), one file per store as litestream keeps its
//! replica clients. `tests/object_stores.rs` is the contract every store passes.
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

mod dir;
mod s3;

use std::path::{Path, PathBuf};

use futures::future::BoxFuture;

use super::ReplicaError;
pub use dir::DirStore;
pub use s3::{S3Store, s3_client};

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
    Ok(Box::new(S3Store::new(s3_client().await?, bucket, prefix, part_bytes)))
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

/// A local file's I/O error, in the store's error shape (the directory
/// store's objects, and the files S3 uploads from and downloads to).
fn dir_err(op: &'static str, path: &Path, e: std::io::Error) -> ReplicaError {
    ReplicaError::S3 { op, key: path.display().to_string(), msg: e.to_string() }
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
}
