//! The per-object storage handle: `ctx.storage` semantics over the shared store.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use crate::commit::Commit;
use crate::error::StorageError;
use crate::keys::{self, ObjectId, Section};
use crate::limits;
use crate::list::{self, ListOptions, SuffixRange};
use crate::overlay::{Turn, View};
use crate::store::Store;
use crate::transaction::Transaction;

/// Options of writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// Don't keep the written value in the read cache (Cloudflare's `noCache`): after the
    /// flush the key is dropped from the cache instead of refreshed.
    pub no_cache: bool,
}

/// Options of point reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// Read from fjall and leave the read cache untouched.
    pub no_cache: bool,
}

/// Storage of one object. Cheap to clone (clones share the turn buffer); `Send + Sync`, but
/// meant to be used from the object's one executor thread.
///
/// Writes are buffered in the current *turn*; reads and lists see them. [`Self::flush`] ends
/// the turn: the whole buffer becomes one atomic fjall batch.
#[derive(Clone)]
pub struct ObjectStorage {
    pub(crate) store: Arc<Store>,
    pub(crate) id: ObjectId,
    turn: Arc<Mutex<Turn>>,
}

impl std::fmt::Debug for ObjectStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStorage")
            .field("id", &hex_id(&self.id))
            .finish_non_exhaustive()
    }
}

fn hex_id(id: &ObjectId) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn kv(key: &str) -> Vec<u8> {
    keys::suffix(Section::Kv, key.as_bytes())
}

pub(crate) fn kv_key(suffix: &[u8]) -> Result<String, StorageError> {
    String::from_utf8(suffix[1..].to_vec())
        .map_err(|_| StorageError::Corrupt("KV key is not UTF-8".into()))
}

/// Shared implementations for the object handle and transactions: `view` sees the layers,
/// `top` is where writes go.
pub(crate) mod ops {
    use super::*;

    pub(crate) fn get_many(
        view: &View<'_>,
        keys: &[String],
        opts: ReadOptions,
    ) -> Result<Vec<(String, Bytes)>, StorageError> {
        limits::check_count(keys.len())?;
        for k in keys {
            limits::check_key(k)?;
        }
        let unique: BTreeSet<&str> = keys.iter().map(String::as_str).collect();
        let mut out = Vec::with_capacity(unique.len());
        for k in unique {
            if let Some(v) = view.get(&kv(k), opts.no_cache)? {
                out.push((k.to_owned(), v));
            }
        }
        Ok(out)
    }

    pub(crate) fn check_entries(entries: &[(String, Bytes)]) -> Result<(), StorageError> {
        limits::check_count(entries.len())?;
        for (k, v) in entries {
            limits::check_key(k)?;
            limits::check_value(v)?;
        }
        Ok(())
    }

    /// Which of `keys` (deduplicated) exist; limits checked first.
    pub(crate) fn existing(view: &View<'_>, keys: &[String]) -> Result<usize, StorageError> {
        limits::check_count(keys.len())?;
        for k in keys {
            limits::check_key(k)?;
        }
        let unique: BTreeSet<&str> = keys.iter().map(String::as_str).collect();
        let mut n = 0;
        for k in unique {
            if view.get(&kv(k), false)?.is_some() {
                n += 1;
            }
        }
        Ok(n)
    }

    pub(crate) fn list(
        view: &View<'_>,
        opts: &ListOptions,
    ) -> Result<Vec<(String, Bytes)>, StorageError> {
        let Some(range) = list::compile(opts)? else {
            return Ok(Vec::new());
        };
        let prefix = opts.prefix.as_deref().unwrap_or("");
        view.range(&range, opts.reverse, opts.limit, opts.no_cache)?
            .into_iter()
            .map(|(k, v)| Ok((kv_key(&k)?, v)))
            .filter(|r| match r {
                Ok((k, _)) => k.starts_with(prefix),
                Err(_) => true,
            })
            .collect()
    }

    pub(crate) fn check_alarm(at_ms: i64) -> Result<(), StorageError> {
        if at_ms <= 0 {
            return Err(StorageError::AlarmTime);
        }
        Ok(())
    }
}

impl ObjectStorage {
    pub(crate) fn new(store: Arc<Store>, id: ObjectId) -> Self {
        Self {
            store,
            id,
            turn: Arc::new(Mutex::new(Turn::default())),
        }
    }

