//! The per-object storage handle: `ctx.storage` semantics over the shared store.
//!
//! Two ways to read. The plain methods (`get`, `list`...) answer on the calling thread and may
//! block on disk: for engines that must read synchronously (the SQL VFS reads pages inside
//! SQLite calls). The `*_prepared` methods answer at once from memory (the object's pending
//! writes, the read cache) when they can, and otherwise return a [`ColdRead`] to run on a
//! thread that may block, so an executor thread never waits for the disk.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use crate::alarm::AlarmState;
use crate::cache::FillToken;
use crate::commit::Commit;
use crate::error::StorageError;
use crate::keys::{self, ObjectId, Section};
use crate::limits;
use crate::list::{self, ListOptions, SuffixRange};
use crate::overlay::{InFlight, Layer, Turn, View};
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
/// the turn: the whole buffer becomes one atomic fjall batch, queued for the committer; this
/// handle (and its clones) keep reading it from memory until fjall holds it.
#[derive(Clone)]
pub struct ObjectStorage {
    pub(crate) store: Arc<Store>,
    pub(crate) id: ObjectId,
    turn: Arc<Mutex<Turn>>,
    /// Flushed batches not yet applied to fjall, oldest first.
    inflight: Arc<Mutex<VecDeque<Arc<InFlight>>>>,
}

/// The result of a `*_prepared` read: answered from memory, or a read that needs fjall.
pub enum Prepared<T> {
    /// Answered without touching the disk.
    Ready(Result<T, StorageError>),
    /// Needs fjall: run it where blocking is fine (e.g. `tokio::task::spawn_blocking`).
    Cold(ColdRead<T>),
}

impl<T> Prepared<T> {
    /// Runs the read to the end on the calling thread (which may block).
    pub fn run_here(self) -> Result<T, StorageError> {
        match self {
            Prepared::Ready(r) => r,
            Prepared::Cold(c) => c.run(),
        }
    }
}

/// The part of a read that needs fjall. `Send`: move it to a thread that may block. It sees
/// the object's pending writes as they were when it was prepared.
#[must_use = "a cold read does nothing until run"]
pub struct ColdRead<T>(Box<dyn FnOnce() -> Result<T, StorageError> + Send>);

impl<T> ColdRead<T> {
    /// Reads (may block on disk).
    pub fn run(self) -> Result<T, StorageError> {
        (self.0)()
    }
}

impl<T> std::fmt::Debug for ColdRead<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ColdRead")
    }
}

