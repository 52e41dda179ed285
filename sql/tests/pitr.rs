//! Point-in-time recovery: bookmarks, restores on the next open, and their undo, on a real
//! store that is closed and reopened in between.

mod common;

use bytes::Bytes;
use cinder_sql::history::{BAD_BOOKMARK, DISABLED, IN_FUTURE, TOO_OLD};
use cinder_sql::{SqlConfig, SqlError, SqlStorage, SqlValue};
use cinder_storage::{Durability, Section};
use common::{commit, id, open, store};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn names(db: &SqlStorage) -> Vec<String> {
    db.exec("SELECT name FROM t ORDER BY name", &[])
        .unwrap()
        .raw()
        .map(|r| match r.unwrap().remove(0) {
            SqlValue::Text(s) => s,
            v => panic!("not text: {v:?}"),
        })
        .collect()
}

fn tables(db: &SqlStorage) -> Vec<String> {
    db.exec(
        "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name",
        &[],
    )
    .unwrap()
    .raw()
    .map(|r| r.unwrap()[0].as_str().unwrap().to_owned())
    .collect()
}

#[test]
fn restore_to_a_bookmark_on_the_next_open_and_undo_it() {
    let dir = tempfile::tempdir().unwrap();
    let (at_a, undo) = {
        let st = store(dir.path(), Durability::Fsync);
        let db = open(&st, 1);
        db.exec(
            "CREATE TABLE t (name TEXT); INSERT INTO t VALUES ('a');",
            &[],
        )
        .unwrap();
        db.kv().put("k", Bytes::from_static(b"1")).unwrap();
        commit(&db);
        let at_a = db.current_bookmark().unwrap();
        // Many more changes: new rows over many pages, a new table, KV, a dropped row.
        db.exec(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2000)
             INSERT INTO t SELECT printf('b%05d', x) FROM c;
             CREATE TABLE later (x); DELETE FROM t WHERE name = 'a';",
            &[],
        )
        .unwrap();
        db.kv().put("k", Bytes::from_static(b"2")).unwrap();
        commit(&db);
        assert_eq!(names(&db).len(), 2000);
        let undo = db.restore_on_next_open(&at_a).unwrap();
        assert!(undo > at_a, "{undo} sorts after {at_a}");
        commit(&db);
        (at_a, undo)
    };
    // A new process: the store and the database are opened afresh.
    let st = store(dir.path(), Durability::Fsync);
    let db = open(&st, 1);
    assert_eq!(names(&db), ["a"]);
    assert_eq!(tables(&db), ["_cf_KV", "t"]);
    assert_eq!(db.kv().get("k").unwrap().unwrap(), Bytes::from_static(b"1"));
    assert_eq!(db.integrity_check().unwrap(), "ok");
    commit(&db);
    // The bookmark the restore returned undoes it.
    assert!(db.current_bookmark().unwrap() > undo);
    db.restore_on_next_open(&undo).unwrap();
    commit(&db);
    drop(db);
    let db = open(&st, 1);
    assert_eq!(names(&db).len(), 2000);
    assert!(tables(&db).contains(&"later".to_owned()));
    assert_eq!(db.kv().get("k").unwrap().unwrap(), Bytes::from_static(b"2"));
    assert_eq!(db.integrity_check().unwrap(), "ok");
    // And the first bookmark still works after all that.
    db.restore_on_next_open(&at_a).unwrap();
    commit(&db);
    drop(db);
    let db = open(&st, 1);
    assert_eq!(names(&db), ["a"]);
}

#[test]
fn bookmark_for_a_time_and_delete_all() {
    let dir = tempfile::tempdir().unwrap();
    let st = store(dir.path(), Durability::Process);
    let db = open(&st, 1);
    db.exec(
        "CREATE TABLE t (name TEXT); INSERT INTO t VALUES ('one');",
        &[],
    )
    .unwrap();
    commit(&db);
    let then = db.bookmark_for_time(now_ms()).unwrap();
    db.exec("INSERT INTO t VALUES ('two')", &[]).unwrap();
    commit(&db);
    db.delete_all().unwrap();
    db.exec("CREATE TABLE other (x)", &[]).unwrap();
    commit(&db);
    assert_eq!(tables(&db), ["other"]);
    db.restore_on_next_open(&then).unwrap();
    commit(&db);
    drop(db);
    let db = open(&st, 1);
    assert_eq!(names(&db), ["one"]);
    assert_eq!(tables(&db), ["t"]);
    assert_eq!(db.integrity_check().unwrap(), "ok");
}

