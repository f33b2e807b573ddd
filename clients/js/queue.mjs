// listenQueue for sidekv: Deno KV's `kv.listenQueue(handler)` for messages
// enqueued through sidekv (npm `@deno/kv`'s `kv.enqueue`, Deno's client,
// REST `POST /_queue`), on top of sidekv's pull API. Works in Deno and Node
// (>= 18: global fetch; `node:v8` decodes Deno's V8-serialized values).
//
//   import { listenQueue } from "./clients/js/queue.mjs";
//   const listener = listenQueue("http://127.0.0.1:8000", process.env.KVSTORE_SECRET, async (msg, info) => {
//     // info: { id, attempt, encoding }. Return (or resolve) = delivered;
//     // throw (or reject) = failed attempt: retried after the message's
//     // backoff schedule, then written to its keysIfUndelivered.
//   });
//   …
//   await listener.close();   // stops taking messages, waits for handlers in flight
//
// Delivery is at least once: a handler whose acknowledgement is lost (a
// crash, a timeout, a lease that expired) sees the message again. Make the
// handler idempotent by `info.id`.
//
// Options: { concurrency = 1, visibility = "60s" (lease per attempt; keep it
// above the handler's longest run), wait = "30s" (long-poll), onError }.

let v8mod;
async function decode(bytes, encoding) {
  if (encoding === "v8") {
    v8mod ??= await import("node:v8");
    // Deno KV stores V8's structured serialization, which node:v8 reads.
    const { Buffer } = await import("node:buffer");
    return v8mod.deserialize(Buffer.from(bytes));
  }
  if (encoding === "le64") {
    return new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true);
  }
  return bytes;
}

export function listenQueue(url, token, handler, options = {}) {
  const base = url.replace(/\/+$/, "").replace(/\/_kv$/, "");
  const { concurrency = 1, visibility = "60s", wait = "30s", onError = (e) => console.error("listenQueue:", e) } = options;
  const headers = token ? { authorization: `Bearer ${token}` } : {};
  const abort = new AbortController();
  let closed = false;

  async function call(path) {
    const r = await fetch(`${base}${path}`, { method: "POST", headers, signal: abort.signal });
    return r;
  }

  async function settle(kind, lease) {
    // Retried while sidekv is unreachable; a 409 means the lease expired (the
    // message is delivered again anyway).
    for (let i = 0; !closed || i === 0; i++) {
      try {
        const r = await fetch(`${base}/_queue/${kind}?lease=${encodeURIComponent(lease)}`, { method: "POST", headers });
        await r.arrayBuffer();
        if (r.ok || r.status === 409) return r.ok;
        if (r.status < 500) throw new Error(`${kind}: HTTP ${r.status}`);
      } catch (e) {
        if (i >= 5) throw e;
      }
      await new Promise((res) => setTimeout(res, 200 * (i + 1)));
    }
    return false;
  }

  async function worker() {
    while (!closed) {
      let r;
      try {
        r = await call(`/_queue/take?wait=${encodeURIComponent(wait)}&visibility=${encodeURIComponent(visibility)}`);
      } catch (e) {
        if (closed) return;
        onError(e);
        await new Promise((res) => setTimeout(res, 1000));
        continue;
      }
      if (r.status === 204) {
        await r.arrayBuffer();
        continue;
      }
      const body = new Uint8Array(await r.arrayBuffer());
      if (r.status !== 200) {
        onError(new Error(`take: HTTP ${r.status}: ${new TextDecoder().decode(body)}`));
        if (r.status === 401 || r.status === 403) return;
        await new Promise((res) => setTimeout(res, 1000));
        continue;
      }
      const info = {
        id: r.headers.get("x-sidekv-message-id"),
        attempt: Number(r.headers.get("x-sidekv-attempt")),
        encoding: r.headers.get("x-sidekv-encoding"),
      };
      const lease = r.headers.get("x-sidekv-lease");
      let ok = true;
      try {
        await handler(await decode(body, info.encoding), info);
      } catch (e) {
        ok = false;
        onError(e);
      }
      try {
        await settle(ok ? "ack" : "retry", lease);
      } catch (e) {
        onError(e);
      }
    }
  }

  const workers = Array.from({ length: concurrency }, () => worker());
  return {
    /** Stop taking messages; resolves when handlers in flight are done. */
    async close() {
      closed = true;
      abort.abort();
      await Promise.allSettled(workers);
    },
    /** Resolves when every worker has stopped (after close, or a 401/403). */
    done: Promise.allSettled(workers).then(() => undefined),
  };
}
