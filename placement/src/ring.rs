use std::collections::BTreeMap;
use std::fmt;

use crate::hashring::MemberRing;
use crate::{Jurisdiction, NodeId, NodeSpec, PlacementError};

/// Virtual nodes per unit of weight unless [`RingConfig`] says otherwise.
///
/// A node's share of the ring with `v` virtual nodes deviates from its fair share by about
/// `1/√v` (one standard deviation); 1024 gives ~3 %, so the ±15 % balance bound sits near five
/// standard deviations. A ring of 100 weight-1 nodes then holds ~100 k virtual nodes (16 bytes
/// each) per jurisdiction ring, and a lookup is one SipHash and a ~17-step binary search.
pub const DEFAULT_VNODES_PER_WEIGHT: usize = 1024;

/// Upper bound on the virtual nodes of one ring (~64 MiB), so a typo in a weight is an error
/// rather than an out-of-memory.
pub const MAX_VIRTUAL_NODES: usize = 1 << 22;

/// How a [`Ring`] is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingConfig {
    /// Virtual nodes per unit of node weight (at least 1). Every node of a cluster must use the
    /// same value, or they will disagree about owners.
    pub vnodes_per_weight: usize,
}

impl Default for RingConfig {
    fn default() -> Self {
        RingConfig {
            vnodes_per_weight: DEFAULT_VNODES_PER_WEIGHT,
        }
    }
}

/// Which node owns an object id, with data residency: one consistent-hash ring per
/// jurisdiction over the nodes tagged with it, and an unrestricted ring over every node for ids
/// without a jurisdiction.
///
/// A node's virtual nodes sit at the same positions in every ring it belongs to (positions
/// derive from the node id and a sequence number only), so the jurisdiction rings are the
/// unrestricted ring with the ineligible nodes left out. The answer depends only on the set of
/// node specs and the config, never on their order or on the machine asking.
///
/// Immutable: a membership change builds a new ring. `Send + Sync`; share it in an `Arc`.
pub struct Ring {
    nodes: BTreeMap<NodeId, NodeSpec>,
    unrestricted: MemberRing<NodeId>,
    /// Indexed by `Jurisdiction::code() - 1`; `None` when no node carries the tag.
    by_jurisdiction: [Option<MemberRing<NodeId>>; 4],
    config: RingConfig,
}

impl Ring {
    /// Builds a ring with [`RingConfig::default`].
    pub fn new(nodes: impl IntoIterator<Item = NodeSpec>) -> Result<Ring, PlacementError> {
        Ring::with_config(nodes, RingConfig::default())
    }

    /// The ring of a single node that holds everything, every jurisdiction included: one
    /// machine, nowhere else to put anything (as `wrangler dev` ignores jurisdictions).
    pub fn single(id: NodeId) -> Ring {
        let spec = NodeSpec::new(id).allow_all();
        Ring::build(
            BTreeMap::from([(spec.id.clone(), spec)]),
            RingConfig::default(),
        )
    }

    /// Builds a ring. Errors on no nodes, duplicate ids, weight 0, `vnodes_per_weight` 0 or a
    /// ring over [`MAX_VIRTUAL_NODES`].
    pub fn with_config(
        nodes: impl IntoIterator<Item = NodeSpec>,
        config: RingConfig,
    ) -> Result<Ring, PlacementError> {
        let mut by_id = BTreeMap::new();
        let mut total: u128 = 0;
        for spec in nodes {
            if spec.weight == 0 {
                return Err(PlacementError::ZeroWeight(spec.id));
            }
            total += u128::from(spec.weight) * config.vnodes_per_weight as u128;
            if let Some(dup) = by_id.insert(spec.id.clone(), spec) {
                return Err(PlacementError::DuplicateNode(dup.id));
            }
        }
        if by_id.is_empty() {
            return Err(PlacementError::Empty);
        }
        if config.vnodes_per_weight == 0 || total > MAX_VIRTUAL_NODES as u128 {
            return Err(PlacementError::TooManyVirtualNodes {
                requested: total,
                max: MAX_VIRTUAL_NODES,
            });
        }
        Ok(Ring::build(by_id, config))
    }