/// A point read answered from memory, or the token to fill the cache after reading fjall.
enum Lookup {
    Hit(Option<Bytes>),
    Miss(Option<FillToken>),
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
            inflight: Arc::new(Mutex::new(VecDeque::new())),
        }
    }

    pub(crate) fn turn(&self) -> MutexGuard<'_, Turn> {
        self.turn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The in-flight batches fjall does not hold yet, newest first (applied ones are dropped:
    /// fjall and the cache answer for them now).
    fn inflight(&self) -> Vec<Arc<InFlight>> {
        let mut q = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        while q.front().is_some_and(|b| b.is_applied()) {
            q.pop_front();
        }
        q.iter()
            .rev()
            .filter(|b| !b.is_applied())
            .cloned()
            .collect()
    }

    /// Runs `f` with a view of the committed state plus, top first, `top` (a transaction's
    /// layer), this turn's writes and the in-flight batches.
    pub(crate) fn with_layers<R>(&self, top: Option<&Turn>, f: impl FnOnce(&View<'_>) -> R) -> R {
        let turn = self.turn();
        let inflight = self.inflight();
        let mut layers: Vec<&Turn> = Vec::with_capacity(2 + inflight.len());
        layers.extend(top);
        layers.push(&turn);
        layers.extend(inflight.iter().map(|b| b.turn()));
        f(&View {
            store: &self.store,
            id: &self.id,
            layers: &layers,
        })
    }

    /// Runs `f` with a view of the committed state plus this turn's and in-flight writes.
    fn with_view<R>(&self, f: impl FnOnce(&View<'_>) -> R) -> R {
        self.with_layers(None, f)
    }

    /// A point read from memory: pending writes, then the cache.
    fn lookup(&self, suffix: &[u8], no_cache: bool) -> Lookup {
        let hit = self.with_view(|v| v.layers.iter().find_map(|l| l.writes.get(suffix).cloned()));
        if let Some(v) = hit {
            return Lookup::Hit(v);
        }
        if no_cache {
            return Lookup::Miss(None);
        }
        match self.store.cache.lookup(&keys::full(&self.id, suffix)) {
            Ok(v) => Lookup::Hit(v),
            Err(token) => Lookup::Miss(Some(token)),
        }
    }

    /// `get(key)` without blocking: see [`Prepared`].
    pub fn get_prepared(&self, key: &str, opts: ReadOptions) -> Prepared<Option<Bytes>> {
        if let Err(e) = limits::check_key(key).and_then(|()| self.store.check_failed()) {
            return Prepared::Ready(Err(e));
        }
        match self.lookup(&kv(key), opts.no_cache) {
            Lookup::Hit(v) => Prepared::Ready(Ok(v)),
            Lookup::Miss(token) => {
                let store = self.store.clone();
                let full = keys::full(&self.id, &kv(key));
                Prepared::Cold(ColdRead(Box::new(move || cold_get(&store, full, token))))
            }
        }
    }

    /// `get(keys[])` without blocking: found keys only, in key order, each once.
    pub fn get_many_prepared(
        &self,
        keys: &[String],
        opts: ReadOptions,
    ) -> Prepared<Vec<(String, Bytes)>> {
        let checked = limits::check_count(keys.len())
            .and_then(|()| keys.iter().try_for_each(|k| limits::check_key(k)))
            .and_then(|()| self.store.check_failed());
        if let Err(e) = checked {
            return Prepared::Ready(Err(e));
        }
        let unique: BTreeSet<&str> = keys.iter().map(String::as_str).collect();
        let mut found = Vec::with_capacity(unique.len());
        let mut misses = Vec::new();
        for k in unique {
            match self.lookup(&kv(k), opts.no_cache) {
                Lookup::Hit(Some(v)) => found.push((k.to_owned(), v)),
                Lookup::Hit(None) => {}
                Lookup::Miss(token) => misses.push((k.to_owned(), token)),
            }
        }
        if misses.is_empty() {
            return Prepared::Ready(Ok(found));
        }
        let store = self.store.clone();
        let id = self.id;
        Prepared::Cold(ColdRead(Box::new(move || {
            for (k, token) in misses {
                if let Some(v) = cold_get(&store, keys::full(&id, &kv(&k)), token)? {
                    found.push((k, v));
                }
            }
            found.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(found)
        })))
    }

    /// `list(options)` without blocking the caller: always a [`ColdRead`] (a scan reads
    /// fjall) unless the options are invalid or select nothing.
    pub fn list_prepared(&self, opts: &ListOptions) -> Prepared<Vec<(String, Bytes)>> {
        if let Err(e) = self.store.check_failed() {
            return Prepared::Ready(Err(e));
        }
        let range = match list::compile(opts) {
            Err(e) => return Prepared::Ready(Err(e)),
            Ok(None) => return Prepared::Ready(Ok(Vec::new())),
            Ok(Some(r)) => r,
        };
        // What is pending now, as the scan must see it: a copy of this turn's writes in the
        // range (values are shared, not copied) and the in-flight batches themselves.
        let mut turn = Turn::default();
        let pending: Layer = self
            .turn()
            .writes
            .range((range.lo.clone(), range.hi.clone()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        turn.writes = pending;
        let inflight = self.inflight();
        let store = self.store.clone();
        let id = self.id;
        let opts = opts.clone();
        Prepared::Cold(ColdRead(Box::new(move || {
            let mut layers: Vec<&Turn> = vec![&turn];
            layers.extend(inflight.iter().map(|b| b.turn()));
            ops::list(
                &View {
                    store: &store,
                    id: &id,
                    layers: &layers,
                },
                &opts,
            )
        })))
    }

    /// The alarm slot with its retry state, without blocking: see [`Prepared`].
    pub fn alarm_prepared(&self) -> Prepared<Option<AlarmState>> {
        if let Err(e) = self.store.check_failed() {
            return Prepared::Ready(Err(e));
        }
        let pending = self.with_view(|v| v.layers.iter().find_map(|l| l.alarm));
        match pending {
            Some(a) => Prepared::Ready(Ok(a)),
            None => {
                let store = self.store.clone();
                let id = self.id;
                Prepared::Cold(ColdRead(Box::new(move || store.read_alarm(&id))))
            }
        }
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
        let s = kv(key);
        let existed = self.with_view(|v| v.get(&s, false))?.is_some();
        self.turn().write(s, None, false);
        Ok(existed)
    }

    /// How many of the (distinct) keys existed.
    pub fn delete_many(&self, keys: &[String]) -> Result<usize, StorageError> {
        let n = self.with_view(|v| ops::existing(v, keys))?;
        let mut turn = self.turn();
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

    /// The alarm slot (scheduled time, ms since epoch), this turn's change included.
    pub fn get_alarm(&self) -> Result<Option<i64>, StorageError> {
        Ok(self.alarm_state()?.map(|s| s.scheduled_ms))
    }

    /// The alarm slot with its retry state, this turn's change included.
    pub fn alarm_state(&self) -> Result<Option<AlarmState>, StorageError> {
        self.with_view(|v| v.alarm())
    }

    /// Replaces the alarm slot (in this turn's batch). `at_ms` must be > 0.
    pub fn set_alarm(&self, at_ms: i64) -> Result<(), StorageError> {
        self.set_alarm_state(AlarmState::at(at_ms))
    }

    /// Replaces the alarm slot with a full state (a retry: same scheduled time, a retry count
    /// and the time of the next run). `scheduled_ms` must be > 0.
    pub fn set_alarm_state(&self, state: AlarmState) -> Result<(), StorageError> {
        ops::check_alarm(state.scheduled_ms)?;
        self.turn().alarm = Some(Some(state));
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

    /// Ends the turn: queues the buffered batch for the committer, which writes it into fjall
    /// atomically and then makes it durable with the group. Returns at once, without touching
    /// fjall. `None` if nothing was written this turn. This handle reads the batch from memory
    /// until fjall holds it; other handles see it once it is applied
    /// ([`Commit::is_applied`]). The [`Commit`] resolves when the batch is durable per the
    /// node's durability, or errors.
    pub fn flush(&self) -> Option<Commit> {
        let mut guard = self.turn();
        let turn = std::mem::take(&mut *guard);
        if turn.is_empty() {
            return None;
        }
        if let Err(e) = self.store.check_failed() {
            return Some(Commit::ready(Err(e)));
        }
        let batch = Arc::new(InFlight::new(turn));
        // Moved to the in-flight layers before the turn lock goes: no reader sees a gap.
        self.inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(batch.clone());
        drop(guard);
        Some(self.store.committer.enqueue(self.id, batch))
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
        let inflight = self.inflight();
        let existing = {
            let layers: Vec<&Turn> = inflight.iter().map(|b| b.turn()).collect();
            View {
                store: &self.store,
                id: &self.id,
                layers: &layers,
            }
            .existing_keys(&r)?
        };
        let pending: Vec<Vec<u8>> = turn
            .writes
            .range((r.lo.clone(), r.hi.clone()))
            .map(|(k, _)| k.clone())
            .collect();
        for k in existing.into_iter().chain(pending) {
            turn.write(k, None, false);
        }
        Ok(())
    }
}

/// Reads one key from fjall and fills the cache with a copy (unless `token` is `None`:
/// `no_cache`).
fn cold_get(
    store: &Store,
    full: Vec<u8>,
    token: Option<FillToken>,
) -> Result<Option<Bytes>, StorageError> {
    store.check_failed()?;
    let v = store.read_uncached(&full)?;
    if let Some(token) = token {
        store.cache.fill(token, full, v.clone());
    }
    Ok(v)
}
