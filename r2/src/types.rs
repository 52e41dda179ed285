//! The values bucket operations take and return, shaped after the Workers binding
//! (`R2Object`, `R2HTTPMetadata`, `R2Checksums`, `R2Range`, `R2Conditional`, options objects).

use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;
use serde::{Deserialize, Serialize};

use crate::error::{ChecksumAlgorithm, R2Error};

/// `R2HTTPMetadata`: the HTTP headers stored with an object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpMetadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_language: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_disposition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<String>,
    /// `cacheExpiry` (the `Expires` header), ms since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_expiry: Option<i64>,
}

impl HttpMetadata {
    /// Reads the metadata headers of a request (`httpMetadata: Headers` in the binding, and
    /// S3 puts): Content-Type, Content-Language, Content-Disposition, Content-Encoding,
    /// Cache-Control, Expires. An unparsable `Expires` is ignored, as R2 does.
    pub fn from_headers(h: &http::HeaderMap) -> HttpMetadata {
        let get = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        HttpMetadata {
            content_type: get("content-type"),
            content_language: get("content-language"),
            content_disposition: get("content-disposition"),
            content_encoding: get("content-encoding"),
            cache_control: get("cache-control"),
            cache_expiry: get("expires")
                .and_then(|v| httpdate::parse_http_date(&v).ok())
                .map(crate::time::system_time_ms),
        }
    }

    /// `writeHttpMetadata(headers)`: sets each stored field on `headers`.
    pub fn write_headers(&self, h: &mut http::HeaderMap) {
        let mut set = |name: &'static str, v: &Option<String>| {
            if let Some(v) = v {
                if let Ok(v) = http::HeaderValue::from_str(v) {
                    h.insert(name, v);
                }
            }
        };
        set("content-type", &self.content_type);
        set("content-language", &self.content_language);
        set("content-disposition", &self.content_disposition);
        set("content-encoding", &self.content_encoding);
        set("cache-control", &self.cache_control);
        if let Some(ms) = self.cache_expiry {
            let v = httpdate::fmt_http_date(crate::time::ms_system_time(ms));
            if let Ok(v) = http::HeaderValue::from_str(&v) {
                h.insert("expires", v);
            }
        }
    }
}

/// `R2Checksums`: lower-case hex digests stored with an object. Single-part objects always
/// carry `md5`; the others are present when the put supplied them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checksums {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub md5: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha1: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha384: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha512: Option<String>,
}

impl Checksums {
    pub(crate) fn set(&mut self, alg: ChecksumAlgorithm, hex: String) {
        let slot = match alg {
            ChecksumAlgorithm::Md5 => &mut self.md5,
            ChecksumAlgorithm::Sha1 => &mut self.sha1,
            ChecksumAlgorithm::Sha256 => &mut self.sha256,
            ChecksumAlgorithm::Sha384 => &mut self.sha384,
            ChecksumAlgorithm::Sha512 => &mut self.sha512,
        };
        *slot = Some(hex);
    }
}

/// A checksum a put must match (`md5`/`sha1`/`sha256`/`sha384`/`sha512` in `R2PutOptions`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    pub algorithm: ChecksumAlgorithm,
    pub digest: Vec<u8>,
}

impl Checksum {
    /// From raw digest bytes; the length must fit the algorithm (binding: `TypeError` "MD5 is
    /// 16 bytes, not 3").
    pub fn from_bytes(algorithm: ChecksumAlgorithm, digest: &[u8]) -> Result<Checksum, R2Error> {
        if digest.len() != algorithm.len() {
            return Err(R2Error::InvalidArgument(format!(
                "{} is {} bytes, not {}",
                algorithm.name(),
                algorithm.len(),
                digest.len()
            )));
        }
        Ok(Checksum {
            algorithm,
            digest: digest.to_vec(),
        })
    }

    /// From a hex string (either case).
    pub fn from_hex(algorithm: ChecksumAlgorithm, hex_digest: &str) -> Result<Checksum, R2Error> {
        let bytes = hex::decode(hex_digest).map_err(|_| {
            R2Error::InvalidArgument(format!(
                "Provided {} wasn't a valid hex string",
                algorithm.name()
            ))
        })?;
        Self::from_bytes(algorithm, &bytes)
    }
}

/// `storageClass`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum StorageClass {
    #[default]
    Standard,
    InfrequentAccess,
}

impl StorageClass {
    /// R2's spelling (`"Standard"`, `"InfrequentAccess"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standard => "Standard",
            Self::InfrequentAccess => "InfrequentAccess",
        }
    }

    /// Parses R2's spelling or S3's (`STANDARD`, `STANDARD_IA`).
    pub fn parse(s: &str) -> Option<StorageClass> {
        match s {
            "Standard" | "STANDARD" => Some(Self::Standard),
            "InfrequentAccess" | "STANDARD_IA" => Some(Self::InfrequentAccess),
            _ => None,
        }
    }
}

/// The byte range an `R2Object` describes (`range` of a ranged get).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectRange {
    pub offset: u64,
    pub length: u64,
}

