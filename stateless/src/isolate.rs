//! One `JsRuntime` for one worker script on one executor thread: created from the startup
//! snapshot, loads the worker's modules, then serves events until its channel closes or a
//! limit stops it.

use std::cell::RefCell;
use std::future::poll_fn;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use deno_core::{v8, JsRuntime, ModuleSpecifier, PollEventLoopOptions, RuntimeOptions};

use cinder_core::ActorError;

use crate::cpu::{self, Slot};
use crate::durable::{DoCall, DoEvent};
use crate::event::{Event, Stop};
use crate::loader::{Loader, Rules};
use crate::state::{InFlight, IsolateState, ObjectReplyTx, Reply, WorkerCtx};
use crate::LoadError;

/// What every isolate of one worker shares.
pub(crate) struct WorkerShared {
    pub ctx: Arc<WorkerCtx>,
    pub rules: Arc<Rules>,
    pub root: PathBuf,
    pub main: PathBuf,
    pub main_url: ModuleSpecifier,
    pub cpu_limit: Duration,
    pub heap_limit: usize,
    /// The JSON handed to the bootstrap's `start` (vars and bindings).
    pub env_json: String,
}

/// A runtime restored from the startup snapshot, not yet given a worker. Executors keep one
/// spare per thread so a new isolate only has to load the worker's modules.
pub(crate) struct Runtime {
    rt: JsRuntime,
    loader: Rc<BindableLoader>,
    handle: v8::IsolateHandle,
    heap_hit: Arc<AtomicBool>,
    heap_limit: usize,
}

/// An executor thread's pre-warmed [`Runtime`].
pub(crate) type Spare = Rc<std::cell::RefCell<Option<Runtime>>>;

/// The module loader of a [`Runtime`], given its worker's [`Loader`] when the runtime is bound.
#[derive(Default)]
pub(crate) struct BindableLoader(std::cell::RefCell<Option<Rc<Loader>>>);

impl BindableLoader {
    fn get(&self) -> Result<Rc<Loader>, deno_error::JsErrorBox> {
        self.0
            .borrow()
            .clone()
            .ok_or_else(|| deno_error::JsErrorBox::generic("no worker bound to this isolate"))
    }
}

impl deno_core::ModuleLoader for BindableLoader {
    fn resolve(
        &self,
        specifier: &str,
        referrer: &str,
        kind: deno_core::ResolutionKind,
    ) -> Result<ModuleSpecifier, deno_error::JsErrorBox> {
        self.get()?.resolve(specifier, referrer, kind)
    }

    fn load(
        &self,
        spec: &ModuleSpecifier,
        referrer: Option<&deno_core::ModuleLoadReferrer>,
        options: deno_core::ModuleLoadOptions,
    ) -> deno_core::ModuleLoadResponse {
        match self.get() {
            Ok(l) => l.load(spec, referrer, options),
            Err(e) => deno_core::ModuleLoadResponse::Sync(Err(e)),
        }
    }
}

impl Runtime {
    /// A fresh runtime from the snapshot (about 3 ms: the V8 heap is deserialised and every
    /// extension's ops are registered).
    pub fn blank(heap_limit: usize) -> Result<Runtime, String> {
        let snapshot = crate::snapshot::get()?;
        let loader = Rc::new(BindableLoader::default());
        let params = v8::CreateParams::default().heap_limits(0, heap_limit);
        let mut rt = JsRuntime::try_new(RuntimeOptions {
            module_loader: Some(loader.clone()),
            extensions: crate::snapshot::extensions(),
            startup_snapshot: Some(snapshot),
            create_params: Some(params),
            ..Default::default()
        })
        .map_err(|e| e.to_string())?;
        let handle = rt.v8_isolate().thread_safe_handle();
        let heap_hit = Arc::new(AtomicBool::new(false));
        {
            let handle = handle.clone();
            let hit = heap_hit.clone();
            rt.add_near_heap_limit_callback(move |current, _initial| {
                hit.store(true, Ordering::SeqCst);
                handle.terminate_execution();
                // Room for V8 to unwind the terminated script; the isolate is dropped after.
                current.saturating_mul(2)
            });
        }
        // SAFETY: the new isolate is the current one (rusty_v8 entered it on creation).
        unsafe { (*isolate_ptr(&mut rt)).exit() };
        Ok(Runtime {
            rt,
            loader,
            handle,
            heap_hit,
            heap_limit,
        })
    }
}

