//! Ops of Durable Objects: namespaces and ids, stubs (the caller's side), and the object's own
//! side: taking events, answering them, `ctx` and `ctx.storage`.
//!
//! Gates, as `core::gate` documents them, from JS:
//! - A storage read locks the object's input gate when it is *issued* (the op's synchronous
//!   part) and the lock is released only after the JS that received the result has run (end of
//!   that event-loop turn: `IsolateState::deferred_locks`).
//! - Writes are synchronous and join the turn's batch; core holds the output gate for them.
//! - Anything the object sends (stub calls, `fetch()`) waits for the output gate; its result
//!   is handed back only when the input gate is open — unless the call was made inside the
//!   object's own critical section (`blockConcurrencyWhile`, `transaction`), whose I/O must
//!   complete for the section to end. JS passes that fact (`in_cs`) from its async context.

use std::future::Future;
use std::rc::Rc;

use bytes::Bytes;
use cinder_core::{
    ActorContext, ActorError, GateBroken, Jurisdiction, ListOptions, ObjectError, ObjectId,
    ReadOptions, WriteOptions, OVERLOADED_MESSAGE,
};
use cinder_storage::{ErrorKind, StorageError};
use deno_core::{op2, ByteString, JsBuffer, OpState, ToJsBuffer};
use deno_error::JsErrorBox;
use serde::{Deserialize, Serialize};

use crate::durable::{DoCall, DoEvent, DoReply, ObjectEntry};
use crate::ops::{absolute_url, build_request, header_pairs, out_response, OutResponse};
use crate::state::{InFlight, IsolateState, Reply};

fn isolate(state: &OpState) -> Result<Rc<IsolateState>, JsErrorBox> {
    state
        .try_borrow::<Rc<IsolateState>>()
        .cloned()
        .ok_or_else(|| JsErrorBox::generic("isolate is shutting down"))
}

fn js_error(kind: ErrorKind, message: impl Into<String>) -> JsErrorBox {
    let message = message.into();
    match kind {
        ErrorKind::TypeError => JsErrorBox::type_error(message),
        ErrorKind::RangeError => JsErrorBox::range_error(message),
        ErrorKind::Error | ErrorKind::Internal => JsErrorBox::generic(message),
    }
}

fn storage_error(e: StorageError) -> JsErrorBox {
    js_error(e.kind(), e.to_string())
}

fn actor_error(e: ActorError) -> JsErrorBox {
    JsErrorBox::new(class_name(&e.name), e.message)
}

/// JsErrorBox wants a `'static` class name: the standard ones, else `Error`.
fn class_name(name: &str) -> &'static str {
    match name {
        "TypeError" => "TypeError",
        "RangeError" => "RangeError",
        "SyntaxError" => "SyntaxError",
        "ReferenceError" => "ReferenceError",
        "DataCloneError" => "DataCloneError",
        _ => "Error",
    }
}

/// The object behind `handle`, or the error JS gets when it was reset meanwhile.
fn object(st: &IsolateState, handle: u32) -> Result<Rc<ObjectEntry>, JsErrorBox> {
    st.object(handle).ok_or_else(|| {
        JsErrorBox::generic(
            "Durable Object reset: this object's instance is no longer live (it was reset or \
             evicted); a new one serves the next event.",
        )
    })
}

// ---------------------------------------------------------------------------------------------
// Namespaces and ids

