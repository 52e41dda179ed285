//! The driver behind `HTMLRewriter` (js/htmlrewriter.js): one `lol_html::HtmlRewriter` per
//! `transform()`, run on a thread of its own.
//!
//! ## Why a thread
//! lol-html calls its content handlers synchronously, handing each a `&mut Element` (or text
//! chunk, comment...) that lives only for that call. Workers handlers may be async: the
//! rewriter must wait for the returned promise, and the handler may mutate the element after
//! its awaits. The isolate's thread cannot block inside a lol-html callback while its own event
//! loop runs the handler's I/O, so the parser runs elsewhere and the handler call is a
//! rendezvous (workerd gets the same effect with fibers):
//!
//! 1. JS feeds a chunk (`Input::Write`) and awaits the next [`Step`].
//! 2. Inside a lol-html callback, the driver thread sends a `Step` naming the JS handler and a
//!    fresh token number, then blocks on its input channel.
//! 3. JS calls the handler with a token object; each of its methods is a synchronous op that
//!    sends `Input::Token` and waits for the [`Reply`] — the driver applies it to the live
//!    `&mut Element` it is still holding.
//! 4. When the handler (and its promise) is done, JS sends `Input::Resume`; the callback
//!    returns, lol-html goes on, and the next `Step` is a handler call again or `Done` for the
//!    chunk, carrying the output bytes produced so far (so output streams as it is made).
//!
//! A token is live only while its callback is blocked in step 2–4: any other token number is
//! answered [`TokenError::Dead`], workerd's "no longer valid" error. Dropping the channels
//! (response cancelled, isolate gone) makes the blocked callback fail, which aborts the
//! rewrite and ends the thread.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::mpsc;

use deno_core::ToJsBuffer;
use lol_html::html_content::{
    Comment, ContentType, Doctype, DocumentEnd, Element, EndTag, TextChunk,
};
use lol_html::{
    AsciiCompatibleEncoding, DocumentContentHandlers, ElementContentHandlers, HandlerResult,
    HtmlRewriter, MemorySettings, Selector, Settings,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedSender;

/// What JS registered: selectors with the ids of their JS handlers (ids index a table in JS).
#[derive(Deserialize, Default)]
pub(crate) struct Spec {
    pub elements: Vec<ElementSpec>,
    pub documents: Vec<DocumentSpec>,
}

#[derive(Deserialize)]
pub(crate) struct ElementSpec {
    pub selector: String,
    pub element: Option<u32>,
    pub comments: Option<u32>,
    pub text: Option<u32>,
}

#[derive(Deserialize)]
pub(crate) struct DocumentSpec {
    pub doctype: Option<u32>,
    pub comments: Option<u32>,
    pub text: Option<u32>,
    pub end: Option<u32>,
}

/// JS -> driver.
pub(crate) enum Input {
    Write(Vec<u8>),
    End,
    /// A method call on the token `token`.
    Token {
        token: u32,
        cmd: Cmd,
    },
    /// The current handler is done (its promise settled without throwing).
    Resume,
}

/// A method or property of a content token, as js/htmlrewriter.js calls it.
#[derive(Deserialize, Debug)]
#[serde(tag = "op", rename_all = "camelCase")]
pub(crate) enum Cmd {
    TagName,
    SetTagName { value: String },
    Attributes,
    GetAttribute { name: String },
    HasAttribute { name: String },
    SetAttribute { name: String, value: String },
    RemoveAttribute { name: String },
    NamespaceUri,
    SelfClosing,
    CanHaveContent,
    Removed,
    Before { content: String, html: bool },
    After { content: String, html: bool },
    Prepend { content: String, html: bool },
    Append { content: String, html: bool },
    Replace { content: String, html: bool },
    SetInnerContent { content: String, html: bool },
    Remove,
    RemoveAndKeepContent,
    OnEndTag { handler: u32 },
    Text,
    SetText { value: String },
    Name,
    SetName { value: String },
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum TokenError {
    #[error(
        "This content token is no longer valid. Content tokens are only valid during the \
         execution of the relevant content handler."
    )]
    Dead,
    /// lol-html refused the change; JS reports it as workerd does ("Parser error: ...").
    #[error("{0}")]
    Refused(String),
    #[error("this content token has no such method")]
    Unsupported,
    #[error("the HTML rewriter stopped")]
    Stopped,
}

pub(crate) type Reply = Result<Value, TokenError>;

