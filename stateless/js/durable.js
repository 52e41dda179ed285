// Durable Objects and JS RPC: namespaces, ids and stubs (the caller's side), and the object's
// side (`ctx`, `ctx.storage`, delivery of fetch / RPC / alarm events). Runs once while the
// startup snapshot is built, after bootstrap.js, with the internals bootstrap.js left.
//
// Which object is running is carried by V8's continuation-preserved embedder data (deno_core's
// async context): `{ rid, eid, obj, cs }` = request id, event id, object handle (0 in a
// stateless worker) and the open critical section (0 if none). It follows every await, so a
// storage call, timer or outbound call made anywhere in an object's code is charged to that
// object's gates.
"use strict";
((globalThis) => {
  const I = globalThis[Symbol.for("cinder.internals")];
  const { core, Request, Response, DOMException, console } = I;
  const {
    op_do_id_from_name,
    op_do_new_unique_id,
    op_do_id_from_string,
    op_do_fetch,
    op_do_rpc,
    op_do_take,
    op_do_take_dead,
    op_do_return,
    op_do_throw,
    op_do_bcw_begin,
    op_do_bcw_end,
    op_do_wait_until,
    op_do_abort,
    op_do_input_wait,
    op_do_input_open,
    op_do_storage_get,
    op_do_storage_list,
    op_do_storage_put,
    op_do_storage_delete,
    op_do_storage_delete_all,
    op_do_storage_get_alarm,
    op_do_storage_set_alarm,
    op_do_storage_delete_alarm,
    op_do_storage_sync,
    op_do_txn_begin,
    op_do_txn,
    op_cinder_respond,
    op_cinder_event_done,
  } = core.ops;

  I.inputOpen = (h) => op_do_input_open(h);
  I.inputWait = (h) => op_do_input_wait(h);

  const ctxNow = () => core.getAsyncContext();
  const callerObj = () => ctxNow()?.obj ?? 0;
  const inCriticalSection = () => !!ctxNow()?.cs;

  function withContext(ctx, fn) {
    const prev = core.getAsyncContext();
    core.setAsyncContext(ctx);
    try {
      return fn();
    } finally {
      core.setAsyncContext(prev);
    }
  }

  const { serialize, deserialize, makeError, callError, errorInfo } = I.rpc;

  // ---------------------------------------------------------------------------------------
  // Ids and namespaces

  const ID_TOKEN = Symbol("cinder.id");

  class DurableObjectId {
    #hex;
    #name;
    #jurisdiction;
    constructor(token, hex, name, jurisdiction) {
      if (token !== ID_TOKEN) throw new TypeError("Illegal constructor");
      this.#hex = hex;
      this.#name = name;
      this.#jurisdiction = jurisdiction ?? undefined;
    }
    toString() {
      return this.#hex;
    }
    toJSON() {
      return this.#hex;
    }
    equals(other) {
      return other instanceof DurableObjectId && other.#hex === this.#hex;
    }
    get name() {
      return this.#name;
    }
    get jurisdiction() {
      return this.#jurisdiction;
    }
    static hexOf(id) {
      return id.#hex;
    }
  }

  // workerd drops names longer than this from `id.name` (the id still derives from the name).
  const MAX_ID_NAME = 1024;

  class DurableObjectNamespace {
    #binding;
    #jurisdiction;
    constructor(token, binding, jurisdiction) {
      if (token !== ID_TOKEN) throw new TypeError("Illegal constructor");
      this.#binding = binding;
      this.#jurisdiction = jurisdiction;
    }
    idFromName(name) {
      name = String(name);
      const r = op_do_id_from_name(this.#binding, this.#jurisdiction, name);
      return new DurableObjectId(
        ID_TOKEN,
        r.hex,
        name.length <= MAX_ID_NAME ? name : undefined,
        r.jurisdiction,
      );
    }
    newUniqueId(options) {
      const j = options?.jurisdiction;
      const r = op_do_new_unique_id(
        this.#binding,
        this.#jurisdiction,
        j === undefined || j === null ? "" : String(j),
      );
      return new DurableObjectId(ID_TOKEN, r.hex, undefined, r.jurisdiction);
    }
    idFromString(hex) {
      const r = op_do_id_from_string(this.#binding, this.#jurisdiction, String(hex));
      return new DurableObjectId(ID_TOKEN, r.hex, undefined, r.jurisdiction);
    }
    get(id, _options) {
      if (!(id instanceof DurableObjectId)) {
        throw new TypeError(
          "Failed to execute 'get' on 'DurableObjectNamespace': parameter 1 is not of type 'DurableObjectId'.",
        );
      }
      // Checks that the id is this namespace's (throws otherwise).
      op_do_id_from_string(this.#binding, this.#jurisdiction, DurableObjectId.hexOf(id));
      return makeStub({
        binding: this.#binding,
        jurisdiction: this.#jurisdiction,
        id,
        hex: DurableObjectId.hexOf(id),
        name: id.name ?? "",
      });
    }
    getByName(name, options) {
      return this.get(this.idFromName(name), options);
    }
    jurisdiction(j) {
      if (typeof j !== "string" || j === "") {
        throw new TypeError("jurisdiction() requires a jurisdiction name");
      }
      op_do_new_unique_id(this.#binding, "", j); // validates the name
      return new DurableObjectNamespace(ID_TOKEN, this.#binding, j);
    }
  }

  // ---------------------------------------------------------------------------------------
  // Stubs (the caller's side)

  function makeStub(t) {
    const where = { binding: t.binding, jurisdiction: t.jurisdiction, hex: t.hex, name: t.name };
    t.where = where;
    const target = I.rpc.makeTarget((message, caller, inCs, sinks) =>
      op_do_rpc(where, caller, inCs, message, sinks)
    );
    const base = {
      get id() {
        return t.id;
      },
      get name() {
        return t.id.name;
      },
      fetch(input, init) {
        return stubFetch(t, input, init);
      },
      connect() {
        throw new TypeError("connect() on Durable Object stubs is not supported by cinder");
      },
      dup() {
        return makeStub(t);
      },
      [Symbol.dispose]() {},
    };
    return I.rpc.makeStub(target, base);
  }

  async function stubFetch(t, input, init) {
    if (typeof input === "string" && !/^[a-z][a-z0-9+.-]*:/i.test(input)) {
      input = new URL(input, "http://fake-host/").href;
    }
    const request = new Request(input, init);
    const inner = I.requestMod.toInnerRequest(request);
    const [kind, bytes, sink] = I.bodyForRust(inner);
    const out = await op_do_fetch(
      t.where,
      callerObj(),
      inCriticalSection(),
      { method: inner.method, url: inner.url(), headers: I.headerPairs(inner.headerList) },
      kind,
      bytes,
      sink,
    );
    I.touch();
    if (out.error) throw callError(out.error);
    const res = out.response;
    const nullBody = res.status === 101 || res.status === 204 || res.status === 205 ||
      res.status === 304 || inner.method === "HEAD";
    const body = res.body === null || nullBody ? null : I.streamFromBody(res.body);
    if (res.webSocket) return I.ws.webSocketResponse(res, body);
    return new Response(body, {
      status: res.status,
      statusText: res.statusText,
      headers: res.headers,
    });
  }

  // ---------------------------------------------------------------------------------------
  // ctx and ctx.storage (the object's side)

  function storageKeys(keys) {
    return keys.map((k) => String(k));
  }

  function entriesToMap(entries) {
    const m = new Map();
    for (const [k, v] of entries) m.set(k, deserialize(v, true));
    return m;
  }

  class DurableObjectTransaction {
    #token;
    #done = false;
    constructor(token) {
      this.#token = token;
    }
    #cmd(cmd) {
      if (this.#done) throw new Error("This transaction has already ended.");
      return op_do_txn(this.#token, cmd).then((r) => {
        I.touch();
        return r;
      });
    }
    async get(keyOrKeys, _opts) {
      const many = Array.isArray(keyOrKeys);
      const r = await this.#cmd({
        op: "get",
        keys: storageKeys(many ? keyOrKeys : [keyOrKeys]),
      });
      const m = entriesToMap(r.entries);
      return many ? m : m.values().next().value;
    }
    async put(keyOrEntries, value, _opts) {
      await this.#cmd({ op: "put", entries: putEntries(keyOrEntries, value) });
    }
    async delete(keyOrKeys, _opts) {
      const many = Array.isArray(keyOrKeys);
      const r = await this.#cmd({
        op: "delete",
        keys: storageKeys(many ? keyOrKeys : [keyOrKeys]),
      });
      return many ? r.count : r.count > 0;
    }
    async list(opts = {}) {
      const r = await this.#cmd({ op: "list", opts: listOptions(opts) });
      return entriesToMap(r.entries);
    }
    async getAlarm(_opts) {
      const r = await this.#cmd({ op: "getAlarm" });
      return r.alarm ?? null;
    }
    async setAlarm(time, _opts) {
      await this.#cmd({ op: "setAlarm", at: alarmTime(time) });
    }
    async deleteAlarm(_opts) {
      await this.#cmd({ op: "deleteAlarm" });
    }
    rollback() {
      this.#cmd({ op: "rollback" });
    }
    deleteAll() {
      throw new Error("Cannot call deleteAll() within a transaction");
    }
    _end(commit) {
      const p = this.#cmd({ op: commit ? "commit" : "abort" });
      this.#done = true;
      return p;
    }
  }

  function putEntries(keyOrEntries, value) {
    if (typeof keyOrEntries === "object" && keyOrEntries !== null) {
      return Object.entries(keyOrEntries).map(([k, v]) => {
        if (v === undefined) throw new TypeError("put() called with undefined value.");
        return [k, serialize(v, true)];
      });
    }
    if (value === undefined) throw new TypeError("put() called with undefined value.");
    return [[String(keyOrEntries), serialize(value, true)]];
  }

  function listOptions(opts) {
    if (opts === null || opts === undefined) return {};
    const o = {};
    for (const k of ["start", "startAfter", "end", "prefix"]) {
      if (opts[k] !== undefined) o[k] = String(opts[k]);
    }
    if (opts.reverse !== undefined) o.reverse = !!opts.reverse;
    if (opts.limit !== undefined) o.limit = Number(opts.limit);
    o.allowConcurrency = !!opts.allowConcurrency;
    o.noCache = !!opts.noCache;
    return o;
  }

  function alarmTime(time) {
    const t = time instanceof Date ? time.getTime() : Number(time);
    if (typeof time !== "number" && !(time instanceof Date)) {
      throw new TypeError(
        "setAlarm() requires a Date or a number of milliseconds since the epoch",
      );
    }
    return t;
  }

  class DurableObjectStorage {
    #h;
    constructor(token, h) {
      if (token !== ID_TOKEN) throw new TypeError("Illegal constructor");
      this.#h = h;
    }
    async get(keyOrKeys, opts) {
      const many = Array.isArray(keyOrKeys);
      const keys = storageKeys(many ? keyOrKeys : [keyOrKeys]);
      const entries = await op_do_storage_get(
        this.#h,
        keys,
        !!opts?.allowConcurrency,
        !!opts?.noCache,
      );
      I.touch();
      if (many) return entriesToMap(entries);
      return entries.length ? deserialize(entries[0][1], true) : undefined;
    }
    put(keyOrEntries, value, opts) {
      if (typeof keyOrEntries === "object" && keyOrEntries !== null) opts = value;
      try {
        op_do_storage_put(this.#h, putEntries(keyOrEntries, value), !!opts?.allowUnconfirmed);
      } catch (e) {
        return Promise.reject(e);
      }
      return Promise.resolve();
    }
    delete(keyOrKeys, opts) {
      const many = Array.isArray(keyOrKeys);
      try {
        const n = op_do_storage_delete(
          this.#h,
          storageKeys(many ? keyOrKeys : [keyOrKeys]),
          !!opts?.allowUnconfirmed,
        );
        return Promise.resolve(many ? n : n > 0);
      } catch (e) {
        return Promise.reject(e);
      }
    }
    async list(opts) {
      const o = listOptions(opts);
      if (o.start !== undefined && o.startAfter !== undefined) {
        throw new TypeError("list() cannot be called with both start and startAfter values.");
      }
      const entries = await op_do_storage_list(this.#h, o);
      I.touch();
      return entriesToMap(entries);
    }
    deleteAll(opts) {
      try {
        op_do_storage_delete_all(this.#h, !!opts?.allowUnconfirmed);
      } catch (e) {
        return Promise.reject(e);
      }
      return Promise.resolve();
    }
    async getAlarm(opts) {
      const at = await op_do_storage_get_alarm(this.#h, !!opts?.allowConcurrency);
      I.touch();
      return at ?? null;
    }
    setAlarm(time, opts) {
      try {
        op_do_storage_set_alarm(this.#h, alarmTime(time), !!opts?.allowUnconfirmed);
      } catch (e) {
        return Promise.reject(e);
      }
      return Promise.resolve();
    }
    deleteAlarm(opts) {
      try {
        op_do_storage_delete_alarm(this.#h, !!opts?.allowUnconfirmed);
      } catch (e) {
        return Promise.reject(e);
      }
      return Promise.resolve();
    }
    sync() {
      return op_do_storage_sync(this.#h, inCriticalSection()).then(() => I.touch());
    }
    async transaction(closure) {
      const token = op_do_txn_begin(this.#h);
      const txn = new DurableObjectTransaction(token);
      const ctx = { ...(ctxNow() ?? {}), obj: this.#h, cs: token };
      let result;
      try {
        result = await withContext(ctx, () => closure(txn));
      } catch (e) {
        await txn._end(false);
        throw e;
      }
      await txn._end(true);
      return result;
    }
    transactionSync(_closure) {
      throw new Error(
        "transactionSync() is only available on SQLite-backed Durable Objects (declare the class in new_sqlite_classes)",
      );
    }
    get sql() {
      throw new Error(
        "This Durable Object is not backed by SQLite storage, so the SQL API is not available. SQL can be enabled on a new Durable Object class by using the `new_sqlite_classes` instead of `new_classes` under `migrations` in your Wrangler config.",
      );
    }
  }

  class DurableObjectState {
    static handleOf(state) {
      return state.#h;
    }
    #h;
    #id;
    #storage;
    constructor(token, h, id) {
      if (token !== ID_TOKEN) throw new TypeError("Illegal constructor");
      this.#h = h;
      this.#id = id;
      this.#storage = new DurableObjectStorage(ID_TOKEN, h);
    }
    get id() {
      return this.#id;
    }
    get storage() {
      return this.#storage;
    }
    get props() {
      return {};
    }
    waitUntil(promise) {
      const token = op_do_wait_until(this.#h);
      Promise.resolve(promise).then(
        () => op_do_bcw_end(token, ""),
        (e) => {
          console.error("Uncaught (in waitUntil):", e);
          op_do_bcw_end(token, "");
        },
      );
    }
    blockConcurrencyWhile(callback) {
      const token = op_do_bcw_begin(this.#h);
      const ctx = { ...(ctxNow() ?? {}), obj: this.#h, cs: token };
      let p;
      try {
        p = Promise.resolve(withContext(ctx, () => callback()));
      } catch (e) {
        p = Promise.reject(e);
      }
      return p.then(
        (v) => {
          op_do_bcw_end(token, "");
          return v;
        },
        (e) => {
          op_do_bcw_end(token, `blockConcurrencyWhile() callback threw: ${I.errorText(e)}`);
          throw e;
        },
      );
    }
    abort(reason) {
      op_do_abort(this.#h, reason === undefined ? "" : String(reason?.message ?? reason));
    }
  }

  // ---------------------------------------------------------------------------------------
  // Events delivered to objects

  const objects = new Map(); // handle -> { instance, state }
  let mainModule = null;
  let workerEnv = null;
  const sqliteClasses = new Set();

  function entry(kind, eid) {
    const dead = op_do_take_dead();
    for (const h of dead) {
      objects.delete(h);
      I.ws.forget(h);
    }
    if (kind === 3) return I.ws.entry(eid);
    if (kind !== 1) return undefined;
    const ev = op_do_take(eid);
    const ctx = { rid: ev.requestId, eid, obj: ev.handle, cs: 0 };
    if (ev.kind === "construct") return withContext(ctx, () => construct(ev));
    if (ev.kind === "export") {
      withContext({ ...ctx, obj: 0 }, () =>
        rpcEvent(eid, () => I.rpc.serveExport(ev.exportId, ev.message, eid, ev.streams))
      );
      return undefined;
    }
    if (ev.kind === "entrypoint") {
      withContext({ ...ctx, obj: 0 }, () => rpcEvent(eid, () => serveEntrypoint(eid, ev)));
      return undefined;
    }
    const o = objects.get(ev.handle);
    if (!o) {
      op_do_throw(eid, "Error", "Durable Object instance not found (it was reset)");
      op_cinder_event_done(eid, "");
      return undefined;
    }
    withContext(ctx, () => {
      if (ev.kind === "fetch") objectFetch(eid, ev, o);
      else if (ev.kind === "rpc") objectRpc(eid, ev, o);
      else if (ev.kind === "alarm") objectAlarm(eid, ev, o);
      else if (ev.kind === "ws") objectWs(eid, ev, o);
    });
    return undefined;
  }

  async function rpcEvent(eid, run) {
    try {
      const { bytes, sinks } = await run();
      op_do_return(eid, 0, bytes, sinks);
    } catch (e) {
      const info = errorInfo(e);
      op_do_throw(eid, info.name, info.message);
    }
    eventDone(eid);
  }

  // A service binding's RPC call: a new instance of the entrypoint class per call, as on
  // Cloudflare.
  async function serveEntrypoint(eid, ev) {
    const cls = ev.entrypoint ? mainModule?.[ev.entrypoint] : mainModule?.default;
    if (typeof cls !== "function" || !(cls.prototype instanceof I.WorkerEntrypoint)) {
      throw new TypeError(
        ev.entrypoint
          ? `The entrypoint "${ev.entrypoint}" is not a class extending WorkerEntrypoint (from "cloudflare:workers"), so it does not support RPC.`
          : "The RPC receiver does not implement the method: the worker's default export is not a class extending WorkerEntrypoint (from \"cloudflare:workers\").",
      );
    }
    const waits = [];
    const instance = new cls(I.executionContext(waits), workerEnv);
    try {
      return await I.rpc.serve(instance, ev.message, eid, true, ev.streams);
    } finally {
      I.settleAll(waits);
    }
  }

  function construct(ev) {
    const cls = mainModule?.[ev.className];
    if (typeof cls !== "function") {
      return ["Error", `Durable Object class "${ev.className}" is not exported`];
    }
    const id = new DurableObjectId(ID_TOKEN, ev.idHex, ev.idName ?? undefined, undefined);
    const state = new DurableObjectState(ID_TOKEN, ev.handle, id);
    try {
      const instance = new cls(state, workerEnv);
      objects.set(ev.handle, { instance, state });
      return undefined;
    } catch (e) {
      console.error("Uncaught (in Durable Object constructor)", e);
      const info = errorInfo(e);
      return [info.name, info.message];
    }
  }

  async function objectFetch(eid, ev, o) {
    try {
      const body = ev.body === null ? null : I.streamFromBody(ev.body);
      const request = new Request(ev.url, {
        method: ev.method,
        headers: ev.headers,
        body,
        duplex: "half",
      });
      I.setCf(request, I.localCf(ev));
      if (typeof o.instance.fetch !== "function") {
        throw new TypeError("Handler does not export a fetch() function.");
      }
      const response = await o.instance.fetch(request);
      if (!(response instanceof Response)) {
        throw new TypeError(
          "Incorrect type for Promise: the Promise did not resolve to 'Response'.",
        );
      }
      const inner = I.toInnerResponse(response);
      const [kind, bytes, sink] = I.bodyForRust(inner);
      op_cinder_respond(
        eid,
        inner.status,
        I.headerPairs(inner.headerList),
        kind,
        bytes,
        sink,
        I.ws.responseSocket(response),
      );
    } catch (e) {
      console.error("Uncaught", e);
      const info = errorInfo(e);
      op_do_throw(eid, info.name, info.message);
    }
    eventDone(eid);
  }

  function eventDone(eid) {
    I.rpc.endEvent(eid);
    op_cinder_event_done(eid, "");
  }

  async function objectRpc(eid, ev, o) {
    try {
      if (!(o.instance instanceof I.DurableObject)) {
        throw new TypeError(
          "The receiving Durable Object does not support RPC, because its class was not declared with `extends DurableObject`. In order to enable RPC, make sure your class extends the special class `DurableObject`, which can be imported from the module \"cloudflare:workers\".",
        );
      }
      const { bytes, sinks } = await I.rpc.serve(o.instance, ev.message, eid, true, ev.streams);
      op_do_return(eid, 0, bytes, sinks);
    } catch (e) {
      const info = errorInfo(e);
      op_do_throw(eid, info.name, info.message);
    }
    eventDone(eid);
  }

  async function objectWs(eid, ev, o) {
    try {
      await I.ws.objectWsEvent(o.instance, ev.handle, ev.ws);
      op_do_return(eid, 1, new Uint8Array(0), []);
    } catch (e) {
      console.error("Uncaught (in WebSocket handler)", e);
      const info = errorInfo(e);
      op_do_throw(eid, info.name, info.message);
    }
    eventDone(eid);
  }

  async function objectAlarm(eid, ev, o) {
    try {
      if (typeof o.instance.alarm === "function") {
        await o.instance.alarm({
          scheduledTime: ev.scheduledTime,
          retryCount: ev.retryCount,
          isRetry: ev.isRetry,
        });
      }
      op_do_return(eid, 1, new Uint8Array(0), []);
    } catch (e) {
      console.error("Uncaught (in alarm)", e);
      const info = errorInfo(e);
      op_do_throw(eid, info.name, info.message);
    }
    eventDone(eid);
  }

  I.DurableObjectState = DurableObjectState;
  I.durable = {
    handleOf: (state) => DurableObjectState.handleOf(state),
    waitUntil(h, promise) {
      const o = objects.get(h);
      if (!o) throw new Error("waitUntil() was called outside of a request");
      o.state.waitUntil(promise);
    },
    // A hibernatable socket's event that arrived before ctx.acceptWebSocket() took it.
    deliverWs(h, ev) {
      const o = objects.get(h);
      if (o) I.ws.objectWsEvent(o.instance, h, ev).catch((e) => console.error("Uncaught", e));
    },
    addBindings(env, spec) {
      for (const [binding] of spec.durableObjects ?? []) {
        env[binding] = new DurableObjectNamespace(ID_TOKEN, binding, "");
      }
    },
    bind(mod, env, spec) {
      mainModule = mod;
      workerEnv = env;
      for (const [name, sqlite] of spec.classes) if (sqlite) sqliteClasses.add(name);
    },
    entry,
  };

  Object.defineProperties(globalThis, {
    DurableObjectId: { value: DurableObjectId, writable: true, configurable: true },
    DurableObjectNamespace: { value: DurableObjectNamespace, writable: true, configurable: true },
    DurableObjectState: { value: DurableObjectState, writable: true, configurable: true },
    DurableObjectStorage: { value: DurableObjectStorage, writable: true, configurable: true },
  });
})(globalThis);
