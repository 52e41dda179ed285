//! Behaviour of the storage API through real fjall on disk: limits and their exact messages,
//! durability confirmation, group commit, cache freshness, alarms, transactions, prepared
//! reads, and failing closed after injected faults.

use std::sync::Arc;

use bytes::Bytes;
use cinder_storage::{
    Durability, ErrorKind, Fault, ListOptions, ObjectId, Prepared, ReadOptions, Section,
    StorageError, Store, StoreConfig, WriteOptions, ENFORCED_MAX_VALUE_BYTES,
};

fn id(n: u8) -> ObjectId {
    [n; 32]
}

fn open(dir: &std::path::Path) -> Arc<Store> {
    Store::open(dir, StoreConfig::default()).unwrap()
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

#[test]
fn limit_errors_carry_cloudflare_messages_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let o = store.object(id(1));

    o.put(&"k".repeat(2048), b("ok")).unwrap();
    let e = o.put(&"k".repeat(2049), b("v")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RangeError);
    assert_eq!(
        e.to_string(),
        "Keys cannot be larger than 2048 bytes. A key of size 2049 was provided."
    );
    assert_eq!(
        o.get(&"x".repeat(2049)).unwrap_err().kind(),
        ErrorKind::RangeError
    );
    assert_eq!(
        o.delete(&"x".repeat(2049)).unwrap_err().kind(),
        ErrorKind::RangeError
    );

    o.put("max", Bytes::from(vec![1; ENFORCED_MAX_VALUE_BYTES]))
        .unwrap();
    let e = o
        .put("big", Bytes::from(vec![1; ENFORCED_MAX_VALUE_BYTES + 1]))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "Values cannot be larger than 131072 bytes. A value of size {} was provided.",
            ENFORCED_MAX_VALUE_BYTES + 1
        )
    );

    let keys = |n: usize| (0..n).map(|i| format!("k{i}")).collect::<Vec<_>>();
    let e = o.get_many(&keys(129)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RangeError);
    assert_eq!(
        e.to_string(),
        "Maximum number of key value pairs is 128. 129 pairs were provided."
    );
    assert!(o.delete_many(&keys(129)).is_err());
    assert_eq!(o.get_many(&keys(128)).unwrap(), vec![]);

    // Empty key lists are fine.
    assert_eq!(o.get_many(&[]).unwrap(), vec![]);
    assert_eq!(o.delete_many(&[]).unwrap(), 0);
    o.put_many(vec![]).unwrap();

    // A put_many with one bad entry stores none of them.
    let e = o
        .put_many(vec![("good".into(), b("1")), ("k".repeat(3000), b("2"))])
        .unwrap_err();
    assert!(matches!(e, StorageError::KeyTooLarge { size: 3000 }));
    assert_eq!(o.get("good").unwrap(), None);
    let too_many: Vec<(String, Bytes)> = keys(129).into_iter().map(|k| (k, b("v"))).collect();
    assert!(o.put_many(too_many).is_err());
    assert_eq!(o.get("k0").unwrap(), None);

    let e = o
        .list(&ListOptions {
            limit: Some(0),
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TypeError);
    assert_eq!(e.to_string(), "List limit must be positive.");
    let e = o
        .list(&ListOptions {
            start: Some("a".into()),
            start_after: Some("a".into()),
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TypeError);

    let e = o.set_alarm(0).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TypeError);
    assert_eq!(
        e.to_string(),
        "setAlarm() cannot be called with an alarm time <= 0"
    );
    assert_eq!(o.get_alarm().unwrap(), None);

    // Only the two valid puts are in the turn.
    o.flush().unwrap().wait().unwrap();
    let all = o.list(&ListOptions::default()).unwrap();
    assert_eq!(all.len(), 2);
}

/// Spins until the committer has written the batch into fjall (a deadline turns a hang into a
/// failure).
fn wait_applied(c: &cinder_storage::Commit) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !c.is_applied() {
        assert!(std::time::Instant::now() < deadline, "batch never applied");
        std::thread::yield_now();
    }
}

