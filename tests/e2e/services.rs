//! Service bindings between two workers of one `cinder dev` run.

use crate::harness::{fixture, Server};

#[test]
fn front_calls_back_through_a_service_binding() {
    let front = fixture("services/front").join("wrangler.toml");
    let back = fixture("services/back").join("wrangler.toml");
    let server = Server::start(&["-c", front.to_str().unwrap(), "-c", back.to_str().unwrap()]);
    let v = server.get_json("/");
    assert_eq!(v["status"], 201);
    assert_eq!(v["header"], "yes");
    let body = &v["body"];
    assert_eq!(body["who"], "back worker");
    assert_eq!(body["method"], "POST");
    assert_eq!(body["path"], "/hello");
    assert_eq!(body["x"], "1");
    assert_eq!(body["from"], "front");
    assert_eq!(body["body"], "ping");
}

#[test]
fn positional_dir_and_config_flag_combine() {
    let back = fixture("services/back").join("wrangler.toml");
    let server = Server::start(&[
        fixture("services/front").to_str().unwrap(),
        "--config",
        back.to_str().unwrap(),
    ]);
    assert_eq!(server.get_json("/")["body"]["who"], "back worker");
}

#[test]
fn missing_service_target_warns() {
    let server = Server::start(&[fixture("services/front").to_str().unwrap()]);
    let log = server.log_where(|l| l.contains("no such worker in this run"));
    assert!(log.contains("no such worker in this run"), "{log}");
    // env.BACK is undefined, so the handler throws: a 500, not a crash.
    assert_eq!(server.get("/").status(), 500);
    assert_eq!(server.get("/").status(), 500);
}

#[test]
fn rpc_to_worker_entrypoints_through_service_bindings() {
    let front = fixture("services-rpc/front").join("wrangler.toml");
    let back = fixture("services-rpc/back").join("wrangler.toml");
    let server = Server::start(&["-c", front.to_str().unwrap(), "-c", back.to_str().unwrap()]);
    assert_eq!(
        server.get_json("/"),
        serde_json::json!({
            "add": 5,
            "who": "back worker",
            "fetch": "back fetch /path",
            "admin": "admin entrypoint",
            "callback": 42,
            "failed": {"name": "RangeError", "message": "back failed", "remote": true},
        })
    );
}
