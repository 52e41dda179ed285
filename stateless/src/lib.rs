//! The V8 side of Cinder: isolates per worker script, ES module loading with wrangler
//! `[[rules]]`, the Web-API globals (from the `deno_*` crates), the Workers API
//! (`export default { fetch, scheduled }`, `env`, `ctx`), Durable Object classes written in JS
//! hosted on the actor core, JS RPC, WebSockets with hibernation, and the CPU / heap limits.
//!
//! ## One executor pool
//! [`Host::start`] opens the node's storage and starts `cinder-core`'s [`cinder_core::Runtime`]:
//! its executor threads (one per core) are the only ones. Each thread keeps, per worker
//! script, one isolate (`thread.rs`, `isolate.rs`) that serves both the worker's stateless
//! events and the Durable Objects of its classes that the executor ring places on that thread
//! (`durable.rs`: a JS class is a core `ActorFactory`; all its objects on a thread share the
//! isolate, each with its own instance, `ctx` and `env`). A stateless event is handed to a
//! thread with `Runtime::run_on` (round robin, skipping a thread in the middle of a JS turn); a
//! Worker calling an object on its own thread costs no thread hop.
//!
//! Every event enters JS *synchronously*: the handler runs, with its microtasks, until its
//! first real await before the call returns. For an object that call happens inside core's
//! first poll of the event, under its input gate. Which object is running after any await is
//! carried by V8's continuation-preserved embedder data (deno_core's async context), so each
//! storage call, timer, outbound `fetch()` or stub call is charged to that object's gates
//! (`ops_do.rs` explains the rules) and its CPU to that event.
//!
//! The gateway (`cinder-gateway`) builds a [`HostConfig`] from wrangler configuration, hands
//! HTTP requests to [`Host::fetch`], and connects the WebSockets that workers answer `101`
//! with ([`Host::socket_link`], [`websocket_pump`]). Every isolate starts from a startup
//! snapshot holding the Web-API globals and our JS (`snapshot.rs`, `js/`).
//!
//! Behaviour worth knowing:
//! - Bodies stream both ways through bounded channels (request body -> `ReadableStream`,
//!   response `ReadableStream` -> [`Body`]); nothing buffers a whole body.
//! - An uncaught exception answers `500 Worker threw exception` and is logged.
//!   `ctx.passThroughOnException()` is accepted; with no origin behind a dev server the
//!   response is still that 500 (as `wrangler dev`). When nothing pending in an isolate can
//!   ever settle an unanswered event, it gets workerd's `500 The script will never generate a
//!   response.`
//! - `ctx.waitUntil` promises run after the response is handed back, at most 15 minutes; the
//!   event (and its CPU accounting) ends when they settle.
//! - CPU: thread CPU time spent in the isolate, charged to the event whose code ran (a
//!   synchronous entry's to its event; an event-loop turn's to the events whose I/O completed
//!   in it, split evenly among all in flight only when none is known). One uninterrupted JS
//!   turn is stopped once it would take any in-flight event past `cpu_ms`. Past the limit the
//!   isolate is terminated, the request gets `503 Worker exceeded CPU time limit.`, the other
//!   in-flight requests of that isolate a 503 saying why, its Durable Objects are reset
//!   (storage intact), and a fresh isolate takes the next events.
//! - Heap: past [`HostConfig::heap_limit_bytes`] the same, with `Worker exceeded memory limit.`
//! - A worker other than the first whose modules fail to load (syntax error, top-level throw)
//!   does not stop [`Host::start`]: the error is logged and every event for that worker is
//!   answered `500 Worker failed to load: <file>:<line>: <message>`.
//! - `console.*` goes to `tracing` (target `worker`) with the worker name and request id.
//! - The global `fetch()` and outgoing WebSockets refuse internal addresses (see
//!   [`is_internal_address`]) by resolved IP, unless [`HostConfig::allow_private_fetch`].
//!
//! May depend on `deno_core`, the `deno_*` Web-API crates, `cinder-core`, `cinder-storage`,
//! `cinder-sql` and the service engines; never on the gateway.

use std::path::PathBuf;

mod cpu;
mod durable;
mod event;
mod gated;
mod host;
mod html_rewriter;
mod isolate;
mod loader;
mod netguard;
mod ops;
mod ops_cache;
mod ops_d1;
mod ops_do;
mod ops_html;
mod ops_kv;
mod ops_queue;
mod ops_r2;
mod ops_rpc;
mod ops_sql;
mod ops_ws;
mod queues;
pub mod snapshot;
mod sql_memory;
mod state;
mod stats;
mod thread;
mod websocket;
mod ws_delivery;

