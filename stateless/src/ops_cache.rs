//! The `cinder_cache_ops` extension: the ops behind `caches` (js/cache.js) over the node's
//! [`cinder_cache::CacheStorage`] (`<state_dir>/cache`).
//!
//! JS checks arguments (workerd's `TypeError`s for an error response, a non-GET request, a 206
//! and `Vary: *`) before it touches the response body, and hands plain values here. A put
//! streams the JS body to the cache file through a sink; a match parks the cached body as a
//! Rust body that JS reads chunk by chunk. From a Durable Object, a put waits for the object's
//! output gate (it is an outgoing write, like KV or R2 puts) and its result comes back through
//! the input gate.

use std::future::Future;
use std::rc::Rc;

use cinder_cache::{Cache, CacheError, ErrorKind, MatchOptions};
use deno_core::{op2, ByteString, JsBuffer, OpState};
use deno_error::JsErrorBox;
use serde::{Deserialize, Serialize};

use crate::state::IsolateState;
use crate::Body;

deno_core::extension!(
    cinder_cache_ops,
    deps = [cinder],
    ops = [op_cache_put, op_cache_match, op_cache_delete],
);

/// Which cache, which request, and who asks.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CacheCall {
    /// `None`: `caches.default`.
    cache: Option<String>,
    url: String,
    method: String,
    headers: Vec<(ByteString, ByteString)>,
    /// The calling Durable Object's handle (0 in a stateless worker).
    caller: u32,
    in_cs: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsMatch {
    status: u16,
    headers: Vec<(String, ByteString)>,
    /// Body id for `streamFromBody`, 0 when there is none.
    body: u32,
}

fn isolate(state: &OpState) -> Result<Rc<IsolateState>, JsErrorBox> {
    state
        .try_borrow::<Rc<IsolateState>>()
        .cloned()
        .ok_or_else(|| JsErrorBox::generic("isolate is shutting down"))
}

fn cache_of(st: &IsolateState, name: Option<&str>) -> Result<Cache, JsErrorBox> {
    let host = st
        .worker
        .host()
        .ok_or_else(|| JsErrorBox::generic("the host is shut down"))?;
    let storage: &cinder_cache::CacheStorage = &host.cache;
    Ok(match name {
        None => storage.default_cache(),
        Some(n) => storage.open_cache(n),
    })
}

fn js_error(e: CacheError) -> JsErrorBox {
    match e.kind() {
        ErrorKind::TypeError => JsErrorBox::type_error(e.to_string()),
        ErrorKind::Error => JsErrorBox::generic(e.to_string()),
    }
}

const BAD_URL: &str = "Invalid URL. Cache API keys must be fully-qualified, valid URLs.";

/// The request as the engine wants it (no body: only its method, URL and headers count).
fn request(call: &CacheCall) -> Result<http::Request<()>, JsErrorBox> {
    let method = http::Method::from_bytes(call.method.as_bytes())
        .map_err(|e| JsErrorBox::type_error(format!("invalid method: {e}")))?;
    let uri: http::Uri = call
        .url
        .parse()
        .map_err(|_| JsErrorBox::type_error(BAD_URL))?;
    if uri.scheme().is_none() || uri.authority().is_none() {
        return Err(JsErrorBox::type_error(BAD_URL));
    }
    let mut req = http::Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.headers_mut() =
        crate::ops::build_headers(call.headers.clone()).map_err(JsErrorBox::type_error)?;
    Ok(req)
}

struct Prepared {
    st: Rc<IsolateState>,
    cache: Cache,
    req: http::Request<()>,
}

fn prepare(state: &OpState, call: &CacheCall) -> Result<Prepared, JsErrorBox> {
    let st = isolate(state)?;
    let cache = cache_of(&st, call.cache.as_deref())?;
    let req = request(call)?;
    Ok(Prepared { st, cache, req })
}

