//! The internal Durable Object that owns one queue: its messages (durable before `send`
//! resolves: the runtime holds the reply until the write is durable), their delivery to the
//! consumer in batches, retries, delays and the dead letter queue.
//!
//! Delivery is at-least-once. A message stays stored until its batch's outcome is applied;
//! its attempt count is bumped (and written) when its delivery starts, so a crash during a
//! delivery re-delivers it after restart with the crashed attempt counted. The object's alarm
//! is kept at the next moment something is due (a batch timeout, a delay ending), so pending
//! messages are delivered after a restart without anyone sending again.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use cinder_core::{Actor, ActorContext, ActorError, AlarmInfo, Payload, Request, Response};
use cinder_storage::{ListOptions, Section, StorageError};
use futures::future::LocalBoxFuture;
use futures::FutureExt;

use crate::consumer::{BatchOutcome, Decision, Message, MessageBatch};
use crate::record::{self, Header};
use crate::service::{Registration, Shared};

/// A message as a producer sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewMessage {
    pub(crate) body: Bytes,
    pub(crate) content_type: String,
    pub(crate) delay_s: i64,
}

pub(crate) enum QueueOp {
    Send {
        queue: String,
        messages: Vec<NewMessage>,
    },
    /// Messages moved from another queue (dead-lettered): id and timestamp kept.
    Enqueue {
        queue: String,
        messages: Vec<Message>,
    },
    Pump {
        queue: String,
    },
    Stats {
        queue: String,
    },
}

/// What a queue holds right now (diagnostics, tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Stored messages waiting for delivery (delayed ones included).
    pub pending: usize,
    /// Messages in batches being delivered.
    pub in_flight: usize,
    /// Batches handed to the consumer since the object was activated.
    pub batches_started: u64,
}

pub(crate) enum QueueReply {
    Done,
    Stats(QueueStats),
}

#[derive(Default)]
struct State {
    loaded: bool,
    name: Option<String>,
    next_seq: u64,
    headers: HashMap<u64, Header>,
    /// `(visible_at, seq)` of stored messages not being delivered.
    ready: BTreeSet<(i64, u64)>,
    leased: HashSet<u64>,
    in_flight: u32,
    batches_started: u64,
}

struct Inner {
    ctx: ActorContext,
    shared: Arc<Shared>,
    st: RefCell<State>,
}

pub(crate) struct QueueObject {
    inner: Rc<Inner>,
}

impl QueueObject {
    pub(crate) fn new(ctx: ActorContext, shared: Arc<Shared>) -> QueueObject {
        QueueObject {
            inner: Rc::new(Inner {
                ctx,
                shared,
                st: RefCell::new(State::default()),
            }),
        }
    }
}

fn corrupt(e: String) -> StorageError {
    StorageError::Corrupt(e)
}

fn new_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

impl Inner {
    fn now(&self) -> i64 {
        self.shared.clock.now_ms()
    }

    /// Reads the queue's headers once per activation.
    fn load(&self, queue: Option<&str>) -> Result<(), StorageError> {
        let storage = self.ctx.storage();
        let raw = storage.raw();
        let mut st = self.st.borrow_mut();
        if !st.loaded {
            let rows = raw.list(&ListOptions {
                prefix: Some("m".into()),
                no_cache: true,
                ..Default::default()
            })?;
            for (k, v) in rows {
                let seq = record::parse_header_key(&k)
                    .ok_or_else(|| corrupt(format!("queue key {k:?}")))?;
                let h = Header::decode(&v).map_err(corrupt)?;
                st.ready.insert((h.visible_at_ms, seq));
                st.headers.insert(seq, h);
                st.next_seq = st.next_seq.max(seq + 1);
            }
            if let Some(name) = raw.get(record::NAME_KEY)? {
                st.name = Some(String::from_utf8_lossy(&name).into_owned());
            }
            st.loaded = true;
        }
        if let (None, Some(q)) = (&st.name, queue) {
            raw.put(record::NAME_KEY, Bytes::from(q.to_string()))?;
            storage.note_raw_write(cinder_core::WriteOptions::default());
            st.name = Some(q.to_string());
        }
        Ok(())
    }

