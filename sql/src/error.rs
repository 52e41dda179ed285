//! Errors of the SQL engine, with Cloudflare's texts where Cloudflare has them.

use cinder_storage::{ErrorKind, StorageError};

/// An error of the SQL API. [`SqlError::kind`] tells the JS layer which error class to throw.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SqlError {
    /// SQLite refused or failed a statement. The text is workerd's: SQLite's message,
    /// `" at offset N"` when SQLite knows where, then `": SQLITE_CODE"` (e.g.
    /// `no such table: t: SQLITE_ERROR`, `not authorized: SQLITE_AUTH`).
    #[error("{0}")]
    Sqlite(String),
    /// The SQL API itself refused the call (transaction statements inside `exec`, wrong number
    /// of bindings, `one()` on a result that is not one row...). Cloudflare's text.
    #[error("{0}")]
    Api(&'static str),
    /// A KV-API limit or argument error, or a storage failure below the VFS.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl SqlError {
    /// The JavaScript error class this maps to (`Error` for SQL errors, as in workerd).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Sqlite(_) | Self::Api(_) => ErrorKind::Error,
            Self::Storage(e) => e.kind(),
        }
    }
}

/// Text of the error for `BEGIN`/`COMMIT`/`ROLLBACK`/`SAVEPOINT` inside `exec()`
/// (workerd `SqlStorageRegulator::allowTransactions`).
pub const TRANSACTION_REFUSED: &str = "To execute a transaction, please use the state.storage.transaction() or state.storage.transactionSync() APIs instead of the SQL BEGIN TRANSACTION or SAVEPOINT statements. The JavaScript API is safer because it will automatically roll back on exceptions, and because it interacts correctly with Durable Objects' automatic atomic write coalescing.";
/// `exec()` with text that holds no statement.
pub const NO_STATEMENT: &str = "SQL code did not contain a statement.";
/// A non-final statement of a multi-statement `exec()` has parameters.
pub const MULTI_PARAMS: &str =
    "When executing multiple SQL statements in a single call, only the last statement can have parameters.";
/// Bindings do not match the statement's parameters.
pub const WRONG_BINDINGS: &str = "Wrong number of parameter bindings for SQL query.";
/// `one()` on an empty result.
pub const ONE_NONE: &str = "Expected exactly one result from SQL query, but got no results.";
/// `one()` on a result of several rows.
pub const ONE_MANY: &str = "Expected exactly one result from SQL query, but got multiple results.";
