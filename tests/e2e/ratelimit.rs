//! The distributed rate limiter example (`examples/ratelimit`) as shipped: concurrent clients
//! never get more than their token bucket allows, a 429 carries a `Retry-After` that is enough,
//! keys are independent, decisions survive a restart, and an idle key's bucket is deleted by
//! its alarm.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{client, example, Server};

fn ratelimit() -> String {
    example("ratelimit")
        .to_str()
        .expect("utf-8 path")
        .to_string()
}

struct Answer {
    status: u16,
    retry_after: Option<u64>,
    remaining: Option<u64>,
    body: Value,
}

fn call(c: &reqwest::blocking::Client, server: &Server, key: &str) -> Answer {
    let resp = c
        .get(server.url("/api/work"))
        .header("X-Client-Key", key)
        .send()
        .unwrap_or_else(|e| panic!("GET /api/work as {key}: {e}"));
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().parse::<u64>().unwrap())
    };
    let (retry_after, remaining) = (header("retry-after"), header("ratelimit-remaining"));
    let status = resp.status().as_u16();
    let text = resp.text().expect("body");
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    Answer {
        status,
        retry_after,
        remaining,
        body,
    }
}

/// A 429 as the README promises it: whole seconds, rounded up from the exact wait.
fn check_refusal(a: &Answer, key: &str, max_wait_ms: u64) -> u64 {
    assert_eq!(a.status, 429);
    assert_eq!(a.body["error"], "rate limited");
    assert_eq!(a.body["key"], key);
    let ms = a.body["retryAfterMs"].as_u64().expect("retryAfterMs");
    assert!((1..=max_wait_ms).contains(&ms), "wait of {ms} ms for {key}");
    assert_eq!(
        a.retry_after,
        Some(ms.div_ceil(1000)),
        "Retry-After for a wait of {ms} ms"
    );
    assert_eq!(a.remaining, Some(0));
    ms
}

/// Per key: (allowed, refused, first send, last answer).
type Tally = (u32, u32, Option<Instant>, Option<Instant>);

