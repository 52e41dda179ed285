//! Workers KV on the actor core: the engine behind the `kv_namespaces` binding. No V8 here;
//! depends on `cinder-core` (internal objects, gates, alarms) and `cinder-storage` (types).
//!
//! - [`Kv`]: the node's engine. Each KV namespace is split over [`KvConfig::shards`] internal
//!   Durable Objects ([`INTERNAL_NAMESPACE`]), chosen by a hash of the key; each shard object
//!   holds the authoritative copy of its keys (layout in `record.rs`), so KV inherits
//!   single-writer semantics and durability from the core, and later cluster placement.
//! - [`KvNamespace`]: one namespace, what `env.MY_KV` wraps: `get` (value bytes, metadata,
//!   expiration, `cacheStatus`), bulk `get_many`, `put` / `put_stream`, `delete`, `list`
//!   (merged over the shards with an opaque cursor). Limits and error texts are Cloudflare's
//!   ([`limits`], [`KvError`]).
//! - Eventual consistency as documented: each node caches reads for `cacheTtl` (default 60 s,
//!   at least 30); writes through a node are visible to that node at once.
//! - Expiration: expired keys vanish from reads and lists at once (by [`Clock`]); a shard's
//!   alarm, set to its earliest expiration, removes them from storage.
//! - [`OperationBudget`]: the 1,000-operations-per-invocation limit, counted by the binding.
//!
//! The JS binding turns bytes into text/JSON/ArrayBuffer/stream itself, and when the caller is
//! a Durable Object it wraps writes in that object's `ActorContext::outbound` (output gate).

mod budget;
mod cache;
pub mod clock;
mod error;
pub mod limits;
mod record;
mod service;
mod shard;

pub use budget::OperationBudget;
pub use clock::{Clock, ManualClock, OffsetClock, SystemClock};
pub use error::{ErrorKind, KvError};
pub use service::{
    CacheStatus, GetOptions, GetResult, Kv, KvConfig, KvNamespace, ListOptions, ListResult,
    PutOptions, INTERNAL_NAMESPACE,
};
pub use shard::{KvEntry, ListedKey};
