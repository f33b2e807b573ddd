// KV Connect conformance with the npm client @deno/kv on Node.
//   node node_client.mjs URL        (token: KVCONNECT_TOKEN, passed as openKv's accessToken)
// KVCONNECT_SERVER=denokv tolerates lazy expiry. One `ok N - …` line per
// check; exits 1 on the first mismatch.
import { CheckFailure, run } from "./checks.mjs";

const url = process.argv[2];
const accessToken = process.env.KVCONNECT_TOKEN;
if (!url || accessToken === undefined) {
  console.error("usage: KVCONNECT_TOKEN=… node node_client.mjs URL");
  process.exit(2);
}
let mod;
try {
  mod = await import("./node/kv.mjs");
} catch (e) {
  console.error(`FAIL node: cannot load @deno/kv (run \`make setup-deno\`): ${e}`);
  process.exit(1);
}
const { openKv, KvU64 } = mod;
const lazyExpiry = process.env.KVCONNECT_SERVER === "denokv";
try {
  const kv = await openKv(url, { accessToken });
  const n = await run(kv, {
    client: "node",
    KvU64,
    lazyExpiry,
    // The npm client packs -0 like 0 (its float packing is -|x|, flipped
    // only for x < 0), so [-0] and [0] are one key for it.
    skipKeyParts: ["-0"],
    // It also lists the prefix key itself last in a reverse prefix list.
    listsIncludePrefixKeyInReverse: true,
  });
  kv.close();
  console.log(`node client: all ${n} checks passed against ${url}`);
  process.exit(0);
} catch (e) {
  if (e instanceof CheckFailure) {
    console.error(`FAIL ${e.message}`);
  } else {
    console.error(`FAIL node: unexpected error: ${e?.stack ?? e}`);
  }
  process.exit(1);
}
