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
use deno_core::{op2, JsBuffer, OpState};
use deno_error::JsErrorBox;

use crate::durable::{DoEvent, DoReply};
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

fn outcome(r: Result<Result<DoReply, ActorError>, ActorError>) -> RpcOutcome {
    match r.and_then(|x| x) {
        Ok(DoReply::Rpc(bytes)) => RpcOutcome {
            result: Some(bytes.to_vec().into()),
            error: None,
        },
        Ok(_) => RpcOutcome {
            result: None,
            error: Some(ActorError::new("the RPC receiver gave no result").into()),
        },
        Err(e) => RpcOutcome {
            result: None,
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
) -> impl Future<Output = Result<RpcOutcome, JsErrorBox>> {
    let message = Bytes::copy_from_slice(&message);
    let prepared = isolate(state).and_then(|st| {
        let host = host(&st)?;
        let home = host
            .exports
            .lock()
            .map_err(|_| JsErrorBox::generic("export table poisoned"))?
            .get(&id)
            .cloned();
        Ok((st, host, home))
    });
    async move {
        let (st, host, home) = prepared?;
        let Some(home) = home else {
            return Ok(RpcOutcome {
                result: None,
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
        Ok(outcome(r))
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
) -> impl Future<Output = Result<RpcOutcome, JsErrorBox>> {
    let message = Bytes::copy_from_slice(&message);
    let prepared = isolate(state).and_then(|st| {
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
        Ok((st, host, b, thread))
    });
    async move {
        let (st, host, b, thread) = prepared?;
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
        Ok(outcome(r))
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
