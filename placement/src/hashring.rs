//! The one consistent-hash ring both node placement and executor-thread placement use.

use std::hash::{Hash, Hasher};

use consistent_hash::{Candidates, DefaultHash, Node, RingHash, StaticHashRing};

/// Ring hashing with a byte stream we define, so every node of a cluster computes the same
/// positions: `consistent_hash`'s default `hash_vnode` feeds `(key, usize)` through std's
/// `Hash`, whose byte output depends on the platform's `usize` and endianness and is not
/// promised across Rust versions. Items and members here only ever call `Hasher::write`, and
/// the hash itself is `consistent_hash`'s SipHash-1-3 with fixed keys.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct StableHash;

impl RingHash for StableHash {
    fn hash_item<T: Hash>(&self, item: &T) -> u64 {
        DefaultHash.hash_item(item)
    }

    fn hash_vnode<K: Hash>(&self, node_key: &K, vnode_seq: usize) -> u64 {
        DefaultHash.hash_item(&VnodeKey(node_key, vnode_seq as u64))
    }
}

struct VnodeKey<'a, K>(&'a K, u64);

impl<K: Hash> Hash for VnodeKey<'_, K> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
        state.write(&self.1.to_le_bytes());
    }
}

/// An object id as a ring item: its 32 bytes, nothing else.
pub(crate) struct IdKey<'a>(pub(crate) &'a [u8; 32]);

impl Hash for IdKey<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.0);
    }
}

/// A static ring over members `K` (node ids, or thread indexes) with per-member virtual-node
/// counts. Members must hash through `Hasher::write` only (see [`StableHash`]).
pub(crate) struct MemberRing<K: 'static> {
    // `'static` because `StaticHashRing`'s virtual nodes point into its own member vector; the
    // references never escape except borrowed from `&self`.
    inner: StaticHashRing<'static, K, (), StableHash>,
}

impl<K: Hash + Eq + Ord + 'static> MemberRing<K> {
    /// Builds the ring. Callers reject duplicate members and zero quantities first.
    pub(crate) fn new(members: impl IntoIterator<Item = (K, usize)>) -> Self {
        let nodes = members
            .into_iter()
            .map(|(key, quantity)| Node::new(key).quantity(quantity));
        MemberRing {
            inner: StaticHashRing::new(StableHash, nodes),
        }
    }

    /// Members in preference order for `id`: the owner first, then where the id would go if the
    /// ones before were gone. Each member once.
    pub(crate) fn candidates(&self, id: &[u8; 32]) -> Candidates<'_, K, ()> {
        self.inner.calc_candidates(&IdKey(id))
    }

    /// The owner of `id`, `None` only for an empty ring.
    pub(crate) fn first(&self, id: &[u8; 32]) -> Option<&K> {
        self.candidates(id).next().map(|node| &node.key)
    }

    /// Number of members.
    pub(crate) fn members(&self) -> usize {
        self.inner.nodes().len()
    }

    /// Number of virtual nodes.
    pub(crate) fn virtual_nodes(&self) -> usize {
        self.inner.len()
    }
}
