//! Durable per-object storage on fjall: the `ctx.storage` semantics of Durable Objects.
//!
//! One fjall database per node holds every object; an object's keys are the range
//! `id(32) ‖ section(1) ‖ key` ([`keys`]). Each object buffers the writes of a turn in memory
//! ([`ObjectStorage`]); [`ObjectStorage::flush`] turns them into one atomic fjall batch, and the
//! group committer ([`commit`]) makes many objects' batches durable with one fsync before
//! confirming them. Alarms live in their own keyspace ([`alarm`]); a bounded node-wide cache
//! answers recent reads ([`cache`]).
//!
//! Depends on fjall, rkyv, bytes, thiserror, tracing: no V8 and no other Cinder crate.

mod alarm;
mod cache;
pub mod commit;
mod error;
pub mod keys;
mod limits;
mod list;
mod object;
mod overlay;
mod store;
mod transaction;

pub use commit::{Commit, DurabilityHold, SyncStats};
pub use error::{ErrorKind, StorageError};
pub use keys::{ObjectId, Section};
pub use limits::{ENFORCED_MAX_VALUE_BYTES, MAX_KEYS_PER_CALL, MAX_KEY_BYTES, MAX_VALUE_BYTES};
pub use list::ListOptions;
pub use object::{ObjectStorage, ReadOptions, WriteOptions};
pub use store::{Durability, EngineStats, Store, StoreConfig, StoreTuning};
pub use transaction::Transaction;
