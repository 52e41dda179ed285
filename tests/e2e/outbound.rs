//! The global fetch(): private addresses refused by default, allowed with
//! --allow-private-fetch; ctx.waitUntil work runs after the response.

use std::time::Duration;

use crate::harness::{fixture, Server, Upstream};

fn fetch_path(upstream: &Upstream) -> String {
    format!("/fetch?url={}/from-worker", upstream.url)
}

#[test]
fn fetch_to_loopback_is_refused_by_default() {
    let upstream = Upstream::start();
    let server = Server::start(&[fixture("globals").to_str().unwrap()]);
    let v = server.get_json(&fetch_path(&upstream));
    assert_eq!(v["ok"], false, "{v}");
    let error = v["error"].as_str().unwrap_or_default().to_string();
    assert!(
        error.contains("127.0.0.1") || error.to_lowercase().contains("private"),
        "{error}"
    );
    assert!(
        upstream.requests.try_recv().is_err(),
        "the upstream must not have been reached"
    );
}

#[test]
fn fetch_to_loopback_works_with_allow_private_fetch() {
    let upstream = Upstream::start();
    let server = Server::start(&[
        fixture("globals").to_str().unwrap(),
        "--allow-private-fetch",
    ]);
    let v = server.get_json(&fetch_path(&upstream));
    assert_eq!(
        v,
        serde_json::json!({"ok": true, "status": 200, "body": "hello from upstream"})
    );
    assert_eq!(
        upstream.next_request(Duration::from_secs(5)),
        "GET /from-worker HTTP/1.1"
    );
}

#[test]
fn wait_until_runs_after_the_response() {
    let upstream = Upstream::start();
    let server = Server::start(&[
        fixture("globals").to_str().unwrap(),
        "--allow-private-fetch",
    ]);
    let resp = server.get(&format!("/wait-until?notify={}", upstream.url));
    assert_eq!(resp.text().unwrap(), "responded");
    assert_eq!(
        upstream.next_request(Duration::from_secs(30)),
        "GET /after-response HTTP/1.1"
    );
}
