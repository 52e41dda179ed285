//! The Rust API of R2: [`R2Engine`] (set-up), [`R2Service`] (buckets), [`Bucket`] (the
//! operations of a Workers `R2Bucket` binding) and [`MultipartUpload`].

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cinder_core::{IdFactory, Namespace, NamespaceSpec, ObjectError, Runtime, Stub};
use cinder_storage::Durability;
use futures::Stream;

use crate::blob::{BlobStore, NewBlob, PendingBlob, Segment, SweepReport};
use crate::bucket::{
    BucketActor, Cmd, CmdResult, GetReply, RegCmd, RegReply, RegistryActor, Reply,
};
use crate::error::{BoxError, ChecksumAlgorithm, R2Error};
use crate::limits::{self, MAX_DELETE_KEYS, MAX_UPLOAD_BYTES};
use crate::record::{ObjectRecord, PartRecord, UploadRecord, UploadState};
use crate::time::now_ms;
use crate::types::{
    BucketInfo, ConditionOutcome, CopyOptions, GetOptions, GetResult, ListOptions, ListResult,
    MultipartOptions, PartList, PutOptions, R2Object, R2ObjectBody, RangeRequest, UploadInfo,
    UploadedPart,
};

/// Name of the internal namespace holding one object per bucket.
pub const BUCKET_NAMESPACE: &str = "cinder:r2/bucket";
/// Name of the internal namespace holding the bucket registry (one object).
pub const REGISTRY_NAMESPACE: &str = "cinder:r2/registry";

fn random_hex() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// R2 before the actor runtime runs: the blob directory is open, and [`R2Engine::namespaces`]
/// gives the internal Durable Object classes the host registers with
/// [`Runtime::start`]. [`R2Engine::start`] then gives the [`R2Service`].
///
/// ```no_run
/// # async fn demo(store: std::sync::Arc<cinder_storage::Store>) -> Result<(), Box<dyn std::error::Error>> {
/// let engine = cinder_r2::R2Engine::open("state/r2-blobs".as_ref())?;
/// let runtime = cinder_core::Runtime::start(store, Default::default(), engine.namespaces())?;
/// let r2 = engine.start(&runtime).await?;   // sweeps orphaned blobs first
/// r2.ensure_bucket("assets").await?;
/// # Ok(()) }
/// ```
pub struct R2Engine {
    blobs: Arc<BlobStore>,
    upload_ttl: Duration,
}

/// How long a multipart upload may stay incomplete before it is aborted (R2: 7 days).
pub const DEFAULT_UPLOAD_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

impl std::fmt::Debug for R2Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("R2Engine")
            .field("blobs", &self.blobs)
            .finish()
    }
}

impl R2Engine {
    /// Opens (or creates) the blob directory, for a node whose store durability is `fsync`.
    pub fn open(blob_dir: &Path) -> Result<R2Engine, R2Error> {
        Self::open_with(blob_dir, Durability::Fsync)
    }

    /// As [`R2Engine::open`], matching the node's durability. With [`Durability::Process`]
    /// bodies are not fsync'd either: a process crash keeps the page cache, so nothing
    /// acknowledged is lost; after a power loss a recent object may be lost or its body
    /// truncated, as the metadata store itself may lose recent batches in that mode.
    pub fn open_with(blob_dir: &Path, durability: Durability) -> Result<R2Engine, R2Error> {
        Ok(R2Engine {
            blobs: BlobStore::open(blob_dir, durability == Durability::Fsync)?,
            upload_ttl: DEFAULT_UPLOAD_TTL,
        })
    }

    /// Changes how long incomplete multipart uploads live ([`DEFAULT_UPLOAD_TTL`]); call
    /// before [`R2Engine::namespaces`].
    pub fn set_upload_ttl(&mut self, ttl: Duration) {
        self.upload_ttl = ttl;
    }

