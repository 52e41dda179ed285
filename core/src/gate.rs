//! The two I/O gates that give a Durable Object its consistency guarantees.
//!
//! An object runs on one thread, so its code never races with itself *between* awaits. What
//! remains is the interleaving *at* awaits and the ordering between what the object has written
//! and what the world sees. Two gates close those holes, after the model of workerd's
//! `io-gate.h`:
//!
//! - [`InputGate`] — **keeps events out.** While it is locked, nothing new enters the object:
//!   no request, RPC call, WebSocket message, alarm or timer is delivered, and no code of the
//!   object resumes unless it belongs to whoever holds the lock. Storage reads lock it while
//!   they are outstanding, so `let v = get(k).await; put(k, v + 1)` is atomic without any
//!   transaction. Outbound I/O alone does not lock it: an object waiting on a slow `fetch()`
//!   keeps serving other requests.
//! - [`OutputGate`] — **keeps messages in.** Every write locks it until the write is durable.
//!   Anything the object sends (a response, an RPC return value, an outbound request, a
//!   WebSocket message) first waits for every lock taken *before* it was sent, so nobody ever
//!   observes a write that could still be lost. The object's code keeps running meanwhile: only
//!   outgoing messages wait, which is what lets it skip awaiting its writes. If a write fails,
//!   the gate *breaks*: every held and future message is dropped with an error, and the owner
//!   resets the object.
//!
//! ## Admission: every resumption passes the input gate
//!
//! `InputGate::lock` never waits: the caller is running, so it was admitted. That is sound only
//! if *every* resumption of object code passes the gate — after a storage read, but just as much
//! after `sync()`, after an output-gate wait, after a critical section, after a timer or any
//! plain future. Checking at each await cannot be complete (object code may await anything), so
//! the check sits where every resumption goes through: the poll of the task. Object code runs
//! inside an [`Admitted`] future ([`InputGate::admit`]; the runtime wraps every event handler,
//! critical section and `wait_until` task), which polls its inner future only while the gate
//! *admits* it:
//!
//! - every lock is held by it or by one of its ancestors (the task that started it: a critical
//!   section started inside a handler runs while the handler's own read is outstanding, and the
//!   handler waits for the section);
//! - locks of critical sections that have not started yet do not count, so two sections started
//!   back to back run one after the other instead of waiting on each other;
//! - a lock taken outside any `Admitted` future (by a host's own event loop) belongs to nobody
//!   and blocks every admitted task until it is dropped.
//!
//! Who holds a lock is whoever was being polled when it was taken. [`InputGate::wait`] applies
//! the same rule for the task polling it; polled outside any `Admitted` future (the runtime's
//! event loop, a host's loop) it waits until no lock at all exists, pending critical sections
//! included.
//!
//! A host that runs object code outside core's tasks (the JS host runs continuations in the
//! isolate's event loop) does the same by hand: it takes an [`InputLock`] around a read it
//! issues with `allow_concurrency: true` and drops it once the continuation has run, and it
//! awaits [`InputGate::wait`] before resuming object code after anything else (a timer, the end
//! of an output-gate wait, `sync()`). [`OutputGate::wait`] does not pass the input gate by
//! itself: the runtime uses it before answering, which is output, not a resumption.
//!
//! Both gates are single-threaded (`!Send`): they live with their object on its executor
//! thread. Neither knows about storage or the runtime:
//!
//! | who                      | input gate                         | output gate                  |
//! |--------------------------|------------------------------------|------------------------------|
//! | storage read             | `lock()` for the read's duration   | —                            |
//! | storage write            | —                                  | `lock()` until the batch is durable |
//! | `block_concurrency_while`| a critical section ([`Admitted`]) holds a lock for its run | — |
//! | event delivery           | `wait()`, then a lock for the handler's first poll | — |
//! | any resumption of object code | admission ([`Admitted`])      | —                            |
//! | outbound I/O             | —                                  | `wait()` before it starts    |
//! | response / return value  | —                                  | `wait()` before leaving      |

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// The reason a gate broke: the object is being reset and will never open again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct GateBroken(pub Rc<str>);

impl GateBroken {
    /// A broken-gate error with this message.
    pub fn new(message: impl AsRef<str>) -> GateBroken {
        GateBroken(Rc::from(message.as_ref()))
    }
}

