// Resolves npm @deno/kv from this directory's node_modules (ESM imports
// ignore NODE_PATH; scripts/setup-deno.sh installs the package here).
export * from "@deno/kv";
