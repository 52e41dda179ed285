//! Per-isolate state shared between the isolate's driver task, its ops, and the Durable
//! Objects hosted in it.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, OnceLock, Weak};
use std::task::Waker;
use std::time::Duration;

use bytes::Bytes;
use cinder_core::{ActorError, InputLock};
use tokio::sync::{mpsc, oneshot};

use crate::durable::{DoEvent, DoReply, ObjectEntry};
use crate::host::HostInner;
use crate::{Body, HostError};

/// Chunks of a body produced by JS (a response or an outbound request body).
pub(crate) type Chunk = Result<Bytes, std::io::Error>;

/// Queue depth of a JS-produced body: JS waits once this many chunks are unread.
pub(crate) const SINK_DEPTH: usize = 4;

pub(crate) type ObjectReplyTx = oneshot::Sender<Result<DoReply, ActorError>>;

pub(crate) enum Reply {
    Fetch(Option<oneshot::Sender<http::Response<Body>>>),
    Scheduled(Option<oneshot::Sender<Result<(), HostError>>>),
    /// An event of a Durable Object hosted in this isolate.
    Object(Option<ObjectReplyTx>),
}

pub(crate) struct InFlight {
    pub request_id: String,
    pub reply: Reply,
    /// Thread CPU time spent in this isolate on behalf of this event.
    pub cpu: Duration,
    /// When the event entered the isolate (for the request log line).
    pub started: std::time::Instant,
    /// The status the worker answered with, once it has.
    pub status: Option<u16>,
}

impl InFlight {
    pub fn new(request_id: String, reply: Reply) -> InFlight {
        InFlight {
            request_id,
            reply,
            cpu: Duration::ZERO,
            started: std::time::Instant::now(),
            status: None,
        }
    }
}

/// What the ops of one worker's isolates need from the outside world.
pub(crate) struct WorkerCtx {
    pub spec: crate::WorkerSpec,
    /// Set once the host exists; ops reach other workers and Durable Objects through it.
    pub host: Arc<OnceLock<Weak<HostInner>>>,
    pub fetch_client: Option<deno_fetch::Client>,
    pub allow_private_fetch: bool,
    /// Bytes of `Data` / `CompiledWasm` modules, by specifier, for the generated module code.
    pub module_data: Arc<std::sync::Mutex<HashMap<String, Bytes>>>,
    /// `env.<binding>` → the core namespace (class unique key) it reaches. Ops refuse any other
    /// namespace: a script reaches only the classes it is bound to.
    pub do_namespaces: HashMap<String, String>,
    /// Node-wide figures (isolates, CPU per event) for `/metrics`.
    pub stats: Arc<crate::stats::EngineStats>,
}

impl WorkerCtx {
    pub fn host(&self) -> Option<Arc<HostInner>> {
        self.host.get().and_then(Weak::upgrade)
    }
}

/// Why the isolate must be dropped, noticed outside its event loop (during a synchronous call
/// into JS on behalf of a Durable Object).
#[derive(Default)]
pub(crate) struct PendingStop(pub Cell<Option<crate::event::Stop>>);

pub(crate) struct IsolateState {
    pub worker: Arc<WorkerCtx>,
    pub inflight: RefCell<HashMap<u32, InFlight>>,
    next_id: Cell<u32>,
    pub bodies: RefCell<HashMap<u32, Body>>,
    pub sinks: RefCell<HashMap<u32, mpsc::Sender<Chunk>>>,
    pub sink_receivers: RefCell<HashMap<u32, mpsc::Receiver<Chunk>>>,
    /// Durable Objects living in this isolate, by handle.
    pub objects: RefCell<HashMap<u32, Rc<ObjectEntry>>>,
    /// Handles of objects dropped by the runtime whose JS instances are still to be forgotten.
    pub dead_objects: RefCell<Vec<u32>>,
    /// Stateless events handed to JS but not yet taken by it (`op_cinder_take_event`).
    pub pending_stateless: RefCell<HashMap<u32, crate::ops::JsEvent>>,
    /// Set when the host shuts down: the driver ends once nothing is in flight.
    pub closing: Cell<bool>,
    /// Object events handed to JS but not yet taken by it (`op_do_take`).
    pub pending_events: RefCell<HashMap<u32, DoEvent>>,
    /// Input-gate locks of storage reads whose results were delivered: released only once the
    /// JS that consumed them has run (end of the event-loop turn), so no other event of the
    /// object slips in between "read" and "act on what was read".
    pub deferred_locks: RefCell<Vec<InputLock>>,
    /// The driver task's waker: calls into JS made outside the event loop start ops that only
    /// the driver polls.
    pub waker: RefCell<Option<Waker>>,
    pub stop: PendingStop,
    /// Open `blockConcurrencyWhile` sections and `waitUntil` promises, by token: JS reports
    /// how each ended.
    pub critical_sections: RefCell<HashMap<u32, oneshot::Sender<Result<(), ActorError>>>>,
    /// WebSocket events for sockets accepted in this isolate, not yet taken by JS.
    pub pending_ws: RefCell<HashMap<u32, crate::ops_ws::JsWsEvent>>,
    /// Per socket, what an object sent that waits for its output gate.
    pub ws_send_queues: RefCell<HashMap<u64, Rc<crate::ops_ws::SendQueue>>>,
    /// Sockets accepted in this isolate (`ws.accept()`, `new WebSocket`) and still open: their
    /// messages may yet settle a pending promise, so the isolate is not idle while any is.
    pub open_sockets: Cell<u32>,
    /// Events whose code resumed in the current event-loop turn (reported by JS where an await
    /// of its I/O returns): the turn's CPU is charged to them.
    pub touched: RefCell<Vec<u32>>,
    /// Open `transaction()` bodies, by token.
    pub transactions: RefCell<HashMap<u32, crate::ops_do::TxnChannel>>,
    /// KV operations each event in flight has made (Cloudflare's 1,000 per invocation), by
    /// event id; dropped when the event ends.
    pub kv_budgets: RefCell<HashMap<u32, cinder_kv::OperationBudget>>,
    /// Queue batches handed to JS, by event id, until JS reports its decisions.
    pub queue_deliveries: RefCell<HashMap<u32, crate::queues::Delivery>>,
    /// Thread CPU clock when the running JS slice (a poll or a synchronous entry) started.
    slice_start: Cell<Option<Duration>>,
    /// CPU of the running slice already charged to events that finished inside it.
    slice_settled: Cell<Duration>,
}

