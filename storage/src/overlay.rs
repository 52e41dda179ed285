//! Reads through in-memory write layers over fjall.
//!
//! An object's batches that the committer has not written into fjall yet (in flight), above
//! them its unflushed turn batch, and above that an open transaction, are layers of pending
//! writes (`None` = deleted). Every read looks at the layers top-down and falls through to the
//! committed state; ranges merge the layers' entries with fjall's iterator.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use fjall::Readable;

use crate::alarm::AlarmState;
use crate::error::StorageError;
use crate::keys::{self, ObjectId, ID_LEN};
use crate::list::SuffixRange;
use crate::store::Store;

/// Pending writes keyed by suffix (`section ‖ key`); `None` is a delete.
pub(crate) type Layer = BTreeMap<Vec<u8>, Option<Bytes>>;

/// Writes of one turn (or one transaction) not yet handed to fjall.
#[derive(Default, Debug)]
pub(crate) struct Turn {
    pub(crate) writes: Layer,
    /// `Some(None)`: alarm deleted; `Some(Some(s))`: set to s; `None`: untouched.
    pub(crate) alarm: Option<Option<AlarmState>>,
    /// Keys written with `no_cache`: dropped from the read cache at flush, not refreshed.
    pub(crate) uncached: BTreeSet<Vec<u8>>,
}

impl Turn {
    /// Buffers a write; `no_cache` keeps the value out of the read cache after the flush.
    pub(crate) fn write(&mut self, suffix: Vec<u8>, value: Option<Bytes>, no_cache: bool) {
        if no_cache {
            self.uncached.insert(suffix.clone());
        } else {
            self.uncached.remove(&suffix);
        }
        self.writes.insert(suffix, value);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.alarm.is_none()
    }

    /// Applies `upper` on top of this layer (transaction commit).
    pub(crate) fn absorb(&mut self, upper: Turn) {
        for k in upper.writes.keys() {
            self.uncached.remove(k);
        }
        self.uncached.extend(upper.uncached);
        self.writes.extend(upper.writes);
        if upper.alarm.is_some() {
            self.alarm = upper.alarm;
        }
    }
}

/// A flushed batch on its way to fjall. Its object keeps reading it from here until the
/// committer has written it (`applied`), from then on from fjall and the cache.
#[derive(Debug)]
pub(crate) struct InFlight {
    turn: Turn,
    applied: AtomicBool,
}

impl InFlight {
    pub(crate) fn new(turn: Turn) -> InFlight {
        InFlight {
            turn,
            applied: AtomicBool::new(false),
        }
    }

    pub(crate) fn turn(&self) -> &Turn {
        &self.turn
    }

    /// Called by the committer once fjall and the cache hold the batch.
    pub(crate) fn mark_applied(&self) {
        self.applied.store(true, Ordering::Release);
    }

    pub(crate) fn is_applied(&self) -> bool {
        self.applied.load(Ordering::Acquire)
    }
}

/// Read access to one object's data through a stack of layers, top first.
pub(crate) struct View<'a> {
    pub(crate) store: &'a Store,
    pub(crate) id: &'a ObjectId,
    pub(crate) layers: &'a [&'a Turn],
}

