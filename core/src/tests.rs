//! Runtime tests through real fjall stores on temporary directories. Synchronisation is by
//! channels and barriers; time bounds appear only as deadlines that turn a hang into a failure.
//!
//! A recurring tool is the *executor barrier*: with one executor thread, a request to another
//! object is answered only after the executor has finished whatever it was polling when the
//! request arrived, so "X answered" proves "the object under test had its chance to act".

use std::cell::Cell;
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cinder_storage::{Fault, Store, StoreConfig};
use futures::future::LocalBoxFuture;
use tokio::sync::{mpsc, oneshot};

use crate::*;

pub(crate) mod explore;
mod holes;

const DEADLINE: Duration = Duration::from_secs(20);

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLINE, f).await {
        Ok(v) => v,
        Err(_) => panic!("deadline passed waiting for {what}"),
    }
}

/// What a scripted object sees: its context and one piece of in-memory state.
struct Obj {
    ctx: ActorContext,
    mem: Cell<u64>,
}

type FetchFn = Arc<
    dyn Fn(Rc<Obj>, String) -> LocalBoxFuture<'static, Result<String, ActorError>> + Send + Sync,
>;
type AlarmFn = Arc<
    dyn Fn(Rc<Obj>, AlarmInfo) -> LocalBoxFuture<'static, Result<(), ActorError>> + Send + Sync,
>;

#[derive(Clone)]
struct Script {
    fetch: FetchFn,
    alarm: Option<AlarmFn>,
    constructed: Arc<AtomicUsize>,
    evicted: Option<mpsc::UnboundedSender<String>>,
    /// Runs in the constructor with the construction number (1, 2...).
    construct: Option<ConstructFn>,
}

type ConstructFn = Arc<dyn Fn(&ActorContext, usize) + Send + Sync>;

impl Script {
    fn new(
        f: impl Fn(Rc<Obj>, String) -> LocalBoxFuture<'static, Result<String, ActorError>>
            + Send
            + Sync
            + 'static,
    ) -> Script {
        Script {
            fetch: Arc::new(f),
            alarm: None,
            constructed: Arc::new(AtomicUsize::new(0)),
            evicted: None,
            construct: None,
        }
    }

    fn with_alarm(
        mut self,
        f: impl Fn(Rc<Obj>, AlarmInfo) -> LocalBoxFuture<'static, Result<(), ActorError>>
            + Send
            + Sync
            + 'static,
    ) -> Script {
        self.alarm = Some(Arc::new(f));
        self
    }
}

struct Scripted {
    obj: Rc<Obj>,
    script: Script,
}

impl Actor for Scripted {
    fn fetch(&self, req: Request) -> LocalBoxFuture<'_, Result<Response, ActorError>> {
        let path = req.uri().path().to_string();
        let fut = (self.script.fetch)(self.obj.clone(), path);
        Box::pin(async move { Ok(http::Response::new(Bytes::from(fut.await?))) })
    }

    fn alarm(&self, info: AlarmInfo) -> LocalBoxFuture<'_, Result<(), ActorError>> {
        match &self.script.alarm {
            Some(f) => f(self.obj.clone(), info),
            None => Box::pin(async { Ok(()) }),
        }
    }

    fn on_evict(&self) {
        if let Some(tx) = &self.script.evicted {
            let _ = tx.send(self.obj.ctx.id().name().unwrap_or("?").to_string());
        }
    }
}

fn spec(name: &str, script: Script) -> NamespaceSpec {
    NamespaceSpec {
        name: name.into(),
        ids: IdFactory::from_unique_key(name),
        factory: Arc::new(
            move |ctx: ActorContext| -> Result<Box<dyn Actor>, ActorError> {
                let n = script.constructed.fetch_add(1, Ordering::SeqCst) + 1;
                if let Some(f) = &script.construct {
                    f(&ctx, n);
                }
                Ok(Box::new(Scripted {
                    obj: Rc::new(Obj {
                        ctx,
                        mem: Cell::new(0),
                    }),
                    script: script.clone(),
                }))
            },
        ),
    }
}

fn test_config() -> RuntimeConfig {
    RuntimeConfig {
        threads: 1,
        // Long enough never to evict during a test unless the test asks for it.
        idle_timeout_min: Duration::from_secs(600),
        idle_timeout_max: Duration::from_secs(600),
        ..RuntimeConfig::default()
    }
}

fn open(dir: &std::path::Path) -> Arc<Store> {
    Store::open(dir, StoreConfig::default()).unwrap()
}

fn req(path: &str) -> Request {
    http::Request::builder()
        .uri(path)
        .body(Bytes::new())
        .unwrap()
}

async fn text(stub: &Stub, path: &str) -> Result<String, ObjectError> {
    let r = stub.fetch(req(path)).await?;
    Ok(String::from_utf8(r.into_body().to_vec()).unwrap())
}

/// A namespace whose objects answer "pong": the executor barrier.
fn barrier_spec() -> NamespaceSpec {
    spec(
        "barrier",
        Script::new(|_, _| Box::pin(async { Ok("pong".to_string()) })),
    )
}

async fn barrier(rt: &Runtime) {
    let stub = rt.namespace("barrier").unwrap().get_by_name("b");
    assert_eq!(within("barrier", text(&stub, "/")).await.unwrap(), "pong");
}

type Log = Arc<Mutex<Vec<String>>>;

fn log(l: &Log, s: &str) {
    l.lock().unwrap().push(s.to_string());
}

fn take<T>(slot: &Arc<Mutex<Option<T>>>) -> T {
    slot.lock().unwrap().take().expect("taken twice")
}

