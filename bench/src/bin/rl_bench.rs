//! Rate-limiter decisions (issue 13): `examples/ratelimit` under `--concurrency` clients, each
//! request for a key drawn uniformly from `--keys`. Every request is one decision by that
//! key's Durable Object (a token bucket in storage; an allowed decision is answered once its
//! write is durable, a refusal writes nothing).
//!
//! Prints decisions/s (200 and 429 together), how many were refusals, and p50/p99 latency.
//! Works against any server running the example (cinder or workerd). Ends with one
//! `rl_bench key=value ...` line for scripts.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use rand::Rng;

#[derive(Parser, Debug)]
#[command(about = "Rate limiter: decisions per second over many keys")]
struct Args {
    /// Base URL of the server running examples/ratelimit.
    #[arg(long, default_value = "http://127.0.0.1:8787")]
    url: String,
    /// Distinct client keys.
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds measured.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Seconds of load before the measurement.
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// Key prefix (default: a new one per run, so every run starts with full buckets).
    #[arg(long)]
    prefix: Option<String>,
    /// Client runtime threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

#[derive(Default)]
struct Counters {
    allowed: AtomicU64,
    refused: AtomicU64,
    other: AtomicU64,
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(run(args)) {
        eprintln!("rl_bench: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), String> {
    if args.keys == 0 || args.concurrency == 0 {
        return Err("--keys and --concurrency must be at least 1".into());
    }
    let prefix = args
        .prefix
        .clone()
        .unwrap_or_else(|| format!("k{}-{}-", std::process::id(), rand::random::<u32>()));
    let url = format!("{}/api/bench", args.url.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| format!("client: {e}"))?;
    let counters = Arc::new(Counters::default());
    let latencies = Arc::new(Mutex::new(Vec::<u64>::new()));
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));

    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (client, url, prefix) = (client.clone(), url.clone(), prefix.clone());
        let (counters, latencies, measuring, stop) = (
            counters.clone(),
            latencies.clone(),
            measuring.clone(),
            stop.clone(),
        );
        let keys = args.keys;
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let key = format!("{prefix}{}", rand::rng().random_range(0..keys));
                let t = Instant::now();
                let status = match client.get(&url).header("X-Client-Key", key).send().await {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        let _ = resp.bytes().await;
                        status
                    }
                    Err(e) => {
                        eprintln!("rl_bench: request failed: {e}");
                        0
                    }
                };
                let dt = t.elapsed();
                let c = match status {
                    200 => &counters.allowed,
                    429 => &counters.refused,
                    _ => &counters.other,
                };
                c.fetch_add(1, Ordering::Relaxed);
                if measuring.load(Ordering::Relaxed) {
                    mine.push(dt.as_nanos() as u64);
                }
            }
            latencies.lock().unwrap().extend(mine);
        }));
    }
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;
    let snap = |c: &Counters| {
        [
            c.allowed.load(Ordering::Relaxed),
            c.refused.load(Ordering::Relaxed),
            c.other.load(Ordering::Relaxed),
        ]
    };
    let before = snap(&counters);
    measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.secs)).await;
    let after = snap(&counters);
    let secs = start.elapsed().as_secs_f64();
    measuring.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let [allowed, refused, other] = [0, 1, 2].map(|i| after[i] - before[i]);
    if other > 0 {
        return Err(format!(
            "{other} answers were neither 200 nor 429: is {url} the ratelimit example?"
        ));
    }
    let mut lat = latencies.lock().unwrap().clone();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len().max(1) - 1) as f64 * p).round() as usize)
            .map_or(0.0, |n| *n as f64 / 1e6)
    };
    let per_s = (allowed + refused) as f64 / secs;
    println!(
        "{per_s:.0} decisions/s over {} keys ({allowed} allowed, {refused} refused in {secs:.1} s), \
         {} in flight, p50 {:.2} ms p99 {:.2} ms",
        args.keys,
        args.concurrency,
        pct(0.5),
        pct(0.99)
    );
    println!(
        "rl_bench keys={} concurrency={} secs={secs:.1} decisions_per_s={per_s:.0} allowed={allowed} \
         refused={refused} p50_ms={:.3} p99_ms={:.3}",
        args.keys,
        args.concurrency,
        pct(0.5),
        pct(0.99)
    );
    Ok(())
}
