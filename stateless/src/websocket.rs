//! WebSockets as the runtime sees them: one node-wide table of sockets, each the *server*
//! end that JS holds (`new WebSocketPair()[1]`), and where its incoming messages go.
//!
//! The gateway owns the network connection. When a worker answers `101` with a `webSocket`,
//! the response carries a [`WsHandoff`] naming the socket; the gateway upgrades the client's
//! connection and pumps frames: incoming ones to [`SocketLink::deliver`], outgoing ones from
//! [`SocketLink::outgoing`]. A socket's incoming messages go either to the isolate whose JS
//! object accepted it (`ws.accept()`, events on the object) or, once a Durable Object took it
//! with `ctx.acceptWebSocket`, to the object through core as an event — so the object may be
//! evicted (hibernate) while the socket stays open here, and the next message re-creates it.
//!
//! What survives hibernation lives here, not in JS: the socket, its tags, its attachment, the
//! object's auto-response and the socket's last auto-response time.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use cinder_core::ObjectId;
use tokio::sync::Notify;

/// Cloudflare's limits.
pub const MAX_HIBERNATABLE_PER_OBJECT: usize = 32_768;
pub const MAX_TAGS: usize = 10;
pub const MAX_TAG_LENGTH: usize = 256;
pub const MAX_ATTACHMENT_BYTES: usize = 16 * 1024;
pub const MAX_MESSAGE_BYTES: usize = 32 << 20;
pub const MAX_AUTO_RESPONSE_CHARS: usize = 2048;

/// Marks a `101` response whose WebSocket the gateway must connect to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsHandoff(pub u64);

/// A message crossing a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsMessage {
    Text(String),
    Binary(Bytes),
}

/// What the gateway writes to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    Message(WsMessage),
    Close { code: u16, reason: String },
}

/// What happened on the network side of a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Message(WsMessage),
    /// The connection ended: a close frame (`clean`) or the peer vanished (1006). The last
    /// event of every socket.
    Close {
        code: u16,
        reason: String,
        clean: bool,
    },
    /// A protocol error (e.g. a message over the size limit); a `Close` follows.
    Error(String),
}

/// Where a socket's incoming messages go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// Not accepted yet: messages wait in the socket's queue.
    Unaccepted,
    /// `ws.accept()` in an isolate: `thread`, `worker`, and the object handle when the isolate
    /// runs it for a Durable Object (0 for a stateless worker).
    Isolate {
        thread: usize,
        worker: String,
        object: u32,
    },
    /// `ctx.acceptWebSocket()`: events go to the object through core.
    Hibernatable { namespace: String, object: ObjectId },
}

pub(crate) struct Socket {
    pub id: u64,
    pub state: Mutex<SocketState>,
    /// What JS sent and the network side has not written yet.
    pub outbox: Outbox,
}

/// Frames on their way to the network, in order. A queue and a wake-up rather than a channel:
/// an idle socket's outbox holds no allocation (a tokio channel allocates a block of 32 slots
/// up front, which for tens of thousands of hibernated sockets is most of their memory).
#[derive(Default)]
pub(crate) struct Outbox {
    queue: Mutex<VecDeque<Outgoing>>,
    ready: Notify,
}

impl Outbox {
    pub fn push(&self, frame: Outgoing) {
        lock(&self.queue).push_back(frame);
        self.ready.notify_one();
    }

    /// The next frame to write; waits for one.
    pub async fn next(&self) -> Outgoing {
        loop {
            if let Some(frame) = lock(&self.queue).pop_front() {
                return frame;
            }
            // A push between the check and here leaves a permit, so this cannot miss it.
            self.ready.notified().await;
        }
    }
}

pub(crate) struct SocketState {
    /// The network side is connected (a socket has one).
    pub connected: bool,
    pub target: Target,
    /// Messages that arrived before the socket was accepted.
    pub queued: VecDeque<Incoming>,
    pub tags: Vec<String>,
    pub attachment: Option<Bytes>,
    pub auto_response_at: Option<f64>,
    /// `close()` was called from JS.
    pub closing: bool,
    pub closed: bool,
    /// The subprotocol the server chose (`Sec-WebSocket-Protocol` of the 101).
    pub protocol: String,
}

/// What the node keeps per Durable Object with hibernatable sockets.
#[derive(Default)]
pub(crate) struct ObjectSockets {
    pub sockets: Vec<u64>,
    pub auto_response: Option<(String, String)>,
    pub event_timeout_ms: Option<f64>,
}