    /// The internal namespaces ([`BUCKET_NAMESPACE`], [`REGISTRY_NAMESPACE`]) the host must
    /// pass to [`Runtime::start`] along with its own.
    pub fn namespaces(&self) -> Vec<NamespaceSpec> {
        let blobs = self.blobs.clone();
        let ttl_ms = i64::try_from(self.upload_ttl.as_millis()).unwrap_or(i64::MAX);
        vec![
            NamespaceSpec {
                name: BUCKET_NAMESPACE.into(),
                ids: IdFactory::from_unique_key(BUCKET_NAMESPACE),
                factory: Arc::new(move |ctx| {
                    Ok(Box::new(BucketActor::new(ctx, blobs.clone(), ttl_ms))
                        as Box<dyn cinder_core::Actor>)
                }),
            },
            NamespaceSpec {
                name: REGISTRY_NAMESPACE.into(),
                ids: IdFactory::from_unique_key(REGISTRY_NAMESPACE),
                factory: Arc::new(|ctx| {
                    Ok(Box::new(RegistryActor::new(ctx)) as Box<dyn cinder_core::Actor>)
                }),
            },
        ]
    }

    /// Connects to `runtime` (started with [`R2Engine::namespaces`]) and deletes orphaned
    /// blobs (left by a crash between writing a body and committing its metadata) before any
    /// operation can run.
    pub async fn start(self, runtime: &Runtime) -> Result<R2Service, R2Error> {
        let not_registered =
            || R2Error::internal("the R2 namespaces were not registered with the runtime");
        let buckets = runtime
            .namespace(BUCKET_NAMESPACE)
            .ok_or_else(not_registered)?;
        let registry = runtime
            .namespace(REGISTRY_NAMESPACE)
            .ok_or_else(not_registered)?
            .get_by_name("registry");
        let svc = R2Service {
            inner: Arc::new(Inner {
                blobs: self.blobs,
                buckets,
                registry,
            }),
        };
        let report = svc.sweep_orphans().await?;
        if report.removed > 0 {
            tracing::info!(
                removed = report.removed,
                kept = report.kept,
                "R2: orphaned blobs deleted"
            );
        }
        Ok(svc)
    }
}

struct Inner {
    blobs: Arc<BlobStore>,
    buckets: Namespace,
    registry: Stub,
}

/// R2 on this node: its buckets. Cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub struct R2Service {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for R2Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("R2Service").finish_non_exhaustive()
    }
}

/// The outcome of a call to an internal object: the outer error means the call itself failed
/// (it may or may not have taken effect), the inner one is the object's own answer.
async fn call(stub: &Stub, cmd: Cmd) -> Result<CmdResult, R2Error> {
    let reply = stub.call(Box::new(cmd)).await.map_err(object_error)?;
    reply
        .downcast::<CmdResult>()
        .map(|b| *b)
        .map_err(|_| R2Error::internal("R2 metadata object: unexpected reply"))
}

fn object_error(e: ObjectError) -> R2Error {
    match e {
        ObjectError::Overloaded => R2Error::Overloaded,
        other => R2Error::internal(format!("R2 metadata object: {other}")),
    }
}

fn unexpected() -> R2Error {
    R2Error::internal("R2 metadata object: unexpected reply")
}

impl R2Service {
    /// A handle to bucket `name` (no I/O; operations on a bucket that does not exist fail
    /// with [`R2Error::NoSuchBucket`]).
    pub fn bucket(&self, name: &str) -> Bucket {
        Bucket {
            svc: self.clone(),
            name: name.to_owned(),
            stub: self.inner.buckets.get_by_name(name),
        }
    }

    async fn registry(&self, cmd: RegCmd) -> Result<RegReply, R2Error> {
        let reply = self
            .inner
            .registry
            .call(Box::new(cmd))
            .await
            .map_err(object_error)?;
        reply
            .downcast::<Result<RegReply, R2Error>>()
            .map(|b| *b)
            .map_err(|_| unexpected())?
    }

    /// S3 CreateBucket: R2's naming rules; [`R2Error::BucketAlreadyExists`] if it exists.
    pub async fn create_bucket(&self, name: &str) -> Result<(), R2Error> {
        if !limits::valid_bucket_name(name) {
            return Err(R2Error::InvalidBucketName);
        }
        self.create(name, true).await
    }

    /// Creates bucket `name` unless it exists (a wrangler `r2_buckets` binding's bucket, made
    /// at start-up). Names are checked loosely: 1–255 bytes, no `/` or control characters.
    pub async fn ensure_bucket(&self, name: &str) -> Result<(), R2Error> {
        if name.is_empty() || name.len() > 255 || name.chars().any(|c| c == '/' || c.is_control()) {
            return Err(R2Error::InvalidBucketName);
        }
        self.create(name, false).await
    }

