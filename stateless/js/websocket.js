// WebSockets: `WebSocketPair`, `WebSocket` (accept/send/close/events), `Response` with a
// `webSocket`, and the hibernation API of Durable Objects (`ctx.acceptWebSocket`, tags,
// attachments, auto-response). Runs while the startup snapshot is built, last.
//
// A pair is one socket of the node's socket table (src/websocket.rs): the server end is the one
// JS keeps; the client end is what a `101` response hands to the runtime, which connects it to
// the network. Messages for a socket accepted with `ws.accept()` arrive as events on the JS
// object (through the owning object's input gate inside a Durable Object); a socket accepted
// with `ctx.acceptWebSocket()` belongs to the object and its messages call `webSocketMessage`,
// re-creating the object if it hibernated meanwhile.
"use strict";
((globalThis) => {
  const I = globalThis[Symbol.for("cinder.internals")];
  const { core } = I;
  const {
    op_ws_pair,
    op_ws_accept,
    op_ws_released,
    op_ws_accept_hibernatable,
    op_ws_send,
    op_ws_close,
    op_ws_of_object,
    op_ws_set_attachment,
    op_ws_get_attachment,
    op_ws_set_auto_response,
    op_ws_get_auto_response,
    op_ws_auto_response_at,
    op_ws_set_event_timeout,
    op_ws_get_event_timeout,
    op_ws_take,
    op_ws_connect,
  } = core.ops;
  const { EventTarget, MessageEvent, CloseEvent, ErrorEvent, Event, defineEventHandler } =
    I.events;
  const { DOMException } = I;

  const TOKEN = Symbol("cinder.ws");
  const CONNECTING = 0, OPEN = 1, CLOSING = 2, CLOSED = 3;

  // Sockets accepted in this isolate (plain accept), by socket id.
  const accepted = new Map();

  function toMessage(data) {
    if (typeof data === "string") return { text: data, bytes: null };
    if (data instanceof ArrayBuffer) return { text: "", bytes: new Uint8Array(data) };
    if (ArrayBuffer.isView(data)) {
      return {
        text: "",
        bytes: new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
      };
    }
    if (data instanceof Blob) {
      throw new TypeError("Sending a Blob over a WebSocket is not supported; send its bytes.");
    }
    return { text: String(data), bytes: null };
  }

  class WebSocket extends EventTarget {
    static CONNECTING = CONNECTING;
    static OPEN = OPEN;
    static CLOSING = CLOSING;
    static CLOSED = CLOSED;
    static READY_STATE_CONNECTING = CONNECTING;
    static READY_STATE_OPEN = OPEN;
    static READY_STATE_CLOSING = CLOSING;
    static READY_STATE_CLOSED = CLOSED;
    #id;
    #end; // "server" (ours), "client" (handed to the runtime), "hibernatable"
    #state = OPEN;
    #accepted = false;
    #object = 0;
    #url = null;
    #protocol = "";

    constructor(token, id, end, object = 0) {
      super();
      if (token !== TOKEN) {
        // `new WebSocket(url, protocols)`: an outgoing connection, open once connected.
        this.#connect(String(token), id);
        return;
      }
      this.#id = id;
      this.#end = end;
      this.#object = object;
      if (end === "hibernatable") this.#accepted = true;
    }

    #connect(url, protocols) {
      this.#url = url;
      this.#end = "server";
      this.#state = CONNECTING;
      this.#accepted = true;
      const actx = core.getAsyncContext();
      this.#object = actx?.obj ?? 0;
      const list = protocols === undefined ? [] : Array.isArray(protocols) ? protocols.map(String) : [String(protocols)];
      op_ws_connect({ url, protocols: list, headers: [] }, this.#object, !!actx?.cs, true).then(
        (r) => {
          I.touch();
          if (r.error) {
            this.#state = CLOSED;
            this.dispatchEvent(new ErrorEvent("error", { message: r.error }));
            this.dispatchEvent(new CloseEvent("close", { code: 1006, reason: "", wasClean: false }));
            return;
          }
          this.#id = r.socket;
          this.#protocol = r.protocol;
          this.#state = OPEN;
          accepted.set(this.#id, this);
          this.dispatchEvent(new Event("open"));
        },
        (e) => {
          this.#state = CLOSED;
          this.dispatchEvent(new ErrorEvent("error", { message: String(e?.message ?? e) }));
          this.dispatchEvent(new CloseEvent("close", { code: 1006, reason: "", wasClean: false }));
        },
      );
    }

    static _id(ws) {
      return ws.#id;
    }

    get readyState() {
      return this.#state;
    }
    get url() {
      return this.#url;
    }
    get protocol() {
      return this.#protocol;
    }
    get extensions() {
      return "";
    }
    get binaryType() {
      return "arraybuffer";
    }
    set binaryType(_v) {}

    accept(_options) {
      if (this.#end === "client") {
        throw new TypeError(
          "Can't accept() the client end of a WebSocketPair; return it in a Response instead.",
        );
      }
      if (this.#accepted) throw new TypeError("Can't accept() WebSocket that was already accepted.");
      const obj = core.getAsyncContext()?.obj ?? 0;
      const queued = op_ws_accept(this.#id, obj);
      this.#accepted = true;
      this.#object = obj;
      accepted.set(this.#id, this);
      for (const ev of queued) I.queueMicrotask(() => dispatchIncoming(this, ev));
    }

    send(data) {
      if (this.#end === "client") {
        throw new TypeError("Can't call send() on the client end of a WebSocketPair.");
      }
      if (!this.#accepted) {
        throw new TypeError(
          "You must call one of accept() or state.acceptWebSocket() on this WebSocket before sending messages.",
        );
      }
      if (this.#state === CONNECTING) {
        throw new DOMException("WebSocket is not open yet", "InvalidStateError");
      }
      if (this.#state !== OPEN) {
        throw new TypeError("Can't call WebSocket send() after close().");
      }
      const { text, bytes } = toMessage(data);
      op_ws_send(this.#id, core.getAsyncContext()?.obj ?? 0, text, bytes);
    }

    close(code, reason) {
      if (code !== undefined) {
        code = Number(code);
        if (!(code === 1000 || (code >= 3000 && code <= 4999))) {
          throw new TypeError(
            `Invalid WebSocket close code: ${code}. Use 1000 or a code from 3000 to 4999.`,
          );
        }
      }
      reason = reason === undefined ? "" : String(reason);
      if (new TextEncoder().encode(reason).byteLength > 123) {
        throw new TypeError("WebSocket close reason is too long (more than 123 bytes).");
      }
      if (this.#state === CLOSING || this.#state === CLOSED) return;
      this.#state = CLOSING;
      op_ws_close(this.#id, core.getAsyncContext()?.obj ?? 0, code ?? 1000, reason);
    }

    serializeAttachment(value) {
      op_ws_set_attachment(this.#id, I.rpc.serialize(value, true));
    }

    deserializeAttachment() {
      const bytes = op_ws_get_attachment(this.#id);
      return bytes === null ? null : I.rpc.deserialize(bytes, true);
    }

    // Taken by `ctx.acceptWebSocket()`: its events go to the object's handlers.
    _hibernate(obj) {
      if (this.#end === "client") {
        throw new TypeError("Can't accept() the client end of a WebSocketPair.");
      }
      if (this.#accepted) throw new TypeError("Can't accept() WebSocket that was already accepted.");
      this.#end = "hibernatable";
      this.#accepted = true;
      this.#object = obj;
    }

    _closed() {
      if (this.#state === CLOSED) return;
      this.#state = CLOSED;
      if (this.#end === "server" && accepted.has(this.#id)) op_ws_released(this.#object);
      accepted.delete(this.#id);
    }

    _closing() {
      if (this.#state === OPEN) this.#state = CLOSING;
    }
  }
  defineEventHandler(WebSocket.prototype, "message");
  defineEventHandler(WebSocket.prototype, "close");
  defineEventHandler(WebSocket.prototype, "error");
  defineEventHandler(WebSocket.prototype, "open");

  function messageData(ev) {
    return ev.bytes !== null && ev.bytes !== undefined ? ev.bytes.buffer.slice(
      ev.bytes.byteOffset,
      ev.bytes.byteOffset + ev.bytes.byteLength,
    ) : ev.text;
  }

  // An event of a plain socket, on its JS object.
  function dispatchIncoming(ws, ev) {
    if (ev.kind === "message") {
      ws.dispatchEvent(new MessageEvent("message", { data: messageData(ev) }));
    } else if (ev.kind === "error") {
      ws.dispatchEvent(new ErrorEvent("error", { message: ev.reason }));
    } else if (ev.kind === "close") {
      ws._closed();
      ws.dispatchEvent(
        new CloseEvent("close", { code: ev.code, reason: ev.reason, wasClean: ev.wasClean }),
      );
    }
  }

  class WebSocketPair {
    constructor() {
      const id = op_ws_pair();
      this[0] = new WebSocket(TOKEN, id, "client");
      this[1] = new WebSocket(TOKEN, id, "server");
    }
    *[Symbol.iterator]() {
      yield this[0];
      yield this[1];
    }
  }

  class WebSocketRequestResponsePair {
    #request;
    #response;
    constructor(request, response) {
      if (typeof request !== "string" || typeof response !== "string") {
        throw new TypeError("WebSocketRequestResponsePair takes two strings");
      }
      this.#request = request;
      this.#response = response;
    }
    get request() {
      return this.#request;
    }
    get response() {
      return this.#response;
    }
  }

  // --- Response with a WebSocket: status 101 is allowed only with one.
  const BaseResponse = I.Response;
  const webSockets = new WeakMap();
  Object.defineProperty(BaseResponse.prototype, "webSocket", {
    get() {
      return webSockets.get(this) ?? null;
    },
    configurable: true,
    enumerable: true,
  });
  const ResponseWithWebSocket = new Proxy(BaseResponse, {
    construct(target, args, newTarget) {
      const [body, init] = args;
      const ws = init?.webSocket;
      if (ws === undefined || ws === null) {
        if (init?.status === 101) {
          throw new RangeError(
            "Responses may only be constructed with status code 101 if they include a non-null webSocket.",
          );
        }
        return Reflect.construct(target, args, newTarget);
      }
      if (!(ws instanceof WebSocket)) {
        throw new TypeError("Response's webSocket must be a WebSocket");
      }
      const { webSocket: _ws, status, ...rest } = init;
      const r = Reflect.construct(target, [body, { ...rest, status: 200 }], newTarget);
      I.toInnerResponse(r).status = status ?? 101;
      webSockets.set(r, ws);
      return r;
    },
  });

  // The socket id a response hands to the runtime (0: none).
  function responseSocket(response) {
    const ws = webSockets.get(response);
    return ws ? WebSocket._id(ws) : 0;
  }

  // A `101` received from a Durable Object or a service: its webSocket is the client end.
  function webSocketResponse(res, body) {
    const ws = new WebSocket(TOKEN, res.webSocket, "client");
    return new ResponseWithWebSocket(body, {
      status: 101,
      statusText: res.statusText,
      headers: res.headers,
      webSocket: ws,
    });
  }

  // `fetch(url, { headers: { Upgrade: "websocket" } })`: a `101` whose `webSocket` is the
  // connected socket, to `accept()`.
  async function connectForFetch(url, headers) {
    const protocols = (headers.find(([k]) => k.toLowerCase() === "sec-websocket-protocol")?.[1] ?? "")
      .split(",")
      .map((p) => p.trim())
      .filter(Boolean);
    const actx = core.getAsyncContext();
    const r = await op_ws_connect({ url, protocols, headers }, actx?.obj ?? 0, !!actx?.cs, false);
    I.touch();
    if (r.error) throw new TypeError(r.error);
    const ws = new WebSocket(TOKEN, r.socket, "server");
    const h = new I.Headers();
    if (r.protocol) h.set("sec-websocket-protocol", r.protocol);
    return new ResponseWithWebSocket(null, { status: 101, headers: h, webSocket: ws });
  }

  // --- The hibernation API of DurableObjectState.
  const hibernatable = new Map(); // object handle -> Map(socket id -> WebSocket)

  function wrapperFor(obj, id) {
    let m = hibernatable.get(obj);
    if (!m) hibernatable.set(obj, (m = new Map()));
    let ws = m.get(id);
    if (!ws) m.set(id, (ws = new WebSocket(TOKEN, id, "hibernatable", obj)));
    return ws;
  }

  const state = I.DurableObjectState.prototype;
  Object.assign(state, {
    acceptWebSocket(ws, tags = []) {
      if (!(ws instanceof WebSocket)) {
        throw new TypeError("acceptWebSocket() requires a WebSocket");
      }
      const obj = I.durable.handleOf(this);
      const queued = op_ws_accept_hibernatable(obj, WebSocket._id(ws), Array.from(tags, String));
      ws._hibernate(obj);
      let m = hibernatable.get(obj);
      if (!m) hibernatable.set(obj, (m = new Map()));
      // From now on the object's handlers see this socket as `ws` itself.
      m.set(WebSocket._id(ws), ws);
      for (const ev of queued) {
        I.queueMicrotask(() => I.durable.deliverWs(obj, ev));
      }
    },
    getWebSockets(tag) {
      const obj = I.durable.handleOf(this);
      return op_ws_of_object(obj, tag === undefined ? "" : String(tag)).map(([id]) =>
        wrapperFor(obj, id)
      );
    },
    getTags(ws) {
      const obj = I.durable.handleOf(this);
      const id = WebSocket._id(ws);
      const found = op_ws_of_object(obj, "").find(([i]) => i === id);
      if (!found) {
        throw new TypeError("getTags() requires a WebSocket accepted with acceptWebSocket().");
      }
      return found[1];
    },
    setWebSocketAutoResponse(pair) {
      const obj = I.durable.handleOf(this);
      if (pair === undefined || pair === null) op_ws_set_auto_response(obj, "", "");
      else op_ws_set_auto_response(obj, pair.request, pair.response);
    },
    getWebSocketAutoResponse() {
      const r = op_ws_get_auto_response(I.durable.handleOf(this));
      return r === null ? null : new WebSocketRequestResponsePair(r[0], r[1]);
    },
    getWebSocketAutoResponseTimestamp(ws) {
      const t = op_ws_auto_response_at(WebSocket._id(ws));
      return t < 0 ? null : new Date(t);
    },
    setHibernatableWebSocketEventTimeout(ms) {
      op_ws_set_event_timeout(I.durable.handleOf(this), ms === undefined ? 0 : Number(ms));
    },
    getHibernatableWebSocketEventTimeout() {
      const ms = op_ws_get_event_timeout(I.durable.handleOf(this));
      return ms < 0 ? null : ms;
    },
  });

  // A hibernatable socket's event, as the object's handler call.
  async function objectWsEvent(instance, obj, ev) {
    const ws = wrapperFor(obj, ev.socket);
    if (ev.kind === "message") {
      if (typeof instance.webSocketMessage === "function") {
        await instance.webSocketMessage(ws, messageData(ev));
      }
    } else if (ev.kind === "close") {
      ws._closed();
      hibernatable.get(obj)?.delete(ev.socket);
      if (typeof instance.webSocketClose === "function") {
        await instance.webSocketClose(ws, ev.code, ev.reason, ev.wasClean);
      }
    } else if (ev.kind === "error") {
      if (typeof instance.webSocketError === "function") {
        await instance.webSocketError(ws, new Error(ev.reason));
      }
    }
  }

  // Entry kind 3: an event of a socket accepted here with ws.accept().
  function entry(eid) {
    const ev = op_ws_take(eid);
    if (ev === null) return;
    const ws = accepted.get(ev.socket);
    if (!ws) return;
    const run = () => dispatchIncoming(ws, ev);
    if (ev.object && !I.inputOpen(ev.object)) {
      I.inputWait(ev.object).then(run, () => {});
    } else {
      const prev = core.getAsyncContext();
      core.setAsyncContext({ rid: "", eid: 0, obj: ev.object, cs: 0 });
      try {
        run();
      } catch (e) {
        I.console.error("Uncaught", e);
      } finally {
        core.setAsyncContext(prev);
      }
    }
  }

  I.ws = {
    entry,
    responseSocket,
    webSocketResponse,
    objectWsEvent,
    connectForFetch,
    forget: (obj) => hibernatable.delete(obj),
  };

  const def = (value) => ({ value, writable: true, enumerable: false, configurable: true });
  Object.defineProperties(globalThis, {
    WebSocket: def(WebSocket),
    WebSocketPair: def(WebSocketPair),
    WebSocketRequestResponsePair: def(WebSocketRequestResponsePair),
    Response: def(ResponseWithWebSocket),
  });
})(globalThis);
