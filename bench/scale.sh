#!/usr/bin/env bash
# At-scale rows (issue 15): does data size change the answer? For each size N
# (1k, 1M, 10M keys by default): a fresh database, N keys with 100-byte values
# imported through POST /_import, then wrk GET (random existing key over the
# whole range), POST (fresh keys) and LIST, timed list/count requests, peak
# RSS and database size. Writes bench/scale.md (ratios against the smallest
# size, verdict against the goal: req/s within 10%, p99 within 2×); raw
# results in bench/out/scale.
#
# Called by `make bench` (after bench/run.sh) and `make bench-scale`, after
# `make build`. About 7 minutes with the defaults (the 10M import is ~1 of
# them) and ~5 GB of free disk for the 10M database (deleted afterwards).
#
# Knobs (env): BENCH_BIN (target/release/sidekv), BENCH_SCALE_SIZES
# ("1000 1000000 10000000"; the smallest is the baseline), BENCH_SCALE_ROUNDS
# (3 rounds of GET then POST per size; the medians are reported), BENCH_WRK_SECONDS
# (10), BENCH_WRK_THREADS (2), BENCH_WRK_CONNS (32), BENCH_SCALE_PORT_BASE
# (18880: server, admin = base, base+1), BENCH_IMPORT_LINES (50000 NDJSON lines
# per /_import request), BENCH_IMPORT_CONNS (2 requests in flight),
# BENCH_QUIET_WAIT (60), BENCH_SCALE_KEEP_DB=1 (keep the databases),
# BENCH_SCALE_REPORT (bench/scale.md), BENCH_DATA_DIR (where scale.jsonl goes for
# bench/plot.py: bench/data, or beside BENCH_SCALE_REPORT when that is set).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# What was asked, for the report (before the environment is cleaned).
# Paths as a reader's clone names them (relative to the checkout): a report
# never carries the private folders of the machine it was made on.
relpath() { case "$1" in "$root"/*) echo "${1#"$root"/}" ;; /*) echo "$(basename "$1") (a build outside the checkout)" ;; *) echo "$1" ;; esac; }
cmdline="bench/scale.sh"
for v in BENCH_BIN BENCH_SCALE_SIZES BENCH_SCALE_ROUNDS BENCH_WRK_SECONDS BENCH_WRK_THREADS BENCH_WRK_CONNS BENCH_IMPORT_LINES BENCH_IMPORT_CONNS; do
  val=${!v:-}
  [ "$v" = BENCH_BIN ] && [ -n "$val" ] && val=$(relpath "$val")
  [ -n "$val" ] && cmdline="$v=\"$val\" $cmdline"
done

BIN=${BENCH_BIN:-$root/target/release/sidekv}
OUT=$root/bench/out/scale
CACHE=$root/bench/out/cache
REPORT=${BENCH_SCALE_REPORT:-$root/bench/scale.md}
SIZES=${BENCH_SCALE_SIZES:-1000 1000000 10000000}
IMPORT_LINES=${BENCH_IMPORT_LINES:-50000}
IMPORT_CONNS=${BENCH_IMPORT_CONNS:-2}
ROUNDS=${BENCH_SCALE_ROUNDS:-3}
export BENCH_OUT=$OUT BENCH_SECRET=benchsecret BENCH_VALUE_BYTES=100
base=${BENCH_SCALE_PORT_BASE:-18880}
P_SIDEKV=$base P_ADMIN=$((base + 1))
started=$(date +%s)

# Nothing from the caller's environment may change what is measured.
for v in $(compgen -e | grep -E '^(KVSTORE_|AWS_|LITESTREAM_)' || true); do unset "$v"; done

say() { printf '\n== %s\n' "$*"; }
py() { python3 "$root/bench/scale.py" "$@"; }

[ -x "$BIN" ] || { echo "missing $BIN: run make build (or set BENCH_BIN)" >&2; exit 1; }
if ! command -v wrk >/dev/null; then
  say "installing wrk (apt)"
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
for p in $P_SIDEKV $P_ADMIN; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "port $p is in use; set BENCH_SCALE_PORT_BASE" >&2; exit 1; fi
done

rm -rf "$OUT"
mkdir -p "$OUT" "$CACHE"

# ---- process bookkeeping: only what this script started, by id ----
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
STOP_WAIT_TICKS=600

start_sidekv() { # DB LOG; sets $server
  env PORT=$P_SIDEKV HOST=127.0.0.1 KVSTORE_DB="$1" KVSTORE_SECRET=$BENCH_SECRET \
    KVSTORE_PUBLIC_READS=true KVSTORE_CACHE_DIR="$CACHE" KVSTORE_ADMIN_ADDR=127.0.0.1:$P_ADMIN \
    "$BIN" >"$2" 2>&1 &
  server=$!
  kill_on_exit+=("$server")
  wait_listening "$2" "$server"
}

url=http://127.0.0.1:$P_SIDEKV
metrics=http://127.0.0.1:$P_ADMIN/metrics

py machine
say "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), kernel $(uname -r)"
say "waiting for a quiet machine (up to ${BENCH_QUIET_WAIT:-60} s)"
py quiet "${BENCH_QUIET_WAIT:-60}"

for n in $SIZES; do
  db=$OUT/db-$n.sqlite3
  say "$n keys: fresh database, import through /_import"
  rm -f "$db" "$db-wal" "$db-shm"
  start_sidekv "$db" "$OUT/sidekv-$n.log"
  py import "$url" "$n" "$IMPORT_LINES" "$IMPORT_CONNS"
  py rss "$n" import "$server" "$db"

  say "$n keys: wrk (3 s untimed GETs first), list/count requests"
  BENCH_WARMUP=1 BENCH_WRK_SECONDS=3 py wrk "$n" GET "$url"
  export BENCH_SERVER_PIDS=$server
  py fsync "$n"
  for ((r = 0; r < ROUNDS; r++)); do
    py wrk "$n" GET "$url" "$metrics" "$r"
    py wrk "$n" POST "$url" "$metrics" "$r"
  done
  py wrk "$n" LIST "$url" "$metrics"
  py probes "$n" "$url"
  py rss "$n" serving "$server" "$db"
  unset BENCH_SERVER_PIDS
  stop "$server"
  if grep -qiE 'panic|ERROR' "$OUT/sidekv-$n.log"; then
    say "server log for $n keys has errors:"
    grep -iE 'panic|ERROR' "$OUT/sidekv-$n.log" | head -5
    py note "Server errors at $n keys" "$(grep -ciE 'panic|ERROR' "$OUT/sidekv-$n.log") error lines in its log, first: $(grep -m1 -iE 'panic|ERROR' "$OUT/sidekv-$n.log" | cut -c1-300)"
  fi
  [ "${BENCH_SCALE_KEEP_DB:-}" = 1 ] || rm -f "$db" "$db-wal" "$db-shm"
done

py report "$cmdline" >"$REPORT"
DATA=$(data_dir "${BENCH_SCALE_REPORT:-}")/scale.jsonl
save_data "$OUT/results.jsonl" "$DATA"
say "wrote $REPORT and $DATA in $(($(date +%s) - started)) s; raw results in $OUT"
sed -n '/^## Per size/,$p' "$REPORT"