    async fn create(&self, name: &str, exclusive: bool) -> Result<(), R2Error> {
        // Registry first: a bucket can hold data only once the sweep can find it.
        self.registry(RegCmd::Add(name.to_owned())).await?;
        match call(&self.bucket(name).stub, Cmd::Create { exclusive }).await?? {
            Reply::Done => Ok(()),
            _ => Err(unexpected()),
        }
    }

    /// S3 DeleteBucket: fails with [`R2Error::BucketNotEmpty`] while objects remain; uploads
    /// in progress are aborted.
    pub async fn delete_bucket(&self, name: &str) -> Result<(), R2Error> {
        match call(&self.bucket(name).stub, Cmd::DeleteBucket).await?? {
            Reply::Released(ids) => self.inner.blobs.release(ids),
            _ => return Err(unexpected()),
        }
        self.registry(RegCmd::Remove(name.to_owned())).await?;
        Ok(())
    }

    /// S3 HeadBucket: the bucket, if it exists.
    pub async fn head_bucket(&self, name: &str) -> Result<Option<BucketInfo>, R2Error> {
        match call(&self.bucket(name).stub, Cmd::Info).await?? {
            Reply::Info(m) => Ok(m.map(|m| BucketInfo {
                name: name.to_owned(),
                created: m.created,
            })),
            _ => Err(unexpected()),
        }
    }

    /// S3 ListBuckets, in name order.
    pub async fn list_buckets(&self) -> Result<Vec<BucketInfo>, R2Error> {
        let RegReply::List(names) = self.registry(RegCmd::List).await? else {
            return Err(unexpected());
        };
        // A crash between the registry and the bucket object can leave a name whose bucket
        // does not exist; the bucket object is the authority.
        let mut out = Vec::with_capacity(names.len());
        for b in names {
            if let Some(info) = self.head_bucket(&b.name).await? {
                out.push(info);
            }
        }
        Ok(out)
    }

    /// Deletes every blob file no metadata points at (run by [`R2Engine::start`]; safe to run
    /// while serving).
    pub async fn sweep_orphans(&self) -> Result<SweepReport, R2Error> {
        struct Abort<'a>(&'a BlobStore, bool);
        impl Drop for Abort<'_> {
            fn drop(&mut self) {
                if self.1 {
                    self.0.gc_end();
                }
            }
        }
        let blobs = self.inner.blobs.clone();
        blobs.gc_begin();
        let mut guard = Abort(&blobs, true);
        let RegReply::List(names) = self.registry(RegCmd::List).await? else {
            return Err(unexpected());
        };
        let mut referenced = HashSet::new();
        for b in names {
            let stub = self.bucket(&b.name).stub;
            let mut after = None;
            loop {
                match call(&stub, Cmd::Refs { after }).await?? {
                    Reply::Refs { ids, next } => {
                        referenced.extend(ids);
                        match next {
                            Some(n) => after = Some(n),
                            None => break,
                        }
                    }
                    _ => return Err(unexpected()),
                }
            }
        }
        guard.1 = false;
        let sweeper = blobs.clone();
        tokio::task::spawn_blocking(move || sweeper.gc_sweep(&referenced))
            .await
            .map_err(R2Error::internal)?
            .map_err(R2Error::from)
    }
}

/// A bucket: the operations of the Workers `R2Bucket` binding, plus what S3 needs. Cheap to
/// clone, `Send + Sync`.
#[derive(Clone)]
pub struct Bucket {
    svc: R2Service,
    name: String,
    stub: Stub,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bucket").field("name", &self.name).finish()
    }
}

/// Settles a blob written for a command: committed when the object took it, deleted when the
/// object refused, left for the sweep when the call's fate is unknown.
fn settle(pending: Vec<PendingBlob>, outcome: &Result<CmdResult, R2Error>) {
    for p in pending {
        match outcome {
            Ok(Ok(Reply::Stored { .. })) | Ok(Ok(Reply::Released(_))) => p.commit(),
            Ok(_) => drop(p),
            Err(_) => p.leave_to_sweep(),
        }
    }
}

