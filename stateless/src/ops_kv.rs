//! The `cinder_kv_binding` extension: the ops behind `env.<binding>` KV namespaces (`js/kv.js`).
//!
//! JS converts arguments as workerd's binding does and hands plain values here; these ops call
//! [`cinder_kv::KvNamespace`] and turn its [`KvError`]s into the JS errors a Worker sees on
//! Cloudflare (`TypeError` for a key the binding refuses, `Error("KV PUT failed: 413 ...")`
//! for what the service refuses).
//!
//! Every call is charged to its invocation's [`cinder_kv::OperationBudget`] (1,000
//! operations), kept per event in [`IsolateState::kv_budgets`] and dropped when the event ends.
//!
//! From a Durable Object a write (put, delete) waits for the object's output gate before it
//! starts, so the object's earlier storage writes are durable before anything depending on them
//! leaves, and every result comes back through the input gate, like any other outbound I/O.

use std::future::Future;
use std::rc::Rc;

use bytes::Bytes;
use cinder_kv::{ErrorKind, GetOptions, KvError, KvNamespace, ListOptions};
use deno_core::{op2, JsBuffer, OpState, ToJsBuffer};
use deno_error::JsErrorBox;
use serde::{Deserialize, Serialize};

use crate::gated;
use crate::state::{Chunk, IsolateState};

deno_core::extension!(
    cinder_kv_binding,
    deps = [cinder],
    ops = [
        op_kv_get,
        op_kv_get_bulk,
        op_kv_put,
        op_kv_delete,
        op_kv_list
    ],
);

/// Which namespace binding a call goes through, and who makes it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Call {
    binding: String,
    /// The event whose code makes the call (0 outside any event): its operation budget.
    eid: u32,
    /// The calling Durable Object's handle (0 in a stateless worker).
    caller: u32,
    /// Whether the call is made inside that object's critical section.
    in_cs: bool,
}

fn isolate(state: &OpState) -> Result<Rc<IsolateState>, JsErrorBox> {
    state
        .try_borrow::<Rc<IsolateState>>()
        .cloned()
        .ok_or_else(|| JsErrorBox::generic("isolate is shutting down"))
}

/// The namespace behind `binding`, counting against the calling event's budget. A script
/// reaches only the namespaces it is bound to.
fn namespace(st: &IsolateState, call: &Call) -> Result<KvNamespace, JsErrorBox> {
    let b = st
        .worker
        .spec
        .kv_namespaces
        .iter()
        .find(|b| b.binding == call.binding)
        .ok_or_else(|| {
            JsErrorBox::type_error(format!("no KV namespace binding {:?}", call.binding))
        })?;
    let host = st
        .worker
        .host()
        .ok_or_else(|| JsErrorBox::generic("KV is not available: the host is not running"))?;
    let kv = host
        .kv
        .as_ref()
        .ok_or_else(|| JsErrorBox::generic("KV is not available on this host"))?;
    let ns = kv.namespace(&b.id);
    // Only events still in flight get a budget: code that outlives its event (a promise nobody
    // awaited) would otherwise leave one behind for good.
    if call.eid != 0 && st.inflight.borrow().contains_key(&call.eid) {
        let budget = st
            .kv_budgets
            .borrow_mut()
            .entry(call.eid)
            .or_default()
            .clone();
        return Ok(ns.with_budget(budget));
    }
    Ok(ns)
}

fn kv_error(st: &IsolateState, e: KvError) -> JsErrorBox {
    if let KvError::Internal { .. } | KvError::NotAttached = &e {
        tracing::error!(worker = %st.worker.spec.name, "KV: {e}");
    }
    match e.kind() {
        ErrorKind::TypeError => JsErrorBox::type_error(e.to_string()),
        ErrorKind::Error => JsErrorBox::generic(e.to_string()),
    }
}

type Prepared = Result<(Rc<IsolateState>, KvNamespace), JsErrorBox>;

fn prepare(state: &OpState, call: &Call) -> Prepared {
    let st = isolate(state)?;
    let ns = namespace(&st, call)?;
    Ok((st, ns))
}

/// `{cacheTtl}` as JS passed it (already an integer, or absent).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsGetOptions {
    cache_ttl: Option<f64>,
}

impl From<JsGetOptions> for GetOptions {
    fn from(o: JsGetOptions) -> GetOptions {
        GetOptions {
            cache_ttl: o.cache_ttl.map(|t| t as i64),
        }
    }
}

/// One value read: bytes and metadata JSON, or all `None` when there is no such key.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsGet {
    value: Option<ToJsBuffer>,
    metadata: Option<String>,
    cache_status: &'static str,
}

#[op2]
#[serde]
fn op_kv_get(
    state: &mut OpState,
    #[serde] call: Call,
    #[string] key: String,
    #[serde] opts: JsGetOptions,
) -> impl Future<Output = Result<JsGet, JsErrorBox>> {
    let prepared = prepare(state, &call);
    async move {
        let (st, ns) = prepared?;
        let opts = GetOptions::from(opts);
        let r = gated::read(&st, call.caller, call.in_cs, ns.get(&key, &opts))
            .await?
            .map_err(|e| kv_error(&st, e))?;
        let (value, metadata) = match r.entry {
            Some(e) => (Some(e.value.to_vec().into()), e.metadata),
            None => (None, None),
        };
        Ok(JsGet {
            value,
            metadata,
            cache_status: r.cache_status.as_str(),
        })
    }
}

/// One key of a bulk get: the key, its value as text and its metadata JSON.
type BulkEntry = (String, Option<String>, Option<String>);

