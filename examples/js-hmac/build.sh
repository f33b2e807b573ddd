#!/usr/bin/env bash
# Build the js-hmac guest: src/guest.js → target/wasm/examples/js-hmac.wasm
#   examples/js-hmac/build.sh [out.wasm]
# Installs componentize-js from npm into examples/js-hmac/node_modules (npm ci,
# from package-lock.json) when missing or stale; does nothing when the .wasm
# is newer than every input.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-$root/target/wasm/examples/js-hmac.wasm}
cd "$here"

if ! command -v npm >/dev/null 2>&1; then
  echo "js-hmac: node and npm are missing; installing Debian's nodejs + npm"
  SUDO=""; if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi

# npm ci writes node_modules/.package-lock.json: older than the lock file (or
# absent) means the install is missing or stale.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "js-hmac: npm ci (componentize-js)"
  npm ci --no-audit --no-fund --loglevel=error
fi

inputs=(src/*.js build.mjs build.sh package-lock.json "$root"/wit/*.wit)
if [ -d "$root/wit/deps" ]; then
  while IFS= read -r -d '' f; do inputs+=("$f"); done < <(find "$root/wit/deps" -name '*.wit' -print0)
fi
if [ -f "$out" ]; then
  stale=0
  for f in "${inputs[@]}"; do [ "$f" -nt "$out" ] && { stale=1; break; }; done
  if [ $stale = 0 ]; then echo "js-hmac: $out is up to date"; exit 0; fi
fi
node build.mjs "$out"
