//! Errors: what object code throws ([`ActorError`]) and what a caller of an object sees
//! ([`ObjectError`]).

use std::fmt;

use cinder_storage::{ErrorKind, StorageError};

/// Cloudflare's message when an object's event queue is full.
pub const OVERLOADED_MESSAGE: &str = "Durable Object is overloaded. Too many requests queued.";

/// Cloudflare's message when `blockConcurrencyWhile()` runs past its deadline.
pub const BLOCK_CONCURRENCY_TIMEOUT_MESSAGE: &str = "A call to blockConcurrencyWhile() in a Durable Object waited for too long. The call was canceled and the Durable Object was reset.";

/// An error thrown by object code (a handler, the constructor, a critical section). `Send`, so
/// it can travel back to the caller's thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActorError {
    /// The JavaScript error class name (`"Error"`, `"TypeError"`, `"RangeError"`...).
    pub name: String,
    /// The message.
    pub message: String,
}

impl ActorError {
    /// A plain `Error` with `message`.
    pub fn new(message: impl Into<String>) -> ActorError {
        ActorError {
            name: "Error".into(),
            message: message.into(),
        }
    }

    /// An error of class `name` (`"TypeError"`...).
    pub fn with_name(name: impl Into<String>, message: impl Into<String>) -> ActorError {
        ActorError {
            name: name.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ActorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.name == "Error" {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.name, self.message)
        }
    }
}

impl std::error::Error for ActorError {}

impl From<StorageError> for ActorError {
    fn from(e: StorageError) -> ActorError {
        let name = match e.kind() {
            ErrorKind::RangeError => "RangeError",
            ErrorKind::TypeError => "TypeError",
            ErrorKind::Error | ErrorKind::Internal => "Error",
        };
        ActorError::with_name(name, e.to_string())
    }
}

impl From<crate::gate::GateBroken> for ActorError {
    fn from(e: crate::gate::GateBroken) -> ActorError {
        ActorError::new(e.0.to_string())
    }
}

/// What a caller of an object ([`crate::Stub`]) gets when the event did not produce a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjectError {
    /// The object's event queue is full (`.overloaded = true` in JS).
    #[error("{OVERLOADED_MESSAGE}")]
    Overloaded,
    /// Object code threw (`.remote = true` in JS).
    #[error("{0}")]
    Remote(ActorError),
    /// The object was reset (a write failed, a critical section failed or timed out, its code
    /// panicked) while the event was queued or running; nothing it sent after its last durable
    /// write left. Safe to retry.
    #[error("{0}")]
    Reset(String),
    /// No namespace of that name is registered with the runtime.
    #[error("no Durable Object namespace named {0:?}")]
    UnknownNamespace(String),
    /// The stub's id does not belong to the namespace it was used with (an id minted by
    /// another class, or of another jurisdiction than a scoped namespace's). A `TypeError` in
    /// JS; the text is workerd's where it has one. Nothing was delivered.
    #[error("{0}")]
    InvalidId(String),
    /// The runtime is shutting down.
    #[error("the Durable Object runtime is shutting down")]
    Shutdown,
}

impl ObjectError {
    /// JS `.overloaded`.
    pub fn is_overloaded(&self) -> bool {
        matches!(self, ObjectError::Overloaded)
    }

    /// JS `.remote`: the error came from the object's own code.
    pub fn is_remote(&self) -> bool {
        matches!(self, ObjectError::Remote(_))
    }

    /// JS `.retryable`: the object did not observe the event, or its effects were dropped.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ObjectError::Reset(_))
    }
}
