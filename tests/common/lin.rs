//! Linearizability: a register workload (writes, reads, compare-and-set via
//! `If-Match` / `If-None-Match`) run by concurrent clients against one or
//! several sidecars, recorded as histories, and a Wing & Gong checker.
//! Used across crashes (robustness.rs) and across sidecars sharing one
//! PostgreSQL database (scaleout.rs).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Client;

/// A small deterministic PRNG (xorshift), seeded per test and printed, so a
/// failing run can be replayed with SIDEKV_SEED.
pub struct Rng(pub u64);
impl Rng {
    pub fn seeded() -> Rng {
        let seed = std::env::var("SIDEKV_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1);
        eprintln!("seed: SIDEKV_SEED={seed}");
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Clone, Debug)]
pub enum Op {
    Write(u64),
    /// Write `new` if the current value is `expect` (via If-Match on the
    /// versionstamp a read returned with it).
    Cas {
        expect: Option<u64>,
        new: u64,
    },
    Read,
}

#[derive(Clone, Debug)]
pub enum Outcome {
    Ok,
    Failed,
    Value(Option<u64>),
    /// No answer (the server died): it may or may not have applied.
    Unknown,
}

#[derive(Clone, Debug)]
pub struct Event {
    pub op: Op,
    pub outcome: Outcome,
    pub invoke: u64,
    pub ret: u64,
}

/// Wing & Gong search with memoisation (as in Porcupine/Knossos) for one
/// register. Operations with an unknown outcome return at +∞ and may be
/// linearized anywhere after their invocation, or not at all.
pub fn linearizable(events: &[Event]) -> bool {
    let n = events.len();
    assert!(n <= 128, "history too long for the bitset");
    let mut seen: HashSet<(u128, Option<u64>)> = HashSet::new();
    fn step(state: Option<u64>, e: &Event) -> Option<Option<u64>> {
        match (&e.op, &e.outcome) {
            (Op::Write(v), Outcome::Ok | Outcome::Unknown) => Some(Some(*v)),
            (Op::Read, Outcome::Value(v)) => (*v == state).then_some(state),
            (Op::Read, Outcome::Unknown) => Some(state),
            (Op::Cas { expect, new }, Outcome::Ok) => (*expect == state).then_some(Some(*new)),
            (Op::Cas { expect, .. }, Outcome::Failed) => (*expect != state).then_some(state),
            (Op::Cas { expect, new }, Outcome::Unknown) => Some(if *expect == state { Some(*new) } else { state }),
            _ => None,
        }
    }
    fn dfs(events: &[Event], done: u128, state: Option<u64>, seen: &mut HashSet<(u128, Option<u64>)>) -> bool {
        let n = events.len();
        let all_known_done = (0..n).all(|i| done & (1 << i) != 0 || matches!(events[i].outcome, Outcome::Unknown));
        if all_known_done {
            return true;
        }
        if !seen.insert((done, state)) {
            return false;
        }
        // The earliest return among pending ops bounds which ops may go next.
        let min_ret = (0..n).filter(|i| done & (1 << i) == 0).map(|i| events[i].ret).min().unwrap();
        for i in 0..n {
            if done & (1 << i) != 0 || events[i].invoke > min_ret {
                continue;
            }
            if let Some(next) = step(state, &events[i])
                && dfs(events, done | (1 << i), next, seen)
            {
                return true;
            }
        }
        false
    }
    dfs(events, 0, None, &mut seen)
}

/// Histories of many keys, shared by the workers of a test.
#[derive(Clone)]
pub struct Histories {
    events: Arc<Mutex<HashMap<String, Vec<Event>>>>,
    /// value → versionstamp of the write that produced it (for CAS via If-Match).
    vs_of: Arc<Mutex<HashMap<u64, String>>>,
    /// Every write gets a unique value.
    next_value: Arc<AtomicU64>,
    clock: Instant,
}

impl Histories {
    pub fn new() -> Histories {
        Histories { events: Arc::default(), vs_of: Arc::default(), next_value: Arc::new(AtomicU64::new(1)), clock: Instant::now() }
    }

    fn now(&self) -> u64 {
        self.clock.elapsed().as_nanos() as u64
    }

