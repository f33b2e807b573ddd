#!/usr/bin/env python3
"""Helpers for bench/scale.sh (issue 15: data size does not change the
answer): import N keys through /_import, run wrk over the whole key range,
time list/count requests, record RSS and database size, write bench/scale.md.

Every measurement is one JSON line in $BENCH_OUT/results.jsonl (default
bench/out/scale). The process-accounting helpers (other load, server CPU)
and the machine/quiet/fsync records come from bench/bench.py, imported
read-only. Standard library only.
"""

import base64
import http.client
import json
import os
import queue
import re
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
os.environ.setdefault("BENCH_OUT", os.path.join(HERE, "out", "scale"))
sys.path.insert(0, HERE)
import bench  # noqa: E402  (bench/bench.py: OUT/RESULTS come from BENCH_OUT)

OUT = bench.OUT
record = bench.record
SECRET = os.environ.get("BENCH_SECRET", "benchsecret")
VALUE_BYTES = int(os.environ.get("BENCH_VALUE_BYTES", "100"))

# wrk script. GET and LIST draw a fresh uniformly random key over the whole
# range k0..k(N-1) for every request (no pre-formatted table: a table of 10M
# requests per wrk thread would take gigabytes and seconds to build). The
# request is the pre-formatted head .. number .. tail, so wrk's cost per
# request is the same at every N. POST is bench/wrk/kv.lua's POST: fresh keys.
LUA = r'''
local mode = os.getenv("BENCH_MODE") or "get"
local nkeys = tonumber(os.getenv("BENCH_KEYS") or "1000")
local secret = os.getenv("BENCH_SECRET") or ""
local tag = os.getenv("BENCH_TAG") or "x"
local value = string.rep("v", tonumber(os.getenv("BENCH_VALUE_BYTES") or "100"))
local limit = os.getenv("BENCH_LIST_LIMIT") or "100"

local next_id = 1
function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
end

local function split(req)
  local a, b = req:find("@N@", 1, true)
  return req:sub(1, a - 1), req:sub(b + 1)
end

function init(args)
  math.randomseed(tid * 7919 + os.time())
  n = 0
  post_headers = { ["Authorization"] = secret, ["Content-Type"] = "text/plain" }
  get_head, get_tail = split(wrk.format("GET", "/k@N@"))
  list_head, list_tail = split(wrk.format("GET", "/?prefix=k&start=k@N@&limit=" .. limit, { ["Authorization"] = secret }))
end

function request()
  if mode == "post" then
    n = n + 1
    return wrk.format("POST", "/f" .. tag .. "_" .. tid .. "_" .. n, post_headers, value)
  elseif mode == "list" then
    return list_head .. math.random(0, nkeys - 1) .. list_tail
  end
  return get_head .. math.random(0, nkeys - 1) .. get_tail
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f,' ..
    '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end
'''


def fmt_n(n):
    n = int(n)
    for div, suf in ((1_000_000_000, "G"), (1_000_000, "M"), (1_000, "k")):
        if n >= div and n % div == 0:
            return f"{n // div}{suf}"
    return str(n)


def hostport(base):
    h, _, p = base.replace("http://", "").rstrip("/").partition(":")
    return h, int(p)


# -------------------------------------------------------------- import ----

