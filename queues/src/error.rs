//! [`QueueError`]: errors of producers and of consumer configuration, with the texts
//! Cloudflare's Queues service uses (as miniflare reproduces them).

use crate::limits::{MAX_BATCH_BYTES, MAX_BATCH_MESSAGES, MAX_DELAY_S, MAX_MESSAGE_BYTES};

/// An error of a queue operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// A message body over 128 KB.
    #[error("message length of {0} bytes exceeds limit of {MAX_MESSAGE_BYTES}")]
    MessageTooLarge(usize),
    /// A `sendBatch` of more than 100 messages.
    #[error("batch message count of {0} exceeds limit of {MAX_BATCH_MESSAGES}")]
    TooManyMessages(usize),
    /// A `sendBatch` over 256 KB in total.
    #[error("batch size of {0} bytes exceeds limit of {MAX_BATCH_BYTES}")]
    BatchTooLarge(usize),
    /// A `sendBatch` with no message.
    #[error("sendBatch() requires at least one message")]
    EmptyBatch,
    /// A `contentType` other than text, json, bytes or v8.
    #[error("message content type {0} is invalid; if specified, must be one of 'text', 'json', 'bytes', or 'v8'")]
    ContentType(String),
    /// `delaySeconds` outside 0..=86400.
    #[error("message delay {0} is invalid: delaySeconds must be between 0 and {MAX_DELAY_S}")]
    Delay(i64),
    /// A consumer setting out of range.
    #[error("invalid queue consumer setting: {0}")]
    Settings(String),
    /// [`crate::Queues::attach`] was not called.
    #[error("the queues engine is not attached to a runtime")]
    NotAttached,
    /// The queue's object failed (runtime shutting down, storage failure).
    #[error("Queue send failed: {0}")]
    Internal(String),
}
