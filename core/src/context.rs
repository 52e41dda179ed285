//! [`ActorContext`]: what a live instance gets from the runtime (its id, gated storage,
//! `block_concurrency_while`, `wait_until`, gated outbound I/O), and the reset machinery.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::rc::{Rc, Weak};
use std::sync::Arc;

use cinder_storage::{AlarmState, ObjectStorage, Section, StorageError};
use futures::FutureExt;
use tokio::sync::oneshot;
use tokio::task::AbortHandle;

use crate::alarm::AlarmScheduler;
use crate::error::{ActorError, ObjectError, BLOCK_CONCURRENCY_TIMEOUT_MESSAGE};
use crate::executor::{Reply, Slot};
use crate::gate::{GateBroken, InputGate, OutputGate, OutputLock};
use crate::id::ObjectId;
use crate::runtime::{NamespaceEntry, RuntimeConfig};
use crate::storage::Storage;

/// Metadata key (in [`Section::Meta`]) naming the namespace that owns an object, written with
/// its first alarm so the alarm can re-create the object after a restart.
pub(crate) const META_NAMESPACE_KEY: &[u8] = b"namespace";

/// Handed to [`crate::ActorFactory::create`]; the instance keeps it. Cheap to clone; `!Send`
/// (it belongs to the object's executor thread).
#[derive(Clone)]
pub struct ActorContext {
    pub(crate) inner: Rc<CtxInner>,
}

pub(crate) struct CtxInner {
    pub(crate) id: ObjectId,
    pub(crate) ns: Arc<NamespaceEntry>,
    /// Distinguishes instances of the same id over time (activation serial).
    pub(crate) serial: u64,
    pub(crate) cfg: Arc<RuntimeConfig>,
    pub(crate) raw: ObjectStorage,
    pub(crate) input: InputGate,
    /// Locked by every write batch not marked `allow_unconfirmed`.
    pub(crate) output: OutputGate,
    /// Locked by every write batch, confirmed or not: what `sync()` waits on.
    pub(crate) all_writes: OutputGate,
    /// Locks of the current turn's batch; `Some` while a flush is scheduled.
    pub(crate) turn: RefCell<Option<TurnLocks>>,
    pub(crate) flushes: Cell<u64>,
    pub(crate) meta_written: Cell<bool>,
    /// `Some(t)` while the alarm scheduled for `t` runs: `get_alarm()` then reads `None`.
    pub(crate) running_alarm: Cell<Option<i64>>,
    pub(crate) alarms: Rc<AlarmScheduler>,
    pub(crate) tasks: RefCell<Vec<AbortHandle>>,
    pub(crate) replies: RefCell<HashMap<u64, oneshot::Sender<Result<Reply, ObjectError>>>>,
    pub(crate) inflight: Cell<usize>,
    pub(crate) wait_until: Cell<usize>,
    pub(crate) broken: RefCell<Option<GateBroken>>,
    pub(crate) slot: Weak<Slot>,
}

pub(crate) struct TurnLocks {
    pub(crate) confirmed: Option<OutputLock>,
    pub(crate) all: OutputLock,
    /// The alarm change this batch carries (`Some(None)`: deleted), applied to the scheduler
    /// only once the batch is durable, so the scheduler never runs ahead of storage.
    pub(crate) alarm: Option<Option<AlarmState>>,
}

impl ActorContext {
    pub(crate) fn new(slot: &Rc<Slot>, serial: u64, alarms: Rc<AlarmScheduler>) -> ActorContext {
        ActorContext {
            inner: Rc::new(CtxInner {
                id: slot.id.clone(),
                ns: slot.ns.clone(),
                serial,
                cfg: slot.cfg.clone(),
                raw: slot.store.object(*slot.id.bytes()),
                input: InputGate::new(),
                output: OutputGate::new(),
                all_writes: OutputGate::new(),
                turn: RefCell::new(None),
                flushes: Cell::new(0),
                meta_written: Cell::new(false),
                running_alarm: Cell::new(None),
                alarms,
                tasks: RefCell::new(Vec::new()),
                replies: RefCell::new(HashMap::new()),
                inflight: Cell::new(0),
                wait_until: Cell::new(0),
                broken: RefCell::new(None),
                slot: Rc::downgrade(slot),
            }),
        }
    }

