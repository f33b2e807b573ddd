#!/usr/bin/env bash
# KV Connect throughput with Deno's own client: sidekv (local durability with
# S3 backup on a local moto) against Deno's own KV Connect server `denokv`
# (SQLite), on this machine, in this one run → bench/kvconnect.md.
#
# One Deno process (bench/kvconnect/load.ts) drives 32 concurrent async loops
# for 10 s per workload: point reads, single-key writes, atomic batches
# (sum on 3 keys + a set). BENCH_ROUNDS rounds, the target order alternating;
# the table shows each workload's median round. One load at a time.
#
# denokv is built once into target/denokv (cargo install, nice 19, ~10 min)
# when missing. Needs `make build setup-py setup-deno`.
#
# Knobs (env): BENCH_ROUNDS (3), BENCH_SECONDS (10), BENCH_CONC (32),
# BENCH_KEYS (1000), BENCH_PORT_BASE (18880), BENCH_KVC_REPORT (bench/kvconnect.md),
# BENCH_DATA_DIR (where kvconnect.jsonl goes for bench/plot.py: bench/data, or
# beside BENCH_KVC_REPORT when that is set).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

BIN=${SIDEKV_BIN:-$root/target/release/sidekv}
DENO=$root/.venv/bin/deno
DENOKV=$root/target/denokv/bin/denokv
OUT=$root/bench/out/kvconnect
REPORT=${BENCH_KVC_REPORT:-$root/bench/kvconnect.md}
ROUNDS=${BENCH_ROUNDS:-3} SECONDS_PER=${BENCH_SECONDS:-10} CONC=${BENCH_CONC:-32} KEYS=${BENCH_KEYS:-1000}
base=${BENCH_PORT_BASE:-18880}
P_SIDEKV=$base P_DENOKV=$((base + 1)) P_S3=$((base + 2))
TOKEN=bench-kvconnect-token  # denokv wants at least 12 characters
started=$(date +%s)

for v in $(compgen -e | grep -E '^(KVSTORE_|AWS_|DENO_)' || true); do unset "$v"; done
export DENO_NO_UPDATE_CHECK=1 DENO_DIR=$root/.venv/deno-dir NO_COLOR=1

say() { printf '\n== %s\n' "$*" >&2; }

[ -x "$BIN" ] || { echo "missing $BIN: run make build" >&2; exit 1; }
[ -x "$DENO" ] || { echo "missing $DENO: run make setup-deno" >&2; exit 1; }
[ -x "$root/.venv/bin/moto_server" ] || { echo "missing .venv/bin/moto_server: run make setup-py" >&2; exit 1; }
if [ ! -x "$DENOKV" ]; then
  say "building denokv (Deno's KV Connect server) into target/denokv: cargo install, nice 19, ~10 min, once"
  nice -n 19 cargo install denokv --root "$root/target/denokv" --locked
fi
for p in $P_SIDEKV $P_DENOKV $P_S3; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "port $p is in use; set BENCH_PORT_BASE" >&2; exit 1; fi
done
rm -rf "$OUT"
mkdir -p "$OUT/cache"

# Process bookkeeping (kill_on_exit, stop) and data_dir/save_data.
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
# Ready = the metadata exchange answers 200 (HTTP/2 prior knowledge, as Deno speaks it).
wait_kv() { # URL PID LOG
  for _ in $(seq 600); do
    code=$(curl -s -o /dev/null -w '%{http_code}' --http2-prior-knowledge -X POST -H "authorization: Bearer $TOKEN" \
      -H 'content-type: application/json' -d '{"supportedVersions":[1,2,3]}' "$1" || true)
    [ "$code" = 200 ] && return 0
    kill -0 "$2" 2>/dev/null || { echo "server exited; see $3:" >&2; tail -20 "$3" >&2; return 1; }
    sleep 0.1
  done
  echo "$1 did not answer the metadata exchange in 60 s (last status $code); see $3" >&2
  return 1
}

