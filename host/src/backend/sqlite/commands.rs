//! The subcommands that only make sense for the SQLite + S3 backend:
//! `restore` (a file from S3), `snapshot` (now), and the S3 part of
//! `check-config`.

use std::path::Path;
use std::sync::Arc;

use super::SqliteOptions;
use super::replica::{Replica, ReplicaError, ReplicaOptions};
use super::store::{Store, StoreOptions};
use crate::backend::Versionstamp;

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{0} needs KVSTORE_S3_URL")]
    NoS3(&'static str),
    #[error("{0} exists; restore writes a new file")]
    Exists(String),
    #[error("S3 holds no backup at {0}")]
    NoBackup(String),
    #[error("{0}")]
    Replica(#[from] ReplicaError),
    #[error("{0}")]
    Store(#[from] crate::backend::StoreError),
}

/// `sidekv restore --to FILE [--at VS]`: rebuild a database file from S3.
pub async fn restore(backup: Option<&ReplicaOptions>, to: &Path, at: Option<Versionstamp>) -> Result<u64, CommandError> {
    let o = backup.ok_or(CommandError::NoS3("restore"))?;
    if to.exists() {
        return Err(CommandError::Exists(to.display().to_string()));
    }
    let replica = Replica::new(o).await?;
    let commit = replica.restore_to(to, at).await?;
    if !to.exists() {
        return Err(CommandError::NoBackup(o.url.clone()));
    }
    Ok(commit)
}

/// `sidekv snapshot`: ship what is pending and store a snapshot now.
pub async fn snapshot(o: &SqliteOptions) -> Result<(), CommandError> {
    let backup = o.backup.as_ref().ok_or(CommandError::NoS3("snapshot"))?;
    let replica = Arc::new(Replica::new(backup).await?);
    let store = Store::open(&o.db, StoreOptions { replicated: true, ..Default::default() })?;
    let shipped = async {
        replica.ship_pending(&store, false).await?;
        replica.snapshot_now(&store).await
    }
    .await;
    store.close();
    Ok(shipped?)
}

/// `check-config`: S3 reachable, writable, and honouring `If-None-Match`.
pub async fn check_s3(backup: &ReplicaOptions) -> Result<(), CommandError> {
    Ok(Replica::new(backup).await?.remote.probe().await?)
}
