//! Values, rows and the cursor `exec()` returns.
//!
//! A cursor over a read-only statement *streams*: `exec()` steps SQLite once (so errors of the
//! first step surface there, as in workerd) and every [`Cursor::next_row`] hands out the current
//! row and steps one ahead, so a `SELECT` over a million rows that stops after ten rows has read
//! about ten. A statement that writes runs to completion inside `exec()` and its rows are
//! buffered: its changes must be committed before the turn can end (an unfinished write
//! statement would keep SQLite's transaction open past the flush).
//!
//! Cursors are `'static`: a streaming cursor owns its prepared statement and holds only a weak
//! reference to the connection. Several cursors may stream at once (an in-JS nested-loop join
//! works, as on workerd); re-running the same SQL while a cursor over it is unfinished compiles
//! a one-off copy of the statement instead of touching the running one. When the database is
//! deleted (`deleteAll()`) or closed (the object is reset or dropped), every unfinished cursor
//! is stopped first — its statement finalized while the connection still exists — and its next
//! read fails with [`CANCELED_DELETED`] or [`CANCELED_CLOSED`].

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::{Rc, Weak};
use std::sync::Arc;

use libsqlite3_sys as ffi;

use crate::db::Inner;
use crate::error::{SqlError, ONE_MANY, ONE_NONE};
use crate::stmt::{self, SlotRef, Stmt};

/// workerd's text when a query outlives the database it read (`deleteAll()`).
pub const CANCELED_DELETED: &str = "SQLite query was canceled because the database was deleted.";
/// A cursor read after its database was closed (the object was reset or dropped). Ours: workerd
/// has no such state, its cursors die with the isolate's I/O context.
pub const CANCELED_CLOSED: &str = "SQLite query was canceled because the database was closed.";

/// A SQLite value, as bound to a statement or read from a row. The JS layer maps integers and
/// reals to numbers (and rejects integers beyond 2^53, as workerd does); Rust keeps the type.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl From<i64> for SqlValue {
    fn from(v: i64) -> Self {
        Self::Integer(v)
    }
}
impl From<f64> for SqlValue {
    fn from(v: f64) -> Self {
        Self::Real(v)
    }
}
impl From<&str> for SqlValue {
    fn from(v: &str) -> Self {
        Self::Text(v.to_owned())
    }
}
impl From<String> for SqlValue {
    fn from(v: String) -> Self {
        Self::Text(v)
    }
}
impl From<Vec<u8>> for SqlValue {
    fn from(v: Vec<u8>) -> Self {
        Self::Blob(v)
    }
}
impl<T: Into<SqlValue>> From<Option<T>> for SqlValue {
    fn from(v: Option<T>) -> Self {
        v.map_or(Self::Null, Into::into)
    }
}

impl SqlValue {
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Self::Integer(i) => Some(*i),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Text(s) => Some(s),
            _ => None,
        }
    }
}

/// One row of a result, with its column names (shared by every row of the cursor).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    columns: Arc<[String]>,
    values: Vec<SqlValue>,
}

impl Row {
    /// The value of the named column. With duplicate names (a join), the last one wins, as in
    /// the object workerd builds for a row.
    pub fn get(&self, column: &str) -> Option<&SqlValue> {
        self.columns
            .iter()
            .rposition(|c| c == column)
            .map(|i| &self.values[i])
    }
    pub fn values(&self) -> &[SqlValue] {
        &self.values
    }
    pub fn into_values(self) -> Vec<SqlValue> {
        self.values
    }
    pub fn columns(&self) -> &[String] {
        &self.columns
    }
}

/// The result of `exec()`: the rows of the last statement, in order.
///
/// Over a read-only statement it streams: `exec()` steps SQLite once (errors of the first
/// step surface there, as in workerd) and each [`Cursor::next_row`] hands out the current row
/// and steps one ahead, so `rows_read` grows as rows are pulled. A statement that writes ran to
/// completion inside `exec()` and its rows are buffered. Cursors are `'static` (no borrow of
/// the [`crate::SqlStorage`]); several may stream at once, and re-running the same SQL while
/// one is unfinished compiles a one-off copy. `deleteAll()` or closing the database stops
/// unfinished cursors: their next read fails with [`CANCELED_DELETED`] or [`CANCELED_CLOSED`].
pub struct Cursor {
    pub(crate) columns: Arc<[String]>,
    /// Rows of a statement that ran to completion in `exec()`.
    pub(crate) rows: VecDeque<Vec<SqlValue>>,
    pub(crate) rows_read: u64,
    pub(crate) rows_written: u64,
    /// The statement still being stepped, shared with the connection's registry of live
    /// queries so that deleting or closing the database can stop it.
    pub(crate) live: Option<Rc<RefCell<LiveState>>>,
}

impl std::fmt::Debug for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cursor")
            .field("columns", &self.columns)
            .field("buffered", &self.rows.len())
            .field("streaming", &self.live.is_some())
            .finish_non_exhaustive()
    }
}

impl Cursor {
    /// Column names of the last statement (also for an empty or consumed result).
    pub fn column_names(&self) -> &[String] {
        &self.columns
    }

    /// Rows visited so far by all statements of the `exec()` (see the crate doc for how it is
    /// counted); grows as a streaming cursor is read.
    pub fn rows_read(&self) -> u64 {
        match &self.live {
            Some(l) => l.borrow().rows_read,
            None => self.rows_read,
        }
    }

    /// Rows inserted, updated or deleted by all statements of the `exec()`.
    pub fn rows_written(&self) -> u64 {
        match &self.live {
            Some(l) => l.borrow().rows_written,
            None => self.rows_written,
        }
    }

