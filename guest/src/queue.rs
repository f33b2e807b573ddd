//! The REST queue endpoints, on the host's `queue` interface. Access is
//! the same as for keys: every call needs the secret (write access).
//!
//! | request | does |
//! |---|---|
//! | `POST /_queue?delay=ms&backoff=100,1000&undelivered=key…` (body = payload) | enqueue; `{"ok","id","versionstamp"}` |
//! | `POST /_queue/take?wait=30s&visibility=30s` | lease the next due message: 200 + payload + `x-sidekv-*` headers, 204 if none came |
//! | `POST /_queue/ack?lease=L` | delivered: 200, or 409 if `L` is not the current lease |
//! | `POST /_queue/retry?lease=L` | this attempt failed: backoff or dead-letter; 200 / 409 |
//!
//! `/_atomic` also takes `{"type":"enqueue","value":<base64>,"delay":ms,
//! "keys_if_undelivered":[…],"backoff_schedule":[…]}` mutations.

use serde_json::{Value, json};

use crate::sidekv::store::queue::{self, NewMessage};
use crate::sidekv::store::types::{TypedValue, ValueEncoding};
use crate::{Access, Query, Request, Resp, authorize, endpoint, error, json_resp, kv_error, parse_timeout, response};
use sidekv_core::limits::{DEFAULT_QUEUE_VISIBILITY_MS, MAX_KEY_BYTES};

/// Default `?wait=` of a take: 30 s.
const DEFAULT_WAIT_MS: u32 = 30_000;

pub fn route(req: &Request, q: &Query, sub: &str) -> Result<Resp, Resp> {
    match sub {
        "" => endpoint(req, "POST", || enqueue(req, q)),
        "/take" => endpoint(req, "POST", || take(req, q)),
        "/ack" => endpoint(req, "POST", || settle(req, q, true)),
        "/retry" => endpoint(req, "POST", || settle(req, q, false)),
        other => Err(error(404, format!("no endpoint /_queue{other} (/_queue, /_queue/take, /_queue/ack, /_queue/retry)"))),
    }
}

/// A REST key for `keys_if_undelivered`: not empty, not reserved, not too long.
fn undelivered_key(k: &str, what: &str) -> Result<Vec<u8>, Resp> {
    if k.is_empty() || k.len() > MAX_KEY_BYTES {
        return Err(error(400, format!("{what}: a key is 1..={MAX_KEY_BYTES} bytes")));
    }
    if k.starts_with('_') {
        return Err(error(400, format!("{what}: keys starting with _ are reserved")));
    }
    Ok(k.as_bytes().to_vec())
}

/// `100,1000,5000` (ms); an empty value means no retries at all.
fn backoff(s: &str) -> Result<Vec<u32>, Resp> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    s.split(',')
        .map(|p| {
            crate::decimal(p)
                .and_then(|v| u32::try_from(v).ok())
                .ok_or_else(|| error(400, format!("backoff must be comma-separated milliseconds, got {s:?}")))
        })
        .collect()
}

fn enqueue(req: &Request, q: &Query) -> Result<Resp, Resp> {
    authorize(req, Access::Write)?;
    let delay_ms = q.u64("delay")?.unwrap_or(0);
    let keys = q.0.iter().filter(|(k, _)| k == "undelivered").map(|(_, v)| undelivered_key(v, "undelivered")).collect::<Result<_, _>>()?;
    let backoff_schedule = q.get("backoff").map(backoff).transpose()?;
    let encoding = match q.get("encoding").unwrap_or("bytes") {
        "bytes" => ValueEncoding::Bytes,
        "v8" => ValueEncoding::V8,
        e => return Err(error(400, format!("encoding must be bytes or v8, got {e:?}"))),
    };
    let msg = NewMessage { value: TypedValue { data: req.body.clone(), encoding }, delay_ms, keys_if_undelivered: keys, backoff_schedule };
    match queue::atomic(&[], &[], std::slice::from_ref(&msg)).map_err(kv_error)? {
        crate::kv::AtomicOutcome::Committed(vs) => {
            let id = format!("{vs}0000");
            Ok(crate::with_vs(json_resp(200, json!({ "ok": true, "id": id, "versionstamp": vs })), &vs))
        }
        crate::kv::AtomicOutcome::CheckFailed(_) => Err(error(500, "an enqueue without checks reported a failed check")),
    }
}

fn take(req: &Request, q: &Query) -> Result<Resp, Resp> {
    authorize(req, Access::Write)?;
    let wait = q.get("wait").map(parse_timeout).transpose()?.unwrap_or(DEFAULT_WAIT_MS);
    let visibility = match q.get("visibility") {
        None => DEFAULT_QUEUE_VISIBILITY_MS,
        Some(v) => visibility_ms(v)?,
    };
    match queue::take(visibility, wait).map_err(kv_error)? {
        None => Ok(Resp { status: 204, headers: vec![], body: vec![], stream: None }),
        Some(m) => {
            let enc: &[u8] = match m.value.encoding {
                ValueEncoding::V8 => b"v8",
                ValueEncoding::Le64 => b"le64",
                ValueEncoding::Bytes => b"bytes",
            };
            let mut r = response(200, "application/octet-stream", m.value.data);
            r.headers.extend([
                ("x-sidekv-message-id".to_string(), m.id.into_bytes()),
                ("x-sidekv-attempt".to_string(), m.attempt.to_string().into_bytes()),
                ("x-sidekv-encoding".to_string(), enc.to_vec()),
                ("x-sidekv-lease".to_string(), m.lease.into_bytes()),
                ("x-sidekv-lease-expires".to_string(), m.lease_expires_at.to_string().into_bytes()),
            ]);
            Ok(r)
        }
    }
}

