// Export/import keep Deno data exactly. `write URL`: store keys of every
// part type with V8, bytes and KvU64 values. `check URL`: read them back
// (on another server, after REST /_export → /_import) and compare values
// and their types. Exits non-zero on the first difference.
//   deno run --unstable-kv --allow-net --allow-env deno_typed_roundtrip.ts write|check URL
const [mode, url] = Deno.args;
const kv = await Deno.openKv(url);
const entries: [Deno.KvKey, unknown][] = [
  [["rt", "text"], "héllo"],
  [["rt", "object"], { a: 1, b: [true, null], c: new Date(0) }],
  [["rt", "bytes"], new Uint8Array([0, 1, 255])],
  [["rt", "u64"], new Deno.KvU64(42n)],
  [["rt", 7, -1.5, true, 12345678901234567890n], "number parts"],
  [["rt", new Uint8Array([0xff, 0x00, 0x80])], "byte part"],
];
const same = (a: unknown, b: unknown) => {
  if (a instanceof Deno.KvU64 || b instanceof Deno.KvU64) return a instanceof Deno.KvU64 && b instanceof Deno.KvU64 && a.value === b.value;
  if (a instanceof Uint8Array || b instanceof Uint8Array) return a instanceof Uint8Array && b instanceof Uint8Array && a.length === b.length && a.every((x, i) => x === b[i]);
  return JSON.stringify(a) === JSON.stringify(b);
};
if (mode === "write") {
  for (const [k, v] of entries) if (!(await kv.set(k, v)).ok) { console.error(`FAIL set ${String(k)}`); Deno.exit(1); }
  await kv.atomic().sum(["rt", "counter"], 5n).commit();
} else {
  for (const [k, v] of [...entries, [["rt", "counter"], new Deno.KvU64(5n)]] as [Deno.KvKey, unknown][]) {
    const got = (await kv.get(k)).value;
    if (!same(got, v)) { console.error(`FAIL ${Deno.inspect(k)}: got ${Deno.inspect(got)}, want ${Deno.inspect(v)}`); Deno.exit(1); }
    console.log(`ok ${Deno.inspect(k)} = ${Deno.inspect(got)}`);
  }
  // And the counter still counts, as a u64.
  await kv.atomic().sum(["rt", "counter"], 1n).commit();
  const c = (await kv.get(["rt", "counter"])).value;
  if (!(c instanceof Deno.KvU64) || c.value !== 6n) { console.error(`FAIL counter after import: ${Deno.inspect(c)}`); Deno.exit(1); }
}
kv.close();
