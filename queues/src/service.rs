//! [`Queues`] (the node's queues engine) and [`Queue`] (one queue: what a producer binding
//! wraps).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock, RwLock};

use bytes::Bytes;
use cinder_core::{ActorContext, IdFactory, Namespace, NamespaceSpec, Runtime, Stub};

use crate::clock::{Clock, SystemClock};
use crate::consumer::{ConsumerSettings, QueueConsumer};
use crate::error::QueueError;
use crate::limits::{
    CONTENT_TYPES, MAX_BATCH_BYTES, MAX_BATCH_MESSAGES, MAX_DELAY_S, MAX_MESSAGE_BYTES,
};
use crate::object::{NewMessage, QueueObject, QueueOp, QueueReply, QueueStats};

/// Name of the internal Durable Object namespace: one object per queue.
pub const INTERNAL_NAMESPACE: &str = "cinder:queue";

/// Configuration of a node's queues engine.
#[derive(Clone)]
pub struct QueuesConfig {
    /// Time source for delays and batch timeouts.
    pub clock: Arc<dyn Clock>,
}

impl Default for QueuesConfig {
    fn default() -> Self {
        QueuesConfig {
            clock: Arc::new(SystemClock),
        }
    }
}

pub(crate) struct Registration {
    pub(crate) settings: ConsumerSettings,
    pub(crate) consumer: Arc<dyn QueueConsumer>,
}

pub(crate) struct Shared {
    pub(crate) clock: Arc<dyn Clock>,
    ns: OnceLock<Namespace>,
    consumers: RwLock<HashMap<String, Arc<Registration>>>,
}

impl Shared {
    pub(crate) fn registration(&self, queue: &str) -> Option<Arc<Registration>> {
        self.consumers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(queue)
            .cloned()
    }

    pub(crate) fn namespace(&self) -> Option<&Namespace> {
        self.ns.get()
    }
}

/// The node's queues engine. Cheap to clone, `Send + Sync`.
///
/// Register [`Queues::namespaces`] with the runtime, [`Queues::attach`] it, then hand out
/// [`Queue`] handles to producers and register each queue's consumer with
/// [`Queues::set_consumer`]. The runtime and the engine keep each other alive: stop them with
/// [`Runtime::shutdown`].
#[derive(Clone)]
pub struct Queues {
    shared: Arc<Shared>,
}

impl fmt::Debug for Queues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queues").finish_non_exhaustive()
    }
}

/// One message for [`Queue::send`] / [`Queue::send_batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// The body, serialized by the binding according to `content_type`.
    pub body: Bytes,
    /// `text`, `json`, `bytes` or `v8`.
    pub content_type: String,
    /// `delaySeconds` (0 to 86,400); for a batch, overrides the batch's delay.
    pub delay_seconds: Option<i64>,
}

impl OutgoingMessage {
    /// A message of `content_type` with no delay.
    pub fn new(body: impl Into<Bytes>, content_type: &str) -> OutgoingMessage {
        OutgoingMessage {
            body: body.into(),
            content_type: content_type.to_string(),
            delay_seconds: None,
        }
    }
}

impl Queues {
    /// A queues engine.
    pub fn new(cfg: QueuesConfig) -> Queues {
        Queues {
            shared: Arc::new(Shared {
                clock: cfg.clock,
                ns: OnceLock::new(),
                consumers: RwLock::new(HashMap::new()),
            }),
        }
    }

    /// The internal namespace to pass to [`Runtime::start`].
    pub fn namespaces(&self) -> Vec<NamespaceSpec> {
        let shared = self.shared.clone();
        vec![NamespaceSpec {
            name: INTERNAL_NAMESPACE.into(),
            ids: IdFactory::from_unique_key(INTERNAL_NAMESPACE),
            factory: Arc::new(move |ctx: ActorContext| {
                Ok(Box::new(QueueObject::new(ctx, shared.clone())) as Box<dyn cinder_core::Actor>)
            }),
        }]
    }

    /// Connects the engine to the runtime hosting its objects.
    pub fn attach(&self, rt: &Runtime) -> Result<(), QueueError> {
        let ns = rt
            .namespace(INTERNAL_NAMESPACE)
            .ok_or(QueueError::NotAttached)?;
        let _ = self.shared.ns.set(ns);
        Ok(())
    }

    /// The queue `name` (producer side).
    pub fn queue(&self, name: &str) -> Queue {
        Queue {
            shared: self.shared.clone(),
            name: Arc::from(name),
            stub: OnceLock::new(),
        }
    }