    /// The object's id (with its name if the caller used `id_from_name`).
    pub fn id(&self) -> &ObjectId {
        &self.inner.id
    }

    /// The namespace (class binding) name.
    pub fn namespace(&self) -> &str {
        &self.inner.ns.name
    }

    /// The object's storage, wrapped so that its calls drive the gates.
    pub fn storage(&self) -> Storage {
        Storage { ctx: self.clone() }
    }

    /// The input gate, for hosts that drive it themselves (see [`crate::gate`]).
    pub fn input_gate(&self) -> &InputGate {
        &self.inner.input
    }

    /// The output gate, for hosts that drive it themselves (see [`crate::gate`]).
    pub fn output_gate(&self) -> &OutputGate {
        &self.inner.output
    }

    /// `blockConcurrencyWhile(f)`: runs `f` as a critical section. The input gate is locked
    /// *now* (not when the returned future is first polled), so a constructor can start one and
    /// drop the future: no event is delivered until `f` finishes. While it runs, no other code
    /// of the object resumes (see [`crate::gate`]); I/O that `f` itself awaits completes.
    /// Sections started back to back run one after the other. The code awaiting the returned
    /// future resumes only once the section is over.
    ///
    /// If `f` fails, or runs past the timeout (30 s by default,
    /// [`RuntimeConfig::block_concurrency_timeout`]), the object is reset and the error
    /// returned.
    pub fn block_concurrency_while<T, F>(
        &self,
        f: F,
    ) -> impl Future<Output = Result<T, ActorError>> + 'static
    where
        T: 'static,
        F: Future<Output = Result<T, ActorError>> + 'static,
    {
        let ctx = self.clone();
        let timeout = self.inner.cfg.block_concurrency_timeout;
        let (tx, rx) = oneshot::channel();
        // The section's lock is released only when this future is done, i.e. after a failure
        // has broken the gate: no event slips in between.
        self.spawn(self.inner.input.critical_section(async move {
            let result = match tokio::time::timeout(timeout, f).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => {
                    ctx.reset(&format!(
                        "Durable Object reset: blockConcurrencyWhile() callback threw: {e}"
                    ));
                    Err(e)
                }
                Err(_) => {
                    ctx.reset(BLOCK_CONCURRENCY_TIMEOUT_MESSAGE);
                    Err(ActorError::new(BLOCK_CONCURRENCY_TIMEOUT_MESSAGE))
                }
            };
            let _ = tx.send(result);
        }));
        async move {
            rx.await
                .unwrap_or_else(|_| Err(ActorError::new("the Durable Object was reset")))
        }
    }

    /// `waitUntil(f)`: runs `f` in the background; the object is not evicted while it runs.
    /// (Cloudflare caps this at 15 minutes; nothing here enforces a cap yet.)
    pub fn wait_until<F>(&self, f: F)
    where
        F: Future<Output = ()> + 'static,
    {
        let inner = &self.inner;
        if inner.is_broken() {
            return;
        }
        inner.wait_until.set(inner.wait_until.get() + 1);
        let guard = ActivityGuard {
            ctx: Rc::downgrade(&self.inner),
            counter: Counter::WaitUntil,
        };
        // Object code: admitted through the input gate like a handler.
        self.spawn(self.inner.input.admit(async move {
            f.await;
            drop(guard);
        }));
    }

    /// Gated outbound I/O (`fetch()`, a KV write, a message to another object...): `io` starts
    /// only after every write issued before this call is durable (output gate), and its result
    /// is handed back only when no storage operation or critical section of the object is
    /// outstanding (input gate). Awaiting it does *not* lock the input gate: other events are
    /// delivered meanwhile.
    ///
    /// Fails if the object is reset before the result can be delivered.
    pub async fn outbound<F>(&self, io: F) -> Result<F::Output, ActorError>
    where
        F: Future,
    {
        self.inner.output.wait().await?;
        self.gated(io).await
    }

    /// Gated inbound completion, for things that resume the object without sending anything
    /// (a timer, the next chunk of an incoming stream): `f` runs freely, and its result is
    /// handed back only when the input gate admits the caller, as for
    /// [`ActorContext::outbound`] but without waiting on the output gate first. (Inside the
    /// runtime's tasks every resumption is admitted anyway; this matters for hosts that await
    /// it from their own loop.)
    pub async fn gated<F>(&self, f: F) -> Result<F::Output, ActorError>
    where
        F: Future,
    {
        let value = f.await;
        self.inner.input.wait().await?;
        Ok(value)
    }

    /// Resets the object now: in-flight events fail with `reason`, held output is dropped,
    /// unflushed writes are discarded, and the next event constructs a new instance. Durable
    /// state is untouched. (`ctx.abort()` in JS.)
    pub fn reset(&self, reason: &str) {
        self.inner.reset(reason);
    }

    /// Tells the runtime that something [`crate::Actor::idle_policy`] depends on changed (a
    /// socket or timer of the host's went away): the object's idleness is looked at again.
    pub fn activity_changed(&self) {
        self.inner.poke_slot();
    }

    /// Spawns a task that belongs to this instance: aborted on reset and eviction. Nothing is
    /// spawned once the instance has been reset.
    pub(crate) fn spawn<F>(&self, f: F)
    where
        F: Future<Output = ()> + 'static,
    {
        if self.inner.is_broken() {
            return;
        }
        let handle = crate::executor::spawn_local(f);
        let mut tasks = self.inner.tasks.borrow_mut();
        tasks.retain(|t| !t.is_finished());
        tasks.push(handle.abort_handle());
    }

    /// Fails once the instance has been reset: its storage handle takes no more calls (a write
    /// made after the reset must never reach the disk).
    pub(crate) fn check_live(&self) -> Result<(), StorageError> {
        match &*self.inner.broken.borrow() {
            Some(b) => Err(StorageError::Reset(b.0.to_string())),
            None => Ok(()),
        }
    }

    /// Records a write in the current turn: the first write of a turn locks the gates and
    /// schedules the flush at the end of the turn. Does nothing after a reset.
    pub(crate) fn note_write(&self, allow_unconfirmed: bool) {
        let inner = &self.inner;
        if inner.is_broken() {
            return;
        }
        let mut turn = inner.turn.borrow_mut();
        let schedule = turn.is_none();
        let locks = turn.get_or_insert_with(|| TurnLocks {
            confirmed: None,
            all: inner.all_writes.lock(),
            alarm: None,
        });
        if !allow_unconfirmed && locks.confirmed.is_none() {
            locks.confirmed = Some(inner.output.lock());
        }
        drop(turn);
        if schedule {
            // Not an instance task: once its batch is queued, the flush must see the commit
            // through even if the instance is reset meanwhile (the slot waits for it before it
            // activates a new instance, and its alarm change must still reach the scheduler).
            crate::executor::spawn_local(self.clone().flush_turn());
        }
    }

    async fn flush_turn(self) {
        // Writes made before the current task yields, and by any task already runnable, join
        // this batch.
        tokio::task::yield_now().await;
        let inner = &self.inner;
        // Gone if the instance was reset first: its unflushed writes were discarded.
        let Some(locks) = inner.turn.borrow_mut().take() else {
            return;
        };
        let slot = inner.slot.upgrade();
        let record = slot.as_ref().map(|s| s.begin_flush(locks.alarm));
        let commit = inner.raw.flush();
        inner.flushes.set(inner.flushes.get() + 1);
        let result = match commit {
            Some(c) => c.await,
            None => Ok(()),
        };
        if let (Some(slot), Some(record)) = (&slot, record) {
            slot.end_flush(&record, result.is_ok(), &inner.alarms);
        }
        match result {
            Ok(()) => {
                if let Some(l) = locks.confirmed {
                    l.confirm();
                }
                locks.all.confirm();
                self.inner.poke_slot();
            }
            Err(e) => {
                let reason = GateBroken::new(format!(
                    "Durable Object reset: a storage write failed and was not made durable: {e}"
                ));
                if let Some(l) = locks.confirmed {
                    l.fail(reason.clone());
                }
                locks.all.fail(reason.clone());
                self.inner.reset(&reason.0);
            }
        }
    }

    /// Notes an alarm change made in the current turn (which must exist: call after the
    /// write).
    pub(crate) fn note_alarm(&self, change: Option<AlarmState>) {
        if let Some(turn) = self.inner.turn.borrow_mut().as_mut() {
            turn.alarm = Some(change);
        }
    }

    /// Records the owning namespace with the object's data, so its alarm can re-create it.
    pub(crate) fn write_meta(&self) {
        if !self.inner.meta_written.replace(true) {
            self.inner.raw.raw_put(
                Section::Meta,
                META_NAMESPACE_KEY,
                bytes::Bytes::from(self.inner.ns.name.clone().into_bytes()),
            );
        }
    }

    /// Runs `f` so that a panic in object code resets the object instead of losing the reply.
    pub(crate) async fn catch<T>(
        &self,
        f: impl Future<Output = Result<T, ActorError>>,
    ) -> Result<T, ActorError> {
        match std::panic::AssertUnwindSafe(f).catch_unwind().await {
            Ok(r) => r,
            Err(_) => {
                let msg = "Durable Object reset: its code panicked";
                self.reset(msg);
                Err(ActorError::new(msg))
            }
        }
    }

    pub(crate) fn is_idle(&self) -> bool {
        let i = &self.inner;
        i.inflight.get() == 0
            && i.wait_until.get() == 0
            && !i.input.is_locked()
            && i.turn.borrow().is_none()
            && i.all_writes.outstanding() == 0
    }
}

