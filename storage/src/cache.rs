//! The node-wide read cache: recently read and written keys answered from memory.
//!
//! It holds only values that fjall has committed (never a turn's unflushed writes, which the
//! object's own overlay answers), so a rolled-back transaction or a discarded turn can never
//! leave anything behind here. Writers refresh the entry of every key they commit, under the
//! shard lock, right after fjall accepted the batch, and bump the shard's epoch. A reader that
//! missed fills the entry only if the epoch did not move while it read fjall. Together: once
//! `flush()` has returned, no read through the cache returns a value older than that flush,
//! whatever other threads were reading meanwhile.
//!
//! Entries are copies. A value fjall returns is a zero-copy slice of a whole decompressed block
//! (and a value a caller wrote may be a slice of a larger buffer): kept as is, a 10-byte entry
//! charged as 10 + 64 bytes could pin a 4 KiB block, and the budget would bound nothing.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;

const SHARDS: usize = 16;
/// Per-entry bookkeeping charged against the budget besides key and value bytes.
const ENTRY_OVERHEAD: usize = 64;

pub(crate) struct ReadCache {
    shards: Vec<Mutex<Shard>>,
    hasher: std::collections::hash_map::RandomState,
    shard_budget: usize,
}

#[derive(Default)]
struct Shard {
    /// Key → (value or known absence, LRU tick).
    map: HashMap<Vec<u8>, (Option<Bytes>, u64)>,
    /// LRU order: tick → key.
    order: BTreeMap<u64, Vec<u8>>,
    tick: u64,
    bytes: usize,
    /// Bumped by every write; fills carry the epoch they started at.
    epoch: u64,
}

/// A reader's token from [`ReadCache::lookup`]: the shard epoch when fjall was consulted.
pub(crate) struct FillToken {
    shard: usize,
    epoch: u64,
}

fn cost(key: &[u8], value: &Option<Bytes>) -> usize {
    key.len() + value.as_ref().map_or(0, |v| v.len()) + ENTRY_OVERHEAD
}

impl Shard {
    fn remove(&mut self, key: &[u8]) {
        if let Some((v, tick)) = self.map.remove(key) {
            self.order.remove(&tick);
            self.bytes -= cost(key, &v);
        }
    }

    fn insert(&mut self, key: Vec<u8>, value: Option<Bytes>, budget: usize) {
        self.remove(&key);
        let value = value.map(|v| Bytes::copy_from_slice(&v));
        let c = cost(&key, &value);
        if c > budget {
            return;
        }
        while self.bytes + c > budget {
            let Some((_, victim)) = self.order.pop_first() else {
                break;
            };
            if let Some((v, _)) = self.map.remove(&victim) {
                self.bytes -= cost(&victim, &v);
            }
        }
        self.tick += 1;
        self.order.insert(self.tick, key.clone());
        self.map.insert(key, (value, self.tick));
        self.bytes += c;
    }
}