#[tokio::test]
async fn a_second_event_waits_while_a_storage_call_is_pending() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let events: Log = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (e, s) = (events.clone(), stop.clone());
    let script = Script::new(move |obj, path| {
        let (e, s) = (e.clone(), s.clone());
        Box::pin(async move {
            match path.as_str() {
                "/reader" => {
                    log(&e, "reader:start");
                    // Back-to-back reads: the gate is never open between them, so the queued
                    // event can only start once the loop ends.
                    let mut reads = 0u64;
                    while !s.load(Ordering::SeqCst) {
                        obj.ctx.storage().get("k").await?;
                        reads += 1;
                    }
                    log(&e, "reader:done");
                    Ok(reads.to_string())
                }
                _ => {
                    log(&e, "other:start");
                    Ok("other".into())
                }
            }
        })
    });
    let rt = Runtime::start(
        store,
        test_config(),
        vec![spec("ns", script), barrier_spec()],
    )
    .unwrap();
    let stub = rt.namespace("ns").unwrap().get_by_name("x");
    let reader = tokio::spawn({
        let stub = stub.clone();
        async move { text(&stub, "/reader").await }
    });
    while !events.lock().unwrap().contains(&"reader:start".to_string()) {
        barrier(&rt).await;
    }
    let other = tokio::spawn({
        let stub = stub.clone();
        async move { text(&stub, "/other").await }
    });
    // Give the executor every chance to deliver "/other" while reads are outstanding: it has
    // seen the event once a later request on the same thread is answered.
    for _ in 0..3 {
        barrier(&rt).await;
    }
    stop.store(true, Ordering::SeqCst);
    let reads: u64 = within("reader", reader)
        .await
        .unwrap()
        .unwrap()
        .parse()
        .unwrap();
    assert!(reads > 0);
    assert_eq!(within("other", other).await.unwrap().unwrap(), "other");
    assert_eq!(
        *events.lock().unwrap(),
        ["reader:start", "reader:done", "other:start"]
    );
}

#[tokio::test]
async fn events_are_delivered_while_the_object_awaits_outbound_io() {
    let dir = tempfile::tempdir().unwrap();
    let (io_tx, io_rx) = oneshot::channel::<&'static str>();
    let io_rx = Arc::new(Mutex::new(Some(io_rx)));
    let (started_tx, mut started_rx) = mpsc::unbounded_channel::<()>();
    let script = Script::new(move |obj, path| {
        let (io_rx, started_tx) = (io_rx.clone(), started_tx.clone());
        Box::pin(async move {
            if path == "/slow" {
                let rx = take(&io_rx);
                let _ = started_tx.send(());
                let v = obj.ctx.outbound(rx).await?.unwrap_or("dropped");
                Ok(v.to_string())
            } else {
                Ok("fast".into())
            }
        })
    });
    let rt = Runtime::start(open(dir.path()), test_config(), vec![spec("ns", script)]).unwrap();
    let stub = rt.namespace("ns").unwrap().get_by_name("x");
    let slow = tokio::spawn({
        let stub = stub.clone();
        async move { text(&stub, "/slow").await }
    });
    within("slow to start", started_rx.recv()).await.unwrap();
    // The slow event is parked on its I/O; another event still gets in and answers.
    assert_eq!(within("fast", text(&stub, "/fast")).await.unwrap(), "fast");
    assert!(!slow.is_finished());
    io_tx.send("io done").unwrap();
    assert_eq!(within("slow", slow).await.unwrap().unwrap(), "io done");
}

#[tokio::test]
async fn outbound_io_completion_waits_while_the_input_gate_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let events: Log = Arc::default();
    let (io_tx, io_rx) = oneshot::channel::<()>();
    let io_rx = Arc::new(Mutex::new(Some(io_rx)));
    let (end_tx, end_rx) = oneshot::channel::<()>();
    let end_rx = Arc::new(Mutex::new(Some(end_rx)));
    let (sig_tx, mut sig_rx) = mpsc::unbounded_channel::<&'static str>();
    let e = events.clone();
    let script = Script::new(move |obj, path| {
        let (e, io_rx, end_rx, sig_tx) = (e.clone(), io_rx.clone(), end_rx.clone(), sig_tx.clone());
        Box::pin(async move {
            match path.as_str() {
                "/io" => {
                    let rx = take(&io_rx);
                    let _ = sig_tx.send("io waiting");
                    obj.ctx.outbound(rx).await?.ok();
                    log(&e, "io:resumed");
                    Ok("io".into())
                }
                _ => {
                    let rx = take(&end_rx);
                    let (e2, sig) = (e.clone(), sig_tx.clone());
                    obj.ctx
                        .block_concurrency_while(async move {
                            let _ = sig.send("cs running");
                            rx.await.ok();
                            // Many scheduler rounds in which the finished I/O could resume
                            // the other event if the gate let it.
                            for _ in 0..200 {
                                tokio::task::yield_now().await;
                            }
                            log(&e2, "cs:end");
                            Ok(())
                        })
                        .await?;
                    Ok("cs".into())
                }
            }
        })
    });
    let rt = Runtime::start(open(dir.path()), test_config(), vec![spec("ns", script)]).unwrap();
    let stub = rt.namespace("ns").unwrap().get_by_name("x");
    let io = tokio::spawn({
        let stub = stub.clone();
        async move { text(&stub, "/io").await }
    });
    assert_eq!(within("io", sig_rx.recv()).await, Some("io waiting"));
    let cs = tokio::spawn({
        let stub = stub.clone();
        async move { text(&stub, "/cs").await }
    });
    assert_eq!(within("cs", sig_rx.recv()).await, Some("cs running"));
    io_tx.send(()).unwrap();
    end_tx.send(()).unwrap();
    assert_eq!(within("cs reply", cs).await.unwrap().unwrap(), "cs");
    assert_eq!(within("io reply", io).await.unwrap().unwrap(), "io");
    assert_eq!(*events.lock().unwrap(), ["cs:end", "io:resumed"]);
}

#[tokio::test]
async fn a_response_never_leaves_before_its_write_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<()>();
    let script = Script::new(move |obj, path| {
        let done_tx = done_tx.clone();
        Box::pin(async move {
            if path == "/write" {
                obj.ctx.storage().put("k", Bytes::from_static(b"v"))?;
                let _ = done_tx.send(());
                Ok("written".into())
            } else {
                let v = obj.ctx.storage().get("k").await?;
                Ok(format!("{:?}", v.as_deref()))
            }
        })
    });
    let rt = Runtime::start(
        store.clone(),
        test_config(),
        vec![spec("ns", script), barrier_spec()],
    )
    .unwrap();
    let stub = rt.namespace("ns").unwrap().get_by_name("x");
    let hold = store.hold_durability();
    let mut write = Box::pin(stub.fetch(req("/write")));
    assert!(futures::poll!(write.as_mut()).is_pending());
    within("handler", done_rx.recv()).await.unwrap();
    // The handler has returned and the executor has moved on past it...
    barrier(&rt).await;
    barrier(&rt).await;
    // ...but the reply is still held: the write is not durable.
    assert!(futures::poll!(write.as_mut()).is_pending());
    drop(hold);
    let resp = within("write reply", write).await.unwrap();
    assert_eq!(resp.into_body(), "written");
    assert_eq!(text(&stub, "/read").await.unwrap(), "Some([118])");
}

