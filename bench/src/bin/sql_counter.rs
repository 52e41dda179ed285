//! SQL counter benchmark (issue 6): `UPDATE c SET n = n + 1 WHERE id = 1 RETURNING n` on
//! SQLite-backed objects, side by side, fsync durability on both sides:
//!
//! - **cinder**: cinder-sql (SQLite pages in fjall), every transaction's turn flushed into the
//!   group committer (`Durability::Fsync`: confirmed after `fdatasync`). Objects run on
//!   `--executors` threads; each object waits for its confirmation before its next transaction,
//!   as an object behind its output gate does, while the other objects' transactions proceed.
//! - **files**: one SQLite file per object in WAL mode with `synchronous=FULL` (what workerd
//!   does), each commit durable on return; objects spread over `--file-threads` threads so the
//!   baseline's fsyncs can overlap.
//!
//! Three workloads: many objects (`--objects`, default 1,000), one hot object (`--hot-inflight`
//! requests in flight; the object keeps executing while earlier commits are pending, each
//! request completes when its commit is durable), and first touch of `--first-touch` objects
//! (create the database, its table and the first row).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cinder_sql::rusqlite::{Connection, OpenFlags};
use cinder_sql::{SqlConfig, SqlStorage};
use cinder_storage::{Durability, ObjectId, Store, StoreConfig};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "SQL counter: SQLite pages in fjall vs one SQLite file per object (WAL, FULL)")]
struct Args {
    /// Objects updated concurrently in the many-objects workload.
    #[arg(long, default_value_t = 1000)]
    objects: usize,
    /// Seconds per measured run.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// cinder executor threads.
    #[arg(long, default_value_t = 2)]
    executors: usize,
    /// Threads of the one-file-per-object baseline.
    #[arg(long, default_value_t = 32)]
    file_threads: usize,
    /// Requests in flight on the hot object (cinder side).
    #[arg(long, default_value_t = 64)]
    hot_inflight: usize,
    /// Objects in the first-touch workload (0 skips it).
    #[arg(long, default_value_t = 10_000)]
    first_touch: usize,
    /// Run only the cinder side of the many-objects workload (for profiling).
    #[arg(long)]
    cinder_only: bool,
    /// Directory for the data (default: a temp dir under the current directory, so it is on
    /// the same disk as the project, not a tmpfs).
    #[arg(long)]
    dir: Option<PathBuf>,
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS c (id INTEGER PRIMARY KEY, n INTEGER NOT NULL);
                      INSERT OR IGNORE INTO c VALUES (1, 0);";
const INCREMENT: &str = "UPDATE c SET n = n + 1 WHERE id = 1 RETURNING n";
const FIRST_TOUCH: &str =
    "CREATE TABLE IF NOT EXISTS c (id INTEGER PRIMARY KEY, n INTEGER NOT NULL);
     INSERT INTO c VALUES (1, 1) ON CONFLICT (id) DO UPDATE SET n = n + 1 RETURNING n";

fn id(n: usize) -> ObjectId {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&(n as u64).to_be_bytes());
    id[31] = 0x5a;
    id
}

fn open_store(dir: &Path) -> Arc<Store> {
    Store::open(
        dir,
        StoreConfig {
            durability: Durability::Fsync,
            ..StoreConfig::default()
        },
    )
    .expect("open store")
}

fn counter(db: &SqlStorage) -> i64 {
    db.exec(INCREMENT, &[])
        .and_then(|mut c| c.one())
        .expect("increment")
        .values()[0]
        .as_i64()
        .expect("integer")
}

