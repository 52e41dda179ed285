//! KV benchmark (issue 15): reads through the KV engine, durable writes.
//!
//! - **cached read**: `get()` of a key this node has read before (answered by the node's read
//!   cache, as Cloudflare's edge answers a hot key): latency p50/p99 of one reader, then
//!   throughput of `--tasks` concurrent readers.
//! - **uncached read**: the same with the node cache off: every `get()` is an event on the
//!   key's shard object (executor thread hop, gates, storage read).
//! - **durable put**: `put()` resolves once the write is durable (`Durability::Fsync`, group
//!   commit), `--tasks` concurrent writers.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cinder_core::{Runtime, RuntimeConfig};
use cinder_kv::{GetOptions, Kv, KvConfig, KvNamespace, PutOptions};
use cinder_storage::{Store, StoreConfig};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "KV: cached and uncached reads, durable writes")]
struct Args {
    /// Keys written and read.
    #[arg(long, default_value_t = 1000)]
    keys: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Seconds per measured run.
    #[arg(long, default_value_t = 5)]
    secs: u64,
    /// Concurrent tasks in the throughput runs.
    #[arg(long, default_value_t = 64)]
    tasks: usize,
    /// Executor threads of the actor runtime.
    #[arg(long, default_value_t = 2)]
    executors: usize,
    /// Directory for the data (default: a temp dir under the current directory).
    #[arg(long)]
    dir: Option<PathBuf>,
}

fn key(i: usize) -> String {
    format!("config/key-{i:06}")
}

fn pct(sorted: &[u64], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    Duration::from_nanos(sorted[i])
}

/// One reader, back to back: per-call latency.
async fn latency(ns: &KvNamespace, keys: usize, secs: u64) -> (Duration, Duration, usize) {
    let mut lat = Vec::new();
    let end = Instant::now() + Duration::from_secs(secs);
    let mut i = 0usize;
    while Instant::now() < end {
        let k = key(i * 7919 % keys);
        let t = Instant::now();
        let r = ns.get(&k, &GetOptions::default()).await.expect("get");
        lat.push(t.elapsed().as_nanos() as u64);
        assert!(r.entry.is_some());
        i += 1;
    }
    lat.sort_unstable();
    (pct(&lat, 0.5), pct(&lat, 0.99), lat.len())
}

/// `tasks` concurrent loops of `op`; operations per second.
async fn throughput<F, Fut>(tasks: usize, secs: u64, op: F) -> f64
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let (op, stop) = (op.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    op(t * 1_000_003 + n).await;
                    n += 1;
                }
                n
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for h in handles {
        total += h.await.expect("task");
    }
    total as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let args = Args::parse();
    let tmp = match &args.dir {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir_in("."),
    }
    .expect("temp dir");
    let store = Store::open(tmp.path(), StoreConfig::default()).expect("store");
    let kv = Kv::new(KvConfig::default());
    let rt = Runtime::start(
        store,
        RuntimeConfig {
            threads: args.executors,
            ..RuntimeConfig::default()
        },
        kv.namespaces(),
    )
    .expect("runtime");
    kv.attach(&rt).expect("attach");
    // A second engine on the same objects with its read cache off: every read is an event.
    let uncached = Kv::new(KvConfig {
        cache_bytes: 0,
        ..KvConfig::default()
    });
    uncached.attach(&rt).expect("attach");

    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio");
    client.block_on(async {
        let ns = kv.namespace("bench");
        let value = Bytes::from(vec![b'v'; args.value_bytes]);
        let puts = (0..args.keys).map(|i| {
            let (ns, value) = (ns.clone(), value.clone());
            async move { ns.put(&key(i), value, &PutOptions::default()).await }
        });
        for r in futures::future::join_all(puts).await {
            r.expect("put");
        }
        // Warm this node's cache.
        for i in 0..args.keys {
            ns.get(&key(i), &GetOptions::default()).await.expect("get");
        }
        let cold = uncached.namespace("bench");
        println!(
            "KV bench: {} keys of {} B, {} executor threads, client runtime 2 threads, Durability::Fsync",
            args.keys, args.value_bytes, args.executors
        );
        let (p50, p99, n) = latency(&ns, args.keys, args.secs).await;
        println!("cached read, 1 reader:   p50 {p50:?}  p99 {p99:?}  ({n} reads)");
        let keys = args.keys;
        let ops = {
            let ns = ns.clone();
            throughput(args.tasks, args.secs, move |i| {
                let ns = ns.clone();
                async move {
                    ns.get(&key(i % keys), &GetOptions::default()).await.expect("get");
                }
            })
            .await
        };
        println!("cached read, {} readers: {ops:.0} reads/s", args.tasks);
        let (p50, p99, n) = latency(&cold, args.keys, args.secs).await;
        println!("uncached read, 1 reader:   p50 {p50:?}  p99 {p99:?}  ({n} reads)");
        let ops = {
            let cold = cold.clone();
            throughput(args.tasks, args.secs, move |i| {
                let cold = cold.clone();
                async move {
                    cold.get(&key(i % keys), &GetOptions::default()).await.expect("get");
                }
            })
            .await
        };
        println!("uncached read, {} readers: {ops:.0} reads/s", args.tasks);
        let ops = {
            let (ns, value) = (ns.clone(), value.clone());
            throughput(args.tasks, args.secs, move |i| {
                let (ns, value) = (ns.clone(), value.clone());
                async move {
                    ns.put(&key(i % keys), value, &PutOptions::default())
                        .await
                        .expect("put");
                }
            })
            .await
        };
        println!("durable put, {} writers: {ops:.0} puts/s", args.tasks);
    });
    drop(client);
    rt.shutdown();
}