#[test]
fn commit_resolves_only_after_persist_and_writes_are_visible_before() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let o = store.object(id(2));
    let other = store.object(id(2));

    let hold = store.hold_durability();
    o.put("k", b("v")).unwrap();
    assert!(o.has_pending());
    let commit = o.flush().unwrap();
    assert!(!o.has_pending());
    assert!(o.flush().is_none(), "nothing written since the last flush");
    // Its own handle reads it at once, from memory ...
    assert_eq!(o.get("k").unwrap(), Some(b("v")));
    // ... every other reader once the committer has written it into fjall ...
    wait_applied(&commit);
    assert_eq!(other.get("k").unwrap(), Some(b("v")));
    // ... but not confirmed while durability is held.
    assert!(!commit.is_done());
    let mut commit = Box::pin(commit);
    assert!(futures::executor::block_on(futures::future::poll_immediate(&mut commit)).is_none());
    drop(hold);
    futures::executor::block_on(commit).unwrap();
}

#[test]
fn one_persist_confirms_a_whole_group() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let objects: Vec<_> = (0..100).map(|n| store.object(id(n))).collect();
    let before = store.sync_stats().syncs;
    let hold = store.hold_durability();
    let commits: Vec<_> = objects
        .iter()
        .map(|o| {
            o.put("n", b("1")).unwrap();
            o.flush().unwrap()
        })
        .collect();
    assert!(commits.iter().all(|c| !c.is_done()));
    // All in fjall (the committer applies in order) before the syncer may run.
    wait_applied(commits.last().unwrap());
    drop(hold);
    for c in commits {
        c.wait().unwrap();
    }
    assert_eq!(
        store.sync_stats().syncs - before,
        1,
        "100 batches, one fsync"
    );
}

#[test]
fn process_durability_confirms_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let cfg = StoreConfig {
            durability: Durability::Process,
            ..StoreConfig::default()
        };
        let store = Store::open(dir.path(), cfg).unwrap();
        let o = store.object(id(3));
        o.put("k", b("v")).unwrap();
        o.flush().unwrap().wait().unwrap();
        // Unflushed writes die with the handle.
        o.put("lost", b("x")).unwrap();
    }
    let store = open(dir.path());
    let o = store.object(id(3));
    assert_eq!(o.get("k").unwrap(), Some(b("v")));
    assert_eq!(o.get("lost").unwrap(), None);
}

#[test]
fn cache_never_serves_stale_values() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let o = store.object(id(4));
    // A second handle on the same id reads only committed state (and the shared cache).
    let reader = store.object(id(4));

    o.put("k", b("1")).unwrap();
    o.flush().unwrap().wait().unwrap();
    assert_eq!(reader.get("k").unwrap(), Some(b("1")));
    assert_eq!(
        reader.list(&ListOptions::default()).unwrap(),
        vec![("k".into(), b("1"))]
    );

    o.put("k", b("2")).unwrap();
    assert_eq!(
        reader.get("k").unwrap(),
        Some(b("1")),
        "unflushed write leaked"
    );
    o.flush().unwrap().wait().unwrap();
    assert_eq!(reader.get("k").unwrap(), Some(b("2")));

    assert!(o.delete("k").unwrap());
    o.flush().unwrap().wait().unwrap();
    assert_eq!(reader.get("k").unwrap(), None);

    // delete_all of cached keys.
    o.put_many(vec![("a".into(), b("a")), ("b".into(), b("b"))])
        .unwrap();
    o.flush().unwrap().wait().unwrap();
    assert_eq!(reader.get("a").unwrap(), Some(b("a")));
    o.delete_all().unwrap();
    assert_eq!(o.get("a").unwrap(), None);
    assert_eq!(
        reader.get("a").unwrap(),
        Some(b("a")),
        "delete_all not flushed yet"
    );
    o.flush().unwrap().wait().unwrap();
    assert_eq!(reader.get("a").unwrap(), None);
    assert_eq!(reader.get("b").unwrap(), None);

    // A rolled-back transaction leaves nothing anywhere.
    let tx = o.transaction();
    tx.put("t", b("t")).unwrap();
    assert_eq!(tx.get("t").unwrap(), Some(b("t")));
    assert_eq!(tx.list(&ListOptions::default()).unwrap().len(), 1);
    tx.rollback();
    tx.commit();
    assert!(o.flush().is_none());
    assert_eq!(reader.get("t").unwrap(), None);
    assert_eq!(o.get("t").unwrap(), None);

    // A no_cache write drops the cached old value rather than leaving it behind.
    assert_eq!(reader.get("a").unwrap(), None);
    o.put("nc", b("old")).unwrap();
    o.flush().unwrap().wait().unwrap();
    assert_eq!(reader.get("nc").unwrap(), Some(b("old")));
    o.put_with("nc", b("new"), WriteOptions { no_cache: true })
        .unwrap();
    o.flush().unwrap().wait().unwrap();
    assert_eq!(reader.get("nc").unwrap(), Some(b("new")));

    // no_cache reads agree.
    o.put("n", b("n")).unwrap();
    o.flush().unwrap().wait().unwrap();
    let nc = ReadOptions { no_cache: true };
    assert_eq!(reader.get_with("n", nc).unwrap(), Some(b("n")));
    assert_eq!(reader.get_many_with(&["n".into()], nc).unwrap().len(), 1);
}

