//! `HTMLRewriter` against the real binary: the conformance suite of tests/fixtures/htmlrewriter
//! (workerd's html-rewriter cases, async handlers, token lifetimes, errors) and streaming —
//! rewritten bytes reach the client while the upstream body is still open.

use std::io::Read;
use std::time::{Duration, Instant};

use crate::harness::{fixture, Server};

fn html_fixture() -> String {
    fixture("htmlrewriter")
        .to_str()
        .expect("utf-8 path")
        .to_string()
}

#[test]
fn conformance_suite() {
    let server = Server::start(&[&html_fixture()]);
    server.run_cases(25);
}

/// Reads from `resp` until the text read so far contains `needle`; returns that text.
fn read_until(resp: &mut reqwest::blocking::Response, seen: &mut String, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buf = [0u8; 4096];
    while !seen.contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in time; got {seen:?}"
        );
        let n = resp.read(&mut buf).expect("read the body");
        assert!(n > 0, "body ended before {needle:?}; got {seen:?}");
        seen.push_str(std::str::from_utf8(&buf[..n]).expect("utf-8 body"));
    }
}

#[test]
fn rewritten_bytes_stream_before_the_input_ends() {
    let server = Server::start(&[&html_fixture()]);
    let mut resp = server.get("/stream?gate=streaming");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/html")
    );
    // The upstream's second half waits on the gate, which only this test opens: the first
    // rewritten element must arrive while the input is still open.
    let mut seen = String::new();
    read_until(
        &mut resp,
        &mut seen,
        r#"<p class="a" data-seen="1">FIRST</p>"#,
    );
    assert!(
        !seen.contains("second") && !seen.contains("SECOND"),
        "{seen}"
    );
    let released = server.get("/release?gate=streaming");
    assert_eq!(released.text().expect("release body"), "released");
    let mut rest = String::new();
    resp.read_to_string(&mut rest)
        .expect("the rest of the body");
    seen.push_str(&rest);
    assert_eq!(
        seen,
        r#"<html><body><p class="a" data-seen="1">FIRST</p><p class="a" data-seen="1">SECOND</p></body></html>"#
    );
}
