// The KV Connect conformance checks a real client runs against a server.
// Shared by deno_client.ts (Deno's built-in client) and node_client.mjs
// (npm @deno/kv): both expose the same `Deno.Kv` API.
//
// `run(kv, opts)` prints one `ok N - what` line per check and throws a
// `CheckFailure` on the first mismatch (the caller prints it and exits 1).
//
// opts:
//   client     "deno" | "node" (in the messages; also selects key parts the
//              npm client cannot encode faithfully, see `keyParts`)
//   KvU64      the client's KvU64 class
//   listsIncludePrefixKeyInReverse  the client's quirk (npm @deno/kv), see "list"
//   skipKeyParts  key parts the client cannot encode faithfully ("-0", "NaN")
//   lazyExpiry true when the server expires keys lazily (denokv): an
//              expired key still read back is then a note, not a failure
//   log        line printer (console.log)

export class CheckFailure extends Error {}

// ------------------------------------------------------------ helpers ----

function isU64(v) {
  return v !== null && typeof v === "object" && typeof v.value === "bigint" &&
    (v.constructor?.name === "KvU64" || v.constructor?.name === "_KvU64");
}

export function show(v, depth = 0) {
  if (depth > 4) return "…";
  if (v === undefined) return "undefined";
  if (v === null) return "null";
  if (typeof v === "bigint") return `${v}n`;
  if (typeof v === "number") return Object.is(v, -0) ? "-0" : String(v);
  if (typeof v === "string") return JSON.stringify(v);
  if (v instanceof Uint8Array) {
    const head = [...v.subarray(0, 16)].join(",");
    return `Uint8Array(${v.length})[${head}${v.length > 16 ? ",…" : ""}]`;
  }
  if (isU64(v)) return `KvU64(${v.value}n)`;
  if (v instanceof Date) return `Date(${v.toISOString()})`;
  if (v instanceof Map) return `Map{${[...v].map(([k, x]) => `${show(k, depth + 1)}=>${show(x, depth + 1)}`).join(", ")}}`;
  if (v instanceof Set) return `Set{${[...v].map((x) => show(x, depth + 1)).join(", ")}}`;
  if (Array.isArray(v)) return `[${v.map((x) => show(x, depth + 1)).join(", ")}]`;
  if (typeof v === "object") {
    return `{${Object.entries(v).map(([k, x]) => `${k}: ${show(x, depth + 1)}`).join(", ")}}`;
  }
  return String(v);
}