/// Wakes every waiter. Called with no `RefCell` borrow held: a woken task may be polled (or a
/// waker may run code) that reaches back into the gate, as tokio's own primitives allow.
fn wake_all(waiters: Vec<Waker>) {
    for w in waiters {
        w.wake();
    }
}

fn register(waiters: &mut Vec<Waker>, waker: &Waker) {
    if !waiters.iter().any(|w| w.will_wake(waker)) {
        waiters.push(waker.clone());
    }
}

// ---------------------------------------------------------------------------------------------
// Holders: who is running

/// One admitted task (or critical section) and the one it was started from.
struct Holder {
    parent: Option<Rc<Holder>>,
}

impl Holder {
    /// Whether `self` is `other` or one of its ancestors.
    fn covers(self: &Rc<Self>, other: &Rc<Holder>) -> bool {
        let mut cur = Some(other);
        while let Some(h) = cur {
            if Rc::ptr_eq(self, h) {
                return true;
            }
            cur = h.parent.as_ref();
        }
        false
    }
}

thread_local! {
    /// The holders being polled right now, innermost last.
    static POLLING: RefCell<Vec<Rc<Holder>>> = const { RefCell::new(Vec::new()) };
}

fn current_holder() -> Option<Rc<Holder>> {
    POLLING.with(|p| p.borrow().last().cloned())
}

/// Pops the holder when the poll ends, also by unwinding (a panicking handler is caught further
/// out and must not leave a stale holder behind).
struct PollingGuard;

impl PollingGuard {
    fn enter(h: &Rc<Holder>) -> PollingGuard {
        POLLING.with(|p| p.borrow_mut().push(h.clone()));
        PollingGuard
    }
}

impl Drop for PollingGuard {
    fn drop(&mut self) {
        POLLING.with(|p| p.borrow_mut().pop());
    }
}

// ---------------------------------------------------------------------------------------------
// Input gate

/// Blocks the delivery of new events to an object, and the resumption of its code, while any
/// [`InputLock`] exists (see the module docs for who may still run).
///
/// **Who locks:** code that is already running inside the object and must not be interleaved
/// with: a storage read while it is outstanding, a critical section (`block_concurrency_while`)
/// for its whole run, a transaction, and the runtime while an event's handler takes its first
/// (synchronous) step. [`InputGate::lock`] never waits — the caller is by definition already
/// admitted.
///
/// **Who waits:** everything that would *enter* or *resume* the object: the event loop before it
/// delivers the next queued event, every [`Admitted`] task before it is polled, and
/// [`InputGate::wait`].
///
/// The gate opens when the last lock is dropped, and then every waiter is woken; each re-checks
/// the gate when it runs, so if the first one to run locks again (a handler issuing a storage
/// read), the others keep waiting.
///
/// A gate can be *broken* when its object is reset: waiters then fail with [`GateBroken`] rather
/// than wait for ever on an object that is gone, and admitted tasks are not polled again.
#[derive(Clone, Default)]
pub struct InputGate {
    state: Rc<RefCell<InputState>>,
}

#[derive(Default)]
struct InputState {
    next_lock: u64,
    locks: BTreeMap<u64, LockEntry>,
    waiters: Vec<Waker>,
    broken: Option<GateBroken>,
}

struct LockEntry {
    /// `None`: taken outside any admitted task; blocks every admitted task.
    owner: Option<Rc<Holder>>,
    /// `false` for a critical section that has not been polled yet.
    started: bool,
}

impl InputState {
    fn add(&mut self, owner: Option<Rc<Holder>>, started: bool) -> u64 {
        self.next_lock += 1;
        let id = self.next_lock;
        self.locks.insert(id, LockEntry { owner, started });
        id
    }

    /// Removes a lock; returns the waiters to wake if the gate may now admit someone new.
    fn remove(&mut self, id: u64) -> Vec<Waker> {
        if self.locks.remove(&id).is_some() {
            std::mem::take(&mut self.waiters)
        } else {
            Vec::new()
        }
    }

    /// Whether code of `who` (`None`: outside any admitted task) may run now.
    fn admits(&self, who: Option<&Rc<Holder>>) -> bool {
        match who {
            None => self.locks.is_empty(),
            Some(h) => self
                .locks
                .values()
                .all(|l| !l.started || l.owner.as_ref().is_some_and(|o| o.covers(h))),
        }
    }
}

