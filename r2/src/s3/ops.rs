//! The S3 operations: routing by method, target and sub-resource, then one function per
//! operation translating to the bucket API.

use std::collections::HashMap;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::Bytes;
use futures::StreamExt;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use percent_encoding::utf8_percent_encode;

use super::auth::{query_pairs, AWS_ENCODE_PATH};
use super::body::S3Body;
use super::error::S3Error;
use super::xml::{el, escape, parse_complete, parse_delete, HEADER, NS};
use super::{S3State, Target};
use crate::error::{ChecksumAlgorithm, R2Error};
use crate::time::{http_date, iso8601};
use crate::types::{
    Checksum, ConditionOutcome, Conditional, CopyOptions, GetOptions, GetResult, HttpMetadata,
    ListOptions, MultipartOptions, PutOptions, R2Object, RangeRequest, StorageClass, UploadedPart,
};

/// Largest XML request document read (CompleteMultipartUpload of 10,000 parts is ~1 MB).
const MAX_XML: usize = 4 << 20;

struct Query(HashMap<String, String>);

impl Query {
    fn has(&self, k: &str) -> bool {
        self.0.contains_key(k)
    }
    fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str).filter(|v| !v.is_empty())
    }
}

fn xml(status: StatusCode, body: String) -> Response {
    (
        status,
        [(http::header::CONTENT_TYPE, "application/xml")],
        body,
    )
        .into_response()
}

fn header<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    parts.headers.get(name).and_then(|v| v.to_str().ok())
}

fn set(h: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

/// Dispatches an authenticated request.
pub(crate) async fn route(
    st: &S3State,
    parts: &Parts,
    t: Target,
    body: S3Body,
) -> Result<Response, S3Error> {
    let q = Query(
        query_pairs(parts.uri.query().unwrap_or(""))
            .into_iter()
            .collect(),
    );
    let m = &parts.method;
    let Some(bucket) = t.bucket else {
        return match *m {
            Method::GET => list_buckets(st).await,
            _ => Err(method_not_allowed()),
        };
    };
    let Some(key) = t.key else {
        const UNSUPPORTED: &[&str] = &[
            "acl",
            "cors",
            "lifecycle",
            "policy",
            "tagging",
            "versioning",
            "website",
            "logging",
            "notification",
            "replication",
            "encryption",
            "object-lock",
            "versions",
            "accelerate",
            "requestPayment",
            "analytics",
            "inventory",
            "metrics",
            "ownershipControls",
            "publicAccessBlock",
            "intelligent-tiering",
        ];
        if UNSUPPORTED.iter().any(|s| q.has(s)) {
            return Err(S3Error::not_implemented());
        }
        return match *m {
            Method::PUT => create_bucket(st, &bucket).await,
            Method::DELETE => delete_bucket(st, &bucket).await,
            Method::HEAD => head_bucket(st, &bucket).await,
            Method::GET if q.has("location") => location(st, &bucket).await,
            Method::GET if q.has("uploads") => list_uploads(st, &bucket, &q).await,
            Method::GET if q.get("list-type") == Some("2") => {
                list_objects(st, &bucket, &q, true).await
            }
            Method::GET => list_objects(st, &bucket, &q, false).await,
            Method::POST if q.has("delete") => delete_objects(st, &bucket, body).await,
            _ => Err(method_not_allowed()),
        };
    };
    const UNSUPPORTED: &[&str] = &[
        "acl",
        "tagging",
        "retention",
        "legal-hold",
        "torrent",
        "restore",
        "select",
        "attributes",
    ];
    if UNSUPPORTED.iter().any(|s| q.has(s)) {
        return Err(S3Error::not_implemented());
    }
    let copy_source = header(parts, "x-amz-copy-source");
    match *m {
        Method::HEAD | Method::GET if q.has("uploadId") && *m == Method::GET => {
            list_parts(st, &bucket, &key, &q).await
        }
        Method::HEAD | Method::GET => get_object(st, parts, &bucket, &key, &q).await,
        Method::PUT if q.has("uploadId") => match copy_source {
            Some(src) => upload_part_copy(st, parts, &bucket, &key, &q, src).await,
            None => upload_part(st, parts, &bucket, &key, &q, body).await,
        },
        Method::PUT => match copy_source {
            Some(src) => copy_object(st, parts, &bucket, &key, src).await,
            None => put_object(st, parts, &bucket, &key, body).await,
        },
        Method::DELETE if q.has("uploadId") => abort_upload(st, &bucket, &key, &q).await,
        Method::DELETE => {
            st.r2
                .bucket(&bucket)
                .delete(&[key])
                .await
                .map_err(|e| with_bucket(e, &bucket))?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Method::POST if q.has("uploads") => create_upload(st, parts, &bucket, &key).await,
        Method::POST if q.has("uploadId") => complete_upload(st, &bucket, &key, &q, body).await,
        _ => Err(method_not_allowed()),
    }
}

fn method_not_allowed() -> S3Error {
    S3Error::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        "The specified method is not allowed against this resource.",
    )
}

/// An R2 error, naming the bucket when it is NoSuchBucket.
fn with_bucket(e: R2Error, bucket: &str) -> S3Error {
    match e {
        R2Error::NoSuchBucket => S3Error::no_such_bucket(bucket),
        e => e.into(),
    }
}

fn with_key(e: R2Error, bucket: &str, key: &str) -> S3Error {
    match e {
        R2Error::NoSuchKey => S3Error::from(e).with("Key", key),
        R2Error::NoSuchUpload => S3Error::from(e).with("Key", key),
        e => with_bucket(e, bucket),
    }
}

async fn read_small(mut body: S3Body) -> Result<Bytes, S3Error> {
    let mut out = Vec::new();
    while let Some(b) = body.next().await {
        out.extend_from_slice(&b?);
        if out.len() > MAX_XML {
            return Err(S3Error::malformed_xml());
        }
    }
    Ok(Bytes::from(out))
}

fn storage_class_name(c: StorageClass) -> &'static str {
    match c {
        StorageClass::Standard => "STANDARD",
        StorageClass::InfrequentAccess => "STANDARD_IA",
    }
}

