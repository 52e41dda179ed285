//! [`Host`]: the handle the gateway holds. It opens the node's storage, starts core's actor
//! runtime (whose executor threads are the node's one pool: see [`crate::thread`]) with a
//! namespace per JS Durable Object class, and routes each stateless event to a thread.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use cinder_core::{IdFactory, NamespaceSpec, Runtime, RuntimeConfig};
use cinder_kv::{Kv, KvConfig};
use cinder_r2::{R2Engine, R2Service};
use cinder_storage::{Store, StoreConfig};
use tokio::sync::oneshot;

use crate::durable::JsClassFactory;
use crate::event::{error_response, Event};
use crate::isolate::WorkerShared;
use crate::loader::Rules;
use crate::state::WorkerCtx;
use crate::stats::{EngineStats, NodeStats};
use crate::thread::{self, Ready};
use crate::{Body, HostConfig, HostError, LoadError, DEFAULT_CPU_MS, DEFAULT_HEAP_LIMIT_BYTES};

/// Runs worker scripts on executor threads. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct Host {
    inner: Arc<HostInner>,
}

pub(crate) struct HostInner {
    pub(crate) runtime: Runtime,
    threads: usize,
    workers: HashMap<String, ()>,
    next: AtomicUsize,
    request_seq: AtomicU64,
    request_base: u64,
    /// Keeps a temporary state directory alive (and removes it) when none was given.
    _ephemeral: Option<tempfile::TempDir>,
    /// JS values lent out by reference over RPC, by id: where their isolate lives.
    pub(crate) exports: std::sync::Mutex<HashMap<String, ExportHome>>,
    /// Every WebSocket of the node.
    pub(crate) sockets: crate::websocket::Sockets,
    /// See [`HostConfig::hibernate_after`].
    pub(crate) hibernate_after: Duration,
    /// Per executor thread, when its current JS turn started (0: none running).
    busy: Arc<Vec<Arc<AtomicU64>>>,
    /// The runtime that started the host (the gateway's network runtime), for network work
    /// the executors start (outgoing WebSockets).
    pub(crate) net: Option<tokio::runtime::Handle>,
    /// This node's R2 buckets, when a worker binds one or [`HostConfig::enable_r2`].
    pub(crate) r2: Option<R2Service>,
    /// This node's KV engine, when a worker binds a namespace.
    pub(crate) kv: Option<Kv>,
    /// This node's queues, when a worker produces to or consumes one.
    pub(crate) queues: Option<cinder_queues::Queues>,
    /// The configuration the workers run with now: [`Host::redeploy`] swaps one worker's spec.
    config: tokio::sync::Mutex<HostConfig>,
    /// What every worker's context reaches the host through (set once it exists).
    cell: Arc<OnceLock<std::sync::Weak<HostInner>>>,
    /// This node's Cache API storage (`caches`), under `<state_dir>/cache`.
    pub(crate) cache: cinder_cache::CacheStorage,
    /// Figures of the isolates, for [`Host::stats`].
    stats: Arc<EngineStats>,
    /// The group committer's figures, for [`Host::stats`].
    commit_stats: Arc<cinder_storage::stats::CommitStats>,
}

/// The isolate holding an exported value.
#[derive(Clone)]
pub(crate) struct ExportHome {
    pub thread: usize,
    pub worker: String,
}

/// The namespace key of the class a binding names, checked against the classes the target
/// worker declares.
fn binding_key(
    cfg: &HostConfig,
    worker: &str,
    b: &crate::DurableObjectBinding,
) -> Result<String, LoadError> {
    let target = b.script_name.as_deref().unwrap_or(worker);
    let w = cfg
        .workers
        .iter()
        .find(|w| w.name == target)
        .ok_or_else(|| LoadError::Config {
            worker: worker.to_string(),
            message: format!(
                "Durable Object binding {} refers to class {} of worker {target:?}, which is not \
                 part of this run",
                b.binding, b.class_name
            ),
        })?;
    w.classes
        .iter()
        .find(|c| c.class_name == b.class_name)
        .map(|c| c.unique_key.clone())
        .ok_or_else(|| LoadError::Config {
            worker: worker.to_string(),
            message: format!(
                "Durable Object binding {} refers to class {}, which no migration of worker \
                 {target:?} declares",
                b.binding, b.class_name
            ),
        })
}

