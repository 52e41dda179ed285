//! Key layout in the shared fjall keyspace: `id(32) ‖ section(1) ‖ key`.
//!
//! Every object's data is one contiguous key range, so ten thousand objects cost ten thousand
//! ranges, not ten thousand files. Within a section, keys sort in byte order, which for KV keys
//! is the UTF-8 byte order Cloudflare lists in.

/// A Durable Object id: 32 bytes (its meaning belongs to cinder-core).
pub type ObjectId = [u8; 32];

/// The sub-ranges of one object's key space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Section {
    /// `ctx.storage` key-value pairs.
    Kv = 1,
    /// SQLite pages and metadata of the SQL engine (cinder-sql).
    Sql = 2,
    /// Internal per-object records.
    Meta = 3,
}

impl Section {
    pub(crate) fn byte(self) -> u8 {
        self as u8
    }
}

pub(crate) const ID_LEN: usize = 32;

/// `section ‖ key`: the part of a key after the id, used by the in-memory layers.
pub(crate) fn suffix(section: Section, key: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + key.len());
    v.push(section.byte());
    v.extend_from_slice(key);
    v
}

pub(crate) fn full(id: &ObjectId, suffix: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(ID_LEN + suffix.len());
    v.extend_from_slice(id);
    v.extend_from_slice(suffix);
    v
}

/// The first suffix after every suffix of `section` (exclusive upper bound of the section).
pub(crate) fn section_end(section: Section) -> Vec<u8> {
    vec![section.byte() + 1]
}
