//! kill -9 of the server while boto3 clients put objects: nothing acknowledged is lost, no
//! half-written object is ever visible, and the restart sweeps the bodies of puts that were
//! cut off (no orphaned blob files remain).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{require_clients, script, Server, ACCESS_KEY, SECRET_KEY};

fn acked(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().filter(|l| l.starts_with("ack ")).count())
        .unwrap_or(0)
}

fn blob_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("blobs"))
        .expect("blobs")
        .map(|d| {
            std::fs::read_dir(d.expect("entry").path())
                .expect("sub")
                .count()
        })
        .sum()
}

#[test]
fn kill_9_during_puts_loses_nothing_acknowledged() {
    require_clients();
    let dir = tempfile::tempdir().expect("tmp");
    let state = dir.path().join("state");
    let acks = dir.path().join("acks.log");
    for round in 1..=3 {
        let server = Server::start(&state);
        let mut writer = Command::new("python3")
            .arg(script("crash.py"))
            .arg("write")
            .arg(&acks)
            .env("S3_ENDPOINT", &server.endpoint)
            .env("S3_ACCESS_KEY", ACCESS_KEY)
            .env("S3_SECRET_KEY", SECRET_KEY)
            .stdout(Stdio::null())
            .spawn()
            .expect("writer");
        // Let a batch of puts be acknowledged in this round, then kill mid-stream.
        let target = acked(&acks) + 25;
        let deadline = Instant::now() + Duration::from_secs(90);
        while acked(&acks) < target {
            assert!(Instant::now() < deadline, "round {round}: puts stalled");
            assert!(
                writer.try_wait().expect("wait").is_none(),
                "round {round}: writer died early"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server.kill9();
        let deadline = Instant::now() + Duration::from_secs(60);
        while writer.try_wait().expect("wait").is_none() {
            assert!(
                Instant::now() < deadline,
                "writer did not stop after the kill"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let server = Server::start(&state);
    let out = Command::new("python3")
        .arg(script("crash.py"))
        .arg("verify")
        .arg(&acks)
        .env("S3_ENDPOINT", &server.endpoint)
        .env("S3_ACCESS_KEY", ACCESS_KEY)
        .env("S3_SECRET_KEY", SECRET_KEY)
        .output()
        .expect("verify");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "verification failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{stdout} acks {}", acked(&acks));
    let objects: usize = stdout
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("object count");
    assert!(objects > 0);
    // Every object is non-empty, so exactly one blob each: anything more is an orphan.
    assert_eq!(
        blob_files(&state),
        objects,
        "orphaned blobs survived the restart"
    );
}