/** Structural equality that tells -0 from 0, NaN equals NaN, and KvU64/Uint8Array/Date/Map/Set by content. */
export function same(a, b) {
  if (typeof a !== typeof b) return false;
  if (typeof a === "number") return Object.is(a, b);
  if (a === null || b === null || typeof a !== "object") return a === b;
  if (isU64(a) || isU64(b)) return isU64(a) && isU64(b) && a.value === b.value;
  if (a instanceof Uint8Array || b instanceof Uint8Array) {
    if (!(a instanceof Uint8Array && b instanceof Uint8Array) || a.length !== b.length) return false;
    for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
    return true;
  }
  if (a instanceof Date || b instanceof Date) {
    return a instanceof Date && b instanceof Date && a.getTime() === b.getTime();
  }
  if (a instanceof Map || b instanceof Map) {
    if (!(a instanceof Map && b instanceof Map) || a.size !== b.size) return false;
    for (const [k, v] of a) if (!b.has(k) || !same(v, b.get(k))) return false;
    return true;
  }
  if (a instanceof Set || b instanceof Set) {
    if (!(a instanceof Set && b instanceof Set) || a.size !== b.size) return false;
    for (const v of a) if (!b.has(v)) return false;
    return true;
  }
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  const ka = Object.keys(a), kb = Object.keys(b);
  if (ka.length !== kb.length) return false;
  return ka.every((k) => Object.prototype.hasOwnProperty.call(b, k) && same(a[k], b[k]));
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const VS = /^[0-9a-f]{20}$/;

async function collect(iter) {
  const out = [];
  for await (const e of iter) out.push(e);
  return out;
}

/** Resolve `p`, or fail after `ms` with `what` (a hung client call is a failure, not a hung test). */
async function within(ms, what, p) {
  let t;
  const timeout = new Promise((_, rej) => {
    t = setTimeout(() => rej(new CheckFailure(`${what}: no answer within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(t);
  }
}

// -------------------------------------------------------------- checks ----

export async function run(kv, opts) {
  const { client, KvU64, lazyExpiry = false, log = console.log } = opts;
  let n = 0;
  const ok = (what) => log(`ok ${++n} - ${client}: ${what}`);
  const fail = (what, detail) => {
    throw new CheckFailure(`${client}: ${what}: ${detail}`);
  };
  const expect = (what, actual, expected) => {
    if (!same(actual, expected)) fail(what, `got ${show(actual)}, expected ${show(expected)}`);
  };
  const expectTrue = (what, cond, detail) => {
    if (!cond) fail(what, detail);
  };
  const committed = (what, r) => {
    expectTrue(what, r && r.ok === true && VS.test(r.versionstamp ?? ""), `commit result ${show(r)}`);
    return r.versionstamp;
  };
  const keysOf = (entries) => entries.map((e) => e.key);

  // Every run works under its own prefix, so runs never see each other.
  const P = ["kvc", client, `${Date.now()}-${Math.random().toString(36).slice(2, 10)}`];
  const K = (...parts) => [...P, ...parts];

  // ---- values keep their type: set / get / getMany
  const big = new Uint8Array(65536);
  for (let i = 0; i < big.length; i++) big[i] = (i * 31 + 7) & 0xff;
  const values = [
    ["string", "hello, wörld \u{1F600} \0 end"],
    ["empty string", ""],
    ["number", 3.25],
    ["integer", 42],
    ["negative zero", -0],
    ["NaN", NaN],
    ["bigint", 12345678901234567890123n],
    ["boolean", true],
    ["null", null],
    ["array", [1, "two", [3], { four: 4 }]],
    ["object", { a: 1, nested: { b: [true, null, "x"] }, when: new Date(1700000000123), m: new Map([["k", 1n]]), s: new Set(["a", 2]) }],
    ["Uint8Array", new Uint8Array([0, 1, 2, 127, 128, 255])],
    ["empty Uint8Array", new Uint8Array(0)],
    ["64 KiB Uint8Array", big],
    ["KvU64", new KvU64(18446744073709551615n)],
    ["KvU64 zero", new KvU64(0n)],
  ];
  const stamps = [];
  for (const [name, v] of values) {
    const vs = committed(`set ${name}`, await kv.set(K("v", name), v));
    const e = await kv.get(K("v", name));
    expect(`get ${name}: key`, e.key, K("v", name));
    expect(`get ${name}: value`, e.value, v);
    expect(`get ${name}: versionstamp`, e.versionstamp, vs);
    if (name.startsWith("KvU64")) expectTrue(`get ${name}: type`, isU64(e.value), `got ${show(e.value)} (${e.value?.constructor?.name}), not a KvU64`);
    if (name.endsWith("Uint8Array")) expectTrue(`get ${name}: type`, e.value instanceof Uint8Array, `got a ${e.value?.constructor?.name}`);
    stamps.push(vs);
    ok(`set/get ${name} keeps value and type (${show(v).slice(0, 60)})`);
  }
  const missing = await kv.get(K("v", "never written"));
  expect("get of an absent key: value", missing.value, null);
  expect("get of an absent key: versionstamp", missing.versionstamp, null);
  ok("get of an absent key → value null, versionstamp null");

  for (let i = 0; i < values.length; i += 9) {
    const chunk = values.slice(i, i + 9);
    const keys = [...chunk.map(([name]) => K("v", name)), K("v", "never written")];
    const got = await kv.getMany(keys);
    expect("getMany: count", got.length, keys.length);
    chunk.forEach(([name, v], j) => {
      expect(`getMany[${j}] ${name}: key`, got[j].key, keys[j]);
      expect(`getMany[${j}] ${name}: value`, got[j].value, v);
      expect(`getMany[${j}] ${name}: versionstamp`, got[j].versionstamp, stamps[i + j]);
    });
    expect("getMany: the absent key's value", got[chunk.length].value, null);
    expect("getMany: the absent key's versionstamp", got[chunk.length].versionstamp, null);
  }
  ok(`getMany of ${values.length} values + absent keys, in order`);

  // ---- list
  for (let i = 0; i < 10; i++) committed(`set list ${i}`, await kv.set(K("list", i), `item-${i}`));
  // npm @deno/kv 0.14 starts a prefix range at the prefix key itself and
  // drops it only when it comes first, so its reverse lists end with it: the
  // prefix key is written only for clients that exclude it both ways.
  if (!opts.listsIncludePrefixKeyInReverse) await kv.set(K("list"), "the prefix key itself (not in a prefix list)");
  await kv.set(K("lisu", 0), "a neighbour prefix");
  const L = (...is) => is.map((i) => K("list", i));
  const range = (a, b) => Array.from({ length: b - a }, (_, i) => a + i);
  const all = await collect(kv.list({ prefix: K("list") }));
  expect("list prefix: keys", keysOf(all), L(...range(0, 10)));
  expect("list prefix: values", all.map((e) => e.value), range(0, 10).map((i) => `item-${i}`));
  expectTrue("list prefix: versionstamps", all.every((e) => VS.test(e.versionstamp)), show(all.map((e) => e.versionstamp)));
  ok(`list prefix → 10 entries in key order, without ${opts.listsIncludePrefixKeyInReverse ? "" : "the prefix key or "}a neighbour`);
  expect("list start/end", keysOf(await collect(kv.list({ start: K("list", 3), end: K("list", 7) }))), L(3, 4, 5, 6));
  ok("list start/end → [start, end)");
  expect("list prefix+start", keysOf(await collect(kv.list({ prefix: K("list"), start: K("list", 5) }))), L(5, 6, 7, 8, 9));
  expect("list prefix+end", keysOf(await collect(kv.list({ prefix: K("list"), end: K("list", 2) }))), L(0, 1));
  ok("list prefix+start, prefix+end");
  expect("list reverse", keysOf(await collect(kv.list({ prefix: K("list") }, { reverse: true }))), L(...range(0, 10).reverse()));
  ok("list reverse");
  expect("list limit", keysOf(await collect(kv.list({ prefix: K("list") }, { limit: 4 }))), L(0, 1, 2, 3));
  expect("list reverse limit", keysOf(await collect(kv.list({ prefix: K("list") }, { limit: 3, reverse: true }))), L(9, 8, 7));
  ok("list limit, reverse + limit");
  expect("list batchSize 3", keysOf(await collect(kv.list({ prefix: K("list") }, { batchSize: 3 }))), L(...range(0, 10)));
  ok("list in batches of 3 (several snapshot reads) → all 10");
  for (const reverse of [false, true]) {
    const pages = [];
    let cursor;
    // A short page ends the range. (After it, Deno's client has the cursor
    // "" and the npm client the last key's; neither is used.)
    for (let page = 0; page < 5; page++) {
      const it = kv.list({ prefix: K("list") }, { limit: 4, cursor, reverse });
      const got = await collect(it);
      pages.push(keysOf(got).map((k) => k[k.length - 1]));
      if (got.length < 4) break;
      cursor = it.cursor;
      expectTrue(`cursor paging (reverse=${reverse}): cursor after page ${page}`, typeof cursor === "string" && cursor !== "", show(cursor));
    }
    const want = reverse ? [[9, 8, 7, 6], [5, 4, 3, 2], [1, 0]] : [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]];
    expect(`cursor paging (reverse=${reverse})`, pages, want);
  }
  ok("cursor paging, forward and reverse: pages of 4, 4, 2");

  // ---- delete
  await kv.delete(K("list", 4));
  expect("delete: get", (await kv.get(K("list", 4))).versionstamp, null);
  expect("delete: list", keysOf(await collect(kv.list({ prefix: K("list") }))), L(0, 1, 2, 3, 5, 6, 7, 8, 9));
  await kv.delete(K("list", "never written"));
  ok("delete: gone from get and list; deleting an absent key is fine");

  // ---- atomic with checks
  const ak = K("atomic", "a");
  const v1 = committed("set a", await kv.set(ak, "v1"));
  const v2 = committed("atomic with a matching check", await kv.atomic().check({ key: ak, versionstamp: v1 }).set(ak, "v2").commit());
  expectTrue("atomic success: versionstamp grows", v2 > v1, `${v2} <= ${v1}`);
  expect("atomic success: value", (await kv.get(ak)).value, "v2");
  ok("atomic: matching check → ok, value written");
  const stale = await kv.atomic().check({ key: ak, versionstamp: v1 }).set(ak, "v3").set(K("atomic", "side"), "must not exist").commit();
  expectTrue("atomic conflict", stale && stale.ok === false, `expected { ok: false }, got ${show(stale)}`);
  expect("atomic conflict: value unchanged", (await kv.get(ak)).value, "v2");
  expect("atomic conflict: nothing else written", (await kv.get(K("atomic", "side"))).versionstamp, null);
  ok("atomic: stale check → { ok: false }, no mutation applied");
  const fresh = K("atomic", "fresh");
  committed("check null on an absent key", await kv.atomic().check({ key: fresh, versionstamp: null }).set(fresh, 1).commit());
  const again = await kv.atomic().check({ key: fresh, versionstamp: null }).set(fresh, 2).commit();
  expectTrue("check null on a present key", again.ok === false, show(again));
  expect("check null on a present key: value", (await kv.get(fresh)).value, 1);
  ok("atomic: check versionstamp null (absent) → ok once, then { ok: false }");
  const two = [K("atomic", "x"), K("atomic", "y")];
  const vsMulti = committed("multi-mutation atomic", await kv.atomic().set(two[0], "x").set(two[1], "y").delete(fresh).commit());
  const gm = await kv.getMany([...two, fresh]);
  expect("multi-mutation: one versionstamp", gm.map((e) => e.versionstamp), [vsMulti, vsMulti, null]);
  ok("atomic: set+set+delete commit together under one versionstamp");
  const twoChecks = await kv.atomic().check(gm[0]).check({ key: ak, versionstamp: v1 }).set(two[0], "no").commit();
  expectTrue("two checks, one stale", twoChecks.ok === false, show(twoChecks));
  expect("two checks, one stale: value", (await kv.get(two[0])).value, "x");
  ok("atomic: one stale check among two → { ok: false }");

  // ---- sum / min / max on KvU64
  const c = K("counter", "c");
  committed("set counter", await kv.set(c, new KvU64(10n)));
  committed("sum", await kv.atomic().sum(c, 5n).commit());
  expect("sum 10+5", (await kv.get(c)).value, new KvU64(15n));
  committed("min", await kv.atomic().min(c, 3n).commit());
  expect("min(15, 3)", (await kv.get(c)).value, new KvU64(3n));
  committed("min larger", await kv.atomic().min(c, 7n).commit());
  expect("min(3, 7)", (await kv.get(c)).value, new KvU64(3n));
  committed("max", await kv.atomic().max(c, 100n).commit());
  expect("max(3, 100)", (await kv.get(c)).value, new KvU64(100n));
  committed("max smaller", await kv.atomic().max(c, 1n).commit());
  expect("max(100, 1)", (await kv.get(c)).value, new KvU64(100n));
  ok("sum / min / max on a KvU64");
  committed("ops on absent keys", await kv.atomic().sum(K("counter", "s0"), 7n).min(K("counter", "m0"), 8n).max(K("counter", "x0"), 9n).commit());
  expect("sum/min/max on absent keys", (await kv.getMany([K("counter", "s0"), K("counter", "m0"), K("counter", "x0")])).map((e) => e.value), [new KvU64(7n), new KvU64(8n), new KvU64(9n)]);
  ok("sum / min / max on absent keys → the operand");
  committed("wrap", await kv.atomic().set(K("counter", "w"), new KvU64(18446744073709551615n)).commit());
  committed("sum wraps", await kv.atomic().sum(K("counter", "w"), 2n).commit());
  expect("sum wraps at 2^64", (await kv.get(K("counter", "w"))).value, new KvU64(1n));
  ok("sum wraps at 2^64 (max + 2 = 1)");
  const trio = [K("counter", "t1"), K("counter", "t2"), K("counter", "t3")];
  for (let i = 0; i < 4; i++) {
    committed("3 sums + set", await kv.atomic().sum(trio[0], 1n).sum(trio[1], 2n).sum(trio[2], 3n).set(K("counter", "last"), i).commit());
  }
  expect("3 sums x4", (await kv.getMany(trio)).map((e) => e.value), [new KvU64(4n), new KvU64(8n), new KvU64(12n)]);
  ok("atomic: sum on 3 keys + a set, 4 times");
  committed("string under a counter", await kv.set(K("counter", "str"), "not a number"));
  let threw = null;
  try {
    const r = await within(15000, "sum on a non-KvU64 value", kv.atomic().sum(K("counter", "str"), 1n).commit());
    threw = `no error: ${show(r)}`;
  } catch (e) {
    if (e instanceof CheckFailure) throw e;
    threw = e;
  }
  expectTrue("sum on a non-KvU64 value must fail", threw instanceof Error, String(threw));
  expect("sum on a non-KvU64 value: value unchanged", (await kv.get(K("counter", "str"))).value, "not a number");
  ok(`sum on a string value → the commit throws (${String(threw.message).split("\n")[0].slice(0, 100)})`);

  // ---- versionstamps strictly increase across commits
  let prev = "";
  for (let i = 0; i < 20; i++) {
    const r = i % 2 ? await kv.set(K("vs", i % 3), i) : await kv.atomic().sum(K("vs", "n"), 1n).commit();
    const vs = committed("versionstamp sequence", r);
    expectTrue("versionstamps strictly increase", vs > prev, `commit ${i}: ${vs} after ${prev}`);
    prev = vs;
  }
  ok("versionstamps strictly increase over 20 commits (sets and sums)");

  // ---- expireIn
  const tk = K("ttl", "short");
  committed("set expireIn 500", await kv.set(tk, "soon gone", { expireIn: 500 }));
  committed("set expireIn 1h", await kv.set(K("ttl", "long"), "stays", { expireIn: 3600_000 }));
  committed("atomic set expireIn 500", await kv.atomic().set(K("ttl", "atomic"), "soon gone too", { expireIn: 500 }).commit());
  expect("expireIn: readable at once", (await kv.get(tk)).value, "soon gone");
  await sleep(1500);
  const late = await kv.getMany([tk, K("ttl", "atomic"), K("ttl", "long")]);
  const listed = keysOf(await collect(kv.list({ prefix: K("ttl") })));
  const expiredOk = late[0].versionstamp === null && late[1].versionstamp === null && same(listed, [K("ttl", "long")]);
  if (!expiredOk && lazyExpiry) {
    log(`# ${client}: note: the server expires lazily: 1.5 s after expireIn 500 ms get shows ${show(late.map((e) => e.value))}, list ${show(listed)}`);
  } else {
    expect("expireIn 500 ms, after 1.5 s: get", late.map((e) => e.value), [null, null, "stays"]);
    expect("expireIn 500 ms, after 1.5 s: list", listed, [K("ttl", "long")]);
  }
  ok(`expireIn 500 ms: gone from get and list after 1.5 s${!expiredOk && lazyExpiry ? " (tolerated: lazy expiry)" : ""}; expireIn 1 h stays`);

  // ---- watch
  const w1 = K("watch", 1), w2 = K("watch", 2);
  const wv = committed("set watched", await kv.set(w1, "before"));
  const reader = kv.watch([w1, w2]).getReader();
  try {
    const first = await within(10000, "watch: first message", reader.read());
    expectTrue("watch: first message", !first.done && Array.isArray(first.value) && first.value.length === 2, show(first));
    expect("watch: first message, watched key", [first.value[0].value, first.value[0].versionstamp], ["before", wv]);
    expect("watch: first message, absent key", [first.value[1].value, first.value[1].versionstamp], [null, null]);
    ok("watch: first message has both keys' current entries");
    await sleep(200);
    const cv = committed("change a watched key", await kv.set(w2, "after"));
    let seen = null;
    const deadline = Date.now() + 15000;
    while (!seen && Date.now() < deadline) {
      const m = await within(deadline - Date.now() + 1, "watch: change", reader.read());
      expectTrue("watch: stream ended", !m.done, "the watch stream ended");
      if (m.value[1].versionstamp === cv) seen = m.value;
    }
    expectTrue("watch sees a change made after it started", seen !== null, "no message with the new versionstamp within 15 s");
    expect("watch: changed entry", seen[1].value, "after");
    if (seen[0].versionstamp === null) {
      // Deno's CLI (ext/kv `WatchEntry` is a serde-untagged enum) hands an
      // `Unchanged` key to JS as null, i.e. "absent"; denokv never sends
      // `changed: false`, it repeats every key's entry in every frame.
      fail("watch: unchanged entry", `the key not written since the watch started came back absent (value ${show(seen[0].value)}, versionstamp null; it is ${wv}): a frame that marks it \`changed: false\` reads as "deleted" in this client`);
    }
    expect("watch: unchanged entry", seen[0].versionstamp, wv);
    ok("watch: a change made after the watch started arrives with its versionstamp");
  } finally {
    await reader.cancel().catch(() => {});
  }

  // ---- keys with every part type: round-trip and Deno's order
  // Expected order is the byte order of Deno's key encoding (FoundationDB
  // tuple layer): Uint8Array < string < bigint < number < false < true;
  // within a type by value (bytes/strings by UTF-8 bytes, numbers with
  // -Infinity < … < -0 < 0 < … < Infinity < NaN).
  const parts = [
    new Uint8Array([]), new Uint8Array([0]), new Uint8Array([0, 1]), new Uint8Array([1]), new Uint8Array([255]),
    "", "\0", "\0a", "a", "a\0", "a\0b", "b", "é", "日本", "\u{1F600}",
    -(2n ** 70n), -256n, -1n, 0n, 1n, 255n, 256n, 2n ** 64n, 2n ** 70n,
    -Infinity, -1.5, -1, ...(opts.skipKeyParts?.includes("-0") ? [] : [-0]), 0, Number.MIN_VALUE, 0.5, 1, 1e300, Infinity,
    ...(opts.skipKeyParts?.includes("NaN") ? [] : [NaN]),
    false, true,
  ];
  // Written in a scrambled order, so that the list order is the server's.
  const order = parts.map((_, i) => (i * 17) % parts.length);
  expect("scramble is a permutation", new Set(order).size, parts.length);
  for (const i of order) {
    const part = parts[i];
    committed(`set key part ${show(part)}`, await kv.set(K("kp", part), i));
    const e = await kv.get(K("kp", part));
    expect(`get key part ${show(part)}: value`, e.value, i);
    expect(`get key part ${show(part)}: key`, e.key, K("kp", part));
  }
  ok(`${parts.length} keys with Uint8Array, string (Unicode, "\\0"), bigint, number (negative, float, ±Infinity${["-0", "NaN"].filter((p) => !opts.skipKeyParts?.includes(p)).map((p) => `, ${p}`).join("")}), boolean parts round-trip`);
  const listedParts = await collect(kv.list({ prefix: K("kp") }));
  expect("key parts: list order", listedParts.map((e) => e.key[e.key.length - 1]), parts);
  expect("key parts: list values", listedParts.map((e) => e.value), parts.map((_, i) => i));
  const rev = await collect(kv.list({ prefix: K("kp") }, { reverse: true }));
  expect("key parts: reverse list order", rev.map((e) => e.key[e.key.length - 1]), [...parts].reverse());
  ok("key parts list in Deno's order (bytes < string < bigint < number < false < true), and reversed");
  const multi = [new Uint8Array([9]), "s", 3n, 2.5, true];
  committed("multi-part key", await kv.set(K("mp", ...multi), "m"));
  expect("multi-part key", (await kv.get(K("mp", ...multi))).value, "m");
  expect("multi-part key listed", keysOf(await collect(kv.list({ prefix: K("mp", new Uint8Array([9]), "s") }))), [K("mp", ...multi)]);
  ok("a key with one part of each type round-trips and lists under a partial prefix");
  return n;
}