/// Driver -> JS: a handler to call, or the end of the current chunk (or of the document).
#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Step {
    /// "element", "comments", "text", "doctype", "end", "endTag", or "done".
    pub kind: &'static str,
    pub handler: u32,
    pub token: u32,
    /// Output produced since the previous step.
    pub output: Option<ToJsBuffer>,
    /// A text chunk's text.
    pub text: Option<String>,
    pub last_in_text_node: bool,
    /// A doctype's fields.
    pub name: Option<String>,
    pub public_id: Option<String>,
    pub system_id: Option<String>,
    /// Set on "done" when the rewrite failed: lol-html's message.
    pub error: Option<String>,
}

/// Why a handler callback failed; lol-html aborts the rewrite with it.
#[derive(Debug, thiserror::Error)]
enum Abort {
    #[error("the HTML rewriter was cancelled")]
    Cancelled,
    #[error("the HTML rewriter received input while a content handler was running")]
    Protocol,
}

/// The driver thread's side of the channels.
struct Driver {
    input: mpsc::Receiver<Input>,
    steps: UnboundedSender<Step>,
    replies: mpsc::Sender<Reply>,
    output: RefCell<Vec<u8>>,
    next_token: Cell<u32>,
}

impl Driver {
    fn take_output(&self) -> Option<ToJsBuffer> {
        let out = std::mem::take(&mut *self.output.borrow_mut());
        (!out.is_empty()).then(|| out.into())
    }

    /// Hands one handler call to JS and serves its token until JS resumes.
    fn call(&self, mut step: Step, mut apply: impl FnMut(Cmd) -> Reply) -> HandlerResult {
        let token = self.next_token.get().wrapping_add(1);
        self.next_token.set(token);
        step.token = token;
        step.output = self.take_output();
        if self.steps.send(step).is_err() {
            return Err(Abort::Cancelled.into());
        }
        loop {
            match self.input.recv() {
                Ok(Input::Token { token: t, cmd }) => {
                    let reply = if t == token {
                        apply(cmd)
                    } else {
                        Err(TokenError::Dead)
                    };
                    if self.replies.send(reply).is_err() {
                        return Err(Abort::Cancelled.into());
                    }
                }
                Ok(Input::Resume) => return Ok(()),
                Ok(Input::Write(_) | Input::End) => return Err(Abort::Protocol.into()),
                Err(_) => return Err(Abort::Cancelled.into()),
            }
        }
    }

    fn done(&self, error: Option<String>) {
        let _ = self.steps.send(Step {
            kind: "done",
            output: self.take_output(),
            error,
            ..Step::default()
        });
    }
}

fn content_type(html: bool) -> ContentType {
    if html {
        ContentType::Html
    } else {
        ContentType::Text
    }
}

fn refused(e: impl std::fmt::Display) -> TokenError {
    TokenError::Refused(e.to_string())
}

fn apply_element(driver: &Rc<Driver>, el: &mut Element<'_, '_>, cmd: Cmd) -> Reply {
    Ok(match cmd {
        Cmd::TagName => json!(el.tag_name()),
        Cmd::SetTagName { value } => {
            el.set_tag_name(&value).map_err(refused)?;
            Value::Null
        }
        Cmd::Attributes => Value::Array(
            el.attributes()
                .iter()
                .map(|a| json!([a.name(), a.value()]))
                .collect(),
        ),
        Cmd::GetAttribute { name } => json!(el.get_attribute(&name)),
        Cmd::HasAttribute { name } => json!(el.has_attribute(&name)),
        Cmd::SetAttribute { name, value } => {
            el.set_attribute(&name, &value).map_err(refused)?;
            Value::Null
        }
        Cmd::RemoveAttribute { name } => {
            el.remove_attribute(&name);
            Value::Null
        }
        Cmd::NamespaceUri => json!(el.namespace_uri()),
        Cmd::SelfClosing => json!(el.is_self_closing()),
        Cmd::CanHaveContent => json!(el.can_have_content()),
        Cmd::Removed => json!(el.removed()),
        Cmd::Before { content, html } => {
            el.before(&content, content_type(html));
            Value::Null
        }
        Cmd::After { content, html } => {
            el.after(&content, content_type(html));
            Value::Null
        }
        Cmd::Prepend { content, html } => {
            el.prepend(&content, content_type(html));
            Value::Null
        }
        Cmd::Append { content, html } => {
            el.append(&content, content_type(html));
            Value::Null
        }
        Cmd::Replace { content, html } => {
            el.replace(&content, content_type(html));
            Value::Null
        }
        Cmd::SetInnerContent { content, html } => {
            el.set_inner_content(&content, content_type(html));
            Value::Null
        }
        Cmd::Remove => {
            el.remove();
            Value::Null
        }
        Cmd::RemoveAndKeepContent => {
            el.remove_and_keep_content();
            Value::Null
        }
        Cmd::OnEndTag { handler } => {
            let d = driver.clone();
            let handlers = el
                .end_tag_handlers()
                .ok_or_else(|| TokenError::Refused("No end tag.".into()))?;
            handlers.push(Box::new(move |end: &mut EndTag<'_>| {
                let step = Step {
                    kind: "endTag",
                    handler,
                    ..Step::default()
                };
                d.call(step, |cmd| apply_end_tag(end, cmd))
            }));
            Value::Null
        }
        _ => return Err(TokenError::Unsupported),
    })
}