/// `R2Object`: an object's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct R2Object {
    pub key: String,
    /// Random 32-hex-digit id of this write of the key.
    pub version: String,
    pub size: u64,
    /// Unquoted etag: the body's MD5 hex, or `<md5 of part md5s>-<parts>` for multipart.
    pub etag: String,
    pub checksums: Checksums,
    /// Upload time, ms since the Unix epoch.
    pub uploaded: i64,
    /// Empty in `list` results unless `include` asked for it.
    pub http_metadata: HttpMetadata,
    /// In insertion order. Empty in `list` results unless `include` asked for it.
    pub custom_metadata: Vec<(String, String)>,
    /// The range a get returned (the whole object for head/put results).
    pub range: Option<ObjectRange>,
    pub storage_class: StorageClass,
    /// Number of parts of a multipart object (0 for a single put).
    pub parts: u32,
}

impl R2Object {
    /// `httpEtag`: the etag quoted, as in an `ETag` header.
    pub fn http_etag(&self) -> String {
        format!("\"{}\"", self.etag)
    }
}

/// A body stream handed back by `get`. Reading it never holds the object in memory.
pub type BodyStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send + 'static>>;

/// `R2ObjectBody`: an object and its (possibly ranged) body.
pub struct R2ObjectBody {
    pub object: R2Object,
    /// Yields exactly `object.range.length` bytes.
    pub body: BodyStream,
}

impl std::fmt::Debug for R2ObjectBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("R2ObjectBody")
            .field("object", &self.object)
            .finish_non_exhaustive()
    }
}

/// What `get` found.
#[derive(Debug)]
pub enum GetResult {
    /// No such key (`null` in JS).
    NotFound,
    /// `onlyIf` did not hold: the object without its body (`R2Object` in JS).
    PreconditionFailed(R2Object),
    /// The object and its body (`R2ObjectBody`).
    Found(R2ObjectBody),
}

/// `R2Range`: `{offset, length?}`, `{offset?, length}` or `{suffix}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeSpec {
    pub offset: Option<u64>,
    pub length: Option<u64>,
    pub suffix: Option<u64>,
}

/// How a get names its range.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RangeRequest {
    /// The whole object.
    #[default]
    Full,
    /// An `R2Range` object; an unsatisfiable one fails with `InvalidRange`.
    Spec(RangeSpec),
    /// A `Range` header value (`range: Headers` in the binding): a malformed, multiple or
    /// unsatisfiable range gives the whole object, as R2 does.
    Header(String),
    /// A `Range` header as S3 treats it: malformed or multiple ranges give the whole object,
    /// an unsatisfiable one fails with `InvalidRange` (416).
    S3Header(String),
}

/// One entry of `etagMatches` / `etagDoesNotMatch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EtagCondition {
    /// `"abc"` or a bare `abc`: matches only a strong comparison.
    Strong(String),
    /// `W/"abc"`: matches only in weak comparisons (`etagDoesNotMatch`).
    Weak(String),
    /// `*`: any existing object.
    Wildcard,
}

impl EtagCondition {
    /// Parses one header list (`If-Match: "a", W/"b"`).
    pub fn parse_list(header: &str) -> Vec<EtagCondition> {
        header
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                if s == "*" {
                    EtagCondition::Wildcard
                } else if let Some(rest) = s.strip_prefix("W/") {
                    EtagCondition::Weak(rest.trim_matches('"').to_owned())
                } else {
                    EtagCondition::Strong(s.trim_matches('"').to_owned())
                }
            })
            .collect()
    }
}

/// `R2Conditional` (`onlyIf`). Fields left `None` impose nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conditional {
    pub etag_matches: Option<Vec<EtagCondition>>,
    pub etag_does_not_match: Option<Vec<EtagCondition>>,
    /// ms since the epoch.
    pub uploaded_before: Option<i64>,
    /// ms since the epoch.
    pub uploaded_after: Option<i64>,
    /// Compare times at one-second granularity (always so for conditions from headers).
    pub seconds_granularity: bool,
}

/// Which part of a conditional failed: S3 answers 412 for the first, 304 (reads) for the
/// second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConditionOutcome {
    Pass,
    /// `etagMatches` / `uploadedBefore` (If-Match / If-Unmodified-Since).
    FailedMatch,
    /// `etagDoesNotMatch` / `uploadedAfter` (If-None-Match / If-Modified-Since).
    FailedNoneMatch,
}

impl Conditional {
    /// `onlyIf: Headers`: If-Match, If-None-Match, If-Modified-Since, If-Unmodified-Since.
    /// `None` when none is present. Unparsable dates are ignored, as HTTP says.
    pub fn from_headers(h: &http::HeaderMap) -> Option<Conditional> {
        let text = |n: &str| h.get(n).and_then(|v| v.to_str().ok());
        let date = |n: &str| {
            text(n)
                .and_then(|v| httpdate::parse_http_date(v).ok())
                .map(crate::time::system_time_ms)
        };
        let c = Conditional {
            etag_matches: text("if-match").map(EtagCondition::parse_list),
            etag_does_not_match: text("if-none-match").map(EtagCondition::parse_list),
            uploaded_before: date("if-unmodified-since"),
            uploaded_after: date("if-modified-since"),
            seconds_granularity: true,
        };
        (c != Conditional {
            seconds_granularity: true,
            ..Default::default()
        })
        .then_some(c)
    }