/// Turns a deno_core error into a [`LoadError`] naming the file and line, taken from the first
/// `file://…:line:col` location the message mentions.
fn load_error(w: &WorkerShared, err: &dyn std::fmt::Display) -> LoadError {
    let message = err.to_string();
    if let Some(start) = message.find("file://") {
        let tail = &message[start..];
        let end = tail
            .find(|c: char| c.is_whitespace() || c == ')' || c == '"' || c == '\'')
            .unwrap_or(tail.len());
        let loc = &tail[..end];
        // loc = file:///path/to/x.js:LINE:COL (the line and column may be absent)
        let mut parts = loc.rsplitn(3, ':');
        let col = parts.next();
        let line = parts.next();
        let file = parts.next();
        if let (Some(file), Some(line), Some(_)) =
            (file, line.and_then(|l| l.parse::<u32>().ok()), col)
        {
            if let Ok(url) = ModuleSpecifier::parse(file) {
                if let Ok(path) = url.to_file_path() {
                    return LoadError::Script {
                        file: path,
                        line,
                        message,
                    };
                }
            }
        }
        if let Ok(url) = ModuleSpecifier::parse(loc) {
            if let Ok(path) = url.to_file_path() {
                return LoadError::File {
                    file: path,
                    message,
                };
            }
        }
    }
    LoadError::File {
        file: w.main.clone(),
        message,
    }
}

/// rusty_v8 enters an isolate when it is created and expects isolates to be dropped in reverse
/// creation order. Many isolates share an executor thread and die in any order, so each one is
/// exited right after creation and entered only around each synchronous use (and its drop).
struct Entered<F> {
    isolate: *mut v8::Isolate,
    fut: F,
}

impl<F: std::future::Future + Unpin> std::future::Future for Entered<F> {
    type Output = F::Output;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        // SAFETY: the isolate outlives this future (both are owned by one `Isolate` call), and
        // enter/exit are paired within this synchronous poll on the isolate's own thread.
        unsafe { (*this.isolate).enter() };
        let r = std::pin::Pin::new(&mut this.fut).poll(cx);
        // SAFETY: as above; this isolate is the current one again after the poll.
        unsafe { (*this.isolate).exit() };
        r
    }
}

fn isolate_ptr(rt: &mut JsRuntime) -> *mut v8::Isolate {
    let owned: &mut v8::OwnedIsolate = rt.v8_isolate();
    &mut **owned
}

impl Drop for Runtime {
    fn drop(&mut self) {
        // SAFETY: dropping the runtime exits the isolate once; entering it here makes it the
        // current isolate, as that exit (and deno_core's cleanup) require.
        unsafe { (*isolate_ptr(&mut self.rt)).enter() };
    }
}

/// One worker's isolate on one executor thread: the worker's stateless events and the Durable
/// Objects of its classes that live on this thread. Shared (`Rc`) between the driver task that
/// runs its event loop and the objects that enter it synchronously; the runtime is borrowed
/// only inside one poll or one synchronous call, never across an await.
pub(crate) struct Isolate {
    rt: RefCell<Runtime>,
    pub state: Rc<IsolateState>,
    /// The bootstrap's entry for Durable Object events.
    entry: v8::Global<v8::Function>,
    slot: Arc<Slot>,
    cpu_limit: Duration,
}

impl Drop for Isolate {
    fn drop(&mut self) {
        self.state.worker.stats.isolate_dropped();
    }
}

/// `entry` kinds (the bootstrap's `cinder.entry`).
const ENTRY_OBJECT_EVENT: i32 = 1;
const ENTRY_STATELESS_EVENT: i32 = 2;
const ENTRY_WS_EVENT: i32 = 3;

