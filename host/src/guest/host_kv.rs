//! The host side of the WIT `kv` and `config` interfaces: converts between
//! the generated WIT types and the store's types, and maps `StoreError` to
//! the WIT `kv-error` variant guests see.
//!
//! The 0.1 WIT interface has string keys and untyped values: a key goes in
//! as its UTF-8 bytes, and a value comes out as `Value::into_plain` (a u64
//! counter as decimal text, as REST counters always read).

use std::time::Duration;

use super::HostState;
use super::sidekv::store::{config, kv, types};
use crate::backend::{self as store, StoreError, Value, Versionstamp, WriteOp, WriteResult};

use types::{Entry, KvError};

/// A store error as the WIT `kv-error` guests see.
pub fn kv_error(e: StoreError) -> KvError {
    match e {
        StoreError::InvalidKey(m) => KvError::InvalidKey(m),
        StoreError::ValueTooLarge { limit, .. } => KvError::ValueTooLarge(limit as u64),
        StoreError::InvalidArgument(m) | StoreError::HistoryGone(m) => KvError::InvalidArgument(m),
        StoreError::Unavailable(m) => KvError::Unavailable(m),
        StoreError::OutcomeUnknown(m) => KvError::OutcomeUnknown(m),
        StoreError::StorageFull => KvError::StorageFull,
        e @ StoreError::Internal(_) => KvError::Internal(e.to_string()),
    }
}

/// A stored key as a WIT string (REST keys are UTF-8; other keys read lossily).
pub fn key_string(k: Vec<u8>) -> String {
    String::from_utf8(k).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn entry(e: store::Entry) -> Entry {
    Entry { key: key_string(e.key), value: e.value.into_plain(), versionstamp: e.versionstamp.to_string(), expires_at: e.expires_at }
}

pub(super) fn vs(s: &str, what: &str) -> Result<Versionstamp, KvError> {
    s.parse().map_err(|e| KvError::InvalidArgument(format!("{what}: {e}")))
}

/// `if-match` is a versionstamp, or `*`: the key must exist (any version).
fn cond(o: &kv::WriteOptions) -> Result<store::Condition, KvError> {
    let if_exists = o.if_match.as_deref() == Some("*");
    let if_match = o.if_match.as_deref().filter(|_| !if_exists).map(|s| vs(s, "if-match")).transpose()?;
    Ok(store::Condition { if_match, if_absent: o.if_absent, if_exists })
}

fn outcome(r: WriteResult) -> kv::WriteOutcome {
    match r {
        WriteResult::Committed { versionstamp, .. } => kv::WriteOutcome::Committed(versionstamp.to_string()),
        WriteResult::PreconditionFailed | WriteResult::CheckFailed(_) => kv::WriteOutcome::PreconditionFailed,
    }
}

fn query(q: kv::ListQuery) -> store::ListQuery {
    store::ListQuery {
        prefix: q.prefix.into_bytes(),
        start: q.start.map(String::into_bytes),
        end: q.end.map(String::into_bytes),
        limit: q.limit,
        reverse: q.reverse,
        cursor: q.cursor,
        keys_only: q.keys_only,
    }
}

impl types::Host for HostState {}

impl kv::Host for HostState {
    async fn get(&mut self, key: String) -> Result<Option<Entry>, KvError> {
        Ok(store_call_off_deadline!(self, self.store.get(key.into_bytes()))?.map(entry))
    }

    async fn get_many(&mut self, keys: Vec<String>) -> Result<Vec<Option<Entry>>, KvError> {
        let keys = keys.into_iter().map(String::into_bytes).collect();
        Ok(store_call_off_deadline!(self, self.store.get_many(keys))?.into_iter().map(|e| e.map(entry)).collect())
    }

    async fn set(&mut self, key: String, value: Vec<u8>, options: kv::WriteOptions) -> Result<kv::WriteOutcome, KvError> {
        let cond = cond(&options)?;
        let op = WriteOp::Set { key: key.into_bytes(), value: Value::bytes(value), ttl_ms: options.ttl_ms, cond };
        let r = store_call_off_deadline!(self, self.store.write(op))?;
        Ok(outcome(r))
    }

    async fn delete(&mut self, key: String, options: kv::WriteOptions) -> Result<kv::WriteOutcome, KvError> {
        let cond = cond(&options)?;
        Ok(outcome(store_call_off_deadline!(self, self.store.write(WriteOp::Delete { key: key.into_bytes(), cond }))?))
    }

    async fn list(&mut self, q: kv::ListQuery) -> Result<kv::ListPage, KvError> {
        let page = store_call_off_deadline!(self, self.store.list(query(q)))?;
        Ok(kv::ListPage { entries: page.entries.into_iter().map(entry).collect(), cursor: page.cursor })
    }

    async fn count(&mut self, q: kv::ListQuery) -> Result<u64, KvError> {
        Ok(store_call_off_deadline!(self, self.store.count(query(q)))?)
    }

    async fn delete_prefix(&mut self, prefix: String) -> Result<kv::DeletePrefixOutcome, KvError> {
        match store_call_off_deadline!(self, self.store.write(WriteOp::DeletePrefix { prefix: prefix.into_bytes() }))? {
            WriteResult::Committed { versionstamp, deleted } => {
                Ok(kv::DeletePrefixOutcome { deleted, versionstamp: versionstamp.to_string() })
            }
            other => Err(KvError::Internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn atomic(&mut self, checks: Vec<kv::Check>, mutations: Vec<kv::Mutation>) -> Result<kv::AtomicOutcome, KvError> {
        let checks = checks
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                Ok(store::Check {
                    key: c.key.into_bytes(),
                    versionstamp: c.versionstamp.as_deref().map(|s| vs(s, &format!("checks[{i}].versionstamp"))).transpose()?,
                })
            })
            .collect::<Result<Vec<_>, KvError>>()?;
        let mutations = mutations
            .into_iter()
            .map(|m| store::Mutation {
                key: m.key.into_bytes(),
                ttl_ms: m.ttl_ms,
                kind: match m.kind {
                    kv::MutationKind::Set(v) => store::MutationKind::Set(Value::bytes(v)),
                    kv::MutationKind::Delete => store::MutationKind::Delete,
                    kv::MutationKind::Sum(x) => store::MutationKind::Sum(x),
                    kv::MutationKind::Min(x) => store::MutationKind::Min(x),
                    kv::MutationKind::Max(x) => store::MutationKind::Max(x),
                },
            })
            .collect();
        match store_call_off_deadline!(self, self.store.write(WriteOp::Atomic { checks, mutations }))? {
            WriteResult::Committed { versionstamp, .. } => Ok(kv::AtomicOutcome::Committed(versionstamp.to_string())),
            WriteResult::CheckFailed(i) => Ok(kv::AtomicOutcome::CheckFailed(i as u32)),
            WriteResult::PreconditionFailed => Ok(kv::AtomicOutcome::CheckFailed(0)),
        }
    }

    async fn watch(&mut self, key: String, since: Option<String>, timeout_ms: u32) -> Result<(bool, Option<Entry>), KvError> {
        sidekv_core::validate::validate_watch_timeout(timeout_ms)?;
        let since = since.as_deref().map(|s| vs(s, "since")).transpose()?;
        let (changed, e) =
            store_call_off_deadline!(self, self.store.watch(key.into_bytes(), since, Duration::from_millis(timeout_ms as u64)))?;
        Ok((changed, e.map(entry)))
    }
}

impl config::Host for HostState {
    async fn get(&mut self, name: String) -> Option<String> {
        self.config.get(&name).cloned()
    }
}