/// A visibility timeout: "30s", "2m", "500ms" or milliseconds, up to 12 h.
fn visibility_ms(s: &str) -> Result<u32, Resp> {
    let bad = || error(400, format!("visibility must look like 30s, 500ms or 5m, got {s:?}"));
    let (num, mul) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1u64)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3_600_000)
    } else {
        (s, 1)
    };
    let ms = crate::decimal(num).ok_or_else(bad)?.checked_mul(mul).ok_or_else(bad)?;
    u32::try_from(ms).map_err(|_| bad())
}

fn settle(req: &Request, q: &Query, ack: bool) -> Result<Resp, Resp> {
    authorize(req, Access::Write)?;
    let header = crate::header_str(req, "x-sidekv-lease")?;
    let Some(lease) = q.get("lease").or(header).filter(|l| !l.is_empty()) else {
        return Err(error(400, "needs ?lease= (or X-Sidekv-Lease): the lease /_queue/take returned"));
    };
    let held = if ack { queue::ack(lease) } else { queue::retry(lease) }.map_err(kv_error)?;
    if held {
        Ok(json_resp(200, json!({ "ok": true })))
    } else {
        Err(json_resp(
            409,
            json!({ "ok": false, "error": "this lease is not the message's current lease: unknown message, already settled, or the lease expired (the message is, or will be, delivered again)" }),
        ))
    }
}

/// An `enqueue` mutation of `/_atomic`.
pub fn parse_enqueue(i: usize, o: &serde_json::Map<String, Value>) -> Result<NewMessage, Resp> {
    use base64::Engine as _;
    let bad = |m: &str| error(400, format!("mutations[{i}]: {m}"));
    let b = o.get("value").and_then(Value::as_str).ok_or_else(|| bad("enqueue needs a base64 string \"value\""))?;
    let data = base64::engine::general_purpose::STANDARD.decode(b).map_err(|_| bad("\"value\" is not valid base64"))?;
    let delay_ms = match o.get("delay") {
        None | Some(Value::Null) => 0,
        Some(d) => d.as_u64().ok_or_else(|| bad("\"delay\" must be milliseconds"))?,
    };
    let keys = match o.get("keys_if_undelivered") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|k| k.as_str().ok_or_else(|| bad("\"keys_if_undelivered\" must be strings")))
            .map(|k| k.and_then(|k| undelivered_key(k, &format!("mutations[{i}].keys_if_undelivered"))))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad("\"keys_if_undelivered\" must be an array of keys")),
    };
    let backoff_schedule = match o.get("backoff_schedule") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) => Some(
            a.iter()
                .map(|s| s.as_u64().and_then(|s| u32::try_from(s).ok()).ok_or_else(|| bad("\"backoff_schedule\" must be milliseconds")))
                .collect::<Result<_, _>>()?,
        ),
        Some(_) => return Err(bad("\"backoff_schedule\" must be an array of milliseconds")),
    };
    Ok(NewMessage { value: TypedValue { data, encoding: ValueEncoding::Bytes }, delay_ms, keys_if_undelivered: keys, backoff_schedule })
}

/// A `{"queue_message": …}` line of an export, enqueued again: a new id,
/// the same due time (or now), the backoff steps it had left.
pub fn import_line(line: &str, now: u64) -> Result<NewMessage, String> {
    use base64::Engine as _;
    let b64 = &base64::engine::general_purpose::STANDARD;
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let m = v.get("queue_message").and_then(Value::as_object).ok_or("\"queue_message\" must be an object")?;
    let data = b64.decode(m.get("value").and_then(Value::as_str).ok_or("needs a base64 \"value\"")?).map_err(|_| "bad base64 value")?;
    let encoding = match m.get("encoding").and_then(Value::as_str).unwrap_or("bytes") {
        "bytes" => ValueEncoding::Bytes,
        "v8" => ValueEncoding::V8,
        e => return Err(format!("unknown encoding {e:?}")),
    };
    let due = m.get("due_at").and_then(Value::as_u64).unwrap_or(now);
    let attempts = m.get("attempts").and_then(Value::as_u64).unwrap_or(0) as usize;
    let schedule: Vec<u32> = match m.get("backoff_schedule") {
        Some(Value::Array(a)) => {
            a.iter().map(|s| s.as_u64().and_then(|s| u32::try_from(s).ok()).ok_or("bad backoff_schedule")).collect::<Result<_, _>>()?
        }
        _ => return Err("needs \"backoff_schedule\"".into()),
    };
    let keys = match m.get("keys_if_undelivered_b64") {
        None => Vec::new(),
        Some(Value::Array(a)) => {
            a.iter().map(|k| k.as_str().and_then(|k| b64.decode(k).ok()).ok_or("bad keys_if_undelivered_b64")).collect::<Result<_, _>>()?
        }
        Some(_) => return Err("\"keys_if_undelivered_b64\" must be an array".into()),
    };
    Ok(NewMessage {
        value: TypedValue { data, encoding },
        delay_ms: due.saturating_sub(now),
        keys_if_undelivered: keys,
        backoff_schedule: Some(schedule.get(attempts..).unwrap_or_default().to_vec()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_and_visibility() {
        assert_eq!(backoff("").unwrap(), Vec::<u32>::new());
        assert_eq!(backoff("100,2000").unwrap(), vec![100, 2000]);
        assert!(backoff("100, 2000").is_err());
        assert!(backoff("+5").is_err());
        assert!(backoff("1,x").is_err());
        assert_eq!(visibility_ms("30s").unwrap(), 30_000);
        assert_eq!(visibility_ms("2h").unwrap(), 7_200_000);
        assert!(visibility_ms("-1").is_err());
        assert!(undelivered_key("_x", "k").is_err());
        assert!(undelivered_key("", "k").is_err());
    }
}