impl ReadCache {
    pub(crate) fn new(budget: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: Default::default(),
            shard_budget: budget / SHARDS,
        }
    }

    fn shard_of(&self, key: &[u8]) -> usize {
        (self.hasher.hash_one(key) as usize) % SHARDS
    }

    fn shard(&self, i: usize) -> MutexGuard<'_, Shard> {
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Ok(entry)` on a hit (`None` inside = known absent); on a miss, a token for [`Self::fill`].
    pub(crate) fn lookup(&self, key: &[u8]) -> Result<Option<Bytes>, FillToken> {
        let i = self.shard_of(key);
        let mut sh = self.shard(i);
        sh.tick += 1;
        let tick = sh.tick;
        let hit = match sh.map.get_mut(key) {
            Some((v, t)) => {
                let old = std::mem::replace(t, tick);
                Some((v.clone(), old))
            }
            None => None,
        };
        match hit {
            Some((v, old)) => {
                if let Some(k) = sh.order.remove(&old) {
                    sh.order.insert(tick, k);
                }
                Ok(v)
            }
            None => Err(FillToken {
                shard: i,
                epoch: sh.epoch,
            }),
        }
    }

    /// Every shard's epoch, for a reader about to scan a range.
    pub(crate) fn epochs(&self) -> Vec<u64> {
        (0..SHARDS).map(|i| self.shard(i).epoch).collect()
    }

    /// [`Self::fill`] with epochs taken by [`Self::epochs`] before the scan.
    pub(crate) fn fill_at(&self, epochs: &[u64], key: Vec<u8>, value: Option<Bytes>) {
        let shard = self.shard_of(&key);
        self.fill(
            FillToken {
                shard,
                epoch: epochs[shard],
            },
            key,
            value,
        );
    }

    /// Remembers what fjall returned, unless a write raced with the read.
    pub(crate) fn fill(&self, token: FillToken, key: Vec<u8>, value: Option<Bytes>) {
        if self.shard_budget == 0 {
            return;
        }
        let mut sh = self.shard(token.shard);
        if sh.epoch == token.epoch {
            sh.insert(key, value, self.shard_budget);
        }
    }

    /// Records a committed write (`None` = deleted). Call after fjall accepted the batch.
    pub(crate) fn write(&self, key: Vec<u8>, value: Option<Bytes>) {
        let i = self.shard_of(&key);
        let mut sh = self.shard(i);
        sh.epoch += 1;
        if self.shard_budget == 0 {
            return;
        }
        sh.insert(key, value, self.shard_budget);
    }

    /// Forgets a key (used for writes whose value should not displace hot entries).
    pub(crate) fn invalidate(&self, key: &[u8]) {
        let i = self.shard_of(key);
        let mut sh = self.shard(i);
        sh.epoch += 1;
        sh.remove(key);
    }

    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        (0..SHARDS).map(|i| self.shard(i).bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_budget_and_evicts_least_recent() {
        let c = ReadCache::new(16 * 1024);
        for i in 0..1000u32 {
            c.write(i.to_be_bytes().to_vec(), Some(Bytes::from(vec![0; 100])));
            assert!(c.bytes() <= 16 * 1024);
        }
        // The most recent write is still there; the first ones were evicted.
        assert!(c.lookup(&999u32.to_be_bytes()).is_ok());
        assert!(c.lookup(&0u32.to_be_bytes()).is_err());
    }

    #[test]
    fn a_fill_that_raced_with_a_write_is_dropped() {
        let c = ReadCache::new(1 << 20);
        let key = b"k".to_vec();
        let token = c.lookup(&key).unwrap_err();
        // A writer commits a newer value while the reader is in fjall.
        c.write(key.clone(), Some(Bytes::from_static(b"new")));
        c.fill(token, key.clone(), Some(Bytes::from_static(b"old")));
        assert_eq!(c.lookup(&key).ok().flatten().as_deref(), Some(&b"new"[..]));
    }

    #[test]
    fn entries_are_copies_not_slices_of_the_buffer_they_came_from() {
        let c = ReadCache::new(1 << 20);
        // Stands for a decompressed 4 KiB block that a 10-byte value was sliced from.
        let block = Bytes::from(vec![7u8; 4096]);
        let range = block.as_ptr() as usize..block.as_ptr() as usize + block.len();
        let token = c.lookup(b"r").unwrap_err();
        c.fill(token, b"r".to_vec(), Some(block.slice(100..110)));
        c.write(b"w".to_vec(), Some(block.slice(200..210)));
        for k in [&b"r"[..], b"w"] {
            let v = c.lookup(k).ok().flatten().unwrap();
            assert_eq!(v.len(), 10);
            assert!(
                !range.contains(&(v.as_ptr() as usize)),
                "the cache keeps the whole block alive through a slice"
            );
        }
    }

    #[test]
    fn zero_budget_caches_nothing() {
        let c = ReadCache::new(0);
        c.write(b"k".to_vec(), Some(Bytes::from_static(b"v")));
        let t = c.lookup(b"k").unwrap_err();
        c.fill(t, b"k".to_vec(), None);
        assert!(c.lookup(b"k").is_err());
        assert_eq!(c.bytes(), 0);
    }
}
