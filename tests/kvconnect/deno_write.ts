// Write N known keys ["restore", i] (see restore_data.mjs) and one counter,
// then print `vs <i> <versionstamp>` per key, and `counter <versionstamp>`.
//   deno run --unstable-kv --allow-net --allow-env deno_write.ts URL N
import { expected, PREFIX } from "./restore_data.mjs";

const [url, nArg] = Deno.args;
const n = Number(nArg);
if (!url || !(n > 0)) {
  console.error("usage: deno_write.ts URL N   (token in DENO_KV_ACCESS_TOKEN)");
  Deno.exit(2);
}
try {
  const kv = await Deno.openKv(url);
  const lines: string[] = [];
  // Concurrent writers (8 at a time), like an application would.
  for (let base = 0; base < n; base += 8) {
    const batch = [];
    for (let i = base; i < Math.min(n, base + 8); i++) {
      batch.push(kv.set([...PREFIX, i], expected(i, Deno.KvU64)).then((r) => {
        if (!r.ok) throw new Error(`set ${i}: ${JSON.stringify(r)}`);
        lines.push(`vs ${i} ${r.versionstamp}`);
      }));
    }
    await Promise.all(batch);
  }
  let last = "";
  for (let j = 0; j < 5; j++) {
    const r = await kv.atomic().sum(["restore-counter"], 7n).commit();
    if (!r.ok) throw new Error(`sum: ${JSON.stringify(r)}`);
    last = r.versionstamp;
  }
  lines.push(`counter ${last}`);
  kv.close();
  console.log(lines.join("\n"));
  console.error(`deno_write: wrote ${n} keys and a counter (35) to ${url}`);
} catch (e) {
  console.error(`FAIL deno_write: ${e?.stack ?? e}`);
  Deno.exit(1);
}
