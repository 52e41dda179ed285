//! [`Host`]: the handle the gateway holds; routes events to executor threads.

use crate::{Body, HostConfig, HostError, LoadError};

/// Runs worker scripts on executor threads. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct Host {}

impl Host {
    pub fn start(_cfg: HostConfig) -> Result<Host, LoadError> {
        Ok(Host {})
    }

    /// Delivers one HTTP request to worker `worker`. Never panics: failures become 5xx responses.
    pub async fn fetch(&self, _worker: &str, _req: http::Request<Body>) -> http::Response<Body> {
        let mut resp = http::Response::new(Body::from("not implemented yet\n"));
        *resp.status_mut() = http::StatusCode::NOT_IMPLEMENTED;
        resp
    }

    pub async fn scheduled(
        &self,
        worker: &str,
        _cron: &str,
        _scheduled_time_ms: i64,
    ) -> Result<(), HostError> {
        Err(HostError::NoSuchWorker(worker.to_string()))
    }

    pub async fn cold_start_probe(
        &self,
        _worker: &str,
        _samples: usize,
    ) -> Result<Vec<std::time::Duration>, LoadError> {
        Ok(Vec::new())
    }

    pub async fn shutdown(&self) {}
}
