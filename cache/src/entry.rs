//! One stored response on disk: `<cache>/<url hash>/<variant hash>.meta` (JSON: the URL, the
//! request's values of the `Vary` headers, status, headers, when stored, until when fresh, the
//! body's size and file) and the body in its own file `<cache>/<url hash>/<random>.body`.
//!
//! A put writes the body, then the meta to a temporary name, then renames it over the old meta
//! (atomic), then deletes the old body. A reader holds an open body file, so a concurrent
//! replacement never mixes two responses: a reader that lost the race finds no body and
//! reports a miss.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Meta {
    pub(crate) url: String,
    /// Lower-case header names the response varies on, with the request's value (joined).
    pub(crate) vary: Vec<(String, Option<String>)>,
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, Vec<u8>)>,
    pub(crate) stored_at_ms: i64,
    pub(crate) expires_at_ms: i64,
    pub(crate) size: u64,
    /// File name of the body, in the same directory.
    pub(crate) body: String,
}

pub(crate) fn hash_hex(data: &[u8]) -> String {
    hex::encode(&blake3::hash(data).as_bytes()[..16])
}

pub(crate) fn url_dir(cache_dir: &Path, url: &str) -> PathBuf {
    cache_dir.join(hash_hex(url.as_bytes()))
}

pub(crate) fn variant_name(vary: &[(String, Option<String>)]) -> String {
    let mut s = String::new();
    for (k, v) in vary {
        s.push_str(k);
        s.push('\0');
        match v {
            Some(v) => {
                s.push('1');
                s.push_str(v);
            }
            None => s.push('0'),
        }
        s.push('\0');
    }
    format!("{}.meta", hash_hex(s.as_bytes()))
}
