//! Durable Object classes written in JS, hosted on the actor core.
//!
//! Core owns the objects (activation, queue, gates, alarms, eviction); this module is the
//! `ActorFactory` / `Actor` pair that forwards them to a JS class. All objects of one class on
//! one executor thread live in that thread's isolate for the class's worker, each with its own
//! JS instance, `ctx` and handle.
//!
//! Entering JS for an object is *synchronous*: an event's handler is started from inside the
//! first poll of core's handler future, and runs (with its microtasks) until its first real
//! await before that poll returns. Core holds the object's input gate for exactly that poll,
//! so no other event of the object can start between the delivery of one and its first storage
//! call — the guarantee the input gate exists for.

use std::rc::{Rc, Weak};

use bytes::Bytes;
use cinder_core::{
    Actor, ActorContext, ActorError, ActorFactory, AlarmInfo, IdlePolicy, Payload, Request,
    Response,
};
use futures::future::LocalBoxFuture;
use http_body_util::BodyExt;

use crate::isolate::Isolate;
use crate::Body;

/// What a stub sends to a JS Durable Object. Crosses threads (and, later, nodes): everything
/// in it is plain data or a streaming body. Moved, never copied, through channels: the size of
/// the fetch variant costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub enum DoCall {
    Fetch {
        request_id: String,
        req: http::Request<Body>,
    },
    Rpc {
        request_id: String,
        message: RpcMessage,
    },
    /// Something happened on one of the object's hibernatable WebSockets.
    WebSocket {
        socket: u64,
        event: crate::websocket::Incoming,
    },
}

/// An RPC message: the V8-serialized calls or results (see js/rpc.js) and the byte streams
/// passed in them, each a streaming body (a `ReadableStream` on either side).
pub struct RpcMessage {
    pub bytes: Bytes,
    pub streams: Vec<Body>,
}

/// What a JS Durable Object answers.
pub enum DoReply {
    Fetch(http::Response<Body>),
    Rpc(RpcMessage),
    Alarm,
}

/// An event waiting for JS to take it (`op_do_take`).
pub(crate) enum DoEvent {
    Construct {
        handle: u32,
        class: String,
        id_hex: String,
        id_name: Option<String>,
    },
    Call {
        handle: u32,
        call: DoCall,
    },
    Alarm {
        handle: u32,
        info: AlarmInfo,
    },
    /// A call on a function or RpcTarget this isolate exported.
    Export {
        id: String,
        message: RpcMessage,
    },
    /// An RPC call to a `WorkerEntrypoint` of this worker (a service binding).
    Entrypoint {
        entrypoint: Option<String>,
        message: RpcMessage,
    },
}

/// One live object in an isolate.
pub(crate) struct ObjectEntry {
    pub ctx: ActorContext,
    pub sqlite: bool,
    pub sql: std::cell::RefCell<Option<Rc<cinder_sql::SqlStorage>>>,
    /// Whether its SQLite page cache is among the thread's warm ones (`sql_memory`).
    pub sql_warm: Rc<crate::sql_memory::WarmMark>,
    /// Plain (`ws.accept()`) sockets open in this instance: they keep it in memory.
    pub plain_sockets: std::cell::Cell<u32>,
    /// Timers pending in this instance: they keep it from hibernating.
    pub timers: std::cell::Cell<u32>,
}

impl ObjectEntry {
    /// The object's SQLite database (SQLite-backed classes), opened on first use.
    pub fn sql(&self) -> Result<Rc<cinder_sql::SqlStorage>, ActorError> {
        if !self.sqlite {
            // workerd's text (`DurableObjectStorage::getSqliteDb`).
            return Err(ActorError::new(
                "This Durable Object is not backed by SQLite storage, so the SQL API is not \
                 available. SQL can be enabled on a new Durable Object class by using the \
                 `new_sqlite_classes` instead of `new_classes` under `[[migrations]]` in your \
                 wrangler.toml, but an already-deployed class cannot be converted to SQLite \
                 (except by deleting the existing data).",
            ));
        }
        if let Some(db) = self.sql.borrow().as_ref() {
            crate::sql_memory::used(db, &self.sql_warm);
            return Ok(db.clone());
        }
        let storage = self.ctx.storage();
        let db =
            cinder_sql::SqlStorage::open(storage.raw().clone(), cinder_sql::SqlConfig::default())
                .map_err(|e| ActorError::new(e.to_string()))?;
        // Opening may have written (a point-in-time restore): those writes join this turn.
        if storage.raw().has_pending() {
            storage.note_raw_write(Default::default());
        }
        db.set_on_write(move || storage.note_raw_write(Default::default()));
        let db = Rc::new(db);
        *self.sql.borrow_mut() = Some(db.clone());
        crate::sql_memory::used(&db, &self.sql_warm);
        Ok(db)
    }
}

/// Constructs instances of one JS class on whatever executor thread the object lives on.
pub(crate) struct JsClassFactory {
    pub worker: String,
    pub class: String,
    pub sqlite: bool,
}

