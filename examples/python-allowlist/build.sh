#!/usr/bin/env bash
# Build the python-allowlist guest: app.py → target/wasm/examples/python-allowlist.wasm
#   examples/python-allowlist/build.sh [out.wasm]
# Installs componentize-py (requirements.txt) from PyPI into the project's
# .venv when missing; does nothing when the .wasm is newer than every input.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-$root/target/wasm/examples/python-allowlist.wasm}
venv=$root/.venv
want=$(sed -n 's/^componentize-py==//p' "$here/requirements.txt")

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if [ "$("$venv/bin/componentize-py" --version 2>/dev/null)" != "componentize-py $want" ]; then
  echo "python-allowlist: pip install componentize-py==$want"
  "$venv/bin/pip" install -q -r "$here/requirements.txt"
fi

inputs=("$here"/*.py "$here/build.sh" "$here/requirements.txt" "$root"/wit/*.wit)
if [ -d "$root/wit/deps" ]; then
  while IFS= read -r -d '' f; do inputs+=("$f"); done < <(find "$root/wit/deps" -name '*.wit' -print0)
fi
if [ -f "$out" ]; then
  stale=0
  for f in "${inputs[@]}"; do [ "$f" -nt "$out" ] && { stale=1; break; }; done
  if [ $stale = 0 ]; then echo "python-allowlist: $out is up to date"; exit 0; fi
fi
mkdir -p "$(dirname "$out")"
started=$(date +%s)
# -p: where `app` is found; the bindings for the world are generated on the fly.
cd "$here"
PYTHONDONTWRITEBYTECODE=1 "$venv/bin/componentize-py" --wit-path "$root/wit" --world guest \
  componentize app -p "$here" -o "$out.tmp"
mv "$out.tmp" "$out"
echo "python-allowlist: $out ($(( $(stat -c %s "$out") / 1000000 )) MB, $(( $(date +%s) - started )) s)"
