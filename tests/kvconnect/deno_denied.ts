// With a wrong (or no) token the client must fail with its own error and
// write nothing. Exits 0 only if every attempt threw; prints the errors.
//   deno run --unstable-kv --allow-net --allow-env deno_denied.ts URL
// (DENO_KV_ACCESS_TOKEN is whatever the caller set: wrong, empty or unset.)
const url = Deno.args[0];
if (!url) {
  console.error("usage: deno_denied.ts URL");
  Deno.exit(2);
}
const within = <T>(ms: number, p: Promise<T>) =>
  Promise.race([p, new Promise<never>((_, rej) => setTimeout(() => rej(new Error(`HUNG: no answer within ${ms} ms`)), ms))]);
let failures = 0;
for (const [what, op] of [
  ["set", (kv: Deno.Kv) => kv.set(["denied"], "must not be written")],
  ["atomic", (kv: Deno.Kv) => kv.atomic().sum(["denied-counter"], 1n).commit()],
  ["get", (kv: Deno.Kv) => kv.get(["denied"])],
] as const) {
  try {
    const kv = await within(20000, Deno.openKv(url));
    try {
      const r = await within(20000, op(kv) as Promise<unknown>);
      console.error(`FAIL deno_denied: ${what} succeeded: ${JSON.stringify(r, (_, v) => typeof v === "bigint" ? `${v}n` : v)}`);
      failures++;
    } finally {
      kv.close();
    }
  } catch (e) {
    const msg = String((e as Error)?.message ?? e);
    if (msg.startsWith("HUNG")) {
      console.error(`FAIL deno_denied: ${what}: ${msg}`);
      failures++;
    } else {
      console.log(`ok - deno: ${what} with a bad token threw: ${(e as Error)?.name}: ${msg.split("\n")[0]}`);
    }
  }
}
Deno.exit(failures ? 1 : 0);