fn check_digest(blob: &NewBlob, want: &crate::types::Checksum) -> Result<(), R2Error> {
    let actual: Vec<u8> = match want.algorithm {
        ChecksumAlgorithm::Md5 => blob.md5.to_vec(),
        _ => match &blob.extra {
            Some((_, d)) => d.clone(),
            None => return Err(R2Error::internal("checksum not computed")),
        },
    };
    if actual != want.digest {
        return Err(R2Error::BadDigest {
            algorithm: want.algorithm,
            provided: hex::encode(&want.digest),
            actual: hex::encode(actual),
        });
    }
    Ok(())
}

impl Bucket {
    /// The bucket's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    async fn call(&self, cmd: Cmd) -> Result<CmdResult, R2Error> {
        call(&self.stub, cmd).await
    }

    /// `head(key)`.
    pub async fn head(&self, key: &str) -> Result<Option<R2Object>, R2Error> {
        limits::check_key(key)?;
        match self
            .call(Cmd::Head {
                key: key.to_owned(),
            })
            .await??
        {
            Reply::Head(o) => Ok(o),
            _ => Err(unexpected()),
        }
    }

    /// `get(key, {onlyIf, range})`. The body streams from disk as it is read.
    pub async fn get(&self, key: &str, opts: GetOptions) -> Result<GetResult, R2Error> {
        limits::check_key(key)?;
        let cmd = Cmd::Get {
            key: key.to_owned(),
            only_if: opts.only_if,
            range: opts.range,
        };
        match self.call(cmd).await?? {
            Reply::Get(GetReply::NotFound) => Ok(GetResult::NotFound),
            Reply::Get(GetReply::PreconditionFailed(o)) => Ok(GetResult::PreconditionFailed(o)),
            Reply::Get(GetReply::Found {
                object,
                segments,
                offset,
                length,
                lease,
            }) => {
                let body = self
                    .svc
                    .inner
                    .blobs
                    .reader(&segments, offset, length, lease);
                Ok(GetResult::Found(R2ObjectBody { object, body }))
            }
            _ => Err(unexpected()),
        }
    }

    /// `put(key, body, options)`: `Ok(None)` when `onlyIf` did not hold. The body is streamed
    /// to disk (never held in memory), checked against the checksum given, made durable, and
    /// only then recorded. The caller's stream may be `!Send`.
    pub async fn put<S, E>(
        &self,
        key: &str,
        body: S,
        opts: PutOptions,
    ) -> Result<Option<R2Object>, R2Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Into<BoxError>,
    {
        limits::check_key(key)?;
        limits::check_metadata(&opts.custom_metadata)?;
        // A condition that already fails saves writing the body (it is checked again when
        // the record is written).
        if let Some(c) = &opts.only_if {
            let head = self.head(key).await?;
            if c.evaluate(head.as_ref().map(|o| (o.etag.as_str(), o.uploaded)))
                != ConditionOutcome::Pass
            {
                return Ok(None);
            }
        }
        let extra = opts
            .checksum
            .as_ref()
            .map(|c| c.algorithm)
            .filter(|a| *a != ChecksumAlgorithm::Md5);
        let blob = self
            .svc
            .inner
            .blobs
            .write(body, extra, MAX_UPLOAD_BYTES, opts.expected_length)
            .await?;
        if let Some(want) = &opts.checksum {
            check_digest(&blob, want)?;
        }
        let md5 = hex::encode(blob.md5);
        let mut checksums = crate::types::Checksums {
            md5: Some(md5.clone()),
            ..Default::default()
        };
        if let Some((alg, d)) = &blob.extra {
            checksums.set(*alg, hex::encode(d));
        }
        let segments: Vec<Segment> = blob
            .pending
            .iter()
            .map(|p| Segment {
                id: p.id(),
                len: blob.size,
            })
            .collect();
        let record = ObjectRecord {
            version: random_hex(),
            size: blob.size,
            etag: md5,
            uploaded: 0,
            http: opts.http_metadata,
            custom: opts.custom_metadata,
            checksums,
            storage_class: opts.storage_class,
            parts: 0,
            blobs: Vec::new(),
        };
        let cmd = Cmd::Put {
            key: key.to_owned(),
            record: Box::new(record),
            segments,
            only_if: opts.only_if,
        };
        self.finish_put(cmd, blob.pending.into_iter().collect())
            .await
    }

    async fn finish_put(
        &self,
        cmd: Cmd,
        pending: Vec<PendingBlob>,
    ) -> Result<Option<R2Object>, R2Error> {
        let outcome = self.call(cmd).await;
        settle(pending, &outcome);
        match outcome?? {
            Reply::Stored { object, released } => {
                self.svc.inner.blobs.release(released);
                Ok(Some(object))
            }
            Reply::PreconditionFailed => Ok(None),
            _ => Err(unexpected()),
        }
    }

    /// `delete(keys)`: missing keys are ignored; at most 1,000 keys.
    pub async fn delete(&self, keys: &[String]) -> Result<(), R2Error> {
        if keys.len() > MAX_DELETE_KEYS {
            return Err(R2Error::InvalidArgument(format!(
                "You can delete at most {MAX_DELETE_KEYS} objects per call."
            )));
        }
        for k in keys {
            limits::check_key(k)?;
        }
        match self
            .call(Cmd::Delete {
                keys: keys.to_vec(),
            })
            .await??
        {
            Reply::Released(ids) => {
                self.svc.inner.blobs.release(ids);
                Ok(())
            }
            _ => Err(unexpected()),
        }
    }

    /// `list(options)`.
    pub async fn list(&self, opts: ListOptions) -> Result<ListResult, R2Error> {
        match self.call(Cmd::List(opts)).await?? {
            Reply::List(l) => Ok(l),
            _ => Err(unexpected()),
        }
    }

    /// Copies `src_key` of `src` to `key` here (S3 CopyObject). Bodies are shared, not copied
    /// (blobs are immutable; the new object gets hard links).
    pub async fn copy_from(
        &self,
        src: &Bucket,
        src_key: &str,
        key: &str,
        opts: CopyOptions,
    ) -> Result<R2Object, R2Error> {
        limits::check_key(key)?;
        limits::check_key(src_key)?;
        if let Some(m) = &opts.replace_metadata {
            limits::check_metadata(&m.custom_metadata)?;
        }
        let cmd = Cmd::Get {
            key: src_key.to_owned(),
            only_if: opts.source_only_if,
            range: RangeRequest::Full,
        };
        let (object, segments, lease) = match src.call(cmd).await?? {
            Reply::Get(GetReply::Found {
                object,
                segments,
                lease,
                ..
            }) => (object, segments, lease),
            Reply::Get(GetReply::NotFound) => return Err(R2Error::NoSuchKey),
            Reply::Get(GetReply::PreconditionFailed(_)) => return Err(R2Error::PreconditionFailed),
            _ => return Err(unexpected()),
        };
        let ids: Vec<_> = segments.iter().map(|s| s.id).collect();
        let links = self.svc.inner.blobs.link(&ids).await?;
        drop(lease);
        let new_segments = links
            .iter()
            .zip(&segments)
            .map(|(p, s)| Segment {
                id: p.id(),
                len: s.len,
            })
            .collect();
        let (http, custom, storage_class) = match opts.replace_metadata {
            Some(m) => (m.http_metadata, m.custom_metadata, m.storage_class),
            None => (
                object.http_metadata,
                object.custom_metadata,
                object.storage_class,
            ),
        };
        let record = ObjectRecord {
            version: random_hex(),
            size: object.size,
            etag: object.etag,
            uploaded: 0,
            http,
            custom,
            checksums: object.checksums,
            storage_class,
            parts: object.parts,
            blobs: Vec::new(),
        };
        let cmd = Cmd::Put {
            key: key.to_owned(),
            record: Box::new(record),
            segments: new_segments,
            only_if: None,
        };
        self.finish_put(cmd, links)
            .await?
            .ok_or(R2Error::PreconditionFailed)
    }

    /// `createMultipartUpload(key, options)`.
    pub async fn create_multipart_upload(
        &self,
        key: &str,
        opts: MultipartOptions,
    ) -> Result<MultipartUpload, R2Error> {
        limits::check_key(key)?;
        limits::check_metadata(&opts.custom_metadata)?;
        let upload_id = random_hex();
        let record = UploadRecord {
            key: key.to_owned(),
            http: opts.http_metadata,
            custom: opts.custom_metadata,
            storage_class: opts.storage_class,
            created: now_ms(),
            state: UploadState::InProgress,
        };
        match self
            .call(Cmd::CreateUpload {
                upload_id: upload_id.clone(),
                record,
            })
            .await??
        {
            Reply::Done => Ok(self.resume_multipart_upload(key, &upload_id)),
            _ => Err(unexpected()),
        }
    }

    /// `resumeMultipartUpload(key, uploadId)`: no round trip; a wrong id fails on first use.
    pub fn resume_multipart_upload(&self, key: &str, upload_id: &str) -> MultipartUpload {
        MultipartUpload {
            bucket: self.clone(),
            key: key.to_owned(),
            upload_id: upload_id.to_owned(),
        }
    }

    /// Uploads in progress whose key starts with `prefix` (S3 ListMultipartUploads), in key
    /// order, at most `max`.
    pub async fn list_multipart_uploads(
        &self,
        prefix: &str,
        max: u32,
    ) -> Result<Vec<UploadInfo>, R2Error> {
        match self
            .call(Cmd::ListUploads {
                prefix: prefix.to_owned(),
                max,
            })
            .await??
        {
            Reply::Uploads(u) => Ok(u),
            _ => Err(unexpected()),
        }
    }
}

