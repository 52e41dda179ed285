//! Moving WebSocket traffic between the network and JS: [`deliver`] hands what the network side
//! saw to the socket's JS owner, [`pump`] drives one connection (a client's, upgraded by the
//! gateway, or one this node opened with `new WebSocket(url)`).

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::durable::DoCall;
use crate::host::HostInner;
use crate::websocket::{Incoming, Outgoing, SocketLink, Target, WsMessage, MAX_MESSAGE_BYTES};

/// Buffers sized for many mostly idle connections: tungstenite allocates its read buffer
/// eagerly and keeps it for the connection's life (128 KiB by default, ten times a hibernated
/// socket's whole budget). 1 KiB holds any small message in one read; a large one is read in
/// 1 KiB steps into a buffer reserved for its full length, which costs syscalls, not copies.
pub fn config() -> WebSocketConfig {
    let mut c = WebSocketConfig::default();
    c.read_buffer_size = 1024;
    c.write_buffer_size = 0;
    c.max_message_size = Some(MAX_MESSAGE_BYTES);
    c.max_frame_size = Some(MAX_MESSAGE_BYTES);
    c
}

/// Connects an outgoing WebSocket: the host is resolved and, unless `allow_private`, internal
/// addresses are refused as for `fetch()`. `http(s):` URLs are taken as `ws(s):`. The error
/// (`Err`) is the text JS gets.
pub(crate) async fn connect(
    url: String,
    protocols: Vec<String>,
    headers: Vec<(deno_core::ByteString, deno_core::ByteString)>,
    allow_private: bool,
) -> Result<
    (
        WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
        String,
    ),
    String,
> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut parsed =
        deno_core::url::Url::parse(&url).map_err(|e| format!("Invalid URL {url:?}: {e}"))?;
    let scheme = match parsed.scheme() {
        "ws" | "http" => "ws",
        "wss" | "https" => "wss",
        other => {
            return Err(format!(
                "WebSocket URL scheme must be ws: or wss:, not {other}:"
            ))
        }
    };
    let _ = parsed.set_scheme(scheme);
    let host = parsed
        .host_str()
        .ok_or_else(|| format!("WebSocket URL {url:?} has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = parsed.port_or_known_default().unwrap_or(80);
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| format!("WebSocket connection to {url} failed: {e}"))?
        .collect();
    let allowed: Vec<_> = addrs
        .iter()
        .copied()
        .filter(|a| allow_private || !crate::netguard::is_internal(a.ip()))
        .collect();
    if allowed.is_empty() {
        return Err(format!(
            "WebSocket connection to {url} refused: loopback, private and link-local addresses are not reachable from a worker (start cinder with {} to allow them)",
            crate::netguard::ALLOW_FLAG
        ));
    }
    let tcp = tokio::net::TcpStream::connect(&allowed[..])
        .await
        .map_err(|e| format!("WebSocket connection to {url} failed: {e}"))?;
    let mut request = parsed
        .as_str()
        .into_client_request()
        .map_err(|e| format!("Invalid WebSocket request: {e}"))?;
    for (k, v) in headers {
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(&k),
            http::HeaderValue::from_bytes(&v),
        ) else {
            continue;
        };
        // The handshake's own headers are tungstenite's to set.
        if matches!(
            name.as_str(),
            "upgrade" | "connection" | "sec-websocket-key" | "sec-websocket-version" | "host"
        ) {
            continue;
        }
        request.headers_mut().insert(name, value);
    }
    if !protocols.is_empty() {
        if let Ok(v) = http::HeaderValue::from_str(&protocols.join(", ")) {
            request.headers_mut().insert("sec-websocket-protocol", v);
        }
    }
    let (ws, resp) =
        tokio_tungstenite::client_async_tls_with_config(request, tcp, Some(config()), None)
            .await
            .map_err(|e| format!("WebSocket connection to {url} failed: {e}"))?;
    let protocol = resp
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    Ok((ws, protocol))
}

