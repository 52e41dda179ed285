//! Reading wrangler configuration as it is: unknown keys, bad files, `.dev.vars`, vars.

use crate::harness::{copy_fixture, fixture, Server};

#[test]
fn vars_json_vars_and_dev_vars_secrets_reach_env() {
    let server = Server::start(&[
        fixture("globals").to_str().unwrap(),
        "--var",
        "EXTRA:from-cli",
    ]);
    let env = server.get_json("/env");
    assert_eq!(env["GREETING"], "hello");
    assert_eq!(
        env["FEATURES"],
        serde_json::json!({"beta": true, "limit": 3})
    );
    assert_eq!(env["NUMBERS"], serde_json::json!([1, 2, 3]));
    assert_eq!(env["SECRET_TOKEN"], "s3cr3t");
    assert_eq!(env["QUOTED"], "two\nlines");
    assert_eq!(env["EXTRA"], "from-cli");
}

#[test]
fn unknown_keys_warn_but_the_worker_runs() {
    let dir = copy_fixture("services/back");
    let toml = dir.path().join("wrangler.toml");
    let mut text = std::fs::read_to_string(&toml).unwrap();
    text.insert_str(0, "frobnicate = true\n");
    text.push_str("\n[[analytics_engine_datasets]]\nbinding = \"STATS\"\n");
    std::fs::write(&toml, text).unwrap();

    let server = Server::start(&[dir.path().to_str().unwrap()]);
    let body = server.get_json("/x");
    assert_eq!(body["who"], "back worker");
    let log = server.log_where(|l| {
        l.contains("unknown key `frobnicate`")
            && l.contains("not supported yet")
            && l.contains("analytics_engine_datasets")
    });
    assert!(log.contains("unknown key `frobnicate`"), "{log}");
    assert!(
        log.contains("not supported yet") && log.contains("analytics_engine_datasets"),
        "{log}"
    );
}

#[test]
fn bad_config_names_file_and_line() {
    let dir = copy_fixture("services/back");
    let toml = dir.path().join("wrangler.toml");
    std::fs::write(
        &toml,
        "name = \"back\"\nmain = \"src/index.js\"\n[vars\nA = 1\n",
    )
    .unwrap();
    let failure = Server::try_start(&[dir.path().to_str().unwrap()])
        .err()
        .expect("must not start");
    assert_eq!(
        failure.status.and_then(|s| s.code()),
        Some(1),
        "{}",
        failure.stderr
    );
    assert!(
        failure.stderr.contains("wrangler.toml:3:"),
        "{}",
        failure.stderr
    );
}

#[test]
fn jsonc_config_is_read() {
    let dir = copy_fixture("services/back");
    std::fs::remove_file(dir.path().join("wrangler.toml")).unwrap();
    std::fs::write(
        dir.path().join("wrangler.jsonc"),
        "{\n  // jsonc, as `wrangler init` writes it\n  \"name\": \"back\",\n  \"main\": \"src/index.js\",\n  \"vars\": { \"WHO\": \"jsonc worker\", },\n}\n",
    )
    .unwrap();
    let server = Server::start(&[dir.path().join("wrangler.jsonc").to_str().unwrap()]);
    assert_eq!(server.get_json("/")["who"], "jsonc worker");
}

#[test]
fn missing_project_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let failure = Server::try_start(&[dir.path().to_str().unwrap()])
        .err()
        .expect("must not start");
    assert_eq!(failure.status.and_then(|s| s.code()), Some(1));
    assert!(
        failure.stderr.contains("no wrangler.toml"),
        "{}",
        failure.stderr
    );
}
