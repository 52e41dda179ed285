//! Alarm records: one slot per object in its own fjall keyspace, keyed by object id, so node
//! start-up lists every scheduled alarm with one scan instead of visiting every object.

use rkyv::{Archive, Deserialize, Serialize};

use crate::error::StorageError;

/// The persisted alarm slot of one object.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AlarmRecord {
    /// Record layout version, so a later format can be told apart.
    pub(crate) version: u8,
    /// Scheduled time, ms since the Unix epoch.
    pub(crate) at_ms: i64,
}

/// Store-wide metadata kept in the `meta` keyspace.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StoreMeta {
    /// On-disk key layout version (see `keys.rs`).
    pub(crate) format: u32,
}

pub(crate) const RECORD_VERSION: u8 = 1;
pub(crate) const STORE_FORMAT: u32 = 1;

pub(crate) fn encode_alarm(at_ms: i64) -> Result<Vec<u8>, StorageError> {
    let rec = AlarmRecord {
        version: RECORD_VERSION,
        at_ms,
    };
    rkyv::to_bytes::<rkyv::rancor::Error>(&rec)
        .map(|v| v.to_vec())
        .map_err(|e| StorageError::Corrupt(format!("encoding alarm: {e}")))
}

pub(crate) fn decode_alarm(bytes: &[u8]) -> Result<i64, StorageError> {
    // fjall hands out unaligned slices; rkyv wants its buffer aligned.
    let mut buf = rkyv::util::AlignedVec::<16>::new();
    buf.extend_from_slice(bytes);
    let rec = rkyv::from_bytes::<AlarmRecord, rkyv::rancor::Error>(&buf)
        .map_err(|e| StorageError::Corrupt(format!("alarm record: {e}")))?;
    if rec.version != RECORD_VERSION {
        return Err(StorageError::Corrupt(format!(
            "alarm record version {}",
            rec.version
        )));
    }
    Ok(rec.at_ms)
}

pub(crate) fn encode_meta(meta: &StoreMeta) -> Result<Vec<u8>, StorageError> {
    rkyv::to_bytes::<rkyv::rancor::Error>(meta)
        .map(|v| v.to_vec())
        .map_err(|e| StorageError::Corrupt(format!("encoding store meta: {e}")))
}

pub(crate) fn decode_meta(bytes: &[u8]) -> Result<StoreMeta, StorageError> {
    let mut buf = rkyv::util::AlignedVec::<16>::new();
    buf.extend_from_slice(bytes);
    rkyv::from_bytes::<StoreMeta, rkyv::rancor::Error>(&buf)
        .map_err(|e| StorageError::Corrupt(format!("store meta: {e}")))
}
