//! The JS side of an executor thread. Core's runtime owns the node's executor threads (one
//! pool: objects and stateless events share them); the host installs [`start`] and [`stop`] as
//! core's per-thread hooks. Each thread keeps, per worker script, one isolate that serves the
//! worker's stateless events and the Durable Objects of its classes living on that thread. An
//! isolate never changes thread.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::LocalBoxFuture;
use tokio::sync::oneshot;

use crate::cpu::Slot;
use crate::event::{error_response, stop_response, unavailable_response, Event, Stop, Unavailable};
use crate::isolate::{fill, Isolate, Spare, WorkerShared};
use crate::state::{IsolateState, Reply};
use crate::{HostError, LoadError};

/// How long a shutdown waits for in-flight events (and `waitUntil` work) to finish.
const DRAIN: Duration = Duration::from_secs(10);

/// What one executor thread keeps for the JS side.
struct ThreadJs {
    slot: Arc<Slot>,
    spare: Spare,
    workers: RefCell<HashMap<String, WorkerOnThread>>,
    serving: RefCell<Vec<tokio::task::JoinHandle<()>>>,
}

struct WorkerOnThread {
    shared: Arc<WorkerShared>,
    /// Set once the worker failed to load here: its events get this error.
    failed: Option<String>,
    /// The isolate serving it now; `None` while one is being recreated after a limit.
    current: Option<Rc<Isolate>>,
    /// Events that arrived while no isolate was ready; the next one takes them.
    waiting: VecDeque<Event>,
    /// The host is shutting down: no new events.
    closed: bool,
}

thread_local! {
    static THREAD: RefCell<Option<Rc<ThreadJs>>> = const { RefCell::new(None) };
}

fn this_thread() -> Option<Rc<ThreadJs>> {
    THREAD.with(|t| t.borrow().clone())
}

/// What [`start`] reports to the host: the index of each worker that failed to load here.
pub(crate) type Ready = Result<Vec<(usize, LoadError)>, LoadError>;

/// core's `on_thread_start`: creates this thread's isolates (every worker's modules loaded) and
/// their driver tasks, then reports to the host.
pub(crate) fn start(
    workers: Arc<Vec<Arc<WorkerShared>>>,
    ready: std::sync::mpsc::Sender<Ready>,
    busy_since: Arc<std::sync::atomic::AtomicU64>,
) -> LocalBoxFuture<'static, ()> {
    Box::pin(async move {
        let thread = Rc::new(ThreadJs {
            slot: Slot::for_current_thread(busy_since),
            spare: Default::default(),
            workers: RefCell::new(HashMap::new()),
            serving: RefCell::new(Vec::new()),
        });
        THREAD.with(|t| *t.borrow_mut() = Some(thread.clone()));
        let mut load_errors = Vec::new();
        for (i, w) in workers.iter().enumerate() {
            let entry = match Isolate::create(w, &thread.slot, &thread.spare).await {
                Ok(iso) => {
                    let task = tokio::task::spawn_local(serve(w.clone(), iso.clone()));
                    thread.serving.borrow_mut().push(task);
                    WorkerOnThread {
                        shared: w.clone(),
                        failed: None,
                        current: Some(iso),
                        waiting: VecDeque::new(),
                        closed: false,
                    }
                }
                Err(e) => {
                    let entry = WorkerOnThread {
                        shared: w.clone(),
                        failed: Some(e.to_string()),
                        current: None,
                        waiting: VecDeque::new(),
                        closed: false,
                    };
                    load_errors.push((i, e));
                    entry
                }
            };
            thread
                .workers
                .borrow_mut()
                .insert(w.ctx.spec.name.clone(), entry);
        }
        let _ = ready.send(Ok(load_errors));
    })
}

/// core's `on_thread_stop`: stops taking events and lets in-flight ones finish (bounded).
pub(crate) fn stop() -> LocalBoxFuture<'static, ()> {
    Box::pin(async move {
        let Some(thread) = this_thread() else { return };
        for w in thread.workers.borrow_mut().values_mut() {
            w.closed = true;
            for ev in w.waiting.drain(..) {
                answer(ev, Unavailable::ShuttingDown, &w.shared.ctx.spec.name);
            }
            if let Some(iso) = &w.current {
                iso.state.closing.set(true);
                iso.state.wake_driver();
            }
        }
        let tasks = std::mem::take(&mut *thread.serving.borrow_mut());
        let all = futures::future::join_all(tasks);
        if tokio::time::timeout(DRAIN, all).await.is_err() {
            tracing::warn!("shutdown: isolates still busy after {DRAIN:?}; dropping them");
        }
        thread.spare.borrow_mut().take();
        for w in thread.workers.borrow_mut().values_mut() {
            w.current = None;
        }
        THREAD.with(|t| t.borrow_mut().take());
    })
}

