// Deno's own client reads the value a dead-lettered message left at its
// keysIfUndelivered key.   deno run --unstable-kv -A deno_read_dead.ts KV_URL
const kv = await Deno.openKv(Deno.args[0]);
const e = await kv.get(["failed", "job-7"]);
if (JSON.stringify(e.value) !== JSON.stringify({ job: "job-7" })) {
  console.error(`FAIL ["failed","job-7"] holds ${JSON.stringify(e.value)}`);
  Deno.exit(1);
}
console.log(`ok 1 - the undelivered message's value is at ["failed","job-7"] (versionstamp ${e.versionstamp})`);
kv.close();
