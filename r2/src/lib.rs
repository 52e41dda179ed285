//! R2 for Cinder: buckets whose metadata lives in internal Durable Objects on the actor core
//! and whose bodies are files in a blob directory, with the Workers `R2Bucket` operations as a
//! Rust API ([`Bucket`]) and an S3-compatible HTTP API ([`s3::s3_router`]) over the same
//! buckets.
//!
//! Depends on `cinder-core` and `cinder-storage` (never on V8 crates), tokio, axum and hashing
//! crates.
//!
//! - [`service`]: [`R2Engine`] (open the blob directory, give the runtime the internal
//!   namespaces, start), [`R2Service`] (buckets), [`Bucket`], [`MultipartUpload`].
//! - `bucket`: the internal objects: one per bucket (object records, uploads), one registry.
//! - `blob`: body files: streamed writes made durable before metadata points at them, leases
//!   for readers, the orphan sweep.
//! - [`s3`]: SigV4 (headers, presigned URLs, aws-chunked bodies) and the S3 operations.
//!
//! ## Set-up (for hosts)
//! The internal namespaces must be registered when the runtime starts:
//! ```no_run
//! # async fn demo(store: std::sync::Arc<cinder_storage::Store>) -> Result<(), Box<dyn std::error::Error>> {
//! let engine = cinder_r2::R2Engine::open("state/r2".as_ref())?;
//! let mut specs = engine.namespaces();          // + the host's own NamespaceSpecs
//! let runtime = cinder_core::Runtime::start(store, Default::default(), specs)?;
//! let r2 = engine.start(&runtime).await?;        // sweeps orphaned blobs, then serves
//! let bucket = r2.bucket("assets");
//! # Ok(()) }
//! ```
//!
//! ## Guarantees
//! - A put (or part, or copy) is acknowledged only after its body file and directory entry
//!   were fsync'd and the metadata batch pointing at it is durable (the output gate of the
//!   bucket object). A crash at any point leaves either the old object or the new one.
//! - Bodies are streamed in both directions in 512 KiB chunks; memory per transfer is
//!   bounded (a few MiB), whatever the object size.
//! - Strong consistency per bucket: every operation on a bucket runs in its one object.

mod blob;
mod bucket;
pub mod error;
pub mod limits;
mod range;
mod record;
pub mod s3;
pub mod service;
pub mod time;
pub mod types;

pub use blob::SweepReport;
pub use error::{BoxError, ChecksumAlgorithm, R2Error};
pub use service::{
    Bucket, MultipartUpload, R2Engine, R2Service, BUCKET_NAMESPACE, DEFAULT_UPLOAD_TTL,
    REGISTRY_NAMESPACE,
};
pub use types::*;