impl View<'_> {
    pub(crate) fn get(&self, suffix: &[u8], no_cache: bool) -> Result<Option<Bytes>, StorageError> {
        self.store.check_failed()?;
        for l in self.layers {
            if let Some(v) = l.writes.get(suffix) {
                return Ok(v.clone());
            }
        }
        self.store.read(keys::full(self.id, suffix), no_cache)
    }

    pub(crate) fn alarm(&self) -> Result<Option<AlarmState>, StorageError> {
        self.store.check_failed()?;
        for l in self.layers {
            if let Some(a) = l.alarm {
                return Ok(a);
            }
        }
        self.store.read_alarm(self.id)
    }

    /// Entries in `r` (suffixes), merged over all layers, in order, at most `limit`.
    pub(crate) fn range(
        &self,
        r: &SuffixRange,
        reverse: bool,
        limit: Option<usize>,
        no_cache: bool,
    ) -> Result<Vec<(Vec<u8>, Bytes)>, StorageError> {
        self.store.check_failed()?;
        let bounds = (r.lo.clone(), r.hi.clone());
        // Upper layers win: fold bottom-up.
        let mut overlay: BTreeMap<&[u8], &Option<Bytes>> = BTreeMap::new();
        for l in self.layers.iter().rev() {
            for (k, v) in l.writes.range(bounds.clone()) {
                overlay.insert(k.as_slice(), v);
            }
        }
        let full = |b: &Bound<Vec<u8>>| match b {
            Bound::Included(s) => Bound::Included(keys::full(self.id, s)),
            Bound::Excluded(s) => Bound::Excluded(keys::full(self.id, s)),
            Bound::Unbounded => Bound::Unbounded,
        };
        // Epochs first, then the iterator's snapshot: a write that lands in between bumps an
        // epoch, so what the snapshot read cannot be filled over it.
        let epochs = (!no_cache).then(|| self.store.cache.epochs());
        #[cfg(test)]
        tests_hook::after_epochs();
        // Through a snapshot: a batch the committer is applying right now is seen whole or not
        // at all (fjall's plain reads see its items one by one as they are inserted).
        let db = self
            .store
            .db
            .snapshot()
            .range(&self.store.data, (full(&r.lo), full(&r.hi)));
        let limit = limit.unwrap_or(usize::MAX);
        let mut out = Vec::new();
        let mut committed = Vec::new();
        if reverse {
            merge(
                db.rev(),
                overlay.into_iter().rev(),
                true,
                limit,
                &mut out,
                &mut committed,
            )?;
        } else {
            merge(
                db,
                overlay.into_iter(),
                false,
                limit,
                &mut out,
                &mut committed,
            )?;
        }
        // Only entries that came from fjall may enter the cache: the overlay's are unflushed.
        if let Some(epochs) = epochs {
            for i in committed {
                let (k, v) = &out[i];
                self.store
                    .cache
                    .fill_at(&epochs, keys::full(self.id, k), Some(v.clone()));
            }
        }
        Ok(out)
    }

    /// Suffixes of every key in `r` that exists below the layers' deletes: in fjall or put by
    /// one of the layers (for deleting a whole range).
    pub(crate) fn existing_keys(&self, r: &SuffixRange) -> Result<BTreeSet<Vec<u8>>, StorageError> {
        self.store.check_failed()?;
        let full = |b: &Bound<Vec<u8>>| match b {
            Bound::Included(s) => Bound::Included(keys::full(self.id, s)),
            Bound::Excluded(s) => Bound::Excluded(keys::full(self.id, s)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let mut out = BTreeSet::new();
        let snapshot = self.store.db.snapshot();
        for g in snapshot.range(&self.store.data, (full(&r.lo), full(&r.hi))) {
            let k = g.key()?;
            out.insert(k[ID_LEN..].to_vec());
        }
        for l in self.layers.iter().rev() {
            for (k, v) in l.writes.range((r.lo.clone(), r.hi.clone())) {
                match v {
                    Some(_) => out.insert(k.clone()),
                    None => out.remove(k),
                };
            }
        }
        Ok(out)
    }
}

fn merge<'o>(
    db: impl Iterator<Item = fjall::Guard>,
    overlay: impl Iterator<Item = (&'o [u8], &'o Option<Bytes>)>,
    reverse: bool,
    limit: usize,
    out: &mut Vec<(Vec<u8>, Bytes)>,
    committed: &mut Vec<usize>,
) -> Result<(), StorageError> {
    let mut db = db.peekable_kv();
    let mut ov = overlay.peekable();
    while out.len() < limit {
        let next_db = db.peek_key()?;
        let take_overlay = match (next_db, ov.peek()) {
            (None, None) => break,
            (None, Some(_)) => true,
            (Some(_), None) => false,
            (Some(d), Some((o, _))) => {
                let d = &d[ID_LEN..];
                if d == *o {
                    // The overlay shadows the committed entry.
                    db.skip();
                    true
                } else {
                    (*o < d) != reverse
                }
            }
        };
        if take_overlay {
            if let Some((k, Some(v))) = ov.next() {
                out.push((k.to_vec(), v.clone()));
            }
        } else if let Some((k, v)) = db.take()? {
            committed.push(out.len());
            out.push((k[ID_LEN..].to_vec(), Bytes::from(v)));
        }
    }
    Ok(())
}

