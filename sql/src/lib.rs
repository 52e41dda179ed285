//! SQLite whose pages live in fjall: the engine behind `ctx.storage.sql` and D1.
//!
//! Each SQLite-backed object gets one SQLite connection ([`SqlStorage`]) whose database file is
//! a key range of the node's single fjall store ([`vfs`]): no file, no descriptor, no journal or
//! WAL. Every page SQLite writes goes into the object's turn batch, so SQL commits join the same
//! atomic batch, group commit and output gate as the object's KV writes and alarms; the module
//! doc of [`vfs`] argues why that batch replaces SQLite's journal for crash safety.
//!
//! On top sit Cloudflare's semantics: [`SqlStorage::exec`] returns a [`Cursor`] that streams
//! rows from SQLite as they are pulled (`next_row`, `one`, `raw`, `to_array`, `column_names`,
//! `rows_read`, `rows_written`; `'static`, see [`Cursor`] for interleaving and
//! cancellation), several statements per call, [`SqlStorage::transaction_sync`],
//! [`SqlStorage::database_size`], refusals decided by a SQLite authorizer ([`auth`]) with
//! workerd's texts ([`error`]), limits as documented (2 MB strings/BLOBs/rows, 100 columns,
//! 100 KB statements, 100 bound parameters), the KV API stored in the hidden `_cf_KV` table
//! ([`kv`]), and point-in-time recovery with bookmarks kept for 30 days ([`history`]).
//!
//! With the actor runtime (cinder-core): open the object's database over
//! `ctx.storage().raw().clone()` and pass `Storage::note_raw_write` to
//! [`SqlStorage::set_on_write`]; every call that writes then joins the turn's flush and holds
//! the output gate until the batch is durable, exactly like a KV write (tests/actor.rs). If a
//! batch fails to become durable the runtime resets the object, which drops the connection
//! and with it any page cache fjall never got.
//!
//! Memory: each connection keeps at most [`SqlConfig::cache_kib`] of page cache, an idle
//! object can give its cache back ([`SqlStorage::release_memory`]) or be dropped entirely,
//! and a node may put all SQLite memory under one soft limit ([`set_memory_budget`], before
//! the first database opens: its accounting costs a global mutex per SQLite allocation).
//!
//! `rows_read` is an approximation: workerd counts rows with a patch to SQLite that the bundled
//! SQLite lacks; here a statement's count is the largest of its full-scan steps, rows returned
//! and rows changed.
//!
//! Depends on cinder-storage (the turn batch), rusqlite/libsqlite3-sys (bundled SQLite),
//! bytes, thiserror, tracing. No V8, no cinder-core.

pub mod auth;
mod cursor;
mod db;
pub mod error;
pub mod history;
pub mod kv;
mod savepoint;
mod split;
mod stmt;
pub mod vfs;

pub use cursor::{Cursor, Raw, Row, SqlValue, CANCELED_CLOSED, CANCELED_DELETED};
pub use db::{memory_used, set_memory_budget, SqlConfig, SqlStorage, DEFAULT_MEMORY_BUDGET};
pub use error::SqlError;
pub use kv::Kv;
/// The SQLite binding this crate links (its bundled SQLite carries the VFS), for callers that
/// need a plain SQLite next to it: the differential tests' reference, the benchmark's baseline.
pub use rusqlite;
pub use savepoint::{Savepoint, SavepointKind, TRANSACTION_ENDED};
pub use split::{is_blank, split_statements};
