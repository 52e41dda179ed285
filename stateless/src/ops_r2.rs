//! The `cinder_r2_binding` extension: the ops behind `env.<binding>` R2 buckets (`js/r2.js`).
//!
//! JS checks and normalises arguments (so argument errors are the binding's own `TypeError`s
//! and `RangeError`s) and hands plain values here; these ops call [`cinder_r2::Bucket`] and
//! turn its errors into `Error("<op>: <message> (<code>)")`, as workerd's binding does.
//!
//! Bodies never sit whole in memory: a put takes the JS body as a sink (a bounded channel fed
//! by JS) and streams it to the blob file; a get parks the blob reader as a Rust body that JS
//! reads chunk by chunk (`op_cinder_body_read`).
//!
//! From a Durable Object, a mutation waits for the object's output gate before it starts (its
//! earlier storage writes are durable first) and every result comes back through the input
//! gate, like any other outbound I/O.

use std::future::Future;
use std::rc::Rc;

use bytes::Bytes;
use cinder_r2::{
    Bucket, Checksum, ChecksumAlgorithm, Conditional, EtagCondition, GetOptions, GetResult,
    HttpMetadata, ListOptions, MultipartOptions, PutOptions, R2Error, R2Object, RangeRequest,
    RangeSpec, StorageClass, UploadedPart,
};
use deno_core::{op2, JsBuffer, OpState};
use deno_error::JsErrorBox;
use serde::{Deserialize, Serialize};

use crate::gated;
use crate::state::{Chunk, IsolateState};
use crate::Body;

deno_core::extension!(
    cinder_r2_binding,
    deps = [cinder],
    ops = [
        op_r2_head,
        op_r2_get,
        op_r2_put,
        op_r2_delete,
        op_r2_list,
        op_r2_create_multipart,
        op_r2_upload_part,
        op_r2_complete,
        op_r2_abort,
    ],
);

fn isolate(state: &OpState) -> Result<Rc<IsolateState>, JsErrorBox> {
    state
        .try_borrow::<Rc<IsolateState>>()
        .cloned()
        .ok_or_else(|| JsErrorBox::generic("isolate is shutting down"))
}

/// Which bucket binding a call goes through, and who makes it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Call {
    binding: String,
    /// The calling Durable Object's handle (0 in a stateless worker).
    caller: u32,
    /// Whether the call is made inside that object's critical section.
    in_cs: bool,
}

/// The bucket behind `binding`; a script reaches only the buckets it is bound to.
fn bucket(st: &IsolateState, binding: &str) -> Result<Bucket, JsErrorBox> {
    let b = st
        .worker
        .spec
        .r2_buckets
        .iter()
        .find(|b| b.binding == binding)
        .ok_or_else(|| JsErrorBox::type_error(format!("no R2 bucket binding {binding:?}")))?;
    let host = st
        .worker
        .host()
        .ok_or_else(|| JsErrorBox::generic("R2 is not available: the host is not running"))?;
    let r2 = host
        .r2
        .as_ref()
        .ok_or_else(|| JsErrorBox::generic("R2 is not available on this host"))?;
    Ok(r2.bucket(&b.bucket_name))
}

/// The binding's error for a failed operation: `Error("<op>: <message> (<code>)")`.
fn r2_error(st: &IsolateState, op: &str, e: R2Error) -> JsErrorBox {
    if let R2Error::Internal(detail) = &e {
        tracing::error!(worker = %st.worker.spec.name, "R2 {op} failed: {detail}");
    }
    JsErrorBox::generic(e.binding_message(op))
}

// ---------------------------------------------------------------------------------------------
// Values from JS

/// One etag of a conditional, already parsed by JS (from an `R2Conditional` or a header).
#[derive(Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "camelCase")]
enum JsEtag {
    Strong(String),
    Weak(String),
    Wildcard,
}

/// `onlyIf`, normalised by JS: dates in ms since the epoch.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct JsConditional {
    etag_matches: Option<Vec<JsEtag>>,
    etag_does_not_match: Option<Vec<JsEtag>>,
    uploaded_before: Option<f64>,
    uploaded_after: Option<f64>,
    #[serde(default)]
    seconds_granularity: bool,
}

