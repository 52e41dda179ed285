//! Queues on the host side: the engine ([`cinder_queues::Queues`]) opened when a worker produces
//! to or consumes a queue, and [`JsConsumer`], which hands each batch the engine delivers to the
//! consuming worker's `queue(batch, env, ctx)` handler as an event, like `scheduled`.
//!
//! The batch's messages are parked in the isolate under the event id until JS takes them
//! (`op_queue_take`); JS reports the explicit `ack()`/`retry()` decisions (`op_queue_report`)
//! before the event ends, and the event's result (the handler threw or not) decides the rest,
//! as [`BatchOutcome`] defines.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use cinder_queues::{
    BatchOutcome, ConsumerSettings, Decision, MessageBatch, QueueConsumer, Queues, QueuesConfig,
};
use futures::future::BoxFuture;
use tokio::sync::oneshot;

use crate::event::Event;
use crate::host::HostInner;
use crate::{HostConfig, LoadError, QueueConsumerConfig};

/// Where JS leaves the explicit decisions of a batch, by message id.
pub(crate) type DecisionSlot = Arc<Mutex<Option<HashMap<String, Decision>>>>;

/// A batch handed to an isolate and not yet taken by JS, and where its decisions go.
pub(crate) struct Delivery {
    pub batch: Option<MessageBatch>,
    pub decisions: DecisionSlot,
}

/// The engine, when some worker produces to or consumes a queue.
pub(crate) fn open(cfg: &HostConfig) -> Option<Queues> {
    let used = cfg
        .workers
        .iter()
        .any(|w| !w.queue_producers.is_empty() || !w.queue_consumers.is_empty());
    used.then(|| Queues::new(QueuesConfig::default()))
}

fn settings(c: &QueueConsumerConfig) -> ConsumerSettings {
    let d = ConsumerSettings::default();
    ConsumerSettings {
        max_batch_size: c.max_batch_size.unwrap_or(d.max_batch_size),
        max_batch_timeout: c
            .max_batch_timeout
            .map(|s| std::time::Duration::from_secs(s as u64))
            .unwrap_or(d.max_batch_timeout),
        max_retries: c.max_retries.unwrap_or(d.max_retries),
        retry_delay_s: c.retry_delay.unwrap_or(d.retry_delay_s),
        dead_letter_queue: c.dead_letter_queue.clone(),
        max_concurrency: c.max_concurrency.unwrap_or(d.max_concurrency),
    }
}

/// Registers each consumer with the engine, which starts delivering what the queues hold
/// (messages stored before a restart included). Runs on a thread of its own with a small
/// tokio runtime, as R2's start does: the caller may or may not be inside one.
pub(crate) fn start(
    queues: &Queues,
    cfg: &HostConfig,
    host: Weak<HostInner>,
) -> Result<(), LoadError> {
    let mut consumers: Vec<(String, ConsumerSettings, Arc<dyn QueueConsumer>)> = Vec::new();
    for w in &cfg.workers {
        for c in &w.queue_consumers {
            if consumers.iter().any(|(q, _, _)| *q == c.queue) {
                return Err(LoadError::Config {
                    worker: w.name.clone(),
                    message: format!("queue {:?} already has a consumer in this run", c.queue),
                });
            }
            let consumer: Arc<dyn QueueConsumer> = Arc::new(JsConsumer {
                host: host.clone(),
                worker: w.name.clone(),
            });
            consumers.push((c.queue.clone(), settings(c), consumer));
        }
    }
    if consumers.is_empty() {
        return Ok(());
    }
    let queues = queues.clone();
    let started = std::thread::Builder::new()
        .name("cinder-queues-start".into())
        .spawn(move || -> Result<(), String> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async move {
                for (queue, settings, consumer) in consumers {
                    queues
                        .set_consumer(&queue, settings, consumer)
                        .await
                        .map_err(|e| format!("consumer of queue {queue:?}: {e}"))?;
                }
                Ok(())
            })
        })
        .map_err(|e| LoadError::Thread(format!("starting queues: {e}")))?;
    started
        .join()
        .map_err(|_| LoadError::Thread("starting queues: the thread panicked".into()))?
        .map_err(|e| LoadError::Thread(format!("starting queues: {e}")))
}

/// Delivers batches to a worker's `queue()` handler.
struct JsConsumer {
    /// Weak: the engine (and so this consumer) lives as long as the runtime the host owns.
    host: Weak<HostInner>,
    worker: String,
}

impl QueueConsumer for JsConsumer {
    fn deliver(&self, batch: MessageBatch) -> BoxFuture<'static, BatchOutcome> {
        let host = self.host.clone();
        let worker = self.worker.clone();
        Box::pin(async move {
            let decisions: DecisionSlot = Arc::new(Mutex::new(None));
            let rx = {
                let Some(inner) = host.upgrade() else {
                    return BatchOutcome::failed("the host is shut down");
                };
                let (reply, rx) = oneshot::channel();
                let event = Event::Queue {
                    request_id: inner.request_id(),
                    batch,
                    decisions: decisions.clone(),
                    reply,
                };
                if inner.send(&worker, event).is_err() {
                    return BatchOutcome::failed("the host is shutting down");
                }
                rx
            };
            let mut outcome = match rx.await {
                Ok(Ok(())) => BatchOutcome::ok(),
                Ok(Err(e)) => BatchOutcome::failed(e.to_string()),
                Err(_) => BatchOutcome::failed("the worker was stopped before it finished"),
            };
            if let Some(d) = decisions.lock().unwrap_or_else(|p| p.into_inner()).take() {
                outcome.decisions = d;
            }
            if let Some(e) = &outcome.handler_error {
                tracing::warn!(worker = %worker, "queue() handler failed; its messages will be retried: {e}");
            }
            outcome
        })
    }
}