# ---- the servers
"$root/.venv/bin/moto_server" -H 127.0.0.1 -p "$P_S3" >"$OUT/moto.log" 2>&1 &
moto=$!; kill_on_exit+=("$moto")
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$P_S3/" && break; sleep 0.1; done
curl -sf -o /dev/null -X PUT "http://127.0.0.1:$P_S3/kvconnect-bench"

say "starting sidekv (S3 backup on local moto) and denokv"
env PORT=$P_SIDEKV HOST=127.0.0.1 KVSTORE_DB="$OUT/sidekv.sqlite3" KVSTORE_SECRET=$TOKEN KVSTORE_CACHE_DIR="$OUT/cache" \
  KVSTORE_S3_URL=s3://kvconnect-bench/sidekv AWS_ENDPOINT_URL=http://127.0.0.1:$P_S3 AWS_ACCESS_KEY_ID=test \
  AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 "$BIN" >"$OUT/sidekv.log" 2>&1 &
sidekv=$!; kill_on_exit+=("$sidekv")
env DENO_KV_ACCESS_TOKEN=$TOKEN "$DENOKV" --sqlite-path "$OUT/denokv.sqlite3" serve --addr "127.0.0.1:$P_DENOKV" \
  >"$OUT/denokv.log" 2>&1 &
denokv=$!; kill_on_exit+=("$denokv")
declare -A url pid
url[sidekv]=http://127.0.0.1:$P_SIDEKV/_kv pid[sidekv]=$sidekv
url[denokv]=http://127.0.0.1:$P_DENOKV pid[denokv]=$denokv
for t in sidekv denokv; do wait_kv "${url[$t]}" "${pid[$t]}" "$OUT/$t.log"; done

load() { # TARGET MODE
  DENO_KV_ACCESS_TOKEN=$TOKEN "$DENO" run -q --unstable-kv --allow-net --allow-env \
    "$root/bench/kvconnect/load.ts" "${url[$1]}" "$2" "$SECONDS_PER" "$CONC" "$KEYS"
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
busy_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }

for t in sidekv denokv; do
  say "loading $KEYS keys into $t"
  load "$t" load >/dev/null
done

: >"$OUT/results.jsonl"
targets=(sidekv denokv)
for ((r = 0; r < ROUNDS; r++)); do
  for mode in get set atomic; do
    for ((i = 0; i < 2; i++)); do
      t=${targets[$(((i + r) % 2))]}
      c0=$(cpu_ticks "${pid[$t]}") b0=$(busy_ticks)
      line=$(load "$t" "$mode")
      c1=$(cpu_ticks "${pid[$t]}") b1=$(busy_ticks)
      echo "$line" | python3 -c '
import json, sys
d = json.loads(sys.stdin.read())
d.update(target=sys.argv[1], round=int(sys.argv[2]), server_cpu_s=int(sys.argv[3]) / 100, machine_busy_s=int(sys.argv[4]) / 100)
print(json.dumps(d))' "$t" "$r" "$((c1 - c0))" "$((b1 - b0))" | tee -a "$OUT/results.jsonl" >&2
    done
  done
done
rss_sidekv=$(awk '/VmHWM/ {print $2}' "/proc/$sidekv/status"); rss_denokv=$(awk '/VmHWM/ {print $2}' "/proc/$denokv/status")
stop "$sidekv"; stop "$denokv"; stop "$moto"

python3 - "$OUT/results.jsonl" "$ROUNDS" "$SECONDS_PER" "$CONC" "$KEYS" "$rss_sidekv" "$rss_denokv" \
  "$("$DENO" --version | head -1)" "$("$DENOKV" --version 2>/dev/null | head -1)" \
  "$(git -C "$root" rev-parse --short HEAD)$(git -C "$root" diff --quiet HEAD -- host guest core kvconnect wit 2>/dev/null || echo '+uncommitted changes'), $(date -r "$BIN" -u +%H:%MZ) binary" \
  "$(($(date +%s) - started))" >"$REPORT" <<'PY'
