// D1 benchmark:
//   POST /seed?n=N   -> creates the tables and N users (batches of 500 inserts), once
//   GET  /user/ID    -> one indexed point read: SELECT ... WHERE email = ? (a secondary index)
//   POST /insert     -> one batch() of 10 INSERTs (one transaction)
//   GET  /           -> a health answer
const SCHEMA = [
  "CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, email TEXT NOT NULL, name TEXT NOT NULL, score INTEGER NOT NULL)",
  "CREATE UNIQUE INDEX IF NOT EXISTS users_email ON users (email)",
  "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, user INTEGER NOT NULL, at INTEGER NOT NULL, payload TEXT NOT NULL)",
];

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const path = url.pathname;
    if (path.startsWith("/user/")) {
      const row = await env.DB.prepare("SELECT id, email, name, score FROM users WHERE email = ?")
        .bind(`user${path.slice(6)}@example.com`)
        .first();
      return row ? Response.json(row) : new Response("no such user", { status: 404 });
    }
    if (path === "/insert" && request.method === "POST") {
      const stmt = env.DB.prepare("INSERT INTO events (user, at, payload) VALUES (?, ?, ?)");
      const now = Date.now();
      const batch = [];
      for (let i = 0; i < 10; i++) batch.push(stmt.bind(i, now, "payload of an event, about sixty bytes long.........."));
      const results = await env.DB.batch(batch);
      return Response.json({ inserted: results.length, last: results[9].meta.last_row_id });
    }
    if (path === "/seed" && request.method === "POST") {
      const n = Number(url.searchParams.get("n") ?? 10000);
      await env.DB.batch(SCHEMA.map((s) => env.DB.prepare(s)));
      const insert = env.DB.prepare("INSERT OR IGNORE INTO users (id, email, name, score) VALUES (?, ?, ?, ?)");
      for (let start = 0; start < n; start += 500) {
        const batch = [];
        for (let i = start; i < Math.min(n, start + 500); i++) {
          batch.push(insert.bind(i, `user${i}@example.com`, `User number ${i}`, i % 1000));
        }
        await env.DB.batch(batch);
      }
      const { c } = await env.DB.prepare("SELECT count(*) AS c FROM users").first();
      return Response.json({ users: c });
    }
    return new Response("d1 benchmark: POST /seed?n=N, GET /user/ID, POST /insert\n");
  },
};