/// `R2MultipartUpload`.
#[derive(Clone, Debug)]
pub struct MultipartUpload {
    bucket: Bucket,
    key: String,
    upload_id: String,
}

impl MultipartUpload {
    /// The object key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The upload id.
    pub fn upload_id(&self) -> &str {
        &self.upload_id
    }

    /// `uploadPart(partNumber, body)`: parts are 1..=10,000; re-uploading a number replaces
    /// the part. The returned etag is the part's MD5 hex.
    pub async fn upload_part<S, E>(
        &self,
        part_number: u32,
        body: S,
        expected_length: Option<u64>,
    ) -> Result<UploadedPart, R2Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Into<BoxError>,
    {
        limits::check_key(&self.key)?;
        limits::check_part_number(part_number)?;
        let blob = self
            .bucket
            .svc
            .inner
            .blobs
            .write(body, None, MAX_UPLOAD_BYTES, expected_length)
            .await?;
        let etag = hex::encode(blob.md5);
        let part = PartRecord::new(
            blob.pending.as_ref().map(|p| p.id()),
            blob.size,
            etag.clone(),
            now_ms(),
        );
        let cmd = Cmd::PutPart {
            key: self.key.clone(),
            upload_id: self.upload_id.clone(),
            part_number,
            part,
        };
        let outcome = self.bucket.call(cmd).await;
        settle(blob.pending.into_iter().collect(), &outcome);
        match outcome?? {
            Reply::Released(old) => {
                self.bucket.svc.inner.blobs.release(old);
                Ok(UploadedPart { part_number, etag })
            }
            _ => Err(unexpected()),
        }
    }