#[test]
fn concurrent_clients_never_exceed_their_budget_and_keys_are_independent() {
    // 5 at once, then 2 per second: a token every 500 ms.
    let server = Arc::new(Server::start(&[
        &ratelimit(),
        "--var",
        "RL_CAPACITY:5",
        "--var",
        "RL_RATE_PER_SEC:2",
    ]));
    // Six keys with two clients each and one key shared by four clients, all at once.
    let mut clients: Vec<String> = (0..6)
        .flat_map(|k| [format!("k{k}"), format!("k{k}")])
        .collect();
    clients.extend((0..4).map(|_| "shared".to_string()));
    let tally: Arc<Mutex<BTreeMap<String, Tally>>> = Default::default();
    let threads: Vec<_> = clients
        .into_iter()
        .map(|key| {
            let (server, tally) = (server.clone(), tally.clone());
            thread::spawn(move || {
                let c = client();
                for _ in 0..30 {
                    let sent = Instant::now();
                    let a = call(&c, &server, &key);
                    let done = Instant::now();
                    let mut t = tally.lock().unwrap();
                    let e = t.entry(key.clone()).or_default();
                    e.2 = Some(e.2.map_or(sent, |s| s.min(sent)));
                    e.3 = Some(e.3.map_or(done, |d| d.max(done)));
                    match a.status {
                        200 => {
                            assert_eq!(a.body["key"], key.as_str());
                            assert!(a.remaining.is_some_and(|r| r < 5));
                            e.0 += 1;
                        }
                        _ => {
                            check_refusal(&a, &key, 500);
                            e.1 += 1;
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let tally = tally.lock().unwrap();
    assert_eq!(tally.len(), 7);
    for (key, (allowed, refused, first, last)) in tally.iter() {
        let span = (last.unwrap() - first.unwrap()).as_secs_f64();
        // The server decided within [first send, last answer]: at most the burst plus what
        // refilled over that span.
        let budget = 5.0 + 2.0 * span;
        assert!(
            f64::from(*allowed) <= budget,
            "{key}: {allowed} allowed in {span:.2} s, budget {budget:.1}"
        );
        assert!(
            *allowed >= 5,
            "{key}: the burst goes through ({allowed} allowed)"
        );
        assert!(*refused > 0, "{key}: nothing refused in {span:.2} s");
    }

    // A key that has never been seen starts with a full bucket, whatever the others did.
    let c = client();
    for i in 0..5 {
        let a = call(&c, &server, "newcomer");
        assert_eq!(a.status, 200, "request {i} of a fresh key");
        assert_eq!(a.remaining, Some(4 - i));
    }
}

#[test]
fn waiting_as_long_as_a_refusal_says_is_enough() {
    let server = Server::start(&[
        &ratelimit(),
        "--var",
        "RL_CAPACITY:3",
        "--var",
        "RL_RATE_PER_SEC:4",
    ]);
    let c = client();
    let refusal = loop {
        let a = call(&c, &server, "patient");
        if a.status != 200 {
            break a;
        }
    };
    let ms = check_refusal(&refusal, "patient", 250);
    // The wait is what this test checks, not a way to synchronise with the server.
    thread::sleep(Duration::from_millis(ms));
    assert_eq!(call(&c, &server, "patient").status, 200);

    // A cost above one token is charged whole, and refused costs are clear errors.
    let resp = c
        .get(server.url("/api/work"))
        .header("X-Client-Key", "costly")
        .header("X-Cost", "3")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["ratelimit-remaining"], "0");
    let resp = c
        .get(server.url("/api/work"))
        .header("X-Client-Key", "costly")
        .header("X-Cost", "4")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.text().unwrap(), "cost must be an integer from 1 to 3");
}

#[test]
fn decisions_survive_a_restart() {
    // One token per 100 s: nothing refills during the test.
    let args = [
        &ratelimit() as &str,
        "--var",
        "RL_CAPACITY:3",
        "--var",
        "RL_RATE_PER_SEC:0.01",
    ];
    let state = tempfile::tempdir().expect("state dir");
    let server = Server::start_in(state.path(), &args);
    let c = client();
    for i in 0..3 {
        assert_eq!(call(&c, &server, "eve").status, 200, "request {i}");
    }
    let before = check_refusal(&call(&c, &server, "eve"), "eve", 100_000);
    // Killed, not shut down: every allowed request had been recorded durably.
    drop(server);
    let server = Server::start_in(state.path(), &args);
    let after = check_refusal(&call(&c, &server, "eve"), "eve", 100_000);
    assert!(
        after < before,
        "the wait shrinks with time: {before} ms, then {after} ms"
    );
    assert_eq!(call(&c, &server, "someone-else").status, 200);
}

#[test]
fn an_idle_key_is_deleted_by_its_alarm_once_its_bucket_is_full() {
    let server = Server::start(&[
        &ratelimit(),
        "--var",
        "RL_CAPACITY:2",
        "--var",
        "RL_RATE_PER_SEC:4",
    ]);
    let c = client();
    assert_eq!(call(&c, &server, "idle").status, 200);
    let limits = server.get_json("/limits?key=idle");
    assert!(limits["stored"]["tokens"].is_number(), "{limits}");
    assert!(limits["alarm"].is_number(), "{limits}");
    // Refilled within 250 ms; the alarm then deletes the bucket and is not set again.
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let limits = server.get_json("/limits?key=idle");
        if limits["stored"].is_null() && limits["alarm"].is_null() {
            assert_eq!(limits["tokens"], 2);
            break;
        }
        assert!(
            Instant::now() < end,
            "the idle bucket is still stored: {limits}"
        );
        thread::sleep(Duration::from_millis(50));
    }
    // A deleted bucket is a full one.
    assert_eq!(call(&c, &server, "idle").remaining, Some(1));
}
