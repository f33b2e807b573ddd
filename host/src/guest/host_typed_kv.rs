//! The host side of the WIT `typed-kv` interface: byte keys and typed
//! values, for guests that serve Deno KV clients (KV Connect). Validation
//! and semantics are the store's (`backend::Kv`), shared with `kv`.

use super::HostState;
use super::host_kv::vs;
use super::sidekv::store::{kv, typed_kv, types};
use crate::backend::{self as store, Encoding, ListQuery, StoreError, Value, WriteOp, WriteResult};

use types::{KvError, TypedEntry, TypedValue, ValueEncoding};

pub(super) fn encoding(e: Encoding) -> ValueEncoding {
    match e {
        Encoding::V8 => ValueEncoding::V8,
        Encoding::Le64 => ValueEncoding::Le64,
        Encoding::Bytes => ValueEncoding::Bytes,
    }
}

pub(super) fn value(v: TypedValue) -> Value {
    let encoding = match v.encoding {
        ValueEncoding::V8 => Encoding::V8,
        ValueEncoding::Le64 => Encoding::Le64,
        ValueEncoding::Bytes => Encoding::Bytes,
    };
    Value { bytes: v.data, encoding }
}

fn entry(e: store::Entry) -> TypedEntry {
    TypedEntry {
        key: e.key,
        value: TypedValue { data: e.value.bytes, encoding: encoding(e.value.encoding) },
        versionstamp: e.versionstamp.to_string(),
        expires_at: e.expires_at,
    }
}

pub(super) fn mutation(m: typed_kv::TypedMutation) -> store::Mutation {
    use typed_kv::TypedMutationKind as K;
    let kind = match m.kind {
        K::Set(v) => store::MutationKind::Set(value(v)),
        K::Delete => store::MutationKind::Delete,
        K::Sum(x) => store::MutationKind::Sum(x),
        K::Min(x) => store::MutationKind::Min(x),
        K::Max(x) => store::MutationKind::Max(x),
        K::SetSuffixVersionstamped(v) => store::MutationKind::SetSuffixVersionstamped(value(v)),
    };
    store::Mutation { key: m.key, kind, ttl_ms: m.ttl_ms }
}

pub(super) fn typed_checks(checks: Vec<typed_kv::TypedCheck>) -> Result<Vec<store::Check>, KvError> {
    checks
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let versionstamp = c.versionstamp.as_deref().map(|s| vs(s, &format!("checks[{i}].versionstamp"))).transpose()?;
            Ok(store::Check { key: c.key, versionstamp })
        })
        .collect()
}

impl typed_kv::Host for HostState {
    async fn snapshot_read(&mut self, ranges: Vec<typed_kv::KeyRange>) -> Result<Vec<Vec<TypedEntry>>, KvError> {
        let queries = ranges
            .into_iter()
            .map(|r| ListQuery { start: Some(r.start), end: Some(r.end), limit: r.limit, reverse: r.reverse, ..Default::default() })
            .collect();
        let pages = store_call_off_deadline!(self, self.store.snapshot_read(queries))?;
        Ok(pages.into_iter().map(|p| p.entries.into_iter().map(entry).collect()).collect())
    }

    async fn atomic(
        &mut self,
        checks: Vec<typed_kv::TypedCheck>,
        mutations: Vec<typed_kv::TypedMutation>,
    ) -> Result<kv::AtomicOutcome, KvError> {
        let checks = typed_checks(checks)?;
        let mutations = mutations.into_iter().map(mutation).collect();
        match store_call_off_deadline!(self, self.store.write(WriteOp::Atomic { checks, mutations }))? {
            WriteResult::Committed { versionstamp, .. } => Ok(kv::AtomicOutcome::Committed(versionstamp.to_string())),
            WriteResult::CheckFailed(i) => Ok(kv::AtomicOutcome::CheckFailed(i as u32)),
            WriteResult::PreconditionFailed => Ok(kv::AtomicOutcome::CheckFailed(0)),
        }
    }
}

impl From<StoreError> for types::KvError {
    fn from(e: StoreError) -> Self {
        super::host_kv::kv_error(e)
    }
}
