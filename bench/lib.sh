# Shared by the bench scripts (sourced): process bookkeeping for what the
# script started, by id, and waiting for a server to be ready.

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

stop() { # PID, or -PGID for a process group; SIGKILL after STOP_WAIT_TICKS × 50 ms
  local p=$1
  kill -TERM -- "$p" 2>/dev/null || return 0
  for _ in $(seq "${STOP_WAIT_TICKS:-200}"); do kill -0 -- "$p" 2>/dev/null || return 0; sleep 0.05; done
  kill -KILL -- "$p" 2>/dev/null || true
}

# Machine-readable results beside the reports, for bench/plot.py: each
# script copies its raw results there once its report is written, so a
# chart is always drawn from the same run as the report beside it.
# BENCH_DATA_DIR wins; a report sent elsewhere (a short trial run) takes its
# data with it, so the committed bench/data is never overwritten by it.
data_dir() { # REPORT_OVERRIDE (empty: the default report)
  if [ -n "${BENCH_DATA_DIR:-}" ]; then
    echo "$BENCH_DATA_DIR"
  elif [ -n "$1" ]; then
    dirname "$1"
  else
    echo "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/data"
  fi
}

save_data() { # SRC DEST
  mkdir -p "$(dirname "$2")"
  cp "$1" "$2"
}
