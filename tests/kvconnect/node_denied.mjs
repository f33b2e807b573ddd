// npm @deno/kv with a wrong token (KVCONNECT_TOKEN): openKv or the first
// operation must throw. Exits 0 only if it did; prints the error.
//   KVCONNECT_TOKEN=wrong node node_denied.mjs URL
const { openKv } = await import("./node/kv.mjs");
const url = process.argv[2];
const within = (ms, p) => Promise.race([p, new Promise((_, rej) => setTimeout(() => rej(new Error(`HUNG: no answer within ${ms} ms`)), ms))]);
try {
  const kv = await within(20000, openKv(url, { accessToken: process.env.KVCONNECT_TOKEN ?? "" }));
  const r = await within(20000, kv.set(["denied"], "must not be written"));
  console.error(`FAIL node_denied: set succeeded: ${JSON.stringify(r)}`);
  process.exit(1);
} catch (e) {
  const msg = String(e?.message ?? e);
  if (msg.startsWith("HUNG")) {
    console.error(`FAIL node_denied: ${msg}`);
    process.exit(1);
  }
  console.log(`ok - node: openKv with a bad token threw: ${e?.name}: ${msg.split("\n")[0]}`);
  process.exit(0);
}
