//! The backup's objects as the replica names them: `segments/<first commit,
//! 20 digits>.seg.zst`, `snapshots/<commit>.sqlite3.zst`, `epochs/<e>.epoch`,
//! listed in commit order, over any `ObjectStore`; and the `check-config`
//! probe that conditional writes (fencing) work.

use super::*;

/// The backup's objects, named by commit: `segments/<first commit, 20
/// digits>.seg.zst` and `snapshots/<commit, 20 digits>.sqlite3.zst`.
pub struct Remote {
    pub(super) objects: Box<dyn ObjectStore>,
}

impl Remote {
    pub fn new(objects: Box<dyn ObjectStore>) -> Remote {
        Remote { objects }
    }

    pub fn describe(&self) -> String {
        self.objects.describe()
    }

    /// `key` as the object store names it (S3: with the prefix), for messages.
    pub fn name(&self, key: &str) -> String {
        self.objects.name(key)
    }

    /// Read and decode a segment object.
    pub async fn segment(&self, key: &str) -> Result<Segment, ReplicaError> {
        Segment::decode(&self.get(key).await?, &self.name(key))
    }

    pub fn segment_key(&self, first: u64) -> String {
        format!("segments/{first:020}.seg.zst")
    }

    pub fn snapshot_key(&self, counter: u64) -> String {
        format!("snapshots/{counter:020}.sqlite3.zst")
    }

    /// Create an object only if absent. `Ok(false)` = it already exists.
    pub async fn put_new(&self, key: &str, body: Vec<u8>) -> Result<bool, ReplicaError> {
        self.objects.put_new(key, body).await
    }

    pub async fn get(&self, key: &str) -> Result<Vec<u8>, ReplicaError> {
        self.objects.get(key).await
    }

    pub async fn put_new_file(&self, key: &str, path: &Path) -> Result<bool, ReplicaError> {
        self.objects.put_new_file(key, path).await
    }

    pub async fn get_to_file(&self, key: &str, path: &Path) -> Result<u64, ReplicaError> {
        self.objects.get_to_file(key, path).await
    }

    /// Counters named by the objects under `dir` (`segments` / `snapshots`), ascending.
    pub async fn list_counters(&self, dir: &str) -> Result<Vec<(u64, String)>, ReplicaError> {
        let mut out: Vec<(u64, String)> = self
            .objects
            .list(dir)
            .await?
            .into_iter()
            .filter_map(|k| {
                let name = k.strip_prefix(dir)?.strip_prefix('/')?;
                let n = name.get(..20)?.parse::<u64>().ok()?;
                (name.as_bytes().get(20) == Some(&b'.')).then_some((n, k))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    pub async fn delete(&self, key: &str) -> Result<(), ReplicaError> {
        self.objects.delete(key).await
    }

    /// `check-config`: the store answers, accepts writes and deletes, and
    /// refuses to overwrite an existing object (without that, two instances
    /// on one path cannot be fenced and would corrupt the backup).
    pub async fn probe(&self) -> Result<(), ReplicaError> {
        let key = format!("probe/{:016x}", rand::random::<u64>());
        let first = self.put_new(&key, b"sidekv check-config 1".to_vec()).await?;
        let second = self.put_new(&key, b"sidekv check-config 2".to_vec()).await;
        let kept = self.get(&key).await;
        self.delete(&key).await?;
        if !first {
            return Err(ReplicaError::Fenced(format!("the probe object {key} existed before it was written")));
        }
        match (second?, kept?) {
            (false, body) if body == b"sidekv check-config 1" => {}
            _ => {
                return Err(ReplicaError::Config {
                    setting: "KVSTORE_S3_URL",
                    msg: format!(
                        "{} ignores If-None-Match: * (a conditional PUT replaced an existing object): two sidekv instances on this path could not be fenced and would corrupt the backup; use a store that supports conditional writes (AWS S3, MinIO >= 2024, …)",
                        self.describe()
                    ),
                });
            }
        }
        self.list_counters("segments").await?;
        Ok(())
    }
}
