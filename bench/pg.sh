#!/usr/bin/env bash
# sidekv on PostgreSQL, against what PostgreSQL itself does on this machine.
#
#   1. a private PostgreSQL (initdb in a temporary directory, 127.0.0.1, trust,
#      shared_buffers=128MB, max_connections=300, fsync=on)
#   2. pgbench -i -s 10, then select-only (-S) and simple-update (-N), each
#      -c 32 -j 2 -M prepared -T BENCH_SECONDS: tps, p99 (sampled log)
#   3. if the sidekv binary takes KVSTORE_BACKEND (tried, not assumed): one
#      sidecar on a fresh database of that server, wrk GET and POST (2
#      threads, 32 connections, bench/wrk/kv.lua as in bench/run.sh: 1000
#      keys of 100 bytes, public reads, POST of fresh keys with the secret);
#      the same with a SQLite-backed sidecar; then two sidecars on one
#      database, wrk against each at the same time (1 thread, 16 connections
#      each): aggregate req/s and each p99
#   4. a markdown table with the ratios → stdout and bench/pg.md
#
# Knobs (env): BENCH_SECONDS (10), BENCH_PG_SCALE (10), SIDEKV_BIN
# (target/release/sidekv), BENCH_PG_REPORT (bench/pg.md), BENCH_QUIET_WAIT
# (30: seconds to wait for other work on the machine to stop), BENCH_PG_KEEP=1
# keeps the PostgreSQL directory. Logs in bench/out/pg. Needs make setup-pg
# (run here when initdb is missing) and wrk (installed with apt-get if missing).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

BIN=${SIDEKV_BIN:-$root/target/release/sidekv}
SECS=${BENCH_SECONDS:-10}
SCALE=${BENCH_PG_SCALE:-10}
REPORT=${BENCH_PG_REPORT:-$root/bench/pg.md}
OUT=$root/bench/out/pg
SECRET=benchsecret
KEYS=1000
started=$(date +%s)

# Nothing from the caller's environment may change what is measured.
for v in $(compgen -e | grep -E '^(KVSTORE_|AWS_|PG)' || true); do unset "$v"; done

say() { printf '\n== %s\n' "$*" >&2; }

pgbin=$("$root/scripts/setup-postgres.sh" | sed -n 's/^postgres: \(\/[^ ]*\) .*/\1/p')
[ -x "$pgbin/initdb" ] || { echo "no PostgreSQL binaries (scripts/setup-postgres.sh printed no bin dir)" >&2; exit 1; }
pgversion=$("$pgbin/postgres" --version | awk '{print $3}')
if ! command -v wrk >/dev/null; then
  say "installing wrk (apt-get)"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
  $SUDO apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends wrk >/dev/null
fi

rm -rf "$OUT"
mkdir -p "$OUT/cache"
work=$(mktemp -d /tmp/sidekv-pgbench-XXXXXX)
chmod 755 "$work"
# initdb and postgres refuse root: run them as `postgres` (setpriv execs, so $! is the postmaster).
as_pg=()
if [ "$(id -u)" = 0 ]; then
  chown postgres: "$work"
  as_pg=(setpriv --reuid=postgres --regid=postgres --init-groups)
fi

# data_dir/save_data (its process bookkeeping is redefined below).
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"

