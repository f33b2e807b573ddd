#!/usr/bin/env bash
# Restore benchmark: 100k keys x 1 KiB restored from S3 by sidekv
# (`sidekv restore`, and restore at launch; segments-only and snapshot paths)
# next to `litestream restore` of the seed system holding the same data.
# One local moto S3 server for both. Writes bench/restore.md (appended to
# BENCHMARKS.md by `bench/bench.py report`); raw logs in bench/out/restore.
#
# Called by `make bench-restore` after `make setup build`. About 4 minutes.
# Knobs (env): RESTORE_KEYS (100000), RESTORE_VALUE_BYTES (1024),
# RESTORE_RUNS (5), RESTORE_WARMUP (1), RESTORE_PORT_BASE (18790: sidekv, seed, S3 = base..base+2),
# RESTORE_SEED_CONNS (32), RESTORE_SKIP_SEED=1, BENCH_SEED_DIR, RESTORE_REPORT.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

BIN=$root/target/release/sidekv
MOTO=$root/.venv/bin/moto_server
[ -x "$BIN" ] || { echo "missing $BIN: run make build" >&2; exit 1; }
[ -x "$MOTO" ] || { echo "missing $MOTO: run make setup-py" >&2; exit 1; }

# Nothing from the caller's environment may change what is measured.
for v in $(compgen -e | grep -E '^(KVSTORE_|AWS_|LITESTREAM_)' || true); do unset "$v"; done

base=${RESTORE_PORT_BASE:-18790}
for p in $base $((base + 1)) $((base + 2)); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "port $p is in use; set RESTORE_PORT_BASE" >&2; exit 1; fi
done

exec python3 "$root/bench/restore.py" "$BIN" "$MOTO"
