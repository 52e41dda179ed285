//! [`Host`]: the handle the gateway holds. It starts the executor threads and routes each
//! event to one of them over a channel.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::event::{error_response, Event};
use crate::executor::{self, Command};
use crate::isolate::WorkerShared;
use crate::loader::Rules;
use crate::state::WorkerCtx;
use crate::{Body, HostConfig, HostError, LoadError, DEFAULT_CPU_MS, DEFAULT_HEAP_LIMIT_BYTES};

/// Runs worker scripts on executor threads. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct Host {
    inner: Arc<HostInner>,
}

pub(crate) struct HostInner {
    executors: Vec<mpsc::UnboundedSender<Command>>,
    workers: HashMap<String, ()>,
    next: AtomicUsize,
    request_seq: AtomicU64,
    request_base: u64,
    done: Mutex<Vec<oneshot::Receiver<()>>>,
}

fn prepare(cfg: &HostConfig) -> Result<Vec<Arc<WorkerShared>>, LoadError> {
    let mut seen = HashMap::new();
    let mut out = Vec::new();
    let heap_limit = if cfg.heap_limit_bytes == 0 {
        DEFAULT_HEAP_LIMIT_BYTES
    } else {
        cfg.heap_limit_bytes
    };
    for spec in &cfg.workers {
        let config_err = |message: String| LoadError::Config {
            worker: spec.name.clone(),
            message,
        };
        if seen.insert(spec.name.clone(), ()).is_some() {
            return Err(config_err("two workers have this name".into()));
        }
        let root = std::fs::canonicalize(&spec.root).map_err(|e| LoadError::File {
            file: spec.root.clone(),
            message: format!("project directory: {e}"),
        })?;
        let main_path = if spec.main.is_absolute() {
            spec.main.clone()
        } else {
            root.join(&spec.main)
        };
        let main = std::fs::canonicalize(&main_path).map_err(|e| LoadError::File {
            file: main_path.clone(),
            message: format!("entry module: {e}"),
        })?;
        let main_url = deno_core::ModuleSpecifier::from_file_path(&main)
            .map_err(|_| config_err(format!("bad entry path {}", main.display())))?;
        let rules = Rules::compile(spec).map_err(config_err)?;
        for s in &spec.services {
            if !cfg.workers.iter().any(|w| w.name == s.service) {
                tracing::warn!(
                    worker = %spec.name,
                    "service binding {} points at {:?}, which is not running here; calls to it will fail",
                    s.binding,
                    s.service
                );
            }
        }
        let env = serde_json::json!({
            "vars": spec.vars.iter().map(|(k, v)| serde_json::json!([k, v])).collect::<Vec<_>>(),
            "services": spec.services.iter().map(|s| serde_json::json!([s.binding, s.service])).collect::<Vec<_>>(),
        });
        let fetch_client = match crate::netguard::client(cfg.allow_private_fetch) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!("could not create the fetch() client: {e}");
                None
            }
        };
        out.push(Arc::new(WorkerShared {
            ctx: Arc::new(WorkerCtx {
                spec: spec.clone(),
                host: Default::default(),
                fetch_client,
                allow_private_fetch: cfg.allow_private_fetch,
                module_data: Default::default(),
            }),
            rules: Arc::new(rules),
            root,
            main,
            main_url,
            cpu_limit: Duration::from_millis(spec.cpu_ms.unwrap_or(DEFAULT_CPU_MS)),
            heap_limit,
            env_json: env.to_string(),
        }));
    }
    Ok(out)
}

