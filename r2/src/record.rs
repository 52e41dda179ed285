//! What a bucket object stores in its `ctx.storage` (KV section), and the key layout:
//!
//! | key                         | value                                    |
//! |-----------------------------|------------------------------------------|
//! | `meta`                      | [`BucketMeta`]: the bucket exists        |
//! | `o/<object key>`            | [`ObjectRecord`]                         |
//! | `x/<version>`               | packed blob list of a multipart object   |
//! | `u/<upload id>`             | [`UploadRecord`]                         |
//! | `p/<upload id>/<part:05>`   | [`PartRecord`]                           |
//!
//! Object records stay small (lists read one per object); a multipart object's blob list
//! (up to 10,000 entries) lives under its own key.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::blob::{BlobId, Segment};
use crate::error::R2Error;
use crate::types::{Checksums, HttpMetadata, R2Object, StorageClass};

pub(crate) const META_KEY: &str = "meta";
pub(crate) const OBJECT_PREFIX: &str = "o/";
pub(crate) const UPLOAD_PREFIX: &str = "u/";

pub(crate) fn object_key(key: &str) -> String {
    format!("{OBJECT_PREFIX}{key}")
}

pub(crate) fn blobs_key(version: &str) -> String {
    format!("x/{version}")
}

pub(crate) fn upload_key(upload_id: &str) -> String {
    format!("{UPLOAD_PREFIX}{upload_id}")
}

pub(crate) fn parts_prefix(upload_id: &str) -> String {
    format!("p/{upload_id}/")
}

pub(crate) fn part_key(upload_id: &str, n: u32) -> String {
    format!("p/{upload_id}/{n:05}")
}

fn blob_hex(id: BlobId) -> String {
    format!("{id:032x}")
}

fn parse_blob(s: &str) -> Result<BlobId, R2Error> {
    u128::from_str_radix(s, 16).map_err(|_| R2Error::internal(format!("corrupt blob id {s:?}")))
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Result<Bytes, R2Error> {
    serde_json::to_vec(v)
        .map(Bytes::from)
        .map_err(R2Error::internal)
}

pub(crate) fn decode<'a, T: Deserialize<'a>>(raw: &'a [u8]) -> Result<T, R2Error> {
    serde_json::from_slice(raw).map_err(|e| R2Error::internal(format!("corrupt R2 record: {e}")))
}

/// The bucket exists (created by `create_bucket` / `ensure_bucket`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct BucketMeta {
    pub(crate) created: i64,
}

/// One object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ObjectRecord {
    pub(crate) version: String,
    pub(crate) size: u64,
    pub(crate) etag: String,
    pub(crate) uploaded: i64,
    #[serde(default)]
    pub(crate) http: HttpMetadata,
    #[serde(default)]
    pub(crate) custom: Vec<(String, String)>,
    #[serde(default)]
    pub(crate) checksums: Checksums,
    #[serde(default)]
    pub(crate) storage_class: StorageClass,
    /// Parts of a multipart object; 0 for a single put.
    #[serde(default)]
    pub(crate) parts: u32,
    /// The body's blobs with their lengths, when at most one (`x/<version>` holds longer
    /// lists).
    #[serde(default)]
    pub(crate) blobs: Vec<(String, u64)>,
}

impl ObjectRecord {
    pub(crate) fn to_object(&self, key: &str) -> R2Object {
        R2Object {
            key: key.to_owned(),
            version: self.version.clone(),
            size: self.size,
            etag: self.etag.clone(),
            checksums: self.checksums.clone(),
            uploaded: self.uploaded,
            http_metadata: self.http.clone(),
            custom_metadata: self.custom.clone(),
            range: None,
            storage_class: self.storage_class,
            parts: self.parts,
        }
    }

    pub(crate) fn external_blobs(&self) -> bool {
        self.parts > 0
    }

    pub(crate) fn inline_segments(&self) -> Result<Vec<Segment>, R2Error> {
        self.blobs
            .iter()
            .map(|(id, len)| {
                Ok(Segment {
                    id: parse_blob(id)?,
                    len: *len,
                })
            })
            .collect()
    }

    pub(crate) fn set_inline(&mut self, segments: &[Segment]) {
        self.blobs = segments.iter().map(|s| (blob_hex(s.id), s.len)).collect();
    }
}

/// Packs a blob list: 16 bytes id + 8 bytes length (little endian) per blob.
pub(crate) fn pack_segments(segments: &[Segment]) -> Bytes {
    let mut v = Vec::with_capacity(segments.len() * 24);
    for s in segments {
        v.extend_from_slice(&s.id.to_le_bytes());
        v.extend_from_slice(&s.len.to_le_bytes());
    }
    Bytes::from(v)
}

pub(crate) fn unpack_segments(raw: &[u8]) -> Result<Vec<Segment>, R2Error> {
    if raw.len() % 24 != 0 {
        return Err(R2Error::internal("corrupt multipart blob list"));
    }
    Ok(raw
        .chunks_exact(24)
        .map(|c| {
            let mut id = [0u8; 16];
            let mut len = [0u8; 8];
            id.copy_from_slice(&c[..16]);
            len.copy_from_slice(&c[16..]);
            Segment {
                id: u128::from_le_bytes(id),
                len: u64::from_le_bytes(len),
            }
        })
        .collect())
}

/// State of a multipart upload. Finished uploads keep their record so that late calls get
/// R2's answers (abort after complete is a no-op; a part for a finished upload is refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum UploadState {
    InProgress,
    Completed,
    Aborted,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct UploadRecord {
    pub(crate) key: String,
    #[serde(default)]
    pub(crate) http: HttpMetadata,
    #[serde(default)]
    pub(crate) custom: Vec<(String, String)>,
    #[serde(default)]
    pub(crate) storage_class: StorageClass,
    pub(crate) created: i64,
    pub(crate) state: UploadState,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PartRecord {
    /// `None` for an empty part.
    pub(crate) blob: Option<String>,
    pub(crate) size: u64,
    /// MD5 hex of the part's body, also its etag.
    pub(crate) etag: String,
    pub(crate) uploaded: i64,
}

impl PartRecord {
    pub(crate) fn blob_id(&self) -> Result<Option<BlobId>, R2Error> {
        self.blob.as_deref().map(parse_blob).transpose()
    }

    pub(crate) fn new(blob: Option<BlobId>, size: u64, etag: String, uploaded: i64) -> Self {
        PartRecord {
            blob: blob.map(blob_hex),
            size,
            etag,
            uploaded,
        }
    }
}
