//! Crash test: a child process (this test binary, re-executed) makes confirmed writes; the
//! parent kills it with SIGKILL at random points over many rounds, reopens the store and checks
//! that every confirmed write is there, counters never go back, and no batch is partial.
//!
//! Three kinds of rounds: `fsync` and `process` durability killed with SIGKILL (the page cache
//! survives), and `power`: fsync durability, and after the kill every journal is cut back to
//! what the last completed fdatasync covered, with random garbage after the cut
//! ([`cinder_storage::power_loss`]), which is what a power cut can leave.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cinder_storage::{Durability, ObjectId, Store, StoreConfig, StoreTuning};
use rand::Rng;

const CHILD_ENV: &str = "CINDER_STORAGE_CRASH_CHILD";
const MODE_ENV: &str = "CINDER_STORAGE_CRASH_MODE";
const OBJECTS: u8 = 48;
const WRITERS: u8 = 2;
/// Padding of the values of every third object: 16 objects × 2 keys × 3 KiB ≈ 100 KiB per
/// round of writes against a 128 KiB memtable, so memtables flush and journals rotate many
/// times per child. The other objects write tiny batches, many of which fit in fjall's journal
/// buffer at once: a batch confirmed before it left that buffer would be lost by the kill.
const BIG_PAD: usize = 3 * 1024;
const SMALL_PAD: usize = 8;
const ROUNDS: usize = 24;
const MODES: [&str; 3] = ["fsync", "process", "power"];

fn id(n: u8) -> ObjectId {
    let mut id = [0xc5; 32];
    id[0] = n;
    id
}

fn tuning() -> StoreTuning {
    StoreTuning {
        max_memtable_bytes: Some(128 * 1024),
        ..StoreTuning::default()
    }
}

fn pad(n: u8) -> usize {
    if n % 3 == 0 {
        BIG_PAD
    } else {
        SMALL_PAD
    }
}

fn encode(n: u8, counter: u64) -> Bytes {
    let mut v = counter.to_be_bytes().to_vec();
    v.extend((0..pad(n)).map(|i| (i as u64).wrapping_mul(counter | 1) as u8));
    Bytes::from(v)
}

fn decode(n: u8, v: &[u8]) -> u64 {
    let c = u64::from_be_bytes(v[..8].try_into().unwrap());
    assert_eq!(v, &encode(n, c)[..], "value bytes of counter {c} corrupted");
    c
}

fn read_counter(store: &Arc<Store>, n: u8) -> u64 {
    let o = store.object(id(n));
    let a = o.get("a").unwrap().map(|v| decode(n, &v));
    let b = o.get("b").unwrap().map(|v| decode(n, &v));
    assert_eq!(a, b, "object {n}: a batch was applied in part");
    a.unwrap_or(0)
}

