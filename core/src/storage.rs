//! [`Storage`]: an object's `ctx.storage`, i.e. [`cinder_storage::ObjectStorage`] wrapped so
//! that every call drives the object's gates.
//!
//! - A read locks the input gate until its result has been handed back, so no other event runs
//!   between "read" and "act on what was read". What memory can answer (the object's pending
//!   writes, the node's read cache) is answered at once; the rest is read from fjall on tokio's
//!   blocking pool, with the gate held, so a cold read never stalls the executor thread (and
//!   the other objects on it).
//! - A write is buffered in the current turn's batch and locks the output gate (unless
//!   `allow_unconfirmed`); the first write of a turn schedules a flush that runs once the
//!   object yields, so writes with no await between them commit as one atomic batch. The flush
//!   only queues the batch for the store's committer threads. The lock is confirmed when the
//!   batch is durable; if it fails, the object is reset.
//! - After a reset every call fails (`StorageError::Reset`): nothing the old instance does
//!   reaches the disk.
//!
//! Two kinds of call still read on the calling thread when memory cannot answer: `delete` /
//! `delete_many` (they report synchronously whether the keys existed) and reads through a
//! [`cinder_storage::Transaction`] (a synchronous API). Both lock nothing and cannot interleave,
//! but a cold key there costs the executor thread a fjall read.
//!
//! A host that issues a read with `allow_concurrency: true` and wants the read's continuation
//! to run before any other event of the object holds its own [`crate::InputLock`] from the call
//! until that continuation has run (see [`crate::gate`]).

use bytes::Bytes;
use cinder_storage::{
    AlarmState, ListOptions, ObjectStorage, Prepared, ReadOptions as RawReadOptions, StorageError,
};

use crate::context::ActorContext;

/// Options of reads (`get`, `get_many`, `list`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// `allowConcurrency: true`: do not lock the input gate; other events may run while the
    /// read is outstanding.
    pub allow_concurrency: bool,
    /// `noCache: true`: bypass the node's read cache.
    pub no_cache: bool,
}

/// Options of writes (`put`, `delete`...).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// `allowUnconfirmed: true`: messages sent after this write need not wait for it to be
    /// durable. It is still written in the same batch, and `sync()` still waits for it.
    pub allow_unconfirmed: bool,
}

/// The storage of a live object, gated. Cheap to clone; `!Send`.
#[derive(Clone)]
pub struct Storage {
    pub(crate) ctx: ActorContext,
}

