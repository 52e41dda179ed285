//! Operating a node: `--admin` (`/metrics`, `/healthz`), `--log-format json` request lines,
//! and `cinder do list/get` on a stopped and on a running node's state directory.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{cinder, client, fixture, Server};

/// The admin address the server printed before its Ready line.
fn admin_base(server: &Server) -> String {
    server
        .stdout()
        .lines()
        .find_map(|l| l.strip_prefix("Admin (/metrics, /healthz) on "))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| panic!("no admin line on stdout:\n{}", server.stdout()))
}

/// One scrape, parsed by a Prometheus text-format parser: metric name + labels -> value.
struct Scrape(prometheus_parse::Scrape);

impl Scrape {
    fn take(admin: &str) -> Scrape {
        let resp = client().get(format!("{admin}/metrics")).send().unwrap();
        assert_eq!(resp.status(), 200);
        let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
        let text = resp.text().unwrap();
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
        let lines = text.lines().map(|l| Ok(l.to_string()));
        Scrape(prometheus_parse::Scrape::parse(lines).expect("parsable exposition"))
    }

    fn value(&self, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0
            .samples
            .iter()
            .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match &s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                other => panic!("{metric} is not a single value: {other:?}"),
            })
    }

    /// A histogram's cumulative buckets, `(le, count)`.
    fn buckets(&self, metric: &str) -> Vec<(f64, f64)> {
        let s = self
            .0
            .samples
            .iter()
            .find(|s| s.metric == metric)
            .unwrap_or_else(|| panic!("no histogram {metric}"));
        match &s.value {
            prometheus_parse::Value::Histogram(b) => {
                b.iter().map(|h| (h.less_than, h.count)).collect()
            }
            other => panic!("{metric} is not a histogram: {other:?}"),
        }
    }
}

/// Scrapes until `done` accepts the scrape (events are counted when they end, which may be a
/// moment after their response arrived), or fails after 20 s.
fn scrape_until(admin: &str, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = Scrape::take(admin);
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "metrics never showed {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn metrics_count_what_was_served_and_healthz_answers() {
    let ops = fixture("ops");
    let server = Server::start(&[ops.to_str().unwrap(), "--admin", "127.0.0.1:0"]);
    let admin = admin_base(&server);

    let health = client().get(format!("{admin}/healthz")).send().unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().unwrap(), "ok");

    // A known load: 5 × 200 from the worker, 3 × 404, 2 × 200 through a Durable Object.
    for _ in 0..5 {
        assert_eq!(server.get("/").status(), 200);
    }
    for _ in 0..3 {
        assert_eq!(server.get("/missing").status(), 404);
    }
    for name in ["a", "b"] {
        assert_eq!(server.get(&format!("/do/fill?name={name}")).status(), 200);
    }

    // Stateless events: 10 requests; object events: 2 (their CPU is in the same histogram).
    let s = scrape_until(&admin, "12 finished events", |s| {
        s.value("cinder_event_cpu_milliseconds_count", &[]) >= Some(12.0)
    });
    assert_eq!(
        s.value(
            "cinder_requests_total",
            &[("worker", "ops"), ("status", "200")]
        ),
        Some(7.0)
    );
    assert_eq!(
        s.value(
            "cinder_requests_total",
            &[("worker", "ops"), ("status", "404")]
        ),
        Some(3.0)
    );
    // No other status was counted.
    let total: f64 =
        s.0.samples
            .iter()
            .filter(|x| x.metric == "cinder_requests_total")
            .map(|x| match x.value {
                prometheus_parse::Value::Untyped(v) | prometheus_parse::Value::Counter(v) => v,
                _ => 0.0,
            })
            .sum();
    assert_eq!(total, 10.0);
    assert_eq!(
        s.value("cinder_event_cpu_milliseconds_count", &[]),
        Some(12.0)
    );
    let cpu = s.buckets("cinder_event_cpu_milliseconds");
    assert_eq!(
        cpu.last().map(|b| (b.0.is_infinite(), b.1)),
        Some((true, 12.0))
    );
    assert!(
        cpu.windows(2).all(|w| w[0].1 <= w[1].1),
        "cumulative: {cpu:?}"
    );

    assert!(s.value("cinder_isolates", &[]) >= Some(1.0));
    assert_eq!(s.value("cinder_durable_objects_live", &[]), Some(2.0));
    assert_eq!(s.value("cinder_durable_objects_hibernated", &[]), Some(0.0));
    assert_eq!(s.value("cinder_queued_events", &[]), Some(0.0));
    assert_eq!(s.value("cinder_websockets_open", &[]), Some(0.0));
    // Each fill is one write batch, made durable before its response left.
    let commits = s.value("cinder_storage_commit_seconds_count", &[]).unwrap();
    assert!(commits >= 2.0, "{commits}");
    let grouped = s.buckets("cinder_storage_writes_per_commit");
    let synced_batches = s
        .value("cinder_storage_writes_per_commit_sum", &[])
        .unwrap();
    assert!(synced_batches >= 2.0, "{grouped:?}");
    assert!(s.value("cinder_storage_fsync_seconds_count", &[]) >= Some(1.0));

    // Never on the public listener: there the worker answers.
    let public = server.get("/metrics").text().unwrap();
    assert_eq!(public, "hello from ops");
    let s = scrape_until(&admin, "the 11th request", |s| {
        s.value(
            "cinder_requests_total",
            &[("worker", "ops"), ("status", "200")],
        ) == Some(8.0)
    });
    assert!(s.value("cinder_requests_total", &[("status", "404")]) == Some(3.0));
}

