// Workers KV bindings (`kv_namespaces`): `env.<binding>` is a `KVNamespace` shaped as workerd's
// binding (api/kv.c++) shapes it. Runs once while the startup snapshot is built, after r2.js.
//
// Arguments are converted here as workerd's type wrappers convert them (keys and string
// options coerced to strings, `put` values that are objects other than buffers and streams
// refused with its TypeError); the ops (src/ops_kv.rs) run cinder-kv and reject with its
// errors, which carry Cloudflare's texts ("KV PUT failed: 400 ..."). Values come back as bytes
// and become text, JSON, an ArrayBuffer or a stream here.
"use strict";
((globalThis) => {
  const I = globalThis[Symbol.for("cinder.internals")];
  const { core, ReadableStream, streams } = I;
  const { TextDecoder } = globalThis;
  const { op_kv_get, op_kv_get_bulk, op_kv_put, op_kv_delete, op_kv_list } = core.ops;

  const TOKEN = Symbol("cinder.kv");
  const EMPTY = new Uint8Array(0);
  const decoder = new TextDecoder();

  // Who is calling: the event (its operation budget), and the Durable Object (and critical
  // section) whose code runs, if any, so the op holds the call to that object's gates.
  function call(binding) {
    const ctx = core.getAsyncContext();
    return { binding, eid: ctx?.eid ?? 0, caller: ctx?.obj ?? 0, inCs: !!ctx?.cs };
  }

  const PUT_TYPES = "KV put() accepts only strings, ArrayBuffers, ArrayBufferViews, and " +
    "ReadableStreams as values.";
  const UNKNOWN_TYPE = 'Unknown response type. Possible types are "text", "arrayBuffer", ' +
    '"json", and "stream".';

  function incorrect(field, struct, type) {
    return new TypeError(
      `Incorrect type for the '${field}' field on '${struct}': the provided value is not of ` +
        `type '${type}'.`,
    );
  }

  function isObject(v) {
    return (typeof v === "object" && v !== null) || typeof v === "function";
  }

  // A number option (`cacheTtl`, `expiration`, `limit`...): as a WebIDL integer conversion,
  // anything that is not a finite number after `Number()` is refused.
  function integer(v, field, struct) {
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isFinite(n)) throw incorrect(field, struct, "integer");
    return Math.trunc(n);
  }

  // `get(key, "json")` or `get(key, {type, cacheTtl})`: [type, cacheTtl].
  function getOptions(options) {
    if (options === undefined || options === null) return ["text", undefined];
    if (!isObject(options)) return [String(options), undefined];
    const type = options.type === undefined ? "text" : String(options.type);
    return [type, integer(options.cacheTtl, "cacheTtl", "KvGetOptions")];
  }

  function parseMetadata(m) {
    return m === null || m === undefined ? null : JSON.parse(m);
  }

  // The value in the form `type` asks for (checked only when there is a value, as workerd
  // does: a missing key is `null` whatever the type).
  function convert(bytes, type) {
    switch (type) {
      case "text":
        return decoder.decode(bytes);
      case "json":
        return JSON.parse(decoder.decode(bytes));
      case "arrayBuffer":
        return bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength
          ? bytes.buffer
          : bytes.slice().buffer;
      case "stream":
        return new ReadableStream({
          type: "bytes",
          start(c) {
            if (bytes.byteLength > 0) c.enqueue(bytes);
            c.close();
          },
        });
      default:
        throw new TypeError(UNKNOWN_TYPE);
    }
  }

  // [kind, bytes, sink] for op_kv_put: 1 = bytes, 2 = a stream flowing into a sink.
  function putBody(value) {
    if (!isObject(value)) return [1, core.encode(String(value)), 0];
    if (value instanceof ArrayBuffer) return [1, new Uint8Array(value), 0];
    if (ArrayBuffer.isView(value)) {
      return [1, new Uint8Array(value.buffer, value.byteOffset, value.byteLength), 0];
    }
    if (value instanceof ReadableStream) {
      if (value.locked || streams.isReadableStreamDisturbed(value)) {
        throw new TypeError(
          "This ReadableStream is disturbed (has already been read from), and cannot be used " +
            "as a body.",
        );
      }
      return [2, EMPTY, I.pumpStream(value)];
    }
    throw new TypeError(PUT_TYPES);
  }

  function putOptions(options) {
    if (options === undefined || options === null) return {};
    if (!isObject(options)) {
      throw new TypeError("Failed to convert the options argument to 'KvPutOptions'.");
    }
    const S = "KvPutOptions";
    const out = {
      expiration: integer(options.expiration, "expiration", S),
      expirationTtl: integer(options.expirationTtl, "expirationTtl", S),
    };
    const m = options.metadata;
    if (m !== undefined && m !== null) {
      const json = JSON.stringify(m);
      // JSON.stringify gives undefined for functions and symbols: nothing to store.
      if (json !== undefined) out.metadata = json;
    }
    return out;
  }

  function listOptions(options) {
    if (options === undefined || options === null) return {};
    if (!isObject(options)) {
      throw new TypeError("Failed to convert the options argument to 'KvListOptions'.");
    }
    const S = "KvListOptions";
    const str = (v) => (v === undefined || v === null ? undefined : String(v));
    const limit = integer(options.limit, "limit", S);
    return {
      // Like workerd, a limit of 0 or less is not sent: the default page.
      limit: limit !== undefined && limit > 0 ? limit : undefined,
      prefix: str(options.prefix),
      cursor: str(options.cursor),
    };
  }

  async function getBulk(binding, keys, options, withMetadata) {
    const [type, cacheTtl] = getOptions(options);
    const names = keys.map(String);
    const entries = await op_kv_get_bulk(call(binding), names, type, { cacheTtl }, withMetadata);
    I.touch();
    const map = new Map();
    for (const [key, text, metadata] of entries) {
      let value = null;
      if (text !== null) value = type === "json" ? JSON.parse(text) : text;
      map.set(
        key,
        withMetadata
          ? (text === null ? null : { value, metadata: parseMetadata(metadata) })
          : value,
      );
    }
    return map;
  }

  async function getSingle(binding, key, options) {
    const [type, cacheTtl] = getOptions(options);
    const r = await op_kv_get(call(binding), String(key), { cacheTtl });
    I.touch();
    if (r.value === null) return { value: null, metadata: null, cacheStatus: r.cacheStatus };
    return {
      value: convert(r.value, type),
      metadata: parseMetadata(r.metadata),
      cacheStatus: r.cacheStatus,
    };
  }

  class KVNamespace {
    #binding;
    constructor(token, binding) {
      if (token !== TOKEN) throw new TypeError("Illegal constructor");
      this.#binding = binding;
    }

    async get(key, options) {
      if (Array.isArray(key)) return await getBulk(this.#binding, key, options, false);
      return (await getSingle(this.#binding, key, options)).value;
    }

    async getWithMetadata(key, options) {
      if (Array.isArray(key)) return await getBulk(this.#binding, key, options, true);
      return await getSingle(this.#binding, key, options);
    }

    async put(key, value, options) {
      key = String(key);
      const opts = putOptions(options);
      const [kind, bytes, sink] = putBody(value);
      await op_kv_put(call(this.#binding), key, opts, kind, bytes, sink);
      I.touch();
    }

    async delete(key) {
      await op_kv_delete(call(this.#binding), String(key));
      I.touch();
    }

    async list(options) {
      const r = await op_kv_list(call(this.#binding), listOptions(options));
      I.touch();
      const keys = r.keys.map((k) => {
        const out = { name: k.name };
        if (k.expiration !== null) out.expiration = k.expiration;
        if (k.metadata !== null) out.metadata = JSON.parse(k.metadata);
        return out;
      });
      const out = { keys, list_complete: r.listComplete };
      if (!r.listComplete && r.cursor !== null) out.cursor = r.cursor;
      out.cacheStatus = r.cacheStatus;
      return out;
    }
  }

  I.kv = {
    addBindings(env, spec) {
      for (const binding of spec.kvNamespaces ?? []) env[binding] = new KVNamespace(TOKEN, binding);
    },
  };
})(globalThis);
