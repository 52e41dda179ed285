//! A Hono app from npm, bundled with esbuild as its users do, runs unmodified.

use std::process::Command;

use crate::harness::{client, fixture, Server};

/// Installs the fixture's pinned packages and bundles it, unless a bundle already exists.
fn build_bundle() {
    let dir = fixture("hono");
    if dir.join("dist/index.js").is_file() {
        return;
    }
    let run = |program: &str, args: &[&str]| {
        let out = Command::new(program)
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap_or_else(|e| {
                panic!("{program} is needed for this test (install Node.js and npm): {e}")
            });
        assert!(
            out.status.success(),
            "{program} {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    if !dir.join("node_modules/hono").is_dir() || !dir.join("node_modules/esbuild").is_dir() {
        run("npm", &["ci", "--no-audit", "--no-fund"]);
    }
    run("npm", &["run", "build"]);
}

#[test]
fn hono_app_bundled_with_esbuild_serves_routes() {
    build_bundle();
    let server = Server::start(&[fixture("hono").to_str().unwrap()]);

    let root = server.get("/");
    assert_eq!(root.status(), 200);
    assert_eq!(root.text().unwrap(), "Hello from hono on cinder");

    let user = server.get_json("/api/users/42?q=search");
    assert_eq!(
        user,
        serde_json::json!({"id": "42", "name": "user-42", "q": "search"})
    );

    let echo = client()
        .post(server.url("/api/echo"))
        .header("content-type", "application/json")
        .header("origin", "https://example.com")
        .body(r#"{"hello":"world"}"#)
        .send()
        .unwrap();
    assert_eq!(echo.status(), 201);
    assert_eq!(echo.headers()["access-control-allow-origin"], "*");
    let v: serde_json::Value = echo.json().unwrap();
    assert_eq!(v["received"], serde_json::json!({"hello": "world"}));
    assert_eq!(v["runtime"], "workerd-like");

    let missing = server.get("/nope");
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.json::<serde_json::Value>().unwrap()["path"],
        "/nope"
    );
}

#[test]
fn a_typescript_project_with_packages_is_bundled_like_wrangler_dev_does() {
    let dir = fixture("hono-ts");
    if !dir.join("node_modules/hono").is_dir() {
        // cinder installs the packages itself when node_modules is missing; `npm ci` here
        // keeps the versions of the lockfile.
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .output()
            .expect("npm is needed for this test");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let server = Server::start(&[dir.to_str().unwrap()]);
    assert_eq!(server.get("/").text().unwrap(), "typescript hono");
    for expected in 1..=2 {
        let v: serde_json::Value = client()
            .post(server.url("/count/ts"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(v["count"], expected);
    }
    assert!(
        server.stderr().contains("bundled with"),
        "{}",
        server.stderr()
    );
}
