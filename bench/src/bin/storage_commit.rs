//! Group commit benchmark (issue 7): many objects writing small values concurrently, in three
//! modes on the same machine and disk:
//!
//! 1. `group`: coalesced group commit, Fsync durability (one fdatasync per group);
//! 2. `each`:  one fsync per write (each batch persisted synchronously before the next);
//! 3. `nofsync`: Process durability (no fsync at all), the ceiling.
//!
//! Every object waits for its write to be confirmed before writing again, as an object behind
//! its output gate does. Prints writes/s per mode, the two ratios, and the fsync latency of the
//! disk under the data directory.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cinder_storage::{Durability, ObjectId, Store, StoreConfig, StoreTuning};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Group commit vs one fsync per write vs no fsync (cinder-storage)")]
struct Args {
    /// Number of objects writing concurrently.
    #[arg(long, default_value_t = 1000)]
    objects: usize,
    /// Writer threads (executor threads); objects are spread over them.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Writes per object in the `group` and `nofsync` modes.
    #[arg(long, default_value_t = 100)]
    rounds: usize,
    /// Writes per object in the `each` mode (it is slow: one fsync each).
    #[arg(long, default_value_t = 1)]
    each_rounds: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 64)]
    value_bytes: usize,
    /// Run the three modes this many times, interleaved; the summary uses each mode's median
    /// (shared machines are noisy).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Directory for the databases (default: a temp dir under ./target). Must be on the disk
    /// you want to measure, not tmpfs.
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    Group,
    Each,
    NoFsync,
}

struct Run {
    writes: usize,
    elapsed: Duration,
    syncs: u64,
    sync_time: Duration,
}

impl Run {
    fn per_sec(&self) -> f64 {
        self.writes as f64 / self.elapsed.as_secs_f64()
    }
}

fn object_id(n: usize) -> ObjectId {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&(n as u64).to_be_bytes());
    id[8] = 0xb3;
    id
}

fn run(dir: &Path, mode: Mode, args: &Args, rounds: usize) -> Run {
    let (durability, sync_each_batch) = match mode {
        Mode::Group => (Durability::Fsync, false),
        Mode::Each => (Durability::Fsync, true),
        Mode::NoFsync => (Durability::Process, false),
    };
    let cfg = StoreConfig {
        durability,
        ..StoreConfig::default()
    };
    let tuning = StoreTuning {
        sync_each_batch,
        ..StoreTuning::default()
    };
    let store = Store::open_tuned(dir, cfg, tuning).expect("open store");
    let threads = args.threads.max(1);
    let start = Arc::new(Barrier::new(threads + 1));
    let value = Bytes::from(vec![0x5a; args.value_bytes]);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let store = store.clone();
            let start = start.clone();
            let value = value.clone();
            let objects: Vec<_> = (0..args.objects)
                .filter(|n| n % threads == t)
                .map(|n| store.object(object_id(n)))
                .collect();
            std::thread::spawn(move || {
                start.wait();
                // Like an executor thread: each object writes, ends its turn and waits for its
                // own confirmation before writing again; meanwhile the thread serves the other
                // objects. Confirmations arrive in commit order, so the oldest in-flight commit
                // is the one to wait for.
                let mut written = vec![0usize; objects.len()];
                let mut in_flight = std::collections::VecDeque::with_capacity(objects.len());
                let write = |i: usize, written: &mut Vec<usize>| {
                    let key = format!("k{}", written[i] % 8);
                    objects[i].put(&key, value.clone()).expect("put");
                    written[i] += 1;
                    objects[i].flush().expect("a write was buffered")
                };
                if rounds > 0 {
                    for i in 0..objects.len() {
                        let c = write(i, &mut written);
                        in_flight.push_back((i, c));
                    }
                }
                while let Some((i, c)) = in_flight.pop_front() {
                    c.wait().expect("commit");
                    if written[i] < rounds {
                        let c = write(i, &mut written);
                        in_flight.push_back((i, c));
                    }
                }
            })
        })
        .collect();
    start.wait();
    let began = Instant::now();
    let before = store.sync_stats();
    for h in handles {
        h.join().expect("writer thread");
    }
    let elapsed = began.elapsed();
    Run {
        writes: args.objects * rounds,
        elapsed,
        syncs: store.sync_stats().syncs - before.syncs,
        sync_time: store.sync_stats().sync_time - before.sync_time,
    }
}

/// Median latency of appending a small record + fdatasync to a file in `dir`: the cost a
/// journal pays per confirmed write when every write is synced on its own.
fn fsync_latency(dir: &Path) -> Duration {
    let path = dir.join("fsync-probe");
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)
        .expect("probe file");
    let block = vec![0u8; 128];
    let mut samples: Vec<Duration> = (0..100)
        .map(|_| {
            let t = Instant::now();
            f.write_all(&block).expect("probe write");
            f.sync_data().expect("probe fdatasync");
            t.elapsed()
        })
        .collect();
    let _ = std::fs::remove_file(&path);
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let args = Args::parse();
    let base = match &args.dir {
        Some(d) => d.clone(),
        None => PathBuf::from("target"),
    };
    std::fs::create_dir_all(&base).expect("bench dir");
    let tmp = tempfile::tempdir_in(&base).expect("temp dir");
    let lat = fsync_latency(tmp.path());
    println!(
        "storage_commit: {} objects, {} threads, {}-byte values, data in {}",
        args.objects,
        args.threads,
        args.value_bytes,
        tmp.path().display()
    );
    println!("fsync latency (append 128 B + fdatasync, median of 100): {lat:?}");

    let modes = [
        (Mode::Group, "group commit, fsync", args.rounds),
        (Mode::Each, "one fsync per write", args.each_rounds),
        (Mode::NoFsync, "no fsync (process)", args.rounds),
    ];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    for rep in 0..args.repeat.max(1) {
        for (i, (mode, label, rounds)) in modes.iter().enumerate() {
            let dir = tmp.path().join(format!("db{rep}-{i}"));
            let r = run(&dir, *mode, &args, *rounds);
            let groups = if r.syncs > 0 {
                format!(
                    ", {} group persists of {:.2?} avg, {:.0} writes each",
                    r.syncs,
                    r.sync_time / r.syncs as u32,
                    r.writes as f64 / r.syncs as f64
                )
            } else {
                String::new()
            };
            println!(
                "{label:<22} {:>9.0} writes/s  ({} writes in {:.2?}{groups})",
                r.per_sec(),
                r.writes,
                r.elapsed,
            );
            rates[i].push(r.per_sec());
            // Free the disk space between runs.
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    let rates: Vec<f64> = rates
        .into_iter()
        .map(|mut v| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        })
        .collect();
    println!("medians:");
    for ((_, label, _), r) in modes.iter().zip(&rates) {
        println!("{label:<22} {r:>9.0} writes/s");
    }
    println!(
        "group commit / one fsync per write: {:.1}x (target >= 50x when fsync >= 1 ms)",
        rates[0] / rates[1]
    );
    println!(
        "group commit / no fsync ceiling:    {:.0}% (target >= 70%)",
        100.0 * rates[0] / rates[2]
    );
}
