// Runs a wrangler project's Worker with one D1 binding on Miniflare (local D1 on workerd, as
// `wrangler dev` does) for bench/workers/d1.py.
//   node miniflare-d1.mjs SCRIPT PORT PERSIST_DIR
import { Miniflare } from "miniflare";

const [scriptPath, port, persist] = process.argv.slice(2);
const mf = new Miniflare({
  modules: true,
  scriptPath,
  compatibilityDate: "2025-01-01",
  d1Databases: { DB: "00000000-0000-4000-8000-00000000d1be" },
  d1Persist: persist,
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
