#!/usr/bin/env bash
# What `make image` needs (`make test` runs it first): podman and runc (an OCI
# runtime that builds and runs a FROM-scratch image offline), musl-tools
# (musl-gcc, for the C code the crates bundle: SQLite, zstd) and rustup's
# x86_64-unknown-linux-musl target. Idempotent; a no-op when all are present.
set -euo pipefail

TARGET=x86_64-unknown-linux-musl
missing=()
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v runc >/dev/null 2>&1 || missing+=(runc)
command -v musl-gcc >/dev/null 2>&1 || missing+=(musl-tools)
if [ ${#missing[@]} -gt 0 ]; then
  echo "container: installing ${missing[*]} (apt-get)"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
  echo "container: adding the rustup target $TARGET"
  rustup target add "$TARGET"
fi
echo "container: podman $(podman --version | awk '{print $3}'), runc, musl-gcc, $TARGET present"
