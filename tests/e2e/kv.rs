//! KV namespace bindings (`kv_namespaces`) against the real binary: the binding's conformance
//! suite (tests/fixtures/kv), the operation budget per invocation, a Durable Object using KV,
//! keys across a restart, and expiration seen by a server restarted "later".

use std::time::{Duration, Instant};

use crate::harness::{client, fixture, Server};

fn kv_fixture() -> String {
    fixture("kv").to_str().expect("utf-8 path").to_string()
}

#[test]
fn binding_conformance_suite() {
    let server = Server::start(&[&kv_fixture()]);
    server.run_cases(15);
    let log = server.stderr();
    assert!(!log.contains("not supported yet"), "{log}");
}

#[test]
fn each_invocation_has_its_own_budget_of_1000_operations() {
    let server = Server::start(&[&kv_fixture()]);
    // Two invocations one after the other, and two at once: each gets its own 1,000.
    for _ in 0..2 {
        let v = server.get_json("/ops/1000");
        assert_eq!(v["ok"], 1000, "{v}");
        assert!(v["error"].is_null(), "{v}");
    }
    let url = server.url("/ops/1003");
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                client()
                    .get(url)
                    .send()
                    .unwrap()
                    .json::<serde_json::Value>()
                    .unwrap()
            })
        })
        .collect();
    for t in threads {
        let v = t.join().unwrap();
        assert_eq!(v["ok"], 1000, "{v}");
        assert_eq!(
            v["error"], "Error: Too many API requests by single worker invocation.",
            "{v}"
        );
    }
}

#[test]
fn a_durable_object_reads_and_writes_kv() {
    let server = Server::start(&[&kv_fixture()]);
    let v = server.get_json("/do/alpha/write");
    assert_eq!(v["n"], 1, "{v}");
    assert_eq!(v["back"], "write 1", "{v}");
    assert_eq!(v["metadata"], serde_json::json!({"n": 1}), "{v}");
    assert_eq!(v["listed"], 1, "{v}");
    let v = server.get_json("/do/alpha/write");
    assert_eq!(v["n"], 2, "{v}");
    assert_eq!(v["back"], "write 2", "{v}");
    // The worker sees what the object wrote.
    let seen = server.get_json("/kv/do/alpha");
    assert_eq!(seen["value"], "write 2", "{seen}");

    let resp = server.get("/do/beta/critical");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().unwrap(), "in a critical section");

    // A write the object does not await still goes out (after its own storage write).
    let resp = server.get("/do/gamma/unawaited");
    assert_eq!(resp.text().unwrap(), "sent");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = server.get_json("/kv/do/gamma/unawaited");
        if seen["value"] == "written" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the unawaited write never landed: {seen}"
        );
        std::thread::yield_now();
    }
}

#[test]
fn keys_survive_a_restart_and_expire_for_a_later_server() {
    let state = tempfile::tempdir().unwrap();
    let http = client();
    {
        let mut server = Server::start_in(state.path(), &[&kv_fixture()]);
        for (key, ttl) in [("kept", None), ("short-lived", Some(120))] {
            let mut url = server.url(&format!("/kv/{key}"));
            if let Some(ttl) = ttl {
                url.push_str(&format!("?ttl={ttl}"));
            }
            let resp = http
                .put(url)
                .body(format!("value of {key}"))
                .send()
                .unwrap();
            assert_eq!(resp.status(), 200, "{}", server.stderr());
        }
        let v = server.get_json("/kv/short-lived");
        assert_eq!(v["value"], "value of short-lived", "{v}");
        assert!(v["listed"]["expiration"].is_number(), "{v}");
        let status = server.signal_and_wait(libc::SIGTERM, Duration::from_secs(60));
        assert!(status.success(), "{status:?}");
    }

    // The same state, the same clock: both keys are back.
    {
        let mut server = Server::start_in(state.path(), &[&kv_fixture()]);
        let v = server.get_json("/kv/kept");
        assert_eq!(v["value"], "value of kept", "{v}");
        assert_eq!(v["metadata"], serde_json::json!({"via": "http"}), "{v}");
        assert_eq!(
            v["listed"],
            serde_json::json!({"name": "kept", "metadata": {"via": "http"}})
        );
        let v = server.get_json("/kv/short-lived");
        assert_eq!(v["value"], "value of short-lived", "{v}");
        let status = server.signal_and_wait(libc::SIGTERM, Duration::from_secs(60));
        assert!(status.success(), "{status:?}");
    }

    // An hour later (the hidden clock knob): the key with a two-minute TTL is gone from reads
    // and lists, the other one is still there.
    let server = Server::start_in(state.path(), &[&kv_fixture(), "--kv-clock-offset", "3600"]);
    let v = server.get_json("/kv/short-lived");
    assert!(v["value"].is_null(), "{v}");
    assert!(v["metadata"].is_null(), "{v}");
    assert!(v["listed"].is_null(), "{v}");
    let v = server.get_json("/kv/kept");
    assert_eq!(v["value"], "value of kept", "{v}");
}