#[test]
fn alarms_persist_across_reopen_and_ignore_delete_all() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        for (n, at) in [(1u8, 3000i64), (2, 1000), (3, 2000)] {
            let o = store.object(id(n));
            o.set_alarm(at).unwrap();
            assert_eq!(o.get_alarm().unwrap(), Some(at));
            o.flush().unwrap().wait().unwrap();
        }
        // Unflushed alarm changes are not listed.
        store.object(id(9)).set_alarm(5).unwrap();
        assert_eq!(store.alarms().unwrap().len(), 3);
    }
    {
        let store = open(dir.path());
        assert_eq!(
            store.alarms().unwrap(),
            vec![(id(2), 1000), (id(3), 2000), (id(1), 3000)]
        );
        let o = store.object(id(3));
        o.put("k", b("v")).unwrap();
        o.delete_all().unwrap();
        o.flush().unwrap().wait().unwrap();
        assert_eq!(o.get_alarm().unwrap(), Some(2000));
        let o = store.object(id(1));
        o.delete_alarm().unwrap();
        assert_eq!(o.get_alarm().unwrap(), None);
        o.flush().unwrap().wait().unwrap();
        // Replacing an alarm keeps one slot.
        let o = store.object(id(2));
        o.set_alarm(1500).unwrap();
        o.flush().unwrap().wait().unwrap();
    }
    let store = open(dir.path());
    assert_eq!(store.alarms().unwrap(), vec![(id(2), 1500), (id(3), 2000)]);
    assert_eq!(store.object(id(1)).get_alarm().unwrap(), None);
}

#[test]
fn transactions_overlay_the_turn_and_commit_into_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let o = store.object(id(5));
    o.put("a", b("1")).unwrap();
    let tx = o.transaction();
    assert_eq!(tx.get("a").unwrap(), Some(b("1")), "sees the turn");
    tx.put("b", b("2")).unwrap();
    assert!(tx.delete("a").unwrap());
    tx.set_alarm(77).unwrap();
    let e = tx.delete_all().unwrap_err();
    assert_eq!(
        e.to_string(),
        "Cannot call deleteAll() within a transaction"
    );
    assert_eq!(
        o.get("b").unwrap(),
        None,
        "not visible outside before commit"
    );
    tx.commit();
    assert_eq!(o.get("a").unwrap(), None);
    assert_eq!(o.get("b").unwrap(), Some(b("2")));
    assert_eq!(o.get_alarm().unwrap(), Some(77));
    o.flush().unwrap().wait().unwrap();

    let tx = o.transaction();
    tx.put("c", b("3")).unwrap();
    tx.rollback();
    let e = tx.put("d", b("4")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Error);
    drop(tx);
    assert!(!o.has_pending());
}