    /// Builds from validated specs: at least one node, weights ≥ 1, total within bounds (so the
    /// quantities below cannot overflow).
    fn build(nodes: BTreeMap<NodeId, NodeSpec>, config: RingConfig) -> Ring {
        let quantity = |spec: &NodeSpec| spec.weight as usize * config.vnodes_per_weight;
        let ring_for = |j: Option<Jurisdiction>| {
            let members: Vec<_> = nodes
                .values()
                .filter(|spec| spec.allows(j))
                .map(|spec| (spec.id.clone(), quantity(spec)))
                .collect();
            (!members.is_empty()).then(|| MemberRing::new(members))
        };
        let by_jurisdiction = Jurisdiction::ALL.map(|j| ring_for(Some(j)));
        let unrestricted = MemberRing::new(nodes.values().map(|s| (s.id.clone(), quantity(s))));
        Ring {
            nodes,
            unrestricted,
            by_jurisdiction,
            config,
        }
    }

    fn ring(
        &self,
        jurisdiction: Option<Jurisdiction>,
    ) -> Result<&MemberRing<NodeId>, PlacementError> {
        match jurisdiction {
            None => Ok(&self.unrestricted),
            Some(j) => self.by_jurisdiction[usize::from(j.code() - 1)]
                .as_ref()
                .ok_or(PlacementError::NoEligibleNode(Some(j))),
        }
    }

    /// The node that owns `id`. `jurisdiction` is the one encoded in the id (`None` for an
    /// unrestricted id). Errors with [`PlacementError::NoEligibleNode`] when no node carries the
    /// jurisdiction's tag; it never answers a node outside the jurisdiction.
    pub fn owner(
        &self,
        id: &[u8; 32],
        jurisdiction: Option<Jurisdiction>,
    ) -> Result<NodeId, PlacementError> {
        self.ring(jurisdiction)?
            .first(id)
            .cloned()
            .ok_or(PlacementError::NoEligibleNode(jurisdiction))
    }

    /// Every eligible node for `id`, in preference order: the owner first, then where the id
    /// goes if the nodes before it are gone. This is the fallback order a cluster uses when an
    /// owner is down; each eligible node appears exactly once.
    pub fn candidates(
        &self,
        id: &[u8; 32],
        jurisdiction: Option<Jurisdiction>,
    ) -> Result<Candidates<'_>, PlacementError> {
        Ok(Candidates(self.ring(jurisdiction)?.candidates(id)))
    }

    /// The spec of a member node.
    pub fn node(&self, id: &NodeId) -> Option<&NodeSpec> {
        self.nodes.get(id)
    }

    /// Every member, ordered by id.
    pub fn nodes(&self) -> impl ExactSizeIterator<Item = &NodeSpec> + '_ {
        self.nodes.values()
    }

    /// Number of nodes that may hold objects of `jurisdiction` (all nodes for `None`).
    pub fn eligible_nodes(&self, jurisdiction: Option<Jurisdiction>) -> usize {
        self.ring(jurisdiction).map_or(0, MemberRing::members)
    }

    /// Virtual nodes of the unrestricted ring.
    pub fn virtual_nodes(&self) -> usize {
        self.unrestricted.virtual_nodes()
    }

    /// The config the ring was built with.
    pub fn config(&self) -> RingConfig {
        self.config
    }
}

impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("nodes", &self.nodes.values().collect::<Vec<_>>())
            .field("config", &self.config)
            .finish()
    }
}

/// Eligible nodes for an id in preference order; see [`Ring::candidates`].
pub struct Candidates<'r>(consistent_hash::Candidates<'r, NodeId, ()>);

impl<'r> Iterator for Candidates<'r> {
    type Item = &'r NodeId;

    fn next(&mut self) -> Option<&'r NodeId> {
        self.0.next().map(|node| &node.key)
    }
}
