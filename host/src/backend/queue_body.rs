//! A queue message's immutable part (payload, backoff schedule, undelivered
//! keys) as both backends store it, and what a failed attempt leads to.
//! Format (big-endian): `enc u8 | payload_len u32 | payload | steps u8 |
//! step u32… | keys u8 | (key_len u16 | key)…`.

use sidekv_core::{Encoding, Enqueue, Key, Value};

use crate::limits;

/// The immutable part of a message: payload, schedule, undelivered keys.
pub struct Body {
    pub payload: Value,
    pub backoff: Vec<u32>,
    pub keys: Vec<Key>,
}

impl Body {
    /// A new message's body: its schedule, or Deno's default.
    pub fn of(m: &Enqueue) -> Body {
        Body {
            payload: m.payload.clone(),
            backoff: m.backoff_schedule.clone().unwrap_or_else(|| limits::DEFAULT_BACKOFF_SCHEDULE.to_vec()),
            keys: m.keys_if_undelivered.clone(),
        }
    }

    /// After failed attempt number `attempts` (1 = the first) at `now`:
    /// the next attempt's due time, or dead-letter.
    pub fn after_failure(&self, attempts: u32, now: u64) -> Step {
        match self.backoff.get(attempts as usize - 1) {
            Some(step) => Step::Retry(now + *step as u64),
            None => Step::DeadLetter,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(16 + self.payload.len());
        b.push(self.payload.encoding.code());
        b.extend_from_slice(&(self.payload.len() as u32).to_be_bytes());
        b.extend_from_slice(&self.payload.bytes);
        b.push(self.backoff.len() as u8);
        for s in &self.backoff {
            b.extend_from_slice(&s.to_be_bytes());
        }
        b.push(self.keys.len() as u8);
        for k in &self.keys {
            b.extend_from_slice(&(k.len() as u16).to_be_bytes());
            b.extend_from_slice(k);
        }
        b
    }

    pub fn decode(b: &[u8]) -> Option<Body> {
        let mut r = Cursor { b, pos: 0 };
        let encoding = Encoding::from_code(r.u8()?)?;
        let n = r.u32()? as usize;
        let payload = Value { bytes: r.take(n)?.to_vec(), encoding };
        let steps = r.u8()? as usize;
        let backoff = (0..steps).map(|_| r.u32()).collect::<Option<Vec<_>>>()?;
        let nkeys = r.u8()? as usize;
        let keys = (0..nkeys)
            .map(|_| {
                let l = r.u16()? as usize;
                Some(r.take(l)?.to_vec())
            })
            .collect::<Option<Vec<_>>>()?;
        (r.pos == b.len()).then_some(Body { payload, backoff, keys })
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
}

/// What a failed attempt leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Another attempt, due at this time (unix ms).
    Retry(u64),
    /// That was the last attempt: write the payload to the undelivered keys, drop the message.
    DeadLetter,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip_and_schedules_end() {
        let b = Body { payload: Value { bytes: vec![1, 2], encoding: Encoding::V8 }, backoff: vec![10, 20], keys: vec![b"k".to_vec()] };
        let back = Body::decode(&b.encode()).unwrap();
        assert_eq!((back.payload, back.backoff, back.keys), (b.payload.clone(), b.backoff.clone(), b.keys.clone()));
        assert_eq!(b.after_failure(1, 100), Step::Retry(110));
        assert_eq!(b.after_failure(2, 100), Step::Retry(120));
        assert_eq!(b.after_failure(3, 100), Step::DeadLetter);
        assert!(Body::decode(&b.encode()[1..]).is_none());
    }
}
