//! Ops of WebSockets (`WebSocketPair`, `accept`, `send`, `close`) and of hibernation
//! (`ctx.acceptWebSocket`, `getWebSockets`, `getTags`, attachments, auto-response). The node's
//! sockets live in [`crate::websocket::Sockets`]; see there for how messages travel.

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use cinder_core::gate::OutputWait;
use deno_core::{op2, OpState, ToJsBuffer};
use deno_error::JsErrorBox;
use futures::FutureExt;
use serde::Serialize;

use crate::host::HostInner;
use crate::state::IsolateState;
use crate::websocket::{
    Incoming, Outgoing, Target, WsMessage, MAX_ATTACHMENT_BYTES, MAX_AUTO_RESPONSE_CHARS,
};

fn isolate(state: &OpState) -> Result<Rc<IsolateState>, JsErrorBox> {
    state
        .try_borrow::<Rc<IsolateState>>()
        .cloned()
        .ok_or_else(|| JsErrorBox::generic("isolate is shutting down"))
}

fn host(st: &IsolateState) -> Result<Arc<HostInner>, JsErrorBox> {
    st.worker
        .host()
        .ok_or_else(|| JsErrorBox::generic("the host is shut down"))
}

fn object_id(
    st: &IsolateState,
    handle: u32,
) -> Result<(String, cinder_core::ObjectId), JsErrorBox> {
    let obj = st.object(handle).ok_or_else(|| {
        JsErrorBox::generic("Durable Object reset: this object's instance is no longer live")
    })?;
    Ok((obj.ctx.namespace().to_string(), obj.ctx.id().clone()))
}

/// One event of a socket, as JS sees it.
#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct JsWsEvent {
    pub socket: f64,
    pub object: u32,
    pub kind: &'static str,
    pub text: Option<String>,
    pub bytes: Option<ToJsBuffer>,
    pub code: u16,
    pub reason: String,
    pub was_clean: bool,
}

pub(crate) fn js_ws_event(socket: u64, object: u32, event: Incoming) -> JsWsEvent {
    let base = JsWsEvent {
        socket: socket as f64,
        object,
        ..Default::default()
    };
    match event {
        Incoming::Message(WsMessage::Text(t)) => JsWsEvent {
            kind: "message",
            text: Some(t),
            ..base
        },
        Incoming::Message(WsMessage::Binary(b)) => JsWsEvent {
            kind: "message",
            bytes: Some(b.to_vec().into()),
            ..base
        },
        Incoming::Close {
            code,
            reason,
            clean,
        } => JsWsEvent {
            kind: "close",
            code,
            reason,
            was_clean: clean,
            ..base
        },
        Incoming::Error(message) => JsWsEvent {
            kind: "error",
            reason: message,
            ..base
        },
    }
}

/// `new WebSocketPair()`: a new socket; JS makes its two ends.
#[op2(fast)]
fn op_ws_pair(state: &mut OpState) -> Result<f64, JsErrorBox> {
    let st = isolate(state)?;
    Ok(host(&st)?.sockets.create().id as f64)
}

/// `ws.accept()`: this isolate (and, inside a Durable Object, that object) receives the
/// socket's events from now on; returns what arrived before.
#[op2]
#[serde]
fn op_ws_accept(
    state: &mut OpState,
    id: f64,
    #[smi] object: u32,
) -> Result<Vec<JsWsEvent>, JsErrorBox> {
    let st = isolate(state)?;
    let thread = cinder_core::Runtime::current_executor()
        .ok_or_else(|| JsErrorBox::generic("not on an executor thread"))?;
    let queued = host(&st)?
        .sockets
        .accept_plain(
            id as u64,
            Target::Isolate {
                thread,
                worker: st.worker.spec.name.clone(),
                object,
            },
        )
        .map_err(JsErrorBox::type_error)?;
    st.open_sockets.set(st.open_sockets.get() + 1);
    if let Some(obj) = st.object(object) {
        // A plain socket keeps its object in memory (it cannot hibernate).
        obj.plain_sockets.set(obj.plain_sockets.get() + 1);
    }
    Ok(queued
        .into_iter()
        .map(|e| js_ws_event(id as u64, object, e))
        .collect())
}

