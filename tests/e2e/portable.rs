//! The built binary runs away from its build tree: copied into a scratch directory and started
//! in a private mount namespace where the cargo registry (home of the `deno_*` crates' JS), the
//! work tree and the target directory are empty tmpfs mounts, as on a second server or in a
//! container image. It must start and answer from the startup snapshot embedded at build time.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{client, copy_fixture, Server};

/// `$CARGO_HOME/registry`, as cargo resolves `CARGO_HOME` (default `~/.cargo`).
fn cargo_registry() -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .expect("CARGO_HOME or HOME");
    home.join("registry")
}

/// Whether this process may make a private mount namespace and mount tmpfs in it (root, or
/// CAP_SYS_ADMIN). Prints why not when it may not.
fn namespaces_allowed() -> bool {
    let probe = Command::new("unshare")
        .args(["-m", "sh", "-c", "mount -t tmpfs tmpfs /mnt"])
        .output();
    match probe {
        Ok(out) if out.status.success() => true,
        Ok(out) => {
            eprintln!(
                "SKIPPED portable binary test: `unshare -m` + tmpfs mount not permitted here ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
            false
        }
        Err(e) => {
            eprintln!("SKIPPED portable binary test: cannot run `unshare`: {e}");
            false
        }
    }
}

#[test]
fn copied_binary_serves_with_registry_and_sources_hidden() {
    if !namespaces_allowed() {
        return;
    }
    let built = Path::new(env!("CARGO_BIN_EXE_cinder"));
    let work_tree = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the gateway crate sits in the work tree")
        .canonicalize()
        .expect("work tree");
    let target_dir = built
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/cinder")
        .to_path_buf();
    let registry = cargo_registry();
    assert!(
        registry.is_dir(),
        "no cargo registry at {}",
        registry.display()
    );

    let scratch = tempfile::tempdir().expect("scratch dir");
    let copy = scratch.path().join("cinder");
    std::fs::copy(built, &copy).expect("copy the binary");
    let project = copy_fixture("portable");
    let state = tempfile::tempdir().expect("state dir");
    for hidden in [&registry, &work_tree, &target_dir] {
        assert!(
            !scratch.path().starts_with(hidden)
                && !project.path().starts_with(hidden)
                && !state.path().starts_with(hidden),
            "the scratch directories must live outside {}",
            hidden.display()
        );
    }

    // `unshare -m` makes the new namespace's mounts private: nothing leaks to this one.
    let mut cmd = Command::new("unshare");
    cmd.args([
        "-m",
        "sh",
        "-c",
        r#"for d in "$1" "$2" "$3"; do
             mount -t tmpfs tmpfs "$d" || exit 1
             if [ -n "$(ls -A "$d")" ]; then echo "$d is not hidden" >&2; exit 1; fi
           done
           exec "$4" dev "$5" --port 0 --persist-to "$6""#,
        "sh",
    ])
    .arg(&registry)
    .arg(&work_tree)
    .arg(&target_dir)
    .arg(&copy)
    .arg(project.path())
    .arg(state.path());
    let server = match Server::try_spawn(cmd, None) {
        Ok(server) => server,
        Err(failure) => panic!(
            "the copied binary did not start (status {:?}); stderr:\n{}",
            failure.status, failure.stderr
        ),
    };

    let resp = client()
        .post(server.url("/some/path?text=abc"))
        .send()
        .expect("request to the copied binary");
    assert_eq!(resp.status(), 200, "stderr:\n{}", server.stderr());
    let body: serde_json::Value = resp.json().expect("JSON body");
    assert_eq!(
        body,
        serde_json::json!({
            "greeting": "hello from a copied binary",
            "path": "/some/path",
            // SHA-256("abc"), FIPS 180-2's first example.
            "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            "method": "POST",
        })
    );
}
