#!/usr/bin/env bash
# Check that docs/openapi.yaml and the server agree: start the release
# binary on a free port with a throw-away database, run schemathesis (every
# check) against it, and fail on any disagreement.
#
#   scripts/schemathesis.sh                 # after `make build` and `make setup-py`
#   SCHEMATHESIS_MAX_EXAMPLES=200 scripts/schemathesis.sh   # a longer run
#   SCHEMATHESIS_SEED=$RANDOM scripts/schemathesis.sh       # other cases (default: seed 1, the same every run)
#
# Extra arguments are passed to `schemathesis run` (e.g. --include-path /_atomic).
# scripts/schemathesis.toml and scripts/schemathesis_hooks.py say what the
# run adds to the document, and why: nothing but what JSON Schema cannot say.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-target/release/sidekv}
ST=.venv/bin/schemathesis
SPEC=docs/openapi.yaml
MAX_EXAMPLES=${SCHEMATHESIS_MAX_EXAMPLES:-30}

[ -x "$BIN" ] || { echo "schemathesis.sh: $BIN is missing; run make build" >&2; exit 2; }
[ -x "$ST" ] || { echo "schemathesis.sh: $ST is missing; run make setup-py" >&2; exit 2; }

# Nothing from the caller's environment may point the server at S3 or
# change its behaviour: only the settings below apply.
while read -r name; do
    case $name in AWS_*|LITESTREAM_*|KVSTORE_*|RUST_LOG) unset "$name" ;; esac
done < <(compgen -e)

tmp=$(mktemp -d "${TMPDIR:-/tmp}/schemathesis-run.XXXXXX")
pid= st_pid= tail_pid=
# Children run in the background and are waited for with `wait`, which a
# signal interrupts, so the trap runs at once and takes them down.
cleanup() {
    for p in $st_pid $tail_pid; do kill "$p" 2>/dev/null || true; done
    if [ -n "$pid" ]; then
        kill "$pid" 2>/dev/null || true
        # Graceful shutdown is bounded (10 s grace); do not hang on it.
        for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

secret="schemathesis-$RANDOM$RANDOM"
KVSTORE_SECRET=$secret KVSTORE_DB="$tmp/db.sqlite3" HOST=127.0.0.1 PORT=0 \
    "$BIN" >"$tmp/stdout" 2>"$tmp/stderr" &
pid=$!

# The server prints `listening on http://ADDR` once it is ready.
addr=
for _ in $(seq 1 300); do
    addr=$(sed -n 's|^listening on http://\([^ ]*\)$|\1|p' "$tmp/stdout" 2>/dev/null | head -n1) || true
    [ -n "$addr" ] && break
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "schemathesis.sh: sidekv exited before it was ready:" >&2
        cat "$tmp/stdout" "$tmp/stderr" >&2
        exit 1
    fi
    sleep 0.1
done
[ -n "$addr" ] || { echo "schemathesis.sh: sidekv did not say where it listens within 30 s" >&2; cat "$tmp/stderr" >&2; exit 1; }
echo "schemathesis.sh: sidekv on http://$addr, $MAX_EXAMPLES examples per operation"

status=0
# Created before either background job starts, so `tail -f` never races it.
: >"$tmp/out"
SCHEMATHESIS_HOOKS=scripts/schemathesis_hooks.py "$ST" --config-file scripts/schemathesis.toml run "$SPEC" \
    --url "http://$addr" \
    -H "Authorization: $secret" \
    --checks all \
    --max-examples "$MAX_EXAMPLES" \
    --seed "${SCHEMATHESIS_SEED:-1}" \
    --request-timeout 10 \
    --no-color \
    --generation-database none \
    "$@" >"$tmp/out" 2>&1 &
st_pid=$!
tail -n +1 -f --pid="$st_pid" "$tmp/out" &
tail_pid=$!
wait "$st_pid" || status=$?
wait "$tail_pid" 2>/dev/null || true
st_pid= tail_pid=
# One plain closing line: "Test cases: N generated, N passed, ..." or
# "N generated, F found F unique failures, ...".
generated=$(sed -n 's/^ *\([0-9][0-9]*\) generated,.*/\1/p' "$tmp/out" | tail -n1)
failed=$(sed -n 's/.* found \([0-9][0-9]*\) unique failure.*/\1/p' "$tmp/out" | tail -n1)
if [ "$status" -eq 0 ]; then failed=0; fi
echo "schemathesis: $(( ${generated:-0} - ${failed:-0} )) passed, ${failed:-1} failed"
if [ "$status" -ne 0 ]; then
    echo "schemathesis.sh: FAILED (exit $status): docs/openapi.yaml and the server disagree" >&2
    echo "--- sidekv stderr (last 20 lines) ---" >&2
    tail -n 20 "$tmp/stderr" >&2
fi
exit "$status"
