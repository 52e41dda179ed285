//! Cloudflare's documented Queues limits and consumer defaults.

/// Largest message body (1 KB = 1,000 bytes in Cloudflare's limits).
pub const MAX_MESSAGE_BYTES: usize = 128_000;
/// Most messages in one `sendBatch` call.
pub const MAX_BATCH_MESSAGES: usize = 100;
/// Largest total of one `sendBatch` call.
pub const MAX_BATCH_BYTES: usize = 256_000;
/// Longest `delaySeconds` (sending or retrying): 24 hours.
pub const MAX_DELAY_S: i64 = 86_400;
/// Largest consumer batch.
pub const MAX_CONSUMER_BATCH: u32 = 100;
/// Longest `max_batch_timeout`, seconds.
pub const MAX_BATCH_TIMEOUT_S: u32 = 60;
/// Most retries a consumer may configure.
pub const MAX_RETRIES: u32 = 100;
/// Default `max_batch_size`.
pub const DEFAULT_BATCH_SIZE: u32 = 10;
/// Default `max_batch_timeout`, seconds.
pub const DEFAULT_BATCH_TIMEOUT_S: u32 = 5;
/// Default `max_retries`.
pub const DEFAULT_RETRIES: u32 = 3;
/// The content types a message may have.
pub const CONTENT_TYPES: [&str; 4] = ["text", "json", "bytes", "v8"];
