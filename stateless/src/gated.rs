//! How a binding call (R2, KV, ...) made by a Durable Object passes the object's gates, the
//! same way for every service: a write starts only once the object's earlier writes are durable
//! (output gate) and a result, read or written, comes back through the input gate — unless the
//! call is made inside a critical section, whose own code is the one waiting. A stateless
//! worker's calls (caller 0) pass straight through.

use std::future::Future;

use deno_error::JsErrorBox;

use crate::state::IsolateState;

/// A read by `caller` (an object handle, 0 for a stateless worker).
pub(crate) async fn read<F: Future>(
    st: &IsolateState,
    caller: u32,
    in_cs: bool,
    io: F,
) -> Result<F::Output, JsErrorBox> {
    if caller == 0 {
        return Ok(io.await);
    }
    let ctx = st.object(caller).map(|o| o.ctx.clone()).ok_or_else(|| {
        JsErrorBox::generic("Durable Object reset: the calling object is no longer live")
    })?;
    let value = io.await;
    crate::ops_do::readmit(&ctx, in_cs)
        .await
        .map_err(|e| JsErrorBox::generic(e.to_string()))?;
    Ok(value)
}

/// A write (or any call with effects) by `caller`.
pub(crate) async fn write<F: Future>(
    st: &IsolateState,
    caller: u32,
    in_cs: bool,
    io: F,
) -> Result<F::Output, JsErrorBox> {
    crate::ops_do::outbound(st, caller, in_cs, io)
        .await
        .map_err(|e| JsErrorBox::generic(e.message))
}