/// What an event gets when its isolate has nothing left that could ever answer it (workerd's
/// text).
const NEVER_RESPONDS: &str = "The script will never generate a response.";

impl Isolate {
    /// Builds an isolate from the snapshot and evaluates the worker's main module. The load
    /// runs under the CPU limit too, so a top-level infinite loop is a load error.
    pub async fn create(
        w: &WorkerShared,
        slot: &Arc<Slot>,
        spare: &Spare,
    ) -> Result<Rc<Isolate>, LoadError> {
        let spare_rt = spare
            .borrow_mut()
            .take()
            .filter(|r| r.heap_limit == w.heap_limit);
        let mut runtime = match spare_rt {
            Some(r) => r,
            None => Runtime::blank(w.heap_limit).map_err(|message| LoadError::File {
                file: w.main.clone(),
                message: format!("creating the isolate: {message}"),
            })?,
        };
        refill(spare, w.heap_limit);
        *runtime.loader.0.borrow_mut() = Some(Rc::new(Loader {
            root: w.root.clone(),
            rules: w.rules.clone(),
            data: w.ctx.module_data.clone(),
        }));
        let state = Rc::new(IsolateState::new(w.ctx.clone()));
        runtime.rt.op_state().borrow_mut().put(state.clone());

        slot.arm(runtime.handle.clone(), w.cpu_limit);
        let ptr = isolate_ptr(&mut runtime.rt);
        let loaded = Entered {
            isolate: ptr,
            fut: Box::pin(Self::load_main(&mut runtime.rt, w)),
        }
        .await;
        let fired = slot.disarm();
        if runtime.heap_hit.load(Ordering::SeqCst) {
            return Err(LoadError::Script {
                file: w.main.clone(),
                line: 0,
                message: "Worker exceeded memory limit while loading".into(),
            });
        }
        if fired {
            return Err(LoadError::Script {
                file: w.main.clone(),
                line: 0,
                message: "Worker exceeded CPU time limit while loading (top-level code)".into(),
            });
        }
        let entry = loaded?;
        w.ctx.stats.isolate_loaded();
        Ok(Rc::new(Isolate {
            rt: RefCell::new(runtime),
            state,
            entry,
            slot: slot.clone(),
            cpu_limit: w.cpu_limit,
        }))
    }

    async fn load_main(
        rt: &mut JsRuntime,
        w: &WorkerShared,
    ) -> Result<v8::Global<v8::Function>, LoadError> {
        // Workers have no `Deno`; libraries detect runtimes by it. The bootstrap kept what it
        // needs in closures.
        rt.execute_script(
            "ext:cinder/init.js",
            "delete globalThis.Deno; delete globalThis.__bootstrap; \
             delete globalThis[Symbol.for('cinder.internals')];",
        )
        .map_err(|e| load_error(w, &e))?;
        // `env` exists before the main module runs: `import { env } from "cloudflare:workers"`
        // is usable at its top level.
        let spec = serde_json::to_string(&w.env_json).map_err(|e| load_error(w, &e))?;
        rt.execute_script(
            "ext:cinder/prepare.js",
            format!("globalThis[Symbol.for(\"cinder.prepare\")]({spec});"),
        )
        .map_err(|e| load_error(w, &e))?;
        let id = rt
            .load_main_es_module(&w.main_url)
            .await
            .map_err(|e| load_error(w, &e))?;
        let eval = rt.mod_evaluate(id);
        rt.with_event_loop_future(Box::pin(eval), PollEventLoopOptions::default())
            .await
            .map_err(|e| load_error(w, &e))?;
        // A top-level throw rejects the evaluation promise, which deno_core reports through
        // the event loop rather than through `mod_evaluate`: poll once to collect it.
        poll_fn(
            |cx| match rt.poll_event_loop(cx, PollEventLoopOptions::default()) {
                Poll::Ready(Err(e)) => Poll::Ready(Err(load_error(w, &e))),
                _ => Poll::Ready(Ok(())),
            },
        )
        .await?;
        let namespace = rt.get_module_namespace(id).map_err(|e| load_error(w, &e))?;
        start_worker(rt, w, namespace).map_err(|message| LoadError::File {
            file: w.main.clone(),
            message,
        })
    }