#[test]
fn bookmarks_sort_in_time_order_and_bad_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let st = store(dir.path(), Durability::Process);
    let db = open(&st, 1);
    let mut last = db.current_bookmark().unwrap();
    for i in 0..50 {
        db.exec(
            &format!("CREATE TABLE IF NOT EXISTS t (x); INSERT INTO t VALUES ({i})"),
            &[],
        )
        .unwrap();
        let b = db.current_bookmark().unwrap();
        assert!(b > last, "{b} > {last}");
        let parts: Vec<&str> = b.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 8, 8, 32]
        );
        last = b;
    }
    let t = db.bookmark_for_time(now_ms()).unwrap();
    assert!(t >= last);
    assert!(db.current_bookmark().unwrap() > t);

    let other = open(&st, 2);
    let foreign = other.current_bookmark().unwrap();
    for bad in [
        foreign.as_str(),
        "",
        "nonsense",
        "00000000-00000000-00000000-00",
    ] {
        assert_eq!(
            db.restore_on_next_open(bad).unwrap_err(),
            SqlError::Api(BAD_BOOKMARK),
            "{bad:?}"
        );
    }
    assert_eq!(
        db.bookmark_for_time(now_ms() + 60_000).unwrap_err(),
        SqlError::Api(IN_FUTURE)
    );
    assert_eq!(
        db.bookmark_for_time(now_ms() - 31 * 24 * 3600 * 1000)
            .unwrap_err(),
        SqlError::Api(TOO_OLD)
    );
    let off = SqlStorage::open(
        st.object(id(3)),
        SqlConfig {
            history_retention_ms: None,
            ..SqlConfig::default()
        },
    )
    .unwrap();
    assert_eq!(off.current_bookmark().unwrap_err(), SqlError::Api(DISABLED));
}

#[test]
fn history_past_retention_is_collected() {
    let dir = tempfile::tempdir().unwrap();
    let st = store(dir.path(), Durability::Process);
    let cfg = SqlConfig {
        history_retention_ms: Some(0),
        ..SqlConfig::default()
    };
    let records = |db: &SqlStorage| {
        db.storage()
            .raw_range(Section::Sql, b"h", Some(b"i"))
            .unwrap()
            .len()
    };
    let db = SqlStorage::open(st.object(id(1)), cfg.clone()).unwrap();
    for i in 0..20 {
        db.exec(
            &format!("CREATE TABLE IF NOT EXISTS t (x); INSERT INTO t VALUES ({i})"),
            &[],
        )
        .unwrap();
        db.current_bookmark().unwrap();
    }
    commit(&db);
    assert!(records(&db) >= 20);
    drop(db);
    // Every record is now older than the (zero) retention, once the clock has moved on.
    let t0 = now_ms();
    while now_ms() <= t0 {
        std::hint::spin_loop();
    }
    let db = SqlStorage::open(st.object(id(1)), cfg).unwrap();
    db.exec("INSERT INTO t VALUES (99)", &[]).unwrap();
    commit(&db);
    assert!(records(&db) <= 1, "{} records left", records(&db));
    assert_eq!(
        db.exec("SELECT count(*) FROM t", &[])
            .unwrap()
            .one()
            .unwrap()
            .values(),
        [SqlValue::Integer(21)]
    );
}

#[test]
fn a_hot_page_is_recorded_once_per_window_not_once_per_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let st = store(dir.path(), Durability::Process);
    let db = open(&st, 1);
    db.exec(
        "CREATE TABLE c (id INTEGER PRIMARY KEY, n INTEGER); INSERT INTO c VALUES (1, 0);",
        &[],
    )
    .unwrap();
    commit(&db);
    let records = || {
        db.storage()
            .raw_range(Section::Sql, b"h", Some(b"i"))
            .unwrap()
            .len()
    };
    let before = records();
    let start = std::time::Instant::now();
    for _ in 0..300 {
        db.exec("UPDATE c SET n = n + 1 WHERE id = 1", &[]).unwrap();
        commit(&db);
    }
    let windows = start.elapsed().as_millis() as usize / 1000 + 2;
    let added = records() - before;
    assert!(
        added <= windows,
        "{added} records for 300 transactions in {windows} windows"
    );
}