    /// The next row's values (`cursor.raw().next()`), or `None` at the end. A streaming cursor
    /// steps SQLite here: errors of later steps, and reads after the database was deleted or
    /// closed, surface as `Err`.
    pub fn next_row(&mut self) -> Result<Option<Vec<SqlValue>>, SqlError> {
        if let Some(row) = self.rows.pop_front() {
            return Ok(Some(row));
        }
        match &self.live {
            Some(l) => l.borrow_mut().advance(),
            None => Ok(None),
        }
    }

    /// The next row with its column names (`cursor.next()`).
    pub fn next_named(&mut self) -> Result<Option<Row>, SqlError> {
        Ok(self.next_row()?.map(|values| Row {
            columns: self.columns.clone(),
            values,
        }))
    }

    /// Whether another row may follow (a streaming cursor is always one row ahead, as
    /// workerd's is, so this is exact).
    pub fn has_more(&self) -> bool {
        !self.rows.is_empty()
            || self
                .live
                .as_ref()
                .is_some_and(|l| l.borrow().query.is_some())
    }

    /// The remaining rows (`cursor.toArray()`).
    pub fn to_array(&mut self) -> Result<Vec<Row>, SqlError> {
        let mut out = Vec::new();
        while let Some(row) = self.next_named()? {
            out.push(row);
        }
        Ok(out)
    }

    /// The remaining rows as bare value arrays (`cursor.raw()`); shares the position.
    pub fn raw(&mut self) -> Raw<'_> {
        Raw { cursor: self }
    }

    /// The only remaining row; an error with Cloudflare's text if there are none or several
    /// (the cursor is closed in both cases).
    pub fn one(&mut self) -> Result<Row, SqlError> {
        let row = self.next_named()?.ok_or(SqlError::Api(ONE_NONE))?;
        if self.has_more() {
            self.close();
            return Err(SqlError::Api(ONE_MANY));
        }
        Ok(row)
    }

    /// Stops reading: drops buffered rows and ends a streaming statement (its counters stay).
    pub fn close(&mut self) {
        self.rows.clear();
        if let Some(l) = &self.live {
            l.borrow_mut().finish();
        }
    }
}

impl Iterator for Cursor {
    type Item = Result<Row, SqlError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_named().transpose()
    }
}

/// Iterator of [`Cursor::raw`].
pub struct Raw<'a> {
    cursor: &'a mut Cursor,
}

impl Iterator for Raw<'_> {
    type Item = Result<Vec<SqlValue>, SqlError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.cursor.next_row().transpose()
    }
}

/// The shared state of a streaming cursor.
pub(crate) struct LiveState {
    /// `None` once the statement is done, failed, or was canceled.
    pub(crate) query: Option<LiveQuery>,
    pub(crate) rows_read: u64,
    pub(crate) rows_written: u64,
    /// Why the statement was stopped from outside, if it was.
    pub(crate) canceled: Option<&'static str>,
}

/// A statement positioned on its current (not yet handed out) row.
pub(crate) struct LiveQuery {
    pub(crate) stmt: Stmt,
    /// Where the statement goes back to once done (single-statement SQL only).
    pub(crate) cache_key: Option<SlotRef>,
    pub(crate) conn: Weak<Inner>,
    /// Rows read and written by the earlier statements of the same `exec()`.
    pub(crate) base_read: u64,
    pub(crate) base_written: u64,
    /// Rows this statement has produced so far (the current one included).
    pub(crate) returned: u64,
}

impl LiveState {
    fn advance(&mut self) -> Result<Option<Vec<SqlValue>>, SqlError> {
        let Some(q) = self.query.as_mut() else {
            return match self.canceled {
                Some(why) => Err(SqlError::Api(why)),
                None => Ok(None),
            };
        };
        let Some(inner) = q.conn.upgrade() else {
            // Unreachable in practice (closing the connection cancels every live query first),
            // but a dangling statement must never be stepped.
            self.query = None;
            self.canceled = Some(CANCELED_CLOSED);
            return Err(SqlError::Api(CANCELED_CLOSED));
        };
        // SAFETY: the statement belongs to `inner`'s connection, which is alive (upgraded) and
        // used only on this thread.
        let row = unsafe { stmt::read_row(&q.stmt) };
        let rc = unsafe { inner.step_user(&q.stmt) };
        match rc {
            ffi::SQLITE_ROW => {
                q.returned += 1;
                self.count();
                Ok(Some(row))
            }
            ffi::SQLITE_DONE => {
                self.finish();
                Ok(Some(row))
            }
            rc => {
                let msg = unsafe { stmt::error_message(inner.handle(), rc) };
                self.finish();
                Err(SqlError::Sqlite(msg))
            }
        }
    }

    /// Refreshes the counters from the statement.
    pub(crate) fn count(&mut self) {
        if let Some(q) = &self.query {
            let scanned = unsafe {
                ffi::sqlite3_stmt_status(q.stmt.0, ffi::SQLITE_STMTSTATUS_FULLSCAN_STEP, 0)
            }
            .max(0) as u64;
            self.rows_read = q.base_read + stmt::rows_read(scanned, q.returned, 0);
            self.rows_written = q.base_written;
        }
    }

    /// Ends the statement (returning it to the statement cache when it came from there).
    pub(crate) fn finish(&mut self) {
        self.count();
        self.query = None;
    }
}

impl Drop for LiveQuery {
    fn drop(&mut self) {
        // Back to the cache if the connection is still open; otherwise `Stmt` finalizes it
        // (always before the connection closes: closing cancels live queries first).
        let Some(key) = self.cache_key.take() else {
            return;
        };
        let Some(inner) = self.conn.upgrade() else {
            return;
        };
        let stmt = std::mem::replace(&mut self.stmt, Stmt(std::ptr::null_mut()));
        inner.return_to_cache(key, stmt);
    }
}
