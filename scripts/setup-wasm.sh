#!/usr/bin/env bash
# Make sure a wasm32-wasip2 toolchain exists (`make setup-wasm`; every guest
# build runs it first). scripts/build-guest.sh picks whichever is installed.
#
# Preferred: rustup's own target (what users with internet get).
# Fallback: Debian's rustc-web (which knows wasm32-wasip2) + wasi-libc, building
# std from source with -Zbuild-std (for machines where rustup cannot download).
set -euo pipefail

if rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  echo "wasm32-wasip2: rustup target present"
  exit 0
fi
if rustup target add wasm32-wasip2 >/dev/null 2>&1; then
  echo "wasm32-wasip2: installed with rustup"
  exit 0
fi
if [ -x /usr/bin/rustc ] && /usr/bin/rustc --print target-list | grep -qx wasm32-wasip2 \
   && [ -e /usr/lib/wasm32-wasi/libc.a ] && command -v wasm-component-ld >/dev/null 2>&1 \
   && [ -d /usr/lib/rustlib/src/rust ]; then
  echo "wasm32-wasip2: Debian rustc-web fallback present"
  exit 0
fi
echo "wasm32-wasip2: rustup cannot download the target; installing Debian's rustc-web fallback"
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends rustc-web rust-web-src rust-web-llvm wasi-libc lld >/dev/null
echo "wasm32-wasip2: Debian rustc-web fallback installed"
