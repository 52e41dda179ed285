//! D1 through `D1Service` (one internal Durable Object per database on the actor core, SQL in
//! cinder-sql, `Durability::Fsync`): indexed point reads and batched inserts, requests per
//! second and latency percentiles, with `--concurrency` requests in flight.
//!
//! The Miniflare side (`wrangler dev`'s local D1 on workerd) runs from JavaScript; this binary
//! is the cinder half of that comparison.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cinder_core::{Runtime, RuntimeConfig};
use cinder_d1::{namespace_spec, D1Service, Statement};
use cinder_sql::SqlValue;
use cinder_storage::{Durability, Store, StoreConfig};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "D1 through D1Service: indexed point reads and batched inserts")]
struct Args {
    /// Rows loaded before the point-read run.
    #[arg(long, default_value_t = 100_000)]
    rows: usize,
    /// Seconds per measured run.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Requests in flight.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Statements per `batch()` in the insert run.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Executor threads of the actor runtime.
    #[arg(long, default_value_t = 2)]
    executors: usize,
    /// Directory for the data (default: a temp dir under the current directory).
    #[arg(long)]
    dir: Option<PathBuf>,
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY, email TEXT NOT NULL, name TEXT NOT NULL, created INTEGER NOT NULL);
  CREATE UNIQUE INDEX IF NOT EXISTS users_email ON users (email);";

fn email(n: u64) -> String {
    format!("user{n:09}@example.com")
}

struct Report {
    requests: u64,
    secs: f64,
    latencies_us: Vec<u64>,
}

impl Report {
    fn print(&mut self, name: &str, unit_per_request: u64) {
        self.latencies_us.sort_unstable();
        let pct = |p: f64| {
            let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
            self.latencies_us.get(i).copied().unwrap_or(0) as f64 / 1000.0
        };
        let rps = self.requests as f64 / self.secs;
        println!(
            "{name:<32} {rps:>9.0} req/s ({:>9.0} rows/s)   p50 {:>7.2} ms   p99 {:>7.2} ms   max {:>7.2} ms",
            rps * unit_per_request as f64,
            pct(0.5),
            pct(0.99),
            pct(1.0),
        );
    }
}

/// Runs `concurrency` client loops for `secs`; `make` builds request `i`.
async fn drive<F, Fut>(concurrency: usize, secs: u64, make: F) -> Report
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let make = Arc::new(make);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..concurrency)
        .map(|c| {
            let make = make.clone();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut i = c as u64;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    make(i).await;
                    lat.push(t.elapsed().as_micros() as u64);
                    i += concurrency as u64;
                }
                lat
            })
        })
        .collect();
    let mut latencies_us = Vec::new();
    for t in tasks {
        latencies_us.extend(t.await.expect("client task"));
    }
    Report {
        requests: latencies_us.len() as u64,
        secs: start.elapsed().as_secs_f64(),
        latencies_us,
    }
}

fn main() {
    let args = Args::parse();
    let base = match &args.dir {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir_in("."),
    }
    .expect("temp dir");
    let store = Store::open(
        base.path(),
        StoreConfig {
            durability: Durability::Fsync,
            ..StoreConfig::default()
        },
    )
    .expect("open store");
    let rt = Runtime::start(
        store,
        RuntimeConfig {
            threads: args.executors,
            ..RuntimeConfig::default()
        },
        vec![namespace_spec()],
    )
    .expect("runtime");
    let db = D1Service::from_runtime(&rt, "bench-db").expect("d1");
    let clients = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio");
    println!(
        "d1_bench: {} rows, {} s runs, {} in flight, batches of {}, {} executors, Fsync; data under {}",
        args.rows,
        args.secs,
        args.concurrency,
        args.batch,
        args.executors,
        base.path().display()
    );
    clients.block_on(async {
        db.exec(SCHEMA).await.expect("schema");

        // Batched inserts: `batch()` of `--batch` INSERTs, one transaction each.
        let next = Arc::new(std::sync::atomic::AtomicU64::new(1 << 40));
        let (d, n, b) = (db.clone(), next.clone(), args.batch);
        let mut inserts = drive(args.concurrency, args.secs, move |_| {
            let (d, n) = (d.clone(), n.clone());
            async move {
                let first = n.fetch_add(b as u64, std::sync::atomic::Ordering::Relaxed);
                let stmts = (first..first + b as u64)
                    .map(|i| {
                        Statement::new(
                            "INSERT INTO users (id, email, name, created) VALUES (?, ?, ?, ?)",
                        )
                        .bind([
                            SqlValue::Integer(i as i64),
                            SqlValue::Text(email(i)),
                            SqlValue::Text(format!("User {i}")),
                            SqlValue::Integer(1_700_000_000),
                        ])
                    })
                    .collect();
                d.batch(stmts).await.expect("batch");
            }
        })
        .await;
        inserts.print(
            &format!("batch of {} inserts", args.batch),
            args.batch as u64,
        );

        // Load the rows the point reads look up (batches of 1,000).
        let load = Instant::now();
        for chunk in (0..args.rows as u64).collect::<Vec<_>>().chunks(1000) {
            let stmts = chunk
                .iter()
                .map(|&i| {
                    Statement::new(
                        "INSERT INTO users (id, email, name, created) VALUES (?, ?, ?, ?)",
                    )
                    .bind([
                        SqlValue::Integer(i as i64),
                        SqlValue::Text(email(i)),
                        SqlValue::Text(format!("User {i}")),
                        SqlValue::Integer(1_700_000_000),
                    ])
                })
                .collect();
            db.batch(stmts).await.expect("load");
        }
        println!(
            "  loaded {} rows in {:.1} s",
            args.rows,
            load.elapsed().as_secs_f64()
        );

        // Indexed point reads: `SELECT ... WHERE email = ?` on random loaded rows.
        let (d, rows) = (db.clone(), args.rows as u64);
        let mut reads = drive(args.concurrency, args.secs, move |i| {
            let d = d.clone();
            async move {
                let key = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) % rows.max(1);
                let r = d
                    .query(
                        Statement::new("SELECT id, name FROM users WHERE email = ?")
                            .bind([SqlValue::Text(email(key))]),
                    )
                    .await
                    .expect("read");
                assert_eq!(r.rows.len(), 1, "row {key} not found");
            }
        })
        .await;
        reads.print("indexed point read", 1);
    });
    rt.shutdown();
}
