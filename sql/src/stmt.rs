//! Running user SQL: several statements per call, bindings on the last, rows of the last.
//!
//! Written on the raw C API because `exec()` needs what rusqlite keeps private: the tail of
//! the text after each statement (to know which statement is last before running it), the
//! statement's parameter count before binding, per-statement status counters, and statements
//! that outlive the call (streaming cursors, [`crate::cursor`]).

use std::collections::{HashMap, VecDeque};
use std::ffi::{c_char, c_int, CStr};
use std::ptr;
use std::rc::Rc;
use std::sync::Arc;

use libsqlite3_sys as ffi;

use crate::auth::AuthState;
use crate::cursor::{Cursor, LiveQuery, LiveState, SqlValue};
use crate::db::Inner;
use crate::error::{SqlError, MULTI_PARAMS, NO_STATEMENT, TRANSACTION_REFUSED, WRONG_BINDINGS};

/// A prepared statement, finalized on drop (a null one is a no-op for SQLite).
pub(crate) struct Stmt(pub(crate) *mut ffi::sqlite3_stmt);

impl Drop for Stmt {
    fn drop(&mut self) {
        unsafe { ffi::sqlite3_finalize(self.0) };
    }
}

/// Prepared single-statement queries of `exec()`, by SQL text (workerd caches them too): a
/// counter's `UPDATE` is parsed and authorized once, not per call, and its column names are
/// built once. Kept apart from rusqlite's cache, which holds the engine's trusted statements:
/// user text equal to an engine statement must never reuse a statement the authorizer passed
/// in trusted mode. A statement a streaming cursor is still reading is out of its slot
/// meanwhile, so running the same SQL again compiles a one-off copy (as workerd does).
#[derive(Default)]
pub(crate) struct StmtCache {
    index: HashMap<Box<str>, usize>,
    slots: Vec<Slot>,
    tick: u64,
}

struct Slot {
    sql: Box<str>,
    /// `None` while the statement is running (taken).
    stmt: Option<Stmt>,
    /// Column names, valid while SQLite has not re-prepared the statement (its
    /// `SQLITE_STMTSTATUS_REPREPARE` count is unchanged).
    columns: Option<(Arc<[String]>, c_int)>,
    used: u64,
    generation: u64,
}

/// Where a statement taken from (or meant for) the cache goes back.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SlotRef {
    index: usize,
    generation: u64,
}

const CACHE_ENTRIES: usize = 64;

impl StmtCache {
    /// The cached statement for `sql`, unless there is none or it is running.
    fn take(&mut self, sql: &str) -> Option<(Stmt, SlotRef)> {
        let &index = self.index.get(sql)?;
        self.tick += 1;
        let slot = &mut self.slots[index];
        slot.used = self.tick;
        let stmt = slot.stmt.take()?;
        Some((
            stmt,
            SlotRef {
                index,
                generation: slot.generation,
            },
        ))
    }

