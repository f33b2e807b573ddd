#!/usr/bin/env bash
# Side-by-side numbers for sidekv, a native (no-wasm) baseline, a minimal
# independent server and the seed system, all measured in this one run on
# this machine → BENCHMARKS.md, its data (run.jsonl) and charts (bench/plot.py).
#
# Called by `make bench` after `make build` and building sidekv-native-bench
# and sidekv-minimal-bench. One load at a time, never two. About 11 minutes
# with the defaults.
#
#   1. start-to-ready of sidekv (empty db, warm compiled-guest cache), 5 runs
#   2. sidekv, native, minimal and seed started side by side, each loaded with
#      1000 keys and warmed up; sidekv, native and minimal a second time with
#      public reads off (for GET auth); then BENCH_ROUNDS rounds of GET
#      (public reads, no header), GET auth (Authorization on every request),
#      POST, MIX (wrk, 10 s each), the target order rotating every round;
#      peak RSS of each
#   3. sidekv with KVSTORE_INSTANCE_MODE=fresh (GET, POST)
#   4. sidekv with KVSTORE_DURABILITY=s3, then local durability + S3 backup
#      (POST), against a local moto S3 server
#
# Knobs (env): BENCH_ROUNDS (3), BENCH_WRK_SECONDS (10), BENCH_WRK_THREADS (2),
# BENCH_WRK_CONNS (32), BENCH_PORT_BASE (18780; ten ports from there), BENCH_SKIP_SEED=1,
# BENCH_QUIET_WAIT (60: seconds to wait for other work on the machine to stop),
# BENCH_REPORT (BENCHMARKS.md), BENCH_DATA_DIR (where run.jsonl goes: bench/data,
# or beside BENCH_REPORT when that is set).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

BIN=$root/target/release/sidekv
NATIVE_BIN=$root/target/release/sidekv-native-bench
MINIMAL_BIN=$root/target/release/sidekv-minimal-bench
# The seed system (Deno KV + litestream, docs/background.md) to compare with:
# a checkout of it beside this one by default, BENCH_SEED_DIR to point elsewhere.
SEED_DIR=${BENCH_SEED_DIR:-$root/../shared/peers/seed-deno}
OUT=$root/bench/out/run
CACHE=$root/bench/out/cache
REPORT=${BENCH_REPORT:-$root/BENCHMARKS.md}
ROUNDS=${BENCH_ROUNDS:-3}
export BENCH_OUT=$OUT BENCH_SECRET=benchsecret BENCH_KEYS=1000 BENCH_VALUE_BYTES=100
base=${BENCH_PORT_BASE:-18780}
P_SIDEKV=$base P_NATIVE=$((base + 1)) P_SEED=$((base + 2)) P_ADMIN=$((base + 3)) P_S3=$((base + 4))
P_MINIMAL=$((base + 5)) P_SIDEKV_PRIV=$((base + 6)) P_ADMIN_PRIV=$((base + 7)) P_NATIVE_PRIV=$((base + 8)) P_MINIMAL_PRIV=$((base + 9))
started=$(date +%s)

# Nothing from the caller's environment may change what is measured.
for v in $(compgen -e | grep -E '^(KVSTORE_|AWS_|LITESTREAM_)' || true); do unset "$v"; done

say() { printf '\n== %s\n' "$*"; }
py() { python3 "$root/bench/bench.py" "$@"; }

[ -x "$BIN" ] || { echo "missing $BIN: run make build" >&2; exit 1; }
[ -x "$NATIVE_BIN" ] || { echo "missing $NATIVE_BIN: cargo build --release -p sidekv-native-bench" >&2; exit 1; }
[ -x "$MINIMAL_BIN" ] || { echo "missing $MINIMAL_BIN: cargo build --release -p sidekv-minimal-bench" >&2; exit 1; }
if ! command -v wrk >/dev/null; then
  say "installing wrk (apt)"
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
for p in $P_SIDEKV $P_NATIVE $P_SEED $P_ADMIN $P_S3 $P_MINIMAL $P_SIDEKV_PRIV $P_ADMIN_PRIV $P_NATIVE_PRIV $P_MINIMAL_PRIV; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "port $p is in use; set BENCH_PORT_BASE" >&2; exit 1; fi
done

rm -rf "$OUT"
mkdir -p "$OUT" "$CACHE"

# ---- process bookkeeping: only what this script started, by id ----
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"

