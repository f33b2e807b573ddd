// clients/js/queue.mjs listenQueue, runnable by Deno and Node:
//   deno run -A listen.mjs BASE_URL COUNT     (token: KVCONNECT_TOKEN)
// Expects COUNT messages {n: 1..COUNT} (V8 values). The first attempt of
// each fails (the handler throws), so each is retried; the second attempt
// is handled. Exits 0 once every message was handled.
import { listenQueue } from "../../clients/js/queue.mjs";

const [base, count] = (globalThis.Deno ? Deno.args : process.argv.slice(2));
const token = globalThis.Deno ? Deno.env.get("KVCONNECT_TOKEN") : process.env.KVCONNECT_TOKEN;
const want = Number(count);
const handled = new Map();
const attempts = [];
const l = listenQueue(base, token, (value, info) => {
  attempts.push([value.n, info.attempt]);
  if (info.attempt === 1) throw new Error(`first attempt of ${value.n} fails on purpose`);
  handled.set(value.n, info);
}, { visibility: "10s", wait: "1s", onError: () => {} });
const t0 = Date.now();
while (handled.size < want && Date.now() - t0 < 30000) await new Promise((r) => setTimeout(r, 20));
await l.close();
const exit = (code) => (globalThis.Deno ? Deno.exit(code) : process.exit(code));
if (handled.size !== want) {
  console.error(`FAIL handled ${handled.size} of ${want}; attempts ${JSON.stringify(attempts)}`);
  exit(1);
}
for (let i = 1; i <= want; i++) {
  if (!handled.has(i) || handled.get(i).attempt !== 2) {
    console.error(`FAIL message ${i}: ${JSON.stringify(handled.get(i))}; attempts ${JSON.stringify(attempts)}`);
    exit(1);
  }
}
console.log(`received ${want} messages, each on its second attempt (${globalThis.Deno ? "deno" : "node"})`);
exit(0);
