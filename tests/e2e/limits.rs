//! Limits: CPU (infinite loop), heap (memory bomb), a script that throws while loading. Each is
//! answered with an error while well-behaved code on the same server keeps serving.

use std::thread;

use crate::harness::{client, fixture, Server};

fn limits_server() -> Server {
    let main = fixture("limits").join("wrangler.toml");
    let good = fixture("limits-good").join("wrangler.toml");
    Server::start(&[
        "-c",
        main.to_str().unwrap(),
        "-c",
        good.to_str().unwrap(),
        "--threads",
        "2",
    ])
}

fn assert_healthy(server: &Server) {
    let ok = server.get("/ok");
    assert_eq!(ok.status(), 200, "{}", server.stderr());
    assert_eq!(ok.text().unwrap(), "ok");
    let good = server.get("/good");
    assert_eq!(good.status(), 200, "{}", server.stderr());
    assert_eq!(good.text().unwrap(), "good script serving");
}

#[test]
fn infinite_loop_is_stopped_with_a_5xx() {
    let server = limits_server();
    assert_healthy(&server);
    let looping = {
        let url = server.url("/loop");
        thread::spawn(move || client().get(url).send().map(|r| r.status()))
    };
    // The other script answers while the loop runs (or right after it is stopped).
    assert_eq!(server.get("/good").status(), 200);
    let status = looping
        .join()
        .unwrap()
        .expect("the loop request gets an answer");
    assert!(status.is_server_error(), "loop answered {status}");
    let log = server.log_where(|l| l.to_lowercase().contains("cpu"));
    assert!(
        log.to_lowercase().contains("cpu"),
        "no CPU-limit log line:\n{log}"
    );
    assert_healthy(&server);
    // And again: the isolate that was stopped is usable.
    assert!(server.get("/loop").status().is_server_error());
    assert_healthy(&server);
}

#[test]
fn memory_bomb_is_stopped_and_later_requests_work() {
    let server = limits_server();
    assert_healthy(&server);
    let status = server.get("/bomb").status();
    assert!(status.is_server_error(), "bomb answered {status}");
    let log = server.log_where(|l| l.to_lowercase().contains("memory"));
    assert!(
        log.to_lowercase().contains("memory"),
        "no memory-limit log line:\n{log}"
    );
    assert_healthy(&server);
    assert!(server.get("/bomb").status().is_server_error());
    assert_healthy(&server);
}

#[test]
fn script_throwing_at_load_names_file_and_line() {
    let failure = Server::try_start(&[fixture("throws").to_str().unwrap()])
        .err()
        .expect("a script that throws while loading must not serve");
    assert_eq!(
        failure.status.and_then(|s| s.code()),
        Some(1),
        "{}",
        failure.stderr
    );
    assert!(
        failure.stderr.contains("boom at load time"),
        "{}",
        failure.stderr
    );
    assert!(failure.stderr.contains("index.js:3"), "{}", failure.stderr);
}

#[test]
fn service_binding_to_a_script_throwing_at_load_answers_500_and_the_primary_serves() {
    let front = fixture("broken-binding/front").join("wrangler.toml");
    let back = fixture("broken-binding/back").join("wrangler.toml");
    let server = Server::start(&[
        "-c",
        front.to_str().unwrap(),
        "-c",
        back.to_str().unwrap(),
        "--threads",
        "2",
    ]);
    let ok = server.get("/");
    assert_eq!(ok.status(), 200, "{}", server.stderr());
    assert_eq!(ok.text().unwrap(), "front serving");
    // Both executor threads answer the broken binding the same way.
    for _ in 0..4 {
        let resp = server.get("/back");
        assert_eq!(resp.status(), 500, "{}", server.stderr());
        let body = resp.text().unwrap();
        assert!(body.contains("back fails at load time"), "{body}");
        assert!(body.contains("back/src/index.js:3"), "{body}");
        let ok = server.get("/");
        assert_eq!(ok.status(), 200, "{}", server.stderr());
        assert_eq!(ok.text().unwrap(), "front serving");
    }
    let log = server
        .log_where(|l| l.contains("back fails at load time") && l.contains("back/src/index.js:3"));
    assert!(
        log.contains("back fails at load time") && log.contains("back/src/index.js:3"),
        "the load error is not logged with file and line:\n{log}"
    );
}
