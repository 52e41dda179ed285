// The chat Worker: serves the page, checks names, and hands each WebSocket upgrade to the
// room's Durable Object. Everything stateful lives in the objects (room.js, limiter.js).
import { PAGE } from "./page.js";

export { ChatRoom } from "./room.js";
export { RateLimiter } from "./limiter.js";

// Room and user names: short, printable, no surprises in URLs or storage keys.
const ROOM_NAME = /^[A-Za-z0-9_-]{1,32}$/;
const USER_NAME = /^[^\u0000-\u001f\u007f]{1,32}$/;

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    if (url.pathname === "/") {
      return new Response(PAGE, { headers: { "content-type": "text/html; charset=utf-8" } });
    }
    // /api/room/<room>/websocket?name=<user>  and  /api/room/<room>/history
    const m = url.pathname.match(/^\/api\/room\/([^/]+)\/(websocket|history)$/);
    if (!m) return new Response("not found", { status: 404 });
    const room = decodeURIComponent(m[1]);
    if (!ROOM_NAME.test(room)) {
      return new Response("room names are 1-32 letters, digits, '-' or '_'", { status: 400 });
    }
    const stub = env.ROOMS.getByName(room);
    if (m[2] === "history") return Response.json(await stub.history());

    if (request.headers.get("Upgrade")?.toLowerCase() !== "websocket") {
      return new Response("expected a WebSocket upgrade", { status: 426 });
    }
    const name = (url.searchParams.get("name") ?? "").trim();
    if (!USER_NAME.test(name)) {
      return new Response("user names are 1-32 printable characters", { status: 400 });
    }
    // The room reads the (trimmed) name from the URL it is given.
    url.searchParams.set("name", name);
    return stub.fetch(new Request(url, request));
  },
};
