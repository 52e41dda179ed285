//! Time as the KV engine sees it. Injectable so tests can move past an expiration or a cache
//! TTL without sleeping.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// A source of wall-clock time in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    /// Now, in ms since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        cinder_core::now_ms()
    }
}

/// A clock that moves only when told to (tests).
#[derive(Debug)]
pub struct ManualClock {
    now: AtomicI64,
}

impl ManualClock {
    /// A clock reading `now_ms`.
    pub fn new(now_ms: i64) -> Arc<ManualClock> {
        Arc::new(ManualClock {
            now: AtomicI64::new(now_ms),
        })
    }

    /// Moves the clock forward by `ms`.
    pub fn advance_ms(&self, ms: i64) {
        self.now.fetch_add(ms, Ordering::SeqCst);
    }

    /// Sets the clock.
    pub fn set_ms(&self, ms: i64) {
        self.now.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.now.load(Ordering::SeqCst)
    }
}

/// The system clock moved by a fixed offset (a test knob of the dev server: a restart with the
/// clock ahead sees keys expire without waiting).
#[derive(Debug, Clone, Copy)]
pub struct OffsetClock {
    offset_ms: i64,
}

impl OffsetClock {
    /// The wall clock plus `offset_ms`.
    pub fn new(offset_ms: i64) -> OffsetClock {
        OffsetClock { offset_ms }
    }
}

impl Clock for OffsetClock {
    fn now_ms(&self) -> i64 {
        cinder_core::now_ms().saturating_add(self.offset_ms)
    }
}
