//! The internal Durable Objects that own R2 metadata: one [`BucketActor`] per bucket (object
//! records, multipart uploads) and one [`RegistryActor`] listing the buckets.
//!
//! Every command runs synchronously inside one event: read, check, write, with no await in
//! between, so it is atomic (single-threaded object, one turn = one atomic batch) and its
//! reply leaves only once the batch is durable (output gate). Blob bodies never pass through
//! here: callers write blobs before a command that points at them, and delete the blobs a
//! command reports as released after its reply.

use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use cinder_core::{
    Actor, ActorContext, ActorError, AlarmInfo, Payload, Request, Response, WriteOptions,
};
use cinder_storage::{ListOptions as StoreList, ObjectStorage, Section};
use futures::future::LocalBoxFuture;
use md5::Digest;

use crate::blob::{BlobId, BlobStore, Lease, Segment};
use crate::error::R2Error;
use crate::limits::{MAX_LIST_KEYS, MIN_PART_BYTES};
use crate::range;
use crate::record::{self, BucketMeta, ObjectRecord, PartRecord, UploadRecord, UploadState};
use crate::time::now_ms;
use crate::types::{
    BucketInfo, ConditionOutcome, Conditional, ListOptions, ListResult, ObjectRange, PartInfo,
    PartList, R2Object, RangeRequest, UploadInfo, UploadedPart,
};

/// A command to a bucket object.
pub(crate) enum Cmd {
    /// Marks the bucket as existing; `exclusive` fails if it already does.
    Create {
        exclusive: bool,
    },
    /// Removes an empty bucket, aborting its uploads.
    DeleteBucket,
    Info,
    Head {
        key: String,
    },
    Get {
        key: String,
        only_if: Option<Conditional>,
        range: RangeRequest,
    },
    Put {
        key: String,
        record: Box<ObjectRecord>,
        segments: Vec<Segment>,
        only_if: Option<Conditional>,
    },
    Delete {
        keys: Vec<String>,
    },
    List(ListOptions),
    CreateUpload {
        upload_id: String,
        record: UploadRecord,
    },
    PutPart {
        key: String,
        upload_id: String,
        part_number: u32,
        part: PartRecord,
    },
    Complete {
        key: String,
        upload_id: String,
        parts: Vec<UploadedPart>,
        version: String,
    },
    Abort {
        key: String,
        upload_id: String,
    },
    ListParts {
        key: String,
        upload_id: String,
        after: u32,
        max: u32,
    },
    ListUploads {
        prefix: String,
        max: u32,
    },
    /// Blob ids referenced by records whose key sorts after `after` (start-up sweep).
    Refs {
        after: Option<String>,
    },
}

/// A bucket object's answer.
pub(crate) enum Reply {
    Done,
    Info(Option<BucketMeta>),
    /// Blobs metadata no longer points at (delete them once the reply arrived).
    Released(Vec<BlobId>),
    Head(Option<R2Object>),
    Get(GetReply),
    Stored {
        object: R2Object,
        released: Vec<BlobId>,
    },
    PreconditionFailed,
    List(ListResult),
    Parts(PartList),
    Uploads(Vec<UploadInfo>),
    Refs {
        ids: Vec<BlobId>,
        next: Option<String>,
    },
}

pub(crate) enum GetReply {
    NotFound,
    PreconditionFailed(R2Object),
    Found {
        object: R2Object,
        segments: Vec<Segment>,
        offset: u64,
        length: u64,
        lease: Lease,
    },
}

pub(crate) type CmdResult = Result<Reply, R2Error>;

/// Metadata of one bucket.
pub(crate) struct BucketActor {
    ctx: ActorContext,
    blobs: Arc<BlobStore>,
    /// Uploads in progress are aborted this long after they began (R2: 7 days); finished
    /// uploads' records are dropped then too.
    upload_ttl_ms: i64,
}

impl BucketActor {
    pub(crate) fn new(ctx: ActorContext, blobs: Arc<BlobStore>, upload_ttl_ms: i64) -> Self {
        BucketActor {
            ctx,
            blobs,
            upload_ttl_ms,
        }
    }

    fn ops(&self) -> Ops<'_> {
        Ops {
            raw: self.ctx.storage().raw().clone(),
            blobs: &self.blobs,
            wrote: false,
            alarm: None,
            upload_ttl_ms: self.upload_ttl_ms,
        }
    }
}