/// How long a peer has to answer our close frame before the connection is dropped.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Hands one network event to the socket's owner; resolves when it was handed over (for a
/// hibernatable socket, once the object's handler finished).
pub(crate) async fn deliver(host: &HostInner, socket: u64, target: Target, event: Incoming) {
    match target {
        Target::Unaccepted => {}
        Target::Isolate {
            thread,
            worker,
            object,
        } => {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let sent = host.runtime.run_on(
                thread,
                Box::new(move || {
                    if let Ok(iso) = crate::thread::isolate_for(&worker) {
                        iso.enter_ws_event(socket, object, event);
                    }
                    let _ = tx.send(());
                }),
            );
            if sent.is_ok() {
                let _ = rx.await;
            }
        }
        Target::Hibernatable { namespace, object } => {
            let Some(ns) = host.runtime.namespace(&namespace) else {
                return;
            };
            let stub = ns.get(object);
            if let Err(e) = stub
                .call(Box::new(DoCall::WebSocket { socket, event }))
                .await
            {
                tracing::warn!(
                    socket,
                    "WebSocket event not delivered to its Durable Object: {e}"
                );
            }
        }
    }
}

fn to_frame(m: WsMessage) -> Message {
    match m {
        WsMessage::Text(t) => Message::Text(t.into()),
        WsMessage::Binary(b) => Message::Binary(b),
    }
}

/// Drives one connection until it closes: frames from the network go to [`SocketLink::deliver`]
/// (auto-responses are answered here, without waking anyone), what JS sends goes out in order.
/// Every socket ends with exactly one `Close` delivered, whether the peer closed cleanly, the
/// server closed, or the connection vanished.
pub async fn pump<S>(ws: WebSocketStream<S>, link: SocketLink)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut sink, mut stream) = ws.split();
    let mut close_sent = false;
    // After our close frame, how long the peer gets to answer with its own.
    let mut close_deadline = None;
    let mut server_close = (1006u16, String::new());
    let end = loop {
        tokio::select! {
            _ = sleep_until(close_deadline), if close_deadline.is_some() => {
                break Incoming::Close { code: server_close.0, reason: server_close.1, clean: false };
            }
            frame = stream.next() => match frame {
                Some(Ok(Message::Text(t))) => {
                    let t = t.to_string();
                    if let Some(reply) = link.auto_response(&t) {
                        if sink.send(Message::Text(reply.into())).await.is_err() {
                            break Incoming::Close { code: 1006, reason: String::new(), clean: false };
                        }
                        continue;
                    }
                    link.deliver(Incoming::Message(WsMessage::Text(t))).await;
                }
                Some(Ok(Message::Binary(b))) => {
                    link.deliver(Incoming::Message(WsMessage::Binary(b))).await;
                }
                // tungstenite answers pings itself (the pong goes out with the next write).
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {
                    let _ = sink.flush().await;
                }
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = frame
                        .map(|f| (u16::from(f.code), f.reason.to_string()))
                        .unwrap_or((1005, String::new()));
                    if !close_sent {
                        // Complete the closing handshake for the peer (Cloudflare's
                        // `web_socket_auto_reply_to_close`).
                        let reply = CloseFrame {
                            code: CloseCode::from(if code == 1005 { 1000 } else { code }),
                            reason: reason.clone().into(),
                        };
                        let _ = sink.send(Message::Close(Some(reply))).await;
                    }
                    break Incoming::Close { code, reason, clean: true };
                }
                Some(Err(e)) => {
                    use tokio_tungstenite::tungstenite::Error;
                    if let Error::Capacity(c) = &e {
                        link.deliver(Incoming::Error(c.to_string())).await;
                        let _ = sink
                            .send(Message::Close(Some(CloseFrame {
                                code: CloseCode::Size,
                                reason: "Message is too large".into(),
                            })))
                            .await;
                        break Incoming::Close { code: 1009, reason: "Message is too large".into(), clean: false };
                    }
                    break Incoming::Close { code: 1006, reason: String::new(), clean: false };
                }
                None => break Incoming::Close { code: 1006, reason: String::new(), clean: false },
            },
            out = link.next_outgoing(), if !close_sent => match out {
                Outgoing::Message(m) => {
                    if sink.send(to_frame(m)).await.is_err() {
                        break Incoming::Close { code: 1006, reason: String::new(), clean: false };
                    }
                }
                Outgoing::Close { code, reason } => {
                    close_sent = true;
                    close_deadline = Some(tokio::time::Instant::now() + CLOSE_TIMEOUT);
                    server_close = (code, reason.clone());
                    let frame = CloseFrame { code: CloseCode::from(code), reason: reason.into() };
                    if sink.send(Message::Close(Some(frame))).await.is_err() {
                        break Incoming::Close { code: 1006, reason: String::new(), clean: false };
                    }
                }
            },
        }
    };
    link.deliver(end).await;
}
