"""Queue benchmark (bench/queues.sh runs it): the same workload against
sidekv's queue (REST pull and push delivery), Redis Streams (XADD +
XREADGROUP + XACK, appendfsync always) and a PostgreSQL SKIP LOCKED queue,
at the same durability (every enqueue and every ack fsynced before it is
answered). One run, side by side.

Workload per target:
  enqueue  P producers, N messages of 100 bytes in all          -> msgs/s
  deliver  C consumers take + ack until all N are gone          -> msgs/s
  latency  one producer at a light rate, one waiting consumer:
           enqueue -> delivery time, p50 / p99                  -> ms

usage: queues.py OUT.jsonl sidekv URL SECRET [push-port] | redis HOST:PORT | postgres URL
"""

import http.client
import json
import os
import statistics
import sys
import threading
import time
import urllib.parse

N = int(os.environ.get("BENCH_QUEUE_MESSAGES", "20000"))
PRODUCERS = int(os.environ.get("BENCH_QUEUE_PRODUCERS", "8"))
CONSUMERS = int(os.environ.get("BENCH_QUEUE_CONSUMERS", "8"))
LAT_MESSAGES = int(os.environ.get("BENCH_QUEUE_LATENCY_MESSAGES", "300"))
LAT_RATE = float(os.environ.get("BENCH_QUEUE_LATENCY_RATE", "100"))  # msgs/s
PAYLOAD = b"x" * 92


def stamp():
    return str(time.time_ns()).encode().rjust(20, b"0")[:20]


