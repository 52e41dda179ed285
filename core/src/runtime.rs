//! [`Runtime`]: the node's executor threads and the `Send` handles ([`Namespace`], [`Stub`])
//! through which any thread (the gateway's multi-thread runtime, another object) reaches an
//! object.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use cinder_placement::{ExecutorRing, Jurisdiction, PlacementError};
use cinder_storage::{StorageError, Store};
use futures::future::LocalBoxFuture;
use tokio::sync::{mpsc, oneshot};

use crate::actor::{ActorFactory, Payload, Request, Response};
use crate::error::ObjectError;
use crate::executor::{self, Command, Envelope, Event, Reply};
use crate::id::{IdError, IdFactory, ObjectId, GET_WRONG_JURISDICTION_MESSAGE};

/// Tunables of the runtime. `Default` gives Cloudflare's numbers.
#[derive(Clone)]
pub struct RuntimeConfig {
    /// Executor threads (default: one per core).
    pub threads: usize,
    /// Events an object may have queued (not yet delivered) before further ones fail with
    /// [`ObjectError::Overloaded`]. Default 1,000. Alarms are never refused.
    pub max_queued_events: usize,
    /// An idle object is evicted after a random time in `[idle_timeout_min, idle_timeout_max]`
    /// (default 70–140 s), unless its [`crate::IdlePolicy`] says otherwise.
    pub idle_timeout_min: Duration,
    /// See [`RuntimeConfig::idle_timeout_min`].
    pub idle_timeout_max: Duration,
    /// Deadline of `block_concurrency_while` (default 30 s); past it the object is reset.
    pub block_concurrency_timeout: Duration,
    /// First alarm retry delay (default 2 s); the n-th retry waits `base · 2ⁿ`.
    pub alarm_retry_base: Duration,
    /// Retries of a failing alarm handler (default 6).
    pub alarm_max_retries: u32,
    /// Runs first on every executor thread, with its index: where a host creates its
    /// per-thread state (e.g. the thread's V8 isolates). The thread takes no command (no event,
    /// no [`Runtime::run_on`] task) until the returned future is done.
    pub on_thread_start: Option<ThreadHook>,
    /// Runs on every executor thread when the runtime shuts down, before its objects are
    /// dropped: where a host drains its per-thread work.
    pub on_thread_stop: Option<ThreadHook>,
}

/// A per-thread hook of [`RuntimeConfig`]: called on the executor thread with its index; the
/// future it returns runs there (it need not be `Send`).
pub type ThreadHook = Arc<dyn Fn(usize) -> LocalBoxFuture<'static, ()> + Send + Sync>;

/// A host task for [`Runtime::run_on`]: called on the executor thread, inside its `LocalSet`
/// (so it may `tokio::task::spawn_local`).
pub type ThreadTask = Box<dyn FnOnce() + Send>;

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            max_queued_events: 1_000,
            idle_timeout_min: Duration::from_secs(70),
            idle_timeout_max: Duration::from_secs(140),
            block_concurrency_timeout: Duration::from_secs(30),
            alarm_retry_base: Duration::from_secs(2),
            alarm_max_retries: 6,
            on_thread_start: None,
            on_thread_stop: None,
        }
    }
}

impl fmt::Debug for RuntimeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuntimeConfig")
            .field("threads", &self.threads)
            .field("max_queued_events", &self.max_queued_events)
            .field("idle_timeout_min", &self.idle_timeout_min)
            .field("idle_timeout_max", &self.idle_timeout_max)
            .field("block_concurrency_timeout", &self.block_concurrency_timeout)
            .field("alarm_retry_base", &self.alarm_retry_base)
            .field("alarm_max_retries", &self.alarm_max_retries)
            .finish_non_exhaustive()
    }
}

/// A Durable Object class binding to register: its name (stable: it is stored with objects
/// that have alarms), its id scheme and its constructor.
pub struct NamespaceSpec {
    /// Unique name, e.g. `"<worker>/<class>"`.
    pub name: String,
    /// Mints and checks the namespace's ids.
    pub ids: IdFactory,
    /// Constructs instances.
    pub factory: Arc<dyn ActorFactory>,
}