/// Runs on an executor thread: hands a stateless event to the worker's isolate here.
pub(crate) fn deliver(worker: &str, event: Event) {
    let Some(thread) = this_thread() else {
        return answer(event, Unavailable::ShuttingDown, worker);
    };
    let iso = {
        let mut workers = thread.workers.borrow_mut();
        let Some(w) = workers.get_mut(worker) else {
            drop(workers);
            return answer(event, Unavailable::NotOnThisNode, worker);
        };
        if w.closed {
            drop(workers);
            return answer(event, Unavailable::ShuttingDown, worker);
        }
        if let Some(err) = &w.failed {
            let err = err.clone();
            drop(workers);
            return answer_load_failure(event, worker, &err);
        }
        match &w.current {
            Some(iso) => iso.clone(),
            None => {
                w.waiting.push_back(event);
                return;
            }
        }
    };
    // The borrow of the table is released: JS may reach back into this thread's state.
    iso.enter_event(event);
}

/// The isolate of `worker` on the calling executor thread (for a Durable Object constructed
/// here).
pub(crate) fn isolate_for(worker: &str) -> Result<Rc<Isolate>, String> {
    let thread = this_thread().ok_or("not on an executor thread")?;
    let workers = thread.workers.borrow();
    let w = workers
        .get(worker)
        .ok_or_else(|| format!("no worker named {worker:?} on this node"))?;
    if let Some(err) = &w.failed {
        return Err(format!("Worker failed to load: {err}"));
    }
    w.current
        .clone()
        .ok_or_else(|| format!("worker {worker:?} is being restarted; try again"))
}

/// Delivers an RPC event (an export call, an entrypoint call) to `worker`'s isolate on executor
/// `thread`, and waits for its answer.
pub(crate) async fn call_isolate(
    host: &crate::host::HostInner,
    thread: usize,
    worker: String,
    event: crate::durable::DoEvent,
) -> Result<crate::durable::DoReply, cinder_core::ActorError> {
    let (tx, rx) = oneshot::channel();
    let sent = host.runtime.run_on(
        thread,
        Box::new(move || {
            let r = isolate_for(&worker).and_then(|iso| {
                let (reply, wait) = oneshot::channel();
                iso.enter_object(event, Some(reply))
                    .map_err(|e| e.message)
                    .map(|()| wait)
            });
            match r {
                Ok(wait) => {
                    tokio::task::spawn_local(async move {
                        let answer = wait.await.unwrap_or_else(|_| {
                            Err(cinder_core::ActorError::new("the isolate was stopped"))
                        });
                        let _ = tx.send(answer);
                    });
                }
                Err(message) => {
                    let _ = tx.send(Err(cinder_core::ActorError::new(message)));
                }
            }
        }),
    );
    if sent.is_err() {
        return Err(cinder_core::ActorError::new("the runtime is shut down"));
    }
    rx.await
        .unwrap_or_else(|_| Err(cinder_core::ActorError::new("the runtime is shut down")))
}

/// Answers an event that no isolate will run, saying why.
fn answer(event: Event, why: Unavailable, worker: &str) {
    match event {
        Event::Fetch { reply, .. } => {
            let _ = reply.send(unavailable_response(why, worker));
        }
        Event::Scheduled { reply, .. } | Event::Queue { reply, .. } => {
            let _ = reply.send(Err(match why {
                Unavailable::ShuttingDown => HostError::Shutdown,
                Unavailable::NotOnThisNode => HostError::NoSuchWorker(worker.to_string()),
            }));
        }
    }
}