    /// Runs a stateless event's handler synchronously until its first real await; it stays
    /// in flight until JS answers it.
    pub fn enter_event(&self, event: Event) {
        let id = crate::ops::admit(&self.state, event);
        if let Err(e) = self.call_entry(ENTRY_STATELESS_EVENT, id) {
            tracing::debug!(worker = %self.state.worker.spec.name, "event not run: {e}");
        }
    }

    /// Dispatches a WebSocket event to the JS socket accepted in this isolate (for an object's
    /// plain socket, the JS side waits for the object's input gate).
    pub fn enter_ws_event(&self, socket: u64, object: u32, event: crate::websocket::Incoming) {
        let eid = self.state.next_id();
        self.state
            .pending_ws
            .borrow_mut()
            .insert(eid, crate::ops_ws::js_ws_event(socket, object, event));
        if let Err(e) = self.call_entry(ENTRY_WS_EVENT, eid) {
            tracing::debug!(worker = %self.state.worker.spec.name, "WebSocket event not run: {e}");
        }
        self.state.pending_ws.borrow_mut().remove(&eid);
    }

    /// The event loop has nothing left to run: no op, timer or promise job is pending, so no
    /// unanswered event can ever be answered. Each gets workerd's "will never generate a
    /// response"; events that answered but whose `waitUntil` work is stuck simply end.
    fn settle_stuck_events(&self) {
        let stuck: Vec<_> = self.state.inflight.borrow_mut().drain().collect();
        for (_, f) in stuck {
            let status = match &f.reply {
                Reply::Fetch(Some(_)) => Some(500),
                _ => None,
            };
            self.state
                .worker
                .stats
                .event_finished(&self.state.worker.spec.name, &f, status);
            let answered = match f.reply {
                Reply::Fetch(Some(s)) => {
                    let _ = s.send(crate::event::error_response(500, NEVER_RESPONDS));
                    false
                }
                Reply::Scheduled(Some(s)) => {
                    let _ = s.send(Err(crate::HostError::Exception {
                        worker: self.state.worker.spec.name.clone(),
                        message: NEVER_RESPONDS.into(),
                    }));
                    false
                }
                Reply::Object(Some(s)) => {
                    let _ = s.send(Err(ActorError::new(NEVER_RESPONDS)));
                    false
                }
                _ => true,
            };
            if !answered {
                tracing::error!(
                    worker = %self.state.worker.spec.name,
                    request_id = %f.request_id,
                    "{NEVER_RESPONDS} (its promise can no longer settle: nothing it waits on is pending)"
                );
            }
        }
    }