    /// Evaluates against an object (`None`: no object), with HTTP's precedence: an
    /// `etagMatches` that holds overrides `uploadedBefore`, an `etagDoesNotMatch` that holds
    /// overrides `uploadedAfter` (RFC 9110 §13.2.2).
    pub fn evaluate(&self, object: Option<(&str, i64)>) -> ConditionOutcome {
        let Some((etag, uploaded)) = object else {
            if self.etag_matches.is_some() {
                return ConditionOutcome::FailedMatch;
            }
            if self.uploaded_after.is_some() {
                return ConditionOutcome::FailedNoneMatch;
            }
            return ConditionOutcome::Pass;
        };
        let includes = |list: &[EtagCondition], weak: bool| {
            list.iter().any(|c| match c {
                EtagCondition::Wildcard => true,
                EtagCondition::Strong(v) => v == etag,
                EtagCondition::Weak(v) => weak && v == etag,
            })
        };
        let trunc = |ms: i64| {
            if self.seconds_granularity {
                ms.div_euclid(1000) * 1000
            } else {
                ms
            }
        };
        let last = trunc(uploaded);
        let if_match = self
            .etag_matches
            .as_deref()
            .is_none_or(|l| includes(l, false));
        let if_none_match = self
            .etag_does_not_match
            .as_deref()
            .is_none_or(|l| !includes(l, true));
        let if_unmodified = self.uploaded_before.is_none_or(|t| last < trunc(t))
            || (self.etag_matches.is_some() && if_match);
        let if_modified = self.uploaded_after.is_none_or(|t| trunc(t) < last)
            || (self.etag_does_not_match.is_some() && if_none_match);
        if !if_match || !if_unmodified {
            ConditionOutcome::FailedMatch
        } else if !if_none_match || !if_modified {
            ConditionOutcome::FailedNoneMatch
        } else {
            ConditionOutcome::Pass
        }
    }
}

/// `R2GetOptions`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GetOptions {
    pub only_if: Option<Conditional>,
    pub range: RangeRequest,
}

/// `R2PutOptions`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutOptions {
    pub only_if: Option<Conditional>,
    pub http_metadata: HttpMetadata,
    pub custom_metadata: Vec<(String, String)>,
    /// At most one checksum, as in the binding.
    pub checksum: Option<Checksum>,
    pub storage_class: StorageClass,
    /// The body length announced by the caller (S3 `Content-Length`): checked up front
    /// against the size limit and at the end against what arrived.
    pub expected_length: Option<u64>,
}

/// `R2MultipartOptions`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MultipartOptions {
    pub http_metadata: HttpMetadata,
    pub custom_metadata: Vec<(String, String)>,
    pub storage_class: StorageClass,
}

/// `R2ListOptions`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// 1..=1000, default 1000.
    pub limit: Option<u32>,
    pub prefix: Option<String>,
    /// An opaque cursor from an earlier truncated result.
    pub cursor: Option<String>,
    pub delimiter: Option<String>,
    /// List keys strictly after this one.
    pub start_after: Option<String>,
    /// `include: ["httpMetadata"]`.
    pub include_http_metadata: bool,
    /// `include: ["customMetadata"]`.
    pub include_custom_metadata: bool,
}

/// `R2Objects`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListResult {
    pub objects: Vec<R2Object>,
    /// Common prefixes, each ending with the delimiter.
    pub delimited_prefixes: Vec<String>,
    pub truncated: bool,
    /// Present when `truncated`.
    pub cursor: Option<String>,
}

/// `R2UploadedPart`: what `uploadPart` returns and `complete` takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadedPart {
    pub part_number: u32,
    pub etag: String,
}

/// A part of an upload in progress, as S3's ListParts shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartInfo {
    pub part_number: u32,
    pub etag: String,
    pub size: u64,
    /// ms since the epoch.
    pub uploaded: i64,
}

/// One page of an upload's parts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PartList {
    pub parts: Vec<PartInfo>,
    pub truncated: bool,
    /// The part number to pass as `after` for the next page.
    pub next_marker: Option<u32>,
}

/// A multipart upload in progress, as S3's ListMultipartUploads shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadInfo {
    pub key: String,
    pub upload_id: String,
    /// ms since the epoch.
    pub initiated: i64,
    pub storage_class: StorageClass,
}

/// A bucket, as ListBuckets shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketInfo {
    pub name: String,
    /// ms since the epoch.
    pub created: i64,
}

/// What a copy carries over (S3 CopyObject).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyOptions {
    /// Conditions on the source object (`x-amz-copy-source-if-*`).
    pub source_only_if: Option<Conditional>,
    /// `Some`: replace the metadata (`x-amz-metadata-directive: REPLACE`); `None`: keep the
    /// source's.
    pub replace_metadata: Option<MultipartOptions>,
}
