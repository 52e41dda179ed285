// The D1 binding (`d1_databases` in wrangler config): `env.<binding>` is a D1Database with
// `prepare().bind().first()/all()/run()/raw()`, `batch()`, `exec()`, `dump()` and
// `withSession()`, shaped as workerd's binding (src/cloudflare/internal/d1-api.ts) shapes
// them: the same value checks in `bind()`, the same result objects, the same error prefixes
// (`D1_ERROR`, `D1_TYPE_ERROR`, `D1_COLUMN_NOTFOUND`, `D1_EXEC_ERROR`, `D1_DUMP_ERROR`,
// `D1_SESSION_ERROR`) with a `cause`. The statements run in cinder-d1's database objects
// through the ops of src/ops_d1.rs. Runs once while the startup snapshot is built.
"use strict";
((globalThis) => {
  const I = globalThis[Symbol.for("cinder.internals")];
  const { core } = I;
  const { op_d1_batch, op_d1_exec, op_d1_dump } = core.ops;

  const TOKEN = Symbol("cinder.d1");
  const FIRST_PRIMARY = "first-primary";
  const FIRST_UNCONSTRAINED = "first-unconstrained";

  // The calling object's gates apply to a D1 call made from a Durable Object.
  function call(binding) {
    const ctx = core.getAsyncContext();
    return { binding, caller: ctx?.obj ?? 0, inCs: !!ctx?.cs };
  }

  // `D1_X: rest` with `rest` as the cause, as d1-api.ts builds its errors.
  function d1Error(message) {
    const at = message.indexOf(": ");
    const cause = at < 0 ? message : message.slice(at + 2);
    return new Error(message, { cause: new Error(cause) });
  }

  // BLOBs come back as arrays of byte numbers (D1's JSON form).
  function fixRow(row) {
    for (let i = 0; i < row.length; i++) {
      const v = row[i];
      if (v !== null && typeof v === "object") row[i] = Array.from(v);
    }
    return row;
  }

  function toArrayOfObjects(r) {
    return {
      success: true,
      meta: r.meta,
      results: r.rows.map((row) => Object.fromEntries(row.map((cell, i) => [r.columns[i], cell]))),
    };
  }

  // Params travel as JS values; byte arrays as bytes.
  function wireParams(params) {
    return params.map((p) => (Array.isArray(p) ? new Uint8Array(p) : p));
  }

  class D1DatabaseSession {
    #binding;
    #bookmarkOrConstraint; // null: the always-primary session of the database itself

    constructor(token, binding, bookmarkOrConstraint) {
      if (token !== TOKEN) throw new TypeError("Illegal constructor");
      this.#binding = binding;
      if (bookmarkOrConstraint == null) {
        this.#bookmarkOrConstraint = null;
      } else {
        this.#bookmarkOrConstraint = bookmarkOrConstraint.trim();
        if (!this.#bookmarkOrConstraint) {
          throw new Error("D1_SESSION_ERROR: invalid bookmark or constraint");
        }
      }
    }

    // Keeps the latest bookmark seen: concurrent queries of a session may answer out of order.
    #updateBookmark(newBookmark) {
      if (this.#bookmarkOrConstraint === null) return;
      newBookmark = newBookmark.trim();
      if (!newBookmark) return;
      const current = this.getBookmark();
      if (current === null || current.localeCompare(newBookmark) < 0) {
        this.#bookmarkOrConstraint = newBookmark;
      }
    }

    // Runs statements (one transaction); the per-statement results, or throws D1_ERROR.
    static async run(session, statements) {
      const out = await op_d1_batch(
        call(session.#binding),
        statements.map((s) => ({ sql: s.statement, params: wireParams(s.params) })),
        session.#bookmarkOrConstraint ?? "",
      );
      if (out.error) throw d1Error(out.error);
      if (out.bookmark) session.#updateBookmark(out.bookmark);
      for (const r of out.results) for (const row of r.rows) fixRow(row);
      return out.results;
    }

    static binding(session) {
      return session.#binding;
    }

    prepare(query) {
      return new D1PreparedStatement(TOKEN, this, query);
    }

    async batch(statements) {
      const results = await D1DatabaseSession.run(this, statements);
      return results.map(toArrayOfObjects);
    }

    getBookmark() {
      switch (this.#bookmarkOrConstraint) {
        case FIRST_UNCONSTRAINED:
        case FIRST_PRIMARY:
        case null:
          return null;
        default:
          return this.#bookmarkOrConstraint;
      }
    }
  }

  class D1PreparedStatement {
    #session;
    constructor(token, session, statement, values) {
      if (token !== TOKEN) throw new TypeError("Illegal constructor");
      this.#session = session;
      this.statement = statement;
      this.params = values || [];
    }

    bind(...values) {
      const transformed = values.map((r) => {
        const rType = typeof r;
        if (rType === "number" || rType === "string") return r;
        if (rType === "boolean") return r ? 1 : 0;
        if (rType === "object") {
          if (r == null) return r;
          if (Array.isArray(r) && r.every((b) => typeof b == "number" && b >= 0 && b < 256)) {
            return r;
          }
          if (r instanceof ArrayBuffer) return Array.from(new Uint8Array(r));
          if (ArrayBuffer.isView(r)) return Array.from(r);
        }
        throw new Error(`D1_TYPE_ERROR: Type '${rType}' not supported for value '${r}'`, {
          cause: new Error(`Type '${rType}' not supported for value '${r}'`),
        });
      });
      return new D1PreparedStatement(TOKEN, this.#session, this.statement, transformed);
    }

    async #one() {
      const results = await D1DatabaseSession.run(this.#session, [this]);
      return results[0];
    }

    async first(colName) {
      const results = toArrayOfObjects(await this.#one()).results;
      if (results.length === 0) return null;
      const firstResult = results[0];
      if (colName !== undefined) {
        if (firstResult?.[colName] === undefined) {
          throw new Error(`D1_COLUMN_NOTFOUND: Column not found (${colName})`, {
            cause: new Error("Column not found"),
          });
        }
        return firstResult[colName];
      }
      return firstResult;
    }

    // D1 documents run() as an alias of all().
    async run() {
      return toArrayOfObjects(await this.#one());
    }

    async all() {
      return toArrayOfObjects(await this.#one());
    }

    async raw(options) {
      const r = await this.#one();
      return [...(options?.columnNames ? [r.columns] : []), ...r.rows];
    }
  }

  class D1Database {
    #primary;
    constructor(token, binding) {
      if (token !== TOKEN) throw new TypeError("Illegal constructor");
      this.#primary = new D1DatabaseSession(TOKEN, binding, null);
    }

    prepare(query) {
      return new D1PreparedStatement(TOKEN, this.#primary, query);
    }

    async batch(statements) {
      return this.#primary.batch(statements);
    }

    async exec(query) {
      const binding = D1DatabaseSession.binding(this.#primary);
      const out = await op_d1_exec(call(binding), String(query));
      if (out.error) throw d1Error(out.error);
      return { count: out.count, duration: out.duration };
    }

    withSession(constraintOrBookmark) {
      constraintOrBookmark = constraintOrBookmark?.trim();
      if (constraintOrBookmark == null || constraintOrBookmark === "") {
        constraintOrBookmark = FIRST_UNCONSTRAINED;
      }
      return new D1DatabaseSession(
        TOKEN,
        D1DatabaseSession.binding(this.#primary),
        constraintOrBookmark,
      );
    }

    /** @deprecated as on Cloudflare; kept for local tools that export the file. */
    async dump() {
      const binding = D1DatabaseSession.binding(this.#primary);
      const out = await op_d1_dump(call(binding));
      if (out.error) throw d1Error(out.error);
      return out.bytes.buffer;
    }
  }

  I.d1 = {
    addBindings(env, spec) {
      for (const [binding] of spec.d1 ?? []) env[binding] = new D1Database(TOKEN, binding);
    },
  };
})(globalThis);
