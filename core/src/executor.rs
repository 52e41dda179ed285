//! Executor threads: each runs a current-thread tokio runtime with a `LocalSet`, owns the
//! objects whose ids the executor ring maps to it, and delivers their events.
//!
//! Per live object there is one [`Slot`] with a bounded FIFO queue and one loop task. The loop
//! activates the instance on demand, waits for the input gate before each delivery, and evicts
//! the instance when it has been idle long enough. Handlers run as separate local tasks, each
//! admitted through the input gate ([`crate::gate::Admitted`]), so an object's events
//! interleave exactly at awaits where the input gate lets them.
//!
//! The slot outlives its instances: it keeps the object's write batches that are still on
//! their way to disk, applies their alarm changes to the scheduler in the order they were
//! committed, and activates a new instance only once every batch of the previous one is durable
//! (or failed), so a new instance never answers from data a power cut could still take away.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::Arc;

use cinder_storage::{AlarmState, Section, Store};
use futures::future::LocalBoxFuture;
use rand::Rng;
use tokio::sync::{mpsc, oneshot, Notify};
use tracing::Instrument;

use crate::actor::{Actor, IdlePolicy, Payload, Request, Response};
use crate::alarm::{run_alarm, AlarmScheduler};
use crate::context::{ActivityGuard, ActorContext, Counter, META_NAMESPACE_KEY};
use crate::error::{ActorError, ObjectError};
use crate::gate::Admitted;
use crate::id::{ObjectId, WRONG_NAMESPACE_MESSAGE};
use crate::runtime::{NamespaceEntry, RuntimeConfig};

pub(crate) enum Event {
    // Boxed: a request head is large, and envelopes move through channels and queues.
    Fetch(Box<Request>),
    Call(Payload),
    Alarm {
        scheduled_time: i64,
        retry_count: u32,
    },
}

impl Event {
    fn kind(&self) -> &'static str {
        match self {
            Event::Fetch(_) => "fetch",
            Event::Call(_) => "call",
            Event::Alarm { .. } => "alarm",
        }
    }
}

pub(crate) enum Reply {
    Fetch(Response),
    Call(Payload),
    Alarm,
}

pub(crate) type ReplyTx = oneshot::Sender<Result<Reply, ObjectError>>;

pub(crate) struct Envelope {
    pub(crate) ns: Arc<NamespaceEntry>,
    pub(crate) id: ObjectId,
    pub(crate) event: Event,
    pub(crate) reply: Option<ReplyTx>,
}

fn reply(tx: Option<ReplyTx>, r: Result<Reply, ObjectError>) {
    if let Some(tx) = tx {
        let _ = tx.send(r);
    }
}

pub(crate) enum Command {
    Event(Envelope),
    /// A host task to run on this thread (see [`crate::Runtime::run_on`]).
    Run(crate::runtime::ThreadTask),
    /// Alarms found in storage at start-up that belong to this executor.
    LoadAlarms(Vec<([u8; 32], AlarmState)>),
    Shutdown,
}

/// How long shutdown waits for write batches in flight.
const SHUTDOWN_FLUSH_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

thread_local! {
    static ON_EXECUTOR: Cell<bool> = const { Cell::new(false) };
    /// The executor running on this thread, with its runtime's identity and index: lets a
    /// stub used on its object's own thread dispatch without a channel hop.
    static CURRENT: RefCell<Option<(u64, usize, Weak<Executor>)>> = const { RefCell::new(None) };
    /// The executor's task set. A host may poll futures in tasks it spawned on the thread's
    /// runtime outside the set (deno_core drives async ops that way); `tokio::task::spawn_local`
    /// panics there, so core spawns through [`spawn_local`], which reaches the set from both.
    static TASKS: RefCell<Option<Rc<tokio::task::LocalSet>>> = const { RefCell::new(None) };
}

