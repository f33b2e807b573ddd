//! Embeds the default guest (`guest/`, built for wasm32-wasip2 by
//! `make guest`; SIDEKV_GUEST_WASM overrides where it is found).
//!
//! A missing guest is not a build error: `cargo check`, `cargo clippy` and
//! rust-analyzer must work on a fresh clone before any wasm is built. The
//! binary then embeds nothing and says so clearly when it would need the
//! default guest (a `KVSTORE_GUEST` file still works).
use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let default = manifest.join("../target/wasm/wasm32-wasip2/release/sidekv_guest.wasm");
    let src = std::env::var("SIDEKV_GUEST_WASM").map(PathBuf::from).unwrap_or(default);
    println!("cargo:rerun-if-env-changed=SIDEKV_GUEST_WASM");
    println!("cargo:rerun-if-changed={}", src.display());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("default_guest.wasm");
    let bytes = std::fs::read(&src).unwrap_or_else(|e| {
        println!(
            "cargo:warning=the default guest {} is missing ({e}); this build embeds no guest (`make build` builds it first)",
            src.display()
        );
        Vec::new()
    });
    std::fs::write(&out, bytes).unwrap();
}