/// Every socket of the node.
#[derive(Default)]
pub(crate) struct Sockets {
    next: AtomicU64,
    table: Mutex<HashMap<u64, Arc<Socket>>>,
    objects: Mutex<HashMap<ObjectId, ObjectSockets>>,
    /// Objects evicted from memory while keeping hibernatable sockets (for `/metrics`); an
    /// entry whose sockets have all closed since is not counted and is dropped lazily.
    hibernated: Mutex<std::collections::HashSet<ObjectId>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Sockets {
    /// A new socket (the server end of a pair), not yet accepted.
    pub fn create(&self) -> Arc<Socket> {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let s = Arc::new(Socket {
            id,
            outbox: Outbox::default(),
            state: Mutex::new(SocketState {
                connected: false,
                target: Target::Unaccepted,
                queued: VecDeque::new(),
                tags: Vec::new(),
                attachment: None,
                auto_response_at: None,
                closing: false,
                closed: false,
                protocol: String::new(),
            }),
        });
        lock(&self.table).insert(id, s.clone());
        s
    }

    pub fn get(&self, id: u64) -> Option<Arc<Socket>> {
        lock(&self.table).get(&id).cloned()
    }

    /// Forgets a closed socket (and its place in its object's list).
    pub fn remove(&self, id: u64) {
        let removed = lock(&self.table).remove(&id);
        let Some(s) = removed else { return };
        let target = lock(&s.state).target.clone();
        if let Target::Hibernatable { object, .. } = target {
            let mut objects = lock(&self.objects);
            if let Some(o) = objects.get_mut(&object) {
                o.sockets.retain(|x| *x != id);
                if o.sockets.is_empty() && o.auto_response.is_none() {
                    objects.remove(&object);
                }
            }
        }
    }

    /// `ctx.acceptWebSocket(ws, tags)`.
    pub fn accept_hibernatable(
        &self,
        id: u64,
        namespace: &str,
        object: &ObjectId,
        tags: Vec<String>,
    ) -> Result<Vec<Incoming>, String> {
        if tags.len() > MAX_TAGS {
            return Err(format!(
                "A WebSocket can have a maximum of {MAX_TAGS} tags, got {}.",
                tags.len()
            ));
        }
        if let Some(t) = tags.iter().find(|t| t.chars().count() > MAX_TAG_LENGTH) {
            return Err(format!(
                "A WebSocket tag can be a maximum of {MAX_TAG_LENGTH} characters, got a tag of length {}.",
                t.chars().count()
            ));
        }
        let s = self
            .get(id)
            .ok_or("the WebSocket is closed or was never opened")?;
        {
            let mut objects = lock(&self.objects);
            let entry = objects.entry(object.clone()).or_default();
            if entry.sockets.len() >= MAX_HIBERNATABLE_PER_OBJECT {
                return Err(format!(
                    "Cannot accept more than {MAX_HIBERNATABLE_PER_OBJECT} hibernatable WebSockets per Durable Object."
                ));
            }
            entry.sockets.push(id);
        }
        let mut st = lock(&s.state);
        if st.target != Target::Unaccepted {
            return Err("Can't accept() WebSocket that was already accepted.".into());
        }
        st.target = Target::Hibernatable {
            namespace: namespace.to_string(),
            object: object.clone(),
        };
        st.tags = tags;
        Ok(st.queued.drain(..).collect())
    }

    /// `ws.accept()` in an isolate.
    pub fn accept_plain(&self, id: u64, target: Target) -> Result<Vec<Incoming>, String> {
        let s = self
            .get(id)
            .ok_or("the WebSocket is closed or was never opened")?;
        let mut st = lock(&s.state);
        if st.target != Target::Unaccepted {
            return Err("Can't accept() WebSocket that was already accepted.".into());
        }
        st.target = target;
        Ok(st.queued.drain(..).collect())
    }

    /// The hibernatable sockets of an object (with their tags), optionally those with `tag`.
    pub fn of_object(&self, object: &ObjectId, tag: Option<&str>) -> Vec<(u64, Vec<String>)> {
        let ids = match lock(&self.objects).get(object) {
            Some(o) => o.sockets.clone(),
            None => return Vec::new(),
        };
        ids.into_iter()
            .filter_map(|id| {
                let s = self.get(id)?;
                let st = lock(&s.state);
                if st.closed {
                    return None;
                }
                if tag.is_some_and(|t| !st.tags.iter().any(|x| x == t)) {
                    return None;
                }
                Some((id, st.tags.clone()))
            })
            .collect()
    }

    pub fn with_object<R>(&self, object: &ObjectId, f: impl FnOnce(&mut ObjectSockets) -> R) -> R {
        let mut objects = lock(&self.objects);
        f(objects.entry(object.clone()).or_default())
    }

    /// The object's auto-response pair, if set.
    pub fn auto_response(&self, object: &ObjectId) -> Option<(String, String)> {
        lock(&self.objects)
            .get(object)
            .and_then(|o| o.auto_response.clone())
    }

    /// The object left memory (evicted, not reset): hibernated if it keeps sockets open.
    pub fn mark_hibernated(&self, object: &ObjectId) {
        if self.object_has_sockets(object) {
            lock(&self.hibernated).insert(object.clone());
        }
    }

    /// The object is in memory again.
    pub fn mark_awake(&self, object: &ObjectId) {
        lock(&self.hibernated).remove(object);
    }

    /// Objects out of memory whose hibernatable sockets are still open.
    pub fn hibernated_count(&self) -> usize {
        let mut hibernated = lock(&self.hibernated);
        hibernated.retain(|id| self.object_has_sockets(id));
        hibernated.len()
    }

    /// Whether an object has hibernatable sockets open.
    pub fn object_has_sockets(&self, object: &ObjectId) -> bool {
        lock(&self.objects)
            .get(object)
            .is_some_and(|o| !o.sockets.is_empty())
    }

    /// Closes every hibernatable socket of an object that was reset (not merely evicted).
    pub fn close_object(&self, object: &ObjectId, code: u16, reason: &str) {
        let ids = lock(&self.objects)
            .remove(object)
            .map(|o| o.sockets)
            .unwrap_or_default();
        for id in ids {
            if let Some(s) = self.get(id) {
                lock(&s.state).closing = true;
                s.outbox.push(Outgoing::Close {
                    code,
                    reason: reason.to_string(),
                });
            }
        }
    }

    /// Open sockets (diagnostics, metrics).
    pub fn count(&self) -> usize {
        lock(&self.table).len()
    }
}

/// The gateway's handle on one socket's network side.
pub struct SocketLink {
    pub(crate) socket: Arc<Socket>,
    pub(crate) host: std::sync::Weak<crate::host::HostInner>,
}

impl SocketLink {
    pub fn id(&self) -> u64 {
        self.socket.id
    }

