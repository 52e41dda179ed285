// Runs a Worker on Miniflare (npm `miniflare`: local D1 and KV on workerd, as `wrangler dev`
// does) for bench/workers/miniflare_side.py.
//   node miniflare.mjs SCRIPT PORT PERSIST_DIR BINDINGS_JSON
// BINDINGS_JSON: {"d1": {"DB": "<id>"}, "kv": {"KV": "<id>"}}
import { Miniflare } from "miniflare";

const [scriptPath, port, persist, bindings] = process.argv.slice(2);
const { d1 = {}, kv = {} } = JSON.parse(bindings);
const mf = new Miniflare({
  modules: true,
  scriptPath,
  compatibilityDate: "2025-01-01",
  d1Databases: d1,
  d1Persist: `${persist}/d1`,
  kvNamespaces: kv,
  kvPersist: `${persist}/kv`,
  host: "127.0.0.1",
  port: Number(port),
});
const url = await mf.ready;
console.log(`Ready on ${url.href}`);
const stop = async () => {
  await mf.dispose();
  process.exit(0);
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
