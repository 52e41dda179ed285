//! Queues (`queues.producers` / `queues.consumers`) against the real binary, with the fixture
//! tests/fixtures/queues: its consumer records each delivery in KV and the tests read the
//! records over HTTP, polling until a deadline rather than waiting a fixed time.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{client, fixture, Server};

fn queues_fixture() -> String {
    fixture("queues").to_str().expect("utf-8 path").to_string()
}

fn post(server: &Server, path: &str, body: Value) {
    let resp = client()
        .post(server.url(path))
        .json(&body)
        .send()
        .expect("request");
    let status = resp.status();
    let text = resp.text().unwrap_or_default();
    assert_eq!(status, 200, "{path} {body}: {text}\n{}", server.stderr());
}

/// The consumer's records for `tag`, once `done` accepts them (or fails after 20 s).
fn seen_until(server: &Server, tag: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = server.get_json(&format!("/seen/{tag}"));
        let records = v.as_array().cloned().unwrap_or_default();
        if done(&records) {
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "gave up waiting for {tag}; records so far: {records:#?}\nstderr:\n{}",
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn producer_errors() {
    let server = Server::start(&[&queues_fixture()]);
    let resp = server.get("/errors");
    let status = resp.status();
    assert_eq!(status, 200, "{}", resp.text().unwrap_or_default());
    let log = server.stderr();
    assert!(!log.contains("not supported yet"), "{log}");
}

#[test]
fn each_content_type_reaches_the_consumer() {
    let server = Server::start(&[&queues_fixture()]);
    post(
        &server,
        "/send",
        json!({"body": "text:ok", "contentType": "text"}),
    );
    post(
        &server,
        "/send",
        json!({"body": {"tag": "json", "n": [1, 2]}, "contentType": "json"}),
    );
    post(
        &server,
        "/send",
        json!({"body": [1, 2, 255], "contentType": "bytes"}),
    );
    // No contentType: v8 (structured clone keeps the Date and the Map).
    post(
        &server,
        "/send",
        json!({"body": {"tag": "v8"}, "v8": "2026-01-02T03:04:05.000Z"}),
    );

    let text = seen_until(&server, "text", |r| !r.is_empty());
    assert_eq!(
        text[0]["body"],
        json!({"type": "string", "value": "text:ok"})
    );
    assert_eq!(text[0]["attempts"], 1);
    assert_eq!(text[0]["queue"], "jobs");
    assert_eq!(text[0]["timestampIsDate"], true);
    assert_eq!(text[0]["id"].as_str().map(str::len), Some(32), "{text:?}");
    let j = seen_until(&server, "json", |r| !r.is_empty());
    assert_eq!(
        j[0]["body"],
        json!({"type": "object", "value": {"tag": "json", "n": [1, 2]}})
    );
    let b = seen_until(&server, "bytes", |r| !r.is_empty());
    assert_eq!(
        b[0]["body"],
        json!({"type": "ArrayBuffer", "bytes": [1, 2, 255]})
    );
    let v = seen_until(&server, "v8", |r| !r.is_empty());
    assert_eq!(
        v[0]["body"],
        json!({"type": "v8", "when": "2026-01-02T03:04:05.000Z", "map": [["k", 1]], "tag": "v8"})
    );
}

#[test]
fn a_batch_send_is_delivered_as_one_batch() {
    let server = Server::start(&[&queues_fixture()]);
    let messages: Vec<Value> = (0..5)
        .map(|i| json!({"body": format!("batch:ok:{i}"), "contentType": "text"}))
        .collect();
    post(&server, "/send-batch", json!({ "messages": messages }));
    let records = seen_until(&server, "batch", |r| r.len() >= 5);
    assert_eq!(records.len(), 5, "{records:#?}");
    for r in &records {
        assert_eq!(r["batchSize"], 5, "{records:#?}");
        assert_eq!(r["attempts"], 1, "{records:#?}");
    }
}

#[test]
fn a_throwing_handler_retries_then_dead_letters() {
    let server = Server::start(&[&queues_fixture()]);
    post(
        &server,
        "/send",
        json!({"body": "doomed:throw", "contentType": "text"}),
    );
    // max_retries = 2: three deliveries on "jobs", then one on "jobs-dlq".
    let records = seen_until(&server, "doomed", |r| {
        r.iter().any(|x| x["queue"] == "jobs-dlq")
    });
    let mut attempts: Vec<(String, u64)> = records
        .iter()
        .map(|r| {
            (
                r["queue"].as_str().unwrap().to_string(),
                r["attempts"].as_u64().unwrap(),
            )
        })
        .collect();
    // Records are listed by key ("jobs-dlq" sorts before "jobs/"): order them as delivered.
    attempts.sort_by_key(|(q, n)| (q != "jobs", *n));
    assert_eq!(
        attempts,
        vec![
            ("jobs".to_string(), 1),
            ("jobs".to_string(), 2),
            ("jobs".to_string(), 3),
            ("jobs-dlq".to_string(), 1)
        ],
        "{records:#?}"
    );
    let ids: std::collections::HashSet<&str> =
        records.iter().filter_map(|r| r["id"].as_str()).collect();
    assert_eq!(
        ids.len(),
        1,
        "one message, the same id throughout: {records:#?}"
    );
}

#[test]
fn explicit_ack_and_retry_decide_over_the_handler_result() {
    let server = Server::start(&[&queues_fixture()]);
    post(
        &server,
        "/send",
        json!({"body": "again:retry-once", "contentType": "text"}),
    );
    let again = seen_until(&server, "again", |r| r.len() >= 2);
    assert_eq!(again[0]["attempts"], 1);
    assert_eq!(again[1]["attempts"], 2);

    // retry({delaySeconds}) holds the next attempt back.
    post(
        &server,
        "/send",
        json!({"body": "later:retry-later", "contentType": "text"}),
    );
    let later = seen_until(&server, "later", |r| r.len() >= 2);
    assert_eq!(later[1]["attempts"], 2, "{later:#?}");
    assert!(
        later[1]["waitedMs"].as_i64().unwrap() >= 950,
        "the retry waited its delay: {later:#?}"
    );

    post(
        &server,
        "/send",
        json!({"body": "all:retry-all", "contentType": "text"}),
    );
    let all = seen_until(&server, "all", |r| r.len() >= 2);
    assert_eq!(all[1]["attempts"], 2, "{all:#?}");

    // Acked, then the handler throws: the ack stands, so no second delivery. The queue has
    // one batch in flight at a time: a marker sent once the first delivery is seen goes in
    // the same batch as a (wrong) retry at the earliest, and a second marker sent once the
    // first is seen comes in a later batch, so by then any retry has been recorded.
    post(
        &server,
        "/send",
        json!({"body": "acked:ack-then-throw", "contentType": "text"}),
    );
    seen_until(&server, "acked", |r| !r.is_empty());
    post(
        &server,
        "/send",
        json!({"body": "marker:ok", "contentType": "text"}),
    );
    seen_until(&server, "marker", |r| !r.is_empty());
    post(
        &server,
        "/send",
        json!({"body": "marker2:ok", "contentType": "text"}),
    );
    seen_until(&server, "marker2", |r| !r.is_empty());
    let acked = server.get_json("/seen/acked");
    assert_eq!(acked.as_array().map(Vec::len), Some(1), "{acked:#?}");
    assert!(
        server.stderr().contains("thrown after ack()"),
        "the handler's error is logged"
    );
}

#[test]
fn delays_hold_messages_back() {
    let server = Server::start(&[&queues_fixture()]);
    post(
        &server,
        "/send",
        json!({"body": "delayed:ok", "contentType": "text", "delaySeconds": 2}),
    );
    // The producer's delivery_delay (1 s) applies when the send gives none.
    post(
        &server,
        "/send",
        json!({"body": "producer-delay:ok", "contentType": "text", "via": "LATER"}),
    );
    let d = seen_until(&server, "delayed", |r| !r.is_empty());
    assert!(d[0]["waitedMs"].as_i64().unwrap() >= 1900, "{d:#?}");
    let p = seen_until(&server, "producer-delay", |r| !r.is_empty());
    assert!(p[0]["waitedMs"].as_i64().unwrap() >= 900, "{p:#?}");
}

#[test]
fn a_sent_message_survives_kill_9_and_is_delivered_after_restart() {
    let state = tempfile::tempdir().unwrap();
    let fixture = queues_fixture();
    {
        let server = Server::start_in(state.path(), &[&fixture]);
        // Held back 3 s, so the server is killed before it is due: once `send` resolved the
        // message must be on disk.
        post(
            &server,
            "/send",
            json!({"body": "survivor:ok", "contentType": "text", "delaySeconds": 3}),
        );
        drop(server); // SIGKILL
    }
    let server = Server::start_in(state.path(), &[&fixture]);
    let records = seen_until(&server, "survivor", |r| !r.is_empty());
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0]["attempts"], 1, "{records:#?}");
    assert!(
        records[0]["waitedMs"].as_i64().unwrap() >= 2900,
        "{records:#?}"
    );
}

#[test]
fn a_durable_object_sends() {
    let server = Server::start(&[&queues_fixture()]);
    let resp = server.get("/do-send");
    assert_eq!(resp.status(), 200, "{}", server.stderr());
    assert_eq!(resp.text().unwrap(), "1");
    let records = seen_until(&server, "from-do", |r| r.len() >= 2);
    let mut bodies: Vec<&str> = records
        .iter()
        .filter_map(|r| r["body"]["value"].as_str())
        .collect();
    bodies.sort();
    assert_eq!(
        bodies,
        vec!["from-do:ok:1", "from-do:ok:1b"],
        "{records:#?}"
    );
}
