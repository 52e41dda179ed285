// R2 bucket bindings: `env.<binding>` is an `R2Bucket`; its results are `R2Object`,
// `R2ObjectBody` (with `R2Checksums`) and `R2MultipartUpload`, shaped as workerd's binding
// shapes them. Runs once while the startup snapshot is built, after durable.js.
//
// Arguments are checked here and rejected with the binding's TypeError / RangeError texts, so
// the ops (src/ops_r2.rs) get plain values; they do the I/O and reject with R2's errors
// ("put: <message> (<code>)"). Bodies stream: a put hands a ReadableStream to Rust through a
// sink, a get's body is a ReadableStream over the blob file.
"use strict";
((globalThis) => {
  const I = globalThis[Symbol.for("cinder.internals")];
  const { core, Headers, ReadableStream, streams } = I;
  const { Blob, TextDecoder } = globalThis;
  const {
    op_r2_head,
    op_r2_get,
    op_r2_put,
    op_r2_delete,
    op_r2_list,
    op_r2_create_multipart,
    op_r2_upload_part,
    op_r2_complete,
    op_r2_abort,
    op_cinder_body_close,
  } = core.ops;

  // Only the binding makes these objects.
  const TOKEN = Symbol("cinder.r2");
  const EMPTY = new Uint8Array(0);
  // `list()` leaves out metadata `include` did not ask for (compatibility flag
  // r2_list_honor_include, default since 2022-08-04); set per worker by addBindings.
  let listHonorsInclude = true;

  // Who is calling: the Durable Object (and critical section) whose code runs, if any, so the
  // op can hold the call to that object's gates.
  function call(binding) {
    const ctx = core.getAsyncContext();
    return { binding, caller: ctx?.obj ?? 0, inCs: !!ctx?.cs };
  }

  function incorrect(field, struct, type) {
    return new TypeError(
      `Incorrect type for the '${field}' field on '${struct}': the provided value is not of ` +
        `type '${type}'.`,
    );
  }

  function isObject(v) {
    return (typeof v === "object" && v !== null) || typeof v === "function";
  }

  function options(v, struct) {
    if (v === undefined || v === null) return {};
    if (!isObject(v)) {
      throw new TypeError(`Failed to convert the options argument to '${struct}'.`);
    }
    return v;
  }

  function optionalString(v, field, struct) {
    if (v === undefined) return undefined;
    if (typeof v !== "string") throw incorrect(field, struct, "string");
    return v;
  }

  function dateMs(v, field, struct) {
    if (v === undefined) return undefined;
    if (v instanceof Date) {
      const t = v.getTime();
      if (Number.isNaN(t)) throw incorrect(field, struct, "Date");
      return t;
    }
    if (typeof v === "number" && Number.isFinite(v)) return v;
    throw incorrect(field, struct, "Date");
  }

  function noSsec(o) {
    if (o.ssecKey !== undefined) {
      throw new Error("ssecKey: SSE-C encryption is not supported by cinder");
    }
  }

  // --- onlyIf

  // One etag list header (If-Match / If-None-Match): quoted strong etags, W/"weak" ones and
  // `*`, comma separated. Characters outside quotes that are none of those are skipped; a
  // wildcard makes the whole list a wildcard.
  function parseEtagHeader(text) {
    const out = [];
    let rest = text;
    let needComma = false;
    const at = (i) => (i < 0 ? Infinity : i);
    for (;;) {
      const star = at(rest.indexOf("*"));
      const quote = at(rest.indexOf('"'));
      const weak = at(rest.indexOf("W"));
      const comma = at(rest.indexOf(","));
      if (star === Infinity && quote === Infinity) return out;
      if (comma < star && comma < quote && comma < weak) {
        rest = rest.slice(comma + 1);
        needComma = false;
        continue;
      }
      if (needComma) {
        const first = Math.min(star, quote, weak);
        const why = first === star
          ? "Encountered a wildcard character '*' instead."
          : first === quote
          ? "Encountered a double quote character '\"' instead. This would otherwise " +
            "indicate the start of a new strong etag."
          : "Encountered a weak quotation character 'W' instead. This would otherwise " +
            "indicate the start of a new weak etag.";
        throw new Error(`Comma was expected to separate etags. ${why}`);
      }
      if (star < quote) return [{ type: "wildcard" }];
      const close = rest.indexOf('"', quote + 1);
      if (close < 0) throw new Error("Unclosed double quote for Etag");
      const value = rest.slice(quote + 1, close);
      if (weak < quote) {
        if (weak + 2 !== quote || rest[weak + 1] !== "/") {
          throw new Error("Weak etags must start with W/ and their value must be quoted");
        }
        out.push({ type: "weak", value });
      } else {
        out.push({ type: "strong", value });
      }
      rest = rest.slice(close + 1);
      needComma = true;
    }
  }

  function headerDate(headers, name) {
    const v = headers.get(name);
    if (v === null) return undefined;
    const t = Date.parse(v);
    // An unparsable date imposes nothing, as HTTP has it.
    return Number.isNaN(t) ? undefined : t;
  }

  function singleEtag(v, field) {
    const e = optionalString(v, field, "R2Conditional");
    if (e === undefined) return undefined;
    if (e.startsWith('"') && e.endsWith('"')) {
      throw new TypeError(`Conditional ETag should not be wrapped in quotes (${e}).`);
    }
    return [e === "*" ? { type: "wildcard" } : { type: "strong", value: e }];
  }

  function conditional(v, struct) {
    if (v === undefined || v === null) return null;
    if (v instanceof Headers) {
      const im = v.get("if-match");
      const inm = v.get("if-none-match");
      return {
        etagMatches: im === null ? undefined : parseEtagHeader(im),
        etagDoesNotMatch: inm === null ? undefined : parseEtagHeader(inm),
        uploadedBefore: headerDate(v, "if-unmodified-since"),
        uploadedAfter: headerDate(v, "if-modified-since"),
        secondsGranularity: true,
      };
    }
    if (!isObject(v)) throw incorrect("onlyIf", struct, "R2Conditional or Headers");
    return {
      etagMatches: singleEtag(v.etagMatches, "etagMatches"),
      etagDoesNotMatch: singleEtag(v.etagDoesNotMatch, "etagDoesNotMatch"),
      uploadedBefore: dateMs(v.uploadedBefore, "uploadedBefore", "R2Conditional"),
      uploadedAfter: dateMs(v.uploadedAfter, "uploadedAfter", "R2Conditional"),
      secondsGranularity: !!v.secondsGranularity,
    };
  }

  // --- range

  function rangeNumber(v, field, struct) {
    if (v === undefined) return undefined;
    if (typeof v !== "number") throw incorrect(field, struct, "number");
    return v;
  }

  function range(v) {
    if (v === undefined || v === null) return null;
    if (v instanceof Headers) {
      const h = v.get("range");
      return h === null ? null : { header: h };
    }
    if (!isObject(v)) throw incorrect("range", "R2GetOptions", "R2Range or Headers");
    const offset = rangeNumber(v.offset, "offset", "R2Range");
    const length = rangeNumber(v.length, "length", "R2Range");
    const suffix = rangeNumber(v.suffix, "suffix", "R2Range");
    if (offset !== undefined) {
      if (!(offset >= 0)) {
        throw new RangeError(
          `Invalid range. Starting offset (${offset}) must be greater than or equal to 0.`,
        );
      }
      if (!Number.isInteger(offset)) {
        throw new RangeError(
          `Invalid range. Starting offset (${offset}) must be an integer, not floating point.`,
        );
      }
    }
    if (length !== undefined) {
      if (!(length >= 0)) {
        throw new RangeError(
          `Invalid range. Length (${length}) must be greater than or equal to 0.`,
        );
      }
      if (!Number.isInteger(length)) {
        throw new RangeError(
          `Invalid range. Length (${length}) must be an integer, not floating point.`,
        );
      }
    }
    if (suffix !== undefined) {
      if (offset !== undefined) throw new TypeError("Suffix is incompatible with offset.");
      if (length !== undefined) throw new TypeError("Suffix is incompatible with length.");
      if (!(suffix >= 0)) {
        throw new RangeError(
          `Invalid suffix. Suffix (${suffix}) must be greater than or equal to 0.`,
        );
      }
      if (!Number.isInteger(suffix)) {
        throw new RangeError(
          `Invalid range. Suffix (${suffix}) must be an integer, not floating point.`,
        );
      }
    }
    return { offset, length, suffix };
  }

  // --- put options

  const METADATA_FIELDS = [
    ["contentType", "content-type"],
    ["contentLanguage", "content-language"],
    ["contentDisposition", "content-disposition"],
    ["contentEncoding", "content-encoding"],
    ["cacheControl", "cache-control"],
  ];

  function httpMetadata(v, struct) {
    if (v === undefined || v === null) return null;
    const out = {};
    if (v instanceof Headers) {
      for (const [field, header] of METADATA_FIELDS) {
        const h = v.get(header);
        if (h !== null) out[field] = h;
      }
      out.cacheExpiry = headerDate(v, "expires");
      return out;
    }
    if (!isObject(v)) throw incorrect("httpMetadata", struct, "R2HTTPMetadata or Headers");
    for (const [field] of METADATA_FIELDS) {
      if (v[field] !== undefined) out[field] = String(v[field]);
    }
    out.cacheExpiry = dateMs(v.cacheExpiry, "cacheExpiry", "R2HTTPMetadata");
    return out;
  }

  function customMetadata(v, struct) {
    if (v === undefined || v === null) return [];
    if (!isObject(v)) throw incorrect("customMetadata", struct, "Record<string, string>");
    return Object.entries(v).map(([k, val]) => [k, String(val)]);
  }

  const HASHES = [
    ["md5", "MD5", 16],
    ["sha1", "SHA-1", 20],
    ["sha256", "SHA-256", 32],
    ["sha384", "SHA-384", 48],
    ["sha512", "SHA-512", 64],
  ];

  function hex(bytes) {
    let s = "";
    for (let i = 0; i < bytes.length; i++) s += bytes[i].toString(16).padStart(2, "0");
    return s;
  }

  function bytesOf(v) {
    if (v instanceof ArrayBuffer) return new Uint8Array(v);
    if (ArrayBuffer.isView(v)) return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
    return null;
  }

  // At most one of md5 / sha1 / sha256 / sha384 / sha512, as hex or as bytes.
  function checksum(o) {
    let out = null;
    for (const [field, name, len] of HASHES) {
      const v = o[field];
      if (v === undefined) continue;
      if (out !== null) throw new TypeError("You cannot specify multiple hashing algorithms.");
      if (typeof v === "string") {
        if (v.length !== len * 2) {
          throw new TypeError(`${name} is ${len * 2} hex characters, not ${v.length}`);
        }
        if (!/^[0-9a-fA-F]*$/.test(v)) {
          throw new TypeError(`Provided ${name} wasn't a valid hex string`);
        }
        out = { algorithm: field, hex: v.toLowerCase() };
        continue;
      }
      const b = bytesOf(v);
      if (b === null) throw incorrect(field, "R2PutOptions", "ArrayBuffer or string");
      if (b.length !== len) throw new TypeError(`${name} is ${len} bytes, not ${b.length}`);
      out = { algorithm: field, hex: hex(b) };
    }
    return out;
  }

  function storageClass(v) {
    if (v === undefined) return undefined;
    return String(v);
  }

  // --- bodies to Rust

  // What a put / uploadPart value is, checked before anything starts reading it.
  function putValue(value) {
    if (value === null || value === undefined) return { kind: 0 };
    if (typeof value === "string") return { kind: 1, bytes: core.encode(value) };
    const b = bytesOf(value);
    if (b !== null) return { kind: 1, bytes: b };
    if (value instanceof Blob) return { kind: 2, stream: value.stream() };
    if (value instanceof ReadableStream) {
      if (value.locked || streams.isReadableStreamDisturbed(value)) {
        throw new TypeError(
          "This ReadableStream is disturbed (has already been read from), and cannot be used " +
            "as a body.",
        );
      }
      return { kind: 2, stream: value };
    }
    throw new TypeError(
      "Provided value is not of type 'ReadableStream or ArrayBuffer or ArrayBufferView or " +
        "string or Blob'.",
    );
  }

  // [kind, bytes, sink] for the op; a stream starts flowing into a sink now (the op takes
  // the sink's other end at once, and drops it if the call fails, which cancels the stream).
  function startBody(v) {
    if (v.kind !== 2) return [v.kind, v.bytes ?? EMPTY, 0];
    return I.bodyForRust({ body: { streamOrStatic: v.stream } });
  }

  // --- results

  // Bodies nobody read or cancelled hold a blob reader (and its lease on the files) in the
  // isolate; drop it when the stream is collected. Made on first use: a registry cannot be
  // part of the startup snapshot.
  let bodyRegistry = null;
  function bodyStream(id) {
    const stream = I.streamFromBody(id);
    bodyRegistry ??= new FinalizationRegistry((bid) => op_cinder_body_close(bid));
    bodyRegistry.register(stream, id);
    return stream;
  }

  function bufferFromHex(h) {
    if (h === undefined || h === null) return undefined;
    const out = new Uint8Array(h.length / 2);
    for (let i = 0; i < out.length; i++) out[i] = parseInt(h.slice(2 * i, 2 * i + 2), 16);
    return out.buffer;
  }

  const ro = (value) => ({ value, writable: false, enumerable: true, configurable: false });

  class R2Checksums {
    #hex;
    constructor(token, hexes) {
      if (token !== TOKEN) throw new TypeError("Illegal constructor");
      this.#hex = hexes;
      Object.defineProperties(this, {
        md5: ro(bufferFromHex(hexes.md5)),
        sha1: ro(bufferFromHex(hexes.sha1)),
        sha256: ro(bufferFromHex(hexes.sha256)),
        sha384: ro(bufferFromHex(hexes.sha384)),
        sha512: ro(bufferFromHex(hexes.sha512)),
      });
    }
    toJSON() {
      const out = {};
      for (const [field] of HASHES) if (this.#hex[field] != null) out[field] = this.#hex[field];
      return out;
    }
  }

  function httpMetadataOut(m) {
    const out = {};
    for (const [field] of METADATA_FIELDS) if (m[field] != null) out[field] = m[field];
    if (m.cacheExpiry != null) out.cacheExpiry = new Date(m.cacheExpiry);
    return out;
  }

  class R2Object {
    // `include`: which optional metadata the result carries (a list without `include`
    // leaves it out).
    constructor(token, o, include) {
      if (token !== TOKEN) throw new TypeError("Illegal constructor");
      const http = include?.http ?? true;
      const custom = include?.custom ?? true;
      Object.defineProperties(this, {
        key: ro(o.key),
        version: ro(o.version),
        size: ro(o.size),
        etag: ro(o.etag),
        httpEtag: ro(`"${o.etag}"`),
        checksums: ro(new R2Checksums(TOKEN, o.checksums ?? {})),
        uploaded: ro(new Date(o.uploaded)),
        httpMetadata: ro(http ? httpMetadataOut(o.httpMetadata ?? {}) : undefined),
        customMetadata: ro(custom ? Object.fromEntries(o.customMetadata ?? []) : undefined),
        range: ro(o.range ?? undefined),
        storageClass: ro(o.storageClass),
        ssecKeyMd5: ro(undefined),
      });
    }

    writeHttpMetadata(headers) {
      if (!(headers instanceof Headers)) {
        throw new TypeError(
          "Failed to execute 'writeHttpMetadata' on 'R2Object': parameter 1 is not of type " +
            "'Headers'.",
        );
      }
      const m = this.httpMetadata;
      if (m === undefined) {
        throw new TypeError(
          `HTTP metadata unknown for key \`${this.key}\`. Did you forget to add ` +
            "'httpMetadata' to `include` when listing?",
        );
      }
      for (const [field, header] of METADATA_FIELDS) {
        if (m[field] !== undefined) headers.set(header, m[field]);
      }
      if (m.cacheExpiry !== undefined) headers.set("expires", m.cacheExpiry.toUTCString());
    }
  }

  const USED = "Body has already been used. It can only be used once. Use tee() first if you " +
    "need to read it twice.";

  class R2ObjectBody extends R2Object {
    #body;
    constructor(token, o, body) {
      super(token, o);
      this.#body = body;
    }
    get body() {
      return this.#body;
    }
    get bodyUsed() {
      return streams.isReadableStreamDisturbed(this.#body);
    }
    #readAll() {
      if (this.bodyUsed || this.#body.locked) throw new TypeError(USED);
      return streams.readableStreamCollectIntoUint8Array(this.#body);
    }
    async arrayBuffer() {
      const b = await this.#readAll();
      return b.byteOffset === 0 && b.byteLength === b.buffer.byteLength
        ? b.buffer
        : b.slice().buffer;
    }
    async bytes() {
      return await this.#readAll();
    }
    async text() {
      return new TextDecoder().decode(await this.#readAll());
    }
    async json() {
      return JSON.parse(await this.text());
    }
    async blob() {
      const b = await this.#readAll();
      return new Blob([b], { type: this.httpMetadata?.contentType ?? "" });
    }
  }

  function partNumberArg(n) {
    const v = Number(n) | 0;
    if (v < 1 || v > 10000) {
      throw new TypeError(
        `Part number must be between 1 and 10000 (inclusive). Actual value was: ${v}`,
      );
    }
    return v;
  }

  class R2MultipartUpload {
    #binding;
    constructor(token, binding, key, uploadId) {
      if (token !== TOKEN) throw new TypeError("Illegal constructor");
      this.#binding = binding;
      Object.defineProperties(this, { key: ro(key), uploadId: ro(uploadId) });
    }

    async uploadPart(partNumber, value, opts) {
      const n = partNumberArg(partNumber);
      noSsec(options(opts, "R2UploadPartOptions"));
      const [kind, bytes, sink] = startBody(putValue(value));
      return await op_r2_upload_part(
        call(this.#binding),
        { key: this.key, uploadId: this.uploadId },
        n,
        kind,
        bytes,
        sink,
      );
    }

    async abort() {
      await op_r2_abort(call(this.#binding), { key: this.key, uploadId: this.uploadId });
    }

    async complete(uploadedParts) {
      if (uploadedParts === null || typeof uploadedParts?.[Symbol.iterator] !== "function") {
        throw new TypeError(
          "Failed to execute 'complete' on 'R2MultipartUpload': parameter 1 is not of type " +
            "'Array'.",
        );
      }
      const parts = [];
      for (const p of uploadedParts) {
        if (!isObject(p)) throw incorrect("parts", "R2MultipartUpload", "R2UploadedPart");
        const etag = p.etag;
        if (typeof etag !== "string") throw incorrect("etag", "R2UploadedPart", "string");
        parts.push({ partNumber: partNumberArg(p.partNumber), etag });
      }
      const o = await op_r2_complete(
        call(this.#binding),
        { key: this.key, uploadId: this.uploadId },
        parts,
      );
      return new R2Object(TOKEN, o);
    }
  }

  class R2Bucket {
    #binding;
    constructor(token, binding) {
      if (token !== TOKEN) throw new TypeError("Illegal constructor");
      this.#binding = binding;
    }

    async head(key) {
      const o = await op_r2_head(call(this.#binding), String(key));
      return o === null ? null : new R2Object(TOKEN, o);
    }

    async get(key, opts) {
      const o = options(opts, "R2GetOptions");
      noSsec(o);
      const args = { onlyIf: conditional(o.onlyIf, "R2GetOptions"), range: range(o.range) };
      const r = await op_r2_get(call(this.#binding), String(key), args);
      if (r.kind === 0) return null;
      if (r.kind === 1) return new R2Object(TOKEN, r.object);
      return new R2ObjectBody(TOKEN, r.object, bodyStream(r.body));
    }

    async put(key, value, opts) {
      key = String(key);
      const v = putValue(value);
      const o = options(opts, "R2PutOptions");
      noSsec(o);
      const args = {
        onlyIf: conditional(o.onlyIf, "R2PutOptions"),
        httpMetadata: httpMetadata(o.httpMetadata, "R2PutOptions"),
        customMetadata: customMetadata(o.customMetadata, "R2PutOptions"),
        checksum: checksum(o),
        storageClass: storageClass(o.storageClass),
      };
      const [kind, bytes, sink] = startBody(v);
      const r = await op_r2_put(call(this.#binding), key, args, kind, bytes, sink);
      return r === null ? null : new R2Object(TOKEN, r);
    }

    async createMultipartUpload(key, opts) {
      key = String(key);
      const o = options(opts, "R2MultipartOptions");
      noSsec(o);
      const args = {
        httpMetadata: httpMetadata(o.httpMetadata, "R2MultipartOptions"),
        customMetadata: customMetadata(o.customMetadata, "R2MultipartOptions"),
        storageClass: storageClass(o.storageClass),
      };
      const uploadId = await op_r2_create_multipart(call(this.#binding), key, args);
      return new R2MultipartUpload(TOKEN, this.#binding, key, uploadId);
    }

    // No round trip, as on Cloudflare: a wrong id fails on first use.
    resumeMultipartUpload(key, uploadId) {
      return new R2MultipartUpload(TOKEN, this.#binding, String(key), String(uploadId));
    }

    async delete(keys) {
      const list = Array.isArray(keys) ? keys.map(String) : [String(keys)];
      await op_r2_delete(call(this.#binding), list);
    }

    async list(opts) {
      const o = options(opts, "R2ListOptions");
      const S = "R2ListOptions";
      let http = false;
      let custom = false;
      if (o.include !== undefined) {
        if (o.include === null || typeof o.include[Symbol.iterator] !== "function") {
          throw incorrect("include", S, "Array");
        }
        for (const f of o.include) {
          if (f === "httpMetadata") http = true;
          else if (f === "customMetadata") custom = true;
          else throw new RangeError(`Unsupported include value ${f}`);
        }
      }
      if (!listHonorsInclude) http = custom = true;
      const args = {
        limit: o.limit === undefined ? undefined : Number(o.limit),
        prefix: optionalString(o.prefix, "prefix", S),
        cursor: optionalString(o.cursor, "cursor", S),
        delimiter: optionalString(o.delimiter, "delimiter", S),
        startAfter: optionalString(o.startAfter, "startAfter", S),
        includeHttpMetadata: http,
        includeCustomMetadata: custom,
      };
      const r = await op_r2_list(call(this.#binding), args);
      const include = { http, custom };
      const out = {
        objects: r.objects.map((x) => new R2Object(TOKEN, x, include)),
        delimitedPrefixes: r.delimitedPrefixes,
        truncated: r.truncated,
      };
      if (r.truncated && r.cursor != null) out.cursor = r.cursor;
      return out;
    }
  }

  I.r2 = {
    addBindings(env, spec) {
      listHonorsInclude = spec.r2ListHonorsInclude ?? true;
      for (const binding of spec.r2Buckets ?? []) env[binding] = new R2Bucket(TOKEN, binding);
    },
  };
})(globalThis);