    fn store(&self, seq: u64, h: &Header, body: Option<Bytes>) -> Result<(), StorageError> {
        let storage = self.ctx.storage();
        let raw = storage.raw();
        raw.put(&record::header_key(seq), h.encode())?;
        if let Some(b) = body {
            raw.put_with(
                &record::body_key(seq),
                b,
                cinder_storage::WriteOptions { no_cache: true },
            )?;
        }
        storage.note_raw_write(cinder_core::WriteOptions::default());
        Ok(())
    }

    fn remove(&self, seq: u64) {
        let storage = self.ctx.storage();
        let raw = storage.raw();
        raw.raw_delete(Section::Kv, record::header_key(seq).as_bytes());
        raw.raw_delete(Section::Kv, record::body_key(seq).as_bytes());
        storage.note_raw_write(cinder_core::WriteOptions::default());
    }

    fn enqueue(&self, h: Header, body: Bytes) -> Result<(), StorageError> {
        let seq = {
            let mut st = self.st.borrow_mut();
            let seq = st.next_seq;
            st.next_seq += 1;
            seq
        };
        self.store(seq, &h, Some(body))?;
        let mut st = self.st.borrow_mut();
        st.ready.insert((h.visible_at_ms, seq));
        st.headers.insert(seq, h);
        Ok(())
    }

    fn registration(&self) -> Option<Arc<Registration>> {
        let name = self.st.borrow().name.clone()?;
        self.shared.registration(&name)
    }

    /// Starts every batch that is due and points the alarm at the next due moment.
    fn schedule(self: &Rc<Self>) -> Result<(), StorageError> {
        let Some(reg) = self.registration() else {
            return Ok(());
        };
        let s = &reg.settings;
        let size = s.max_batch_size.max(1) as usize;
        let timeout = s.max_batch_timeout.as_millis() as i64;
        let now = self.now();
        loop {
            let batch: Vec<(i64, u64)> = {
                let st = self.st.borrow();
                if st.in_flight >= s.max_concurrency {
                    break;
                }
                st.ready
                    .range(..=(now, u64::MAX))
                    .take(size)
                    .copied()
                    .collect()
            };
            let Some(&(oldest, _)) = batch.first() else {
                break;
            };
            if batch.len() < size && oldest.saturating_add(timeout) > now {
                break;
            }
            self.start_delivery(&reg, batch)?;
        }
        let next = {
            let st = self.st.borrow();
            let mut next: Option<i64> = None;
            if st.in_flight < s.max_concurrency {
                if let Some(&(v, _)) = st.ready.range(..=(now, u64::MAX)).next() {
                    next = Some(v.saturating_add(timeout));
                }
            }
            if let Some(&(v, _)) = st.ready.range((now.saturating_add(1), 0)..).next() {
                next = Some(next.map_or(v, |n| n.min(v)));
            }
            if next.is_none() && !st.leased.is_empty() {
                // Only deliveries in flight: a late wake-up that re-delivers them if this
                // instance dies before they finish.
                next = Some(now.saturating_add(60_000));
            }
            next
        };
        let storage = self.ctx.storage();
        let current = storage.raw().get_alarm()?;
        let real_now = cinder_core::now_ms();
        match next {
            Some(due) => {
                // The engine's clock decides what is due; the alarm fires by the wall clock,
                // so translate the wait rather than the instant.
                let at = real_now.saturating_add((due - now).max(0)).max(1);
                let fine = matches!(current, Some(c) if real_now < c && c <= at);
                if !fine {
                    storage.set_alarm(at)?;
                }
            }
            None => {
                if current.is_some() {
                    storage.delete_alarm()?;
                }
            }
        }
        Ok(())
    }