    /// Drives the isolate's event loop until the host closes it and nothing is in flight
    /// (`Ok`), or until the isolate must be dropped.
    pub async fn run(self: &Rc<Self>) -> Result<(), Stop> {
        poll_fn(|cx| {
            {
                let mut waker = self.state.waker.borrow_mut();
                if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *waker = Some(cx.waker().clone());
                }
            }
            if let Some(stop) = self.state.stop.0.get() {
                return Poll::Ready(Err(stop));
            }
            let Ok(mut rt) = self.rt.try_borrow_mut() else {
                // Only a synchronous call into JS borrows it, and that ends before this task
                // can run again; try on the next wake-up.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            };
            let budget = self.state.cpu_remaining(self.cpu_limit);
            let t0 = cpu::thread_cpu_now();
            self.state.begin_slice(t0);
            self.slot.arm(rt.handle.clone(), budget);
            let isolate = isolate_ptr(&mut rt.rt);
            // SAFETY: see `Entered`; paired with the exit below, same thread, same poll.
            unsafe { (*isolate).enter() };
            let r = rt.rt.poll_event_loop(cx, PollEventLoopOptions::default());
            // SAFETY: this isolate is the current one again after the poll.
            unsafe { (*isolate).exit() };
            let fired = self.slot.disarm();
            let heap_hit = rt.heap_hit.load(Ordering::SeqCst);
            drop(rt);
            let touched = std::mem::take(&mut *self.state.touched.borrow_mut());
            let dt = self
                .state
                .end_slice(cpu::thread_cpu_now().saturating_sub(t0));
            self.state.charge(dt, &touched, fired);
            self.state.release_deferred_locks();
            if heap_hit {
                return Poll::Ready(Err(Stop::MemoryLimit));
            }
            if fired {
                return Poll::Ready(Err(Stop::CpuLimit));
            }
            match r {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(())) => {
                    if !self.state.inflight.borrow().is_empty()
                        && self.state.open_sockets.get() == 0
                    {
                        self.settle_stuck_events();
                    }
                    if self.state.closing.get() {
                        Poll::Ready(Ok(()))
                    } else {
                        // Idle until a synchronous call into JS (the next event) wakes us.
                        Poll::Pending
                    }
                }
                Poll::Ready(Err(e)) => {
                    tracing::error!(
                        worker = %self.state.worker.spec.name,
                        "isolate event loop failed: {e}"
                    );
                    Poll::Ready(Err(Stop::Crashed))
                }
            }
        })
        .await
    }

    /// Hands a Durable Object event to JS and runs its handler synchronously (with its
    /// microtasks) until its first real await. With `reply`, the event is in flight until JS
    /// answers it; a constructor's failure is returned directly.
    pub fn enter_object(
        &self,
        event: DoEvent,
        reply: Option<ObjectReplyTx>,
    ) -> Result<(), ActorError> {
        let st = &self.state;
        if st.stop.0.get().is_some() {
            return Err(ActorError::new(
                "Durable Object reset because its isolate was stopped.",
            ));
        }
        let eid = st.next_id();
        if let Some(tx) = reply {
            let request_id = match &event {
                DoEvent::Call {
                    call: DoCall::Fetch { request_id, .. } | DoCall::Rpc { request_id, .. },
                    ..
                } => request_id.clone(),
                _ => String::new(),
            };
            st.inflight
                .borrow_mut()
                .insert(eid, InFlight::new(request_id, Reply::Object(Some(tx))));
        }
        st.pending_events.borrow_mut().insert(eid, event);
        let result = self.call_entry(ENTRY_OBJECT_EVENT, eid);
        st.pending_events.borrow_mut().remove(&eid);
        match result {
            Ok(None) => Ok(()),
            Ok(Some((name, message))) => Err(ActorError::with_name(name, message)),
            Err(e) => {
                st.inflight.borrow_mut().remove(&eid);
                Err(e)
            }
        }
    }

    /// Calls the bootstrap's entry synchronously, then runs the microtask queue, under the CPU
    /// watchdog. A limit reached here stops the isolate (its driver notices `state.stop`).
    fn call_entry(&self, kind: i32, id: u32) -> Result<Option<(String, String)>, ActorError> {
        let mut rt = self
            .rt
            .try_borrow_mut()
            .map_err(|_| ActorError::new("internal error: re-entrant call into an isolate"))?;
        let budget = self.state.cpu_remaining(self.cpu_limit);
        let t0 = cpu::thread_cpu_now();
        self.state.begin_slice(t0);
        self.slot.arm(rt.handle.clone(), budget);
        let isolate = isolate_ptr(&mut rt.rt);
        // SAFETY: as in `run`: enter and exit are paired within this synchronous call.
        unsafe { (*isolate).enter() };
        let out = {
            let js = &mut rt.rt;
            deno_core::scope!(scope, js);
            v8::tc_scope!(let tc, scope);
            let f = v8::Local::new(tc, &self.entry);
            let recv: v8::Local<v8::Value> = v8::undefined(tc).into();
            let args: [v8::Local<v8::Value>; 2] = [
                v8::Integer::new(tc, kind).into(),
                v8::Integer::new_from_unsigned(tc, id).into(),
            ];
            let r = f.call(tc, recv, &args);
            if !tc.is_execution_terminating() {
                tc.perform_microtask_checkpoint();
            }
            match r {
                Some(v) if v.is_array() => {
                    deno_core::serde_v8::from_v8::<(String, String)>(tc, v).ok()
                }
                Some(_) => None,
                None => {
                    let text = tc
                        .exception()
                        .map(|e| e.to_rust_string_lossy(tc))
                        .unwrap_or_else(|| "the isolate was terminated".into());
                    Some(("Error".to_string(), text))
                }
            }
        };
        // SAFETY: this isolate is the current one again.
        unsafe { (*isolate).exit() };
        let fired = self.slot.disarm();
        let heap_hit = rt.heap_hit.load(Ordering::SeqCst);
        drop(rt);
        let mut touched = std::mem::take(&mut *self.state.touched.borrow_mut());
        touched.push(id);
        let dt = self
            .state
            .end_slice(cpu::thread_cpu_now().saturating_sub(t0));
        self.state.charge(dt, &touched, fired);
        self.state.release_deferred_locks();
        self.state.wake_driver();
        if heap_hit || fired {
            let stop = if heap_hit {
                Stop::MemoryLimit
            } else {
                Stop::CpuLimit
            };
            self.state.stop.0.set(Some(stop));
            return Err(ActorError::new(match stop {
                Stop::MemoryLimit => "Durable Object exceeded its memory limit and was reset.",
                _ => "Durable Object exceeded its CPU time limit and was reset.",
            }));
        }
        Ok(out)
    }
}

