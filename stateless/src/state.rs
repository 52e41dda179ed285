//! Per-isolate state shared between the isolate's driver task and its ops.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, Mutex};

use crate::event::Event;
use crate::host::HostInner;
use crate::{Body, HostError};

/// Chunks of a body produced by JS (a response or an outbound request body).
pub(crate) type Chunk = Result<Bytes, std::io::Error>;

/// Queue depth of a JS-produced body: JS waits once this many chunks are unread.
pub(crate) const SINK_DEPTH: usize = 4;

pub(crate) enum Reply {
    Fetch(Option<oneshot::Sender<http::Response<Body>>>),
    Scheduled(Option<oneshot::Sender<Result<(), HostError>>>),
}

pub(crate) struct InFlight {
    pub request_id: String,
    pub reply: Reply,
    /// Thread CPU time spent in this isolate while the event was in flight.
    pub cpu: Duration,
}

/// What the ops of one worker's isolates need from the outside world.
pub(crate) struct WorkerCtx {
    pub spec: crate::WorkerSpec,
    pub host: Weak<HostInner>,
    pub fetch_client: Option<deno_fetch::Client>,
    pub allow_private_fetch: bool,
    /// Bytes of `Data` / `CompiledWasm` modules, by specifier, for the generated module code.
    pub module_data: Arc<std::sync::Mutex<HashMap<String, Bytes>>>,
}

pub(crate) struct IsolateState {
    pub worker: Arc<WorkerCtx>,
    pub events: Rc<Mutex<mpsc::UnboundedReceiver<Event>>>,
    pub inflight: RefCell<HashMap<u32, InFlight>>,
    next_id: Cell<u32>,
    pub bodies: RefCell<HashMap<u32, Body>>,
    pub sinks: RefCell<HashMap<u32, mpsc::Sender<Chunk>>>,
    pub sink_receivers: RefCell<HashMap<u32, mpsc::Receiver<Chunk>>>,
}

impl IsolateState {
    pub fn new(worker: Arc<WorkerCtx>, events: Rc<Mutex<mpsc::UnboundedReceiver<Event>>>) -> Self {
        IsolateState {
            worker,
            events,
            inflight: RefCell::new(HashMap::new()),
            next_id: Cell::new(1),
            bodies: RefCell::new(HashMap::new()),
            sinks: RefCell::new(HashMap::new()),
            sink_receivers: RefCell::new(HashMap::new()),
        }
    }

    /// A fresh handle; 0 is never handed out (JS uses it for "none").
    pub fn next_id(&self) -> u32 {
        let id = self.next_id.get();
        self.next_id.set(id.wrapping_add(1).max(1));
        id
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

    /// Charges a slice of CPU to the events in flight. Interleaved requests cannot be told
    /// apart, so an ordinary slice is split evenly between them (a request parked on I/O is not
    /// billed for its neighbours' work); the slice in which the watchdog fired is charged whole
    /// to each, so the event that ran out is the one reported.
    pub fn charge(&self, dt: Duration, whole: bool) {
        let mut inflight = self.inflight.borrow_mut();
        let n = inflight.len().max(1) as u32;
        let share = if whole { dt } else { dt / n };
        for f in inflight.values_mut() {
            f.cpu += share;
        }
    }
}
