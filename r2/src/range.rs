//! Resolving a get's range against the object size: `R2Range` objects as the binding checks
//! them, and `Range` headers as R2 and S3 treat them.

use crate::error::R2Error;
use crate::types::{RangeRequest, RangeSpec};

/// A parsed `Range` header, against an object of known size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeaderRange {
    /// No usable range (empty, malformed, several ranges): the whole object.
    Full,
    /// `start..=end`, already clamped to the object.
    Range(u64, u64),
    /// Syntactically fine but outside the object.
    Unsatisfiable,
}

/// Parses `bytes=a-b`, `bytes=a-`, `bytes=-n` (spaces allowed, unit case-insensitive).
pub(crate) fn parse_header(header: &str, size: u64) -> HeaderRange {
    let h = header.trim_start();
    let Some(unit_end) = h.find('=') else {
        return HeaderRange::Full;
    };
    if !h[..unit_end].trim().eq_ignore_ascii_case("bytes") {
        return HeaderRange::Full;
    }
    let specs: Vec<&str> = h[unit_end + 1..].split(',').collect();
    if specs.len() != 1 {
        return HeaderRange::Full;
    }
    let spec = specs[0].trim();
    let Some((a, b)) = spec.split_once('-') else {
        return HeaderRange::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (a.is_empty(), b.is_empty()) {
        (true, true) => HeaderRange::Full,
        (false, _) => {
            let Some(start) = num(a) else {
                return HeaderRange::Full;
            };
            let end = if b.is_empty() {
                u64::MAX
            } else {
                match num(b) {
                    Some(e) => e,
                    None => return HeaderRange::Full,
                }
            };
            if start > end {
                return HeaderRange::Full;
            }
            if start >= size {
                return HeaderRange::Unsatisfiable;
            }
            HeaderRange::Range(start, end.min(size - 1))
        }
        (true, false) => {
            let Some(suffix) = num(b) else {
                return HeaderRange::Full;
            };
            if suffix == 0 || size == 0 {
                return HeaderRange::Unsatisfiable;
            }
            let suffix = suffix.min(size);
            HeaderRange::Range(size - suffix, size - 1)
        }
    }
}

fn resolve_spec(s: &RangeSpec, size: u64) -> Result<(u64, u64), R2Error> {
    let bad = R2Error::InvalidRange { size };
    let (offset, length) = match s.suffix {
        Some(suffix) => {
            if suffix == 0 {
                return Err(bad);
            }
            let suffix = suffix.min(size);
            (size - suffix, Some(suffix))
        }
        None => (s.offset.unwrap_or(0), s.length),
    };
    if offset > size {
        return Err(bad);
    }
    let length = length.unwrap_or(size - offset);
    if length == 0 {
        return Err(bad);
    }
    Ok((offset, length.min(size - offset)))
}

/// `(offset, length)` of the bytes a get returns.
pub(crate) fn resolve(req: &RangeRequest, size: u64) -> Result<(u64, u64), R2Error> {
    match req {
        RangeRequest::Full => Ok((0, size)),
        RangeRequest::Spec(s) => resolve_spec(s, size),
        RangeRequest::Header(h) => Ok(match parse_header(h, size) {
            HeaderRange::Range(a, b) => (a, b - a + 1),
            HeaderRange::Full | HeaderRange::Unsatisfiable => (0, size),
        }),
        RangeRequest::S3Header(h) => match parse_header(h, size) {
            HeaderRange::Range(a, b) => Ok((a, b - a + 1)),
            HeaderRange::Full => Ok((0, size)),
            HeaderRange::Unsatisfiable => Err(R2Error::InvalidRange { size }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers() {
        assert_eq!(parse_header("bytes=0-4", 10), HeaderRange::Range(0, 4));
        assert_eq!(parse_header("bytes = 2 -", 10), HeaderRange::Range(2, 9));
        assert_eq!(parse_header("bytes=-3", 10), HeaderRange::Range(7, 9));
        assert_eq!(parse_header("bytes=-30", 10), HeaderRange::Range(0, 9));
        assert_eq!(parse_header("bytes=5-100", 10), HeaderRange::Range(5, 9));
        assert_eq!(parse_header("bytes=10-", 10), HeaderRange::Unsatisfiable);
        assert_eq!(parse_header("bytes=0-", 0), HeaderRange::Unsatisfiable);
        assert_eq!(parse_header("bytes=0-1,3-4", 10), HeaderRange::Full);
        assert_eq!(parse_header("items=0-1", 10), HeaderRange::Full);
        assert_eq!(parse_header("bytes=x-1", 10), HeaderRange::Full);
        assert_eq!(parse_header("bytes=4-2", 10), HeaderRange::Full);
    }

    #[test]
    fn specs() {
        let s = |offset, length, suffix| RangeSpec {
            offset,
            length,
            suffix,
        };
        assert_eq!(resolve_spec(&s(Some(2), None, None), 10).ok(), Some((2, 8)));
        assert_eq!(resolve_spec(&s(None, Some(3), None), 10).ok(), Some((0, 3)));
        assert_eq!(
            resolve_spec(&s(Some(8), Some(5), None), 10).ok(),
            Some((8, 2))
        );
        assert_eq!(resolve_spec(&s(None, None, Some(4)), 10).ok(), Some((6, 4)));
        assert_eq!(
            resolve_spec(&s(None, None, Some(40)), 10).ok(),
            Some((0, 10))
        );
        assert!(resolve_spec(&s(Some(11), None, None), 10).is_err());
        assert!(resolve_spec(&s(Some(10), None, None), 10).is_err());
        assert!(resolve_spec(&s(None, None, Some(0)), 10).is_err());
        assert!(resolve_spec(&s(Some(0), Some(0), None), 10).is_err());
    }
}