pub use cinder_storage::Durability;
pub use host::Host;
pub use loader::{default_rules, module_kind_for};
pub use netguard::{is_internal as is_internal_address, ALLOW_FLAG};
pub use stats::NodeStats;
pub use websocket::{Incoming as WsIncoming, SocketLink, WsHandoff};
pub use ws_delivery::{config as websocket_config, pump as websocket_pump};

/// A streaming HTTP body of `Bytes` chunks; the same type as `axum::body::Body`, so the gateway
/// passes bodies through without conversion.
pub type Body = axum_core::body::Body;

/// One worker script, built by the gateway from wrangler configuration.
#[derive(Debug, Clone, Default)]
pub struct WorkerSpec {
    pub name: String,
    /// Project directory; module specifiers resolve under it.
    pub root: PathBuf,
    /// Entry module (ES module), absolute or relative to `root`.
    pub main: PathBuf,
    /// wrangler `[[rules]]`, tried before the default rules.
    pub rules: Vec<ModuleRule>,
    pub compatibility_date: Option<String>,
    pub compatibility_flags: Vec<String>,
    /// `vars` (strings stay strings, other JSON values become objects) and secrets.
    pub vars: Vec<(String, serde_json::Value)>,
    pub services: Vec<ServiceBinding>,
    /// `limits.cpu_ms`; `None` means [`DEFAULT_CPU_MS`].
    pub cpu_ms: Option<u64>,
    /// `triggers.crons`.
    pub crons: Vec<String>,
    /// `durable_objects.bindings`: `env.<binding>` is a namespace of a class of this worker or
    /// (with `script_name`) of another worker of the same host.
    pub durable_objects: Vec<DurableObjectBinding>,
    /// The Durable Object classes this worker exports that its migrations declared (or that
    /// the gateway declared for it, as `wrangler dev` does for a bound class without one).
    pub classes: Vec<DurableObjectClass>,
    /// `r2_buckets`: `env.<binding>` is an `R2Bucket` over a bucket of this node's R2 storage.
    pub r2_buckets: Vec<R2BucketBinding>,
    /// `d1_databases`: `env.<binding>` is a D1 database.
    pub d1_databases: Vec<D1DatabaseBinding>,
    /// `kv_namespaces`: `env.<binding>` is a `KVNamespace` of this node's KV engine.
    pub kv_namespaces: Vec<KvNamespaceBinding>,
    /// `queues.producers`: `env.<binding>` is a `Queue` that sends to a queue of this node.
    pub queue_producers: Vec<QueueProducerBinding>,
    /// `queues.consumers`: this worker's `queue()` handler consumes these queues.
    pub queue_consumers: Vec<QueueConsumerConfig>,
}

/// One `[[queues.producers]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueProducerBinding {
    pub binding: String,
    /// The queue's name; producers and consumers naming it share it.
    pub queue: String,
    /// `delivery_delay`: seconds every message waits unless its send gives `delaySeconds`.
    pub delivery_delay: Option<u32>,
}

/// One `[[queues.consumers]]` entry; `None` takes Cloudflare's default.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueueConsumerConfig {
    pub queue: String,
    pub max_batch_size: Option<u32>,
    /// Seconds.
    pub max_batch_timeout: Option<u32>,
    pub max_retries: Option<u32>,
    /// Seconds.
    pub retry_delay: Option<u32>,
    pub dead_letter_queue: Option<String>,
    pub max_concurrency: Option<u32>,
}

/// One `[[kv_namespaces]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvNamespaceBinding {
    pub binding: String,
    /// The namespace's identity (wrangler's `id`, else the binding name, as `wrangler dev`
    /// does locally): workers naming the same id share the keys.
    pub id: String,
}

/// One `[[r2_buckets]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct R2BucketBinding {
    pub binding: String,
    /// The bucket (created at start when missing). Workers naming the same bucket share it,
    /// and the S3 endpoint serves it under this name.
    pub bucket_name: String,
}

/// One `[[d1_databases]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct D1DatabaseBinding {
    pub binding: String,
    /// Which database: the key its data is stored under (`preview_database_id`, else
    /// `database_id`, else `database_name`, else the binding), the same for `cinder dev` and
    /// `cinder d1`.
    pub database: String,
}

/// One `[[durable_objects.bindings]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurableObjectBinding {
    pub binding: String,
    pub class_name: String,
    /// The worker exporting the class, when it is not this one.
    pub script_name: Option<String>,
}

