//! The S3-compatible API over the same buckets the Workers bindings see.
//!
//! [`s3_router`] gives an axum `Router` for the host to serve on its own listener. Requests
//! address buckets path-style (`/bucket/key`) or virtual-host-style (`Host:
//! bucket.<domain>`, for the domains in [`S3Config::domains`]), and must be signed with
//! SigV4 (header or presigned URL) by one of [`S3Config::credentials`].
//!
//! Operations: ListBuckets, CreateBucket, DeleteBucket, HeadBucket, GetBucketLocation,
//! ListObjects (v1 and v2), Head/Get/Put/DeleteObject, DeleteObjects, CopyObject,
//! CreateMultipartUpload, UploadPart, UploadPartCopy, CompleteMultipartUpload,
//! AbortMultipartUpload, ListParts, ListMultipartUploads. Other sub-resources (ACLs, tagging,
//! versioning, CORS...) answer `NotImplemented`, as most of them do on R2.

mod auth;
mod body;
mod error;
mod ops;
mod xml;

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{Request, State};
use axum::response::Response;
use http::{HeaderValue, Method};
use percent_encoding::percent_decode_str;

pub use auth::{presign_url, Credentials};
pub use error::S3Error;

use crate::service::R2Service;

/// How the S3 endpoint is set up by its host.
#[derive(Debug, Clone)]
pub struct S3Config {
    /// Accepted access keys.
    pub credentials: Vec<Credentials>,
    /// Base domains of virtual-host-style requests: `Host: photos.<domain>` addresses bucket
    /// `photos`. Any other host is path-style.
    pub domains: Vec<String>,
    /// Reported by GetBucketLocation and HeadBucket (`auto`, as R2).
    pub region: String,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            credentials: Vec::new(),
            domains: vec!["localhost".into()],
            region: "auto".into(),
        }
    }
}

pub(crate) struct S3State {
    pub(crate) r2: R2Service,
    pub(crate) cfg: S3Config,
}

/// The S3 API as an axum router (all paths). The host mounts it on its own listener:
/// `axum::serve(listener, s3_router(r2, cfg))`.
pub fn s3_router(r2: R2Service, cfg: S3Config) -> axum::Router {
    axum::Router::new()
        .fallback(handle)
        .with_state(Arc::new(S3State { r2, cfg }))
}

/// What a request addresses.
pub(crate) struct Target {
    pub(crate) bucket: Option<String>,
    pub(crate) key: Option<String>,
    /// For error bodies: `/bucket/key`.
    pub(crate) resource: String,
}

fn decode_path(p: &str) -> Result<String, S3Error> {
    String::from_utf8(percent_decode_str(p).collect()).map_err(|_| {
        S3Error::new(
            http::StatusCode::BAD_REQUEST,
            "InvalidURI",
            "Couldn't parse the specified URI.",
        )
    })
}

fn target(cfg: &S3Config, req: &http::request::Parts) -> Result<Target, S3Error> {
    let host = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri.authority().map(|a| a.as_str().to_owned()))
        .unwrap_or_default();
    let host = host.rsplit_once(':').map_or(host.as_str(), |(h, port)| {
        if port.bytes().all(|c| c.is_ascii_digit()) {
            h
        } else {
            host.as_str()
        }
    });
    let path = decode_path(req.uri.path())?;
    let path = path.strip_prefix('/').unwrap_or(&path);
    for d in &cfg.domains {
        if let Some(bucket) = host
            .strip_suffix(d.as_str())
            .and_then(|b| b.strip_suffix('.'))
            .filter(|b| !b.is_empty())
        {
            return Ok(Target {
                bucket: Some(bucket.to_owned()),
                key: (!path.is_empty()).then(|| path.to_owned()),
                resource: format!("/{bucket}/{path}"),
            });
        }
    }
    let (bucket, key) = match path.split_once('/') {
        Some((b, k)) => (b, (!k.is_empty()).then(|| k.to_owned())),
        None => (path, None),
    };
    Ok(Target {
        bucket: (!bucket.is_empty()).then(|| bucket.to_owned()),
        key,
        resource: format!("/{path}"),
    })
}

/// Whether the request announced a body (a length > 0, or chunked transfer).
fn has_body(parts: &http::request::Parts) -> bool {
    parts.headers.contains_key(http::header::TRANSFER_ENCODING)
        || parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

async fn handle(State(st): State<Arc<S3State>>, req: Request) -> Response {
    let request_id = format!("{:016X}", rand::random::<u64>());
    let (parts, body) = req.into_parts();
    let head = parts.method == Method::HEAD;
    let mut resource = parts.uri.path().to_owned();
    let consumed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let result = async {
        let t = target(&st.cfg, &parts)?;
        resource = t.resource.clone();
        let auth = auth::authorize(&st.cfg.credentials, &parts, SystemTime::now())?;
        let body = body::decode(&parts, body, &auth)?;
        ops::route(&st, &parts, t, body::track_end(body, consumed.clone())).await
    }
    .await;
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(code = e.code, message = %e.message, %resource, "S3 error");
            e.into_response_for(&resource, &request_id, head)
        }
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-amz-request-id", v);
    }
    // Answered before reading the whole body (a failed precondition, an auth error...): the
    // rest of the body is still on the wire, so the connection cannot carry another request.
    if !consumed.load(std::sync::atomic::Ordering::Acquire) && has_body(&parts) {
        resp.headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}
