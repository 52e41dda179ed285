//! The internal Durable Object that holds one shard of one KV namespace: the authoritative
//! copy of its entries, their values and their expiration index (layout in [`crate::record`]).
//!
//! Every operation runs synchronously inside one event, so it is atomic and single-writer by
//! construction; the runtime answers only once its writes are durable (output gate). The
//! object's alarm is set to the earliest expiration, and its handler removes what has expired.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use cinder_core::{Actor, ActorContext, ActorError, AlarmInfo, Payload, Request, Response};
use cinder_storage::{ListOptions, ObjectStorage, Section, StorageError};
use futures::future::LocalBoxFuture;

use crate::clock::Clock;
use crate::record::{self, Body, Record, CHUNK_BYTES, INLINE_MAX};

/// Expired entries removed per sweep; the alarm comes straight back if there were more.
const SWEEP_BATCH: usize = 1000;

/// A KV entry as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    /// The value's bytes (the binding turns them into text, JSON, an ArrayBuffer or a stream).
    pub value: Bytes,
    /// The metadata, as the JSON text it was put with.
    pub metadata: Option<String>,
    /// Expiration in seconds since the epoch.
    pub expiration: Option<i64>,
}

/// One key of a `list()` page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedKey {
    /// The key.
    pub name: String,
    /// Expiration in seconds since the epoch.
    pub expiration: Option<i64>,
    /// The metadata, as JSON text.
    pub metadata: Option<String>,
}

pub(crate) enum ShardOp {
    Get(Vec<String>),
    Put {
        key: String,
        value: Bytes,
        expiration: Option<i64>,
        metadata: Option<String>,
    },
    Delete(String),
    List {
        prefix: String,
        start_after: Option<String>,
        limit: usize,
    },
    Sweep,
    StoredKeys,
}

pub(crate) struct ShardPage {
    /// Live keys among those scanned, in order.
    pub(crate) keys: Vec<ListedKey>,
    /// The shard has keys after `scanned_until`.
    pub(crate) more: bool,
    /// The last key scanned (live or expired) when `more`.
    pub(crate) scanned_until: Option<String>,
}

pub(crate) enum ShardReply {
    Entries(Vec<Option<KvEntry>>),
    Done,
    Page(ShardPage),
    Count(usize),
}

pub(crate) struct Shard {
    pub(crate) ctx: ActorContext,
    pub(crate) clock: Arc<dyn Clock>,
}

fn corrupt(e: String) -> StorageError {
    StorageError::Corrupt(e)
}

fn expired(expiration: Option<i64>, now_s: i64) -> bool {
    matches!(expiration, Some(e) if e <= now_s)
}

impl Shard {
    fn now_s(&self) -> i64 {
        self.clock.now_ms().div_euclid(1000)
    }

    fn record(raw: &ObjectStorage, key: &str) -> Result<Option<Record>, StorageError> {
        match raw.get(&record::record_key(key))? {
            Some(b) => Ok(Some(Record::decode(&b).map_err(corrupt)?)),
            None => Ok(None),
        }
    }

    fn read(&self, raw: &ObjectStorage, key: &str) -> Result<Option<KvEntry>, StorageError> {
        let Some(rec) = Self::record(raw, key)? else {
            return Ok(None);
        };
        if expired(rec.expiration, self.now_s()) {
            return Ok(None);
        }
        let value = match rec.body {
            Body::Inline(v) => v,
            Body::Chunked { version, len } => {
                let mut buf = BytesMut::with_capacity(len as usize);
                let no_cache = cinder_storage::ReadOptions { no_cache: true };
                for i in 0..record::chunk_count(len) {
                    let chunk = raw
                        .get_with(&record::chunk_key(version, i), no_cache)?
                        .ok_or_else(|| corrupt(format!("KV value chunk {i} of {key:?} missing")))?;
                    buf.extend_from_slice(&chunk);
                }
                if buf.len() as u64 != len {
                    return Err(corrupt(format!("KV value of {key:?} has the wrong length")));
                }
                buf.freeze()
            }
        };
        Ok(Some(KvEntry {
            value,
            metadata: rec.metadata,
            expiration: rec.expiration,
        }))
    }

    /// Buffers the removal of `key`'s record, value chunks and index entry.
    fn remove(raw: &ObjectStorage, key: &str, rec: &Record) {
        raw.raw_delete(Section::Kv, record::record_key(key).as_bytes());
        if let Body::Chunked { version, len } = rec.body {
            for i in 0..record::chunk_count(len) {
                raw.raw_delete(Section::Kv, record::chunk_key(version, i).as_bytes());
            }
        }
        if let Some(e) = rec.expiration {
            raw.raw_delete(Section::Kv, record::expiry_key(e, key).as_bytes());
        }
    }

    fn put(
        &self,
        key: String,
        value: Bytes,
        expiration: Option<i64>,
        metadata: Option<String>,
    ) -> Result<(), StorageError> {
        let storage = self.ctx.storage();
        let raw = storage.raw();
        if let Some(old) = Self::record(raw, &key)? {
            Self::remove(raw, &key, &old);
        }
        let body = if value.len() <= INLINE_MAX {
            Body::Inline(value)
        } else {
            let version: u64 = rand::random();
            let no_cache = cinder_storage::WriteOptions { no_cache: true };
            for (i, chunk) in value.chunks(CHUNK_BYTES).enumerate() {
                raw.put_with(
                    &record::chunk_key(version, i as u32),
                    value.slice_ref(chunk),
                    no_cache,
                )?;
            }
            Body::Chunked {
                version,
                len: value.len() as u64,
            }
        };
        let rec = Record {
            expiration,
            metadata,
            body,
        };
        raw.put(&record::record_key(&key), rec.encode())?;
        if let Some(e) = expiration {
            raw.put(&record::expiry_key(e, &key), Bytes::new())?;
        }
        storage.note_raw_write(cinder_core::WriteOptions::default());
        if let Some(e) = expiration {
            let at = e.saturating_mul(1000);
            match raw.get_alarm()? {
                Some(current) if current <= at => {}
                _ => storage.set_alarm(at)?,
            }
        }
        Ok(())
    }

