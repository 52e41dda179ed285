//! Storage stall benchmark (issue 11): does one object's cold scan stall a hot neighbour on
//! the same executor thread?
//!
//! One executor thread hosts two objects. The *hot* object answers `get` + `put` of a counter
//! per request, back to back, from one client; its latency is measured. The *cold* object
//! lists a large key range (`noCache`, so every scan goes to fjall) over and over while the hot
//! one is measured. Three phases, same store:
//!
//! 1. `idle`: nothing else runs (the baseline);
//! 2. `scan via Storage`: the cold object scans through `ctx.storage().list()`, whose disk part
//!    runs on the blocking pool while the input gate is held (what cinder does);
//! 3. `scan on the thread`: the cold object scans through the synchronous
//!    `ctx.storage().raw().list()`, i.e. on the executor thread, as every read did before.
//!
//! The store is reopened with a small fjall block cache before the measurement, so scans decode
//! blocks instead of hitting fjall's cache (the OS page cache still holds the files: this
//! measures the CPU side of a cold scan, the part that can never be avoided by a faster disk).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cinder_core::{
    Actor, ActorContext, ActorError, IdFactory, ListOptions, NamespaceSpec, ReadOptions, Request,
    Response, Runtime, RuntimeConfig,
};
use cinder_storage::{Durability, Store, StoreConfig, StoreTuning};
use clap::Parser;
use futures::future::LocalBoxFuture;

#[derive(Parser, Debug)]
#[command(about = "Does a cold scan of one object stall a hot object on the same thread?")]
struct Args {
    /// Keys in the cold object.
    #[arg(long, default_value_t = 200_000)]
    keys: usize,
    /// Bytes per value of the cold object.
    #[arg(long, default_value_t = 512)]
    value_bytes: usize,
    /// Seconds each phase measures the hot object.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Durability of the store (`fsync` or `process`).
    #[arg(long, default_value = "fsync")]
    durability: String,
    /// Directory for the database (default: a temp dir under ./target).
    #[arg(long)]
    dir: Option<PathBuf>,
}

const NS: &str = "bench/Stall";

struct Obj {
    ctx: ActorContext,
}

fn err(e: impl std::fmt::Display) -> ActorError {
    ActorError::new(e.to_string())
}

impl Actor for Obj {
    fn fetch(&self, req: Request) -> LocalBoxFuture<'_, Result<Response, ActorError>> {
        Box::pin(async move {
            let s = self.ctx.storage();
            let all = ListOptions {
                no_cache: true,
                ..ListOptions::default()
            };
            let body = match req.uri().path() {
                "/hot" => {
                    let n = s
                        .get("n")
                        .await
                        .map_err(err)?
                        .map(|b| String::from_utf8_lossy(&b).parse::<u64>().unwrap_or(0))
                        .unwrap_or(0)
                        + 1;
                    s.put("n", Bytes::from(n.to_string())).map_err(err)?;
                    n.to_string()
                }
                "/scan" => s
                    .list(&all, ReadOptions::default())
                    .await
                    .map_err(err)?
                    .len()
                    .to_string(),
                "/scan-inline" => s.raw().list(&all).map_err(err)?.len().to_string(),
                _ => String::new(),
            };
            Ok(http::Response::new(Bytes::from(body)))
        })
    }
}

fn start(store: &Arc<Store>) -> Runtime {
    let factory =
        |ctx: ActorContext| -> Result<Box<dyn Actor>, ActorError> { Ok(Box::new(Obj { ctx })) };
    Runtime::start(
        store.clone(),
        RuntimeConfig {
            threads: 1,
            ..RuntimeConfig::default()
        },
        vec![NamespaceSpec {
            name: NS.into(),
            ids: IdFactory::from_unique_key(NS),
            factory: Arc::new(factory),
        }],
    )
    .expect("runtime")
}

fn req(path: &str) -> Request {
    http::Request::builder()
        .uri(path)
        .body(Bytes::new())
        .expect("request")
}

struct Latencies {
    samples: Vec<Duration>,
    scans: u64,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

async fn phase(rt: &Runtime, scan: Option<&'static str>, seconds: u64) -> Latencies {
    let ns = rt.namespace(NS).expect("namespace");
    let hot = ns.get_by_name("hot");
    let cold = ns.get_by_name("cold");
    let stop = Arc::new(AtomicBool::new(false));
    let scans = Arc::new(AtomicU64::new(0));
    let scanner = scan.map(|path| {
        let (stop, scans, cold) = (stop.clone(), scans.clone(), cold.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                cold.fetch(req(path)).await.expect("scan");
                scans.fetch_add(1, Ordering::SeqCst);
            }
        })
    });
    // Let the first scan start before measuring.
    if scan.is_some() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut samples = Vec::new();
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        let t = Instant::now();
        hot.fetch(req("/hot")).await.expect("hot");
        samples.push(t.elapsed());
    }
    stop.store(true, Ordering::SeqCst);
    if let Some(s) = scanner {
        let _ = s.await;
    }
    samples.sort();
    Latencies {
        samples,
        scans: scans.load(Ordering::SeqCst),
    }
}

fn main() {
    let args = Args::parse();
    let durability = match args.durability.as_str() {
        "process" => Durability::Process,
        _ => Durability::Fsync,
    };
    let base = args.dir.clone().unwrap_or_else(|| PathBuf::from("target"));
    std::fs::create_dir_all(&base).expect("bench dir");
    let tmp = tempfile::tempdir_in(&base).expect("temp dir");
    let cfg = StoreConfig {
        durability,
        cache_bytes: 4 << 20,
    };
    let tuning = StoreTuning {
        block_cache_bytes: Some(1 << 20),
        ..StoreTuning::default()
    };
    // Fill the cold object straight through the storage API, in batches.
    {
        let store = Store::open_tuned(tmp.path(), cfg, tuning).expect("store");
        let id = *IdFactory::from_unique_key(NS).id_from_name("cold").bytes();
        let o = store.object(id);
        let value = Bytes::from(vec![0x5a; args.value_bytes]);
        for chunk in (0..args.keys).collect::<Vec<_>>().chunks(1000) {
            for i in chunk {
                o.put(&format!("k{i:08}"), value.clone()).expect("put");
            }
            if let Some(c) = o.flush() {
                c.wait().expect("flush");
            }
        }
    }
    let store = Store::open_tuned(tmp.path(), cfg, tuning).expect("reopen");
    let rt = start(&store);
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio");
    println!(
        "cold object: {} keys x {} B; hot object: get+put per request; 1 executor thread; \
         durability {:?}; {} s per phase",
        args.keys, args.value_bytes, durability, args.seconds
    );
    println!(
        "{:<20} {:>9} {:>10} {:>10} {:>10} {:>10} {:>7}",
        "phase", "requests", "p50", "p99", "p99.9", "max", "scans"
    );
    for (name, scan) in [
        ("idle", None),
        ("scan via Storage", Some("/scan")),
        ("scan on the thread", Some("/scan-inline")),
    ] {
        let l = tokio.block_on(phase(&rt, scan, args.seconds));
        println!(
            "{:<20} {:>9} {:>10.2?} {:>10.2?} {:>10.2?} {:>10.2?} {:>7}",
            name,
            l.samples.len(),
            percentile(&l.samples, 0.5),
            percentile(&l.samples, 0.99),
            percentile(&l.samples, 0.999),
            l.samples.last().copied().unwrap_or_default(),
            l.scans,
        );
    }
    rt.shutdown();
}