fn namespace(
    st: &IsolateState,
    binding: &str,
    jurisdiction: &str,
) -> Result<cinder_core::Namespace, JsErrorBox> {
    let key =
        st.worker.do_namespaces.get(binding).ok_or_else(|| {
            JsErrorBox::type_error(format!("no Durable Object binding {binding:?}"))
        })?;
    let host = st
        .worker
        .host()
        .ok_or_else(|| JsErrorBox::generic("the host is shut down"))?;
    let ns = host
        .runtime
        .namespace(key)
        .ok_or_else(|| JsErrorBox::generic(format!("no Durable Object namespace {key:?}")))?;
    if jurisdiction.is_empty() {
        return Ok(ns);
    }
    let j: Jurisdiction = jurisdiction
        .parse()
        .map_err(|_| JsErrorBox::type_error(format!("Unknown jurisdiction: {jurisdiction}")))?;
    Ok(ns.jurisdiction(j))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsId {
    hex: String,
    jurisdiction: Option<String>,
}

fn js_id(id: &ObjectId) -> JsId {
    JsId {
        hex: id.to_hex(),
        jurisdiction: id.jurisdiction().map(|j| j.to_string()),
    }
}

#[op2]
#[serde]
fn op_do_id_from_name(
    state: &mut OpState,
    #[string] binding: &str,
    #[string] jurisdiction: &str,
    #[string] name: &str,
) -> Result<JsId, JsErrorBox> {
    let st = isolate(state)?;
    Ok(js_id(
        &namespace(&st, binding, jurisdiction)?.id_from_name(name),
    ))
}

#[op2]
#[serde]
fn op_do_new_unique_id(
    state: &mut OpState,
    #[string] binding: &str,
    #[string] jurisdiction: &str,
    #[string] requested: &str,
) -> Result<JsId, JsErrorBox> {
    let st = isolate(state)?;
    let ns = namespace(&st, binding, jurisdiction)?;
    let requested =
        if requested.is_empty() {
            None
        } else {
            Some(requested.parse::<Jurisdiction>().map_err(|_| {
                JsErrorBox::type_error(format!("Unknown jurisdiction: {requested}"))
            })?)
        };
    let id = ns
        .new_unique_id(requested)
        .map_err(|e| JsErrorBox::type_error(e.to_string()))?;
    Ok(js_id(&id))
}

/// `idFromString`, and the check `get(id)` makes: the id must be this namespace's (and of its
/// jurisdiction, for a scoped namespace).
#[op2]
#[serde]
fn op_do_id_from_string(
    state: &mut OpState,
    #[string] binding: &str,
    #[string] jurisdiction: &str,
    #[string] hex: &str,
) -> Result<JsId, JsErrorBox> {
    let st = isolate(state)?;
    let id = namespace(&st, binding, jurisdiction)?
        .id_from_string(hex)
        .map_err(|e| JsErrorBox::type_error(e.to_string()))?;
    Ok(js_id(&id))
}

/// The id a stub targets: checked against the namespace; a named id keeps its name (so the
/// object sees `ctx.id.name`).
fn target(
    st: &IsolateState,
    binding: &str,
    jurisdiction: &str,
    hex: &str,
    name: &str,
) -> Result<cinder_core::Stub, JsErrorBox> {
    let ns = namespace(st, binding, jurisdiction)?;
    let id = ns
        .id_from_string(hex)
        .map_err(|e| JsErrorBox::type_error(e.to_string()))?;
    let id = if name.is_empty() {
        id
    } else {
        let named = ns.id_from_name(name);
        if named != id {
            return Err(JsErrorBox::type_error(
                "Durable Object ID does not match its name",
            ));
        }
        named
    };
    Ok(ns.get(id))
}

// ---------------------------------------------------------------------------------------------
// Stubs: the caller's side

/// An error a stub call rejects with, with Cloudflare's flags.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CallError {
    name: String,
    message: String,
    remote: bool,
    overloaded: bool,
    retryable: bool,
}

impl From<ObjectError> for CallError {
    fn from(e: ObjectError) -> CallError {
        let mut out = CallError {
            name: "Error".into(),
            message: e.to_string(),
            remote: false,
            overloaded: false,
            retryable: false,
        };
        match e {
            ObjectError::Overloaded => {
                out.message = OVERLOADED_MESSAGE.into();
                out.overloaded = true;
            }
            ObjectError::Remote(a) => {
                out.name = a.name;
                out.message = a.message;
                out.remote = true;
            }
            ObjectError::Reset(_) => out.retryable = true,
            _ => {}
        }
        out
    }
}

impl CallError {
    /// An error thrown by the code on the other side of an RPC call.
    pub(crate) fn remote(e: ActorError) -> CallError {
        CallError {
            name: e.name,
            message: e.message,
            remote: true,
            overloaded: false,
            retryable: false,
        }
    }
}