impl IsolateState {
    pub fn new(worker: Arc<WorkerCtx>) -> Self {
        IsolateState {
            worker,
            pending_stateless: RefCell::new(HashMap::new()),
            closing: Cell::new(false),
            inflight: RefCell::new(HashMap::new()),
            next_id: Cell::new(1),
            bodies: RefCell::new(HashMap::new()),
            sinks: RefCell::new(HashMap::new()),
            sink_receivers: RefCell::new(HashMap::new()),
            objects: RefCell::new(HashMap::new()),
            dead_objects: RefCell::new(Vec::new()),
            pending_events: RefCell::new(HashMap::new()),
            deferred_locks: RefCell::new(Vec::new()),
            waker: RefCell::new(None),
            stop: PendingStop::default(),
            critical_sections: RefCell::new(HashMap::new()),
            transactions: RefCell::new(HashMap::new()),
            pending_ws: RefCell::new(HashMap::new()),
            touched: RefCell::new(Vec::new()),
            open_sockets: Cell::new(0),
            slice_start: Cell::new(None),
            slice_settled: Cell::new(Duration::ZERO),
            ws_send_queues: RefCell::new(HashMap::new()),
            kv_budgets: RefCell::new(HashMap::new()),
            queue_deliveries: RefCell::new(HashMap::new()),
        }
    }

    /// A fresh handle; 0 is never handed out (JS uses it for "none").
    pub fn next_id(&self) -> u32 {
        let id = self.next_id.get();
        self.next_id.set(id.wrapping_add(1).max(1));
        id
    }

    /// The object behind `handle`, if it is still alive in this isolate.
    pub fn object(&self, handle: u32) -> Option<Rc<ObjectEntry>> {
        self.objects.borrow().get(&handle).cloned()
    }

    /// Wakes the driver task so it polls ops started outside the event loop.
    pub fn wake_driver(&self) {
        if let Some(w) = self.waker.borrow().as_ref() {
            w.wake_by_ref();
        }
    }

    /// Releases the input locks of reads whose results JS has now consumed.
    pub fn release_deferred_locks(&self) {
        let locks = std::mem::take(&mut *self.deferred_locks.borrow_mut());
        drop(locks);
    }

    /// A JS slice starts at thread CPU time `t0`.
    pub fn begin_slice(&self, t0: Duration) {
        self.slice_start.set(Some(t0));
        self.slice_settled.set(Duration::ZERO);
    }

    /// The slice ended after `dt`: what of it is still to [`charge`](Self::charge).
    pub fn end_slice(&self, dt: Duration) -> Duration {
        self.slice_start.set(None);
        dt.saturating_sub(self.slice_settled.replace(Duration::ZERO))
    }

    /// An event finishing inside the running slice (a handler that answered without awaiting)
    /// would leave before the slice is charged: it takes the slice's CPU so far with it.
    pub fn settle_in_slice(&self, f: &mut InFlight) {
        if let Some(start) = self.slice_start.get() {
            let used = crate::cpu::thread_cpu_now().saturating_sub(start);
            f.cpu += used.saturating_sub(self.slice_settled.get());
            self.slice_settled.set(used);
        }
    }

    /// The worst-off event's remaining CPU budget.
    pub fn cpu_remaining(&self, limit: Duration) -> Duration {
        self.inflight
            .borrow()
            .values()
            .map(|f| limit.saturating_sub(f.cpu))
            .min()
            .unwrap_or(limit)
    }

    /// Charges a slice of CPU. `to` names the events the slice ran for when known (a
    /// synchronous call into JS for one event, or the events whose I/O completed in an
    /// event-loop turn); otherwise the slice is split evenly between the events in flight. The
    /// slice in which the watchdog fired is charged whole, so the event that ran out is the one
    /// reported: to the events it ran for when known (an event parked on I/O meanwhile is a
    /// bystander, not the culprit), else to every event in flight.
    pub fn charge(&self, dt: Duration, to: &[u32], whole: bool) {
        let mut inflight = self.inflight.borrow_mut();
        let known: Vec<u32> = to
            .iter()
            .copied()
            .filter(|id| inflight.contains_key(id))
            .collect();
        if whole && !known.is_empty() {
            for id in known {
                if let Some(f) = inflight.get_mut(&id) {
                    f.cpu += dt;
                }
            }
        } else if whole {
            for f in inflight.values_mut() {
                f.cpu += dt;
            }
        } else if !known.is_empty() {
            let share = dt / known.len() as u32;
            for id in known {
                if let Some(f) = inflight.get_mut(&id) {
                    f.cpu += share;
                }
            }
        } else {
            let n = inflight.len().max(1) as u32;
            for f in inflight.values_mut() {
                f.cpu += dt / n;
            }
        }
    }
}
