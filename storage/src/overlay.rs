//! Reads through in-memory write layers over fjall.
//!
//! An object's unflushed turn batch, and above it an open transaction, are layers of pending
//! writes (`None` = deleted). Every read looks at the layers top-down and falls through to the
//! committed state; ranges merge the layers' entries with fjall's iterator.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use bytes::Bytes;

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
    /// `Some(None)`: alarm deleted; `Some(Some(t))`: set to t; `None`: untouched.
    pub(crate) alarm: Option<Option<i64>>,
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

/// Read access to one object's data through a stack of layers, top first.
pub(crate) struct View<'a> {
    pub(crate) store: &'a Store,
    pub(crate) id: &'a ObjectId,
    pub(crate) layers: &'a [&'a Turn],
}

impl View<'_> {
    pub(crate) fn get(&self, suffix: &[u8], no_cache: bool) -> Result<Option<Bytes>, StorageError> {
        for l in self.layers {
            if let Some(v) = l.writes.get(suffix) {
                return Ok(v.clone());
            }
        }
        self.store.read(keys::full(self.id, suffix), no_cache)
    }

    pub(crate) fn alarm(&self) -> Result<Option<i64>, StorageError> {
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
        let db = self.store.data.range((full(&r.lo), full(&r.hi)));
        let epochs = (!no_cache).then(|| self.store.cache.epochs());
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

    /// Suffixes of every committed key in `r` (for deleting a whole range).
    pub(crate) fn committed_keys(&self, r: &SuffixRange) -> Result<Vec<Vec<u8>>, StorageError> {
        let full = |b: &Bound<Vec<u8>>| match b {
            Bound::Included(s) => Bound::Included(keys::full(self.id, s)),
            Bound::Excluded(s) => Bound::Excluded(keys::full(self.id, s)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let mut out = Vec::new();
        for g in self.store.data.range((full(&r.lo), full(&r.hi))) {
            let k = g.key()?;
            out.push(k[ID_LEN..].to_vec());
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
