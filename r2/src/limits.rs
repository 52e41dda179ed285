//! R2's documented limits (developers.cloudflare.com/r2/platform/limits/) and the checks that
//! enforce them before anything is written.

use crate::error::R2Error;

/// Longest key, in UTF-8 bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Largest single put or multipart part: 5 GiB − 5 MiB.
pub const MAX_UPLOAD_BYTES: u64 = 5 * 1024 * 1024 * 1024 - 5 * 1024 * 1024;
/// Largest custom metadata (keys + values, UTF-8 bytes). R2's limits page says 8,192 bytes;
/// Miniflare enforces 2,048. We follow the documentation.
pub const MAX_METADATA_BYTES: usize = 8192;
/// Smallest part other than the last.
pub const MIN_PART_BYTES: u64 = 5 * 1024 * 1024;
/// Part numbers are 1..=10,000.
pub const MAX_PART_NUMBER: u32 = 10_000;
/// Most results of one list call, and most keys of one delete.
pub const MAX_LIST_KEYS: u32 = 1000;
/// Most keys one `delete` call may name (as S3 DeleteObjects).
pub const MAX_DELETE_KEYS: usize = 1000;

pub(crate) fn check_key(key: &str) -> Result<(), R2Error> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(R2Error::InvalidObjectName);
    }
    Ok(())
}

pub(crate) fn check_metadata(custom: &[(String, String)]) -> Result<(), R2Error> {
    let size: usize = custom.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > MAX_METADATA_BYTES {
        return Err(R2Error::MetadataTooLarge);
    }
    Ok(())
}

pub(crate) fn check_part_number(n: u32) -> Result<(), R2Error> {
    if n == 0 || n > MAX_PART_NUMBER {
        return Err(R2Error::InvalidArgument(format!(
            "Part number must be an integer between 1 and {MAX_PART_NUMBER}, inclusive."
        )));
    }
    Ok(())
}

/// R2's bucket naming rule: 3–63 characters of `a-z 0-9 -`, starting and ending with a letter
/// or digit.
pub fn valid_bucket_name(name: &str) -> bool {
    let b = name.as_bytes();
    let ok = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    (3..=63).contains(&b.len())
        && b.iter().all(|c| ok(c) || *c == b'-')
        && b.first().is_some_and(ok)
        && b.last().is_some_and(ok)
}
