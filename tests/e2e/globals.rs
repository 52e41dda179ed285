//! Every Workers global the runtime promises, exercised from JS (tests/fixtures/globals).

use crate::harness::{fixture, Server};

/// The checks the fixture runs; each must report "ok".
const CHECKS: &[&str] = &[
    "Request",
    "Response",
    "ResponseStreamingBody",
    "Headers",
    "URL",
    "URLSearchParams",
    "TextEncoderDecoder",
    "cryptoGetRandomValues",
    "cryptoRandomUUID",
    "subtleDigest",
    "subtleHmac",
    "subtleAesGcm",
    "subtleEcdsa",
    "subtleEd25519",
    "streams",
    "structuredClone",
    "atobBtoa",
    "timers",
    "AbortController",
    "EventTarget",
    "Blob",
    "FormData",
    "console",
    "navigator",
    "WebSocketPair",
    "URLPattern",
    "scheduler",
];

#[test]
fn every_global_behaves() {
    let server = Server::start(&[fixture("globals").to_str().unwrap()]);
    let results = server.get_json("/checks");
    let failed: Vec<String> = CHECKS
        .iter()
        .filter(|name| results[**name] != "ok")
        .map(|name| format!("{name}: {}", results[*name]))
        .collect();
    assert!(failed.is_empty(), "failing globals:\n{}", failed.join("\n"));
    // console.* reaches the server log.
    let log = server.log_where(|l| l.contains("console.log from the globals fixture"));
    assert!(
        log.contains("console.log from the globals fixture"),
        "{log}"
    );
}

#[test]
fn request_url_is_absolute_and_body_arrives() {
    let server = Server::start(&[fixture("globals").to_str().unwrap()]);
    let resp = crate::harness::client()
        .post(server.url("/request?a=1"))
        .body("hello body")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().unwrap();
    assert_eq!(v["url"], server.url("/request?a=1"));
    assert_eq!(v["method"], "POST");
    assert_eq!(v["ip"], "127.0.0.1");
    assert_eq!(v["body"], "hello body");
    assert_eq!(
        v["cf"],
        serde_json::json!({"colo": "LCL", "country": "XX", "ok": true})
    );
}

#[test]
fn an_exception_in_fetch_is_a_500_and_the_worker_keeps_serving() {
    let server = Server::start(&[fixture("globals").to_str().unwrap()]);
    let resp = server.get("/throws");
    assert_eq!(resp.status(), 500);
    let log = server.log_where(|l| l.contains("thrown from fetch"));
    assert!(log.contains("thrown from fetch"), "{log}");
    assert_eq!(server.get("/").status(), 200);
}

#[test]
fn keep_alive_connection_serves_many_requests() {
    let server = Server::start(&[fixture("globals").to_str().unwrap()]);
    // One client reuses its pooled HTTP/1.1 connection.
    let client = crate::harness::client();
    for _ in 0..20 {
        let resp = client.get(server.url("/")).send().unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().unwrap(), "globals fixture");
    }
}