/// Each executor thread drives its objects: every object runs one transaction, then the
/// thread waits for their confirmations; repeat until the deadline. Returns transactions.
fn cinder_many(store: &Arc<Store>, objects: usize, executors: usize, secs: u64) -> (u64, f64) {
    let setup: Vec<Vec<usize>> = (0..executors)
        .map(|e| (0..objects).filter(|o| o % executors == e).collect())
        .collect();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let total: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = setup
            .into_iter()
            .map(|mine| {
                let store = store.clone();
                s.spawn(move || {
                    let dbs: Vec<SqlStorage> = mine
                        .iter()
                        .map(|&o| {
                            SqlStorage::open(store.object(id(o)), SqlConfig::default())
                                .expect("open")
                        })
                        .collect();
                    let mut done = 0u64;
                    let mut pending = Vec::with_capacity(dbs.len());
                    while Instant::now() < deadline {
                        for db in &dbs {
                            counter(db);
                            if let Some(c) = db.flush().expect("flush") {
                                pending.push(c);
                            }
                        }
                        for c in pending.drain(..) {
                            c.wait().expect("durable");
                        }
                        done += dbs.len() as u64;
                    }
                    done
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("thread")).sum()
    });
    (total, start.elapsed().as_secs_f64())
}

fn cinder_setup(store: &Arc<Store>, objects: usize) {
    let mut pending = Vec::new();
    for o in 0..objects {
        let db = SqlStorage::open(store.object(id(o)), SqlConfig::default()).expect("open");
        db.exec(SCHEMA, &[]).expect("schema");
        pending.extend(db.flush().expect("flush"));
    }
    for c in pending {
        c.wait().expect("durable");
    }
}

fn cinder_hot(store: &Arc<Store>, inflight: usize, secs: u64) -> (u64, f64) {
    let db =
        SqlStorage::open(store.object(id(usize::MAX >> 8)), SqlConfig::default()).expect("open");
    db.exec(SCHEMA, &[]).expect("schema");
    if let Some(c) = db.flush().expect("flush") {
        c.wait().expect("durable");
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let mut pending = VecDeque::new();
    let mut done = 0u64;
    while Instant::now() < deadline {
        counter(&db);
        if let Some(c) = db.flush().expect("flush") {
            pending.push_back(c);
        }
        if pending.len() >= inflight {
            if let Some(c) = pending.pop_front() {
                c.wait().expect("durable");
                done += 1;
            }
        }
    }
    for c in pending {
        c.wait().expect("durable");
        done += 1;
    }
    (done, start.elapsed().as_secs_f64())
}

fn cinder_first_touch(store: &Arc<Store>, objects: usize, executors: usize) -> f64 {
    let start = Instant::now();
    std::thread::scope(|s| {
        for e in 0..executors {
            let store = store.clone();
            s.spawn(move || {
                let mut pending = Vec::new();
                for o in (0..objects).filter(|o| o % executors == e) {
                    let db = SqlStorage::open(store.object(id(1 << 40 | o)), SqlConfig::default())
                        .expect("open");
                    db.exec(FIRST_TOUCH, &[]).expect("first touch");
                    pending.extend(db.flush().expect("flush"));
                }
                for c in pending {
                    c.wait().expect("durable");
                }
            });
        }
    });
    start.elapsed().as_secs_f64()
}

fn file_conn(path: &Path) -> Connection {
    let c = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
    )
    .expect("open file");
    c.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")
        .expect("pragmas");
    c
}

fn file_increment(c: &Connection) -> i64 {
    c.query_row(INCREMENT, [], |r| r.get(0)).expect("increment")
}

fn files_many(dir: &Path, objects: usize, threads: usize, secs: u64) -> (u64, f64) {
    let conns: Vec<Vec<Connection>> = (0..threads)
        .map(|t| {
            (0..objects)
                .filter(|o| o % threads == t)
                .map(|o| {
                    let c = file_conn(&dir.join(format!("obj-{o}.sqlite")));
                    c.execute_batch(SCHEMA).expect("schema");
                    c
                })
                .collect()
        })
        .collect();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let total: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = conns
            .into_iter()
            .map(|mine| {
                s.spawn(move || {
                    let mut done = 0u64;
                    while Instant::now() < deadline {
                        for c in &mine {
                            file_increment(c);
                            done += 1;
                        }
                    }
                    done
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("thread")).sum()
    });
    (total, start.elapsed().as_secs_f64())
}

fn files_hot(dir: &Path, secs: u64) -> (u64, f64) {
    let c = file_conn(&dir.join("hot.sqlite"));
    c.execute_batch(SCHEMA).expect("schema");
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let mut done = 0u64;
    while Instant::now() < deadline {
        file_increment(&c);
        done += 1;
    }
    (done, start.elapsed().as_secs_f64())
}

fn files_first_touch(dir: &Path, objects: usize, threads: usize) -> f64 {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                for o in (0..objects).filter(|o| o % threads == t) {
                    let c = file_conn(&dir.join(format!("first-{o}.sqlite")));
                    c.execute_batch(
                        "CREATE TABLE IF NOT EXISTS c (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)",
                    )
                    .expect("create");
                    let _: i64 = c
                        .query_row(
                            "INSERT INTO c VALUES (1, 1) ON CONFLICT (id) DO UPDATE SET n = n + 1 RETURNING n",
                            [],
                            |r| r.get(0),
                        )
                        .expect("first touch");
                }
            });
        }
    });
    start.elapsed().as_secs_f64()
}