#[tokio::test]
async fn writes_without_an_await_between_them_are_one_batch() {
    let dir = tempfile::tempdir().unwrap();
    let script = Script::new(|obj, _| {
        Box::pin(async move {
            let s = obj.ctx.storage();
            s.put("a", Bytes::from_static(b"1"))?;
            s.put("b", Bytes::from_static(b"2"))?;
            s.delete("c")?;
            s.sync().await?;
            let first = s.flush_count();
            s.put("d", Bytes::from_static(b"3"))?;
            s.sync().await?;
            let keys = ["a".to_string(), "b".into(), "d".into()];
            let got = s.get_many(&keys, ReadOptions::default()).await?;
            Ok(format!("{first} {} {}", s.flush_count(), got.len()))
        })
    });
    let rt = Runtime::start(open(dir.path()), test_config(), vec![spec("ns", script)]).unwrap();
    let stub = rt.namespace("ns").unwrap().get_by_name("x");
    assert_eq!(within("reply", text(&stub, "/")).await.unwrap(), "1 2 3");
}

#[tokio::test]
async fn allow_unconfirmed_writes_do_not_hold_output() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let script = Script::new(|obj, path| {
        Box::pin(async move {
            let s = obj.ctx.storage();
            let opts = WriteOptions {
                allow_unconfirmed: true,
            };
            s.put_with("k", Bytes::from_static(b"v"), opts)?;
            if path == "/sync" {
                s.sync().await?;
            }
            Ok("ok".into())
        })
    });
    let rt = Runtime::start(
        store.clone(),
        test_config(),
        vec![spec("ns", script), barrier_spec()],
    )
    .unwrap();
    let stub = rt.namespace("ns").unwrap().get_by_name("x");
    let hold = store.hold_durability();
    // Answered although nothing can become durable while the hold lives.
    assert_eq!(within("unconfirmed", text(&stub, "/")).await.unwrap(), "ok");
    // sync() still waits for it.
    let mut synced = Box::pin(text(&stub, "/sync"));
    assert!(futures::poll!(synced.as_mut()).is_pending());
    barrier(&rt).await;
    barrier(&rt).await;
    assert!(futures::poll!(synced.as_mut()).is_pending());
    drop(hold);
    assert_eq!(within("sync", synced).await.unwrap(), "ok");
}

/// A real write failure (the store's fault injector fails the commit or the fdatasync after
/// the batch is visible in fjall): the held reply is dropped, the object resets, and no later
/// instance answers from the failed write (the store fails closed until it is reopened).
#[tokio::test]
async fn a_failed_write_drops_held_output_and_resets_the_object() {
    for fault in [Fault::CommitFails, Fault::SyncFails] {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let script = Script::new(|obj, path| {
            Box::pin(async move {
                let s = obj.ctx.storage();
                obj.mem.set(obj.mem.get() + 1);
                match path.as_str() {
                    "/good" => s.put("k", Bytes::from_static(b"good"))?,
                    "/bad" => s.put("k", Bytes::from_static(b"bad"))?,
                    _ => {}
                }
                let v = s.get("k").await?.unwrap_or_default();
                Ok(format!(
                    "{} mem={}",
                    String::from_utf8_lossy(&v),
                    obj.mem.get()
                ))
            })
        });
        let constructed = script.constructed.clone();
        let rt = Runtime::start(store.clone(), test_config(), vec![spec("ns", script)]).unwrap();
        let stub = rt.namespace("ns").unwrap().get_by_name("x");
        assert_eq!(text(&stub, "/good").await.unwrap(), "good mem=1");
        store.inject_fault(fault);
        let err = within("bad", text(&stub, "/bad")).await.unwrap_err();
        assert!(matches!(err, ObjectError::Reset(_)), "{fault:?}: {err:?}");
        assert!(err.is_retryable() && !err.is_remote());
        assert!(err.to_string().contains("storage write failed"), "{err}");
        assert!(err.to_string().contains("injected"), "{err}");
        // A new instance (constructor again, memory gone) cannot read: the failed write is
        // visible in fjall, so the store answers nothing until it is reopened.
        let err = within("read", text(&stub, "/read")).await.unwrap_err();
        assert!(
            err.is_remote() && err.to_string().contains("durability failure"),
            "{fault:?}: {err:?}"
        );
        assert!(!err.to_string().contains("bad"));
        assert_eq!(constructed.load(Ordering::SeqCst), 2);
        drop(stub);
        shutdown(rt).await;
    }
}

