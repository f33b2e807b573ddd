#!/usr/bin/env bash
# POST p99 while snapshots run: 1k keys vs 1M keys (sidekv, local mode,
# S3 = a local moto, KVSTORE_SNAPSHOT_BYTES=2 MB so snapshots of the whole
# database run during the 15 s wrk POST load). Needs make build, make
# setup-py, wrk. Prints p50/p99 and req/s for each; logs in bench/out/p99.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$root/target/release/sidekv}
MOTO=$root/.venv/bin/moto_server
out=${P99_OUT:-$root/bench/out/p99}; mkdir -p "$out"; cd "$out"
$MOTO -p 18899 > moto.log 2>&1 & MOTO_PID=$!
sleep 3; curl -s -X PUT http://127.0.0.1:18899/p99 >/dev/null
run() { # keys tag
  local keys=$1 tag=$2
  rm -f db-$tag.sqlite3*
  env -u AWS_CA_BUNDLE AWS_ACCESS_KEY_ID=t AWS_SECRET_ACCESS_KEY=t AWS_ENDPOINT_URL=http://127.0.0.1:18899 \
    KVSTORE_S3_URL=s3://p99/$tag KVSTORE_SNAPSHOT_BYTES=2000000 KVSTORE_SECRET=s KVSTORE_DB=$PWD/db-$tag.sqlite3 \
    PORT=18898 KVSTORE_ADMIN_ADDR=127.0.0.1:18897 $BIN > sidekv-$tag.log 2>&1 & local pid=$!
  sleep 2
  python3 - "$keys" <<'PY'
import http.client, json, sys, base64
n=int(sys.argv[1]); c=http.client.HTTPConnection("127.0.0.1",18898)
v=base64.b64encode(b"x"*100).decode()
for i in range(0,n,1000):
    muts=[{"type":"set","key":f"k{j}","value":v} for j in range(i,min(n,i+1000))]
    c.request("POST","/_atomic",body=json.dumps({"mutations":muts}),headers={"Authorization":"s"}); r=c.getresponse(); r.read()
    assert r.status==200, r.status
PY
  sleep 3
  BENCH_MODE=post BENCH_SECRET=s BENCH_TAG=$tag wrk -t2 -c32 -d15s --latency -s $root/bench/wrk/kv.lua http://127.0.0.1:18898/ > wrk-$tag.txt 2>&1
  curl -s http://127.0.0.1:18897/metrics | grep -E "^sidekv_snapshots_total|^sidekv_uploads_total" > metrics-$tag.txt
  kill $pid; wait $pid || true
  echo "== $tag ($keys keys)"; grep -E "Requests/sec|99%|50%" wrk-$tag.txt; cat metrics-$tag.txt
}
run 1000 small
run 1000000 large
kill $MOTO_PID