/// A read from a Durable Object comes back through its input gate.
async fn gated_read<F: Future>(
    st: &IsolateState,
    call: &CacheCall,
    io: F,
) -> Result<F::Output, JsErrorBox> {
    if call.caller == 0 {
        return Ok(io.await);
    }
    let ctx = st
        .object(call.caller)
        .map(|o| o.ctx.clone())
        .ok_or_else(|| {
            JsErrorBox::generic("Durable Object reset: the calling object is no longer live")
        })?;
    let value = io.await;
    crate::ops_do::readmit(&ctx, call.in_cs)
        .await
        .map_err(|e| JsErrorBox::generic(e.to_string()))?;
    Ok(value)
}

/// `cache.put(request, response)`: the response's status, headers and body (as
/// `bodyForRust` gives it: kind 0 none, 1 bytes, 2 sink).
#[op2]
#[allow(clippy::too_many_arguments)]
fn op_cache_put(
    state: &mut OpState,
    #[serde] call: CacheCall,
    #[smi] status: u32,
    #[serde] headers: Vec<(ByteString, ByteString)>,
    #[smi] kind: u32,
    #[buffer] bytes: JsBuffer,
    #[smi] sink: u32,
) -> impl Future<Output = Result<(), JsErrorBox>> {
    let body = isolate(state).map(|st| crate::ops::body_from_js(&st, kind, &bytes, sink));
    let prepared = prepare(state, &call);
    async move {
        let body: Body = body?;
        let Prepared { st, cache, req } = prepared?;
        let status = u16::try_from(status)
            .ok()
            .and_then(|s| http::StatusCode::from_u16(s).ok())
            .ok_or_else(|| JsErrorBox::type_error(format!("invalid status {status}")))?;
        let headers = crate::ops::build_headers(headers).map_err(JsErrorBox::type_error)?;
        let mut response = http::Response::new(body.into_data_stream());
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        let put = cache.put(&req, response);
        let outcome = crate::ops_do::outbound(&st, call.caller, call.in_cs, put)
            .await
            .map_err(|e| JsErrorBox::generic(e.message))?
            .map_err(js_error)?;
        tracing::debug!(worker = %st.worker.spec.name, url = %call.url, ?outcome, "cache put");
        Ok(())
    }
}

/// `cache.match(request, {ignoreMethod})`: `null` on a miss.
#[op2]
#[serde]
fn op_cache_match(
    state: &mut OpState,
    #[serde] call: CacheCall,
    ignore_method: bool,
) -> impl Future<Output = Result<Option<JsMatch>, JsErrorBox>> {
    let prepared = prepare(state, &call);
    async move {
        let Prepared { st, cache, req } = prepared?;
        let opts = MatchOptions { ignore_method };
        let found = gated_read(&st, &call, cache.match_request(&req, opts))
            .await?
            .map_err(js_error)?;
        let Some(resp) = found else { return Ok(None) };
        let (parts, body) = resp.into_parts();
        let headers = parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    ByteString::from(v.as_bytes().to_vec()),
                )
            })
            .collect();
        let body = if body.is_empty() {
            0
        } else {
            let id = st.next_id();
            st.bodies
                .borrow_mut()
                .insert(id, Body::from_stream(body.into_stream()));
            id
        };
        Ok(Some(JsMatch {
            status: parts.status.as_u16(),
            headers,
            body,
        }))
    }
}

/// `cache.delete(request, {ignoreMethod})`: whether an entry was removed.
#[op2]
fn op_cache_delete(
    state: &mut OpState,
    #[serde] call: CacheCall,
    ignore_method: bool,
) -> impl Future<Output = Result<bool, JsErrorBox>> {
    let prepared = prepare(state, &call);
    async move {
        let Prepared { st, cache, req } = prepared?;
        let opts = MatchOptions { ignore_method };
        let delete = cache.delete(&req, opts);
        crate::ops_do::outbound(&st, call.caller, call.in_cs, delete)
            .await
            .map_err(|e| JsErrorBox::generic(e.message))?
            .map_err(js_error)
    }
}
