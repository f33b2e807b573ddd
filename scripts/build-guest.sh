#!/usr/bin/env bash
# Build a guest crate of this workspace for wasm32-wasip2 into target/wasm.
#   scripts/build-guest.sh <package> [<package>...]
# Uses rustup's wasm32-wasip2 target when installed; otherwise Debian's
# rustc-web with -Zbuild-std (scripts/setup-wasm.sh installs one or the other).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=true CARGO_PROFILE_RELEASE_OPT_LEVEL=3 CARGO_PROFILE_RELEASE_LTO=true CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1
args=()
for p in "$@"; do args+=(-p "$p"); done
if rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  exec cargo build --release --target wasm32-wasip2 --target-dir target/wasm "${args[@]}"
fi
if [ -x /usr/bin/rustc ] && /usr/bin/rustc --print target-list | grep -qx wasm32-wasip2; then
  RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 RUSTFLAGS="-L /usr/lib/wasm32-wasi" \
    exec cargo build --release --target wasm32-wasip2 --target-dir target/wasm \
      -Zbuild-std=std,panic_abort "${args[@]}"
fi
echo "no wasm32-wasip2 toolchain: run scripts/setup-wasm.sh (make setup)" >&2
exit 1
