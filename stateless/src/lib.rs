//! The V8 side of Cinder: isolates per worker script, ES module loading with wrangler
//! `[[rules]]`, the Web-API globals (from the `deno_*` crates), the Workers-specific API
//! (`export default { fetch, scheduled }`, `env`, `ctx`), and the CPU / heap limits.
//!
//! The gateway (`cinder-gateway`) builds a [`HostConfig`] from wrangler configuration and hands
//! HTTP requests to [`Host::fetch`]. Requests cross from the gateway's multi-thread runtime over
//! channels to executor threads; each executor owns a current-thread tokio runtime and one
//! `deno_core::JsRuntime` per worker script, reused across requests (requests to one isolate
//! interleave at awaits, as on Cloudflare). Every isolate starts from a startup snapshot that
//! already holds the Web-API globals (`snapshot.rs`, `js/bootstrap.js`).
//!
//! Behaviour worth knowing:
//! - Bodies stream both ways through bounded channels (request body -> `ReadableStream`,
//!   response `ReadableStream` -> [`Body`]); nothing buffers a whole body.
//! - An uncaught exception answers `500 Worker threw exception` and is logged.
//!   `ctx.passThroughOnException()` is accepted; with no origin behind a dev server the
//!   response is still that 500 (as `wrangler dev`).
//! - `ctx.waitUntil` promises run after the response is handed back; the event (and its CPU
//!   accounting) ends when they settle.
//! - CPU: thread CPU time spent in the isolate while an event is in flight. One uninterrupted
//!   JS turn is stopped once it would take any in-flight event past `cpu_ms`; CPU of ordinary
//!   turns is split evenly between the events in flight (interleaved requests cannot be told
//!   apart). Past the limit the isolate is terminated, the request gets
//!   `503 Worker exceeded CPU time limit.`, other in-flight requests of that isolate a 503, and
//!   a fresh isolate takes the next events.
//! - Heap: past [`HostConfig::heap_limit_bytes`] the same, with `Worker exceeded memory limit.`
//! - A worker other than the first whose modules fail to load (syntax error, top-level throw)
//!   does not stop [`Host::start`]: the error is logged and every event for that worker is
//!   answered `500 Worker failed to load: <file>:<line>: <message>`. The same answer goes to an
//!   event whose isolate could not be recreated (after a limit) because loading failed.
//! - `console.*` goes to `tracing` (target `worker`) with the worker name and request id.
//! - The global `fetch()` refuses internal addresses (see [`is_internal_address`]) by resolved
//!   IP, unless [`HostConfig::allow_private_fetch`].
//!
//! May depend on `deno_core` and the `deno_*` Web-API crates, on `cinder-core` for Durable
//! Objects and on `cinder-r2` for R2 bucket bindings. Never on the gateway.

use std::path::PathBuf;

mod cpu;
mod durable;
mod event;
mod host;
mod isolate;
mod loader;
mod netguard;
mod ops;
mod ops_do;
mod ops_r2;
mod ops_rpc;
mod snapshot;
mod state;
mod thread;

pub use cinder_storage::Durability;
pub use host::Host;
pub use loader::{default_rules, module_kind_for};
pub use netguard::{is_internal as is_internal_address, ALLOW_FLAG};

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
}

/// One `[[r2_buckets]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct R2BucketBinding {
    pub binding: String,
    /// The bucket (created at start when missing). Workers naming the same bucket share it,
    /// and the S3 endpoint serves it under this name.
    pub bucket_name: String,
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
    /// Open R2 storage (under `<state_dir>/r2`) even when no worker binds a bucket: the
    /// gateway's S3 endpoint serves it through [`Host::r2`]. Workers with `r2_buckets` open it
    /// anyway.
    pub enable_r2: bool,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            workers: Vec::new(),
            threads: 0,
            allow_private_fetch: false,
            heap_limit_bytes: DEFAULT_HEAP_LIMIT_BYTES,
            state_dir: None,
            durability: Durability::Fsync,
            enable_r2: false,
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