    fn delete(&self, key: &str) -> Result<(), StorageError> {
        let storage = self.ctx.storage();
        let raw = storage.raw();
        if let Some(old) = Self::record(raw, key)? {
            Self::remove(raw, key, &old);
            storage.note_raw_write(cinder_core::WriteOptions::default());
        }
        Ok(())
    }

    fn list(
        &self,
        prefix: &str,
        start_after: Option<String>,
        limit: usize,
    ) -> Result<ShardPage, StorageError> {
        let storage = self.ctx.storage();
        let rows = storage.raw().list(&ListOptions {
            prefix: Some(record::record_key(prefix)),
            start_after: start_after.map(|c| record::record_key(&c)),
            limit: Some(limit + 1),
            no_cache: true,
            ..Default::default()
        })?;
        let more = rows.len() > limit;
        let scanned = &rows[..rows.len().min(limit)];
        let now = self.now_s();
        let mut keys = Vec::with_capacity(scanned.len());
        for (k, v) in scanned {
            let rec = Record::decode(v).map_err(corrupt)?;
            if expired(rec.expiration, now) {
                continue;
            }
            keys.push(ListedKey {
                name: k[1..].to_string(),
                expiration: rec.expiration,
                metadata: rec.metadata,
            });
        }
        let scanned_until = more
            .then(|| scanned.last().map(|(k, _)| k[1..].to_string()))
            .flatten();
        Ok(ShardPage {
            keys,
            more,
            scanned_until,
        })
    }

    /// Removes what has expired and points the alarm at the next expiration.
    fn sweep(&self) -> Result<(), StorageError> {
        let storage = self.ctx.storage();
        let raw = storage.raw();
        let now = self.now_s();
        let due = raw.list(&ListOptions {
            start: Some("x".into()),
            end: Some(record::expiry_key(now + 1, "")),
            limit: Some(SWEEP_BATCH),
            no_cache: true,
            ..Default::default()
        })?;
        for (k, _) in &due {
            let Some((exp, key)) = record::parse_expiry_key(k) else {
                raw.raw_delete(Section::Kv, k.as_bytes());
                continue;
            };
            match Self::record(raw, key)? {
                // Only the entry this index line was written for: a later put without
                // expiration (or with another) owns the key now.
                Some(rec) if rec.expiration == Some(exp) => Self::remove(raw, key, &rec),
                _ => raw.raw_delete(Section::Kv, k.as_bytes()),
            }
        }
        if !due.is_empty() {
            storage.note_raw_write(cinder_core::WriteOptions::default());
        }
        let next = raw.list(&ListOptions {
            start: Some("x".into()),
            end: Some("y".into()),
            limit: Some(1),
            no_cache: true,
            ..Default::default()
        })?;
        let next = next.first().and_then(|(k, _)| record::parse_expiry_key(k));
        match next {
            Some((exp, _)) => {
                let real_now = cinder_core::now_ms();
                let mut at = exp.saturating_mul(1000);
                if due.len() == SWEEP_BATCH {
                    at = real_now;
                } else if at <= real_now {
                    // Not expired by the engine's clock yet, though the wall clock passed it
                    // (an injected clock): look again shortly rather than spin.
                    at = real_now + 1000;
                }
                storage.set_alarm(at.max(1))?;
            }
            None => {
                if raw.get_alarm()?.is_some() {
                    storage.delete_alarm()?;
                }
            }
        }
        Ok(())
    }

    fn handle(&self, op: ShardOp) -> Result<ShardReply, StorageError> {
        Ok(match op {
            ShardOp::Get(keys) => {
                let storage = self.ctx.storage();
                let raw = storage.raw();
                let mut out = Vec::with_capacity(keys.len());
                for k in &keys {
                    out.push(self.read(raw, k)?);
                }
                ShardReply::Entries(out)
            }
            ShardOp::Put {
                key,
                value,
                expiration,
                metadata,
            } => {
                self.put(key, value, expiration, metadata)?;
                ShardReply::Done
            }
            ShardOp::Delete(key) => {
                self.delete(&key)?;
                ShardReply::Done
            }
            ShardOp::List {
                prefix,
                start_after,
                limit,
            } => ShardReply::Page(self.list(&prefix, start_after, limit)?),
            ShardOp::Sweep => {
                self.sweep()?;
                ShardReply::Done
            }
            ShardOp::StoredKeys => {
                let storage = self.ctx.storage();
                let all = storage.raw().list(&ListOptions {
                    no_cache: true,
                    ..Default::default()
                })?;
                ShardReply::Count(all.len())
            }
        })
    }
}

impl Actor for Shard {
    fn fetch(&self, _req: Request) -> LocalBoxFuture<'_, Result<Response, ActorError>> {
        Box::pin(async { Err(ActorError::new("internal KV objects accept calls only")) })
    }

    fn call(&self, payload: Payload) -> LocalBoxFuture<'_, Result<Payload, ActorError>> {
        Box::pin(async move {
            let op = payload
                .downcast::<ShardOp>()
                .map_err(|_| ActorError::new("internal KV object: unexpected call"))?;
            let reply = self.handle(*op)?;
            Ok(Box::new(reply) as Payload)
        })
    }

    fn alarm(&self, _info: AlarmInfo) -> LocalBoxFuture<'_, Result<(), ActorError>> {
        Box::pin(async move { Ok(self.sweep()?) })
    }
}
