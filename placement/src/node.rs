use std::collections::BTreeSet;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{Jurisdiction, PlacementError};

/// Longest node id accepted, in bytes.
pub const MAX_NODE_ID_LEN: usize = 128;

/// The name of a node in a cluster: 1 to 128 ASCII letters, digits, `-`, `_`, `.` or `:`, so it
/// is safe in config files, log lines and coordination-service keys (a host name or
/// `host:port` fits). Cheap to clone.
///
/// Its position on the ring derives from these bytes alone, so renaming a node moves its
/// objects; keep ids stable across restarts.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeId(Arc<str>);

impl NodeId {
    /// Validates and wraps a node id.
    pub fn new(id: impl Into<String>) -> Result<NodeId, PlacementError> {
        let id = id.into();
        let valid = !id.is_empty()
            && id.len() <= MAX_NODE_ID_LEN
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
        if valid {
            Ok(NodeId(id.into()))
        } else {
            Err(PlacementError::InvalidNodeId(id))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Hashes only explicit bytes (length, then the id), never `str`'s std `Hash`, whose output Rust
/// does not promise to keep across versions: ring positions must agree between every node of a
/// cluster, whichever compiler built it.
impl Hash for NodeId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(&(self.0.len() as u64).to_le_bytes());
        state.write(self.0.as_bytes());
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl FromStr for NodeId {
    type Err = PlacementError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NodeId::new(s)
    }
}

impl TryFrom<String> for NodeId {
    type Error = PlacementError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        NodeId::new(s)
    }
}

impl From<NodeId> for String {
    fn from(id: NodeId) -> String {
        id.0.to_string()
    }
}

/// What a node may hold and where it stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeTags {
    /// Jurisdictions whose objects this node may hold. Empty (the default) means only objects
    /// without a jurisdiction: restricted data needs an explicit tag.
    pub jurisdictions: BTreeSet<Jurisdiction>,
    /// Free-form region name (e.g. `"eu-west"`), for location hints and operators; placement
    /// itself does not read it.
    pub region: Option<String>,
}

/// One member of a [`crate::Ring`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    /// The node's id.
    pub id: NodeId,
    /// Relative capacity, at least 1: a node of weight 2 owns about twice the ids of a node of
    /// weight 1. It gets `weight × vnodes_per_weight` virtual nodes.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Allowed jurisdictions and region.
    #[serde(default)]
    pub tags: NodeTags,
}

fn default_weight() -> u32 {
    1
}

impl NodeSpec {
    /// A node of weight 1 that holds only unrestricted objects.
    pub fn new(id: NodeId) -> NodeSpec {
        NodeSpec {
            id,
            weight: 1,
            tags: NodeTags::default(),
        }
    }

    /// Sets the weight.
    pub fn weight(mut self, weight: u32) -> NodeSpec {
        self.weight = weight;
        self
    }

    /// Allows objects of `jurisdiction` on this node.
    pub fn allow(mut self, jurisdiction: Jurisdiction) -> NodeSpec {
        self.tags.jurisdictions.insert(jurisdiction);
        self
    }

    /// Allows objects of every jurisdiction on this node (a single development node).
    pub fn allow_all(mut self) -> NodeSpec {
        self.tags.jurisdictions.extend(Jurisdiction::ALL);
        self
    }

    /// Sets the region tag.
    pub fn region(mut self, region: impl Into<String>) -> NodeSpec {
        self.tags.region = Some(region.into());
        self
    }

    /// Whether objects of `jurisdiction` (or unrestricted objects, for `None`) may live here.
    pub fn allows(&self, jurisdiction: Option<Jurisdiction>) -> bool {
        jurisdiction.is_none_or(|j| self.tags.jurisdictions.contains(&j))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_validated() {
        for ok in [
            "a",
            "node-1",
            "10.0.0.1:8787",
            "eu_west.2",
            &"x".repeat(128),
        ] {
            assert_eq!(NodeId::new(ok).unwrap().as_str(), ok);
        }
        for bad in ["", "has space", "slash/", "é", &"x".repeat(129)] {
            assert_eq!(
                NodeId::new(bad),
                Err(PlacementError::InvalidNodeId(bad.to_owned()))
            );
        }
    }

    #[test]
    fn node_spec_from_json() {
        let spec: NodeSpec = serde_json::from_str(
            r#"{"id":"n1","weight":2,"tags":{"jurisdictions":["eu","us"],"region":"eu-west"}}"#,
        )
        .unwrap();
        assert_eq!(
            spec,
            NodeSpec::new(NodeId::new("n1").unwrap())
                .weight(2)
                .allow(Jurisdiction::Us)
                .allow(Jurisdiction::Eu)
                .region("eu-west")
        );
        assert!(spec.allows(None) && spec.allows(Some(Jurisdiction::Eu)));
        assert!(!spec.allows(Some(Jurisdiction::Fedramp)));

        let minimal: NodeSpec = serde_json::from_str(r#"{"id":"n2"}"#).unwrap();
        assert_eq!(minimal, NodeSpec::new(NodeId::new("n2").unwrap()));
        assert!(serde_json::from_str::<NodeSpec>(r#"{"id":"bad id"}"#).is_err());
    }
}