/// Bulk `get([keys], type)`: `[key, text, metadata]` per requested key (text `None` when the
/// key is absent), in request order. Only `text` and `json` are served, as on Cloudflare; for
/// `json` every value must parse.
#[op2]
#[serde]
fn op_kv_get_bulk(
    state: &mut OpState,
    #[serde] call: Call,
    #[serde] keys: Vec<String>,
    #[string] type_name: String,
    #[serde] opts: JsGetOptions,
    with_metadata: bool,
) -> impl Future<Output = Result<Vec<BulkEntry>, JsErrorBox>> {
    let prepared = prepare(state, &call);
    async move {
        let (st, ns) = prepared?;
        let json = match type_name.as_str() {
            "text" => false,
            "json" => true,
            other => return Err(kv_error(&st, cinder_kv::limits::bulk_type_error(other))),
        };
        let opts = GetOptions::from(opts);
        let entries = gated::read(&st, call.caller, call.in_cs, ns.get_many(&keys, &opts))
            .await?
            .map_err(|e| kv_error(&st, e))?;
        let mut out = Vec::with_capacity(entries.len());
        for (key, entry) in entries {
            let Some(e) = entry else {
                out.push((key, None, None));
                continue;
            };
            if json && serde_json::from_slice::<serde::de::IgnoredAny>(&e.value).is_err() {
                return Err(kv_error(&st, cinder_kv::limits::bulk_not_json_error()));
            }
            let text = String::from_utf8_lossy(&e.value).into_owned();
            out.push((
                key,
                Some(text),
                if with_metadata { e.metadata } else { None },
            ));
        }
        Ok(out)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsPutOptions {
    expiration: Option<f64>,
    expiration_ttl: Option<f64>,
    metadata: Option<String>,
}

/// A put's value: the bytes given, or the receiving end of the sink JS feeds a stream into.
/// Taken synchronously when the op is called, so a sink never outlives a failed call (its
/// receiver dropped, the JS pump stops and cancels the stream).
enum PutValue {
    Bytes(Bytes),
    Sink(tokio::sync::mpsc::Receiver<Chunk>),
}

struct SinkStream(tokio::sync::mpsc::Receiver<Chunk>);

impl futures::Stream for SinkStream {
    type Item = Chunk;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Chunk>> {
        self.get_mut().0.poll_recv(cx)
    }
}

#[op2]
#[serde]
fn op_kv_put(
    state: &mut OpState,
    #[serde] call: Call,
    #[string] key: String,
    #[serde] opts: JsPutOptions,
    #[smi] kind: u32,
    #[buffer] bytes: JsBuffer,
    #[smi] sink: u32,
) -> impl Future<Output = Result<(), JsErrorBox>> {
    let value = isolate(state).map(|st| match kind {
        2 => match st.sink_receivers.borrow_mut().remove(&sink) {
            Some(rx) => PutValue::Sink(rx),
            None => PutValue::Bytes(Bytes::new()),
        },
        _ => PutValue::Bytes(Bytes::copy_from_slice(&bytes)),
    });
    let prepared = prepare(state, &call);
    async move {
        let value = value?;
        let (st, ns) = prepared?;
        let opts = cinder_kv::PutOptions {
            expiration: opts.expiration.map(|t| t as i64),
            expiration_ttl: opts.expiration_ttl.map(|t| t as i64),
            metadata: opts.metadata,
        };
        let put = async {
            match value {
                PutValue::Bytes(b) => ns.put(&key, b, &opts).await,
                PutValue::Sink(rx) => ns.put_stream(&key, SinkStream(rx), &opts).await,
            }
        };
        gated::write(&st, call.caller, call.in_cs, put)
            .await?
            .map_err(|e| kv_error(&st, e))
    }
}

#[op2]
#[serde]
fn op_kv_delete(
    state: &mut OpState,
    #[serde] call: Call,
    #[string] key: String,
) -> impl Future<Output = Result<(), JsErrorBox>> {
    let prepared = prepare(state, &call);
    async move {
        let (st, ns) = prepared?;
        gated::write(&st, call.caller, call.in_cs, ns.delete(&key))
            .await?
            .map_err(|e| kv_error(&st, e))
    }
}

#[derive(Deserialize)]
struct JsListOptions {
    limit: Option<f64>,
    prefix: Option<String>,
    cursor: Option<String>,
}

#[derive(Serialize)]
struct JsListedKey {
    name: String,
    expiration: Option<f64>,
    metadata: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsList {
    keys: Vec<JsListedKey>,
    list_complete: bool,
    cursor: Option<String>,
    cache_status: Option<&'static str>,
}

#[op2]
#[serde]
fn op_kv_list(
    state: &mut OpState,
    #[serde] call: Call,
    #[serde] opts: JsListOptions,
) -> impl Future<Output = Result<JsList, JsErrorBox>> {
    let prepared = prepare(state, &call);
    async move {
        let (st, ns) = prepared?;
        let opts = ListOptions {
            prefix: opts.prefix,
            limit: opts.limit.map(|l| l as i64),
            cursor: opts.cursor,
        };
        let r = gated::read(&st, call.caller, call.in_cs, ns.list(&opts))
            .await?
            .map_err(|e| kv_error(&st, e))?;
        Ok(JsList {
            keys: r
                .keys
                .into_iter()
                .map(|k| JsListedKey {
                    name: k.name,
                    expiration: k.expiration.map(|x| x as f64),
                    metadata: k.metadata,
                })
                .collect(),
            list_complete: r.list_complete,
            cursor: r.cursor,
            cache_status: r.cache_status.map(|c| c.as_str()),
        })
    }
}