start_sidekv() { # NAME [VAR=value...]; sets $server
  local name=$1 file=${1// /_}
  shift
  env PORT=$P_SIDEKV HOST=127.0.0.1 KVSTORE_DB="$OUT/$file.sqlite3" KVSTORE_SECRET=$BENCH_SECRET \
    KVSTORE_PUBLIC_READS=true KVSTORE_CACHE_DIR="$CACHE" KVSTORE_ADMIN_ADDR=127.0.0.1:$P_ADMIN \
    "$@" "$BIN" >"$OUT/$file.log" 2>&1 &
  server=$!
  kill_on_exit+=("$server")
  wait_listening "$OUT/$file.log" "$server"
}

start_baseline() { # NAME BIN PORT [VAR=value...]; sets $server (native, minimal: same env names as sidekv)
  local file=${1// /_} bin=$2 p=$3
  shift 3
  env PORT="$p" HOST=127.0.0.1 KVSTORE_DB="$OUT/$file.sqlite3" KVSTORE_SECRET=$BENCH_SECRET "$@" "$bin" >"$OUT/$file.log" 2>&1 &
  server=$!
  kill_on_exit+=("$server")
  wait_listening "$OUT/$file.log" "$server"
}

# Per server: port, server PIDs (for CPU accounting), metrics URL. A target's
# server for GET auth (public reads off) is "<target> private".
declare -A port pids metrics

prepare() { # NAME [MODE]: load the keys, then 3 s of GETs (not recorded)
  py load "http://127.0.0.1:${port[$1]}" "$BENCH_KEYS" "$BENCH_SECRET" "$BENCH_VALUE_BYTES"
  BENCH_MODE=${2:-get} wrk -t2 -c32 -d3s -s "$root/bench/wrk/kv.lua" "http://127.0.0.1:${port[$1]}" >/dev/null
}

measure() { # NAME WORKLOAD [ROUND]
  local srv=$1
  [ "$2" = "GET auth" ] && srv="$1 private"
  [ "$2" = POST ] && py fsync "$1"
  BENCH_ROUND=${3:-0} BENCH_SERVER_PIDS="${pids[$srv]}" py wrk "$1" "$2" "http://127.0.0.1:${port[$srv]}" ${metrics[$srv]}
}

py machine
say "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), kernel $(uname -r)"
say "waiting for a quiet machine (up to ${BENCH_QUIET_WAIT:-60} s)"
py quiet "${BENCH_QUIET_WAIT:-60}"

# ---- 1. start-to-ready (before any load) ----
say "sidekv start-to-ready (empty db, warm compiled-guest cache, 5 runs)"
env HOST=127.0.0.1 KVSTORE_SECRET=$BENCH_SECRET KVSTORE_PUBLIC_READS=true KVSTORE_CACHE_DIR="$CACHE" \
  python3 "$root/bench/bench.py" ready sidekv 5 "$BIN"

# ---- 2. sidekv, native, minimal, seed side by side ----
say "starting sidekv (default guest, instance reuse), the native baseline, the minimal server and the seed system"
start_sidekv sidekv
port[sidekv]=$P_SIDEKV pids[sidekv]=$server metrics[sidekv]=http://127.0.0.1:$P_ADMIN/metrics
start_baseline native "$NATIVE_BIN" "$P_NATIVE" KVSTORE_PUBLIC_READS=true
port[native]=$P_NATIVE pids[native]=$server metrics[native]=http://127.0.0.1:$P_NATIVE/_metrics
start_baseline minimal "$MINIMAL_BIN" "$P_MINIMAL" KVSTORE_PUBLIC_READS=true
port[minimal]=$P_MINIMAL pids[minimal]=$server metrics[minimal]=""

# The same three with public reads off: GET auth sends Authorization on every request.
start_sidekv "sidekv private" PORT=$P_SIDEKV_PRIV KVSTORE_ADMIN_ADDR=127.0.0.1:$P_ADMIN_PRIV KVSTORE_PUBLIC_READS=false
port["sidekv private"]=$P_SIDEKV_PRIV pids["sidekv private"]=$server metrics["sidekv private"]=http://127.0.0.1:$P_ADMIN_PRIV/metrics
start_baseline "native private" "$NATIVE_BIN" "$P_NATIVE_PRIV"
port["native private"]=$P_NATIVE_PRIV pids["native private"]=$server metrics["native private"]=http://127.0.0.1:$P_NATIVE_PRIV/_metrics
start_baseline "minimal private" "$MINIMAL_BIN" "$P_MINIMAL_PRIV"
port["minimal private"]=$P_MINIMAL_PRIV pids["minimal private"]=$server metrics["minimal private"]=""

# S3 server (moto) for the seed's litestream and for sidekv's S3 runs.
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

targets=(sidekv native minimal)
auth_targets=(sidekv native minimal)  # the seed is measured on public reads only
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
  if seed_out=$(KVSTORE_SECRET=$BENCH_SECRET timeout 600 "$SEED_DIR/run.sh" "$root/bench/out/seed" "$P_SEED" "$P_S3" 2>&1); then
    seed_pid=$(awk '$1 == "deno" {print $2}' <<<"$seed_out")
    kill_on_exit+=("-$seed_pid")   # its own process group: deno and its litestream child
    sleep 0.5
    lpid=$(ps -o pid= --ppid "$seed_pid" | head -1 | tr -d ' ')
    port[seed]=$P_SEED pids[seed]="$seed_pid $lpid" metrics[seed]=""
    targets+=(seed)
  else
    seed_skip="its run.sh failed: $(tail -3 <<<"$seed_out" | tr '\n' ' ')"
  fi
fi
if [ -n "$seed_skip" ]; then
  say "SEED SYSTEM SKIPPED: $seed_skip — every ratio against the seed is n/a"
  py note "Seed system skipped" "$seed_skip; ratios against the seed are n/a in this run."
fi

for t in "${targets[@]}"; do
  say "loading and warming up $t"
  prepare "$t"
done
for t in "${auth_targets[@]}"; do
  say "loading and warming up $t (public reads off)"
  prepare "$t private" getauth
  # GET auth must measure a server that checks the header: a GET without it is refused.
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${port[$t private]}/k0")
  [ "$code" = 401 ] || { echo "$t private answered $code to a GET without Authorization (want 401)" >&2; exit 1; }
done

for ((r = 0; r < ROUNDS; r++)); do
  say "round $((r + 1))/$ROUNDS"
  for wl in GET "GET auth" POST MIX; do
    if [ "$wl" = "GET auth" ]; then these=("${auth_targets[@]}"); else these=("${targets[@]}"); fi
    n=${#these[@]}
    for ((i = 0; i < n; i++)); do
      measure "${these[$(((i + r) % n))]}" "$wl" "$r"
    done
  done
done

say "peak RSS"
for t in sidekv native minimal; do py rss "$t" "${pids[$t]}"; done
if [ -n "${seed_pid:-}" ]; then
  py rss seed "$seed_pid" ${lpid:+litestream=$lpid}
  stop "-$seed_pid"
fi
for s in sidekv native minimal "sidekv private" "native private" "minimal private"; do stop "${pids[$s]}"; done

# ---- 3. instance strategy: fresh ----
say "sidekv, KVSTORE_INSTANCE_MODE=fresh"
start_sidekv "sidekv fresh" KVSTORE_INSTANCE_MODE=fresh
port["sidekv fresh"]=$P_SIDEKV pids["sidekv fresh"]=$server metrics["sidekv fresh"]=http://127.0.0.1:$P_ADMIN/metrics
prepare "sidekv fresh"
measure "sidekv fresh" GET
measure "sidekv fresh" POST
py rss "sidekv fresh" "$server"
stop "$server"

# ---- 4. durability: s3, and local with S3 backup (the seed's setup) ----
if $moto_up; then
  s3_env=(AWS_ENDPOINT_URL=http://127.0.0.1:$P_S3 AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1)
  curl -s -o /dev/null -X PUT "http://127.0.0.1:$P_S3/sidekv-bench"
  for t in "sidekv s3" "sidekv local+S3 backup"; do
    say "$t (local moto)"
    if [ "$t" = "sidekv s3" ]; then
      start_sidekv "$t" "${s3_env[@]}" KVSTORE_S3_URL=s3://sidekv-bench/s3mode KVSTORE_DURABILITY=s3
    else
      start_sidekv "$t" "${s3_env[@]}" KVSTORE_S3_URL=s3://sidekv-bench/localmode
    fi
    port[$t]=$P_SIDEKV pids[$t]=$server metrics[$t]=http://127.0.0.1:$P_ADMIN/metrics
    prepare "$t"
    measure "$t" POST
    py rss "$t" "$server"
    stop "$server"
  done
else
  py note "S3 runs skipped" "no local S3 server (moto); run make setup-py"
fi

if [ -n "${moto:-}" ]; then stop "$moto"; fi
py report >"$REPORT"
DATA=$(data_dir "${BENCH_REPORT:-}")/run.jsonl
save_data "$OUT/results.jsonl" "$DATA"
say "wrote $REPORT and $DATA in $(($(date +%s) - started)) s; raw results in $OUT"
sed -n '/^## Targets/,$p' "$REPORT" | sed '/^## What/,$d'