    /// A slot for a statement just prepared for `sql`; `None` if the SQL has a slot whose
    /// statement is running (the new one is then a one-off) or every slot is busy.
    fn reserve(&mut self, sql: &str) -> Option<SlotRef> {
        self.tick += 1;
        if let Some(&index) = self.index.get(sql) {
            let slot = &mut self.slots[index];
            if slot.stmt.is_some() {
                // Same text, idle statement: replace it with the fresh one.
                slot.stmt = None;
                slot.columns = None;
                slot.used = self.tick;
                return Some(SlotRef {
                    index,
                    generation: slot.generation,
                });
            }
            return None;
        }
        let slot = Slot {
            sql: sql.into(),
            stmt: None,
            columns: None,
            used: self.tick,
            generation: 0,
        };
        let index = if self.slots.len() < CACHE_ENTRIES {
            self.slots.push(slot);
            self.slots.len() - 1
        } else {
            // Evict the least recently used idle statement.
            let (index, _) = self
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.stmt.is_some())
                .min_by_key(|(_, s)| s.used)?;
            let old = &mut self.slots[index];
            self.index.remove(&old.sql);
            let generation = old.generation + 1;
            *old = Slot { generation, ..slot };
            index
        };
        self.index.insert(sql.into(), index);
        Some(SlotRef {
            index,
            generation: self.slots[index].generation,
        })
    }

    /// Puts a rewound statement back in its slot (or finalizes it if the slot moved on).
    pub(crate) fn put(&mut self, at: SlotRef, stmt: Stmt) {
        if let Some(slot) = self.slots.get_mut(at.index) {
            if slot.generation == at.generation && slot.stmt.is_none() {
                slot.stmt = Some(stmt);
            }
        }
    }

    /// The statement's column names, from the slot while SQLite has not re-prepared it.
    unsafe fn columns(&mut self, at: Option<SlotRef>, stmt: &Stmt) -> Arc<[String]> {
        let reprepared = ffi::sqlite3_stmt_status(stmt.0, ffi::SQLITE_STMTSTATUS_REPREPARE, 0);
        let slot = at.and_then(|at| {
            self.slots
                .get_mut(at.index)
                .filter(|s| s.generation == at.generation)
        });
        if let Some(slot) = slot {
            if let Some((cols, n)) = &slot.columns {
                if *n == reprepared {
                    return cols.clone();
                }
            }
            let cols = column_names(stmt);
            slot.columns = Some((cols.clone(), reprepared));
            return cols;
        }
        column_names(stmt)
    }

    /// Finalizes every statement (before the connection closes).
    pub(crate) fn clear(&mut self) {
        self.index.clear();
        self.slots.clear();
    }
}

/// Rewinds a statement for its next run: bindings and status counters cleared.
pub(crate) unsafe fn rewind(stmt: &Stmt) {
    ffi::sqlite3_reset(stmt.0);
    ffi::sqlite3_clear_bindings(stmt.0);
    ffi::sqlite3_stmt_status(stmt.0, ffi::SQLITE_STMTSTATUS_FULLSCAN_STEP, 1);
}

/// `rowsRead` of one statement, approximated from what the unpatched SQLite counts: workerd's
/// patched SQLite counts B-tree rows visited; here a row is counted once whether it was
/// scanned, returned or changed (a full scan returning its rows is not counted twice).
pub(crate) fn rows_read(scanned: u64, returned: u64, written: u64) -> u64 {
    scanned.max(returned).max(written)
}

