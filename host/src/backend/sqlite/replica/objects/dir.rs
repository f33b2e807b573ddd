//! The directory object store (`file:///dir`: a mounted volume, NFS, a
//! second disk). "Create only if absent" is a `link(2)` of a fully written,
//! fsynced temporary file onto the final name, which fails atomically when
//! the name exists on every POSIX filesystem.

use std::path::{Path, PathBuf};

use futures::future::BoxFuture;

use super::{ObjectMeta, ObjectStore, dir_err};
use crate::backend::sqlite::replica::ReplicaError;

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
    use crate::backend::sqlite::replica::objects::ObjectStore;

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