/// A socket accepted here closed: it no longer keeps the isolate busy, nor its object (if
/// any) in memory.
#[op2(fast)]
fn op_ws_released(state: &mut OpState, #[smi] object: u32) {
    if let Ok(st) = isolate(state) {
        st.open_sockets.set(st.open_sockets.get().saturating_sub(1));
        if let Some(obj) = st.object(object) {
            obj.plain_sockets
                .set(obj.plain_sockets.get().saturating_sub(1));
            obj.ctx.activity_changed();
        }
    }
}

/// `ctx.acceptWebSocket(ws, tags)`.
#[op2]
#[serde]
fn op_ws_accept_hibernatable(
    state: &mut OpState,
    #[smi] object: u32,
    id: f64,
    #[serde] tags: Vec<String>,
) -> Result<Vec<JsWsEvent>, JsErrorBox> {
    let st = isolate(state)?;
    let (ns, oid) = object_id(&st, object)?;
    let queued = host(&st)?
        .sockets
        .accept_hibernatable(id as u64, &ns, &oid, tags)
        .map_err(JsErrorBox::type_error)?;
    Ok(queued
        .into_iter()
        .map(|e| js_ws_event(id as u64, object, e))
        .collect())
}

/// Messages an object sends leave in order, each once the writes made before it are durable.
pub(crate) struct SendQueue {
    items: std::cell::RefCell<VecDeque<(std::pin::Pin<Box<OutputWait>>, Outgoing)>>,
    running: std::cell::Cell<bool>,
}

fn send(
    st: &IsolateState,
    host: &HostInner,
    id: u64,
    caller: u32,
    msg: Outgoing,
) -> Result<(), JsErrorBox> {
    let socket = host
        .sockets
        .get(id)
        .ok_or_else(|| JsErrorBox::generic("WebSocket is closed"))?;
    let gate = match st.object(caller) {
        Some(obj) => obj.ctx.output_gate().wait(),
        None => {
            socket.outbox.push(msg);
            return Ok(());
        }
    };
    let mut gate = Box::pin(gate);
    let queue = st
        .ws_send_queues
        .borrow_mut()
        .entry(id)
        .or_insert_with(|| {
            Rc::new(SendQueue {
                items: Default::default(),
                running: Default::default(),
            })
        })
        .clone();
    if !queue.running.get() {
        // Nothing queued before it: if no write is pending, it leaves at once.
        match (&mut gate).now_or_never() {
            Some(Ok(())) => {
                socket.outbox.push(msg);
                return Ok(());
            }
            // The object is being reset: the message is dropped, as on Cloudflare.
            Some(Err(_)) => return Ok(()),
            None => {}
        }
    }
    queue.items.borrow_mut().push_back((gate, msg));
    if !queue.running.replace(true) {
        tokio::task::spawn_local(async move {
            loop {
                let next = queue.items.borrow_mut().pop_front();
                let Some((gate, msg)) = next else { break };
                if gate.await.is_ok() {
                    socket.outbox.push(msg);
                }
            }
            queue.running.set(false);
        });
    }
    Ok(())
}

/// `ws.send(data)`.
#[op2]
fn op_ws_send(
    state: &mut OpState,
    id: f64,
    #[smi] caller: u32,
    #[string] text: String,
    #[buffer(copy)] bytes: Option<Vec<u8>>,
) -> Result<(), JsErrorBox> {
    let st = isolate(state)?;
    let host = host(&st)?;
    let msg = match bytes {
        Some(b) => WsMessage::Binary(Bytes::from(b)),
        None => WsMessage::Text(text),
    };
    send(&st, &host, id as u64, caller, Outgoing::Message(msg))
}

/// `ws.close(code, reason)`.
#[op2(fast)]
fn op_ws_close(
    state: &mut OpState,
    id: f64,
    #[smi] caller: u32,
    #[smi] code: u32,
    #[string] reason: String,
) -> Result<(), JsErrorBox> {
    let st = isolate(state)?;
    let host = host(&st)?;
    if let Some(s) = host.sockets.get(id as u64) {
        if let Ok(mut state) = s.state.lock() {
            state.closing = true;
        }
    }
    send(
        &st,
        &host,
        id as u64,
        caller,
        Outgoing::Close {
            code: code as u16,
            reason,
        },
    )
}

/// `ctx.getWebSockets(tag)`: ids and tags of the object's open hibernatable sockets.
#[op2]
#[serde]
fn op_ws_of_object(
    state: &mut OpState,
    #[smi] object: u32,
    #[string] tag: String,
) -> Result<Vec<(f64, Vec<String>)>, JsErrorBox> {
    let st = isolate(state)?;
    let (_, oid) = object_id(&st, object)?;
    let tag = (!tag.is_empty()).then_some(tag.as_str());
    Ok(host(&st)?
        .sockets
        .of_object(&oid, tag)
        .into_iter()
        .map(|(id, tags)| (id as f64, tags))
        .collect())
}

