#!/usr/bin/env bash
# Throughput cost of the guest-instance cap (KVSTORE_MAX_INSTANCES) for the
# Rust (default), JavaScript (js-hmac) and Python (python-allowlist) guests:
# wrk, 2 threads, 32 connections, GET and POST of one key, per cap value.
# Prints one line per run: guest cap mode req/s p99 peak-RSS, and the live
# instances and their memory mid-run.
#   bench/instances.sh            (needs `make build examples-polyglot`, wrk)
#   CAPS="4 16 64" DURATION=4s bench/instances.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/target/release/sidekv
caps=${CAPS:-"4 16 64"}
dur=${DURATION:-4s}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
hmac_key="bench hmac key"
secret=bench-secret

sig() { # method path body
  printf '%s\n%s\n%s' "$1" "$2" "$3" | openssl dgst -sha256 -hmac "$hmac_key" | sed 's/^.* //'
}

# Per guest: the auth header for GET/POST of /k (body "v").
auth() { # guest method
  case $1 in
    rust) echo "Authorization: $secret" ;;
    js) if [ "$2" = POST ]; then echo "x-signature: $(sig POST /k v)"; else echo "x-signature: $(sig GET /k '')"; fi ;;
    python) echo "x-client-id: bench" ;;
  esac
}

run() { # guest cap
  local g=$1 cap=$2 db=$work/$1-$2.sqlite3 port genv=()
  case $g in
    rust) genv=("KVSTORE_SECRET=$secret") ;;
    js) genv=("KVSTORE_GUEST=$root/target/wasm/examples/js-hmac.wasm" "KVSTORE_GUEST_HMAC_KEY=$hmac_key") ;;
    python) genv=("KVSTORE_GUEST=$root/target/wasm/examples/python-allowlist.wasm" "KVSTORE_GUEST_CLIENTS=bench") ;;
  esac
  local admin
  : >"$work/out"
  env -i PATH="$PATH" PORT=0 KVSTORE_DB="$db" KVSTORE_ADMIN_ADDR="127.0.0.1:0" KVSTORE_CACHE_DIR="$work/cache" \
    KVSTORE_MAX_INSTANCES="$cap" RUST_LOG=warn "${genv[@]}" "$bin" >"$work/out" 2>"$work/err" &
  local pid=$!
  for _ in $(seq 600); do grep -q "listening on" "$work/out" 2>/dev/null && break; sleep 0.1; done
  grep -q "listening on" "$work/out" || { echo "$g cap $cap: sidekv did not start:"; tail -5 "$work/err"; return 1; }
  port=$(sed -n 's|^listening on http://127.0.0.1:||p' "$work/out")
  admin=$(sed -n 's|^admin on http://127.0.0.1:||p' "$work/out")
  curl -sf -X POST -H "$(auth "$g" POST)" --data-binary v "http://127.0.0.1:$port/k" >/dev/null
  for mode in GET POST; do
    local lua=$work/$mode.lua
    if [ $mode = POST ]; then printf 'wrk.method="POST"\nwrk.body="v"\n' >"$lua"; else : >"$lua"; fi
    wrk -t2 -c32 -d1s -s "$lua" -H "$(auth "$g" $mode)" "http://127.0.0.1:$port/k" >/dev/null   # warm-up
    local out rps p99
    # Instances are read mid-run: at the end wrk's cancelled requests drop theirs.
    (sleep "$(( ${dur%s} / 2 ))"; curl -s "http://127.0.0.1:$admin/metrics" >"$work/metrics") &
    local scraper=$!
    out=$(wrk -t2 -c32 -d"$dur" --latency -s "$lua" -H "$(auth "$g" $mode)" "http://127.0.0.1:$port/k")
    rps=$(awk '/Requests\/sec/ {print int($2)}' <<<"$out")
    p99=$(awk '$1=="99%" {print $2}' <<<"$out")
    local non2xx; non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
    wait "$scraper"
    local m; m=$(cat "$work/metrics")
    local inst mem hwm
    inst=$(awk '$1=="sidekv_guest_instances" {print $2}' <<<"$m")
    mem=$(awk '$1=="sidekv_guest_memory_bytes" {printf "%.0f", $2/1048576}' <<<"$m")
    hwm=$(awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$pid/status")
    printf '%-7s cap %-3s %-4s %7s req/s  p99 %-8s non-2xx %-5s peak RSS %4s MiB  instances %-3s guest memory %4s MiB\n' \
      "$g" "$cap" "$mode" "$rps" "$p99" "${non2xx:-0}" "$hwm" "$inst" "$mem"
  done
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

for g in ${GUESTS:-rust js python}; do
  run "$g" 1 >/dev/null # fills the compiled-guest cache: compiling is not what is measured
  for cap in $caps; do run "$g" "$cap"; done
done
