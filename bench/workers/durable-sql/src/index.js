// Durable Objects benchmark (SQL version): one counter class kept in a table, reached through the Worker below.
//   GET /hot          -> the object named "hot" increments its counter (one SQL upsert)
//   GET /obj/NAME     -> the same on the object NAME (first touch creates it)
//   GET /plain        -> the Worker answers alone (baseline for latency)
//   GET /ping/NAME    -> one RPC round trip to NAME; answers "same" or "other" (see token())
//   GET /loop/NAME?n= -> n sequential RPC round trips timed inside the Worker (JSON)
import { DurableObject } from "cloudflare:workers";

// A random token per isolate. On cinder each executor thread has its own isolate for this
// script, shared by the Worker's events and the objects placed on that thread, so an object
// that answers the Worker's token runs on the Worker's thread. On workerd the Worker and its
// objects share one isolate: always "same". Made lazily: workerd refuses randomness at
// module scope.
let TOKEN;
function token() {
  TOKEN ??= crypto.randomUUID();
  return TOKEN;
}

export class Counter extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    this.sql = ctx.storage.sql;
    this.sql.exec("CREATE TABLE IF NOT EXISTS counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)");
  }

  async fetch() {
    // One write statement per request; the output gate holds the response until it is durable
    // on both servers.
    const { n } = this.sql
      .exec("INSERT INTO counter (id, n) VALUES (1, 1) ON CONFLICT (id) DO UPDATE SET n = n + 1 RETURNING n")
      .one();
    return new Response(String(n));
  }

  ping() {
    return token();
  }
}

export default {
  async fetch(request, env) {
    const path = new URL(request.url).pathname;
    if (path === "/hot") return env.COUNTER.getByName("hot").fetch(request);
    if (path.startsWith("/obj/")) return env.COUNTER.getByName(path.slice(5)).fetch(request);
    if (path === "/plain") return new Response("plain");
    if (path.startsWith("/ping/")) {
      const t = await env.COUNTER.getByName(path.slice(6)).ping();
      return new Response(t === token() ? "same" : "other");
    }
    if (path.startsWith("/loop/")) {
      const n = Number(new URL(request.url).searchParams.get("n") ?? 100);
      const stub = env.COUNTER.getByName(path.slice(6));
      const same = (await stub.ping()) === token();
      // performance.now() per call where the runtime's clock is fine-grained (cinder);
      // workerd advances its clock only at I/O and in whole ms, so there only the total over
      // n calls (Date.now()) means anything.
      const us = [];
      const t0 = Date.now();
      for (let i = 0; i < n; i++) {
        const a = performance.now();
        await stub.ping();
        us.push((performance.now() - a) * 1000);
      }
      return Response.json({ same, n, total_ms: Date.now() - t0, us });
    }
    return new Response("durable objects benchmark: /hot, /obj/NAME, /plain, /ping/NAME, /loop/NAME?n=N\n");
  },
};
