#!/usr/bin/env python3
"""Helpers for bench/run.sh: load keys, run wrk, time start-to-ready, record
peak RSS, scrape sidekv's /metrics, and write BENCHMARKS.md.

Every measurement is appended as one JSON line to $BENCH_OUT/results.jsonl;
`report` turns that file into the markdown. Standard library only.
"""

import http.client
import json
import os
import platform
import resource
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

OUT = os.environ.get("BENCH_OUT", "bench/out/run")
RESULTS = os.path.join(OUT, "results.jsonl")
HERE = os.path.dirname(os.path.abspath(__file__))


def record(rec):
    os.makedirs(OUT, exist_ok=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps(rec) + "\n")


def load_results():
    if not os.path.exists(RESULTS):
        return []
    with open(RESULTS) as f:
        return [json.loads(line) for line in f if line.strip()]


# ---------------------------------------------------------------- load ----

def cmd_load(base, n, secret, size=100):
    """POST keys k0..k(n-1) with `size`-byte values over one keep-alive connection."""
    u = urllib.parse.urlparse(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    value = b"v" * int(size)
    bad = 0
    t0 = time.perf_counter()
    for i in range(int(n)):
        conn.request("POST", f"/k{i}", body=value, headers={"Authorization": secret, "Content-Type": "text/plain"})
        r = conn.getresponse()
        r.read()
        if r.status != 200:
            bad += 1
    # Spot-check that the keys read back (with the secret: servers with public reads off need it).
    conn.request("GET", "/k0", headers={"Authorization": secret})
    r = conn.getresponse()
    body = r.read()
    conn.close()
    if bad or r.status != 200 or body != value:
        sys.exit(f"loading {base}: {bad} failed writes, GET /k0 -> {r.status} {body[:40]!r}")
    print(f"loaded {n} keys ({size}-byte values) in {time.perf_counter() - t0:.2f}s")


# ----------------------------------------------------------------- wrk ----

def scrape(url):
    """Sums and counts of sidekv's request/guest/commit-batch histograms
    (Prometheus text at `url`: sidekv's admin /metrics, native's /_metrics)."""
    if not url:
        return None
    try:
        text = urllib.request.urlopen(url, timeout=5).read().decode()
    except OSError:
        return None
    out = {}
    for name in ("sidekv_request_duration_seconds", "sidekv_guest_call_duration_seconds", "sidekv_commit_batch_writes"):
        for suffix in ("sum", "count"):
            m = re.search(rf"^{name}_{suffix} (\S+)$", text, re.M)
            out[f"{name}_{suffix}"] = float(m.group(1)) if m else 0.0
    return out


CLK = os.sysconf("SC_CLK_TCK")


def machine_busy_s():
    """(busy, steal) CPU seconds of the whole machine (all CPUs); busy
    excludes idle, iowait and steal."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]] + [0] * 8
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / CLK, v[7] / CLK


def snapshot_procs():
    """pid -> (name, cpu seconds, is kernel thread) for every process."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        name = raw[raw.find("(") + 1:raw.rfind(")")]
        fields = raw.rsplit(")", 1)[1].split()
        try:
            flags, ut, st = int(fields[6]), int(fields[11]), int(fields[12])
        except (IndexError, ValueError):
            continue
        out[int(d)] = (name, (ut + st) / CLK, bool(flags & 0x00200000))
    return out


def foreign_usage(before, after, exclude):
    """CPU seconds of other processes between two snapshots: (user-space
    processes, kernel threads, top names)."""
    user = kern = 0.0
    by_name = {}
    for pid, (name, cpu, kthread) in after.items():
        if pid in exclude or pid == os.getpid():
            continue
        d = cpu - before.get(pid, (name, 0.0, kthread))[1] if pid in before else cpu
        if d <= 0:
            continue
        if kthread:
            kern += d
        else:
            user += d
        by_name[name] = by_name.get(name, 0.0) + d
    top = sorted(by_name.items(), key=lambda kv: -kv[1])[:3]
    return user, kern, top


def proc_cpu_s(pids):
    """utime + stime of these processes (all their threads), in seconds."""
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK
        except (OSError, IndexError, ValueError):
            pass
    return total


def children_cpu_s():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def cmd_wrk(target, workload, base, metrics_url=None):
    """One wrk run. $BENCH_SERVER_PIDS (space-separated) are the server's
    processes: their CPU time gives CPU per request, and whatever else the
    machine did meanwhile is reported as foreign load."""
    mode = {"GET": "get", "GET auth": "getauth", "POST": "post", "MIX": "mix"}[workload]
    threads = os.environ.get("BENCH_WRK_THREADS", "2")
    conns = os.environ.get("BENCH_WRK_CONNS", "32")
    dur = os.environ.get("BENCH_WRK_SECONDS", "10")
    rnd = os.environ.get("BENCH_ROUND", "0")
    pids = os.environ.get("BENCH_SERVER_PIDS", "").split()
    env = dict(os.environ, BENCH_MODE=mode, BENCH_TAG=f"{int(time.time())}{mode}{rnd}")
    before = scrape(metrics_url)
    cmd = ["wrk", "-t", threads, "-c", conns, "-d", f"{dur}s", "--latency", "-s", os.path.join(HERE, "wrk", "kv.lua"), base]
    snap0 = snapshot_procs()
    (m0, st0), s0, w0, t0 = machine_busy_s(), proc_cpu_s(pids), children_cpu_s(), time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = p.communicate()
    (m1, st1), s1, w1, t1 = machine_busy_s(), proc_cpu_s(pids), children_cpu_s(), time.perf_counter()
    snap1 = snapshot_procs()
    exclude = {int(x) for x in pids} | {p.pid}
    p = subprocess.CompletedProcess(cmd, p.returncode, out, err)
    after = scrape(metrics_url)
    name = f"wrk-{target}-{workload}-r{rnd}.txt".replace(" ", "_").replace("/", "_")
    with open(os.path.join(OUT, name), "w") as f:
        f.write(p.stdout + p.stderr)
    m = re.search(r"^RESULT (\{.*\})$", p.stdout, re.M)
    if p.returncode != 0 or not m:
        sys.exit(f"wrk failed for {target} {workload}:\n{p.stdout}\n{p.stderr}")
    r = json.loads(m.group(1))
    wall = t1 - t0
    server_cpu, wrk_cpu = s1 - s0, w1 - w0
    other_user, other_kernel, top = foreign_usage(snap0, snap1, exclude)
    # Anything else the machine did: softirq/irq work not charged to a task, etc.
    unaccounted = max(0.0, (m1 - m0) - server_cpu - wrk_cpu - other_user - other_kernel)
    r.update(kind="wrk", target=target, workload=workload, round=int(rnd), rps=r["requests"] / (r["duration_us"] / 1e6),
             threads=int(threads), conns=int(conns), seconds=int(dur),
             server_cpu_us_per_req=server_cpu / r["requests"] * 1e6 if pids and r["requests"] else None,
             server_cores=server_cpu / wall if pids else None,
             wrk_cores=wrk_cpu / wall, foreign_cores=other_user / wall, kthread_cores=other_kernel / wall,
             steal_cores=(st1 - st0) / wall, unaccounted_cores=unaccounted / wall,
             foreign_top=[f"{n} {c / wall:.2f}" for n, c in top])
    if before and after:
        d = {k: after[k] - before[k] for k in after}
        rq, gc, cb = (d.get(f"{n}_count", 0) for n in ("sidekv_request_duration_seconds", "sidekv_guest_call_duration_seconds", "sidekv_commit_batch_writes"))
        r["server_request_mean_us"] = d["sidekv_request_duration_seconds_sum"] / rq * 1e6 if rq else None
        r["server_guest_mean_us"] = d["sidekv_guest_call_duration_seconds_sum"] / gc * 1e6 if gc else None
        r["writes_per_commit"] = d["sidekv_commit_batch_writes_sum"] / cb if cb else None
    record(r)
    errs = sum(r[k] for k in ("err_connect", "err_read", "err_write", "err_status", "err_timeout"))
    cpu = f"  server {r['server_cpu_us_per_req']:5.1f} µs CPU/req" if r["server_cpu_us_per_req"] else ""
    print(f"  r{rnd} {target:<24} {workload:<5} {r['rps']:>9.0f} req/s  p50 {r['p50_us']/1e3:6.2f} ms  p99 {r['p99_us']/1e3:6.2f} ms{cpu}"
          f"  other processes {r['foreign_cores']:.2f} cores" + (f" ({', '.join(r['foreign_top'][:2])})" if r['foreign_cores'] > 0.05 else "")
          + (f"  ERRORS {errs}" if errs else ""))


def cmd_quiet(max_wait="60", threshold="0.15"):
    """Wait (up to max_wait s) until the machine is quiet: less than
    `threshold` cores busy with anything. Records what it saw."""
    deadline = time.time() + float(max_wait)
    while True:
        b0, t0 = machine_busy_s()[0], time.perf_counter()
        time.sleep(1.0)
        busy = (machine_busy_s()[0] - b0) / (time.perf_counter() - t0)
        if busy < float(threshold) or time.time() > deadline:
            break
    top = subprocess.run(["ps", "-eo", "pcpu,comm", "--sort=-pcpu"], capture_output=True, text=True).stdout.split("\n")[1:6]
    record(dict(kind="quiet", busy_cores=busy, waited=busy >= float(threshold), top=[t.strip() for t in top if t.strip()]))
    msg = f"machine busy {busy:.2f} cores before the runs"
    if busy >= float(threshold):
        msg += f" (NOT QUIET after {max_wait} s; top: {', '.join(t.strip() for t in top[:3])})"
    print("  " + msg)


# ----------------------------------------------------------------- rss ----

def vm_hwm_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


def cmd_rss(target, pid, *extra):
    """Peak RSS of `pid`; `extra` are PIDs of helper processes reported beside it."""
    kib = vm_hwm_kib(pid)
    helpers = {}
    for spec in extra:
        name, _, p = spec.partition("=")
        try:
            helpers[name] = vm_hwm_kib(p)
        except OSError:
            pass
    record(dict(kind="rss", target=target, kib=kib, helpers=helpers))
    print(f"  {target:<28} peak RSS {kib/1024:.1f} MiB" + "".join(f" (+ {k} {v/1024:.1f} MiB)" for k, v in helpers.items() if v))


# --------------------------------------------------------------- ready ----

def cmd_ready(target, runs, *cmd):
    """Spawn `cmd` (empty db each time) and time spawn → `listening on` line.
    One untimed run first warms the compiled-guest cache."""
    times, loads = [], []
    for i in range(int(runs) + 1):
        with tempfile.TemporaryDirectory(prefix="sidekv-ready-") as d:
            env = dict(os.environ, KVSTORE_DB=os.path.join(d, "db.sqlite3"), PORT="0")
            err = open(os.path.join(d, "stderr"), "w+")
            t0 = time.perf_counter()
            p = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=err, env=env, text=True)
            ok = False
            for line in p.stdout:
                if "listening on" in line:
                    ok = True
                    break
            t1 = time.perf_counter()
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            err.seek(0)
            log = re.sub(r"\x1b\[[0-9;]*m", "", err.read())
            if not ok:
                sys.exit(f"{target} never printed `listening on`:\n{log[-2000:]}")
            m = re.search(r"guest loaded.*?from_cache=(\w+).*?ms=(\d+)", log)
            if i == 0:
                continue  # warm-up (fills the cache)
            times.append((t1 - t0) * 1e3)
            if m:
                loads.append({"from_cache": m.group(1) == "true", "ms": int(m.group(2))})
    rec = dict(kind="ready", target=target, runs_ms=times, median_ms=statistics.median(times), guest_load=loads)
    record(rec)
    print(f"  {target:<28} start-to-ready median {rec['median_ms']:.1f} ms  (runs: {', '.join(f'{t:.1f}' for t in times)})")


