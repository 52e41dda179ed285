//! Durable per-object storage on fjall: the `ctx.storage` semantics of Durable Objects.
//!
//! One fjall database per node holds every object; an object's keys are the range
//! `id(32) ‖ section(1) ‖ key` ([`keys`]). Each object buffers the writes of a turn in memory
//! ([`ObjectStorage`]); [`ObjectStorage::flush`] turns them into one atomic batch and queues it
//! for the group committer ([`commit`]), whose threads write it into fjall and make many
//! objects' batches durable with one fsync before confirming them, so the caller's thread never
//! waits on fjall for a write. Reads come in a blocking form and a prepared form that answers
//! from memory or hands back the disk part ([`Prepared`]). Alarms live in their own keyspace
//! (`alarm.rs`); a bounded node-wide cache answers recent reads (`cache.rs`). After a failed
//! commit or fsync the store fails closed ([`commit`]). [`power_loss`] lets tests cut the
//! journals back to what the last fsync covered. [`stats`] holds the plain-atomics figures the
//! operator's `/metrics` reads; [`inspect`] reads a state directory offline (`cinder do`).
//!
//! Depends on fjall, rkyv, bytes, thiserror, tracing: no V8 and no other Cinder crate.

mod alarm;
mod cache;
pub mod commit;
mod error;
pub mod inspect;
pub mod keys;
mod limits;
mod list;
mod object;
mod overlay;
pub mod power_loss;
pub mod stats;
mod store;
mod transaction;

pub use alarm::AlarmState;
pub use commit::{Commit, DurabilityHold, Fault, SyncStats, SYNC_LOG_FILE};
pub use error::{ErrorKind, StorageError};
pub use keys::{ObjectId, Section};
pub use limits::{ENFORCED_MAX_VALUE_BYTES, MAX_KEYS_PER_CALL, MAX_KEY_BYTES, MAX_VALUE_BYTES};
pub use list::ListOptions;
pub use object::{ColdRead, ObjectStorage, Prepared, ReadOptions, WriteOptions};
pub use store::{Durability, EngineStats, Store, StoreConfig, StoreTuning};
pub use transaction::Transaction;
