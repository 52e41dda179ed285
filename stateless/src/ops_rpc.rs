//! Ops of JS RPC beyond Durable Object stubs: exports (functions and RpcTargets passed by
//! reference) and calls to a service binding's `WorkerEntrypoint`.
//!
//! An export id is 128 random bits: whoever holds it may call the export, so it must not be
//! guessable (a script could otherwise reach into another worker's isolate). The host maps it
//! to the thread and worker whose isolate holds the value.

use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use cinder_core::ActorError;
use deno_core::{op2, JsBuffer, OpState, ToJsBuffer};
use deno_error::JsErrorBox;

use crate::durable::{DoEvent, DoReply, RpcMessage};
use crate::host::{ExportHome, HostInner};
use crate::ops_do::{outbound, RpcOutcome};
use crate::state::IsolateState;

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

/// Registers a value of this isolate as callable from elsewhere; returns its id.
#[op2]
#[string]
fn op_rpc_export(state: &mut OpState) -> Result<String, JsErrorBox> {
    let st = isolate(state)?;
    let host = host(&st)?;
    let thread = cinder_core::Runtime::current_executor()
        .ok_or_else(|| JsErrorBox::generic("not on an executor thread"))?;
    let id = format!("{:032x}", rand::random::<u128>());
    host.exports
        .lock()
        .map_err(|_| JsErrorBox::generic("export table poisoned"))?
        .insert(
            id.clone(),
            ExportHome {
                thread,
                worker: st.worker.spec.name.clone(),
            },
        );
    Ok(id)
}

/// Forgets an export (its owner's event ended, or the holder disposed of its stub).
#[op2(fast)]
fn op_rpc_release(state: &mut OpState, #[string] id: &str) {
    if let Ok(host) = isolate(state).and_then(|st| host(&st)) {
        if let Ok(mut e) = host.exports.lock() {
            e.remove(id);
        }
    }
}

/// An RPC message from JS: its bytes and the sinks its streams are pumped into.
pub(crate) fn message_from_js(st: &IsolateState, bytes: &[u8], sinks: &[u32]) -> RpcMessage {
    RpcMessage {
        bytes: Bytes::copy_from_slice(bytes),
        streams: sinks
            .iter()
            .map(|s| match crate::ops::take_sink_body(st, *s) {
                Some(b) => crate::Body::new(b),
                None => crate::Body::empty(),
            })
            .collect(),
    }
}

/// An RPC message for JS: its bytes, and its streams parked as bodies JS reads by id.
pub(crate) fn message_to_js(st: &IsolateState, m: RpcMessage) -> (ToJsBuffer, Vec<u32>) {
    let ids = m
        .streams
        .into_iter()
        .map(|body| {
            let id = st.next_id();
            st.bodies.borrow_mut().insert(id, body);
            id
        })
        .collect();
    (m.bytes.to_vec().into(), ids)
}

pub(crate) fn outcome(
    st: &IsolateState,
    r: Result<Result<DoReply, ActorError>, ActorError>,
) -> RpcOutcome {
    match r.and_then(|x| x) {
        Ok(DoReply::Rpc(m)) => {
            let (bytes, streams) = message_to_js(st, m);
            RpcOutcome {
                result: Some(bytes),
                streams,
                error: None,
            }
        }
        Ok(_) => RpcOutcome {
            result: None,
            streams: Vec::new(),
            error: Some(ActorError::new("the RPC receiver gave no result").into()),
        },
        Err(e) => RpcOutcome {
            result: None,
            streams: Vec::new(),
            error: Some(crate::ops_do::CallError::remote(e)),
        },
    }
}

/// A call on an export, wherever its isolate lives.
#[op2]
#[serde]
fn op_rpc_call_export(
    state: &mut OpState,
    #[string] id: String,
    #[smi] caller: u32,
    in_cs: bool,
    #[buffer] message: JsBuffer,
    #[serde] streams: Vec<u32>,
) -> impl Future<Output = Result<RpcOutcome, JsErrorBox>> {
    let prepared = isolate(state).and_then(|st| {
        let message = message_from_js(&st, &message, &streams);
        let host = host(&st)?;
        let home = host
            .exports
            .lock()
            .map_err(|_| JsErrorBox::generic("export table poisoned"))?
            .get(&id)
            .cloned();
        Ok((st, host, home, message))
    });
    async move {
        let (st, host, home, message) = prepared?;
        let Some(home) = home else {
            return Ok(RpcOutcome {
                result: None,
                streams: Vec::new(),
                error: Some(
                    ActorError::new(
                        "RPC stub used after the call or event that created it ended (the value it referred to is gone).",
                    )
                    .into(),
                ),
            });
        };
        let event = DoEvent::Export { id, message };
        let r = outbound(
            &st,
            caller,
            in_cs,
            crate::thread::call_isolate(&host, home.thread, home.worker, event),
        )
        .await;
        Ok(outcome(&st, r))
    }
}

/// An RPC call through a service binding, to the bound worker's `WorkerEntrypoint` (the
/// binding's `entrypoint`, else the default export), on this thread.
#[op2]
#[serde]
fn op_rpc_call_service(
    state: &mut OpState,
    #[string] binding: String,
    #[smi] caller: u32,
    in_cs: bool,
    #[buffer] message: JsBuffer,
    #[serde] streams: Vec<u32>,
) -> impl Future<Output = Result<RpcOutcome, JsErrorBox>> {
    let prepared = isolate(state).and_then(|st| {
        let message = message_from_js(&st, &message, &streams);
        let host = host(&st)?;
        let b = st
            .worker
            .spec
            .services
            .iter()
            .find(|s| s.binding == binding)
            .cloned()
            .ok_or_else(|| JsErrorBox::type_error(format!("no service binding {binding:?}")))?;
        let thread = cinder_core::Runtime::current_executor()
            .ok_or_else(|| JsErrorBox::generic("not on an executor thread"))?;
        Ok((st, host, b, thread, message))
    });
    async move {
        let (st, host, b, thread, message) = prepared?;
        let event = DoEvent::Entrypoint {
            entrypoint: b.entrypoint.clone(),
            message,
        };
        let r = outbound(
            &st,
            caller,
            in_cs,
            crate::thread::call_isolate(&host, thread, b.service.clone(), event),
        )
        .await;
        Ok(outcome(&st, r))
    }
}

deno_core::extension!(
    cinder_rpc,
    ops = [
        op_rpc_export,
        op_rpc_release,
        op_rpc_call_export,
        op_rpc_call_service,
    ],
);