fn apply_end_tag(end: &mut EndTag<'_>, cmd: Cmd) -> Reply {
    Ok(match cmd {
        Cmd::Name => json!(end.name()),
        Cmd::SetName { value } => {
            end.set_name_str(value);
            Value::Null
        }
        Cmd::Before { content, html } => {
            end.before(&content, content_type(html));
            Value::Null
        }
        Cmd::After { content, html } => {
            end.after(&content, content_type(html));
            Value::Null
        }
        Cmd::Remove => {
            end.remove();
            Value::Null
        }
        _ => return Err(TokenError::Unsupported),
    })
}

fn apply_text(chunk: &mut TextChunk<'_>, cmd: Cmd) -> Reply {
    Ok(match cmd {
        Cmd::Removed => json!(chunk.removed()),
        Cmd::Before { content, html } => {
            chunk.before(&content, content_type(html));
            Value::Null
        }
        Cmd::After { content, html } => {
            chunk.after(&content, content_type(html));
            Value::Null
        }
        Cmd::Replace { content, html } => {
            chunk.replace(&content, content_type(html));
            Value::Null
        }
        Cmd::Remove => {
            chunk.remove();
            Value::Null
        }
        _ => return Err(TokenError::Unsupported),
    })
}

fn apply_comment(comment: &mut Comment<'_>, cmd: Cmd) -> Reply {
    Ok(match cmd {
        Cmd::Text => json!(comment.text()),
        Cmd::SetText { value } => {
            comment.set_text(&value).map_err(refused)?;
            Value::Null
        }
        Cmd::Removed => json!(comment.removed()),
        Cmd::Before { content, html } => {
            comment.before(&content, content_type(html));
            Value::Null
        }
        Cmd::After { content, html } => {
            comment.after(&content, content_type(html));
            Value::Null
        }
        Cmd::Replace { content, html } => {
            comment.replace(&content, content_type(html));
            Value::Null
        }
        Cmd::Remove => {
            comment.remove();
            Value::Null
        }
        _ => return Err(TokenError::Unsupported),
    })
}

fn apply_doctype(doctype: &mut Doctype<'_>, cmd: Cmd) -> Reply {
    Ok(match cmd {
        Cmd::Removed => json!(doctype.removed()),
        Cmd::Remove => {
            doctype.remove();
            Value::Null
        }
        _ => return Err(TokenError::Unsupported),
    })
}

fn apply_end(end: &mut DocumentEnd<'_>, cmd: Cmd) -> Reply {
    match cmd {
        Cmd::Append { content, html } => {
            end.append(&content, content_type(html));
            Ok(Value::Null)
        }
        _ => Err(TokenError::Unsupported),
    }
}

fn text_step(handler: u32, chunk: &TextChunk<'_>) -> Step {
    Step {
        kind: "text",
        handler,
        text: Some(chunk.as_str().to_owned()),
        last_in_text_node: chunk.last_in_text_node(),
        ..Step::default()
    }
}

fn plain_step(kind: &'static str, handler: u32) -> Step {
    Step {
        kind,
        handler,
        ..Step::default()
    }
}

/// lol-html's message for a selector it cannot parse, `None` if it parses.
pub(crate) fn selector_error(selector: &str) -> Option<String> {
    selector.parse::<Selector>().err().map(|e| e.to_string())
}

/// The encoding named by a Content-Type charset label, if lol-html can rewrite it.
pub(crate) fn encoding(label: &str) -> Option<AsciiCompatibleEncoding> {
    encoding_rs::Encoding::for_label(label.trim().as_bytes()).and_then(AsciiCompatibleEncoding::new)
}

