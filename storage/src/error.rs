//! Errors of the storage layer, carrying Cloudflare's exact texts for limit errors.

use crate::limits::{MAX_KEYS_PER_CALL, MAX_KEY_BYTES, MAX_VALUE_BYTES};

/// Which JavaScript error class the JS layer should throw for a [`StorageError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// `RangeError`: a size or count limit was exceeded.
    RangeError,
    /// `TypeError`: an argument has the wrong shape (e.g. `limit: 0`).
    TypeError,
    /// A plain `Error` thrown by the API itself (e.g. misuse of a transaction).
    Error,
    /// Storage failure (I/O, corruption, failed fsync). The object should be reset.
    Internal,
}

/// An error of the storage layer. Limit errors are raised before anything is buffered, so a
/// call that fails with one changes nothing.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StorageError {
    #[error(
        "Keys cannot be larger than {MAX_KEY_BYTES} bytes. A key of size {size} was provided."
    )]
    KeyTooLarge { size: usize },
    #[error(
        "Values cannot be larger than {MAX_VALUE_BYTES} bytes. A value of size {size} was provided."
    )]
    ValueTooLarge { size: usize },
    #[error(
        "Maximum number of key value pairs is {MAX_KEYS_PER_CALL}. {count} pairs were provided."
    )]
    TooManyKeys { count: usize },
    #[error("List limit must be positive.")]
    ListLimit,
    #[error("list() cannot be called with both start and startAfter values.")]
    StartAndStartAfter,
    #[error("setAlarm() cannot be called with an alarm time <= 0")]
    AlarmTime,
    #[error("Cannot call deleteAll() within a transaction")]
    DeleteAllInTransaction,
    #[error("Cannot {op} on rolled back transaction")]
    RolledBack { op: &'static str },
    /// fjall reported an error (I/O, poisoned database after a failed fsync...).
    #[error("storage failure: {0}")]
    Engine(String),
    /// The batch was committed but could not be made durable; its effects must be treated as
    /// lost, and every later batch fails too.
    #[error("storage durability failure: {0}")]
    Durability(String),
    /// An internal record (alarm entry, metadata) failed to decode.
    #[error("corrupt storage record: {0}")]
    Corrupt(String),
    /// The store was shut down while the batch waited for durability.
    #[error("storage is shutting down")]
    Closed,
    /// The caller's object was reset: its storage handle takes no more calls. The text is the
    /// reason of the reset.
    #[error("{0}")]
    Reset(String),
}

impl StorageError {
    /// The JavaScript error class this error maps to.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::KeyTooLarge { .. } | Self::ValueTooLarge { .. } | Self::TooManyKeys { .. } => {
                ErrorKind::RangeError
            }
            Self::ListLimit | Self::StartAndStartAfter | Self::AlarmTime => ErrorKind::TypeError,
            Self::DeleteAllInTransaction | Self::RolledBack { .. } => ErrorKind::Error,
            Self::Engine(_)
            | Self::Durability(_)
            | Self::Corrupt(_)
            | Self::Closed
            | Self::Reset(_) => ErrorKind::Internal,
        }
    }
}

impl From<fjall::Error> for StorageError {
    fn from(e: fjall::Error) -> Self {
        Self::Engine(e.to_string())
    }
}
