// Example sidekv guest in JavaScript: HMAC-signed requests.
//
// The operator passes the shared key through the guest config:
//
//     KVSTORE_GUEST_HMAC_KEY='a long random string'
//
// Every request carries
//
//     X-Signature: <hex HMAC-SHA256(key, METHOD + "\n" + PATH_WITH_QUERY + "\n" + body)>
//
// where METHOD is upper-case and PATH_WITH_QUERY is the path and query exactly
// as sent (still percent-encoded). A valid signature gives `GET /{key}` (the
// value's bytes), `POST|PUT /{key}` (store the body) and `DELETE /{key}`; a
// missing or wrong signature gives 401.
//
// Built with componentize-js with every WASI feature disabled (see build.mjs),
// so there is no WebCrypto here: SHA-256 and HMAC are implemented below.
// Nothing is kept between requests except the key schedule derived from the
// configured key (the host may reuse one instance for many requests).

import { get as configGet } from 'sidekv:store/config@0.2.0';
import * as kv from 'sidekv:store/kv@0.2.0';

// ---------------------------------------------------------------- SHA-256 --

const K = new Uint32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);

/** SHA-256 of the concatenation of `parts` (Uint8Arrays). Returns 32 bytes. */
export function sha256(...parts) {
  let len = 0;
  for (const p of parts) len += p.length;
  // Message + 0x80 + zero padding + 64-bit big-endian bit length, to a multiple of 64.
  const padded = new Uint8Array(((len + 9 + 63) >> 6) << 6);
  let off = 0;
  for (const p of parts) {
    padded.set(p, off);
    off += p.length;
  }
  padded[len] = 0x80;
  const dv = new DataView(padded.buffer);
  const bits = len * 8;
  dv.setUint32(padded.length - 8, Math.floor(bits / 0x100000000));
  dv.setUint32(padded.length - 4, bits >>> 0);

  const h = new Uint32Array([
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
  ]);
  const w = new Uint32Array(64);
  for (let block = 0; block < padded.length; block += 64) {
    for (let i = 0; i < 16; i++) w[i] = dv.getUint32(block + i * 4);
    for (let i = 16; i < 64; i++) {
      const a = w[i - 15], b = w[i - 2];
      const s0 = ((a >>> 7) | (a << 25)) ^ ((a >>> 18) | (a << 14)) ^ (a >>> 3);
      const s1 = ((b >>> 17) | (b << 15)) ^ ((b >>> 19) | (b << 13)) ^ (b >>> 10);
      w[i] = (w[i - 16] + s0 + w[i - 7] + s1) | 0;
    }
    let a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (let i = 0; i < 64; i++) {
      const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
      const ch = (e & f) ^ (~e & g);
      const t1 = (hh + S1 + ch + K[i] + w[i]) | 0;
      const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
      const maj = (a & b) ^ (a & c) ^ (b & c);
      const t2 = (S0 + maj) | 0;
      hh = g; g = f; f = e; e = (d + t1) | 0;
      d = c; c = b; b = a; a = (t1 + t2) | 0;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
  }
  const out = new Uint8Array(32);
  const odv = new DataView(out.buffer);
  for (let i = 0; i < 8; i++) odv.setUint32(i * 4, h[i]);
  return out;
}

// ------------------------------------------------------------------ HMAC --

const enc = new TextEncoder();

/** The inner and outer padded keys of HMAC-SHA256 (RFC 2104) for `key`. */
function hmacPads(key) {
  let k = key.length > 64 ? sha256(key) : key;
  const ipad = new Uint8Array(64).fill(0x36);
  const opad = new Uint8Array(64).fill(0x5c);
  for (let i = 0; i < k.length; i++) {
    ipad[i] ^= k[i];
    opad[i] ^= k[i];
  }
  return { ipad, opad };
}

/** HMAC-SHA256 of the concatenation of `parts` under precomputed pads. */
export function hmacSha256(pads, ...parts) {
  return sha256(pads.opad, sha256(pads.ipad, ...parts));
}

/** Lower-case hex of `bytes`. */
export function toHex(bytes) {
  let s = '';
  for (const b of bytes) s += (b < 16 ? '0' : '') + b.toString(16);
  return s;
}

/** Parse hex (either case) into bytes; `null` if it is not 2n hex digits. */
function fromHex(s) {
  if (s.length % 2 !== 0) return null;
  const out = new Uint8Array(s.length / 2);
  for (let i = 0; i < out.length; i++) {
    const hi = hexVal(s.charCodeAt(2 * i));
    const lo = hexVal(s.charCodeAt(2 * i + 1));
    if (hi < 0 || lo < 0) return null;
    out[i] = (hi << 4) | lo;
  }
  return out;
}

function hexVal(c) {
  if (c >= 48 && c <= 57) return c - 48; // 0-9
  if (c >= 97 && c <= 102) return c - 87; // a-f
  if (c >= 65 && c <= 70) return c - 55; // A-F
  return -1;
}

/**
 * Constant-time comparison of two byte strings: the time depends only on the
 * length of `expected` (always 32 here), never on where they first differ.
 */
function constantTimeEqual(expected, presented) {
  let diff = expected.length ^ presented.length;
  for (let i = 0; i < expected.length; i++) {
    diff |= expected[i] ^ (i < presented.length ? presented[i] : 0);
  }
  return diff === 0;
}

// --------------------------------------------------------------- handler --

let cachedKey; // the configured key string the pads below were derived from
let cachedPads;

/** The HMAC pads for the configured key, or `null` when no key is set. */
function pads() {
  const key = configGet('hmac-key');
  if (key === undefined || key === '') return null;
  if (key !== cachedKey) {
    cachedPads = hmacPads(enc.encode(key));
    cachedKey = key;
  }
  return cachedPads;
}

function header(req, name) {
  for (const [k, v] of req.headers) if (k === name) return v;
  return undefined;
}

function reply(status, obj) {
  return {
    status,
    headers: [['content-type', enc.encode('application/json')]],
    body: enc.encode(JSON.stringify(obj)),
    stream: undefined,
  };
}

/** Is the request's X-Signature the HMAC of its method, path and body? */
function verified(req) {
  const p = pads();
  if (p === null) return false; // no key configured: nobody is let in
  const sig = header(req, 'x-signature');
  if (sig === undefined) return false;
  const presented = fromHex(new TextDecoder().decode(sig).trim()) ?? new Uint8Array(0);
  const expected = hmacSha256(p, enc.encode(`${req.method}\n${req.pathWithQuery}\n`), req.body);
  return constantTimeEqual(expected, presented);
}

/** Map a failed kv call (thrown by the bindings) to an HTTP response. */
function kvError(e) {
  const err = e && e.payload !== undefined ? e.payload : null;
  if (err === null || typeof err !== 'object' || !('tag' in err)) {
    return reply(500, { error: String(e) });
  }
  switch (err.tag) {
    case 'invalid-key':
    case 'invalid-argument':
      return reply(400, { error: err.val });
    case 'value-too-large':
      return reply(413, { error: `value over ${err.val} bytes` });
    case 'unavailable':
    case 'outcome-unknown':
      return reply(503, { error: err.val });
    case 'storage-full':
      return reply(507, { error: 'the disk holding the database is full; nothing was written' });
    default:
      return reply(500, { error: String(err.val) });
  }
}

const NO_CONDITIONS = { ttlMs: undefined, ifMatch: undefined, ifAbsent: false };

function handle(req) {
  if (!verified(req)) {
    return reply(401, { error: 'missing or invalid X-Signature' });
  }
  const path = req.pathWithQuery.split('?')[0];
  const key = decodeURIComponentSafe(path.replace(/^\/+/, ''));
  if (key === null || key === '') {
    return reply(400, { error: 'the path must be /{key}' });
  }
  try {
    switch (req.method) {
      case 'GET':
      case 'HEAD': {
        const entry = kv.get(key);
        if (entry === undefined) return reply(404, { error: 'not found' });
        return {
          status: 200,
          headers: [
            ['content-type', enc.encode('application/octet-stream')],
            ['x-versionstamp', enc.encode(entry.versionstamp)],
          ],
          body: req.method === 'HEAD' ? new Uint8Array(0) : entry.value,
          stream: undefined,
        };
      }
      case 'POST':
      case 'PUT': {
        const out = kv.set(key, req.body, NO_CONDITIONS);
        if (out.tag === 'committed') return reply(200, { ok: true, versionstamp: out.val });
        return reply(412, { ok: false });
      }
      case 'DELETE': {
        const out = kv.delete(key, NO_CONDITIONS);
        if (out.tag === 'committed') return reply(200, { ok: true, versionstamp: out.val });
        return reply(412, { ok: false });
      }
      default:
        return reply(405, { error: 'method not allowed' });
    }
  } catch (e) {
    return kvError(e);
  }
}

function decodeURIComponentSafe(s) {
  try {
    return decodeURIComponent(s);
  } catch {
    return null;
  }
}

export const handler = { handle };
