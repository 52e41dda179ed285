//! The Cache API (`caches.default`, `caches.open`) against the real binary: the conformance
//! suite of tests/fixtures/cache (put/match/delete, Cache-Control, Vary, conditionals, ranges,
//! named caches, workerd's errors), `max-age` expiry with the cache's clock moved forward
//! through `CINDER_CACHE_CLOCK_FILE` (no sleeping), entries surviving a restart, and expired
//! entries swept from disk.

use crate::harness::{fixture, Server};

fn cache_fixture() -> String {
    fixture("cache").to_str().expect("utf-8 path").to_string()
}

#[test]
fn conformance_suite() {
    let server = Server::start(&[&cache_fixture()]);
    server.run_cases(12);
}

/// `(status, body, x-cache-status)` of `/get/<key>`.
fn get(server: &Server, path: &str) -> (u16, String, String) {
    let resp = server.get(path);
    let status = resp.status().as_u16();
    let cache_status = resp
        .headers()
        .get("x-cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (status, resp.text().expect("body"), cache_status)
}

#[test]
fn max_age_expires_when_the_clock_passes_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = dir.path().join("clock-offset-ms");
    let clock_env = clock.to_str().expect("utf-8 path");
    let server = Server::start_with_env(
        &[&cache_fixture()],
        &[("CINDER_CACHE_CLOCK_FILE", clock_env)],
    );
    assert_eq!(
        server.get("/put/short?cc=max-age%3D60").text().unwrap(),
        "stored"
    );
    assert_eq!(
        server.get("/put/long?cc=max-age%3D3600").text().unwrap(),
        "stored"
    );
    assert_eq!(
        get(&server, "/get/short"),
        (200, "body of short".into(), "HIT".into())
    );

    // 59 s later: still fresh.
    std::fs::write(&clock, "59000").expect("move the clock");
    assert_eq!(get(&server, "/get/short").0, 200);
    // 61 s later: the 60 s entry has expired, the hour-long one has not.
    std::fs::write(&clock, "61000").expect("move the clock");
    assert_eq!(
        get(&server, "/get/short"),
        (404, "miss".into(), String::new())
    );
    assert_eq!(
        get(&server, "/get/long"),
        (200, "body of long".into(), "HIT".into())
    );
}

#[test]
fn entries_survive_a_restart() {
    let state = tempfile::tempdir().expect("temp dir");
    {
        let server = Server::start_in(state.path(), &[&cache_fixture()]);
        assert_eq!(server.get("/put/kept").text().unwrap(), "stored");
        assert_eq!(
            server.get("/put/named?cache=assets").text().unwrap(),
            "stored"
        );
        assert_eq!(get(&server, "/get/kept").0, 200);
    }
    assert!(
        state.path().join("cache").is_dir(),
        "the cache lives under <state_dir>/cache"
    );
    let server = Server::start_in(state.path(), &[&cache_fixture()]);
    assert_eq!(
        get(&server, "/get/kept"),
        (200, "body of kept".into(), "HIT".into())
    );
    assert_eq!(
        get(&server, "/get/named?cache=assets"),
        (200, "body of named".into(), "HIT".into())
    );
    assert_eq!(
        get(&server, "/get/named").0,
        404,
        "named cache is not the default"
    );
}

/// Files under `dir`, recursively.
fn files_under(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.map_while(Result::ok)
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => files_under(&e.path()),
                    _ => 1,
                })
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn expired_entries_are_swept_from_disk() {
    let state = tempfile::tempdir().expect("temp dir");
    let clock = state.path().join("clock-offset-ms");
    let clock_env = [(
        "CINDER_CACHE_CLOCK_FILE",
        clock.to_str().expect("utf-8 path"),
    )];
    let cache_dir = state.path().join("cache");
    {
        let server = Server::start_full(Some(state.path()), &[&cache_fixture()], &clock_env);
        assert_eq!(
            server.get("/put/short?cc=max-age%3D60").text().unwrap(),
            "stored"
        );
        assert_eq!(
            server.get("/put/long?cc=max-age%3D3600").text().unwrap(),
            "stored"
        );
    }
    assert_eq!(files_under(&cache_dir), 4, "a meta and a body per entry");
    // A minute later the next process sweeps the expired entry away (at start, then every
    // minute), without any request touching it.
    std::fs::write(&clock, "61000").expect("move the clock");
    let server = Server::start_full(Some(state.path()), &[&cache_fixture()], &clock_env);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while files_under(&cache_dir) != 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the expired entry's files are still on disk: {} files\n{}",
            files_under(&cache_dir),
            server.stderr()
        );
        // Polling a condition the server makes true; the deadline above fails the test.
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        get(&server, "/get/long"),
        (200, "body of long".into(), "HIT".into())
    );
}
