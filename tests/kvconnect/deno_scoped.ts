// A token scoped to the Deno keys under ["users"] (scoped-tokens guest,
// `kv:users`): in scope works, everything else is refused by the guest
// with the client's own error. Exits 0 only if all of that holds.
//   deno run --unstable-kv --allow-net --allow-env deno_scoped.ts URL
const kv = await Deno.openKv(Deno.args[0]);
const fail = (m: string) => { console.error(`FAIL deno_scoped: ${m}`); Deno.exit(1); };
const r = await kv.set(["users", 1], "in scope");
if (!r.ok) fail("in-scope set");
if ((await kv.get(["users", 1])).value !== "in scope") fail("in-scope get");
const seen = [];
for await (const e of kv.list({ prefix: ["users"] })) seen.push(e.key);
if (seen.length !== 1) fail(`in-scope list saw ${JSON.stringify(seen)}`);
const refused = async (what: string, op: () => Promise<unknown>) => {
  try {
    await op();
    fail(`${what} was allowed`);
  } catch (e) {
    console.log(`ok refused ${what}: ${String(e).slice(0, 90)}`);
  }
};
await refused("out-of-scope set", () => kv.set(["admins", 1], "no"));
await refused("out-of-scope get", () => kv.get(["admins", 1]));
await refused("list of everything", async () => { for await (const _ of kv.list({ prefix: [] })) { /* */ } });
await refused("atomic touching both", () => kv.atomic().set(["users", 2], "x").set(["admins", 2], "y").commit());
if ((await kv.get(["users", 2])).value !== null) fail("a refused batch wrote its in-scope half");
console.log("ok scoped tokens hold for Deno keys");
kv.close();
