//! The host side of the WIT `queue` interface: enqueue with a write, take
//! with a lease, ack, retry. Semantics are the store's (`backend::Kv`);
//! a lease is handed to the guest as `<message id>.<lease as 16 hex digits>`.

use std::time::Duration;

use super::HostState;
use super::host_kv::kv_error;
use super::host_typed_kv::{encoding, mutation, typed_checks, value};
use super::sidekv::store::{kv, queue, types};
use crate::backend::{self as store, QueueOp, WriteOp, WriteResult};

use types::{KvError, TypedValue};

/// `<id>.<lease>` back into its parts.
fn parse_lease(s: &str) -> Result<(String, u64), KvError> {
    let bad = || KvError::InvalidArgument(format!("{s:?} is not a lease (<message id>.<16 hex digits>, as take returned it)"));
    let (id, lease) = s.split_once('.').ok_or_else(bad)?;
    sidekv_core::validate::validate_message_id(id).map_err(|_| bad())?;
    if lease.len() != 16 {
        return Err(bad());
    }
    Ok((id.to_string(), u64::from_str_radix(lease, 16).map_err(|_| bad())?))
}

fn lease_string(id: &str, lease: u64) -> String {
    format!("{id}.{lease:016x}")
}

impl queue::Host for HostState {
    async fn atomic(
        &mut self,
        checks: Vec<super::sidekv::store::typed_kv::TypedCheck>,
        mutations: Vec<super::sidekv::store::typed_kv::TypedMutation>,
        messages: Vec<queue::NewMessage>,
    ) -> Result<kv::AtomicOutcome, KvError> {
        let checks = typed_checks(checks)?;
        let mutations = mutations.into_iter().map(mutation).collect();
        let enqueues = messages
            .into_iter()
            .map(|m| store::Enqueue {
                payload: value(m.value),
                delay_ms: m.delay_ms,
                keys_if_undelivered: m.keys_if_undelivered,
                backoff_schedule: m.backoff_schedule,
            })
            .collect();
        match store_call_off_deadline!(self, self.store.write(WriteOp::Enqueue { checks, mutations, enqueues }))? {
            WriteResult::Committed { versionstamp, .. } => Ok(kv::AtomicOutcome::Committed(versionstamp.to_string())),
            WriteResult::CheckFailed(i) => Ok(kv::AtomicOutcome::CheckFailed(i as u32)),
            WriteResult::PreconditionFailed => Ok(kv::AtomicOutcome::CheckFailed(0)),
        }
    }

    async fn take(&mut self, visibility_ms: u32, wait_ms: u32) -> Result<Option<queue::Message>, KvError> {
        let m = store_call_off_deadline!(self, self.store.queue_take(visibility_ms, Duration::from_millis(wait_ms as u64)))
            .map_err(kv_error)?;
        Ok(m.map(|m| queue::Message {
            lease: lease_string(&m.id, m.lease),
            id: m.id,
            value: TypedValue { encoding: encoding(m.payload.encoding), data: m.payload.bytes },
            attempt: m.attempt,
            lease_expires_at: m.lease_until,
        }))
    }

    async fn ack(&mut self, lease: String) -> Result<bool, KvError> {
        let (id, lease) = parse_lease(&lease)?;
        store_call_off_deadline!(self, self.store.queue_settle(QueueOp::Ack { id, lease })).map_err(kv_error)
    }

    async fn retry(&mut self, lease: String) -> Result<bool, KvError> {
        let (id, lease) = parse_lease(&lease)?;
        store_call_off_deadline!(self, self.store.queue_settle(QueueOp::Retry { id, lease })).map_err(kv_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_round_trip() {
        let s = lease_string("000000000000000100000002", 0xabc);
        assert_eq!(parse_lease(&s).unwrap(), ("000000000000000100000002".to_string(), 0xabc));
        for bad in ["", "x.y", "000000000000000100000002.zz", "000000000000000100000002", "00000000000000010000000.0000000000000abc"] {
            assert!(parse_lease(bad).is_err(), "{bad}");
        }
    }
}
