//! The Cache API's storage (`caches.default`, `caches.open(name)`) on `http` types, per node,
//! under a directory the host gives. No V8 and no actor core: the cache is node-local, as on
//! Cloudflare (entries do not replicate between locations). Depends on tokio (files), `http`
//! and serde_json (entry metadata).
//!
//! - [`CacheStorage`] / [`Cache`]: `put` (streams the body to a file), `match_request`
//!   (streams it back; 304 for `If-None-Match` / `If-Modified-Since`, 206 / 416 for a single
//!   `Range`, `CF-Cache-Status: HIT`), `delete`, `ignoreMethod`; `Vary` keeps one entry per
//!   variant. Layout and the replace protocol: `entry.rs`.
//! - What is stored and for how long follows Cloudflare (`policy.rs`): `Cache-Control`
//!   (`s-maxage` over `max-age`, `no-store` / `no-cache` / `private` refuse), `Expires`,
//!   default edge TTLs by status, `Set-Cookie` refused unless `private=Set-Cookie`; `put()` of
//!   a non-GET request, a 206 or `Vary: *` throws workerd's `TypeError`s.
//!
//! Entries are not fsynced: a cache may lose recent entries on power loss, and a torn entry
//! is detected (body length) and treated as a miss.

mod clock;
mod entry;
mod error;
mod policy;
mod store;

pub use clock::{Clock, ManualClock, OffsetFileClock, SystemClock};
pub use error::{CacheError, ErrorKind};
pub use store::{Cache, CacheBody, CacheConfig, CacheStorage, MatchOptions, PutOutcome};