def cmd_import(base, n, lines_per_req="50000", conns="2"):
    """Keys k0..k(n-1), VALUE_BYTES-byte values, as NDJSON through POST
    /_import: requests of `lines_per_req` lines generated on the fly,
    `conns` of them in flight at once (each its own keep-alive connection)."""
    n, per, conns = int(n), int(lines_per_req), int(conns)
    host, port = hostport(base)
    v = base64.b64encode(b"v" * VALUE_BYTES).decode()
    chunks = queue.Queue()
    for a in range(0, n, per):
        chunks.put((a, min(n, a + per)))
    done = [0]
    errors = []
    lock = threading.Lock()
    t0 = time.perf_counter()
    last = [t0]
    retries = [0]
    body_bytes = [0]

    def worker():
        conn = http.client.HTTPConnection(host, port, timeout=300)
        while not errors:
            try:
                a, b = chunks.get_nowait()
            except queue.Empty:
                break
            body = "".join([f'{{"key":"k{i}","value":"{v}"}}\n' for i in range(a, b)]).encode()
            for attempt in range(20):
                try:
                    conn.request("POST", "/_import", body=body,
                                 headers={"Authorization": SECRET, "Content-Type": "application/x-ndjson"})
                    r = conn.getresponse()
                    data = r.read()
                except (OSError, http.client.HTTPException) as e:
                    conn.close()
                    conn = http.client.HTTPConnection(host, port, timeout=300)
                    status, data = None, str(e).encode()
                else:
                    status = r.status
                if status == 503:  # body budget / instance wait: back off, retry
                    with lock:
                        retries[0] += 1
                    time.sleep(float(r.getheader("retry-after") or 1))
                    continue
                break
            try:
                got = json.loads(data).get("imported") if status == 200 else None
            except ValueError:
                got = None
            if got != b - a:
                with lock:
                    errors.append(f"lines {a}..{b}: HTTP {status}: {data[:300]!r}")
                break
            with lock:
                done[0] += b - a
                body_bytes[0] += len(body)
                now = time.perf_counter()
                if now - last[0] >= 10 or done[0] == n:
                    last[0] = now
                    el = now - t0
                    print(f"    import {fmt_n(n)}: {done[0]:>10} / {n} keys  {el:6.1f} s  {done[0] / el:8.0f} keys/s", flush=True)
        conn.close()

    ths = [threading.Thread(target=worker) for _ in range(conns)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    el = time.perf_counter() - t0
    if errors:
        record(dict(kind="import", size=n, ok=False, error=errors[0], seconds=el, imported=done[0]))
        sys.exit(f"import of {n} keys failed after {done[0]} keys, {el:.1f} s: {errors[0]}")
    # Spot-check: first, middle and last keys read back.
    conn = http.client.HTTPConnection(host, port, timeout=30)
    for i in {0, n // 2, n - 1}:
        conn.request("GET", f"/k{i}", headers={"Authorization": SECRET})
        r = conn.getresponse()
        body = r.read()
        if r.status != 200 or body != b"v" * VALUE_BYTES:
            sys.exit(f"after import: GET /k{i} -> {r.status} {body[:60]!r}")
    conn.close()
    rec = dict(kind="import", size=n, ok=True, seconds=el, keys_per_s=n / el, lines_per_req=per, conns=conns,
               body_mb=body_bytes[0] / 1e6, retries_503=retries[0])
    record(rec)
    print(f"  imported {n} keys in {el:.1f} s: {n / el:.0f} keys/s ({per} lines per request, {conns} in flight, "
          f"{body_bytes[0] / 1e6:.0f} MB of NDJSON, {retries[0]} 503 retries)")


# ----------------------------------------------------------------- wrk ----

def proc_io(pids):
    """(user s, system s, read syscalls, bytes read) of these processes (all threads)."""
    ut = st = syscr = rchar = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ut, st = ut + int(fields[11]) / bench.CLK, st + int(fields[12]) / bench.CLK
            with open(f"/proc/{pid}/io") as f:
                io = dict(line.split(": ") for line in f.read().splitlines())
            syscr, rchar = syscr + int(io["syscr"]), rchar + int(io["rchar"])
        except (OSError, IndexError, ValueError, KeyError):
            pass
    return ut, st, syscr, rchar


def cmd_wrk(size, workload, base, metrics_url="", rnd="0"):
    """One wrk run (GET / POST / LIST) against a database of `size` keys,
    round `rnd`. $BENCH_SERVER_PIDS: the server's PIDs, for CPU/req and
    other load."""
    size, rnd = int(size), int(rnd)
    mode = workload.lower()
    threads = os.environ.get("BENCH_WRK_THREADS", "2")
    conns = os.environ.get("BENCH_WRK_CONNS", "32")
    dur = os.environ.get("BENCH_WRK_SECONDS", "10")
    pids = os.environ.get("BENCH_SERVER_PIDS", "").split()
    script = os.path.join(OUT, "scale.lua")
    with open(script, "w") as f:
        f.write(LUA)
    env = dict(os.environ, BENCH_MODE=mode, BENCH_KEYS=str(size), BENCH_SECRET=SECRET,
               BENCH_VALUE_BYTES=str(VALUE_BYTES), BENCH_TAG=f"{int(time.time())}{mode}{rnd}")
    before = bench.scrape(metrics_url or None)
    cmd = ["wrk", "-t", threads, "-c", conns, "-d", f"{dur}s", "--latency", "-s", script, base]
    snap0 = bench.snapshot_procs()
    io0 = proc_io(pids)
    (m0, st0), s0, w0, t0 = bench.machine_busy_s(), bench.proc_cpu_s(pids), bench.children_cpu_s(), time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = p.communicate()
    (m1, st1), s1, w1, t1 = bench.machine_busy_s(), bench.proc_cpu_s(pids), bench.children_cpu_s(), time.perf_counter()
    snap1 = bench.snapshot_procs()
    io1 = proc_io(pids)
    exclude = {int(x) for x in pids} | {p.pid}
    after = bench.scrape(metrics_url or None)
    if os.environ.get("BENCH_WARMUP"):
        return
    with open(os.path.join(OUT, f"wrk-{fmt_n(size)}-{workload}-r{rnd}.txt"), "w") as f:
        f.write(out + err)
    m = re.search(r"^RESULT (\{.*\})$", out, re.M)
    if p.returncode != 0 or not m:
        sys.exit(f"wrk failed for {size} {workload}:\n{out}\n{err}")
    r = json.loads(m.group(1))
    wall = t1 - t0
    server_cpu, wrk_cpu = s1 - s0, w1 - w0
    other_user, other_kernel, top = bench.foreign_usage(snap0, snap1, exclude)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    r.update(kind="wrk", size=size, workload=workload, round=rnd, rps=r["requests"] / (r["duration_us"] / 1e6),
             threads=int(threads), conns=int(conns), seconds=int(dur),
             non2xx=int(non2xx.group(1)) if non2xx else 0,
             server_cpu_us_per_req=server_cpu / r["requests"] * 1e6 if pids and r["requests"] else None,
             server_cores=server_cpu / wall if pids else None, wrk_cores=wrk_cpu / wall,
             foreign_cores=other_user / wall, kthread_cores=other_kernel / wall,
             steal_cores=(st1 - st0) / wall,
             server_sys_share=(io1[1] - io0[1]) / ((io1[0] - io0[0]) + (io1[1] - io0[1])) if pids and io1[0] + io1[1] > io0[0] + io0[1] else None,
             server_reads_per_req=(io1[2] - io0[2]) / r["requests"] if pids and r["requests"] else None,
             server_read_bytes_per_req=(io1[3] - io0[3]) / r["requests"] if pids and r["requests"] else None,
             foreign_top=[f"{n} {c / wall:.2f}" for n, c in top])
    if before and after:
        d = {k: after[k] - before[k] for k in after}
        rq = d.get("sidekv_request_duration_seconds_count", 0)
        cb = d.get("sidekv_commit_batch_writes_count", 0)
        r["server_request_mean_us"] = d["sidekv_request_duration_seconds_sum"] / rq * 1e6 if rq else None
        r["writes_per_commit"] = d["sidekv_commit_batch_writes_sum"] / cb if cb else None
    record(r)
    errs = sum(r[k] for k in ("err_connect", "err_read", "err_write", "err_status", "err_timeout")) + r["non2xx"]
    cpu = (f"  server {r['server_cpu_us_per_req']:5.1f} µs CPU/req ({r['server_sys_share'] * 100:.0f}% kernel, "
           f"{r['server_reads_per_req']:.2f} reads/req)" if r["server_cpu_us_per_req"] and r["server_sys_share"] is not None else "")
    print(f"  r{rnd} {fmt_n(size):>4} keys {workload:<5} {r['rps']:>9.0f} req/s  p50 {r['p50_us'] / 1e3:6.2f} ms  "
          f"p99 {r['p99_us'] / 1e3:6.2f} ms{cpu}  other processes {r['foreign_cores']:.2f} cores"
          + (f" ({', '.join(r['foreign_top'][:2])})" if r["foreign_cores"] > 0.05 else "")
          + (f"  ERRORS {errs}" if errs else ""), flush=True)


# -------------------------------------------------------------- probes ----

def probes(n):
    """(name, path, what it is) of the list and count requests timed at size n."""
    mid = n // 2
    return [
        ("list 100 (middle)", f"/?prefix=k&start=k{mid}&limit=100", f"100 entries from k{mid}"),
        ("list 100 keys_only", f"/?prefix=k&start=k{mid}&limit=100&keys_only=true", "100 keys, no values"),
        ("count ~1%", "/?prefix=k12&count=true", "count of prefix k12"),
        ("count all", "/?prefix=k&count=true", "count of every key"),
    ]


def cmd_probes(size, base, reps="20"):
    """Median (and max) latency of `reps` sequential requests per probe, on
    one keep-alive connection, after one untimed request."""
    size, reps = int(size), int(reps)
    host, port = hostport(base)
    conn = http.client.HTTPConnection(host, port, timeout=300)
    hdr = {"Authorization": SECRET}
    for name, path, what in probes(size):
        lat, status, result = [], None, None
        for i in range(reps + 1):
            t0 = time.perf_counter()
            conn.request("GET", path, headers=hdr)
            r = conn.getresponse()
            body = r.read()
            dt = (time.perf_counter() - t0) * 1e3
            status = r.status
            if status != 200:
                result = body[:200].decode(errors="replace")
                break
            j = json.loads(body)
            result = j["count"] if "count" in j else len(j["entries"])
            if i:
                lat.append(dt)
            # A slow probe (count over millions): fewer repetitions.
            if i >= 3 and sum(lat) > 15_000:
                break
        rec = dict(kind="probe", size=size, name=name, path=path, what=what, status=status, result=result,
                   reps=len(lat), median_ms=statistics.median(lat) if lat else None, max_ms=max(lat) if lat else None)
        record(rec)
        if status != 200:
            print(f"  {fmt_n(size):>4} keys {name:<20} HTTP {status}: {result}", flush=True)
        else:
            print(f"  {fmt_n(size):>4} keys {name:<20} median {rec['median_ms']:8.2f} ms  max {rec['max_ms']:8.2f} ms  "
                  f"({len(lat)} runs; result {result})", flush=True)
    conn.close()


# ----------------------------------------------------------------- rss ----

def status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def cmd_rss(size, phase, pid, db=""):
    """VmHWM and VmRSS of the server now (`phase`: import = after the import,
    serving = after the runs), then reset VmHWM (clear_refs 5) so the next
    phase's peak is its own. With `db`: the database's size on disk."""
    size = int(size)
    hwm, rss = status_kib(pid, "VmHWM"), status_kib(pid, "VmRSS")
    rec = dict(kind="rss", size=size, phase=phase, hwm_kib=hwm, rss_kib=rss)
    if db:
        files = {s: os.path.getsize(db + s) for s in ("", "-wal", "-shm") if os.path.exists(db + s)}
        rec["db_bytes"] = files.get("", 0)
        rec["wal_bytes"] = files.get("-wal", 0)
    record(rec)
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    extra = f"  database {rec['db_bytes'] / 1e6:.0f} MB (+ WAL {rec['wal_bytes'] / 1e6:.0f} MB)" if db else ""
    print(f"  {fmt_n(size):>4} keys after {phase:<8} peak RSS {hwm / 1024:7.1f} MiB  RSS now {rss / 1024:7.1f} MiB{extra}", flush=True)


def cmd_note(key, *text):
    record(dict(kind="note", key=key, text=" ".join(text)))


# -------------------------------------------------------------- report ----

def cmd_report(command="bench/scale.sh"):
    res = bench.load_results()
    machine = next((r for r in res if r["kind"] == "machine"), {})
    quiet = [r for r in res if r["kind"] == "quiet"]
    fsync = [r for r in res if r["kind"] == "fsync"]
    notes = [(r["key"], r["text"]) for r in res if r["kind"] == "note"]
    sizes = []
    for r in res:
        if "size" in r and r["size"] not in sizes:
            sizes.append(r["size"])
    sizes.sort()
    runs = {}
    for r in res:
        if r["kind"] == "wrk":
            runs.setdefault((r["size"], r["workload"]), []).append(r)
    # Per (size, workload): the round with the median req/s for everything
    # but p50/p99, which are the medians over the rounds.
    wrk = {}
    for k, v in runs.items():
        m = dict(sorted(v, key=lambda r: r["rps"])[(len(v) - 1) // 2])
        m["p50_us"] = statistics.median(r["p50_us"] for r in v)
        m["p99_us"] = statistics.median(r["p99_us"] for r in v)
        m["rounds"] = len(v)
        wrk[k] = m
    imp = {r["size"]: r for r in res if r["kind"] == "import"}
    rss = {(r["size"], r["phase"]): r for r in res if r["kind"] == "rss"}
    prb = {}
    for r in res:
        if r["kind"] == "probe":
            prb.setdefault(r["size"], {})[r["name"]] = r
    any_run = next(iter(wrk.values()), {})
    rounds = max((len(v) for v in runs.values()), default=0)
    base = sizes[0] if sizes else None

    def ms(us):
        return f"{us / 1e3:.2f} ms" if us is not None else "n/a"

    def mib(kib):
        return f"{kib / 1024:.0f} MiB" if kib is not None else "n/a"

    def get(n, wl, k):
        r = wrk.get((n, wl))
        return r.get(k) if r else None

    def rel(a, b):
        return a / b if a is not None and b else None

    o = []
    w = o.append
    w("# At scale: does data size change the answer?\n")
    w("Generated by `bench/scale.sh` (`bench/scale.py report`); every number below comes from the same run. "
      "Goal (issue 15): at 1M and 10M keys, GET and POST req/s within 10% of the 1k-key figures, "
      "p99 within 2× of them; RSS with 10M keys reported.\n")
    w("![req/s and p99 against the number of keys (bench/plot.py, from this run's results)](charts/scale.svg)\n")
    w(f"- command: `{command}`")
    w(f"- date: {machine.get('date', '?')}")
    w(f"- machine: {machine.get('nproc', '?')} CPUs (`nproc`), {machine.get('cpu', '?')}, kernel {machine.get('kernel', '?')}, "
      f"{machine.get('mem', '?')} RAM (a VM)")
    w(f"- server: `sidekv`, default guest, `KVSTORE_INSTANCE_MODE=reuse`, `KVSTORE_PUBLIC_READS=true`, local durability, "
      "no S3; a fresh database per size")
    w(f"- data: keys `k0` … `k(N-1)` (the names `bench/wrk/kv.lua` reads), {VALUE_BYTES}-byte values, loaded through "
      "`POST /_import` (NDJSON generated on the fly"
      + (f", {imp[base]['lines_per_req']} lines per request, {imp[base]['conns']} requests in flight" if base in imp else "") + ")")
    w(f"- load: {machine.get('wrk', 'wrk')}, {any_run.get('threads', 2)} threads, {any_run.get('conns', 32)} connections, "
      f"{any_run.get('seconds', 10)} s per run, keep-alive, `--latency`, after 3 s of untimed GETs; wrk runs on the same machine. "
      "GET = a uniformly random existing key over the whole range k0…k(N-1), drawn per request; POST = a fresh key "
      f"(`f…`), {VALUE_BYTES}-byte body; LIST = `GET /?prefix=k&start=k<random>&limit=100` (authorized). "
      "The wrk script (written by `bench/scale.py`) costs wrk the same per request at every N"
      + (f". GET and POST run {rounds} rounds each, alternating (LIST once); a row gives the median req/s, "
         "median p50 and median p99 over the rounds, and the req/s range" if rounds > 1 else ""))
    w("- list/count: median of up to 20 sequential requests on one keep-alive connection (after one untimed request; "
      "fewer when a request takes seconds)")
    w("- RSS: VmHWM of the server process; the peak is reset (`/proc/PID/clear_refs` 5) after the import, so "
      "\"peak serving\" is the peak over the wrk runs and probes only. db = the SQLite file (+ its WAL)")
    w("- other load = cores used during a wrk run by user-space processes that are neither the server nor wrk")
    for q in quiet:
        if q.get("waited"):
            w(f"\n> **The machine was not quiet** before the runs: {q['busy_cores']:.2f} cores busy with other work "
              f"({', '.join(q['top'][:3])}). Throughput and latency rows are affected; server CPU/req much less.")
    for k, v in notes:
        w(f"\n> **{k}**: {v}")
    allruns = [r for v in runs.values() for r in v]
    if allruns:
        loads = [r["foreign_cores"] for r in allruns]
        w(f"\n> **Conditions**: other processes used {statistics.mean(loads):.2f} cores on average during the {len(allruns)} "
          f"wrk runs (max {max(loads):.2f}); rows with a high other load understate req/s and overstate latency.")
    w("")

    w("## Per size\n")
    w("| keys | import | GET req/s | GET p50 | GET p99 | POST req/s | POST p50 | POST p99 | LIST req/s | LIST p99 | "
      "peak RSS import | peak RSS serving | RSS after | db (+WAL) |")
    w("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in sizes:
        i = imp.get(n)
        it = f"{i['keys_per_s']:.0f} keys/s ({i['seconds']:.3g} s)" if i and i.get("ok") else ("**failed**" if i else "n/a")
        ri, rs = rss.get((n, "import"), {}), rss.get((n, "serving"), {})
        g = lambda wl, k: f"{get(n, wl, k):.0f}" if get(n, wl, k) is not None else "n/a"
        db = f"{rs['db_bytes'] / 1e6:.0f} MB (+{rs['wal_bytes'] / 1e6:.0f})" if rs.get("db_bytes") is not None else "n/a"
        w(f"| {fmt_n(n)} | {it} | {g('GET', 'rps')} | {ms(get(n, 'GET', 'p50_us'))} | {ms(get(n, 'GET', 'p99_us'))} | "
          f"{g('POST', 'rps')} | {ms(get(n, 'POST', 'p50_us'))} | {ms(get(n, 'POST', 'p99_us'))} | "
          f"{g('LIST', 'rps')} | {ms(get(n, 'LIST', 'p99_us'))} | {mib(ri.get('hwm_kib'))} | {mib(rs.get('hwm_kib'))} | "
          f"{mib(rs.get('rss_kib'))} | {db} |")
    w("")
    w("Per workload (req/s range and p99 of every round; of the median round: server CPU/req and its kernel share, "
      "read syscalls and bytes read per request by the server (`/proc/PID/io` syscr, rchar: socket reads and SQLite "
      "page reads from the OS page cache), the server's own mean request time from its metrics, writes per group "
      "commit, other load; errors over all rounds):\n")
    w("| keys | workload | req/s range | p99 per round | server CPU/req | (kernel share) | read syscalls/req | bytes read/req "
      "| server mean (metrics) | writes/commit | other load | errors |")
    w("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in sizes:
        for wl in ("GET", "POST", "LIST"):
            r = wrk.get((n, wl))
            if not r:
                continue
            rr = runs[(n, wl)]
            errs = sum(x[k] for x in rr for k in ("err_connect", "err_read", "err_write", "err_status", "err_timeout", "non2xx"))
            rng = f"{min(x['rps'] for x in rr):.0f}–{max(x['rps'] for x in rr):.0f}" if len(rr) > 1 else f"{r['rps']:.0f}"
            p99s = ", ".join(f"{x['p99_us'] / 1e3:.1f}" for x in rr) + " ms"
            cpu = f"{r['server_cpu_us_per_req']:.1f} µs" if r.get("server_cpu_us_per_req") else "n/a"
            sm = f"{r['server_request_mean_us']:.0f} µs" if r.get("server_request_mean_us") else "n/a"
            wc = f"{r['writes_per_commit']:.1f}" if r.get("writes_per_commit") else "—"
            ks = f"{r['server_sys_share'] * 100:.0f}%" if r.get("server_sys_share") is not None else "n/a"
            rd = f"{r['server_reads_per_req']:.2f}" if r.get("server_reads_per_req") is not None else "n/a"
            rb = f"{r['server_read_bytes_per_req']:.0f}" if r.get("server_read_bytes_per_req") is not None else "n/a"
            w(f"| {fmt_n(n)} | {wl} | {rng} | {p99s} | {cpu} | {ks} | {rd} | {rb} | {sm} | {wc} | {r['foreign_cores']:.2f} | {errs} |")
    w("")
    if fsync:
        w("Disk right before each POST run (4 KiB write + fdatasync, mean; POST throughput depends on it and it varies "
          "on this VM): " + "; ".join(f"{fmt_n(r['target'])} keys {r['mean_us']:.0f} µs" for r in fsync) + ".\n")

    names = []
    for n in sizes:
        for k in prb.get(n, {}):
            if k not in names:
                names.append(k)
    if names:
        w("## List and count (median latency, sequential)\n")
        w("| keys | " + " | ".join(names) + " |")
        w("|---:|" + "---:|" * len(names))
        for n in sizes:
            cells = []
            for k in names:
                p = prb.get(n, {}).get(k)
                if not p:
                    cells.append("n/a")
                elif p["status"] != 200:
                    cells.append(f"**HTTP {p['status']}**")
                else:
                    cells.append(f"{p['median_ms']:.2f} ms ({p['result']})")
            w(f"| {fmt_n(n)} | " + " | ".join(cells) + " |")
        w("")
        w("Requests: " + "; ".join(f"{name}: `{path}`" for name, path, _ in probes(sizes[-1])) +
          f" (N = {fmt_n(sizes[-1])}; `start` is k(N/2) at each size). The value in brackets is the number of entries "
          "returned, or the count.\n")

    if base is not None and len(sizes) > 1:
        w(f"## Against the {fmt_n(base)}-key row\n")
        w("| keys | GET req/s | GET p99 | POST req/s | POST p99 | LIST req/s | LIST p99 | GET CPU/req | POST CPU/req | verdict |")
        w("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        verdicts = []
        for n in sizes[1:]:
            cells, fails = [], []
            for wl in ("GET", "POST", "LIST"):
                rr = rel(get(n, wl, "rps"), get(base, wl, "rps"))
                pr = rel(get(n, wl, "p99_us"), get(base, wl, "p99_us"))
                cells += [f"{rr:.2f}×" if rr is not None else "n/a", f"{pr:.2f}×" if pr is not None else "n/a"]
                if wl in ("GET", "POST"):
                    if rr is None or rr < 0.9:
                        fails.append(f"{wl} req/s {'n/a' if rr is None else f'{(1 - rr) * 100:.0f}% lower'}")
                    if pr is None or pr > 2.0:
                        fails.append(f"{wl} p99 {'n/a' if pr is None else f'{pr:.2f}×'}")
            for wl in ("GET", "POST"):
                cr = rel(get(n, wl, "server_cpu_us_per_req"), get(base, wl, "server_cpu_us_per_req"))
                cells.append(f"{cr:.2f}×" if cr is not None else "n/a")
            v = "**holds**" if not fails else "**misses**: " + ", ".join(fails)
            verdicts.append((n, not fails, fails))
            w(f"| {fmt_n(n)} | " + " | ".join(cells) + f" | {v} |")
        w("")
        w("Goal: GET and POST req/s ≥ 0.90× and p99 ≤ 2× the "
          f"{fmt_n(base)}-key figures (LIST shown for information, no goal). CPU/req = server CPU time per request "
          "against the baseline's: the cost of size itself, much less disturbed by other load than req/s and p99.\n")
        w("## Verdict\n")
        for n, ok, fails in verdicts:
            w(f"- **{fmt_n(n)} keys**: " + ("within the goal (req/s within 10%, p99 within 2×)." if ok
                                          else "outside the goal: " + "; ".join(fails) + "."))
        big = sizes[-1]
        rs = rss.get((big, "serving"), {})
        ri = rss.get((big, "import"), {})
        if rs:
            w(f"- RSS with {fmt_n(big)} keys: peak {mib(ri.get('hwm_kib'))} during the import, "
              f"peak {mib(rs.get('hwm_kib'))} while serving, {mib(rs.get('rss_kib'))} after the runs "
              f"({fmt_n(base)} keys: {mib(rss.get((base, 'serving'), {}).get('hwm_kib'))} serving).")
        busy = [r for r in allruns if r["foreign_cores"] > 0.25]
        if busy or any(q.get("waited") for q in quiet):
            w(f"- {len(busy)} of {len(allruns)} wrk runs had more than 0.25 cores of other load: compare server CPU/req "
              "(less sensitive to it) before reading a req/s miss as a scaling problem; rerun on a quiet machine.")
        w("")
    print("\n".join(o))


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    cmd, args = sys.argv[1], sys.argv[2:]
    {
        "import": cmd_import,
        "wrk": cmd_wrk,
        "probes": cmd_probes,
        "rss": cmd_rss,
        "note": cmd_note,
        "machine": bench.cmd_machine,
        "quiet": bench.cmd_quiet,
        "fsync": bench.cmd_fsync,
        "report": cmd_report,
    }[cmd](*args)


if __name__ == "__main__":
    main()
