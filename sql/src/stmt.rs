//! Running user SQL: several statements per call, bindings on the last, rows of the last.
//!
//! Written on the raw C API because `exec()` needs what rusqlite keeps private: the tail of
//! the text after each statement (to know which statement is last before running it), the
//! statement's parameter count before binding, and per-statement status counters.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::ffi::{c_char, c_int, CStr};
use std::ptr;
use std::sync::Arc;

use libsqlite3_sys as ffi;

use crate::auth::AuthState;
use crate::cursor::{Cursor, SqlValue};
use crate::error::{SqlError, MULTI_PARAMS, NO_STATEMENT, TRANSACTION_REFUSED, WRONG_BINDINGS};

/// Finalizes the statement on every path out.
pub(crate) struct Stmt(*mut ffi::sqlite3_stmt);

impl Drop for Stmt {
    fn drop(&mut self) {
        unsafe { ffi::sqlite3_finalize(self.0) };
    }
}

// SAFETY: a statement is used only together with its connection, and both live in the same
// `SqlStorage`, which moves between threads as a whole and is never shared (`!Sync`).
unsafe impl Send for Stmt {}

/// Prepared single-statement queries of `exec()`, by SQL text (workerd caches them too): a
/// counter's `UPDATE` is parsed and authorized once, not per call. Kept apart from rusqlite's
/// cache, which holds the engine's trusted statements: user text equal to an engine statement
/// must never reuse a statement the authorizer passed in trusted mode.
#[derive(Default)]
pub(crate) struct StmtCache {
    map: HashMap<String, Stmt>,
    order: VecDeque<String>,
}

const CACHE_ENTRIES: usize = 64;

impl StmtCache {
    fn take(&mut self, sql: &str) -> Option<Stmt> {
        self.map.remove(sql)
    }

    fn put(&mut self, sql: &str, stmt: Stmt) {
        if !self.order.iter().any(|k| k == sql) {
            self.order.push_back(sql.to_owned());
        }
        self.map.insert(sql.to_owned(), stmt);
        while self.order.len() > CACHE_ENTRIES {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }

    /// Finalizes every statement (before the connection closes).
    pub(crate) fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
    }
}

/// Binds and runs the last (or only) statement of an `exec()`.
unsafe fn run_last(
    db: *mut ffi::sqlite3,
    stmt: &Stmt,
    bindings: &[SqlValue],
    rows_read: u64,
    rows_written: u64,
) -> Result<Cursor, SqlError> {
    let params = ffi::sqlite3_bind_parameter_count(stmt.0) as usize;
    if params != bindings.len() {
        return Err(SqlError::Api(WRONG_BINDINGS));
    }
    for (i, v) in bindings.iter().enumerate() {
        bind(db, stmt, i as c_int + 1, v)?;
    }
    let (rows, r, w) = step_all(db, stmt, true)?;
    // After stepping: a schema change re-prepares the statement during the first step.
    let n = ffi::sqlite3_column_count(stmt.0);
    let columns: Arc<[String]> = (0..n)
        .map(|i| {
            let p = ffi::sqlite3_column_name(stmt.0, i);
            if p.is_null() {
                String::new()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        })
        .collect();
    Ok(Cursor {
        columns,
        rows,
        rows_read: rows_read + r,
        rows_written: rows_written + w,
    })
}

/// Runs `sql` (one or more statements) as user SQL; returns the last statement's rows.
///
/// # Safety
/// `db` must be a valid open connection used by this thread only for the duration.
pub(crate) unsafe fn run(
    db: *mut ffi::sqlite3,
    auth: &Arc<AuthState>,
    cache: &RefCell<StmtCache>,
    sql: &str,
    bindings: &[SqlValue],
) -> Result<Cursor, SqlError> {
    let cached = cache.borrow_mut().take(sql);
    if let Some(stmt) = cached {
        ffi::sqlite3_reset(stmt.0);
        ffi::sqlite3_clear_bindings(stmt.0);
        let out = run_last(db, &stmt, bindings, 0, 0);
        ffi::sqlite3_reset(stmt.0);
        cache.borrow_mut().put(sql, stmt);
        return out;
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
            let (_, r, w) = guard_rename(db, auth, altered, || step_all(db, &stmt, false))?;
            rows_read += r;
            rows_written += w;
            continue;
        }
        let single = consumed == bytes.len() || rest.as_ptr() == bytes.as_ptr();
        let out = guard_rename(db, auth, altered, || {
            run_last(db, &stmt, bindings, rows_read, rows_written)
        });
        ffi::sqlite3_reset(stmt.0);
        // A guarded statement is never cached: its guard is decided at prepare time.
        if single && out.is_ok() && !altered {
            cache.borrow_mut().put(sql, stmt);
        }
        return out;
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
/// Rows written are the change counter's delta (triggers included). Rows read approximate
/// workerd's patched counters: full-scan steps plus rows returned plus rows changed (each
/// changed row was read to be changed).
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
    Ok((rows, scanned + returned + written, written))
}

unsafe fn read_row(stmt: &Stmt) -> Vec<SqlValue> {
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