    fn record(&self, key: String, op: Op, outcome: Outcome, invoke: u64) {
        let ret = if matches!(outcome, Outcome::Unknown) { u64::MAX } else { self.now() };
        self.events.lock().unwrap().entry(key).or_default().push(Event { op, outcome, invoke, ret });
    }

    /// Read every key once more (the final state is part of the history).
    pub async fn read_all_once_more(&self, c: &Client) {
        let keys: Vec<String> = self.events.lock().unwrap().keys().cloned().collect();
        for key in keys {
            let invoke = self.now();
            let got = c.get(&key).await.map(|b| String::from_utf8(b).unwrap().parse::<u64>().unwrap());
            self.record(key, Op::Read, Outcome::Value(got), invoke);
        }
    }

    /// Panics with the history of the first key that is not linearizable;
    /// else (keys, operations).
    pub fn assert_linearizable(&self) -> (usize, usize) {
        let h = self.events.lock().unwrap();
        let mut total = 0;
        for (key, events) in h.iter() {
            total += events.len();
            assert!(linearizable(events), "history of {key} is not linearizable:\n{events:#?}");
        }
        (h.len(), total)
    }
}

async fn write(c: &Client, h: &Histories, key: &str, v: u64, cond: Option<Option<u64>>) -> Outcome {
    let mut req = c.req(reqwest::Method::POST, &format!("/{key}")).body(v.to_string()).timeout(Duration::from_secs(5));
    req = match cond {
        None => req,
        Some(Some(e)) => {
            let vs = h.vs_of.lock().unwrap().get(&e).cloned().unwrap();
            req.header("if-match", format!("\"{vs}\""))
        }
        Some(None) => req.header("if-none-match", "*"),
    };
    match req.send().await {
        Ok(r) if r.status() == 200 => {
            let b: serde_json::Value = r.json().await.unwrap();
            h.vs_of.lock().unwrap().insert(v, b["versionstamp"].as_str().unwrap().to_string());
            Outcome::Ok
        }
        Ok(r) if r.status() == 412 && cond.is_some() => Outcome::Failed,
        Ok(r) if r.status().is_server_error() => Outcome::Unknown,
        Ok(r) => panic!("write {key}: {}", r.status()),
        Err(_) => Outcome::Unknown,
    }
}

async fn read(c: &Client, h: &Histories, key: &str) -> Outcome {
    match c.req(reqwest::Method::GET, &format!("/{key}")).timeout(Duration::from_secs(5)).send().await {
        Ok(r) if r.status() == 200 => {
            let vs = r.headers()["etag"].to_str().unwrap().trim_matches('"').to_string();
            let v: u64 = String::from_utf8(r.bytes().await.unwrap().to_vec()).unwrap().parse().unwrap();
            h.vs_of.lock().unwrap().insert(v, vs);
            Outcome::Value(Some(v))
        }
        Ok(r) if r.status() == 404 => Outcome::Value(None),
        _ => Outcome::Unknown,
    }
}

/// One client: `ops` random operations on keys `<prefix>0..3`, each sent to
/// a randomly chosen sidecar of `clients`.
pub async fn register_worker(clients: Vec<Client>, prefix: String, ops: usize, mut r: Rng, h: Histories) {
    for _ in 0..ops {
        let key = format!("{prefix}{}", r.below(3));
        let c = &clients[r.below(clients.len() as u64) as usize];
        let invoke = h.now();
        let (op, outcome) = match r.below(3) {
            0 => {
                let v = h.next_value.fetch_add(1, Ordering::Relaxed);
                (Op::Write(v), write(c, &h, &key, v, None).await)
            }
            1 => (Op::Read, read(c, &h, &key).await),
            _ => {
                // CAS from the last value this key was seen with (or absent).
                let last = h.events.lock().unwrap().get(&key).and_then(|e| {
                    e.iter().rev().find_map(|e| match (&e.op, &e.outcome) {
                        (Op::Read, Outcome::Value(v)) => Some(*v),
                        _ => None,
                    })
                });
                let expect = last.unwrap_or(None);
                let v = h.next_value.fetch_add(1, Ordering::Relaxed);
                (Op::Cas { expect, new: v }, write(c, &h, &key, v, Some(expect)).await)
            }
        };
        h.record(key, op, outcome, invoke);
    }
}
