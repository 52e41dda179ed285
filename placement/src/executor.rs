use std::cell::RefCell;
use std::hash::{Hash, Hasher};

use crate::hashring::MemberRing;
use crate::ring::DEFAULT_VNODES_PER_WEIGHT;
use crate::PlacementError;

/// Picks the executor thread of an object id on one node, with the same consistent-hash ring
/// code that picks nodes ([`crate::Ring`]), whose members here are thread indexes `0..threads`.
/// So "which node" and "which thread" are one mechanism, and a node with one thread is simply
/// a ring of one member.
///
/// An object always lands on the same thread for a given thread count, which is what makes it
/// single-threaded by construction. Changing the thread count moves only about `1/threads` of
/// the ids (consistent hashing), though nothing relies on that: threads are fixed for a
/// process's lifetime.
pub struct ExecutorRing {
    ring: MemberRing<ThreadIndex>,
    threads: usize,
}

/// Most executor threads a ring accepts; far beyond any core count, it bounds the ring's size.
pub const MAX_THREADS: usize = 4096;

impl ExecutorRing {
    /// A ring over `threads` executor threads (1..=[`MAX_THREADS`]).
    pub fn new(threads: usize) -> Result<ExecutorRing, PlacementError> {
        if threads == 0 {
            return Err(PlacementError::NoThreads);
        }
        if threads > MAX_THREADS {
            return Err(PlacementError::TooManyThreads(threads));
        }
        let members = (0..threads).map(|i| (ThreadIndex(i as u64), DEFAULT_VNODES_PER_WEIGHT));
        Ok(ExecutorRing {
            ring: MemberRing::new(members),
            threads,
        })
    }

    /// The executor thread (in `0..threads`) that runs `id`.
    pub fn executor_for(&self, id: &[u8; 32]) -> usize {
        // The ring is never empty (`threads >= 1`); 0 is the answer a one-thread ring gives.
        self.ring.first(id).map_or(0, |t| t.0 as usize)
    }

    /// Number of threads.
    pub fn threads(&self) -> usize {
        self.threads
    }
}

impl std::fmt::Debug for ExecutorRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecutorRing")
            .field("threads", &self.threads)
            .finish()
    }
}

/// The executor thread (in `0..n_threads`) that runs `id`; same answer as
/// [`ExecutorRing::executor_for`] on `ExecutorRing::new(n_threads)`.
///
/// Each calling thread builds the ring once per thread count and keeps it, so a call costs one
/// hash and a binary search. `n_threads` is clamped to `1..=MAX_THREADS`: a caller with zero
/// threads has nowhere to run anything, and thread 0 is the only index that can be valid.
pub fn executor_for(id: &[u8; 32], n_threads: usize) -> usize {
    thread_local! {
        static CACHED: RefCell<Option<ExecutorRing>> = const { RefCell::new(None) };
    }
    let n = n_threads.clamp(1, MAX_THREADS);
    CACHED.with(|cell| {
        let mut cached = cell.borrow_mut();
        match &*cached {
            Some(ring) if ring.threads == n => ring.executor_for(id),
            _ => {
                // n is within 1..=MAX_THREADS, so construction cannot fail; fall back to thread
                // 0 rather than panic if that ever changes.
                let Ok(ring) = ExecutorRing::new(n) else {
                    return 0;
                };
                let thread = ring.executor_for(id);
                *cached = Some(ring);
                thread
            }
        }
    })
}

/// A thread index as a ring member: hashes as a tagged little-endian `u64` (see
/// `hashring::StableHash` for why only `Hasher::write`).
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct ThreadIndex(u64);

impl Hash for ThreadIndex {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(b"executor-thread");
        state.write(&self.0.to_le_bytes());
    }
}
