//! The actor runtime for Durable Objects. Engine-agnostic: never links V8. Depends on
//! `cinder-storage` (durable per-object storage) and `cinder-placement` (which executor thread
//! owns an id, jurisdictions).
//!
//! - [`id`]: 32-byte ids, per-namespace keyed naming, MAC-checked parsing, jurisdictions.
//! - [`gate`]: the input and output gates, the two primitives behind Cloudflare's consistency
//!   rules, and admission: every resumption of object code run by the runtime (handlers,
//!   critical sections, `wait_until` tasks) passes the input gate.
//! - [`Runtime`]: executor threads (one current-thread tokio runtime each); every id maps to
//!   one thread through the executor ring, so an object is single-threaded by construction.
//!   [`Namespace`] and [`Stub`] are the `Send` handles the rest of the system uses.
//! - [`Actor`] / [`ActorFactory`]: the contract an object's code implements (natively in Rust,
//!   or once by the JS host); [`ActorContext`] and [`Storage`] are what it gets back.
//! - Alarms (persisted with their retry count, at-least-once, retried) and idle eviction live
//!   in the runtime. An object's slot outlives a reset: the next instance starts only once the
//!   previous one's write batches are durable.
//! - Storage reads that miss memory run on tokio's blocking pool and commits on the store's
//!   committer threads, so no object's disk work stalls the others on its executor thread.
//!
//! ## For hosts (the JS engine, the gateway)
//!
//! | JS / platform                        | here                                                   |
//! |--------------------------------------|--------------------------------------------------------|
//! | class constructor                    | [`ActorFactory::create`], on the object's executor thread |
//! | per-thread isolate set-up            | [`RuntimeConfig::on_thread_start`]                     |
//! | `fetch` / RPC / WS message handlers  | [`Actor::fetch`] / [`Actor::call`] via [`Stub::fetch`] / [`Stub::call`] |
//! | `alarm({retryCount, isRetry})`       | [`Actor::alarm`] with [`AlarmInfo`]                    |
//! | `ctx.storage.*`                      | [`ActorContext::storage`] ([`Storage`])                |
//! | `blockConcurrencyWhile`, `waitUntil`, `abort` | [`ActorContext::block_concurrency_while`], [`ActorContext::wait_until`], [`ActorContext::reset`] |
//! | outbound `fetch()`, KV/R2 writes, calls to other objects | wrap the I/O in [`ActorContext::outbound`] |
//! | timers, reads of incoming streams    | wrap the wait in [`ActorContext::gated`]               |
//! | `ws.send()` and other pure output    | await [`OutputGate::wait`] ([`ActorContext::output_gate`]) first |
//! | hibernation (later)                  | [`Actor::idle_policy`] + [`Actor::on_evict`]           |
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use cinder_core::*;
//! # async fn demo(store: Arc<cinder_storage::Store>, factory: Arc<dyn ActorFactory>) {
//! let rt = Runtime::start(store, RuntimeConfig::default(), vec![NamespaceSpec {
//!     name: "counter/Counter".into(),
//!     ids: IdFactory::from_unique_key("counter/Counter"),
//!     factory,
//! }]).unwrap();
//! let ns = rt.namespace("counter/Counter").unwrap();
//! let resp = ns.get_by_name("alice").fetch(http::Request::new(bytes::Bytes::new())).await;
//! # }
//! ```

mod actor;
mod alarm;
mod context;
mod error;
mod executor;
pub mod gate;
pub mod id;
mod runtime;
mod storage;
#[cfg(test)]
mod tests;

pub use actor::{Actor, ActorFactory, AlarmInfo, IdlePolicy, Payload, Request, Response};
pub use alarm::now_ms;
pub use context::ActorContext;
pub use error::{ActorError, ObjectError, BLOCK_CONCURRENCY_TIMEOUT_MESSAGE, OVERLOADED_MESSAGE};
pub use gate::{GateBroken, InputGate, InputLock, OutputGate, OutputLock};
pub use id::{IdError, IdFactory, ObjectId};
pub use runtime::{
    Namespace, NamespaceSpec, Runtime, RuntimeConfig, RuntimeError, Stub, ThreadHook, ThreadTask,
};
pub use storage::{ReadOptions, Storage, WriteOptions};

pub use cinder_placement::Jurisdiction;
pub use cinder_storage::ListOptions;