/// Spawns a task of this executor thread: onto its `LocalSet` from anywhere on the thread (on a
/// thread that is not an executor, onto the `LocalSet` the caller runs in).
pub(crate) fn spawn_local<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + 'static,
    F::Output: 'static,
{
    match TASKS.with(|t| t.borrow().clone()) {
        Some(set) => set.spawn_local(future),
        None => tokio::task::spawn_local(future),
    }
}

/// Whether the calling thread is an executor thread (blocking on the runtime there deadlocks).
pub(crate) fn on_executor_thread() -> bool {
    ON_EXECUTOR.with(|c| c.get())
}

/// The index of the executor thread the caller runs on, if it is one.
pub(crate) fn current_index() -> Option<usize> {
    CURRENT.with(|c| c.borrow().as_ref().map(|(_, i, _)| *i))
}

/// Dispatches `env` directly when the caller runs on executor `index` of runtime `runtime`;
/// hands it back otherwise.
pub(crate) fn dispatch_local(runtime: u64, index: usize, env: Envelope) -> Result<(), Envelope> {
    let exec = CURRENT.with(|c| match &*c.borrow() {
        Some((r, i, w)) if *r == runtime && *i == index => w.upgrade(),
        _ => None,
    });
    match exec {
        Some(exec) => {
            exec.dispatch(env);
            Ok(())
        }
        None => Err(env),
    }
}

pub(crate) struct Executor {
    store: Arc<Store>,
    cfg: Arc<RuntimeConfig>,
    namespaces: Arc<HashMap<String, Arc<NamespaceEntry>>>,
    live: Arc<AtomicUsize>,
    queued: Arc<AtomicUsize>,
    objects: RefCell<HashMap<[u8; 32], Rc<Slot>>>,
    alarms: Rc<AlarmScheduler>,
    serial: Cell<u64>,
}

/// Node-wide gauges the executor threads keep up to date (read by [`crate::Runtime`]).
pub(crate) struct Counters {
    pub(crate) live: Arc<AtomicUsize>,
    pub(crate) queued: Arc<AtomicUsize>,
}

/// One object's events not yet delivered, FIFO, counted in the node-wide `queued` gauge (a
/// slot dropped with events still queued takes them off the gauge).
struct EventQueue {
    items: VecDeque<Envelope>,
    queued: Arc<AtomicUsize>,
}

impl EventQueue {
    fn new(queued: Arc<AtomicUsize>) -> EventQueue {
        EventQueue {
            items: VecDeque::new(),
            queued,
        }
    }

    fn len(&self) -> usize {
        self.items.len()
    }

    fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    fn push_back(&mut self, env: Envelope) {
        self.queued.fetch_add(1, AtomicOrdering::Relaxed);
        self.items.push_back(env);
    }

    fn pop_front(&mut self) -> Option<Envelope> {
        let env = self.items.pop_front();
        if env.is_some() {
            self.queued.fetch_sub(1, AtomicOrdering::Relaxed);
        }
        env
    }
}

impl Drop for EventQueue {
    fn drop(&mut self) {
        self.queued
            .fetch_sub(self.items.len(), AtomicOrdering::Relaxed);
    }
}

