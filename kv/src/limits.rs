//! Cloudflare's documented KV limits and the checks that enforce them, in the order
//! Cloudflare applies them (binding first, then the service).

use crate::error::KvError;

/// Longest key, in UTF-8 bytes.
pub const MAX_KEY_BYTES: usize = 512;
/// Largest value: 25 MiB.
pub const MAX_VALUE_BYTES: usize = 25 * 1024 * 1024;
/// Largest metadata, as serialized JSON.
pub const MAX_METADATA_BYTES: usize = 1024;
/// Shortest `expirationTtl`, and how far in the future an `expiration` must be, in seconds.
pub const MIN_EXPIRATION_TTL_S: i64 = 60;
/// Shortest `cacheTtl` in seconds. Cloudflare lowered it from 60 to 30 (current miniflare
/// enforces 30; some docs pages still say 60).
pub const MIN_CACHE_TTL_S: i64 = 30;
/// Default (and the usual) time a node keeps a read, in seconds.
pub const DEFAULT_CACHE_TTL_S: i64 = 60;
/// Most keys of one `list()` page, and the default.
pub const MAX_LIST_KEYS: usize = 1000;
/// Most keys of one bulk `get([keys])`.
pub const MAX_BULK_GET_KEYS: usize = 100;
/// Largest total size of a bulk get's values.
pub const MAX_BULK_BYTES: usize = 25 * 1024 * 1024;
/// KV operations one Worker invocation may make.
pub const MAX_OPERATIONS_PER_INVOCATION: u32 = 1000;

/// The binding's own check of a key name (workerd `validateKeyName`).
pub fn check_key(op: &'static str, key: &str) -> Result<(), KvError> {
    match key {
        "" => Err(KvError::EmptyKey),
        "." => Err(KvError::DotKey(".")),
        ".." => Err(KvError::DotKey("..")),
        k if k.len() > MAX_KEY_BYTES => Err(KvError::KeyTooLong { op, len: k.len() }),
        _ => Ok(()),
    }
}

/// The service's answer to a bulk `get` asked for a type other than `text` or `json` (the
/// binding passes the type through; only it knows it).
pub fn bulk_type_error(type_name: &str) -> KvError {
    KvError::failed(
        "GET_BULK",
        400,
        format!("\"{type_name}\" is not a valid type. Use \"json\" or \"text\""),
    )
}

/// The service's answer to a bulk `get(keys, "json")` when a value is not JSON.
pub fn bulk_not_json_error() -> KvError {
    KvError::failed(
        "GET_BULK",
        400,
        "At least one of the requested keys corresponds to a non-json value",
    )
}

/// The service's check of a key inside a bulk get (no binding-side check there).
pub(crate) fn check_bulk_key(key: &str) -> Result<(), KvError> {
    const OP: &str = "GET_BULK";
    match key {
        "" => Err(KvError::failed(OP, 400, "Key names must not be empty")),
        "." | ".." => Err(KvError::failed(
            OP,
            400,
            format!("Illegal key name \"{key}\". Please use a different name."),
        )),
        k if k.len() > MAX_KEY_BYTES => Err(KvError::failed(
            OP,
            414,
            format!(
                "UTF-8 encoded length of {} exceeds key length limit of {MAX_KEY_BYTES}.",
                k.len()
            ),
        )),
        _ => Ok(()),
    }
}

pub(crate) fn check_cache_ttl(op: &'static str, ttl: Option<i64>) -> Result<(), KvError> {
    match ttl {
        Some(t) if t < MIN_CACHE_TTL_S => Err(KvError::failed(
            op,
            400,
            format!("Invalid cache_ttl of {t}. Cache TTL must be at least {MIN_CACHE_TTL_S}."),
        )),
        _ => Ok(()),
    }
}

/// Resolves `expiration` / `expirationTtl` (seconds) to an absolute expiration in seconds.
/// `expirationTtl` wins when both are given, as on Cloudflare.
pub(crate) fn resolve_expiration(
    now_s: i64,
    expiration: Option<i64>,
    expiration_ttl: Option<i64>,
) -> Result<Option<i64>, KvError> {
    const OP: &str = "PUT";
    if let Some(ttl) = expiration_ttl {
        if ttl <= 0 {
            return Err(KvError::failed(
                OP,
                400,
                format!("Invalid expiration_ttl of {ttl}. Please specify integer greater than 0."),
            ));
        }
        if ttl < MIN_EXPIRATION_TTL_S {
            return Err(KvError::failed(
                OP,
                400,
                format!(
                    "Invalid expiration_ttl of {ttl}. Expiration TTL must be at least {MIN_EXPIRATION_TTL_S}."
                ),
            ));
        }
        return Ok(Some(now_s.saturating_add(ttl)));
    }
    if let Some(exp) = expiration {
        if exp <= now_s {
            return Err(KvError::failed(
                OP,
                400,
                format!("Invalid expiration of {exp}. Please specify integer greater than the current number of seconds since the UNIX epoch."),
            ));
        }
        if exp < now_s + MIN_EXPIRATION_TTL_S {
            return Err(KvError::failed(
                OP,
                400,
                format!("Invalid expiration of {exp}. Expiration times must be at least {MIN_EXPIRATION_TTL_S} seconds in the future."),
            ));
        }
        return Ok(Some(exp));
    }
    Ok(None)
}

pub(crate) fn check_metadata(metadata: Option<&str>) -> Result<(), KvError> {
    match metadata {
        Some(m) if m.len() > MAX_METADATA_BYTES => Err(KvError::failed(
            "PUT",
            413,
            format!(
                "Metadata length of {} exceeds limit of {MAX_METADATA_BYTES}.",
                m.len()
            ),
        )),
        _ => Ok(()),
    }
}

pub(crate) fn value_too_large(len: usize) -> KvError {
    KvError::failed(
        "PUT",
        413,
        format!("Value length of {len} exceeds limit of {MAX_VALUE_BYTES}."),
    )
}

/// `list()` options as the service validates them. `limit: 0` (or none) means the default:
/// the binding does not send a non-positive limit.
pub(crate) fn list_limit(limit: Option<i64>) -> Result<usize, KvError> {
    match limit {
        None => Ok(MAX_LIST_KEYS),
        Some(l) if l <= 0 => Ok(MAX_LIST_KEYS),
        Some(l) if l as u64 > MAX_LIST_KEYS as u64 => Err(KvError::failed(
            "GET",
            400,
            format!(
                "Invalid key_count_limit of {l}. Please specify an integer less than {MAX_LIST_KEYS}."
            ),
        )),
        Some(l) => Ok(l as usize),
    }
}

pub(crate) fn check_list_prefix(prefix: &str) -> Result<(), KvError> {
    if prefix.len() > MAX_KEY_BYTES {
        return Err(KvError::failed(
            "GET",
            414,
            format!(
                "UTF-8 encoded length of {} exceeds key length limit of {MAX_KEY_BYTES}.",
                prefix.len()
            ),
        ));
    }
    Ok(())
}
