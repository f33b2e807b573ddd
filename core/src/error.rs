//! The error every store call can fail with. Nothing is written when a call
//! fails, except for `OutcomeUnknown`, which says exactly that it may have been.

/// Why a store call failed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    #[error("invalid key: {0}")]
    InvalidKey(String),
    #[error("value is {size} bytes, over the {limit}-byte limit (KVSTORE_MAX_VALUE_BYTES)")]
    ValueTooLarge { size: usize, limit: usize },
    #[error("{0}")]
    InvalidArgument(String),
    /// Retryable: restoring, fenced, the database or S3 unreachable.
    #[error("{0}")]
    Unavailable(String),
    /// The connection to the database was lost while the commit was in
    /// flight: the write may or may not have happened. The message names the
    /// versionstamp it would have, so the caller can look.
    #[error("{0}")]
    OutcomeUnknown(String),
    /// A change-feed position older than the kept history.
    #[error("{0}")]
    HistoryGone(String),
    #[error("the disk holding the database is full")]
    StorageFull,
    #[error("storage failure: {0}")]
    Internal(String),
}

#[cfg(feature = "sqlite")]
impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        if let rusqlite::Error::SqliteFailure(code, _) = &e
            && code.code == rusqlite::ErrorCode::DiskFull
        {
            return StoreError::StorageFull;
        }
        StoreError::Internal(e.to_string())
    }
}
