// KV Connect conformance with Deno's built-in client.
//   deno run --unstable-kv --allow-net --allow-env deno_client.ts URL
// Token: DENO_KV_ACCESS_TOKEN. KVCONNECT_SERVER=denokv tolerates lazy expiry
// (Deno's own server may still return a key briefly after it expired).
// Prints one `ok N - …` line per check; exits 1 on the first mismatch.
import { CheckFailure, run } from "./checks.mjs";

const url = Deno.args[0];
if (!url) {
  console.error("usage: deno_client.ts URL   (token in DENO_KV_ACCESS_TOKEN)");
  Deno.exit(2);
}
const lazyExpiry = Deno.env.get("KVCONNECT_SERVER") === "denokv";
try {
  const kv = await Deno.openKv(url);
  const n = await run(kv, { client: "deno", KvU64: Deno.KvU64, lazyExpiry });
  kv.close();
  console.log(`deno client: all ${n} checks passed against ${url}`);
  Deno.exit(0);
} catch (e) {
  if (e instanceof CheckFailure) {
    console.error(`FAIL ${e.message}`);
  } else {
    console.error(`FAIL deno: unexpected error: ${e?.stack ?? e}`);
  }
  Deno.exit(1);
}
