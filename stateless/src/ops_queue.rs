//! The `cinder_queue_binding` extension: the ops behind `env.<binding>` queue producers and the
//! `queue()` handler's batches (`js/queue.js`).
//!
//! JS serializes message bodies by content type and hands bytes here; `op_queue_send` stores
//! them through [`cinder_queues::Queue`] (durable when it resolves). From a Durable Object a
//! send waits for the object's output gate first, like any outgoing message. A consumer event's
//! batch is taken with `op_queue_take`, and the handler's explicit decisions come back with
//! `op_queue_report` (see `queues.rs`).

use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;

use bytes::Bytes;
use cinder_queues::{Decision, OutgoingMessage, Queue};
use deno_core::{op2, JsBuffer, OpState, ToJsBuffer};
use deno_error::JsErrorBox;
use serde::{Deserialize, Serialize};

use crate::state::IsolateState;

deno_core::extension!(
    cinder_queue_binding,
    deps = [cinder],
    ops = [op_queue_send, op_queue_take, op_queue_report],
);

fn isolate(state: &OpState) -> Result<Rc<IsolateState>, JsErrorBox> {
    state
        .try_borrow::<Rc<IsolateState>>()
        .cloned()
        .ok_or_else(|| JsErrorBox::generic("isolate is shutting down"))
}

/// Which producer binding a send goes through, and who makes it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Call {
    binding: String,
    /// The calling Durable Object's handle (0 in a stateless worker).
    caller: u32,
    /// Whether the call is made inside that object's critical section.
    in_cs: bool,
}

/// The queue behind `binding` and the binding's `delivery_delay`.
fn queue(st: &IsolateState, binding: &str) -> Result<(Queue, Option<u32>), JsErrorBox> {
    let b = st
        .worker
        .spec
        .queue_producers
        .iter()
        .find(|b| b.binding == binding)
        .ok_or_else(|| JsErrorBox::type_error(format!("no queue binding {binding:?}")))?;
    let host = st
        .worker
        .host()
        .ok_or_else(|| JsErrorBox::generic("Queues are not available: the host is not running"))?;
    let queues = host
        .queues
        .as_ref()
        .ok_or_else(|| JsErrorBox::generic("Queues are not available on this host"))?;
    Ok((queues.queue(&b.queue), b.delivery_delay))
}

/// One message as JS serialized it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsOutgoing {
    body: JsBuffer,
    content_type: String,
    delay_seconds: Option<f64>,
}

/// `{delaySeconds}` of a `sendBatch` (absent for `send`).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsDelay {
    delay_seconds: Option<f64>,
}

/// `send` (one message, `batch` false) or `sendBatch`; `delay` is the batch's `delaySeconds`.
#[op2]
#[serde]
fn op_queue_send(
    state: &mut OpState,
    #[serde] call: Call,
    #[serde] messages: Vec<JsOutgoing>,
    #[serde] delay: JsDelay,
    batch: bool,
) -> impl Future<Output = Result<(), JsErrorBox>> {
    let prepared = isolate(state).and_then(|st| queue(&st, &call.binding).map(|q| (st, q)));
    let messages: Vec<OutgoingMessage> = messages
        .into_iter()
        .map(|m| OutgoingMessage {
            body: Bytes::copy_from_slice(&m.body),
            content_type: m.content_type,
            delay_seconds: m.delay_seconds.map(|d| d as i64),
        })
        .collect();
    async move {
        let (st, (q, delivery_delay)) = prepared?;
        // The producer's `delivery_delay` applies when the send names no delay of its own.
        let default_delay = delivery_delay.map(i64::from);
        let delay = delay.delay_seconds.map(|d| d as i64).or(default_delay);
        let send = async {
            if batch {
                q.send_batch(&messages, delay).await
            } else {
                let mut m = messages.into_iter().next().ok_or_else(|| {
                    cinder_queues::QueueError::Internal("send() without a message".into())
                })?;
                m.delay_seconds = m.delay_seconds.or(delay);
                q.send(m).await
            }
        };
        crate::gated::write(&st, call.caller, call.in_cs, send)
            .await?
            .map_err(|e| {
                if let cinder_queues::QueueError::Internal(m) = &e {
                    tracing::error!(worker = %st.worker.spec.name, "queue send failed: {m}");
                }
                JsErrorBox::generic(e.to_string())
            })
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsMessage {
    id: String,
    timestamp: f64,
    body: ToJsBuffer,
    content_type: String,
    attempts: u32,
}

#[derive(Serialize)]
struct JsBatch {
    queue: String,
    messages: Vec<JsMessage>,
}

/// The batch of queue event `eid` (once).
#[op2]
#[serde]
fn op_queue_take(state: &mut OpState, #[smi] eid: u32) -> Option<JsBatch> {
    let st = isolate(state).ok()?;
    let batch = st
        .queue_deliveries
        .borrow_mut()
        .get_mut(&eid)
        .and_then(|d| d.batch.take())?;
    Some(JsBatch {
        queue: batch.queue,
        messages: batch
            .messages
            .into_iter()
            .map(|m| JsMessage {
                id: m.id,
                timestamp: m.timestamp_ms as f64,
                body: m.body.to_vec().into(),
                content_type: m.content_type,
                attempts: m.attempts,
            })
            .collect(),
    })
}

/// The explicit decisions of queue event `eid`'s handler, already resolved by JS: message ids
/// to ack, and ids to retry with their `delaySeconds` (`None`: the consumer's `retry_delay`).
#[op2]
fn op_queue_report(
    state: &mut OpState,
    #[smi] eid: u32,
    #[serde] acks: Vec<String>,
    #[serde] retries: Vec<(String, Option<u32>)>,
) {
    let Ok(st) = isolate(state) else { return };
    let Some(delivery) = st.queue_deliveries.borrow_mut().remove(&eid) else {
        return;
    };
    let mut decisions: HashMap<String, Decision> =
        acks.into_iter().map(|id| (id, Decision::Ack)).collect();
    for (id, delay_seconds) in retries {
        decisions.insert(id, Decision::Retry { delay_seconds });
    }
    *delivery.decisions.lock().unwrap_or_else(|p| p.into_inner()) = Some(decisions);
}
