//! D1's errors, with the prefixes and texts Cloudflare's binding (workerd `d1-api.ts`) throws.

/// An error of a D1 call. `Display` is the full message the JS binding throws as `Error`
/// (`D1_ERROR: no such table: t: SQLITE_ERROR`...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum D1Error {
    /// A query or batch failed (SQL error, constraint, limit): nothing of it was applied.
    /// Holds the database's message (workerd's SQLite texts, `no such table: t: SQLITE_ERROR`).
    #[error("D1_ERROR: {0}")]
    Query(String),
    /// `exec()` failed at statement `line` (1-based) whose text is `statement`; nothing of the
    /// `exec()` was applied.
    #[error("D1_EXEC_ERROR: Error in line {line}: {statement}: {message}")]
    Exec {
        line: usize,
        statement: String,
        message: String,
    },
    /// `bind()` got a value D1 cannot store (`undefined`, a function, a symbol, an object...).
    /// The binding raises this itself; [`D1Error::type_error`] builds it.
    #[error("D1_TYPE_ERROR: Type '{ty}' not supported for value '{value}'")]
    Type { ty: String, value: String },
    /// `first(column)` named a column the row does not have.
    #[error("D1_COLUMN_NOTFOUND: Column not found ({0})")]
    ColumnNotFound(String),
    /// `dump()` failed.
    #[error("D1_DUMP_ERROR: {0}")]
    Dump(String),
    /// `withSession()` got an empty or malformed constraint or bookmark.
    #[error("D1_SESSION_ERROR: {0}")]
    Session(String),
}

impl D1Error {
    /// The `D1_TYPE_ERROR` for a JS value of `typeof` `ty` printed as `value` (`String(v)`).
    pub fn type_error(ty: &str, value: &str) -> D1Error {
        D1Error::Type {
            ty: ty.to_owned(),
            value: value.to_owned(),
        }
    }

    /// The message without its `D1_…:` prefix (what D1 puts in `error.cause.message`).
    pub fn cause(&self) -> String {
        let full = self.to_string();
        match full.split_once(": ") {
            Some((_, rest)) => rest.to_owned(),
            None => full,
        }
    }
}

/// `withSession()` with an empty constraint or bookmark (workerd's text).
pub const INVALID_SESSION: &str = "invalid bookmark or constraint";
/// A query list with no statement in it (Miniflare's text).
pub const NO_STATEMENTS: &str = "No SQL statements detected.";
