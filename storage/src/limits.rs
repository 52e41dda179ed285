//! Cloudflare's documented limits for the KV storage API, checked before any buffering.
//!
//! Numbers and texts follow workerd's `ActorStorageLimits` (src/workerd/io/actor-storage.c++).

use crate::error::StorageError;

/// Most keys one `get`/`put`/`delete` call may name.
pub const MAX_KEYS_PER_CALL: usize = 128;
/// Largest key, in UTF-8 bytes.
pub const MAX_KEY_BYTES: usize = 2048;
/// Largest value, as advertised (and printed in the error).
pub const MAX_VALUE_BYTES: usize = 128 * 1024;
/// Largest value actually accepted. Values are V8 serialisation bytes; like workerd we allow
/// 34 bytes of header overhead so that a 131,072-byte string or ArrayBuffer still fits.
pub const ENFORCED_MAX_VALUE_BYTES: usize = MAX_VALUE_BYTES + 34;

pub(crate) fn check_key(key: &str) -> Result<(), StorageError> {
    if key.len() > MAX_KEY_BYTES {
        return Err(StorageError::KeyTooLarge { size: key.len() });
    }
    Ok(())
}

pub(crate) fn check_value(value: &[u8]) -> Result<(), StorageError> {
    if value.len() > ENFORCED_MAX_VALUE_BYTES {
        return Err(StorageError::ValueTooLarge { size: value.len() });
    }
    Ok(())
}

pub(crate) fn check_count(count: usize) -> Result<(), StorageError> {
    if count > MAX_KEYS_PER_CALL {
        return Err(StorageError::TooManyKeys { count });
    }
    Ok(())
}
