//! Ten thousand SQLite-backed objects: no file descriptor per database, and the resident
//! memory an idle one costs (printed, not asserted).

mod common;

use cinder_sql::{memory_used, set_memory_budget, SqlStorage, SqlValue, DEFAULT_MEMORY_BUDGET};
use cinder_storage::Durability;

const OBJECTS: u64 = 10_000;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[test]
fn ten_thousand_databases_use_no_descriptors() {
    // Before the first database: turns on SQLite's memory accounting, so the heap is printed.
    set_memory_budget(DEFAULT_MEMORY_BUDGET);
    let dir = tempfile::tempdir().unwrap();
    let store = common::store(dir.path(), Durability::Process);
    // Warm up: the first database and a flush open whatever fjall keeps open.
    let first = common::open(&store, 0);
    first
        .exec("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)", &[])
        .unwrap();
    common::commit(&first);
    let fds_before = open_fds();
    let rss_before = rss_bytes();
    let sqlite_before = memory_used();

    let mut dbs: Vec<SqlStorage> = Vec::with_capacity(OBJECTS as usize);
    let mut pending = Vec::new();
    for n in 1..=OBJECTS {
        let db = common::open(&store, n);
        db.exec(
            "CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (?, 'hello')",
            &[SqlValue::Integer(n as i64)],
        )
        .unwrap();
        if let Some(c) = db.flush().unwrap() {
            pending.push(c);
        }
        if pending.len() >= 500 {
            for c in pending.drain(..) {
                c.wait().unwrap();
            }
        }
        db.release_memory();
        dbs.push(db);
    }
    for c in pending.drain(..) {
        c.wait().unwrap();
    }
    let fds_after = open_fds();
    let rss_after = rss_bytes();
    let sqlite_after = memory_used();
    println!(
        "{OBJECTS} open SQLite-backed objects: fds {fds_before} -> {fds_after}; \
         RSS +{:.1} KiB per idle object with its connection open \
         (SQLite heap {:.1} KiB of it)",
        rss_after.saturating_sub(rss_before) as f64 / OBJECTS as f64 / 1024.0,
        (sqlite_after - sqlite_before) as f64 / OBJECTS as f64 / 1024.0,
    );
    // One descriptor per database would add 10,000; fjall's own files grow with data, not
    // with the number of databases.
    assert!(
        fds_after < fds_before + 64,
        "descriptors grew from {fds_before} to {fds_after}"
    );
    // Every database is its own and intact.
    for (i, db) in dbs.iter().enumerate().step_by(997) {
        let row = db.exec("SELECT k, v FROM t", &[]).unwrap().one().unwrap();
        assert_eq!(row.values()[0], SqlValue::Integer(i as i64 + 1));
    }
    drop(dbs);
    println!(
        "after closing them (eviction), SQLite heap is {:.1} KiB per object",
        (memory_used() - sqlite_before) as f64 / OBJECTS as f64 / 1024.0
    );
}
