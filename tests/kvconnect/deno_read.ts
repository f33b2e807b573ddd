// Read back what deno_write.ts wrote: every ["restore", i] for i < N has its
// value (and type), nothing else is under the prefix, the counter is 35, and
// with a file of deno_write.ts's output, every versionstamp is the one the
// write returned.
//   deno run --unstable-kv --allow-net --allow-env [--allow-read] deno_read.ts URL N [WRITE_OUTPUT]
import { expected, PREFIX } from "./restore_data.mjs";
import { same, show } from "./checks.mjs";

const [url, nArg, stampsFile] = Deno.args;
const n = Number(nArg);
if (!url || !(n > 0)) {
  console.error("usage: deno_read.ts URL N [WRITE_OUTPUT]   (token in DENO_KV_ACCESS_TOKEN)");
  Deno.exit(2);
}
const fail = (msg: string): never => {
  console.error(`FAIL deno_read: ${msg}`);
  Deno.exit(1);
};
try {
  const stamps = new Map<string, string>();
  if (stampsFile) {
    for (const line of Deno.readTextFileSync(stampsFile).split("\n")) {
      const p = line.trim().split(" ");
      if (p[0] === "vs") stamps.set(p[1], p[2]);
      if (p[0] === "counter") stamps.set("counter", p[1]);
    }
    if (stamps.size !== n + 1) fail(`${stampsFile} has ${stamps.size} versionstamps, expected ${n + 1}`);
  }
  const kv = await Deno.openKv(url);
  for (let base = 0; base < n; base += 10) {
    const keys = [];
    for (let i = base; i < Math.min(n, base + 10); i++) keys.push([...PREFIX, i]);
    const got = await kv.getMany(keys);
    got.forEach((e, j) => {
      const i = base + j;
      if (e.versionstamp === null) fail(`key ${show(keys[j])} is missing`);
      if (!same(e.value, expected(i, Deno.KvU64))) fail(`key ${show(keys[j])}: got ${show(e.value)}, expected ${show(expected(i, Deno.KvU64))}`);
      if (stamps.size && stamps.get(String(i)) !== e.versionstamp) {
        fail(`key ${show(keys[j])}: versionstamp ${e.versionstamp}, the write returned ${stamps.get(String(i))}`);
      }
    });
  }
  let count = 0;
  for await (const _ of kv.list({ prefix: PREFIX })) count++;
  if (count !== n) fail(`list ${show(PREFIX)} has ${count} entries, expected ${n}`);
  const c = await kv.get(["restore-counter"]);
  if (!same(c.value, new Deno.KvU64(35n))) fail(`counter: got ${show(c.value)}, expected KvU64(35n)`);
  if (stamps.size && stamps.get("counter") !== c.versionstamp) fail(`counter versionstamp ${c.versionstamp}, the write returned ${stamps.get("counter")}`);
  // The restored server keeps counting: a new commit is after every old one.
  const r = await kv.atomic().sum(["restore-counter"], 1n).commit();
  const newest = [...stamps.values()].reduce((a, b) => (a > b ? a : b), "");
  if (!r.ok || r.versionstamp <= newest) fail(`a commit after the restore got ${show(r)}, not after ${newest}`);
  kv.close();
  console.log(`deno_read: all ${n} keys and the counter read back${stamps.size ? " with their versionstamps" : ""}; a new commit gets ${r.versionstamp} > ${newest || "(none)"}`);
} catch (e) {
  fail(`${e?.stack ?? e}`);
}
