//! The two I/O gates that give a Durable Object its consistency guarantees.
//!
//! An object runs on one thread, so its code never races with itself *between* awaits. What
//! remains is the interleaving *at* awaits and the ordering between what the object has written
//! and what the world sees. Two gates close those holes, after the model of workerd's
//! `io-gate.h`:
//!
//! - [`InputGate`] — **keeps events out.** While it is locked, nothing new enters the object:
//!   no request, RPC call, WebSocket message, alarm or timer is delivered, and the completion of
//!   the object's own outbound I/O is not handed back to it. Storage operations lock it while
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
//! Both gates are single-threaded (`!Send`): they live with their object on its executor
//! thread. Neither knows about storage or the runtime; the storage wrapper
//! ([`crate::Storage`]) and the event loop are their only callers:
//!
//! | who                      | input gate                         | output gate                  |
//! |--------------------------|------------------------------------|------------------------------|
//! | storage read             | `lock()` for the read's duration   | —                            |
//! | storage write            | —                                  | `lock()` until the batch is durable |
//! | `block_concurrency_while`| `lock()` for the critical section  | —                            |
//! | event delivery           | `wait()`, then `lock()` for the handler's first step | — |
//! | outbound I/O completion  | `wait()` before resuming the object | `wait()` before leaving     |
//! | response / return value  | —                                  | `wait()` before leaving      |

use std::cell::RefCell;
use std::collections::BTreeSet;
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

fn wake_all(waiters: &mut Vec<Waker>) {
    for w in waiters.drain(..) {
        w.wake();
    }
}

fn register(waiters: &mut Vec<Waker>, waker: &Waker) {
    if !waiters.iter().any(|w| w.will_wake(waker)) {
        waiters.push(waker.clone());
    }
}

// ---------------------------------------------------------------------------------------------
// Input gate

/// Blocks the delivery of new events to an object while any [`InputLock`] exists.
///
/// **Who locks:** code that is already running inside the object and must not be interleaved
/// with: a storage operation while it is outstanding, a critical section
/// (`block_concurrency_while`) for its whole run, and the runtime while an event's handler takes
/// its first (synchronous) step. [`InputGate::lock`] never waits — the caller is by definition
/// already admitted.
///
/// **Who waits:** everything that would *enter* the object: the event loop before it delivers
/// the next queued event, and the completion of outbound I/O before the object sees the result
/// ([`InputGate::wait`]).
///
/// Locks nest by counting: the gate opens when the last lock is dropped, and then every waiter
/// is woken; each re-checks the gate when it runs, so if the first one to run locks again (a
/// handler issuing a storage read), the others keep waiting.
///
/// A gate can be *broken* when its object is reset: waiters then fail with [`GateBroken`] rather
/// than wait for ever on an object that is gone.
#[derive(Clone, Default)]
pub struct InputGate {
    state: Rc<RefCell<InputState>>,
}

#[derive(Default)]
struct InputState {
    locks: usize,
    waiters: Vec<Waker>,
    broken: Option<GateBroken>,
}

impl fmt::Debug for InputGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.state.borrow();
        f.debug_struct("InputGate")
            .field("locks", &s.locks)
            .field("broken", &s.broken)
            .finish()
    }
}

impl InputGate {
    /// A new, open gate.
    pub fn new() -> InputGate {
        InputGate::default()
    }

    /// Locks the gate until the returned lock (and every other) is dropped. Never waits.
    pub fn lock(&self) -> InputLock {
        self.state.borrow_mut().locks += 1;
        InputLock {
            state: self.state.clone(),
        }
    }

    /// Resolves once the gate is open (no lock exists), or fails if it breaks first.
    ///
    /// The check happens when the future is polled, so a caller that resumes and then runs
    /// synchronously (until its next await) does so with the gate open; nobody else can lock it
    /// in between on a single thread.
    pub fn wait(&self) -> InputWait {
        InputWait {
            state: self.state.clone(),
        }
    }

    /// Whether any lock exists.
    pub fn is_locked(&self) -> bool {
        self.state.borrow().locks > 0
    }

    /// Breaks the gate: current and future waiters fail with `reason`. Locks may still be
    /// dropped afterwards; the gate never opens again.
    pub fn set_broken(&self, reason: GateBroken) {
        let mut s = self.state.borrow_mut();
        if s.broken.is_none() {
            s.broken = Some(reason);
        }
        wake_all(&mut s.waiters);
    }

    /// Why the gate broke, if it did.
    pub fn broken(&self) -> Option<GateBroken> {
        self.state.borrow().broken.clone()
    }
}

/// Holds an [`InputGate`] locked; dropping it releases the lock.
#[must_use = "the gate is unlocked as soon as the lock is dropped"]
pub struct InputLock {
    state: Rc<RefCell<InputState>>,
}

impl fmt::Debug for InputLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InputLock")
    }
}

impl Drop for InputLock {
    fn drop(&mut self) {
        let mut s = self.state.borrow_mut();
        s.locks -= 1;
        if s.locks == 0 {
            wake_all(&mut s.waiters);
        }
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
        if s.locks == 0 {
            return Poll::Ready(Ok(()));
        }
        register(&mut s.waiters, cx.waker());
        Poll::Pending
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
        let mut s = self.state.borrow_mut();
        if s.broken.is_none() {
            s.broken = Some(reason);
        }
        wake_all(&mut s.waiters);
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
        let mut s = self.state.borrow_mut();
        s.outstanding.remove(&self.seq);
        wake_all(&mut s.waiters);
    }

    /// The write failed: the gate breaks with `reason`.
    pub fn fail(mut self, reason: GateBroken) {
        self.done = true;
        self.break_with(reason);
    }

    fn break_with(&self, reason: GateBroken) {
        let mut s = self.state.borrow_mut();
        s.outstanding.remove(&self.seq);
        if s.broken.is_none() {
            s.broken = Some(reason);
        }
        wake_all(&mut s.waiters);
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