import json, statistics, sys, os, datetime
path, rounds, secs, conc, keys, rss_s, rss_d, deno_v, denokv_v, rev, took = sys.argv[1:]
rows = [json.loads(l) for l in open(path) if l.strip()]
names = {"get": "point reads (`get`)", "set": "single-key writes (`set`)", "atomic": "atomic: `sum` on 3 keys + a `set`"}
def med(t, m):
    rs = sorted((r for r in rows if r["target"] == t and r["mode"] == m), key=lambda r: r["ops_per_s"])
    return rs[len(rs) // 2], rs
print("# KV Connect: sidekv vs denokv, with Deno's own client\n")
print(f"Generated by `bench/kvconnect.sh` on {datetime.date.today()} (sidekv {rev}, {deno_v}, {denokv_v or 'denokv'}); {os.cpu_count()} CPUs; "
      f"{took} s in all.\n")
print(f"One Deno process runs {conc} concurrent async loops for {secs} s per workload against one server; "
      f"{keys} keys of 100 bytes, 100 counters. {rounds} rounds, target order alternating; each cell is the median round "
      "(the range over rounds in brackets). sidekv: local durability with S3 backup to a local moto, SQLite. "
      "denokv: Deno's KV Connect server on SQLite. The client, the servers and moto share the 2 cores.\n")
print("![ops/s and p99, sidekv vs denokv (bench/plot.py, from this run's results)](charts/kvconnect.svg)\n")
print("| workload | sidekv ops/s | sidekv p99 ms | denokv ops/s | denokv p99 ms | ops/s sidekv/denokv | p99 sidekv/denokv |")
print("|---|---:|---:|---:|---:|---:|---:|")
for m in ["get", "set", "atomic"]:
    (s, sa), (d, da) = med("sidekv", m), med("denokv", m)
    rng = lambda a: f"[{a[0]['ops_per_s']}–{a[-1]['ops_per_s']}]"
    ratio = lambda x, y: f"{x / y:.2f}" if y else "n/a"
    print(f"| {names[m]} | {s['ops_per_s']} {rng(sa)} | {s['p99_ms']} | {d['ops_per_s']} {rng(da)} | {d['p99_ms']} | "
          f"{ratio(s['ops_per_s'], d['ops_per_s'])} | {ratio(s['p99_ms'], d['p99_ms'])} |")
errs = [r for r in rows if r["errors"]]
print()
print(f"Peak RSS: sidekv {int(rss_s) // 1024} MiB, denokv {int(rss_d) // 1024} MiB.\n")
print(f"| per {secs} s run (median) | " + " | ".join(f"{t} {m}" for t in ["sidekv", "denokv"] for m in ["get", "set", "atomic"]) + " |")
print("|---|" + "---:|" * 6)
cell = lambda t, m, f: statistics.median(r[f] for r in rows if r["target"] == t and r["mode"] == m)
for f, label, fmt in [("server_cpu_s", "server CPU s", "{:.1f}"), ("machine_busy_s", f"whole-machine busy CPU s (of {os.cpu_count() * int(secs)})", "{:.1f}"),
                      ("p50_ms", "p50 ms", "{:.1f}"), ("p90_ms", "p90 ms", "{:.1f}"), ("over_30ms_pct", "ops ≥ 30 ms, %", "{:.1f}")]:
    print(f"| {label} | " + " | ".join(fmt.format(cell(t, m, f)) for t in ["sidekv", "denokv"] for m in ["get", "set", "atomic"]) + " |")
print("\nDeno's client writes a request's HTTP/2 HEADERS and DATA separately, so a server that delays its ACKs stalls it ~40 ms "
      "per request (Nagle on the client side); sidekv re-arms TCP_QUICKACK on HTTP/2 connections, so this does not happen to it. "
      "`ops ≥ 30 ms` counts operations that still hit such a stall.")
if errs:
    print("\nErrors: " + "; ".join(f"{r['target']} {r['mode']} round {r['round']}: {r['errors']} ({r.get('first_error')})" for r in errs))
print("\nRaw per-run results: `bench/out/kvconnect/results.jsonl`.")
PY
DATA=$(data_dir "${BENCH_KVC_REPORT:-}")/kvconnect.jsonl
save_data "$OUT/results.jsonl" "$DATA"
say "wrote $REPORT and $DATA"
cat "$REPORT"
