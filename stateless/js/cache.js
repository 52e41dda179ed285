// The Cache API: `caches.default` and `await caches.open(name)`, each a `Cache` with
// `match/put/delete` over the node's cache storage (src/ops_cache.rs, the cinder-cache
// engine: Cache-Control, Vary, conditionals, ranges). Runs once while the startup snapshot is
// built, after htmlrewriter.js.
//
// Arguments are checked here, with workerd's error texts, before a response body is touched;
// a miss resolves `undefined` as in workerd.
"use strict";
((globalThis) => {
  const I = globalThis[Symbol.for("cinder.internals")];
  const { core, Request, Response, requestMod, toInnerResponse, bodyForRust, streamFromBody } =
    I;
  const { op_cache_put, op_cache_match, op_cache_delete } = core.ops;
  const { toInnerRequest } = requestMod;

  const TOKEN = Symbol("cinder.cache");
  const NULL_BODY = [101, 204, 205, 304];

  function call(cacheName, request) {
    const ctx = core.getAsyncContext();
    const inner = toInnerRequest(request);
    return {
      cache: cacheName,
      url: request.url,
      method: request.method,
      headers: inner.headerList.map(([k, v]) => [k, v]),
      caller: ctx?.obj ?? 0,
      inCs: !!ctx?.cs,
    };
  }

  // `Request | string | URL` as workerd's Request::coerce takes it.
  function toRequest(input) {
    return input instanceof Request ? input : new Request(input);
  }

  function ignoreMethod(options) {
    if (options === undefined || options === null) return false;
    if (typeof options !== "object") {
      throw new TypeError("Failed to convert the options argument to 'CacheQueryOptions'.");
    }
    return !!options.ignoreMethod;
  }

  function unimplemented(method) {
    return new Error(`Failed to execute '${method}' on 'Cache': the method is not implemented.`);
  }

  class Cache {
    #name;
    constructor(key, name) {
      if (key !== TOKEN) throw new TypeError("Illegal constructor");
      this.#name = name;
    }

    async match(request, options) {
      request = toRequest(request);
      const ignore = ignoreMethod(options);
      if (!ignore && request.method !== "GET") return undefined;
      const found = await op_cache_match(call(this.#name, request), ignore);
      I.touch();
      if (found === null) return undefined;
      const body = found.body === 0 || NULL_BODY.includes(found.status)
        ? null
        : streamFromBody(found.body);
      return new Response(body, { status: found.status, headers: found.headers });
    }

    async put(request, response) {
      if (!(response instanceof Response)) {
        throw new TypeError(
          "Failed to execute 'put' on 'Cache': parameter 2 is not of type 'Response'.",
        );
      }
      if (response.type === "error") {
        throw new TypeError("Cache is unable to store an error response");
      }
      request = toRequest(request);
      if (request.method !== "GET") {
        throw new TypeError("Cannot cache response to non-GET request.");
      }
      if (response.status === 206) {
        throw new TypeError("Cannot cache response to a range request (206 Partial Content).");
      }
      const vary = response.headers.get("vary");
      if (vary !== null && vary.includes("*")) {
        throw new TypeError("Cannot cache response with 'Vary: *' header.");
      }
      if (response.webSocket) {
        throw new TypeError("Cannot cache WebSocket upgrade response.");
      }
      if (response.bodyUsed) throw new TypeError("Body has already been used.");
      const c = call(this.#name, request);
      const inner = toInnerResponse(response);
      const headers = inner.headerList.map(([k, v]) => [k, v]);
      const [kind, bytes, sink] = bodyForRust(inner);
      await op_cache_put(c, response.status, headers, kind, bytes, sink);
      I.touch();
    }

    async delete(request, options) {
      request = toRequest(request);
      const ignore = ignoreMethod(options);
      if (!ignore && request.method !== "GET") return false;
      const deleted = await op_cache_delete(call(this.#name, request), ignore);
      I.touch();
      return deleted;
    }

    add() {
      throw unimplemented("add");
    }
    addAll() {
      throw unimplemented("addAll");
    }
    matchAll() {
      throw unimplemented("matchAll");
    }
    keys() {
      throw unimplemented("keys");
    }
  }

  class CacheStorage {
    #default;
    constructor(key) {
      if (key !== TOKEN) throw new TypeError("Illegal constructor");
      this.#default = new Cache(TOKEN, null);
    }
    get default() {
      return this.#default;
    }
    async open(cacheName) {
      cacheName = String(cacheName);
      // workerd's limit (it keeps the name in a header).
      if (cacheName.length >= 1024) throw new TypeError("Cache name is too long.");
      return new Cache(TOKEN, cacheName);
    }
  }

  const caches = new CacheStorage(TOKEN);
  for (const [name, value] of [
    ["caches", caches],
    ["Cache", Cache],
    ["CacheStorage", CacheStorage],
  ]) {
    Object.defineProperty(globalThis, name, {
      value,
      writable: true,
      enumerable: false,
      configurable: true,
    });
  }
})(globalThis);