impl CtxInner {
    pub(crate) fn is_broken(&self) -> bool {
        self.broken.borrow().is_some()
    }

    pub(crate) fn reset(&self, reason: &str) {
        if self.is_broken() {
            return;
        }
        tracing::warn!(object = %self.id, namespace = %self.ns.name, reason, "resetting Durable Object");
        let broken = GateBroken::new(reason);
        *self.broken.borrow_mut() = Some(broken.clone());
        self.input.set_broken(broken.clone());
        self.output.set_broken(broken.clone());
        self.all_writes.set_broken(broken);
        self.raw.discard();
        // Let the flush task's locks go without confirming anything.
        if let Some(locks) = self.turn.borrow_mut().take() {
            if let Some(l) = locks.confirmed {
                l.fail(GateBroken::new(reason));
            }
            locks.all.fail(GateBroken::new(reason));
        }
        let replies: Vec<_> = self.replies.borrow_mut().drain().collect();
        for (_, tx) in replies {
            let _ = tx.send(Err(ObjectError::Reset(reason.to_string())));
        }
        self.abort_tasks();
        if let Some(slot) = self.slot.upgrade() {
            slot.instance_reset(self.serial);
        }
    }

    pub(crate) fn abort_tasks(&self) {
        let tasks = std::mem::take(&mut *self.tasks.borrow_mut());
        for t in tasks {
            t.abort();
        }
    }

    pub(crate) fn poke_slot(&self) {
        if let Some(slot) = self.slot.upgrade() {
            slot.wake.notify_one();
        }
    }
}

pub(crate) enum Counter {
    Inflight,
    WaitUntil,
}

/// Decrements an activity counter when dropped (also when the task is aborted), and lets the
/// object's loop re-check idleness.
pub(crate) struct ActivityGuard {
    pub(crate) ctx: Weak<CtxInner>,
    pub(crate) counter: Counter,
}

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        if let Some(ctx) = self.ctx.upgrade() {
            let c = match self.counter {
                Counter::Inflight => &ctx.inflight,
                Counter::WaitUntil => &ctx.wait_until,
            };
            c.set(c.get().saturating_sub(1));
            ctx.poke_slot();
        }
    }
}
