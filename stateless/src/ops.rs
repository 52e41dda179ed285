//! The `cinder` extension: ops the bootstrap JS uses to take events, answer them, move body
//! chunks and make outbound requests. Ops never panic (a panic aborts the process): every
//! failure is a JS exception or a `false`/`null` result.

use std::cell::RefCell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use deno_core::{op2, ByteString, JsBuffer, OpState, ToJsBuffer};
use deno_error::JsErrorBox;
use http_body::Frame;
use http_body_util::BodyExt;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::event::{error_response, Event};
use crate::netguard;
use crate::state::{Chunk, InFlight, IsolateState, Reply, SINK_DEPTH};
use crate::Body;

deno_core::extension!(
    cinder,
    deps = [deno_webidl, deno_web, deno_crypto, deno_fetch],
    ops = [
        op_cinder_take_event,
        op_cinder_touch,
        op_cinder_respond,
        op_cinder_respond_error,
        op_cinder_event_done,
        op_cinder_body_read,
        op_cinder_body_close,
        op_cinder_sink_new,
        op_cinder_sink_write,
        op_cinder_sink_close,
        op_cinder_outbound,
        op_cinder_log,
        op_cinder_module_data,
    ],
);

fn isolate(state: &OpState) -> Option<Rc<IsolateState>> {
    state.try_borrow::<Rc<IsolateState>>().cloned()
}

fn isolate_rc(state: &Rc<RefCell<OpState>>) -> Option<Rc<IsolateState>> {
    isolate(&state.borrow())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct JsEvent {
    kind: &'static str,
    id: u32,
    request_id: String,
    method: String,
    url: String,
    headers: Vec<(ByteString, ByteString)>,
    body: Option<u32>,
    cron: String,
    scheduled_time: f64,
}

pub(crate) fn header_pairs(headers: &http::HeaderMap) -> Vec<(ByteString, ByteString)> {
    headers
        .iter()
        .map(|(k, v)| {
            (
                ByteString::from(k.as_str()),
                ByteString::from(v.as_bytes().to_vec()),
            )
        })
        .collect()
}

/// The request URL as the worker sees it: absolute, the host taken from the `Host` header
/// when the gateway passed an origin-form URI.
pub(crate) fn absolute_url(parts: &http::request::Parts) -> String {
    if parts.uri.scheme().is_some() {
        return parts.uri.to_string();
    }
    let host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    format!("http://{host}{path}")
}

/// Registers a stateless event as in flight and parks what JS needs of it under its id (taken
/// by [`op_cinder_take_event`] when JS is entered for it).
pub(crate) fn admit(st: &IsolateState, event: Event) -> u32 {
    let id = st.next_id();
    let (request_id, reply, ev) = match event {
        Event::Fetch {
            request_id,
            req,
            reply,
        } => {
            let (parts, body) = req.into_parts();
            let body = if parts.method == http::Method::GET
                || parts.method == http::Method::HEAD
                || http_body::Body::is_end_stream(&body)
            {
                None
            } else {
                let bid = st.next_id();
                st.bodies.borrow_mut().insert(bid, body);
                Some(bid)
            };
            let ev = JsEvent {
                kind: "fetch",
                id,
                request_id: request_id.clone(),
                method: parts.method.as_str().to_string(),
                url: absolute_url(&parts),
                headers: header_pairs(&parts.headers),
                body,
                cron: String::new(),
                scheduled_time: 0.0,
            };
            (request_id, Reply::Fetch(Some(reply)), ev)
        }
        Event::Scheduled {
            request_id,
            cron,
            time_ms,
            reply,
        } => {
            let ev = JsEvent {
                kind: "scheduled",
                id,
                request_id: request_id.clone(),
                method: String::new(),
                url: String::new(),
                headers: Vec::new(),
                body: None,
                cron,
                scheduled_time: time_ms as f64,
            };
            (request_id, Reply::Scheduled(Some(reply)), ev)
        }
        Event::Queue {
            request_id,
            batch,
            decisions,
            reply,
        } => {
            let ev = JsEvent {
                kind: "queue",
                id,
                request_id: request_id.clone(),
                method: String::new(),
                url: String::new(),
                headers: Vec::new(),
                body: None,
                cron: batch.queue.clone(),
                scheduled_time: 0.0,
            };
            st.queue_deliveries.borrow_mut().insert(
                id,
                crate::queues::Delivery {
                    batch: Some(batch),
                    decisions,
                },
            );
            // Same answer as `scheduled`: whether the handler threw.
            (request_id, Reply::Scheduled(Some(reply)), ev)
        }
    };
    st.inflight
        .borrow_mut()
        .insert(id, InFlight::new(request_id, reply));
    st.pending_stateless.borrow_mut().insert(id, ev);
    id
}

/// Event `eid`'s code resumes now (its I/O completed): this turn's CPU is charged to it.
#[op2(fast)]
fn op_cinder_touch(state: &mut OpState, #[smi] eid: u32) {
    if let Some(st) = isolate(state) {
        let mut t = st.touched.borrow_mut();
        if !t.contains(&eid) {
            t.push(eid);
        }
    }
}

#[op2]
#[serde]
fn op_cinder_take_event(state: &mut OpState, #[smi] id: u32) -> Option<JsEvent> {
    let st = isolate(state)?;
    let ev = st.pending_stateless.borrow_mut().remove(&id);
    ev
}

/// A body fed by JS through a sink: a bounded channel, so a slow reader slows the writer down
/// instead of buffering the whole body.
pub(crate) struct SinkBody {
    rx: mpsc::Receiver<Chunk>,
}

impl http_body::Body for SinkBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.rx.poll_recv(cx).map(|c| c.map(|r| r.map(Frame::data)))
    }
}

