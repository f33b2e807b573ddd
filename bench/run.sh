#!/usr/bin/env bash
# Side-by-side numbers for sidekv, a native (no-wasm) baseline and the seed
# system, all measured in this one run on this machine → BENCHMARKS.md.
#
# Called by `make bench` after `make build` and building sidekv-native-bench.
# Sequential: one server and one load at a time. About 4 minutes.
#
# Knobs (env): BENCH_WRK_SECONDS (10), BENCH_WRK_THREADS (2), BENCH_WRK_CONNS (32),
# BENCH_PORT_BASE (18780), BENCH_SKIP_SEED=1, BENCH_REPORT (BENCHMARKS.md).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

BIN=$root/target/release/sidekv
NATIVE_BIN=$root/target/release/sidekv-native-bench
SEED_DIR=/work/shared/peers/seed-deno
OUT=$root/bench/out/run
CACHE=$root/bench/out/cache
REPORT=${BENCH_REPORT:-$root/BENCHMARKS.md}
export BENCH_OUT=$OUT BENCH_SECRET=benchsecret BENCH_KEYS=1000 BENCH_VALUE_BYTES=100
base=${BENCH_PORT_BASE:-18780}
P_MAIN=$base P_ADMIN=$((base + 1)) P_S3=$((base + 2))
started=$(date +%s)

# Nothing from the caller's environment may change what is measured.
for v in $(compgen -e | grep -E '^(KVSTORE_|AWS_|LITESTREAM_)' || true); do unset "$v"; done

say() { printf '\n== %s\n' "$*"; }
py() { python3 "$root/bench/bench.py" "$@"; }

[ -x "$BIN" ] || { echo "missing $BIN: run make build" >&2; exit 1; }
[ -x "$NATIVE_BIN" ] || { echo "missing $NATIVE_BIN: cargo build --release -p sidekv-native-bench" >&2; exit 1; }
if ! command -v wrk >/dev/null; then
  say "installing wrk (apt)"
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
for p in $P_MAIN $P_ADMIN $P_S3; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "port $p is in use; set BENCH_PORT_BASE" >&2; exit 1; fi
done

rm -rf "$OUT"
mkdir -p "$OUT" "$CACHE"

