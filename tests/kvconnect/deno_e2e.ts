// The Deno KV behaviour denokv's end-to-end suite (its npm package's e2e)
// checks, run through Deno's built-in client against a remote database:
// our own checks of the same behaviours, in the same order, so a server that
// passes this passes what Deno users' programs rely on.
//   deno run --unstable-kv --allow-net --allow-env deno_e2e.ts URL
// Token: DENO_KV_ACCESS_TOKEN. The database must start empty.
// Prints one `ok N - …` line per check; exits 1 on the first mismatch.
import { CheckFailure, same, show } from "./checks.mjs";

const url = Deno.args[0];
if (!url) {
  console.error("usage: deno_e2e.ts URL   (token in DENO_KV_ACCESS_TOKEN)");
  Deno.exit(2);
}

let n = 0;
const ok = (what: string) => console.log(`ok ${++n} - ${what}`);
const fail = (what: string, detail: string): never => {
  throw new CheckFailure(`${what}: ${detail}`);
};
const expect = (what: string, actual: unknown, expected: unknown) => {
  if (!same(actual, expected)) fail(what, `got ${show(actual)}, expected ${show(expected)}`);
  ok(what);
};
const expectTrue = (what: string, cond: boolean, detail = "") => {
  if (!cond) fail(what, detail || "false");
  ok(what);
};
const rejects = async (what: string, f: () => Promise<unknown>) => {
  let threw: unknown = null;
  try {
    await f();
  } catch (e) {
    threw = e;
  }
  expectTrue(`${what} is refused`, threw instanceof Error, `it succeeded`);
};
const throwsNow = (what: string, f: () => unknown) => {
  let threw: unknown = null;
  try {
    f();
  } catch (e) {
    threw = e;
  }
  expectTrue(`${what} throws`, threw instanceof Error, `it did not throw`);
};
const collect = async <T>(it: AsyncIterable<T>): Promise<T[]> => {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
};
const u64 = (what: string, v: unknown, want: bigint) =>
  expectTrue(what, v instanceof Deno.KvU64 && v.value === want, `got ${show(v)}, expected KvU64(${want}n)`);
const VS = /^[0-9a-f]{20}$/;

