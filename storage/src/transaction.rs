//! Transactions: an overlay of writes above the object's turn, with rollback.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;

use crate::alarm::AlarmState;
use crate::error::StorageError;
use crate::limits;
use crate::list::ListOptions;
use crate::object::{kv, ops, ObjectStorage, ReadOptions};
use crate::overlay::{Turn, View};

/// A transaction on one object (`ctx.storage.transaction(fn)`): reads see its own writes over
/// the turn's; [`Self::commit`] merges its writes into the turn batch (so they flush together,
/// atomically); [`Self::rollback`] discards them, and later calls fail. Dropping it without
/// committing discards it too.
pub struct Transaction<'a> {
    obj: &'a ObjectStorage,
    layer: Mutex<Turn>,
    rolled_back: AtomicBool,
}

impl<'a> Transaction<'a> {
    pub(crate) fn new(obj: &'a ObjectStorage) -> Self {
        Self {
            obj,
            layer: Mutex::new(Turn::default()),
            rolled_back: AtomicBool::new(false),
        }
    }

    fn layer(&self) -> MutexGuard<'_, Turn> {
        self.layer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn live(&self, op: &'static str) -> Result<(), StorageError> {
        if self.rolled_back.load(Ordering::Relaxed) {
            return Err(StorageError::RolledBack { op });
        }
        Ok(())
    }

    /// Runs `f` with a view over the transaction's layer, the turn and the in-flight batches.
    fn with<R>(&self, f: impl FnOnce(&View<'_>) -> R) -> R {
        let layer = self.layer();
        self.obj.with_layers(Some(&layer), f)
    }

    // Same semantics and limits as the `ObjectStorage` methods of the same names; after
    // `rollback` every call fails with "Cannot <op> on rolled back transaction".

    pub fn get(&self, key: &str) -> Result<Option<Bytes>, StorageError> {
        self.get_with(key, ReadOptions::default())
    }

    pub fn get_with(&self, key: &str, opts: ReadOptions) -> Result<Option<Bytes>, StorageError> {
        self.live("get")?;
        limits::check_key(key)?;
        self.with(|v| v.get(&kv(key), opts.no_cache))
    }

    pub fn get_many(&self, keys: &[String]) -> Result<Vec<(String, Bytes)>, StorageError> {
        self.live("get")?;
        self.with(|v| ops::get_many(v, keys, ReadOptions::default()))
    }

    pub fn put(&self, key: &str, value: Bytes) -> Result<(), StorageError> {
        self.live("put")?;
        limits::check_key(key)?;
        limits::check_value(&value)?;
        self.layer().write(kv(key), Some(value), false);
        Ok(())
    }

    pub fn put_many(&self, entries: Vec<(String, Bytes)>) -> Result<(), StorageError> {
        self.live("put")?;
        ops::check_entries(&entries)?;
        let mut layer = self.layer();
        for (k, v) in entries {
            layer.write(kv(&k), Some(v), false);
        }
        Ok(())
    }

    pub fn delete(&self, key: &str) -> Result<bool, StorageError> {
        self.live("delete")?;
        limits::check_key(key)?;
        let existed = self.with(|v| v.get(&kv(key), false))?.is_some();
        self.layer().write(kv(key), None, false);
        Ok(existed)
    }

    pub fn delete_many(&self, keys: &[String]) -> Result<usize, StorageError> {
        self.live("delete")?;
        let n = self.with(|v| ops::existing(v, keys))?;
        let mut layer = self.layer();
        for k in keys {
            layer.write(kv(k), None, false);
        }
        Ok(n)
    }

    pub fn list(&self, opts: &ListOptions) -> Result<Vec<(String, Bytes)>, StorageError> {
        self.live("list")?;
        self.with(|v| ops::list(v, opts))
    }

    /// Always fails, as on Cloudflare.
    pub fn delete_all(&self) -> Result<(), StorageError> {
        Err(StorageError::DeleteAllInTransaction)
    }

    pub fn get_alarm(&self) -> Result<Option<i64>, StorageError> {
        self.live("getAlarm")?;
        Ok(self.with(|v| v.alarm())?.map(|s| s.scheduled_ms))
    }

    pub fn set_alarm(&self, at_ms: i64) -> Result<(), StorageError> {
        self.live("setAlarm")?;
        ops::check_alarm(at_ms)?;
        self.layer().alarm = Some(Some(AlarmState::at(at_ms)));
        Ok(())
    }

    pub fn delete_alarm(&self) -> Result<(), StorageError> {
        self.live("deleteAlarm")?;
        self.layer().alarm = Some(None);
        Ok(())
    }

    /// Discards every write of the transaction; later calls fail.
    pub fn rollback(&self) {
        self.rolled_back.store(true, Ordering::Relaxed);
        *self.layer() = Turn::default();
    }

    pub fn is_rolled_back(&self) -> bool {
        self.rolled_back.load(Ordering::Relaxed)
    }

    /// Merges the writes into the object's turn batch. A no-op after [`Self::rollback`].
    pub fn commit(self) {
        if self.is_rolled_back() {
            return;
        }
        let layer = std::mem::take(&mut *self.layer());
        self.obj.turn().absorb(layer);
    }
}
