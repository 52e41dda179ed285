//! The `cinder_html` extension: the ops behind `HTMLRewriter` (js/htmlrewriter.js), over the
//! per-transform driver threads of `html_rewriter.rs` (its module doc explains the protocol).
//!
//! Each running transform is an entry in the isolate's [`Rewriters`] table. `op_html_step`
//! feeds input (or resumes after a handler) and awaits the next step; `op_html_token` is a
//! synchronous method call on the content token whose handler is running, answered by the
//! driver thread while that handler's lol-html callback is blocked.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::mpsc;

use deno_core::{op2, JsBuffer, OpState};
use deno_error::JsErrorBox;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::html_rewriter::{self, Cmd, Input, Reply, Spec, Step, TokenError};

deno_core::extension!(
    cinder_html,
    ops = [
        op_html_selector_check,
        op_html_encoding_check,
        op_html_new,
        op_html_step,
        op_html_token,
        op_html_close
    ],
);

struct Entry {
    input: mpsc::Sender<Input>,
    replies: mpsc::Receiver<Reply>,
    /// Taken out while a step is awaited.
    steps: Option<UnboundedReceiver<Step>>,
    /// The token whose handler is running (the driver is blocked serving it).
    active: Option<u32>,
}

/// The isolate's running transforms, by id.
#[derive(Default, Clone)]
struct Rewriters {
    entries: Rc<RefCell<HashMap<u32, Entry>>>,
    next_id: Rc<Cell<u32>>,
}

fn rewriters(state: &mut OpState) -> Rewriters {
    if !state.has::<Rewriters>() {
        state.put(Rewriters::default());
    }
    state.borrow::<Rewriters>().clone()
}

fn parser_error(message: &str) -> JsErrorBox {
    JsErrorBox::type_error(format!("Parser error: {message}"))
}

fn stopped() -> JsErrorBox {
    JsErrorBox::type_error(TokenError::Stopped.to_string())
}

/// lol-html's message for an invalid selector, or `null`.
#[op2]
#[string]
fn op_html_selector_check(#[string] selector: String) -> Option<String> {
    html_rewriter::selector_error(&selector)
}

/// Whether lol-html can rewrite a document in the encoding `label` names.
#[op2(fast)]
fn op_html_encoding_check(#[string] label: String) -> bool {
    html_rewriter::encoding(&label).is_some()
}

/// Starts a transform's driver thread; returns its id.
#[op2]
fn op_html_new(
    state: &mut OpState,
    #[serde] spec: Spec,
    #[string] encoding: String,
) -> Result<u32, JsErrorBox> {
    let enc = html_rewriter::encoding(&encoding)
        .ok_or_else(|| parser_error("Unknown character encoding has been provided."))?;
    let channels = html_rewriter::start(spec, enc)
        .map_err(|e| JsErrorBox::generic(format!("starting the HTML rewriter: {e}")))?;
    let rw = rewriters(state);
    let id = rw.next_id.get().wrapping_add(1);
    rw.next_id.set(id);
    rw.entries.borrow_mut().insert(
        id,
        Entry {
            input: channels.input,
            replies: channels.replies,
            steps: Some(channels.steps),
            active: None,
        },
    );
    Ok(id)
}

/// Feeds the transform: `kind` 0 writes `chunk`, 1 ends the input, 2 resumes after a handler.
/// Resolves with the next step: a handler to call, or "done" for the chunk.
#[op2]
#[serde]
async fn op_html_step(
    state: Rc<RefCell<OpState>>,
    #[smi] id: u32,
    #[smi] kind: u32,
    #[buffer] chunk: JsBuffer,
) -> Result<Step, JsErrorBox> {
    let rw = rewriters(&mut state.borrow_mut());
    let mut steps = {
        let mut entries = rw.entries.borrow_mut();
        let entry = entries.get_mut(&id).ok_or_else(stopped)?;
        entry.active = None;
        let input = match kind {
            0 => Input::Write(chunk.to_vec()),
            1 => Input::End,
            _ => Input::Resume,
        };
        entry.input.send(input).map_err(|_| stopped())?;
        entry
            .steps
            .take()
            .ok_or_else(|| JsErrorBox::generic("HTMLRewriter: a step is already pending"))?
    };
    let step = steps.recv().await;
    let mut entries = rw.entries.borrow_mut();
    if let Some(entry) = entries.get_mut(&id) {
        entry.steps = Some(steps);
        if let Some(s) = &step {
            if s.kind != "done" {
                entry.active = Some(s.token);
            }
        }
    }
    step.ok_or_else(stopped)
}

/// A method call on the token of the running handler.
#[op2]
#[serde]
fn op_html_token(
    state: &mut OpState,
    #[smi] id: u32,
    #[smi] token: u32,
    #[serde] cmd: Cmd,
) -> Result<serde_json::Value, JsErrorBox> {
    let rw = rewriters(state);
    let entries = rw.entries.borrow();
    let dead = || JsErrorBox::type_error(TokenError::Dead.to_string());
    let entry = entries.get(&id).ok_or_else(dead)?;
    // Only the token whose callback the driver is blocked in can be served; anything else would
    // wait for a reply that never comes.
    if entry.active != Some(token) {
        return Err(dead());
    }
    entry
        .input
        .send(Input::Token { token, cmd })
        .map_err(|_| dead())?;
    match entry.replies.recv() {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(TokenError::Refused(m))) => Err(parser_error(&m)),
        Ok(Err(e)) => Err(JsErrorBox::type_error(e.to_string())),
        Err(_) => Err(stopped()),
    }
}

/// Drops a transform (finished, failed or cancelled): its driver thread sees the closed channel
/// and ends.
#[op2(fast)]
fn op_html_close(state: &mut OpState, #[smi] id: u32) {
    let rw = rewriters(state);
    let removed = rw.entries.borrow_mut().remove(&id);
    drop(removed);
}