pub(crate) fn take_sink_body(st: &IsolateState, sink: u32) -> Option<SinkBody> {
    st.sink_receivers
        .borrow_mut()
        .remove(&sink)
        .map(|rx| SinkBody { rx })
}

pub(crate) fn body_from_js(st: &IsolateState, kind: u32, bytes: &JsBuffer, sink: u32) -> Body {
    match kind {
        1 => Body::from(bytes.to_vec()),
        2 => match take_sink_body(st, sink) {
            Some(b) => Body::new(b),
            None => Body::empty(),
        },
        _ => Body::empty(),
    }
}

pub(crate) fn build_headers(
    headers: Vec<(ByteString, ByteString)>,
) -> Result<http::HeaderMap, String> {
    let mut map = http::HeaderMap::with_capacity(headers.len());
    for (k, v) in headers {
        let name = http::HeaderName::from_bytes(&k).map_err(|e| format!("bad header name: {e}"))?;
        let value =
            http::HeaderValue::from_bytes(&v).map_err(|e| format!("bad header value: {e}"))?;
        map.append(name, value);
    }
    Ok(map)
}

#[op2]
#[allow(clippy::too_many_arguments)]
fn op_cinder_respond(
    state: &mut OpState,
    #[smi] id: u32,
    #[smi] status: u32,
    #[serde] headers: Vec<(ByteString, ByteString)>,
    #[smi] kind: u32,
    #[buffer] bytes: JsBuffer,
    #[smi] sink: u32,
    web_socket: f64,
) {
    let Some(st) = isolate(state) else { return };
    let valid = status < 1000 && http::StatusCode::from_u16(status as u16).is_ok();
    if let Some(f) = st.inflight.borrow_mut().get_mut(&id) {
        if f.status.is_none() {
            f.status = Some(if valid { status as u16 } else { 500 });
        }
    }
    let sender = match st.inflight.borrow_mut().get_mut(&id) {
        Some(InFlight {
            reply: Reply::Fetch(s),
            ..
        }) => s.take().map(Responder::Http),
        Some(InFlight {
            reply: Reply::Object(s),
            ..
        }) => s.take().map(Responder::Object),
        _ => None,
    };
    let Some(sender) = sender else { return };
    let body = body_from_js(&st, kind, &bytes, sink);
    let resp = match (
        http::StatusCode::from_u16(status as u16),
        build_headers(headers),
    ) {
        (Ok(code), Ok(map)) if status < 1000 => {
            let mut resp = http::Response::new(body);
            *resp.status_mut() = code;
            *resp.headers_mut() = map;
            if web_socket > 0.0 {
                // The client's end of a WebSocketPair: the gateway connects it.
                resp.extensions_mut()
                    .insert(crate::websocket::WsHandoff(web_socket as u64));
            }
            resp
        }
        (_, Err(e)) => {
            tracing::error!(worker = %st.worker.spec.name, "invalid response: {e}");
            error_response(500, "Worker returned an invalid response.")
        }
        _ => {
            tracing::error!(worker = %st.worker.spec.name, "invalid response status {status}");
            error_response(500, "Worker returned an invalid response.")
        }
    };
    match sender {
        Responder::Http(s) => {
            let _ = s.send(resp);
        }
        Responder::Object(s) => {
            let _ = s.send(Ok(crate::durable::DoReply::Fetch(resp)));
        }
    }
}

