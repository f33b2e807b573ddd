#!/usr/bin/env bash
# Quick A/B of one server build or setting against another (not part of
# `make bench`): start BIN with the given environment on PORT, load 1000 keys
# with 100-byte values, warm up 2 s, run wrk (2 threads, 32 connections) for
# SECONDS, print req/s, p99, server CPU µs per request (utime + stime of the
# server process over the run ÷ requests) and peak RSS. Run the two sides
# alternately, several times: the machine is shared and noisy; CPU/req is
# the steadier figure.
#
#   bench/ab.sh NAME PORT get|post|mix SECONDS BIN [VAR=value...]
#   e.g. for i in 1 2 3; do
#          bench/ab.sh sidekv 19001 get 5 target/release/sidekv
#          bench/ab.sh native 19001 get 5 target/release/sidekv-native-bench
#        done
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
name=$1 port=$2 mode=$3 secs=$4 bin=$5
shift 5
d=$root/bench/out/ab/$name
rm -rf "$d"
mkdir -p "$d"
for v in $(compgen -e | grep -E '^(KVSTORE_|AWS_)' || true); do unset "$v"; done
env PORT="$port" HOST=127.0.0.1 KVSTORE_DB="$d/db.sqlite3" KVSTORE_SECRET=s KVSTORE_PUBLIC_READS=true \
  KVSTORE_CACHE_DIR="$root/bench/out/ab/cache" "$@" "$bin" >"$d/log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true' EXIT
for _ in $(seq 200); do grep -q 'listening on' "$d/log" && break; sleep 0.05; done
python3 "$root/bench/bench.py" load "http://127.0.0.1:$port" 1000 s 100 >/dev/null
BENCH_KEYS=1000 BENCH_MODE=get wrk -t2 -c32 -d2s -s "$root/bench/wrk/kv.lua" "http://127.0.0.1:$port" >/dev/null
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
t0=$(cpu)
out=$(BENCH_KEYS=1000 BENCH_SECRET=s BENCH_TAG=$RANDOM BENCH_MODE=$mode wrk -t2 -c32 -d"${secs}s" --latency \
  -s "$root/bench/wrk/kv.lua" "http://127.0.0.1:$port")
t1=$(cpu)
reqs=$(awk '/requests in/{print $1}' <<<"$out")
rps=$(awk '/Requests\/sec/{print $2}' <<<"$out")
p99=$(awk '$1=="99%"{print $2}' <<<"$out")
hwm=$(awk '/VmHWM/{print $2}' "/proc/$pid/status")
tick=$(getconf CLK_TCK)
echo "$name $mode rps=$rps p99=$p99 cpu_us_per_req=$(python3 -c "print(f'{($t1 - $t0) / $tick * 1e6 / $reqs:.1f}')") hwm_kb=$hwm"