/// `ws.serializeAttachment(value)` (the value already V8-serialized).
#[op2(fast)]
fn op_ws_set_attachment(
    state: &mut OpState,
    id: f64,
    #[buffer(copy)] bytes: Vec<u8>,
) -> Result<(), JsErrorBox> {
    if bytes.len() > MAX_ATTACHMENT_BYTES {
        return Err(JsErrorBox::range_error(format!(
            "A WebSocket 'attachment' cannot be larger than {MAX_ATTACHMENT_BYTES} bytes. The serialized attachment was {} bytes.",
            bytes.len()
        )));
    }
    let st = isolate(state)?;
    let socket = host(&st)?
        .sockets
        .get(id as u64)
        .ok_or_else(|| JsErrorBox::generic("WebSocket is closed"))?;
    if let Ok(mut s) = socket.state.lock() {
        s.attachment = Some(Bytes::from(bytes));
    }
    Ok(())
}

#[op2]
#[serde]
fn op_ws_get_attachment(state: &mut OpState, id: f64) -> Result<Option<ToJsBuffer>, JsErrorBox> {
    let st = isolate(state)?;
    let socket = host(&st)?.sockets.get(id as u64);
    Ok(socket.and_then(|s| {
        s.state
            .lock()
            .ok()
            .and_then(|st| st.attachment.clone())
            .map(|b| b.to_vec().into())
    }))
}

/// `ctx.setWebSocketAutoResponse(pair)`; empty strings clear it.
#[op2(fast)]
fn op_ws_set_auto_response(
    state: &mut OpState,
    #[smi] object: u32,
    #[string] request: String,
    #[string] response: String,
) -> Result<(), JsErrorBox> {
    for (what, s) in [("request", &request), ("response", &response)] {
        if s.chars().count() > MAX_AUTO_RESPONSE_CHARS {
            return Err(JsErrorBox::range_error(format!(
                "Auto-response {what} is too large: the maximum is {MAX_AUTO_RESPONSE_CHARS} characters."
            )));
        }
    }
    let st = isolate(state)?;
    let (_, oid) = object_id(&st, object)?;
    let pair = (!request.is_empty()).then_some((request, response));
    host(&st)?
        .sockets
        .with_object(&oid, |o| o.auto_response = pair);
    Ok(())
}

#[op2]
#[serde]
fn op_ws_get_auto_response(
    state: &mut OpState,
    #[smi] object: u32,
) -> Result<Option<(String, String)>, JsErrorBox> {
    let st = isolate(state)?;
    let (_, oid) = object_id(&st, object)?;
    Ok(host(&st)?.sockets.auto_response(&oid))
}

/// When the runtime last auto-responded on the socket (ms since the epoch), or -1.
#[op2(fast)]
fn op_ws_auto_response_at(state: &mut OpState, id: f64) -> Result<f64, JsErrorBox> {
    let st = isolate(state)?;
    let socket = host(&st)?.sockets.get(id as u64);
    Ok(socket
        .and_then(|s| s.state.lock().ok().and_then(|st| st.auto_response_at))
        .unwrap_or(-1.0))
}

/// `ctx.setHibernatableWebSocketEventTimeout(ms)` (kept; not enforced yet).
#[op2(fast)]
fn op_ws_set_event_timeout(
    state: &mut OpState,
    #[smi] object: u32,
    ms: f64,
) -> Result<(), JsErrorBox> {
    const MAX_MS: f64 = 604_800_000.0;
    if !(0.0..=MAX_MS).contains(&ms) {
        return Err(JsErrorBox::range_error(format!(
            "The hibernatable WebSocket event timeout must be between 0 and {MAX_MS} milliseconds."
        )));
    }
    let st = isolate(state)?;
    let (_, oid) = object_id(&st, object)?;
    host(&st)?
        .sockets
        .with_object(&oid, |o| o.event_timeout_ms = (ms > 0.0).then_some(ms));
    Ok(())
}

/// The object's hibernatable event timeout in ms, or -1 when none is set.
#[op2(fast)]
fn op_ws_get_event_timeout(state: &mut OpState, #[smi] object: u32) -> Result<f64, JsErrorBox> {
    let st = isolate(state)?;
    let (_, oid) = object_id(&st, object)?;
    Ok(host(&st)?
        .sockets
        .with_object(&oid, |o| o.event_timeout_ms)
        .unwrap_or(-1.0))
}

