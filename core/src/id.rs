//! Durable Object ids and the per-namespace id scheme.
//!
//! An id is 32 bytes, shown as 64 lowercase hex digits:
//!
//! ```text
//!  0                                 15 16                                31
//! ┌────────────────────────────────────┬────┬──────────────────────────────────┐
//! │ body (15 bytes)                    │ j  │ MAC (16 bytes)                   │
//! └────────────────────────────────────┴────┴──────────────────────────────────┘
//! ```
//!
//! - `body` is random for [`IdFactory::new_unique_id`] and a keyed hash of the name (and the
//!   jurisdiction) for [`IdFactory::id_from_name`], so a name maps to the same id for ever
//!   within a namespace and to unrelated ids in other namespaces.
//! - `j` is the jurisdiction code ([`Jurisdiction::code_of`]; 0 for none). It is part of the
//!   MAC'd half, so it cannot be changed without invalidating the id, and placement can read it
//!   without any lookup.
//! - The MAC is a keyed hash (BLAKE3, keyed by a subkey of the namespace secret) of the first
//!   16 bytes, truncated to 16 bytes. [`IdFactory::id_from_string`] recomputes it, which rejects
//!   typos and ids minted by another namespace — the same construction workerd uses with
//!   HMAC-SHA256, with the same error messages.
//!
//! The namespace secret must be stable across restarts (ids are stored by clients); see
//! [`IdFactory::from_unique_key`].

use std::fmt;
use std::sync::Arc;

use cinder_placement::Jurisdiction;
use rand::RngCore;

/// Cloudflare's message for an id string that is not 64 hex digits.
pub const MALFORMED_ID_MESSAGE: &str = "Invalid Durable Object ID: must be 64 hex digits";
/// Cloudflare's message for an id whose MAC does not match this namespace.
pub const WRONG_NAMESPACE_MESSAGE: &str = "Durable Object ID is not valid for this namespace.";
/// workerd's message when a jurisdiction-scoped namespace's `get()` is given an id of another
/// jurisdiction.
pub const GET_WRONG_JURISDICTION_MESSAGE: &str =
    "get called on jurisdictional subnamespace with an ID from a different jurisdiction";

const NAME_CONTEXT: &str = "cinder 2026-11 durable object id: name hash";
const MAC_CONTEXT: &str = "cinder 2026-11 durable object id: mac";

/// A Durable Object id: 32 bytes plus, for ids made by [`IdFactory::id_from_name`], the name.
///
/// Equality, ordering and hashing use the bytes only: an id parsed back from its string (which
/// loses the name, as on Cloudflare) equals the named id it came from.
#[derive(Clone)]
pub struct ObjectId {
    bytes: [u8; 32],
    name: Option<Arc<str>>,
}

impl ObjectId {
    /// The id from raw bytes, without any check. For ids read back from this node's own
    /// storage (alarm table, metadata); user input goes through [`IdFactory::id_from_string`].
    pub fn from_bytes_unchecked(bytes: [u8; 32]) -> ObjectId {
        ObjectId { bytes, name: None }
    }

    /// The 32 bytes (the storage key prefix and the placement hash input).
    pub fn bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    /// The name given to [`IdFactory::id_from_name`]; `None` for unique ids and parsed ids.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The jurisdiction encoded in the id. An unknown code (impossible for MAC-checked ids)
    /// reads as `None`.
    pub fn jurisdiction(&self) -> Option<Jurisdiction> {
        Jurisdiction::from_code(self.bytes[15]).ok().flatten()
    }

    /// 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.bytes)
    }
}

impl PartialEq for ObjectId {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}
impl Eq for ObjectId {}
impl std::hash::Hash for ObjectId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.bytes.hash(state)
    }
}
impl PartialOrd for ObjectId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ObjectId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.bytes.cmp(&other.bytes)
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "ObjectId({}, name={name:?})", self.to_hex()),
            None => write!(f, "ObjectId({})", self.to_hex()),
        }
    }
}

