// Runs a Worker on Miniflare (npm `miniflare`: local D1, KV, Queues and Durable Objects on
// workerd, as `wrangler dev` does) for bench/workers/miniflare_side.py and queues.py.
//   node miniflare.mjs SCRIPT PORT PERSIST_DIR BINDINGS_JSON
// BINDINGS_JSON: {"d1": {"DB": "<id>"}, "kv": {"KV": "<id>"},
//                 "queueProducers": {"JOBS": "<queue>"}, "queueConsumers": {"<queue>": {...}},
//                 "durableObjects": {"COUNTER": "Counter"}}
import { Miniflare } from "miniflare";

const [scriptPath, port, persist, bindings] = process.argv.slice(2);
const { d1 = {}, kv = {}, queueProducers = {}, queueConsumers = {}, durableObjects = {} } =
  JSON.parse(bindings);
const mf = new Miniflare({
  modules: true,
  scriptPath,
  compatibilityDate: "2025-01-01",
  d1Databases: d1,
  d1Persist: `${persist}/d1`,
  kvNamespaces: kv,
  kvPersist: `${persist}/kv`,
  queueProducers,
  queueConsumers,
  durableObjects,
  durableObjectsPersist: `${persist}/do`,
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
