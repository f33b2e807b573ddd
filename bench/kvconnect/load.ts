// KV Connect load from Deno's own client (one process, CONC async loops).
//   deno run --unstable-kv --allow-net --allow-env load.ts URL MODE SECONDS CONC KEYS
// Token in DENO_KV_ACCESS_TOKEN. MODE:
//   load    write KEYS keys ["bench", i] (100-byte strings) and the counters; no timing
//   get     point reads of random ["bench", i]
//   set     single-key writes of random ["bench", i] (100-byte strings)
//   atomic  one commit = sum on 3 random counters ["ctr", j] + a set of ["bench", i]
// Prints one JSON line: {"mode","ops","errors","seconds","ops_per_s","p50_ms","p90_ms","p99_ms","max_ms","over_30ms_pct"}.
const [url, mode, secondsArg, concArg, keysArg] = Deno.args;
const seconds = Number(secondsArg ?? 10), conc = Number(concArg ?? 32), keys = Number(keysArg ?? 1000);
const kv = await Deno.openKv(url);
const value = "v".repeat(100);
const rnd = (n: number) => Math.floor(Math.random() * n);

if (mode === "load") {
  for (let base = 0; base < keys; base += 100) {
    const batch = [];
    for (let i = base; i < Math.min(keys, base + 100); i++) batch.push(kv.set(["bench", i], value));
    await Promise.all(batch);
  }
  for (let j = 0; j < 100; j++) await kv.set(["ctr", j], new Deno.KvU64(0n));
  // Warm-up: a second of reads, so connections are open.
  const end = performance.now() + 1000;
  await Promise.all(Array.from({ length: conc }, async () => {
    while (performance.now() < end) await kv.get(["bench", rnd(keys)]);
  }));
  kv.close();
  console.log(JSON.stringify({ mode, keys }));
  Deno.exit(0);
}

const op: () => Promise<unknown> = {
  get: () => kv.get(["bench", rnd(keys)]),
  set: () => kv.set(["bench", rnd(keys)], value),
  atomic: async () => {
    const r = await kv.atomic().sum(["ctr", rnd(100)], 1n).sum(["ctr", rnd(100)], 1n).sum(["ctr", rnd(100)], 1n)
      .set(["bench", rnd(keys)], value).commit();
    if (!r.ok) throw new Error("commit not ok");
  },
}[mode as "get" | "set" | "atomic"];
if (!op) {
  console.error(`unknown mode ${mode}`);
  Deno.exit(2);
}
const lat: number[] = [];
let errors = 0;
let firstError = "";
const t0 = performance.now();
const end = t0 + seconds * 1000;
await Promise.all(Array.from({ length: conc }, async () => {
  while (performance.now() < end) {
    const s = performance.now();
    try {
      await op();
      lat.push(performance.now() - s);
    } catch (e) {
      errors++;
      firstError ||= String(e).slice(0, 200);
    }
  }
}));
const took = (performance.now() - t0) / 1000;
lat.sort((a, b) => a - b);
const q = (p: number) => (lat.length ? lat[Math.min(lat.length - 1, Math.floor(p * lat.length))] : NaN);
const r3 = (x: number) => Math.round(x * 1000) / 1000;
console.log(JSON.stringify({
  mode, ops: lat.length, errors, first_error: firstError || undefined, seconds: r3(took),
  ops_per_s: Math.round(lat.length / took), p50_ms: r3(q(0.5)), p90_ms: r3(q(0.9)), p99_ms: r3(q(0.99)), max_ms: r3(lat.at(-1) ?? NaN),
  // Share of operations that took 30 ms or more (a TCP delayed-ACK stall is ~40 ms).
  over_30ms_pct: lat.length ? r3((100 * lat.filter((x) => x >= 30).length) / lat.length) : NaN,
}));
kv.close();
Deno.exit(0);
