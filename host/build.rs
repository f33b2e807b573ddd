//! Embeds the default guest. The Makefile builds `guest/` for wasm32-wasip2
//! first (`make guest`); SIDEKV_GUEST_WASM overrides where it is found.
use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let default = manifest.join("../target/wasm/wasm32-wasip2/release/sidekv_guest.wasm");
    let src = std::env::var("SIDEKV_GUEST_WASM").map(PathBuf::from).unwrap_or(default);
    println!("cargo:rerun-if-env-changed=SIDEKV_GUEST_WASM");
    println!("cargo:rerun-if-changed={}", src.display());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("default_guest.wasm");
    match std::fs::read(&src) {
        Ok(bytes) => std::fs::write(&out, bytes).unwrap(),
        Err(e) => panic!(
            "the default guest {} is missing ({e}); build it first with `make guest` (or just use `make build`)",
            src.display()
        ),
    }
}