# ---- process bookkeeping: only what this script started, by id ----
declare -a kill_on_exit=()
cleanup() {
  for p in "${kill_on_exit[@]}"; do kill -TERM -- "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

wait_listening() { # LOG PID
  for _ in $(seq 400); do
    grep -q 'listening on' "$1" 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || { echo "server exited; see $1:" >&2; tail -20 "$1" >&2; return 1; }
    sleep 0.05
  done
  echo "server not ready after 20 s; see $1" >&2
  return 1
}

stop() { # PID-or-negative-PGID
  local p=$1
  kill -TERM -- "$p" 2>/dev/null || return 0
  for _ in $(seq 200); do kill -0 -- "$p" 2>/dev/null || return 0; sleep 0.05; done
  kill -KILL -- "$p" 2>/dev/null || true
}

warmup() { # URL (3 s of GETs, not recorded)
  BENCH_MODE=get wrk -t2 -c32 -d3s -s "$root/bench/wrk/kv.lua" "$1" >/dev/null
}

start_sidekv() { # NAME [VAR=value...]
  local name=$1 file=${1// /_}
  shift
  env PORT=$P_MAIN HOST=127.0.0.1 KVSTORE_DB="$OUT/$file.sqlite3" KVSTORE_SECRET=$BENCH_SECRET \
    KVSTORE_PUBLIC_READS=true KVSTORE_CACHE_DIR="$CACHE" KVSTORE_ADMIN_ADDR=127.0.0.1:$P_ADMIN \
    "$@" "$BIN" >"$OUT/$file.log" 2>&1 &
  server=$!
  kill_on_exit+=("$server")
  wait_listening "$OUT/$file.log" "$server"
}

s3_env=(AWS_ENDPOINT_URL=http://127.0.0.1:$P_S3 AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1)

py machine
say "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), kernel $(uname -r)"

# ---- start-to-ready (on a quiet machine, before any load) ----
say "sidekv start-to-ready (empty db, warm compiled-guest cache, 5 runs)"
env HOST=127.0.0.1 KVSTORE_SECRET=$BENCH_SECRET KVSTORE_PUBLIC_READS=true KVSTORE_CACHE_DIR="$CACHE" \
  python3 "$root/bench/bench.py" ready sidekv 5 "$BIN"

run_target() { # NAME METRICS_URL WORKLOADS...
  local name=$1 metrics=$2
  shift 2
  py load "http://127.0.0.1:$P_MAIN" "$BENCH_KEYS" "$BENCH_SECRET" "$BENCH_VALUE_BYTES"
  warmup "http://127.0.0.1:$P_MAIN"
  for wl in "$@"; do
    [ "$wl" = POST ] && py fsync "$name"
    py wrk "$name" "$wl" "http://127.0.0.1:$P_MAIN" $metrics
  done
}

# ---- sidekv (reuse, the default) ----
say "sidekv (default guest, instance reuse)"
start_sidekv sidekv
run_target sidekv "http://127.0.0.1:$P_ADMIN/metrics" GET POST MIX
py rss sidekv "$server"
stop "$server"

# ---- native baseline ----
say "native baseline (bench/native: same Store and hyper settings, no wasm)"
PORT=$P_MAIN HOST=127.0.0.1 KVSTORE_DB="$OUT/native.sqlite3" KVSTORE_SECRET=$BENCH_SECRET \
  "$NATIVE_BIN" >"$OUT/native.log" 2>&1 &
server=$!
kill_on_exit+=("$server")
wait_listening "$OUT/native.log" "$server"
run_target native "http://127.0.0.1:$P_MAIN/_metrics" GET POST MIX
py rss native "$server"
stop "$server"

# ---- S3 server (moto) for the seed's litestream and sidekv's s3 runs ----
MOTO=""
for m in "$root/.venv/bin/moto_server" "$root/bench/out/seed/venv/bin/moto_server"; do
  [ -x "$m" ] && { MOTO=$m; break; }
done
moto_up=false
if [ -n "$MOTO" ]; then
  "$MOTO" -p "$P_S3" >"$OUT/moto.log" 2>&1 &
  moto=$!
  kill_on_exit+=("$moto")
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$P_S3/" && { moto_up=true; break; }; sleep 0.1; done
fi
$moto_up || say "WARNING: no S3 server (moto_server missing or not starting: run make setup-py)"

# ---- seed system ----
say "seed system (Deno KV + litestream, from $SEED_DIR)"
seed_skip=""
if [ "${BENCH_SKIP_SEED:-}" = 1 ]; then
  seed_skip="BENCH_SKIP_SEED=1 was set"
elif [ ! -x "$SEED_DIR/run.sh" ]; then
  seed_skip="$SEED_DIR/run.sh is missing"
elif ! $moto_up; then
  seed_skip="no local S3 server (moto) for its litestream"
else
  rm -f "$root"/bench/out/seed/kv.sqlite3*
  # run.sh installs deno, litestream and moto from PyPI into bench/out/seed/venv
  # the first time, finds our moto on P_S3, and starts deno (+ litestream) under setsid.
  if seed_out=$(KVSTORE_SECRET=$BENCH_SECRET timeout 600 "$SEED_DIR/run.sh" "$root/bench/out/seed" "$P_MAIN" "$P_S3" 2>&1); then
    seed_pid=$(awk '$1 == "deno" {print $2}' <<<"$seed_out")
    kill_on_exit+=("-$seed_pid")   # its own process group: deno and its litestream child
    lpid=$(ps -o pid= --ppid "$seed_pid" | head -1 | tr -d ' ')
    run_target seed "" GET POST MIX
    py rss seed "$seed_pid" ${lpid:+litestream=$lpid}
    stop "-$seed_pid"
  else
    seed_skip="its run.sh failed: $(tail -3 <<<"$seed_out" | tr '\n' ' ')"
  fi
fi
if [ -n "$seed_skip" ]; then
  say "SEED SYSTEM SKIPPED: $seed_skip — every ratio against the seed is n/a"
  py note "Seed system skipped" "$seed_skip; ratios against the seed are n/a in this run."
fi

# ---- instance strategy: fresh ----
say "sidekv, KVSTORE_INSTANCE_MODE=fresh"
start_sidekv "sidekv fresh" KVSTORE_INSTANCE_MODE=fresh
run_target "sidekv fresh" "http://127.0.0.1:$P_ADMIN/metrics" GET POST
py rss "sidekv fresh" "$server"
stop "$server"

# ---- durability: s3, and local with S3 backup (the seed's setup) ----
if $moto_up; then
  curl -s -o /dev/null -X PUT "http://127.0.0.1:$P_S3/sidekv-bench"
  say "sidekv, KVSTORE_DURABILITY=s3 (local moto)"
  start_sidekv "sidekv s3" "${s3_env[@]}" KVSTORE_S3_URL=s3://sidekv-bench/s3mode KVSTORE_DURABILITY=s3
  run_target "sidekv s3" "http://127.0.0.1:$P_ADMIN/metrics" POST
  py rss "sidekv s3" "$server"
  stop "$server"

  say "sidekv, local durability with S3 backup (local moto)"
  start_sidekv "sidekv local+S3 backup" "${s3_env[@]}" KVSTORE_S3_URL=s3://sidekv-bench/localmode
  run_target "sidekv local+S3 backup" "http://127.0.0.1:$P_ADMIN/metrics" POST
  py rss "sidekv local+S3 backup" "$server"
  stop "$server"
else
  py note "S3 runs skipped" "no local S3 server (moto); run make setup-py"
fi

[ -n "${moto:-}" ] && stop "$moto"
py report >"$REPORT"
say "wrote $REPORT in $(($(date +%s) - started)) s; raw results in $OUT"
sed -n '/^## Targets/,/^$/p' "$REPORT"