pub(crate) struct NamespaceEntry {
    pub(crate) name: String,
    pub(crate) ids: IdFactory,
    pub(crate) factory: Arc<dyn ActorFactory>,
}

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Reading the alarm table failed.
    #[error("loading alarms: {0}")]
    Storage(#[from] StorageError),
    /// The executor ring rejected the thread count.
    #[error("executor ring: {0}")]
    Placement(#[from] PlacementError),
    /// Two namespaces share a name.
    #[error("Durable Object namespace {0:?} registered twice")]
    DuplicateNamespace(String),
    /// Two namespaces were given the same id secret: they would mint the same ids and share
    /// their objects' storage.
    #[error("Durable Object namespaces {0:?} and {1:?} share an id secret; each needs its own")]
    SharedIdSecret(String, String),
    /// An executor thread could not be spawned.
    #[error("spawning executor thread: {0}")]
    Thread(#[from] std::io::Error),
    /// The runtime is shut down.
    #[error("the Durable Object runtime is shut down")]
    Stopped,
}

struct Shared {
    /// Distinguishes runtimes of one process (tests run several): a stub dispatches directly
    /// only on an executor thread of its own runtime.
    id: u64,
    senders: Vec<mpsc::UnboundedSender<Command>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    ring: ExecutorRing,
    namespaces: Arc<HashMap<String, Arc<NamespaceEntry>>>,
    live: Arc<AtomicUsize>,
    /// Events waiting in objects' queues, over all executor threads.
    queued: Arc<AtomicUsize>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        for tx in &self.senders {
            let _ = tx.send(Command::Shutdown);
        }
    }
}

/// The actor runtime of one node. Cheap to clone, `Send + Sync`. The executor threads stop
/// on [`Runtime::shutdown`], or when the last handle (runtime, namespace or stub) is dropped.
#[derive(Clone)]
pub struct Runtime {
    shared: Arc<Shared>,
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("threads", &self.shared.senders.len())
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// Starts the executor threads over `store` with these namespaces, and schedules every
    /// alarm found in the store.
    pub fn start(
        store: Arc<Store>,
        cfg: RuntimeConfig,
        namespaces: Vec<NamespaceSpec>,
    ) -> Result<Runtime, RuntimeError> {
        let threads = cfg.threads.max(1);
        let ring = ExecutorRing::new(threads)?;
        let mut map: HashMap<String, Arc<NamespaceEntry>> = HashMap::new();
        for ns in namespaces {
            if map.contains_key(&ns.name) {
                return Err(RuntimeError::DuplicateNamespace(ns.name));
            }
            if let Some(other) = map.values().find(|e| e.ids.same_secret(&ns.ids)) {
                return Err(RuntimeError::SharedIdSecret(
                    other.name.clone(),
                    ns.name.clone(),
                ));
            }
            let entry = Arc::new(NamespaceEntry {
                name: ns.name.clone(),
                ids: ns.ids,
                factory: ns.factory,
            });
            map.insert(ns.name, entry);
        }
        let namespaces = Arc::new(map);
        static NEXT_RUNTIME: AtomicU64 = AtomicU64::new(1);
        let runtime_id = NEXT_RUNTIME.fetch_add(1, Ordering::Relaxed);
        let mut alarms: Vec<Vec<([u8; 32], cinder_storage::AlarmState)>> =
            vec![Vec::new(); threads];
        for (id, state) in store.alarm_states()? {
            alarms[ring.executor_for(&id)].push((id, state));
        }
        let cfg = Arc::new(cfg);
        let live = Arc::new(AtomicUsize::new(0));
        let queued = Arc::new(AtomicUsize::new(0));
        let mut senders = Vec::with_capacity(threads);
        let mut handles = Vec::with_capacity(threads);
        for (index, alarms) in alarms.into_iter().enumerate() {
            let (tx, rx) = mpsc::unbounded_channel();
            let _ = tx.send(Command::LoadAlarms(alarms));
            let (store, cfg, namespaces) = (store.clone(), cfg.clone(), namespaces.clone());
            let counters = executor::Counters {
                live: live.clone(),
                queued: queued.clone(),
            };
            let handle = std::thread::Builder::new()
                .name(format!("cinder-exec-{index}"))
                .spawn(move || {
                    executor::run_thread(runtime_id, index, rx, store, cfg, namespaces, counters)
                });
            match handle {
                Ok(h) => {
                    senders.push(tx);
                    handles.push(h);
                }
                Err(e) => {
                    for tx in &senders {
                        let _ = tx.send(Command::Shutdown);
                    }
                    return Err(e.into());
                }
            }
        }
        Ok(Runtime {
            shared: Arc::new(Shared {
                id: runtime_id,
                senders,
                threads: Mutex::new(handles),
                ring,
                namespaces,
                live,
                queued,
            }),
        })
    }

    /// The namespace registered under `name`.
    pub fn namespace(&self, name: &str) -> Option<Namespace> {
        let entry = self.shared.namespaces.get(name)?.clone();
        Some(Namespace {
            ids: entry.ids.clone(),
            entry,
            shared: self.shared.clone(),
        })
    }

    /// Object instances currently in memory, over all executor threads (metrics, memory
    /// benchmarks, eviction checks).
    pub fn live_objects(&self) -> usize {
        self.shared.live.load(Ordering::Relaxed)
    }

    /// Events queued for objects and not yet delivered to them, over all executor threads
    /// (metrics).
    pub fn queued_events(&self) -> usize {
        self.shared.queued.load(Ordering::Relaxed)
    }

    /// Number of executor threads.
    pub fn threads(&self) -> usize {
        self.shared.senders.len()
    }

    /// The executor thread that owns `id` (the same answer for every runtime with this many
    /// threads).
    pub fn executor_for(&self, id: &ObjectId) -> usize {
        self.shared.ring.executor_for(id.bytes())
    }

    /// The index of the executor thread the caller runs on, if it is one (of any runtime).
    pub fn current_executor() -> Option<usize> {
        executor::current_index()
    }

    /// Runs `task` on executor thread `index` (modulo the thread count), after the commands
    /// sent before it. Hosts use it to put their own work (stateless Worker events) on the same
    /// threads as the objects. Fails only once the runtime is shut down.
    pub fn run_on(&self, index: usize, task: ThreadTask) -> Result<(), RuntimeError> {
        let n = self.shared.senders.len().max(1);
        self.shared.senders[index % n]
            .send(Command::Run(task))
            .map_err(|_| RuntimeError::Stopped)
    }

    /// Stops every executor thread and waits for them. Events in flight fail with
    /// [`ObjectError::Shutdown`]; writes not yet flushed are dropped (their events had not
    /// answered yet, so nobody was told they happened). Blocks: call it from outside async code
    /// (or `spawn_blocking`). Called on an executor thread it only signals.
    pub fn shutdown(&self) {
        for tx in &self.shared.senders {
            let _ = tx.send(Command::Shutdown);
        }
        if executor::on_executor_thread() {
            return;
        }
        let handles = std::mem::take(
            &mut *self
                .shared
                .threads
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for h in handles {
            let _ = h.join();
        }
    }
}

/// A Durable Object namespace binding (`env.MY_DO`). Cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub struct Namespace {
    shared: Arc<Shared>,
    entry: Arc<NamespaceEntry>,
    ids: IdFactory,
}

impl fmt::Debug for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Namespace")
            .field("name", &self.entry.name)
            .field("scope", &self.ids.scope())
            .finish()
    }
}