impl Host {
    /// Starts the executor threads and loads every worker on each of them. Fails with the first
    /// worker's load error (its `Display` names the file and line): that worker is the one
    /// serving outside traffic. Any other worker that fails to load is logged once and left
    /// answering each of its events with `500` naming the error, so the rest keep serving.
    pub fn start(cfg: HostConfig) -> Result<Host, LoadError> {
        let prepared = prepare(&cfg)?;
        crate::snapshot::get().map_err(LoadError::Thread)?;
        let threads = if cfg.threads == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            cfg.threads
        };
        let mut start_err = None;
        let inner = Arc::new_cyclic(|weak| {
            // Every isolate's service bindings reach the host through this weak handle.
            let workers: Vec<Arc<WorkerShared>> = prepared
                .into_iter()
                .map(|w| {
                    let ctx = WorkerCtx {
                        spec: w.ctx.spec.clone(),
                        host: weak.clone(),
                        fetch_client: w.ctx.fetch_client.clone(),
                        allow_private_fetch: w.ctx.allow_private_fetch,
                        module_data: Default::default(),
                    };
                    Arc::new(WorkerShared {
                        ctx: Arc::new(ctx),
                        rules: w.rules.clone(),
                        root: w.root.clone(),
                        main: w.main.clone(),
                        main_url: w.main_url.clone(),
                        cpu_limit: w.cpu_limit,
                        heap_limit: w.heap_limit,
                        env_json: w.env_json.clone(),
                    })
                })
                .collect();
            let workers = Arc::new(workers);
            let mut executors = Vec::new();
            let mut done = Vec::new();
            let mut ready = Vec::new();
            for i in 0..threads {
                let (tx, rx) = mpsc::unbounded_channel();
                let (rtx, rrx) = std::sync::mpsc::channel();
                let (dtx, drx) = oneshot::channel();
                let w = workers.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("cinder-exec-{i}"))
                    .spawn(move || executor::run(w, rx, rtx, dtx));
                match spawned {
                    Ok(_) => {
                        executors.push(tx);
                        done.push(drx);
                        ready.push(rrx);
                    }
                    Err(e) => {
                        start_err = Some(LoadError::Thread(e.to_string()));
                        break;
                    }
                }
            }
            let mut logged = std::collections::HashSet::new();
            for r in ready {
                let res = r
                    .recv()
                    .unwrap_or_else(|_| Err(LoadError::Thread("executor thread died".into())));
                match res {
                    Err(e) => {
                        if start_err.is_none() {
                            start_err = Some(e);
                        }
                    }
                    Ok(failures) => {
                        for (i, e) in failures {
                            if i == 0 {
                                if start_err.is_none() {
                                    start_err = Some(e);
                                }
                            } else if logged.insert(i) {
                                tracing::error!(
                                    worker = %workers[i].ctx.spec.name,
                                    "worker failed to load; its requests are answered 500: {e}"
                                );
                            }
                        }
                    }
                }
            }
            HostInner {
                executors,
                workers: workers
                    .iter()
                    .map(|w| (w.ctx.spec.name.clone(), ()))
                    .collect(),
                next: AtomicUsize::new(0),
                request_seq: AtomicU64::new(0),
                request_base: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0)
                    << 16,
                done: Mutex::new(done),
            }
        });
        let host = Host { inner };
        if let Some(e) = start_err {
            for tx in &host.inner.executors {
                let _ = tx.send(Command::Shutdown);
            }
            return Err(e);
        }
        Ok(host)
    }

    /// Delivers one HTTP request to worker `worker`. Never panics: failures become 5xx responses.
    pub async fn fetch(&self, worker: &str, req: http::Request<Body>) -> http::Response<Body> {
        dispatch_fetch(&self.inner, worker, req).await
    }

    /// Runs the worker's `scheduled` handler for one cron firing.
    pub async fn scheduled(
        &self,
        worker: &str,
        cron: &str,
        scheduled_time_ms: i64,
    ) -> Result<(), HostError> {
        if !self.inner.workers.contains_key(worker) {
            return Err(HostError::NoSuchWorker(worker.to_string()));
        }
        let (reply, rx) = oneshot::channel();
        let event = Event::Scheduled {
            request_id: self.inner.request_id(),
            cron: cron.to_string(),
            time_ms: scheduled_time_ms,
            reply,
        };
        self.inner
            .send(worker, event)
            .map_err(|_| HostError::Shutdown)?;
        rx.await.unwrap_or(Err(HostError::Shutdown))
    }

    /// Cold-start probe for benchmarks: each sample creates a new isolate from the startup
    /// snapshot on an executor thread, loads `worker`'s modules, and times it until the
    /// response head of one `GET /` is ready.
    pub async fn cold_start_probe(
        &self,
        worker: &str,
        samples: usize,
    ) -> Result<Vec<Duration>, LoadError> {
        let mut out = Vec::with_capacity(samples);
        for i in 0..samples {
            let (reply, rx) = oneshot::channel();
            let exec = &self.inner.executors[i % self.inner.executors.len().max(1)];
            exec.send(Command::Probe {
                worker: worker.to_string(),
                reply,
            })
            .map_err(|_| LoadError::Thread("host is shut down".into()))?;
            let d = rx
                .await
                .map_err(|_| LoadError::Thread("host is shut down".into()))??;
            out.push(d);
        }
        Ok(out)
    }

    /// Stops taking events, lets in-flight ones finish (bounded), and ends the threads.
    pub async fn shutdown(&self) {
        for tx in &self.inner.executors {
            let _ = tx.send(Command::Shutdown);
        }
        let done: Vec<_> = match self.inner.done.lock() {
            Ok(mut d) => d.drain(..).collect(),
            Err(_) => Vec::new(),
        };
        for d in done {
            let _ = d.await;
        }
    }
}

impl HostInner {
    fn request_id(&self) -> String {
        let n = self.request_seq.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}", self.request_base.wrapping_add(n))
    }

    /// Hands the event back when no executor takes it, so the caller can answer it.
    #[allow(clippy::result_large_err)]
    fn send(&self, worker: &str, event: Event) -> Result<(), Event> {
        if self.executors.is_empty() {
            return Err(event);
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.executors.len();
        self.executors[i]
            .send(Command::Event {
                worker: worker.to_string(),
                event,
            })
            .map_err(|e| match e.0 {
                Command::Event { event, .. } => event,
                _ => unreachable_event(),
            })
    }
}

/// `send` only ever hands back the event it was given; this keeps that total without panicking.
fn unreachable_event() -> Event {
    let (reply, _) = oneshot::channel();
    Event::Fetch {
        request_id: String::new(),
        req: http::Request::new(Body::empty()),
        reply,
    }
}

pub(crate) async fn dispatch_fetch(
    inner: &HostInner,
    worker: &str,
    req: http::Request<Body>,
) -> http::Response<Body> {
    if !inner.workers.contains_key(worker) {
        return error_response(404, &format!("No worker named {worker:?} is running."));
    }
    let (reply, rx) = oneshot::channel();
    let event = Event::Fetch {
        request_id: inner.request_id(),
        req,
        reply,
    };
    if inner.send(worker, event).is_err() {
        return error_response(503, "The server is shutting down.");
    }
    match rx.await {
        Ok(resp) => resp,
        Err(_) => error_response(503, "The worker was stopped before it answered."),
    }
}
