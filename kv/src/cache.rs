//! The node's KV read cache: what gives KV its documented eventual consistency.
//!
//! A read that goes to the shard object is remembered here for its `cacheTtl` (default 60 s);
//! later reads on this node are answered from memory until then, so a write made through
//! another node becomes visible here within that time. Writes and deletes made through this
//! node replace the entry at once, so they are visible to this node immediately.
//!
//! A fill that raced with a local write is dropped (per-shard epoch, as in the storage
//! layer's cache): a slow read that started before a put can never bring the old value back.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard};

use crate::shard::KvEntry;

const SHARDS: usize = 16;
const ENTRY_OVERHEAD: usize = 96;

struct Entry {
    value: Option<KvEntry>,
    fresh_until_ms: i64,
    cost: usize,
    generation: u64,
}

#[derive(Default)]
struct Shard {
    map: HashMap<String, Entry>,
    /// Insertion order for eviction: `(key, generation)`; stale lines are skipped.
    order: VecDeque<(String, u64)>,
    bytes: usize,
    epoch: u64,
    generation: u64,
}

pub(crate) struct FillToken {
    shard: usize,
    epoch: u64,
}

pub(crate) struct NodeCache {
    shards: Vec<Mutex<Shard>>,
    hasher: RandomState,
    shard_budget: usize,
    max_entry: usize,
}

fn cost(key: &str, value: &Option<KvEntry>) -> usize {
    key.len()
        + ENTRY_OVERHEAD
        + value.as_ref().map_or(0, |e| {
            e.value.len() + e.metadata.as_ref().map_or(0, String::len)
        })
}

impl Shard {
    fn remove(&mut self, key: &str) {
        if let Some(e) = self.map.remove(key) {
            self.bytes -= e.cost;
        }
    }

    fn insert(&mut self, key: String, value: Option<KvEntry>, fresh_until_ms: i64, budget: usize) {
        self.remove(&key);
        let c = cost(&key, &value);
        if c > budget {
            return;
        }
        while self.bytes + c > budget {
            let Some((victim, generation)) = self.order.pop_front() else {
                break;
            };
            if self
                .map
                .get(&victim)
                .is_some_and(|e| e.generation == generation)
            {
                self.remove(&victim);
            }
        }
        self.generation += 1;
        let generation = self.generation;
        self.order.push_back((key.clone(), generation));
        self.map.insert(
            key,
            Entry {
                value,
                fresh_until_ms,
                cost: c,
                generation,
            },
        );
        self.bytes += c;
        // Keep the order queue from growing without bound under overwrites.
        if self.order.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.order
                .retain(|(k, g)| map.get(k).is_some_and(|e| e.generation == *g));
        }
    }
}

impl NodeCache {
    pub(crate) fn new(budget: usize, max_entry: usize) -> NodeCache {
        NodeCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: RandomState::new(),
            shard_budget: budget / SHARDS,
            max_entry,
        }
    }

    fn shard_of(&self, key: &str) -> usize {
        (self.hasher.hash_one(key) as usize) % SHARDS
    }

    fn shard(&self, i: usize) -> MutexGuard<'_, Shard> {
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Ok(value)` if a fresh entry exists (`None` inside: known absent); else a token for
    /// [`NodeCache::fill`].
    pub(crate) fn lookup(&self, key: &str, now_ms: i64) -> Result<Option<KvEntry>, FillToken> {
        let i = self.shard_of(key);
        let mut sh = self.shard(i);
        match sh.map.get(key) {
            Some(e) if e.fresh_until_ms > now_ms => return Ok(e.value.clone()),
            Some(_) => sh.remove(key),
            None => {}
        }
        Err(FillToken {
            shard: i,
            epoch: sh.epoch,
        })
    }

    /// Remembers what the shard object answered, unless a local write raced with the read.
    pub(crate) fn fill(
        &self,
        token: FillToken,
        key: String,
        value: Option<KvEntry>,
        fresh_until_ms: i64,
    ) {
        if cost(&key, &value) > self.max_entry {
            return;
        }
        let mut sh = self.shard(token.shard);
        if sh.epoch == token.epoch {
            sh.insert(key, value, fresh_until_ms, self.shard_budget);
        }
    }

    /// Records a write made through this node (`None`: deleted).
    pub(crate) fn write(&self, key: String, value: Option<KvEntry>, fresh_until_ms: i64) {
        let i = self.shard_of(&key);
        let mut sh = self.shard(i);
        sh.epoch += 1;
        if cost(&key, &value) > self.max_entry {
            sh.remove(&key);
            return;
        }
        sh.insert(key, value, fresh_until_ms, self.shard_budget);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn entry(v: &'static str) -> Option<KvEntry> {
        Some(KvEntry {
            value: Bytes::from_static(v.as_bytes()),
            metadata: None,
            expiration: None,
        })
    }

    #[test]
    fn entries_expire_and_racing_fills_are_dropped() {
        let c = NodeCache::new(1 << 20, 1 << 16);
        let t = c.lookup("k", 0).unwrap_err();
        c.write("k".into(), entry("new"), 1000);
        c.fill(t, "k".into(), entry("old"), 1000);
        assert_eq!(c.lookup("k", 999).ok().flatten(), entry("new"));
        assert!(c.lookup("k", 1000).is_err());
    }

    #[test]
    fn stays_within_budget() {
        let c = NodeCache::new(16 * 1024, 1 << 16);
        for i in 0..1000 {
            c.write(format!("k{i}"), entry("0123456789"), i64::MAX);
        }
        let total: usize = (0..SHARDS).map(|i| c.shard(i).bytes).sum();
        assert!(total <= 16 * 1024);
        assert!(c.lookup("k999", 0).is_ok());
    }
}