/// Body of executor thread `index`.
pub(crate) fn run_thread(
    runtime: u64,
    index: usize,
    mut rx: mpsc::UnboundedReceiver<Command>,
    store: Arc<Store>,
    cfg: Arc<RuntimeConfig>,
    namespaces: Arc<HashMap<String, Arc<NamespaceEntry>>>,
    counters: Counters,
) {
    ON_EXECUTOR.with(|c| c.set(true));
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(index, error = %e, "cannot build the executor's tokio runtime");
            return;
        }
    };
    let local = Rc::new(tokio::task::LocalSet::new());
    TASKS.with(|t| *t.borrow_mut() = Some(local.clone()));
    local.block_on(&rt, async move {
        if let Some(hook) = &cfg.on_thread_start {
            hook(index).await;
        }
        let exec = Rc::new(Executor {
            store,
            cfg,
            namespaces,
            live: counters.live,
            queued: counters.queued,
            objects: RefCell::new(HashMap::new()),
            alarms: Rc::new(AlarmScheduler::default()),
            serial: Cell::new(0),
        });
        CURRENT.with(|c| *c.borrow_mut() = Some((runtime, index, Rc::downgrade(&exec))));
        spawn_local(exec.alarms.clone().run(Rc::downgrade(&exec)));
        while let Some(cmd) = rx.recv().await {
            match cmd {
                Command::Event(env) => exec.dispatch(env),
                Command::Run(task) => task(),
                Command::LoadAlarms(list) => exec.load_alarms(list),
                Command::Shutdown => break,
            }
        }
        tracing::debug!(index, "executor shutting down");
        if let Some(hook) = &exec.cfg.on_thread_stop {
            hook(index).await;
        }
        // Give batches already written (e.g. `allow_unconfirmed` ones, whose events have
        // answered, or those of instances already reset) the chance to become durable before
        // their tasks are dropped.
        let slots: Vec<Rc<Slot>> = exec.objects.borrow().values().cloned().collect();
        let pending = futures::future::join_all(slots.iter().map(|s| {
            let writes = s.current().map(|i| i.ctx.inner.all_writes.wait());
            async move {
                if let Some(w) = writes {
                    let _ = w.await;
                }
                s.flushes_done().await;
            }
        }));
        if tokio::time::timeout(SHUTDOWN_FLUSH_DEADLINE, pending)
            .await
            .is_err()
        {
            tracing::warn!(index, "unflushed writes dropped at shutdown");
        }
        // Dropping the slots and then the LocalSet cancels every task; callers still waiting
        // see their reply channel close (ObjectError::Shutdown).
        let objects = std::mem::take(&mut *exec.objects.borrow_mut());
        drop(objects);
        CURRENT.with(|c| c.borrow_mut().take());
    });
    TASKS.with(|t| t.borrow_mut().take());
}

impl Executor {
    pub(crate) fn cfg(&self) -> Arc<RuntimeConfig> {
        self.cfg.clone()
    }

    /// Routes an event to its object's queue, creating the slot (and its loop) if the object
    /// is not live. Never waits.
    pub(crate) fn dispatch(self: &Rc<Self>, env: Envelope) {
        let key = *env.id.bytes();
        let slot = {
            let mut objects = self.objects.borrow_mut();
            objects
                .entry(key)
                .or_insert_with(|| {
                    let slot = Rc::new(Slot {
                        id: env.id.clone(),
                        ns: env.ns.clone(),
                        cfg: self.cfg.clone(),
                        store: self.store.clone(),
                        queue: RefCell::new(EventQueue::new(self.queued.clone())),
                        wake: Notify::new(),
                        instance: RefCell::new(None),
                        exec: Rc::downgrade(self),
                        flushes: RefCell::new(VecDeque::new()),
                    });
                    spawn_local(object_loop(slot.clone()));
                    slot
                })
                .clone()
        };
        // Storage and slots are keyed by id bytes; an id reaches a slot of another namespace
        // only if it was never checked against its own (`Namespace::get` checks). Refuse it
        // rather than hand one class's event to another's instance.
        if !Arc::ptr_eq(&slot.ns, &env.ns) {
            reply(
                env.reply,
                Err(ObjectError::InvalidId(WRONG_NAMESPACE_MESSAGE.into())),
            );
            return;
        }
        let is_alarm = matches!(env.event, Event::Alarm { .. });
        // Alarms are never refused: they are the runtime's own, and at most one is pending.
        if !is_alarm && slot.queue.borrow().len() >= self.cfg.max_queued_events {
            reply(env.reply, Err(ObjectError::Overloaded));
            return;
        }
        slot.queue.borrow_mut().push_back(env);
        slot.wake.notify_one();
    }

