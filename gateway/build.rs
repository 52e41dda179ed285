//! Makes the V8 startup snapshot at build time and leaves it in `OUT_DIR` for `main.rs` to
//! embed, so the binary reads no file outside itself to start (the `deno_*` crates' JS lives
//! in the cargo registry, which is only there at build time) and no process pays the ~100 ms
//! of making it.
//!
//! This links `cinder-stateless` (and V8) into the build script. Its units are shared with
//! the binary's when the build-script profile matches the target one (`build-override` in the
//! workspace `Cargo.toml`), so the cost is one extra link and a fraction of a second to run.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let blob = match cinder_stateless::snapshot::create() {
        Ok(blob) => blob,
        Err(e) => {
            // Exiting non-zero fails the build; cargo shows this stderr.
            eprintln!("making the startup snapshot: {e}");
            std::process::exit(1);
        }
    };
    let fingerprint = cinder_stateless::snapshot::fingerprint();
    if let Err(e) = std::fs::write(out.join("snapshot.bin"), &blob)
        .and_then(|()| std::fs::write(out.join("snapshot.fingerprint"), fingerprint))
    {
        eprintln!("writing the startup snapshot: {e}");
        std::process::exit(1);
    }
}