/// Answers an event for a worker whose modules failed to load: `500` naming the error (file,
/// line and message).
fn answer_load_failure(event: Event, worker: &str, err: &str) {
    match event {
        Event::Fetch { reply, .. } => {
            let _ = reply.send(error_response(
                500,
                &format!("Worker failed to load: {err}"),
            ));
        }
        Event::Scheduled { reply, .. } | Event::Queue { reply, .. } => {
            let _ = reply.send(Err(HostError::LoadFailed {
                worker: worker.to_string(),
                message: err.to_string(),
            }));
        }
    }
}

/// Answers every event still in flight in a stopped isolate, and resets its objects.
fn fail_inflight(state: &IsolateState, stop: Stop, cpu_limit: Duration) {
    let inflight: Vec<_> = state.inflight.borrow_mut().drain().collect();
    for (_, f) in inflight {
        let charged = match stop {
            Stop::CpuLimit => f.cpu >= cpu_limit,
            Stop::MemoryLimit => true,
            Stop::Crashed => false,
        };
        if charged {
            tracing::error!(
                worker = %state.worker.spec.name,
                request_id = %f.request_id,
                cpu_ms = f.cpu.as_millis() as u64,
                "{}",
                match stop {
                    Stop::CpuLimit => "Worker exceeded CPU time limit; the isolate was terminated and is being recreated",
                    _ => "Worker exceeded memory limit; the isolate was terminated and is being recreated",
                }
            );
        }
        let status = match &f.reply {
            Reply::Fetch(Some(_)) => Some(503),
            _ => None,
        };
        state
            .worker
            .stats
            .event_finished(&state.worker.spec.name, &f, status);
        match f.reply {
            Reply::Fetch(Some(s)) => {
                let _ = s.send(stop_response(stop, charged));
            }
            Reply::Scheduled(Some(s)) => {
                let _ = s.send(Err(match stop {
                    Stop::CpuLimit if charged => HostError::CpuLimit,
                    Stop::MemoryLimit => HostError::MemoryLimit,
                    _ => HostError::Exception {
                        worker: state.worker.spec.name.clone(),
                        message: "the isolate was reset".into(),
                    },
                }));
            }
            Reply::Object(Some(s)) => {
                let _ = s.send(Err(cinder_core::ActorError::new(stop_reason(stop))));
            }
            _ => {}
        }
    }
    // Every object of the isolate loses its in-memory state; durable state is untouched.
    let objects: Vec<_> = state.objects.borrow_mut().drain().collect();
    for (_, obj) in objects {
        obj.ctx.reset(stop_reason(stop));
    }
}

fn stop_reason(stop: Stop) -> &'static str {
    match stop {
        Stop::CpuLimit => "Durable Object reset: its isolate exceeded the CPU time limit.",
        Stop::MemoryLimit => "Durable Object reset: its isolate exceeded the memory limit.",
        Stop::Crashed => "Durable Object reset: its isolate was stopped after an internal error.",
    }
}

/// Drives one worker's isolate on this thread, recreating it after a limit stops it.
async fn serve(w: Arc<WorkerShared>, mut iso: Rc<Isolate>) {
    let name = w.ctx.spec.name.clone();
    loop {
        let stop = match iso.run().await {
            Ok(()) => return,
            Err(stop) => stop,
        };
        // A redeploy may have put a newer version in charge meanwhile: this one only fails
        // what it still had in flight and leaves the thread's table alone.
        if !is_current(&name, &iso) {
            fail_inflight(&iso.state, stop, w.cpu_limit);
            return;
        }
        if stop == Stop::Crashed {
            tracing::error!(worker = %name, "isolate crashed; recreating it");
        }
        set_current(&name, None);
        fail_inflight(&iso.state, stop, w.cpu_limit);
        drop(iso);
        let Some(thread) = this_thread() else { return };
        iso = match Isolate::create(&w, &thread.slot, &thread.spare).await {
            Ok(new) => new,
            Err(e) => {
                // The code loaded before and fails now (e.g. top-level code that depends on
                // time): this worker's events on this thread get the error from now on.
                tracing::error!(worker = %name, "worker failed to reload: {e}");
                let waiting = match thread.workers.borrow_mut().get_mut(&name) {
                    Some(slot) => {
                        slot.failed = Some(e.to_string());
                        std::mem::take(&mut slot.waiting)
                    }
                    None => VecDeque::new(),
                };
                for ev in waiting {
                    answer_load_failure(ev, &name, &e.to_string());
                }
                return;
            }
        };
        if thread
            .workers
            .borrow()
            .get(&name)
            .is_some_and(|slot| slot.closed)
        {
            return;
        }
        set_current(&name, Some(iso.clone()));
        let waiting = thread
            .workers
            .borrow_mut()
            .get_mut(&name)
            .map(|slot| std::mem::take(&mut slot.waiting))
            .unwrap_or_default();
        for ev in waiting {
            iso.enter_event(ev);
        }
    }
}

