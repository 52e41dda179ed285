//! S3's XML errors: code, message and HTTP status, as AWS documents them (and R2 returns).

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};

use super::xml::escape;
use crate::error::R2Error;

/// An S3 error response.
#[derive(Debug, Clone)]
pub struct S3Error {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// `<Key>` / `<BucketName>` / `<UploadId>` and the like, added to the body.
    pub extra: Vec<(&'static str, String)>,
    /// `Content-Range: bytes */size` for InvalidRange.
    pub content_range: Option<String>,
}

impl std::fmt::Display for S3Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for S3Error {}

impl S3Error {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> S3Error {
        S3Error {
            status,
            code,
            message: message.into(),
            extra: Vec::new(),
            content_range: None,
        }
    }

    pub fn with(mut self, name: &'static str, value: impl Into<String>) -> S3Error {
        self.extra.push((name, value.into()));
        self
    }

    pub fn access_denied() -> S3Error {
        S3Error::new(StatusCode::FORBIDDEN, "AccessDenied", "Access Denied")
    }

    pub fn signature_mismatch() -> S3Error {
        S3Error::new(
            StatusCode::FORBIDDEN,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided. Check your key and signing method.",
        )
    }

    pub fn invalid_argument(message: impl Into<String>) -> S3Error {
        S3Error::new(StatusCode::BAD_REQUEST, "InvalidArgument", message)
    }

    pub fn invalid_request(message: impl Into<String>) -> S3Error {
        S3Error::new(StatusCode::BAD_REQUEST, "InvalidRequest", message)
    }

    pub fn malformed_xml() -> S3Error {
        S3Error::new(
            StatusCode::BAD_REQUEST,
            "MalformedXML",
            "The XML you provided was not well-formed or did not validate against our published schema.",
        )
    }

    pub fn incomplete_body() -> S3Error {
        S3Error::new(
            StatusCode::BAD_REQUEST,
            "IncompleteBody",
            "You did not provide the number of bytes specified by the Content-Length HTTP header.",
        )
    }

    pub fn not_implemented() -> S3Error {
        S3Error::new(
            StatusCode::NOT_IMPLEMENTED,
            "NotImplemented",
            "A header or query you provided implies functionality that is not implemented.",
        )
    }

    pub fn no_such_bucket(bucket: &str) -> S3Error {
        S3Error::new(
            StatusCode::NOT_FOUND,
            "NoSuchBucket",
            "The specified bucket does not exist.",
        )
        .with("BucketName", bucket)
    }

    /// The response, with `resource` and `request_id` in the body; HEAD responses carry no
    /// body.
    pub fn into_response_for(self, resource: &str, request_id: &str, head: bool) -> Response {
        let mut body = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error>");
        body.push_str(&format!(
            "<Code>{}</Code><Message>{}</Message>",
            self.code,
            escape(&self.message)
        ));
        for (k, v) in &self.extra {
            body.push_str(&format!("<{k}>{}</{k}>", escape(v)));
        }
        body.push_str(&format!(
            "<Resource>{}</Resource><RequestId>{}</RequestId></Error>",
            escape(resource),
            escape(request_id)
        ));
        let mut resp = if head {
            self.status.into_response()
        } else {
            (
                self.status,
                [(http::header::CONTENT_TYPE, "application/xml")],
                body,
            )
                .into_response()
        };
        if let Some(cr) = &self.content_range {
            if let Ok(v) = HeaderValue::from_str(cr) {
                resp.headers_mut().insert(http::header::CONTENT_RANGE, v);
            }
        }
        resp
    }
}

impl From<R2Error> for S3Error {
    fn from(e: R2Error) -> S3Error {
        use StatusCode as S;
        let msg = e.to_string();
        match e {
            R2Error::NoSuchKey => S3Error::new(S::NOT_FOUND, "NoSuchKey", msg),
            R2Error::NoSuchBucket => S3Error::new(S::NOT_FOUND, "NoSuchBucket", msg),
            R2Error::InvalidBucketName => S3Error::new(S::BAD_REQUEST, "InvalidBucketName", msg),
            R2Error::BucketAlreadyExists => S3Error::new(
                S::CONFLICT,
                "BucketAlreadyOwnedByYou",
                "Your previous request to create the named bucket succeeded and you already own it.",
            ),
            R2Error::BucketNotEmpty => S3Error::new(S::CONFLICT, "BucketNotEmpty", msg),
            R2Error::InvalidObjectName => {
                S3Error::new(S::BAD_REQUEST, "KeyTooLongError", "Your key is too long.")
            }
            R2Error::EntityTooLarge => S3Error::new(S::BAD_REQUEST, "EntityTooLarge", msg),
            R2Error::EntityTooSmall => S3Error::new(S::BAD_REQUEST, "EntityTooSmall", msg),
            R2Error::MetadataTooLarge => S3Error::new(S::BAD_REQUEST, "MetadataTooLarge", msg),
            R2Error::InvalidMaxKeys => S3Error::invalid_argument(msg),
            R2Error::NoSuchUpload => S3Error::new(S::NOT_FOUND, "NoSuchUpload", msg),
            R2Error::InvalidPart => S3Error::new(S::BAD_REQUEST, "InvalidPart", msg),
            R2Error::InvalidArgument(m) => S3Error::invalid_argument(m),
            R2Error::PreconditionFailed => {
                S3Error::new(S::PRECONDITION_FAILED, "PreconditionFailed", msg)
            }
            R2Error::BadDigest { .. } => S3Error::new(
                S::BAD_REQUEST,
                "BadDigest",
                "The Content-MD5 you specified did not match what we received.",
            ),
            R2Error::InvalidRange { size } => {
                let mut e = S3Error::new(
                    S::RANGE_NOT_SATISFIABLE,
                    "InvalidRange",
                    "The requested range is not satisfiable",
                )
                .with("ActualObjectSize", size.to_string());
                e.content_range = Some(format!("bytes */{size}"));
                e
            }
            R2Error::BadUpload => S3Error::new(
                S::BAD_REQUEST,
                "InvalidPart",
                "All non-trailing parts must have the same length.",
            ),
            R2Error::IncompleteBody => S3Error::incomplete_body(),
            R2Error::Body(inner) => match inner.downcast::<S3Error>() {
                Ok(s3) => *s3,
                Err(other) => {
                    tracing::debug!(error = %other, "S3 request body failed");
                    S3Error::incomplete_body()
                }
            },
            R2Error::Overloaded => {
                S3Error::new(S::SERVICE_UNAVAILABLE, "SlowDown", "Please reduce your request rate.")
            }
            R2Error::Internal(detail) => {
                tracing::error!(%detail, "S3 request failed");
                S3Error::new(
                    S::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    "We encountered an internal error. Please try again.",
                )
            }
        }
    }
}
