// KV benchmark:
//   POST /seed?n=N  -> N keys key0..key{N-1}, ~100-byte JSON values
//   GET  /read/ID   -> env.KV.get("key" + ID, "json") (after the first read of a key, a node-cached read on both)
//   POST /insert    -> one put of a fresh key (durable before the response)
export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const path = url.pathname;
    if (path.startsWith("/read/")) {
      const v = await env.KV.get(`key${path.slice(6)}`, "json");
      return v ? Response.json(v) : new Response("no such key", { status: 404 });
    }
    if (path === "/insert" && request.method === "POST") {
      const key = `new-${crypto.randomUUID()}`;
      await env.KV.put(key, JSON.stringify({ key, at: Date.now() }));
      return new Response(key);
    }
    if (path === "/seed" && request.method === "POST") {
      const n = Number(url.searchParams.get("n") ?? 1000);
      for (let start = 0; start < n; start += 50) {
        const puts = [];
        for (let i = start; i < Math.min(n, start + 50); i++) {
          puts.push(env.KV.put(`key${i}`, JSON.stringify({ id: i, email: `user${i}@example.com`, name: `User number ${i}` })));
        }
        await Promise.all(puts);
      }
      return Response.json({ keys: n });
    }
    return new Response("kv benchmark: POST /seed?n=N, GET /read/ID, POST /insert\n");
  },
};