fn is_current(worker: &str, iso: &Rc<Isolate>) -> bool {
    this_thread().is_some_and(|thread| {
        thread
            .workers
            .borrow()
            .get(worker)
            .and_then(|w| w.current.as_ref())
            .is_some_and(|c| Rc::ptr_eq(c, iso))
    })
}

/// Runs on an executor thread: loads `new` (a new version of a worker already here) into a new
/// isolate, then makes it the one that takes this worker's events. The old isolate finishes
/// the events it has in flight and ends; the worker's Durable Objects on this thread are
/// reset (storage intact), so their next event constructs them from the new code, as a
/// deploy does on Cloudflare. If the new version fails to load, the old one keeps serving.
pub(crate) async fn redeploy(new: Arc<WorkerShared>) -> Result<(), LoadError> {
    let thread = this_thread().ok_or_else(|| LoadError::Thread("not an executor".into()))?;
    let name = new.ctx.spec.name.clone();
    let iso = Isolate::create(&new, &thread.slot, &thread.spare).await?;
    let (old, waiting) = {
        let mut workers = thread.workers.borrow_mut();
        let slot = workers.get_mut(&name).ok_or_else(|| LoadError::Config {
            worker: name.clone(),
            message: "not running on this node".into(),
        })?;
        if slot.closed {
            return Err(LoadError::Thread("the node is shutting down".into()));
        }
        slot.shared = new.clone();
        slot.failed = None;
        let old = slot.current.replace(iso.clone());
        (old, std::mem::take(&mut slot.waiting))
    };
    let task = tokio::task::spawn_local(serve(new, iso.clone()));
    thread.serving.borrow_mut().push(task);
    for ev in waiting {
        iso.enter_event(ev);
    }
    if let Some(old) = old {
        let objects: Vec<_> = old.state.objects.borrow_mut().drain().collect();
        for (_, obj) in objects {
            obj.ctx
                .reset("Durable Object reset because its code was updated.");
        }
        old.state.closing.set(true);
        old.state.wake_driver();
    }
    Ok(())
}

fn set_current(worker: &str, iso: Option<Rc<Isolate>>) {
    if let Some(thread) = this_thread() {
        if let Some(w) = thread.workers.borrow_mut().get_mut(worker) {
            w.current = iso;
        }
    }
}

/// Cold start: a new isolate for the worker (the thread's pre-warmed spare, restored from the
/// snapshot while idle), its modules loaded, until the response head of one `GET /` is ready.
pub(crate) async fn probe(worker: &str) -> Result<Duration, LoadError> {
    let thread = this_thread().ok_or_else(|| LoadError::Thread("not an executor".into()))?;
    let w = thread
        .workers
        .borrow()
        .get(worker)
        .map(|w| w.shared.clone())
        .ok_or_else(|| LoadError::Config {
            worker: worker.to_string(),
            message: "no such worker".into(),
        })?;
    fill(&thread.spare, w.heap_limit);
    let t0 = Instant::now();
    let iso = Isolate::create(&w, &thread.slot, &thread.spare).await?;
    let (reply, mut resp) = oneshot::channel();
    let mut req = http::Request::new(crate::Body::empty());
    *req.uri_mut() = http::Uri::from_static("http://localhost/");
    iso.enter_event(Event::Fetch {
        request_id: "cold-start-probe".into(),
        req,
        reply,
    });
    iso.state.closing.set(true);
    let run = iso.run();
    tokio::pin!(run);
    let got = tokio::select! {
        r = &mut resp => r.is_ok(),
        _ = &mut run => resp.try_recv().is_ok(),
    };
    let dt = t0.elapsed();
    if !got {
        return Err(LoadError::Config {
            worker: w.ctx.spec.name.clone(),
            message: "the probe request got no response".into(),
        });
    }
    Ok(dt)
}
