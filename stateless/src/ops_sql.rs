//! Ops of SQLite-backed Durable Objects (js/sql.js): `ctx.storage.sql` and its cursors,
//! `transactionSync`, `transaction(async fn)`, the synchronous `ctx.storage.kv`, and the
//! point-in-time-recovery bookmarks. The engine is cinder-sql over the object's own storage
//! (`ObjectEntry::sql`), whose write hook joins every SQL write to the turn batch and the
//! output gate, exactly as a KV write.
//!
//! Cursors live in a table of this isolate (`SqlTable`, in the `OpState`) under a handle JS
//! holds; JS pulls rows as it iterates, so a `SELECT` that is abandoned after ten rows has read
//! about ten. A cursor leaves the table when it is exhausted, when JS drops its handle (a
//! `FinalizationRegistry`), or when its object dies. A cursor only holds a weak reference to
//! its database, so one that outlives its object fails cleanly (cinder-sql's
//! `CANCELED_CLOSED`) instead of touching a closed connection.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;

use bytes::Bytes;
use cinder_core::{InputLock, ListOptions};
use cinder_sql::{Cursor, Savepoint, SavepointKind, SqlError, SqlStorage, SqlValue};
use deno_core::{op2, OpState, ToJsBuffer};
use deno_error::JsErrorBox;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::durable::ObjectEntry;
use crate::state::IsolateState;

// ---------------------------------------------------------------------------------------------
// Values crossing between JS and SQLite

/// A value JS hands over: `null`/`undefined`, a number, a string, or bytes (an `ArrayBuffer`,
/// a view, or an array of byte numbers). The JS side has already applied the API's coercions.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum JsScalar {
    Null,
    Number(f64),
    Text(String),
    Bytes(Vec<u8>),
}

