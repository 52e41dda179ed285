//! Executor threads: each runs a current-thread tokio runtime with a `LocalSet`, owns the
//! objects whose ids the executor ring maps to it, and delivers their events.
//!
//! Per live object there is one [`Slot`] with a bounded FIFO queue and one loop task. The loop
//! activates the instance on demand, waits for the input gate before each delivery, and evicts
//! the instance when it has been idle long enough. Handlers run as separate local tasks, so an
//! object's events interleave exactly at awaits where the input gate is open.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::task::{Context, Poll};

use cinder_storage::{Section, Store};
use futures::future::LocalBoxFuture;
use rand::Rng;
use tokio::sync::{mpsc, oneshot, Notify};
use tracing::Instrument;

use crate::actor::{Actor, IdlePolicy, Payload, Request, Response};
use crate::alarm::{run_alarm, AlarmScheduler};
use crate::context::{ActivityGuard, ActorContext, Counter, META_NAMESPACE_KEY};
use crate::error::{ActorError, ObjectError};
use crate::gate::InputLock;
use crate::id::ObjectId;
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
    LoadAlarms(Vec<([u8; 32], i64)>),
    Shutdown,
}

/// How long shutdown waits for write batches in flight.
const SHUTDOWN_FLUSH_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

thread_local! {
    static ON_EXECUTOR: Cell<bool> = const { Cell::new(false) };
    /// The executor running on this thread, with its runtime's identity and index: lets a
    /// stub used on its object's own thread dispatch without a channel hop.
    static CURRENT: RefCell<Option<(u64, usize, Weak<Executor>)>> = const { RefCell::new(None) };
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
    objects: RefCell<HashMap<[u8; 32], Rc<Slot>>>,
    alarms: Rc<AlarmScheduler>,
    serial: Cell<u64>,
}

/// Body of executor thread `index`.
pub(crate) fn run_thread(
    runtime: u64,
    index: usize,
    mut rx: mpsc::UnboundedReceiver<Command>,
    store: Arc<Store>,
    cfg: Arc<RuntimeConfig>,
    namespaces: Arc<HashMap<String, Arc<NamespaceEntry>>>,
    live: Arc<AtomicUsize>,
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
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        if let Some(hook) = &cfg.on_thread_start {
            hook(index).await;
        }
        let exec = Rc::new(Executor {
            store,
            cfg,
            namespaces,
            live,
            objects: RefCell::new(HashMap::new()),
            alarms: Rc::new(AlarmScheduler::default()),
            serial: Cell::new(0),
        });
        CURRENT.with(|c| *c.borrow_mut() = Some((runtime, index, Rc::downgrade(&exec))));
        tokio::task::spawn_local(exec.alarms.clone().run(Rc::downgrade(&exec)));
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
        // answered) the chance to become durable before their tasks are dropped.
        let pending: Vec<_> = exec
            .objects
            .borrow()
            .values()
            .filter_map(|s| s.current())
            .map(|i| i.ctx.inner.all_writes.wait())
            .collect();
        if !pending.is_empty() {
            let all = futures::future::join_all(pending);
            if tokio::time::timeout(SHUTDOWN_FLUSH_DEADLINE, all)
                .await
                .is_err()
            {
                tracing::warn!(index, "unflushed writes dropped at shutdown");
            }
        }
        // Dropping the slots and then the LocalSet cancels every task; callers still waiting
        // see their reply channel close (ObjectError::Shutdown).
        let objects = std::mem::take(&mut *exec.objects.borrow_mut());
        drop(objects);
        CURRENT.with(|c| c.borrow_mut().take());
    });
}

impl Executor {
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
                        queue: RefCell::new(VecDeque::new()),
                        wake: Notify::new(),
                        instance: RefCell::new(None),
                        exec: Rc::downgrade(self),
                    });
                    tokio::task::spawn_local(object_loop(slot.clone()));
                    slot
                })
                .clone()
        };
        let is_alarm = matches!(env.event, Event::Alarm { .. });
        // Alarms are never refused: they are the runtime's own, and at most one is pending.
        if !is_alarm && slot.queue.borrow().len() >= self.cfg.max_queued_events {
            reply(env.reply, Err(ObjectError::Overloaded));
            return;
        }
        slot.queue.borrow_mut().push_back(env);
        slot.wake.notify_one();
    }

    fn load_alarms(self: &Rc<Self>, list: Vec<([u8; 32], i64)>) {
        for (key, at) in list {
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
                Some(entry) => self.alarms.schedule(&id, entry, at),
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
    queue: RefCell<VecDeque<Envelope>>,
    pub(crate) wake: Notify,
    instance: RefCell<Option<Rc<Instance>>>,
    exec: Weak<Executor>,
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
        None => match slot.activate(exec) {
            Ok(i) => (i, true),
            Err(e) => {
                let env = slot.queue.borrow_mut().pop_front();
                if let Some(env) = env {
                    reply(env.reply, Err(ObjectError::Remote(e)));
                }
                return;
            }
        },
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
    let lock = inst.ctx.inner.input.lock();
    let seq = NEXT_SEQ.with(|c| {
        let n = c.get();
        c.set(n + 1);
        n
    });
    let ctx = inst.ctx.clone();
    ctx.spawn(run_event(inst, seq, env, lock));
}

thread_local! {
    /// Reply keys; unique per thread, which is more than the per-instance uniqueness needed.
    static NEXT_SEQ: Cell<u64> = const { Cell::new(0) };
}

/// Holds an input lock while the handler takes its first step: from delivery until the
/// handler's first await, no other event may start (it would otherwise run before this one
/// has even issued its first storage call).
struct FirstStep<T> {
    lock: Option<InputLock>,
    fut: LocalBoxFuture<'static, T>,
}

impl<T> Future for FirstStep<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let r = self.fut.as_mut().poll(cx);
        self.lock = None;
        r
    }
}

async fn run_event(inst: Rc<Instance>, seq: u64, env: Envelope, lock: InputLock) {
    let ctx = inst.ctx.clone();
    let inner = &ctx.inner;
    inner.inflight.set(inner.inflight.get() + 1);
    let _active = ActivityGuard {
        ctx: Rc::downgrade(&ctx.inner),
        counter: Counter::Inflight,
    };
    if let Some(tx) = env.reply {
        inner.replies.borrow_mut().insert(seq, tx);
    }
    let span = tracing::info_span!(
        "durable_object_event",
        namespace = %inner.ns.name,
        object = %inner.id,
        kind = env.event.kind(),
    );
    let actor = inst.actor.clone();
    let fut: LocalBoxFuture<'static, Result<Reply, ActorError>> = match env.event {
        Event::Fetch(req) => Box::pin(async move { actor.fetch(*req).await.map(Reply::Fetch) }),
        Event::Call(p) => Box::pin(async move { actor.call(p).await.map(Reply::Call) }),
        Event::Alarm {
            scheduled_time,
            retry_count,
        } => run_alarm(ctx.clone(), actor, scheduled_time, retry_count),
    };
    async move {
        let result = ctx
            .catch(FirstStep {
                lock: Some(lock),
                fut,
            })
            .await;
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
    }
    .instrument(span)
    .await
}
