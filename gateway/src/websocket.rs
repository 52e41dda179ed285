//! WebSocket upgrades of client connections. A worker (or the Durable Object it forwarded to)
//! answers `101` with the client end of a `WebSocketPair`; the gateway then finishes the HTTP
//! upgrade on the client's connection and drives it with the engine's pump
//! (`cinder_stateless::websocket_pump`), which carries frames to and from the socket's owner.

use axum::body::Body;
use axum::http::{header, HeaderValue, Response, StatusCode};
use cinder_stateless::{Host, SocketLink};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

/// What the client sent that the upgrade needs.
pub struct UpgradeRequest {
    pub on_upgrade: Option<OnUpgrade>,
    pub key: Option<HeaderValue>,
}

impl UpgradeRequest {
    pub fn take(req: &mut axum::http::Request<Body>) -> UpgradeRequest {
        UpgradeRequest {
            on_upgrade: req.extensions_mut().remove::<OnUpgrade>(),
            key: req.headers().get(header::SEC_WEBSOCKET_KEY).cloned(),
        }
    }
}

/// Turns the worker's `101` into the real upgrade of the client's connection.
pub fn upgrade(
    host: &Host,
    socket: u64,
    up: UpgradeRequest,
    worker: Response<Body>,
) -> Response<Body> {
    let Some(link) = host.socket_link(socket) else {
        return plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The worker returned a WebSocket that is already in use.",
        );
    };
    let (Some(on_upgrade), Some(key)) = (up.on_upgrade, up.key) else {
        // The worker accepted a WebSocket for a request that was not an upgrade.
        tokio::spawn(close_unconnected(link));
        return plain(
            StatusCode::BAD_REQUEST,
            "The worker answered 101 with a WebSocket, but the request was not a WebSocket upgrade (it needs `Upgrade: websocket` and `Sec-WebSocket-Key`).",
        );
    };
    let (parts, _) = worker.into_parts();
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    for (name, value) in parts.headers.iter() {
        // The worker's own headers (e.g. the chosen `Sec-WebSocket-Protocol`) go along.
        resp.headers_mut().append(name, value.clone());
    }
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(cinder_stateless::websocket_config()),
                )
                .await;
                cinder_stateless::websocket_pump(ws, link).await;
            }
            Err(e) => {
                tracing::debug!("WebSocket upgrade failed: {e}");
                close_unconnected(link).await;
            }
        }
    });
    resp
}

/// A socket whose client never connected still ends with one close event for its owner.
async fn close_unconnected(link: SocketLink) {
    link.deliver(cinder_stateless::WsIncoming::Close {
        code: 1006,
        reason: String::new(),
        clean: false,
    })
    .await;
}

fn plain(status: StatusCode, text: &str) -> Response<Body> {
    let mut resp = Response::new(Body::from(format!("{text}\n")));
    *resp.status_mut() = status;
    resp
}