/// Why an id could not be made or accepted. All are `TypeError`s in JS except
/// [`IdError::JurisdictionConflict`], which Cloudflare throws as a plain `Error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Not 64 hex digits.
    #[error("{MALFORMED_ID_MESSAGE}")]
    Malformed,
    /// The MAC does not match: a typo, a forged id, or an id of another namespace.
    #[error("{WRONG_NAMESPACE_MESSAGE}")]
    WrongNamespace,
    /// A valid id of this namespace, but of another jurisdiction than the scoped namespace's.
    #[error("Durable Object ID is not valid for this namespace: it belongs to jurisdiction {found:?}, this namespace is restricted to {expected:?}.")]
    WrongJurisdiction {
        /// The scope of the namespace (`jurisdiction(...)`), as its Cloudflare name.
        expected: &'static str,
        /// The id's jurisdiction, `"none"` if unrestricted.
        found: &'static str,
    },
    /// `newUniqueId({jurisdiction})` on a namespace already scoped to another one.
    #[error("Cannot create an ID in jurisdiction {requested:?} from a namespace restricted to {scope:?}.")]
    JurisdictionConflict {
        /// The namespace's scope.
        scope: &'static str,
        /// What the call asked for.
        requested: &'static str,
    },
}

/// Mints and checks the ids of one namespace (one Durable Object class binding), optionally
/// scoped to a jurisdiction. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct IdFactory {
    name_key: [u8; 32],
    mac_key: [u8; 32],
    scope: Option<Jurisdiction>,
}