# --------------------------------------------------------------- fsync ----

def cmd_fsync(target, n=200):
    """Mean latency of a 4 KiB write + fdatasync in $BENCH_OUT: the disk's state
    right before a target's writes (it varies a lot on this kind of VM)."""
    path = os.path.join(OUT, ".fsync-probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    buf = b"\0" * 4096
    lat = []
    try:
        for i in range(int(n)):
            t0 = time.perf_counter()
            os.pwrite(fd, buf, (i % 64) * 4096)
            os.fdatasync(fd)
            lat.append((time.perf_counter() - t0) * 1e6)
    finally:
        os.close(fd)
        os.unlink(path)
    lat.sort()
    rec = dict(kind="fsync", target=target, mean_us=statistics.mean(lat), p50_us=lat[len(lat) // 2], p99_us=lat[int(len(lat) * 0.99)])
    record(rec)
    print(f"  {target:<28} disk: 4 KiB write+fdatasync mean {rec['mean_us']:.0f} µs, p50 {rec['p50_us']:.0f} µs, p99 {rec['p99_us']:.0f} µs")


# ------------------------------------------------------------- profile ----

# (category, thread-name prefix, pattern anywhere in the stack); first match wins.
PROFILE_RULES = [
    ("reader threads: SQLite file locks (fcntl)", "sidekv-reader", r"fcntl|posix_lock"),
    ("reader threads: SQLite query", "sidekv-reader", r"sqlite3|rusqlite|sidekv::store::reads"),
    ("reader threads: queue wait/wake-ups", "sidekv-reader", r""),
    ("writer thread (SQLite, fsync)", "sidekv-writer", r""),
    # Stacks that do not reach the thread start were cut at JIT (wasm) frames,
    # which perf cannot unwind: those samples ran on the guest's fiber.
    ("guest: wasm code + host calls on the fiber", "tokio", r"^(?![\s\S]*(clone3|start_thread))|wasm\[|trampoline"),
    ("guest: wasmtime call setup/return (host stack)", "tokio", r"wasmtime|sidekv::guest"),
    ("native routing (bench/native handle)", "tokio", r"sidekv_native_bench::handle"),
    ("sidekv::http glue (request/response conversion)", "tokio", r"sidekv::http::(handle|to_http)"),
    ("hyper: socket write", "tokio", r"poll_flush|write_vectored|writev"),
    ("hyper: socket read + parse", "tokio", r"hyper::"),
    ("tokio: scheduler, epoll, park/unpark", "tokio", r"tokio::|mio::"),
    ("other", "", r""),
]


def cmd_profile_summary(label, samples_path, wrk_path, freq, perf_seconds=None):
    """Sort `perf script --no-inline -F comm,ip,sym` samples (DWARF stacks) into
    PROFILE_RULES and print CPU µs per request for each."""
    text = open(samples_path).read()
    samples = [b for b in text.split("\n\n") if b.strip()]
    wrk_text = open(wrk_path).read()
    m = re.search(r"Requests/sec:\s+([\d.]+)", wrk_text)
    rps = float(m.group(1)) if m else None
    rules = [(name, thread, re.compile(pat)) for name, thread, pat in PROFILE_RULES]
    counts = {name: 0 for name, _, _ in rules}
    kernel = {name: 0 for name, _, _ in rules}
    for b in samples:
        lines = b.strip("\n").split("\n")
        comm = lines[0].strip()
        stack = "\n".join(l.strip() for l in lines[1:])
        for name, thread, pat in rules:
            if comm.startswith(thread) and pat.search(stack):
                counts[name] += 1
                if re.match(r"ffffffff", stack):
                    kernel[name] += 1
                break
    total = len(samples)
    secs = float(perf_seconds) if perf_seconds else None
    per_req = (lambda c: c / float(freq) / (rps * secs) * 1e6) if (rps and secs) else None
    print(f"## {label}: {total} samples at {freq} Hz" + (f", {rps:.0f} req/s under perf" if rps else ""))
    print(f"| where | share of server CPU | of which kernel |" + (" CPU µs per request |" if per_req else ""))
    print("|---|---:|---:|" + ("---:|" if per_req else ""))
    for name, _, _ in rules:
        c = counts[name]
        if not c:
            continue
        row = f"| {name} | {c / total * 100:.1f}% | {kernel[name] / c * 100:.0f}% |"
        if per_req:
            row += f" {per_req(c):.1f} |"
        print(row)
    if per_req:
        print(f"| **total** | 100% | {sum(kernel.values()) / total * 100:.0f}% | **{per_req(total):.1f}** |")


# ---------------------------------------------------------------- note ----

def cmd_note(key, *text):
    record(dict(kind="note", key=key, text=" ".join(text)))


def cmd_machine():
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kib = int(f.readline().split()[1])
            mem = f"{kib / 1024 / 1024:.0f} GiB"
    except OSError:
        pass
    wrk_v = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    m = re.search(r"wrk \S*?(\d+\.\d+\.\d+)", wrk_v.stdout + wrk_v.stderr)
    wrk_v = f"wrk {m.group(1)}" if m else "wrk"
    record(dict(kind="machine", nproc=os.cpu_count(), cpu=cpu, kernel=platform.release(), mem=mem,
                date=time.strftime("%Y-%m-%d %H:%M:%S %Z"), wrk=wrk_v))


# -------------------------------------------------------------- report ----

SIDEKV = "sidekv"
NATIVE = "native"
SEED = "seed"
MINIMAL = "minimal"
# "GET" is public reads (no header); "GET auth" sends Authorization on every
# request to servers with public reads off.
WORKLOADS = ("GET", "GET auth", "POST", "MIX")
GETS = ("GET", "GET auth")


# (file in bench/charts, what it shows) for the report's Charts section; bench/plot.py draws them.
CHARTS = [
    ("run.svg", "req/s and p99 per target and workload, median rounds (bench/run.sh)"),
    ("run-cpu.svg", "server CPU per request per target and workload (bench/run.sh)"),
    ("scale.svg", "sidekv req/s and p99 against the number of keys (bench/scale.sh)"),
    ("kvconnect.svg", "KV Connect ops/s and p99, sidekv vs denokv (bench/kvconnect.sh)"),
    ("pg.svg", "sidekv on PostgreSQL vs pgbench (bench/pg.sh)"),
    ("queues.svg", "queue messages/s and latency, sidekv vs Redis Streams vs PostgreSQL (bench/queues.sh)"),
]


def median_run(runs):
    """The run with the median req/s (the lower middle one for an even count)."""
    runs = sorted(runs, key=lambda r: r["rps"])
    return runs[(len(runs) - 1) // 2]


def cmd_report():
    res = load_results()
    machine = next((r for r in res if r["kind"] == "machine"), {})
    notes = [(r["key"], r["text"]) for r in res if r["kind"] == "note"]
    quiet = [r for r in res if r["kind"] == "quiet"]
    runs = {}
    for r in res:
        if r["kind"] == "wrk":
            runs.setdefault((r["target"], r["workload"]), []).append(r)
    wrk = {k: median_run(v) for k, v in runs.items()}
    rss = {r["target"]: r for r in res if r["kind"] == "rss"}
    ready = {r["target"]: r for r in res if r["kind"] == "ready"}
    fsync = {}
    for r in res:
        if r["kind"] == "fsync":
            fsync.setdefault(r["target"], []).append(r)
    targets = []
    for r in res:
        if r["kind"] == "wrk" and r["target"] not in targets:
            targets.append(r["target"])
    any_run = next(iter(wrk.values()), {})
    rounds = max((len(v) for v in runs.values()), default=0)

    def ms(us):
        return f"{us / 1e3:.2f} ms"

    def ratio(a, b):
        return f"{a / b:.2f}×" if a is not None and b else "n/a"

    o = []
    w = o.append
    w("# Benchmarks\n")
    w("Generated by `make bench` (`bench/run.sh`); every number below comes from the same run. "
      "Do not edit by hand: the analysis at the end comes from `bench/analysis.md`, the rest from `bench/bench.py report`.\n")
    w(f"- date: {machine.get('date', '?')}")
    w(f"- machine: {machine.get('nproc', '?')} CPUs (`nproc`), {machine.get('cpu', '?')}, kernel {machine.get('kernel', '?')}, {machine.get('mem', '?')} RAM (a VM)")
    w(f"- load: {machine.get('wrk', 'wrk')}, {any_run.get('threads', 2)} threads, {any_run.get('conns', 32)} connections, "
      f"{any_run.get('seconds', 10)} s per run, keep-alive, `--latency`; wrk runs on the same machine as the server "
      "(they share the cores; nothing is pinned); one load at a time")
    w("- data: 1000 keys with 100-byte values loaded first; GET = a random existing key, no header, on servers with public reads on; "
      "GET auth = the same with `Authorization: <secret>` on every request, on a second server of the same target with public reads off "
      "(an application with private data); POST = a fresh key with a 100-byte body; "
      "MIX = 90% GET / 10% POST of fresh keys (`bench/wrk/kv.lua`)")
    if rounds > 1:
        w(f"- sidekv, native, minimal and seed run side by side (all started, loaded and warmed up, only one under load at a time) "
          f"for {rounds} rounds, in a different order each round; each row is the round with the median req/s, "
          "and the req/s range over the rounds is given")
    w("- server CPU/req: CPU time of the server's processes (all threads; for the seed deno + litestream) over the run ÷ requests. "
      "It is much less disturbed by other work on the machine than req/s (though not immune: contention adds context switches). other load = cores used during the run by "
      "user-space processes that are neither the server nor wrk (other work on this shared machine; kernel threads excluded)")
    w("- targets:")
    w("  - **sidekv**: `target/release/sidekv`, default guest, `KVSTORE_INSTANCE_MODE=reuse`, `KVSTORE_PUBLIC_READS=true`, "
      "local durability, no S3, fresh database")
    w("  - **native**: `bench/native` (`sidekv-native-bench`): the same `Store` and hyper settings, routing and the guest's secret check in Rust, no wasm")
    w("  - **minimal**: `bench/minimal` (`sidekv-minimal-bench`): written independently of sidekv, the least a durable server can do: "
      "hyper HTTP/1.1 with sidekv's settings, a read-only SQLite connection per worker thread, one writer thread that group-commits "
      "(fsync before the answer), the same secret check; no wasm, no metrics, no versionstamps. The physical limit on this machine")
    seed_ran = any(t == SEED for (t, _) in runs)
    w("  - **seed**: the Deno KV + litestream sidecar (`BENCH_SEED_DIR`; Deno KV + litestream replicating to a local moto S3) — "
      + ("measured in this run" if seed_ran else "**SKIPPED in this run** (see the note below)"))
    w("  - **sidekv fresh**: as sidekv with `KVSTORE_INSTANCE_MODE=fresh` (a new pooled instance per request)")
    w("  - **sidekv s3**: as sidekv with `KVSTORE_DURABILITY=s3` (a write is acknowledged once its segment is in S3), local moto")
    w("  - **sidekv local+S3 backup**: as sidekv with S3 backup on (`KVSTORE_S3_URL`) but local durability: the seed's setup")
    for q in quiet:
        if q.get("waited"):
            w(f"\n> **The machine was not quiet** before the runs: {q['busy_cores']:.2f} cores busy with other work "
              f"({', '.join(q['top'][:3])}). Throughput and latency rows are affected; CPU/req much less.")
    for k, v in notes:
        w(f"\n> **{k}**: {v}")
    all_runs = [r for v in runs.values() for r in v if r.get("foreign_cores") is not None]
    if all_runs:
        loads = [r["foreign_cores"] for r in all_runs]
        busy = [r for r in all_runs if r["foreign_cores"] > 0.25]
        names = {}
        for r in busy:
            for t in r.get("foreign_top", [])[:1]:
                n = t.rsplit(" ", 1)[0]
                names[n] = names.get(n, 0) + 1
        w(f"\n> **Conditions**: other processes used {statistics.mean(loads):.2f} cores on average during the {len(all_runs)} "
          f"measured runs (max {max(loads):.2f}); {len(busy)} runs had more than 0.25 cores of other load"
          + (f" (mostly {', '.join(sorted(names, key=lambda k: -names[k])[:3])})" if names else "")
          + ". Rows with a high `other load` understate req/s and overstate latency.")
    w("")

    w("## Charts\n")
    w("Drawn by `bench/plot.py` (`make bench`, after every script has run) from the results each script saves beside its "
      "report (`bench/data/*.jsonl`): the same numbers as the tables.\n")
    missing = []
    for name, alt in CHARTS:
        # A chart is shown once its script has saved results here (committed
        # from an earlier run, or written by this one before plot.py runs);
        # never a link to an image that was never drawn.
        source = name.removesuffix(".svg").removesuffix("-cpu") + ".jsonl"
        if os.path.exists(os.path.join(HERE, "data", source)):
            w(f"![{alt}](bench/charts/{name})\n")
        else:
            missing.append(f"`{name}` (no `bench/data/{source}` yet: run {alt.rsplit('(', 1)[-1].rstrip(')')})")
    if missing:
        w("Not drawn yet: " + "; ".join(missing) + ".\n")

    w("## Throughput and latency\n")
    w("| target | workload | req/s | (range) | p50 | p99 | server CPU/req | req/s vs seed | req/s vs native | req/s vs minimal | p99 vs seed | other load | errors |")
    w("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t in targets:
        for wl in WORKLOADS:
            r = wrk.get((t, wl))
            if not r:
                continue
            all_r = runs[(t, wl)]
            rng = f"{min(x['rps'] for x in all_r):.0f}–{max(x['rps'] for x in all_r):.0f}" if len(all_r) > 1 else ""
            s = wrk.get((SEED, wl))
            n = wrk.get((NATIVE, wl))
            mn = wrk.get((MINIMAL, wl))
            errs = sum(r[k] for k in ("err_connect", "err_read", "err_write", "err_status", "err_timeout"))
            vs_seed = ratio(r["rps"], s["rps"]) if s and t != SEED else "—"
            vs_native = ratio(r["rps"], n["rps"]) if n and t != NATIVE else "—"
            vs_min = ratio(r["rps"], mn["rps"]) if mn and t != MINIMAL else "—"
            p99_seed = ratio(r["p99_us"], s["p99_us"]) if s and t != SEED else "—"
            cpu = f"{r['server_cpu_us_per_req']:.1f} µs" if r.get("server_cpu_us_per_req") else "n/a"
            fc = f"{r['foreign_cores']:.2f}" if r.get("foreign_cores") is not None else "n/a"
            w(f"| {t} | {wl} | {r['rps']:.0f} | {rng} | {ms(r['p50_us'])} | {ms(r['p99_us'])} | {cpu} | {vs_seed} | {vs_native} | {vs_min} | {p99_seed} | {fc} | {errs} |")
    w("")
    if fsync:
        w("Disk state right before each target's POST runs (4 KiB write + fdatasync; POST throughput of every target "
          "depends on it and it varies a lot on this VM): "
          + "; ".join(f"{t} {', '.join('%.0f' % x['mean_us'] for x in v)} µs" for t, v in fsync.items()) + ".\n")

    w("## Memory and start\n")
    w("| target | peak RSS (VmHWM, after all its runs; the public-reads server) | vs seed | vs native |")
    w("|---|---:|---:|---:|")
    for t in rss:
        r = rss[t]
        extra = "".join(f" (+ {k} {v / 1024:.1f} MiB)" for k, v in r.get("helpers", {}).items() if v)
        vs_s = ratio(r["kib"], rss[SEED]["kib"]) if SEED in rss and t != SEED else "—"
        vs_n = ratio(r["kib"], rss[NATIVE]["kib"]) if NATIVE in rss and t != NATIVE else "—"
        w(f"| {t} | {r['kib'] / 1024:.1f} MiB{extra} | {vs_s} | {vs_n} |")
    w("")
    for t, r in ready.items():
        loads = ", ".join(f"{g['ms']} ms{'' if g['from_cache'] else ' (compiled)'}" for g in r["guest_load"])
        w(f"Start-to-ready of **{t}** (spawn → `listening on` line, empty database, warm compiled-guest cache; "
          f"median of {len(r['runs_ms'])}): **{r['median_ms']:.1f} ms** (runs: {', '.join(f'{x:.1f}' for x in r['runs_ms'])} ms; "
          f"guest load as logged: {loads or 'n/a'}).\n")

    breakdown = [(t, wl, wrk[(t, wl)]) for t in targets for wl in WORKLOADS
                 if (t, wl) in wrk and wrk[(t, wl)].get("server_request_mean_us") is not None]
    if breakdown:
        w("## Server-side view (sidekv's own metrics over each median run)\n")
        w("Mean time from request head to response head as the server measures it (`sidekv_request_duration_seconds`; "
          "the native baseline records the same histogram), the part of it spent inside the guest's `handle` "
          "(host `kv` calls included), and writes per group commit (one fsync each).\n")
        w("| target | workload | server mean | guest call mean | writes per commit |")
        w("|---|---|---:|---:|---:|")
        for t, wl, r in breakdown:
            g = r.get("server_guest_mean_us")
            b = r.get("writes_per_commit")
            w(f"| {t} | {wl} | {r['server_request_mean_us']:.0f} µs | {'%.0f µs' % g if g is not None else '—'} | {'%.1f' % b if b else '—'} |")
        w("")

    # ---- targets ----
    w("## Targets\n")
    w("The verdict uses the median rounds; the last column gives the same ratio from each target's best round "
      "(highest req/s, lowest p99), the figure least disturbed by other work on the machine.\n")
    w("| goal | measured | holds? | margin | best rounds |")
    w("|---|---|:---:|---|---:|")

    def goal(name, value, want, ok, fmt, higher_better=True, best=None):
        if value is None:
            w(f"| {name} | n/a | n/a | not measured in this run | |")
            return
        if higher_better:
            margin = f"+{(value / want - 1) * 100:.0f}% over the goal" if ok else f"misses by {(1 - value / want) * 100:.0f}% (needs {fmt(want)})"
        else:
            margin = f"{(1 - value / want) * 100:.0f}% headroom" if ok else f"misses: {(value / want - 1) * 100:.0f}% over the goal ({fmt(want)})"
        w(f"| {name} | {fmt(value)} | {'yes' if ok else '**no**'} | {margin} | {fmt(best) if best is not None else ''} |")

    def get(t, wl, k):
        r = wrk.get((t, wl))
        return r[k] if r else None

    def best(t, wl, k):
        rs = runs.get((t, wl))
        if not rs:
            return None
        return max(x[k] for x in rs) if k == "rps" else min(x[k] for x in rs)

    def rel(a, b):
        return a / b if a is not None and b else None

    fx = lambda v: f"{v:.2f}×"
    for wl, seed_x in (("GET", 3.0), ("POST", 8.0)):
        v = rel(get(SIDEKV, wl, "rps"), get(SEED, wl, "rps"))
        goal(f"{wl} req/s ≥ {seed_x:g}× seed", v, seed_x, v is not None and v >= seed_x, fx,
             best=rel(best(SIDEKV, wl, "rps"), best(SEED, wl, "rps")))
    # Issues 15 and 26: the guest path within 10% of native (both GET shapes);
    # issue 26: GETs within 20% of the minimal independent server.
    for wl in WORKLOADS:
        v = rel(get(SIDEKV, wl, "rps"), get(NATIVE, wl, "rps"))
        goal(f"{wl} req/s ≥ 0.90× native", v, 0.90, v is not None and v >= 0.90, fx,
             best=rel(best(SIDEKV, wl, "rps"), best(NATIVE, wl, "rps")))
    for wl in GETS:
        v = rel(get(SIDEKV, wl, "rps"), get(MINIMAL, wl, "rps"))
        goal(f"{wl} req/s ≥ 0.80× minimal", v, 0.80, v is not None and v >= 0.80, fx,
             best=rel(best(SIDEKV, wl, "rps"), best(MINIMAL, wl, "rps")))
    v = rel(get("sidekv fresh", "GET", "rps"), get(NATIVE, "GET", "rps"))
    goal("fresh-mode GET req/s ≥ 0.5× native GET", v, 0.5, v is not None and v >= 0.5, fx)
    v = rel(get(SIDEKV, "GET", "p99_us"), get(SEED, "GET", "p99_us"))
    goal("GET p99 ≤ seed GET p99", v, 1.0, v is not None and v <= 1.0, fx, higher_better=False,
         best=rel(best(SIDEKV, "GET", "p99_us"), best(SEED, "GET", "p99_us")))
    for wl in ("GET", "POST", "MIX"):  # the seed is measured on public reads only
        v = rel(get(SIDEKV, wl, "p99_us"), get(SEED, wl, "p99_us"))
        goal(f"{wl} p99 ≤ ½ seed p99", v, 0.5, v is not None and v <= 0.5, fx, higher_better=False,
             best=rel(best(SIDEKV, wl, "p99_us"), best(SEED, wl, "p99_us")))
    v = rel(get("sidekv s3", "POST", "rps"), get(SEED, "POST", "rps"))
    goal("s3-mode POST req/s ≥ seed POST req/s", v, 1.0, v is not None and v >= 1.0, fx,
         best=rel(best("sidekv s3", "POST", "rps"), best(SEED, "POST", "rps")))
    mib = rss[SIDEKV]["kib"] / 1024 if SIDEKV in rss else None
    goal("sidekv peak RSS ≤ 64 MiB", mib, 64.0, mib is not None and mib <= 64, lambda x: f"{x:.1f} MiB", higher_better=False)
    st = ready[SIDEKV]["median_ms"] if SIDEKV in ready else None
    goal("start-to-ready ≤ 100 ms", st, 100.0, st is not None and st <= 100, lambda x: f"{x:.1f} ms", higher_better=False)
    w("")
    for wl in ("GET", "GET auth", "POST"):
        a, n = get(SIDEKV, wl, "server_cpu_us_per_req"), get(NATIVE, wl, "server_cpu_us_per_req")
        ab = min((x["server_cpu_us_per_req"] for x in runs.get((SIDEKV, wl), []) if x.get("server_cpu_us_per_req")), default=None)
        nb = min((x["server_cpu_us_per_req"] for x in runs.get((NATIVE, wl), []) if x.get("server_cpu_us_per_req")), default=None)
        m = get(MINIMAL, wl, "server_cpu_us_per_req")
        if a and n and ab and nb:
            w(f"- {wl} efficiency: sidekv spends {a:.1f} µs of server CPU per request, native {n:.1f} µs (median rounds; "
              f"least-disturbed rounds: {ab:.1f} vs {nb:.1f} µs). native/sidekv = {n / a:.2f} ({nb / ab:.2f}): the req/s ratio "
              "sidekv would reach if server CPU were the only limit."
              + (f" minimal spends {m:.1f} µs (minimal/sidekv = {m / a:.2f})." if m else ""))
    w("")
    w("Guest share of server CPU per request: 1 − native ÷ sidekv server CPU per request (median rounds). Both run the "
      "same store, writer and hyper settings, so the difference is what the wasm guest path costs: taking an instance, "
      "lifting and lowering the request and response, the guest's own code and its `kv` calls' glue "
      "(`bench/profile.sh` splits it further).\n")
    w("| workload | sidekv CPU/req | native CPU/req | minimal CPU/req | guest share |")
    w("|---|---:|---:|---:|---:|")
    for wl in WORKLOADS:
        a, n = get(SIDEKV, wl, "server_cpu_us_per_req"), get(NATIVE, wl, "server_cpu_us_per_req")
        m = get(MINIMAL, wl, "server_cpu_us_per_req")
        if a and n:
            w(f"| {wl} | {a:.1f} µs | {n:.1f} µs | {'%.1f µs' % m if m else 'n/a'} | {max(0.0, 1 - n / a) * 100:.0f}% |")
    w("")

    analysis = os.path.join(HERE, "analysis.md")
    if os.path.exists(analysis):
        with open(analysis) as f:
            w(f.read().rstrip() + "\n")
    for extra in ("scale.md", "restore.md", "instances.md"):  # bench/scale.sh; `make bench-restore`; bench/instances.sh
        path = os.path.join(HERE, extra)
        if os.path.exists(path):
            with open(path) as f:
                text = f.read().rstrip()
            if extra == "scale.md":  # a whole document of its own: one heading level down
                text = "\n".join("#" + l if l.startswith("#") else l for l in text.splitlines())
                text = text.replace("](charts/", "](bench/charts/")  # its links are relative to bench/
            w(text + "\n")
    print("\n".join(o))


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    cmd, args = sys.argv[1], sys.argv[2:]
    {
        "load": cmd_load,
        "wrk": cmd_wrk,
        "rss": cmd_rss,
        "ready": cmd_ready,
        "note": cmd_note,
        "quiet": cmd_quiet,
        "fsync": cmd_fsync,
        "profile-summary": cmd_profile_summary,
        "machine": cmd_machine,
        "report": cmd_report,
    }[cmd](*args)


if __name__ == "__main__":
    main()