    fn load_alarms(self: &Rc<Self>, list: Vec<([u8; 32], AlarmState)>) {
        for (key, state) in list {
            let id = ObjectId::from_bytes_unchecked(key);
            // No object of this id is live yet, so a throw-away handle reads committed state.
            let owner = self
                .store
                .object(key)
                .raw_get(Section::Meta, META_NAMESPACE_KEY);
            let ns = match owner {
                Ok(Some(name)) => String::from_utf8_lossy(&name).into_owned(),
                Ok(None) => {
                    tracing::warn!(object = %id, "alarm without an owning namespace; skipped");
                    continue;
                }
                Err(e) => {
                    tracing::error!(object = %id, error = %e, "cannot read alarm owner; skipped");
                    continue;
                }
            };
            match self.namespaces.get(&ns) {
                Some(entry) if entry.ids.id_from_bytes(key).is_ok() => {
                    self.alarms.schedule(&id, entry, state)
                }
                Some(_) => {
                    tracing::warn!(object = %id, namespace = %ns, "alarm of an id its namespace does not accept; skipped")
                }
                None => {
                    tracing::warn!(object = %id, namespace = %ns, "alarm of an unknown namespace; skipped")
                }
            }
        }
    }
}

pub(crate) struct Slot {
    pub(crate) id: ObjectId,
    pub(crate) ns: Arc<NamespaceEntry>,
    pub(crate) cfg: Arc<RuntimeConfig>,
    pub(crate) store: Arc<Store>,
    queue: RefCell<EventQueue>,
    pub(crate) wake: Notify,
    instance: RefCell<Option<Rc<Instance>>>,
    exec: Weak<Executor>,
    /// Write batches of this object (of any instance) not yet durable, oldest first.
    flushes: RefCell<VecDeque<Rc<FlushRecord>>>,
}

/// One write batch on its way to disk, as the slot tracks it.
pub(crate) struct FlushRecord {
    /// The alarm change it carries (`Some(None)`: deleted).
    alarm: Option<Option<AlarmState>>,
    /// `Some(durable?)` once its commit resolved.
    done: Cell<Option<bool>>,
}

struct Instance {
    ctx: ActorContext,
    actor: Rc<dyn Actor>,
    live: Arc<AtomicUsize>,
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.live.fetch_sub(1, AtomicOrdering::Relaxed);
    }
}

impl Slot {
    /// Registers a batch about to be queued (in commit order: the flush that calls this queues
    /// its batch before it yields).
    pub(crate) fn begin_flush(&self, alarm: Option<Option<AlarmState>>) -> Rc<FlushRecord> {
        let r = Rc::new(FlushRecord {
            alarm,
            done: Cell::new(None),
        });
        self.flushes.borrow_mut().push_back(r.clone());
        r
    }

    /// Records a batch's outcome, then applies the alarm changes of every resolved batch at the
    /// front, in commit order: the scheduler ends up where storage is, whatever order the
    /// flush tasks ran in.
    pub(crate) fn end_flush(&self, record: &FlushRecord, durable: bool, alarms: &AlarmScheduler) {
        record.done.set(Some(durable));
        loop {
            let front = {
                let mut q = self.flushes.borrow_mut();
                match q.front() {
                    Some(f) if f.done.get().is_some() => q.pop_front(),
                    _ => None,
                }
            };
            let Some(f) = front else { break };
            if f.done.get() == Some(true) {
                match f.alarm {
                    Some(Some(state)) => alarms.schedule(&self.id, &self.ns, state),
                    Some(None) => alarms.cancel(self.id.bytes()),
                    None => {}
                }
            }
        }
        // Both the object's loop and a shutting-down executor may wait for this.
        self.wake.notify_waiters();
        self.wake.notify_one();
    }

    /// Resolves when no batch of this object is on its way to disk.
    async fn flushes_done(&self) {
        while !self.flushes.borrow().is_empty() {
            self.wake.notified().await;
        }
    }