    fn start_delivery(
        self: &Rc<Self>,
        reg: &Arc<Registration>,
        batch: Vec<(i64, u64)>,
    ) -> Result<(), StorageError> {
        let storage = self.ctx.storage();
        let mut messages = Vec::with_capacity(batch.len());
        let mut seqs = Vec::with_capacity(batch.len());
        for (v, seq) in batch {
            let h = {
                let mut st = self.st.borrow_mut();
                st.ready.remove(&(v, seq));
                st.leased.insert(seq);
                let Some(h) = st.headers.get_mut(&seq) else {
                    continue;
                };
                h.attempts += 1;
                h.clone()
            };
            let body = storage
                .raw()
                .get_with(
                    &record::body_key(seq),
                    cinder_storage::ReadOptions { no_cache: true },
                )?
                .unwrap_or_default();
            self.store(seq, &h, None)?;
            messages.push(Message {
                id: h.id.clone(),
                timestamp_ms: h.timestamp_ms,
                body,
                content_type: h.content_type.clone(),
                attempts: h.attempts,
            });
            seqs.push(seq);
        }
        let queue = {
            let mut st = self.st.borrow_mut();
            st.in_flight += 1;
            st.batches_started += 1;
            st.name.clone().unwrap_or_default()
        };
        let delivery = reg.consumer.deliver(MessageBatch {
            queue,
            messages: messages.clone(),
        });
        let this = self.clone();
        let reg = reg.clone();
        self.ctx.wait_until(async move {
            let outcome = match std::panic::AssertUnwindSafe(delivery).catch_unwind().await {
                Ok(o) => o,
                Err(_) => BatchOutcome::failed("the queue consumer panicked"),
            };
            let batch_seqs = seqs.clone();
            if let Err(e) = this.finish(&reg, seqs, messages, outcome).await {
                tracing::error!(error = %e, "applying a queue batch outcome failed");
            }
            // Whatever happened to the outcome, the batch is over: its slot frees, and any of
            // its messages still leased (the outcome was not applied) are delivered again.
            let mut st = this.st.borrow_mut();
            st.in_flight -= 1;
            for seq in batch_seqs {
                if st.leased.remove(&seq) {
                    if let Some(v) = st.headers.get(&seq).map(|h| h.visible_at_ms) {
                        st.ready.insert((v, seq));
                    }
                }
            }
            drop(st);
            if let Err(e) = this.schedule() {
                tracing::error!(error = %e, "scheduling queue deliveries failed");
            }
        });
        Ok(())
    }

    async fn finish(
        self: &Rc<Self>,
        reg: &Arc<Registration>,
        seqs: Vec<u64>,
        messages: Vec<Message>,
        outcome: BatchOutcome,
    ) -> Result<(), ActorError> {
        let s = &reg.settings;
        let now = self.now();
        let default = match outcome.handler_error {
            None => Decision::Ack,
            Some(_) => Decision::Retry {
                delay_seconds: None,
            },
        };
        let mut dead = Vec::new();
        for (seq, msg) in seqs.into_iter().zip(messages) {
            let decision = outcome.decisions.get(&msg.id).copied().unwrap_or(default);
            let header = {
                let mut st = self.st.borrow_mut();
                st.leased.remove(&seq);
                match decision {
                    Decision::Ack => {
                        st.headers.remove(&seq);
                        None
                    }
                    Decision::Retry { .. } => st.headers.get(&seq).cloned(),
                }
            };
            let Decision::Retry { delay_seconds } = decision else {
                self.remove(seq);
                continue;
            };
            let Some(mut h) = header else { continue };
            if h.attempts > s.max_retries {
                match &s.dead_letter_queue {
                    Some(_) => dead.push((seq, h, msg)),
                    None => {
                        tracing::warn!(queue = ?self.st.borrow().name, id = %h.id, attempts = h.attempts, "dropping a queue message after its last failed attempt");
                        self.st.borrow_mut().headers.remove(&seq);
                        self.remove(seq);
                    }
                }
                continue;
            }
            let delay = delay_seconds.unwrap_or(s.retry_delay_s) as i64;
            h.visible_at_ms = now.saturating_add(delay * 1000);
            self.store(seq, &h, None)?;
            let mut st = self.st.borrow_mut();
            st.ready.insert((h.visible_at_ms, seq));
            st.headers.insert(seq, h);
        }
        if let (Some(dlq), false) = (&s.dead_letter_queue, dead.is_empty()) {
            self.dead_letter(dlq, dead).await;
        }
        Ok(())
    }

