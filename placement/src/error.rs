use crate::{Jurisdiction, NodeId};

/// Everything placement can refuse. Every variant is a caller or configuration mistake or a
/// topology that cannot host the id; none is a transient failure worth retrying as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// A jurisdiction name that is not one of Cloudflare's.
    #[error(
        "unknown jurisdiction {0:?}: expected one of \"eu\", \"fedramp\", \"fedramp-high\", \"us\""
    )]
    UnknownJurisdiction(String),
    /// A jurisdiction byte (as encoded in an object id) that no jurisdiction uses.
    #[error("unknown jurisdiction code {0}: expected 0 (none) or 1..=4")]
    UnknownJurisdictionCode(u8),
    /// No node of the ring may hold objects of this jurisdiction. Placement never falls back to
    /// a node outside the jurisdiction.
    #[error("no node may hold objects of jurisdiction {}", .0.map_or("(none)", Jurisdiction::as_str))]
    NoEligibleNode(Option<Jurisdiction>),
    /// A ring needs at least one member.
    #[error("a placement ring needs at least one node")]
    Empty,
    /// Two nodes with the same id.
    #[error("node {0} appears twice in the ring")]
    DuplicateNode(NodeId),
    /// Weight 0 would give the node no virtual nodes, so it could own nothing.
    #[error("node {0} has weight 0; weights must be at least 1")]
    ZeroWeight(NodeId),
    /// The ring would be too large to build or hold in memory.
    #[error("the ring would have {requested} virtual nodes; at most {max} are allowed (lower the weights or the virtual nodes per weight unit)")]
    TooManyVirtualNodes {
        /// Virtual nodes the configuration asked for.
        requested: u128,
        /// [`crate::MAX_VIRTUAL_NODES`].
        max: usize,
    },
    /// A node id that is empty, too long or has characters outside the allowed set.
    #[error("invalid node id {0:?}: use 1 to 128 ASCII letters, digits, '-', '_', '.' or ':'")]
    InvalidNodeId(String),
    /// An executor ring over more than [`crate::MAX_THREADS`] threads.
    #[error("an executor ring takes at most {max} threads, not {0}", max = crate::MAX_THREADS)]
    TooManyThreads(usize),
    /// An executor ring with no threads.
    #[error("an executor ring needs at least one thread")]
    NoThreads,
}