impl<'de> Deserialize<'de> for JsScalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = JsScalar;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("null, a number, a string or bytes")
            }
            fn visit_unit<E: de::Error>(self) -> Result<JsScalar, E> {
                Ok(JsScalar::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<JsScalar, E> {
                Ok(JsScalar::Null)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<JsScalar, E> {
                Ok(JsScalar::Number(f64::from(u8::from(v))))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<JsScalar, E> {
                Ok(JsScalar::Number(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<JsScalar, E> {
                Ok(JsScalar::Number(v as f64))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<JsScalar, E> {
                Ok(JsScalar::Number(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<JsScalar, E> {
                Ok(JsScalar::Text(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<JsScalar, E> {
                Ok(JsScalar::Text(v))
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<JsScalar, E> {
                Ok(JsScalar::Bytes(v.to_vec()))
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<JsScalar, E> {
                Ok(JsScalar::Bytes(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<JsScalar, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(JsScalar::Bytes(out))
            }
        }
        d.deserialize_any(V)
    }
}

impl JsScalar {
    /// As `sql.exec()` binds it: workerd binds every JS number as a double.
    fn into_sql(self) -> SqlValue {
        match self {
            JsScalar::Null => SqlValue::Null,
            JsScalar::Number(n) => SqlValue::Real(n),
            JsScalar::Text(s) => SqlValue::Text(s),
            JsScalar::Bytes(b) => SqlValue::Blob(b),
        }
    }

    /// As D1 binds it (cinder-d1's conversion table): integral numbers within ±2⁵³ as
    /// integers.
    pub(crate) fn into_d1(self) -> SqlValue {
        const SAFE: f64 = 9_007_199_254_740_991.0;
        match self {
            JsScalar::Number(n) if n.fract() == 0.0 && n.abs() <= SAFE => {
                SqlValue::Integer(n as i64)
            }
            other => other.into_sql(),
        }
    }
}

/// A value going to JS: integers and reals as numbers (integers beyond 2⁵³ lose precision, as
/// on Cloudflare), text as strings, BLOBs as a `Uint8Array` (js/sql.js hands out its
/// `ArrayBuffer`; D1 turns it into an array of byte numbers), NULL as `null`.
pub(crate) struct JsOut(pub SqlValue);

impl Serialize for JsOut {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            SqlValue::Null => s.serialize_unit(),
            SqlValue::Integer(i) => s.serialize_f64(*i as f64),
            SqlValue::Real(x) => s.serialize_f64(*x),
            SqlValue::Text(t) => s.serialize_str(t),
            SqlValue::Blob(b) => ToJsBuffer::from(b.clone()).serialize(s),
        }
    }
}

pub(crate) fn js_row(row: Vec<SqlValue>) -> Vec<JsOut> {
    row.into_iter().map(JsOut).collect()
}

// ---------------------------------------------------------------------------------------------
// Per-isolate state

/// This isolate's open cursors and asynchronous transactions.
#[derive(Default)]
pub(crate) struct SqlTable {
    next: Cell<u32>,
    cursors: RefCell<HashMap<u32, (u32, Cursor)>>,
    txns: RefCell<HashMap<u32, OpenTxn>>,
}

/// An open `transaction(async fn)`: its savepoint (until rolled back) and the input-gate lock
/// that keeps every other event out until the closure is done.
struct OpenTxn {
    handle: u32,
    savepoint: Option<Savepoint>,
    _lock: InputLock,
}

impl SqlTable {
    fn id(&self) -> u32 {
        let id = self.next.get().wrapping_add(1).max(1);
        self.next.set(id);
        id
    }
}

fn table(state: &mut OpState) -> Rc<SqlTable> {
    if let Some(t) = state.try_borrow::<Rc<SqlTable>>() {
        return t.clone();
    }
    let t = Rc::new(SqlTable::default());
    state.put(t.clone());
    t
}

fn isolate(state: &OpState) -> Result<Rc<IsolateState>, JsErrorBox> {
    state
        .try_borrow::<Rc<IsolateState>>()
        .cloned()
        .ok_or_else(|| JsErrorBox::generic("isolate is shutting down"))
}

fn object(state: &OpState, handle: u32) -> Result<Rc<ObjectEntry>, JsErrorBox> {
    isolate(state)?.object(handle).ok_or_else(|| {
        JsErrorBox::generic(
            "Durable Object reset: this object's instance is no longer live (it was reset or \
             evicted); a new one serves the next event.",
        )
    })
}

fn db(state: &OpState, handle: u32) -> Result<Rc<SqlStorage>, JsErrorBox> {
    object(state, handle)?
        .sql()
        .map_err(|e| JsErrorBox::generic(e.message))
}

/// SQL errors are plain `Error`s (workerd's texts); storage limits keep their class.
pub(crate) fn sql_error(e: SqlError) -> JsErrorBox {
    let message = e.to_string();
    match e.kind() {
        cinder_storage::ErrorKind::TypeError => JsErrorBox::type_error(message),
        cinder_storage::ErrorKind::RangeError => JsErrorBox::range_error(message),
        _ => JsErrorBox::generic(message),
    }
}

// ---------------------------------------------------------------------------------------------
// sql.exec and cursors

/// What `exec()` answers: the cursor's columns and counters, and either a handle to pull rows
/// through (`cursor != 0`) or every row at once (a statement that ran to completion).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExecOut {
    cursor: u32,
    columns: Vec<String>,
    rows: Vec<Vec<JsOut>>,
    rows_read: f64,
    rows_written: f64,
}

/// Rows pulled from a cursor, and its counters after them. `done`: the cursor is exhausted
/// (and has left the table).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PullOut {
    rows: Vec<Vec<JsOut>>,
    done: bool,
    rows_read: f64,
    rows_written: f64,
}

#[op2]
#[serde]
fn op_sql_exec(
    state: &mut OpState,
    #[smi] handle: u32,
    #[string] query: String,
    #[serde] bindings: Vec<JsScalar>,
) -> Result<ExecOut, JsErrorBox> {
    let db = db(state, handle)?;
    let bindings: Vec<SqlValue> = bindings.into_iter().map(JsScalar::into_sql).collect();
    let mut cursor = db.exec(&query, &bindings).map_err(sql_error)?;
    let columns = cursor.column_names().to_vec();
    if cursor.is_streaming() {
        let t = table(state);
        let id = t.id();
        let out = ExecOut {
            cursor: id,
            columns,
            rows: Vec::new(),
            rows_read: cursor.rows_read() as f64,
            rows_written: cursor.rows_written() as f64,
        };
        t.cursors.borrow_mut().insert(id, (handle, cursor));
        return Ok(out);
    }
    // Everything is in memory already: hand it over in one go.
    let mut rows = Vec::new();
    while let Some(row) = cursor.next_row().map_err(sql_error)? {
        rows.push(js_row(row));
    }
    Ok(ExecOut {
        cursor: 0,
        columns,
        rows,
        rows_read: cursor.rows_read() as f64,
        rows_written: cursor.rows_written() as f64,
    })
}

/// Pulls up to `max` rows (1 for `next()`, all for `toArray()`).
#[op2]
#[serde]
fn op_sql_pull(state: &mut OpState, #[smi] cursor: u32, max: f64) -> Result<PullOut, JsErrorBox> {
    let t = table(state);
    let mut cursors = t.cursors.borrow_mut();
    let Some((_, c)) = cursors.get_mut(&cursor) else {
        return Ok(PullOut {
            rows: Vec::new(),
            done: true,
            rows_read: 0.0,
            rows_written: 0.0,
        });
    };
    let mut rows = Vec::new();
    let mut done = false;
    let mut error = None;
    while (rows.len() as f64) < max {
        match c.next_row() {
            Ok(Some(row)) => rows.push(js_row(row)),
            Ok(None) => {
                done = true;
                break;
            }
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    // A cursor that is one row ahead knows when it has no more.
    done |= !c.has_more();
    let out = PullOut {
        rows,
        done: done || error.is_some(),
        rows_read: c.rows_read() as f64,
        rows_written: c.rows_written() as f64,
    };
    if out.done {
        cursors.remove(&cursor);
    }
    match error {
        Some(e) => Err(sql_error(e)),
        None => Ok(out),
    }
}

/// `cursor.one()` on a cursor still in the table: the only remaining row, or workerd's error
/// (the cursor is finished either way).
#[op2]
#[serde]
fn op_sql_one(state: &mut OpState, #[smi] cursor: u32) -> Result<PullOut, JsErrorBox> {
    let t = table(state);
    let Some((_, mut c)) = t.cursors.borrow_mut().remove(&cursor) else {
        return Err(JsErrorBox::generic(cinder_sql::error::ONE_NONE));
    };
    let row = c.one().map_err(sql_error)?;
    Ok(PullOut {
        rows: vec![js_row(row.into_values())],
        done: true,
        rows_read: c.rows_read() as f64,
        rows_written: c.rows_written() as f64,
    })
}

/// JS dropped a cursor it had not finished.
#[op2(fast)]
fn op_sql_close(state: &mut OpState, #[smi] cursor: u32) {
    table(state).cursors.borrow_mut().remove(&cursor);
}

/// Objects that died: their cursors and transactions go.
#[op2]
fn op_sql_forget(state: &mut OpState, #[serde] handles: Vec<u32>) {
    let t = table(state);
    t.cursors
        .borrow_mut()
        .retain(|_, (h, _)| !handles.contains(h));
    t.txns
        .borrow_mut()
        .retain(|_, txn| !handles.contains(&txn.handle));
}

#[op2(fast)]
fn op_sql_database_size(state: &mut OpState, #[smi] handle: u32) -> Result<f64, JsErrorBox> {
    let db = db(state, handle)?;
    db.database_size().map(|n| n as f64).map_err(sql_error)
}

// ---------------------------------------------------------------------------------------------
// transactionSync and transaction(async fn)

/// Savepoints of `transactionSync` live only within one synchronous JS call, so JS holds
/// them by level.
fn sync_savepoints(state: &mut OpState) -> Rc<RefCell<Vec<Savepoint>>> {
    if let Some(s) = state.try_borrow::<Rc<RefCell<Vec<Savepoint>>>>() {
        return s.clone();
    }
    let s: Rc<RefCell<Vec<Savepoint>>> = Rc::default();
    state.put(s.clone());
    s
}

/// `transactionSync(fn)` begins: a savepoint nested in whatever is open. JS ends it with
/// [`op_sql_sync_end`] when the callback returns or throws.
#[op2(fast)]
fn op_sql_sync_begin(state: &mut OpState, #[smi] handle: u32) -> Result<(), JsErrorBox> {
    let db = db(state, handle)?;
    let sp = db.begin_savepoint(SavepointKind::Sync).map_err(sql_error)?;
    sync_savepoints(state).borrow_mut().push(sp);
    Ok(())
}

/// Ends the innermost `transactionSync` savepoint: commit (a failure rolls it back and is the
/// error) or roll back.
#[op2(fast)]
fn op_sql_sync_end(
    state: &mut OpState,
    #[smi] handle: u32,
    commit: bool,
) -> Result<(), JsErrorBox> {
    let sp = sync_savepoints(state).borrow_mut().pop();
    let Some(sp) = sp else {
        return Err(JsErrorBox::generic(cinder_sql::TRANSACTION_ENDED));
    };
    // After a reset the savepoint died with the connection: nothing to end.
    let Ok(db) = db(state, handle) else {
        return Ok(());
    };
    if commit {
        db.release_savepoint(sp).map_err(sql_error)
    } else {
        db.rollback_savepoint(sp).map_err(sql_error)
    }
}

/// `transaction(async fn)` on a SQLite-backed object begins: the input gate closes (until
/// [`op_sql_txn_end`]) and a savepoint opens; everything the closure does on `storage` or
/// `sql` joins it, across its awaits.
#[op2(fast)]
#[smi]
fn op_sql_txn_begin(state: &mut OpState, #[smi] handle: u32) -> Result<u32, JsErrorBox> {
    let obj = object(state, handle)?;
    let db = obj.sql().map_err(|e| JsErrorBox::generic(e.message))?;
    let lock = obj.ctx.input_gate().lock();
    let sp = db
        .begin_savepoint(SavepointKind::Async)
        .map_err(sql_error)?;
    let t = table(state);
    let token = t.id();
    t.txns.borrow_mut().insert(
        token,
        OpenTxn {
            handle,
            savepoint: Some(sp),
            _lock: lock,
        },
    );
    Ok(token)
}

/// `txn.rollback()`: undoes the transaction now; it stays open (gate closed) until the
/// closure ends.
#[op2(fast)]
fn op_sql_txn_rollback(state: &mut OpState, #[smi] token: u32) -> Result<(), JsErrorBox> {
    let t = table(state);
    let (handle, sp) = {
        let mut txns = t.txns.borrow_mut();
        let txn = txns
            .get_mut(&token)
            .ok_or_else(|| JsErrorBox::generic(cinder_sql::TRANSACTION_ENDED))?;
        (txn.handle, txn.savepoint.take())
    };
    match (sp, db(state, handle)) {
        (Some(sp), Ok(db)) => db.rollback_savepoint(sp).map_err(sql_error),
        _ => Ok(()),
    }
}

/// The closure settled: commit (`commit`) or roll back, then open the input gate.
#[op2(fast)]
fn op_sql_txn_end(state: &mut OpState, #[smi] token: u32, commit: bool) -> Result<(), JsErrorBox> {
    let t = table(state);
    let Some(txn) = t.txns.borrow_mut().remove(&token) else {
        return Err(JsErrorBox::generic(cinder_sql::TRANSACTION_ENDED));
    };
    let (Some(sp), Ok(db)) = (txn.savepoint, db(state, txn.handle)) else {
        return Ok(());
    };
    if commit {
        db.release_savepoint(sp).map_err(sql_error)
    } else {
        db.rollback_savepoint(sp).map_err(sql_error)
    }
}

// ---------------------------------------------------------------------------------------------
// ctx.storage.kv (synchronous)

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct KvListOptions {
    start: Option<String>,
    start_after: Option<String>,
    end: Option<String>,
    prefix: Option<String>,
    reverse: bool,
    limit: Option<f64>,
}

#[op2]
#[serde]
fn op_sql_kv_get(
    state: &mut OpState,
    #[smi] handle: u32,
    #[string] key: String,
) -> Result<Option<ToJsBuffer>, JsErrorBox> {
    let db = db(state, handle)?;
    let v = db.kv().get(&key).map_err(sql_error)?;
    Ok(v.map(|b| b.to_vec().into()))
}

#[op2(fast)]
fn op_sql_kv_put(
    state: &mut OpState,
    #[smi] handle: u32,
    #[string] key: &str,
    #[buffer] value: &[u8],
) -> Result<(), JsErrorBox> {
    let db = db(state, handle)?;
    db.kv()
        .put(key, Bytes::copy_from_slice(value))
        .map_err(sql_error)
}

#[op2(fast)]
fn op_sql_kv_delete(
    state: &mut OpState,
    #[smi] handle: u32,
    #[string] key: &str,
) -> Result<bool, JsErrorBox> {
    let db = db(state, handle)?;
    db.kv().delete(key).map_err(sql_error)
}

#[op2]
#[serde]
fn op_sql_kv_list(
    state: &mut OpState,
    #[smi] handle: u32,
    #[serde] opts: KvListOptions,
) -> Result<Vec<(String, ToJsBuffer)>, JsErrorBox> {
    let db = db(state, handle)?;
    let limit = match opts.limit {
        None => None,
        Some(l) if l.is_finite() && l >= 1.0 => Some(l as usize),
        Some(_) => return Err(JsErrorBox::type_error("List limit must be positive.")),
    };
    let list = ListOptions {
        start: opts.start,
        start_after: opts.start_after,
        end: opts.end,
        prefix: opts.prefix,
        reverse: opts.reverse,
        limit,
        no_cache: false,
    };
    let entries = db.kv().list(&list).map_err(sql_error)?;
    Ok(entries
        .into_iter()
        .map(|(k, v)| (k, v.to_vec().into()))
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Point-in-time recovery

#[op2]
#[string]
fn op_sql_bookmark_current(state: &mut OpState, #[smi] handle: u32) -> Result<String, JsErrorBox> {
    db(state, handle)?.current_bookmark().map_err(sql_error)
}

#[op2]
#[string]
fn op_sql_bookmark_for_time(
    state: &mut OpState,
    #[smi] handle: u32,
    t_ms: f64,
) -> Result<String, JsErrorBox> {
    if !t_ms.is_finite() {
        return Err(JsErrorBox::type_error(
            "getBookmarkForTime() requires a Date or a number of milliseconds since the epoch",
        ));
    }
    db(state, handle)?
        .bookmark_for_time(t_ms as i64)
        .map_err(sql_error)
}

/// `onNextSessionRestoreBookmark(b)`: records the restore, and resolves (with the bookmark
/// that undoes it) only once that record is durable, so the `ctx.abort()` that usually
/// follows cannot discard it with the rest of the turn.
#[op2]
#[string]
fn op_sql_restore_bookmark(
    state: &mut OpState,
    #[smi] handle: u32,
    #[string] bookmark: String,
    in_cs: bool,
) -> impl Future<Output = Result<String, JsErrorBox>> {
    let prepared = object(state, handle).and_then(|obj| {
        let db = obj.sql().map_err(|e| JsErrorBox::generic(e.message))?;
        let undo = db.restore_on_next_open(&bookmark).map_err(sql_error)?;
        Ok((obj.ctx.clone(), undo))
    });
    async move {
        let (ctx, undo) = prepared?;
        // The record holds the output gate like any write: open means durable.
        ctx.output_gate()
            .wait()
            .await
            .map_err(|e| JsErrorBox::generic(e.0.to_string()))?;
        crate::ops_do::readmit(&ctx, in_cs)
            .await
            .map_err(|e| JsErrorBox::generic(e.0.to_string()))?;
        Ok(undo)
    }
}

deno_core::extension!(
    cinder_sql_ops,
    ops = [
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
    ],
);