    /// Called by a resetting context: forget the instance so the next event constructs anew.
    pub(crate) fn instance_reset(&self, serial: u64) {
        let mut inst = self.instance.borrow_mut();
        let old = if inst.as_ref().is_some_and(|i| i.ctx.inner.serial == serial) {
            inst.take()
        } else {
            None
        };
        // Dropped outside the borrow: an actor's destructor may reach back into the runtime.
        drop(inst);
        drop(old);
        self.wake.notify_one();
    }

    fn current(&self) -> Option<Rc<Instance>> {
        self.instance.borrow().clone()
    }

    fn activate(self: &Rc<Self>, exec: &Rc<Executor>) -> Result<Rc<Instance>, ActorError> {
        let serial = exec.serial.get() + 1;
        exec.serial.set(serial);
        let ctx = ActorContext::new(self, serial, exec.alarms.clone());
        let span = tracing::debug_span!("activate", namespace = %self.ns.name, object = %self.id);
        let _enter = span.enter();
        let created = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.ns.factory.create(ctx.clone())
        }));
        let actor = match created {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                ctx.inner.abort_tasks();
                return Err(e);
            }
            Err(_) => {
                ctx.inner.abort_tasks();
                return Err(ActorError::new("Durable Object constructor panicked"));
            }
        };
        exec.live.fetch_add(1, AtomicOrdering::Relaxed);
        let inst = Rc::new(Instance {
            ctx,
            actor: Rc::from(actor),
            live: exec.live.clone(),
        });
        *self.instance.borrow_mut() = Some(inst.clone());
        Ok(inst)
    }

    fn idle_timeout(&self, actor: &dyn Actor) -> Option<std::time::Duration> {
        match actor.idle_policy() {
            IdlePolicy::Never => None,
            IdlePolicy::After(d) => Some(d),
            IdlePolicy::Default => {
                let (lo, hi) = (self.cfg.idle_timeout_min, self.cfg.idle_timeout_max);
                if hi <= lo {
                    Some(lo)
                } else {
                    Some(rand::rng().random_range(lo..=hi))
                }
            }
        }
    }
}

async fn object_loop(slot: Rc<Slot>) {
    loop {
        let Some(exec) = slot.exec.upgrade() else {
            return;
        };
        let has_event = !slot.queue.borrow().is_empty();
        if has_event {
            deliver_front(&slot, &exec).await;
            continue;
        }
        let Some(inst) = slot.current() else {
            if !slot.flushes.borrow().is_empty() {
                // A reset instance's batches are still on their way: the slot stays until they
                // land, so the next instance of this id finds them here and waits.
                drop(exec);
                slot.wake.notified().await;
                continue;
            }
            // Nothing live and nothing queued: the object leaves this thread.
            let mut objects = exec.objects.borrow_mut();
            if objects
                .get(slot.id.bytes())
                .is_some_and(|s| Rc::ptr_eq(s, &slot))
            {
                objects.remove(slot.id.bytes());
            }
            return;
        };
        drop(exec);
        if !inst.ctx.is_idle() {
            slot.wake.notified().await;
            continue;
        }
        let Some(timeout) = slot.idle_timeout(&*inst.actor) else {
            slot.wake.notified().await;
            continue;
        };
        tokio::select! {
            _ = slot.wake.notified() => {}
            _ = tokio::time::sleep(timeout) => {
                let still_current = slot.current().is_some_and(|i| Rc::ptr_eq(&i, &inst));
                if still_current && slot.queue.borrow().is_empty() && inst.ctx.is_idle() {
                    tracing::debug!(namespace = %slot.ns.name, object = %slot.id, "evicting idle Durable Object");
                    inst.actor.on_evict();
                    inst.ctx.inner.abort_tasks();
                    let old = slot.instance.borrow_mut().take();
                    drop(old);
                }
            }
        }
    }
}