def run_threads(n, fn):
    ts = [threading.Thread(target=fn, args=(i,)) for i in range(n)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return time.perf_counter() - t0


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


class Sidekv:
    name = "sidekv"

    def __init__(self, url, secret):
        u = urllib.parse.urlparse(url)
        self.host, self.port, self.secret = u.hostname, u.port, secret
        self.local = threading.local()

    def conn(self):
        c = getattr(self.local, "c", None)
        if c is None:
            c = self.local.c = http.client.HTTPConnection(self.host, self.port, timeout=60)
        return c

    def call(self, path, body=b""):
        c = self.conn()
        c.request("POST", path, body=body, headers={"authorization": self.secret})
        r = c.getresponse()
        data = r.read()
        return r.status, dict(r.getheaders()), data

    def enqueue(self, payload):
        st, _, body = self.call("/_queue", payload)
        assert st == 200, (st, body)

    def take(self, wait_ms):
        st, h, body = self.call(f"/_queue/take?wait={wait_ms}ms&visibility=60s")
        if st == 204:
            return None
        assert st == 200, (st, body)
        return body, {k.lower(): v for k, v in h.items()}["x-sidekv-lease"]

    def ack(self, lease):
        st, _, body = self.call("/_queue/ack?lease=" + urllib.parse.quote(lease))
        assert st == 200, (st, body)


class Redis:
    name = "Redis Streams"

    def __init__(self, addr):
        import redis

        host, port = addr.split(":")
        self.pool = redis.ConnectionPool(host=host, port=int(port))
        self.r = redis.Redis(connection_pool=self.pool)
        self.r.delete("q")
        self.r.xgroup_create("q", "g", id="0", mkstream=True)

    def enqueue(self, payload):
        self.r.xadd("q", {"p": payload})

    def take(self, wait_ms):
        got = self.r.xreadgroup("g", f"c{threading.get_ident()}", {"q": ">"}, count=1, block=max(1, wait_ms))
        if not got:
            return None
        mid, fields = got[0][1][0]
        return fields[b"p"], mid

    def ack(self, mid):
        self.r.xack("q", "g", mid)


class Postgres:
    name = "PostgreSQL SKIP LOCKED"

    def __init__(self, url):
        import psycopg

        self.url = url
        self.local = threading.local()
        with psycopg.connect(url, autocommit=True) as c:
            c.execute("DROP TABLE IF EXISTS q; CREATE TABLE q (id bigserial PRIMARY KEY, payload bytea NOT NULL, leased_until timestamptz)")

    def conn(self):
        import psycopg

        c = getattr(self.local, "c", None)
        if c is None:
            c = self.local.c = psycopg.connect(self.url, autocommit=True)
        return c

    def enqueue(self, payload):
        self.conn().execute("INSERT INTO q (payload) VALUES (%s)", (payload,))

    def take(self, wait_ms):
        deadline = time.monotonic() + wait_ms / 1000
        while True:
            row = self.conn().execute(
                "UPDATE q SET leased_until = now() + interval '60 s' WHERE id = "
                "(SELECT id FROM q WHERE leased_until IS NULL OR leased_until < now() ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1) "
                "RETURNING payload, id"
            ).fetchone()
            if row:
                return bytes(row[0]), row[1]
            if time.monotonic() > deadline:
                return None
            time.sleep(0.001)  # what a polling consumer does (LISTEN/NOTIFY would be a second design)

    def ack(self, id_):
        self.conn().execute("DELETE FROM q WHERE id = %s", (id_,))


def throughput(t):
    def produce(i):
        for _ in range(i, N, PRODUCERS):
            t.enqueue(stamp() + PAYLOAD)

    enq = run_threads(PRODUCERS, produce)
    left = [N]
    lock = threading.Lock()

    def consume(_):
        while True:
            with lock:
                if left[0] <= 0:
                    return
            got = t.take(200)
            if got is None:
                continue
            t.ack(got[1])
            with lock:
                left[0] -= 1

    dlv = run_threads(CONSUMERS, consume)
    return N / enq, N / dlv


def latency(t):
    lats = []
    done = threading.Event()

    def consume():
        while not done.is_set() or len(lats) < LAT_MESSAGES:
            got = t.take(500)
            if got is None:
                if done.is_set():
                    return
                continue
            sent = int(got[0][:20])
            lats.append((time.time_ns() - sent) / 1e6)
            t.ack(got[1])
            if len(lats) >= LAT_MESSAGES:
                return

    th = threading.Thread(target=consume)
    th.start()
    time.sleep(0.3)
    for _ in range(LAT_MESSAGES):
        t.enqueue(stamp() + PAYLOAD)
        time.sleep(1 / LAT_RATE)
    done.set()
    th.join(timeout=30)
    return statistics.median(lats), pct(lats, 0.99)


def push_rate(url, secret, port):
    """sidekv pushes to a local HTTP endpoint that answers 200."""
    import http.server

    got = []
    lock = threading.Lock()

    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            with lock:
                got.append((time.time_ns() - int(body[:20])) / 1e6)
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    t = Sidekv(url, secret)
    t0 = time.perf_counter()
    run_threads(PRODUCERS, lambda i: [t.enqueue(stamp() + PAYLOAD) for _ in range(i, N, PRODUCERS)])
    while len(got) < N and time.perf_counter() - t0 < 300:
        time.sleep(0.01)
    secs = time.perf_counter() - t0
    srv.shutdown()
    return len(got) / secs, statistics.median(got), pct(got, 0.99)


def main():
    out, kind = sys.argv[1], sys.argv[2]
    if kind == "sidekv-push":
        rate, p50, p99 = push_rate(sys.argv[3], sys.argv[4], int(sys.argv[5]))
        row = {"target": "sidekv push", "enqueue_per_s": None, "deliver_per_s": rate, "lat_p50_ms": p50, "lat_p99_ms": p99,
               "note": "enqueue and push delivery at once"}
    else:
        t = {"sidekv": lambda: Sidekv(sys.argv[3], sys.argv[4]), "redis": lambda: Redis(sys.argv[3]), "postgres": lambda: Postgres(sys.argv[3])}[kind]()
        enq, dlv = throughput(t)
        p50, p99 = latency(t)
        row = {"target": t.name + (" pull" if kind == "sidekv" else ""), "enqueue_per_s": enq, "deliver_per_s": dlv, "lat_p50_ms": p50, "lat_p99_ms": p99}
    row.update({"messages": N, "producers": PRODUCERS, "consumers": CONSUMERS})
    with open(out, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
