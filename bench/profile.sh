#!/usr/bin/env bash
# Where does a server's CPU go under a wrk load? (Optional; not part of
# `make bench`.) Samples the server process with `perf record -e cpu-clock`
# (a software clock: this VM exposes no hardware counters) while wrk runs,
# then sorts the samples into categories (kernel network, scheduler, SQLite,
# hyper, tokio, wasmtime, guest wasm code, ...) and prints CPU µs per request.
#
# usage: bench/profile.sh sidekv|native|fresh [get|post|mix] [SECONDS=6]
# Needs: make guest, cargo build --profile profiling -p sidekv -p sidekv-native-bench
# (release + line tables and symbols), perf, wrk.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
target=${1:?usage: bench/profile.sh sidekv|native|fresh [get|post|mix] [SECONDS]}
mode=${2:-get}
secs=${3:-6}
out=$root/bench/out/profile
mkdir -p "$out"
rm -f "$out/$target.sqlite3"*
port=${BENCH_PORT_BASE:-18790}
export BENCH_OUT=$out BENCH_SECRET=benchsecret BENCH_KEYS=1000
command -v perf >/dev/null || { echo "perf is not installed (apt-get install linux-perf)" >&2; exit 1; }

common=(PORT=$port HOST=127.0.0.1 KVSTORE_DB=$out/$target.sqlite3 KVSTORE_SECRET=$BENCH_SECRET)
case $target in
  sidekv) env "${common[@]}" KVSTORE_PUBLIC_READS=true KVSTORE_CACHE_DIR=$root/bench/out/cache "$root/target/profiling/sidekv" >"$out/$target.log" 2>&1 & ;;
  fresh) env "${common[@]}" KVSTORE_PUBLIC_READS=true KVSTORE_INSTANCE_MODE=fresh KVSTORE_CACHE_DIR=$root/bench/out/cache "$root/target/profiling/sidekv" >"$out/$target.log" 2>&1 & ;;
  native) env "${common[@]}" KVSTORE_PUBLIC_READS=true "$root/target/profiling/sidekv-native-bench" >"$out/$target.log" 2>&1 & ;;
  *) echo "unknown target $target" >&2; exit 1 ;;
esac
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true' EXIT
for _ in $(seq 200); do grep -q 'listening on' "$out/$target.log" 2>/dev/null && break; sleep 0.05; done
python3 "$root/bench/bench.py" load "http://127.0.0.1:$port" 1000 "$BENCH_SECRET" 100
BENCH_MODE=get wrk -t2 -c32 -d3s -s "$root/bench/wrk/kv.lua" "http://127.0.0.1:$port" >/dev/null

BENCH_MODE=$mode BENCH_TAG=prof$$ wrk -t2 -c32 -d"$((secs + 2))s" --latency -s "$root/bench/wrk/kv.lua" "http://127.0.0.1:$port" >"$out/$target-$mode.wrk.txt" &
wrk_pid=$!
sleep 1
# DWARF stacks at a low rate: frame pointers are absent in Rust std, and
# 299 Hz keeps perf's own cost small on 2 cores.
timeout -s INT "$secs" perf record -q -F 299 -e cpu-clock --call-graph dwarf,16384 -p "$pid" -o "$out/$target-$mode.perf.data" 2>/dev/null || true
wait $wrk_pid
# --no-inline: addr2line over the debug info takes minutes otherwise.
perf script --no-inline -i "$out/$target-$mode.perf.data" -F comm,ip,sym 2>/dev/null >"$out/$target-$mode.samples.txt"
python3 "$root/bench/bench.py" profile-summary "$target $mode" "$out/$target-$mode.samples.txt" "$out/$target-$mode.wrk.txt" 299 "$secs" \
  | tee "$out/$target-$mode.summary.txt"