/// Delivers the event at the front of the queue. It stays queued (and counted against the
/// queue bound) until the input gate lets it in.
async fn deliver_front(slot: &Rc<Slot>, exec: &Rc<Executor>) {
    let (inst, fresh) = match slot.current() {
        Some(i) => (i, false),
        None => {
            if !slot.flushes.borrow().is_empty() {
                // Every batch of the previous instance must be durable (or failed) before a new
                // one reads: what it would answer must not be lost by a power cut.
                slot.wake.notified().await;
                return;
            }
            match slot.activate(exec) {
                Ok(i) => (i, true),
                Err(e) => {
                    let env = slot.queue.borrow_mut().pop_front();
                    if let Some(env) = env {
                        reply(env.reply, Err(ObjectError::Remote(e)));
                    }
                    return;
                }
            }
        }
    };
    if let Err(broken) = inst.ctx.inner.input.wait().await {
        // Reset while the event waited. If the instance was created for this very event, its
        // construction failed (e.g. a critical section started by the constructor threw): the
        // event fails, or every retry would construct and fail again. Otherwise it stays
        // queued for the next instance.
        if fresh {
            let env = slot.queue.borrow_mut().pop_front();
            if let Some(env) = env {
                reply(env.reply, Err(ObjectError::Reset(broken.0.to_string())));
            }
        }
        return;
    }
    let Some(env) = slot.queue.borrow_mut().pop_front() else {
        return;
    };
    let seq = NEXT_SEQ.with(|c| {
        let n = c.get();
        c.set(n + 1);
        n
    });
    let ctx = inst.ctx.clone();
    let actor = inst.actor.clone();
    let kind = env.event.kind();
    let handler: LocalBoxFuture<'static, Result<Reply, ActorError>> = match env.event {
        Event::Fetch(req) => Box::pin(async move { actor.fetch(*req).await.map(Reply::Fetch) }),
        Event::Call(p) => Box::pin(async move { actor.call(p).await.map(Reply::Call) }),
        Event::Alarm {
            scheduled_time,
            retry_count,
        } => run_alarm(ctx.clone(), actor, scheduled_time, retry_count),
    };
    // Admitted from here on, holding its own lock until the end of its first poll: no other
    // event starts before this one has taken its first step.
    let handler = ctx.inner.input.admit_first_step(handler);
    ctx.spawn(run_event(inst, seq, kind, env.reply, handler));
}

thread_local! {
    /// Reply keys; unique per thread, which is more than the per-instance uniqueness needed.
    static NEXT_SEQ: Cell<u64> = const { Cell::new(0) };
}

type Handler = Admitted<LocalBoxFuture<'static, Result<Reply, ActorError>>>;

async fn run_event(
    inst: Rc<Instance>,
    seq: u64,
    kind: &'static str,
    reply_tx: Option<ReplyTx>,
    handler: Handler,
) {
    let ctx = inst.ctx.clone();
    let inner = &ctx.inner;
    inner.inflight.set(inner.inflight.get() + 1);
    let _active = ActivityGuard {
        ctx: Rc::downgrade(&ctx.inner),
        counter: Counter::Inflight,
    };
    if let Some(tx) = reply_tx {
        inner.replies.borrow_mut().insert(seq, tx);
    }
    let span = tracing::info_span!(
        "durable_object_event",
        namespace = %inner.ns.name,
        object = %inner.id,
        kind,
    );
    async move {
        let result = ctx.catch(handler).await;
        // Whatever the object answers is output: it leaves only once every write issued
        // before it is durable.
        let gate = ctx.inner.output.wait().await;
        let out = match (result, gate) {
            (_, Err(broken)) => Err(ObjectError::Reset(broken.0.to_string())),
            (Ok(r), Ok(())) => Ok(r),
            (Err(e), Ok(())) => {
                tracing::debug!(error = %e, "event failed");
                Err(ObjectError::Remote(e))
            }
        };
        let tx = ctx.inner.replies.borrow_mut().remove(&seq);
        reply(tx, out);
        drop(inst);
    }
    .instrument(span)
    .await
}
