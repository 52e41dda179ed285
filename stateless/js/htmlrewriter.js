// `HTMLRewriter` on lol-html. Runs once while the startup snapshot is built, after d1.js.
//
// `transform(response)` starts a driver thread running lol-html (src/html_rewriter.rs explains
// why a thread) and returns a Response whose body is pulled through it: each input chunk is
// fed with `op_html_step`, which resolves with the next handler to call (or "done" with the
// chunk's output). A handler gets a content token whose methods are synchronous ops acting on
// the element lol-html is holding; once the handler (and its promise) is done the driver is
// resumed. Output is enqueued as soon as a step carries it, so the first bytes leave before
// the input ends.
//
// Content given as a ReadableStream or Response (workerd streams it into the document) is read
// to the end after the handler returns, while the token is still live, then inserted in call
// order with the string content given after it.
"use strict";
((globalThis) => {
  const I = globalThis[Symbol.for("cinder.internals")];
  const { core, Response, ReadableStream, touch } = I;
  const { TextDecoder } = globalThis;
  const {
    op_html_selector_check,
    op_html_encoding_check,
    op_html_new,
    op_html_step,
    op_html_token,
    op_html_close,
  } = core.ops;

  const EMPTY = new Uint8Array(0);
  // A transformed body dropped unread would leave its driver thread waiting forever: closing
  // the run when the stream is collected ends it. Made on first use: it is not snapshot state.
  let abandoned = null;
  const TOKEN = Symbol("cinder.html");
  const DEAD =
    "This content token is no longer valid. Content tokens are only valid during the " +
    "execution of the relevant content handler.";
  const ITERATOR_PROTOTYPE = Object.getPrototypeOf(
    Object.getPrototypeOf([][Symbol.iterator]()),
  );

  // One running transform: its id, handler table and the token whose handler runs.
  class Run {
    constructor(id, handlers) {
      this.id = id;
      this.handlers = handlers;
      this.active = 0;
    }
  }

  // What every content token shares: liveness, method calls, content mutations.
  class Token {
    #run;
    #token;
    #pending = [];
    constructor(key, run, token) {
      if (key !== TOKEN) throw new TypeError("Illegal constructor");
      this.#run = run;
      this.#token = token;
    }
    static runOf(t) {
      return t.#run;
    }
    static live(t) {
      if (t.#run.active !== t.#token) throw new TypeError(DEAD);
    }
    static call(t, op, args) {
      Token.live(t);
      return op_html_token(t.#run.id, t.#token, { op, ...args });
    }
    static mutate(t, op, content, options) {
      Token.live(t);
      const html = !!(options !== undefined && options !== null && options.html);
      if (content instanceof ReadableStream || content instanceof Response) {
        const text = readText(content);
        text.catch(() => {}); // reported by flush(), not as an unhandled rejection
        t.#pending.push({ op, text, html });
        return;
      }
      content = String(content);
      if (t.#pending.length > 0) {
        t.#pending.push({ op, text: content, html });
        return;
      }
      op_html_token(t.#run.id, t.#token, { op, content, html });
    }
    // Applies stream content once it is read; the handler has returned but its token is
    // still live (the driver waits for the resume).
    static async flush(t) {
      while (t.#pending.length > 0) {
        const { op, text, html } = t.#pending.shift();
        const content = await text;
        touch();
        op_html_token(t.#run.id, t.#token, { op, content, html });
      }
    }
  }

  async function readText(content) {
    const body = content instanceof Response ? content.body : content;
    if (body === null) return "";
    const reader = body.getReader();
    const decoder = new TextDecoder("utf-8", { fatal: true });
    let out = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        out += decoder.decode(value, { stream: true });
      }
      return out + decoder.decode();
    } catch (e) {
      if (e instanceof TypeError && /decode|encoded/i.test(String(e.message))) {
        throw new TypeError("Parser error: Invalid UTF-8");
      }
      throw e;
    }
  }

  const BAD_ITERATION =
    "The attributes of this element have been modified during iteration. You must create a " +
    "new iterator after modifying attributes.";

  class AttributesIterator {
    #element;
    #list;
    #index = 0;
    #invalid = false;
    constructor(key, element, list) {
      if (key !== TOKEN) throw new TypeError("Illegal constructor");
      this.#element = element;
      this.#list = list;
    }
    static invalidate(it) {
      it.#invalid = true;
    }
    next() {
      Token.live(this.#element);
      if (this.#invalid) throw new Error(BAD_ITERATION);
      if (this.#index >= this.#list.length) return { done: true, value: undefined };
      return { done: false, value: this.#list[this.#index++] };
    }
    [Symbol.iterator]() {
      return this;
    }
  }
  Object.setPrototypeOf(AttributesIterator.prototype, ITERATOR_PROTOTYPE);

  function fn(handler, what) {
    if (typeof handler !== "function") {
      throw new TypeError(`Failed to execute '${what}': parameter 1 is not of type 'Function'.`);
    }
    return handler;
  }

  class Element extends Token {
    #iterators = [];
    get tagName() {
      return Token.call(this, "tagName");
    }
    set tagName(value) {
      Token.call(this, "setTagName", { value: String(value) });
    }
    get attributes() {
      const it = new AttributesIterator(TOKEN, this, Token.call(this, "attributes"));
      this.#iterators.push(it);
      return it;
    }
    get removed() {
      return Token.call(this, "removed");
    }
    get namespaceURI() {
      return Token.call(this, "namespaceUri");
    }
    get selfClosing() {
      return Token.call(this, "selfClosing");
    }
    get canHaveContent() {
      return Token.call(this, "canHaveContent");
    }
    getAttribute(name) {
      return Token.call(this, "getAttribute", { name: String(name) });
    }
    hasAttribute(name) {
      return Token.call(this, "hasAttribute", { name: String(name) });
    }
    setAttribute(name, value) {
      Token.call(this, "setAttribute", { name: String(name), value: String(value) });
      this.#invalidate();
      return this;
    }
    removeAttribute(name) {
      Token.call(this, "removeAttribute", { name: String(name) });
      this.#invalidate();
      return this;
    }
    #invalidate() {
      for (const it of this.#iterators) AttributesIterator.invalidate(it);
      this.#iterators = [];
    }
    before(content, options) {
      Token.mutate(this, "before", content, options);
      return this;
    }
    after(content, options) {
      Token.mutate(this, "after", content, options);
      return this;
    }
    prepend(content, options) {
      Token.mutate(this, "prepend", content, options);
      return this;
    }
    append(content, options) {
      Token.mutate(this, "append", content, options);
      return this;
    }
    replace(content, options) {
      Token.mutate(this, "replace", content, options);
      return this;
    }
    setInnerContent(content, options) {
      Token.mutate(this, "setInnerContent", content, options);
      return this;
    }
    remove() {
      Token.call(this, "remove");
      return this;
    }
    removeAndKeepContent() {
      Token.call(this, "removeAndKeepContent");
      return this;
    }
    onEndTag(handler) {
      Token.live(this);
      const run = Token.runOf(this);
      const id = run.handlers.length;
      run.handlers.push({ fn: fn(handler, "onEndTag"), self: undefined, once: true });
      Token.call(this, "onEndTag", { handler: id });
    }
  }

  class EndTag extends Token {
    get name() {
      return Token.call(this, "name");
    }
    set name(value) {
      Token.call(this, "setName", { value: String(value) });
    }
    before(content, options) {
      Token.mutate(this, "before", content, options);
      return this;
    }
    after(content, options) {
      Token.mutate(this, "after", content, options);
      return this;
    }
    remove() {
      Token.call(this, "remove");
      return this;
    }
  }

  class Text extends Token {
    #text;
    #last;
    constructor(key, run, token, text, last) {
      super(key, run, token);
      this.#text = text;
      this.#last = last;
    }
    get text() {
      Token.live(this);
      return this.#text;
    }
    get lastInTextNode() {
      Token.live(this);
      return this.#last;
    }
    get removed() {
      return Token.call(this, "removed");
    }
    before(content, options) {
      Token.mutate(this, "before", content, options);
      return this;
    }
    after(content, options) {
      Token.mutate(this, "after", content, options);
      return this;
    }
    replace(content, options) {
      Token.mutate(this, "replace", content, options);
      return this;
    }
    remove() {
      Token.call(this, "remove");
      return this;
    }
  }

  class Comment extends Token {
    get text() {
      return Token.call(this, "text");
    }
    set text(value) {
      Token.call(this, "setText", { value: String(value) });
    }
    get removed() {
      return Token.call(this, "removed");
    }
    before(content, options) {
      Token.mutate(this, "before", content, options);
      return this;
    }
    after(content, options) {
      Token.mutate(this, "after", content, options);
      return this;
    }
    replace(content, options) {
      Token.mutate(this, "replace", content, options);
      return this;
    }
    remove() {
      Token.call(this, "remove");
      return this;
    }
  }

  class Doctype extends Token {
    #step;
    constructor(key, run, token, step) {
      super(key, run, token);
      this.#step = step;
    }
    get name() {
      Token.live(this);
      return this.#step.name;
    }
    get publicId() {
      Token.live(this);
      return this.#step.publicId;
    }
    get systemId() {
      Token.live(this);
      return this.#step.systemId;
    }
  }

  class DocumentEnd extends Token {
    append(content, options) {
      Token.mutate(this, "append", content, options);
      return this;
    }
  }

  function tokenFor(run, step) {
    switch (step.kind) {
      case "element":
        return new Element(TOKEN, run, step.token);
      case "endTag":
        return new EndTag(TOKEN, run, step.token);
      case "text":
        return new Text(TOKEN, run, step.token, step.text, step.lastInTextNode);
      case "comments":
        return new Comment(TOKEN, run, step.token);
      case "doctype":
        return new Doctype(TOKEN, run, step.token, step);
      case "end":
        return new DocumentEnd(TOKEN, run, step.token);
    }
    throw new TypeError(`HTMLRewriter: unexpected step ${step.kind}`);
  }

  async function invoke(run, step) {
    const h = run.handlers[step.handler];
    if (h.once) run.handlers[step.handler] = undefined;
    const token = tokenFor(run, step);
    run.active = step.token;
    try {
      const result = Reflect.apply(h.fn, h.self, [token]);
      if (result !== null && typeof result === "object" && typeof result.then === "function") {
        await result;
        touch();
      }
      await Token.flush(token);
    } finally {
      run.active = 0;
    }
  }

  function handlerField(handlers, name, struct) {
    const v = handlers[name];
    if (v === undefined) return undefined;
    if (typeof v !== "function") {
      throw new TypeError(
        `Incorrect type for the '${name}' field on '${struct}': the provided value is not of ` +
          "type 'function'.",
      );
    }
    return v;
  }

  function handlersObject(v, struct) {
    if (v === undefined || v === null) return {};
    if (typeof v !== "object" && typeof v !== "function") {
      throw new TypeError(`Failed to convert the handlers argument to '${struct}'.`);
    }
    return v;
  }

  // The charset parameter of a Content-Type, or "utf-8".
  function charset(contentType) {
    if (contentType === null) return "utf-8";
    const m = /;\s*charset\s*=\s*(?:"([^"]*)"|([^;\s]*))/i.exec(contentType);
    return m ? (m[1] ?? m[2]) : "utf-8";
  }

  function bytes(value) {
    if (value instanceof Uint8Array) return value;
    if (ArrayBuffer.isView(value)) {
      return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
    }
    if (value instanceof ArrayBuffer) return new Uint8Array(value);
    throw new TypeError("This ReadableStream did not return bytes.");
  }

  class HTMLRewriter {
    #elements = [];
    #documents = [];

    on(selector, handlers) {
      selector = String(selector);
      const err = op_html_selector_check(selector);
      if (err !== null) throw new TypeError(`Parser error: ${err}`);
      handlers = handlersObject(handlers, "ElementContentHandlers");
      this.#elements.push({
        selector,
        self: handlers,
        element: handlerField(handlers, "element", "ElementContentHandlers"),
        comments: handlerField(handlers, "comments", "ElementContentHandlers"),
        text: handlerField(handlers, "text", "ElementContentHandlers"),
      });
      return this;
    }

    onDocument(handlers) {
      handlers = handlersObject(handlers, "DocumentContentHandlers");
      this.#documents.push({
        self: handlers,
        doctype: handlerField(handlers, "doctype", "DocumentContentHandlers"),
        comments: handlerField(handlers, "comments", "DocumentContentHandlers"),
        text: handlerField(handlers, "text", "DocumentContentHandlers"),
        end: handlerField(handlers, "end", "DocumentContentHandlers"),
      });
      return this;
    }

    transform(response) {
      if (!(response instanceof Response)) {
        throw new TypeError(
          "Failed to execute 'transform' on 'HTMLRewriter': parameter 1 is not of type " +
            "'Response'.",
        );
      }
      if (response.type === "error") {
        throw new TypeError("HTMLRewriter cannot transform an error response");
      }
      const encoding = charset(response.headers.get("content-type"));
      if (!op_html_encoding_check(encoding)) {
        throw new TypeError("Parser error: Unknown character encoding has been provided.");
      }
      if (response.body === null) return response;

      // The handler table: ids index it; end-tag handlers are appended while running.
      const handlers = [];
      const register = (f, self) => {
        if (f === undefined) return null;
        handlers.push({ fn: f, self, once: false });
        return handlers.length - 1;
      };
      const spec = {
        elements: this.#elements.map((e) => ({
          selector: e.selector,
          element: register(e.element, e.self),
          comments: register(e.comments, e.self),
          text: register(e.text, e.self),
        })),
        documents: this.#documents.map((d) => ({
          doctype: register(d.doctype, d.self),
          comments: register(d.comments, d.self),
          text: register(d.text, d.self),
          end: register(d.end, d.self),
        })),
      };
      const run = new Run(op_html_new(spec, encoding), handlers);
      const reader = response.body.getReader();
      let ended = false;
      let closed = false;
      const close = () => {
        if (!closed) {
          closed = true;
          op_html_close(run.id);
        }
      };

      const body = new ReadableStream({
        async pull(controller) {
          try {
            for (;;) {
              const { value, done } = await reader.read();
              touch();
              let step;
              if (done) {
                ended = true;
                step = await op_html_step(run.id, 1, EMPTY);
              } else {
                step = await op_html_step(run.id, 0, bytes(value));
              }
              touch();
              let produced = false;
              for (;;) {
                if (step.output) {
                  controller.enqueue(step.output);
                  produced = true;
                }
                if (step.kind === "done") break;
                await invoke(run, step);
                step = await op_html_step(run.id, 2, EMPTY);
                touch();
              }
              if (step.error) throw new TypeError(`Parser error: ${step.error}`);
              if (ended) {
                close();
                controller.close();
                return;
              }
              if (produced) return;
            }
          } catch (e) {
            close();
            if (!ended) reader.cancel(e).catch(() => {});
            throw e;
          }
        },
        cancel(reason) {
          close();
          return reader.cancel(reason);
        },
      });
      abandoned ??= new FinalizationRegistry((id) => op_html_close(id));
      abandoned.register(body, run.id);
      return new Response(body, response);
    }
  }

  for (const C of [Element, EndTag, Text, Comment, Doctype, DocumentEnd]) {
    Object.defineProperty(C.prototype, Symbol.toStringTag, {
      value: C.name,
      configurable: true,
    });
  }
  Object.defineProperty(globalThis, "HTMLRewriter", {
    value: HTMLRewriter,
    writable: true,
    enumerable: false,
    configurable: true,
  });
})(globalThis);