    /// `complete(parts)`: the object, made of the named parts in part-number order.
    pub async fn complete(&self, parts: Vec<UploadedPart>) -> Result<R2Object, R2Error> {
        limits::check_key(&self.key)?;
        let cmd = Cmd::Complete {
            key: self.key.clone(),
            upload_id: self.upload_id.clone(),
            parts,
            version: random_hex(),
        };
        match self.bucket.call(cmd).await?? {
            Reply::Stored { object, released } => {
                self.bucket.svc.inner.blobs.release(released);
                Ok(object)
            }
            _ => Err(unexpected()),
        }
    }

    /// `abort()`: drops the parts; aborting again or after completion changes nothing.
    pub async fn abort(&self) -> Result<(), R2Error> {
        limits::check_key(&self.key)?;
        let cmd = Cmd::Abort {
            key: self.key.clone(),
            upload_id: self.upload_id.clone(),
        };
        match self.bucket.call(cmd).await?? {
            Reply::Released(ids) => {
                self.bucket.svc.inner.blobs.release(ids);
                Ok(())
            }
            _ => Err(unexpected()),
        }
    }

    /// The parts uploaded so far with numbers above `after`, at most `max` (S3 ListParts).
    pub async fn list_parts(&self, after: u32, max: u32) -> Result<PartList, R2Error> {
        let cmd = Cmd::ListParts {
            key: self.key.clone(),
            upload_id: self.upload_id.clone(),
            after,
            max,
        };
        match self.bucket.call(cmd).await?? {
            Reply::Parts(p) => Ok(p),
            _ => Err(unexpected()),
        }
    }
}