impl fmt::Debug for IdFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("IdFactory")
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl IdFactory {
    /// A factory keyed by a 32-byte namespace secret. Two subkeys are derived from it, so the
    /// name hash and the MAC never share a key.
    pub fn new(secret: [u8; 32]) -> IdFactory {
        IdFactory {
            name_key: blake3::derive_key(NAME_CONTEXT, &secret),
            mac_key: blake3::derive_key(MAC_CONTEXT, &secret),
            scope: None,
        }
    }

    /// A factory whose secret is derived from a string that must stay the same for the
    /// namespace's lifetime, like workerd's `uniqueKey`. For `cinder dev` a good key is
    /// `"<worker name>/<class name>"` plus a per-deployment secret when ids must not be
    /// guessable across deployments.
    pub fn from_unique_key(key: &str) -> IdFactory {
        IdFactory::new(*blake3::hash(key.as_bytes()).as_bytes())
    }

    /// The same namespace restricted to `jurisdiction` (`namespace.jurisdiction("eu")`): its
    /// names map to ids of that jurisdiction and it accepts only ids of that jurisdiction.
    pub fn jurisdiction(&self, jurisdiction: Jurisdiction) -> IdFactory {
        IdFactory {
            scope: Some(jurisdiction),
            ..self.clone()
        }
    }

    /// The jurisdiction this factory is restricted to, if any.
    pub fn scope(&self) -> Option<Jurisdiction> {
        self.scope
    }

    /// Whether two factories were made from the same secret (and so mint the same ids).
    pub(crate) fn same_secret(&self, other: &IdFactory) -> bool {
        constant_time_eq(&self.mac_key, &other.mac_key)
    }

    /// `idFromName(name)`: deterministic for this namespace and jurisdiction scope.
    pub fn id_from_name(&self, name: &str) -> ObjectId {
        let code = Jurisdiction::code_of(self.scope);
        let mut hasher = blake3::Hasher::new_keyed(&self.name_key);
        // The jurisdiction goes first so "eu" + name and unscoped name hash differently.
        hasher.update(&[code]);
        hasher.update(name.as_bytes());
        let digest = hasher.finalize();
        let mut bytes = [0u8; 32];
        bytes[..15].copy_from_slice(&digest.as_bytes()[..15]);
        bytes[15] = code;
        self.seal(&mut bytes);
        ObjectId {
            bytes,
            name: Some(Arc::from(name)),
        }
    }

    /// `newUniqueId({jurisdiction})`: random. Without an argument a scoped factory uses its
    /// scope; asking a scoped factory for another jurisdiction is an error.
    pub fn new_unique_id(&self, jurisdiction: Option<Jurisdiction>) -> Result<ObjectId, IdError> {
        let j = match (self.scope, jurisdiction) {
            (Some(scope), Some(requested)) if scope != requested => {
                return Err(IdError::JurisdictionConflict {
                    scope: scope.as_str(),
                    requested: requested.as_str(),
                })
            }
            (scope, requested) => requested.or(scope),
        };
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes[..15]);
        bytes[15] = Jurisdiction::code_of(j);
        self.seal(&mut bytes);
        Ok(ObjectId { bytes, name: None })
    }

    /// `idFromString(hex)`: accepts exactly 64 hex digits (either case) whose MAC matches this
    /// namespace and, for a scoped factory, whose jurisdiction is the scope.
    pub fn id_from_string(&self, s: &str) -> Result<ObjectId, IdError> {
        if s.len() != 64 {
            return Err(IdError::Malformed);
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| IdError::Malformed)?;
        self.check(bytes)
    }

    /// Validates raw bytes the way [`IdFactory::id_from_string`] validates hex.
    pub fn id_from_bytes(&self, bytes: [u8; 32]) -> Result<ObjectId, IdError> {
        self.check(bytes)
    }

    fn check(&self, bytes: [u8; 32]) -> Result<ObjectId, IdError> {
        let mac = self.mac(&bytes);
        // Constant-time compare: the MAC is what stops forged ids.
        if !constant_time_eq(&mac, &bytes[16..]) {
            return Err(IdError::WrongNamespace);
        }
        let id = ObjectId { bytes, name: None };
        if let Some(scope) = self.scope {
            // A MAC-valid id always has a known code; treat anything else as foreign.
            let found = Jurisdiction::from_code(bytes[15]).map_err(|_| IdError::WrongNamespace)?;
            if found != Some(scope) {
                return Err(IdError::WrongJurisdiction {
                    expected: scope.as_str(),
                    found: found.map_or("none", Jurisdiction::as_str),
                });
            }
        }
        Ok(id)
    }

    fn mac(&self, bytes: &[u8; 32]) -> [u8; 16] {
        let digest = blake3::keyed_hash(&self.mac_key, &bytes[..16]);
        let mut mac = [0u8; 16];
        mac.copy_from_slice(&digest.as_bytes()[..16]);
        mac
    }

    fn seal(&self, bytes: &mut [u8; 32]) {
        let mac = self.mac(bytes);
        bytes[16..].copy_from_slice(&mac);
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(key: &str) -> IdFactory {
        IdFactory::from_unique_key(key)
    }

    #[test]
    fn names_are_deterministic_per_namespace() {
        let a = ns("worker/Counter");
        let b = ns("worker/Other");
        assert_eq!(a.id_from_name("x"), a.id_from_name("x"));
        assert_eq!(a.id_from_name("x").name(), Some("x"));
        assert_ne!(a.id_from_name("x"), a.id_from_name("y"));
        assert_ne!(a.id_from_name("x"), b.id_from_name("x"));
        // A fresh factory with the same key (a restart) gives the same id.
        assert_eq!(
            a.id_from_name("x").to_hex(),
            ns("worker/Counter").id_from_name("x").to_hex()
        );
    }

    #[test]
    fn hex_round_trip_drops_the_name() {
        let f = ns("k");
        let id = f.id_from_name("alice");
        let hex = id.to_string();
        assert_eq!(hex.len(), 64);
        assert!(hex
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)));
        let back = f.id_from_string(&hex).unwrap();
        assert_eq!(back, id);
        assert_eq!(back.name(), None);
        assert_eq!(f.id_from_string(&hex.to_uppercase()).unwrap(), id);
        let unique = f.new_unique_id(None).unwrap();
        assert_eq!(f.id_from_string(&unique.to_hex()).unwrap(), unique);
        assert_ne!(unique, f.new_unique_id(None).unwrap());
    }

    #[test]
    fn malformed_strings_are_rejected_with_cloudflares_message() {
        let f = ns("k");
        let good = f.id_from_name("a").to_hex();
        for bad in [
            String::new(),
            "abc".to_string(),
            good[..63].to_string(),
            format!("{good}0"),
            format!("{}g", &good[..63]),
            format!("{} ", &good[..63]),
            "é".repeat(32),
        ] {
            let err = f.id_from_string(&bad).unwrap_err();
            assert_eq!(err, IdError::Malformed, "{bad:?}");
            assert_eq!(
                err.to_string(),
                "Invalid Durable Object ID: must be 64 hex digits"
            );
        }
    }

    #[test]
    fn mac_rejects_tampering_and_other_namespaces() {
        let f = ns("k");
        let id = f.id_from_name("a");
        // Flip every bit of the id, one at a time: each must be caught.
        for i in 0..32 {
            for bit in 0..8 {
                let mut bytes = *id.bytes();
                bytes[i] ^= 1 << bit;
                let err = f.id_from_bytes(bytes).unwrap_err();
                assert_eq!(err, IdError::WrongNamespace);
                assert_eq!(
                    err.to_string(),
                    "Durable Object ID is not valid for this namespace."
                );
            }
        }
        let other = ns("k2");
        assert_eq!(
            other.id_from_string(&id.to_hex()).unwrap_err(),
            IdError::WrongNamespace
        );
        assert_eq!(
            other
                .id_from_string(&f.new_unique_id(None).unwrap().to_hex())
                .unwrap_err(),
            IdError::WrongNamespace
        );
    }

    #[test]
    fn jurisdiction_is_encoded_and_enforced() {
        let f = ns("k");
        let eu = f.jurisdiction(Jurisdiction::Eu);
        let fed = f.jurisdiction(Jurisdiction::Fedramp);
        let plain = f.id_from_name("n");
        let in_eu = eu.id_from_name("n");
        assert_ne!(plain, in_eu);
        assert_ne!(in_eu, fed.id_from_name("n"));
        assert_eq!(plain.jurisdiction(), None);
        assert_eq!(in_eu.jurisdiction(), Some(Jurisdiction::Eu));

        // The unscoped namespace accepts ids of every jurisdiction of the namespace.
        assert_eq!(f.id_from_string(&in_eu.to_hex()).unwrap(), in_eu);
        // A scoped namespace accepts only its own.
        assert_eq!(eu.id_from_string(&in_eu.to_hex()).unwrap(), in_eu);
        assert_eq!(
            fed.id_from_string(&in_eu.to_hex()).unwrap_err(),
            IdError::WrongJurisdiction {
                expected: "fedramp",
                found: "eu"
            }
        );
        assert_eq!(
            eu.id_from_string(&plain.to_hex()).unwrap_err(),
            IdError::WrongJurisdiction {
                expected: "eu",
                found: "none"
            }
        );

        let u = f.new_unique_id(Some(Jurisdiction::FedrampHigh)).unwrap();
        assert_eq!(u.jurisdiction(), Some(Jurisdiction::FedrampHigh));
        assert_eq!(
            eu.new_unique_id(None).unwrap().jurisdiction(),
            Some(Jurisdiction::Eu)
        );
        assert!(matches!(
            eu.new_unique_id(Some(Jurisdiction::Us)),
            Err(IdError::JurisdictionConflict { .. })
        ));

        // Moving an id to another jurisdiction by editing its code byte breaks the MAC.
        let mut forged = *in_eu.bytes();
        forged[15] = Jurisdiction::Us.code();
        assert_eq!(
            f.id_from_bytes(forged).unwrap_err(),
            IdError::WrongNamespace
        );
    }
}
