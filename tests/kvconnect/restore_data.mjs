// The known data deno_write.ts writes and deno_read.ts expects: key i →
// a value whose type cycles through a V8-serialized object, a string,
// a Uint8Array and a KvU64.
export const PREFIX = ["restore"];

export function expected(i, KvU64) {
  switch (i % 4) {
    case 0: return { i, label: `object ${i}`, tags: ["a", i], at: new Date(1700000000000 + i) };
    case 1: return `string ${i} ${"x".repeat(i % 40)} ü`;
    case 2: return new Uint8Array(Array.from({ length: 1 + (i % 100) }, (_, j) => (i + j) & 0xff));
    default: return new KvU64(BigInt(i) * 1000003n);
  }
}