    /// Registers (or replaces) the consumer of `queue` and starts delivering what it holds,
    /// including messages stored before a restart.
    pub async fn set_consumer(
        &self,
        queue: &str,
        settings: ConsumerSettings,
        consumer: Arc<dyn QueueConsumer>,
    ) -> Result<(), QueueError> {
        settings.validate(queue)?;
        self.shared
            .consumers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                queue.to_string(),
                Arc::new(Registration { settings, consumer }),
            );
        self.queue(queue).pump().await
    }

    /// Stops delivering `queue`'s messages (they stay stored). Batches in flight finish.
    pub fn remove_consumer(&self, queue: &str) {
        self.shared
            .consumers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(queue);
    }
}

/// One queue: what `env.MY_QUEUE` wraps. Cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub struct Queue {
    shared: Arc<Shared>,
    name: Arc<str>,
    stub: OnceLock<Stub>,
}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue").field("name", &self.name).finish()
    }
}

fn check_message(m: &OutgoingMessage, batch_delay: Option<i64>) -> Result<NewMessage, QueueError> {
    if m.body.len() > MAX_MESSAGE_BYTES {
        return Err(QueueError::MessageTooLarge(m.body.len()));
    }
    if !CONTENT_TYPES.contains(&m.content_type.as_str()) {
        return Err(QueueError::ContentType(m.content_type.clone()));
    }
    let delay = m.delay_seconds.or(batch_delay).unwrap_or(0);
    if !(0..=MAX_DELAY_S).contains(&delay) {
        return Err(QueueError::Delay(delay));
    }
    Ok(NewMessage {
        body: m.body.clone(),
        content_type: m.content_type.clone(),
        delay_s: delay,
    })
}

impl Queue {
    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn stub(&self) -> Result<&Stub, QueueError> {
        if let Some(s) = self.stub.get() {
            return Ok(s);
        }
        let ns = self.shared.ns.get().ok_or(QueueError::NotAttached)?;
        Ok(self.stub.get_or_init(|| ns.get_by_name(&self.name)))
    }

    async fn call(&self, op: QueueOp) -> Result<QueueReply, QueueError> {
        let reply = self
            .stub()?
            .call(Box::new(op))
            .await
            .map_err(|e| QueueError::Internal(e.to_string()))?;
        reply
            .downcast::<QueueReply>()
            .map(|r| *r)
            .map_err(|_| QueueError::Internal("unexpected reply from a queue object".into()))
    }

    /// `send(body, {contentType, delaySeconds})`: resolves once the message is durable.
    pub async fn send(&self, message: OutgoingMessage) -> Result<(), QueueError> {
        let m = check_message(&message, None)?;
        self.call(QueueOp::Send {
            queue: self.name.to_string(),
            messages: vec![m],
        })
        .await
        .map(|_| ())
    }

    /// `sendBatch(messages, {delaySeconds})`: all or nothing (one atomic write), durable when
    /// it resolves.
    pub async fn send_batch(
        &self,
        messages: &[OutgoingMessage],
        delay_seconds: Option<i64>,
    ) -> Result<(), QueueError> {
        if messages.is_empty() {
            return Err(QueueError::EmptyBatch);
        }
        if messages.len() > MAX_BATCH_MESSAGES {
            return Err(QueueError::TooManyMessages(messages.len()));
        }
        let total: usize = messages.iter().map(|m| m.body.len()).sum();
        let checked = messages
            .iter()
            .map(|m| check_message(m, delay_seconds))
            .collect::<Result<Vec<_>, _>>()?;
        if total > MAX_BATCH_BYTES {
            return Err(QueueError::BatchTooLarge(total));
        }
        self.call(QueueOp::Send {
            queue: self.name.to_string(),
            messages: checked,
        })
        .await
        .map(|_| ())
    }

    /// Re-checks what is due now and delivers it: what the queue's alarm does. Hosts need it
    /// only after changing consumers by hand; tests call it after moving an injected clock.
    pub async fn pump(&self) -> Result<(), QueueError> {
        self.call(QueueOp::Pump {
            queue: self.name.to_string(),
        })
        .await
        .map(|_| ())
    }

    /// What the queue holds right now.
    pub async fn stats(&self) -> Result<QueueStats, QueueError> {
        match self
            .call(QueueOp::Stats {
                queue: self.name.to_string(),
            })
            .await?
        {
            QueueReply::Stats(s) => Ok(s),
            QueueReply::Done => Err(QueueError::Internal(
                "unexpected reply from a queue object".into(),
            )),
        }
    }
}
