// SQLite-backed Durable Object storage (classes from `new_sqlite_classes`): `ctx.storage.sql`
// (SqlStorage and its streaming SqlStorageCursor), `ctx.storage.kv` (the synchronous KV API),
// `transactionSync(fn)`, `transaction(async fn)` and the point-in-time-recovery bookmarks,
// over the ops of src/ops_sql.rs. Runs once while the startup snapshot is built, after
// durable.js, whose DurableObjectStorage calls in here through `I.sql`.
//
// Shapes and texts follow workerd (api/sql.c++, api/sync-kv.c++, api/actor-state.c++): bound
// values are coerced as JSG coerces `kj::Maybe<kj::OneOf<bytes, string, double>>` (null and
// undefined bind NULL, buffers bind BLOBs, numbers bind doubles, anything else its string), rows
// come back with integers as numbers, BLOBs as ArrayBuffers, and a cursor pulls rows from the
// database as it is iterated.
"use strict";
((globalThis) => {
  const I = globalThis[Symbol.for("cinder.internals")];
  const { core } = I;
  const {
    op_sql_exec,
    op_sql_pull,
    op_sql_one,
    op_sql_close,
    op_sql_forget,
    op_sql_database_size,
    op_sql_sync_begin,
    op_sql_sync_end,
    op_sql_txn_begin,
    op_sql_txn_rollback,
    op_sql_txn_end,
    op_sql_kv_get,
    op_sql_kv_put,
    op_sql_kv_delete,
    op_sql_kv_list,
    op_sql_bookmark_current,
    op_sql_bookmark_for_time,
    op_sql_restore_bookmark,
  } = core.ops;
  const { serialize, deserialize } = I.rpc;

  const TOKEN = Symbol("cinder.sql");

  // workerd's texts for a class that is not SQLite-backed (production wording).
  const SQL_NOT_SQLITE =
    "This Durable Object is not backed by SQLite storage, so the SQL API is not available. SQL can be enabled on a new Durable Object class by using the `new_sqlite_classes` instead of `new_classes` under `[[migrations]]` in your wrangler.toml, but an already-deployed class cannot be converted to SQLite (except by deleting the existing data).";
  const KV_NOT_SQLITE =
    "The storage.kv (synchronous KV) API is only available for SQLite-backed Durable Objects, but this object's namespace is not declared to use SQLite. You can use the older, asyncronous interface via methods of `storage` itself (e.g. `storage.get()`). SQLite can be enabled on a new Durable Object class by using the `new_sqlite_classes` instead of `new_classes` under `migrations` in your wrangler.jsonc or wrangler.toml, but an already-deployed class cannot be converted to SQLite (except by deleting the existing data).";
  const TXN_NOT_SQLITE = "Durable Object is not backed by SQL.";
  const NO_PITR =
    "This Durable Object's storage back-end does not implement point-in-time recovery.";
  const ONE_NONE = "Expected exactly one result from SQL query, but got no results.";
  const ONE_MANY = "Expected exactly one result from SQL query, but got multiple results.";
  const LIST_INVALIDATED =
    "kv.list() iterator was invalidated because a new call to kv.list() was started. Only one kv.list() iterator can exist at a time.";

  function withContext(ctx, fn) {
    const prev = core.getAsyncContext();
    core.setAsyncContext(ctx);
    try {
      return fn();
    } finally {
      core.setAsyncContext(prev);
    }
  }

  // JSG's union conversion (Web IDL): buffers, then numbers, then everything else as a string.
  function bindingValue(v) {
    if (v === null || v === undefined) return null;
    const t = typeof v;
    if (t === "number" || t === "string") return v;
    if (v instanceof ArrayBuffer) return v;
    if (ArrayBuffer.isView(v)) return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
    // Web IDL's string conversion: a Symbol is a TypeError (String(symbol) would not throw).
    return `${v}`;
  }

  // Row values arrive as numbers, strings, null, or Uint8Arrays over exactly-sized buffers.
  function fixValues(row) {
    for (let i = 0; i < row.length; i++) {
      const v = row[i];
      if (v !== null && typeof v === "object") row[i] = v.buffer;
    }
    return row;
  }

  function rowObject(columns, values) {
    const o = {};
    for (let i = 0; i < columns.length; i++) o[columns[i]] = values[i];
    return o;
  }

  // A cursor JS dropped unfinished gives its statement back. Made on first use: the startup
  // snapshot holds no registry.
  let registry = null;
  const finalizer = {
    register(cursor, id) {
      registry ??= new FinalizationRegistry((held) => {
        try {
          op_sql_close(held);
        } catch {
          // The isolate is going away.
        }
      });
      registry.register(cursor, id, cursor);
    },
    unregister(cursor) {
      registry?.unregister(cursor);
    },
  };

  function makeIterator(pull) {
    return {
      next() {
        const value = pull();
        return value === undefined ? { done: true } : { done: false, value };
      },
      [Symbol.iterator]() {
        return this;
      },
    };
  }

  class SqlStorageCursor {
    #id = 0; // handle of a cursor still pulling rows in Rust
    #rows = null; // rows handed over whole (a statement that ran to completion)
    #pos = 0;
    #columns;
    #rowsRead;
    #rowsWritten;

    constructor(token, out) {
      if (token !== TOKEN) throw new TypeError("Illegal constructor");
      this.#columns = out.columns;
      this.#rowsRead = out.rowsRead;
      this.#rowsWritten = out.rowsWritten;
      if (out.cursor) {
        this.#id = out.cursor;
        finalizer.register(this, out.cursor);
      } else {
        this.#rows = out.rows;
      }
    }

    #finish() {
      if (this.#id) {
        finalizer.unregister(this);
        this.#id = 0;
      }
      this.#rows = null;
      this.#pos = 0;
    }

    #counted(out) {
      this.#rowsRead = out.rowsRead;
      this.#rowsWritten = out.rowsWritten;
      if (out.done) this.#finish();
    }

    // The next row's values, or undefined at the end.
    #nextRaw() {
      if (this.#rows !== null) {
        if (this.#pos < this.#rows.length) {
          const row = this.#rows[this.#pos];
          this.#rows[this.#pos++] = undefined;
          if (this.#pos === this.#rows.length) this.#finish();
          return fixValues(row);
        }
        this.#finish();
        return undefined;
      }
      if (!this.#id) return undefined;
      let out;
      try {
        out = op_sql_pull(this.#id, 1);
      } catch (e) {
        this.#finish();
        throw e;
      }
      this.#counted(out);
      return out.rows.length ? fixValues(out.rows[0]) : undefined;
    }

    #nextObject() {
      const values = this.#nextRaw();
      return values === undefined ? undefined : rowObject(this.#columns, values);
    }

    next() {
      const value = this.#nextObject();
      return value === undefined ? { done: true } : { done: false, value };
    }

    toArray() {
      const out = [];
      if (this.#id) {
        let pulled;
        try {
          pulled = op_sql_pull(this.#id, Infinity);
        } catch (e) {
          this.#finish();
          throw e;
        }
        this.#counted(pulled);
        for (const row of pulled.rows) out.push(rowObject(this.#columns, fixValues(row)));
        return out;
      }
      for (let row = this.#nextObject(); row !== undefined; row = this.#nextObject()) {
        out.push(row);
      }
      return out;
    }

    one() {
      if (this.#id) {
        const id = this.#id;
        let out;
        try {
          out = op_sql_one(id);
        } finally {
          this.#finish();
        }
        this.#rowsRead = out.rowsRead;
        this.#rowsWritten = out.rowsWritten;
        return rowObject(this.#columns, fixValues(out.rows[0]));
      }
      const row = this.#nextObject();
      if (row === undefined) throw new Error(ONE_NONE);
      if (this.#rows !== null) {
        this.#finish();
        throw new Error(ONE_MANY);
      }
      return row;
    }

    raw() {
      return makeIterator(() => this.#nextRaw());
    }

    [Symbol.iterator]() {
      return makeIterator(() => this.#nextObject());
    }

    get columnNames() {
      return this.#columns;
    }

    get rowsRead() {
      return this.#rowsRead;
    }

    get rowsWritten() {
      return this.#rowsWritten;
    }

    get [Symbol.toStringTag]() {
      return "SqlStorageCursor";
    }
  }

  class SqlStorage {
    #h;
    #sqlite;
    constructor(token, h, sqlite) {
      if (token !== TOKEN) throw new TypeError("Illegal constructor");
      this.#h = h;
      this.#sqlite = sqlite;
    }

    exec(query, ...bindings) {
      if (!this.#sqlite) throw new Error(SQL_NOT_SQLITE);
      const out = op_sql_exec(this.#h, String(query), bindings.map(bindingValue));
      return new SqlStorageCursor(TOKEN, out);
    }

    get databaseSize() {
      if (!this.#sqlite) throw new Error(SQL_NOT_SQLITE);
      return op_sql_database_size(this.#h);
    }

    get Cursor() {
      return SqlStorageCursor;
    }

    get [Symbol.toStringTag]() {
      return "SqlStorage";
    }
  }

  // workerd compiles the same options as the asynchronous list() does.
  function kvListOptions(opts) {
    if (opts === null || opts === undefined) return {};
    const o = {};
    for (const k of ["start", "startAfter", "end", "prefix"]) {
      if (opts[k] !== undefined) o[k] = String(opts[k]);
    }
    if (o.start !== undefined && o.startAfter !== undefined) {
      throw new TypeError("list() cannot be called with both start and startAfter values.");
    }
    if (opts.reverse !== undefined) o.reverse = !!opts.reverse;
    if (opts.limit !== undefined) o.limit = Number(opts.limit);
    return o;
  }

  class SyncKvStorage {
    #h;
    #sqlite;
    #listing = null; // the one live list() iterator's state
    constructor(token, h, sqlite) {
      if (token !== TOKEN) throw new TypeError("Illegal constructor");
      this.#h = h;
      this.#sqlite = sqlite;
    }

    #check() {
      if (!this.#sqlite) throw new Error(KV_NOT_SQLITE);
    }

    get(key) {
      this.#check();
      const bytes = op_sql_kv_get(this.#h, String(key));
      return bytes === null ? undefined : deserialize(bytes, true);
    }

    put(key, value) {
      this.#check();
      op_sql_kv_put(this.#h, String(key), serialize(value, true));
    }

    delete(key) {
      this.#check();
      return op_sql_kv_delete(this.#h, String(key));
    }

    // Entries are read when list() is called; as on workerd, starting another list() makes an
    // unfinished iterator throw.
    list(opts) {
      this.#check();
      const entries = op_sql_kv_list(this.#h, kvListOptions(opts));
      if (this.#listing !== null && this.#listing.pos < this.#listing.entries.length) {
        this.#listing.canceled = true;
      }
      const state = { entries, pos: 0, canceled: false };
      this.#listing = state;
      return makeIterator(() => {
        if (state.canceled) throw new Error(LIST_INVALIDATED);
        if (state.pos >= state.entries.length) return undefined;
        const [key, bytes] = state.entries[state.pos];
        state.entries[state.pos++] = undefined;
        return [key, deserialize(bytes, true)];
      });
    }

    get [Symbol.toStringTag]() {
      return "SyncKvStorage";
    }
  }

  // The transaction object of `transaction(async fn)` on a SQLite-backed object: its
  // operations are the storage's own (they join the open transaction anyway).
  class SqliteTransaction {
    #storage;
    #token;
    #state = 0; // 0 open, 1 rolled back, 2 ended
    constructor(token, storage, txn) {
      if (token !== TOKEN) throw new TypeError("Illegal constructor");
      this.#storage = storage;
      this.#token = txn;
    }
    #check(op) {
      if (this.#state === 1) throw new Error(`Cannot ${op} on rolled back transaction`);
      if (this.#state === 2) {
        throw new Error(
          `Cannot call ${op} on transaction that has already committed: did you move \`txn\` outside of the closure?`,
        );
      }
    }
    async get(keyOrKeys, opts) {
      this.#check("get()");
      return this.#storage.get(keyOrKeys, opts);
    }
    async put(keyOrEntries, value, opts) {
      this.#check("put()");
      return this.#storage.put(keyOrEntries, value, opts);
    }
    async delete(keyOrKeys, opts) {
      this.#check("delete()");
      return this.#storage.delete(keyOrKeys, opts);
    }
    async list(opts) {
      this.#check("list()");
      return this.#storage.list(opts);
    }
    async getAlarm(opts) {
      this.#check("getAlarm()");
      return this.#storage.getAlarm(opts);
    }
    async setAlarm(time, opts) {
      this.#check("setAlarm()");
      return this.#storage.setAlarm(time, opts);
    }
    async deleteAlarm(opts) {
      this.#check("deleteAlarm()");
      return this.#storage.deleteAlarm(opts);
    }
    rollback() {
      if (this.#state === 1) return;
      this.#check("rollback()");
      op_sql_txn_rollback(this.#token);
      this.#state = 1;
    }
    deleteAll() {
      throw new Error("Cannot call deleteAll() within a transaction");
    }
    get [Symbol.toStringTag]() {
      return "DurableObjectTransaction";
    }
    static end(txn) {
      if (txn.#state === 0) txn.#state = 2;
    }
  }

  // The input gate stays closed from here until the closure settles; its awaits (timers,
  // outbound calls) belong to the transaction, as in a critical section.
  async function transaction(storage, h, closure) {
    if (typeof closure !== "function") {
      throw new TypeError("transaction() requires a function argument");
    }
    const token = op_sql_txn_begin(h);
    const txn = new SqliteTransaction(TOKEN, storage, token);
    const ctx = { ...(core.getAsyncContext() ?? {}), obj: h, cs: token };
    let result;
    try {
      result = await withContext(ctx, () => closure(txn));
    } catch (e) {
      SqliteTransaction.end(txn);
      try {
        op_sql_txn_end(token, false);
      } catch {
        // The object was reset meanwhile: nothing is left to roll back.
      }
      throw e;
    }
    SqliteTransaction.end(txn);
    op_sql_txn_end(token, true);
    return result;
  }

  function transactionSync(h, sqlite, callback) {
    if (!sqlite) throw new Error(TXN_NOT_SQLITE);
    if (typeof callback !== "function") {
      throw new TypeError("transactionSync() requires a function argument");
    }
    op_sql_sync_begin(h);
    let result;
    try {
      result = callback();
    } catch (e) {
      try {
        op_sql_sync_end(h, false);
      } catch {
        // Already gone with its object.
      }
      throw e;
    }
    op_sql_sync_end(h, true);
    return result;
  }

  function alarmLikeTime(t) {
    if (t instanceof Date) return t.getTime();
    if (typeof t === "number") return t;
    throw new TypeError(
      "getBookmarkForTime() requires a Date or a number of milliseconds since the epoch",
    );
  }

  const bookmarks = {
    current(h, sqlite) {
      if (!sqlite) return Promise.reject(new Error(NO_PITR));
      try {
        return Promise.resolve(op_sql_bookmark_current(h));
      } catch (e) {
        return Promise.reject(e);
      }
    },
    forTime(h, sqlite, t) {
      if (!sqlite) return Promise.reject(new Error(NO_PITR));
      try {
        return Promise.resolve(op_sql_bookmark_for_time(h, alarmLikeTime(t)));
      } catch (e) {
        return Promise.reject(e);
      }
    },
    restore(h, sqlite, bookmark) {
      if (!sqlite) return Promise.reject(new Error(NO_PITR));
      const inCs = !!core.getAsyncContext()?.cs;
      try {
        return op_sql_restore_bookmark(h, String(bookmark), inCs);
      } catch (e) {
        return Promise.reject(e);
      }
    },
  };

  I.sql = {
    sql: (h, sqlite) => new SqlStorage(TOKEN, h, sqlite),
    kv: (h, sqlite) => new SyncKvStorage(TOKEN, h, sqlite),
    transaction,
    transactionSync,
    bookmarks,
    // Objects the runtime dropped: their cursors and open transactions go too.
    forget(handles) {
      if (handles.length) op_sql_forget(handles);
    },
  };

  Object.defineProperties(globalThis, {
    SqlStorage: { value: SqlStorage, writable: true, configurable: true },
    SqlStorageCursor: { value: SqlStorageCursor, writable: true, configurable: true },
  });
})(globalThis);
