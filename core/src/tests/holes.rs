//! One test per hole of issue 11 (each failed on the code before its fix).

use std::cell::RefCell;

use super::*;

/// How an increment resumes before its read-modify-write: each of these is a resumption of
/// object code that used to skip the input gate.
#[derive(Clone, Copy, Debug)]
enum Resume {
    Sync,
    OutputGate,
    AfterCriticalSection,
    PlainFuture,
}

/// 200 events, all ready at once, each resuming one way and then doing `get; put(n + 1)`:
/// every increment must land, each with its own value.
async fn increments_after(resume: Resume) {
    let dir = tempfile::tempdir().unwrap();
    let script = Script::new(move |obj, _| {
        Box::pin(async move {
            let s = obj.ctx.storage();
            // Something to wait for: a write of this event's own.
            s.put("touched", Bytes::from_static(b"1"))?;
            match resume {
                Resume::Sync => s.sync().await?,
                Resume::OutputGate => obj.ctx.output_gate().wait().await?,
                Resume::AfterCriticalSection => {
                    obj.ctx.block_concurrency_while(async { Ok(()) }).await?
                }
                Resume::PlainFuture => tokio::task::yield_now().await,
            }
            let n = s
                .get("n")
                .await?
                .map(|b| String::from_utf8_lossy(&b).parse::<u64>().unwrap())
                .unwrap_or(0)
                + 1;
            s.put("n", Bytes::from(n.to_string()))?;
            Ok(n.to_string())
        })
    });
    let rt = Runtime::start(open(dir.path()), test_config(), vec![spec("ns", script)]).unwrap();
    let stub = rt.namespace("ns").unwrap().get_by_name("counter");
    let calls = (0..200).map(|_| text(&stub, "/"));
    let results = within("increments", futures::future::join_all(calls)).await;
    let mut seen: Vec<u64> = results
        .into_iter()
        .map(|r| r.unwrap().parse().unwrap())
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(
        seen.len(),
        200,
        "{resume:?}: lost updates, distinct values {}",
        seen.len()
    );
    assert_eq!(seen.last(), Some(&200), "{resume:?}");
}

#[tokio::test]
async fn sync_resumes_through_the_input_gate() {
    increments_after(Resume::Sync).await;
}

#[tokio::test]
async fn an_output_gate_wait_resumes_through_the_input_gate() {
    increments_after(Resume::OutputGate).await;
}

#[tokio::test]
async fn the_return_from_a_critical_section_passes_the_input_gate() {
    increments_after(Resume::AfterCriticalSection).await;
}

#[tokio::test]
async fn a_plain_future_resumes_through_the_input_gate() {
    increments_after(Resume::PlainFuture).await;
}

