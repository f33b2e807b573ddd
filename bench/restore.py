#!/usr/bin/env python3
"""Restore benchmark (called by bench/restore.sh, `make bench-restore`).

Restore time for 100k keys x 1 KiB from S3: sidekv (`sidekv restore --to`,
and restore at launch) next to `litestream restore` of the seed system
(Deno KV + litestream) holding the same data, all against one local moto S3
server, in one run -> bench/restore.md.

  1. moto S3 on $RESTORE_PORT_BASE+2; bucket created with an unsigned PUT
  2. loads, each through a server that is then stopped with SIGTERM (which
     drains sidekv's outbox to S3):
     a. sidekv, default settings, through POST /_atomic (1000 mutations per
        batch): segments, plus a snapshot if KVSTORE_SNAPSHOT_BYTES was
        crossed during the load
     b. only if (a) stored a snapshot: the same with KVSTORE_SNAPSHOT_BYTES
        raised, so that the segments-only path is measured too
     c. the same as (a) into another prefix, then `sidekv snapshot` with the
        server stopped: the snapshot path
     d. the seed system (its own run.sh) through POST /:key with 32
        connections; wait until litestream's objects stop changing; stop it
  3. RUNS interleaved rounds of: `sidekv restore --to NEW` and a sidekv
     launch with a missing KVSTORE_DB (spawn -> `listening on`) for each of
     a-c, and `litestream restore -o NEW` for d; then RUNS launches of the
     seed with its database deleted (run.sh -> first HTTP answer), last,
     because a relaunched litestream replicates again
  Every restored file is opened with Python's sqlite3 and every row compared
  with the loaded data. MB downloaded = sizes of the objects the restoring
  process GETs (moto's access log x the bucket listing).

Standard library only (plus bench/bench.py for CPU accounting).
"""

import base64
import http.client
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import bench  # noqa: E402  (CPU accounting helpers)

KEYS = int(os.environ.get("RESTORE_KEYS", "100000"))
VALUE_BYTES = int(os.environ.get("RESTORE_VALUE_BYTES", "1024"))
RUNS = int(os.environ.get("RESTORE_RUNS", "5"))
WARMUP = int(os.environ.get("RESTORE_WARMUP", "1"))  # unmeasured rounds first
BATCH = 1000
SEED_CONNS = int(os.environ.get("RESTORE_SEED_CONNS", "32"))
BASE = int(os.environ.get("RESTORE_PORT_BASE", "18790"))
P_SIDEKV, P_SEED, P_S3 = BASE, BASE + 1, BASE + 2
OUT = os.environ.get("RESTORE_OUT", os.path.join(ROOT, "bench", "out", "restore"))
REPORT = os.environ.get("RESTORE_REPORT", os.path.join(HERE, "restore.md"))
# The seed system (docs/background.md): beside this checkout unless BENCH_SEED_DIR says otherwise.
SEED_DIR = os.environ.get("BENCH_SEED_DIR", os.path.join(ROOT, "..", "shared", "peers", "seed-deno"))
SECRET = "restorebench"
BUCKET = "sidekv-restore"
SEED_BUCKET = "seedkv"  # fixed by the seed's run.sh
S3 = f"http://127.0.0.1:{P_S3}"

ANSI = re.compile(r"\x1b\[[0-9;]*m")
started_procs = []  # Popen objects (and ("pgid", n)) to stop at exit
results = {"notes": [], "loads": []}


def say(msg):
    print(f"== {msg}", flush=True)


def log(msg):
    print(f"   {msg}", flush=True)


# ---------------------------------------------------------------- data ----

def make_data():
    """KEYS deterministic values: VALUE_BYTES of base64 text (the seed stores
    text bodies, so both systems get exactly the same printable bytes)."""
    rng = random.Random(20261125)
    raw_len = (VALUE_BYTES * 3 + 3) // 4
    keys = [f"k{i:06d}" for i in range(KEYS)]
    values = [base64.b64encode(rng.randbytes(raw_len))[:VALUE_BYTES] for _ in range(KEYS)]
    return keys, values


# ------------------------------------------------------------------ S3 ----

def s3_put_bucket(name):
    req = urllib.request.Request(f"{S3}/{name}", method="PUT")
    urllib.request.urlopen(req, timeout=10).read()


def s3_list(bucket, prefix=""):
    """{key: size} under prefix (unsigned ListObjectsV2 against moto)."""
    out, token = {}, None
    while True:
        q = {"list-type": "2", "prefix": prefix}
        if token:
            q["continuation-token"] = token
        body = urllib.request.urlopen(f"{S3}/{bucket}?{urllib.parse.urlencode(q)}", timeout=30).read()
        root = ET.fromstring(body)
        ns = root.tag.split("}")[0] + "}" if root.tag.startswith("{") else ""
        for c in root.findall(f"{ns}Contents"):
            out[c.find(f"{ns}Key").text] = int(c.find(f"{ns}Size").text)
        if (root.findtext(f"{ns}IsTruncated") or "false").lower() != "true":
            return out
        token = root.findtext(f"{ns}NextContinuationToken")


