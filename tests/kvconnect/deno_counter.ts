// A KvU64 counter shared with the REST API: `deno_counter.ts URL KEY EXPECT ADD`
// reads [KEY], requires KvU64(EXPECT), then sums ADD and prints the new value.
const [url, key, expect, add] = Deno.args;
try {
  const kv = await Deno.openKv(url);
  const e = await kv.get([key]);
  if (!(e.value instanceof Deno.KvU64) || e.value.value !== BigInt(expect)) {
    const shown = e.value instanceof Uint8Array ? `Uint8Array[${[...e.value]}]` : e.value instanceof Deno.KvU64 ? `KvU64(${e.value.value}n)` : JSON.stringify(e.value);
    console.error(`FAIL deno_counter: [${JSON.stringify(key)}] is ${shown} (${e.value?.constructor?.name}), expected KvU64(${expect}n)`);
    Deno.exit(1);
  }
  const r = await kv.atomic().sum([key], BigInt(add)).commit();
  const after = await kv.get([key]);
  kv.close();
  console.log(`deno_counter: [${JSON.stringify(key)}] was KvU64(${expect}n); sum ${add} → ${r.versionstamp}; now ${(after.value as Deno.KvU64).value}`);
} catch (e) {
  console.error(`FAIL deno_counter: ${(e as Error)?.stack ?? e}`);
  Deno.exit(1);
}
