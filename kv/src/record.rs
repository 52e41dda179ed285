//! How one KV entry is laid out in its shard object's storage.
//!
//! Keys (all in the object's `ctx.storage` key space, so they sort and list by UTF-8 bytes):
//! - `k<key>`: the entry's record: expiration, metadata, length, and either the value itself
//!   (up to [`INLINE_MAX`] bytes) or the version whose chunks hold it. Records stay small, so a
//!   `list()` page of 1,000 keys reads about a megabyte at most.
//! - `v<version:16 hex><chunk:8 hex>`: the value in chunks of [`CHUNK_BYTES`] (the storage
//!   layer's value limit). A put writes a fresh version and deletes the old one in the same
//!   atomic batch, so a reader never sees a mix.
//! - `x<expiration:16 hex><key>`: the expiration index the background sweep walks.

use bytes::{BufMut, Bytes, BytesMut};

/// Values up to this size live inside the record.
pub(crate) const INLINE_MAX: usize = 1024;
/// Size of one value chunk: the storage layer's largest value.
pub(crate) const CHUNK_BYTES: usize = cinder_storage::MAX_VALUE_BYTES;

const FORMAT: u8 = 1;
const HAS_EXPIRATION: u8 = 1;
const HAS_METADATA: u8 = 2;
const INLINE: u8 = 4;

/// Where the value of a record is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Body {
    Inline(Bytes),
    Chunked { version: u64, len: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    /// Seconds since the epoch.
    pub(crate) expiration: Option<i64>,
    /// JSON text.
    pub(crate) metadata: Option<String>,
    pub(crate) body: Body,
}

pub(crate) fn record_key(key: &str) -> String {
    format!("k{key}")
}

pub(crate) fn chunk_key(version: u64, index: u32) -> String {
    format!("v{version:016x}{index:08x}")
}

pub(crate) fn expiry_key(expiration_s: i64, key: &str) -> String {
    format!("x{:016x}{key}", expiration_s.max(0) as u64)
}

/// `(expiration, key)` of an expiry index key.
pub(crate) fn parse_expiry_key(k: &str) -> Option<(i64, &str)> {
    let rest = k.strip_prefix('x')?;
    let hex = rest.get(..16)?;
    let exp = u64::from_str_radix(hex, 16).ok()?;
    Some((exp as i64, rest.get(16..)?))
}

pub(crate) fn chunk_count(len: u64) -> u32 {
    len.div_ceil(CHUNK_BYTES as u64) as u32
}

impl Record {
    pub(crate) fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(32);
        let mut flags = 0;
        if self.expiration.is_some() {
            flags |= HAS_EXPIRATION;
        }
        if self.metadata.is_some() {
            flags |= HAS_METADATA;
        }
        if matches!(self.body, Body::Inline(_)) {
            flags |= INLINE;
        }
        b.put_u8(FORMAT);
        b.put_u8(flags);
        if let Some(e) = self.expiration {
            b.put_i64_le(e);
        }
        if let Some(m) = &self.metadata {
            b.put_u32_le(m.len() as u32);
            b.put_slice(m.as_bytes());
        }
        match &self.body {
            Body::Inline(v) => {
                b.put_u64_le(v.len() as u64);
                b.put_slice(v);
            }
            Body::Chunked { version, len } => {
                b.put_u64_le(*len);
                b.put_u64_le(*version);
            }
        }
        b.freeze()
    }

    pub(crate) fn decode(raw: &Bytes) -> Result<Record, String> {
        let mut r = Reader { buf: raw, at: 0 };
        if r.u8()? != FORMAT {
            return Err("unknown KV record format".into());
        }
        let flags = r.u8()?;
        let expiration = if flags & HAS_EXPIRATION != 0 {
            Some(r.u64()? as i64)
        } else {
            None
        };
        let metadata = if flags & HAS_METADATA != 0 {
            let n = r.u32()? as usize;
            let m = r.take(n)?;
            Some(String::from_utf8(m.to_vec()).map_err(|_| "KV metadata is not UTF-8")?)
        } else {
            None
        };
        let len = r.u64()?;
        let body = if flags & INLINE != 0 {
            Body::Inline(r.take(len as usize)?)
        } else {
            Body::Chunked {
                version: r.u64()?,
                len,
            }
        };
        Ok(Record {
            expiration,
            metadata,
            body,
        })
    }
}

struct Reader<'a> {
    buf: &'a Bytes,
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<Bytes, String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or_else(|| "truncated KV record".to_string())?;
        let out = self.buf.slice(self.at..end);
        self.at = end;
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(&b);
        Ok(u64::from_le_bytes(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        for rec in [
            Record {
                expiration: Some(1_900_000_000),
                metadata: Some("{\"a\":1}".into()),
                body: Body::Inline(Bytes::from_static(b"hello")),
            },
            Record {
                expiration: None,
                metadata: None,
                body: Body::Chunked {
                    version: 42,
                    len: 3 << 20,
                },
            },
        ] {
            assert_eq!(Record::decode(&rec.encode()).unwrap(), rec);
        }
        assert!(Record::decode(&Bytes::from_static(&[1, 4, 9])).is_err());
    }

    #[test]
    fn expiry_keys_sort_by_time_and_parse_back() {
        let a = expiry_key(99, "zz");
        let b = expiry_key(100, "aa");
        assert!(a < b);
        assert_eq!(parse_expiry_key(&b), Some((100, "aa")));
    }
}