fn etags(list: Option<Vec<JsEtag>>) -> Option<Vec<EtagCondition>> {
    list.map(|l| {
        l.into_iter()
            .map(|e| match e {
                JsEtag::Strong(v) => EtagCondition::Strong(v),
                JsEtag::Weak(v) => EtagCondition::Weak(v),
                JsEtag::Wildcard => EtagCondition::Wildcard,
            })
            .collect()
    })
}

impl From<JsConditional> for Conditional {
    fn from(c: JsConditional) -> Conditional {
        Conditional {
            etag_matches: etags(c.etag_matches),
            etag_does_not_match: etags(c.etag_does_not_match),
            uploaded_before: c.uploaded_before.map(|t| t as i64),
            uploaded_after: c.uploaded_after.map(|t| t as i64),
            seconds_granularity: c.seconds_granularity,
        }
    }
}

/// `R2HTTPMetadata` (from an object or a `Headers`), `cacheExpiry` in ms.
#[derive(Deserialize, Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct JsHttpMetadata {
    #[serde(skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_language: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_disposition: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_encoding: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_control: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_expiry: Option<f64>,
}

impl From<JsHttpMetadata> for HttpMetadata {
    fn from(m: JsHttpMetadata) -> HttpMetadata {
        HttpMetadata {
            content_type: m.content_type,
            content_language: m.content_language,
            content_disposition: m.content_disposition,
            content_encoding: m.content_encoding,
            cache_control: m.cache_control,
            cache_expiry: m.cache_expiry.map(|t| t as i64),
        }
    }
}

impl From<HttpMetadata> for JsHttpMetadata {
    fn from(m: HttpMetadata) -> JsHttpMetadata {
        JsHttpMetadata {
            content_type: m.content_type,
            content_language: m.content_language,
            content_disposition: m.content_disposition,
            content_encoding: m.content_encoding,
            cache_control: m.cache_control,
            cache_expiry: m.cache_expiry.map(|t| t as f64),
        }
    }
}

/// `range`: an `R2Range` (checked by JS) or the value of a `Range` header.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsRange {
    offset: Option<f64>,
    length: Option<f64>,
    suffix: Option<f64>,
    header: Option<String>,
}

