//! The admin listener (`--admin ADDR`): `/metrics` in the Prometheus / OpenMetrics text format
//! and `/healthz`. It is a separate socket from the workers' so that metrics are never
//! reachable through the public address.
//!
//! Request counts are kept here (the front door counts what it answers); everything else is
//! read from the engine at scrape time ([`cinder_stateless::Host::stats`]), which keeps
//! plain atomics so that no metrics library reaches the engine crates.

use std::sync::Arc;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use cinder_stateless::Host;
use cinder_storage::stats::HistogramSnapshot;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    worker: String,
    status: String,
}

/// The node's metrics: a registry with the request counter and a collector over the engine.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
}

impl Metrics {
    pub fn new(host: Host) -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "cinder_requests",
            "HTTP requests answered, by worker and status",
            requests.clone(),
        );
        registry.register_collector(Box::new(EngineCollector { host }));
        Metrics { registry, requests }
    }

    /// Counts one answered request.
    pub fn request(&self, worker: &str, status: StatusCode) {
        self.requests
            .get_or_create(&RequestLabels {
                worker: worker.to_string(),
                status: status.as_u16().to_string(),
            })
            .inc();
    }

    fn render(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Reads the engine's figures on each scrape.
struct EngineCollector {
    host: Host,
}

impl std::fmt::Debug for EngineCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EngineCollector")
    }
}

impl prometheus_client::collector::Collector for EngineCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.host.stats();
        let gauges: [(&str, &str, usize); 5] = [
            (
                "cinder_isolates",
                "V8 isolates with a worker loaded",
                s.isolates,
            ),
            (
                "cinder_durable_objects_live",
                "Durable Object instances in memory",
                s.live_objects,
            ),
            (
                "cinder_durable_objects_hibernated",
                "Durable Objects out of memory whose hibernatable WebSockets stay open",
                s.hibernated_objects,
            ),
            (
                "cinder_queued_events",
                "Events queued for Durable Objects and not yet delivered",
                s.queued_events,
            ),
            (
                "cinder_websockets_open",
                "WebSockets open on this node",
                s.open_websockets,
            ),
        ];
        for (name, help, value) in gauges {
            encoder
                .encode_descriptor(name, help, None, MetricType::Gauge)?
                .encode_gauge(&(value as i64))?;
        }
        let histograms: [(&str, &str, &HistogramSnapshot); 4] = [
            (
                "cinder_event_cpu_milliseconds",
                "CPU time per finished event (requests, scheduled and Durable Object events), in ms",
                &s.event_cpu_ms,
            ),
            (
                "cinder_storage_commit_seconds",
                "Storage write batches: time from flush until durable",
                &s.commit_seconds,
            ),
            (
                "cinder_storage_writes_per_commit",
                "Storage write batches made durable by one group commit (one fsync)",
                &s.batches_per_group,
            ),
            (
                "cinder_storage_fsync_seconds",
                "Duration of each journal persist (write + fdatasync)",
                &s.fsync_seconds,
            ),
        ];
        for (name, help, h) in histograms {
            let buckets: Vec<(f64, u64)> = h
                .buckets
                .iter()
                // The encoder writes `le="+Inf"` for f64::MAX.
                .map(|&(b, n)| (if b.is_finite() { b } else { f64::MAX }, n))
                .collect();
            encoder
                .encode_descriptor(name, help, None, MetricType::Histogram)?
                .encode_histogram::<NoLabelSet>(h.sum, h.count, &buckets, None)?;
        }
        Ok(())
    }
}

/// `/metrics` and `/healthz`.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    match metrics.render() {
                        Ok(text) => (
                            [(
                                header::CONTENT_TYPE,
                                HeaderValue::from_static(
                                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                ),
                            )],
                            text,
                        )
                            .into_response(),
                        Err(_) => plain(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n"),
                    }
                }
            }),
        )
        .route("/healthz", get(|| async { plain(StatusCode::OK, "ok") }))
        .fallback(|| async {
            plain(
                StatusCode::NOT_FOUND,
                "Not found: the admin address serves /metrics and /healthz.\n",
            )
        })
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}