    /// Moves messages to the dead letter queue: removed here only once the other queue has
    /// stored them durably; if that fails they wait here for another try.
    async fn dead_letter(self: &Rc<Self>, dlq: &str, dead: Vec<(u64, Header, Message)>) {
        let moved: Vec<Message> = dead
            .iter()
            .map(|(_, _, m)| Message {
                attempts: 0,
                ..m.clone()
            })
            .collect();
        let result = match self.shared.namespace() {
            Some(ns) => {
                let stub = ns.get_by_name(dlq);
                let op = QueueOp::Enqueue {
                    queue: dlq.to_string(),
                    messages: moved,
                };
                match self.ctx.outbound(stub.call(Box::new(op))).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            }
            None => Err("not attached".to_string()),
        };
        let now = self.now();
        for (seq, mut h, _) in dead {
            match &result {
                Ok(()) => {
                    self.st.borrow_mut().headers.remove(&seq);
                    self.remove(seq);
                }
                Err(e) => {
                    tracing::warn!(error = %e, dead_letter_queue = dlq, "moving a message to its dead letter queue failed; keeping it");
                    h.visible_at_ms = now.saturating_add(1000);
                    if self.store(seq, &h, None).is_ok() {
                        let mut st = self.st.borrow_mut();
                        st.ready.insert((h.visible_at_ms, seq));
                        st.headers.insert(seq, h);
                    }
                }
            }
        }
    }

    fn handle(self: &Rc<Self>, op: QueueOp) -> Result<QueueReply, StorageError> {
        match op {
            QueueOp::Send { queue, messages } => {
                self.load(Some(&queue))?;
                let now = self.now();
                for m in messages {
                    let h = Header {
                        id: new_id(),
                        timestamp_ms: now,
                        content_type: m.content_type,
                        attempts: 0,
                        visible_at_ms: now.saturating_add(m.delay_s * 1000),
                    };
                    self.enqueue(h, m.body)?;
                }
                self.schedule()?;
                Ok(QueueReply::Done)
            }
            QueueOp::Enqueue { queue, messages } => {
                self.load(Some(&queue))?;
                let now = self.now();
                for m in messages {
                    let h = Header {
                        id: m.id,
                        timestamp_ms: m.timestamp_ms,
                        content_type: m.content_type,
                        attempts: 0,
                        visible_at_ms: now,
                    };
                    self.enqueue(h, m.body)?;
                }
                self.schedule()?;
                Ok(QueueReply::Done)
            }
            QueueOp::Pump { queue } => {
                self.load(Some(&queue))?;
                self.schedule()?;
                Ok(QueueReply::Done)
            }
            QueueOp::Stats { queue } => {
                self.load(Some(&queue))?;
                let st = self.st.borrow();
                Ok(QueueReply::Stats(QueueStats {
                    pending: st.ready.len(),
                    in_flight: st.leased.len(),
                    batches_started: st.batches_started,
                }))
            }
        }
    }
}

impl Actor for QueueObject {
    fn fetch(&self, _req: Request) -> LocalBoxFuture<'_, Result<Response, ActorError>> {
        Box::pin(async { Err(ActorError::new("internal queue objects accept calls only")) })
    }

    fn call(&self, payload: Payload) -> LocalBoxFuture<'_, Result<Payload, ActorError>> {
        Box::pin(async move {
            let op = payload
                .downcast::<QueueOp>()
                .map_err(|_| ActorError::new("internal queue object: unexpected call"))?;
            let reply = self.inner.handle(*op)?;
            Ok(Box::new(reply) as Payload)
        })
    }

    fn alarm(&self, _info: AlarmInfo) -> LocalBoxFuture<'_, Result<(), ActorError>> {
        Box::pin(async move {
            self.inner.load(None)?;
            self.inner.schedule()?;
            Ok(())
        })
    }
}