enum Responder {
    Http(tokio::sync::oneshot::Sender<http::Response<Body>>),
    Object(crate::state::ObjectReplyTx),
}

#[op2(fast)]
fn op_cinder_respond_error(state: &mut OpState, #[smi] id: u32, #[string] _message: &str) {
    let Some(st) = isolate(state) else { return };
    let sender = match st.inflight.borrow_mut().get_mut(&id) {
        Some(InFlight {
            reply: Reply::Fetch(s),
            ..
        }) => s.take(),
        _ => None,
    };
    if let Some(s) = sender {
        if let Some(f) = st.inflight.borrow_mut().get_mut(&id) {
            f.status = Some(500);
        }
        let _ = s.send(error_response(500, "Worker threw exception"));
    }
}

#[op2(fast)]
fn op_cinder_event_done(state: &mut OpState, #[smi] id: u32, #[string] error: &str) {
    let Some(st) = isolate(state) else { return };
    st.kv_budgets.borrow_mut().remove(&id);
    st.queue_deliveries.borrow_mut().remove(&id);
    let Some(mut done) = st.inflight.borrow_mut().remove(&id) else {
        return;
    };
    st.settle_in_slice(&mut done);
    let status = match &done.reply {
        Reply::Fetch(Some(_)) => Some(500),
        _ => None,
    };
    st.worker
        .stats
        .event_finished(&st.worker.spec.name, &done, status);
    match done.reply {
        Reply::Fetch(Some(s)) => {
            let _ = s.send(error_response(500, "Worker threw exception"));
        }
        Reply::Fetch(None) => {}
        Reply::Scheduled(Some(s)) => {
            let result = if error.is_empty() {
                Ok(())
            } else {
                Err(crate::HostError::Exception {
                    worker: st.worker.spec.name.clone(),
                    message: error.to_string(),
                })
            };
            let _ = s.send(result);
        }
        Reply::Scheduled(None) => {}
        Reply::Object(Some(s)) => {
            // The handler finished without answering (the JS side answers before it calls
            // this, so this is a bug there): fail the call rather than leave it hanging.
            let _ = s.send(Err(cinder_core::ActorError::new(if error.is_empty() {
                "the Durable Object did not answer"
            } else {
                error
            })));
        }
        Reply::Object(None) => {}
    }
}

