//! Crash test: a child process (this test binary, re-executed) runs confirmed SQL transactions
//! on many objects and is killed with SIGKILL at random moments; after every kill the parent
//! reopens the store and checks that every confirmed transaction is there, none in part, and
//! that `PRAGMA integrity_check` is `ok` on every database.
//!
//! Every other round is a power cut rather than a crash: SIGKILL keeps the page cache, so there
//! the journal is also cut back to what the child's last completed fdatasync covered, with
//! random garbage after the cut ([`cinder_storage::power_loss`]), before the store is reopened.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use bytes::Bytes;
use cinder_sql::{SqlConfig, SqlError, SqlStorage, SqlValue};
use cinder_storage::{Durability, Store, StoreConfig, StoreTuning};
use rand::Rng;

const OBJECTS: u64 = 12;
const ROUNDS: usize = 16;
const CHILD_ENV: &str = "CINDER_SQL_CRASH_CHILD_DIR";
/// Set for the child of a power-loss round: it logs what each fdatasync covered.
const SYNC_LOG_ENV: &str = "CINDER_SQL_CRASH_SYNC_LOG";

fn payload(obj: u64, seq: i64) -> Vec<u8> {
    let len = 200 + ((seq as usize * 977 + obj as usize * 131) % 3000);
    (0..len)
        .map(|i| (i as i64 ^ seq ^ obj as i64) as u8)
        .collect()
}

fn open_store(dir: &std::path::Path, sync_log: bool) -> std::sync::Arc<Store> {
    // A small memtable so journals rotate and memtables flush during the run.
    Store::open_tuned(
        dir,
        StoreConfig {
            durability: Durability::Fsync,
            cache_bytes: 4 << 20,
        },
        StoreTuning {
            max_memtable_bytes: Some(512 << 10),
            sync_log,
            ..StoreTuning::default()
        },
    )
    .expect("open store")
}

fn open_db(store: &std::sync::Arc<Store>, obj: u64) -> SqlStorage {
    let db = SqlStorage::open(
        store.object(common::id(obj)),
        SqlConfig {
            cache_kib: 64,
            ..SqlConfig::default()
        },
    )
    .expect("open");
    db.exec(
        "CREATE TABLE IF NOT EXISTS acc (id INTEGER PRIMARY KEY, n INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS log (seq INTEGER PRIMARY KEY, body BLOB NOT NULL);
         CREATE INDEX IF NOT EXISTS log_body ON log (body);
         INSERT OR IGNORE INTO acc VALUES (1, 0);",
        &[],
    )
    .expect("schema");
    db
}

/// The child: forever, one transaction per object per step, all objects' turns flushed
/// together (so they share group commits), then each confirmation printed.
#[test]
#[ignore = "run only as the child of crash_kill9_keeps_every_confirmed_transaction"]
fn crash_child_process() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let store = open_store(
        std::path::Path::new(&dir),
        std::env::var_os(SYNC_LOG_ENV).is_some(),
    );
    let dbs: Vec<SqlStorage> = (0..OBJECTS).map(|o| open_db(&store, o)).collect();
    for db in &dbs {
        if let Some(c) = db.flush().unwrap() {
            c.wait().unwrap();
        }
    }
    println!("ready");
    loop {
        let mut pending = Vec::new();
        for (o, db) in dbs.iter().enumerate() {
            let n = db
                .transaction_sync(|| -> Result<i64, SqlError> {
                    let n = db
                        .exec("UPDATE acc SET n = n + 1 WHERE id = 1 RETURNING n", &[])?
                        .one()?
                        .values()[0]
                        .as_i64()
                        .unwrap();
                    db.exec(
                        "INSERT INTO log VALUES (?, ?)",
                        &[SqlValue::Integer(n), SqlValue::Blob(payload(o as u64, n))],
                    )?;
                    db.kv().put("last", Bytes::from(n.to_string()))?;
                    Ok(n)
                })
                .unwrap();
            pending.push((o, n, db.flush().unwrap().expect("wrote")));
        }
        for (o, n, c) in pending {
            c.wait().unwrap();
            println!("ok {o} {n}");
        }
    }
}

/// Kills the child if the parent fails midway, so no child outlives the test.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn crash_kill9_keeps_every_confirmed_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let mut confirmed = vec![0i64; OBJECTS as usize];
    let mut rng = rand::rng();
    for round in 0..ROUNDS {
        let power_cut = round % 2 == 1;
        let mut command = Command::new(std::env::current_exe().unwrap());
        if power_cut {
            command.env(SYNC_LOG_ENV, "1");
        }
        let child = command
            .args(["--ignored", "--exact", "crash_child_process", "--nocapture"])
            .args(["--test-threads", "1"])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut child = KillOnDrop(child);
        let kill_after = rng.random_range(0..(40 * OBJECTS as usize));
        let mut seen = 0usize;
        let mut ready = false;
        let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
        while let Some(Ok(line)) = lines.next() {
            // The harness prints "test crash_child_process ... " before the child's first line.
            if line.ends_with("ready") {
                ready = true;
            } else if let Some(rest) = line.strip_prefix("ok ") {
                let mut it = rest.split(' ');
                let o: usize = it.next().unwrap().parse().unwrap();
                let n: i64 = it.next().unwrap().parse().unwrap();
                confirmed[o] = confirmed[o].max(n);
                seen += 1;
            }
            if ready && seen >= kill_after {
                break;
            }
        }
        assert!(ready, "round {round}: the child died before it was ready");
        child.0.kill().unwrap(); // SIGKILL
        child.0.wait().unwrap();
        if power_cut {
            let cut = cinder_storage::power_loss::cut_journals(dir.path(), rng.random(), 8192)
                .expect("cutting the journals back");
            assert!(cut.journals_cut > 0, "round {round}: no journal to cut");
        }

        let store = open_store(dir.path(), false);
        for o in 0..OBJECTS {
            let db = SqlStorage::open(store.object(common::id(o)), SqlConfig::default()).unwrap();
            assert_eq!(
                db.integrity_check().unwrap(),
                "ok",
                "round {round} object {o}"
            );
            let n = db
                .exec("SELECT n FROM acc WHERE id = 1", &[])
                .unwrap()
                .one()
                .unwrap()
                .values()[0]
                .as_i64()
                .unwrap();
            assert!(
                n >= confirmed[o as usize],
                "round {round} object {o}: confirmed {} but found {n}",
                confirmed[o as usize]
            );
            let stats = db
                .exec(
                    "SELECT count(*), coalesce(min(seq), 0), coalesce(max(seq), 0) FROM log",
                    &[],
                )
                .unwrap()
                .one()
                .unwrap()
                .into_values();
            assert_eq!(
                stats,
                vec![
                    SqlValue::Integer(n),
                    SqlValue::Integer(n.min(1)),
                    SqlValue::Integer(n)
                ],
                "round {round} object {o}: a transaction is there in part"
            );
            for row in db.exec("SELECT seq, body FROM log", &[]).unwrap() {
                let row = row.unwrap();
                let seq = row.values()[0].as_i64().unwrap();
                assert_eq!(row.values()[1], SqlValue::Blob(payload(o, seq)));
            }
            let last = db.kv().get("last").unwrap();
            let want = (n > 0).then(|| Bytes::from(n.to_string()));
            assert_eq!(last, want, "round {round} object {o}: KV and SQL diverged");
        }
        drop(store);
    }
    assert!(
        confirmed.iter().any(|&n| n > 0),
        "no transaction was ever confirmed"
    );
}