/// Calls the bootstrap's per-worker `start` with the worker's module namespace and bindings;
/// it returns the entry for Durable Object events.
fn start_worker(
    rt: &mut JsRuntime,
    w: &WorkerShared,
    namespace: v8::Global<v8::Object>,
) -> Result<v8::Global<v8::Function>, String> {
    deno_core::scope!(scope, rt);
    v8::tc_scope!(let tc, scope);
    let global = tc.get_current_context().global(tc);
    let key = v8::String::new(tc, "cinder.start").ok_or("out of memory")?;
    let sym = v8::Symbol::for_key(tc, key);
    let start = global
        .get(tc, sym.into())
        .and_then(|f| v8::Local::<v8::Function>::try_from(f).ok())
        .ok_or("the bootstrap has no start function")?;
    let url = v8::String::new(tc, w.main_url.as_str()).ok_or("out of memory")?;
    let env = v8::String::new(tc, &w.env_json).ok_or("out of memory")?;
    let ns = v8::Local::new(tc, namespace);
    let recv: v8::Local<v8::Value> = v8::undefined(tc).into();
    let r = start.call(tc, recv, &[url.into(), env.into(), ns.into()]);
    tc.perform_microtask_checkpoint();
    match r.and_then(|v| v8::Local::<v8::Function>::try_from(v).ok()) {
        Some(entry) => Ok(v8::Global::new(tc, entry)),
        None => Err(tc
            .exception()
            .map(|e| e.to_rust_string_lossy(tc))
            .unwrap_or_else(|| "the worker could not be started".into())),
    }
}

/// How long after a spare was used a new one is made: the restore blocks the thread for
/// milliseconds, so it must not sit in front of the first event of the isolate that took it.
const REFILL_DELAY: std::time::Duration = std::time::Duration::from_millis(20);

/// Makes a new spare runtime a little later.
pub(crate) fn refill(spare: &Spare, heap_limit: usize) {
    let spare = spare.clone();
    tokio::task::spawn_local(async move {
        tokio::time::sleep(REFILL_DELAY).await;
        fill(&spare, heap_limit);
    });
}

/// Fills the spare slot now if it is empty.
pub(crate) fn fill(spare: &Spare, heap_limit: usize) {
    if spare.borrow().is_some() {
        return;
    }
    match Runtime::blank(heap_limit) {
        Ok(r) => *spare.borrow_mut() = Some(r),
        Err(e) => tracing::warn!("could not pre-create an isolate: {e}"),
    }
}
