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
//!
//! ```
//! use cinder_placement::{executor_for, Jurisdiction, NodeId, NodeSpec, Ring};
//!
//! let ring = Ring::new([
//!     NodeSpec::new(NodeId::new("fra-1")?).allow(Jurisdiction::Eu).region("eu-central"),
//!     NodeSpec::new(NodeId::new("iad-1")?).weight(2).allow(Jurisdiction::Us),
//! ])?;
//! let id = [7u8; 32];
//! let eu: Jurisdiction = "eu".parse()?;
//! assert_eq!(ring.owner(&id, Some(eu))?.as_str(), "fra-1");
//! assert!(ring.owner(&id, Some(Jurisdiction::Fedramp)).is_err()); // no fedramp node: no fallback
//! let fallbacks: Vec<&NodeId> = ring.candidates(&id, None)?.collect();
//! assert_eq!(fallbacks.len(), 2);
//! assert!(executor_for(&id, 4) < 4);
//! # Ok::<(), cinder_placement::PlacementError>(())
//! ```
//!
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
