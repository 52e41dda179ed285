import { DurableObject } from "cloudflare:workers";

// One room per name; every socket is hibernatable and a message is echoed by the room.
export class Room extends DurableObject {
  async fetch() {
    const [client, server] = Object.values(new WebSocketPair());
    this.ctx.acceptWebSocket(server);
    return new Response(null, { status: 101, webSocket: client });
  }
  webSocketMessage(ws, message) {
    ws.send(message);
  }
}

export default {
  fetch(request, env) {
    const parts = new URL(request.url).pathname.split("/");
    if (parts[1] !== "room") return new Response("hibernation benchmark: /room/NAME upgrades\n");
    return env.ROOM.getByName(parts[2] || "lobby").fetch(request);
  },
};
