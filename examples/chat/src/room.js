// One chat room: its sockets (accepted for hibernation, so an idle room leaves memory while its
// clients stay connected) and its message history in storage.
import { DurableObject } from "cloudflare:workers";

// Messages kept in storage per room; older ones are deleted as new ones arrive.
const KEEP = 1000;
const MAX_TEXT = 2000;

// Zero-padded so that storage order (lexicographic) is message order.
const key = (seq) => `msg:${String(seq).padStart(12, "0")}`;

export class ChatRoom extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    // Answered by the runtime itself, without waking a hibernated room: the page's keep-alive.
    ctx.setWebSocketAutoResponse(new WebSocketRequestResponsePair("ping", "pong"));
    // user name -> the tail of that user's pending messages (see webSocketMessage).
    this.pending = new Map();
    ctx.blockConcurrencyWhile(async () => {
      const last = await ctx.storage.list({ prefix: "msg:", reverse: true, limit: 1 });
      const [lastKey] = last.keys();
      this.seq = lastKey ? Number(lastKey.slice(4)) : 0;
    });
  }

  // The last CHAT_HISTORY messages, oldest first.
  async history() {
    const limit = Number(this.env.CHAT_HISTORY) || 100;
    const recent = await this.ctx.storage.list({ prefix: "msg:", reverse: true, limit });
    return [...recent.values()].reverse();
  }

  async fetch(request) {
    if (request.headers.get("Upgrade")?.toLowerCase() !== "websocket") {
      return new Response("expected a WebSocket upgrade", { status: 426 });
    }
    const name = new URL(request.url).searchParams.get("name");
    const [client, server] = Object.values(new WebSocketPair());
    this.ctx.acceptWebSocket(server, [`user:${name}`]);
    // Survives hibernation with the socket; in-memory fields of this object do not.
    server.serializeAttachment({ name, joined: Date.now() });
    // The newcomer gets the roster (itself included) once; the others hear only who joined, so
    // a join costs the room one small frame per socket, not a roster per socket.
    const messages = await this.history();
    server.send(JSON.stringify({ type: "history", messages, users: this.users() }));
    this.broadcast({ type: "joined", name }, server);
    return new Response(null, { status: 101, webSocket: client });
  }

  async webSocketMessage(ws, message) {
    if (typeof message !== "string") return reply(ws, { type: "error", error: "send text" });
    let data;
    try {
      data = JSON.parse(message);
    } catch {
      return reply(ws, { type: "error", error: 'send JSON: {"type":"message","text":"..."}' });
    }
    if (data?.type !== "message" || typeof data.text !== "string") {
      return reply(ws, { type: "error", error: 'send {"type":"message","text":"..."}' });
    }
    const text = data.text.trim();
    if (!text) return;
    if (text.length > MAX_TEXT) {
      return reply(ws, { type: "error", error: `messages are at most ${MAX_TEXT} characters` });
    }
    const { name } = ws.deserializeAttachment();
    // Asking the limiter is a call to another object, during which this room takes other
    // events; chaining per user keeps one user's messages in the order they were sent.
    const run = (this.pending.get(name) ?? Promise.resolve()).then(() => this.post(ws, name, text));
    const tail = run.catch(() => {});
    this.pending.set(name, tail);
    tail.then(() => this.pending.get(name) === tail && this.pending.delete(name));
    return run;
  }

  async post(ws, name, text) {
    let wait;
    try {
      wait = await this.env.LIMITERS.getByName(name).take();
    } catch (e) {
      return reply(ws, { type: "error", error: `the rate limiter failed (${e.message}); try again` });
    }
    if (wait > 0) {
      return reply(ws, {
        type: "error",
        error: `slow down: you can send again in ${(wait / 1000).toFixed(1)} s`,
        retryAfterMs: wait,
      });
    }
    const entry = { seq: ++this.seq, name, text, at: Date.now() };
    // Not awaited: the output gate holds the broadcast below until these writes are durable,
    // so nobody sees a message that a crash could lose.
    this.ctx.storage.put(key(entry.seq), entry);
    if (entry.seq > KEEP) this.ctx.storage.delete(key(entry.seq - KEEP));
    this.broadcast({ type: "message", ...entry });
  }

  async webSocketClose(ws, code, reason) {
    const { name } = ws.deserializeAttachment() ?? {};
    try {
      ws.close(code === 1005 || code === 1006 ? 1000 : code, reason);
    } catch {
      // Already closed: nothing to answer.
    }
    this.broadcast({ type: "left", name }, ws);
  }

  async webSocketError(ws, error) {
    console.log(`socket of ${ws.deserializeAttachment()?.name} failed: ${error}`);
  }

  // Names of the users connected now, one entry per socket (a user may have several tabs).
  users() {
    return this.ctx.getWebSockets().map((s) => s.deserializeAttachment()?.name).filter(Boolean);
  }

  broadcast(msg, except) {
    const text = JSON.stringify(msg);
    for (const s of this.ctx.getWebSockets()) {
      if (s === except) continue;
      try {
        s.send(text);
      } catch {
        // A socket that closed meanwhile gets its own webSocketClose.
      }
    }
  }
}

function reply(ws, msg) {
  ws.send(JSON.stringify(msg));
}
