//! [`KvError`]: every error of the KV engine, carrying the texts a Worker sees on Cloudflare.
//!
//! workerd checks key names in the binding (`TypeError`s and the 414) and turns every other
//! failure of the KV service into `Error: KV <OP> failed: <status> <message>`; the messages here
//! are those of Cloudflare's service as miniflare reproduces them.

use crate::limits::MAX_KEY_BYTES;

/// Which JavaScript error class a [`KvError`] becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// `TypeError` (a key name the binding refuses).
    TypeError,
    /// A plain `Error`.
    Error,
}

/// An error of a KV operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// `""` as a key.
    #[error("Key name cannot be empty.")]
    EmptyKey,
    /// `"."` or `".."` as a key.
    #[error("\"{0}\" is not allowed as a key name.")]
    DotKey(&'static str),
    /// A key longer than 512 UTF-8 bytes.
    #[error("KV {op} failed: 414 UTF-8 encoded length of {len} exceeds key length limit of {MAX_KEY_BYTES}.")]
    KeyTooLong {
        /// `GET`, `PUT`, `DELETE`.
        op: &'static str,
        /// The key's length in bytes.
        len: usize,
    },
    /// The service refused the request (bad option, value too large...).
    #[error("KV {op} failed: {status} {message}")]
    Failed {
        /// `GET`, `GET_BULK`, `PUT`, `DELETE` (a `list()` reports `GET`, as in workerd).
        op: &'static str,
        /// The HTTP status Cloudflare's service answers.
        status: u16,
        /// Its status text.
        message: String,
    },
    /// The invocation used up its operations (1,000 by default).
    #[error("Too many API requests by single worker invocation.")]
    TooManyOperations,
    /// [`crate::Kv::attach`] was not called.
    #[error("the KV engine is not attached to a runtime")]
    NotAttached,
    /// The internal object failed (runtime shut down, storage failure...). Cloudflare would
    /// answer 500; the text says what happened here.
    #[error("KV {op} failed: 500 {message}")]
    Internal {
        /// The operation.
        op: &'static str,
        /// What went wrong.
        message: String,
    },
}

impl KvError {
    /// The JavaScript error class to throw.
    pub fn kind(&self) -> ErrorKind {
        match self {
            KvError::EmptyKey | KvError::DotKey(_) => ErrorKind::TypeError,
            _ => ErrorKind::Error,
        }
    }

    pub(crate) fn failed(op: &'static str, status: u16, message: impl Into<String>) -> KvError {
        KvError::Failed {
            op,
            status,
            message: message.into(),
        }
    }

    pub(crate) fn internal(op: &'static str, message: impl std::fmt::Display) -> KvError {
        KvError::Internal {
            op,
            message: message.to_string(),
        }
    }
}
