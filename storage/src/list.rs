//! `list()` options and their translation into a key range, as workerd compiles them.

use std::ops::Bound;

use crate::error::StorageError;
use crate::keys::{self, Section};

/// Options of `list()`. All bounds compare UTF-8 bytes; `reverse` changes only the order (and
/// so which `limit` keys are returned: the last ones).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// First key to include.
    pub start: Option<String>,
    /// List keys strictly after this one (not together with `start`).
    pub start_after: Option<String>,
    /// First key to exclude.
    pub end: Option<String>,
    /// Only keys beginning with this.
    pub prefix: Option<String>,
    pub reverse: bool,
    /// At most this many entries; must be > 0.
    pub limit: Option<usize>,
    /// Don't put the listed entries in the read cache.
    pub no_cache: bool,
}

/// A compiled range over layer suffixes (`section ‖ key`).
pub(crate) struct SuffixRange {
    pub(crate) lo: Bound<Vec<u8>>,
    pub(crate) hi: Bound<Vec<u8>>,
}

impl SuffixRange {
    pub(crate) fn between(section: Section, start: &[u8], end: Option<&[u8]>) -> Option<Self> {
        let r = Self {
            lo: Bound::Included(keys::suffix(section, start)),
            hi: match end {
                Some(e) => Bound::Excluded(keys::suffix(section, e)),
                None => Bound::Excluded(keys::section_end(section)),
            },
        };
        (!r.is_empty()).then_some(r)
    }

    fn is_empty(&self) -> bool {
        let lo = match &self.lo {
            Bound::Included(v) | Bound::Excluded(v) => v,
            Bound::Unbounded => return false,
        };
        match &self.hi {
            Bound::Excluded(h) => lo >= h,
            Bound::Included(h) => match &self.lo {
                Bound::Excluded(_) => lo >= h,
                _ => lo > h,
            },
            Bound::Unbounded => false,
        }
    }
}

/// The first string after every string starting with `prefix`, or `None` if there is none.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut v = prefix.to_vec();
    while let Some(&last) = v.last() {
        if last == 0xff {
            v.pop();
        } else {
            let n = v.len();
            v[n - 1] += 1;
            return Some(v);
        }
    }
    None
}

/// Validates `opts` and returns the KV range it selects (`None` = provably empty).
pub(crate) fn compile(opts: &ListOptions) -> Result<Option<SuffixRange>, StorageError> {
    if opts.start.is_some() && opts.start_after.is_some() {
        return Err(StorageError::StartAndStartAfter);
    }
    if opts.limit == Some(0) {
        return Err(StorageError::ListLimit);
    }
    let s = |k: &str| keys::suffix(Section::Kv, k.as_bytes());
    let mut lo = match (&opts.start, &opts.start_after) {
        (Some(st), _) => Bound::Included(s(st)),
        (_, Some(sa)) => Bound::Excluded(s(sa)),
        _ => Bound::Included(vec![Section::Kv.byte()]),
    };
    let mut hi = match &opts.end {
        Some(e) => Bound::Excluded(s(e)),
        None => Bound::Excluded(keys::section_end(Section::Kv)),
    };
    if let Some(p) = opts.prefix.as_deref().filter(|p| !p.is_empty()) {
        let ps = s(p);
        let raise = match &lo {
            Bound::Included(l) | Bound::Excluded(l) => *l < ps,
            Bound::Unbounded => true,
        };
        if raise {
            lo = Bound::Included(ps);
        }
        if let Some(pe) = prefix_end(p.as_bytes()) {
            let pe = keys::suffix(Section::Kv, &pe);
            let lower = match &hi {
                Bound::Excluded(h) | Bound::Included(h) => pe < *h,
                Bound::Unbounded => true,
            };
            if lower {
                hi = Bound::Excluded(pe);
            }
        }
    }
    let r = SuffixRange { lo, hi };
    Ok((!r.is_empty()).then_some(r))
}