fn downcast<T: 'static>(payload: Payload) -> Result<T, ActorError> {
    payload
        .downcast::<T>()
        .map(|b| *b)
        .map_err(|_| ActorError::new("R2 metadata object: unexpected call"))
}

impl Actor for BucketActor {
    fn fetch(&self, _req: Request) -> LocalBoxFuture<'_, Result<Response, ActorError>> {
        Box::pin(async { Err(ActorError::new("R2 metadata objects take no HTTP requests")) })
    }

    fn call(&self, payload: Payload) -> LocalBoxFuture<'_, Result<Payload, ActorError>> {
        let result = downcast::<Cmd>(payload).map(|cmd| {
            let r: CmdResult = self.ops().run(cmd, &self.ctx);
            Box::new(r) as Payload
        });
        Box::pin(async move { result })
    }

    /// Expires old uploads: aborts those still in progress (their part blobs are deleted
    /// once the abort is durable) and forgets finished ones; re-arms for the next expiry.
    fn alarm(&self, _info: AlarmInfo) -> LocalBoxFuture<'_, Result<(), ActorError>> {
        Box::pin(async move {
            let mut ops = self.ops();
            let released = ops
                .expire_uploads(now_ms())
                .map_err(|e| ActorError::new(e.to_string()))?;
            ops.finish(&self.ctx);
            self.ctx.storage().sync().await?;
            self.blobs.release(released);
            Ok(())
        })
    }
}

/// One command's access to storage; notes the write to the gates at the end.
struct Ops<'a> {
    raw: ObjectStorage,
    blobs: &'a Arc<BlobStore>,
    wrote: bool,
    /// An alarm to set once the command's writes are noted.
    alarm: Option<i64>,
    upload_ttl_ms: i64,
}

fn parse_blob_hex(s: &str) -> Result<BlobId, R2Error> {
    u128::from_str_radix(s, 16).map_err(|_| R2Error::internal(format!("corrupt blob id {s:?}")))
}

