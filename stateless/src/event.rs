//! What crosses from the [`Host`](crate::Host) to an isolate, and how the answer comes back.

use tokio::sync::oneshot;

use crate::{Body, HostError};

/// One event for one worker script. Moved, never copied, through channels: the size of the
/// fetch variant costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Event {
    Fetch {
        request_id: String,
        req: http::Request<Body>,
        reply: oneshot::Sender<http::Response<Body>>,
    },
    Scheduled {
        request_id: String,
        cron: String,
        time_ms: i64,
        reply: oneshot::Sender<Result<(), HostError>>,
    },
    /// A batch for the worker's `queue()` handler; JS leaves its explicit decisions in
    /// `decisions`, and `reply` says whether the handler threw.
    Queue {
        request_id: String,
        batch: cinder_queues::MessageBatch,
        decisions: crate::queues::DecisionSlot,
        reply: oneshot::Sender<Result<(), HostError>>,
    },
}

/// Why an isolate stopped before its events finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    CpuLimit,
    MemoryLimit,
    /// Any other fatal error in the event loop.
    Crashed,
}

/// Plain-text error responses, worded as Cloudflare words them.
pub(crate) fn error_response(status: u16, text: &str) -> http::Response<Body> {
    let mut resp = http::Response::new(Body::from(format!("{text}\n")));
    *resp.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

pub(crate) fn stop_response(stop: Stop, charged: bool) -> http::Response<Body> {
    match (stop, charged) {
        (Stop::CpuLimit, true) => error_response(503, "Worker exceeded CPU time limit."),
        (Stop::MemoryLimit, true) => error_response(503, "Worker exceeded memory limit."),
        (Stop::CpuLimit, false) => error_response(
            503,
            "Worker was reset while serving this request: another request in the same isolate exceeded the CPU time limit.",
        ),
        (Stop::MemoryLimit, false) => error_response(
            503,
            "Worker was reset while serving this request: another request in the same isolate exceeded the memory limit.",
        ),
        (Stop::Crashed, _) => error_response(
            503,
            "Worker was reset while serving this request: its isolate stopped after an internal error (see the server log).",
        ),
    }
}

/// Why no isolate could take an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unavailable {
    ShuttingDown,
    NotOnThisNode,
}

/// The answer to an event no isolate will run.
pub(crate) fn unavailable_response(why: Unavailable, worker: &str) -> http::Response<Body> {
    match why {
        Unavailable::ShuttingDown => error_response(503, "The server is shutting down."),
        Unavailable::NotOnThisNode => {
            error_response(404, &format!("No worker named {worker:?} is running."))
        }
    }
}