fn release(state: &RefCell<InputState>, id: u64) {
    let waiters = state.borrow_mut().remove(id);
    wake_all(waiters);
}

impl fmt::Debug for InputGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.state.borrow();
        f.debug_struct("InputGate")
            .field("locks", &s.locks.len())
            .field("broken", &s.broken)
            .finish()
    }
}

impl InputGate {
    /// A new, open gate.
    pub fn new() -> InputGate {
        InputGate::default()
    }

    /// Locks the gate until the returned lock (and every other) is dropped. Never waits. The
    /// lock belongs to the [`Admitted`] task being polled, if any.
    pub fn lock(&self) -> InputLock {
        let id = self.state.borrow_mut().add(current_holder(), true);
        InputLock {
            state: self.state.clone(),
            id,
        }
    }

    /// Resolves once the polling task may run (see the module docs: for code outside any
    /// admitted task, once no lock exists at all), or fails if the gate breaks first.
    ///
    /// The check happens when the future is polled, so a caller that resumes and then runs
    /// synchronously (until its next await) does so with the gate still admitting it; nobody
    /// else can lock it in between on a single thread.
    pub fn wait(&self) -> InputWait {
        InputWait {
            state: self.state.clone(),
        }
    }

    /// Whether any lock exists (critical sections not yet started included).
    pub fn is_locked(&self) -> bool {
        !self.state.borrow().locks.is_empty()
    }

    /// Breaks the gate: current and future waiters fail with `reason`, admitted tasks are not
    /// polled again. Locks may still be dropped afterwards; the gate never opens again.
    pub fn set_broken(&self, reason: GateBroken) {
        let waiters = {
            let mut s = self.state.borrow_mut();
            if s.broken.is_none() {
                s.broken = Some(reason);
            }
            std::mem::take(&mut s.waiters)
        };
        wake_all(waiters);
    }

    /// Why the gate broke, if it did.
    pub fn broken(&self) -> Option<GateBroken> {
        self.state.borrow().broken.clone()
    }

    /// Runs `f` as object code: it is polled only while the gate admits it. Its parent is the
    /// admitted task polling at this call, if any (so a task started from a handler may run
    /// while the handler's own read is outstanding). Spawn the result (or await it).
    pub fn admit<F: Future>(&self, f: F) -> Admitted<F> {
        Admitted {
            state: self.state.clone(),
            holder: Rc::new(Holder {
                parent: current_holder(),
            }),
            inner: Box::pin(f),
            own_lock: None,
            first_step: None,
        }
    }

    /// A critical section: `f` admitted, holding a lock taken *now* (so no event is delivered
    /// from this call on) and kept until `f` is done or dropped. It starts (and its lock starts
    /// blocking the tasks it does not cover) when the gate first admits it.
    pub(crate) fn critical_section<F: Future>(&self, f: F) -> Admitted<F> {
        let mut a = self.admit(f);
        let id = self.state.borrow_mut().add(Some(a.holder.clone()), false);
        a.own_lock = Some(id);
        a
    }

    /// An event handler: `f` admitted, and a lock of its own held from now until the end of
    /// its first poll, so no other event starts before this one has taken its first step.
    pub(crate) fn admit_first_step<F: Future>(&self, f: F) -> Admitted<F> {
        let mut a = self.admit(f);
        let id = self.state.borrow_mut().add(Some(a.holder.clone()), true);
        a.first_step = Some(id);
        a
    }
}

/// Holds an [`InputGate`] locked; dropping it releases the lock.
#[must_use = "the gate is unlocked as soon as the lock is dropped"]
pub struct InputLock {
    state: Rc<RefCell<InputState>>,
    id: u64,
}

impl fmt::Debug for InputLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InputLock({})", self.id)
    }
}

impl Drop for InputLock {
    fn drop(&mut self) {
        release(&self.state, self.id);
    }
}

/// Future returned by [`InputGate::wait`].
#[must_use = "futures do nothing unless polled"]
pub struct InputWait {
    state: Rc<RefCell<InputState>>,
}

impl Future for InputWait {
    type Output = Result<(), GateBroken>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut s = self.state.borrow_mut();
        if let Some(b) = &s.broken {
            return Poll::Ready(Err(b.clone()));
        }
        if s.admits(current_holder().as_ref()) {
            return Poll::Ready(Ok(()));
        }
        register(&mut s.waiters, cx.waker());
        Poll::Pending
    }
}

