//! Durable Objects written in JS, over HTTP against the real binary: ids, stubs, RPC,
//! storage, gates, alarms, resets and restarts (fixture `durable`).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{fixture, Server};

fn start() -> Server {
    Server::start(&[fixture("durable").to_str().unwrap()])
}

fn poll_json(
    server: &Server,
    path: &str,
    deadline: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let end = Instant::now() + deadline;
    loop {
        let v = server.get_json(path);
        if done(&v) {
            return v;
        }
        assert!(
            Instant::now() < end,
            "{path}: condition not reached; last answer {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn ids_namespaces_and_their_errors() {
    let server = start();
    let v = server.get_json("/ids");
    assert_eq!(v["hexLen"], 64, "{v}");
    assert_eq!(v["deterministic"], true);
    assert_eq!(v["name"], "alpha");
    assert_eq!(v["uniqueName"], Value::Null);
    assert_eq!(v["uniqueDiffers"], true);
    assert_eq!(v["parsedEquals"], true);
    assert_eq!(
        v["parsedName"],
        Value::Null,
        "idFromString does not recover the name"
    );
    assert_eq!(v["otherNsDiffers"], true);
    assert_eq!(
        v["malformed"]["error"],
        json!({"name": "TypeError", "message": "Invalid Durable Object ID: must be 64 hex digits", "remote": false, "overloaded": false, "retryable": false})
    );
    assert_eq!(
        v["foreign"]["error"]["message"],
        "Durable Object ID is not valid for this namespace."
    );
    assert_eq!(
        v["foreignGet"]["error"]["message"],
        "Durable Object ID is not valid for this namespace."
    );
    assert_eq!(v["euDiffers"], true);
    assert_eq!(v["euJurisdiction"], "eu");
    assert_eq!(v["stubName"], "alpha");
    assert_eq!(v["stubId"], true);
}

#[test]
fn stub_fetch_reaches_the_class_and_state_persists_across_a_restart() {
    let state = tempfile::tempdir().unwrap();
    let dir = fixture("durable");
    let args = [dir.to_str().unwrap()];
    {
        let server = Server::start_in(state.path(), &args);
        for expected in 1..=3 {
            let body = server.get("/counter?name=restart").text().unwrap();
            assert_eq!(body, expected.to_string());
        }
        let echo = server.get_json("/echo?name=someone");
        assert_eq!(echo["status"], 201);
        assert_eq!(echo["body"], "hello body");
        assert_eq!(echo["name"], "someone");
        assert_eq!(echo["object"].as_str().unwrap().len(), 64);
        let thrown = server.get_json("/fetch-throw");
        assert_eq!(
            thrown["error"],
            json!({"name": "RangeError", "message": "fetch threw on purpose", "remote": true, "overloaded": false, "retryable": false})
        );
    }
    let server = Server::start_in(state.path(), &args);
    assert_eq!(server.get("/counter?name=restart").text().unwrap(), "4");
}

#[test]
fn rpc_methods_properties_pipelining_and_errors() {
    let server = start();
    let v = server.get_json("/rpc?name=rpc");
    assert_eq!(v["info"]["name"], "rpc", "{v}");
    assert_eq!(v["info"]["mem"], 1);
    assert_eq!(v["prop"], "rpc");
    assert_eq!(v["pipelined"], json!([1, 2, 3]));
    assert_eq!(v["echo"], json!({"m": 1, "d": 5}));
    let err = |k: &str| v[k]["error"].clone();
    assert_eq!(
        err("typeError"),
        json!({"name": "TypeError", "message": "bad type on purpose", "remote": true, "overloaded": false, "retryable": false})
    );
    assert_eq!(err("rangeError")["name"], "RangeError");
    assert_eq!(err("plainError")["name"], "Error");
    assert_eq!(
        err("missing")["message"],
        "The RPC receiver does not implement the method \"noSuchMethod\"."
    );
    assert_eq!(
        err("reserved")["message"],
        "The RPC receiver does not implement the method \"alarm\"."
    );
    assert_eq!(err("classArg")["name"], "DataCloneError");
    assert_eq!(
        err("classArg")["message"],
        "Could not serialize object of type \"Foo\". This type does not support serialization."
    );
    assert_eq!(err("classResult")["name"], "DataCloneError");
    assert!(
        err("plainRpc")["message"]
            .as_str()
            .unwrap()
            .contains("extends DurableObject"),
        "{v}"
    );
    assert_eq!(v["plainFetch"], "plain p");
    assert_eq!(v["otherClass"], "other");
}

#[test]
fn storage_types_order_limits_transactions_and_alarm_slot() {
    let server = start();
    let v = server.get_json("/storage?name=storage");
    for (k, ok) in v["types"].as_object().unwrap() {
        assert_eq!(ok, &json!(true), "type {k} did not round-trip: {v}");
    }
    assert_eq!(v["missing"], true);
    assert_eq!(v["getManyMissingOmitted"], json!(["map"]));
    assert_eq!(
        v["order"],
        json!(["", "a", "ab", "a\u{ff}", "a\u{100}", "b", "c"])
    );
    assert_eq!(v["reverseLimit"], json!(["c", "b"]));
    assert_eq!(v["prefix"], json!(["a", "ab", "a\u{ff}", "a\u{100}"]));
    assert_eq!(v["startEnd"], json!(["a", "ab", "a\u{ff}", "a\u{100}"]));
    assert_eq!(v["startAfter"], json!(["ab", "a\u{ff}"]));
    assert_eq!(v["deleteOne"], true);
    assert_eq!(v["deleteMissing"], false);
    assert_eq!(v["deleteMany"], 2);
    let err = |k: &str| v[k]["error"].clone();
    assert_eq!(err("undefinedValue")["name"], "TypeError");
    assert_eq!(err("limitZero")["name"], "TypeError");
    assert_eq!(err("limitZero")["message"], "List limit must be positive.");
    assert_eq!(err("bothStarts")["name"], "TypeError");
    assert_eq!(err("bigKey")["name"], "RangeError");
    assert_eq!(
        err("bigKey")["message"],
        "Keys cannot be larger than 2048 bytes. A key of size 2049 was provided."
    );
    assert_eq!(err("bigValue")["name"], "RangeError");
    assert!(
        v["okValue"].get("ok").is_some(),
        "a 128 KiB value fits: {v}"
    );
    assert_eq!(
        err("tooMany")["message"],
        "Maximum number of key value pairs is 128. 129 pairs were provided."
    );
    assert_eq!(err("function")["name"], "DataCloneError");
    assert_eq!(v["txnCommitted"], json!([2, "inside"]));
    assert_eq!(v["txnRolledBack"], 2);
    assert_eq!(err("txnThrow")["message"], "abort txn");
    assert_eq!(v["afterThrow"], 2);
    assert_eq!(v["alarmNone"], Value::Null);
    assert_eq!(v["alarmSet"], true);
    assert_eq!(v["alarmDeleted"], Value::Null);
    assert_eq!(err("alarmBad")["name"], "TypeError");
}

#[test]
fn concurrent_read_modify_writes_lose_no_update() {
    let server = start();
    let base = server.url("/slow-increment?name=race");
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let base = base.clone();
            std::thread::spawn(move || {
                let client = crate::harness::client();
                (0..25)
                    .map(|_| client.get(&base).send().unwrap().json::<i64>().unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all: Vec<i64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    all.sort();
    assert_eq!(
        all,
        (1..=100).collect::<Vec<_>>(),
        "every increment saw a distinct value"
    );
}

#[test]
fn writes_without_await_commit_together_and_sqlite_classes_keep_kv() {
    let server = start();
    assert_eq!(server.get_json("/coalesce?name=co&n=100"), json!(100));
    assert_eq!(server.get_json("/sql-increment?name=s"), json!(1));
    assert_eq!(server.get_json("/sql-increment?name=s"), json!(2));
}

#[test]
fn alarms_fire_retry_with_backoff_and_see_an_empty_slot() {
    let server = start();
    assert_eq!(
        server.get_json("/alarm/set?name=alarm&ms=50&fail=1"),
        json!(true)
    );
    let v = poll_json(
        &server,
        "/alarm/log?name=alarm",
        Duration::from_secs(30),
        |v| v["log"].as_array().is_some_and(|l| l.len() >= 2) && v["pending"].is_null(),
    );
    assert_eq!(
        v["log"],
        json!([
            {"retryCount": 0, "isRetry": false, "inHandler": null},
            {"retryCount": 1, "isRetry": true, "inHandler": null}
        ])
    );
}

#[test]
fn an_alarm_set_before_a_restart_fires_after_it() {
    let state = tempfile::tempdir().unwrap();
    let dir = fixture("durable");
    let args = [dir.to_str().unwrap()];
    {
        let server = Server::start_in(state.path(), &args);
        assert_eq!(
            server.get_json("/alarm/set?name=later&ms=2500"),
            json!(true)
        );
    }
    let server = Server::start_in(state.path(), &args);
    let v = poll_json(
        &server,
        "/alarm/log?name=later",
        Duration::from_secs(30),
        |v| v["log"].as_array().is_some_and(|l| !l.is_empty()),
    );
    assert_eq!(v["log"][0]["retryCount"], 0);
}

#[test]
fn abort_and_a_failed_critical_section_reset_the_object() {
    let server = start();
    let first = server.get_json("/memory?name=reset");
    let second = server.get_json("/memory?name=reset");
    assert_eq!(second["mem"], 2);
    assert_eq!(first["constructedAt"], second["constructedAt"]);
    let aborted = server.get_json("/abort?name=reset");
    assert!(aborted.get("error").is_some(), "{aborted}");
    let third = server.get_json("/memory?name=reset");
    assert_eq!(third["mem"], 1, "a new instance after abort: {third}");

    let cs = server.get_json("/critical?name=cs");
    assert_eq!(
        cs,
        json!({"v": 42, "order": ["start", "after-call", "end"]})
    );
    server.get_json("/memory?name=cs2");
    let failed = server.get_json("/critical-fail?name=cs2");
    assert_eq!(
        failed["error"]["message"], "critical section failed",
        "{failed}"
    );
    assert_eq!(server.get_json("/memory?name=cs2")["mem"], 1);
}

#[test]
fn rpc_passes_functions_rpc_targets_and_stubs_by_reference() {
    let server = start();
    let v = server.get_json("/rpc-refs?name=refs");
    assert_eq!(
        v,
        json!({"callback": 42, "first": 11, "second": 12, "value": 12, "pipelined": 101, "forwarded": "target"})
    );
}

fn executor_of(class_key: &str, name: &str, threads: usize) -> usize {
    let id = cinder_core::IdFactory::from_unique_key(class_key).id_from_name(name);
    cinder_placement::executor_for(id.bytes(), threads)
}

/// Two names of `class_key` whose objects live on different executor threads (of 2).
fn names_on_two_threads(class_key: &str) -> (String, String) {
    let a = "a0".to_string();
    let home = executor_of(class_key, &a, 2);
    let b = (1..1000)
        .map(|i| format!("b{i}"))
        .find(|n| executor_of(class_key, n, 2) != home)
        .expect("a name on the other thread");
    (a, b)
}

#[test]
fn a_runaway_object_is_reset_without_stalling_objects_on_the_other_thread() {
    let server = Server::start(&[fixture("do-limits").to_str().unwrap(), "--threads", "2"]);
    let (bad, good) = names_on_two_threads("do-limits/Looper");
    assert_eq!(server.get_json(&format!("/increment?name={bad}"))["ok"], 1);
    assert_eq!(server.get_json(&format!("/increment?name={good}"))["ok"], 1);

    let spin_url = server.url(&format!("/spin?name={bad}"));
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let spinner = std::thread::spawn(move || {
        let resp = crate::harness::client().get(spin_url).send().unwrap();
        let text = resp.text().unwrap();
        let _ = done_tx.send(());
        text
    });
    // Once the loop runs, the healthy object on the other thread answers while the loop still
    // runs (it is stopped only at its 8 s CPU limit).
    server.log_where(|l| l.contains("spinning now"));
    assert_eq!(server.get_json(&format!("/increment?name={good}"))["ok"], 2);
    assert!(
        done_rx.try_recv().is_err(),
        "the healthy object answered only after the runaway one was stopped"
    );
    // The caller shares the stopped isolate when it ran on the object's thread (a 503), or
    // gets the object's reset error.
    let spun = spinner.join().unwrap();
    assert!(spun.contains("CPU"), "{spun}");
    // The reset object answers again, its storage intact.
    assert_eq!(server.get_json(&format!("/increment?name={bad}"))["ok"], 2);

    let bombed = server.get(&format!("/bomb?name={bad}")).text().unwrap();
    assert!(bombed.contains("memory"), "{bombed}");
    assert_eq!(server.get_json(&format!("/increment?name={bad}"))["ok"], 3);
    assert_eq!(server.get_json(&format!("/increment?name={good}"))["ok"], 3);
}

#[test]
fn acknowledged_increments_survive_kill_9_and_none_is_acknowledged_twice() {
    use rand::Rng;
    let state = tempfile::tempdir().unwrap();
    let dir = fixture("durable");
    let args = [dir.to_str().unwrap()];
    let mut acked: Vec<i64> = Vec::new();
    let mut rng = rand::rng();
    for round in 0..10 {
        let server = Server::start_in(state.path(), &args);
        let before = server.get_json("/peek?name=crash").as_i64().unwrap();
        let max_acked = acked.iter().copied().max().unwrap_or(0);
        assert!(
            before >= max_acked,
            "round {round}: {max_acked} was acknowledged but only {before} survived"
        );
        // Kill once the clients together got this many answers: a random moment that does not
        // depend on timing.
        let kill_after = rng.random_range(5..60);
        let (tx, rx) = std::sync::mpsc::channel::<i64>();
        let url = server.url("/increment?name=crash");
        let clients: Vec<_> = (0..4)
            .map(|_| {
                let (url, tx) = (url.clone(), tx.clone());
                std::thread::spawn(move || {
                    let client = crate::harness::client();
                    while let Ok(resp) = client.post(&url).send() {
                        match resp.json::<i64>() {
                            Ok(v) => {
                                if tx.send(v).is_err() {
                                    return;
                                }
                            }
                            Err(_) => return,
                        }
                    }
                })
            })
            .collect();
        drop(tx);
        let mut got = 0;
        while got < kill_after {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(v) => {
                    acked.push(v);
                    got += 1;
                }
                Err(e) => panic!("round {round}: clients stopped answering: {e}"),
            }
        }
        drop(server); // SIGKILL
        for c in clients {
            let _ = c.join();
        }
        // Answers that arrived before the kill count too.
        acked.extend(rx.try_iter());
    }
    let server = Server::start_in(state.path(), &args);
    let last = server.get_json("/peek?name=crash").as_i64().unwrap();
    let mut sorted = acked.clone();
    sorted.sort();
    let before_dedup = sorted.len();
    sorted.dedup();
    assert_eq!(sorted.len(), before_dedup, "a value was acknowledged twice");
    assert!(
        last >= *sorted.last().unwrap(),
        "an acknowledged increment was lost"
    );
}

#[test]
fn rpc_moves_readable_streams_both_ways() {
    let server = start();
    assert_eq!(
        server.get_json("/rpc-streams?name=streams"),
        json!({"sent": 100000, "received": 50000})
    );
}
