//! The chat example's page in headless Chromium: `tests/browser/chat.mjs` (Playwright driving
//! Debian's `chromium`) has two pages chat in a room, then, after a server restart on the same
//! state, a third page finds their messages in the history. `scripts/test` installs Chromium
//! and the npm packages.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{example, Server};

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/browser")
}

fn run_page_script(mode: &str, server: &Server) {
    let out = Command::new("node")
        .current_dir(browser_dir())
        .args(["chat.mjs", mode, &server.base, "browser-room"])
        .output()
        .expect("run node (scripts/test installs it)");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "chat.mjs {mode} failed ({}):\n{stdout}\n{stderr}\nserver log:\n{}",
        out.status,
        server.stderr()
    );
    assert!(stdout.starts_with(&format!("ok {mode}")), "{stdout}");
}

#[test]
fn two_pages_chat_in_headless_chromium_and_the_history_survives_a_restart() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists()
            && browser_dir().join("node_modules/playwright-core").is_dir(),
        "{chromium} or tests/browser/node_modules is missing: run scripts/test, which installs \
         Debian's chromium and runs `npm ci` in tests/browser"
    );
    let chat = example("chat");
    let args = [chat.to_str().expect("utf-8 path")];
    let state = tempfile::tempdir().expect("state dir");
    let server = Server::start_in(state.path(), &args);
    run_page_script("live", &server);
    drop(server);
    let server = Server::start_in(state.path(), &args);
    run_page_script("history", &server);
}