#[test]
fn raw_sections_are_separate_from_kv_and_flush_in_the_same_batch() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let o = store.object(id(6));
    o.put("kv", b("kv")).unwrap();
    o.raw_put(Section::Sql, b"page\x00\x01", b("p1"));
    o.raw_put(Section::Sql, b"page\x00\x02", b("p2"));
    o.raw_put(Section::Meta, b"m", b("m"));
    assert_eq!(o.list(&ListOptions::default()).unwrap().len(), 1);
    o.flush().unwrap().wait().unwrap();
    o.raw_delete(Section::Sql, b"page\x00\x01");
    assert_eq!(
        o.raw_range(Section::Sql, b"page", None).unwrap(),
        vec![(b"page\x00\x02".to_vec(), b("p2"))]
    );
    assert_eq!(o.raw_get(Section::Meta, b"m").unwrap(), Some(b("m")));
    o.delete_all().unwrap();
    o.flush().unwrap().wait().unwrap();
    assert_eq!(
        o.raw_get(Section::Sql, b"page\x00\x02").unwrap(),
        Some(b("p2"))
    );
    o.raw_delete_range(Section::Sql, b"", None).unwrap();
    assert_eq!(o.raw_range(Section::Sql, b"", None).unwrap(), vec![]);
    o.flush().unwrap().wait().unwrap();
    assert_eq!(o.raw_range(Section::Sql, b"", None).unwrap(), vec![]);
    assert_eq!(o.raw_get(Section::Meta, b"m").unwrap(), Some(b("m")));
}

#[test]
fn a_failed_persist_fails_every_pending_commit_and_later_ones() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let objects: Vec<_> = (0..3).map(|n| store.object(id(n))).collect();
    objects[0].put("before", b("ok")).unwrap();
    objects[0].flush().unwrap().wait().unwrap();

    let hold = store.hold_durability();
    let commits: Vec<_> = objects
        .iter()
        .map(|o| {
            o.put("k", b("v")).unwrap();
            o.flush().unwrap()
        })
        .collect();
    // Pull the journal out from under the store: the next fdatasync cannot happen.
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "jnl") {
            std::fs::remove_file(p).unwrap();
        }
    }
    drop(hold);
    for c in commits {
        let e = c.wait().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Internal);
        assert!(matches!(e, StorageError::Durability(_)), "{e}");
    }
    objects[1].put("after", b("x")).unwrap();
    let e = objects[1].flush().unwrap().wait().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Internal);
}

#[test]
fn handles_and_commits_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Store>();
    check::<cinder_storage::ObjectStorage>();
    check::<cinder_storage::Commit>();
    check::<cinder_storage::Transaction<'static>>();
    check::<cinder_storage::DurabilityHold>();
}

#[test]
fn concurrent_readers_never_see_a_value_older_than_a_finished_flush() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        cache_bytes: 64 * 1024,
        ..StoreConfig::default()
    };
    let store = Store::open(dir.path(), cfg).unwrap();
    let flushed = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (store, flushed, done) = (store.clone(), flushed.clone(), done.clone());
            std::thread::spawn(move || {
                let o = store.object(id(7));
                let mut reads = 0u64;
                while !done.load(Ordering::SeqCst) {
                    let floor = flushed.load(Ordering::SeqCst);
                    let got = o
                        .get("n")
                        .unwrap()
                        .map(|v| u64::from_be_bytes(v[..].try_into().unwrap()))
                        .unwrap_or(0);
                    assert!(got >= floor, "read {got} after flush of {floor} returned");
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    let o = store.object(id(7));
    for i in 1..=300u64 {
        o.put("n", Bytes::copy_from_slice(&i.to_be_bytes()))
            .unwrap();
        // Churn other keys of the same shards so entries get evicted and refilled.
        o.put(&format!("x{}", i % 50), Bytes::from(vec![0; 2000]))
            .unwrap();
        let c = o.flush().unwrap();
        wait_applied(&c);
        flushed.store(i, Ordering::SeqCst);
        if i % 50 == 0 {
            c.wait().unwrap();
        }
    }
    done.store(true, Ordering::SeqCst);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
}

#[test]
fn a_commit_keeps_its_verdict_when_polled_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let o = store.object(id(1));
    // Fail the store by pulling the journal away, then flush: the commit is refused at once.
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "jnl") {
            std::fs::remove_file(p).unwrap();
        }
    }
    o.put("a", b("1")).unwrap();
    assert!(o.flush().unwrap().wait().is_err());
    o.put("b", b("2")).unwrap();
    let mut c = Box::pin(o.flush().unwrap());
    let first = futures::executor::block_on(futures::future::poll_immediate(c.as_mut()));
    assert!(matches!(first, Some(Err(_))), "{first:?}");
    let second = futures::executor::block_on(futures::future::poll_immediate(c.as_mut()));
    assert!(
        matches!(second, Some(Err(_))),
        "a failed commit answered {second:?} when polled again"
    );
}