/// The JSON objects of the server's log that `pick` accepts.
fn json_lines(log: &str, pick: impl Fn(&Value) -> bool) -> Vec<Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| pick(v))
        .collect()
}

#[test]
fn json_logs_carry_one_line_per_request_with_its_fields() {
    let ops = fixture("ops");
    let server = Server::start(&[ops.to_str().unwrap(), "--log-format", "json"]);
    assert_eq!(server.get("/burn").text().unwrap(), "burned true");
    assert_eq!(server.get("/missing").status(), 404);

    let is_request = |v: &Value| v["message"] == "request finished" && v["event"] == "fetch";
    let log = server.log_where(|log| json_lines(log, is_request).len() >= 2);
    // Every line of the log is JSON (nothing else is written to stderr).
    for line in log.lines() {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{v}");
    }
    let lines = json_lines(&log, is_request);
    assert_eq!(lines.len(), 2, "{log}");
    let burn = lines.iter().find(|v| v["status"] == 200).expect("the 200");
    let missing = lines.iter().find(|v| v["status"] == 404).expect("the 404");
    for v in [burn, missing] {
        assert_eq!(v["worker"], "ops", "{v}");
        assert_eq!(v["level"], "INFO", "{v}");
        let id = v["request_id"].as_str().expect("request_id");
        assert_eq!(id.len(), 16, "{v}");
        assert!(v["duration_ms"].as_f64().is_some_and(|d| d >= 0.0), "{v}");
        assert!(v["cpu_ms"].as_f64().is_some(), "{v}");
    }
    assert_ne!(burn["request_id"], missing["request_id"]);
    // Three million square roots take measurable CPU, and no more wall time than CPU is
    // impossible to beat.
    let cpu = burn["cpu_ms"].as_f64().unwrap();
    assert!(cpu > 1.0, "{burn}");
    assert!(burn["duration_ms"].as_f64().unwrap() >= cpu * 0.9, "{burn}");
}

#[test]
fn text_logs_carry_the_same_request_fields() {
    let ops = fixture("ops");
    let server = Server::start(&[ops.to_str().unwrap()]);
    assert_eq!(server.get("/missing").status(), 404);
    let log = server.log_where(|log| log.contains("request finished"));
    let line = log
        .lines()
        .find(|l| l.contains("request finished"))
        .unwrap_or_else(|| panic!("no request line:\n{log}"));
    for field in [
        "worker=\"ops\"",
        "request_id=\"",
        "event=\"fetch\"",
        "status=404",
        "duration_ms=",
        "cpu_ms=",
    ] {
        assert!(line.contains(field), "{field} missing from: {line}");
    }
}