#[op2]
#[serde]
async fn op_cinder_body_read(
    state: Rc<RefCell<OpState>>,
    #[smi] id: u32,
) -> Result<Option<ToJsBuffer>, JsErrorBox> {
    let Some(st) = isolate_rc(&state) else {
        return Ok(None);
    };
    let Some(mut body) = st.bodies.borrow_mut().remove(&id) else {
        return Ok(None);
    };
    loop {
        match body.frame().await {
            None => return Ok(None),
            Some(Err(e)) => return Err(JsErrorBox::type_error(format!("body read failed: {e}"))),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    st.bodies.borrow_mut().insert(id, body);
                    return Ok(Some(data.to_vec().into()));
                }
            }
        }
    }
}

#[op2(fast)]
fn op_cinder_body_close(state: &mut OpState, #[smi] id: u32) {
    if let Some(st) = isolate(state) {
        st.bodies.borrow_mut().remove(&id);
    }
}

#[op2(fast)]
#[smi]
fn op_cinder_sink_new(state: &mut OpState) -> u32 {
    let Some(st) = isolate(state) else { return 0 };
    let id = st.next_id();
    let (tx, rx) = mpsc::channel(SINK_DEPTH);
    st.sinks.borrow_mut().insert(id, tx);
    st.sink_receivers.borrow_mut().insert(id, rx);
    id
}

#[op2]
async fn op_cinder_sink_write(
    state: Rc<RefCell<OpState>>,
    #[smi] id: u32,
    #[buffer] chunk: JsBuffer,
) -> bool {
    let Some(st) = isolate_rc(&state) else {
        return false;
    };
    let Some(tx) = st.sinks.borrow().get(&id).cloned() else {
        return false;
    };
    tx.send(Ok(Bytes::copy_from_slice(&chunk))).await.is_ok()
}