/// A Durable Object class as its migrations left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurableObjectClass {
    pub class_name: String,
    /// The namespace's identity: it keys the id MAC and is stored with the objects' alarms, so
    /// it stays the same when the class is renamed (`renamed_classes`).
    pub unique_key: String,
    /// Declared by `new_sqlite_classes` (SQLite-backed storage) rather than `new_classes`.
    pub sqlite: bool,
}

/// CPU time allowed per event when the config sets none (Cloudflare's paid-plan default).
pub const DEFAULT_CPU_MS: u64 = 30_000;

/// How long `ctx.waitUntil` work may keep running after its event (Cloudflare's cap).
pub const WAIT_UNTIL_LIMIT: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// Heap limit per isolate when the config sets none.
pub const DEFAULT_HEAP_LIMIT_BYTES: usize = 128 * 1024 * 1024;

/// A wrangler `[[rules]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleRule {
    pub kind: ModuleKind,
    pub globs: Vec<String>,
    /// When false, later rules of the same kind (including the defaults) are ignored.
    pub fallthrough: bool,
}

/// How an imported file becomes a module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModuleKind {
    ESModule,
    /// Default export: the file's text.
    Text,
    /// Default export: an `ArrayBuffer` of the file's bytes.
    Data,
    /// Default export: a `WebAssembly.Module`.
    CompiledWasm,
}

/// A service binding: `env.<binding>.fetch(req)` calls worker `service` of the same [`Host`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceBinding {
    pub binding: String,
    pub service: String,
    pub entrypoint: Option<String>,
}

/// Everything [`Host::start`] needs.
#[derive(Debug, Clone)]
pub struct HostConfig {
    pub workers: Vec<WorkerSpec>,
    /// Executor threads; 0 means one per available core.
    pub threads: usize,
    /// Let the global `fetch()` reach loopback, private and link-local addresses.
    pub allow_private_fetch: bool,
    pub heap_limit_bytes: usize,
    /// Where Durable Object storage lives (a fjall database). `None`: a temporary directory
    /// removed when the host stops, for runs that keep nothing.
    pub state_dir: Option<PathBuf>,
    /// How a write is made durable before the output gate lets anything depending on it out.
    pub durability: Durability,
    /// How long an object whose only connections are hibernatable WebSockets stays in memory
    /// without events.
    pub hibernate_after: std::time::Duration,
    /// Open R2 storage (under `<state_dir>/r2`) even when no worker binds a bucket: the
    /// gateway's S3 endpoint serves it through [`Host::r2`]. Workers with `r2_buckets` open it
    /// anyway.
    pub enable_r2: bool,
    /// Moves the KV engine's clock (expirations, read-cache TTLs) this many ms ahead of the
    /// wall clock. For tests that need a key to expire without waiting a minute; 0 otherwise.
    pub kv_clock_offset_ms: i64,
}

/// Cloudflare's hibernation delay.
pub const DEFAULT_HIBERNATE_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            workers: Vec::new(),
            threads: 0,
            allow_private_fetch: false,
            heap_limit_bytes: DEFAULT_HEAP_LIMIT_BYTES,
            state_dir: None,
            durability: Durability::Fsync,
            hibernate_after: DEFAULT_HIBERNATE_AFTER,
            enable_r2: false,
            kv_clock_offset_ms: 0,
        }
    }
}

/// A worker script could not be loaded. `Display` names the file and, where known, the line.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{file}:{line}: {message}")]
    Script {
        file: PathBuf,
        line: u32,
        message: String,
    },
    #[error("{file}: {message}")]
    File { file: PathBuf, message: String },
    #[error("worker {worker:?}: {message}")]
    Config { worker: String, message: String },
    #[error("could not start executor threads: {0}")]
    Thread(String),
}

/// An event other than `fetch` failed.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("no worker named {0:?}")]
    NoSuchWorker(String),
    #[error("worker {worker:?} has no {handler} handler")]
    NoHandler {
        worker: String,
        handler: &'static str,
    },
    #[error("worker {worker:?} failed to load: {message}")]
    LoadFailed { worker: String, message: String },
    #[error("worker {worker:?} threw: {message}")]
    Exception { worker: String, message: String },
    #[error("Worker exceeded CPU time limit.")]
    CpuLimit,
    #[error("Worker exceeded memory limit.")]
    MemoryLimit,
    #[error("the host is shut down")]
    Shutdown,
}
