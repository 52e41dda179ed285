//! Executor threads: each owns a current-thread tokio runtime and, for every worker script,
//! one isolate that serves that worker's events on this thread. An isolate never changes
//! thread.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, Mutex};

use crate::cpu::Slot;
use crate::event::{error_response, stop_response, Event, Stop};
use crate::isolate::{fill, Isolate, Spare, WorkerShared};
use crate::state::{IsolateState, Reply};
use crate::{HostError, LoadError};

/// How long a shutdown waits for in-flight events (and `waitUntil` work) to finish.
const DRAIN: Duration = Duration::from_secs(10);

#[allow(clippy::large_enum_variant)]
pub(crate) enum Command {
    Event {
        worker: String,
        event: Event,
    },
    Probe {
        worker: String,
        reply: oneshot::Sender<Result<Duration, LoadError>>,
    },
    Shutdown,
}

type EventRx = Rc<Mutex<mpsc::UnboundedReceiver<Event>>>;

pub(crate) fn run(
    workers: Arc<Vec<Arc<WorkerShared>>>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    ready: std::sync::mpsc::Sender<Result<Vec<(usize, LoadError)>, LoadError>>,
    done: oneshot::Sender<()>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(LoadError::Thread(e.to_string())));
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let slot = Slot::for_current_thread();
        let spare: Spare = Default::default();
        let mut senders: HashMap<String, mpsc::UnboundedSender<Event>> = HashMap::new();
        // Workers whose modules failed to load on this thread, with the error their events get.
        let mut failed: HashMap<String, String> = HashMap::new();
        let mut load_errors = Vec::new();
        let mut tasks = Vec::new();
        for (i, w) in workers.iter().enumerate() {
            let (tx, rx) = mpsc::unbounded_channel();
            let rx: EventRx = Rc::new(Mutex::new(rx));
            match Isolate::create(w, rx.clone(), &slot, &spare).await {
                Ok(iso) => {
                    tasks.push(tokio::task::spawn_local(serve(
                        w.clone(),
                        iso,
                        rx,
                        slot.clone(),
                        spare.clone(),
                    )));
                    senders.insert(w.ctx.spec.name.clone(), tx);
                }
                Err(e) => {
                    failed.insert(w.ctx.spec.name.clone(), e.to_string());
                    load_errors.push((i, e));
                }
            }
        }
        let _ = ready.send(Ok(load_errors));
        while let Some(cmd) = commands.recv().await {
            match cmd {
                Command::Event { worker, event } => match senders.get(&worker) {
                    Some(tx) => {
                        if let Err(mpsc::error::SendError(ev)) = tx.send(event) {
                            answer(ev, Stop::Crashed);
                        }
                    }
                    None => match failed.get(&worker) {
                        Some(err) => answer_load_failure(event, &worker, err),
                        None => answer(event, Stop::Crashed),
                    },
                },
                Command::Probe { worker, reply } => {
                    let r = match workers.iter().find(|w| w.ctx.spec.name == worker) {
                        Some(w) => probe(w, &slot, &spare).await,
                        None => Err(LoadError::Config {
                            worker,
                            message: "no such worker".into(),
                        }),
                    };
                    let _ = reply.send(r);
                }
                Command::Shutdown => break,
            }
        }
        drop(senders);
        let all = futures::future::join_all(tasks);
        if tokio::time::timeout(DRAIN, all).await.is_err() {
            tracing::warn!("shutdown: isolates still busy after {DRAIN:?}; dropping them");
        }
        spare.borrow_mut().take();
    });
    let _ = done.send(());
}

/// Answers an event that no isolate will run.
fn answer(event: Event, stop: Stop) {
    match event {
        Event::Fetch { reply, .. } => {
            let _ = reply.send(stop_response(stop, false));
        }
        Event::Scheduled { reply, .. } => {
            let _ = reply.send(Err(HostError::Shutdown));
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
        Event::Scheduled { reply, .. } => {
            let _ = reply.send(Err(HostError::LoadFailed {
                worker: worker.to_string(),
                message: err.to_string(),
            }));
        }
    }
}

/// Answers every event still in flight in a stopped isolate.
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
            _ => {}
        }
    }
}

/// Drives one worker's isolate on this thread, recreating it after a limit stops it.
async fn serve(w: Arc<WorkerShared>, mut iso: Isolate, rx: EventRx, slot: Arc<Slot>, spare: Spare) {
    loop {
        let stop = match iso.run(&slot, w.cpu_limit).await {
            Ok(()) => return,
            Err(stop) => stop,
        };
        if stop == Stop::Crashed {
            tracing::error!(worker = %w.ctx.spec.name, "isolate crashed; recreating it");
        }
        fail_inflight(iso.state(), stop, w.cpu_limit);
        drop(iso);
        iso = loop {
            match Isolate::create(&w, rx.clone(), &slot, &spare).await {
                Ok(new) => break new,
                Err(e) => {
                    tracing::error!(worker = %w.ctx.spec.name, "worker failed to reload: {e}");
                    // Answer the next event with the failure, then try again.
                    let next = rx.lock().await.recv().await;
                    match next {
                        None => return,
                        Some(ev) => answer_load_failure(ev, &w.ctx.spec.name, &e.to_string()),
                    }
                }
            }
        };
    }
}

/// Cold start: a new isolate for the worker (the executor's pre-warmed spare, restored from the
/// snapshot while idle), its modules loaded, until the response head of one `GET /` is ready.
async fn probe(w: &WorkerShared, slot: &Slot, spare: &Spare) -> Result<Duration, LoadError> {
    fill(spare, w.heap_limit);
    let t0 = Instant::now();
    let (tx, rx) = mpsc::unbounded_channel();
    let mut iso = Isolate::create(w, Rc::new(Mutex::new(rx)), slot, spare).await?;
    let (reply, mut resp) = oneshot::channel();
    let mut req = http::Request::new(crate::Body::empty());
    *req.uri_mut() = http::Uri::from_static("http://localhost/");
    let _ = tx.send(Event::Fetch {
        request_id: "cold-start-probe".into(),
        req,
        reply,
    });
    drop(tx);
    let run = iso.run(slot, w.cpu_limit);
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
