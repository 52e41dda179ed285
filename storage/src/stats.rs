//! Plain-atomics statistics that the operator's view (`/metrics` in the gateway) reads.
//!
//! Kept free of any metrics library on purpose: the engines only count, lock-free and cheaply
//! on hot paths; the gateway turns a [`Histogram::snapshot`] into whatever exposition format
//! it serves. [`Histogram`] lives here, in the lowest crate, so that core and the V8 side can
//! use the same type for their own figures.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A fixed-bucket histogram of non-negative values. Observing is three relaxed atomic adds.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds (inclusive) of the finite buckets, ascending.
    bounds: &'static [f64],
    /// One counter per finite bucket plus the overflow (+Inf) bucket; not cumulative.
    counts: Box<[AtomicU64]>,
    /// Sum of the observed values, in millionths (so sums of seconds keep microseconds).
    sum_micros: AtomicU64,
}

/// A consistent-enough copy of a [`Histogram`] (each counter read once; a scrape racing an
/// observation may see the count before the sum, which Prometheus tolerates).
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound, observations in this bucket)`, not cumulative; the last bound is
    /// `f64::INFINITY`.
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum: f64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: f64) {
        let value = if value.is_finite() && value > 0.0 {
            value
        } else {
            0.0
        };
        let i = self.bounds.partition_point(|&b| b < value);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((value * 1e6) as u64, Ordering::Relaxed);
    }

    /// Observes a duration in seconds.
    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut buckets = Vec::with_capacity(self.counts.len());
        let mut count = 0;
        for (i, c) in self.counts.iter().enumerate() {
            let n = c.load(Ordering::Relaxed);
            count += n;
            let bound = self.bounds.get(i).copied().unwrap_or(f64::INFINITY);
            buckets.push((bound, n));
        }
        HistogramSnapshot {
            buckets,
            count,
            sum: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

/// Bucket bounds for latencies in seconds, 50 µs to 10 s.
pub const LATENCY_SECONDS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
];

/// Bucket bounds for counts of things per group (batches per fsync).
pub const GROUP_SIZES: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// What the group committer has done since the store opened.
#[derive(Debug)]
pub struct CommitStats {
    /// Per batch: from `flush` (queued) until confirmed durable.
    pub commit_latency: Histogram,
    /// Batches made durable by one fsync (one group commit).
    pub batches_per_group: Histogram,
    /// Duration of each persist (write of the journal buffer and, in fsync mode, fdatasync).
    pub fsync_latency: Histogram,
    /// Batches confirmed durable.
    pub batches: AtomicU64,
}

impl Default for CommitStats {
    fn default() -> Self {
        CommitStats {
            commit_latency: Histogram::new(LATENCY_SECONDS),
            batches_per_group: Histogram::new(GROUP_SIZES),
            fsync_latency: Histogram::new(LATENCY_SECONDS),
            batches: AtomicU64::new(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_inclusive_upper_bounds_with_an_overflow() {
        static B: &[f64] = &[1.0, 2.0];
        let h = Histogram::new(B);
        for v in [0.5, 1.0, 1.5, 2.0, 3.0, f64::NAN] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.buckets, vec![(1.0, 3), (2.0, 2), (f64::INFINITY, 1)]);
        assert_eq!(s.count, 6);
        assert!((s.sum - 8.0).abs() < 1e-9, "{}", s.sum);
    }
}