impl Storage {
    async fn read<T: Send + 'static>(
        &self,
        opts: ReadOptions,
        prepare: impl FnOnce(&ObjectStorage) -> Prepared<T>,
    ) -> Result<T, StorageError> {
        self.ctx.check_live()?;
        // The explorer's planted bug (tests only): reads that skip the lock.
        #[cfg(test)]
        let skip = crate::tests::explore::read_skips_the_lock(self.ctx.namespace());
        #[cfg(not(test))]
        let skip = false;
        let lock = (!opts.allow_concurrency && !skip).then(|| self.ctx.inner.input.lock());
        let result = match prepare(&self.ctx.inner.raw) {
            Prepared::Ready(r) => {
                // The result is delivered asynchronously, as a JS promise's is: other tasks of
                // the thread run now, but while `lock` lives no other code of this object does.
                tokio::task::yield_now().await;
                r
            }
            Prepared::Cold(cold) => match tokio::task::spawn_blocking(move || cold.run()).await {
                Ok(r) => r,
                Err(e) => Err(StorageError::Engine(format!(
                    "storage read task failed: {e}"
                ))),
            },
        };
        drop(lock);
        result
    }

    fn write<T>(
        &self,
        opts: WriteOptions,
        op: impl FnOnce(&ObjectStorage) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        self.ctx.check_live()?;
        // A failed call (limit error) changes nothing, so it schedules nothing either.
        let v = op(&self.ctx.inner.raw)?;
        self.ctx.note_write(opts.allow_unconfirmed);
        Ok(v)
    }

    /// `get(key)`.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, StorageError> {
        self.get_with(key, ReadOptions::default()).await
    }

    /// `get(key, options)`.
    pub async fn get_with(
        &self,
        key: &str,
        opts: ReadOptions,
    ) -> Result<Option<Bytes>, StorageError> {
        let raw = RawReadOptions {
            no_cache: opts.no_cache,
        };
        self.read(opts, |s| s.get_prepared(key, raw)).await
    }

    /// `get(keys[])`: the keys found, in key order.
    pub async fn get_many(
        &self,
        keys: &[String],
        opts: ReadOptions,
    ) -> Result<Vec<(String, Bytes)>, StorageError> {
        let raw = RawReadOptions {
            no_cache: opts.no_cache,
        };
        self.read(opts, |s| s.get_many_prepared(keys, raw)).await
    }

    /// `list(options)`.
    pub async fn list(
        &self,
        list: &ListOptions,
        opts: ReadOptions,
    ) -> Result<Vec<(String, Bytes)>, StorageError> {
        self.read(opts, |s| s.list_prepared(list)).await
    }

    /// `put(key, value)`.
    pub fn put(&self, key: &str, value: Bytes) -> Result<(), StorageError> {
        self.put_with(key, value, WriteOptions::default())
    }

    /// `put(key, value, options)`.
    pub fn put_with(
        &self,
        key: &str,
        value: Bytes,
        opts: WriteOptions,
    ) -> Result<(), StorageError> {
        self.write(opts, |s| s.put(key, value))
    }

    /// `put(entries)`: all or nothing.
    pub fn put_many(
        &self,
        entries: Vec<(String, Bytes)>,
        opts: WriteOptions,
    ) -> Result<(), StorageError> {
        self.write(opts, |s| s.put_many(entries))
    }

    /// `delete(key)`: whether it existed.
    pub fn delete(&self, key: &str) -> Result<bool, StorageError> {
        self.delete_with(key, WriteOptions::default())
    }

    /// `delete(key, options)`.
    pub fn delete_with(&self, key: &str, opts: WriteOptions) -> Result<bool, StorageError> {
        self.write(opts, |s| s.delete(key))
    }

    /// `delete(keys[])`: how many existed.
    pub fn delete_many(&self, keys: &[String], opts: WriteOptions) -> Result<usize, StorageError> {
        self.write(opts, |s| s.delete_many(keys))
    }

    /// `deleteAll()`. Leaves the alarm alone, as on Cloudflare.
    pub fn delete_all(&self, opts: WriteOptions) -> Result<(), StorageError> {
        self.write(opts, |s| s.delete_all())
    }

    /// `transaction(fn)` for a synchronous body: `f` runs against a transaction overlay; `Ok`
    /// commits it into the turn batch, `Err` (or `txn.rollback()`) discards it. Being
    /// synchronous, nothing can interleave with it, which is the input-gate guarantee a
    /// transaction needs. (`transactionSync` in the SQL API has the same shape.)
    pub fn transaction<T, E>(
        &self,
        f: impl FnOnce(&cinder_storage::Transaction<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let raw = &self.ctx.inner.raw;
        let alarm_before = raw.alarm_state();
        let txn = raw.transaction();
        let out = f(&txn);
        // After a reset nothing is merged: the instance's writes are fenced off.
        if out.is_ok() && !txn.is_rolled_back() && self.ctx.check_live().is_ok() {
            txn.commit();
            self.ctx.note_write(false);
            self.after_transaction(alarm_before);
        }
        out
    }

    /// `transaction(async txn => ...)`: like [`Storage::transaction`], but the body may await.
    /// The input gate stays locked (by the caller) until the body is done, so no other code of
    /// the object runs meanwhile and nobody else writes; I/O the body awaits still completes
    /// (it belongs to the transaction, as in a critical section).
    pub async fn transaction_async<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: for<'t> FnOnce(
            &'t cinder_storage::Transaction<'t>,
        ) -> futures::future::LocalBoxFuture<'t, Result<T, E>>,
    {
        let _lock = self.ctx.inner.input.lock();
        let raw = &self.ctx.inner.raw;
        let alarm_before = raw.alarm_state();
        let txn = raw.transaction();
        let out = f(&txn).await;
        // After a reset (also one during the body) nothing is merged: the writes are fenced.
        if out.is_ok() && !txn.is_rolled_back() && self.ctx.check_live().is_ok() {
            txn.commit();
            self.ctx.note_write(false);
            self.after_transaction(alarm_before);
        }
        out
    }

    /// A transaction may have set or deleted the alarm (`txn.setAlarm()`): tell the scheduler
    /// (once the batch is durable), as [`Storage::set_alarm`] does.
    fn after_transaction(&self, before: Result<Option<AlarmState>, StorageError>) {
        let after = self.ctx.inner.raw.alarm_state();
        if let (Ok(before), Ok(after)) = (before, after) {
            if before != after {
                if after.is_some() {
                    self.ctx.write_meta();
                }
                self.ctx.note_alarm(after);
            }
        }
    }

    /// `sync()`: resolves when every write issued so far (including `allow_unconfirmed` ones)
    /// is durable and the input gate admits the caller; fails if one of the writes failed (the
    /// object is then being reset).
    pub async fn sync(&self) -> Result<(), crate::gate::GateBroken> {
        self.ctx.inner.all_writes.wait().await?;
        self.ctx.inner.input.wait().await
    }

    /// `getAlarm()`: the scheduled time in ms since the epoch. `None` inside `alarm()` for the
    /// alarm being run (unless the handler set a new one).
    pub async fn get_alarm(&self) -> Result<Option<i64>, StorageError> {
        let running = self.ctx.inner.running_alarm.get();
        let slot = self.alarm_state().await?.map(|s| s.scheduled_ms);
        Ok(match (slot, running) {
            (Some(t), Some(r)) if t == r => None,
            (slot, _) => slot,
        })
    }

    /// The alarm slot with its retry state (a gated read).
    pub(crate) async fn alarm_state(&self) -> Result<Option<AlarmState>, StorageError> {
        self.read(ReadOptions::default(), |s| s.alarm_prepared())
            .await
    }

    /// `setAlarm(at_ms)`: replaces the object's alarm (written in the turn batch, like any
    /// write). `at_ms` must be > 0; a time in the past fires at once.
    pub fn set_alarm(&self, at_ms: i64) -> Result<(), StorageError> {
        self.set_alarm_with(at_ms, WriteOptions::default())
    }

    /// `setAlarm(at_ms, options)`.
    pub fn set_alarm_with(&self, at_ms: i64, opts: WriteOptions) -> Result<(), StorageError> {
        self.set_alarm_state(AlarmState::at(at_ms), opts)
    }

    /// Writes the full alarm slot (a retry keeps the scheduled time and records the count).
    pub(crate) fn set_alarm_state(
        &self,
        state: AlarmState,
        opts: WriteOptions,
    ) -> Result<(), StorageError> {
        self.write(opts, |s| s.set_alarm_state(state))?;
        self.ctx.write_meta();
        // The scheduler learns of it once the batch is durable.
        self.ctx.note_alarm(Some(state));
        Ok(())
    }

    /// `deleteAlarm()`.
    pub fn delete_alarm(&self) -> Result<(), StorageError> {
        self.delete_alarm_with(WriteOptions::default())
    }

    /// `deleteAlarm(options)`.
    pub fn delete_alarm_with(&self, opts: WriteOptions) -> Result<(), StorageError> {
        self.write(opts, |s| s.delete_alarm())?;
        self.ctx.note_alarm(None);
        Ok(())
    }

    /// Number of batches this instance has flushed. Diagnostics: shows write coalescing.
    pub fn flush_count(&self) -> u64 {
        self.ctx.inner.flushes.get()
    }

    /// The underlying handle, for engines that write their own sections (SQL pages). Reads
    /// through it do not lock the input gate and writes do not lock the output gate: after a
    /// raw write call [`Storage::note_raw_write`], and hold [`crate::InputGate::lock`] around
    /// reads that must not interleave.
    pub fn raw(&self) -> &ObjectStorage {
        &self.ctx.inner.raw
    }

    /// Tells the gates about a write made through [`Storage::raw`]: joins the turn batch and
    /// its output-gate lock, exactly as [`Storage::put`] does.
    pub fn note_raw_write(&self, opts: WriteOptions) {
        self.ctx.note_write(opts.allow_unconfirmed);
    }
}
