//! The HTTP front door: a request goes to the primary worker (`cinder dev`) or to the worker
//! whose route matches it (`cinder serve`, [`crate::routes`]), bodies streamed both ways.
//!
//! The handler hands axum's request body to the engine as it is (the engine's `Body` is
//! `axum::body::Body`), and returns the engine's response body as it is, so neither direction
//! is ever collected in memory here.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderValue, Request, Response, StatusCode, Uri};
use axum::Router;
use cinder_stateless::Host;

use crate::routes::RouteTable;

/// Which worker answers a request.
pub enum Dispatch {
    /// Every request to one worker (`cinder dev`: the first config of the run).
    Primary(String),
    /// By route pattern (`cinder serve`); replaced whole when the node reloads.
    Routes(std::sync::RwLock<Arc<RouteTable>>),
}

/// What every request handler needs.
pub struct Front {
    pub host: Host,
    pub dispatch: Dispatch,
    /// Its first cron trigger, used when `/__scheduled` names none.
    pub default_cron: String,
    /// Whether `/__scheduled` is routed to the scheduled handler (`--test-scheduled`).
    pub test_scheduled: bool,
    /// Authority used when a request has no Host header.
    pub local_addr: SocketAddr,
    /// Largest request body passed on (`--max-body-mb`).
    pub max_body_bytes: u64,
    /// Counts answered requests when the admin endpoint serves metrics.
    pub metrics: Option<Arc<crate::admin::Metrics>>,
}

pub fn router(front: Arc<Front>) -> Router {
    Router::new().fallback(handle).with_state(front)
}

async fn handle(
    State(front): State<Arc<Front>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request<Body>,
) -> Response<Body> {
    // Which worker the request went to, for the metrics ("" when none did: no route).
    let mut worker = String::new();
    let resp = answer(&front, peer, req, &mut worker).await;
    if let Some(m) = &front.metrics {
        m.request(&worker, resp.status());
    }
    resp
}

async fn answer(
    front: &Front,
    peer: SocketAddr,
    mut req: Request<Body>,
    chosen: &mut String,
) -> Response<Body> {
    let path = req.uri().path();
    // `/cdn-cgi/handler/scheduled` is what current wrangler serves; `/__scheduled` is the
    // older route, opt-in because a worker may own that path.
    if let Dispatch::Primary(primary) = &front.dispatch {
        if path == "/cdn-cgi/handler/scheduled" || (front.test_scheduled && path == "/__scheduled")
        {
            chosen.clone_from(primary);
            return scheduled(front, primary, req.uri()).await;
        }
    }
    match absolute_uri(&req, front.local_addr) {
        Ok(uri) => *req.uri_mut() = uri,
        Err(message) => return plain(StatusCode::BAD_REQUEST, message),
    }
    let worker = match &front.dispatch {
        Dispatch::Primary(primary) => primary.clone(),
        Dispatch::Routes(table) => match route(&req, table) {
            Ok(worker) => worker,
            Err(resp) => return resp,
        },
    };
    chosen.clone_from(&worker);
    if let Ok(ip) = HeaderValue::from_str(&peer.ip().to_string()) {
        // Cloudflare sets this on every request; workers read it for the client address.
        req.headers_mut().insert("cf-connecting-ip", ip);
    }
    // A declared body over the limit is refused before the worker runs; a streamed one that
    // grows past it fails the worker's read at the limit.
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > front.max_body_bytes) {
        return plain(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "Request body too large: the limit is {} bytes (--max-body-mb).\n",
                front.max_body_bytes
            ),
        );
    }
    let limit = usize::try_from(front.max_body_bytes).unwrap_or(usize::MAX);
    let req = req.map(|body| Body::new(http_body_util::Limited::new(body, limit)));
    let mut req = req;
    let upgrade = crate::websocket::UpgradeRequest::take(&mut req);
    let resp = front.host.fetch(&worker, req).await;
    match resp
        .extensions()
        .get::<cinder_stateless::WsHandoff>()
        .copied()
    {
        Some(cinder_stateless::WsHandoff(socket))
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS =>
        {
            crate::websocket::upgrade(&front.host, socket, upgrade, resp)
        }
        _ => resp,
    }
}

/// The worker whose route matches the request (its URL already absolute), or the `404`.
#[allow(clippy::result_large_err)]
fn route(
    req: &Request<Body>,
    table: &std::sync::RwLock<Arc<RouteTable>>,
) -> Result<String, Response<Body>> {
    let uri = req.uri();
    let host = uri.host().unwrap_or_default();
    // Behind a TLS-terminating proxy the scheme is the one the client used.
    let https = req
        .headers()
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .map_or(uri.scheme_str() == Some("https"), |p| {
            p.eq_ignore_ascii_case("https")
        });
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let table = table
        .read()
        .map(|t| t.clone())
        .unwrap_or_else(|poisoned| poisoned.into_inner().clone());
    table
        .lookup(host, https, path)
        .map(str::to_string)
        .ok_or_else(|| {
            plain(
                StatusCode::NOT_FOUND,
                format!("No worker on this node has a route matching {host}{path}\n"),
            )
        })
}

/// Workers see `request.url` as an absolute URL: scheme, the Host the client asked for, path.
fn absolute_uri(req: &Request<Body>, local: SocketAddr) -> Result<Uri, String> {
    let uri = req.uri();
    if uri.scheme().is_some() {
        return Ok(uri.clone());
    }
    let authority = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| local.to_string());
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    format!("http://{authority}{path}")
        .parse()
        .map_err(|e| format!("bad request target: {e}\n"))
}

async fn scheduled(front: &Front, primary: &str, uri: &Uri) -> Response<Body> {
    let query: HashMap<String, String> = Query::try_from_uri(uri)
        .map(|Query(q)| q)
        .unwrap_or_default();
    let cron = query
        .get("cron")
        .cloned()
        .unwrap_or_else(|| front.default_cron.clone());
    let now_ms = chrono::Utc::now().timestamp_millis();
    let time = match query.get("time") {
        None => now_ms,
        Some(t) => match t.parse::<i64>() {
            Ok(t) => t,
            Err(_) => {
                return plain(
                    StatusCode::BAD_REQUEST,
                    format!("time={t:?} is not a number of milliseconds since the epoch\n"),
                )
            }
        },
    };
    match front.host.scheduled(primary, &cron, time).await {
        Ok(()) => plain(StatusCode::OK, "Ran scheduled event\n".to_string()),
        Err(e) => {
            tracing::error!(worker = %primary, %cron, "scheduled event failed: {e}");
            plain(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"))
        }
    }
}

fn plain(status: StatusCode, text: String) -> Response<Body> {
    let mut resp = Response::new(Body::from(text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
