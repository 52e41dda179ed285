// Queues benchmark. Producer: `POST /send?n=K` sends K messages with one `sendBatch()` per 100
// (K <= 1000); `POST /send1` sends one message with `send()`. Consumer: counts each batch's
// messages in the Durable Object `Counter` (durably), then acks the batch. `GET /count` reads
// the count, which the driver polls until every message it sent was consumed.
import { DurableObject } from "cloudflare:workers";

export class Counter extends DurableObject {
  async fetch(request) {
    const url = new URL(request.url);
    let n = (await this.ctx.storage.get("n")) ?? 0;
    if (url.pathname === "/add") {
      n += Number(url.searchParams.get("n"));
      await this.ctx.storage.put("n", n);
    }
    return new Response(String(n));
  }
}

const counter = (env) => env.COUNTER.get(env.COUNTER.idFromName("count"));

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    if (request.method === "POST" && url.pathname === "/send") {
      const n = Math.min(Number(url.searchParams.get("n") ?? "100"), 1000);
      const sends = [];
      for (let i = 0; i < n; i += 100) {
        const batch = [];
        for (let j = i; j < Math.min(n, i + 100); j++) batch.push({ body: { i: j, pad: "x".repeat(100) } });
        sends.push(env.JOBS.sendBatch(batch));
      }
      await Promise.all(sends);
      return new Response(`sent ${n}`);
    }
    if (request.method === "POST" && url.pathname === "/send1") {
      await env.JOBS.send({ i: 0, pad: "x".repeat(100) });
      return new Response("sent 1");
    }
    if (url.pathname === "/count") return counter(env).fetch("http://counter/count");
    return new Response("not found", { status: 404 });
  },

  async queue(batch, env) {
    await counter(env).fetch(`http://counter/add?n=${batch.messages.length}`);
    batch.ackAll();
  },
};
