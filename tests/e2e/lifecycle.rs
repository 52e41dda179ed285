//! Graceful shutdown: SIGTERM/SIGINT let in-flight requests finish, then exit 0.

use std::thread;
use std::time::Duration;

use crate::harness::{client, fixture, Server, Upstream};

#[test]
fn sigterm_finishes_in_flight_requests_then_exits_zero() {
    let upstream = Upstream::start();
    let mut server = Server::start(&[
        fixture("globals").to_str().unwrap(),
        "--allow-private-fetch",
    ]);
    let url = server.url(&format!("/slow?ms=1000&notify={}", upstream.url));
    let in_flight = thread::spawn(move || {
        let resp = client()
            .get(url)
            .send()
            .expect("in-flight request answered");
        (resp.status(), resp.text().unwrap_or_default())
    });
    // The worker tells the upstream once it is handling the request.
    assert_eq!(
        upstream.next_request(Duration::from_secs(30)),
        "GET /started HTTP/1.1"
    );
    let status = server.signal_and_wait(libc::SIGTERM, Duration::from_secs(30));
    let (code, body) = in_flight.join().unwrap();
    assert_eq!(code, 200);
    assert_eq!(body, "slow done");
    assert_eq!(status.code(), Some(0), "{}", server.stderr());
    assert!(server.stderr().contains("SIGTERM"), "{}", server.stderr());
}

#[test]
fn sigint_on_an_idle_server_exits_zero() {
    let mut server = Server::start(&[fixture("globals").to_str().unwrap()]);
    assert_eq!(server.get("/").status(), 200);
    let status = server.signal_and_wait(libc::SIGINT, Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{}", server.stderr());
}

#[test]
fn a_handler_that_can_never_settle_gets_workerds_500_and_the_worker_keeps_serving() {
    let server = Server::start(&[fixture("globals").to_str().unwrap()]);
    let resp = server.get("/never");
    assert_eq!(resp.status(), 500);
    assert_eq!(
        resp.text().unwrap().trim(),
        "The script will never generate a response."
    );
    assert_eq!(server.get("/").status(), 200);
}