/// Object code under the input gate (see [`InputGate::admit`]): polled only while the gate
/// admits it. Once the gate is broken it is never polled again (the owner aborts it).
#[must_use = "futures do nothing unless polled"]
pub struct Admitted<F> {
    state: Rc<RefCell<InputState>>,
    holder: Rc<Holder>,
    inner: Pin<Box<F>>,
    /// A critical section's lock, held until the future is done.
    own_lock: Option<u64>,
    /// A handler's first-step lock, released after its first poll.
    first_step: Option<u64>,
}

impl<F> Admitted<F> {
    fn release_locks(&mut self) {
        for id in [self.own_lock.take(), self.first_step.take()]
            .into_iter()
            .flatten()
        {
            release(&self.state, id);
        }
    }
}

impl<F> Drop for Admitted<F> {
    fn drop(&mut self) {
        self.release_locks();
    }
}

impl<F: Future> Future for Admitted<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        {
            let mut s = this.state.borrow_mut();
            if s.broken.is_some() {
                return Poll::Pending;
            }
            if !s.admits(Some(&this.holder)) {
                register(&mut s.waiters, cx.waker());
                return Poll::Pending;
            }
            if let Some(l) = this.own_lock.and_then(|id| s.locks.get_mut(&id)) {
                l.started = true;
            }
        }
        let result = {
            let _polling = PollingGuard::enter(&this.holder);
            this.inner.as_mut().poll(cx)
        };
        if let Some(id) = this.first_step.take() {
            release(&this.state, id);
        }
        if result.is_ready() {
            this.release_locks();
        }
        result
    }
}

impl<F> fmt::Debug for Admitted<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admitted").finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------------------------
// Output gate

/// Holds back an object's outgoing messages until the writes issued before them are durable.
///
/// **Who locks:** the storage wrapper, once per write batch: the lock is taken at the first
/// write of a turn (not at flush time, so a message sent between the write and the flush is
/// held too) and confirmed when the batch's commit is durable. `allow_unconfirmed` writes take
/// no lock.
///
/// **Who waits:** everything that leaves the object — the runtime before it returns a response
/// or a thrown error to the caller, outbound I/O before it starts, and `sync()`. A wait covers
/// exactly the locks that existed when [`OutputGate::wait`] was *called*: a write made later
/// by another event does not delay a message that was already sent.
///
/// **Failure:** [`OutputLock::fail`], or dropping an [`OutputLock`] without confirming it,
/// breaks the gate for good. Held and future waits fail with [`GateBroken`]: the messages are
/// dropped, because they may describe state that never became durable. The owner must reset the
/// object.
#[derive(Clone, Default)]
pub struct OutputGate {
    state: Rc<RefCell<OutputState>>,
}

#[derive(Default)]
struct OutputState {
    next: u64,
    outstanding: BTreeSet<u64>,
    waiters: Vec<Waker>,
    broken: Option<GateBroken>,
}

impl fmt::Debug for OutputGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.state.borrow();
        f.debug_struct("OutputGate")
            .field("outstanding", &s.outstanding.len())
            .field("broken", &s.broken)
            .finish()
    }
}

impl OutputGate {
    /// A new, open gate.
    pub fn new() -> OutputGate {
        OutputGate::default()
    }

    /// Locks the gate for messages sent from now on, until the lock is confirmed.
    pub fn lock(&self) -> OutputLock {
        let mut s = self.state.borrow_mut();
        let seq = s.next;
        s.next += 1;
        s.outstanding.insert(seq);
        OutputLock {
            state: self.state.clone(),
            seq,
            done: false,
        }
    }

    /// Resolves when every lock taken before this call is confirmed; fails if the gate breaks
    /// first (or already has).
    pub fn wait(&self) -> OutputWait {
        OutputWait {
            state: self.state.clone(),
            before: self.state.borrow().next,
        }
    }

    /// Number of unconfirmed locks.
    pub fn outstanding(&self) -> usize {
        self.state.borrow().outstanding.len()
    }

