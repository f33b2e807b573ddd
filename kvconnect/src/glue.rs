//! Glue for guests: [`typed_kv_store!`](crate::typed_kv_store) makes a
//! [`server::Store`](crate::server::Store) out of the host's WIT `typed-kv`
//! import, so every Rust guest generated from sidekv's WIT serves KV Connect
//! with the same conversions. Invoke it where the generated `kv`,
//! `typed_kv` and `types` modules are in scope.

/// Defines `pub struct $name;` implementing `server::Store` with the WIT
/// `typed-kv` functions. Needs `kv`, `typed_kv` and `types` (the modules
/// wit-bindgen generates for `sidekv:store`) in scope at the call site;
/// `typed_kv_store!(Name, queue)` also needs `queue` and serves enqueues.
#[macro_export]
macro_rules! typed_kv_store {
    ($name:ident) => {
        $crate::typed_kv_store!(@store $name, {});
    };
    // With the WIT `queue` import in scope too: enqueues over KV Connect.
    ($name:ident, queue) => {
        $crate::typed_kv_store!(@store $name, {
            fn atomic_enqueue(
                &self,
                checks: &[$crate::server::CheckReq],
                mutations: &[$crate::server::MutationReq],
                enqueues: &[$crate::server::EnqueueReq],
            ) -> Result<$crate::server::AtomicResult, $crate::server::Failure> {
                let (checks, mutations) = Self::batch(checks, mutations);
                let messages: Vec<queue::NewMessage> = enqueues
                    .iter()
                    .map(|e| queue::NewMessage {
                        value: Self::value(&e.payload),
                        delay_ms: e.delay_ms,
                        keys_if_undelivered: e.keys_if_undelivered.clone(),
                        backoff_schedule: e.backoff_schedule.clone(),
                    })
                    .collect();
                Self::outcome(queue::atomic(&checks, &mutations, &messages))
            }
        });
    };
    (@store $name:ident, { $($queue:tt)* }) => {
        /// The host's `typed-kv`, as the KV Connect protocol code sees a store.
        pub struct $name;

        impl $name {
            /// KV Connect's answer to a store failure. It differs from the
            /// REST table (`sidekv_core::status`) on purpose, where Deno's
            /// client would otherwise do the wrong thing: it retries
            /// `Retry` answers itself, and must never retry a write whose
            /// outcome is unknown.
            fn failure(e: types::KvError) -> $crate::server::Failure {
                use $crate::server::Failure;
                match e {
                    types::KvError::InvalidKey(m) => Failure::Permanent(400, format!("invalid key: {m}")),
                    types::KvError::ValueTooLarge(limit) => Failure::Permanent(413, format!("a value is over the {limit}-byte limit")),
                    types::KvError::InvalidArgument(m) => Failure::Permanent(400, m),
                    types::KvError::Unavailable(m) => Failure::Retry(m),
                    // Final: a client that retried could apply it twice (a sum).
                    types::KvError::OutcomeUnknown(m) => Failure::Permanent(409, format!("the write's outcome is unknown: {m}")),
                    types::KvError::StorageFull => Failure::Retry("the disk holding the database is full; nothing was written".into()),
                    types::KvError::Internal(m) => Failure::Internal(m),
                }
            }

            fn versionstamp(vs: &str) -> Result<[u8; 10], $crate::server::Failure> {
                $crate::server::versionstamp_from_hex(vs)
                    .ok_or_else(|| $crate::server::Failure::Internal(format!("the store returned versionstamp {vs:?}")))
            }

            fn value(v: &$crate::datapath::Value) -> types::TypedValue {
                use $crate::datapath::Value;
                match v.clone() {
                    Value::V8(data) => types::TypedValue { data, encoding: types::ValueEncoding::V8 },
                    Value::U64(n) => types::TypedValue { data: n.to_le_bytes().to_vec(), encoding: types::ValueEncoding::Le64 },
                    Value::Bytes(data) => types::TypedValue { data, encoding: types::ValueEncoding::Bytes },
                }
            }

            fn batch(
                checks: &[$crate::server::CheckReq],
                mutations: &[$crate::server::MutationReq],
            ) -> (Vec<typed_kv::TypedCheck>, Vec<typed_kv::TypedMutation>) {
                use $crate::server::MutationOp;
                let checks: Vec<typed_kv::TypedCheck> = checks
                    .iter()
                    .map(|c| typed_kv::TypedCheck {
                        key: c.key.clone(),
                        versionstamp: c.versionstamp.as_ref().map($crate::server::versionstamp_hex),
                    })
                    .collect();
                let mutations: Vec<typed_kv::TypedMutation> = mutations
                    .iter()
                    .map(|m| {
                        let kind = match &m.op {
                            MutationOp::Set(v) => typed_kv::TypedMutationKind::Set(Self::value(v)),
                            MutationOp::Delete => typed_kv::TypedMutationKind::Delete,
                            MutationOp::Sum(x) => typed_kv::TypedMutationKind::Sum(*x),
                            MutationOp::Min(x) => typed_kv::TypedMutationKind::Min(*x),
                            MutationOp::Max(x) => typed_kv::TypedMutationKind::Max(*x),
                            MutationOp::SetSuffixVersionstamped(v) => typed_kv::TypedMutationKind::SetSuffixVersionstamped(Self::value(v)),
                        };
                        typed_kv::TypedMutation { key: m.key.clone(), kind, ttl_ms: m.ttl_ms }
                    })
                    .collect();
                (checks, mutations)
            }

            fn outcome(r: Result<kv::AtomicOutcome, types::KvError>) -> Result<$crate::server::AtomicResult, $crate::server::Failure> {
                match r.map_err(Self::failure)? {
                    kv::AtomicOutcome::Committed(vs) => Ok($crate::server::AtomicResult::Committed(Self::versionstamp(&vs)?)),
                    kv::AtomicOutcome::CheckFailed(i) => Ok($crate::server::AtomicResult::CheckFailed(i)),
                }
            }

            fn entry(e: types::TypedEntry) -> Result<$crate::server::Entry, $crate::server::Failure> {
                use $crate::datapath::Value;
                let value = match e.value.encoding {
                    types::ValueEncoding::V8 => Value::V8(e.value.data),
                    types::ValueEncoding::Bytes => Value::Bytes(e.value.data),
                    types::ValueEncoding::Le64 => match <[u8; 8]>::try_from(e.value.data.as_slice()) {
                        Ok(b) => Value::U64(u64::from_le_bytes(b)),
                        Err(_) => Value::Bytes(e.value.data),
                    },
                };
                Ok($crate::server::Entry { key: e.key, value, versionstamp: Self::versionstamp(&e.versionstamp)? })
            }
        }

        impl $crate::server::Store for $name {
            fn snapshot_read(&self, ranges: &[$crate::server::Range]) -> Result<Vec<Vec<$crate::server::Entry>>, $crate::server::Failure> {
                let ranges: Vec<typed_kv::KeyRange> = ranges
                    .iter()
                    .map(|r| typed_kv::KeyRange { start: r.start.clone(), end: r.end.clone(), limit: r.limit, reverse: r.reverse })
                    .collect();
                let pages = typed_kv::snapshot_read(&ranges).map_err(Self::failure)?;
                pages.into_iter().map(|p| p.into_iter().map(Self::entry).collect()).collect()
            }

            fn atomic(
                &self,
                checks: &[$crate::server::CheckReq],
                mutations: &[$crate::server::MutationReq],
            ) -> Result<$crate::server::AtomicResult, $crate::server::Failure> {
                let (checks, mutations) = Self::batch(checks, mutations);
                Self::outcome(typed_kv::atomic(&checks, &mutations))
            }

            $($queue)*
        }
    };
}