# ---- process bookkeeping: only what this script started, by id ----
declare -a sidecars=()
pg_pid=""
stop_pid() { # PID SIGNAL SECONDS
  kill -"$2" "$1" 2>/dev/null || return 0
  for _ in $(seq $(($3 * 20))); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.05; done
  kill -KILL "$1" 2>/dev/null || true
}
cleanup() {
  if [ -n "${mon:-}" ]; then kill -TERM "$mon" 2>/dev/null || true; fi
  for p in "${sidecars[@]}"; do stop_pid "$p" TERM 10; done
  if [ -n "$pg_pid" ]; then stop_pid "$pg_pid" INT 30; fi
  if [ "${BENCH_PG_KEEP:-}" = 1 ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# ---- 1. PostgreSQL ----
say "PostgreSQL $pgversion: initdb in $work"
"${as_pg[@]}" "$pgbin/initdb" -D "$work/data" -A trust -U postgres -E UTF8 --locale=C --no-sync >"$OUT/initdb.log" 2>&1 ||
  { cat "$OUT/initdb.log" >&2; exit 1; }
PGPORT_=$(free_port)
pg_settings=(-c listen_addresses=127.0.0.1 -c shared_buffers=128MB -c max_connections=300 -c fsync=on)
"${as_pg[@]}" "$pgbin/postgres" -D "$work/data" -p "$PGPORT_" -k "$work" "${pg_settings[@]}" >"$OUT/postgres.log" 2>&1 &
pg_pid=$!
for i in $(seq 600); do
  "$pgbin/pg_isready" -q -h 127.0.0.1 -p "$PGPORT_" -U postgres && break
  kill -0 "$pg_pid" 2>/dev/null || { echo "postgres exited:" >&2; cat "$OUT/postgres.log" >&2; exit 1; }
  [ "$i" = 600 ] && { echo "postgres not ready after 30 s:" >&2; cat "$OUT/postgres.log" >&2; exit 1; }
  sleep 0.05
done
pg() { "$pgbin/$1" -h 127.0.0.1 -p "$PGPORT_" -U postgres "${@:2}"; }
pg_url() { echo "postgres://postgres@127.0.0.1:$PGPORT_/$1"; }

say "machine"
BENCH_OUT=$OUT python3 bench/bench.py quiet "${BENCH_QUIET_WAIT:-30}" >&2
busy=$(python3 -c 'import json,sys; print(round([json.loads(l) for l in open(sys.argv[1])][-1]["busy_cores"], 2))' "$OUT/results.jsonl")

# Other work on this shared machine during each measured run: CPU of the
# processes that are not this script's (nor kernel threads), sampled every
# 0.5 s. mon_start before a run, mon_stop after: sets $other ("0.03 cores").
cat >"$OUT/monitor.py" <<'PY'
import os, signal, sys, time
root, CLK = int(sys.argv[1]), os.sysconf("SC_CLK_TCK")
def procs():
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            raw = open(f"/proc/{d}/stat").read()
        except OSError:
            continue
        f = raw.rsplit(")", 1)[1].split()
        out[int(d)] = (raw[raw.find("(") + 1:raw.rfind(")")], int(f[1]), (int(f[11]) + int(f[12])) / CLK, bool(int(f[6]) & 0x200000))
    return out
mine, stop = {root, os.getpid()}, []
def ours(ps):
    grew = True
    while grew:
        grew = False
        for pid, (_, ppid, _, _) in ps.items():
            if pid not in mine and ppid in mine:
                mine.add(pid)
                grew = True
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
prev, t0, other, names = procs(), time.time(), 0.0, {}
ours(prev)
while not stop:
    time.sleep(0.5)
    cur = procs()
    ours(cur)
    for pid, (name, _, cpu, kthread) in cur.items():
        if pid in mine or kthread:
            continue
        d = cpu - prev[pid][2] if pid in prev else cpu
        if d > 0:
            other += d
            names[name] = names.get(name, 0.0) + d
    prev = cur
top = sorted(names.items(), key=lambda kv: -kv[1])[:2]
cores = other / (time.time() - t0)
print(f"{cores:.2f} cores" + (" (" + ", ".join(n for n, c in top) + ")" if cores >= 0.05 else ""))
PY
mon_start() { python3 "$OUT/monitor.py" $$ >"$OUT/monitor.out" & mon=$!; }
mon_stop() { kill -TERM "$mon"; wait "$mon" || true; other=$(cat "$OUT/monitor.out"); }

# ---- 2. pgbench ----
say "pgbench -i -s $SCALE"
pg createdb pgbench
t0=$(date +%s.%N)
pg pgbench -i -q -s "$SCALE" pgbench >"$OUT/pgbench-init.log" 2>&1 || { cat "$OUT/pgbench-init.log" >&2; exit 1; }
init_s=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$t0" "$(date +%s.%N)")

# pgbench NAME FLAG: tps and p99 (from a 10 % sample of the transactions)
run_pgbench() {
  local name=$1 flag=$2 dir=$OUT/pgbench-$1
  mkdir -p "$dir"
  say "pgbench $flag -c 32 -j 2 -M prepared -T $SECS"
  mon_start
  (cd "$dir" && pg pgbench "$flag" -c 32 -j 2 -M prepared -T "$SECS" -l --sampling-rate=0.1 pgbench) >"$dir/out.txt" 2>&1 ||
    { cat "$dir/out.txt" >&2; exit 1; }
  mon_stop
  grep -E '^(tps|latency average|number of failed)' "$dir/out.txt" >&2
  local tps p99 failed
  tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)/\1/p' "$dir/out.txt")
  failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$dir/out.txt")
  # a log line: client_id transaction_no latency_µs script_no epoch_s epoch_µs
  p99=$(cat "$dir"/pgbench_log.* | python3 -c '
import sys
v = sorted(int(l.split()[2]) for l in sys.stdin if l.strip())
print(v[min(len(v) - 1, int(len(v) * 0.99))] if v else "")')
  printf '%s\t%.0f\t%s\t%s\t%s\n' "$name" "$tps" "$p99" "$([ "${failed:-0}" = 0 ] || echo "$failed failed")" "$other" >>"$OUT/rows.tsv"
  echo "  other processes: $other" >&2
}
run_pgbench pgbench-S -S
run_pgbench pgbench-N -N

# ---- 3. sidekv ----
# start_sidekv NAME [VAR=value...]: sets $server and $url (PORT=0: the port is read from `listening on`)
start_sidekv() {
  local name=$1 log=$OUT/sidekv-$1.log
  shift
  : >"$log"
  env PORT=0 HOST=127.0.0.1 KVSTORE_SECRET=$SECRET KVSTORE_PUBLIC_READS=true KVSTORE_CACHE_DIR="$OUT/cache" \
    KVSTORE_DB="$OUT/$name.sqlite3" "$@" "$BIN" >"$log" 2>&1 &
  server=$!
  sidecars+=("$server")
  url=""
  for _ in $(seq 1200); do
    url=$(sed -n 's/^listening on \(http[^ ]*\).*/\1/p' "$log" | head -1 || true)
    [ -n "$url" ] && return 0
    kill -0 "$server" 2>/dev/null || { echo "sidekv $name exited:" >&2; tail -5 "$log" >&2; return 1; }
    sleep 0.05
  done
  echo "sidekv $name not ready after 60 s; see $log" >&2
  return 1
}

# wrk_run NAME MODE URL CONNS THREADS: RESULT json → $OUT/wrk-NAME.json
wrk_run() {
  BENCH_MODE=$2 BENCH_KEYS=$KEYS BENCH_SECRET=$SECRET BENCH_TAG="$1_$$" BENCH_VALUE_BYTES=100 \
    wrk -t"$5" -c"$4" -d"${SECS}s" --latency -s "$root/bench/wrk/kv.lua" "$3" >"$OUT/wrk-$1.txt" 2>&1
  sed -n 's/^RESULT //p' "$OUT/wrk-$1.txt" >"$OUT/wrk-$1.json"
  [ -s "$OUT/wrk-$1.json" ] || { echo "wrk $1 printed no RESULT:" >&2; cat "$OUT/wrk-$1.txt" >&2; exit 1; }
}
# record LABEL RUN...: req/s summed over the wrk runs, the p99 (µs) of each, errors → $OUT/rows.tsv
record() {
  python3 - "$OUT" "$@" "$other" >>"$OUT/rows.tsv" <<'PY'
import json, sys
out, label, runs = sys.argv[1], sys.argv[2], sys.argv[3:-1]
rs = [json.load(open(f"{out}/wrk-{n}.json")) for n in runs]
kinds = ("connect", "read", "write", "status", "timeout")  # status: HTTP >= 400; timeout: no answer in 2 s
errs = {k: sum(r[f"err_{k}"] for r in rs) for k in kinds}
note = ", ".join(f"{n} {k}" for k, n in errs.items() if n)
rps = sum(r["requests"] / (r["duration_us"] / 1e6) for r in rs)
print(label, f"{rps:.0f}", "/".join(str(r["p99_us"]) for r in rs), f"wrk errors: {note}" if note else "", sys.argv[-1], sep="\t")
PY
  tail -1 "$OUT/rows.tsv" | awk -F'\t' '{printf "  %s: %s req/s, p99 %s µs %s; other processes: %s\n", $1, $2, $3, $4, $5}' >&2
}

measure_one() { # LABEL URL: load, warm up, GET, POST with 32 connections
  python3 bench/bench.py load "$2" "$KEYS" "$SECRET" 100 >&2
  BENCH_MODE=get BENCH_KEYS=$KEYS wrk -t2 -c32 -d3s -s "$root/bench/wrk/kv.lua" "$2" >/dev/null
  mon_start
  wrk_run "$1-GET" get "$2" 32 2
  mon_stop
  record "$1-GET" "$1-GET"
  mon_start
  wrk_run "$1-POST" post "$2" 32 2
  mon_stop
  record "$1-POST" "$1-POST"
}

sidekv_pg=""
if [ ! -x "$BIN" ]; then
  sidekv_pg="$BIN is missing (make build, or set SIDEKV_BIN)"
else
  say "sidekv with KVSTORE_BACKEND (does this binary take it?)"
  pg createdb sidekv1
  # KVSTORE_DB names a file that must not appear: a binary that ignores
  # KVSTORE_BACKEND opens (creates) it.
  if ! start_sidekv pg KVSTORE_BACKEND="$(pg_url sidekv1)"; then
    sidekv_pg="it did not start with KVSTORE_BACKEND: $(grep -v '^\s*$' "$OUT/sidekv-pg.log" | tail -1)"
  elif [ -e "$OUT/pg.sqlite3" ]; then
    sidekv_pg="it ignores KVSTORE_BACKEND (it opened its SQLite file KVSTORE_DB instead)"
    stop_pid "$server" TERM 10
  fi
fi
if [ -n "$sidekv_pg" ]; then
  say "SIDEKV ON POSTGRESQL SKIPPED: $sidekv_pg"
else
  say "one sidecar on PostgreSQL ($url)"
  pg_server=$server
  measure_one sidekv-pg "$url"
  stop_pid "$pg_server" TERM 10

  say "one sidecar on SQLite"
  start_sidekv sqlite
  sqlite_server=$server
  measure_one sidekv-sqlite "$url"
  stop_pid "$sqlite_server" TERM 10

  say "two sidecars on one PostgreSQL database"
  pg createdb sidekv2
  start_sidekv two-a KVSTORE_BACKEND="$(pg_url sidekv2)"
  a_server=$server a_url=$url
  start_sidekv two-b KVSTORE_BACKEND="$(pg_url sidekv2)"
  b_server=$server b_url=$url
  python3 bench/bench.py load "$a_url" "$KEYS" "$SECRET" 100 >&2
  warm=()
  for u in "$a_url" "$b_url"; do
    BENCH_MODE=get BENCH_KEYS=$KEYS wrk -t1 -c16 -d3s -s "$root/bench/wrk/kv.lua" "$u" >/dev/null &
    warm+=($!)
  done
  wait "${warm[@]}"
  for mode in GET POST; do
    m=$(tr '[:upper:]' '[:lower:]' <<<"$mode")
    mon_start
    wrk_run "two-a-$mode" "$m" "$a_url" 16 1 &
    wa=$!
    wrk_run "two-b-$mode" "$m" "$b_url" 16 1 &
    wb=$!
    wait "$wa"
    wait "$wb"
    mon_stop
    record "two-$mode" "two-a-$mode" "two-b-$mode"
  done
  stop_pid "$a_server" TERM 10
  stop_pid "$b_server" TERM 10
fi

# ---- 4. report ----
say "report"
python3 - "$OUT/rows.tsv" "$SECS" "$SCALE" "$pgversion" "$busy" "$init_s" "$sidekv_pg" \
  "$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?')" \
  "$(case "$BIN" in "$root"/*) echo "${BIN#"$root"/}" ;; *) basename "$BIN" ;; esac)$([ -e "$BIN" ] && date -r "$BIN" '+ (built %Y-%m-%d %H:%M)')" >"$OUT/report.md" <<'PY'
import os, platform, sys, time
rows_path, secs, scale, pgv, busy, init_s, skip, commit, binary = sys.argv[1:10]
rps, p99, note, other = {}, {}, {}, {}
for line in open(rows_path):
    k, r, p, n, o = (line.rstrip("\n").split("\t") + [""] * 5)[:5]
    rps[k], p99[k], note[k], other[k] = float(r), p, n, o

def ms(k):
    return " / ".join(f"{int(x) / 1000:.2f}" for x in p99[k].split("/")) if p99.get(k) else "n/a"

def ratio(a, b):
    return f"{rps[a] / rps[b]:.2f}" if rps.get(a) and rps.get(b) else "n/a"

cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print("# sidekv on PostgreSQL vs PostgreSQL itself (bench/pg.sh)")
print()
print(f"- {time.strftime('%Y-%m-%d %H:%M %Z')}, checkout {commit}, sidekv binary {binary}; {os.cpu_count()} CPUs ({cpu}), kernel {platform.release()}; "
      f"other processes were using {busy} cores just before the runs (and see each run's column: "
      "this machine is shared, and anything above ~0.1 core makes that run's numbers low)")
print(f"- PostgreSQL {pgv}, a private server on 127.0.0.1 (TCP): shared_buffers=128MB, max_connections=300, fsync=on, "
      "synchronous_commit=on; server, clients and load generators all on this one machine")
print(f"- pgbench: scale {scale} (init {init_s} s), 32 clients, 2 threads, -M prepared, {secs} s per run; "
      "p99 from a 10 % sample of the transactions (-l --sampling-rate=0.1)")
print(f"- sidekv: wrk 2 threads, 32 connections, {secs} s per run, bench/wrk/kv.lua: GET of 1000 keys (100-byte values, "
      "public reads), POST of fresh keys; two sidecars on one database: one wrk per sidecar at once, 1 thread and 16 connections each")
if skip:
    print(f"- **sidekv on PostgreSQL not measured**: {skip}")
print()
print("![req/s of each run (bench/plot.py, from this run's results)](charts/pg.svg)")
print()
print("| run | req/s (tps) | p99 ms | other processes meanwhile | notes |")
print("| --- | ---: | ---: | --- | --- |")
for label, k, n in [
    ("pgbench select-only (-S)", "pgbench-S", "one SELECT by primary key per transaction"),
    ("pgbench simple-update (-N)", "pgbench-N", "UPDATE + SELECT + INSERT per committed transaction"),
    ("sidekv-pg GET", "sidekv-pg-GET", ""),
    ("sidekv-pg POST", "sidekv-pg-POST", ""),
    ("sidekv-sqlite GET", "sidekv-sqlite-GET", ""),
    ("sidekv-sqlite POST", "sidekv-sqlite-POST", ""),
    ("2 sidekv-pg, one database: GET", "two-GET", "aggregate req/s; p99 of each sidecar"),
    ("2 sidekv-pg, one database: POST", "two-POST", "aggregate req/s; p99 of each sidecar"),
]:
    if k in rps:
        n = "; ".join(x for x in (n, note[k]) if x)
        print(f"| {label} | {rps[k]:.0f} | {ms(k)} | {other[k]} | {n} |")
print()
print("| ratio | value |")
print("| --- | ---: |")
for label, a, b in [
    ("sidekv-pg GET / pgbench select-only", "sidekv-pg-GET", "pgbench-S"),
    ("sidekv-pg POST / pgbench simple-update", "sidekv-pg-POST", "pgbench-N"),
    ("sidekv-pg GET / sidekv-sqlite GET", "sidekv-pg-GET", "sidekv-sqlite-GET"),
    ("sidekv-pg POST / sidekv-sqlite POST", "sidekv-pg-POST", "sidekv-sqlite-POST"),
    ("two sidecars / one, GET", "two-GET", "sidekv-pg-GET"),
    ("two sidecars / one, POST", "two-POST", "sidekv-pg-POST"),
]:
    print(f"| {label} | {ratio(a, b)} |")
PY

cp "$OUT/report.md" "$REPORT"
# rows.tsv as JSON lines for bench/plot.py: label, req/s, the p99 (µs) of each wrk/pgbench run.
python3 - "$OUT/rows.tsv" >"$OUT/rows.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    k, r, p, n, o = (line.rstrip("\n").split("\t") + [""] * 5)[:5]
    print(json.dumps(dict(label=k, rps=float(r), p99_us=[int(x) for x in p.split("/") if x], note=n, other=o)))
PY
DATA=$(data_dir "${BENCH_PG_REPORT:-}")/pg.jsonl
save_data "$OUT/rows.jsonl" "$DATA"
cat "$REPORT"
say "wrote $REPORT and $DATA in $(($(date +%s) - started)) s; logs in $OUT"
