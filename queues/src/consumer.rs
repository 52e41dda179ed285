//! What the host provides to consume a queue ([`QueueConsumer`]) and what goes back and forth:
//! [`MessageBatch`] out, [`BatchOutcome`] back.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;

use crate::error::QueueError;
use crate::limits::{
    DEFAULT_BATCH_SIZE, DEFAULT_BATCH_TIMEOUT_S, DEFAULT_RETRIES, MAX_BATCH_TIMEOUT_S,
    MAX_CONSUMER_BATCH, MAX_DELAY_S, MAX_RETRIES,
};

/// One delivered message (`message.id`, `.timestamp`, `.body`, `.attempts`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Unique id (32 hex digits).
    pub id: String,
    /// When it was sent, ms since the epoch.
    pub timestamp_ms: i64,
    /// The body as the producer serialized it.
    pub body: Bytes,
    /// `text`, `json`, `bytes` or `v8`: how to turn `body` back into a value.
    pub content_type: String,
    /// Deliveries of this message so far, this one included (1 on the first).
    pub attempts: u32,
}

/// A batch for the consumer's `queue(batch, env, ctx)` handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageBatch {
    /// `batch.queue`.
    pub queue: String,
    /// `batch.messages`.
    pub messages: Vec<Message>,
}

/// What became of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// `message.ack()` (or `batch.ackAll()`).
    Ack,
    /// `message.retry({delaySeconds})` (or `batch.retryAll(...)`); `None`: the consumer's
    /// `retry_delay`.
    Retry {
        /// `delaySeconds`.
        delay_seconds: Option<u32>,
    },
}

/// The consumer's verdict on a batch. Messages without an explicit decision are acked when
/// the handler succeeded and retried (with `retry_delay`) when it threw, as on Cloudflare. The
/// JS binding resolves `ack()`/`retry()`/`ackAll()`/`retryAll()` precedence into `decisions`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// `Err(message)` if the handler threw (or the consumer could not run).
    pub handler_error: Option<String>,
    /// Explicit decisions by message id.
    pub decisions: HashMap<String, Decision>,
}

impl BatchOutcome {
    /// The handler returned and nothing was marked: every message is acked.
    pub fn ok() -> BatchOutcome {
        BatchOutcome::default()
    }

    /// The handler threw: every message not explicitly acked is retried.
    pub fn failed(error: impl Into<String>) -> BatchOutcome {
        BatchOutcome {
            handler_error: Some(error.into()),
            decisions: HashMap::new(),
        }
    }

    /// Adds an explicit decision for message `id`.
    pub fn with(mut self, id: impl Into<String>, decision: Decision) -> BatchOutcome {
        self.decisions.insert(id.into(), decision);
        self
    }
}

/// Delivers batches to a queue's consumer (the host invokes the Worker's `queue()` handler).
/// The future runs on the queue object's executor thread; it must not block.
pub trait QueueConsumer: Send + Sync + 'static {
    /// Delivers one batch; resolves with what the consumer decided.
    fn deliver(&self, batch: MessageBatch) -> BoxFuture<'static, BatchOutcome>;
}

impl<F> QueueConsumer for F
where
    F: Fn(MessageBatch) -> BoxFuture<'static, BatchOutcome> + Send + Sync + 'static,
{
    fn deliver(&self, batch: MessageBatch) -> BoxFuture<'static, BatchOutcome> {
        self(batch)
    }
}

/// A consumer's settings (`queues.consumers[]` in wrangler).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerSettings {
    /// `max_batch_size`: 1 to 100 (default 10).
    pub max_batch_size: u32,
    /// `max_batch_timeout`: how long to wait to fill a batch, 0 to 60 s (default 5 s).
    pub max_batch_timeout: Duration,
    /// `max_retries`: 0 to 100 (default 3); a message is delivered at most `1 + max_retries`
    /// times.
    pub max_retries: u32,
    /// `retry_delay`: default delay of a retry, seconds (default 0).
    pub retry_delay_s: u32,
    /// `dead_letter_queue`: where messages go after their last failed attempt (else they are
    /// dropped).
    pub dead_letter_queue: Option<String>,
    /// Batches delivered at once (default 1).
    pub max_concurrency: u32,
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        ConsumerSettings {
            max_batch_size: DEFAULT_BATCH_SIZE,
            max_batch_timeout: Duration::from_secs(DEFAULT_BATCH_TIMEOUT_S as u64),
            max_retries: DEFAULT_RETRIES,
            retry_delay_s: 0,
            dead_letter_queue: None,
            max_concurrency: 1,
        }
    }
}

impl ConsumerSettings {
    pub(crate) fn validate(&self, queue: &str) -> Result<(), QueueError> {
        let bad = |m: String| Err(QueueError::Settings(m));
        if !(1..=MAX_CONSUMER_BATCH).contains(&self.max_batch_size) {
            return bad(format!(
                "max_batch_size must be between 1 and {MAX_CONSUMER_BATCH}, got {}",
                self.max_batch_size
            ));
        }
        if self.max_batch_timeout > Duration::from_secs(MAX_BATCH_TIMEOUT_S as u64) {
            return bad(format!(
                "max_batch_timeout must be at most {MAX_BATCH_TIMEOUT_S} seconds"
            ));
        }
        if self.max_retries > MAX_RETRIES {
            return bad(format!(
                "max_retries must be at most {MAX_RETRIES}, got {}",
                self.max_retries
            ));
        }
        if self.retry_delay_s as i64 > MAX_DELAY_S {
            return bad(format!("retry_delay must be at most {MAX_DELAY_S} seconds"));
        }
        if self.max_concurrency == 0 {
            return bad("max_concurrency must be at least 1".into());
        }
        if self.dead_letter_queue.as_deref() == Some(queue) {
            return bad(format!(
                "queue {queue:?} cannot be its own dead letter queue"
            ));
        }
        Ok(())
    }
}