class MotoLog:
    """Object GETs seen in moto's access log since `mark()`."""

    GET = re.compile(r'"GET (\S+) HTTP/[\d.]+" (\d{3})')

    def __init__(self, path):
        self.path, self.pos = path, 0

    def mark(self):
        self.pos = os.path.getsize(self.path)

    def downloaded(self, bucket, objects):
        """(bytes, GET count) of objects (key -> size) fetched since mark()."""
        time.sleep(0.3)  # let moto write its last lines
        with open(self.path, "rb") as f:
            f.seek(self.pos)
            text = ANSI.sub("", f.read().decode("utf-8", "replace"))
        total = n = 0
        for m in self.GET.finditer(text):
            if m.group(2) not in ("200", "206"):
                continue
            path = urllib.parse.unquote(m.group(1).split("?", 1)[0]).lstrip("/")
            key = path[len(bucket) + 1:] if path.startswith(bucket + "/") else path
            if key in objects:
                total += objects[key]
                n += 1
        return total, n


# ------------------------------------------------------------ processes ----

def wait_line(proc, logf, pattern, timeout):
    """Copy proc's merged output to logf until a line contains `pattern`;
    returns the perf_counter time of that line (None: exited / timed out).
    Keeps draining in a thread afterwards."""
    found = threading.Event()
    at = []

    def pump():
        for line in iter(proc.stdout.readline, b""):
            t = time.perf_counter()
            logf.write(line)
            logf.flush()
            if not found.is_set() and pattern.encode() in line:
                at.append(t)
                found.set()
        found.set()

    threading.Thread(target=pump, daemon=True).start()
    found.wait(timeout)
    return at[0] if at else None


def stop(proc, timeout=60):
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def stop_group(pgid, timeout=30):
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def cleanup():
    for p in reversed(started_procs):
        try:
            if isinstance(p, tuple):
                stop_group(p[1], 10)
            else:
                stop(p, 10)
        except Exception:
            pass


def timed_run(cmd, env, logpath, exclude=()):
    """Run cmd to completion: (wall s, CPU s, peak RSS KiB, exit code, other cores)."""
    snap0 = bench.snapshot_procs()
    with open(logpath, "wb") as logf:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    other = foreign_cores(snap0, bench.snapshot_procs(), wall, set(exclude) | {p.pid})
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss, p.returncode, other


def foreign_cores(before, after, wall, exclude):
    user, _, top = bench.foreign_usage(before, after, exclude)
    return user / wall if wall > 0 else 0.0, [f"{n} {c:.1f}s" for n, c in top]


# -------------------------------------------------------------- verify ----

def verify_sidekv(db, keys, values):
    c = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    want = dict(zip(keys, values))
    rows = good = 0
    for k, v in c.execute("SELECT key, value FROM kv"):
        rows += 1
        k = k.decode() if isinstance(k, bytes) else k
        good += want.get(k) == bytes(v)
    counter = c.execute("SELECT value FROM meta WHERE name = 'counter'").fetchone()
    c.close()
    return rows, good, counter[0] if counter else None


def deno_key(blob):
    """Deno KV key ["k000001"] is 0x02 + bytes (0x00 escaped as 00 ff) + 0x00."""
    b = bytes(blob)
    if len(b) >= 2 and b[0] == 0x02 and b[-1] == 0x00:
        return b[1:-1].replace(b"\x00\xff", b"\x00").decode("utf-8", "replace")
    return None


def verify_seed(db, keys, values):
    """Rows of Deno KV's `kv` table; a value is good when its V8-serialized
    one-byte string holds exactly the loaded text."""
    c = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    want = dict(zip(keys, values))
    rows = good = 0
    for k, v in c.execute("SELECT k, v FROM kv"):
        rows += 1
        exp = want.get(deno_key(k))
        v = bytes(v)
        good += exp is not None and v.endswith(exp) and len(v) - len(exp) <= 8
    c.close()
    return rows, good


# -------------------------------------------------------------- sidekv ----