fn settings<'h>(spec: &Spec, driver: &Rc<Driver>) -> Result<Settings<'h, 'static>, String> {
    let mut settings = Settings::new();
    for el in &spec.elements {
        let selector: Selector = el.selector.parse().map_err(|e| format!("{e}"))?;
        let mut handlers = ElementContentHandlers::default();
        if let Some(h) = el.element {
            let d = driver.clone();
            handlers = handlers.element(move |e: &mut Element<'_, '_>| {
                let dd = d.clone();
                d.call(plain_step("element", h), |cmd| apply_element(&dd, e, cmd))
            });
        }
        if let Some(h) = el.comments {
            let d = driver.clone();
            handlers = handlers.comments(move |c: &mut Comment<'_>| {
                d.call(plain_step("comments", h), |cmd| apply_comment(c, cmd))
            });
        }
        if let Some(h) = el.text {
            let d = driver.clone();
            handlers = handlers.text(move |t: &mut TextChunk<'_>| {
                d.call(text_step(h, t), |cmd| apply_text(t, cmd))
            });
        }
        settings = settings.append_element_content_handler((Cow::Owned(selector), handlers));
    }
    for doc in &spec.documents {
        let mut handlers = DocumentContentHandlers::default();
        if let Some(h) = doc.doctype {
            let d = driver.clone();
            handlers = handlers.doctype(move |dt: &mut Doctype<'_>| {
                let step = Step {
                    kind: "doctype",
                    handler: h,
                    name: dt.name(),
                    public_id: dt.public_id(),
                    system_id: dt.system_id(),
                    ..Step::default()
                };
                d.call(step, |cmd| apply_doctype(dt, cmd))
            });
        }
        if let Some(h) = doc.comments {
            let d = driver.clone();
            handlers = handlers.comments(move |c: &mut Comment<'_>| {
                d.call(plain_step("comments", h), |cmd| apply_comment(c, cmd))
            });
        }
        if let Some(h) = doc.text {
            let d = driver.clone();
            handlers = handlers.text(move |t: &mut TextChunk<'_>| {
                d.call(text_step(h, t), |cmd| apply_text(t, cmd))
            });
        }
        if let Some(h) = doc.end {
            let d = driver.clone();
            handlers = handlers.end(move |e: &mut DocumentEnd<'_>| {
                d.call(plain_step("end", h), |cmd| apply_end(e, cmd))
            });
        }
        settings = settings.append_document_content_handler(handlers);
    }
    // workerd's limits: a small preallocated buffer, at most 3 MiB of parser state.
    Ok(settings.with_memory_settings(
        MemorySettings::new()
            .with_preallocated_parsing_buffer_size(1024)
            .with_max_allowed_memory_usage(3 * 1024 * 1024),
    ))
}

/// JS's ends of a running rewrite.
pub(crate) struct Channels {
    pub input: mpsc::Sender<Input>,
    pub replies: mpsc::Receiver<Reply>,
    pub steps: tokio::sync::mpsc::UnboundedReceiver<Step>,
}

/// Starts the driver thread for one `transform()`.
pub(crate) fn start(spec: Spec, encoding: AsciiCompatibleEncoding) -> std::io::Result<Channels> {
    let (input_tx, input_rx) = mpsc::channel();
    let (reply_tx, reply_rx) = mpsc::channel();
    let (step_tx, step_rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("html-rewriter".into())
        .spawn(move || {
            let driver = Rc::new(Driver {
                input: input_rx,
                steps: step_tx,
                replies: reply_tx,
                output: RefCell::new(Vec::new()),
                next_token: Cell::new(0),
            });
            run(&spec, encoding, driver);
        })?;
    Ok(Channels {
        input: input_tx,
        replies: reply_rx,
        steps: step_rx,
    })
}

fn run(spec: &Spec, encoding: AsciiCompatibleEncoding, driver: Rc<Driver>) {
    let settings = match settings(spec, &driver) {
        Ok(s) => s.with_encoding(encoding),
        Err(e) => return driver.done(Some(e)),
    };
    let sink = driver.clone();
    let mut rewriter = HtmlRewriter::new(settings, move |c: &[u8]| {
        sink.output.borrow_mut().extend_from_slice(c)
    });
    loop {
        match driver.input.recv() {
            Ok(Input::Write(chunk)) => match rewriter.write(&chunk) {
                Ok(()) => driver.done(None),
                // lol-html cannot go on after an error: report it and stop.
                Err(e) => return driver.done(Some(e.to_string())),
            },
            Ok(Input::End) => {
                let result = rewriter.end();
                return driver.done(result.err().map(|e| e.to_string()));
            }
            // No handler is running: every token is dead.
            Ok(Input::Token { .. }) => {
                if driver.replies.send(Err(TokenError::Dead)).is_err() {
                    return;
                }
            }
            Ok(Input::Resume) => {}
            Err(_) => return,
        }
    }
}