impl From<ActorError> for CallError {
    fn from(e: ActorError) -> CallError {
        CallError {
            name: e.name,
            message: e.message,
            remote: false,
            overloaded: false,
            retryable: true,
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct FetchOutcome {
    response: Option<OutResponse>,
    error: Option<CallError>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RpcOutcome {
    pub(crate) result: Option<ToJsBuffer>,
    /// Bodies (by id) of the streams in the result.
    pub(crate) streams: Vec<u32>,
    pub(crate) error: Option<CallError>,
}

/// Runs `io` as the calling object's outbound I/O (output gate before, input gate after), or
/// as is when the caller is a stateless worker (`caller == 0`).
pub(crate) async fn outbound<F: Future>(
    st: &IsolateState,
    caller: u32,
    in_cs: bool,
    io: F,
) -> Result<F::Output, ActorError> {
    if caller == 0 {
        return Ok(io.await);
    }
    let obj = st.object(caller).ok_or_else(|| {
        ActorError::new("Durable Object reset: the calling object is no longer live")
    })?;
    let ctx = obj.ctx.clone();
    drop(obj);
    ctx.output_gate().wait().await?;
    let value = io.await;
    readmit(&ctx, in_cs).await?;
    Ok(value)
}

/// Lets an op's result back into its object through the input gate, as every I/O completion
/// must be — except inside the object's own critical section (`blockConcurrencyWhile`,
/// `transaction`): its code is the one waiting for the result, and the gate stays closed until
/// it ends.
pub(crate) async fn readmit(ctx: &ActorContext, in_cs: bool) -> Result<(), GateBroken> {
    if !in_cs {
        ctx.input_gate().wait().await?;
    }
    Ok(())
}

/// Which object a stub call is for, as the JS stub knows it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StubTarget {
    binding: String,
    jurisdiction: String,
    hex: String,
    name: String,
}

/// An outbound request's head, as JS passes it.
#[derive(Deserialize)]
pub(crate) struct RequestHead {
    pub method: String,
    pub url: String,
    pub headers: Vec<(ByteString, ByteString)>,
}

#[op2]
#[serde]
fn op_do_fetch(
    state: &mut OpState,
    #[serde] target: StubTarget,
    #[smi] caller: u32,
    in_cs: bool,
    #[serde] head: RequestHead,
    #[smi] kind: u32,
    #[buffer] bytes: JsBuffer,
    #[smi] sink: u32,
) -> impl Future<Output = Result<FetchOutcome, JsErrorBox>> {
    let prepared = isolate(state).and_then(|st| {
        let stub = stub_for(&st, &target)?;
        let req = build_request(
            &st,
            &head.method,
            &head.url,
            head.headers,
            kind,
            &bytes,
            sink,
        )?;
        Ok((st, stub, req))
    });
    async move {
        let (st, stub, req) = prepared?;
        let request_id = String::new();
        let call = outbound(&st, caller, in_cs, async move {
            stub.call(Box::new(DoCall::Fetch { request_id, req })).await
        })
        .await;
        let outcome = match call {
            Err(e) => FetchOutcome {
                response: None,
                error: Some(e.into()),
            },
            Ok(Err(e)) => FetchOutcome {
                response: None,
                error: Some(e.into()),
            },
            Ok(Ok(payload)) => match payload.downcast::<DoReply>().map(|r| *r) {
                Ok(DoReply::Fetch(resp)) => FetchOutcome {
                    response: Some(out_response(&st, resp)),
                    error: None,
                },
                _ => FetchOutcome {
                    response: None,
                    error: Some(
                        ActorError::new("the Durable Object answered with no Response").into(),
                    ),
                },
            },
        };
        Ok(outcome)
    }
}

fn stub_for(st: &IsolateState, t: &StubTarget) -> Result<cinder_core::Stub, JsErrorBox> {
    target(st, &t.binding, &t.jurisdiction, &t.hex, &t.name)
}

#[op2]
#[serde]
fn op_do_rpc(
    state: &mut OpState,
    #[serde] target: StubTarget,
    #[smi] caller: u32,
    in_cs: bool,
    #[buffer] message: JsBuffer,
    #[serde] streams: Vec<u32>,
) -> impl Future<Output = Result<RpcOutcome, JsErrorBox>> {
    let prepared = isolate(state).and_then(|st| {
        let stub = stub_for(&st, &target)?;
        let message = crate::ops_rpc::message_from_js(&st, &message, &streams);
        Ok((st, stub, message))
    });
    async move {
        let (st, stub, message) = prepared?;
        let request_id = String::new();
        let call = outbound(&st, caller, in_cs, async move {
            stub.call(Box::new(DoCall::Rpc {
                request_id,
                message,
            }))
            .await
        })
        .await;
        let failed = |error: CallError| RpcOutcome {
            result: None,
            streams: Vec::new(),
            error: Some(error),
        };
        Ok(match call {
            Err(e) => failed(e.into()),
            Ok(Err(e)) => failed(e.into()),
            Ok(Ok(payload)) => match payload.downcast::<DoReply>().map(|r| *r) {
                Ok(reply) => crate::ops_rpc::outcome(&st, Ok(Ok(reply))),
                Err(_) => failed(ActorError::new("the Durable Object gave no RPC result").into()),
            },
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The object's side: events and answers

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsDoEvent {
    kind: &'static str,
    handle: u32,
    request_id: String,
    // construct
    class_name: String,
    id_hex: String,
    id_name: Option<String>,
    // fetch
    method: String,
    url: String,
    headers: Vec<(ByteString, ByteString)>,
    body: Option<u32>,
    // rpc
    message: Option<ToJsBuffer>,
    // alarm
    scheduled_time: f64,
    retry_count: u32,
    is_retry: bool,
    // export / entrypoint
    export_id: String,
    entrypoint: Option<String>,
    /// Bodies (by id) of the streams passed in `message`.
    streams: Vec<u32>,
    // ws
    ws: Option<crate::ops_ws::JsWsEvent>,
}

impl JsDoEvent {
    fn new(kind: &'static str, handle: u32) -> JsDoEvent {
        JsDoEvent {
            kind,
            handle,
            request_id: String::new(),
            class_name: String::new(),
            id_hex: String::new(),
            id_name: None,
            method: String::new(),
            url: String::new(),
            headers: Vec::new(),
            body: None,
            message: None,
            scheduled_time: 0.0,
            retry_count: 0,
            is_retry: false,
            export_id: String::new(),
            entrypoint: None,
            streams: Vec::new(),
            ws: None,
        }
    }
}

/// Takes the event JS was entered for (see `Isolate::enter_object`).
#[op2]
#[serde]
fn op_do_take(state: &mut OpState, #[smi] eid: u32) -> Result<JsDoEvent, JsErrorBox> {
    let st = isolate(state)?;
    let event = st
        .pending_events
        .borrow_mut()
        .remove(&eid)
        .ok_or_else(|| JsErrorBox::generic("no such Durable Object event"))?;
    Ok(match event {
        DoEvent::Construct {
            handle,
            class,
            id_hex,
            id_name,
        } => JsDoEvent {
            class_name: class,
            id_hex,
            id_name,
            ..JsDoEvent::new("construct", handle)
        },
        DoEvent::Alarm { handle, info } => JsDoEvent {
            scheduled_time: info.scheduled_time as f64,
            retry_count: info.retry_count,
            is_retry: info.is_retry,
            ..JsDoEvent::new("alarm", handle)
        },
        DoEvent::Export { id, message } => {
            let (message, streams) = crate::ops_rpc::message_to_js(&st, message);
            JsDoEvent {
                export_id: id,
                message: Some(message),
                streams,
                ..JsDoEvent::new("export", 0)
            }
        }
        DoEvent::Entrypoint {
            entrypoint,
            message,
        } => {
            let (message, streams) = crate::ops_rpc::message_to_js(&st, message);
            JsDoEvent {
                entrypoint,
                message: Some(message),
                streams,
                ..JsDoEvent::new("entrypoint", 0)
            }
        }
        DoEvent::Call {
            handle,
            call: DoCall::Rpc {
                request_id,
                message,
            },
        } => {
            let (message, streams) = crate::ops_rpc::message_to_js(&st, message);
            JsDoEvent {
                request_id,
                message: Some(message),
                streams,
                ..JsDoEvent::new("rpc", handle)
            }
        }
        DoEvent::Call {
            handle,
            call: DoCall::WebSocket { socket, event },
        } => JsDoEvent {
            ws: Some(crate::ops_ws::js_ws_event(socket, handle, event)),
            ..JsDoEvent::new("ws", handle)
        },
        DoEvent::Call {
            handle,
            call: DoCall::Fetch { request_id, req },
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
            JsDoEvent {
                request_id,
                method: parts.method.as_str().to_string(),
                url: absolute_url(&parts),
                headers: header_pairs(&parts.headers),
                body,
                ..JsDoEvent::new("fetch", handle)
            }
        }
    })
}

/// Handles of objects the runtime dropped; JS forgets their instances.
#[op2]
#[serde]
fn op_do_take_dead(state: &mut OpState) -> Vec<u32> {
    match isolate(state) {
        Ok(st) => std::mem::take(&mut *st.dead_objects.borrow_mut()),
        Err(_) => Vec::new(),
    }
}

fn take_object_reply(st: &IsolateState, eid: u32) -> Option<crate::state::ObjectReplyTx> {
    match st.inflight.borrow_mut().get_mut(&eid) {
        Some(InFlight {
            reply: Reply::Object(s),
            ..
        }) => s.take(),
        _ => None,
    }
}

/// The answer of an RPC call (serialized result, with the sinks of its streams) or of an
/// alarm or WebSocket event (`kind` 1: done).
#[op2]
fn op_do_return(
    state: &mut OpState,
    #[smi] eid: u32,
    #[smi] kind: u32,
    #[buffer] bytes: &[u8],
    #[serde] streams: Vec<u32>,
) {
    let Ok(st) = isolate(state) else { return };
    if let Some(tx) = take_object_reply(&st, eid) {
        let reply = if kind == 1 {
            DoReply::Alarm
        } else {
            DoReply::Rpc(crate::ops_rpc::message_from_js(&st, bytes, &streams))
        };
        let _ = tx.send(Ok(reply));
    }
}

/// The event's handler threw: the caller gets the error with `.remote = true`.
#[op2(fast)]
fn op_do_throw(
    state: &mut OpState,
    #[smi] eid: u32,
    #[string] name: &str,
    #[string] message: &str,
) {
    let Ok(st) = isolate(state) else { return };
    if let Some(tx) = take_object_reply(&st, eid) {
        let _ = tx.send(Err(ActorError::with_name(name, message)));
    }
}

// ---------------------------------------------------------------------------------------------
// ctx

/// `ctx.blockConcurrencyWhile`: locks the input gate now; JS ends it with
/// [`op_do_bcw_end`] when the callback settles (an error resets the object).
#[op2(fast)]
#[smi]
fn op_do_bcw_begin(state: &mut OpState, #[smi] handle: u32) -> Result<u32, JsErrorBox> {
    let st = isolate(state)?;
    let obj = object(&st, handle)?;
    let token = st.next_id();
    let (tx, rx) = tokio::sync::oneshot::channel::<Result<(), ActorError>>();
    st.critical_sections.borrow_mut().insert(token, tx);
    // Dropping the returned future is fine: the section runs on its own task (core docs).
    drop(obj.ctx.block_concurrency_while(async move {
        rx.await
            .unwrap_or_else(|_| Err(ActorError::new("the critical section was abandoned")))
    }));
    Ok(token)
}

#[op2(fast)]
fn op_do_bcw_end(state: &mut OpState, #[smi] token: u32, #[string] error: &str) {
    let Ok(st) = isolate(state) else { return };
    let tx = st.critical_sections.borrow_mut().remove(&token);
    if let Some(tx) = tx {
        let _ = tx.send(if error.is_empty() {
            Ok(())
        } else {
            Err(ActorError::new(error))
        });
    }
}

/// `ctx.waitUntil(p)`: keeps the object in memory until JS reports `p` settled (or 15 min).
#[op2(fast)]
#[smi]
fn op_do_wait_until(state: &mut OpState, #[smi] handle: u32) -> Result<u32, JsErrorBox> {
    let st = isolate(state)?;
    let obj = object(&st, handle)?;
    let token = st.next_id();
    let (tx, rx) = tokio::sync::oneshot::channel::<Result<(), ActorError>>();
    st.critical_sections.borrow_mut().insert(token, tx);
    obj.ctx.wait_until(async move {
        let _ = tokio::time::timeout(crate::WAIT_UNTIL_LIMIT, rx).await;
    });
    Ok(token)
}

/// `ctx.abort(reason)`.
#[op2(fast)]
fn op_do_abort(state: &mut OpState, #[smi] handle: u32, #[string] reason: &str) {
    let Ok(st) = isolate(state) else { return };
    if let Some(obj) = st.object(handle) {
        let ctx = obj.ctx.clone();
        drop(obj);
        ctx.reset(&format!(
            "Durable Object reset: ctx.abort() was called: {reason}"
        ));
    }
}

/// Resolves when the object's input gate is open: timers and other callbacks of an object run
/// only then.
#[op2]
fn op_do_input_wait(
    state: &mut OpState,
    #[smi] handle: u32,
) -> impl Future<Output = Result<(), JsErrorBox>> {
    let gate = isolate(state)
        .and_then(|st| object(&st, handle))
        .map(|o| o.ctx.input_gate().clone());
    async move {
        let gate = gate?;
        gate.wait()
            .await
            .map_err(|e| JsErrorBox::generic(e.0.to_string()))
    }
}

#[op2(fast)]
fn op_do_input_open(state: &mut OpState, #[smi] handle: u32) -> bool {
    isolate(state)
        .and_then(|st| object(&st, handle))
        .map(|o| !o.ctx.input_gate().is_locked())
        .unwrap_or(false)
}

// ---------------------------------------------------------------------------------------------
// ctx.storage

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct JsListOptions {
    start: Option<String>,
    start_after: Option<String>,
    end: Option<String>,
    prefix: Option<String>,
    reverse: bool,
    limit: Option<f64>,
    allow_concurrency: bool,
    no_cache: bool,
}

type Entries = Vec<(String, ToJsBuffer)>;

fn entries(list: Vec<(String, Bytes)>) -> Entries {
    list.into_iter()
        .map(|(k, v)| (k, v.to_vec().into()))
        .collect()
}

/// A read: locks the input gate now (unless `allow_concurrency`), runs `read`, and parks the
/// lock for release after the JS that gets the result has run.
fn gated_read<T: 'static>(
    st: Rc<IsolateState>,
    obj: Rc<ObjectEntry>,
    allow_concurrency: bool,
    read: impl Future<Output = Result<T, JsErrorBox>> + 'static,
) -> impl Future<Output = Result<T, JsErrorBox>> {
    let lock = (!allow_concurrency).then(|| obj.ctx.input_gate().lock());
    async move {
        let r = read.await;
        if let Some(l) = lock {
            st.deferred_locks.borrow_mut().push(l);
        }
        r
    }
}

/// An op's result: ready at once (SQLite-backed storage, errors) or later (a read).
type OpFuture<T> = futures::future::Either<
    futures::future::Ready<Result<T, JsErrorBox>>,
    futures::future::LocalBoxFuture<'static, Result<T, JsErrorBox>>,
>;

fn ready<T>(v: Result<T, JsErrorBox>) -> OpFuture<T> {
    futures::future::Either::Left(futures::future::ready(v))
}

#[op2]
#[serde]
fn op_do_storage_get(
    state: &mut OpState,
    #[smi] handle: u32,
    #[serde] keys: Vec<String>,
    allow_concurrency: bool,
    no_cache: bool,
) -> impl Future<Output = Result<Entries, JsErrorBox>> {
    let (st, obj) = match isolate(state).and_then(|st| Ok((st.clone(), object(&st, handle)?))) {
        Ok(v) => v,
        Err(e) => return ready(Err(e)),
    };
    if obj.sqlite {
        let r = obj
            .sql()
            .map_err(actor_error)
            .and_then(|db| {
                db.kv()
                    .get_many(&keys)
                    .map_err(|e| js_error(e.kind(), e.to_string()))
            })
            .map(entries);
        return ready(r);
    }
    let storage = obj.ctx.storage();
    let opts = ReadOptions {
        allow_concurrency: true,
        no_cache,
    };
    let read = async move {
        storage
            .get_many(&keys, opts)
            .await
            .map(entries)
            .map_err(storage_error)
    };
    futures::future::Either::Right(Box::pin(gated_read(st, obj, allow_concurrency, read)))
}

#[op2]
#[serde]
fn op_do_storage_list(
    state: &mut OpState,
    #[smi] handle: u32,
    #[serde] opts: JsListOptions,
) -> impl Future<Output = Result<Entries, JsErrorBox>> {
    let (st, obj) = match isolate(state).and_then(|st| Ok((st.clone(), object(&st, handle)?))) {
        Ok(v) => v,
        Err(e) => return ready(Err(e)),
    };
    let limit = match opts.limit {
        None => None,
        Some(l) if l.is_finite() && l >= 1.0 => Some(l as usize),
        Some(_) => return ready(Err(JsErrorBox::type_error("List limit must be positive."))),
    };
    let list = ListOptions {
        start: opts.start,
        start_after: opts.start_after,
        end: opts.end,
        prefix: opts.prefix,
        reverse: opts.reverse,
        limit,
        no_cache: opts.no_cache,
    };
    if obj.sqlite {
        let r = obj
            .sql()
            .map_err(actor_error)
            .and_then(|db| {
                db.kv()
                    .list(&list)
                    .map_err(|e| js_error(e.kind(), e.to_string()))
            })
            .map(entries);
        return ready(r);
    }
    let storage = obj.ctx.storage();
    let ro = ReadOptions {
        allow_concurrency: true,
        no_cache: opts.no_cache,
    };
    let read = async move {
        storage
            .list(&list, ro)
            .await
            .map(entries)
            .map_err(storage_error)
    };
    futures::future::Either::Right(Box::pin(gated_read(st, obj, opts.allow_concurrency, read)))
}

fn write_opts(allow_unconfirmed: bool) -> WriteOptions {
    WriteOptions { allow_unconfirmed }
}

#[op2]
fn op_do_storage_put(
    state: &mut OpState,
    #[smi] handle: u32,
    #[serde] entries: Vec<(String, serde_bytes::ByteBuf)>,
    allow_unconfirmed: bool,
) -> Result<(), JsErrorBox> {
    let st = isolate(state)?;
    let obj = object(&st, handle)?;
    let entries: Vec<(String, Bytes)> = entries
        .into_iter()
        .map(|(k, v)| (k, Bytes::from(v.into_vec())))
        .collect();
    if obj.sqlite {
        let db = obj.sql().map_err(actor_error)?;
        return db
            .kv()
            .put_many(entries)
            .map_err(|e| js_error(e.kind(), e.to_string()));
    }
    obj.ctx
        .storage()
        .put_many(entries, write_opts(allow_unconfirmed))
        .map_err(storage_error)
}

#[op2]
#[smi]
fn op_do_storage_delete(
    state: &mut OpState,
    #[smi] handle: u32,
    #[serde] keys: Vec<String>,
    allow_unconfirmed: bool,
) -> Result<u32, JsErrorBox> {
    let st = isolate(state)?;
    let obj = object(&st, handle)?;
    if obj.sqlite {
        let db = obj.sql().map_err(actor_error)?;
        return db
            .kv()
            .delete_many(&keys)
            .map(|n| n as u32)
            .map_err(|e| js_error(e.kind(), e.to_string()));
    }
    obj.ctx
        .storage()
        .delete_many(&keys, write_opts(allow_unconfirmed))
        .map(|n| n as u32)
        .map_err(storage_error)
}

#[op2(fast)]
fn op_do_storage_delete_all(
    state: &mut OpState,
    #[smi] handle: u32,
    allow_unconfirmed: bool,
) -> Result<(), JsErrorBox> {
    let st = isolate(state)?;
    let obj = object(&st, handle)?;
    if obj.sqlite {
        let db = obj.sql().map_err(actor_error)?;
        return db
            .delete_all()
            .map_err(|e| js_error(e.kind(), e.to_string()));
    }
    obj.ctx
        .storage()
        .delete_all(write_opts(allow_unconfirmed))
        .map_err(storage_error)
}

#[op2]
fn op_do_storage_get_alarm(
    state: &mut OpState,
    #[smi] handle: u32,
    allow_concurrency: bool,
) -> impl Future<Output = Result<Option<f64>, JsErrorBox>> {
    let (st, obj) = match isolate(state).and_then(|st| Ok((st.clone(), object(&st, handle)?))) {
        Ok(v) => v,
        Err(e) => return ready(Err(e)),
    };
    let storage = obj.ctx.storage();
    let read = async move {
        storage
            .get_alarm()
            .await
            .map(|t| t.map(|t| t as f64))
            .map_err(storage_error)
    };
    futures::future::Either::Right(Box::pin(gated_read(st, obj, allow_concurrency, read)))
}

#[op2(fast)]
fn op_do_storage_set_alarm(
    state: &mut OpState,
    #[smi] handle: u32,
    at_ms: f64,
    allow_unconfirmed: bool,
) -> Result<(), JsErrorBox> {
    let st = isolate(state)?;
    let obj = object(&st, handle)?;
    if !at_ms.is_finite() {
        return Err(JsErrorBox::type_error(
            "setAlarm() requires a valid time: a Date or milliseconds since the epoch",
        ));
    }
    obj.ctx
        .storage()
        .set_alarm_with(at_ms as i64, write_opts(allow_unconfirmed))
        .map_err(storage_error)
}

#[op2(fast)]
fn op_do_storage_delete_alarm(
    state: &mut OpState,
    #[smi] handle: u32,
    allow_unconfirmed: bool,
) -> Result<(), JsErrorBox> {
    let st = isolate(state)?;
    let obj = object(&st, handle)?;
    obj.ctx
        .storage()
        .delete_alarm_with(write_opts(allow_unconfirmed))
        .map_err(storage_error)
}

/// `sync()`: every write so far durable, then the input gate open (unless inside the object's
/// own critical section).
#[op2]
fn op_do_storage_sync(
    state: &mut OpState,
    #[smi] handle: u32,
    in_cs: bool,
) -> impl Future<Output = Result<(), JsErrorBox>> {
    let obj = isolate(state).and_then(|st| object(&st, handle));
    async move {
        let obj = obj?;
        let ctx = obj.ctx.clone();
        drop(obj);
        ctx.storage()
            .sync()
            .await
            .map_err(|e| JsErrorBox::generic(e.0.to_string()))?;
        readmit(&ctx, in_cs)
            .await
            .map_err(|e| JsErrorBox::generic(e.0.to_string()))
    }
}

// ---------------------------------------------------------------------------------------------
// ctx.storage.transaction(async txn => ...)

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
enum TxnCommand {
    Get {
        keys: Vec<String>,
    },
    Put {
        entries: Vec<(String, serde_bytes::ByteBuf)>,
    },
    Delete {
        keys: Vec<String>,
    },
    List {
        opts: JsListOptions,
    },
    GetAlarm,
    SetAlarm {
        at: f64,
    },
    DeleteAlarm,
    Rollback,
    Commit,
    Abort,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct TxnResult {
    entries: Option<Entries>,
    count: Option<u32>,
    alarm: Option<f64>,
}

type TxnReply = tokio::sync::oneshot::Sender<Result<TxnResult, JsErrorBox>>;

pub(crate) struct TxnChannel(tokio::sync::mpsc::UnboundedSender<(TxnCommand, TxnReply)>);

/// Starts a transaction: core's `transaction_async` runs on its own task (input gate locked
/// until it ends), driven by the commands JS sends with [`op_do_txn`].
#[op2(fast)]
#[smi]
fn op_do_txn_begin(state: &mut OpState, #[smi] handle: u32) -> Result<u32, JsErrorBox> {
    let st = isolate(state)?;
    let obj = object(&st, handle)?;
    if obj.sqlite {
        return Err(JsErrorBox::generic(
            "transaction() with a txn object is not supported on SQLite-backed objects in \
             cinder yet; use ctx.storage.transactionSync()",
        ));
    }
    let token = st.next_id();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(TxnCommand, TxnReply)>();
    st.transactions.borrow_mut().insert(token, TxnChannel(tx));
    let storage = obj.ctx.storage();
    tokio::task::spawn_local(async move {
        let _ = storage
            .transaction_async::<(), StorageError, _>(|txn| {
                Box::pin(async move {
                    while let Some((cmd, reply)) = rx.recv().await {
                        let r = run_txn_command(txn, cmd);
                        match r {
                            TxnStep::Reply(v) => {
                                let _ = reply.send(v);
                            }
                            TxnStep::End(commit) => {
                                let _ = reply.send(Ok(TxnResult::default()));
                                if !commit {
                                    txn.rollback();
                                }
                                return Ok(());
                            }
                        }
                    }
                    // JS went away (the object was reset): nothing is committed.
                    txn.rollback();
                    Ok(())
                })
            })
            .await;
    });
    Ok(token)
}

enum TxnStep {
    Reply(Result<TxnResult, JsErrorBox>),
    End(bool),
}

fn run_txn_command(txn: &cinder_storage::Transaction<'_>, cmd: TxnCommand) -> TxnStep {
    let r = match cmd {
        TxnCommand::Commit => return TxnStep::End(true),
        TxnCommand::Abort => return TxnStep::End(false),
        TxnCommand::Rollback => {
            txn.rollback();
            Ok(TxnResult::default())
        }
        TxnCommand::Get { keys } => txn.get_many(&keys).map(|e| TxnResult {
            entries: Some(entries(e)),
            ..Default::default()
        }),
        TxnCommand::Put { entries } => txn
            .put_many(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, Bytes::from(v.into_vec())))
                    .collect(),
            )
            .map(|_| TxnResult::default()),
        TxnCommand::Delete { keys } => txn.delete_many(&keys).map(|n| TxnResult {
            count: Some(n as u32),
            ..Default::default()
        }),
        TxnCommand::List { opts } => {
            let limit = match opts.limit {
                None => None,
                Some(l) if l.is_finite() && l >= 1.0 => Some(l as usize),
                Some(_) => {
                    return TxnStep::Reply(Err(JsErrorBox::type_error(
                        "List limit must be positive.",
                    )))
                }
            };
            txn.list(&ListOptions {
                start: opts.start,
                start_after: opts.start_after,
                end: opts.end,
                prefix: opts.prefix,
                reverse: opts.reverse,
                limit,
                no_cache: opts.no_cache,
            })
            .map(|e| TxnResult {
                entries: Some(entries(e)),
                ..Default::default()
            })
        }
        TxnCommand::GetAlarm => txn.get_alarm().map(|a| TxnResult {
            alarm: a.map(|t| t as f64),
            ..Default::default()
        }),
        TxnCommand::SetAlarm { at } => txn.set_alarm(at as i64).map(|_| TxnResult::default()),
        TxnCommand::DeleteAlarm => txn.delete_alarm().map(|_| TxnResult::default()),
    };
    TxnStep::Reply(r.map_err(storage_error))
}

#[op2]
#[serde]
fn op_do_txn(
    state: &mut OpState,
    #[smi] token: u32,
    #[serde] cmd: TxnCommand,
) -> impl Future<Output = Result<TxnResult, JsErrorBox>> {
    let ending = matches!(cmd, TxnCommand::Commit | TxnCommand::Abort);
    let sent = isolate(state).and_then(|st| {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut txns = st.transactions.borrow_mut();
        let chan = txns
            .get(&token)
            .ok_or_else(|| JsErrorBox::generic("This transaction has already ended."))?;
        chan.0
            .send((cmd, tx))
            .map_err(|_| JsErrorBox::generic("This transaction has already ended."))?;
        if ending {
            txns.remove(&token);
        }
        Ok(rx)
    });
    async move {
        sent?
            .await
            .unwrap_or_else(|_| Err(JsErrorBox::generic("This transaction has already ended.")))
    }
}

deno_core::extension!(
    cinder_do,
    ops = [
        op_do_id_from_name,
        op_do_new_unique_id,
        op_do_id_from_string,
        op_do_fetch,
        op_do_rpc,
        op_do_take,
        op_do_take_dead,
        op_do_return,
        op_do_throw,
        op_do_bcw_begin,
        op_do_bcw_end,
        op_do_wait_until,
        op_do_abort,
        op_do_input_wait,
        op_do_input_open,
        op_do_storage_get,
        op_do_storage_list,
        op_do_storage_put,
        op_do_storage_delete,
        op_do_storage_delete_all,
        op_do_storage_get_alarm,
        op_do_storage_set_alarm,
        op_do_storage_delete_alarm,
        op_do_storage_sync,
        op_do_txn_begin,
        op_do_txn,
    ],
);
