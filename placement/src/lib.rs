//! Placement: which node, and which executor thread on that node, owns a Durable Object id.
//!
//! - [`Jurisdiction`]: Cloudflare's data-residency jurisdictions (`eu`, `fedramp`,
//!   `fedramp-high`, `us`) with their names and the stable byte that object ids carry.
//! - [`Ring`]: jurisdiction-aware consistent hashing over [`NodeSpec`]s (virtual nodes,
//!   weights, tags), built on `consistent_hash::StaticHashRing`. An id of a jurisdiction maps
//!   only to nodes tagged with it; when none is, placement fails rather than fall back.
//! - [`ExecutorRing`] / [`executor_for`]: the same ring code with thread indexes as members,
//!   so the single-node path (one member) and the cluster path are one path.
//!
//! Positions on the rings are computed from bytes we define (never std's `Hash` output for
//! `str` or `usize`), so every node of a cluster agrees on owners whatever platform or
//! compiler built it.
//!
//! Depends on no other Cinder crate; `cinder-core` uses it (ids encode [`Jurisdiction::code`]).
//! Membership and ownership epochs (etcd) will live next to the ring; they are not here yet.

mod error;
mod executor;
mod hashring;
mod jurisdiction;
mod node;
mod ring;

pub use error::PlacementError;
pub use executor::{executor_for, ExecutorRing, MAX_THREADS};
pub use jurisdiction::Jurisdiction;
pub use node::{NodeId, NodeSpec, NodeTags, MAX_NODE_ID_LEN};
pub use ring::{Candidates, Ring, RingConfig, DEFAULT_VNODES_PER_WEIGHT, MAX_VIRTUAL_NODES};