unsafe fn column_names(stmt: &Stmt) -> Arc<[String]> {
    let n = ffi::sqlite3_column_count(stmt.0);
    (0..n)
        .map(|i| {
            let p = ffi::sqlite3_column_name(stmt.0, i);
            if p.is_null() {
                String::new()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        })
        .collect()
}

/// Binds and starts the last (or only) statement of an `exec()`. A read-only statement is
/// stepped once and, if it has a row, handed to a streaming cursor; any other statement runs
/// to completion here. `key`: where the statement returns in the statement cache.
#[allow(clippy::too_many_arguments)]
unsafe fn start_last(
    inner: &Rc<Inner>,
    stmt: Stmt,
    key: Option<SlotRef>,
    altered: bool,
    bindings: &[SqlValue],
    base_read: u64,
    base_written: u64,
) -> Result<Cursor, SqlError> {
    let db = inner.handle();
    let done = |stmt: Stmt, key: Option<SlotRef>| match key {
        Some(k) => inner.return_to_cache(k, stmt),
        None => drop(stmt),
    };
    let columns_of = |stmt: &Stmt| inner.stmts.borrow_mut().columns(key, stmt);
    let params = ffi::sqlite3_bind_parameter_count(stmt.0) as usize;
    if params != bindings.len() {
        done(stmt, key);
        return Err(SqlError::Api(WRONG_BINDINGS));
    }
    for (i, v) in bindings.iter().enumerate() {
        if let Err(e) = bind(db, &stmt, i as c_int + 1, v) {
            done(stmt, key);
            return Err(e);
        }
    }
    if altered || ffi::sqlite3_stmt_readonly(stmt.0) == 0 {
        inner.size_may_change();
        let out = guard_rename(db, &inner.auth, altered, || step_all(db, &stmt, true));
        // After stepping: a schema change re-prepares the statement during the first step.
        let columns = columns_of(&stmt);
        done(stmt, key);
        let (rows, r, w) = out?;
        return Ok(Cursor {
            columns,
            rows,
            rows_read: base_read + r,
            rows_written: base_written + w,
            live: None,
        });
    }
    let rc = inner.step_user(&stmt);
    let columns = columns_of(&stmt);
    match rc {
        ffi::SQLITE_ROW => {
            let mut state = LiveState {
                query: Some(LiveQuery {
                    stmt,
                    cache_key: key,
                    conn: Rc::downgrade(inner),
                    base_read,
                    base_written,
                    returned: 1,
                }),
                rows_read: 0,
                rows_written: 0,
                canceled: None,
            };
            state.count();
            let live = Rc::new(std::cell::RefCell::new(state));
            inner.register_live(&live);
            Ok(Cursor {
                columns,
                rows: VecDeque::new(),
                rows_read: 0,
                rows_written: 0,
                live: Some(live),
            })
        }
        ffi::SQLITE_DONE => {
            let scanned = ffi::sqlite3_stmt_status(stmt.0, ffi::SQLITE_STMTSTATUS_FULLSCAN_STEP, 0)
                .max(0) as u64;
            done(stmt, key);
            Ok(Cursor {
                columns,
                rows: VecDeque::new(),
                rows_read: base_read + rows_read(scanned, 0, 0),
                rows_written: base_written,
                live: None,
            })
        }
        rc => {
            let msg = error_message(db, rc);
            done(stmt, key);
            Err(SqlError::Sqlite(msg))
        }
    }
}

/// Runs `sql` (one or more statements) as user SQL; returns a cursor over the last one's rows.
///
/// # Safety
/// `inner`'s connection must be open and used by this thread only.
pub(crate) unsafe fn run(
    inner: &Rc<Inner>,
    sql: &str,
    bindings: &[SqlValue],
) -> Result<Cursor, SqlError> {
    let db = inner.handle();
    let auth = &inner.auth;
    let cached = inner.stmts.borrow_mut().take(sql);
    if let Some((stmt, at)) = cached {
        return start_last(inner, stmt, Some(at), false, bindings, 0, 0);
    }
    let bytes = sql.as_bytes();
    let mut pos = 0usize;
    let mut rows_read = 0u64;
    let mut rows_written = 0u64;
    loop {
        let mut raw: *mut ffi::sqlite3_stmt = ptr::null_mut();
        let mut tail: *const c_char = ptr::null();
        let rest = &bytes[pos..];
        let rc = ffi::sqlite3_prepare_v2(
            db,
            rest.as_ptr() as *const c_char,
            c_int::try_from(rest.len()).unwrap_or(c_int::MAX),
            &mut raw,
            &mut tail,
        );
        if rc != ffi::SQLITE_OK {
            if rc == ffi::SQLITE_AUTH && auth.take_transaction_refused() {
                return Err(SqlError::Api(TRANSACTION_REFUSED));
            }
            return Err(SqlError::Sqlite(error_message(db, rc)));
        }
        if raw.is_null() {
            return Err(SqlError::Api(NO_STATEMENT));
        }
        let stmt = Stmt(raw);
        let altered = auth.take_altered();
        let consumed = if tail.is_null() {
            rest.len()
        } else {
            (tail as usize).saturating_sub(rest.as_ptr() as usize)
        };
        pos += consumed;
        while pos < bytes.len() && matches!(bytes[pos], b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
        {
            pos += 1;
        }
        let last = pos >= bytes.len();
        if !last {
            if ffi::sqlite3_bind_parameter_count(stmt.0) != 0 {
                return Err(SqlError::Api(MULTI_PARAMS));
            }
            if ffi::sqlite3_stmt_readonly(stmt.0) == 0 {
                inner.size_may_change();
            }
            let (_, r, w) = guard_rename(db, auth, altered, || step_all(db, &stmt, false))?;
            rows_read += r;
            rows_written += w;
            continue;
        }
        let single = consumed == bytes.len() || rest.as_ptr() == bytes.as_ptr();
        // A guarded statement is never cached: its guard is decided at prepare time.
        let key = if single && !altered {
            inner.stmts.borrow_mut().reserve(sql)
        } else {
            None
        };
        return start_last(inner, stmt, key, altered, bindings, rows_read, rows_written);
    }
}

/// Runs `f` (an authorized user `ALTER TABLE`) in a savepoint and undoes it if it created a
/// name starting `_cf_` (`ALTER TABLE t RENAME TO _cf_KV`), failing as the authorizer would.
unsafe fn guard_rename<T>(
    db: *mut ffi::sqlite3,
    auth: &Arc<AuthState>,
    on: bool,
    f: impl FnOnce() -> Result<T, SqlError>,
) -> Result<T, SqlError> {
    if !on {
        return f();
    }
    trusted_exec(db, auth, c"SAVEPOINT _cf_alter_guard")?;
    let before = reserved_names(db, auth)?;
    let out = f();
    let refused = out.is_ok() && reserved_names(db, auth)? > before;
    if out.is_err() || refused {
        trusted_exec(db, auth, c"ROLLBACK TO _cf_alter_guard")?;
    }
    trusted_exec(db, auth, c"RELEASE _cf_alter_guard")?;
    if refused {
        return Err(SqlError::Sqlite(String::from(
            "not authorized: SQLITE_AUTH",
        )));
    }
    out
}

unsafe fn trusted_exec(
    db: *mut ffi::sqlite3,
    auth: &Arc<AuthState>,
    sql: &CStr,
) -> Result<(), SqlError> {
    let _trusted = auth.enter_trusted();
    let rc = ffi::sqlite3_exec(db, sql.as_ptr(), None, ptr::null_mut(), ptr::null_mut());
    if rc != ffi::SQLITE_OK {
        return Err(SqlError::Sqlite(error_message(db, rc)));
    }
    Ok(())
}

/// Schema objects whose name starts `_cf_` (any case, as `is_allowed_name` compares; not
/// `LIKE`, which the user may make case-sensitive).
unsafe fn reserved_names(db: *mut ffi::sqlite3, auth: &Arc<AuthState>) -> Result<i64, SqlError> {
    let _trusted = auth.enter_trusted();
    let sql = c"SELECT count(*) FROM sqlite_master WHERE lower(substr(name, 1, 4)) = '_cf_'";
    let mut raw: *mut ffi::sqlite3_stmt = ptr::null_mut();
    let rc = ffi::sqlite3_prepare_v2(db, sql.as_ptr(), -1, &mut raw, ptr::null_mut());
    if rc != ffi::SQLITE_OK {
        return Err(SqlError::Sqlite(error_message(db, rc)));
    }
    let stmt = Stmt(raw);
    match ffi::sqlite3_step(stmt.0) {
        ffi::SQLITE_ROW => Ok(ffi::sqlite3_column_int64(stmt.0, 0)),
        rc => Err(SqlError::Sqlite(error_message(db, rc))),
    }
}

type Stepped = (VecDeque<Vec<SqlValue>>, u64, u64);

/// Steps to completion; returns the rows (if `keep`), rows read and rows written.
///
/// Rows written are the change counter's delta (triggers included); rows read: [`rows_read`].
unsafe fn step_all(db: *mut ffi::sqlite3, stmt: &Stmt, keep: bool) -> Result<Stepped, SqlError> {
    let before = ffi::sqlite3_total_changes64(db);
    let mut rows = VecDeque::new();
    let mut returned = 0u64;
    loop {
        match ffi::sqlite3_step(stmt.0) {
            ffi::SQLITE_ROW => {
                returned += 1;
                if keep {
                    rows.push_back(read_row(stmt));
                }
            }
            ffi::SQLITE_DONE => break,
            rc => return Err(SqlError::Sqlite(error_message(db, rc))),
        }
    }
    let written = (ffi::sqlite3_total_changes64(db) - before).max(0) as u64;
    // Read and reset: a cached statement counts per run.
    let scanned =
        ffi::sqlite3_stmt_status(stmt.0, ffi::SQLITE_STMTSTATUS_FULLSCAN_STEP, 1).max(0) as u64;
    Ok((rows, rows_read(scanned, returned, written), written))
}

/// The current row's values.
pub(crate) unsafe fn read_row(stmt: &Stmt) -> Vec<SqlValue> {
    let n = ffi::sqlite3_column_count(stmt.0);
    (0..n)
        .map(|i| match ffi::sqlite3_column_type(stmt.0, i) {
            ffi::SQLITE_INTEGER => SqlValue::Integer(ffi::sqlite3_column_int64(stmt.0, i)),
            ffi::SQLITE_FLOAT => SqlValue::Real(ffi::sqlite3_column_double(stmt.0, i)),
            ffi::SQLITE_TEXT => {
                let p = ffi::sqlite3_column_text(stmt.0, i);
                let len = ffi::sqlite3_column_bytes(stmt.0, i).max(0) as usize;
                if p.is_null() {
                    SqlValue::Text(String::new())
                } else {
                    let b = std::slice::from_raw_parts(p, len);
                    SqlValue::Text(String::from_utf8_lossy(b).into_owned())
                }
            }
            ffi::SQLITE_BLOB => {
                let p = ffi::sqlite3_column_blob(stmt.0, i) as *const u8;
                let len = ffi::sqlite3_column_bytes(stmt.0, i).max(0) as usize;
                if p.is_null() {
                    SqlValue::Blob(Vec::new())
                } else {
                    SqlValue::Blob(std::slice::from_raw_parts(p, len).to_vec())
                }
            }
            _ => SqlValue::Null,
        })
        .collect()
}

unsafe fn bind(db: *mut ffi::sqlite3, stmt: &Stmt, i: c_int, v: &SqlValue) -> Result<(), SqlError> {
    let rc = match v {
        SqlValue::Null => ffi::sqlite3_bind_null(stmt.0, i),
        SqlValue::Integer(n) => ffi::sqlite3_bind_int64(stmt.0, i, *n),
        SqlValue::Real(x) => ffi::sqlite3_bind_double(stmt.0, i, *x),
        SqlValue::Text(s) => ffi::sqlite3_bind_text64(
            stmt.0,
            i,
            s.as_ptr() as *const c_char,
            s.len() as u64,
            ffi::SQLITE_TRANSIENT(),
            ffi::SQLITE_UTF8 as u8,
        ),
        // A null pointer would bind NULL, not an empty blob.
        SqlValue::Blob(b) if b.is_empty() => ffi::sqlite3_bind_zeroblob(stmt.0, i, 0),
        SqlValue::Blob(b) => ffi::sqlite3_bind_blob64(
            stmt.0,
            i,
            b.as_ptr().cast(),
            b.len() as u64,
            ffi::SQLITE_TRANSIENT(),
        ),
    };
    if rc != ffi::SQLITE_OK {
        return Err(SqlError::Sqlite(error_message(db, rc)));
    }
    Ok(())
}

/// workerd's `dbErrorMessage`: `errmsg[ at offset N]: CODE[ (extended: EXT)]`.
pub(crate) unsafe fn error_message(db: *mut ffi::sqlite3, rc: c_int) -> String {
    let msg = {
        let p = ffi::sqlite3_errmsg(db);
        if p.is_null() {
            String::from("unknown error")
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    };
    let mut out = msg;
    let offset = ffi::sqlite3_error_offset(db);
    if offset != -1 {
        out.push_str(&format!(" at offset {offset}"));
    }
    let primary = rc & 0xff;
    out.push_str(": ");
    out.push_str(code_name(primary));
    let ext = ffi::sqlite3_extended_errcode(db);
    if ext != primary {
        if let Some(name) = extended_name(ext) {
            out.push_str(&format!(" (extended: {name})"));
        }
    }
    out
}

fn code_name(code: c_int) -> &'static str {
    match code {
        ffi::SQLITE_OK => "SQLITE_OK",
        ffi::SQLITE_ERROR => "SQLITE_ERROR",
        ffi::SQLITE_INTERNAL => "SQLITE_INTERNAL",
        ffi::SQLITE_PERM => "SQLITE_PERM",
        ffi::SQLITE_ABORT => "SQLITE_ABORT",
        ffi::SQLITE_BUSY => "SQLITE_BUSY",
        ffi::SQLITE_LOCKED => "SQLITE_LOCKED",
        ffi::SQLITE_NOMEM => "SQLITE_NOMEM",
        ffi::SQLITE_READONLY => "SQLITE_READONLY",
        ffi::SQLITE_INTERRUPT => "SQLITE_INTERRUPT",
        ffi::SQLITE_IOERR => "SQLITE_IOERR",
        ffi::SQLITE_CORRUPT => "SQLITE_CORRUPT",
        ffi::SQLITE_NOTFOUND => "SQLITE_NOTFOUND",
        ffi::SQLITE_FULL => "SQLITE_FULL",
        ffi::SQLITE_CANTOPEN => "SQLITE_CANTOPEN",
        ffi::SQLITE_PROTOCOL => "SQLITE_PROTOCOL",
        ffi::SQLITE_EMPTY => "SQLITE_EMPTY",
        ffi::SQLITE_SCHEMA => "SQLITE_SCHEMA",
        ffi::SQLITE_TOOBIG => "SQLITE_TOOBIG",
        ffi::SQLITE_CONSTRAINT => "SQLITE_CONSTRAINT",
        ffi::SQLITE_MISMATCH => "SQLITE_MISMATCH",
        ffi::SQLITE_MISUSE => "SQLITE_MISUSE",
        ffi::SQLITE_NOLFS => "SQLITE_NOLFS",
        ffi::SQLITE_AUTH => "SQLITE_AUTH",
        ffi::SQLITE_FORMAT => "SQLITE_FORMAT",
        ffi::SQLITE_RANGE => "SQLITE_RANGE",
        ffi::SQLITE_NOTADB => "SQLITE_NOTADB",
        ffi::SQLITE_NOTICE => "SQLITE_NOTICE",
        ffi::SQLITE_WARNING => "SQLITE_WARNING",
        ffi::SQLITE_ROW => "SQLITE_ROW",
        ffi::SQLITE_DONE => "SQLITE_DONE",
        _ => "(unknown error code)",
    }
}

fn extended_name(code: c_int) -> Option<&'static str> {
    Some(match code {
        ffi::SQLITE_CONSTRAINT_CHECK => "SQLITE_CONSTRAINT_CHECK",
        ffi::SQLITE_CONSTRAINT_COMMITHOOK => "SQLITE_CONSTRAINT_COMMITHOOK",
        ffi::SQLITE_CONSTRAINT_FOREIGNKEY => "SQLITE_CONSTRAINT_FOREIGNKEY",
        ffi::SQLITE_CONSTRAINT_FUNCTION => "SQLITE_CONSTRAINT_FUNCTION",
        ffi::SQLITE_CONSTRAINT_NOTNULL => "SQLITE_CONSTRAINT_NOTNULL",
        ffi::SQLITE_CONSTRAINT_PRIMARYKEY => "SQLITE_CONSTRAINT_PRIMARYKEY",
        ffi::SQLITE_CONSTRAINT_TRIGGER => "SQLITE_CONSTRAINT_TRIGGER",
        ffi::SQLITE_CONSTRAINT_UNIQUE => "SQLITE_CONSTRAINT_UNIQUE",
        ffi::SQLITE_CONSTRAINT_VTAB => "SQLITE_CONSTRAINT_VTAB",
        ffi::SQLITE_CONSTRAINT_ROWID => "SQLITE_CONSTRAINT_ROWID",
        ffi::SQLITE_CONSTRAINT_DATATYPE => "SQLITE_CONSTRAINT_DATATYPE",
        ffi::SQLITE_IOERR_READ => "SQLITE_IOERR_READ",
        ffi::SQLITE_IOERR_SHORT_READ => "SQLITE_IOERR_SHORT_READ",
        ffi::SQLITE_IOERR_WRITE => "SQLITE_IOERR_WRITE",
        ffi::SQLITE_IOERR_TRUNCATE => "SQLITE_IOERR_TRUNCATE",
        ffi::SQLITE_CORRUPT_INDEX => "SQLITE_CORRUPT_INDEX",
        ffi::SQLITE_READONLY_DBMOVED => "SQLITE_READONLY_DBMOVED",
        _ => return None,
    })
}
