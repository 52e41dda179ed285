//! The command line itself: help text, exit codes.

use crate::harness::cinder;

#[test]
fn help_shows_dev_with_examples() {
    let out = cinder().arg("--help").output().expect("run cinder");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("dev"), "{text}");
    assert!(text.contains("Examples:"), "{text}");

    let out = cinder()
        .args(["dev", "--help"])
        .output()
        .expect("run cinder");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--port",
        "--ip",
        "--persist-to",
        "--config",
        "--allow-private-fetch",
        "--threads",
    ] {
        assert!(text.contains(flag), "dev --help lacks {flag}:\n{text}");
    }
}

#[test]
fn serve_says_what_is_wrong_with_its_config() {
    let out = cinder()
        .args(["serve", "--config", "no-such-node.toml"])
        .output()
        .expect("run cinder");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("could not read no-such-node.toml"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let node = dir.path().join("node.toml");
    std::fs::write(&node, "[node]\nstate = \"st\"\n").unwrap();
    let out = cinder()
        .arg("serve")
        .arg("--config")
        .arg(&node)
        .output()
        .expect("run cinder");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no [[project]]"), "{err}");
}

#[test]
fn unknown_flag_is_a_usage_error() {
    let out = cinder()
        .args(["dev", "--no-such-flag"])
        .output()
        .expect("run cinder");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn the_readme_example_serves() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello");
    let server = crate::harness::Server::start(&[dir.to_str().unwrap()]);
    let root = server.get("/");
    assert_eq!(root.status(), 200);
    assert!(root
        .text()
        .unwrap()
        .starts_with("Hello from Cinder example!"));
    let json = server.get_json("/json?a=1");
    assert_eq!(json["site"]["title"], "Cinder example");
    assert_eq!(json["query"], serde_json::json!({"a": "1"}));
    assert_eq!(
        server.get("/greet/Ada%20L").text().unwrap(),
        "Hello, Ada L!\n"
    );
    assert_eq!(server.get("/missing").status(), 404);
}
