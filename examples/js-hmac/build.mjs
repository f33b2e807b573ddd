// Componentize src/guest.js against the sidekv `guest` world.
//   node build.mjs <out.wasm>     (build.sh installs the packages first)
// Uses componentize-js's JS API rather than the `jco componentize` CLI, which
// did not work on these machines (docs/guests.md).
import { _setPreopens } from '@bytecodealliance/preview2-shim/filesystem';
import { componentize } from '@bytecodealliance/componentize-js';
import { mkdir, rename, writeFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

// componentize-js runs its WIT/wasm tooling as a wasm component through
// preview2-shim, whose filesystem sees no host directory until preopens are
// set: without this it fails with "reading file …/wit: No such file or
// directory (os error 44)".
_setPreopens({ '/': '/' });

const here = dirname(fileURLToPath(import.meta.url));
const out = resolve(process.argv[2] ?? resolve(here, '../../target/wasm/examples/js-hmac.wasm'));
const started = Date.now();
const { component } = await componentize({
  sourcePath: resolve(here, 'src/guest.js'),
  witPath: resolve(here, '../../wit'),
  worldName: 'guest',
  // No WASI at all (no stdio, random, clocks, fetch): the component imports
  // only sidekv:store/kv and sidekv:store/config.
  disableFeatures: ['stdio', 'random', 'clocks', 'http', 'fetch-event'],
});
await mkdir(dirname(out), { recursive: true });
await writeFile(out + '.tmp', component);
await rename(out + '.tmp', out);
console.log(`js-hmac: ${out} (${(component.length / 1e6).toFixed(1)} MB, ${((Date.now() - started) / 1000).toFixed(1)} s)`);