#[tokio::test]
async fn block_concurrency_while_failure_and_timeout_reset_the_object() {
    let dir = tempfile::tempdir().unwrap();
    let script = Script::new(|obj, path| {
        Box::pin(async move {
            obj.mem.set(obj.mem.get() + 1);
            match path.as_str() {
                "/put" => obj.ctx.storage().put("k", Bytes::from_static(b"kept"))?,
                "/throw" => {
                    obj.ctx
                        .block_concurrency_while(async { Err::<(), _>(ActorError::new("boom")) })
                        .await?
                }
                "/hang" => {
                    obj.ctx
                        .block_concurrency_while(std::future::pending::<Result<(), ActorError>>())
                        .await?
                }
                _ => {}
            }
            let v = obj.ctx.storage().get("k").await?.unwrap_or_default();
            Ok(format!(
                "{} mem={}",
                String::from_utf8_lossy(&v),
                obj.mem.get()
            ))
        })
    });
    let constructed = script.constructed.clone();
    let cfg = RuntimeConfig {
        block_concurrency_timeout: Duration::from_millis(100),
        ..test_config()
    };
    let rt = Runtime::start(open(dir.path()), cfg, vec![spec("ns", script)]).unwrap();
    let stub = rt.namespace("ns").unwrap().get_by_name("x");
    assert_eq!(text(&stub, "/put").await.unwrap(), "kept mem=1");
    let err = within("throw", text(&stub, "/throw")).await.unwrap_err();
    assert!(err.to_string().contains("boom"), "{err}");
    assert_eq!(text(&stub, "/").await.unwrap(), "kept mem=1");
    assert_eq!(constructed.load(Ordering::SeqCst), 2);

    let err = within("hang", text(&stub, "/hang")).await.unwrap_err();
    assert_eq!(
        err,
        ObjectError::Reset(BLOCK_CONCURRENCY_TIMEOUT_MESSAGE.into())
    );
    assert_eq!(text(&stub, "/").await.unwrap(), "kept mem=1");
    assert_eq!(constructed.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_full_queue_answers_overloaded_and_errors_are_remote() {
    let dir = tempfile::tempdir().unwrap();
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let release_rx = Arc::new(Mutex::new(Some(release_rx)));
    let (in_cs_tx, mut in_cs_rx) = mpsc::unbounded_channel::<()>();
    let script = Script::new(move |obj, path| {
        let (release_rx, in_cs_tx) = (release_rx.clone(), in_cs_tx.clone());
        Box::pin(async move {
            match path.as_str() {
                "/block" => {
                    let rx = take(&release_rx);
                    obj.ctx
                        .block_concurrency_while(async move {
                            let _ = in_cs_tx.send(());
                            rx.await.ok();
                            Ok(())
                        })
                        .await?;
                    Ok("unblocked".into())
                }
                "/throw" => Err(ActorError::with_name("TypeError", "bad input")),
                p => Ok(p.to_string()),
            }
        })
    });
    let cfg = RuntimeConfig {
        max_queued_events: 2,
        ..test_config()
    };
    let rt = Runtime::start(open(dir.path()), cfg, vec![spec("ns", script)]).unwrap();
    let stub = rt.namespace("ns").unwrap().get_by_name("x");
    let blocker = tokio::spawn({
        let stub = stub.clone();
        async move { text(&stub, "/block").await }
    });
    within("critical section", in_cs_rx.recv()).await.unwrap();
    // The gate is closed: two events fit in the queue, the third is refused at once.
    let (a, b, c) = tokio::join!(text(&stub, "/a"), text(&stub, "/b"), async {
        let r = text(&stub, "/c").await;
        // The node-wide gauge sees the two queued events (the refused one never queued).
        assert_eq!(rt.queued_events(), 2);
        // Only now let the queue drain, so /a and /b were surely queued before /c.
        release_tx.send(()).unwrap();
        r
    });
    let err = c.unwrap_err();
    assert!(err.is_overloaded());
    assert_eq!(
        err.to_string(),
        "Durable Object is overloaded. Too many requests queued."
    );
    assert_eq!(a.unwrap(), "/a");
    assert_eq!(b.unwrap(), "/b");
    assert_eq!(
        within("blocker", blocker).await.unwrap().unwrap(),
        "unblocked"
    );
    assert_eq!(rt.queued_events(), 0);

    let err = text(&stub, "/throw").await.unwrap_err();
    assert!(err.is_remote() && !err.is_overloaded());
    assert_eq!(err.to_string(), "TypeError: bad input");
}

#[tokio::test]
async fn alarms_survive_a_restart_and_wake_the_object() {
    let dir = tempfile::tempdir().unwrap();
    let at = now_ms() + 50;
    // First life: the alarm is set durably; its first run never finishes before shutdown.
    {
        let store = open(dir.path());
        let (ran_tx, mut ran_rx) = mpsc::unbounded_channel::<()>();
        let script = Script::new(move |obj, _| {
            Box::pin(async move {
                obj.ctx.storage().set_alarm(at)?;
                Ok("set".into())
            })
        })
        .with_alarm(move |_, _| {
            let _ = ran_tx.send(());
            Box::pin(std::future::pending())
        });
        let rt = Runtime::start(store.clone(), test_config(), vec![spec("ns", script)]).unwrap();
        let stub = rt.namespace("ns").unwrap().get_by_name("sleeper");
        assert_eq!(text(&stub, "/").await.unwrap(), "set");
        assert_eq!(store.alarms().unwrap(), vec![(*stub.id().bytes(), at)]);
        within("first run", ran_rx.recv()).await.unwrap();
        drop(stub);
        shutdown(rt).await;
    }
    // Second life: nothing touches the object; the alarm alone re-creates it.
    let store = open(dir.path());
    let (info_tx, mut info_rx) = mpsc::unbounded_channel::<(AlarmInfo, Option<i64>)>();
    let script =
        Script::new(|_, _| Box::pin(async { Ok(String::new()) })).with_alarm(move |obj, info| {
            let info_tx = info_tx.clone();
            Box::pin(async move {
                let inside = obj.ctx.storage().get_alarm().await?;
                let _ = info_tx.send((info, inside));
                Ok(())
            })
        });
    let constructed = script.constructed.clone();
    let rt = Runtime::start(store.clone(), test_config(), vec![spec("ns", script)]).unwrap();
    let (info, inside) = within("alarm after restart", info_rx.recv()).await.unwrap();
    assert_eq!(
        info,
        AlarmInfo {
            scheduled_time: at,
            retry_count: 0,
            is_retry: false
        }
    );
    assert_eq!(inside, None, "getAlarm() is null inside alarm()");
    assert_eq!(constructed.load(Ordering::SeqCst), 1);
    // After success the slot is cleared durably.
    within("alarm cleared", async {
        while !store.alarms().unwrap().is_empty() {
            barrier_via(&rt).await;
        }
    })
    .await;
    shutdown(rt).await;
}

/// An executor round trip on a runtime without the barrier namespace: asks the alarm test's
/// own object something harmless.
async fn barrier_via(rt: &Runtime) {
    let stub = rt.namespace("ns").unwrap().get_by_name("probe");
    within("probe", text(&stub, "/")).await.unwrap();
}

#[tokio::test]
async fn failing_alarms_are_retried_with_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let base = Duration::from_millis(40);
    let (run_tx, mut run_rx) = mpsc::unbounded_channel::<(AlarmInfo, i64)>();
    let script = Script::new(|obj, path| {
        Box::pin(async move {
            if path == "/set" {
                obj.ctx.storage().set_alarm(now_ms())?;
            }
            Ok(format!("{:?}", obj.ctx.storage().get_alarm().await?))
        })
    })
    .with_alarm(move |_, info| {
        let _ = run_tx.send((info, now_ms()));
        Box::pin(async move {
            if info.retry_count < 3 {
                Err(ActorError::new("not yet"))
            } else {
                Ok(())
            }
        })
    });
    let cfg = RuntimeConfig {
        alarm_retry_base: base,
        ..test_config()
    };
    let rt = Runtime::start(store.clone(), cfg, vec![spec("ns", script)]).unwrap();
    let stub = rt.namespace("ns").unwrap().get_by_name("x");
    text(&stub, "/set").await.unwrap();
    let mut runs = Vec::new();
    for _ in 0..4 {
        runs.push(within("alarm run", run_rx.recv()).await.unwrap());
    }
    for (n, (info, _)) in runs.iter().enumerate() {
        assert_eq!(info.retry_count, n as u32);
        assert_eq!(info.is_retry, n > 0);
        assert_eq!(info.scheduled_time, runs[0].0.scheduled_time);
    }
    for n in 0..3 {
        let gap = runs[n + 1].1 - runs[n].1;
        let expected = (base.as_millis() as i64) << n;
        assert!(
            gap >= expected,
            "retry {n} came after {gap} ms, before {expected} ms"
        );
    }
    within("alarm cleared", async {
        while text(&stub, "/").await.unwrap() != "None" {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(store.alarms().unwrap().is_empty());
}

#[tokio::test]
async fn a_handler_that_keeps_failing_gives_up_after_six_retries() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (run_tx, mut run_rx) = mpsc::unbounded_channel::<u32>();
    let script = Script::new(|obj, _| {
        Box::pin(async move {
            obj.ctx.storage().set_alarm(1)?;
            Ok(String::new())
        })
    })
    .with_alarm(move |_, info| {
        let _ = run_tx.send(info.retry_count);
        Box::pin(async { Err(ActorError::new("always")) })
    });
    let cfg = RuntimeConfig {
        alarm_retry_base: Duration::from_millis(1),
        ..test_config()
    };
    let rt = Runtime::start(store.clone(), cfg, vec![spec("ns", script)]).unwrap();
    text(&rt.namespace("ns").unwrap().get_by_name("x"), "/")
        .await
        .unwrap();
    let mut counts = Vec::new();
    for _ in 0..7 {
        counts.push(within("alarm run", run_rx.recv()).await.unwrap());
    }
    assert_eq!(counts, [0, 1, 2, 3, 4, 5, 6]);
    within("alarm dropped", async {
        while !store.alarms().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(run_rx.try_recv().is_err(), "no seventh retry");
}

#[tokio::test]
async fn an_evicted_object_comes_back_with_its_storage() {
    let dir = tempfile::tempdir().unwrap();
    let (evicted_tx, mut evicted_rx) = mpsc::unbounded_channel::<String>();
    let mut script = Script::new(|obj, _| {
        Box::pin(async move {
            obj.mem.set(obj.mem.get() + 1);
            let s = obj.ctx.storage();
            let n = s
                .get("n")
                .await?
                .map(|b| String::from_utf8_lossy(&b).parse::<u64>().unwrap())
                .unwrap_or(0)
                + 1;
            s.put("n", Bytes::from(n.to_string()))?;
            Ok(format!("stored={n} mem={}", obj.mem.get()))
        })
    });
    script.evicted = Some(evicted_tx);
    let constructed = script.constructed.clone();
    let cfg = RuntimeConfig {
        idle_timeout_min: Duration::from_millis(20),
        idle_timeout_max: Duration::from_millis(40),
        ..test_config()
    };
    let rt = Runtime::start(open(dir.path()), cfg, vec![spec("ns", script)]).unwrap();
    let stub = rt.namespace("ns").unwrap().get_by_name("x");
    assert_eq!(text(&stub, "/").await.unwrap(), "stored=1 mem=1");
    assert_eq!(rt.live_objects(), 1);
    assert_eq!(within("eviction", evicted_rx.recv()).await.unwrap(), "x");
    within("instance dropped", async {
        while rt.live_objects() != 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(text(&stub, "/").await.unwrap(), "stored=2 mem=1");
    assert_eq!(constructed.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn wait_until_keeps_an_idle_object_alive() {
    let dir = tempfile::tempdir().unwrap();
    let (evicted_tx, mut evicted_rx) = mpsc::unbounded_channel::<String>();
    let (bg_tx, bg_rx) = oneshot::channel::<()>();
    let bg_rx = Arc::new(Mutex::new(Some(bg_rx)));
    let (bg_done_tx, mut bg_done_rx) = mpsc::unbounded_channel::<()>();
    let mut script = Script::new(move |obj, path| {
        let (bg_rx, bg_done_tx) = (bg_rx.clone(), bg_done_tx.clone());
        Box::pin(async move {
            if path == "/bg" {
                let rx = take(&bg_rx);
                obj.ctx.wait_until(async move {
                    rx.await.ok();
                    let _ = bg_done_tx.send(());
                });
            }
            Ok("ok".into())
        })
    });
    script.evicted = Some(evicted_tx);
    let cfg = RuntimeConfig {
        idle_timeout_min: Duration::from_millis(10),
        idle_timeout_max: Duration::from_millis(10),
        ..test_config()
    };
    let rt = Runtime::start(open(dir.path()), cfg, vec![spec("ns", script)]).unwrap();
    let ns = rt.namespace("ns").unwrap();
    text(&ns.get_by_name("x"), "/bg").await.unwrap();
    // "other" starts its idle time after "x" did, with the same timeout: once it is evicted,
    // "x" would have been too, but for its background task.
    text(&ns.get_by_name("other"), "/").await.unwrap();
    assert_eq!(
        within("other evicted", evicted_rx.recv()).await.unwrap(),
        "other"
    );
    assert!(
        evicted_rx.try_recv().is_err(),
        "x was evicted during waitUntil"
    );
    bg_tx.send(()).unwrap();
    // Aborting the task (a wrongful eviction) would never send this.
    within("background task", bg_done_rx.recv()).await.unwrap();
    assert_eq!(within("x evicted", evicted_rx.recv()).await.unwrap(), "x");
}

/// Stops the runtime's threads (a blocking join) without blocking the test's runtime.
async fn shutdown(rt: Runtime) {
    tokio::task::spawn_blocking(move || rt.shutdown())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_constructor_critical_section_holds_events_and_its_failure_fails_the_event() {
    let dir = tempfile::tempdir().unwrap();
    let mut script = Script::new(|obj, _| {
        Box::pin(async move {
            let v = obj.ctx.storage().get("init").await?.unwrap_or_default();
            Ok(String::from_utf8_lossy(&v).into_owned())
        })
    });
    script.construct = Some(Arc::new(|ctx: &ActorContext, n: usize| {
        let ctx2 = ctx.clone();
        // Started and dropped, as `this.ctx.blockConcurrencyWhile(...)` in a JS constructor.
        drop(ctx.block_concurrency_while(async move {
            // Awaits inside the critical section must not let the waiting event in.
            for _ in 0..50 {
                tokio::task::yield_now().await;
            }
            ctx2.storage().get("init").await?;
            if n == 1 {
                return Err(ActorError::new("init failed"));
            }
            ctx2.storage()
                .put("init", Bytes::from(format!("done by #{n}")))?;
            Ok(())
        }));
    }));
    let constructed = script.constructed.clone();
    let rt = Runtime::start(open(dir.path()), test_config(), vec![spec("ns", script)]).unwrap();
    let stub = rt.namespace("ns").unwrap().get_by_name("x");
    let err = within("first", text(&stub, "/")).await.unwrap_err();
    assert!(err.to_string().contains("init failed"), "{err}");
    assert_eq!(constructed.load(Ordering::SeqCst), 1);
    assert_eq!(
        within("second", text(&stub, "/")).await.unwrap(),
        "done by #2"
    );
    assert_eq!(constructed.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn each_object_lives_on_one_executor_thread() {
    let dir = tempfile::tempdir().unwrap();
    let script = Script::new(|obj, _| {
        Box::pin(async move {
            // In-memory state survives between events: the same instance, on the same thread.
            obj.mem.set(obj.mem.get() + 1);
            let thread = std::thread::current().name().unwrap_or("?").to_string();
            Ok(format!("{thread} {}", obj.mem.get()))
        })
    });
    let cfg = RuntimeConfig {
        threads: 2,
        ..test_config()
    };
    let rt = Runtime::start(open(dir.path()), cfg, vec![spec("ns", script)]).unwrap();
    let ns = rt.namespace("ns").unwrap();
    let mut threads = std::collections::HashSet::new();
    for i in 0..40 {
        let stub = ns.get_by_name(&format!("o{i}"));
        let (a, b) = tokio::join!(text(&stub, "/"), text(&stub, "/"));
        let (a, b) = (a.unwrap(), b.unwrap());
        let (ta, na) = a.split_once(' ').unwrap();
        let (tb, nb) = b.split_once(' ').unwrap();
        assert_eq!(ta, tb, "object o{i} ran on two threads");
        let mut counts = [na, nb];
        counts.sort();
        assert_eq!(counts, ["1", "2"], "object o{i} had two instances");
        threads.insert(ta.to_string());
    }
    assert_eq!(
        threads.len(),
        2,
        "ids spread over both executors: {threads:?}"
    );
}

#[tokio::test]
async fn concurrent_read_modify_writes_never_lose_an_update() {
    let dir = tempfile::tempdir().unwrap();
    type Key = Arc<Mutex<Option<oneshot::Receiver<()>>>>;
    let key: Key = Arc::default();
    let (entered_tx, mut entered_rx) = mpsc::unbounded_channel::<()>();
    let k = key.clone();
    let script = Script::new(move |obj, path| {
        let (key, entered_tx) = (k.clone(), entered_tx.clone());
        Box::pin(async move {
            let s = obj.ctx.storage();
            let read = |v: Option<Bytes>| {
                v.map(|b| String::from_utf8_lossy(&b).parse::<u64>().unwrap())
                    .unwrap_or(0)
            };
            match path.as_str() {
                "/block" => {
                    let rx = take(&key);
                    obj.ctx
                        .block_concurrency_while(async move {
                            let _ = entered_tx.send(());
                            rx.await.ok();
                            Ok(())
                        })
                        .await?;
                    Ok("unblocked".into())
                }
                "/txn" => {
                    // The async transaction: awaits inside, still atomic.
                    let n = s
                        .transaction_async(|txn| {
                            Box::pin(async move {
                                let n = read(txn.get("t")?) + 1;
                                tokio::task::yield_now().await;
                                txn.put("t", Bytes::from(n.to_string()))?;
                                Ok::<_, ActorError>(n)
                            })
                        })
                        .await?;
                    Ok(n.to_string())
                }
                _ => {
                    // No transaction: the input gate alone makes get-then-put atomic.
                    let n = read(s.get("n").await?) + 1;
                    s.put("n", Bytes::from(n.to_string()))?;
                    Ok(n.to_string())
                }
            }
        })
    });
    let rt = Runtime::start(
        open(dir.path()),
        test_config(),
        vec![spec("ns", script), barrier_spec()],
    )
    .unwrap();
    let stub = rt.namespace("ns").unwrap().get_by_name("counter");
    for path in ["/", "/txn"] {
        // Queue every increment behind a closed gate, then open it: all are ready at once,
        // the hardest case for the delivery path.
        let (unblock, rx) = oneshot::channel::<()>();
        *key.lock().unwrap() = Some(rx);
        let blocker = tokio::spawn({
            let stub = stub.clone();
            async move { text(&stub, "/block").await }
        });
        within("critical section", entered_rx.recv()).await.unwrap();
        let mut calls: Vec<_> = (0..200).map(|_| Box::pin(text(&stub, path))).collect();
        for c in calls.iter_mut() {
            // The first poll sends the event.
            assert!(futures::poll!(c.as_mut()).is_pending());
        }
        barrier(&rt).await;
        unblock.send(()).unwrap();
        let results = within("increments", futures::future::join_all(calls)).await;
        let mut seen: Vec<u64> = results
            .into_iter()
            .map(|r| r.unwrap().parse().unwrap())
            .collect();
        seen.sort();
        assert_eq!(seen, (1..=200).collect::<Vec<u64>>(), "{path}");
        assert_eq!(
            within("blocker", blocker).await.unwrap().unwrap(),
            "unblocked"
        );
    }
}

#[tokio::test]
async fn set_alarm_replaces_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (run_tx, mut run_rx) = mpsc::unbounded_channel::<i64>();
    let far = now_ms() + 3_600_000;
    let soon = now_ms() + 20;
    let script = Script::new(move |obj, _| {
        Box::pin(async move {
            let s = obj.ctx.storage();
            s.set_alarm(far)?;
            s.sync().await?;
            s.set_alarm(soon)?;
            Ok(format!("{:?}", s.get_alarm().await?))
        })
    })
    .with_alarm(move |_, info| {
        let _ = run_tx.send(info.scheduled_time);
        Box::pin(async { Ok(()) })
    });
    let rt = Runtime::start(store.clone(), test_config(), vec![spec("ns", script)]).unwrap();
    let ns = rt.namespace("ns").unwrap();
    let stub = ns.get_by_name("x");
    assert_eq!(text(&stub, "/").await.unwrap(), format!("Some({soon})"));
    assert_eq!(within("alarm", run_rx.recv()).await.unwrap(), soon);
    // The replaced time is gone from storage too: nothing is left to fire.
    within("alarm cleared", async {
        while !store.alarms().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(ns.validate(stub.id()).is_ok());
    let foreign = IdFactory::from_unique_key("elsewhere").id_from_name("x");
    assert_eq!(ns.validate(&foreign), Err(IdError::WrongNamespace));
}

/// At-least-once: a reset cuts an alarm run short (before any verdict): the scheduler runs the
/// alarm again.
#[tokio::test]
async fn an_alarm_whose_run_is_cut_short_by_a_reset_runs_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (run_tx, mut run_rx) = mpsc::unbounded_channel::<u32>();
    let script = Script::new(|obj, path| {
        Box::pin(async move {
            if path == "/reset" {
                obj.ctx.reset("reset by the test");
            } else {
                obj.ctx.storage().set_alarm(1)?;
            }
            Ok(String::new())
        })
    })
    .with_alarm(move |_, info| {
        let run_tx = run_tx.clone();
        Box::pin(async move {
            let _ = run_tx.send(info.retry_count);
            if info.retry_count == 0 {
                // Parked (no lock held) until the reset drops it.
                std::future::pending::<()>().await;
            }
            Ok(())
        })
    });
    let cfg = RuntimeConfig {
        alarm_retry_base: Duration::from_millis(1),
        ..test_config()
    };
    let rt = Runtime::start(store.clone(), cfg, vec![spec("ns", script), barrier_spec()]).unwrap();
    let stub = rt.namespace("ns").unwrap().get_by_name("x");
    text(&stub, "/").await.unwrap();
    assert_eq!(within("first run", run_rx.recv()).await.unwrap(), 0);
    let _ = text(&stub, "/reset").await;
    assert_eq!(within("second run", run_rx.recv()).await.unwrap(), 1);
    within("alarm cleared", async {
        while !store.alarms().unwrap().is_empty() {
            barrier(&rt).await;
        }
    })
    .await;
}

/// An alarm whose object cannot be constructed (the constructor fails once) is not lost: the
/// scheduler hears that the event failed and runs it again.
#[tokio::test]
async fn an_alarm_survives_a_failing_constructor() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (run_tx, mut run_rx) = mpsc::unbounded_channel::<u32>();
    let script = Script::new(|obj, path| {
        Box::pin(async move {
            if path == "/reset" {
                obj.ctx.reset("reset by the test");
            } else {
                obj.ctx.storage().set_alarm(now_ms() + 20)?;
            }
            Ok(String::new())
        })
    })
    .with_alarm(move |_, info| {
        let _ = run_tx.send(info.retry_count);
        Box::pin(async { Ok(()) })
    });
    let constructed = script.constructed.clone();
    let fail_on = 2;
    let spec = NamespaceSpec {
        name: "ns".into(),
        ids: IdFactory::from_unique_key("ns"),
        factory: Arc::new(
            move |ctx: ActorContext| -> Result<Box<dyn Actor>, ActorError> {
                // The second construction (the one the alarm causes) fails.
                if constructed.load(Ordering::SeqCst) + 1 == fail_on {
                    constructed.fetch_add(1, Ordering::SeqCst);
                    return Err(ActorError::new("constructor failed"));
                }
                spec("ns", script.clone()).factory.create(ctx)
            },
        ),
    };
    let cfg = RuntimeConfig {
        alarm_retry_base: Duration::from_millis(1),
        ..test_config()
    };
    let rt = Runtime::start(store.clone(), cfg, vec![spec]).unwrap();
    let stub = rt.namespace("ns").unwrap().get_by_name("x");
    text(&stub, "/").await.unwrap();
    // Drop the instance, so the alarm has to construct a new one.
    let _ = text(&stub, "/reset").await;
    assert_eq!(within("alarm run", run_rx.recv()).await.unwrap(), 1);
    within("alarm cleared", async {
        while !store.alarms().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

#[tokio::test]
async fn an_alarm_set_inside_a_transaction_fires() {
    let dir = tempfile::tempdir().unwrap();
    let (run_tx, mut run_rx) = mpsc::unbounded_channel::<i64>();
    let script = Script::new(|obj, _| {
        Box::pin(async move {
            obj.ctx
                .storage()
                .transaction(|txn| txn.set_alarm(7).map_err(ActorError::from))?;
            Ok(String::new())
        })
    })
    .with_alarm(move |_, info| {
        let _ = run_tx.send(info.scheduled_time);
        Box::pin(async { Ok(()) })
    });
    let rt = Runtime::start(open(dir.path()), test_config(), vec![spec("ns", script)]).unwrap();
    text(&rt.namespace("ns").unwrap().get_by_name("x"), "/")
        .await
        .unwrap();
    assert_eq!(within("alarm", run_rx.recv()).await.unwrap(), 7);
}

#[tokio::test]
async fn a_panicking_handler_resets_the_object_and_the_caller_hears_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let script = Script::new(|obj, path| {
        Box::pin(async move {
            obj.mem.set(obj.mem.get() + 1);
            if path == "/panic" {
                panic!("handler bug");
            }
            Ok(format!("mem={}", obj.mem.get()))
        })
    });
    let constructed = script.constructed.clone();
    let rt = Runtime::start(open(dir.path()), test_config(), vec![spec("ns", script)]).unwrap();
    let stub = rt.namespace("ns").unwrap().get_by_name("x");
    assert_eq!(text(&stub, "/").await.unwrap(), "mem=1");
    let err = within("panic", text(&stub, "/panic")).await.unwrap_err();
    assert!(
        matches!(&err, ObjectError::Reset(m) if m.contains("panicked")),
        "{err:?}"
    );
    assert_eq!(text(&stub, "/").await.unwrap(), "mem=1");
    assert_eq!(constructed.load(Ordering::SeqCst), 2);
    // The executor thread survived: other objects still work.
    let other = rt.namespace("ns").unwrap().get_by_name("y");
    assert_eq!(text(&other, "/").await.unwrap(), "mem=1");
}

#[test]
fn duplicate_namespaces_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = || Script::new(|_, _| Box::pin(async { Ok(String::new()) }));
    let err = Runtime::start(
        open(dir.path()),
        test_config(),
        vec![spec("ns", s()), spec("ns", s())],
    )
    .unwrap_err();
    assert!(matches!(err, RuntimeError::DuplicateNamespace(ref n) if n == "ns"));
}

#[tokio::test]
async fn outbound_io_starts_only_after_earlier_writes_are_durable() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (started_tx, mut started_rx) = mpsc::unbounded_channel::<&'static str>();
    let script = Script::new(move |obj, _| {
        let started_tx = started_tx.clone();
        Box::pin(async move {
            obj.ctx.storage().put("k", Bytes::from_static(b"v"))?;
            let _ = started_tx.send("handler");
            // The "request" is sent when this future first runs.
            obj.ctx
                .outbound(async move {
                    let _ = started_tx.send("io");
                })
                .await?;
            Ok("sent".into())
        })
    });
    let rt = Runtime::start(
        store.clone(),
        test_config(),
        vec![spec("ns", script), barrier_spec()],
    )
    .unwrap();
    let stub = rt.namespace("ns").unwrap().get_by_name("x");
    let hold = store.hold_durability();
    let call = tokio::spawn({
        let stub = stub.clone();
        async move { text(&stub, "/").await }
    });
    assert_eq!(within("handler", started_rx.recv()).await, Some("handler"));
    barrier(&rt).await;
    barrier(&rt).await;
    assert!(
        started_rx.try_recv().is_err(),
        "I/O left before the write was durable"
    );
    drop(hold);
    assert_eq!(within("io", started_rx.recv()).await, Some("io"));
    assert_eq!(within("reply", call).await.unwrap().unwrap(), "sent");
}

#[tokio::test]
async fn host_hooks_and_tasks_run_on_the_executor_threads() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let started: Log = Arc::default();
    let (s1, s2) = (started.clone(), started.clone());
    let cfg = RuntimeConfig {
        threads: 2,
        on_thread_start: Some(Arc::new(move |i| {
            let s = s1.clone();
            Box::pin(async move {
                // The thread takes no command until this future is done.
                tokio::task::yield_now().await;
                log(&s, &format!("start {i}"));
            })
        })),
        on_thread_stop: Some(Arc::new(move |i| {
            let s = s2.clone();
            Box::pin(async move { log(&s, &format!("stop {i}")) })
        })),
        ..test_config()
    };
    let rt = Runtime::start(store, cfg, vec![barrier_spec()]).unwrap();
    assert_eq!(Runtime::current_executor(), None);
    for i in 0..2 {
        let (tx, rx) = oneshot::channel();
        let s = started.clone();
        rt.run_on(
            i,
            Box::new(move || {
                let started = s.lock().unwrap().contains(&format!("start {i}"));
                // spawn_local works: the task runs inside the thread's LocalSet.
                tokio::task::spawn_local(async move {
                    let _ = tx.send((Runtime::current_executor(), started));
                });
            }),
        )
        .unwrap();
        assert_eq!(within("run_on", rx).await.unwrap(), (Some(i), true));
    }
    // A stub used on its object's own thread still reaches it (directly, without the channel).
    let stub = rt.namespace("barrier").unwrap().get_by_name("b");
    let home = rt.executor_for(stub.id());
    let (tx, rx) = oneshot::channel();
    rt.run_on(
        home,
        Box::new(move || {
            tokio::task::spawn_local(async move {
                let _ = tx.send(text(&stub, "/").await);
            });
        }),
    )
    .unwrap();
    assert_eq!(within("local stub", rx).await.unwrap().unwrap(), "pong");
    // A host may drive its futures in tasks spawned on the thread's runtime outside the
    // LocalSet (deno_core polls async ops that way): a local stub call from there that brings
    // an object to life still lands in the executor's task set.
    let stub = rt
        .namespace("barrier")
        .unwrap()
        .get_by_name("outside-the-local-set");
    let home = rt.executor_for(stub.id());
    let (tx, rx) = oneshot::channel();
    rt.run_on(
        home,
        Box::new(move || {
            tokio::spawn(async move {
                let _ = tx.send(text(&stub, "/").await);
            });
        }),
    )
    .unwrap();
    assert_eq!(
        within("local stub outside the LocalSet", rx)
            .await
            .unwrap()
            .unwrap(),
        "pong"
    );
    let rt2 = rt.clone();
    tokio::task::spawn_blocking(move || rt2.shutdown())
        .await
        .unwrap();
    let l = started.lock().unwrap().clone();
    assert!(l.contains(&"stop 0".to_string()) && l.contains(&"stop 1".to_string()));
    assert!(matches!(
        rt.run_on(0, Box::new(|| {})),
        Err(RuntimeError::Stopped)
    ));
}
