//! Scheduled events fired on demand through wrangler's local test routes.

use std::time::Duration;

use crate::harness::{fixture, Server, Upstream};

fn server_reporting_to(upstream: &Upstream, extra: &[&str]) -> Server {
    let var = format!("REPORT_URL:{}", upstream.url);
    let mut args = vec![
        fixture("globals").to_str().unwrap().to_string(),
        "--allow-private-fetch".into(),
        "--var".into(),
        var,
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(&args)
}

#[test]
fn test_scheduled_route_runs_the_handler() {
    let upstream = Upstream::start();
    let server = server_reporting_to(&upstream, &["--test-scheduled"]);
    let resp = server.get("/__scheduled?cron=*/5+*+*+*+*&time=1700000000000");
    assert_eq!(resp.status(), 200, "{}", server.stderr());
    assert_eq!(resp.text().unwrap().trim(), "Ran scheduled event");
    assert_eq!(
        upstream.next_request(Duration::from_secs(10)),
        "GET /scheduled?cron=*%2F5%20*%20*%20*%20*&time=1700000000000 HTTP/1.1"
    );
}

#[test]
fn cdn_cgi_route_is_always_there_and_dunder_route_needs_the_flag() {
    let upstream = Upstream::start();
    let server = server_reporting_to(&upstream, &[]);
    let resp = server.get("/cdn-cgi/handler/scheduled?cron=0+0+*+*+*&time=5");
    assert_eq!(resp.status(), 200, "{}", server.stderr());
    assert_eq!(
        upstream.next_request(Duration::from_secs(10)),
        "GET /scheduled?cron=0%200%20*%20*%20*&time=5 HTTP/1.1"
    );
    // Without --test-scheduled, /__scheduled belongs to the worker (404 from the fixture).
    assert_eq!(server.get("/__scheduled").status(), 404);
}