/// A WebSocket event delivered to a socket accepted in this isolate (`enter_ws_event`).
#[op2]
#[serde]
fn op_ws_take(state: &mut OpState, #[smi] eid: u32) -> Option<JsWsEvent> {
    let st = isolate(state).ok()?;
    let e = st.pending_ws.borrow_mut().remove(&eid);
    e
}

/// The object's count of pending timers (a timer keeps it from hibernating).
#[op2(fast)]
fn op_do_timers(state: &mut OpState, #[smi] object: u32, delta: i32) {
    if let Ok(st) = isolate(state) {
        if let Some(obj) = st.object(object) {
            let n = (obj.timers.get() as i64 + delta as i64).max(0) as u32;
            obj.timers.set(n);
            if n == 0 {
                obj.ctx.activity_changed();
            }
        }
    }
}

/// What `new WebSocket(url)` or `fetch(url, {headers: {Upgrade: "websocket"}})` asks for.
#[derive(serde::Deserialize)]
pub(crate) struct ConnectArgs {
    url: String,
    protocols: Vec<String>,
    headers: Vec<(deno_core::ByteString, deno_core::ByteString)>,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Connected {
    socket: f64,
    protocol: String,
    error: Option<String>,
}

/// Opens an outgoing WebSocket under the same address rules as the global `fetch()`. With
/// `accept` (`new WebSocket(url)`) its events flow at once; otherwise (`fetch` with an
/// `Upgrade` header) they wait for `ws.accept()`.
#[op2]
#[serde]
fn op_ws_connect(
    state: &mut OpState,
    #[serde] args: ConnectArgs,
    #[smi] caller: u32,
    in_cs: bool,
    accept: bool,
) -> impl std::future::Future<Output = Result<Connected, JsErrorBox>> {
    let prepared = isolate(state).and_then(|st| {
        let host = host(&st)?;
        let thread = cinder_core::Runtime::current_executor()
            .ok_or_else(|| JsErrorBox::generic("not on an executor thread"))?;
        Ok((st, host, thread))
    });
    async move {
        let (st, host, thread) = prepared?;
        let allow_private = st.worker.allow_private_fetch;
        let connect =
            crate::ws_delivery::connect(args.url, args.protocols, args.headers, allow_private);
        let result = crate::ops_do::outbound(&st, caller, in_cs, connect)
            .await
            .map_err(|e| JsErrorBox::generic(e.message))?;
        let (ws, protocol) = match result {
            Ok(v) => v,
            Err(message) => {
                return Ok(Connected {
                    error: Some(message),
                    ..Default::default()
                })
            }
        };
        let socket = host.sockets.create();
        if accept {
            st.open_sockets.set(st.open_sockets.get() + 1);
            let _ = host.sockets.accept_plain(
                socket.id,
                Target::Isolate {
                    thread,
                    worker: st.worker.spec.name.clone(),
                    object: caller,
                },
            );
            if let Some(obj) = st.object(caller) {
                obj.plain_sockets.set(obj.plain_sockets.get() + 1);
            }
        }
        let id = socket.id;
        let link = crate::websocket::SocketLink::connect(socket, Arc::downgrade(&host))
            .ok_or_else(|| JsErrorBox::generic("socket already connected"))?;
        // Network work runs on the gateway's runtime (this future is polled outside any
        // LocalSet, so it could not spawn a local task anyway).
        match &host.net {
            Some(net) => {
                net.spawn(crate::ws_delivery::pump(ws, link));
            }
            None => {
                tokio::spawn(crate::ws_delivery::pump(ws, link));
            }
        }
        Ok(Connected {
            socket: id as f64,
            protocol,
            error: None,
        })
    }
}

deno_core::extension!(
    cinder_ws,
    ops = [
        op_ws_connect,
        op_ws_pair,
        op_ws_accept,
        op_ws_released,
        op_ws_accept_hibernatable,
        op_ws_send,
        op_ws_close,
        op_ws_of_object,
        op_ws_set_attachment,
        op_ws_get_attachment,
        op_ws_set_auto_response,
        op_ws_get_auto_response,
        op_ws_auto_response_at,
        op_ws_set_event_timeout,
        op_ws_get_event_timeout,
        op_ws_take,
        op_do_timers,
    ],
);
