// In `s3` durability mode with S3 stalled: a write that committed locally
// but could not be acknowledged must reach the Deno client as a final error
// (it would otherwise retry a 5xx forever and could apply a sum twice).
// Exits 0 when `sum` throws an error that says its outcome is unknown.
//   deno run --unstable-kv --allow-net --allow-env deno_unknown.ts URL
const kv = await Deno.openKv(Deno.args[0]);
const timer = setTimeout(() => { console.error("FAIL deno_unknown: the client was still retrying after 40 s"); Deno.exit(1); }, 40000);
try {
  const r = await kv.atomic().sum(["unknown-counter"], 1n).commit();
  console.error(`FAIL deno_unknown: the write was acknowledged: ${JSON.stringify(r)}`);
  Deno.exit(1);
} catch (e) {
  const msg = String((e as Error)?.message ?? e);
  if (!msg.includes("outcome is unknown")) {
    console.error(`FAIL deno_unknown: unexpected error: ${msg}`);
    Deno.exit(1);
  }
  console.log(`ok the client got a final error: ${msg.slice(0, 160)}`);
}
clearTimeout(timer);
kv.close();
