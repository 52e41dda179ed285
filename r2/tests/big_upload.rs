//! A 1 GiB multipart upload with the aws CLI and a streamed download, with the server's peak
//! resident memory (VmHWM) read from /proc: bodies stream, so it stays far below the object.

mod common;

use std::time::Duration;

use common::{python, require_clients, Server};

/// Peak RSS allowed for the whole server process. Bodies are streamed in 512 KiB chunks with a
/// few chunks queued per transfer; the rest is fjall's caches and the runtime.
const MAX_PEAK_RSS_MIB: u64 = 160;

#[test]
fn one_gib_multipart_upload_keeps_server_memory_bounded() {
    require_clients();
    let dir = tempfile::tempdir().expect("tmp");
    let server = Server::start(&dir.path().join("state"));
    let (hwm_before, _) = server.memory_kib();
    let (ok, out) = python(
        &server,
        "big.py",
        &[dir.path().to_str().expect("utf-8 path")],
        Duration::from_secs(300),
    );
    assert!(ok, "big.py failed:\n{out}");
    let (hwm, rss) = server.memory_kib();
    println!(
        "server peak RSS {} MiB (at start {} MiB, now {} MiB) for a 1 GiB upload + download",
        hwm / 1024,
        hwm_before / 1024,
        rss / 1024
    );
    assert!(
        hwm / 1024 < MAX_PEAK_RSS_MIB,
        "server peak RSS {} MiB exceeds {MAX_PEAK_RSS_MIB} MiB",
        hwm / 1024
    );
}