/// Two events start critical sections; the second resumes from `sync()` while the first's
/// section is running. The sections must not overlap.
#[tokio::test]
async fn critical_sections_never_overlap() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let events: Log = Arc::default();
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let release_rx = Arc::new(Mutex::new(Some(release_rx)));
    let (sig_tx, mut sig_rx) = mpsc::unbounded_channel::<&'static str>();
    let e = events.clone();
    let script = Script::new(move |obj, path| {
        let (e, release_rx, sig_tx) = (e.clone(), release_rx.clone(), sig_tx.clone());
        Box::pin(async move {
            let s = obj.ctx.storage();
            if path == "/second" {
                s.put("w", Bytes::from_static(b"1"))?;
                let _ = sig_tx.send("second waits");
                s.sync().await?;
            }
            let name = if path == "/second" { "second" } else { "first" };
            let rx = (path == "/first").then(|| take(&release_rx));
            let (e2, sig) = (e.clone(), sig_tx.clone());
            obj.ctx
                .block_concurrency_while(async move {
                    log(&e2, &format!("{name} enter"));
                    if let Some(rx) = rx {
                        let _ = sig.send("first inside");
                        rx.await.ok();
                    }
                    for _ in 0..50 {
                        tokio::task::yield_now().await;
                    }
                    log(&e2, &format!("{name} exit"));
                    Ok(())
                })
                .await?;
            Ok(name.to_string())
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
    let second = tokio::spawn({
        let stub = stub.clone();
        async move { text(&stub, "/second").await }
    });
    assert_eq!(within("second", sig_rx.recv()).await, Some("second waits"));
    let first = tokio::spawn({
        let stub = stub.clone();
        async move { text(&stub, "/first").await }
    });
    assert_eq!(within("first", sig_rx.recv()).await, Some("first inside"));
    // The second event's sync() can complete now, while the first section runs.
    drop(hold);
    within("durable", store.barrier()).await.unwrap();
    for _ in 0..3 {
        barrier(&rt).await;
    }
    release_tx.send(()).unwrap();
    assert_eq!(within("first", first).await.unwrap().unwrap(), "first");
    assert_eq!(within("second", second).await.unwrap().unwrap(), "second");
    assert_eq!(
        *events.lock().unwrap(),
        ["first enter", "first exit", "second enter", "second exit"],
        "sections overlapped"
    );
}

/// An event resuming from `sync()` while another holds a `transaction_async` open must not
/// write (or even run) until the transaction is over.
#[tokio::test]
async fn nobody_writes_under_an_open_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let release_rx = Arc::new(Mutex::new(Some(release_rx)));
    let (sig_tx, mut sig_rx) = mpsc::unbounded_channel::<&'static str>();
    let script = Script::new(move |obj, path| {
        let (release_rx, sig_tx) = (release_rx.clone(), sig_tx.clone());
        Box::pin(async move {
            let s = obj.ctx.storage();
            if path == "/writer" {
                s.put("w", Bytes::from_static(b"1"))?;
                let _ = sig_tx.send("writer waits");
                s.sync().await?;
                s.put("k", Bytes::from_static(b"writer"))?;
                return Ok("writer".into());
            }
            let rx = take(&release_rx);
            let seen = s
                .transaction_async(move |txn| {
                    Box::pin(async move {
                        let before = txn.get("k")?;
                        let _ = sig_tx.send("txn open");
                        rx.await.ok();
                        for _ in 0..50 {
                            tokio::task::yield_now().await;
                        }
                        // Read again inside the transaction: nobody may have written.
                        let after = txn.get("k")?;
                        txn.put("k", Bytes::from_static(b"txn"))?;
                        Ok::<_, ActorError>(before == after)
                    })
                })
                .await?;
            Ok(format!("stable={seen}"))
        })
    });
    let rt = Runtime::start(store.clone(), test_config(), vec![spec("ns", script)]).unwrap();
    let stub = rt.namespace("ns").unwrap().get_by_name("x");
    let hold = store.hold_durability();
    let writer = tokio::spawn({
        let stub = stub.clone();
        async move { text(&stub, "/writer").await }
    });
    assert_eq!(within("writer", sig_rx.recv()).await, Some("writer waits"));
    let txn = tokio::spawn({
        let stub = stub.clone();
        async move { text(&stub, "/txn").await }
    });
    assert_eq!(within("txn", sig_rx.recv()).await, Some("txn open"));
    drop(hold);
    // Give the writer's sync() every chance to complete and resume it.
    within("durable", store.barrier()).await.unwrap();
    let probe = rt.namespace("ns").unwrap().get_by_name("probe");
    for _ in 0..3 {
        within("probe", text(&probe, "/writer")).await.unwrap();
    }
    release_tx.send(()).unwrap();
    assert_eq!(within("txn", txn).await.unwrap().unwrap(), "stable=true");
    assert_eq!(within("writer", writer).await.unwrap().unwrap(), "writer");
    // The writer ran after the transaction: its value is the last one.
    within("durable", store.barrier()).await.unwrap();
    let v = store.object(*stub.id().bytes()).get("k").unwrap();
    assert_eq!(v.as_deref(), Some(&b"writer"[..]));
}

/// An id minted by namespace A, used with namespace B, reaches no object of either.
#[tokio::test]
async fn an_id_of_another_namespace_reaches_no_object() {
    let dir = tempfile::tempdir().unwrap();
    let counter = |name: &'static str| {
        Script::new(move |obj, _| {
            Box::pin(async move {
                obj.mem.set(obj.mem.get() + 1);
                Ok(format!("{name} {}", obj.mem.get()))
            })
        })
    };
    let rt = Runtime::start(
        open(dir.path()),
        test_config(),
        vec![spec("A", counter("A")), spec("B", counter("B"))],
    )
    .unwrap();
    let (a, b) = (rt.namespace("A").unwrap(), rt.namespace("B").unwrap());
    let id = a.id_from_name("x");
    assert_eq!(text(&a.get(id.clone()), "/").await.unwrap(), "A 1");
    // Through B: refused with workerd's text, and nothing reached A's live instance.
    let err = text(&b.get(id.clone()), "/").await.unwrap_err();
    assert_eq!(
        err,
        ObjectError::InvalidId("Durable Object ID is not valid for this namespace.".into())
    );
    assert!(!err.is_remote() && !err.is_retryable());
    assert_eq!(b.validate(&id), Err(IdError::WrongNamespace));
    let unique = a.new_unique_id(None).unwrap();
    assert!(text(&b.get(unique), "/").await.is_err());
    assert_eq!(text(&a.get(id.clone()), "/").await.unwrap(), "A 2");
    // A scoped namespace refuses ids of another jurisdiction, with workerd's text.
    let eu = a.jurisdiction(Jurisdiction::Eu);
    assert_eq!(
        text(&eu.get(id.clone()), "/")
            .await
            .unwrap_err()
            .to_string(),
        "get called on jurisdictional subnamespace with an ID from a different jurisdiction"
    );
    assert_eq!(
        text(&a.get(eu.id_from_name("y")), "/").await.unwrap(),
        "A 1"
    );
    // Two namespaces with one id secret would share ids and storage: refused at start.
    let same = |name: &str| NamespaceSpec {
        ids: IdFactory::from_unique_key("shared"),
        ..spec(name, counter("S"))
    };
    let other_dir = tempfile::tempdir().unwrap();
    let err = Runtime::start(
        open(other_dir.path()),
        test_config(),
        vec![same("S1"), same("S2")],
    )
    .unwrap_err();
    assert!(matches!(err, RuntimeError::SharedIdSecret(..)), "{err}");
}

/// A reset while a batch is on its way to disk: the next instance answers only once that
/// batch is durable (it reads it), and the batch's alarm change still reaches the scheduler.
#[tokio::test]
async fn a_reset_during_a_pending_flush_exposes_nothing_before_it_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (alarm_tx, mut alarm_rx) = mpsc::unbounded_channel::<i64>();
    let script = Script::new(|obj, path| {
        Box::pin(async move {
            let s = obj.ctx.storage();
            match path.as_str() {
                "/write" => {
                    s.put("k", Bytes::from_static(b"v"))?;
                    s.set_alarm(1)?;
                    Ok("written".into())
                }
                "/abort" => {
                    obj.ctx.reset("aborted by the test");
                    Ok("aborted".into())
                }
                _ => {
                    let v = s.get("k").await?;
                    Ok(format!("{:?}", v.as_deref().map(String::from_utf8_lossy)))
                }
            }
        })
    })
    .with_alarm(move |_, info| {
        let _ = alarm_tx.send(info.scheduled_time);
        Box::pin(async { Ok(()) })
    });
    let rt = Runtime::start(
        store.clone(),
        test_config(),
        vec![spec("ns", script), barrier_spec()],
    )
    .unwrap();
    let stub = rt.namespace("ns").unwrap().get_by_name("x");
    let hold = store.hold_durability();
    let mut write = Box::pin(text(&stub, "/write"));
    assert!(futures::poll!(write.as_mut()).is_pending());
    barrier(&rt).await;
    // The batch is queued (visible in fjall soon) but not durable; the object is reset.
    let _ = within("abort", text(&stub, "/abort")).await;
    let err = within("write", write).await.unwrap_err();
    assert!(matches!(err, ObjectError::Reset(_)), "{err:?}");
    let mut read = Box::pin(text(&stub, "/read"));
    assert!(futures::poll!(read.as_mut()).is_pending());
    barrier(&rt).await;
    barrier(&rt).await;
    assert!(
        futures::poll!(read.as_mut()).is_pending(),
        "a new instance answered from a batch that is not durable"
    );
    drop(hold);
    assert_eq!(within("read", read).await.unwrap(), "Some(\"v\")");
    assert_eq!(within("alarm of the batch", alarm_rx.recv()).await, Some(1));
}