def sidekv_env(prefix, db, extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KVSTORE_", "AWS_", "LITESTREAM_"))}
    env.update(
        PORT=str(P_SIDEKV), HOST="127.0.0.1", KVSTORE_DB=db, KVSTORE_SECRET=SECRET,
        KVSTORE_S3_URL=f"s3://{BUCKET}/{prefix}", KVSTORE_CACHE_DIR=os.path.join(OUT, "cache"),
        AWS_ENDPOINT_URL=S3, AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_REGION="us-east-1",
    )
    env.update(extra or {})
    return env


def start_sidekv(bin_, env, logpath):
    logf = open(logpath, "wb")
    t0 = time.perf_counter()
    p = subprocess.Popen([bin_], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    started_procs.append(p)
    t = wait_line(p, logf, "listening on", 600)
    if t is None:
        stop(p)
        sys.exit(f"sidekv did not start; see {logpath}")
    return p, t - t0


def load_sidekv(keys, values):
    conn = http.client.HTTPConnection("127.0.0.1", P_SIDEKV, timeout=120)
    t0 = time.perf_counter()
    for i in range(0, len(keys), BATCH):
        muts = [{"type": "set", "key": k, "value": base64.b64encode(v).decode()}
                for k, v in zip(keys[i:i + BATCH], values[i:i + BATCH])]
        conn.request("POST", "/_atomic", body=json.dumps({"mutations": muts}),
                     headers={"Authorization": SECRET, "Content-Type": "application/json"})
        r = conn.getresponse()
        body = r.read()
        if r.status != 200:
            sys.exit(f"POST /_atomic batch {i // BATCH}: {r.status} {body[:300]!r}")
    conn.close()
    return time.perf_counter() - t0


def dbstat(db):
    """(bytes of pages, payload bytes) of the `kv` table, from SQLite's dbstat
    virtual table (None when this sqlite3 build lacks it)."""
    try:
        c = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        pages, payload = c.execute("SELECT sum(pgsize), sum(payload) FROM dbstat WHERE name = 'kv'").fetchone()
        c.close()
        return pages, payload
    except sqlite3.Error:
        return None


def remove_db(db):
    """Delete a verified restore right away: every run then writes into memory the
    kernel has just freed. (On this VM, first-touch of never-used memory costs about
    1 s of extra system time per 460 MB restore, which made the first runs bimodal.)"""
    for ext in ("", "-wal", "-shm"):
        if os.path.exists(db + ext):
            os.remove(db + ext)


def runlabel(i):
    return "warm-up" if i < 0 else f"run {i + 1}"


def file_size(db):
    return sum(os.path.getsize(db + ext) for ext in ("", "-wal") if os.path.exists(db + ext))


def plural(n, word):
    return f"{n} {word}{'' if n == 1 else 's'}"


def sidekv_load(ctx, label, prefix, extra_env=None):
    """Load the data into s3://BUCKET/prefix through a server, SIGTERM it."""
    db = os.path.join(OUT, f"{prefix}.sqlite3")
    say(f"sidekv [{label}]: load {KEYS} keys x {VALUE_BYTES} B into s3://{BUCKET}/{prefix}")
    logpath = os.path.join(OUT, f"{prefix}-load.log")
    p, _ = start_sidekv(ctx.bin, sidekv_env(prefix, db, extra_env), logpath)
    secs = load_sidekv(ctx.keys, ctx.values)
    log(f"loaded in {secs:.1f} s ({KEYS / secs:.0f} keys/s)")
    t0 = time.perf_counter()
    rc = stop(p, 120)
    drain = time.perf_counter() - t0
    text = ANSI.sub("", open(logpath, errors="replace").read())
    drained = re.findall(r"outbox drained to S3.*", text)
    snaps = re.findall(r"snapshot stored.*", text)
    log(f"SIGTERM -> exit {rc} in {drain:.1f} s; {drained[-1] if drained else 'NO drain line: see ' + logpath}")
    for line in snaps:
        log(f"during the load: {line}")
    lost = re.findall(r"snapshot failed.*", text)
    for line in lost:
        log(f"at shutdown: {line}")
    if lost:
        closed = re.search(r"^(\S+) .*store closed", text, re.M)
        failed = re.search(r"^(\S+) .*snapshot failed", text, re.M)
        ctx.results["notes"].append(
            f"sidekv [{label}]: the server began a snapshot on its own (shipped bytes crossed `KVSTORE_SNAPSHOT_BYTES`) "
            f"shortly before the SIGTERM and the shutdown did not stop it: the store closed at "
            f"{closed.group(1)[11:23] if closed else '?'}, the process stayed up until the snapshot's work ended at "
            f"{failed.group(1)[11:23] if failed else '?'} with `{lost[-1].strip()}`, and exited only then "
            f"(SIGTERM → exit {drain:.1f} s); no snapshot reached S3 from that server")
    ctx.results["loads"].append(dict(system="sidekv", label=label, seconds=secs, shutdown_s=drain, exit=rc))
    if rc != 0 or not drained:
        ctx.results["notes"].append(f"sidekv [{label}] shutdown: exit {rc}, drain line {'present' if drained else 'MISSING'}")
    return db


def sidekv_case(ctx, label, tag, prefix, db):
    """What S3 holds under prefix, as a case to restore RUNS times (CLI and launch)."""
    objs = s3_list(BUCKET, prefix + "/")
    segs = {k: v for k, v in objs.items() if k.startswith(f"{prefix}/segments/")}
    snaps = {k: v for k, v in objs.items() if k.startswith(f"{prefix}/snapshots/")}
    held = f"{plural(len(segs), 'segment')} ({sum(segs.values()) / 1e6:.1f} MB)"
    if snaps:
        held += f" + {plural(len(snaps), 'snapshot')} ({sum(snaps.values()) / 1e6:.1f} MB)"
    log(f"S3 holds {held}")
    base = dict(system="sidekv", case=label, tag=tag, prefix=prefix, db=db, objs=objs, held=held,
                segments=len(segs), snapshots=len(snaps), stored=sum(objs.values()))
    return [dict(base, how="cli", path="`sidekv restore --to NEW`", runs=[]),
            dict(base, how="launch", path="restore at launch (missing `KVSTORE_DB` → `listening on`)", runs=[])]


def sidekv_restore(ctx, c, i):
    to = os.path.join(OUT, f"{c['tag']}-{c['how']}-{i}.sqlite3")
    logpath = os.path.join(OUT, f"{c['tag']}-{c['how']}-{i}.log")
    ctx.moto.mark()
    if c["how"] == "cli":
        wall, cpu, rss, rc, other = timed_run([ctx.bin, "restore", "--to", to], sidekv_env(c["prefix"], c["db"]), logpath,
                                              exclude={ctx.moto_pid})
        if rc != 0:
            sys.exit(f"sidekv restore failed (exit {rc}); see {logpath}")
    else:
        snap0 = bench.snapshot_procs()
        p, wall = start_sidekv(ctx.bin, sidekv_env(c["prefix"], to), logpath)
        cpu = bench.proc_cpu_s([p.pid])
        rss = bench.vm_hwm_kib(p.pid)
        other = foreign_cores(snap0, bench.snapshot_procs(), wall, {ctx.moto_pid, p.pid})
        stop(p, 60)
    got, gets = ctx.moto.downloaded(BUCKET, c["objs"])
    text = ANSI.sub("", open(logpath, errors="replace").read())
    m = re.search(r"restore complete.*?segments=(\d+).*?bytes=(\d+) ms=(\d+)", text)
    rows, good, _ = verify_sidekv(to, ctx.keys, ctx.values)
    if i == 0:
        c["dbstat"] = dbstat(to)
    run = dict(wall=wall, cpu=cpu, rss_kib=rss, downloaded=got, gets=gets, rows=rows, good=good, file_bytes=file_size(to),
               logged_bytes=int(m.group(2)) if m else None, logged_ms=int(m.group(3)) if m else None,
               segments_applied=int(m.group(1)) if m else None, other=other[0], other_top=other[1])
    log(f"sidekv {c['case']:<24} {c['how']:6} {runlabel(i)}: {wall:.2f} s wall, {cpu:.2f} s CPU, peak RSS {rss / 1024:.0f} MiB, "
        f"{got / 1e6:.1f} MB in {gets} GETs (logged: {m.group(2) if m else '?'} B, {m.group(3) if m else '?'} ms, "
        f"{m.group(1) if m else '?'} segments applied); rows {rows}, values ok {good}; other load {other[0]:.2f} cores")
    remove_db(to)
    return run


# ---------------------------------------------------------------- seed ----

def seed_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KVSTORE_", "AWS_", "LITESTREAM_"))}
    env.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test",
               LITESTREAM_ACCESS_KEY_ID="test", LITESTREAM_SECRET_ACCESS_KEY="test")
    env.pop("AWS_CA_BUNDLE", None)  # litestream: "unable to add custom RootCAs" (seed README)
    return env


def start_seed(seed_dir):
    """The seed's own run.sh (moto already up on P_S3, so it reuses it).
    Returns (deno pid = its process group, seconds until run.sh saw it answer)."""
    env = seed_env()
    env["KVSTORE_SECRET"] = SECRET
    t0 = time.perf_counter()
    r = subprocess.run([os.path.join(SEED_DIR, "run.sh"), seed_dir, str(P_SEED), str(P_S3)], env=env,
                       capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - t0
    m = re.search(r"^deno (\d+)$", r.stdout, re.M)
    if m:
        started_procs.append(("pgid", int(m.group(1))))
    if r.returncode != 0 or not m:
        sys.exit(f"seed run.sh failed ({r.returncode}): {r.stdout[-500:]} {r.stderr[-500:]}")
    return int(m.group(1)), wall


def group_pids(pgid):
    out = subprocess.run(["ps", "-o", "pid=", "-g", str(pgid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def load_seed(keys, values):
    bad = []
    lock = threading.Lock()

    def worker(t):
        conn = http.client.HTTPConnection("127.0.0.1", P_SEED, timeout=60)
        for i in range(t, len(keys), SEED_CONNS):
            for attempt in range(3):
                try:
                    conn.request("POST", "/" + keys[i], body=values[i],
                                 headers={"Authorization": SECRET, "Content-Type": "text/plain"})
                    r = conn.getresponse()
                    r.read()
                    if r.status == 200:
                        break
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", P_SEED, timeout=60)
            else:
                with lock:
                    bad.append(keys[i])
        conn.close()

    t0 = time.perf_counter()
    ts = [threading.Thread(target=worker, args=(t,)) for t in range(SEED_CONNS)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return time.perf_counter() - t0, bad


def wait_stable(bucket, prefix, quiet_s=3.0, max_s=90.0):
    """Wait until the objects under prefix stop changing for quiet_s."""
    t0 = time.perf_counter()
    last, since = None, time.perf_counter()
    while time.perf_counter() - t0 < max_s:
        cur = s3_list(bucket, prefix)
        if cur != last:
            last, since = cur, time.perf_counter()
        elif time.perf_counter() - since >= quiet_s:
            return cur, time.perf_counter() - t0
        time.sleep(0.5)
    return last, time.perf_counter() - t0


def seed_load(ctx):
    """Start the seed, load the data, let litestream settle, stop it: the seed's cases."""
    seed_dir = os.path.join(OUT, "seed")
    os.makedirs(seed_dir, exist_ok=True)
    shared_venv = os.path.join(ROOT, "bench", "out", "seed", "venv")
    if os.path.exists(os.path.join(shared_venv, "bin", "deno")) and not os.path.exists(os.path.join(seed_dir, "venv")):
        os.symlink(shared_venv, os.path.join(seed_dir, "venv"))  # reuse `make bench`'s install of deno + litestream

    say(f"seed: start (its run.sh), load {KEYS} keys x {VALUE_BYTES} B with {SEED_CONNS} connections")
    pgid, _ = start_seed(seed_dir)
    secs, bad = load_seed(ctx.keys, ctx.values)
    log(f"loaded in {secs:.1f} s ({KEYS / secs:.0f} POST/s); {len(bad)} failed writes")
    objs, waited = wait_stable(SEED_BUCKET, "kv.sqlite3/")
    log(f"litestream's objects stable {waited:.1f} s after the load: {len(objs)} objects, {sum(objs.values()) / 1e6:.1f} MB")
    t0 = time.perf_counter()
    stop_group(pgid)
    log(f"stopped deno + litestream (process group {pgid}) in {time.perf_counter() - t0:.1f} s")
    local = os.path.join(seed_dir, "kv.sqlite3")
    local_rows, local_good = verify_seed(local, ctx.keys, ctx.values)
    log(f"the seed's own database holds {local_rows} rows ({local_good} values ok)")
    ctx.results["loads"].append(dict(system="seed", label="load", seconds=secs, failed=len(bad), wait_s=waited,
                                     local_rows=local_rows, local_good=local_good))
    objs = s3_list(SEED_BUCKET, "kv.sqlite3/")
    levels = {}
    for k, v in objs.items():
        parts = k.split("/")
        lvl = parts[-2]
        n, b = levels.get(lvl, (0, 0))
        levels[lvl] = (n + 1, b + v)
    held = f"{plural(len(objs), 'LTX file')} ({sum(objs.values()) / 1e6:.1f} MB: " + ", ".join(
        f"L{int(l) if l.isdigit() else l} {n}× {b / 1e6:.1f} MB" for l, (n, b) in sorted(levels.items())) + ")"
    log(f"S3 holds {held}")
    base = dict(system="seed", case="litestream", seed_dir=seed_dir, local=local, objs=objs, held=held,
                stored=sum(objs.values()), levels={k: list(v) for k, v in levels.items()},
                litestream=os.path.join(seed_dir, "venv", "bin", "litestream"),
                replica=f"s3://{SEED_BUCKET}.localhost:{P_S3}/kv.sqlite3")
    return [dict(base, how="cli", path="`litestream restore -o NEW`", runs=[]),
            dict(base, how="launch", path="restore at launch (`run.sh` with the database deleted → first HTTP answer)",
                 runs=[])]


def seed_cli(ctx, c, i):
    to = os.path.join(OUT, f"seed-cli-{i}.sqlite3")
    logpath = os.path.join(OUT, f"seed-cli-{i}.log")
    ctx.moto.mark()
    wall, cpu, rss, rc, other = timed_run([c["litestream"], "restore", "-o", to, c["replica"]], seed_env(), logpath,
                                          exclude={ctx.moto_pid})
    if rc != 0:
        sys.exit(f"litestream restore failed (exit {rc}); see {logpath}")
    got, gets = ctx.moto.downloaded(SEED_BUCKET, c["objs"])
    rows, good = verify_seed(to, ctx.keys, ctx.values)
    size = file_size(to)
    if i == 0:
        c["dbstat"] = dbstat(to)
    log(f"seed   {c['case']:<24} cli    {runlabel(i)}: {wall:.2f} s wall, {cpu:.2f} s CPU, peak RSS {rss / 1024:.0f} MiB, "
        f"{got / 1e6:.1f} MB in {gets} GETs; rows {rows}, values ok {good}; other load {other[0]:.2f} cores")
    remove_db(to)
    return dict(wall=wall, cpu=cpu, rss_kib=rss, downloaded=got, gets=gets, rows=rows, good=good, file_bytes=size,
                other=other[0], other_top=other[1])


def seed_launch(ctx, c, i):
    """server.ts runs `litestream restore -if-replica-exists` before opening the
    database; the relaunched litestream then replicates again (it may write new
    objects), so these runs come after every other restore."""
    for ext in ("", "-wal", "-shm"):
        if os.path.exists(c["local"] + ext):
            os.remove(c["local"] + ext)
    ctx.moto.mark()
    snap0 = bench.snapshot_procs()
    pgid, wall = start_seed(c["seed_dir"])
    pids = group_pids(pgid)
    other = foreign_cores(snap0, bench.snapshot_procs(), wall, set(pids) | {ctx.moto_pid})
    got, gets = ctx.moto.downloaded(SEED_BUCKET, c["objs"])
    stop_group(pgid)
    rows, good = verify_seed(c["local"], ctx.keys, ctx.values)
    deno_log = open(os.path.join(c["seed_dir"], "deno.log"), errors="replace").read()
    rline = re.findall(r"^restore: .*", deno_log, re.M)
    log(f"seed   {c['case']:<24} launch run {i + 1}: {wall:.2f} s (run.sh start -> first HTTP answer), {got / 1e6:.1f} MB "
        f"in {gets} GETs; rows {rows}, values ok {good}; other load {other[0]:.2f} cores; deno.log: "
        f"{rline[-1] if rline else '?'}")
    return dict(wall=wall, cpu=None, rss_kib=None, downloaded=got, gets=gets, rows=rows, good=good,
                file_bytes=file_size(c["local"]), other=other[0], other_top=other[1])


def wait_quiet(max_s, threshold=0.3):
    """Wait up to max_s for other work on the machine to drop below threshold cores."""
    deadline = time.time() + max_s
    while True:
        b0, t0 = bench.machine_busy_s()[0], time.perf_counter()
        time.sleep(1.0)
        busy = (bench.machine_busy_s()[0] - b0) / (time.perf_counter() - t0)
        if busy < threshold or time.time() > deadline:
            return busy


# -------------------------------------------------------------- report ----

def machine():
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem = f"{int(f.readline().split()[1]) / 1024 / 1024:.0f} GiB"
    return dict(nproc=os.cpu_count(), cpu=cpu, kernel=os.uname().release, mem=mem)


def version(cmd):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=seed_env())
        return (r.stdout + r.stderr).strip().splitlines()[0]
    except Exception:
        return "?"


def report(meta, cases, results):
    o = []
    w = o.append
    w(f"## Restore from S3: {KEYS // 1000}k keys × {VALUE_BYTES} B\n")
    w("Generated by `make bench-restore` (`bench/restore.sh` → `bench/restore.py`), a separate run from the tables above; "
      "do not edit by hand.\n")
    w(f"- date: {meta['date']} (the whole run took {meta['total_s']:.0f} s)")
    m = meta["machine"]
    w(f"- machine: {m['nproc']} CPUs (`nproc`), {m['cpu']}, kernel {m['kernel']}, {m['mem']} RAM (a shared VM); "
      f"S3 = one local moto server ({meta['moto']}) on loopback for both systems, so there is no network cost here: "
      "these numbers are CPU, local disk and the S3 server's per-request cost")
    w(f"- sidekv: {meta['sidekv']}; seed: the Deno KV + litestream system (`BENCH_SEED_DIR`, its `run.sh`), {meta['litestream']}, Deno {meta['deno']}")
    w(f"- data: {KEYS:,} keys `k000000`…, each value {VALUE_BYTES} bytes of base64 text from a fixed random seed (the same "
      "bytes in both systems; text because the seed stores POST bodies as strings). sidekv loaded through `POST /_atomic` "
      f"({BATCH} mutations per batch; local durability, S3 backup on), then SIGTERM (drains the outbox to S3); the seed "
      f"through `POST /:key` ({SEED_CONNS} connections), then stopped once litestream's objects had not changed for 3 s")
    w(f"- seconds: wall time, median of {RUNS} runs (range in brackets); the restore commands and sidekv's launches ran in "
      f"interleaved rounds (a shuffled order each round, after {WARMUP} unmeasured warm-up round; each restored file is "
      "verified and deleted right away), the seed's launches last (a relaunched litestream replicates "
      "again). `sidekv restore` / `litestream restore`: spawn → exit. sidekv at launch: spawn → `listening on` (restore, "
      "open, guest from the warm compiled cache). Seed at launch: `run.sh` start → first HTTP answer (Deno start, "
      "`litestream restore`, opening the KV; `run.sh` polls every 0.1 s). CPU = user+sys of the restoring process; "
      "MB downloaded = sizes of the S3 objects the restoring process fetched (moto's access log × the bucket listing; "
      "litestream's ranged GETs counted as whole objects). restored file = size of the restored SQLite file (+ WAL). "
      "rows verified = rows in the restored `kv` table / rows whose value is byte-for-byte the loaded one")
    for q in results["quiet"]:
        w(f"\n> **Machine**: {q}")
    for n in results["notes"]:
        w(f"\n> **Note**: {n}")
    w("")
    w("| system | restore path | what S3 held | seconds | CPU s | peak RSS | MB downloaded | restored file | rows verified | other load |")
    w("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")

    def med(xs):
        xs = [x for x in xs if x is not None]
        return statistics.median(xs) if xs else None

    for c in cases:
        runs = c["runs"]
        if not runs:
            continue
        walls = [x["wall"] for x in runs]
        sec = f"**{med(walls):.2f}**" + (f" ({min(walls):.2f}–{max(walls):.2f})" if len(walls) > 1 else "")
        cpu = med([x["cpu"] for x in runs])
        rss = med([x["rss_kib"] for x in runs])
        dl = med([x["downloaded"] for x in runs])
        fb = med([x.get("file_bytes") for x in runs])
        rows_s = "; ".join(sorted({f"{x['rows']:,} / {x['good']:,}" for x in runs}))
        other = max(x["other"] for x in runs)
        w(f"| {c['system']} | {c['case']}: {c['path']} | {c['held']} | {sec} | {'%.2f' % cpu if cpu is not None else '—'} | "
          f"{'%.0f MiB' % (rss / 1024) if rss else '—'} | {'%.1f' % (dl / 1e6) if dl is not None else '?'} | "
          f"{'%.0f MB' % (fb / 1e6) if fb else '?'} | {rows_s} | "
          f"{other:.2f} |")
    w("")
    for how, what in (("cli", "`sidekv restore` vs `litestream restore`"), ("launch", "restore at launch")):
        seed = next((c for c in cases if c["system"] == "seed" and c["how"] == how and c["runs"]), None)
        if not seed:
            continue
        s = med([x["wall"] for x in seed["runs"]])
        parts = []
        for c in cases:
            if c["system"] == "sidekv" and c["how"] == how and c["runs"]:
                v = med([x["wall"] for x in c["runs"]])
                parts.append(f"{c['case']} {s / v:.1f}× ({v:.2f} s vs {s:.2f} s)")
        w(f"- {what}, seed seconds ÷ sidekv seconds (medians; > 1 = sidekv faster): " + "; ".join(parts))
    stats = [(c["system"], c["dbstat"]) for c in cases if c.get("dbstat") and c["how"] == "cli"]
    seen = set()
    parts = []
    for sysname, (pages, payload) in stats:
        if sysname in seen:
            continue
        seen.add(sysname)
        parts.append(f"{sysname} {pages / 1e6:.0f} MB of pages for {payload / 1e6:.0f} MB of keys and values "
                     f"({pages / payload:.1f}×)")
    if parts:
        w("- size of the restored `kv` table (SQLite `dbstat`, 4 KiB pages; both are WITHOUT ROWID tables, whose ~1 KiB "
          "rows exceed the in-page limit and spill into an overflow page each): " + "; ".join(parts))
    w("- other load = cores used by other processes on this shared machine during the run (max over the runs); "
      "it inflates the seconds, CPU s much less")
    for l in results["loads"]:
        if l["system"] == "sidekv":
            w(f"- load, sidekv [{l['label']}]: {l['seconds']:.1f} s ({KEYS / l['seconds']:.0f} keys/s), SIGTERM → exit "
              f"{l['exit']} in {l['shutdown_s']:.1f} s")
        else:
            w(f"- load, seed: {l['seconds']:.1f} s ({KEYS / l['seconds']:.0f} POST/s, {l['failed']} failed), litestream "
              f"settled {l['wait_s']:.1f} s later; the seed's own database then held {l['local_rows']:,} rows")
    for l in results.get("snapshot", []):
        w(f"- `sidekv snapshot` (server stopped): {l['wall']:.1f} s wall, {l['cpu']:.1f} s CPU, peak RSS "
          f"{l['rss_kib'] / 1024:.0f} MiB, stored a {l['bytes'] / 1e6:.1f} MB snapshot")
    w("")
    return "\n".join(o)


class Ctx:
    pass


def main():
    bin_src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "release", "sidekv")
    moto_bin = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, ".venv", "bin", "moto_server")
    t_start = time.time()
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(os.path.join(OUT, "bin"))
    ctx = Ctx()
    ctx.results = results
    results["quiet"] = []
    # A copy: other work may rebuild target/release/sidekv during the run.
    ctx.bin = os.path.join(OUT, "bin", "sidekv")
    shutil.copy2(bin_src, ctx.bin)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        meta = dict(date=time.strftime("%Y-%m-%d %H:%M:%S %Z"), machine=machine())
        git = subprocess.run(["git", "-C", ROOT, "log", "-1", "--format=%h"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "host", "guest", "wit"],
                               capture_output=True, text=True).stdout.strip()
        mtime = time.strftime("%Y-%m-%d %H:%M", time.localtime(os.path.getmtime(bin_src)))
        meta["sidekv"] = (f"`target/release/sidekv` built {mtime} at commit {git}"
                          f"{' with uncommitted changes in host/ or guest/' if dirty else ''} (copied at the start of the run)")
        say(f"machine: {meta['machine']}; sidekv {meta['sidekv']}")

        say(f"moto S3 on {P_S3}")
        moto_log = os.path.join(OUT, "moto.log")
        mp = subprocess.Popen([moto_bin, "-p", str(P_S3)], stdout=open(moto_log, "wb"), stderr=subprocess.STDOUT)
        started_procs.append(mp)
        for _ in range(200):
            try:
                urllib.request.urlopen(f"{S3}/", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        else:
            sys.exit("moto did not start; see " + moto_log)
        meta["moto"] = "moto " + version([os.path.join(os.path.dirname(moto_bin), "python"), "-c",
                                          "import moto; print(moto.__version__)"])
        s3_put_bucket(BUCKET)
        ctx.moto, ctx.moto_pid = MotoLog(moto_log), mp.pid

        say("generating the data")
        ctx.keys, ctx.values = make_data()

        # ---- loads ----
        cases = []
        db = sidekv_load(ctx, "default settings", "default")
        default = sidekv_case(ctx, "default settings", "default", "default", db)
        cases += default
        if default[0]["snapshots"]:
            results["notes"].append(
                "with the default settings the server stored a snapshot during the load (shipped segment bytes crossed "
                "`KVSTORE_SNAPSHOT_BYTES`, 64 MiB by default), so the segments-only path was measured on a second load "
                "with `KVSTORE_SNAPSHOT_BYTES=1000000000000`")
            db = sidekv_load(ctx, "segments only", "segonly", {"KVSTORE_SNAPSHOT_BYTES": str(10**12)})
            cases += sidekv_case(ctx, "segments only", "segonly", "segonly", db)
        db = sidekv_load(ctx, "after `sidekv snapshot`", "snapshot")
        say("sidekv snapshot (server stopped)")
        wall, cpu, rss, rc, _ = timed_run([ctx.bin, "snapshot"], sidekv_env("snapshot", db), os.path.join(OUT, "snapshot.log"))
        if rc != 0:
            sys.exit(f"sidekv snapshot failed (exit {rc}); see {OUT}/snapshot.log")
        snaps = s3_list(BUCKET, "snapshot/snapshots/")
        newest = max(snaps) if snaps else None
        results["snapshot"] = [dict(wall=wall, cpu=cpu, rss_kib=rss, bytes=snaps[newest] if newest else 0)]
        log(f"{wall:.1f} s; newest snapshot {newest} ({snaps.get(newest, 0) / 1e6:.1f} MB)")
        cases += sidekv_case(ctx, "after `sidekv snapshot`", "snapshot", "snapshot", db)

        seed_cases = []
        if os.environ.get("RESTORE_SKIP_SEED") == "1" or not os.path.exists(os.path.join(SEED_DIR, "run.sh")):
            results["notes"].append("the seed system was skipped in this run")
        else:
            seed_cases = seed_load(ctx)
            cases.insert(0, seed_cases[0])
            lit = seed_cases[0]["litestream"]
            meta["litestream"] = "litestream " + version([lit, "version"])
            meta["deno"] = version([os.path.join(os.path.dirname(lit), "deno"), "--version"]).replace("deno ", "")
        meta.setdefault("litestream", "litestream ?")
        meta.setdefault("deno", "?")

        # ---- restores: interleaved rounds, the seed's launches last ----
        busy = wait_quiet(float(os.environ.get("RESTORE_QUIET_WAIT", "60")))
        say(f"restores: {RUNS} rounds over {len(cases)} cases (other work on the machine before: {busy:.2f} cores)")
        if busy >= 0.3:
            results["quiet"].append(f"not quiet before the restores: {busy:.2f} cores busy with other work")
        for r in range(-WARMUP, RUNS):
            order = list(cases)
            random.Random(r).shuffle(order)  # so no case always follows the same one
            for c in order:
                run = sidekv_restore(ctx, c, r) if c["system"] == "sidekv" else seed_cli(ctx, c, r)
                if r >= 0:
                    c["runs"].append(run)
        if seed_cases:
            for r in range(RUNS):
                seed_cases[1]["runs"].append(seed_launch(ctx, seed_cases[1], r))
            cases.insert(1, seed_cases[1])
        stop(mp)
        meta["total_s"] = time.time() - t_start
        with open(os.path.join(OUT, "results.json"), "w") as f:
            json.dump(dict(meta=meta, cases=[{k: v for k, v in c.items() if k != "objs"} for c in cases], **results),
                      f, indent=1)
        md = report(meta, cases, results)
        with open(REPORT, "w") as f:
            f.write(md)
        say(f"wrote {REPORT} in {meta['total_s']:.0f} s; raw results in {OUT}")
        print(md)
    finally:
        cleanup()


if __name__ == "__main__":
    main()