fn prepare(
    cfg: &HostConfig,
    host: &Arc<OnceLock<std::sync::Weak<HostInner>>>,
    stats: &Arc<EngineStats>,
) -> Result<Vec<Arc<WorkerShared>>, LoadError> {
    let mut seen = HashMap::new();
    let mut out = Vec::new();
    let heap_limit = if cfg.heap_limit_bytes == 0 {
        DEFAULT_HEAP_LIMIT_BYTES
    } else {
        cfg.heap_limit_bytes
    };
    let fetch_client = match crate::netguard::client(cfg.allow_private_fetch) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::error!("could not create the fetch() client: {e}");
            None
        }
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
        let mut do_namespaces = HashMap::new();
        for b in &spec.durable_objects {
            do_namespaces.insert(b.binding.clone(), binding_key(cfg, &spec.name, b)?);
        }
        let env = serde_json::json!({
            "vars": spec.vars.iter().map(|(k, v)| serde_json::json!([k, v])).collect::<Vec<_>>(),
            "services": spec.services.iter().map(|s| serde_json::json!([s.binding, s.service])).collect::<Vec<_>>(),
            "durableObjects": spec.durable_objects.iter().map(|b| serde_json::json!([b.binding, do_namespaces[&b.binding]])).collect::<Vec<_>>(),
            "classes": spec.classes.iter().map(|c| serde_json::json!([c.class_name, c.sqlite])).collect::<Vec<_>>(),
            "r2Buckets": spec.r2_buckets.iter().map(|b| b.binding.clone()).collect::<Vec<_>>(),
            "kvNamespaces": spec.kv_namespaces.iter().map(|b| b.binding.clone()).collect::<Vec<_>>(),
            "queueProducers": spec.queue_producers.iter().map(|b| b.binding.clone()).collect::<Vec<_>>(),
            "r2ListHonorsInclude": r2_list_honors_include(spec),
            "d1": spec.d1_databases.iter().map(|d| serde_json::json!([d.binding])).collect::<Vec<_>>(),
        });
        out.push(Arc::new(WorkerShared {
            ctx: Arc::new(WorkerCtx {
                spec: spec.clone(),
                host: host.clone(),
                fetch_client: fetch_client.clone(),
                allow_private_fetch: cfg.allow_private_fetch,
                module_data: Default::default(),
                do_namespaces,
                stats: stats.clone(),
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

/// Whether `list()` leaves out metadata `include` did not ask for: the `r2_list_honor_include`
/// behaviour, default from compatibility date 2022-08-04 (and when no date is set).
fn r2_list_honors_include(spec: &crate::WorkerSpec) -> bool {
    let flags = &spec.compatibility_flags;
    if flags.iter().any(|f| f == "r2_list_honor_include") {
        return true;
    }
    if flags.iter().any(|f| f == "r2_list_ignore_include") {
        return false;
    }
    spec.compatibility_date
        .as_deref()
        .is_none_or(|d| d >= "2022-08-04")
}

/// Set to a file path, the Cache API's clock runs ahead of the real one by the milliseconds
/// written in that file: tests let a `max-age` pass without sleeping.
pub const CACHE_CLOCK_FILE_ENV: &str = "CINDER_CACHE_CLOCK_FILE";

/// How often expired Cache API entries are deleted from disk. Lookups never serve them; the
/// sweep returns their space, which Cloudflare's caches do by eviction.
const CACHE_SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Deletes expired cache entries once at start and then every [`CACHE_SWEEP_EVERY`], until the
/// host is gone.
async fn sweep_cache(host: std::sync::Weak<HostInner>) {
    loop {
        let Some(cache) = host.upgrade().map(|h| h.cache.clone()) else {
            return;
        };
        match cache.purge_expired().await {
            Ok(0) => {}
            Ok(n) => tracing::debug!("cache sweep removed {n} files of expired entries"),
            Err(e) => tracing::warn!("cache sweep: {e}"),
        }
        tokio::time::sleep(CACHE_SWEEP_EVERY).await;
    }
}

/// Opens the node's Cache API storage under `<state_dir>/cache`.
fn open_cache(state_dir: &std::path::Path) -> Result<cinder_cache::CacheStorage, LoadError> {
    let mut cfg = cinder_cache::CacheConfig::default();
    if let Some(path) = std::env::var_os(CACHE_CLOCK_FILE_ENV) {
        cfg.clock = std::sync::Arc::new(cinder_cache::OffsetFileClock::new(path));
    }
    let dir = state_dir.join("cache");
    cinder_cache::CacheStorage::open(&dir, cfg)
        .map_err(|e| LoadError::Thread(format!("opening the cache in {}: {e}", dir.display())))
}

/// Opens R2 under `<state_dir>/r2` and gives its internal namespaces, when a worker binds a
/// bucket or the host was asked for R2.
fn open_r2(cfg: &HostConfig, state_dir: &std::path::Path) -> Result<Option<R2Engine>, LoadError> {
    if !cfg.enable_r2 && cfg.workers.iter().all(|w| w.r2_buckets.is_empty()) {
        return Ok(None);
    }
    let dir = state_dir.join("r2");
    R2Engine::open_with(&dir, cfg.durability)
        .map(Some)
        .map_err(|e| LoadError::Thread(format!("opening R2 storage in {}: {e}", dir.display())))
}

/// Starts R2 on `runtime` (sweeping orphaned blobs) and creates the bound buckets. Runs on a
/// thread of its own with its own small tokio runtime: the caller may or may not be inside
/// one, and must not block a runtime's worker thread.
fn start_r2(engine: R2Engine, runtime: &Runtime, cfg: &HostConfig) -> Result<R2Service, LoadError> {
    let runtime = runtime.clone();
    let mut buckets: Vec<String> = cfg
        .workers
        .iter()
        .flat_map(|w| w.r2_buckets.iter().map(|b| b.bucket_name.clone()))
        .collect();
    buckets.sort();
    buckets.dedup();
    let started = std::thread::Builder::new()
        .name("cinder-r2-start".into())
        .spawn(move || -> Result<R2Service, String> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async move {
                let r2 = engine.start(&runtime).await.map_err(|e| e.to_string())?;
                for b in &buckets {
                    r2.ensure_bucket(b)
                        .await
                        .map_err(|e| format!("R2 bucket {b:?}: {e}"))?;
                }
                Ok(r2)
            })
        })
        .map_err(|e| LoadError::Thread(format!("starting R2: {e}")))?;
    started
        .join()
        .map_err(|_| LoadError::Thread("starting R2: the thread panicked".into()))?
        .map_err(|e| LoadError::Thread(format!("starting R2: {e}")))
}

/// The KV engine, when a worker binds a namespace. Its data lives in the node's store (under
/// `<state_dir>/store`) as objects of the internal namespace [`cinder_kv::INTERNAL_NAMESPACE`],
/// so it is kept with `--persist-to` like Durable Object storage.
fn open_kv(cfg: &HostConfig) -> Option<Kv> {
    if cfg.workers.iter().all(|w| w.kv_namespaces.is_empty()) {
        return None;
    }
    let mut kv_cfg = KvConfig::default();
    if cfg.kv_clock_offset_ms != 0 {
        kv_cfg.clock = Arc::new(cinder_kv::OffsetClock::new(cfg.kv_clock_offset_ms));
    }
    Some(Kv::new(kv_cfg))
}

/// One core namespace per Durable Object class of every worker.
fn namespaces(cfg: &HostConfig) -> Vec<NamespaceSpec> {
    cfg.workers
        .iter()
        .flat_map(|w| {
            w.classes.iter().map(|c| NamespaceSpec {
                name: c.unique_key.clone(),
                ids: IdFactory::from_unique_key(&c.unique_key),
                factory: Arc::new(JsClassFactory {
                    worker: w.name.clone(),
                    class: c.class_name.clone(),
                    sqlite: c.sqlite,
                }),
            })
        })
        .collect()
}

impl Host {
    /// Opens the state, starts the executor threads and loads every worker on each of them.
    /// Fails with the first worker's load error (its `Display` names the file and line): that
    /// worker is the one serving outside traffic. Any other worker that fails to load is logged
    /// once and left answering each of its events with `500` naming the error, so the rest keep
    /// serving.
    pub fn start(cfg: HostConfig) -> Result<Host, LoadError> {
        let started = std::time::Instant::now();
        let (ephemeral, state_dir) = match &cfg.state_dir {
            Some(dir) => (None, dir.clone()),
            None => {
                let tmp = tempfile::Builder::new()
                    .prefix("cinder-state-")
                    .tempdir()
                    .map_err(|e| LoadError::Thread(format!("temporary state directory: {e}")))?;
                let path = tmp.path().to_path_buf();
                (Some(tmp), path)
            }
        };
        // The store opens (journal recovery, fsyncs) on its own thread while this one reads the
        // workers and initialises V8: start-up waits for the longer of the two, not their sum.
        let store_dir = state_dir.join("store");
        let opening = {
            let (dir, durability) = (store_dir.clone(), cfg.durability);
            std::thread::Builder::new()
                .name("cinder-store-open".into())
                .spawn(move || {
                    Store::open(
                        &dir,
                        StoreConfig {
                            durability,
                            ..StoreConfig::default()
                        },
                    )
                })
                .map_err(|e| LoadError::Thread(format!("starting a thread: {e}")))?
        };
        let host_cell: Arc<OnceLock<std::sync::Weak<HostInner>>> = Arc::new(OnceLock::new());
        let stats = Arc::new(EngineStats::default());
        let prepared = prepare(&cfg, &host_cell, &stats).and_then(|workers| {
            crate::snapshot::get().map_err(LoadError::Thread)?;
            Ok(workers)
        });
        let v8_ready = started.elapsed();
        let opened = opening
            .join()
            .map_err(|_| LoadError::Thread("the store-opening thread panicked".into()))?;
        let workers = Arc::new(prepared?);
        let store = opened
            .map_err(|e| LoadError::Thread(format!("opening {}: {e}", store_dir.display())))?;
        let threads = if cfg.threads == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            cfg.threads
        };
        let commit_stats = store.commit_stats();
        let store_opened = started.elapsed();

        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Ready>();
        let start_workers = workers.clone();
        let busy: Arc<Vec<Arc<AtomicU64>>> =
            Arc::new((0..threads).map(|_| Arc::new(AtomicU64::new(0))).collect());
        let thread_busy = busy.clone();
        let rt_cfg = RuntimeConfig {
            threads,
            on_thread_start: Some(Arc::new(move |index| {
                thread::start(
                    start_workers.clone(),
                    ready_tx.clone(),
                    thread_busy[index % thread_busy.len()].clone(),
                )
            })),
            on_thread_stop: Some(Arc::new(|_index| thread::stop())),
            ..RuntimeConfig::default()
        };
        let cache = open_cache(&state_dir)?;
        let r2_engine = open_r2(&cfg, &state_dir)?;
        let kv = open_kv(&cfg);
        let mut specs = namespaces(&cfg);
        if let Some(engine) = &r2_engine {
            specs.extend(engine.namespaces());
        }
        if let Some(kv) = &kv {
            specs.extend(kv.namespaces());
        }
        let queues = crate::queues::open(&cfg);
        if let Some(q) = &queues {
            specs.extend(q.namespaces());
        }
        // Every D1 database is an object of this internal namespace (cinder-d1).
        specs.push(cinder_d1::namespace_spec());
        let services_opened = started.elapsed();
        let runtime =
            Runtime::start(store, rt_cfg, specs).map_err(|e| LoadError::Thread(e.to_string()))?;
        let r2 = match r2_engine.map(|e| start_r2(e, &runtime, &cfg)).transpose() {
            Ok(r2) => r2,
            Err(e) => {
                runtime.shutdown();
                return Err(e);
            }
        };
        if let Some(Err(e)) = kv.as_ref().map(|kv| kv.attach(&runtime)) {
            runtime.shutdown();
            return Err(LoadError::Thread(format!("starting KV: {e}")));
        }
        if let Some(Err(e)) = queues.as_ref().map(|q| q.attach(&runtime)) {
            runtime.shutdown();
            return Err(LoadError::Thread(format!("starting queues: {e}")));
        }

        let mut start_err = None;
        let mut logged = std::collections::HashSet::new();
        for _ in 0..threads {
            let res = ready_rx
                .recv()
                .unwrap_or_else(|_| Err(LoadError::Thread("executor thread died".into())));
            match res {
                Err(e) => {
                    start_err.get_or_insert(e);
                }
                Ok(failures) => {
                    for (i, e) in failures {
                        if i == 0 {
                            start_err.get_or_insert(e);
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
        if let Some(e) = start_err {
            runtime.shutdown();
            return Err(e);
        }
        // Where start-up time goes (bench/startup.py measures the whole).
        tracing::debug!(
            v8_ms = v8_ready.as_secs_f64() * 1e3,
            store_ms = store_opened.as_secs_f64() * 1e3,
            services_ms = (services_opened - store_opened).as_secs_f64() * 1e3,
            isolates_ms = (started.elapsed() - services_opened).as_secs_f64() * 1e3,
            "engine started"
        );
        let inner = Arc::new(HostInner {
            runtime,
            threads,
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
            _ephemeral: ephemeral,
            exports: Default::default(),
            sockets: Default::default(),
            hibernate_after: cfg.hibernate_after,
            busy,
            net: tokio::runtime::Handle::try_current().ok(),
            r2,
            kv,
            queues,
            config: tokio::sync::Mutex::new(cfg.clone()),
            cell: host_cell.clone(),
            cache,
            stats,
            commit_stats,
        });
        let _ = host_cell.set(Arc::downgrade(&inner));
        if let Some(net) = &inner.net {
            net.spawn(sweep_cache(Arc::downgrade(&inner)));
        }
        // Consumers start last: a batch delivered at once needs the host to dispatch it.
        if let Some(q) = &inner.queues {
            if let Err(e) = crate::queues::start(q, &cfg, Arc::downgrade(&inner)) {
                inner.runtime.shutdown();
                return Err(e);
            }
        }
        Ok(Host { inner })
    }

    /// Delivers one HTTP request to worker `worker`. Never panics: failures become 5xx responses.
    pub async fn fetch(&self, worker: &str, req: http::Request<Body>) -> http::Response<Body> {
        dispatch_fetch(&self.inner, worker, req).await
    }

    /// This node's R2 buckets (the ones `env.<binding>` reaches), for the gateway's S3 endpoint;
    /// `None` unless a worker binds a bucket or [`HostConfig::enable_r2`] was set.
    pub fn r2(&self) -> Option<R2Service> {
        self.inner.r2.clone()
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
            let w = worker.to_string();
            self.inner
                .runtime
                .run_on(
                    i,
                    Box::new(move || {
                        tokio::task::spawn_local(async move {
                            let _ = reply.send(thread::probe(&w).await);
                        });
                    }),
                )
                .map_err(|_| LoadError::Thread("host is shut down".into()))?;
            let d = rx
                .await
                .map_err(|_| LoadError::Thread("host is shut down".into()))??;
            out.push(d);
        }
        Ok(out)
    }

    /// The network side of a socket a worker answered a `101` with ([`crate::WsHandoff`]):
    /// the gateway drives it with [`crate::websocket_pump`]. `None` if the socket is gone or
    /// already connected.
    pub fn socket_link(&self, id: u64) -> Option<crate::websocket::SocketLink> {
        let socket = self.inner.sockets.get(id)?;
        crate::websocket::SocketLink::connect(socket, Arc::downgrade(&self.inner))
    }

    /// Open WebSockets on this node.
    pub fn open_sockets(&self) -> usize {
        self.inner.sockets.count()
    }

    /// Switches worker `spec.name` to new code without dropping a request: each executor thread
    /// loads the new version into a new isolate and sends new events there, while events
    /// already running in the old isolate finish in it (no event ever sees both versions).
    /// Durable Objects of the worker's classes are reset once (storage intact) and come back
    /// on the new code. The new version may change code, vars and limits, not which Durable
    /// Object classes it declares or which buckets it binds (those need a restart); if it fails
    /// to load, the old version keeps serving and the error is returned.
    pub async fn redeploy(&self, spec: crate::WorkerSpec) -> Result<(), LoadError> {
        let mut config = self.inner.config.lock().await;
        let err = |message: String| LoadError::Config {
            worker: spec.name.clone(),
            message,
        };
        let Some(at) = config.workers.iter().position(|w| w.name == spec.name) else {
            return Err(err("no worker of that name runs on this node".into()));
        };
        let old = &config.workers[at];
        if old.classes != spec.classes {
            return Err(err(
                "the new version declares other Durable Object classes; restart the node to apply migrations".into(),
            ));
        }
        if old.r2_buckets != spec.r2_buckets
            || old.kv_namespaces != spec.kv_namespaces
            || old.queue_producers != spec.queue_producers
            || old.queue_consumers != spec.queue_consumers
        {
            return Err(err(
                "the new version binds other R2 buckets, KV namespaces or queues; restart the node to change them".into(),
            ));
        }
        let mut next = config.clone();
        next.workers[at] = spec.clone();
        let shared = prepare(&next, &self.inner.cell, &self.inner.stats)?
            .into_iter()
            .find(|w| w.ctx.spec.name == spec.name)
            .ok_or_else(|| err("the new version was not prepared".into()))?;
        // Every thread loads it first, then switches; a thread whose load fails keeps the old
        // version, which can only be a load error that depends on the thread (none is known).
        let mut waits = Vec::with_capacity(self.inner.threads);
        for i in 0..self.inner.threads {
            let (tx, rx) = oneshot::channel();
            let shared = shared.clone();
            self.inner
                .runtime
                .run_on(
                    i,
                    Box::new(move || {
                        tokio::task::spawn_local(async move {
                            let _ = tx.send(thread::redeploy(shared).await);
                        });
                    }),
                )
                .map_err(|_| LoadError::Thread("the node is shutting down".into()))?;
            waits.push(rx);
        }
        let mut first_err = None;
        for rx in waits {
            let r = rx
                .await
                .unwrap_or_else(|_| Err(LoadError::Thread("executor thread stopped".into())));
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        *config = next;
        tracing::info!(worker = %spec.name, "new version deployed");
        Ok(())
    }

    /// The node's figures now (for `/metrics`): cheap, lock-light reads of counters.
    pub fn stats(&self) -> NodeStats {
        let i = &self.inner;
        NodeStats {
            isolates: i.stats.isolates.load(Ordering::Relaxed),
            live_objects: i.runtime.live_objects(),
            hibernated_objects: i.sockets.hibernated_count(),
            queued_events: i.runtime.queued_events(),
            open_websockets: i.sockets.count(),
            event_cpu_ms: i.stats.event_cpu_ms.snapshot(),
            commit_seconds: i.commit_stats.commit_latency.snapshot(),
            batches_per_group: i.commit_stats.batches_per_group.snapshot(),
            fsync_seconds: i.commit_stats.fsync_latency.snapshot(),
        }
    }

    /// Stops taking events, lets in-flight ones finish (bounded), and ends the threads.
    pub async fn shutdown(&self) {
        let rt = self.inner.runtime.clone();
        let _ = tokio::task::spawn_blocking(move || rt.shutdown()).await;
    }
}

impl HostInner {
    /// Round robin, skipping threads in the middle of a JS turn when one is free: an event
    /// could not start there before the turn ends, and a runaway loop then stalls only its
    /// own thread's isolate.
    fn pick_thread(&self) -> usize {
        let n = self.threads.max(1);
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| {
                self.busy
                    .get(i)
                    .is_none_or(|b| b.load(Ordering::Relaxed) == 0)
            })
            .unwrap_or(start % n)
    }

    pub(crate) fn request_id(&self) -> String {
        let n = self.request_seq.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}", self.request_base.wrapping_add(n))
    }

    /// Hands the event to an executor thread (round robin); `Err` gives it back when the
    /// runtime is shut down, so the caller can answer it.
    #[allow(clippy::result_large_err)]
    pub(crate) fn send(&self, worker: &str, event: Event) -> Result<(), Event> {
        let i = self.pick_thread();
        let slot = Arc::new(std::sync::Mutex::new(Some(event)));
        let taken = slot.clone();
        let worker = worker.to_string();
        let sent = self.runtime.run_on(
            i,
            Box::new(move || {
                if let Some(ev) = taken.lock().ok().and_then(|mut e| e.take()) {
                    thread::deliver(&worker, ev);
                }
            }),
        );
        match sent {
            Ok(()) => Ok(()),
            Err(_) => match slot.lock().ok().and_then(|mut e| e.take()) {
                Some(ev) => Err(ev),
                None => Ok(()),
            },
        }
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
