//! Cold start of a Worker isolate in cinder: starts a [`Host`] with one worker script on one
//! executor thread and asks it, through [`Host::cold_start_probe`], to create fresh isolates from
//! the startup snapshot and serve one request on each. Prints p50 / p99 / min / max in
//! milliseconds; `bench/workers/run.sh` runs it next to the workerd figures.
//!
//! Built only with the `workers` feature, so the storage and SQL benchmarks never link V8:
//! `cargo build --release -p cinder-bench --features workers --bin cold_start`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use cinder_stateless::{Host, HostConfig, WorkerSpec};
use clap::Parser;

#[derive(Parser)]
#[command(about = "Time from a new isolate (from the startup snapshot) to its first response")]
struct Args {
    /// Worker project directory.
    #[arg(long, default_value = "bench/workers/hello")]
    root: PathBuf,
    /// Entry module, relative to the project directory.
    #[arg(long, default_value = "src/index.js")]
    main: PathBuf,
    #[arg(long, default_value = "2025-09-01")]
    compatibility_date: String,
    /// Fresh isolates to time.
    #[arg(long, default_value_t = 200)]
    samples: usize,
}

const WORKER: &str = "cold-start";

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cold_start: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let root = args.root.canonicalize()?;
    let spec = WorkerSpec {
        name: WORKER.to_string(),
        main: root.join(&args.main),
        root,
        compatibility_date: Some(args.compatibility_date.clone()),
        ..WorkerSpec::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Host::start builds the startup snapshot on the calling thread, and V8's platform wants a
    // tokio runtime around any isolate it creates.
    let _guard = rt.enter();
    let host = Host::start(HostConfig {
        workers: vec![spec],
        threads: 1,
        ..HostConfig::default()
    })?;
    let result = rt.block_on(host.cold_start_probe(WORKER, args.samples));
    rt.block_on(host.shutdown());
    let mut samples = result?;
    if samples.is_empty() {
        return Err("the probe returned no samples".into());
    }
    samples.sort();
    println!(
        "cold_start n={} p50_ms={:.3} p99_ms={:.3} min_ms={:.3} max_ms={:.3}",
        samples.len(),
        ms(percentile(&samples, 50.0)),
        ms(percentile(&samples, 99.0)),
        ms(samples[0]),
        ms(samples[samples.len() - 1]),
    );
    Ok(())
}

/// Nearest-rank percentile of sorted, non-empty samples (same rule as harness.py).
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
