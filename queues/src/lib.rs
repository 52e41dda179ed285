//! Cloudflare Queues on the actor core: the engine behind `queues.producers` and
//! `queues.consumers`. No V8 here; depends on `cinder-core` (internal objects, gates, alarms)
//! and `cinder-storage` (types).
//!
//! - [`Queues`]: the node's engine. Each queue is one internal Durable Object
//!   ([`INTERNAL_NAMESPACE`], named by the queue), which stores its messages and delivers them.
//! - [`Queue`]: a producer handle: `send` and `send_batch` resolve once the messages are
//!   durable (the runtime's output gate holds the object's reply until then). Limits and error
//!   texts are Cloudflare's ([`limits`], [`QueueError`]).
//! - Consumers: the host registers a [`QueueConsumer`] per queue with [`ConsumerSettings`]
//!   (`max_batch_size`, `max_batch_timeout`, `max_retries`, `retry_delay`,
//!   `dead_letter_queue`, concurrency). The queue object hands it [`MessageBatch`]es and applies
//!   the [`BatchOutcome`] (per-message ack/retry with delay; unmarked messages follow the
//!   handler's success). At-least-once: a message leaves storage only when acked,
//!   dead-lettered (after the other queue stored it) or dropped after its last attempt.
//! - Delays and batch timeouts run on the object's alarm, so they survive restarts.

mod clock;
mod consumer;
mod error;
pub mod limits;
mod object;
mod record;
mod service;

pub use clock::{Clock, ManualClock, SystemClock};
pub use consumer::{
    BatchOutcome, ConsumerSettings, Decision, Message, MessageBatch, QueueConsumer,
};
pub use error::QueueError;
pub use object::QueueStats;
pub use service::{OutgoingMessage, Queue, Queues, QueuesConfig, INTERNAL_NAMESPACE};
