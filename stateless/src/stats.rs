//! What the V8 side counts for the operator (`/metrics`, request log lines): loaded isolates,
//! CPU per event, and the one log line per finished request.
//!
//! Plain atomics and [`cinder_storage::stats::Histogram`]; the gateway reads them through
//! [`crate::Host::stats`] and exposes them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cinder_storage::stats::{Histogram, HistogramSnapshot};

use crate::state::{InFlight, Reply};

/// Bucket bounds of CPU milliseconds per event (Cloudflare's default limit is 30 s).
const CPU_MS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0, 30000.0,
];

/// Node-wide figures of the V8 side, shared by every worker's isolates.
#[derive(Debug)]
pub(crate) struct EngineStats {
    /// Isolates with a worker loaded, over all executor threads.
    pub isolates: AtomicUsize,
    /// CPU time of each finished event (requests, scheduled events, Durable Object events).
    pub event_cpu_ms: Histogram,
}

impl Default for EngineStats {
    fn default() -> Self {
        EngineStats {
            isolates: AtomicUsize::new(0),
            event_cpu_ms: Histogram::new(CPU_MS),
        }
    }
}

/// A point-in-time copy of the node's figures ([`crate::Host::stats`]).
#[derive(Debug, Clone)]
pub struct NodeStats {
    /// Isolates with a worker loaded.
    pub isolates: usize,
    /// Durable Object instances in memory.
    pub live_objects: usize,
    /// Durable Objects out of memory whose hibernatable WebSockets stay open.
    pub hibernated_objects: usize,
    /// Events queued for Durable Objects, not yet delivered.
    pub queued_events: usize,
    /// WebSockets open on this node.
    pub open_websockets: usize,
    /// CPU milliseconds per finished event.
    pub event_cpu_ms: HistogramSnapshot,
    /// Storage: per batch, seconds from flush to durable.
    pub commit_seconds: HistogramSnapshot,
    /// Storage: batches made durable by one fsync.
    pub batches_per_group: HistogramSnapshot,
    /// Storage: seconds per journal persist (fdatasync).
    pub fsync_seconds: HistogramSnapshot,
}

impl EngineStats {
    pub fn isolate_loaded(&self) {
        self.isolates.fetch_add(1, Ordering::Relaxed);
    }

    pub fn isolate_dropped(&self) {
        self.isolates.fetch_sub(1, Ordering::Relaxed);
    }

    /// An event left its isolate: its CPU goes into the histogram, and a request (an HTTP or
    /// scheduled event) gets its log line. `status` overrides what the worker answered when
    /// the event was cut short (CPU limit, crash).
    pub fn event_finished(&self, worker: &str, f: &InFlight, status: Option<u16>) {
        let cpu_ms = f.cpu.as_secs_f64() * 1000.0;
        self.event_cpu_ms.observe(cpu_ms);
        let duration = f.started.elapsed();
        let status = status.or(f.status);
        match &f.reply {
            Reply::Fetch(_) => {
                log_request(worker, &f.request_id, "fetch", status, duration, cpu_ms)
            }
            Reply::Scheduled(_) => {
                log_request(worker, &f.request_id, "scheduled", status, duration, cpu_ms)
            }
            Reply::Object(_) => tracing::debug!(
                target: "cinder::request",
                worker,
                request_id = %f.request_id,
                event = "object",
                status,
                duration_ms = ms(duration),
                cpu_ms = round(cpu_ms),
                "object event finished"
            ),
        }
    }
}

fn log_request(
    worker: &str,
    request_id: &str,
    event: &str,
    status: Option<u16>,
    duration: Duration,
    cpu_ms: f64,
) {
    // One line per request, the same fields in text and JSON logs.
    tracing::info!(
        target: "cinder::request",
        worker,
        request_id,
        event,
        status,
        duration_ms = ms(duration),
        cpu_ms = round(cpu_ms),
        "request finished"
    );
}

fn ms(d: Duration) -> f64 {
    round(d.as_secs_f64() * 1000.0)
}

/// Three decimals: microsecond resolution is all the clocks give.
fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