/// The child: writes `a` and `b` of each object in one batch, increments forever, and prints
/// `CONFIRMED <object> <counter>` once the batch is durable.
#[test]
#[ignore = "child process of crash_recovery_is_exact"]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mode = std::env::var(MODE_ENV).unwrap_or_default();
    let durability = match mode.as_str() {
        "process" => Durability::Process,
        _ => Durability::Fsync,
    };
    let cfg = StoreConfig {
        durability,
        ..StoreConfig::default()
    };
    let tuning = StoreTuning {
        sync_log: mode == "power",
        ..tuning()
    };
    let store = Store::open_tuned(dir.as_ref(), cfg, tuning).unwrap();
    let threads: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            std::thread::spawn(move || {
                let mine: Vec<u8> = (0..OBJECTS).filter(|n| n % WRITERS == w).collect();
                let objs: Vec<_> = mine.iter().map(|&n| store.object(id(n))).collect();
                let mut rng = rand::rng();
                let mut counters: Vec<u64> =
                    mine.iter().map(|&n| read_counter(&store, n)).collect();
                loop {
                    let mut commits = Vec::new();
                    for (i, o) in objs.iter().enumerate() {
                        counters[i] += 1;
                        o.put("a", encode(mine[i], counters[i])).unwrap();
                        o.put("b", encode(mine[i], counters[i])).unwrap();
                        // The alarm table is another keyspace: same batch, same atomicity.
                        o.set_alarm(counters[i] as i64).unwrap();
                        commits.push((mine[i], counters[i], o.flush().unwrap()));
                    }
                    for (n, c, commit) in commits {
                        commit.wait().unwrap();
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "CONFIRMED {n} {c}").unwrap();
                        out.flush().unwrap();
                    }
                    // Workload pacing, not synchronisation: idle gaps after confirmations, so
                    // the kill often lands when nothing newer has pushed the last confirmed
                    // batches out of in-process buffers.
                    if rng.random_ratio(1, 2) {
                        std::thread::sleep(Duration::from_micros(rng.random_range(500..5000)));
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// Opens the store on another thread so a recovery that hangs fails the test instead of
/// hanging it.
fn reopen_with_deadline(dir: &std::path::Path) -> Arc<Store> {
    let (tx, rx) = mpsc::channel();
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(Store::open_tuned(&dir, StoreConfig::default(), tuning()));
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("reopening after kill -9 hung for 60 s")
        .expect("reopening after kill -9 failed")
}

#[test]
fn crash_recovery_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand::rng();
    let mut floor: HashMap<u8, u64> = HashMap::new();
    let started = Instant::now();
    let mut total_confirmed = 0usize;
    let mut max_tables = 0;
    for round in 0..ROUNDS {
        let mode = MODES[round % MODES.len()];
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .env(MODE_ENV, mode)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        // Kill after a random number of confirmations: a random point in the write stream
        // without sleeping.
        let kill_after = rng.random_range(1..1500usize);
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("CONFIRMED ") {
                    let mut it = rest.split(' ');
                    let n: u8 = it.next().unwrap().parse().unwrap();
                    let c: u64 = it.next().unwrap().parse().unwrap();
                    if tx.send((n, c)).is_err() {
                        break;
                    }
                }
            }
        });
        let mut confirmed: HashMap<u8, u64> = HashMap::new();
        let mut seen = 0;
        while seen < kill_after {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok((n, c)) => {
                    let e = confirmed.entry(n).or_default();
                    *e = (*e).max(c);
                    seen += 1;
                }
                Err(e) => panic!("round {round}: child stopped confirming: {e}"),
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        // Lines printed before the kill were confirmed too.
        for (n, c) in rx.try_iter() {
            let e = confirmed.entry(n).or_default();
            *e = (*e).max(c);
            seen += 1;
        }
        total_confirmed += seen;
        if mode == "power" {
            let cut = cinder_storage::power_loss::cut_journals(dir.path(), rng.random(), 8192)
                .expect("cutting the journals back");
            assert!(cut.journals_cut > 0, "round {round}: no journal to cut");
        }

        let store = reopen_with_deadline(dir.path());
        let alarms: HashMap<ObjectId, i64> = store.alarms().unwrap().into_iter().collect();
        for n in 0..OBJECTS {
            let c = read_counter(&store, n);
            let alarm = alarms.get(&id(n)).copied().unwrap_or(0);
            assert_eq!(
                alarm, c as i64,
                "round {round}: object {n} alarm and keys from different batches"
            );
            let want = confirmed.get(&n).copied().unwrap_or(0);
            assert!(
                c >= want,
                "round {round} ({mode}): object {n} confirmed {want}, found {c}"
            );
            let f = floor.entry(n).or_default();
            assert!(
                c >= *f,
                "round {round}: object {n} went back from {f} to {c}"
            );
            *f = c;
        }
        let stats = store.engine_stats();
        max_tables = max_tables.max(stats.table_count);
        drop(store);
    }
    eprintln!(
        "crash test: {ROUNDS} rounds, {total_confirmed} confirmed batches, \
         up to {max_tables} tables, {:?}",
        started.elapsed()
    );
    // The rounds must have reached memtable flushes (and with them journal rotation).
    assert!(max_tables > 0, "no memtable was ever flushed to a table");
}