fn row(name: &str, cinder: f64, files: f64, unit: &str) {
    println!(
        "{name:<28} cinder {cinder:>10.0} {unit}   files {files:>10.0} {unit}   ratio {:>6.1}x",
        cinder / files
    );
}

fn main() {
    let args = Args::parse();
    let base = match &args.dir {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir_in("."),
    }
    .expect("temp dir");
    let cinder_dir = base.path().join("cinder");
    let files_dir = base.path().join("files");
    std::fs::create_dir_all(&files_dir).expect("mkdir");
    println!(
        "sql_counter: {} objects, {} s runs, cinder {} executors (Fsync, group commit), \
         files {} threads (WAL, synchronous=FULL); data under {}",
        args.objects,
        args.secs,
        args.executors,
        args.file_threads,
        base.path().display()
    );

    let store = open_store(&cinder_dir);
    cinder_setup(&store, args.objects);
    let (n, t) = cinder_many(&store, args.objects, args.executors, args.secs);
    let cinder_many_tps = n as f64 / t;
    let syncs = store.sync_stats();
    println!(
        "  cinder many: {n} txns in {t:.1} s ({} fsyncs in total so far)",
        syncs.syncs
    );
    if args.cinder_only {
        println!("{:.0} txn/s", cinder_many_tps);
        return;
    }
    let (n, t) = files_many(&files_dir, args.objects, args.file_threads, args.secs);
    let files_many_tps = n as f64 / t;
    println!("  files  many: {n} txns in {t:.1} s");
    row(
        &format!("{} objects", args.objects),
        cinder_many_tps,
        files_many_tps,
        "txn/s",
    );

    let (n, t) = cinder_hot(&store, args.hot_inflight, args.secs);
    let cinder_hot_tps = n as f64 / t;
    let (m, u) = files_hot(&files_dir, args.secs);
    let files_hot_tps = m as f64 / u;
    println!("  cinder hot: {n} txns in {t:.1} s; files hot: {m} txns in {u:.1} s");
    row("one hot object", cinder_hot_tps, files_hot_tps, "txn/s");

    if args.first_touch > 0 {
        let t = cinder_first_touch(&store, args.first_touch, args.executors);
        let u = files_first_touch(&files_dir, args.first_touch, args.file_threads);
        println!(
            "  first touch of {}: cinder {t:.2} s, files {u:.2} s",
            args.first_touch
        );
        row(
            &format!("{} objects' first touch", args.first_touch),
            args.first_touch as f64 / t,
            args.first_touch as f64 / u,
            "obj/s",
        );
    }
}