/// The smallest string greater than every string that starts with `s` (UTF-8 byte order is
/// code point order), if there is one.
fn successor(s: &str) -> Option<String> {
    let mut chars: Vec<char> = s.chars().collect();
    while let Some(c) = chars.pop() {
        let mut n = c as u32 + 1;
        if n == 0xD800 {
            n = 0xE000;
        }
        if let Some(next) = char::from_u32(n) {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// Where a listing resumes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Resume {
    /// Keys strictly after this one.
    After(String),
    /// Keys from this one on.
    From(String),
}

fn encode_cursor(r: &Resume) -> String {
    let mut raw = Vec::new();
    match r {
        Resume::After(k) => {
            raw.push(b'k');
            raw.extend_from_slice(k.as_bytes());
        }
        Resume::From(k) => {
            raw.push(b'p');
            raw.extend_from_slice(k.as_bytes());
        }
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn decode_cursor(c: &str) -> Result<Resume, R2Error> {
    let bad = || R2Error::InvalidArgument("Invalid cursor".into());
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c)
        .map_err(|_| bad())?;
    let (&kind, rest) = raw.split_first().ok_or_else(bad)?;
    let s = String::from_utf8(rest.to_vec()).map_err(|_| bad())?;
    match kind {
        b'k' => Ok(Resume::After(s)),
        b'p' => Ok(Resume::From(s)),
        _ => Err(bad()),
    }
}

/// The stricter of two resume points.
fn later(a: Resume, b: Resume) -> Resume {
    let key = |r: &Resume| match r {
        Resume::After(k) | Resume::From(k) => k.clone(),
    };
    let (ka, kb) = (key(&a), key(&b));
    match ka.cmp(&kb) {
        std::cmp::Ordering::Greater => a,
        std::cmp::Ordering::Less => b,
        std::cmp::Ordering::Equal => {
            if matches!(a, Resume::After(_)) {
                a
            } else {
                b
            }
        }
    }
}

impl Ops<'_> {
    fn run(mut self, cmd: Cmd, ctx: &ActorContext) -> CmdResult {
        let out = self.dispatch(cmd);
        self.finish(ctx);
        out
    }

    /// Joins this command's writes to the turn batch (and its output-gate lock).
    fn finish(&mut self, ctx: &ActorContext) {
        if self.wrote {
            ctx.storage().note_raw_write(WriteOptions::default());
        }
        if let Some(at) = self.alarm.take() {
            if let Err(e) = ctx.storage().set_alarm(at) {
                tracing::warn!(error = %e, "R2: cannot arm the upload expiry alarm");
            }
        }
    }

    /// Aborts uploads older than the TTL and drops finished ones; sets `alarm` to the next
    /// expiry. Returns the blobs released.
    fn expire_uploads(&mut self, now: i64) -> Result<Vec<BlobId>, R2Error> {
        let mut released = Vec::new();
        let mut next: Option<i64> = None;
        for (k, v) in self.scan(record::UPLOAD_PREFIX, None, usize::MAX)? {
            let u: UploadRecord = record::decode(&v)?;
            let upload_id = &k[record::UPLOAD_PREFIX.len()..];
            let expiry = u.created.saturating_add(self.upload_ttl_ms);
            if expiry > now {
                next = Some(next.map_or(expiry, |n| n.min(expiry)));
                continue;
            }
            if u.state == UploadState::InProgress {
                released.extend(self.drop_parts(upload_id)?);
            }
            self.delete_raw(&k);
        }
        self.alarm = next;
        Ok(released)
    }

    /// Deletes an upload's part records; returns their blobs.
    fn drop_parts(&mut self, upload_id: &str) -> Result<Vec<BlobId>, R2Error> {
        let prefix = record::parts_prefix(upload_id);
        let mut released = Vec::new();
        for (_, v) in self.scan(&prefix, None, usize::MAX)? {
            released.extend(record::decode::<PartRecord>(&v)?.blob_id()?);
        }
        let end = successor(&prefix).unwrap_or_default();
        self.raw
            .raw_delete_range(Section::Kv, prefix.as_bytes(), Some(end.as_bytes()))?;
        self.wrote = true;
        Ok(released)
    }

    fn dispatch(&mut self, cmd: Cmd) -> CmdResult {
        match cmd {
            Cmd::Create { exclusive } => self.create(exclusive),
            Cmd::DeleteBucket => self.delete_bucket(),
            Cmd::Info => Ok(Reply::Info(self.meta()?)),
            Cmd::Head { key } => {
                self.require_bucket()?;
                Ok(Reply::Head(self.record(&key)?.map(|r| {
                    let mut o = r.to_object(&key);
                    o.range = Some(ObjectRange {
                        offset: 0,
                        length: o.size,
                    });
                    o
                })))
            }
            Cmd::Get {
                key,
                only_if,
                range,
            } => self.get(key, only_if, range),
            Cmd::Put {
                key,
                record,
                segments,
                only_if,
            } => self.put(key, *record, segments, only_if),
            Cmd::Delete { keys } => self.delete(keys),
            Cmd::List(opts) => self.list(opts),
            Cmd::CreateUpload { upload_id, record } => {
                self.require_bucket()?;
                let expiry = record.created.saturating_add(self.upload_ttl_ms);
                if self.raw.get_alarm()?.is_none_or(|a| a > expiry) {
                    self.alarm = Some(expiry);
                }
                self.put_json(&record::upload_key(&upload_id), &record)?;
                Ok(Reply::Done)
            }
            Cmd::PutPart {
                key,
                upload_id,
                part_number,
                part,
            } => self.put_part(key, upload_id, part_number, part),
            Cmd::Complete {
                key,
                upload_id,
                parts,
                version,
            } => self.complete(key, upload_id, parts, version),
            Cmd::Abort { key, upload_id } => self.abort(key, upload_id),
            Cmd::ListParts {
                key,
                upload_id,
                after,
                max,
            } => self.list_parts(key, upload_id, after, max),
            Cmd::ListUploads { prefix, max } => self.list_uploads(prefix, max),
            Cmd::Refs { after } => self.refs(after),
        }
    }

    fn get_raw(&self, key: &str) -> Result<Option<Bytes>, R2Error> {
        Ok(self.raw.raw_get(Section::Kv, key.as_bytes())?)
    }

    fn put_raw(&mut self, key: &str, value: Bytes) {
        self.raw.raw_put(Section::Kv, key.as_bytes(), value);
        self.wrote = true;
    }

    fn delete_raw(&mut self, key: &str) {
        self.raw.raw_delete(Section::Kv, key.as_bytes());
        self.wrote = true;
    }

    fn put_json<T: serde::Serialize>(&mut self, key: &str, v: &T) -> Result<(), R2Error> {
        let bytes = record::encode(v)?;
        self.put_raw(key, bytes);
        Ok(())
    }

    fn json<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, R2Error> {
        match self.get_raw(key)? {
            Some(raw) => Ok(Some(record::decode(&raw)?)),
            None => Ok(None),
        }
    }

    /// Entries of the KV section under `prefix`, resuming per `resume`, at most `limit`.
    fn scan(
        &self,
        prefix: &str,
        resume: Option<&Resume>,
        limit: usize,
    ) -> Result<Vec<(String, Bytes)>, R2Error> {
        let mut o = StoreList {
            prefix: Some(prefix.to_owned()),
            limit: Some(limit.max(1)),
            ..Default::default()
        };
        match resume {
            Some(Resume::After(k)) => o.start_after = Some(k.clone()),
            Some(Resume::From(k)) => o.start = Some(k.clone()),
            None => {}
        }
        Ok(self.raw.list(&o)?)
    }

    fn meta(&self) -> Result<Option<BucketMeta>, R2Error> {
        self.json(record::META_KEY)
    }

    fn require_bucket(&self) -> Result<BucketMeta, R2Error> {
        self.meta()?.ok_or(R2Error::NoSuchBucket)
    }

    fn record(&self, key: &str) -> Result<Option<ObjectRecord>, R2Error> {
        self.json(&record::object_key(key))
    }

    fn segments(&self, rec: &ObjectRecord) -> Result<Vec<Segment>, R2Error> {
        if rec.external_blobs() {
            match self.get_raw(&record::blobs_key(&rec.version))? {
                Some(raw) => record::unpack_segments(&raw),
                None => Err(R2Error::internal("multipart object without its blob list")),
            }
        } else {
            rec.inline_segments()
        }
    }

    /// Removes an object record (and its blob list); returns its blobs.
    fn drop_record(&mut self, key: &str, rec: &ObjectRecord) -> Result<Vec<BlobId>, R2Error> {
        let ids = self.segments(rec)?.iter().map(|s| s.id).collect();
        if rec.external_blobs() {
            self.delete_raw(&record::blobs_key(&rec.version));
        }
        self.delete_raw(&record::object_key(key));
        Ok(ids)
    }

    /// Writes an object record (and its blob list) pointing at `segments`.
    fn write_record(
        &mut self,
        key: &str,
        mut rec: ObjectRecord,
        segments: &[Segment],
    ) -> Result<R2Object, R2Error> {
        if rec.external_blobs() {
            rec.blobs.clear();
            self.put_raw(
                &record::blobs_key(&rec.version),
                record::pack_segments(segments),
            );
        } else if segments.len() > 1 {
            return Err(R2Error::internal("single-part object with several blobs"));
        } else {
            rec.set_inline(segments);
        }
        self.put_json(&record::object_key(key), &rec)?;
        let mut o = rec.to_object(key);
        o.range = Some(ObjectRange {
            offset: 0,
            length: o.size,
        });
        Ok(o)
    }

    fn create(&mut self, exclusive: bool) -> CmdResult {
        match self.meta()? {
            Some(_) if exclusive => Err(R2Error::BucketAlreadyExists),
            Some(_) => Ok(Reply::Done),
            None => {
                self.put_json(record::META_KEY, &BucketMeta { created: now_ms() })?;
                Ok(Reply::Done)
            }
        }
    }

    fn delete_bucket(&mut self) -> CmdResult {
        self.require_bucket()?;
        if !self.scan(record::OBJECT_PREFIX, None, 1)?.is_empty() {
            return Err(R2Error::BucketNotEmpty);
        }
        // Uploads in progress go with the bucket (S3 lets a bucket with only incomplete
        // uploads be deleted).
        let mut released = Vec::new();
        for (_, v) in self.scan("p/", None, usize::MAX)? {
            let part: PartRecord = record::decode(&v)?;
            released.extend(part.blob_id()?);
        }
        self.raw.raw_delete_range(Section::Kv, b"p/", Some(b"p0"))?;
        self.raw.raw_delete_range(Section::Kv, b"u/", Some(b"u0"))?;
        self.raw.raw_delete_range(Section::Kv, b"x/", Some(b"x0"))?;
        self.delete_raw(record::META_KEY);
        Ok(Reply::Released(released))
    }

    fn get(&self, key: String, only_if: Option<Conditional>, range: RangeRequest) -> CmdResult {
        self.require_bucket()?;
        let Some(rec) = self.record(&key)? else {
            return Ok(Reply::Get(GetReply::NotFound));
        };
        let mut object = rec.to_object(&key);
        if let Some(c) = &only_if {
            if c.evaluate(Some((&rec.etag, rec.uploaded))) != ConditionOutcome::Pass {
                object.range = Some(ObjectRange {
                    offset: 0,
                    length: rec.size,
                });
                return Ok(Reply::Get(GetReply::PreconditionFailed(object)));
            }
        }
        let (offset, length) = range::resolve(&range, rec.size)?;
        object.range = Some(ObjectRange { offset, length });
        let segments = self.segments(&rec)?;
        let ids: Vec<BlobId> = segments.iter().map(|s| s.id).collect();
        let lease = self.blobs.lease(&ids);
        Ok(Reply::Get(GetReply::Found {
            object,
            segments,
            offset,
            length,
            lease,
        }))
    }

    fn put(
        &mut self,
        key: String,
        mut rec: ObjectRecord,
        segments: Vec<Segment>,
        only_if: Option<Conditional>,
    ) -> CmdResult {
        self.require_bucket()?;
        let prev = self.record(&key)?;
        if let Some(c) = &only_if {
            if c.evaluate(prev.as_ref().map(|p| (p.etag.as_str(), p.uploaded)))
                != ConditionOutcome::Pass
            {
                return Ok(Reply::PreconditionFailed);
            }
        }
        let released = match &prev {
            Some(p) => self.drop_record(&key, p)?,
            None => Vec::new(),
        };
        rec.uploaded = now_ms();
        let object = self.write_record(&key, rec, &segments)?;
        Ok(Reply::Stored { object, released })
    }

    fn delete(&mut self, keys: Vec<String>) -> CmdResult {
        self.require_bucket()?;
        let mut released = Vec::new();
        for key in &keys {
            if let Some(rec) = self.record(key)? {
                released.extend(self.drop_record(key, &rec)?);
            }
        }
        Ok(Reply::Released(released))
    }

    fn list(&self, opts: ListOptions) -> CmdResult {
        self.require_bucket()?;
        let limit = opts.limit.unwrap_or(MAX_LIST_KEYS);
        if limit == 0 || limit > MAX_LIST_KEYS {
            return Err(R2Error::InvalidMaxKeys);
        }
        let limit = limit as usize;
        let prefix = opts.prefix.clone().unwrap_or_default();
        let delimiter = opts.delimiter.clone().filter(|d| !d.is_empty());
        let store_prefix = record::object_key(&prefix);
        let mut resume = opts.start_after.clone().map(Resume::After);
        if let Some(c) = &opts.cursor {
            let from_cursor = decode_cursor(c)?;
            resume = Some(match resume {
                Some(r) => later(r, from_cursor),
                None => from_cursor,
            });
        }
        let mut out = ListResult::default();
        let mut count = 0usize;
        let mut last: Option<Resume> = None;
        'scan: loop {
            let want = (limit - count + 1).min(MAX_LIST_KEYS as usize + 1);
            let store_resume = resume.as_ref().map(|r| match r {
                Resume::After(k) => Resume::After(record::object_key(k)),
                Resume::From(k) => Resume::From(record::object_key(k)),
            });
            let batch = self.scan(&store_prefix, store_resume.as_ref(), want)?;
            let exhausted = batch.len() < want;
            if batch.is_empty() {
                break;
            }
            for (k, v) in batch {
                let key = &k[record::OBJECT_PREFIX.len()..];
                if let Some(d) = &delimiter {
                    if let Some(pos) = key[prefix.len()..].find(d.as_str()) {
                        let cp = &key[..prefix.len() + pos + d.len()];
                        if count == limit {
                            out.truncated = true;
                            break 'scan;
                        }
                        out.delimited_prefixes.push(cp.to_owned());
                        count += 1;
                        match successor(cp) {
                            Some(next) => {
                                last = Some(Resume::From(next.clone()));
                                resume = Some(Resume::From(next));
                                continue 'scan;
                            }
                            None => break 'scan,
                        }
                    }
                }
                if count == limit {
                    out.truncated = true;
                    break 'scan;
                }
                let rec: ObjectRecord = record::decode(&v)?;
                let mut o = rec.to_object(key);
                if !opts.include_http_metadata {
                    o.http_metadata = Default::default();
                }
                if !opts.include_custom_metadata {
                    o.custom_metadata.clear();
                }
                out.objects.push(o);
                count += 1;
                last = Some(Resume::After(key.to_owned()));
                resume = last.clone();
            }
            if exhausted {
                break;
            }
        }
        if out.truncated {
            out.cursor = last.as_ref().map(encode_cursor);
        }
        Ok(Reply::List(out))
    }

    /// The upload `upload_id` of `key`, if it exists.
    fn upload(&self, key: &str, upload_id: &str) -> Result<Option<UploadRecord>, R2Error> {
        Ok(self
            .json::<UploadRecord>(&record::upload_key(upload_id))?
            .filter(|u| u.key == key))
    }

    fn put_part(&mut self, key: String, upload_id: String, n: u32, part: PartRecord) -> CmdResult {
        self.require_bucket()?;
        match self.upload(&key, &upload_id)? {
            Some(u) if u.state == UploadState::InProgress => {}
            _ => return Err(R2Error::NoSuchUpload),
        }
        let pk = record::part_key(&upload_id, n);
        let mut released = Vec::new();
        if let Some(old) = self.json::<PartRecord>(&pk)? {
            released.extend(old.blob_id()?);
        }
        self.put_json(&pk, &part)?;
        Ok(Reply::Released(released))
    }

    fn complete(
        &mut self,
        key: String,
        upload_id: String,
        mut selected: Vec<UploadedPart>,
        version: String,
    ) -> CmdResult {
        self.require_bucket()?;
        let Some(mut upload) = self.upload(&key, &upload_id)? else {
            return Err(R2Error::NoSuchUpload);
        };
        if upload.state != UploadState::InProgress {
            return Err(R2Error::NoSuchUpload);
        }
        if selected.is_empty() {
            return Err(R2Error::InvalidArgument(
                "You must specify at least one part".into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for p in &selected {
            if !seen.insert(p.part_number) {
                return Err(R2Error::InvalidArgument(
                    "Duplicate part number in the list of parts.".into(),
                ));
            }
        }
        let prefix = record::parts_prefix(&upload_id);
        let mut uploaded = std::collections::HashMap::new();
        for (k, v) in self.scan(&prefix, None, usize::MAX)? {
            let n: u32 = k[prefix.len()..]
                .parse()
                .map_err(|_| R2Error::internal("corrupt part key"))?;
            uploaded.insert(n, record::decode::<PartRecord>(&v)?);
        }
        let mut chosen = Vec::with_capacity(selected.len());
        for p in &selected {
            match uploaded.get(&p.part_number) {
                Some(rec) if rec.etag == p.etag.trim_matches('"') => chosen.push(p.part_number),
                _ => return Err(R2Error::InvalidPart),
            }
        }
        // Size rules: in the caller's order first (a friendly error), then, sorted, R2's
        // uniformity rule (all parts but the last the same size, the last no larger).
        for n in &chosen[..chosen.len() - 1] {
            if uploaded[n].size < MIN_PART_BYTES {
                return Err(R2Error::EntityTooSmall);
            }
        }
        selected.sort_by_key(|p| p.part_number);
        chosen.sort_unstable();
        let sizes: Vec<u64> = chosen.iter().map(|n| uploaded[n].size).collect();
        if let Some((&last, rest)) = sizes.split_last() {
            if let Some(&first) = rest.first() {
                if rest.iter().any(|&s| s != first || s < MIN_PART_BYTES) || last > first {
                    return Err(R2Error::BadUpload);
                }
            }
        }
        let mut md5s = md5::Md5::new();
        let mut segments = Vec::with_capacity(chosen.len());
        let mut size = 0u64;
        for n in &chosen {
            let part = &uploaded[n];
            let digest =
                hex::decode(&part.etag).map_err(|_| R2Error::internal("corrupt part etag"))?;
            md5s.update(&digest);
            size += part.size;
            if let Some(id) = part.blob_id()? {
                segments.push(Segment { id, len: part.size });
            }
        }
        let etag = format!("{}-{}", hex::encode(md5s.finalize()), chosen.len());
        let mut released = Vec::new();
        for (n, part) in &uploaded {
            if !chosen.contains(n) {
                released.extend(part.blob_id()?);
            }
        }
        if let Some(prev) = self.record(&key)? {
            released.extend(self.drop_record(&key, &prev)?);
        }
        let end = successor(&prefix).unwrap_or_default();
        self.raw
            .raw_delete_range(Section::Kv, prefix.as_bytes(), Some(end.as_bytes()))?;
        self.wrote = true;
        let rec = ObjectRecord {
            version,
            size,
            etag,
            uploaded: now_ms(),
            http: upload.http.clone(),
            custom: upload.custom.clone(),
            checksums: Default::default(),
            storage_class: upload.storage_class,
            parts: chosen.len() as u32,
            blobs: Vec::new(),
        };
        let object = self.write_record(&key, rec, &segments)?;
        upload.state = UploadState::Completed;
        self.put_json(&record::upload_key(&upload_id), &upload)?;
        Ok(Reply::Stored { object, released })
    }

    fn abort(&mut self, key: String, upload_id: String) -> CmdResult {
        self.require_bucket()?;
        let Some(mut upload) = self.upload(&key, &upload_id)? else {
            return Err(R2Error::NoSuchUpload);
        };
        if upload.state != UploadState::InProgress {
            // Aborting twice, or after completion, changes nothing (as on R2).
            return Ok(Reply::Released(Vec::new()));
        }
        let released = self.drop_parts(&upload_id)?;
        upload.state = UploadState::Aborted;
        self.put_json(&record::upload_key(&upload_id), &upload)?;
        Ok(Reply::Released(released))
    }

    fn list_parts(&self, key: String, upload_id: String, after: u32, max: u32) -> CmdResult {
        self.require_bucket()?;
        match self.upload(&key, &upload_id)? {
            Some(u) if u.state == UploadState::InProgress => {}
            _ => return Err(R2Error::NoSuchUpload),
        }
        let prefix = record::parts_prefix(&upload_id);
        let resume = (after > 0).then(|| Resume::After(record::part_key(&upload_id, after)));
        let max = max.clamp(1, 1000) as usize;
        let rows = self.scan(&prefix, resume.as_ref(), max + 1)?;
        let mut out = PartList {
            truncated: rows.len() > max,
            ..Default::default()
        };
        for (k, v) in rows.into_iter().take(max) {
            let n: u32 = k[prefix.len()..]
                .parse()
                .map_err(|_| R2Error::internal("corrupt part key"))?;
            let p: PartRecord = record::decode(&v)?;
            out.parts.push(PartInfo {
                part_number: n,
                etag: p.etag,
                size: p.size,
                uploaded: p.uploaded,
            });
        }
        if out.truncated {
            out.next_marker = out.parts.last().map(|p| p.part_number);
        }
        Ok(Reply::Parts(out))
    }

    fn list_uploads(&self, prefix: String, max: u32) -> CmdResult {
        self.require_bucket()?;
        let mut out = Vec::new();
        for (k, v) in self.scan(record::UPLOAD_PREFIX, None, usize::MAX)? {
            let u: UploadRecord = record::decode(&v)?;
            if u.state == UploadState::InProgress && u.key.starts_with(&prefix) {
                out.push(UploadInfo {
                    key: u.key,
                    upload_id: k[record::UPLOAD_PREFIX.len()..].to_owned(),
                    initiated: u.created,
                    storage_class: u.storage_class,
                });
            }
        }
        out.sort_by(|a, b| (&a.key, &a.upload_id).cmp(&(&b.key, &b.upload_id)));
        out.truncate(max.clamp(1, 1000) as usize);
        Ok(Reply::Uploads(out))
    }

    /// One page of referenced blob ids: object records first (`o/...`), then parts of
    /// uploads in progress (`p/...`). `next` is where the next page starts.
    fn refs(&self, after: Option<String>) -> CmdResult {
        const PAGE: usize = 1000;
        let mut ids = Vec::new();
        let after = after.unwrap_or_default();
        let in_objects = after.is_empty() || after.starts_with(record::OBJECT_PREFIX);
        if in_objects {
            let resume = (!after.is_empty()).then(|| Resume::After(after.clone()));
            let rows = self.scan(record::OBJECT_PREFIX, resume.as_ref(), PAGE)?;
            let next = (rows.len() == PAGE).then(|| rows[PAGE - 1].0.clone());
            for (_, v) in &rows {
                let rec: ObjectRecord = record::decode(v)?;
                ids.extend(self.segments(&rec)?.iter().map(|s| s.id));
            }
            return Ok(Reply::Refs {
                ids,
                next: Some(next.unwrap_or_else(|| "p/".to_owned())),
            });
        }
        let resume = (after != "p/").then(|| Resume::After(after.clone()));
        let rows = self.scan("p/", resume.as_ref(), PAGE)?;
        let next = (rows.len() == PAGE).then(|| rows[PAGE - 1].0.clone());
        for (_, v) in &rows {
            if let Some(b) = record::decode::<PartRecord>(v)?.blob.as_deref() {
                ids.push(parse_blob_hex(b)?);
            }
        }
        Ok(Reply::Refs { ids, next })
    }
}

/// Registry commands: the set of buckets (for ListBuckets and the start-up sweep).
pub(crate) enum RegCmd {
    Add(String),
    Remove(String),
    List,
}

pub(crate) enum RegReply {
    Done,
    List(Vec<BucketInfo>),
}

/// The one object listing every bucket (`b/<name>` → creation time).
pub(crate) struct RegistryActor {
    ctx: ActorContext,
}

impl RegistryActor {
    pub(crate) fn new(ctx: ActorContext) -> RegistryActor {
        RegistryActor { ctx }
    }

    fn run(&self, cmd: RegCmd) -> Result<RegReply, R2Error> {
        let raw = self.ctx.storage().raw().clone();
        match cmd {
            RegCmd::Add(name) => {
                let k = format!("b/{name}");
                if raw.raw_get(Section::Kv, k.as_bytes())?.is_none() {
                    raw.raw_put(
                        Section::Kv,
                        k.as_bytes(),
                        Bytes::from(now_ms().to_le_bytes().to_vec()),
                    );
                    self.ctx.storage().note_raw_write(WriteOptions::default());
                }
                Ok(RegReply::Done)
            }
            RegCmd::Remove(name) => {
                raw.raw_delete(Section::Kv, format!("b/{name}").as_bytes());
                self.ctx.storage().note_raw_write(WriteOptions::default());
                Ok(RegReply::Done)
            }
            RegCmd::List => {
                let rows = raw.raw_range(Section::Kv, b"b/", Some(b"b0"))?;
                let mut out = Vec::with_capacity(rows.len());
                for (k, v) in rows {
                    let name = String::from_utf8(k[2..].to_vec())
                        .map_err(|_| R2Error::internal("corrupt bucket name"))?;
                    let created = <[u8; 8]>::try_from(&v[..])
                        .map(i64::from_le_bytes)
                        .unwrap_or(0);
                    out.push(BucketInfo { name, created });
                }
                Ok(RegReply::List(out))
            }
        }
    }
}

impl Actor for RegistryActor {
    fn fetch(&self, _req: Request) -> LocalBoxFuture<'_, Result<Response, ActorError>> {
        Box::pin(async { Err(ActorError::new("the R2 registry takes no HTTP requests")) })
    }

    fn call(&self, payload: Payload) -> LocalBoxFuture<'_, Result<Payload, ActorError>> {
        let result = downcast::<RegCmd>(payload).map(|cmd| Box::new(self.run(cmd)) as Payload);
        Box::pin(async move { result })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn successors() {
        assert_eq!(successor("a/").as_deref(), Some("a0"));
        assert_eq!(successor("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(successor("\u{D7FF}").as_deref(), Some("\u{E000}"));
        assert_eq!(successor("\u{10FFFF}"), None);
    }

    #[test]
    fn cursors_round_trip() {
        for r in [Resume::After("x/y".into()), Resume::From("a\u{e9}".into())] {
            assert_eq!(decode_cursor(&encode_cursor(&r)).ok(), Some(r));
        }
        assert!(decode_cursor("!!").is_err());
    }
}
