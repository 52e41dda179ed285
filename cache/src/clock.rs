//! Time as the cache sees it. Injectable so tests can pass a `max-age` without sleeping.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

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
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
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
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.now.load(Ordering::SeqCst)
    }
}

/// The real clock moved forward by the number of milliseconds written in a file (missing,
/// empty or unreadable: no offset). Read on every call, so a test driving a real server can
/// let a `max-age` pass by writing the file instead of sleeping.
#[derive(Debug, Clone)]
pub struct OffsetFileClock {
    path: std::path::PathBuf,
}

impl OffsetFileClock {
    /// A clock offset by the contents of `path`.
    pub fn new(path: impl Into<std::path::PathBuf>) -> OffsetFileClock {
        OffsetFileClock { path: path.into() }
    }
}

impl Clock for OffsetFileClock {
    fn now_ms(&self) -> i64 {
        let offset = std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .unwrap_or(0);
        SystemClock.now_ms().saturating_add(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_file_clock_follows_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("offset");
        let clock = OffsetFileClock::new(&path);
        let before = SystemClock.now_ms();
        let none = clock.now_ms();
        assert!(
            none >= before && none < before + 60_000,
            "no file: real time"
        );
        std::fs::write(&path, "3600000\n").expect("write offset");
        let ahead = clock.now_ms();
        assert!(ahead >= before + 3_600_000, "an hour ahead");
        std::fs::write(&path, "garbage").expect("write garbage");
        assert!(clock.now_ms() < before + 3_600_000, "unparsable: no offset");
    }
}