/// A fjall iterator with one entry of look-ahead (fjall's guards are consumed by reading).
struct PeekKv<I> {
    inner: I,
    head: Option<(fjall::UserKey, fjall::UserValue)>,
}

trait PeekableKv: Iterator<Item = fjall::Guard> + Sized {
    fn peekable_kv(self) -> PeekKv<Self> {
        PeekKv {
            inner: self,
            head: None,
        }
    }
}

impl<I: Iterator<Item = fjall::Guard>> PeekableKv for I {}

impl<I: Iterator<Item = fjall::Guard>> PeekKv<I> {
    fn fill(&mut self) -> Result<(), StorageError> {
        if self.head.is_none() {
            if let Some(g) = self.inner.next() {
                self.head = Some(g.into_inner()?);
            }
        }
        Ok(())
    }

    fn peek_key(&mut self) -> Result<Option<fjall::UserKey>, StorageError> {
        self.fill()?;
        Ok(self.head.as_ref().map(|(k, _)| k.clone()))
    }

    fn skip(&mut self) {
        self.head = None;
    }

    fn take(&mut self) -> Result<Option<(fjall::UserKey, fjall::UserValue)>, StorageError> {
        self.fill()?;
        Ok(self.head.take())
    }
}

/// Test seam: runs between reading the cache epochs and opening fjall's iterator in
/// [`View::range`], so a unit test can land a write exactly there.
#[cfg(test)]
pub(crate) mod tests_hook {
    use std::cell::RefCell;

    thread_local! {
        static AFTER_EPOCHS: RefCell<Option<Box<dyn FnOnce()>>> = const { RefCell::new(None) };
    }

    pub(crate) fn set_after_epochs(f: impl FnOnce() + 'static) {
        AFTER_EPOCHS.with(|c| *c.borrow_mut() = Some(Box::new(f)));
    }

    pub(super) fn after_epochs() {
        if let Some(f) = AFTER_EPOCHS.with(|c| c.borrow_mut().take()) {
            f();
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use crate::{ListOptions, Section, Store, StoreConfig, StoreTuning};

    #[test]
    fn a_write_landing_during_a_scan_never_leaves_a_stale_cache_entry() {
        let dir = tempfile::tempdir().unwrap();
        let tuning = StoreTuning {
            max_memtable_bytes: Some(64 * 1024),
            ..StoreTuning::default()
        };
        let store = Store::open_tuned(dir.path(), StoreConfig::default(), tuning).unwrap();
        let id = [3u8; 32];
        let writer = store.object(id);
        writer.put("k", Bytes::from_static(b"old")).unwrap();
        writer.flush().unwrap().wait().unwrap();
        // The write lands between the scan's two steps (reading the cache epochs, opening
        // fjall's iterator), after a memtable rotation, so an iterator opened before it cannot
        // see it.
        let w = writer.clone();
        super::tests_hook::set_after_epochs(move || {
            w.raw_put(Section::Sql, b"pad", Bytes::from(vec![1u8; 256 * 1024]));
            w.flush().unwrap().wait().unwrap();
            w.put("k", Bytes::from_static(b"new")).unwrap();
            w.flush().unwrap().wait().unwrap();
        });
        let reader = store.object(id);
        reader.list(&ListOptions::default()).unwrap();
        // Whatever the scan saw, the cache must not answer with a value older than the write.
        assert_eq!(reader.get("k").unwrap().as_deref(), Some(&b"new"[..]));
    }
}