    /// The next frame JS sent, to write to the network; waits for one.
    pub async fn next_outgoing(&self) -> Outgoing {
        self.socket.outbox.next().await
    }

    /// Connects the network side of a socket; `None` if it is connected already.
    pub(crate) fn connect(
        socket: Arc<Socket>,
        host: std::sync::Weak<crate::host::HostInner>,
    ) -> Option<SocketLink> {
        let mut st = lock(&socket.state);
        if std::mem::replace(&mut st.connected, true) {
            return None;
        }
        drop(st);
        Some(SocketLink { socket, host })
    }

    /// The subprotocol the worker chose, if any.
    pub fn protocol(&self) -> String {
        lock(&self.socket.state).protocol.clone()
    }

    /// If `text` is the object's auto-response request, the response to send instead of
    /// waking the object (and the time of it is recorded).
    pub fn auto_response(&self, text: &str) -> Option<String> {
        let host = self.host.upgrade()?;
        let object = match &lock(&self.socket.state).target {
            Target::Hibernatable { object, .. } => object.clone(),
            _ => return None,
        };
        let (req, resp) = host.sockets.auto_response(&object)?;
        if req != text {
            return None;
        }
        lock(&self.socket.state).auto_response_at = Some(cinder_core::now_ms() as f64);
        Some(resp)
    }

    /// Delivers what happened on the network to wherever the socket's messages go; resolves
    /// once it was handed over (for a Durable Object: once its handler finished, which keeps a
    /// socket's messages in order and gives back-pressure).
    pub async fn deliver(&self, event: Incoming) {
        let Some(host) = self.host.upgrade() else {
            return;
        };
        let target = {
            let mut st = lock(&self.socket.state);
            if st.closed {
                return;
            }
            if matches!(event, Incoming::Close { .. }) {
                st.closed = true;
            }
            if st.target == Target::Unaccepted {
                st.queued.push_back(event);
                return;
            }
            st.target.clone()
        };
        let closing = matches!(event, Incoming::Close { .. });
        // Boxed: the delivery's state (a call into core) exists only while a message is in
        // flight, instead of enlarging every idle connection's pump task by its size.
        Box::pin(crate::ws_delivery::deliver(
            &host,
            self.socket.id,
            target,
            event,
        ))
        .await;
        if closing {
            host.sockets.remove(self.socket.id);
        }
    }
}