const OWNER: &str = "<Owner><ID>cinder</ID><DisplayName>cinder</DisplayName></Owner>";

async fn list_buckets(st: &S3State) -> Result<Response, S3Error> {
    let buckets = st.r2.list_buckets().await?;
    let mut b = format!("{HEADER}<ListAllMyBucketsResult xmlns=\"{NS}\">{OWNER}<Buckets>");
    for x in buckets {
        b.push_str(&format!(
            "<Bucket>{}{}</Bucket>",
            el("Name", &x.name),
            el("CreationDate", &iso8601(x.created))
        ));
    }
    b.push_str("</Buckets></ListAllMyBucketsResult>");
    Ok(xml(StatusCode::OK, b))
}

async fn create_bucket(st: &S3State, bucket: &str) -> Result<Response, S3Error> {
    st.r2
        .create_bucket(bucket)
        .await
        .map_err(|e| S3Error::from(e).with("BucketName", bucket))?;
    let mut r = StatusCode::OK.into_response();
    set(r.headers_mut(), "location", &format!("/{bucket}"));
    Ok(r)
}

async fn delete_bucket(st: &S3State, bucket: &str) -> Result<Response, S3Error> {
    st.r2
        .delete_bucket(bucket)
        .await
        .map_err(|e| S3Error::from(e).with("BucketName", bucket))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn head_bucket(st: &S3State, bucket: &str) -> Result<Response, S3Error> {
    match st.r2.head_bucket(bucket).await? {
        Some(_) => {
            let mut r = StatusCode::OK.into_response();
            set(r.headers_mut(), "x-amz-bucket-region", &st.cfg.region);
            Ok(r)
        }
        None => Err(S3Error::no_such_bucket(bucket)),
    }
}

async fn location(st: &S3State, bucket: &str) -> Result<Response, S3Error> {
    if st.r2.head_bucket(bucket).await?.is_none() {
        return Err(S3Error::no_such_bucket(bucket));
    }
    Ok(xml(
        StatusCode::OK,
        format!(
            "{HEADER}<LocationConstraint xmlns=\"{NS}\">{}</LocationConstraint>",
            escape(&st.cfg.region)
        ),
    ))
}

async fn list_objects(
    st: &S3State,
    bucket: &str,
    q: &Query,
    v2: bool,
) -> Result<Response, S3Error> {
    let url = q.get("encoding-type") == Some("url");
    let enc = |s: &str| {
        if url {
            utf8_percent_encode(s, AWS_ENCODE_PATH).to_string()
        } else {
            s.to_owned()
        }
    };
    let max_keys: u32 = match q.get("max-keys") {
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .map(|n| n.min(1000) as u32)
            .ok_or_else(|| {
                S3Error::invalid_argument(
                    "Provided max-keys not an integer or within integer range",
                )
            })?,
        None => 1000,
    };
    let prefix = q.get("prefix").unwrap_or("").to_owned();
    let delimiter = q.get("delimiter").map(str::to_owned);
    let (start_after, cursor) = if v2 {
        (
            q.get("start-after").map(str::to_owned),
            q.get("continuation-token").map(str::to_owned),
        )
    } else {
        (q.get("marker").map(str::to_owned), None)
    };
    let result = if max_keys == 0 {
        if st.r2.head_bucket(bucket).await?.is_none() {
            return Err(S3Error::no_such_bucket(bucket));
        }
        Default::default()
    } else {
        st.r2
            .bucket(bucket)
            .list(ListOptions {
                limit: Some(max_keys),
                prefix: Some(prefix.clone()),
                cursor: cursor.clone(),
                delimiter: delimiter.clone(),
                start_after: start_after.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| match e {
                R2Error::InvalidArgument(_) => {
                    S3Error::invalid_argument("The continuation token provided is incorrect")
                }
                e => with_bucket(e, bucket),
            })?
    };
    let marker_cp = (!v2).then(|| start_after.clone()).flatten();
    let mut b = format!("{HEADER}<ListBucketResult xmlns=\"{NS}\">");
    b.push_str(&el("Name", bucket));
    b.push_str(&el("Prefix", &enc(&prefix)));
    if let Some(d) = &delimiter {
        b.push_str(&el("Delimiter", &enc(d)));
    }
    b.push_str(&el("MaxKeys", &max_keys.to_string()));
    if url {
        b.push_str(&el("EncodingType", "url"));
    }
    b.push_str(&el(
        "IsTruncated",
        if result.truncated { "true" } else { "false" },
    ));
    let prefixes: Vec<&String> = result
        .delimited_prefixes
        .iter()
        .filter(|p| Some(*p) != marker_cp.as_ref())
        .collect();
    if v2 {
        b.push_str(&el(
            "KeyCount",
            &(result.objects.len() + prefixes.len()).to_string(),
        ));
        if let Some(c) = &cursor {
            b.push_str(&el("ContinuationToken", c));
        }
        if let Some(c) = &result.cursor {
            b.push_str(&el("NextContinuationToken", c));
        }
        if let Some(s) = &start_after {
            b.push_str(&el("StartAfter", &enc(s)));
        }
    } else {
        b.push_str(&el("Marker", &enc(start_after.as_deref().unwrap_or(""))));
        if result.truncated {
            let last_key = result.objects.last().map(|o| o.key.as_str());
            let last_prefix = result.delimited_prefixes.last().map(String::as_str);
            let next = match (last_key, last_prefix) {
                (Some(k), Some(p)) => Some(if k > p { k } else { p }),
                (k, p) => k.or(p),
            };
            if let Some(n) = next {
                b.push_str(&el("NextMarker", &enc(n)));
            }
        }
    }
    for o in &result.objects {
        b.push_str("<Contents>");
        b.push_str(&el("Key", &enc(&o.key)));
        b.push_str(&el("LastModified", &iso8601(o.uploaded)));
        b.push_str(&el("ETag", &o.http_etag()));
        b.push_str(&el("Size", &o.size.to_string()));
        b.push_str(&el("StorageClass", storage_class_name(o.storage_class)));
        if !v2 || q.get("fetch-owner") == Some("true") {
            b.push_str(OWNER);
        }
        b.push_str("</Contents>");
    }
    for p in prefixes {
        b.push_str(&format!(
            "<CommonPrefixes>{}</CommonPrefixes>",
            el("Prefix", &enc(p))
        ));
    }
    b.push_str("</ListBucketResult>");
    Ok(xml(StatusCode::OK, b))
}

async fn delete_objects(st: &S3State, bucket: &str, body: S3Body) -> Result<Response, S3Error> {
    let doc = read_small(body).await?;
    let (keys, quiet) = parse_delete(&doc)?;
    if keys.len() > crate::limits::MAX_DELETE_KEYS {
        return Err(S3Error::malformed_xml());
    }
    let (good, bad): (Vec<String>, Vec<String>) = keys
        .into_iter()
        .partition(|k| !k.is_empty() && k.len() <= crate::limits::MAX_KEY_BYTES);
    st.r2
        .bucket(bucket)
        .delete(&good)
        .await
        .map_err(|e| with_bucket(e, bucket))?;
    let mut b = format!("{HEADER}<DeleteResult xmlns=\"{NS}\">");
    if !quiet {
        for k in &good {
            b.push_str(&format!("<Deleted>{}</Deleted>", el("Key", k)));
        }
    }
    for k in &bad {
        b.push_str(&format!(
            "<Error>{}{}{}</Error>",
            el("Key", k),
            el("Code", "KeyTooLongError"),
            el("Message", "Your key is too long.")
        ));
    }
    b.push_str("</DeleteResult>");
    Ok(xml(StatusCode::OK, b))
}

/// Headers describing an object (HEAD/GET responses, 304s).
fn object_headers(h: &mut HeaderMap, o: &R2Object) {
    set(h, "etag", &o.http_etag());
    set(h, "last-modified", &http_date(o.uploaded));
    set(h, "accept-ranges", "bytes");
    o.http_metadata.write_headers(h);
    for (k, v) in &o.custom_metadata {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(format!("x-amz-meta-{k}").as_bytes()),
            HeaderValue::from_str(v),
        ) {
            h.append(name, value);
        }
    }
    if o.storage_class != StorageClass::Standard {
        set(
            h,
            "x-amz-storage-class",
            storage_class_name(o.storage_class),
        );
    }
    if o.parts > 0 {
        set(h, "x-amz-mp-parts-count", &o.parts.to_string());
    }
}

async fn get_object(
    st: &S3State,
    parts: &Parts,
    bucket: &str,
    key: &str,
    q: &Query,
) -> Result<Response, S3Error> {
    if q.has("partNumber") {
        return Err(S3Error::not_implemented());
    }
    let range = match header(parts, "range") {
        Some(r) => RangeRequest::S3Header(r.to_owned()),
        None => RangeRequest::Full,
    };
    let only_if = Conditional::from_headers(&parts.headers);
    let res = st
        .r2
        .bucket(bucket)
        .get(
            key,
            GetOptions {
                only_if: only_if.clone(),
                range,
            },
        )
        .await
        .map_err(|e| with_key(e, bucket, key))?;
    let found = match res {
        GetResult::NotFound => {
            return Err(S3Error::from(R2Error::NoSuchKey).with("Key", key));
        }
        GetResult::PreconditionFailed(o) => {
            let outcome = only_if
                .map(|c| c.evaluate(Some((&o.etag, o.uploaded))))
                .unwrap_or(ConditionOutcome::FailedMatch);
            if outcome == ConditionOutcome::FailedNoneMatch {
                let mut r = StatusCode::NOT_MODIFIED.into_response();
                set(r.headers_mut(), "etag", &o.http_etag());
                set(r.headers_mut(), "last-modified", &http_date(o.uploaded));
                return Ok(r);
            }
            return Err(S3Error::from(R2Error::PreconditionFailed).with("Condition", "If-Match"));
        }
        GetResult::Found(f) => f,
    };
    let o = &found.object;
    let (offset, length) = o.range.map_or((0, o.size), |r| (r.offset, r.length));
    // 206 whenever a range was applied, even one covering the whole object (as S3 does).
    let partial = header(parts, "range").is_some_and(|h| {
        matches!(
            crate::range::parse_header(h, o.size),
            crate::range::HeaderRange::Range(..)
        )
    });
    let mut r = if parts.method == Method::HEAD {
        drop(found.body);
        Response::new(Body::empty())
    } else {
        Response::new(Body::from_stream(found.body))
    };
    *r.status_mut() = if partial {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let h = r.headers_mut();
    object_headers(h, o);
    set(h, "content-length", &length.to_string());
    if partial {
        set(
            h,
            "content-range",
            &format!("bytes {}-{}/{}", offset, offset + length - 1, o.size),
        );
    }
    for (param, name) in [
        ("response-content-type", "content-type"),
        ("response-content-language", "content-language"),
        ("response-expires", "expires"),
        ("response-cache-control", "cache-control"),
        ("response-content-disposition", "content-disposition"),
        ("response-content-encoding", "content-encoding"),
    ] {
        if let Some(v) = q.get(param) {
            set(h, name, v);
        }
    }
    Ok(r)
}

/// Metadata of a put, multipart create or replacing copy, from its headers.
fn metadata_from(parts: &Parts) -> Result<MultipartOptions, S3Error> {
    let mut http = HttpMetadata::from_headers(&parts.headers);
    if let Some(ce) = http.content_encoding.take() {
        let kept: Vec<&str> = ce
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty() && !e.eq_ignore_ascii_case("aws-chunked"))
            .collect();
        http.content_encoding = (!kept.is_empty()).then(|| kept.join(","));
    }
    let mut custom = Vec::new();
    for (name, value) in &parts.headers {
        if let Some(k) = name.as_str().strip_prefix("x-amz-meta-") {
            let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
            custom.push((k.to_owned(), v));
        }
    }
    let storage_class = match header(parts, "x-amz-storage-class") {
        Some(s) => StorageClass::parse(s).ok_or_else(|| {
            S3Error::new(
                StatusCode::BAD_REQUEST,
                "InvalidStorageClass",
                "The storage class you specified is not valid",
            )
        })?,
        None => StorageClass::Standard,
    };
    Ok(MultipartOptions {
        http_metadata: http,
        custom_metadata: custom,
        storage_class,
    })
}

/// The decoded body length the client announced.
fn body_length(parts: &Parts) -> Result<Option<u64>, S3Error> {
    let v = header(parts, "x-amz-decoded-content-length").or_else(|| {
        let chunked =
            header(parts, "x-amz-content-sha256").is_some_and(|v| v.starts_with("STREAMING-"));
        (!chunked)
            .then(|| header(parts, "content-length"))
            .flatten()
    });
    match v {
        Some(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| S3Error::invalid_argument("Content-Length is not a number")),
        None => Ok(None),
    }
}

fn content_md5(parts: &Parts) -> Result<Option<Checksum>, S3Error> {
    let Some(v) = header(parts, "content-md5") else {
        return Ok(None);
    };
    let invalid = || {
        S3Error::new(
            StatusCode::BAD_REQUEST,
            "InvalidDigest",
            "The Content-MD5 you specified is not valid.",
        )
    };
    let raw = base64::engine::general_purpose::STANDARD
        .decode(v.trim())
        .map_err(|_| invalid())?;
    Checksum::from_bytes(ChecksumAlgorithm::Md5, &raw)
        .map(Some)
        .map_err(|_| invalid())
}

async fn put_object(
    st: &S3State,
    parts: &Parts,
    bucket: &str,
    key: &str,
    body: S3Body,
) -> Result<Response, S3Error> {
    let meta = metadata_from(parts)?;
    let checksum = match content_md5(parts)? {
        Some(c) => Some(c),
        None => match header(parts, "x-amz-checksum-sha256") {
            Some(v) => base64::engine::general_purpose::STANDARD
                .decode(v.trim())
                .ok()
                .and_then(|d| Checksum::from_bytes(ChecksumAlgorithm::Sha256, &d).ok()),
            None => None,
        },
    };
    let opts = PutOptions {
        only_if: Conditional::from_headers(&parts.headers),
        http_metadata: meta.http_metadata,
        custom_metadata: meta.custom_metadata,
        checksum,
        storage_class: meta.storage_class,
        expected_length: body_length(parts)?,
    };
    let stored = st
        .r2
        .bucket(bucket)
        .put(key, body, opts)
        .await
        .map_err(|e| with_key(e, bucket, key))?;
    let Some(o) = stored else {
        return Err(S3Error::from(R2Error::PreconditionFailed));
    };
    let mut r = StatusCode::OK.into_response();
    set(r.headers_mut(), "etag", &o.http_etag());
    Ok(r)
}

/// `x-amz-copy-source`: `[/]bucket/key[?versionId=...]`, URL-encoded.
fn parse_copy_source(src: &str) -> Result<(String, String), S3Error> {
    let src = src.split_once('?').map_or(src, |(p, _)| p);
    let decoded = percent_encoding::percent_decode_str(src)
        .decode_utf8()
        .map_err(|_| S3Error::invalid_argument("Invalid copy source encoding"))?;
    let decoded = decoded.strip_prefix('/').unwrap_or(&decoded);
    match decoded.split_once('/') {
        Some((b, k)) if !b.is_empty() && !k.is_empty() => Ok((b.to_owned(), k.to_owned())),
        _ => Err(S3Error::invalid_argument(
            "Copy Source must mention the source bucket and key: sourcebucket/sourcekey",
        )),
    }
}

fn copy_conditions(parts: &Parts) -> Option<Conditional> {
    let mut h = HeaderMap::new();
    for (from, to) in [
        ("x-amz-copy-source-if-match", "if-match"),
        ("x-amz-copy-source-if-none-match", "if-none-match"),
        ("x-amz-copy-source-if-modified-since", "if-modified-since"),
        (
            "x-amz-copy-source-if-unmodified-since",
            "if-unmodified-since",
        ),
    ] {
        if let Some(v) = parts.headers.get(from) {
            h.insert(to, v.clone());
        }
    }
    Conditional::from_headers(&h)
}

async fn copy_object(
    st: &S3State,
    parts: &Parts,
    bucket: &str,
    key: &str,
    src: &str,
) -> Result<Response, S3Error> {
    let (src_bucket, src_key) = parse_copy_source(src)?;
    let replace = match header(parts, "x-amz-metadata-directive") {
        None | Some("COPY") => false,
        Some("REPLACE") => true,
        Some(_) => return Err(S3Error::invalid_argument("Unknown metadata directive.")),
    };
    if !replace
        && src_bucket == bucket
        && src_key == key
        && header(parts, "x-amz-storage-class").is_none()
    {
        return Err(S3Error::invalid_request(
            "This copy request is illegal because it is trying to copy an object to itself without changing the object's metadata, storage class, website redirect location or encryption attributes.",
        ));
    }
    let opts = CopyOptions {
        source_only_if: copy_conditions(parts),
        replace_metadata: if replace {
            Some(metadata_from(parts)?)
        } else {
            None
        },
    };
    let o = st
        .r2
        .bucket(bucket)
        .copy_from(&st.r2.bucket(&src_bucket), &src_key, key, opts)
        .await
        .map_err(|e| match e {
            R2Error::NoSuchKey => S3Error::from(e).with("Key", &src_key),
            R2Error::NoSuchBucket => S3Error::no_such_bucket(&src_bucket),
            e => e.into(),
        })?;
    Ok(xml(
        StatusCode::OK,
        format!(
            "{HEADER}<CopyObjectResult xmlns=\"{NS}\">{}{}</CopyObjectResult>",
            el("LastModified", &iso8601(o.uploaded)),
            el("ETag", &o.http_etag())
        ),
    ))
}

async fn create_upload(
    st: &S3State,
    parts: &Parts,
    bucket: &str,
    key: &str,
) -> Result<Response, S3Error> {
    let opts = metadata_from(parts)?;
    let up = st
        .r2
        .bucket(bucket)
        .create_multipart_upload(key, opts)
        .await
        .map_err(|e| with_key(e, bucket, key))?;
    Ok(xml(
        StatusCode::OK,
        format!(
            "{HEADER}<InitiateMultipartUploadResult xmlns=\"{NS}\">{}{}{}</InitiateMultipartUploadResult>",
            el("Bucket", bucket),
            el("Key", key),
            el("UploadId", up.upload_id())
        ),
    ))
}

fn part_number(q: &Query) -> Result<u32, S3Error> {
    q.get("partNumber")
        .and_then(|v| v.parse().ok())
        .filter(|n| (1..=crate::limits::MAX_PART_NUMBER).contains(n))
        .ok_or_else(|| {
            S3Error::invalid_argument(
                "Part number must be an integer between 1 and 10000, inclusive",
            )
        })
}

fn upload_id(q: &Query) -> Result<&str, S3Error> {
    q.get("uploadId")
        .ok_or_else(|| S3Error::from(R2Error::NoSuchUpload))
}

/// Fails the body at its end unless it hashes to the `Content-MD5` given.
fn check_md5(body: S3Body, want: Option<Checksum>) -> S3Body {
    let Some(want) = want else {
        return body;
    };
    use md5::Digest;
    let state = (body, Some(md5::Md5::new()), want.digest);
    Box::pin(futures::stream::unfold(
        state,
        |(mut body, mut h, want)| async move {
            let hasher = h.as_mut()?;
            match body.next().await {
                Some(Ok(b)) => {
                    hasher.update(&b);
                    Some((Ok(b), (body, h, want)))
                }
                Some(Err(e)) => Some((Err(e), (body, None, want))),
                None => {
                    let got = h.take()?.finalize();
                    if got.as_slice() == want.as_slice() {
                        None
                    } else {
                        Some((
                            Err(S3Error::new(
                                StatusCode::BAD_REQUEST,
                                "BadDigest",
                                "The Content-MD5 you specified did not match what we received.",
                            )),
                            (body, None, want),
                        ))
                    }
                }
            }
        },
    ))
}

async fn upload_part(
    st: &S3State,
    parts: &Parts,
    bucket: &str,
    key: &str,
    q: &Query,
    body: S3Body,
) -> Result<Response, S3Error> {
    let n = part_number(q)?;
    let up = st
        .r2
        .bucket(bucket)
        .resume_multipart_upload(key, upload_id(q)?);
    let body = check_md5(body, content_md5(parts)?);
    let part = up
        .upload_part(n, body, body_length(parts)?)
        .await
        .map_err(|e| with_key(e, bucket, key))?;
    let mut r = StatusCode::OK.into_response();
    set(r.headers_mut(), "etag", &format!("\"{}\"", part.etag));
    Ok(r)
}

async fn upload_part_copy(
    st: &S3State,
    parts: &Parts,
    bucket: &str,
    key: &str,
    q: &Query,
    src: &str,
) -> Result<Response, S3Error> {
    let n = part_number(q)?;
    let (src_bucket, src_key) = parse_copy_source(src)?;
    let range = match header(parts, "x-amz-copy-source-range") {
        Some(r) => RangeRequest::S3Header(r.to_owned()),
        None => RangeRequest::Full,
    };
    let got = st
        .r2
        .bucket(&src_bucket)
        .get(
            &src_key,
            GetOptions {
                only_if: copy_conditions(parts),
                range,
            },
        )
        .await
        .map_err(|e| with_key(e, &src_bucket, &src_key))?;
    let found = match got {
        GetResult::Found(f) => f,
        GetResult::NotFound => return Err(S3Error::from(R2Error::NoSuchKey).with("Key", &src_key)),
        GetResult::PreconditionFailed(_) => return Err(R2Error::PreconditionFailed.into()),
    };
    let length = found.object.range.map(|r| r.length);
    let up = st
        .r2
        .bucket(bucket)
        .resume_multipart_upload(key, upload_id(q)?);
    let part = up
        .upload_part(n, found.body, length)
        .await
        .map_err(|e| with_key(e, bucket, key))?;
    Ok(xml(
        StatusCode::OK,
        format!(
            "{HEADER}<CopyPartResult xmlns=\"{NS}\">{}{}</CopyPartResult>",
            el("LastModified", &iso8601(crate::time::now_ms())),
            el("ETag", &format!("\"{}\"", part.etag))
        ),
    ))
}

async fn complete_upload(
    st: &S3State,
    bucket: &str,
    key: &str,
    q: &Query,
    body: S3Body,
) -> Result<Response, S3Error> {
    let id = upload_id(q)?;
    let doc = read_small(body).await?;
    let list = parse_complete(&doc)?;
    if list.windows(2).any(|w| w[0].0 >= w[1].0) {
        return Err(S3Error::new(
            StatusCode::BAD_REQUEST,
            "InvalidPartOrder",
            "The list of parts was not in ascending order. The parts list must be specified in order by part number.",
        ));
    }
    let parts = list
        .into_iter()
        .map(|(part_number, etag)| UploadedPart { part_number, etag })
        .collect();
    let o = st
        .r2
        .bucket(bucket)
        .resume_multipart_upload(key, id)
        .complete(parts)
        .await
        .map_err(|e| with_key(e, bucket, key))?;
    let location = format!("/{bucket}/{}", utf8_percent_encode(key, AWS_ENCODE_PATH));
    Ok(xml(
        StatusCode::OK,
        format!(
            "{HEADER}<CompleteMultipartUploadResult xmlns=\"{NS}\">{}{}{}{}</CompleteMultipartUploadResult>",
            el("Location", &location),
            el("Bucket", bucket),
            el("Key", key),
            el("ETag", &o.http_etag())
        ),
    ))
}

async fn abort_upload(
    st: &S3State,
    bucket: &str,
    key: &str,
    q: &Query,
) -> Result<Response, S3Error> {
    st.r2
        .bucket(bucket)
        .resume_multipart_upload(key, upload_id(q)?)
        .abort()
        .await
        .map_err(|e| with_key(e, bucket, key))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_parts(st: &S3State, bucket: &str, key: &str, q: &Query) -> Result<Response, S3Error> {
    let id = upload_id(q)?;
    let after = q
        .get("part-number-marker")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let max = q
        .get("max-parts")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000u32);
    let list = st
        .r2
        .bucket(bucket)
        .resume_multipart_upload(key, id)
        .list_parts(after, max)
        .await
        .map_err(|e| with_key(e, bucket, key))?;
    let mut b = format!("{HEADER}<ListPartsResult xmlns=\"{NS}\">");
    b.push_str(&el("Bucket", bucket));
    b.push_str(&el("Key", key));
    b.push_str(&el("UploadId", id));
    b.push_str(&el("PartNumberMarker", &after.to_string()));
    if let Some(n) = list.next_marker {
        b.push_str(&el("NextPartNumberMarker", &n.to_string()));
    }
    b.push_str(&el("MaxParts", &max.clamp(1, 1000).to_string()));
    b.push_str(&el(
        "IsTruncated",
        if list.truncated { "true" } else { "false" },
    ));
    b.push_str("<StorageClass>STANDARD</StorageClass>");
    for p in list.parts {
        b.push_str(&format!(
            "<Part>{}{}{}{}</Part>",
            el("PartNumber", &p.part_number.to_string()),
            el("LastModified", &iso8601(p.uploaded)),
            el("ETag", &format!("\"{}\"", p.etag)),
            el("Size", &p.size.to_string())
        ));
    }
    b.push_str("</ListPartsResult>");
    Ok(xml(StatusCode::OK, b))
}

async fn list_uploads(st: &S3State, bucket: &str, q: &Query) -> Result<Response, S3Error> {
    let prefix = q.get("prefix").unwrap_or("");
    let max = q
        .get("max-uploads")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000u32);
    let uploads = st
        .r2
        .bucket(bucket)
        .list_multipart_uploads(prefix, max)
        .await
        .map_err(|e| with_bucket(e, bucket))?;
    let mut b = format!("{HEADER}<ListMultipartUploadsResult xmlns=\"{NS}\">");
    b.push_str(&el("Bucket", bucket));
    b.push_str(&el("Prefix", prefix));
    b.push_str(&el("MaxUploads", &max.clamp(1, 1000).to_string()));
    b.push_str("<IsTruncated>false</IsTruncated>");
    for u in uploads {
        b.push_str(&format!(
            "<Upload>{}{}{}{OWNER}<Initiator><ID>cinder</ID><DisplayName>cinder</DisplayName></Initiator>{}</Upload>",
            el("Key", &u.key),
            el("UploadId", &u.upload_id),
            el("Initiated", &iso8601(u.initiated)),
            el("StorageClass", storage_class_name(u.storage_class))
        ));
    }
    b.push_str("</ListMultipartUploadsResult>");
    Ok(xml(StatusCode::OK, b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::EtagCondition;

    #[test]
    fn copy_sources() {
        assert_eq!(
            parse_copy_source("/b/a%20b/c?versionId=1").ok(),
            Some(("b".to_owned(), "a b/c".to_owned()))
        );
        assert_eq!(
            parse_copy_source("b/k").ok(),
            Some(("b".to_owned(), "k".to_owned()))
        );
        assert!(parse_copy_source("/b").is_err());
    }

    #[test]
    fn etag_lists() {
        assert_eq!(
            EtagCondition::parse_list("\"a\", W/\"b\", *"),
            vec![
                EtagCondition::Strong("a".into()),
                EtagCondition::Weak("b".into()),
                EtagCondition::Wildcard
            ]
        );
    }
}