impl From<JsRange> for RangeRequest {
    fn from(r: JsRange) -> RangeRequest {
        if let Some(h) = r.header {
            return RangeRequest::Header(h);
        }
        let spec = RangeSpec {
            offset: r.offset.map(|v| v as u64),
            length: r.length.map(|v| v as u64),
            suffix: r.suffix.map(|v| v as u64),
        };
        // `{}` names no range at all: the whole object, even an empty one.
        if spec == RangeSpec::default() {
            RangeRequest::Full
        } else {
            RangeRequest::Spec(spec)
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsGetOptions {
    only_if: Option<JsConditional>,
    range: Option<JsRange>,
}

/// A checksum a put must match: the algorithm's option name and lower-case hex.
#[derive(Deserialize)]
struct JsChecksum {
    algorithm: String,
    hex: String,
}

fn checksum(c: JsChecksum) -> Result<Checksum, R2Error> {
    let algorithm = match c.algorithm.as_str() {
        "md5" => ChecksumAlgorithm::Md5,
        "sha1" => ChecksumAlgorithm::Sha1,
        "sha256" => ChecksumAlgorithm::Sha256,
        "sha384" => ChecksumAlgorithm::Sha384,
        "sha512" => ChecksumAlgorithm::Sha512,
        other => {
            return Err(R2Error::InvalidArgument(format!(
                "unknown checksum algorithm {other:?}"
            )))
        }
    };
    Checksum::from_hex(algorithm, &c.hex)
}

fn storage_class(s: Option<String>) -> Result<StorageClass, R2Error> {
    match s.as_deref() {
        None => Ok(StorageClass::Standard),
        Some("Standard") => Ok(StorageClass::Standard),
        Some("InfrequentAccess") => Ok(StorageClass::InfrequentAccess),
        Some(other) => Err(R2Error::InvalidArgument(format!(
            "Unsupported storage class: {other} (use \"Standard\" or \"InfrequentAccess\")"
        ))),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsPutOptions {
    only_if: Option<JsConditional>,
    http_metadata: Option<JsHttpMetadata>,
    #[serde(default)]
    custom_metadata: Vec<(String, String)>,
    checksum: Option<JsChecksum>,
    storage_class: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsMultipartOptions {
    http_metadata: Option<JsHttpMetadata>,
    #[serde(default)]
    custom_metadata: Vec<(String, String)>,
    storage_class: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsListOptions {
    limit: Option<f64>,
    prefix: Option<String>,
    cursor: Option<String>,
    delimiter: Option<String>,
    start_after: Option<String>,
    #[serde(default)]
    include_http_metadata: bool,
    #[serde(default)]
    include_custom_metadata: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsPart {
    part_number: u32,
    etag: String,
}

// ---------------------------------------------------------------------------------------------
// Values to JS

#[derive(Serialize)]
struct JsObjectRange {
    offset: f64,
    length: f64,
}

/// An `R2Object` as JS builds it (checksums as hex; JS makes the `ArrayBuffer`s).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsObject {
    key: String,
    version: String,
    size: f64,
    etag: String,
    checksums: cinder_r2::Checksums,
    uploaded: f64,
    http_metadata: JsHttpMetadata,
    custom_metadata: Vec<(String, String)>,
    range: Option<JsObjectRange>,
    storage_class: &'static str,
}

impl From<R2Object> for JsObject {
    fn from(o: R2Object) -> JsObject {
        JsObject {
            key: o.key,
            version: o.version,
            size: o.size as f64,
            etag: o.etag,
            checksums: o.checksums,
            uploaded: o.uploaded as f64,
            http_metadata: o.http_metadata.into(),
            custom_metadata: o.custom_metadata,
            range: o.range.map(|r| JsObjectRange {
                offset: r.offset as f64,
                length: r.length as f64,
            }),
            storage_class: o.storage_class.as_str(),
        }
    }
}

/// What `get` found: `kind` 0 = no such key, 1 = a precondition failed (object without
/// body), 2 = the object and its body (parked under `body` for `op_cinder_body_read`).
#[derive(Serialize)]
struct JsGet {
    kind: u8,
    object: Option<JsObject>,
    body: u32,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsList {
    objects: Vec<JsObject>,
    delimited_prefixes: Vec<String>,
    truncated: bool,
    cursor: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsUploadedPart {
    part_number: u32,
    etag: String,
}

// ---------------------------------------------------------------------------------------------
// Bodies from JS

/// A put's body as a stream: kind 0 = none, 1 = the bytes given, 2 = a sink JS is feeding.
/// Taken synchronously when the op is called, so a sink never outlives a failed call (its
/// receiver dropped, the JS pump stops and cancels the stream).
enum PutBody {
    Bytes(Option<Bytes>),
    Sink(tokio::sync::mpsc::Receiver<Chunk>),
}

fn put_body(st: &IsolateState, kind: u32, bytes: &JsBuffer, sink: u32) -> PutBody {
    match kind {
        1 => PutBody::Bytes(Some(Bytes::copy_from_slice(bytes))),
        2 => match st.sink_receivers.borrow_mut().remove(&sink) {
            Some(rx) => PutBody::Sink(rx),
            None => PutBody::Bytes(None),
        },
        _ => PutBody::Bytes(None),
    }
}

impl futures::Stream for PutBody {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        match self.get_mut() {
            PutBody::Bytes(b) => std::task::Poll::Ready(b.take().map(Ok)),
            PutBody::Sink(rx) => rx.poll_recv(cx),
        }
    }
}

impl PutBody {
    /// The length when it is known up front (bytes given whole).
    fn known_length(&self) -> Option<u64> {
        match self {
            PutBody::Bytes(b) => Some(b.as_ref().map_or(0, |b| b.len() as u64)),
            PutBody::Sink(_) => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Ops

type Prepared = Result<(Rc<IsolateState>, Bucket), JsErrorBox>;

fn prepare(state: &OpState, call: &Call) -> Prepared {
    let st = isolate(state)?;
    let b = bucket(&st, &call.binding)?;
    Ok((st, b))
}

#[op2]
#[serde]
fn op_r2_head(
    state: &mut OpState,
    #[serde] call: Call,
    #[string] key: String,
) -> impl Future<Output = Result<Option<JsObject>, JsErrorBox>> {
    let prepared = prepare(state, &call);
    async move {
        let (st, b) = prepared?;
        let found = gated::read(&st, call.caller, call.in_cs, b.head(&key)).await?;
        found
            .map(|o| o.map(JsObject::from))
            .map_err(|e| r2_error(&st, "head", e))
    }
}

#[op2]
#[serde]
fn op_r2_get(
    state: &mut OpState,
    #[serde] call: Call,
    #[string] key: String,
    #[serde] opts: JsGetOptions,
) -> impl Future<Output = Result<JsGet, JsErrorBox>> {
    let prepared = prepare(state, &call);
    async move {
        let (st, b) = prepared?;
        let opts = GetOptions {
            only_if: opts.only_if.map(Conditional::from),
            range: opts.range.map(RangeRequest::from).unwrap_or_default(),
        };
        let found = gated::read(&st, call.caller, call.in_cs, b.get(&key, opts))
            .await?
            .map_err(|e| r2_error(&st, "get", e))?;
        Ok(match found {
            GetResult::NotFound => JsGet {
                kind: 0,
                object: None,
                body: 0,
            },
            GetResult::PreconditionFailed(o) => JsGet {
                kind: 1,
                object: Some(o.into()),
                body: 0,
            },
            GetResult::Found(ob) => {
                let id = st.next_id();
                st.bodies
                    .borrow_mut()
                    .insert(id, Body::from_stream(ob.body));
                JsGet {
                    kind: 2,
                    object: Some(ob.object.into()),
                    body: id,
                }
            }
        })
    }
}

#[op2]
#[serde]
fn op_r2_put(
    state: &mut OpState,
    #[serde] call: Call,
    #[string] key: String,
    #[serde] opts: JsPutOptions,
    #[smi] kind: u32,
    #[buffer] bytes: JsBuffer,
    #[smi] sink: u32,
) -> impl Future<Output = Result<Option<JsObject>, JsErrorBox>> {
    let body = isolate(state).map(|st| put_body(&st, kind, &bytes, sink));
    let prepared = prepare(state, &call);
    async move {
        let body = body?;
        let (st, b) = prepared?;
        let put = async {
            let opts = PutOptions {
                only_if: opts.only_if.map(Conditional::from),
                http_metadata: opts
                    .http_metadata
                    .map(HttpMetadata::from)
                    .unwrap_or_default(),
                custom_metadata: opts.custom_metadata,
                checksum: opts.checksum.map(checksum).transpose()?,
                storage_class: storage_class(opts.storage_class)?,
                expected_length: body.known_length(),
            };
            b.put(&key, body, opts).await
        };
        gated::write(&st, call.caller, call.in_cs, put)
            .await?
            .map(|o| o.map(JsObject::from))
            .map_err(|e| r2_error(&st, "put", e))
    }
}

#[op2]
#[serde]
fn op_r2_delete(
    state: &mut OpState,
    #[serde] call: Call,
    #[serde] keys: Vec<String>,
) -> impl Future<Output = Result<(), JsErrorBox>> {
    let prepared = prepare(state, &call);
    async move {
        let (st, b) = prepared?;
        gated::write(&st, call.caller, call.in_cs, b.delete(&keys))
            .await?
            .map_err(|e| r2_error(&st, "delete", e))
    }
}

#[op2]
#[serde]
fn op_r2_list(
    state: &mut OpState,
    #[serde] call: Call,
    #[serde] opts: JsListOptions,
) -> impl Future<Output = Result<JsList, JsErrorBox>> {
    let prepared = prepare(state, &call);
    async move {
        let (st, b) = prepared?;
        let limit = match opts.limit {
            None => None,
            // Out-of-range limits reach the bucket as 0, which it refuses with R2's error.
            Some(l) if (1.0..=1000.0).contains(&l) => Some(l as u32),
            Some(_) => Some(0),
        };
        let opts = ListOptions {
            limit,
            prefix: opts.prefix,
            cursor: opts.cursor,
            delimiter: opts.delimiter,
            start_after: opts.start_after,
            include_http_metadata: opts.include_http_metadata,
            include_custom_metadata: opts.include_custom_metadata,
        };
        let list = gated::read(&st, call.caller, call.in_cs, b.list(opts))
            .await?
            .map_err(|e| r2_error(&st, "list", e))?;
        Ok(JsList {
            objects: list.objects.into_iter().map(JsObject::from).collect(),
            delimited_prefixes: list.delimited_prefixes,
            truncated: list.truncated,
            cursor: list.cursor,
        })
    }
}

/// Starts a multipart upload; resolves to its id.
#[op2]
#[string]
fn op_r2_create_multipart(
    state: &mut OpState,
    #[serde] call: Call,
    #[string] key: String,
    #[serde] opts: JsMultipartOptions,
) -> impl Future<Output = Result<String, JsErrorBox>> {
    let prepared = prepare(state, &call);
    async move {
        let (st, b) = prepared?;
        let create = async {
            let opts = MultipartOptions {
                http_metadata: opts
                    .http_metadata
                    .map(HttpMetadata::from)
                    .unwrap_or_default(),
                custom_metadata: opts.custom_metadata,
                storage_class: storage_class(opts.storage_class)?,
            };
            b.create_multipart_upload(&key, opts).await
        };
        gated::write(&st, call.caller, call.in_cs, create)
            .await?
            .map(|u| u.upload_id().to_owned())
            .map_err(|e| r2_error(&st, "createMultipartUpload", e))
    }
}

/// Where a multipart call goes: the upload's key and id.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Upload {
    key: String,
    upload_id: String,
}

#[op2]
#[serde]
#[allow(clippy::too_many_arguments)]
fn op_r2_upload_part(
    state: &mut OpState,
    #[serde] call: Call,
    #[serde] upload: Upload,
    #[smi] part_number: u32,
    #[smi] kind: u32,
    #[buffer] bytes: JsBuffer,
    #[smi] sink: u32,
) -> impl Future<Output = Result<JsUploadedPart, JsErrorBox>> {
    let body = isolate(state).map(|st| put_body(&st, kind, &bytes, sink));
    let prepared = prepare(state, &call);
    async move {
        let body = body?;
        let (st, b) = prepared?;
        let mp = b.resume_multipart_upload(&upload.key, &upload.upload_id);
        let length = body.known_length();
        gated::write(
            &st,
            call.caller,
            call.in_cs,
            mp.upload_part(part_number, body, length),
        )
        .await?
        .map(|p| JsUploadedPart {
            part_number: p.part_number,
            etag: p.etag,
        })
        .map_err(|e| r2_error(&st, "uploadPart", e))
    }
}

#[op2]
#[serde]
fn op_r2_complete(
    state: &mut OpState,
    #[serde] call: Call,
    #[serde] upload: Upload,
    #[serde] parts: Vec<JsPart>,
) -> impl Future<Output = Result<JsObject, JsErrorBox>> {
    let prepared = prepare(state, &call);
    async move {
        let (st, b) = prepared?;
        let mp = b.resume_multipart_upload(&upload.key, &upload.upload_id);
        let parts = parts
            .into_iter()
            .map(|p| UploadedPart {
                part_number: p.part_number,
                etag: p.etag,
            })
            .collect();
        gated::write(&st, call.caller, call.in_cs, mp.complete(parts))
            .await?
            .map(JsObject::from)
            .map_err(|e| r2_error(&st, "completeMultipartUpload", e))
    }
}

#[op2]
#[serde]
fn op_r2_abort(
    state: &mut OpState,
    #[serde] call: Call,
    #[serde] upload: Upload,
) -> impl Future<Output = Result<(), JsErrorBox>> {
    let prepared = prepare(state, &call);
    async move {
        let (st, b) = prepared?;
        let mp = b.resume_multipart_upload(&upload.key, &upload.upload_id);
        gated::write(&st, call.caller, call.in_cs, mp.abort())
            .await?
            .map_err(|e| r2_error(&st, "abortMultipartUpload", e))
    }
}
