#!/usr/bin/env bash
# Queue benchmark → bench/queues.md: sidekv's queue (pull: REST take + ack;
# push: KVSTORE_QUEUE_URL) against Redis Streams (XADD + XREADGROUP + XACK,
# appendonly with appendfsync always) and a PostgreSQL SKIP LOCKED queue
# (fsync on, synchronous_commit on), at the same durability: every enqueue
# and ack is fsynced before it is answered. Same workload, one run, side by
# side (bench/queues.py). Installs redis-server (apt) and the Python
# clients (redis, psycopg, into .venv) when missing.
#
# Knobs (env): BENCH_QUEUE_MESSAGES (20000), BENCH_QUEUE_PRODUCERS (8),
# BENCH_QUEUE_CONSUMERS (8), BENCH_QUEUE_LATENCY_MESSAGES (300),
# BENCH_QUEUE_LATENCY_RATE (100 msgs/s), BENCH_QUEUES_REPORT (bench/queues.md),
# BENCH_DATA_DIR (where queues.jsonl goes for bench/plot.py: bench/data, or
# beside BENCH_QUEUES_REPORT when that is set).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
BIN=$root/target/release/sidekv
OUT=$root/bench/out/queues
REPORT=${BENCH_QUEUES_REPORT:-$root/bench/queues.md}
py=$root/.venv/bin/python
[ -x "$BIN" ] || { echo "missing $BIN: run make build" >&2; exit 1; }
say() { echo "== $*" >&2; }
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"

if ! command -v redis-server >/dev/null; then
  say "installing redis-server (apt-get)"
  SUDO=""; if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
  $SUDO apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends redis-server >/dev/null
fi
test -x "$py" || python3 -m venv "$root/.venv"
"$py" -c 'import redis, psycopg' 2>/dev/null || "$root/.venv/bin/pip" install -q 'redis>=5,<6' 'psycopg[binary]>=3.1,<4'
pgbin=$("$root/scripts/setup-postgres.sh" | sed -n 's/^postgres: \(\/[^ ]*\) .*/\1/p')

rm -rf "$OUT"; mkdir -p "$OUT"
work=$(mktemp -d /tmp/sidekv-queues-XXXXXX); chmod 755 "$work"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# ---- Redis: AOF, fsync before every answer ----
rport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --dir "$work" --appendonly yes --appendfsync always --save '' >"$OUT/redis.log" 2>&1 &
kill_on_exit+=($!)
# ---- PostgreSQL ----
as_pg=()
if [ "$(id -u)" = 0 ]; then chown postgres: "$work"; as_pg=(setpriv --reuid=postgres --regid=postgres --init-groups); fi
"${as_pg[@]}" "$pgbin/initdb" -D "$work/pg" -A trust -U postgres --no-sync >"$OUT/initdb.log" 2>&1
pport=$(free_port)
"${as_pg[@]}" "$pgbin/postgres" -D "$work/pg" -p "$pport" -k "$work" -c listen_addresses=127.0.0.1 -c fsync=on -c synchronous_commit=on >"$OUT/postgres.log" 2>&1 &
kill_on_exit+=($!)
for _ in $(seq 400); do "$pgbin/pg_isready" -q -h 127.0.0.1 -p "$pport" && break; sleep 0.05; done
# ---- sidekv, durability local (fsync per commit) ----
start_sidekv() { # LOG [ENV...]
  local log=$1; shift
  env -i PATH="$PATH" HOME="$HOME" KVSTORE_SECRET=benchsecret PORT=0 KVSTORE_DB="$work/sidekv-$RANDOM.sqlite3" \
    KVSTORE_CACHE_DIR="$OUT/cache" RUST_LOG=warn "$@" "$BIN" >"$log" 2>&1 &
  local pid=$!
  kill_on_exit+=("$pid")
  wait_listening "$log" "$pid"
  url=$(sed -n 's/^listening on //p' "$log" | head -1)
}
rows=$OUT/rows.jsonl
say "sidekv pull"
start_sidekv "$OUT/sidekv-pull.log"
"$py" bench/queues.py "$rows" sidekv "$url" benchsecret
say "sidekv push"
hport=$(free_port)
start_sidekv "$OUT/sidekv-push.log" KVSTORE_QUEUE_URL="http://127.0.0.1:$hport/queue" KVSTORE_QUEUE_CONCURRENCY=16
"$py" bench/queues.py "$rows" sidekv-push "$url" benchsecret "$hport"
say "Redis Streams"
"$py" bench/queues.py "$rows" redis "127.0.0.1:$rport"
say "PostgreSQL SKIP LOCKED"
"$py" bench/queues.py "$rows" postgres "postgres://postgres@127.0.0.1:$pport/postgres"

"$py" - "$rows" "$(git rev-parse --short HEAD)" "$(redis-server --version | awk '{print $3}' | sed 's/^v=//')" "$("$pgbin/postgres" --version | awk '{print $3}')" >"$REPORT" <<'PY'
import json, os, sys, time
rows = [json.loads(l) for l in open(sys.argv[1])]
by = {r["target"]: r for r in rows}
f = lambda v, d=0: "–" if v is None else f"{v:,.{d}f}"
print("# Queues: sidekv vs Redis Streams vs PostgreSQL SKIP LOCKED (bench/queues.sh)\n")
r0 = rows[0]
print(f"- {time.strftime('%Y-%m-%d %H:%M %Z')}, checkout {sys.argv[2]}, {os.cpu_count()} CPUs; redis-server {sys.argv[3]} (appendonly, appendfsync always), PostgreSQL {sys.argv[4]} (fsync on, synchronous_commit on), sidekv durability `local` (fsync per group commit); every enqueue and ack is durable before it is answered")
print(f"- {r0['messages']} messages of 112 bytes; {r0['producers']} producers, then {r0['consumers']} consumers (take + ack, one message each); latency: one producer at a light rate, one waiting consumer, enqueue → delivery. Clients (Python) share the 2 cores with the servers\n")
print("![messages/s and latency (bench/plot.py, from this run's results)](charts/queues.svg)\n")
print("| target | enqueued msgs/s | delivered msgs/s | enqueue → delivery p50 ms | p99 ms |")
print("|---|---:|---:|---:|---:|")
for r in rows:
    print(f"| {r['target']} | {f(r['enqueue_per_s'])} | {f(r['deliver_per_s'])} | {f(r['lat_p50_ms'], 1)} | {f(r['lat_p99_ms'], 1)} |")
red = by.get("Redis Streams")
if red:
    print()
    for k in ("sidekv pull", "sidekv push"):
        if k in by and red["deliver_per_s"]:
            print(f"- {k} delivered / Redis Streams delivered: **{by[k]['deliver_per_s'] / red['deliver_per_s']:.2f}×**")
PY
save_data "$rows" "$(data_dir "${BENCH_QUEUES_REPORT:-}")/queues.jsonl"
cat "$REPORT"
