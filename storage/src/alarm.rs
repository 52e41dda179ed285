//! Alarm records: one slot per object in its own fjall keyspace, keyed by object id, so node
//! start-up lists every scheduled alarm with one scan instead of visiting every object.
//!
//! A slot holds the time the alarm was scheduled for and, once its handler has failed, how
//! many runs failed and when the next one is due, so retries continue where they were after a
//! restart.

use rkyv::{Archive, Deserialize, Serialize};

use crate::error::StorageError;

/// The alarm slot of one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlarmState {
    /// When the alarm was scheduled for, ms since the Unix epoch (`getAlarm()`; stays the same
    /// across retries).
    pub scheduled_ms: i64,
    /// How many runs of this alarm have failed so far.
    pub retry_count: u32,
    /// When the next run is due (ms since the epoch): `scheduled_ms` until a run failed, then
    /// the time of the next retry.
    pub next_ms: i64,
}

impl AlarmState {
    /// A fresh alarm for `at_ms`, not yet run.
    pub fn at(at_ms: i64) -> AlarmState {
        AlarmState {
            scheduled_ms: at_ms,
            retry_count: 0,
            next_ms: at_ms,
        }
    }
}

/// Record layout 1: the time only (before retries were persisted).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
struct AlarmRecordV1 {
    version: u8,
    at_ms: i64,
}

/// Record layout 2.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
struct AlarmRecordV2 {
    version: u8,
    at_ms: i64,
    retry_count: u32,
    next_ms: i64,
}

/// Store-wide metadata kept in the `meta` keyspace.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StoreMeta {
    /// On-disk key layout version (see `keys.rs`).
    pub(crate) format: u32,
}

const RECORD_V1: u8 = 1;
const RECORD_V2: u8 = 2;
pub(crate) const STORE_FORMAT: u32 = 1;

pub(crate) fn encode(state: &AlarmState) -> Result<Vec<u8>, StorageError> {
    let rec = AlarmRecordV2 {
        version: RECORD_V2,
        at_ms: state.scheduled_ms,
        retry_count: state.retry_count,
        next_ms: state.next_ms,
    };
    rkyv::to_bytes::<rkyv::rancor::Error>(&rec)
        .map(|v| v.to_vec())
        .map_err(|e| StorageError::Corrupt(format!("encoding alarm: {e}")))
}

pub(crate) fn decode(bytes: &[u8]) -> Result<AlarmState, StorageError> {
    // fjall hands out unaligned slices; rkyv wants its buffer aligned.
    let mut buf = rkyv::util::AlignedVec::<16>::new();
    buf.extend_from_slice(bytes);
    let corrupt = |e: rkyv::rancor::Error| StorageError::Corrupt(format!("alarm record: {e}"));
    // The layouts differ in size; the version field confirms which one was read.
    if bytes.len() == std::mem::size_of::<ArchivedAlarmRecordV2>() {
        let rec = rkyv::from_bytes::<AlarmRecordV2, rkyv::rancor::Error>(&buf).map_err(corrupt)?;
        if rec.version == RECORD_V2 {
            return Ok(AlarmState {
                scheduled_ms: rec.at_ms,
                retry_count: rec.retry_count,
                next_ms: rec.next_ms,
            });
        }
    } else if bytes.len() == std::mem::size_of::<ArchivedAlarmRecordV1>() {
        let rec = rkyv::from_bytes::<AlarmRecordV1, rkyv::rancor::Error>(&buf).map_err(corrupt)?;
        if rec.version == RECORD_V1 {
            return Ok(AlarmState::at(rec.at_ms));
        }
    }
    Err(StorageError::Corrupt(format!(
        "alarm record of {} bytes is of no known version",
        bytes.len()
    )))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_old_records_still_decode() {
        let s = AlarmState {
            scheduled_ms: 1_700_000_000_000,
            retry_count: 3,
            next_ms: 1_700_000_016_000,
        };
        assert_eq!(decode(&encode(&s).unwrap()).unwrap(), s);
        let v1 = rkyv::to_bytes::<rkyv::rancor::Error>(&AlarmRecordV1 {
            version: RECORD_V1,
            at_ms: 42,
        })
        .unwrap();
        assert_eq!(decode(&v1).unwrap(), AlarmState::at(42));
        assert!(decode(&[9, 9, 9]).is_err());
        assert!(decode(&[]).is_err());
    }
}
