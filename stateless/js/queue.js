// Queues: `env.<binding>` of a `[[queues.producers]]` entry is a `Queue` with `send` and
// `sendBatch`; a `[[queues.consumers]]` worker's `queue(batch, env, ctx)` handler gets a
// `MessageBatch` of `Message`s. Runs once while the startup snapshot is built, after kv.js.
//
// Bodies are serialized here by content type ("v8" by default: structured clone, as the
// storage API does; "json", "text", "bytes"), and turned back on delivery. The decisions the
// handler makes (`ack()`, `retry()`, `ackAll()`, `retryAll()`) are resolved here, the first
// one made for a message winning as in workerd, and reported when the event ends; messages
// without one follow the handler's success (acked) or failure (retried).
"use strict";
((globalThis) => {
  const I = globalThis[Symbol.for("cinder.internals")];
  const { core } = I;
  const { TextDecoder } = globalThis;
  const { op_queue_send, op_queue_take, op_queue_report } = core.ops;

  const TOKEN = Symbol("cinder.queue");
  const decoder = new TextDecoder();

  function call(binding) {
    const ctx = core.getAsyncContext();
    return { binding, caller: ctx?.obj ?? 0, inCs: !!ctx?.cs };
  }

  function isObject(v) {
    return (typeof v === "object" && v !== null) || typeof v === "function";
  }

  function delayOf(options, struct) {
    if (options === undefined || options === null) return undefined;
    if (!isObject(options)) {
      throw new TypeError(`Failed to convert the options argument to '${struct}'.`);
    }
    const d = options.delaySeconds;
    if (d === undefined) return undefined;
    const n = Number(d);
    if (!Number.isFinite(n)) {
      throw new TypeError(
        `Incorrect type for the 'delaySeconds' field on '${struct}': the provided value is ` +
          "not of type 'integer'.",
      );
    }
    return Math.trunc(n);
  }

  // The bytes stored for `body` under `contentType`. An unknown type is left for the engine
  // to refuse with the service's text.
  function encode(body, contentType) {
    switch (contentType) {
      case "text":
        if (typeof body !== "string") {
          throw new TypeError(
            `Content Type "text" requires a value of type string, but received: ${typeof body}`,
          );
        }
        return core.encode(body);
      case "json": {
        const json = JSON.stringify(body);
        if (json === undefined) {
          throw new TypeError(`Content Type "json" requires a JSON-serializable value`);
        }
        return core.encode(json);
      }
      case "bytes":
        if (body instanceof ArrayBuffer) return new Uint8Array(body).slice();
        if (ArrayBuffer.isView(body)) {
          return new Uint8Array(body.buffer, body.byteOffset, body.byteLength).slice();
        }
        throw new TypeError(
          `Content Type "bytes" requires a value of type ArrayBufferView, but received: ` +
            typeof body,
        );
      case "v8":
        return I.rpc.serialize(body, true);
      default:
        return new Uint8Array(0);
    }
  }

  function decode(bytes, contentType) {
    switch (contentType) {
      case "text":
        return decoder.decode(bytes);
      case "json":
        return JSON.parse(decoder.decode(bytes));
      case "bytes":
        return bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength
          ? bytes.buffer
          : bytes.slice().buffer;
      default:
        return I.rpc.deserialize(bytes, true);
    }
  }

  function outgoing(body, options, struct) {
    const contentType = isObject(options) && options.contentType !== undefined
      ? String(options.contentType)
      : "v8";
    return {
      body: encode(body, contentType),
      contentType,
      delaySeconds: delayOf(options, struct),
    };
  }

  class WorkerQueue {
    #binding;
    constructor(token, binding) {
      if (token !== TOKEN) throw new TypeError("Illegal constructor");
      this.#binding = binding;
    }

    async send(body, options) {
      const m = outgoing(body, options, "QueueSendOptions");
      await op_queue_send(call(this.#binding), [m], {}, false);
      I.touch();
    }

    async sendBatch(messages, options) {
      if (messages === null || typeof messages?.[Symbol.iterator] !== "function") {
        throw new TypeError(
          "Failed to execute 'sendBatch' on 'WorkerQueue': parameter 1 is not of type " +
            "'Iterable'.",
        );
      }
      const delay = delayOf(options, "QueueSendBatchOptions");
      const list = [];
      for (const m of messages) {
        if (!isObject(m)) {
          throw new TypeError("sendBatch() expects messages of the form { body, contentType?, delaySeconds? }");
        }
        list.push(outgoing(m.body, m, "MessageSendRequest"));
      }
      await op_queue_send(call(this.#binding), list, { delaySeconds: delay }, true);
      I.touch();
    }
  }

  // What the handler decided, per batch.
  class Decisions {
    ackAll = false;
    retryAll = null; // { delaySeconds } once retryAll() was called
    acks = new Set();
    retries = new Map(); // id -> delaySeconds | null
  }

  function retryDelay(options) {
    const d = delayOf(options, "QueueRetryOptions");
    if (d === undefined) return null;
    if (d < 0 || d > 86400) {
      throw new RangeError(`delaySeconds must be between 0 and 86400, got ${d}`);
    }
    return d;
  }

  class Message {
    #d;
    #id;
    constructor(token, d, m) {
      if (token !== TOKEN) throw new TypeError("Illegal constructor");
      this.#d = d;
      this.#id = m.id;
      Object.defineProperties(this, {
        id: { value: m.id, enumerable: true },
        timestamp: { value: new Date(m.timestamp), enumerable: true },
        body: { value: decode(m.body, m.contentType), enumerable: true },
        attempts: { value: m.attempts, enumerable: true },
      });
    }

    ack() {
      const d = this.#d;
      if (d.retryAll !== null) {
        console.warn(`Received a call to ack() on message ${this.#id} after retryAll() was already called. Calling ack() on a message after calling retryAll() has no effect.`);
        return;
      }
      if (d.retries.has(this.#id)) {
        console.warn(`Received a call to ack() on message ${this.#id} after retry() was already called. Calling ack() on a message after calling retry() has no effect.`);
        return;
      }
      d.acks.add(this.#id);
    }

    retry(options) {
      const delay = retryDelay(options);
      const d = this.#d;
      if (d.ackAll) {
        console.warn(`Received a call to retry() on message ${this.#id} after ackAll() was already called. Calling retry() on a message after calling ackAll() has no effect.`);
        return;
      }
      if (d.acks.has(this.#id)) {
        console.warn(`Received a call to retry() on message ${this.#id} after ack() was already called. Calling retry() on a message after calling ack() has no effect.`);
        return;
      }
      d.retries.set(this.#id, delay);
    }
  }

  class MessageBatch {
    #d;
    constructor(token, d, queue, messages) {
      if (token !== TOKEN) throw new TypeError("Illegal constructor");
      this.#d = d;
      Object.defineProperties(this, {
        queue: { value: queue, enumerable: true },
        messages: { value: Object.freeze(messages), enumerable: true },
      });
    }

    ackAll() {
      if (this.#d.retryAll !== null) {
        console.warn("Received a call to ackAll() after retryAll() was already called. Calling ackAll() after calling retryAll() has no effect.");
        return;
      }
      this.#d.ackAll = true;
    }

    retryAll(options) {
      const delay = retryDelay(options);
      if (this.#d.ackAll) {
        console.warn("Received a call to retryAll() after ackAll() was already called. Calling retryAll() after calling ackAll() has no effect.");
        return;
      }
      this.#d.retryAll = { delaySeconds: delay };
    }
  }

  const decisionsOf = new WeakMap();

  I.queue = {
    addBindings(env, spec) {
      for (const binding of spec.queueProducers ?? []) {
        env[binding] = new WorkerQueue(TOKEN, binding);
      }
    },
    // The batch of queue event `eid`, as the handler sees it.
    takeBatch(eid) {
      const b = op_queue_take(eid);
      if (b === null) throw new Error("the queue batch is gone");
      const d = new Decisions();
      const batch = new MessageBatch(
        TOKEN,
        d,
        b.queue,
        b.messages.map((m) => new Message(TOKEN, d, m)),
      );
      decisionsOf.set(batch, d);
      return batch;
    },
    // Resolves each message's decision (its own first, then the batch's) and reports them.
    report(eid, batch) {
      const d = batch === null ? null : decisionsOf.get(batch);
      const acks = [];
      const retries = [];
      if (d) {
        for (const m of batch.messages) {
          if (d.acks.has(m.id)) acks.push(m.id);
          else if (d.retries.has(m.id)) retries.push([m.id, d.retries.get(m.id)]);
          else if (d.retryAll !== null) retries.push([m.id, d.retryAll.delaySeconds]);
          else if (d.ackAll) acks.push(m.id);
        }
      }
      op_queue_report(eid, acks, retries);
    },
  };
})(globalThis);
