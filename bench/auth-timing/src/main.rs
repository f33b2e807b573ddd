//! The default guest's secret check (`guest/src/auth.rs`, compiled here
//! natively) timed for the right secret and for wrong ones that differ
//! early, late, or in length. Run: `cargo run --release -p sidekv-auth-timing`.
//! Interleaved rounds and medians, so machine noise hits every case alike.

#[path = "../../../guest/src/auth.rs"]
mod auth;

use sha2::{Digest, Sha256};
use std::time::Instant;

fn main() {
    let secret = b"correct-horse-battery-staple-0123";
    let want: [u8; 32] = Sha256::digest(secret).into();
    let mut first = *secret;
    first[0] ^= 1;
    let mut last = *secret;
    last[secret.len() - 1] ^= 1;
    let mut bearer = b"Bearer ".to_vec();
    bearer.extend_from_slice(secret);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("right secret", secret.to_vec()),
        ("wrong: first byte differs", first.to_vec()),
        ("wrong: last byte differs", last.to_vec()),
        ("right, as Bearer", bearer),
        ("wrong: 1 byte", b"x".to_vec()),
        ("wrong: 8 bytes", vec![b'a'; 8]),
        ("wrong: 64 bytes", vec![b'a'; 64]),
        ("wrong: 256 bytes", vec![b'a'; 256]),
    ];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for _round in 0..61 {
        for (i, (_, v)) in cases.iter().enumerate() {
            let n = 10_000;
            let t = Instant::now();
            for _ in 0..n {
                std::hint::black_box(auth::secret_matches(std::hint::black_box(v), &want));
            }
            samples[i].push(t.elapsed().as_nanos() as f64 / n as f64);
        }
    }
    let base = {
        let mut s = samples[0].clone();
        s.sort_by(|a, b| a.partial_cmp(b).unwrap());
        s[s.len() / 2]
    };
    println!("| presented value | bytes | ns per check (median) | vs right secret |");
    println!("|---|---|---|---|");
    for (i, (name, v)) in cases.iter().enumerate() {
        let mut s = samples[i].clone();
        s.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let m = s[s.len() / 2];
        println!("| {name} | {} | {m:.1} | {:.3} |", v.len(), m / base);
    }
}