    /// Breaks the gate (see [`OutputLock::fail`]).
    pub fn set_broken(&self, reason: GateBroken) {
        let waiters = {
            let mut s = self.state.borrow_mut();
            if s.broken.is_none() {
                s.broken = Some(reason);
            }
            std::mem::take(&mut s.waiters)
        };
        wake_all(waiters);
    }

    /// Why the gate broke, if it did.
    pub fn broken(&self) -> Option<GateBroken> {
        self.state.borrow().broken.clone()
    }
}

/// One unconfirmed write batch holding an [`OutputGate`]. Must end in [`OutputLock::confirm`]
/// or [`OutputLock::fail`]; dropping it otherwise counts as a failure.
#[must_use = "dropping an output lock unconfirmed breaks the gate"]
pub struct OutputLock {
    state: Rc<RefCell<OutputState>>,
    seq: u64,
    done: bool,
}

impl fmt::Debug for OutputLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OutputLock({})", self.seq)
    }
}

impl OutputLock {
    /// The write is durable: messages that waited only on it may leave.
    pub fn confirm(mut self) {
        self.done = true;
        let waiters = {
            let mut s = self.state.borrow_mut();
            s.outstanding.remove(&self.seq);
            std::mem::take(&mut s.waiters)
        };
        wake_all(waiters);
    }

    /// The write failed: the gate breaks with `reason`.
    pub fn fail(mut self, reason: GateBroken) {
        self.done = true;
        self.break_with(reason);
    }

    fn break_with(&self, reason: GateBroken) {
        let waiters = {
            let mut s = self.state.borrow_mut();
            s.outstanding.remove(&self.seq);
            if s.broken.is_none() {
                s.broken = Some(reason);
            }
            std::mem::take(&mut s.waiters)
        };
        wake_all(waiters);
    }
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        if !self.done {
            self.break_with(GateBroken::new(
                "a write was abandoned before it was confirmed durable",
            ));
        }
    }
}

/// Future returned by [`OutputGate::wait`].
#[must_use = "futures do nothing unless polled"]
pub struct OutputWait {
    state: Rc<RefCell<OutputState>>,
    before: u64,
}