/// Scheduler updates follow the order the batches were committed in: set, then delete, in two
/// batches confirmed together, leaves no alarm.
#[tokio::test]
async fn alarm_changes_reach_the_scheduler_in_commit_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (alarm_tx, mut alarm_rx) = mpsc::unbounded_channel::<i64>();
    let script = Script::new(|obj, _| {
        Box::pin(async move {
            let s = obj.ctx.storage();
            s.set_alarm(1)?;
            tokio::task::yield_now().await;
            tokio::task::yield_now().await;
            s.delete_alarm()?;
            Ok(String::new())
        })
    })
    .with_alarm(move |_, info| {
        let _ = alarm_tx.send(info.scheduled_time);
        Box::pin(async { Ok(()) })
    });
    let rt = Runtime::start(
        store.clone(),
        test_config(),
        vec![spec("ns", script), barrier_spec()],
    )
    .unwrap();
    let stub = rt.namespace("ns").unwrap().get_by_name("x");
    let hold = store.hold_durability();
    let mut call = Box::pin(text(&stub, "/"));
    assert!(futures::poll!(call.as_mut()).is_pending());
    barrier(&rt).await;
    barrier(&rt).await;
    drop(hold);
    within("reply", call).await.unwrap();
    for _ in 0..3 {
        barrier(&rt).await;
    }
    assert!(alarm_rx.try_recv().is_err(), "a deleted alarm fired");
    assert!(store.alarms().unwrap().is_empty());
}

