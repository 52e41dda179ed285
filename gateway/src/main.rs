//! `cinder`: the command-line entry point, listeners and routing. Owns sockets; depends on
//! `cinder-stateless` for running scripts.

fn main() {
    println!("cinder {}", env!("CARGO_PKG_VERSION"));
}
