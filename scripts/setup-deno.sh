#!/usr/bin/env bash
# The real KV Connect clients tests/kvconnect.rs and bench/kvconnect.sh run:
#   - the `deno` CLI (2.x) in the project venv .venv (PyPI's `deno` package),
#   - Node.js >= 18 and npm (Debian's `nodejs` and `npm`) when missing,
#   - npm `@deno/kv` (the version pinned in tests/kvconnect/node/package.json)
#     into tests/kvconnect/node/node_modules.
# Idempotent: a no-op (no network) when everything is there.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=$root/.venv
nodedir=$root/tests/kvconnect/node

# --- deno
if ! "$venv/bin/deno" --version 2>/dev/null | grep -q '^deno 2\.'; then
  echo "setup-deno: installing deno 2.x into .venv (pip)" >&2
  test -x "$venv/bin/pip" || python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'deno>=2,<3'
fi

# --- node + npm
node_ok() {
  command -v node >/dev/null && command -v npm >/dev/null &&
    [ "$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)" -ge 18 ]
}
if ! node_ok; then
  echo "setup-deno: installing nodejs and npm (apt-get)" >&2
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
  node_ok || { echo "setup-deno: node >= 18 and npm are still missing after apt-get" >&2; exit 1; }
fi

# --- npm @deno/kv, the version package.json pins
want=$(node -p 'require(process.argv[1]).dependencies["@deno/kv"]' "$nodedir/package.json")
have=$(node -p 'try { require(process.argv[1]).version } catch { "" }' "$nodedir/node_modules/@deno/kv/package.json" 2>/dev/null || true)
if [ "$have" != "$want" ]; then
  echo "setup-deno: installing @deno/kv@$want into tests/kvconnect/node (npm)" >&2
  (cd "$nodedir" && npm install --no-package-lock --no-audit --no-fund --loglevel=error >/dev/null)
fi

echo "setup-deno: $("$venv/bin/deno" --version | head -1), node $(node --version), @deno/kv $want"
