//! Values, rows and the cursor `exec()` returns.

use std::sync::Arc;

use crate::error::{SqlError, ONE_MANY, ONE_NONE};

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
/// Every statement has run to completion when `exec()` returns (a Rust cursor cannot hold the
/// connection across turns), so `rows_read`/`rows_written` are final at once and iteration
/// cannot fail midway.
#[derive(Debug, Clone, PartialEq)]
pub struct Cursor {
    pub(crate) columns: Arc<[String]>,
    pub(crate) rows: std::collections::VecDeque<Vec<SqlValue>>,
    pub(crate) rows_read: u64,
    pub(crate) rows_written: u64,
}

impl Cursor {
    /// Column names of the last statement (also for an empty result).
    pub fn column_names(&self) -> &[String] {
        &self.columns
    }
    /// Rows visited by all statements of the `exec()` (see the crate doc for how it is counted).
    pub fn rows_read(&self) -> u64 {
        self.rows_read
    }
    /// Rows inserted, updated or deleted by all statements of the `exec()`.
    pub fn rows_written(&self) -> u64 {
        self.rows_written
    }
    /// The remaining rows.
    pub fn to_array(self) -> Vec<Row> {
        self.collect()
    }
    /// The remaining rows as bare value arrays (`cursor.raw()`).
    pub fn raw(self) -> impl Iterator<Item = Vec<SqlValue>> {
        self.rows.into_iter()
    }
    /// The only remaining row; an error with Cloudflare's text if there are none or several.
    pub fn one(mut self) -> Result<Row, SqlError> {
        let row = self.next().ok_or(SqlError::Api(ONE_NONE))?;
        if !self.rows.is_empty() {
            return Err(SqlError::Api(ONE_MANY));
        }
        Ok(row)
    }
}

impl Iterator for Cursor {
    type Item = Row;
    fn next(&mut self) -> Option<Row> {
        self.rows.pop_front().map(|values| Row {
            columns: self.columns.clone(),
            values,
        })
    }
}