impl ActorFactory for JsClassFactory {
    fn create(&self, ctx: ActorContext) -> Result<Box<dyn Actor>, ActorError> {
        let iso = crate::thread::isolate_for(&self.worker).map_err(ActorError::new)?;
        let handle = iso.state.next_id();
        let id_for_actor = ctx.id().clone();
        let id = ctx.id();
        let event = DoEvent::Construct {
            handle,
            class: self.class.clone(),
            id_hex: id.to_hex(),
            id_name: id.name().map(str::to_string),
        };
        iso.state.objects.borrow_mut().insert(
            handle,
            Rc::new(ObjectEntry {
                ctx,
                sqlite: self.sqlite,
                sql: Default::default(),
                sql_warm: Default::default(),
                plain_sockets: Default::default(),
                timers: Default::default(),
            }),
        );
        if let Err(e) = iso.enter_object(event, None) {
            iso.state.objects.borrow_mut().remove(&handle);
            iso.state.dead_objects.borrow_mut().push(handle);
            return Err(e);
        }
        if let Some(host) = iso.state.worker.host() {
            host.sockets.mark_awake(&id_for_actor);
        }
        Ok(Box::new(JsActor {
            iso: Rc::downgrade(&iso),
            handle,
            id: id_for_actor,
            evicted: Default::default(),
        }))
    }
}

/// One live instance: a handle into its isolate's table of objects.
pub(crate) struct JsActor {
    iso: Weak<Isolate>,
    handle: u32,
    id: cinder_core::ObjectId,
    /// Set by `on_evict`: dropped because idle (its hibernatable sockets stay open), not reset.
    evicted: std::cell::Cell<bool>,
}

impl JsActor {
    async fn deliver(&self, event: DoEvent) -> Result<DoReply, ActorError> {
        let iso = self.iso.upgrade().ok_or_else(isolate_gone)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        iso.enter_object(event, Some(tx))?;
        drop(iso);
        rx.await.unwrap_or_else(|_| Err(isolate_gone()))
    }
}

fn isolate_gone() -> ActorError {
    ActorError::new("Durable Object reset because its isolate was stopped.")
}

impl Drop for JsActor {
    fn drop(&mut self) {
        let Some(iso) = self.iso.upgrade() else {
            return;
        };
        // The JS instance is forgotten on the next call into the isolate; this may run from
        // inside an op (a reset), where JS cannot be entered.
        iso.state.objects.borrow_mut().remove(&self.handle);
        iso.state.dead_objects.borrow_mut().push(self.handle);
        if self.evicted.get() {
            if let Some(host) = iso.state.worker.host() {
                host.sockets.mark_hibernated(&self.id);
            }
        } else {
            // A reset (not hibernation): the object's WebSockets close with it, as on
            // Cloudflare.
            if let Some(host) = iso.state.worker.host() {
                host.sockets.close_object(
                    &self.id,
                    1011,
                    "Durable Object connection closed because the object was reset.",
                );
            }
        }
    }
}

impl Actor for JsActor {
    fn fetch(&self, req: Request) -> LocalBoxFuture<'_, Result<Response, ActorError>> {
        Box::pin(async move {
            let call = DoCall::Fetch {
                request_id: String::new(),
                req: req.map(Body::from),
            };
            match self
                .deliver(DoEvent::Call {
                    handle: self.handle,
                    call,
                })
                .await?
            {
                DoReply::Fetch(resp) => {
                    let (parts, body) = resp.into_parts();
                    let bytes = body
                        .collect()
                        .await
                        .map_err(|e| ActorError::new(format!("reading the response: {e}")))?
                        .to_bytes();
                    Ok(http::Response::from_parts(parts, bytes))
                }
                _ => Err(ActorError::new(
                    "the object answered a fetch with no Response",
                )),
            }
        })
    }

    fn call(&self, payload: Payload) -> LocalBoxFuture<'_, Result<Payload, ActorError>> {
        Box::pin(async move {
            let call = payload
                .downcast::<DoCall>()
                .map_err(|_| ActorError::new("unknown event type for a JS Durable Object"))?;
            let reply = self
                .deliver(DoEvent::Call {
                    handle: self.handle,
                    call: *call,
                })
                .await?;
            Ok(Box::new(reply) as Payload)
        })
    }

    fn idle_policy(&self) -> IdlePolicy {
        let Some(iso) = self.iso.upgrade() else {
            return IdlePolicy::Default;
        };
        if let Some(obj) = iso.state.object(self.handle) {
            if obj.plain_sockets.get() > 0 || obj.timers.get() > 0 {
                return IdlePolicy::Never;
            }
        }
        match iso.state.worker.host() {
            Some(host) if host.sockets.object_has_sockets(&self.id) => {
                IdlePolicy::After(host.hibernate_after)
            }
            _ => IdlePolicy::Default,
        }
    }

    fn on_evict(&self) {
        self.evicted.set(true);
    }

    fn alarm(&self, info: AlarmInfo) -> LocalBoxFuture<'_, Result<(), ActorError>> {
        Box::pin(async move {
            self.deliver(DoEvent::Alarm {
                handle: self.handle,
                info,
            })
            .await
            .map(|_| ())
        })
    }
}