impl Future for OutputWait {
    type Output = Result<(), GateBroken>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut s = self.state.borrow_mut();
        if let Some(b) = &s.broken {
            return Poll::Ready(Err(b.clone()));
        }
        match s.outstanding.first() {
            Some(&oldest) if oldest < self.before => {
                register(&mut s.waiters, cx.waker());
                Poll::Pending
            }
            _ => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    thread_local! {
        static GATES: RefCell<Option<(InputGate, OutputGate)>> = const { RefCell::new(None) };
    }

    /// A waker that looks at the gates when woken, as a task polled at once (or a host's
    /// waker) would.
    struct Reentrant(AtomicUsize);

    impl std::task::Wake for Reentrant {
        fn wake(self: Arc<Self>) {
            GATES.with(|g| {
                if let Some((i, o)) = &*g.borrow() {
                    let _ = (i.is_locked(), o.outstanding(), i.broken(), o.broken());
                }
            });
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn wakers_run_without_a_borrow_of_the_gate_held() {
        let (input, output) = (InputGate::new(), OutputGate::new());
        GATES.with(|g| *g.borrow_mut() = Some((input.clone(), output.clone())));
        let counter = Arc::new(Reentrant(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);

        let lock = input.lock();
        let mut w = Box::pin(input.wait());
        assert!(w.as_mut().poll(&mut cx).is_pending());
        drop(lock);
        let mut w = Box::pin(input.wait());
        let lock = input.lock();
        assert!(w.as_mut().poll(&mut cx).is_pending());
        input.set_broken(GateBroken::new("reset"));
        drop(lock);

        for end in 0..2 {
            let l = output.lock();
            let mut w = Box::pin(output.wait());
            assert!(w.as_mut().poll(&mut cx).is_pending());
            if end == 0 {
                l.confirm();
            } else {
                l.fail(GateBroken::new("disk"));
            }
        }
        assert_eq!(counter.0.load(Ordering::SeqCst), 4);
        GATES.with(|g| g.borrow_mut().take());
    }

    /// Polls `f` once with a no-op waker.
    fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        let waker = Waker::noop();
        f.poll_unpin(&mut Context::from_waker(waker))
    }

    #[test]
    fn admitted_code_runs_only_when_every_lock_is_its_own_or_an_ancestors() {
        let gate = InputGate::new();
        let ran = Rc::new(RefCell::new(Vec::new()));
        // A task holding a lock of its own (a read in flight) is admitted; another is not.
        let (g, r) = (gate.clone(), ran.clone());
        let mut reader = gate.admit(async move {
            let lock = g.lock();
            r.borrow_mut().push("read issued");
            futures::future::pending::<()>().await;
            drop(lock);
        });
        let r = ran.clone();
        let mut other = gate.admit(async move {
            r.borrow_mut().push("other ran");
        });
        assert!(poll_once(&mut reader).is_pending());
        assert!(poll_once(&mut other).is_pending());
        assert_eq!(*ran.borrow(), ["read issued"]);
        // The reader is still admitted (its own lock); a wait outside any task is not.
        assert!(poll_once(&mut reader).is_pending());
        assert!(gate.wait().now_or_never().is_none());
        drop(reader);
        assert!(poll_once(&mut other).is_ready());
        assert_eq!(*ran.borrow(), ["read issued", "other ran"]);
    }

    #[test]
    fn critical_sections_started_back_to_back_run_one_after_the_other() {
        let gate = InputGate::new();
        let log = Rc::new(RefCell::new(Vec::new()));
        let (tx1, rx1) = futures::channel::oneshot::channel::<()>();
        let l = log.clone();
        let mut first = gate.critical_section(async move {
            l.borrow_mut().push("first start");
            rx1.await.ok();
            l.borrow_mut().push("first end");
        });
        let l = log.clone();
        let mut second = gate.critical_section(async move {
            l.borrow_mut().push("second");
        });
        // Events are held from the call on, before either section ran.
        assert!(gate.wait().now_or_never().is_none());
        assert!(poll_once(&mut first).is_pending());
        assert!(poll_once(&mut second).is_pending());
        tx1.send(()).unwrap();
        assert!(poll_once(&mut first).is_ready());
        assert!(poll_once(&mut second).is_ready());
        assert_eq!(*log.borrow(), ["first start", "first end", "second"]);
        assert!(!gate.is_locked());
    }

    #[test]
    fn input_gate_opens_when_the_last_lock_goes() {
        let gate = InputGate::new();
        assert!(gate.wait().now_or_never().is_some());
        let a = gate.lock();
        let b = gate.lock();
        let mut w = Box::pin(gate.wait());
        assert!((&mut w).now_or_never().is_none());
        drop(a);
        assert!((&mut w).now_or_never().is_none());
        drop(b);
        assert_eq!((&mut w).now_or_never(), Some(Ok(())));
    }

    #[test]
    fn broken_input_gate_fails_waiters() {
        let gate = InputGate::new();
        let _l = gate.lock();
        let mut w = Box::pin(gate.wait());
        assert!((&mut w).now_or_never().is_none());
        gate.set_broken(GateBroken::new("reset"));
        assert_eq!((&mut w).now_or_never(), Some(Err(GateBroken::new("reset"))));
    }

    #[test]
    fn output_wait_covers_only_earlier_locks() {
        let gate = OutputGate::new();
        let first = gate.lock();
        let mut before = Box::pin(gate.wait());
        let second = gate.lock();
        let mut after = Box::pin(gate.wait());
        assert!((&mut before).now_or_never().is_none());
        // Confirming out of order: the later lock does not hold the earlier wait.
        first.confirm();
        assert_eq!((&mut before).now_or_never(), Some(Ok(())));
        assert!((&mut after).now_or_never().is_none());
        second.confirm();
        assert_eq!((&mut after).now_or_never(), Some(Ok(())));
        assert_eq!(gate.outstanding(), 0);
    }

    #[test]
    fn failed_or_abandoned_output_lock_breaks_the_gate() {
        let gate = OutputGate::new();
        let l = gate.lock();
        let mut w = Box::pin(gate.wait());
        l.fail(GateBroken::new("disk full"));
        assert_eq!(
            (&mut w).now_or_never(),
            Some(Err(GateBroken::new("disk full")))
        );
        // Even waits that came later, with no lock of their own, fail: the object is done.
        assert!(matches!(gate.wait().now_or_never(), Some(Err(_))));

        let gate = OutputGate::new();
        drop(gate.lock());
        assert!(gate.broken().is_some());
    }
}
