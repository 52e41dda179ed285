//! D1 on the actor core: each database is one internal Durable Object (namespace
//! [`NAMESPACE`], registered with [`namespace_spec`]) whose data is a cinder-sql database over
//! the object's storage. A single writer, the input/output gates and group commit apply to
//! every query, as to any Durable Object's writes: a result leaves only once what the query
//! wrote is durable.
//!
//! - [`D1Service`]: what `env.DB` calls — one statement ([`D1Service::query`], shaped by the
//!   binding as `all()`/`run()`/`raw()`/`first()`), [`D1Service::batch`] (one transaction, all
//!   or nothing), [`D1Service::exec`], [`D1Service::dump`], sessions
//!   ([`D1Service::with_session`], [`D1Session::get_bookmark`]).
//! - [`D1Result`] / [`D1Meta`]: `{success, meta: {duration, size_after, rows_read,
//!   rows_written, last_row_id, changed_db, changes, served_by_primary, timings}, results}`.
//! - [`D1Error`]: `D1_ERROR`, `D1_EXEC_ERROR`, `D1_TYPE_ERROR`, `D1_COLUMN_NOTFOUND`,
//!   `D1_DUMP_ERROR`, `D1_SESSION_ERROR` with Cloudflare's texts.
//! - [`migrations`]: `d1 migrations create|list|apply` and `d1 execute` for the CLI.
//!
//! # Values the binding hands over (D1's conversions, workerd `d1-api.ts`)
//! | JavaScript `bind()` value | [`cinder_sql::SqlValue`] |
//! |---|---|
//! | `null` | `Null` |
//! | number, integral and within ±2⁵³ | `Integer` (else `Real`) |
//! | string | `Text` |
//! | boolean | `Integer(1)` / `Integer(0)` |
//! | `ArrayBuffer`, typed array / `DataView`, array of byte numbers | `Blob` |
//! | `undefined`, objects, functions, symbols, bigint | refused by the binding: [`D1Error::type_error`] |
//!
//! Results go back as D1 returns them: integers and reals as numbers, text as strings, BLOBs
//! as arrays of byte numbers ([`value_json`]).
//!
//! Beyond Cloudflare: `exec()` splits its text with SQLite's tokenizer (statements may span
//! lines) and reports the failing statement's position, where workerd's binding splits on
//! newlines and always says `line 1`. There are no read replicas: every query is served by the
//! primary, and a session's bookmark is always satisfied.
//!
//! Depends on cinder-core (the object), cinder-sql (the database), cinder-storage, serde,
//! thiserror. No V8.

mod error;
pub mod migrations;
mod object;
mod result;
mod service;
mod table;

pub use error::{D1Error, INVALID_SESSION, NO_STATEMENTS};
pub use object::{namespace_spec, NAMESPACE};
pub use result::{
    value_display, value_json, D1Meta, D1Result, ExecResult, First, Statement, Timings,
};
pub use service::{D1Service, D1Session, FIRST_PRIMARY, FIRST_UNCONSTRAINED};
