// Cinder's isolate bootstrap. Runs once, while the startup snapshot is built: loads the
// lazy-loaded Web-API scripts of the deno_* crates, assigns the Workers globals, and leaves
// `start` (the per-worker entry) under a symbol for the Rust side to call after a restore.
"use strict";
((globalThis) => {
  const core = Deno.core;
  const L = (s) => core.loadExtScript(s);
  const webidl = L("ext:deno_webidl/00_webidl.js");
  const url = L("ext:deno_web/00_url.js");
  const urlPattern = L("ext:deno_web/01_urlpattern.js");
  const consoleMod = L("ext:deno_web/01_console.js");
  const domException = L("ext:deno_web/01_dom_exception.js");
  const event = L("ext:deno_web/02_event.js");
  const timers = L("ext:deno_web/02_timers.js");
  const abort = L("ext:deno_web/03_abort_signal.js");
  const base64 = L("ext:deno_web/05_base64.js");
  const streams = L("ext:deno_web/06_streams.js");
  const encoding = L("ext:deno_web/08_text_encoding.js");
  const file = L("ext:deno_web/09_file.js");
  const messagePort = L("ext:deno_web/13_message_port.js");
  const compression = L("ext:deno_web/14_compression.js");
  const performance = L("ext:deno_web/15_performance.js");
  const headersMod = L("ext:deno_fetch/20_headers.js");
  const formData = L("ext:deno_fetch/21_formdata.js");
  const requestMod = L("ext:deno_fetch/23_request.js");
  const responseMod = L("ext:deno_fetch/23_response.js");
  const cryptoMod = L("ext:deno_crypto/00_crypto.js");

  const {
    op_cinder_take_event,
    op_cinder_respond,
    op_cinder_respond_error,
    op_cinder_event_done,
    op_cinder_body_read,
    op_cinder_body_close,
    op_cinder_sink_new,
    op_cinder_sink_write,
    op_cinder_sink_close,
    op_cinder_outbound,
    op_cinder_log,
    op_cinder_module_data,
  } = core.ops;

  const { Request, toInnerResponse } = { ...requestMod, ...responseMod };
  const { Response } = responseMod;
  const { Headers } = headersMod;
  const { ReadableStream } = streams;

  consoleMod.setNoColorFns(() => true, () => true);
  // --- console -> tracing, tagged with the request being served (follows awaits through
  // V8's continuation-preserved embedder data).
  const console = new consoleMod.Console((msg, level) => {
    const rid = core.getAsyncContext()?.rid;
    op_cinder_log(String(msg).replace(/\n$/, ""), level, typeof rid === "string" ? rid : "");
  });

  // --- Workers-only types.
  class Navigator {
    get userAgent() {
      return "Cloudflare-Workers";
    }
    get hardwareConcurrency() {
      return 1;
    }
    get language() {
      return "en-US";
    }
  }
  const navigator = new Navigator();

  class ScheduledController {
    constructor(scheduledTime, cron) {
      this.scheduledTime = scheduledTime;
      this.cron = cron;
    }
    noRetry() {}
  }

  // `cloudflare:workers` classes. Minimal: enough for `extends` and for RPC-less use.
  class WorkerEntrypoint {
    constructor(ctx, env) {
      this.ctx = ctx;
      this.env = env;
    }
  }
  class DurableObject {
    constructor(ctx, env) {
      this.ctx = ctx;
      this.env = env;
    }
  }
  class RpcTarget {}
  class WorkflowEntrypoint {
    constructor(ctx, env) {
      this.ctx = ctx;
      this.env = env;
    }
  }

  // A timer set by a Durable Object fires only when the object's input gate is open (no
  // storage call or critical section of the object outstanding), like any event. The object
  // comes from the async context the timer was set in; inside its own critical section the
  // callback belongs to the section and runs at once.
  const internals = { __proto__: null };
  // Tells the runtime which event's code resumes (after an await of its I/O, or a timer): the
  // CPU of the turn is charged to it, not split among every event in flight.
  function touch() {
    const eid = core.getAsyncContext()?.eid;
    if (eid) core.ops.op_cinder_touch(eid);
  }
  // deno_core's queueMicrotask (reports a throwing callback instead of losing it).
  const queueMicrotask = globalThis.queueMicrotask;
  function gateCallback(cb) {
    const ctx = core.getAsyncContext();
    if (typeof cb !== "function") return cb;
    if (!ctx?.obj || ctx.cs) {
      return function timed(...args) {
        touch();
        return cb.apply(this, args);
      };
    }
    const h = ctx.obj;
    return function gated(...args) {
      touch();
      if (internals.inputOpen(h)) return cb.apply(this, args);
      internals.inputWait(h).then(() => cb.apply(this, args), () => {});
    };
  }

  // A Durable Object with a pending timer does not hibernate: the runtime is told how many
  // each object has.
  const objectTimers = new Map(); // timer id -> object handle
  function timerStarted(id, obj) {
    if (!obj) return;
    objectTimers.set(id, obj);
    core.ops.op_do_timers(obj, 1);
  }
  function timerDone(id) {
    const obj = objectTimers.get(id);
    if (obj === undefined) return;
    objectTimers.delete(id);
    core.ops.op_do_timers(obj, -1);
  }

  const def = (value) => ({ value, writable: true, enumerable: false, configurable: true });
  const getter = (get) => ({ get, enumerable: true, configurable: true });

  Object.defineProperties(globalThis, {
    self: getter(() => globalThis),
    console: def(console),
    URL: def(url.URL),
    URLSearchParams: def(url.URLSearchParams),
    URLPattern: def(urlPattern.URLPattern),
    DOMException: def(domException.DOMException),
    Event: def(event.Event),
    EventTarget: def(event.EventTarget),
    CustomEvent: def(event.CustomEvent),
    ErrorEvent: def(event.ErrorEvent),
    CloseEvent: def(event.CloseEvent),
    MessageEvent: def(event.MessageEvent),
    PromiseRejectionEvent: def(event.PromiseRejectionEvent),
    reportError: def(event.reportError),
    setTimeout: def(function setTimeout(cb, ms, ...args) {
      const obj = core.getAsyncContext()?.obj ?? 0;
      let id = 0;
      let fn = gateCallback(cb);
      if (obj && typeof fn === "function") {
        const gated = fn;
        fn = function (...a) {
          timerDone(id);
          return gated.apply(this, a);
        };
      }
      id = timers.setTimeout.call(globalThis, fn, ms, ...args);
      timerStarted(id, obj);
      return id;
    }),
    setInterval: def(function setInterval(cb, ms, ...args) {
      const obj = core.getAsyncContext()?.obj ?? 0;
      const id = timers.setInterval.call(globalThis, gateCallback(cb), ms, ...args);
      timerStarted(id, obj);
      return id;
    }),
    clearTimeout: def(function clearTimeout(id) {
      timerDone(id);
      return timers.clearTimeout.call(globalThis, id);
    }),
    clearInterval: def(function clearInterval(id) {
      timerDone(id);
      return timers.clearInterval.call(globalThis, id);
    }),
    queueMicrotask: def(queueMicrotask),
    // Cloudflare's `scheduler.wait(ms)`: an awaitable setTimeout.
    scheduler: def(
      Object.freeze({
        wait: (ms) => new Promise((resolve) => globalThis.setTimeout(resolve, ms)),
      }),
    ),
    AbortController: def(abort.AbortController),
    AbortSignal: def(abort.AbortSignal),
    atob: def(base64.atob),
    btoa: def(base64.btoa),
    ReadableStream: def(streams.ReadableStream),
    ReadableStreamDefaultReader: def(streams.ReadableStreamDefaultReader),
    ReadableStreamBYOBReader: def(streams.ReadableStreamBYOBReader),
    ReadableStreamBYOBRequest: def(streams.ReadableStreamBYOBRequest),
    ReadableByteStreamController: def(streams.ReadableByteStreamController),
    ReadableStreamDefaultController: def(streams.ReadableStreamDefaultController),
    WritableStream: def(streams.WritableStream),
    WritableStreamDefaultWriter: def(streams.WritableStreamDefaultWriter),
    WritableStreamDefaultController: def(streams.WritableStreamDefaultController),
    TransformStream: def(streams.TransformStream),
    TransformStreamDefaultController: def(streams.TransformStreamDefaultController),
    ByteLengthQueuingStrategy: def(streams.ByteLengthQueuingStrategy),
    CountQueuingStrategy: def(streams.CountQueuingStrategy),
    TextEncoder: def(encoding.TextEncoder),
    TextDecoder: def(encoding.TextDecoder),
    TextEncoderStream: def(encoding.TextEncoderStream),
    TextDecoderStream: def(encoding.TextDecoderStream),
    CompressionStream: def(compression.CompressionStream),
    DecompressionStream: def(compression.DecompressionStream),
    Blob: def(file.Blob),
    File: def(file.File),
    FormData: def(formData.FormData),
    MessageChannel: def(messagePort.MessageChannel),
    MessagePort: def(messagePort.MessagePort),
    structuredClone: def(messagePort.structuredClone),
    performance: def(performance.performance),
    Performance: def(performance.Performance),
    Headers: def(Headers),
    Request: def(Request),
    Response: def(Response),
    // The crypto singleton holds cppgc objects, which cannot exist in a snapshot: made on
    // first use, in the restored isolate.
    crypto: getter(() => cryptoMod.crypto),
    Crypto: def(cryptoMod.Crypto),
    CryptoKey: def(cryptoMod.CryptoKey),
    SubtleCrypto: def(cryptoMod.SubtleCrypto),
    navigator: def(navigator),
    Navigator: def(Navigator),
    ScheduledController: def(ScheduledController),
  });
  event.saveGlobalThisReference(globalThis);

  // --- bodies between Rust and JS.
  function streamFromBody(bodyId) {
    return new ReadableStream({
      type: "bytes",
      async pull(controller) {
        const chunk = await op_cinder_body_read(bodyId);
        touch();
        if (chunk === null) {
          controller.close();
          controller.byobRequest?.respond(0);
        } else if (chunk.byteLength > 0) {
          controller.enqueue(chunk);
        }
      },
      cancel() {
        op_cinder_body_close(bodyId);
      },
    });
  }

  async function pump(stream, sink) {
    const reader = stream.getReader();
    try {
      while (true) {
        const { done, value } = await reader.read();
        if (done) break;
        let chunk = value;
        if (typeof chunk === "string") chunk = core.encode(chunk);
        else if (chunk instanceof ArrayBuffer) chunk = new Uint8Array(chunk);
        else if (!ArrayBuffer.isView(chunk)) {
          throw new TypeError("This ReadableStream did not return bytes.");
        } else if (!(chunk instanceof Uint8Array)) {
          chunk = new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength);
        }
        const written = await op_cinder_sink_write(sink, chunk);
        touch();
        if (!written) {
          await reader.cancel("the receiver went away");
          break;
        }
      }
      op_cinder_sink_close(sink, "");
    } catch (e) {
      op_cinder_sink_close(sink, String(e?.stack ?? e));
    }
  }

  // Splits a body into what the Rust side takes: kind 0 = none, 1 = bytes, 2 = stream (sink).
  const EMPTY = new Uint8Array(0);
  function bodyForRust(inner) {
    const body = inner?.body;
    if (body === null || body === undefined) return [0, EMPTY, 0];
    const sos = body.streamOrStatic;
    if (!(sos instanceof ReadableStream)) {
      if (sos.consumed) throw new TypeError("Body has already been used.");
      sos.consumed = true;
      const b = sos.body;
      return [1, typeof b === "string" ? core.encode(b) : b, 0];
    }
    if (sos.locked || streams.isReadableStreamDisturbed?.(sos)) {
      throw new TypeError("Body has already been used.");
    }
    const sink = op_cinder_sink_new();
    pump(sos, sink);
    return [2, EMPTY, sink];
  }

  function headerPairs(list) {
    const out = new Array(list.length);
    for (let i = 0; i < list.length; i++) out[i] = [list[i][0], list[i][1]];
    return out;
  }

  // --- outbound requests: global fetch() and service bindings share one op.
  const REDIRECTS = [301, 302, 303, 307, 308];
  async function outbound(target, input, init) {
    let request = new Request(input, init);
    const signal = request.signal;
    signal?.throwIfAborted?.();
    const { toInnerRequest } = requestMod;
    {
      const inner = toInnerRequest(request);
      const upgrade = inner.headerList.find(([k]) => k.toLowerCase() === "upgrade")?.[1];
      if (target === "" && upgrade?.toLowerCase() === "websocket") {
        return internals.ws.connectForFetch(inner.url(), headerPairs(inner.headerList));
      }
    }
    for (let hop = 0; ; hop++) {
      const inner = toInnerRequest(request);
      const [kind, bytes, sink] = bodyForRust(inner);
      const actx = core.getAsyncContext();
      const res = await op_cinder_outbound(
        target,
        { method: inner.method, url: inner.url(), headers: headerPairs(inner.headerList) },
        kind,
        bytes,
        sink,
        actx?.obj ?? 0,
        !!actx?.cs,
      );
      touch();
      const nullBody = res.status === 101 || res.status === 204 || res.status === 205 ||
        res.status === 304 || inner.method === "HEAD";
      const body = res.body === null || nullBody ? null : streamFromBody(res.body);
      if (nullBody && res.body !== null) op_cinder_body_close(res.body);
      if (res.webSocket) return internals.ws.webSocketResponse(res, body);
      const response = new Response(body, {
        status: res.status,
        statusText: res.statusText,
        headers: res.headers,
      });
      const location = response.headers.get("location");
      if (
        target !== "" || request.redirect === "manual" || !REDIRECTS.includes(res.status) ||
        location === null
      ) {
        Object.defineProperty(response, "url", { value: inner.url(), configurable: true });
        return response;
      }
      if (request.redirect === "error") {
        throw new TypeError("Fetch failed: redirect mode is 'error'");
      }
      if (hop >= 20) throw new TypeError("Fetch failed: too many redirects");
      await response.body?.cancel();
      const next = new URL(location, inner.url()).href;
      const method = res.status === 303 || ((res.status === 301 || res.status === 302) &&
          inner.method === "POST")
        ? (inner.method === "HEAD" ? "HEAD" : "GET")
        : inner.method;
      if (method !== inner.method || kind === 0) {
        request = new Request(next, { method, headers: request.headers, signal, redirect: "follow" });
      } else if (kind === 1) {
        request = new Request(next, {
          method,
          headers: request.headers,
          body: bytes,
          signal,
          redirect: "follow",
        });
      } else {
        throw new TypeError("Fetch failed: cannot follow a redirect with a streamed body");
      }
    }
  }

  Object.defineProperty(globalThis, "fetch", def(function fetch(input, init) {
    return outbound("", input, init);
  }));

  // A service binding: `fetch` reaches the bound worker's fetch handler; any other member is
  // an RPC call to its WorkerEntrypoint (see js/rpc.js).
  function serviceBinding(binding) {
    const base = {
      fetch(input, init) {
        if (typeof input === "string" && !/^[a-z][a-z0-9+.-]*:/i.test(input)) {
          input = new URL(input, "http://fake-host/").href;
        }
        return outbound(binding, input, init);
      },
      connect() {
        throw new TypeError("connect() on service bindings is not supported by cinder");
      },
    };
    const target = internals.rpc.makeTarget((message, caller, inCs, sinks) =>
      core.ops.op_rpc_call_service(binding, caller, inCs, message, sinks)
    );
    return internals.rpc.makeStub(target, base);
  }

  // --- events.
  class ExecutionContext {
    #promises;
    constructor(promises) {
      this.#promises = promises;
      this.props = {};
    }
    waitUntil(p) {
      this.#promises.push(Promise.resolve(p));
    }
    // Cloudflare forwards the request to the origin when the handler throws; a dev server has
    // no origin, so a thrown exception still answers 500 (as `wrangler dev` does).
    passThroughOnException() {}
  }

  // `ctx.waitUntil` work may run this long after its event, as on Cloudflare.
  const WAIT_UNTIL_LIMIT_MS = 15 * 60 * 1000;

  async function settleAll(promises) {
    if (promises.length === 0) return;
    let timer;
    const expired = new Promise((resolve) => {
      timer = timers.setTimeout.call(globalThis, () => resolve(true), WAIT_UNTIL_LIMIT_MS);
    });
    const all = (async () => {
      for (let i = 0; i < promises.length; i++) {
        try {
          await promises[i];
        } catch (e) {
          console.error("Uncaught (in waitUntil):", e);
        }
      }
      return false;
    })();
    if (await Promise.race([all, expired])) {
      console.warn("waitUntil work was cancelled: it ran longer than 15 minutes after its event");
    }
    timers.clearTimeout.call(globalThis, timer);
  }

  function errorText(e) {
    if (e instanceof Error) return e.stack ?? String(e);
    try {
      return String(e);
    } catch {
      return "(unprintable exception)";
    }
  }

  // `request.cf`: what Cloudflare's edge knows of the client. A local server knows nothing of
  // it, so these are fixed placeholders (as wrangler dev's), with the connection's facts.
  const cfs = new WeakMap();
  function setCf(request, cf) {
    cfs.set(request, cf);
  }
  Object.defineProperty(Request.prototype, "cf", {
    get() {
      return cfs.get(this);
    },
    configurable: true,
    enumerable: true,
  });
  function localCf(ev) {
    return {
      asn: 0,
      asOrganization: "",
      colo: "LCL",
      country: "XX",
      city: "",
      continent: "",
      region: "",
      regionCode: "",
      postalCode: "",
      metroCode: "",
      latitude: "0.00000",
      longitude: "0.00000",
      timezone: "UTC",
      httpProtocol: "HTTP/1.1",
      tlsVersion: "",
      tlsCipher: "",
      clientTcpRtt: 0,
      requestPriority: "",
      edgeRequestKeepAliveStatus: 1,
      clientAcceptEncoding: ev.headers.find(([k]) => k.toLowerCase() === "accept-encoding")?.[1] ?? "",
      botManagement: { score: 99, verifiedBot: false, staticResource: false, corporateProxy: false },
    };
  }

  async function onFetch(ev, handler, env) {
    const waits = [];
    eventWaits.set(ev.id, waits);
    const ctx = new ExecutionContext(waits);
    let answered = false;
    try {
      const body = ev.body === null ? null : streamFromBody(ev.body);
      const request = new Request(ev.url, {
        method: ev.method,
        headers: ev.headers,
        body,
        duplex: "half",
      });
      setCf(request, localCf(ev));
      if (typeof handler?.fetch !== "function") {
        throw new TypeError("Handler does not export a fetch() function.");
      }
      const response = await handler.fetch(request, env, ctx);
      if (!(response instanceof Response)) {
        throw new TypeError(
          "Incorrect type for Promise: the Promise did not resolve to 'Response'.",
        );
      }
      const inner = toInnerResponse(response);
      const [kind, bytes, sink] = bodyForRust(inner);
      answered = true;
      op_cinder_respond(
        ev.id,
        inner.status,
        headerPairs(inner.headerList),
        kind,
        bytes,
        sink,
        internals.ws?.responseSocket(response) ?? 0,
      );
    } catch (e) {
      console.error("Uncaught", e);
      if (!answered) op_cinder_respond_error(ev.id, errorText(e));
    }
    await settleAll(waits);
    eventWaits.delete(ev.id);
    internals.rpc?.endEvent(ev.id);
    op_cinder_event_done(ev.id, "");
  }

  async function onScheduled(ev, handler, env) {
    const waits = [];
    eventWaits.set(ev.id, waits);
    const ctx = new ExecutionContext(waits);
    let error = "";
    try {
      if (typeof handler?.scheduled !== "function") {
        throw new TypeError("Handler does not export a scheduled() function.");
      }
      await handler.scheduled(new ScheduledController(ev.scheduledTime, ev.cron), env, ctx);
    } catch (e) {
      console.error("Uncaught", e);
      error = errorText(e);
    }
    await settleAll(waits);
    eventWaits.delete(ev.id);
    internals.rpc?.endEvent(ev.id);
    op_cinder_event_done(ev.id, error);
  }

  // A batch from a queue this worker consumes: `queue(batch, env, ctx)`. A throw fails the
  // batch (messages without an explicit ack are retried); either way the explicit decisions
  // are reported before the event ends.
  async function onQueue(ev, handler, env) {
    const waits = [];
    eventWaits.set(ev.id, waits);
    const ctx = new ExecutionContext(waits);
    let error = "";
    let batch = null;
    try {
      if (typeof handler?.queue !== "function") {
        throw new TypeError("Handler does not export a queue() function.");
      }
      batch = internals.queue.takeBatch(ev.id);
      await handler.queue(batch, env, ctx);
    } catch (e) {
      console.error("Uncaught", e);
      error = errorText(e);
    }
    await settleAll(waits);
    internals.queue.report(ev.id, batch);
    eventWaits.delete(ev.id);
    internals.rpc?.endEvent(ev.id);
    op_cinder_event_done(ev.id, error);
  }

  function buildEnv(spec) {
    const env = {};
    for (const [name, value] of spec.vars) env[name] = value;
    for (const [name] of spec.services) env[name] = serviceBinding(name);
    internals.durable?.addBindings(env, spec);
    internals.d1?.addBindings(env, spec);
    internals.r2?.addBindings(env, spec);
    internals.kv?.addBindings(env, spec);
    internals.queue?.addBindings(env, spec);
    return env;
  }

  function handlerFor(mod, env) {
    const d = mod.default;
    if (typeof d === "function" && d.prototype instanceof WorkerEntrypoint) {
      // A class default export: one instance per event, as Cloudflare does.
      return {
        fetch: (req, env2, ctx) => new d(ctx, env2).fetch(req),
        scheduled: (c, env2, ctx) => new d(ctx, env2).scheduled(c),
        queue: (b, env2, ctx) => new d(ctx, env2).queue(b),
      };
    }
    return d;
  }

  // Called once per isolate before the worker's modules load: `env` of `cloudflare:workers`.
  let preparedEnv = null;
  function prepare(specJson) {
    preparedEnv = buildEnv(JSON.parse(specJson));
    cf.env = preparedEnv;
  }

  // Events' `waitUntil` lists, for `import { waitUntil } from "cloudflare:workers"`.
  const eventWaits = new Map();
  function waitUntil(promise) {
    const actx = core.getAsyncContext();
    if (actx?.obj) return internals.durable.waitUntil(actx.obj, promise);
    const waits = eventWaits.get(actx?.eid);
    if (!waits) throw new Error("waitUntil() was called outside of a request");
    waits.push(Promise.resolve(promise));
  }

  // Called once per isolate with the worker's evaluated main module: builds `env`, checks the
  // Durable Object classes, starts taking stateless events, and returns the entry through
  // which the Rust side delivers Durable Object events.
  function start(mainUrl, specJson, mod) {
    // Workers log an uncaught error and carry on; deno_core would end the event loop.
    core.setUnhandledPromiseRejectionHandler((_promise, reason) => {
      console.error("Uncaught (in promise)", reason);
      return true;
    });
    core.setReportExceptionCallback((error) => console.error("Uncaught", error));
    const spec = JSON.parse(specJson);
    for (const [name] of spec.classes) {
      if (typeof mod[name] !== "function") {
        throw new Error(
          `Durable Object class "${name}" is declared by the migrations but the main module ` +
            `(${mainUrl}) does not export a class by that name; export it (export class ${name} ` +
            `extends DurableObject { ... }) or remove it from the migrations.`,
        );
      }
    }
    const env = preparedEnv ?? buildEnv(spec);
    internals.durable.bind(mod, env, spec);
    const handler = handlerFor(mod, env);
    // Events arrive by synchronous calls from the Rust side (kind 2: a stateless event; the
    // others are Durable Object events): each handler runs until its first real await before
    // the call returns.
    return (kind, id) => {
      if (kind !== 2) return internals.durable.entry(kind, id);
      const ev = op_cinder_take_event(id);
      if (ev === null) return undefined;
      core.setAsyncContext({ rid: ev.requestId, eid: ev.id, obj: 0, cs: 0 });
      try {
        if (ev.kind === "fetch") onFetch(ev, handler, env);
        else if (ev.kind === "queue") onQueue(ev, handler, env);
        else onScheduled(ev, handler, env);
      } finally {
        core.setAsyncContext(undefined);
      }
      return undefined;
    };
  }

  // Warm-up: V8 compiles functions on first call and the snapshot keeps compiled code, so
  // running the request/response paths once here saves every new isolate that work.
  try {
    const req = new Request("http://warm.up/p?q=1", {
      method: "POST",
      headers: [["content-type", "text/plain"], ["x-a", "b"]],
      body: null,
    });
    new URL(req.url).searchParams.get("q");
    req.headers.get("x-a");
    const responses = [
      new Response("hi"),
      Response.json({ a: 1 }),
      new Response(new Uint8Array(2), { status: 201, headers: { "x-b": "c" } }),
    ];
    for (const r of responses) {
      const inner = toInnerResponse(r);
      bodyForRust(inner);
      headerPairs(inner.headerList);
    }
    new TextDecoder().decode(new TextEncoder().encode("x"));
    buildEnv({ vars: [["A", "b"]], services: [], durableObjects: [], classes: [] });
    // The event path itself; without isolate state (none exists while snapshotting) its ops
    // return early.
    onFetch(
      { id: 0, requestId: "", method: "GET", url: "http://warm.up/", headers: [], body: null },
      { fetch: () => new Response("warm") },
      {},
    );
  } catch {
    // Best effort: a cold path only costs compile time later.
  }

  Object.assign(internals, {
    core,
    queueMicrotask,
    streams,
    requestMod,
    Request,
    Response,
    Headers,
    ReadableStream,
    DOMException: domException.DOMException,
    toInnerResponse,
    streamFromBody,
    bodyForRust,
    pumpStream(stream) {
      const sink = op_cinder_sink_new();
      pump(stream, sink);
      return sink;
    },
    headerPairs,
    console,
    executionContext: (waits) => new ExecutionContext(waits),
    setCf,
    localCf,
    events: event,
    touch,
    settleAll,
    DurableObject,
    WorkerEntrypoint,
    RpcTarget,
    errorText,
  });
  // The Durable Object and RPC scripts (js/durable.js) run next, in the same snapshot.
  Object.defineProperty(globalThis, Symbol.for("cinder.internals"), {
    value: internals,
    configurable: true,
  });

  const cf = { DurableObject, WorkerEntrypoint, RpcTarget, WorkflowEntrypoint, env: {}, waitUntil };
  const moduleData = (specifier) => op_cinder_module_data(specifier).buffer;
  Object.defineProperty(globalThis, Symbol.for("cinder.start"), { value: start });
  Object.defineProperty(globalThis, Symbol.for("cinder.prepare"), { value: prepare });
  Object.defineProperty(globalThis, Symbol.for("cinder.cf"), { value: cf });
  Object.defineProperty(globalThis, Symbol.for("cinder.moduleData"), { value: moduleData });
})(globalThis);