/// A failing alarm's retry count is stored with it: after a restart the next run carries on
/// counting instead of starting again at 0.
#[tokio::test]
async fn an_alarms_retry_count_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = RuntimeConfig {
        alarm_retry_base: Duration::from_millis(5),
        ..test_config()
    };
    {
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
            Box::pin(async { Err(ActorError::new("not yet")) })
        });
        let rt = Runtime::start(store.clone(), cfg.clone(), vec![spec("ns", script)]).unwrap();
        text(&rt.namespace("ns").unwrap().get_by_name("x"), "/")
            .await
            .unwrap();
        assert_eq!(within("run 0", run_rx.recv()).await, Some(0));
        assert_eq!(within("run 1", run_rx.recv()).await, Some(1));
        // The failure of run 1 is recorded durably as retry 2.
        within("retry 2 stored", async {
            while store.alarm_states().unwrap()[0].1.retry_count < 2 {
                tokio::task::yield_now().await;
            }
        })
        .await;
        shutdown(rt).await;
    }
    let store = open(dir.path());
    let (info_tx, mut info_rx) = mpsc::unbounded_channel::<AlarmInfo>();
    let script =
        Script::new(|_, _| Box::pin(async { Ok(String::new()) })).with_alarm(move |_, info| {
            let _ = info_tx.send(info);
            Box::pin(async { Ok(()) })
        });
    let rt = Runtime::start(store.clone(), cfg, vec![spec("ns", script)]).unwrap();
    let info = within("run after restart", info_rx.recv()).await.unwrap();
    assert!(info.retry_count >= 2 && info.is_retry, "{info:?}");
    assert_eq!(info.scheduled_time, 1);
    shutdown(rt).await;
}

/// After a reset, the old instance's code that is still running cannot write (nothing of it
/// reaches the disk) nor start tasks.
#[tokio::test]
async fn writes_and_tasks_after_a_reset_are_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let script = Script::new(move |obj, path| {
        let tx = tx.clone();
        Box::pin(async move {
            let s = obj.ctx.storage();
            if path == "/read" {
                let v = s.get("k").await?;
                return Ok(format!("{:?}", v.as_deref().map(String::from_utf8_lossy)));
            }
            obj.ctx.reset("aborted by the test");
            // Still running synchronously after the reset.
            let put = s.put("k", Bytes::from_static(b"after reset"));
            let _ = tx.send(format!("put: {put:?}"));
            let ran = Rc::new(RefCell::new(false));
            let r = ran.clone();
            obj.ctx.wait_until(async move {
                *r.borrow_mut() = true;
            });
            let _ = tx.send(format!("read: {:?}", s.get("k").await.map(|_| ())));
            Ok(String::new())
        })
    });
    let rt = Runtime::start(store.clone(), test_config(), vec![spec("ns", script)]).unwrap();
    let stub = rt.namespace("ns").unwrap().get_by_name("x");
    let err = within("reset", text(&stub, "/")).await.unwrap_err();
    assert!(matches!(err, ObjectError::Reset(_)), "{err:?}");
    let put = within("put", rx.recv()).await.unwrap();
    assert!(put.starts_with("put: Err(Reset("), "{put}");
    assert_eq!(within("read", text(&stub, "/read")).await.unwrap(), "None");
    within("durable", store.barrier()).await.unwrap();
    assert_eq!(store.object(*stub.id().bytes()).get("k").unwrap(), None);
}