/// Once a commit or an fsync failed, nothing may be read any more: the failed batch is visible
/// in fjall but may be lost, so the store fails closed until it is reopened.
#[test]
fn an_injected_failure_fails_the_store_closed() {
    for fault in [Fault::CommitFails, Fault::SyncFails] {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let (a, other) = (store.object(id(1)), store.object(id(2)));
        a.put("k", b("durable")).unwrap();
        a.flush().unwrap().wait().unwrap();
        other.put("k", b("durable too")).unwrap();
        other.flush().unwrap().wait().unwrap();

        store.inject_fault(fault);
        a.put("k", b("lost")).unwrap();
        let e = a.flush().unwrap().wait().unwrap_err();
        assert!(matches!(e, StorageError::Durability(_)), "{fault:?}: {e}");
        assert!(e.to_string().contains("injected"), "{e}");
        assert_eq!(store.failure(), Some(e.clone()));
        // No reader sees the failed write, through any handle, cached or not...
        for o in [&a, &store.object(id(1))] {
            assert!(o.get("k").is_err(), "{fault:?}");
            assert!(o.list(&ListOptions::default()).is_err());
            assert!(o
                .get_prepared("k", ReadOptions::default())
                .run_here()
                .is_err());
        }
        // ... nor anything else: every object's reads and writes fail.
        assert!(other.get("k").is_err());
        other.put("k", b("x")).unwrap();
        assert!(other.flush().unwrap().wait().is_err());
        assert!(store.alarms().is_err());
        drop((a, other));
        drop(store);

        // Reopened, the store recovers from its journal: the durable writes are there.
        let store = open(dir.path());
        assert_eq!(
            store.object(id(2)).get("k").unwrap(),
            Some(b("durable too"))
        );
        let v = store.object(id(1)).get("k").unwrap();
        // Written into the journal before the fault, so still there without a power cut.
        assert!(v == Some(b("durable")) || v == Some(b("lost")), "{v:?}");
    }
}

#[test]
fn prepared_reads_answer_from_memory_or_read_cold_with_the_pending_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let o = store.object(id(4));
    o.put("a", b("1")).unwrap();
    o.put("b", b("2")).unwrap();
    o.flush().unwrap().wait().unwrap();
    let fresh = store.object(id(4));
    // Not cached by this handle's reads yet, but the flush refreshed the cache: memory.
    assert!(matches!(
        fresh.get_prepared("a", ReadOptions::default()),
        Prepared::Ready(Ok(Some(_)))
    ));
    // noCache must go to fjall.
    let cold = fresh.get_prepared("a", ReadOptions { no_cache: true });
    let Prepared::Cold(c) = cold else {
        panic!("noCache read answered from memory")
    };
    assert_eq!(
        std::thread::spawn(move || c.run()).join().unwrap().unwrap(),
        Some(b("1"))
    );
    // A list sees the writes pending when it was prepared, whatever happens afterwards.
    fresh.put("c", b("3")).unwrap();
    fresh.delete("a").unwrap();
    let list = fresh.list_prepared(&ListOptions::default());
    fresh.put("d", b("4")).unwrap();
    let got = list.run_here().unwrap();
    let keys: Vec<_> = got.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["b", "c"]);
    let many = fresh
        .get_many_prepared(
            &["d".into(), "a".into(), "b".into()],
            ReadOptions::default(),
        )
        .run_here()
        .unwrap();
    assert_eq!(
        many,
        vec![("b".to_string(), b("2")), ("d".to_string(), b("4"))]
    );
    // Limit errors come back at once, before any disk work.
    assert!(matches!(
        fresh.get_prepared(&"x".repeat(3000), ReadOptions::default()),
        Prepared::Ready(Err(StorageError::KeyTooLarge { .. }))
    ));
}