    pub(crate) fn turn(&self) -> MutexGuard<'_, Turn> {
        self.turn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` with a view of the committed state plus this turn's writes.
    fn with_view<R>(&self, f: impl FnOnce(&View<'_>) -> R) -> R {
        let turn = self.turn();
        let layers = [&*turn];
        f(&View {
            store: &self.store,
            id: &self.id,
            layers: &layers,
        })
    }

    /// The object id.
    pub fn id(&self) -> &ObjectId {
        &self.id
    }

    /// The value of `key`, this turn's unflushed writes included.
    pub fn get(&self, key: &str) -> Result<Option<Bytes>, StorageError> {
        self.get_with(key, ReadOptions::default())
    }

    /// [`Self::get`] with options (`no_cache`: bypass the read cache).
    pub fn get_with(&self, key: &str, opts: ReadOptions) -> Result<Option<Bytes>, StorageError> {
        limits::check_key(key)?;
        self.with_view(|v| v.get(&kv(key), opts.no_cache))
    }

    /// Found keys only, in key order, each once.
    pub fn get_many(&self, keys: &[String]) -> Result<Vec<(String, Bytes)>, StorageError> {
        self.get_many_with(keys, ReadOptions::default())
    }

    /// [`Self::get_many`] with options.
    pub fn get_many_with(
        &self,
        keys: &[String],
        opts: ReadOptions,
    ) -> Result<Vec<(String, Bytes)>, StorageError> {
        self.with_view(|v| ops::get_many(v, keys, opts))
    }

    /// Buffers `key = value` in this turn's batch.
    pub fn put(&self, key: &str, value: Bytes) -> Result<(), StorageError> {
        self.put_with(key, value, WriteOptions::default())
    }

    /// [`Self::put`] with options (`no_cache`: don't keep the value in the read cache).
    pub fn put_with(
        &self,
        key: &str,
        value: Bytes,
        opts: WriteOptions,
    ) -> Result<(), StorageError> {
        limits::check_key(key)?;
        limits::check_value(&value)?;
        self.turn().write(kv(key), Some(value), opts.no_cache);
        Ok(())
    }

    /// All entries or none: limits are checked for every entry before any is buffered.
    pub fn put_many(&self, entries: Vec<(String, Bytes)>) -> Result<(), StorageError> {
        self.put_many_with(entries, WriteOptions::default())
    }

    /// [`Self::put_many`] with options.
    pub fn put_many_with(
        &self,
        entries: Vec<(String, Bytes)>,
        opts: WriteOptions,
    ) -> Result<(), StorageError> {
        ops::check_entries(&entries)?;
        let mut turn = self.turn();
        for (k, v) in entries {
            turn.write(kv(&k), Some(v), opts.no_cache);
        }
        Ok(())
    }

    /// Whether the key existed.
    pub fn delete(&self, key: &str) -> Result<bool, StorageError> {
        limits::check_key(key)?;
        let mut turn = self.turn();
        let s = kv(key);
        let existed = {
            let layers = [&*turn];
            View {
                store: &self.store,
                id: &self.id,
                layers: &layers,
            }
            .get(&s, false)?
            .is_some()
        };
        turn.write(s, None, false);
        Ok(existed)
    }

    /// How many of the (distinct) keys existed.
    pub fn delete_many(&self, keys: &[String]) -> Result<usize, StorageError> {
        let mut turn = self.turn();
        let n = {
            let layers = [&*turn];
            ops::existing(
                &View {
                    store: &self.store,
                    id: &self.id,
                    layers: &layers,
                },
                keys,
            )?
        };
        for k in keys {
            turn.write(kv(k), None, false);
        }
        Ok(n)
    }

    /// Entries in UTF-8 key order (reversed with `reverse`), this turn's writes included.
    /// Lists everything it selects: the caller bounds the size with `limit`.
    pub fn list(&self, opts: &ListOptions) -> Result<Vec<(String, Bytes)>, StorageError> {
        self.with_view(|v| ops::list(v, opts))
    }

    /// Deletes every KV key of the object (in this turn's batch). Like Cloudflare's, it leaves
    /// the alarm alone, and it leaves the SQL section to the SQL engine
    /// ([`Self::raw_delete_range`]).
    pub fn delete_all(&self) -> Result<(), StorageError> {
        self.raw_delete_range(Section::Kv, b"", None)
    }

    /// The alarm slot (ms since epoch), this turn's change included.
    pub fn get_alarm(&self) -> Result<Option<i64>, StorageError> {
        self.with_view(|v| v.alarm())
    }

    /// Replaces the alarm slot (in this turn's batch). `at_ms` must be > 0.
    pub fn set_alarm(&self, at_ms: i64) -> Result<(), StorageError> {
        ops::check_alarm(at_ms)?;
        self.turn().alarm = Some(Some(at_ms));
        Ok(())
    }

    /// Empties the alarm slot (in this turn's batch).
    pub fn delete_alarm(&self) -> Result<(), StorageError> {
        self.turn().alarm = Some(None);
        Ok(())
    }

    /// Opens a transaction: an overlay above this turn. [`Transaction::commit`] merges it into
    /// the turn; [`Transaction::rollback`] (or dropping it) discards it.
    pub fn transaction(&self) -> Transaction<'_> {
        Transaction::new(self)
    }

    /// Ends the turn: commits the buffered batch to fjall atomically (visible at once) and hands
    /// it to the group committer. `None` if nothing was written this turn. The [`Commit`]
    /// resolves when the batch is durable per the node's durability, or errors.
    pub fn flush(&self) -> Option<Commit> {
        let turn = std::mem::take(&mut *self.turn());
        if turn.is_empty() {
            return None;
        }
        Some(self.store.commit_turn(&self.id, turn))
    }

    /// Whether this turn has unflushed writes.
    pub fn has_pending(&self) -> bool {
        !self.turn().is_empty()
    }

    /// Drops this turn's unflushed writes (e.g. when the object is reset).
    pub fn discard(&self) {
        *self.turn() = Turn::default();
    }

    /// A key of another engine's section (SQL pages...), this turn's writes included. No
    /// limits apply to raw keys and values.
    pub fn raw_get(&self, section: Section, key: &[u8]) -> Result<Option<Bytes>, StorageError> {
        self.with_view(|v| v.get(&keys::suffix(section, key), false))
    }

    /// Buffers a raw write in this turn's batch (atomic with the KV writes of the turn).
    pub fn raw_put(&self, section: Section, key: &[u8], value: Bytes) {
        self.turn()
            .write(keys::suffix(section, key), Some(value), false);
    }

    /// Buffers a raw delete in this turn's batch.
    pub fn raw_delete(&self, section: Section, key: &[u8]) {
        self.turn().write(keys::suffix(section, key), None, false);
    }

    /// Entries of `section` with `start <= key < end` (no end: to the end of the section), in
    /// key order, this turn's writes included.
    pub fn raw_range(
        &self,
        section: Section,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> Result<Vec<(Vec<u8>, Bytes)>, StorageError> {
        let Some(r) = SuffixRange::between(section, start, end) else {
            return Ok(Vec::new());
        };
        let out = self.with_view(|v| v.range(&r, false, None, false))?;
        Ok(out
            .into_iter()
            .map(|(mut k, v)| (k.split_off(1), v))
            .collect())
    }

    /// Deletes every key of `section` with `start <= key < end` in this turn's batch.
    pub fn raw_delete_range(
        &self,
        section: Section,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> Result<(), StorageError> {
        let Some(r) = SuffixRange::between(section, start, end) else {
            return Ok(());
        };
        let mut turn = self.turn();
        let committed = {
            let layers: [&Turn; 0] = [];
            View {
                store: &self.store,
                id: &self.id,
                layers: &layers,
            }
            .committed_keys(&r)?
        };
        let pending: Vec<Vec<u8>> = turn
            .writes
            .range((r.lo.clone(), r.hi.clone()))
            .map(|(k, _)| k.clone())
            .collect();
        for k in committed.into_iter().chain(pending) {
            turn.write(k, None, false);
        }
        Ok(())
    }
}

impl Store {
    /// Writes a turn as one atomic fjall batch and registers it with the group committer.
    pub(crate) fn commit_turn(&self, id: &ObjectId, turn: Turn) -> Commit {
        if let Some(e) = self.committer.failure() {
            return self.committer.ready(Err(e));
        }
        let mut batch = self.db.batch();
        for (suffix, v) in &turn.writes {
            let k = keys::full(id, suffix);
            match v {
                Some(v) => batch.insert(&self.data, k, v.clone()),
                None => batch.remove(&self.data, k),
            }
        }
        match turn.alarm {
            Some(Some(at)) => match crate::alarm::encode_alarm(at) {
                Ok(rec) => batch.insert(&self.alarms, id.to_vec(), rec),
                Err(e) => return self.committer.ready(Err(e)),
            },
            Some(None) => batch.remove(&self.alarms, id.to_vec()),
            None => {}
        }
        if self.sync_each_batch {
            batch = batch.durability(Some(self.persist_mode()));
        }
        let result = batch.commit();
        // Refresh the cache with exactly what fjall now holds (or forget the keys if the
        // commit failed, so no reader trusts a value from before an unknown outcome).
        for (suffix, v) in turn.writes {
            let k = keys::full(id, &suffix);
            if result.is_ok() && !turn.uncached.contains(&suffix) {
                self.cache.write(k, v);
            } else {
                self.cache.invalidate(&k);
            }
        }
        match result {
            Err(e) => self.committer.ready(Err(e.into())),
            Ok(()) if self.sync_each_batch => self.committer.ready(Ok(())),
            Ok(()) => self.committer.committed(),
        }
    }
}
