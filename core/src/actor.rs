//! The contract between the runtime and an object's code: [`Actor`] (one live instance) and
//! [`ActorFactory`] (its constructor). Native Rust objects implement these directly; the JS host
//! implements them once, forwarding to a JS class.

use std::any::Any;
use std::time::Duration;

use bytes::Bytes;
use futures::future::LocalBoxFuture;

use crate::context::ActorContext;
use crate::error::ActorError;

/// A request event, as delivered to [`Actor::fetch`].
pub type Request = http::Request<Bytes>;
/// The reply to a request event.
pub type Response = http::Response<Bytes>;
/// An opaque payload for [`Actor::call`] (RPC calls, WebSocket messages, anything a host
/// routes through an object's queue and gates). Must be `Send`: it crosses threads.
pub type Payload = Box<dyn Any + Send>;

/// What `alarm()` is told about the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlarmInfo {
    /// When the alarm was scheduled for (ms since the Unix epoch).
    pub scheduled_time: i64,
    /// How many earlier runs of this alarm failed.
    pub retry_count: u32,
    /// `retry_count > 0`.
    pub is_retry: bool,
}

/// How long an idle object stays in memory. Asked each time the object becomes idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdlePolicy {
    /// The runtime's idle timeout (70–140 s by default).
    #[default]
    Default,
    /// Evict after exactly this long. Hibernation uses this: an object whose only connections
    /// are hibernatable WebSockets answers `After(10 s)`, the gateway keeps the sockets, and the
    /// next message re-creates the object (constructor runs) through the normal event path.
    After(Duration),
    /// Never evict while the runtime runs (e.g. it holds a non-hibernatable socket).
    Never,
}

/// One live instance of an object. Lives on its executor thread (`!Send` is fine) and is
/// dropped on eviction or reset.
///
/// Handlers take `&self`: events interleave at awaits (when the input gate allows), so several
/// handler futures of one instance can be alive at once. Keep mutable state in `Cell`/`RefCell`
/// and never hold a `RefCell` borrow across an await.
pub trait Actor: 'static {
    /// A request event. An `Err` reaches the caller as [`crate::ObjectError::Remote`].
    fn fetch(&self, req: Request) -> LocalBoxFuture<'_, Result<Response, ActorError>>;

    /// The object's alarm fired. An `Err` schedules a retry (at most 6, 2 s·2ⁿ apart).
    fn alarm(&self, info: AlarmInfo) -> LocalBoxFuture<'_, Result<(), ActorError>> {
        let _ = info;
        Box::pin(async { Ok(()) })
    }

    /// A host-defined event (see [`Payload`]). The default rejects it.
    fn call(&self, payload: Payload) -> LocalBoxFuture<'_, Result<Payload, ActorError>> {
        let _ = payload;
        Box::pin(async { Err(ActorError::new("this Durable Object does not accept calls")) })
    }

    /// How long to stay in memory once idle (see [`IdlePolicy`]).
    fn idle_policy(&self) -> IdlePolicy {
        IdlePolicy::Default
    }

    /// Called once just before an idle instance is evicted (not on reset). The hook
    /// hibernation will use to hand its sockets' state back to the gateway.
    fn on_evict(&self) {}
}

/// Constructs instances of one class. Called on the object's executor thread at activation
/// (first event, alarm, or first event after eviction/reset). Construction is synchronous, as a
/// JS constructor is; start asynchronous set-up with
/// [`ActorContext::block_concurrency_while`], which holds back events until it is done.
pub trait ActorFactory: Send + Sync + 'static {
    /// A new instance for `ctx.id()`. An `Err` fails the event that caused the activation;
    /// the next event tries again.
    fn create(&self, ctx: ActorContext) -> Result<Box<dyn Actor>, ActorError>;
}

impl<F> ActorFactory for F
where
    F: Fn(ActorContext) -> Result<Box<dyn Actor>, ActorError> + Send + Sync + 'static,
{
    fn create(&self, ctx: ActorContext) -> Result<Box<dyn Actor>, ActorError> {
        self(ctx)
    }
}
