//! End-to-end tests: start the real `cinder` binary and talk to it with real clients.

#[test]
fn binary_starts() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cinder"))
        .output()
        .expect("run cinder");
    assert!(out.status.success());
}
