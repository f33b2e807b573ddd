//! The one table from a store failure to the REST status a client sees.
//!
//! The host (`http.rs`, for `StoreError`), the default guest and the example
//! guests (for the WIT `kv-error` variant they receive) all answer with
//! [`Failure::rest_status`], so a full disk is a 507 and an unknown outcome a
//! 503 whichever of them answers. A status is a number here, not an HTTP
//! type: this crate has no HTTP in it.
//!
//! KV Connect (`sidekv-kvconnect`) differs on purpose, because Deno's client
//! retries some statuses by itself: `Unavailable` and `StorageFull` become
//! its "retry" answer, and `OutcomeUnknown` a final 409 — retrying a write
//! whose outcome is unknown could apply it twice (a `sum`). See
//! `kvconnect/src/glue.rs`.

use crate::StoreError;

/// What kind of failure a store call had: `StoreError`'s variants without
/// their payloads, and the WIT `kv-error` cases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    InvalidKey,
    ValueTooLarge,
    InvalidArgument,
    /// A change-feed position older than the kept history (the WIT variant
    /// folds it into `invalid-argument`).
    HistoryGone,
    Unavailable,
    OutcomeUnknown,
    StorageFull,
    Internal,
}

impl Failure {
    /// The REST status for this failure.
    pub const fn rest_status(self) -> u16 {
        match self {
            Failure::InvalidKey | Failure::InvalidArgument => 400,
            Failure::HistoryGone => 410,
            Failure::ValueTooLarge => 413,
            // Retry later; an unknown outcome says so in its message (read
            // before retrying).
            Failure::Unavailable | Failure::OutcomeUnknown => 503,
            Failure::StorageFull => 507,
            Failure::Internal => 500,
        }
    }
}

impl StoreError {
    pub fn failure(&self) -> Failure {
        match self {
            StoreError::InvalidKey(_) => Failure::InvalidKey,
            StoreError::ValueTooLarge { .. } => Failure::ValueTooLarge,
            StoreError::InvalidArgument(_) => Failure::InvalidArgument,
            StoreError::HistoryGone(_) => Failure::HistoryGone,
            StoreError::Unavailable(_) => Failure::Unavailable,
            StoreError::OutcomeUnknown(_) => Failure::OutcomeUnknown,
            StoreError::StorageFull => Failure::StorageFull,
            StoreError::Internal(_) => Failure::Internal,
        }
    }

    /// `failure().rest_status()`.
    pub fn rest_status(&self) -> u16 {
        self.failure().rest_status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_store_error_has_its_status() {
        for (e, status) in [
            (StoreError::InvalidKey("k".into()), 400),
            (StoreError::InvalidArgument("a".into()), 400),
            (StoreError::HistoryGone("h".into()), 410),
            (StoreError::ValueTooLarge { size: 2, limit: 1 }, 413),
            (StoreError::Unavailable("u".into()), 503),
            (StoreError::OutcomeUnknown("o".into()), 503),
            (StoreError::StorageFull, 507),
            (StoreError::Internal("i".into()), 500),
        ] {
            assert_eq!(e.rest_status(), status, "{e:?}");
        }
    }
}
