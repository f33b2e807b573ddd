// sidekv console. No libraries, no build step. Data is always put on the
// page with textContent / DOM nodes, never as markup.
"use strict";

const $ = (id) => document.getElementById(id);
const enc = new TextEncoder();
const state = { csrf: null, info: null, tab: "keys", root: null, selected: null, metrics: [], watch: null };

// ------------------------------------------------------------ helpers ----

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}
function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }
function b64ToBytes(s) { const bin = atob(s); const out = new Uint8Array(bin.length); for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i); return out; }
function bytesToB64(b) { let s = ""; for (let i = 0; i < b.length; i += 0x8000) s += String.fromCharCode.apply(null, b.subarray(i, i + 0x8000)); return btoa(s); }
function b64url(b) { return bytesToB64(b).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, ""); }
function hex(b) { return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join(""); }
function concat(...parts) { const n = parts.reduce((a, p) => a + p.length, 0); const out = new Uint8Array(n); let o = 0; for (const p of parts) { out.set(p, o); o += p.length; } return out; }
function cmp(a, b) { const n = Math.min(a.length, b.length); for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i] - b[i]; return a.length - b.length; }
function startsWith(a, p) { if (a.length < p.length) return false; for (let i = 0; i < p.length; i++) if (a[i] !== p[i]) return false; return true; }
function utf8(b) { try { return new TextDecoder("utf-8", { fatal: true }).decode(b); } catch { return null; } }
function fmtBytes(n) { if (n < 1024) return n + " B"; const u = ["KiB", "MiB", "GiB", "TiB"]; let i = -1; do { n /= 1024; i++; } while (n >= 1024 && i < u.length - 1); return n.toFixed(n < 10 ? 1 : 0) + " " + u[i]; }
function fmtTime(ms) { if (!ms) return "—"; const d = new Date(ms); return d.toLocaleString(); }
function ago(ms) { if (!ms) return "never"; const s = Math.max(0, (Date.now() - ms) / 1000); if (s < 60) return s.toFixed(0) + " s ago"; if (s < 3600) return (s / 60).toFixed(0) + " min ago"; if (s < 86400) return (s / 3600).toFixed(1) + " h ago"; return (s / 86400).toFixed(1) + " d ago"; }
/// Text with control characters (other than newline and tab) shown as
/// escapes (`\x07`, marked), as nodes.
const escapeCtl = (c) => "\\x" + c.charCodeAt(0).toString(16).padStart(2, "0");
function visible(text) {
  const frag = document.createDocumentFragment();
  let buf = "";
  for (const ch of text) {
    const c = ch.codePointAt(0);
    if ((c < 0x20 && c !== 0x0a && c !== 0x09) || c === 0x7f) {
      if (buf) { frag.append(buf); buf = ""; }
      frag.append(el("span", { class: "ctl", title: "control character U+" + c.toString(16).padStart(4, "0") }, escapeCtl(ch)));
    } else buf += ch;
  }
  if (buf) frag.append(buf);
  return frag;
}
function visibleText(text) { return text.replace(/[\u0000-\u001f\u007f]/g, escapeCtl); }
let toastTimer = null;
function toast(msg) { const t = $("toast"); t.textContent = msg; t.hidden = false; clearTimeout(toastTimer); toastTimer = setTimeout(() => (t.hidden = true), 3500); }
function download(bytes, name, type) {
  const url = URL.createObjectURL(new Blob([bytes], { type: type || "application/octet-stream" }));
  const a = el("a", { href: url, download: name });
  document.body.append(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
function confirmDialog(title, text, ok) {
  return new Promise((resolve) => {
    const d = $("confirm");
    $("confirm-title").textContent = title; $("confirm-text").textContent = text; $("confirm-ok").textContent = ok;
    d.returnValue = "";
    d.addEventListener("close", () => resolve(d.returnValue === "ok"), { once: true });
    d.showModal();
    $("confirm-cancel").focus();
  });
}

// ---------------------------------------------------------------- API ----

class ApiError extends Error { constructor(status, msg) { super(msg); this.status = status; } }

async function api(method, path, body, headers) {
  const h = Object.assign({}, headers || {});
  if (method !== "GET" && method !== "HEAD") h["X-CSRF-Token"] = state.csrf || "";
  let payload = body;
  if (body !== undefined && !(body instanceof Uint8Array) && typeof body !== "string") { payload = JSON.stringify(body); h["Content-Type"] = "application/json"; }
  const r = await fetch(path, { method, headers: h, body: payload, credentials: "same-origin", cache: "no-store" });
  if (r.status === 401 && path !== "/console/api/login") { showSignIn("Your session ended: sign in again."); throw new ApiError(401, "not signed in"); }
  const ctype = r.headers.get("content-type") || "";
  const data = ctype.startsWith("application/json") ? await r.json() : await r.arrayBuffer();
  if (!r.ok) throw new ApiError(r.status, (data && data.error) || "HTTP " + r.status);
  return data;
}
const restPath = (p) => "/console/api/rest" + p;
async function scan(start, end, limit, reverse) {
  const q = new URLSearchParams({ start: b64url(start), end: b64url(end), limit: String(limit || 100) });
  if (reverse) q.set("reverse", "true");
  const r = await api("GET", "/console/api/scan?" + q);
  return r.entries.map((e) => ({ key: b64ToBytes(e.key), value: b64ToBytes(e.value), encoding: e.encoding, versionstamp: e.versionstamp }));
}
async function getEntry(key) {
  const r = await scan(key, concat(key, new Uint8Array([0])), 1);
  return r.length && cmp(r[0].key, key) === 0 ? r[0] : null;
}
async function write(mutations, checks) { return api("POST", "/console/api/write", { mutations, checks: checks || [] }); }

// ---------------------------------------------------------- Deno keys ----

const DENO_TAGS = new Set([0x01, 0x02, 0x21, 0x26, 0x27]);
for (let t = 0x0b; t <= 0x1d; t++) DENO_TAGS.add(t);

function unescapePart(b, pos) {
  const out = [];
  while (pos < b.length) {
    const x = b[pos++];
    if (x === 0) { if (b[pos] === 0xff) { out.push(0); pos++; } else return [new Uint8Array(out), pos]; }
    else out.push(x);
  }
  throw new Error("unterminated");
}
/// One tuple part at `pos`: [{type, value, text}, next offset]; throws if malformed.
function decodePart(b, pos) {
  const tag = b[pos];
  if (tag === 0x01) { const [d, n] = unescapePart(b, pos + 1); return [{ type: "bytes", value: d, text: 'b"' + hex(d) + '"' }, n]; }
  if (tag === 0x02) { const [d, n] = unescapePart(b, pos + 1); const s = utf8(d); if (s === null) throw new Error("bad utf-8"); return [{ type: "string", value: s, text: JSON.stringify(s) }, n]; }
  if (tag === 0x14) return [{ type: "bigint", value: 0n, text: "0n" }, pos + 1];
  if (tag >= 0x0b && tag <= 0x1d) {
    const neg = tag < 0x14, long = tag === 0x0b || tag === 0x1d;
    let n, start;
    if (long) { if (pos + 1 >= b.length) throw new Error("short"); n = neg ? b[pos + 1] ^ 0xff : b[pos + 1]; start = pos + 2; }
    else { n = Math.abs(tag - 0x14); start = pos + 1; }
    if (start + n > b.length) throw new Error("short");
    let v = 0n;
    for (let i = 0; i < n; i++) v = (v << 8n) | BigInt(neg ? b[start + i] ^ 0xff : b[start + i]);
    if (neg) v = -v;
    return [{ type: "bigint", value: v, text: v.toString() + "n" }, start + n];
  }
  if (tag === 0x21) {
    if (pos + 9 > b.length) throw new Error("short");
    const raw = b.slice(pos + 1, pos + 9);
    if (raw[0] & 0x80) raw[0] ^= 0x80; else for (let i = 0; i < 8; i++) raw[i] ^= 0xff;
    const x = new DataView(raw.buffer).getFloat64(0, false);
    return [{ type: "number", value: x, text: Object.is(x, -0) ? "-0" : String(x) }, pos + 9];
  }
  if (tag === 0x26) return [{ type: "boolean", value: false, text: "false" }, pos + 1];
  if (tag === 0x27) return [{ type: "boolean", value: true, text: "true" }, pos + 1];
  throw new Error("unknown tag");
}
function decodeDenoKey(b) { const parts = []; let pos = 0; while (pos < b.length) { const [p, n] = decodePart(b, pos); parts.push(p); pos = n; } return parts; }
function tryDenoKey(b) { if (!b.length || !DENO_TAGS.has(b[0])) return null; try { return decodeDenoKey(b); } catch { return null; } }

function escapeInto(out, data) { for (const x of data) { out.push(x); if (x === 0) out.push(0xff); } out.push(0); }
function encodePart(p) {
  const out = [];
  if (p.type === "string") { out.push(0x02); escapeInto(out, enc.encode(p.value)); }
  else if (p.type === "bytes") { out.push(0x01); escapeInto(out, p.value); }
  else if (p.type === "boolean") out.push(p.value ? 0x27 : 0x26);
  else if (p.type === "number") {
    const dv = new DataView(new ArrayBuffer(8)); dv.setFloat64(0, Number.isNaN(p.value) ? NaN : p.value, false);
    const raw = new Uint8Array(dv.buffer);
    if (raw[0] & 0x80) for (let i = 0; i < 8; i++) raw[i] ^= 0xff; else raw[0] ^= 0x80;
    out.push(0x21, ...raw);
  } else if (p.type === "bigint") {
    let v = p.value; const neg = v < 0n; if (neg) v = -v;
    const mag = []; while (v > 0n) { mag.unshift(Number(v & 0xffn)); v >>= 8n; }
    const n = mag.length;
    if (n === 0) out.push(0x14);
    else if (n <= 8) out.push(neg ? 0x14 - n : 0x14 + n);
    else out.push(neg ? 0x0b : 0x1d, neg ? n ^ 0xff : n);
    for (const x of mag) out.push(neg ? x ^ 0xff : x);
  }
  return new Uint8Array(out);
}
/// `["users", 1, 2n, true, b"00ff"]` → parts; null if it is not that syntax.
function parseDenoKey(text) {
  const s = text.trim();
  if (!s.startsWith("[") || !s.endsWith("]")) return null;
  const parts = [];
  let i = 1;
  const ws = () => { while (i < s.length && /\s/.test(s[i])) i++; };
  ws();
  if (s[i] === "]") return parts;
  for (;;) {
    ws();
    let m;
    const rest = s.slice(i);
    if (rest[0] === '"') {
      let j = i + 1; while (j < s.length && s[j] !== '"') { if (s[j] === "\\") j++; j++; }
      parts.push({ type: "string", value: JSON.parse(s.slice(i, j + 1)) }); i = j + 1;
    } else if ((m = /^b"([0-9a-fA-F]*)"/.exec(rest))) {
      const h = m[1]; if (h.length % 2) throw new Error("bytes need an even number of hex digits");
      parts.push({ type: "bytes", value: new Uint8Array(h.match(/../g)?.map((x) => parseInt(x, 16)) || []) }); i += m[0].length;
    } else if ((m = /^-?\d+n/.exec(rest))) { parts.push({ type: "bigint", value: BigInt(m[0].slice(0, -1)) }); i += m[0].length; }
    else if ((m = /^(-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|NaN|-?Infinity)/.exec(rest))) { parts.push({ type: "number", value: Number(m[0]) }); i += m[0].length; }
    else if ((m = /^(true|false)/.exec(rest))) { parts.push({ type: "boolean", value: m[0] === "true" }); i += m[0].length; }
    else throw new Error("cannot read the key part at: " + rest.slice(0, 20));
    ws();
    if (s[i] === ",") { i++; continue; }
    if (s[i] === "]" && i === s.length - 1) return parts;
    throw new Error("expected , or ] in the key");
  }
}
const encodeDenoKey = (parts) => concat(...parts.map(encodePart));

// ------------------------------------------------------ value decoding ----

/// A V8-serialized value (Deno's `VE_V8`), for the common types; throws on anything else.
function decodeV8(b) {
  let pos = 0, version = 0;
  const objs = [];
  const byte = () => { if (pos >= b.length) throw new Error("truncated"); return b[pos++]; };
  const varint = () => { let r = 0n, s = 0n; for (;;) { const x = byte(); r |= BigInt(x & 0x7f) << s; s += 7n; if (!(x & 0x80)) return r; } };
  const vnum = () => Number(varint());
  const bytes = (n) => { if (pos + n > b.length) throw new Error("truncated"); const out = b.subarray(pos, pos + n); pos += n; return out; };
  function value() {
    let tag = byte();
    while (tag === 0x00) tag = byte(); // padding
    switch (tag) {
      case 0xff: version = vnum(); return value();
      case 0x5f: return { t: "undefined" };
      case 0x30: return { t: "null" };
      case 0x54: return { t: "boolean", v: true };
      case 0x46: return { t: "boolean", v: false };
      case 0x49: { const z = varint(); return { t: "number", v: Number((z >> 1n) ^ -(z & 1n)) }; }
      case 0x55: return { t: "number", v: vnum() };
      case 0x4e: { const v = new DataView(bytes(8).slice().buffer).getFloat64(0, true); return { t: "number", v }; }
      case 0x5a: {
        const bits = vnum(); const n = bits >> 1; const d = bytes(n);
        let v = 0n; for (let i = n - 1; i >= 0; i--) v = (v << 8n) | BigInt(d[i]);
        return { t: "bigint", v: bits & 1 ? -v : v };
      }
      case 0x22: { const d = bytes(vnum()); let s = ""; for (const x of d) s += String.fromCharCode(x); return { t: "string", v: s }; }
      case 0x63: { const d = bytes(vnum()); let s = ""; for (let i = 0; i + 1 < d.length; i += 2) s += String.fromCharCode(d[i] | (d[i + 1] << 8)); return { t: "string", v: s }; }
      case 0x53: return { t: "string", v: new TextDecoder().decode(bytes(vnum())) };
      case 0x44: { const o = { t: "date", v: new DataView(bytes(8).slice().buffer).getFloat64(0, true) }; objs.push(o); return o; }
      case 0x6f: { const o = { t: "object", v: [] }; objs.push(o); while (b[pos] !== 0x7b) { const k = value(); o.v.push([k, value()]); } pos++; vnum(); return o; }
      case 0x41: {
        const n = vnum(); const o = { t: "array", v: [] }; objs.push(o);
        for (let i = 0; i < n; i++) { if (b[pos] === 0x2d) { pos++; o.v.push({ t: "hole" }); } else o.v.push(value()); }
        while (b[pos] !== 0x24) { value(); value(); } pos++; vnum(); vnum(); return o;
      }
      case 0x61: {
        const n = vnum(); const o = { t: "array", v: new Array(n).fill({ t: "hole" }) }; objs.push(o);
        while (b[pos] !== 0x40) { const k = value(); const v = value(); if (k.t === "number" && k.v < n) o.v[k.v] = v; } pos++; vnum(); vnum(); return o;
      }
      case 0x3b: { const o = { t: "map", v: [] }; objs.push(o); while (b[pos] !== 0x3a) { const k = value(); o.v.push([k, value()]); } pos++; vnum(); return o; }
      case 0x27: { const o = { t: "set", v: [] }; objs.push(o); while (b[pos] !== 0x2c) o.v.push(value()); pos++; vnum(); return o; }
      case 0x42: {
        const buf = bytes(vnum()); const o = { t: "arraybuffer", v: buf }; objs.push(o);
        if (b[pos] === 0x56) {
          pos++; const sub = byte(); const off = vnum(); const len = vnum(); if (version >= 14) vnum();
          if (sub !== 0x42) throw new Error("typed array other than Uint8Array");
          const view = { t: "uint8array", v: buf.subarray(off, off + len) }; objs.push(view); return view;
        }
        return o;
      }
      case 0x5e: { const id = vnum(); if (!objs[id]) throw new Error("bad reference"); return objs[id]; }
      default: throw new Error("tag 0x" + tag.toString(16));
    }
  }
  const v = value();
  if (pos !== b.length) throw new Error("trailing bytes");
  return v;
}
function v8Text(v, indent, seen) {
  indent = indent || ""; seen = seen || new Set();
  const pad = indent + "  ";
  if (typeof v === "object" && v.t && ["object", "array", "map", "set"].includes(v.t)) { if (seen.has(v)) return "[Circular]"; seen.add(v); }
  const key = (k) => (k.t === "string" && /^[A-Za-z_$][\w$]*$/.test(k.v) ? k.v : v8Text(k, pad, seen));
  switch (v.t) {
    case "undefined": return "undefined";
    case "null": return "null";
    case "boolean": return String(v.v);
    case "number": return Object.is(v.v, -0) ? "-0" : String(v.v);
    case "bigint": return v.v.toString() + "n";
    case "string": return JSON.stringify(v.v);
    case "date": return isNaN(v.v) ? "Invalid Date" : "Date(" + new Date(v.v).toISOString() + ")";
    case "hole": return "<empty>";
    case "uint8array": return "Uint8Array(" + v.v.length + ") [" + hex(v.v.subarray(0, 64)) + (v.v.length > 64 ? "…" : "") + "]";
    case "arraybuffer": return "ArrayBuffer(" + v.v.length + ")";
    case "array": return v.v.length ? "[\n" + v.v.map((x) => pad + v8Text(x, pad, seen)).join(",\n") + "\n" + indent + "]" : "[]";
    case "object": return v.v.length ? "{\n" + v.v.map(([k, x]) => pad + key(k) + ": " + v8Text(x, pad, seen)).join(",\n") + "\n" + indent + "}" : "{}";
    case "map": return "Map(" + v.v.length + ") {" + (v.v.length ? "\n" + v.v.map(([k, x]) => pad + v8Text(k, pad, seen) + " => " + v8Text(x, pad, seen)).join(",\n") + "\n" + indent : "") + "}";
    case "set": return "Set(" + v.v.length + ") {" + (v.v.length ? "\n" + v.v.map((x) => pad + v8Text(x, pad, seen)).join(",\n") + "\n" + indent : "") + "}";
  }
  return "?";
}
function hexDump(b) {
  const lines = [];
  for (let i = 0; i < Math.min(b.length, 4096); i += 16) {
    const row = b.subarray(i, i + 16);
    lines.push(i.toString(16).padStart(8, "0") + "  " + Array.from(row, (x) => x.toString(16).padStart(2, "0")).join(" ").padEnd(48) + "  " + Array.from(row, (x) => (x >= 0x20 && x < 0x7f ? String.fromCharCode(x) : ".")).join(""));
  }
  if (b.length > 4096) lines.push("… " + (b.length - 4096) + " more bytes (download to see them all)");
  return lines.join("\n");
}
/// What a value is: {kind, text, editable}.
function describeValue(entry) {
  const b = entry.value;
  if (entry.encoding === "le64") {
    let v = 0n; for (let i = 7; i >= 0; i--) v = (v << 8n) | BigInt(b[i] || 0);
    return { kind: "Deno.KvU64", text: "Deno.KvU64(" + v + "n)" };
  }
  if (entry.encoding === "v8") {
    try { return { kind: "V8 (Deno value)", text: v8Text(decodeV8(b)) }; }
    catch { return { kind: "V8 value, " + b.length + " bytes", text: "V8 value, " + b.length + " bytes (a type this console does not decode; download it)", opaque: true }; }
  }
  const s = utf8(b);
  const controls = s === null ? 0 : (s.match(/[\u0000-\u0008\u000e-\u001f\u007f]/g) || []).length;
  if (s !== null && controls <= Math.max(4, s.length / 8)) {
    try { if (/^\s*[[{"0-9tfn-]/.test(s)) { const j = JSON.parse(s); return { kind: "JSON", text: JSON.stringify(j, null, 2), editable: true, json: true }; } } catch { /* text */ }
    return { kind: "UTF-8 text", text: s, editable: true };
  }
  return { kind: "bytes", text: hexDump(b), bytes: true, editable: false };
}

// -------------------------------------------------------------- tree ----

function prefixEnd(p) {
  const b = Array.from(p);
  while (b.length && b[b.length - 1] === 0xff) b.pop();
  if (!b.length) return new Uint8Array([0xff, 0xff]);
  b[b.length - 1]++;
  return new Uint8Array(b);
}
/// A node: {mode: "root"|"rest"|"deno", bytes (prefix), part?, label, leaf?, folder?, children, next, count, open}
function makeRoot(bytes, mode, label) { return { mode, bytes, label, folder: true, children: null, next: bytes, open: true, root: true }; }
function rangeEnd(node) { return node.mode === "deno" ? concat(node.bytes, new Uint8Array([0xff])) : prefixEnd(node.bytes); }

/// The child of `node` that `key` falls in.
function childFor(node, key) {
  let mode = node.mode;
  if (mode === "root") mode = tryDenoKey(key) ? "deno" : "rest";
  if (mode === "deno") {
    try {
      const [part, next] = decodePart(key, node.bytes.length);
      return { mode: "deno", bytes: key.slice(0, next), part, folder: next < key.length, leaf: next === key.length };
    } catch { return { mode: "raw", bytes: key, leaf: true, label: visibleText(new TextDecoder().decode(key.subarray(node.bytes.length))) + " (not a Deno key)" }; }
  }
  const rest = key.subarray(node.bytes.length);
  const slash = rest.indexOf(0x2f);
  if (slash >= 0) {
    return { mode: "rest", bytes: key.slice(0, node.bytes.length + slash + 1), label: new TextDecoder().decode(rest.subarray(0, slash + 1)), folder: true };
  }
  return { mode: "rest", bytes: key, label: new TextDecoder().decode(rest), leaf: true };
}

const PAGE = 100;
async function loadChildren(node) {
  node.children = node.children || [];
  let start = node.next;
  const end = node.root && node.mode === "root" ? new Uint8Array([0xff, 0xff]) : rangeEnd(node);
  let added = 0;
  while (start && added < PAGE) {
    const page = await scan(start, end, 100);
    if (!page.length) { start = null; break; }
    let jumped = false;
    for (const e of page) {
      if (cmp(e.key, start) < 0) continue;
      const c = childFor(node, e.key);
      const last = node.children[node.children.length - 1];
      if (last && cmp(last.bytes, c.bytes) === 0) {
        if (c.folder) last.folder = true;
        if (c.leaf) { last.leaf = true; last.entry = e; }
      } else {
        if (c.leaf) c.entry = e;
        node.children.push(c);
        added++;
      }
      if (c.folder) { start = c.mode === "deno" ? concat(c.bytes, new Uint8Array([0xff])) : prefixEnd(c.bytes); jumped = true; break; }
      start = concat(e.key, new Uint8Array([0]));
      if (added >= PAGE) break;
    }
    if (!jumped && page.length < 100 && added < PAGE) start = null;
  }
  node.next = start;
  countLater(node.children.filter((c) => c.folder && c.count === undefined));
}

let countQueue = Promise.resolve();
function countLater(nodes) {
  for (const n of nodes) {
    countQueue = countQueue.then(async () => {
      try {
        const text = utf8(n.bytes);
        const r = text === null ? null : await api("GET", restPath("/?" + new URLSearchParams({ prefix: text, count: "true" }))).catch(() => null);
        if (r && typeof r.count === "number") n.count = r.count;
        else {
          const page = await scan(n.bytes, rangeEnd(n), 1000);
          n.count = page.length >= 1000 ? "1000+" : page.length;
        }
      } catch { n.count = "?"; }
      if (n.countEl) n.countEl.textContent = typeof n.count === "number" ? n.count.toLocaleString() : n.count;
    });
  }
}

function typeBadge(type) { return el("span", { class: "type t-" + type, title: type }, type === "boolean" ? "bool" : type === "string" ? "str" : type === "number" ? "num" : type); }
function nodeLabel(c) {
  const frag = document.createDocumentFragment();
  if (c.mode === "deno" && c.part) { frag.append(typeBadge(c.part.type), el("span", { class: "label" }, visible(c.part.text))); }
  else frag.append(el("span", { class: "label" }, visible(c.label || "")));
  return frag;
}

function renderTree() {
  const ul = clear($("tree"));
  const root = state.root;
  if (!root) return;
  $("tree-root-label").textContent = root.label;
  const exportPrefix = utf8(root.bytes);
  const ex = $("export");
  if (exportPrefix !== null) { ex.href = restPath("/_export?" + new URLSearchParams({ prefix: exportPrefix })); ex.removeAttribute("aria-disabled"); }
  else { ex.removeAttribute("href"); ex.setAttribute("aria-disabled", "true"); }
  renderChildren(root, ul);
  if (root.children && !root.children.length) ul.append(el("li", { class: "muted small" }, "No keys here."));
}
function renderChildren(node, ul) {
  for (const c of node.children || []) ul.append(renderNode(c));
  if (node.next && node.children) {
    ul.append(el("li", {}, el("button", { class: "small-btn more", onclick: async (ev) => { ev.target.disabled = true; await loadChildren(node); clear(ul); renderChildren(node, ul); } }, "Load more…")));
  }
}
function renderNode(c) {
  const li = el("li", { role: "treeitem" });
  const count = el("span", { class: "count" }, c.count === undefined ? (c.folder ? "…" : "") : String(c.count));
  c.countEl = c.folder ? count : null;
  const btn = el("button", { class: "node", "aria-selected": state.selected === c ? "true" : "false", "aria-expanded": c.folder ? String(!!c.open) : null },
    el("span", { class: "twisty", "aria-hidden": "true" }, c.folder ? (c.open ? "▾" : "▸") : "·"), nodeLabel(c), count);
  btn.node = c;
  const sub = el("ul", { role: "group" });
  btn.addEventListener("click", async () => {
    if (c.leaf) selectKey(c);
    if (c.folder) {
      if (!c.leaf && !c.open) showPrefix(c);
      await toggle(c, li, btn, sub);
    }
  });
  li.append(btn);
  if (c.folder && c.open) { li.append(sub); renderChildren(c, sub); }
  return li;
}
async function toggle(c, li, btn, sub, force) {
  c.open = force === undefined ? !c.open : force;
  btn.setAttribute("aria-expanded", String(c.open));
  btn.querySelector(".twisty").textContent = c.open ? "▾" : "▸";
  if (!c.open) { sub.remove(); return; }
  if (!c.children) { c.next = c.bytes; $("tree-status").textContent = "Loading…"; try { await loadChildren(c); } catch (e) { toast(e.message); } $("tree-status").textContent = ""; }
  clear(sub); li.append(sub); renderChildren(c, sub);
}

async function openRoot(text) {
  let root;
  const t = (text || "").trim();
  try {
    const parts = t ? parseDenoKey(t) : null;
    if (parts) root = makeRoot(encodeDenoKey(parts), "deno", "Deno prefix " + t);
    else if (t) root = makeRoot(enc.encode(t), "rest", "prefix " + JSON.stringify(t));
    else root = makeRoot(new Uint8Array(), "root", "all keys");
  } catch (e) { toast(e.message); return; }
  state.root = root;
  $("tree-status").textContent = "Loading…";
  try { await loadChildren(root); $("tree-status").textContent = ""; }
  catch (e) { $("tree-status").textContent = e.message + (e.status === 403 ? " (a token scoped to part of the keys: search for its prefix)" : ""); }
  renderTree();
}

// ------------------------------------------------------------ values ----

function keyDisplay(bytes) {
  const parts = tryDenoKey(bytes);
  const box = el("span", {});
  if (parts) {
    box.append("[");
    parts.forEach((p, i) => { if (i) box.append(", "); box.append(el("span", { class: "part" }, typeBadge(p.type), visible(p.text))); });
    box.append("]");
  } else {
    const s = utf8(bytes);
    box.append(s !== null ? visible(s) : "0x" + hex(bytes));
  }
  return box;
}
function keyLabel(bytes) {
  const parts = tryDenoKey(bytes);
  if (parts) return "[" + parts.map((p) => visibleText(p.text)).join(", ") + "]";
  const s = utf8(bytes);
  return s !== null ? visibleText(s) : "0x" + hex(bytes);
}

async function selectKey(c) {
  state.selected = c;
  document.querySelectorAll(".node[aria-selected='true']").forEach((b) => b.setAttribute("aria-selected", "false"));
  document.querySelectorAll(".node").forEach((b) => { if (b.node === c) b.setAttribute("aria-selected", "true"); });
  await showKey(c.bytes);
}

async function showKey(key) {
  $("create-form").hidden = true; $("edit-form").hidden = true; $("prefix-view").hidden = true;
  $("value-empty").hidden = true; $("value-view").hidden = false;
  clear($("value-key")).append(keyDisplay(key));
  clear($("value-body")).append(el("p", { class: "muted" }, "Loading…"));
  clear($("value-meta"));
  let e;
  try { e = await getEntry(key); } catch (err) { clear($("value-body")).append(el("p", { class: "error" }, err.message)); return; }
  state.current = e ? { key, entry: e } : null;
  if (!e) { clear($("value-body")).append(el("p", { class: "muted" }, "This key does not exist (any more).")); return; }
  const d = describeValue(e);
  state.current.desc = d;
  const meta = $("value-meta");
  const add = (k, v) => meta.append(el("dt", {}, k), el("dd", {}, v));
  add("type", d.kind);
  add("size", fmtBytes(e.value.length));
  add("versionstamp", e.versionstamp);
  add("expires", "…");
  const expDd = meta.lastChild;
  add("key bytes", hex(key).slice(0, 160) + (key.length > 80 ? "…" : ""));
  const body = clear($("value-body"));
  body.append(el("pre", { class: "value", id: "value-text" }, visible(d.text)));
  $("edit-value").disabled = !d.editable;
  $("edit-value").title = d.editable ? "Edit (e)" : "Only text and JSON values are edited here";
  // Expiry: the REST list carries it (for keys that are UTF-8).
  const text = utf8(key);
  if (text === null) expDd.textContent = "(not shown for binary keys)";
  else {
    try {
      const r = await api("GET", restPath("/?" + new URLSearchParams({ prefix: text, limit: "1", keys_only: "true" })));
      const hit = r.entries.find((x) => x.key === text);
      expDd.textContent = hit && hit.expires_at ? new Date(hit.expires_at).toLocaleString() + " (in " + Math.max(0, Math.round((hit.expires_at - Date.now()) / 1000)) + " s)" : "never";
    } catch { expDd.textContent = "?"; }
  }
}

function startEdit() {
  const cur = state.current;
  if (!cur || !cur.desc.editable) return;
  $("edit-form").hidden = false;
  $("edit-text").value = cur.desc.json ? cur.desc.text : new TextDecoder().decode(cur.entry.value);
  document.querySelector("input[name=edit-as][value=" + (cur.desc.json ? "json" : "text") + "]").checked = true;
  $("edit-error").textContent = "";
  $("edit-text").focus();
}
async function saveEdit(ev) {
  ev.preventDefault();
  const cur = state.current;
  const asJson = document.querySelector("input[name=edit-as]:checked").value === "json";
  let text = $("edit-text").value;
  if (asJson) { try { text = JSON.stringify(JSON.parse(text)); } catch (e) { $("edit-error").textContent = "Not valid JSON: " + e.message; return; } }
  try {
    await write([{ key: bytesToB64(cur.key), type: "set", value: bytesToB64(enc.encode(text)), encoding: "bytes" }], [{ key: bytesToB64(cur.key), versionstamp: cur.entry.versionstamp }]);
    toast("Saved");
    await showKey(cur.key);
  } catch (e) { $("edit-error").textContent = e.message; }
}
async function deleteKey() {
  const cur = state.current;
  if (!cur) return;
  if (!(await confirmDialog("Delete this key?", keyLabel(cur.key), "Delete key"))) return;
  try {
    await write([{ key: bytesToB64(cur.key), type: "delete" }]);
    toast("Deleted");
    $("value-view").hidden = true; $("value-empty").hidden = false;
    await refreshTree();
  } catch (e) { toast(e.message); }
}
async function deletePrefix(node) {
  const text = utf8(node.bytes);
  if (text === null) { toast("Prefixes that are not UTF-8 cannot be deleted here"); return; }
  const r = await api("GET", restPath("/?" + new URLSearchParams({ prefix: text, count: "true" })));
  if (!(await confirmDialog("Delete a prefix?", "Delete all " + r.count + " keys under " + keyLabel(node.bytes) + "? This cannot be undone.", "Delete " + r.count + " keys"))) return;
  try {
    const d = await api("DELETE", restPath("/?" + new URLSearchParams({ prefix: text })));
    toast("Deleted " + d.deleted + " keys");
    $("prefix-view").hidden = true; $("value-empty").hidden = false;
    await refreshTree();
  } catch (e) { toast(e.message); }
}
async function showPrefix(node) {
  $("create-form").hidden = true; $("value-view").hidden = true; $("value-empty").hidden = true; $("prefix-view").hidden = false;
  state.prefix = node;
  clear($("prefix-title")).append(keyDisplay(node.bytes));
  const text = utf8(node.bytes);
  $("prefix-count").textContent = "Counting…";
  const ex = $("prefix-export");
  if (text !== null) { ex.href = restPath("/_export?" + new URLSearchParams({ prefix: text })); ex.removeAttribute("aria-disabled"); }
  else { ex.removeAttribute("href"); ex.setAttribute("aria-disabled", "true"); }
  $("prefix-delete").disabled = text === null;
  $("prefix-watch").disabled = text === null;
  if (text === null) $("prefix-delete").title = "Prefixes that are not UTF-8 cannot be deleted through the REST API";
  try {
    const r = text !== null ? await api("GET", restPath("/?" + new URLSearchParams({ prefix: text, count: "true" }))).catch(() => null) : null;
    let n = r && typeof r.count === "number" ? r.count : node.count;
    if (n === undefined) { const page = await scan(node.bytes, rangeEnd(node), 1000); n = page.length >= 1000 ? "1000+" : page.length; }
    $("prefix-count").textContent = (typeof n === "number" ? n.toLocaleString() : n) + " keys under this prefix";
  } catch (e) { $("prefix-count").textContent = e.message; }
}
async function refreshTree() {
  const root = state.root;
  const open = new Set();
  const walk = (n) => { for (const c of n.children || []) if (c.open) { open.add(hex(c.bytes)); walk(c); } };
  walk(root);
  root.children = null; root.next = root.bytes;
  await loadChildren(root);
  const reopen = async (n) => { for (const c of n.children || []) if (open.has(hex(c.bytes)) && c.folder) { c.open = true; c.next = c.bytes; await loadChildren(c); await reopen(c); } };
  await reopen(root);
  renderTree();
}
function startCreate() {
  $("prefix-view").hidden = true;
  $("value-empty").hidden = true; $("value-view").hidden = true; $("create-form").hidden = false;
  $("create-error").textContent = "";
  const base = state.root && state.root.mode === "rest" ? utf8(state.root.bytes) || "" : "";
  $("create-key").value = base; $("create-value").value = "";
  $("create-key").focus();
}
async function create(ev) {
  ev.preventDefault();
  const text = $("create-key").value;
  let key;
  try { const parts = parseDenoKey(text); key = parts ? encodeDenoKey(parts) : enc.encode(text); } catch (e) { $("create-error").textContent = e.message; return; }
  if (!key.length) { $("create-error").textContent = "The key is empty"; return; }
  try {
    await write([{ key: bytesToB64(key), type: "set", value: bytesToB64(enc.encode($("create-value").value)), encoding: "bytes" }], [{ key: bytesToB64(key), versionstamp: null }]);
    toast("Created");
    $("create-form").hidden = true;
    await refreshTree();
    await showKey(key);
  } catch (e) { $("create-error").textContent = e.status === 409 ? "That key exists already" : e.message; }
}
async function importFile(ev) {
  const f = ev.target.files[0];
  ev.target.value = "";
  if (!f) return;
  const body = new Uint8Array(await f.arrayBuffer());
  try {
    const r = await api("POST", restPath("/_import"), body, { "Content-Type": "application/x-ndjson" });
    toast("Imported " + r.imported + " entries");
  } catch (e) { toast("Import: " + e.message); }
  await refreshTree();
}

// ------------------------------------------------------------- watch ----

function toggleWatch(ev) {
  ev.preventDefault();
  if (state.watch) { state.watch.close(); state.watch = null; $("watch-toggle").textContent = "Watch"; $("watch-state").textContent = "stopped"; return; }
  const prefix = $("watch-prefix").value;
  const es = new EventSource(restPath("/_watch?" + new URLSearchParams({ prefix })));
  state.watch = es;
  $("watch-toggle").textContent = "Stop";
  $("watch-state").textContent = "connecting…";
  es.onopen = () => ($("watch-state").textContent = "live: changes under " + (prefix ? JSON.stringify(prefix) : "every key"));
  es.onerror = () => ($("watch-state").textContent = es.readyState === 2 ? "closed (sign in again?)" : "reconnecting…");
  const onEvent = (kind) => (m) => {
    let d; try { d = JSON.parse(m.data); } catch { return; }
    let val = "";
    if (d.value) { const b = b64ToBytes(d.value); const s = utf8(b); val = s !== null ? s.slice(0, 200) : "0x" + hex(b.subarray(0, 32)) + (b.length > 32 ? "…" : ""); }
    const tr = el("tr", { class: "fresh" }, el("td", {}, new Date().toLocaleTimeString()), el("td", { class: "ev-" + kind }, kind), el("td", {}, visible(d.key || "")), el("td", {}, visible(val)), el("td", {}, d.versionstamp || ""));
    const rows = $("watch-rows");
    rows.prepend(tr);
    while (rows.children.length > 200) rows.lastChild.remove();
  };
  es.addEventListener("set", onEvent("set"));
  es.addEventListener("delete", onEvent("delete"));
}

// ------------------------------------------------------------ backup ----

function stat(k, v, s) { return el("div", { class: "card stat" }, el("div", { class: "k" }, k), el("div", { class: "v" }, v), s ? el("div", { class: "s" }, s) : null); }
function table(head, rows) {
  if (!rows.length) return el("p", { class: "muted small" }, "None.");
  return el("table", { class: "table" }, el("thead", {}, el("tr", {}, head.map((h) => el("th", {}, h)))), el("tbody", {}, rows.map((r) => el("tr", {}, r.map((c) => el("td", {}, c))))));
}
function setPill(b) {
  const p = $("backup-pill");
  if (b.backend === "postgres") { p.className = "pill neutral"; p.textContent = "backups: the database's own"; return; }
  p.className = b.backed_up ? "pill" : "pill bad";
  p.textContent = b.backed_up ? "backed up" : "NOT BACKED UP";
}
async function refreshBackup() {
  let b;
  try { b = await api("GET", "/console/api/backup"); } catch { return; }
  setPill(b);
  if (state.tab !== "backup") return;
  const banner = $("backup-banner");
  const cards = clear($("backup-cards"));
  clear($("restore-points")); clear($("snapshots")); clear($("restore-history")); $("restore-range").textContent = "";
  if (b.backend === "postgres") {
    banner.className = "banner info";
    banner.textContent = "PostgreSQL backend: backups belong to the database's own tooling (WAL archiving, pgBackRest; CockroachDB BACKUP). sidekv keeps no backup of its own here.";
    cards.append(stat("backend", "PostgreSQL", b.backend_description), stat("commits", String(b.committed)));
    return;
  }
  banner.className = b.backed_up ? "banner good" : "banner bad";
  banner.id = "backup-banner";
  banner.textContent = b.backed_up ? "Backed up: every commit up to " + b.shipped + " is in the backup." : "NOT BACKED UP — " + (b.warning || "").replace(/^not backed up: /, "");
  const r = b.report || {};
  const newest = r.segments && r.segments.newest;
  cards.append(
    stat("mode", b.enabled ? "durability " + b.durability : "local only", b.enabled ? (b.store || "") + " · sync every " + b.sync_interval_ms + " ms" : "KVSTORE_S3_URL is not set"),
    el("div", { class: "card stat", id: "last-segment" }, el("div", { class: "k" }, "last segment shipped"), el("div", { class: "v", id: "shipped-commit" }, b.enabled ? "commit " + b.shipped : "—"),
      el("div", { class: "s" }, b.metrics.last_upload_ms ? ago(b.metrics.last_upload_ms) + (newest ? " · " + fmtBytes(newest.bytes) : "") : "none yet")),
    stat("lag", b.lag_commits + (b.lag_commits === 1 ? " commit" : " commits"), b.lag_seconds.toFixed(1) + " s behind"),
    stat("uploads", String(b.metrics.uploads_ok), b.metrics.uploads_failed + " failed · " + fmtBytes(b.metrics.upload_bytes)),
    stat("segments in the store", r.segments ? String(r.segments.count) : "—", r.segments ? fmtBytes(r.segments.bytes) : b.report_error || ""),
  );
  if (b.report_error) {
    $("restore-range").textContent = "The store's listing is not available: " + b.report_error;
    for (const id of ["snapshots", "restore-history"]) $(id).append(el("p", { class: "muted small" }, "Not available: " + b.report_error));
  }
  if (!b.report) return;
  if (r.restore_range && r.restore_range.earliest) $("restore-range").textContent = "Any versionstamp from " + r.restore_range.earliest + " to " + (r.restore_range.latest || "—") + " can be restored (sidekv restore --at VS); these are the marked points:";
  $("restore-points").append(...r.points.slice().reverse().map((p) => {
    const cmd = "sidekv restore --to restored.sqlite3 --at " + p.at;
    return el("div", { class: "cmd" }, el("span", { class: "small muted" }, p.what + " · commit " + p.commit + " · " + fmtTime(p.time_ms)), el("code", {}, cmd),
      el("button", { class: "small-btn", onclick: () => navigator.clipboard?.writeText(cmd).then(() => toast("Copied"), () => toast("Copy failed")) }, "Copy"));
  }));
  if (!r.points.length) $("restore-points").append(el("p", { class: "muted small" }, "Nothing shipped yet."));
  $("snapshots").append(table(["commit", "size", "taken"], r.snapshots.slice().reverse().map((s) => [String(s.commit), fmtBytes(s.bytes), fmtTime(s.time_ms)])));
  $("restore-history").append(table(["epoch", "numbering from commit", "when", "what"], r.restore_history.slice().reverse().map((h, i, all) => [String(h.epoch), String(h.first_commit), fmtTime(h.time_ms), i === all.length - 1 ? "backup started" : "restored (or a new database) here"])));
}

// -------------------------------------------------------------- load ----

const COLORS = { "2xx": "#12b76a", "3xx": "#1f6feb", "4xx": "#f79009", "5xx": "#d92d20", p50: "#1f6feb", p99: "#d92d20", commits: "#7a5af8", instances: "#1f6feb", busy: "#f79009", memory: "#0e9384" };
function quantile(bounds, counts, q) {
  const total = counts.reduce((a, b) => a + b, 0);
  if (!total) return null;
  let cum = 0;
  for (let i = 0; i < counts.length; i++) {
    const prev = cum; cum += counts[i];
    if (cum >= q * total) {
      const lo = i === 0 ? 0 : bounds[i - 1], hi = i < bounds.length ? bounds[i] : bounds[bounds.length - 1];
      return (lo + (hi - lo) * ((q * total - prev) / (counts[i] || 1))) * 1000;
    }
  }
  return bounds[bounds.length - 1] * 1000;
}
function chart(svgId, legendId, series, unit, minMax) {
  const svg = $(svgId);
  const W = svg.clientWidth || 500, H = svg.clientHeight || 180, L = 44, R = 8, T = 8, B = 20;
  svg.setAttribute("viewBox", "0 0 " + W + " " + H);
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const ns = "http://www.w3.org/2000/svg";
  const mk = (tag, a) => { const e = document.createElementNS(ns, tag); for (const [k, v] of Object.entries(a)) e.setAttribute(k, v); return e; };
  const n = 120;
  let max = Math.max(minMax || 1, ...series.flatMap((s) => s.data.filter((v) => v !== null)));
  const mag = Math.pow(10, Math.floor(Math.log10(max))); max = Math.ceil(max / mag) * mag;
  for (let i = 0; i <= 4; i++) {
    const y = T + (H - T - B) * (1 - i / 4);
    svg.append(mk("line", { x1: L, x2: W - R, y1: y, y2: y, class: "grid-line" }));
    const t = mk("text", { x: L - 6, y: y + 3, "text-anchor": "end", class: "axis" }); t.textContent = +(max * i / 4).toPrecision(3); svg.append(t);
  }
  const tl = mk("text", { x: L, y: H - 4, class: "axis" }); tl.textContent = "−2 min"; svg.append(tl);
  const tr = mk("text", { x: W - R, y: H - 4, "text-anchor": "end", class: "axis" }); tr.textContent = "now"; svg.append(tr);
  for (const s of series) {
    let d = "";
    s.data.forEach((v, i) => {
      if (v === null) return;
      const x = L + (W - L - R) * (i + (n - s.data.length)) / (n - 1), y = T + (H - T - B) * (1 - v / max);
      d += (d ? "L" : "M") + x.toFixed(1) + " " + y.toFixed(1);
    });
    if (d) svg.append(mk("path", { d, fill: "none", stroke: s.color, "stroke-width": 2, "stroke-linejoin": "round" }));
  }
  const leg = clear($(legendId));
  for (const s of series) {
    const last = [...s.data].reverse().find((v) => v !== null);
    const sp = el("span", {}, s.name + ": " + (last === undefined ? "—" : (+last.toPrecision(3)).toLocaleString() + (unit || "")));
    sp.style.setProperty("--c", s.color);
    leg.append(sp);
  }
}
async function pollMetrics() {
  let m;
  try { m = await api("GET", "/console/api/metrics"); } catch { return; }
  const h = state.metrics;
  h.push(m);
  if (h.length > 121) h.shift();
  if (state.tab !== "load" || h.length < 2) return;
  const rates = (f) => h.slice(1).map((x, i) => { const dt = (x.t_ms - h[i].t_ms) / 1000 || 1; return Math.max(0, (f(x) - f(h[i])) / dt); });
  chart("chart-requests", "legend-requests", ["2xx", "3xx", "4xx", "5xx"].map((c) => ({ name: c, color: COLORS[c], data: rates((x) => x.requests[c]) })), "/s");
  const lat = (q) => h.slice(1).map((x, i) => quantile(x.latency.bounds, x.latency.counts.map((c, j) => c - h[i].latency.counts[j]), q));
  chart("chart-latency", "legend-latency", [{ name: "p50", color: COLORS.p50, data: lat(0.5) }, { name: "p99", color: COLORS.p99, data: lat(0.99) }], " ms");
  chart("chart-commits", "legend-commits", [{ name: "commits/s", color: COLORS.commits, data: rates((x) => x.committed) }], "/s");
  chart("chart-instances", "legend-instances", [{ name: "live", color: COLORS.instances, data: h.map((x) => x.guest_instances) }, { name: "busy", color: COLORS.busy, data: h.map((x) => x.guest_instances_busy) }]);
  chart("chart-memory", "legend-memory", [{ name: "guest memory", color: COLORS.memory, data: h.map((x) => x.guest_memory_bytes / 1048576) }], " MiB");
}

// ------------------------------------------------------- shell, keys ----

function showTab(name) {
  state.tab = name;
  for (const b of document.querySelectorAll(".tabs button")) b.setAttribute("aria-selected", String(b.dataset.tab === name));
  for (const t of ["keys", "watch", "backup", "load"]) $("panel-" + t).hidden = t !== name;
  if (name === "backup") refreshBackup();
  if (name === "load") pollMetrics();
}
function showSignIn(msg) {
  state.csrf = null;
  if (state.watch) { state.watch.close(); state.watch = null; }
  $("app").hidden = true; $("signin").hidden = false;
  const e = $("signin-error"); e.hidden = !msg; e.textContent = msg || "";
  $("token").focus();
}
async function enterApp(info) {
  state.csrf = info.csrf; state.info = info;
  $("signin").hidden = true; $("app").hidden = false;
  $("backend-pill").textContent = info.backend === "postgres" ? "PostgreSQL" : "SQLite";
  $("backend-pill").title = info.backend_description + " · guest " + (info.guest || "?") + " · sidekv " + info.version;
  showTab("keys");
  $("search").value = info.scope || "";
  openRoot(info.scope || "");
  refreshBackup();
}
async function signIn(ev) {
  ev.preventDefault();
  const btn = $("signin-button"); btn.disabled = true; btn.textContent = "Signing in…";
  $("signin-error").hidden = true;
  try {
    const info = await api("POST", "/console/api/login", { token: $("token").value, prefix: $("scope").value });
    $("token").value = "";
    await enterApp(info);
  } catch (e) { $("signin-error").hidden = false; $("signin-error").textContent = e.message; $("token").select(); }
  btn.disabled = false; btn.textContent = "Sign in";
}
function treeButtons() { return Array.from(document.querySelectorAll("#tree .node")); }
function onKey(ev) {
  const typing = /^(INPUT|TEXTAREA|SELECT)$/.test(document.activeElement?.tagName || "") || $("confirm").open;
  if ($("app").hidden || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  if (!typing) {
    if (ev.key >= "1" && ev.key <= "4") { showTab(["keys", "watch", "backup", "load"][+ev.key - 1]); ev.preventDefault(); return; }
    if (ev.key === "/") { showTab("keys"); $("search").focus(); ev.preventDefault(); return; }
    if (ev.key === "n" && state.tab === "keys") { startCreate(); ev.preventDefault(); return; }
    if (ev.key === "e" && state.tab === "keys") { startEdit(); ev.preventDefault(); return; }
  }
  const cur = document.activeElement;
  if (cur && cur.classList && cur.classList.contains("node")) {
    const all = treeButtons(); const i = all.indexOf(cur);
    if (ev.key === "ArrowDown" && i < all.length - 1) { all[i + 1].focus(); ev.preventDefault(); }
    else if (ev.key === "ArrowUp" && i > 0) { all[i - 1].focus(); ev.preventDefault(); }
    else if ((ev.key === "ArrowRight" || ev.key === "ArrowLeft") && cur.node.folder) {
      const open = ev.key === "ArrowRight";
      if (!!cur.node.open !== open) cur.click();
      ev.preventDefault();
    } else if (ev.key === "Delete" && cur.node.folder) { deletePrefix(cur.node); ev.preventDefault(); }
  }
}

document.addEventListener("DOMContentLoaded", async () => {
  $("signin-form").addEventListener("submit", signIn);
  $("signout").addEventListener("click", async () => { try { await api("POST", "/console/api/logout"); } catch { /* signed out anyway */ } showSignIn(""); });
  for (const b of document.querySelectorAll(".tabs button")) b.addEventListener("click", () => showTab(b.dataset.tab));
  $("search-form").addEventListener("submit", (e) => { e.preventDefault(); openRoot($("search").value); });
  $("edit-value").addEventListener("click", startEdit);
  $("cancel-edit").addEventListener("click", () => ($("edit-form").hidden = true));
  $("edit-form").addEventListener("submit", saveEdit);
  $("delete-key").addEventListener("click", deleteKey);
  $("download-value").addEventListener("click", () => { const c = state.current; if (c) download(c.entry.value, "value-" + c.entry.versionstamp + (c.entry.encoding === "v8" ? ".v8" : ".bin")); });
  $("new-key").addEventListener("click", startCreate);
  $("cancel-create").addEventListener("click", () => { $("create-form").hidden = true; $("value-empty").hidden = false; });
  $("create-form").addEventListener("submit", create);
  $("import").addEventListener("change", importFile);
  $("watch-form").addEventListener("submit", toggleWatch);
  $("prefix-delete").addEventListener("click", () => state.prefix && deletePrefix(state.prefix));
  $("prefix-watch").addEventListener("click", () => {
    if (state.watch) toggleWatch(new Event("submit"));
    $("watch-prefix").value = utf8(state.prefix.bytes) || ""; showTab("watch"); toggleWatch(new Event("submit"));
  });
  $("tree").addEventListener("contextmenu", (e) => { const b = e.target.closest(".node"); if (b && b.node.folder) { e.preventDefault(); deletePrefix(b.node); } });
  document.addEventListener("keydown", onKey);
  setInterval(() => { if (state.csrf) pollMetrics(); }, 1000);
  setInterval(() => { if (state.csrf) refreshBackup(); }, 3000);
  try {
    const r = await fetch("/console/api/session", { credentials: "same-origin", cache: "no-store" });
    if (r.ok) { await enterApp(await r.json()); return; }
  } catch { /* fall through */ }
  showSignIn("");
});
