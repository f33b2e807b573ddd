// npm @deno/kv (Node) enqueues through sidekv's KV Connect endpoint; the
// messages are then received in one of these ways:
//   node node_enqueue.mjs KV_URL push PORT   this script serves the push endpoint on PORT
//   node node_enqueue.mjs KV_URL pull BASE   clients/js/queue.mjs listenQueue (pull) on BASE
//   node node_enqueue.mjs KV_URL only-enqueue    enqueue 3 messages {n: 1..3} and exit
//   node node_enqueue.mjs KV_URL dead-letter     enqueue {job: "job-7"} with keysIfUndelivered
// Token: KVCONNECT_TOKEN. One `ok N - …` line per check; exits 1 on the first failure.
import http from "node:http";
import v8 from "node:v8";
import { openKv } from "../kvconnect/node/kv.mjs";
import { listenQueue } from "../../clients/js/queue.mjs";

const [url, mode, arg] = process.argv.slice(2);
const token = process.env.KVCONNECT_TOKEN;
let n = 0;
function ok(cond, what) {
  if (!cond) {
    console.error(`FAIL ${what}`);
    process.exit(1);
  }
  console.log(`ok ${++n} - ${what}`);
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const kv = await openKv(url, { accessToken: token });

if (mode === "only-enqueue") {
  for (let i = 1; i <= 3; i++) await kv.enqueue({ n: i });
  ok(true, "enqueued 3 messages");
  kv.close();
  process.exit(0);
}

if (mode === "dead-letter") {
  // npm @deno/kv sends its own backoff schedule ([100, 200, 400, 800]).
  await kv.enqueue({ job: "job-7" }, { keysIfUndelivered: [["failed", "job-7"]] });
  ok(true, "enqueued with keysIfUndelivered");
  kv.close();
  process.exit(0);
}

// Messages received: n → { at, info }.
const received = new Map();
const duplicates = [];
function receive(value, info) {
  if (received.has(value.n)) duplicates.push(value.n);
  received.set(value.n, { at: Date.now(), info });
}

let stop = async () => {};
if (mode === "push") {
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks);
      const info = { id: req.headers["x-sidekv-message-id"], attempt: Number(req.headers["x-sidekv-attempt"]), encoding: req.headers["x-sidekv-encoding"] };
      if (info.encoding !== "v8") {
        console.error(`FAIL push: encoding ${info.encoding}`);
        process.exit(1);
      }
      receive(v8.deserialize(body), info);
      res.writeHead(204).end();
    });
  });
  await new Promise((r) => server.listen(Number(arg), "127.0.0.1", r));
  stop = async () => server.close();
} else if (mode === "pull") {
  const l = listenQueue(arg, token, (value, info) => receive(value, info), { concurrency: 2, visibility: "10s", wait: "1s" });
  stop = () => l.close();
} else {
  console.error(`unknown mode ${mode}`);
  process.exit(2);
}

const t0 = Date.now();
await kv.set(["flag"], "present");
await kv.enqueue({ n: 1, text: "plain" });
await kv.enqueue({ n: 2, text: "delayed" }, { delay: 1500 });
const failed = await kv.atomic().check({ key: ["flag"], versionstamp: null }).set(["never"], 1).enqueue({ n: 3 }).commit();
ok(failed.ok === false, "an atomic write with a failing check is refused");
const flag = await kv.get(["flag"]);
const passed = await kv.atomic().check(flag).set(["order"], "placed").enqueue({ n: 4, text: "with the write" }).commit();
ok(passed.ok === true, "an atomic write with a passing check commits");
ok((await kv.get(["never"])).value === null, "the failed write wrote nothing");

while (received.size < 3 && Date.now() - t0 < 20000) await sleep(20);
await sleep(700); // anything else (message 3) would have come by now
await stop();
ok(received.has(1) && received.get(1).info.attempt === 1, "the plain message was delivered");
ok(received.has(4), "the message enqueued with a passing check was delivered");
ok(received.has(2), "the delayed message was delivered");
ok(received.get(2).at - t0 >= 1400, `the delayed message came after its delay (${received.get(2).at - t0} ms)`);
ok(!received.has(3), "the message of the failed atomic write was never delivered");
ok(/^[0-9a-f]{24}$/.test(received.get(1).info.id), "messages carry their id");
ok(duplicates.length === 0, `no duplicate delivery (${duplicates})`);
kv.close();
console.log(`${mode}: all ${n} checks passed`);
process.exit(0);