async function main() {
  const kv = await Deno.openKv(url);

  // ---- an empty database, no-op commits ----
  expect("an empty database lists nothing", (await collect(kv.list({ prefix: [] }))).length, 0);
  const noop1 = await kv.atomic().commit();
  expectTrue("a no-op commit succeeds with a versionstamp", noop1.ok && VS.test(noop1.versionstamp ?? ""), show(noop1));
  const noop2 = await kv.atomic().commit();
  expectTrue("a second no-op commit has another versionstamp", noop2.ok && noop2.versionstamp !== noop1.versionstamp, show(noop2));

  // ---- get / set / overwrite ----
  const s1 = await kv.set(["a"], "a");
  expectTrue("set returns ok and a versionstamp", s1.ok && VS.test(s1.versionstamp), show(s1));
  let a = await kv.get(["a"]);
  expect("get: key", a.key, ["a"]);
  expect("get: value", a.value, "a");
  expect("get: versionstamp of the set", a.versionstamp, s1.versionstamp);
  const s2 = await kv.set(["a"], "a2");
  a = await kv.get(["a"]);
  expect("overwrite: value", a.value, "a2");
  expectTrue("overwrite: a newer versionstamp", a.versionstamp === s2.versionstamp && s2.versionstamp > s1.versionstamp, show(a));

  // ---- getMany ----
  expect("getMany of no keys", (await kv.getMany([])).length, 0);
  let many = await kv.getMany([["a"]]);
  expect("getMany of one key", many.map((e) => [e.key, e.value]), [[["a"], "a2"]]);
  await kv.set(["b"], "b");
  many = await kv.getMany([["a"], ["b"]]);
  expect("getMany of two keys, in order", many.map((e) => [e.key, e.value]), [[["a"], "a2"], [["b"], "b"]]);
  many = await kv.getMany([["a"], ["a"]]);
  expect("getMany of one key twice", many.map((e) => [e.key, e.value]), [[["a"], "a2"], [["a"], "a2"]]);
  expectTrue("getMany: versionstamps", many.every((e) => e.versionstamp === s2.versionstamp), show(many));

  // ---- delete, twice ----
  for (const round of ["", " again"]) {
    await kv.delete(["b"]);
    const b = await kv.get(["b"]);
    expect(`delete${round}: key`, b.key, ["b"]);
    expect(`delete${round}: value and versionstamp`, [b.value, b.versionstamp], [null, null]);
  }

  // ---- sum / max / min ----
  const sum0 = await kv.atomic().sum(["u1"], 0n).commit();
  expectTrue("sum 0 on an absent key commits", sum0.ok && VS.test(sum0.versionstamp ?? ""), show(sum0));
  u64("sum 0 on an absent key stores 0", (await kv.get(["u1"])).value, 0n);
  await kv.atomic().sum(["u1"], 1n).commit();
  await kv.atomic().sum(["u1"], 2n).commit();
  u64("sum 1 then 2", (await kv.get(["u1"])).value, 3n);
  await kv.atomic().max(["u1"], 4n).commit();
  u64("max(3, 4)", (await kv.get(["u1"])).value, 4n);
  await kv.atomic().max(["u1"], 3n).commit();
  u64("max(4, 3)", (await kv.get(["u1"])).value, 4n);
  await kv.atomic().min(["u1"], 2n).commit();
  u64("min(4, 2)", (await kv.get(["u1"])).value, 2n);
  await kv.atomic().min(["u1"], 4n).commit();
  u64("min(2, 4)", (await kv.get(["u1"])).value, 2n);

  // ---- atomic checks, including a versionstamp no store ever issued ----
  const existing = (await kv.get(["a"])).versionstamp!;
  const absentCheck = await kv.atomic().check({ key: ["a"], versionstamp: null }).commit();
  expect("check 'absent' on a present key fails", absentCheck.ok, false);
  const neverIssued = "1" + existing.substring(1);
  const never = await kv.atomic().check({ key: ["a"], versionstamp: neverIssued }).set(["a"], "must not be written").commit();
  expect(`check against never-issued versionstamp ${neverIssued} fails (not an error)`, never.ok, false);
  expect("the failed check wrote nothing", (await kv.get(["a"])).value, "a2");
  const allF = "ffffffffffffffffffff";
  expect("check against ffff…ff fails", (await kv.atomic().check({ key: ["a"], versionstamp: allF }).commit()).ok, false);
  const matching = await kv.atomic().check({ key: ["a"], versionstamp: existing }).commit();
  expect("check against the current versionstamp passes", matching.ok, true);
  await rejects("a check with a malformed versionstamp", () => kv.atomic().check({ key: ["a"], versionstamp: "xyz" }).commit());

  // ---- clear, then list selectors ----
  await kv.atomic().delete(["a"]).delete(["u1"]).commit();
  const listed = async (sel: Deno.KvListSelector, opts: Deno.KvListOptions = {}) =>
    (await collect(kv.list(sel, opts))).map((e) => [e.key, e.value]);
  expect("list of an empty database", await listed({ prefix: [] }), []);
  await kv.set(["a"], "a");
  expect("list prefix []", await listed({ prefix: [] }), [[["a"], "a"]]);
  expect("list prefix [a] excludes [a] itself", await listed({ prefix: ["a"] }), []);
  await kv.set(["a", "a"], "a_a");
  expect("list prefix [a]", await listed({ prefix: ["a"] }), [[["a", "a"], "a_a"]]);
  await kv.set(["a", "b"], "a_b");
  const both = [[["a", "a"], "a_a"], [["a", "b"], "a_b"]];
  expect("list prefix + start below the first", await listed({ prefix: ["a"], start: ["a", "0"] }), both);
  await rejects("a list with prefix, start and end", () => collect(kv.list({ prefix: ["a"], start: ["a", "0"], end: ["a", "1"] } as never)));
  expect("list prefix + start at the first", await listed({ prefix: ["a"], start: ["a", "a"] }), both);
  expect("list prefix + start at the second", await listed({ prefix: ["a"], start: ["a", "b"] }), [[["a", "b"], "a_b"]]);
  expect("list prefix + start past the last", await listed({ prefix: ["a"], start: ["a", "c"] }), []);
  expect("list prefix + end (exclusive)", await listed({ prefix: ["a"], end: ["a", "b"] }), [[["a", "a"], "a_a"]]);
  expect("list prefix + end below the first", await listed({ prefix: ["a"], end: ["a", "1"] }), []);
  expect("list an absent prefix", await listed({ prefix: ["b"] }), []);
  await kv.set(["b"], "b");
  expect("list start/end", await listed({ start: ["a", "a"], end: ["c"] }), [...both, [["b"], "b"]]);

  // ---- list options ----
  for (const bad of [0, -1, 0.6]) await rejects(`list limit ${bad}`, () => collect(kv.list({ prefix: [] }, { limit: bad })));
  expect("list limit 1", await listed({ prefix: [] }, { limit: 1 }), [[["a"], "a"]]);
  expect("list limit 1 reverse", await listed({ prefix: [] }, { limit: 1, reverse: true }), [[["b"], "b"]]);
  for (const bad of ["foo", ""]) {
    await rejects(`list consistency ${show(bad)}`, () => collect(kv.list({ prefix: [] }, { consistency: bad as never })));
  }
  for (const bad of [-1, 0, 1001]) await rejects(`list batchSize ${bad}`, () => collect(kv.list({ prefix: [] }, { batchSize: bad })));
  expect("list consistency eventual", (await listed({ prefix: [] }, { consistency: "eventual" })).length, 4);

  // ---- cursors ----
  const it = kv.list({ prefix: [] });
  throwsNow("a cursor before the first entry", () => it.cursor);
  await it.next();
  const c1 = it.cursor;
  await it.next();
  const c2 = it.cursor;
  await collect(it);
  expect("resume after the first entry", await listed({ prefix: [] }, { cursor: c1 }), [...both, [["b"], "b"]]);
  expect("resume after the second entry", await listed({ prefix: [] }, { cursor: c2 }), [[["a", "b"], "a_b"], [["b"], "b"]]);
  await rejects("a cursor that is not one", () => collect(kv.list({ prefix: [] }, { cursor: "." })));

  // ---- watch ----
  await kv.delete(["w1"]);
  const reader = kv.watch([["w1"], ["w2"]]).getReader();
  const first = await reader.read();
  expect("watch: the initial state", first.value!.map((e) => e.value), [null, null]);
  await kv.set(["w1"], "v1");
  let seen = await reader.read();
  if (seen.value!.every((e) => e.value === null)) seen = await reader.read();
  expect("watch: a set", seen.value!.map((e) => e.value), ["v1", null]);
  expectTrue("watch: its versionstamp", VS.test(seen.value![0].versionstamp ?? ""), show(seen.value));
  await kv.set(["w2"], "v2");
  expect("watch: a second set", (await reader.read()).value!.map((e) => e.value), ["v1", "v2"]);
  await kv.delete(["w1"]);
  expect("watch: a delete", (await reader.read()).value!.map((e) => e.value), [null, "v2"]);
  await reader.cancel();
  expect("watch: done after cancel", (await reader.read()).done, true);

  // ---- several mutations of one key in one commit: applied in order ----
  const k1 = ["k1"];
  await kv.atomic().set(k1, "a").set(k1, "b").commit();
  expect("set a, set b", (await kv.get(k1)).value, "b");
  await kv.atomic().set(k1, "a").delete(k1).commit();
  expect("set, delete", (await kv.get(k1)).value, null);
  await kv.atomic().delete(k1).set(k1, "a").commit();
  expect("delete, set", (await kv.get(k1)).value, "a");
  await kv.atomic().delete(k1).sum(k1, 1n).sum(k1, 2n).commit();
  u64("delete, sum 1, sum 2", (await kv.get(k1)).value, 3n);
  await kv.atomic().delete(k1).sum(k1, 1n).sum(k1, 2n).sum(k1, 3n).commit();
  u64("delete, sum 1, 2, 3", (await kv.get(k1)).value, 6n);
  await kv.atomic().delete(k1).sum(k1, 1n).sum(k1, 2n).set(k1, "5").commit();
  expect("delete, sums, set", (await kv.get(k1)).value, "5");
  await kv.atomic().delete(k1).sum(k1, 5n).max(k1, 100n).max(k1, 50n).max(k1, 150n).max(k1, 75n).commit();
  u64("delete, sum, max ×4", (await kv.get(k1)).value, 150n);
  await kv.atomic().min(k1, 100n).min(k1, 50n).min(k1, 150n).min(k1, 75n).commit();
  u64("min ×4", (await kv.get(k1)).value, 50n);

  // ---- sum on a bigint (not a KvU64) fails, in one commit or two ----
  await rejects("set 0n then sum in one commit", () => kv.atomic().delete(k1).set(k1, 0n).sum(k1, 2n).commit());
  u64("the failed commit changed nothing", (await kv.get(k1)).value, 50n);
  await kv.set(k1, 0n);
  await rejects("sum on a stored bigint", () => kv.atomic().sum(k1, 2n).commit());
  expect("the stored bigint is unchanged", (await kv.get(k1)).value, 0n);

  // ---- documented limits ----
  await rejects("a key over 2048 bytes", () => kv.set([new Uint8Array(2048 + 10)], "too long"));
  await rejects("a value over 64 KiB", () => kv.set(["k1"], new Uint8Array(64 * 1024 * 10)));
  const batch = kv.atomic();
  for (let i = 0; i < 10; i++) batch.set(["batch", i], `${i}`);
  expect("ten mutations in one commit", (await batch.commit()).ok, true);
  expect("ten mutations: all there", (await collect(kv.list({ prefix: ["batch"] }))).length, 10);

  // ---- after close ----
  kv.close();
  await rejects("a commit after close", () => kv.atomic().set(["a"], "a").commit());
  throwsNow("a second close", () => kv.close());
  await rejects("delete after close", () => kv.delete(["a"]));
  await rejects("get after close", () => kv.get(["a"]));
  await rejects("getMany after close", () => kv.getMany([["a"]]));
  await rejects("set after close", () => kv.set(["a"], "a"));
  await rejects("list after close", () => collect(kv.list({ prefix: [] })));

  // ---- reopen: data and versionstamps persist, and keep growing ----
  {
    const kv2 = await Deno.openKv(url);
    const w = await kv2.set(["k1"], "v1");
    kv2.close();
    const kv3 = await Deno.openKv(url);
    const r = await kv3.get(["k1"]);
    expect("a reopened database: value", r.value, "v1");
    expect("a reopened database: versionstamp", r.versionstamp, w.versionstamp);
    const w2 = await kv3.set(["k1"], "v2");
    expectTrue("a reopened database: versionstamps grow", w2.versionstamp > w.versionstamp, `${w2.versionstamp} <= ${w.versionstamp}`);
    kv3.close();
  }
}

try {
  await main();
  console.log(`deno e2e: all ${n} checks passed against ${url}`);
  Deno.exit(0);
} catch (e) {
  if (e instanceof CheckFailure) console.error(`FAIL ${e.message}`);
  else console.error(`FAIL deno e2e: unexpected error: ${(e as Error)?.stack ?? e}`);
  Deno.exit(1);
}