/// Runs `cinder do ARGS`; `(exit ok, stdout, stderr)`.
fn cinder_do(args: &[&str]) -> (bool, String, String) {
    let out = cinder()
        .arg("do")
        .args(args)
        .output()
        .expect("run cinder do");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn do_json(args: &[&str]) -> Value {
    let (ok, stdout, stderr) = cinder_do(args);
    assert!(ok, "cinder do {args:?} failed: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// What `VALUES()` of the fixture decodes to.
fn expected_values() -> Value {
    json!({
        "int": 42,
        "neg": -7,
        "float": 1.5,
        "big": {"$type": "BigInt", "value": "1234567890123456789012345678901234567890"},
        "latin1": "héllo",
        "twoByte": "snow ☃ and 💡",
        "nested": {"a": 1, "b": [true, null, "x"], "c": {"d": "e"}},
        "date": {"$type": "Date", "value": "2024-05-06T07:08:09.010Z"},
        "map": {"$type": "Map", "entries": [["k", 1], ["l", [2]]]},
        "set": {"$type": "Set", "values": ["a", 3]},
        "buf": {"$type": "ArrayBuffer", "base64": "AQID"},
        "bytes": {"$type": "Uint8Array", "base64": "+vv8"},
        "nan": {"$type": "number", "value": "NaN"},
    })
}

fn check_state(state: &Path, alpha: &str, beta: &str) {
    let dir = state.to_str().unwrap();
    let listed = do_json(&["list", "--state", dir, "--json"]);
    let objects = listed["objects"].as_array().unwrap();
    let by_id: HashMap<&str, &Value> = objects
        .iter()
        .map(|o| (o["id"].as_str().unwrap(), o))
        .collect();
    assert_eq!(by_id.len(), 2, "{listed}");
    assert_eq!(by_id[alpha]["namespace"], "ops/Store");
    assert_eq!(by_id[alpha]["keys"], 13, "{listed}");
    assert_eq!(by_id[beta]["keys"], 1, "{listed}");
    assert!(by_id[alpha]["bytes"].as_u64().unwrap() > by_id[beta]["bytes"].as_u64().unwrap());
    assert_eq!(
        listed["namespaces"],
        json!([{
            "namespace": "ops/Store",
            "objects": 2,
            "keys": 14,
            "bytes": by_id[alpha]["bytes"].as_u64().unwrap() + by_id[beta]["bytes"].as_u64().unwrap(),
        }])
    );
    // Filtered by class name, in the table form.
    let (ok, table, err) = cinder_do(&["list", "--state", dir, "Store"]);
    assert!(ok, "{err}");
    assert!(table.starts_with("NAMESPACE"), "{table}");
    assert!(table.contains(alpha) && table.contains(beta), "{table}");

    assert_eq!(
        do_json(&["get", "--state", dir, "Store", alpha]),
        expected_values()
    );
    assert_eq!(
        do_json(&["get", "--state", dir, "ops/Store", alpha, "date"]),
        json!({"$type": "Date", "value": "2024-05-06T07:08:09.010Z"})
    );
    assert_eq!(
        do_json(&["get", "--state", dir, "Store", beta]),
        json!({"greeting": "hi there"})
    );

    let (ok, _, err) = cinder_do(&["get", "--state", dir, "Store", alpha, "nope"]);
    assert!(!ok && err.contains("has no key \"nope\""), "{err}");
    let (ok, _, err) = cinder_do(&["get", "--state", dir, "Store", "abc"]);
    assert!(
        !ok && err.contains("Invalid Durable Object ID: must be 64 hex digits"),
        "{err}"
    );
    // 64 hex digits, but not an id this namespace minted.
    let forged = "0".repeat(64);
    let (ok, _, err) = cinder_do(&["get", "--state", dir, "Store", &forged]);
    assert!(
        !ok && err.contains("Durable Object ID is not valid for this namespace."),
        "{err}"
    );
    let (ok, _, err) = cinder_do(&["get", "--state", dir, "Nope", alpha]);
    assert!(
        !ok && err.contains("no Durable Object namespace \"Nope\""),
        "{err}"
    );
}

#[test]
fn do_list_and_get_read_a_running_and_a_stopped_node() {
    let state = tempfile::tempdir().unwrap();
    let ops = fixture("ops");
    let mut server = Server::start_in(state.path(), &[ops.to_str().unwrap()]);
    let alpha = server.get("/do/fill?name=alpha").text().unwrap();
    let beta = server
        .get("/do/put?name=beta&key=greeting&value=hi%20there")
        .text()
        .unwrap();
    assert_eq!(alpha.len(), 64, "{alpha}");

    // While it runs: a snapshot, said so on stderr.
    let (ok, _, err) = cinder_do(&["list", "--state", state.path().to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(err.contains("a running node holds"), "{err}");
    check_state(state.path(), &alpha, &beta);
    // The node is unaffected: it still serves and writes.
    assert_eq!(
        server
            .get("/do/put?name=beta&key=greeting&value=hi%20there")
            .text()
            .unwrap(),
        beta
    );

    let status = server.signal_and_wait(libc::SIGTERM, Duration::from_secs(60));
    assert!(status.success(), "{status:?}");
    let (ok, _, err) = cinder_do(&["list", "--state", state.path().to_str().unwrap()]);
    assert!(ok && !err.contains("running node"), "{err}");
    check_state(state.path(), &alpha, &beta);
}

#[test]
fn do_on_a_directory_without_state_says_so() {
    let empty = tempfile::tempdir().unwrap();
    let (ok, _, err) = cinder_do(&["list", "--state", empty.path().to_str().unwrap()]);
    assert!(!ok && err.contains("holds no Cinder store"), "{err}");
    // Nothing was created there.
    assert_eq!(std::fs::read_dir(empty.path()).unwrap().count(), 0);
}
