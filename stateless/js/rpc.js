// JS RPC: the values that cross a stub (structured clone plus references), calls batched per
// synchronous run (promise pipelining), and the receiving side that runs a message against an
// object, an entrypoint or an exported function / RpcTarget. Runs while the startup snapshot is
// built, after bootstrap.js and before durable.js.
//
// A message is V8-serialized `{ calls: [{ parent, path, args }] }`: each call targets the
// receiver (`parent` -1) or the result of an earlier call of the same message (pipelining), and
// is a method call (`args` an array) or a property read (`args` null). The answer is
// `{ results: [{ ok } | { err: { name, message } }] }`, one per call.
//
// Functions, RpcTarget instances and stubs are passed by reference: the sender *exports* them
// (an unguessable id the Rust side maps to this isolate) and the message carries a marker; the
// receiver turns the marker into a stub whose calls travel back here. Exports made while
// sending arguments live as long as the sending event; those made while sending a result live
// until the receiver disposes of its stub or its event ends.
"use strict";
((globalThis) => {
  const I = globalThis[Symbol.for("cinder.internals")];
  const { core, DOMException, RpcTarget, console } = I;
  const {
    op_rpc_export,
    op_rpc_release,
    op_rpc_call_export,
  } = core.ops;

  const ctxNow = () => core.getAsyncContext();
  const currentEvent = () => ctxNow()?.eid ?? 0;

  function makeError(name, message) {
    const ctor = { TypeError, RangeError, SyntaxError, ReferenceError, EvalError, URIError }[
      name
    ];
    if (ctor) return new ctor(message);
    if (name === "DataCloneError") return new DOMException(message, "DataCloneError");
    const e = new Error(message);
    if (name && name !== "Error") e.name = name;
    return e;
  }

  function callError(info) {
    const e = makeError(info.name, info.message);
    if (info.remote) e.remote = true;
    if (info.overloaded) e.overloaded = true;
    if (info.retryable) e.retryable = true;
    return e;
  }

  function errorInfo(e) {
    if (e instanceof Error || e instanceof DOMException) {
      return { name: e.name ?? "Error", message: e.message ?? String(e) };
    }
    return { name: "Error", message: String(e) };
  }

  function dataCloneError(message) {
    throw new DOMException(message, "DataCloneError");
  }

  const throwClone = (message) => dataCloneError(message);
  const serialize = (value, forStorage) => core.serialize(value, { forStorage }, throwClone);
  const deserialize = (bytes, forStorage) => core.deserialize(bytes, { forStorage });

  // ---------------------------------------------------------------------------------------
  // Exports (what this isolate lends out) and imports (what it holds of others')

  const exportsById = new Map(); // id -> { value, obj }
  const eventRefs = new Map(); // eid -> Set of ids to release when the event ends

  function track(eid, id) {
    if (!eid) return;
    let s = eventRefs.get(eid);
    if (!s) eventRefs.set(eid, (s = new Set()));
    s.add(id);
  }

  // `owner`: the event whose end releases it (0: released by the importer).
  function exportValue(value, owner) {
    const id = op_rpc_export();
    exportsById.set(id, { value, obj: ctxNow()?.obj ?? 0 });
    track(owner, id);
    return id;
  }

  function release(id) {
    exportsById.delete(id);
    op_rpc_release(id);
  }

  // Called when an event of this isolate ends: what it lent and what it received go.
  function endEvent(eid) {
    const s = eventRefs.get(eid);
    if (!s) return;
    eventRefs.delete(eid);
    for (const id of s) release(id);
  }

  // ---------------------------------------------------------------------------------------
  // Encoding: a copy of the value with references replaced by markers

  const MARK = "\u0000cinder.ref";
  const PLAIN_PROTOS = new Set([Object.prototype, null, Array.prototype]);
  const STUB = Symbol("cinder.stub");

  function isRpcTarget(v) {
    return v instanceof RpcTarget;
  }

  // `owner`: see exportValue. Class instances other than RpcTarget are refused, as
  // Cloudflare refuses them (they would arrive without their prototype). A ReadableStream is
  // moved: its bytes are pumped into a sink (listed in `sinks`) that travels with the message.
  function encode(value, owner, sinks, seen = new Map()) {
    if (typeof value === "function") {
      if (value[STUB]) return { [MARK]: { id: exportValue(value, owner) } };
      return { [MARK]: { id: exportValue(value, owner), fn: true } };
    }
    if (value === null || typeof value !== "object") return value;
    if (seen.has(value)) return seen.get(value);
    if (value[STUB] || isRpcTarget(value)) {
      const marker = { [MARK]: { id: exportValue(value, owner) } };
      seen.set(value, marker);
      return marker;
    }
    if (value instanceof I.ReadableStream) {
      if (value.locked) throw new TypeError("The ReadableStream is locked and cannot be sent over RPC.");
      sinks.push(I.pumpStream(value));
      const marker = { [MARK]: { stream: sinks.length - 1 } };
      seen.set(value, marker);
      return marker;
    }
    const proto = Object.getPrototypeOf(value);
    if (Array.isArray(value)) {
      const out = new Array(value.length);
      seen.set(value, out);
      for (let i = 0; i < value.length; i++) out[i] = encode(value[i], owner, sinks, seen);
      return out;
    }
    if (PLAIN_PROTOS.has(proto)) {
      const out = {};
      seen.set(value, out);
      for (const k of Object.keys(value)) out[k] = encode(value[k], owner, sinks, seen);
      return out;
    }
    if (value instanceof Map) {
      const out = new Map();
      seen.set(value, out);
      for (const [k, v] of value) out.set(encode(k, owner, sinks, seen), encode(v, owner, sinks, seen));
      return out;
    }
    if (value instanceof Set) {
      const out = new Set();
      seen.set(value, out);
      for (const v of value) out.add(encode(v, owner, sinks, seen));
      return out;
    }
    if (
      value instanceof Date || value instanceof RegExp || value instanceof Error ||
      value instanceof DOMException || value instanceof ArrayBuffer ||
      ArrayBuffer.isView(value) || value instanceof Boolean || value instanceof Number ||
      value instanceof String
    ) {
      return value;
    }
    const name = value?.constructor?.name || "Object";
    dataCloneError(
      `Could not serialize object of type "${name}". This type does not support serialization.`,
    );
  }

  // The inverse: markers become stubs (or streams over `bodies`, the ids of the message's
  // streams); `eid` is the receiving event, which disposes of the stubs when it ends.
  function decode(value, eid, bodies, seen = new Map()) {
    if (value === null || typeof value !== "object") return value;
    if (seen.has(value)) return seen.get(value);
    if (Object.prototype.hasOwnProperty.call(value, MARK)) {
      const ref = value[MARK];
      if (ref.stream !== undefined) {
        const stream = I.streamFromBody(bodies[ref.stream]);
        seen.set(value, stream);
        return stream;
      }
      const stub = importStub(ref.id, !!ref.fn);
      track(eid, ref.id);
      seen.set(value, stub);
      return stub;
    }
    if (Array.isArray(value)) {
      seen.set(value, value);
      for (let i = 0; i < value.length; i++) value[i] = decode(value[i], eid, bodies, seen);
      return value;
    }
    const proto = Object.getPrototypeOf(value);
    if (PLAIN_PROTOS.has(proto)) {
      seen.set(value, value);
      for (const k of Object.keys(value)) value[k] = decode(value[k], eid, bodies, seen);
      return value;
    }
    if (value instanceof Map) {
      const entries = [...value];
      value.clear();
      seen.set(value, value);
      for (const [k, v] of entries) value.set(decode(k, eid, bodies, seen), decode(v, eid, bodies, seen));
      return value;
    }
    if (value instanceof Set) {
      const items = [...value];
      value.clear();
      seen.set(value, value);
      for (const v of items) value.add(decode(v, eid, bodies, seen));
      return value;
    }
    return value;
  }

  // ---------------------------------------------------------------------------------------
  // The caller's side: stubs, batches, pipelining

  // `send(message, caller, inCs)` delivers one message and resolves with `{ result, error }`.
  function makeTarget(send) {
    return { send, current: null };
  }

  // Calls made through one target in one synchronous run leave together when the microtask
  // queue drains, so `stub.a().b()` is one round trip.
  function currentBatch(t) {
    if (t.current) return t.current;
    const batch = { calls: [], pending: [], sent: false };
    t.current = batch;
    const actx = ctxNow();
    I.queueMicrotask(() => {
      t.current = null;
      sendBatch(t, batch, actx);
    });
    return batch;
  }

  function rejectAll(batch, e) {
    for (const p of batch.pending) p.reject(e);
  }

  async function sendBatch(t, batch, actx) {
    batch.sent = true;
    const eid = actx?.eid ?? 0;
    let message;
    const sinks = [];
    try {
      const calls = batch.calls.map((c) => ({
        parent: c.parent,
        path: c.path,
        args: c.args === null ? null : encode(c.args, eid, sinks),
      }));
      message = serialize({ calls }, false);
    } catch (e) {
      return rejectAll(batch, e);
    }
    let out;
    try {
      out = await t.send(message, actx?.obj ?? 0, !!actx?.cs, sinks);
    } catch (e) {
      return rejectAll(batch, e);
    } finally {
      I.touch();
    }
    if (out.error) return rejectAll(batch, callError(out.error));
    let reply;
    try {
      reply = deserialize(out.result, false);
    } catch (e) {
      return rejectAll(batch, e);
    }
    batch.pending.forEach((p, i) => {
      const r = reply.results[i];
      if (r && "ok" in r) {
        p.resolve(decode(r.ok, currentEvent() || eid, out.streams));
      } else {
        const err = r?.err ?? { name: "Error", message: "the RPC call got no result" };
        const e = makeError(err.name, err.message);
        e.remote = true;
        p.reject(e);
      }
    });
  }

  // One call (or property read: `args === null`) on target `t`; `parent` is the pending call
  // whose result it targets, or null for the target itself.
  function newCall(t, parent, path, args) {
    if (parent && parent.batch.sent) {
      // The parent call already left: continue from its value once it arrives.
      return localCall(parent.promise, path, args);
    }
    const batch = parent ? parent.batch : currentBatch(t);
    let resolve, reject;
    const promise = new Promise((res, rej) => {
      resolve = res;
      reject = rej;
    });
    // A pipelined call's own result may never be awaited; don't report it as unhandled.
    promise.catch(() => {});
    const index = batch.calls.length;
    batch.calls.push({ parent: parent ? parent.index : -1, path, args });
    batch.pending.push({ resolve, reject });
    return rpcPromise(t, { batch, index, promise });
  }

  async function localCall(targetPromise, path, args) {
    let obj = await targetPromise;
    for (let i = 0; i < path.length - 1; i++) obj = await obj[path[i]];
    if (path.length === 0) return await obj(...args);
    const name = path[path.length - 1];
    if (args === null) return await obj[name];
    const fn = obj?.[name];
    if (typeof fn !== "function") {
      throw new TypeError(`The RPC receiver does not implement the method "${name}".`);
    }
    return await Reflect.apply(fn, obj, args);
  }

  // What `stub.x` gives: callable (a method call) and awaitable (a property read); its
  // properties are deeper paths.
  function rpcMember(t, parent, path) {
    const fn = function () {};
    return new Proxy(fn, {
      get(_t, prop) {
        if (prop === "then") {
          const p = newCall(t, parent, path, null);
          return (res, rej) => p.then(res, rej);
        }
        if (typeof prop === "symbol") return undefined;
        return rpcMember(t, parent, [...path, prop]);
      },
      apply(_t, _this, args) {
        return newCall(t, parent, path, args);
      },
    });
  }

  // A call's result: a thenable whose properties pipeline further calls.
  function rpcPromise(t, call) {
    return new Proxy({}, {
      get(_t, prop) {
        if (prop === "then") return call.promise.then.bind(call.promise);
        if (prop === "catch") return call.promise.catch.bind(call.promise);
        if (prop === "finally") return call.promise.finally.bind(call.promise);
        if (prop === Symbol.dispose) return () => {};
        if (typeof prop === "symbol") return undefined;
        return rpcMember(t, call, [prop]);
      },
    });
  }

  // Names a stub never turns into calls.
  const NOT_RPC = new Set(["then", "constructor"]);

  // A stub: `base` holds its own members (fetch, id, ...); any other name is an RPC member.
  function makeStub(t, base, callable = false) {
    const target = callable ? function () {} : {};
    Object.defineProperty(base, STUB, { value: true });
    return new Proxy(target, {
      get(_t, prop) {
        if (prop === STUB) return true;
        if (prop in base) return base[prop];
        if (typeof prop === "symbol" || NOT_RPC.has(prop)) return undefined;
        return rpcMember(t, null, [prop]);
      },
      has(_t, prop) {
        return prop === STUB || prop in base;
      },
      apply(_t, _this, args) {
        return newCall(t, null, [], args);
      },
    });
  }

  function importStub(id, callable) {
    let disposed = false;
    const t = makeTarget((message, caller, inCs, sinks) => {
      if (disposed) {
        return Promise.reject(new Error("Attempted to use RPC stub after it has been disposed."));
      }
      return op_rpc_call_export(id, caller, inCs, message, sinks);
    });
    const base = {
      dup() {
        // A duplicate outlives the event that received the original.
        return importStub(id, callable);
      },
      [Symbol.dispose]() {
        if (!disposed) {
          disposed = true;
          release(id);
        }
      },
    };
    return makeStub(t, base, callable);
  }

  // ---------------------------------------------------------------------------------------
  // The receiving side

  // Never callable over RPC on a Durable Object or WorkerEntrypoint.
  const RESERVED = new Set([
    "fetch",
    "connect",
    "constructor",
    "dup",
    "alarm",
    "webSocketMessage",
    "webSocketClose",
    "webSocketError",
  ]);

  // A member of a receiver: class instances expose their prototype chain's members (methods
  // and getters, not Object.prototype's); plain objects and arrays their own properties.
  function rpcGet(obj, name, isRoot) {
    if (obj === null || obj === undefined) {
      throw new TypeError(`Cannot read properties of ${obj} (reading '${name}')`);
    }
    if (obj[STUB]) return obj[name];
    if (isRoot && RESERVED.has(name)) {
      throw new TypeError(`The RPC receiver does not implement the method "${name}".`);
    }
    const proto = Object.getPrototypeOf(obj);
    if ((typeof obj === "object" || typeof obj === "function") && !PLAIN_PROTOS.has(proto)) {
      let p = typeof obj === "function" ? null : proto;
      while (p && p !== Object.prototype) {
        if (Object.prototype.hasOwnProperty.call(p, name)) return obj[name];
        p = Object.getPrototypeOf(p);
      }
      return undefined;
    }
    return Object.prototype.hasOwnProperty.call(obj, name) ? obj[name] : undefined;
  }

  async function invoke(target, path, args, isRoot) {
    if (path.length === 0) {
      if (typeof target !== "function") {
        throw new TypeError("The RPC receiver is not a function.");
      }
      return await target(...args);
    }
    let obj = target;
    for (let i = 0; i < path.length - 1; i++) obj = await rpcGet(obj, path[i], isRoot && i === 0);
    const name = path[path.length - 1];
    const atRoot = isRoot && path.length === 1;
    if (args === null) return await rpcGet(obj, name, atRoot);
    const fn = rpcGet(obj, name, atRoot);
    if (typeof fn !== "function") {
      throw new TypeError(`The RPC receiver does not implement the method "${name}".`);
    }
    // Reflect.apply: `fn` may be a stub's member, whose own properties are remote names.
    return await Reflect.apply(fn, obj, args);
  }

  // Runs every call of `bytes` (its streams' bodies in `bodies`) against `root` (reserved
  // names checked when `guarded`) within event `eid`; answers `{ bytes, sinks }`: each call's
  // outcome and the streams in them.
  async function serve(root, bytes, eid, guarded, bodies) {
    const msg = deserialize(bytes, false);
    const done = [];
    for (const call of msg.calls) {
      const args = call.args === null ? null : decode(call.args, eid, bodies);
      const target = call.parent < 0 ? root : done[call.parent];
      done.push(
        Promise.resolve(target).then((t) =>
          invoke(t, call.path, args, guarded && call.parent < 0)
        ),
      );
    }
    const settled = await Promise.allSettled(done);
    const sinks = [];
    const results = settled.map((s) => {
      if (s.status === "rejected") return { err: errorInfo(s.reason) };
      try {
        // Exports in a result live until the receiver lets go of them.
        return { ok: encode(s.value, 0, sinks) };
      } catch (e) {
        return { err: errorInfo(e) };
      }
    });
    try {
      return { bytes: serialize({ results }, false), sinks };
    } catch (e) {
      return { bytes: serialize({ results: results.map(() => ({ err: errorInfo(e) })) }, false), sinks: [] };
    }
  }

  // A call on one of this isolate's exports.
  async function serveExport(id, bytes, eid, bodies) {
    const exp = exportsById.get(id);
    if (!exp) {
      throw new Error(
        "RPC stub used after the call or event that created it ended (the value it referred to is gone).",
      );
    }
    if (exp.obj && !I.inputOpen(exp.obj)) await I.inputWait(exp.obj);
    return await serve(exp.value, bytes, eid, false, bodies);
  }

  I.rpc = {
    serialize,
    deserialize,
    makeError,
    callError,
    errorInfo,
    makeTarget,
    makeStub,
    serve,
    serveExport,
    endEvent,
    dataCloneError,
    STUB,
  };
})(globalThis);