impl Namespace {
    /// The namespace's registered name.
    pub fn name(&self) -> &str {
        &self.entry.name
    }

    /// `namespace.jurisdiction(j)`: the same namespace, restricted to a jurisdiction.
    pub fn jurisdiction(&self, jurisdiction: Jurisdiction) -> Namespace {
        Namespace {
            ids: self.ids.jurisdiction(jurisdiction),
            ..self.clone()
        }
    }

    /// `idFromName(name)`.
    pub fn id_from_name(&self, name: &str) -> ObjectId {
        self.ids.id_from_name(name)
    }

    /// `newUniqueId({jurisdiction})`.
    pub fn new_unique_id(&self, jurisdiction: Option<Jurisdiction>) -> Result<ObjectId, IdError> {
        self.ids.new_unique_id(jurisdiction)
    }

    /// `idFromString(hex)`.
    pub fn id_from_string(&self, hex: &str) -> Result<ObjectId, IdError> {
        self.ids.id_from_string(hex)
    }

    /// Checks that `id` belongs to this namespace (and its jurisdiction scope), e.g. before
    /// `get` of an id that came from another binding.
    pub fn validate(&self, id: &ObjectId) -> Result<(), IdError> {
        self.ids.id_from_bytes(*id.bytes()).map(|_| ())
    }