#[op2(fast)]
fn op_cinder_sink_close(state: &mut OpState, #[smi] id: u32, #[string] error: &str) {
    let Some(st) = isolate(state) else { return };
    let tx = st.sinks.borrow_mut().remove(&id);
    if let Some(tx) = tx {
        if !error.is_empty() {
            tracing::warn!(worker = %st.worker.spec.name, "body stream errored: {error}");
            let _ = tx.try_send(Err(std::io::Error::other(error.to_string())));
        }
    }
    // A sink nobody took (the response failed before it was handed over) is dropped here.
    st.sink_receivers.borrow_mut().remove(&id);
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct OutResponse {
    status: u16,
    status_text: String,
    headers: Vec<(ByteString, ByteString)>,
    body: Option<u32>,
    /// The socket of a `101` answered with a WebSocket.
    web_socket: Option<f64>,
}

/// A response handed to JS: its body (if any) parked under a fresh id for `op_cinder_body_read`.
pub(crate) fn out_response(st: &IsolateState, resp: http::Response<Body>) -> OutResponse {
    let (parts, body) = resp.into_parts();
    let web_socket = parts
        .extensions
        .get::<crate::websocket::WsHandoff>()
        .map(|h| h.0 as f64);
    let body = if http_body::Body::is_end_stream(&body) {
        None
    } else {
        let bid = st.next_id();
        st.bodies.borrow_mut().insert(bid, body);
        Some(bid)
    };
    OutResponse {
        status: parts.status.as_u16(),
        status_text: parts
            .status
            .canonical_reason()
            .unwrap_or_default()
            .to_string(),
        headers: header_pairs(&parts.headers),
        body,
        web_socket,
    }
}

/// An outbound request built from what JS passed (method, URL, headers, body).
#[allow(clippy::too_many_arguments)]
pub(crate) fn build_request(
    st: &IsolateState,
    method: &str,
    url: &str,
    headers: Vec<(ByteString, ByteString)>,
    kind: u32,
    bytes: &JsBuffer,
    sink: u32,
) -> Result<http::Request<Body>, JsErrorBox> {
    let method = http::Method::from_bytes(method.as_bytes())
        .map_err(|_| JsErrorBox::type_error(format!("invalid method {method:?}")))?;
    let headers = build_headers(headers).map_err(JsErrorBox::type_error)?;
    let body = body_from_js(st, kind, bytes, sink);
    let mut req = http::Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = url
        .parse()
        .map_err(|e| JsErrorBox::type_error(format!("invalid URL {url:?}: {e}")))?;
    *req.headers_mut() = headers;
    Ok(req)
}

#[op2]
#[serde]
#[allow(clippy::too_many_arguments)]
async fn op_cinder_outbound(
    state: Rc<RefCell<OpState>>,
    #[string] target: String,
    #[serde] head: crate::ops_do::RequestHead,
    #[smi] kind: u32,
    #[buffer] bytes: JsBuffer,
    #[smi] sink: u32,
    #[smi] caller: u32,
    in_cs: bool,
) -> Result<OutResponse, JsErrorBox> {
    let st = isolate_rc(&state).ok_or_else(|| JsErrorBox::generic("isolate is shutting down"))?;
    let crate::ops_do::RequestHead {
        method,
        url,
        headers,
    } = head;
    let request = if target.is_empty() {
        let method = http::Method::from_bytes(method.as_bytes())
            .map_err(|_| JsErrorBox::type_error(format!("invalid method {method:?}")))?;
        let headers = build_headers(headers).map_err(JsErrorBox::type_error)?;
        Outbound::Internet(method, headers)
    } else {
        let binding = st
            .worker
            .spec
            .services
            .iter()
            .find(|s| s.binding == target)
            .ok_or_else(|| JsErrorBox::type_error(format!("no service binding {target:?}")))?;
        let host = st
            .worker
            .host()
            .ok_or_else(|| JsErrorBox::generic("the host is shut down"))?;
        let req = build_request(&st, &method, &url, headers, kind, &bytes, sink)?;
        Outbound::Service(host, binding.service.clone(), req)
    };
    // From a Durable Object, the request leaves only once the object's earlier writes are
    // durable, and its response comes back through the input gate.
    let io = async {
        match request {
            Outbound::Internet(method, headers) => {
                netguard::fetch(&st, method, &url, headers, kind, &bytes, sink).await
            }
            Outbound::Service(host, service, req) => {
                Ok(crate::host::dispatch_fetch(&host, &service, req).await)
            }
        }
    };
    let resp = crate::ops_do::outbound(&st, caller, in_cs, io)
        .await
        .map_err(|e| JsErrorBox::generic(e.message))??;
    Ok(out_response(&st, resp))
}

enum Outbound {
    Internet(http::Method, http::HeaderMap),
    Service(
        std::sync::Arc<crate::host::HostInner>,
        String,
        http::Request<Body>,
    ),
}

#[op2(fast)]
fn op_cinder_log(
    state: &mut OpState,
    #[string] msg: &str,
    #[smi] level: u32,
    #[string] request_id: &str,
) {
    let worker = isolate(state)
        .map(|s| s.worker.spec.name.clone())
        .unwrap_or_default();
    match level {
        0 => tracing::debug!(target: "worker", worker = %worker, request_id, "{msg}"),
        1 => tracing::info!(target: "worker", worker = %worker, request_id, "{msg}"),
        2 => tracing::warn!(target: "worker", worker = %worker, request_id, "{msg}"),
        _ => tracing::error!(target: "worker", worker = %worker, request_id, "{msg}"),
    }
}

#[op2]
#[serde]
fn op_cinder_module_data(
    state: &mut OpState,
    #[string] specifier: &str,
) -> Result<ToJsBuffer, JsErrorBox> {
    let st = isolate(state).ok_or_else(|| JsErrorBox::generic("no isolate state"))?;
    let data = st
        .worker
        .module_data
        .lock()
        .map_err(|_| JsErrorBox::generic("module data lock poisoned"))?
        .get(specifier)
        .cloned()
        .ok_or_else(|| JsErrorBox::generic(format!("no data module {specifier}")))?;
    Ok(data.to_vec().into())
}