    /// `get(id)`: a stub at once; the object is activated by its first event. An id that
    /// does not belong to this namespace (see [`Namespace::validate`]; hosts call it first to
    /// throw at once, as workerd does) gives a stub whose every call fails with
    /// [`ObjectError::InvalidId`] and reaches no object.
    pub fn get(&self, id: ObjectId) -> Stub {
        let executor = self.shared.ring.executor_for(id.bytes());
        let invalid = match self.validate(&id) {
            Ok(()) => None,
            Err(IdError::WrongJurisdiction { .. }) => Some(GET_WRONG_JURISDICTION_MESSAGE.into()),
            Err(e) => Some(e.to_string()),
        };
        Stub {
            shared: self.shared.clone(),
            entry: self.entry.clone(),
            id,
            executor,
            invalid,
        }
    }

    /// `getByName(name)`: `get(id_from_name(name))`.
    pub fn get_by_name(&self, name: &str) -> Stub {
        self.get(self.id_from_name(name))
    }
}

/// A handle to one object, usable from any thread. Cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub struct Stub {
    shared: Arc<Shared>,
    entry: Arc<NamespaceEntry>,
    id: ObjectId,
    executor: usize,
    /// Why every call fails, for an id that is not this namespace's.
    invalid: Option<String>,
}

impl fmt::Debug for Stub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stub")
            .field("namespace", &self.entry.name)
            .field("id", &self.id)
            .finish()
    }
}

impl Stub {
    /// The object's id.
    pub fn id(&self) -> &ObjectId {
        &self.id
    }

    /// Sends a request event; resolves with the object's response once everything the object
    /// wrote before answering is durable.
    pub async fn fetch(&self, req: Request) -> Result<Response, ObjectError> {
        match self.send(Event::Fetch(Box::new(req))).await? {
            Reply::Fetch(r) => Ok(r),
            _ => Err(ObjectError::Shutdown),
        }
    }

    /// Sends a host-defined event to [`crate::Actor::call`].
    pub async fn call(&self, payload: Payload) -> Result<Payload, ObjectError> {
        match self.send(Event::Call(payload)).await? {
            Reply::Call(p) => Ok(p),
            _ => Err(ObjectError::Shutdown),
        }
    }

    async fn send(&self, event: Event) -> Result<Reply, ObjectError> {
        if let Some(why) = &self.invalid {
            return Err(ObjectError::InvalidId(why.clone()));
        }
        let (tx, rx) = oneshot::channel();
        let env = Envelope {
            ns: self.entry.clone(),
            id: self.id.clone(),
            event,
            reply: Some(tx),
        };
        // On the object's own thread there is no hop: the event goes straight to its queue.
        if let Err(env) = executor::dispatch_local(self.shared.id, self.executor, env) {
            self.shared.senders[self.executor]
                .send(Command::Event(env))
                .map_err(|_| ObjectError::Shutdown)?;
        }
        rx.await.map_err(|_| ObjectError::Shutdown)?
    }
}
