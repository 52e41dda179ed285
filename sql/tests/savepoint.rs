//! Savepoints held open across calls (`transaction(async fn)` and host-driven
//! `transactionSync`): nesting, rollback, and that a turn flushed while one is open carries none
//! of its pages, even when the transaction outgrows SQLite's page cache.

mod common;

use cinder_sql::{SavepointKind, SqlError, SqlValue, TRANSACTION_ENDED};
use cinder_storage::Durability;
use common::{commit, open, store};

fn count(db: &cinder_sql::SqlStorage, sql: &str) -> i64 {
    db.exec(sql, &[]).unwrap().one().unwrap().values()[0]
        .as_i64()
        .unwrap()
}

#[test]
fn nested_savepoints_commit_and_roll_back_by_level() {
    let dir = tempfile::tempdir().unwrap();
    let st = store(dir.path(), Durability::Process);
    let db = open(&st, 1);
    db.exec("CREATE TABLE t (v)", &[]).unwrap();
    let outer = db.begin_savepoint(SavepointKind::Async).unwrap();
    db.exec("INSERT INTO t VALUES (1)", &[]).unwrap();
    let inner = db.begin_savepoint(SavepointKind::Sync).unwrap();
    db.exec("INSERT INTO t VALUES (2)", &[]).unwrap();
    db.rollback_savepoint(inner).unwrap();
    assert_eq!(count(&db, "SELECT count(*) FROM t"), 1);
    assert!(db.in_transaction());
    db.release_savepoint(outer).unwrap();
    assert!(!db.in_transaction());
    assert_eq!(
        db.release_savepoint(outer).unwrap_err(),
        SqlError::Api(TRANSACTION_ENDED)
    );
    commit(&db);
    drop(db);
    let db = open(&st, 1);
    assert_eq!(count(&db, "SELECT count(*) FROM t"), 1);
}

#[test]
fn ending_an_outer_savepoint_first_rolls_both_back() {
    let dir = tempfile::tempdir().unwrap();
    let st = store(dir.path(), Durability::Process);
    let db = open(&st, 1);
    db.exec("CREATE TABLE t (v)", &[]).unwrap();
    let outer = db.begin_savepoint(SavepointKind::Async).unwrap();
    db.exec("INSERT INTO t VALUES (1)", &[]).unwrap();
    let inner = db.begin_savepoint(SavepointKind::Async).unwrap();
    db.exec("INSERT INTO t VALUES (2)", &[]).unwrap();
    assert!(matches!(db.release_savepoint(outer), Err(SqlError::Api(_))));
    assert!(!db.savepoint_open(inner));
    assert_eq!(
        db.rollback_savepoint(inner).unwrap_err(),
        SqlError::Api(TRANSACTION_ENDED)
    );
    assert!(!db.in_transaction());
    assert_eq!(count(&db, "SELECT count(*) FROM t"), 0);
}

#[test]
fn an_async_savepoint_cannot_open_inside_a_sync_one() {
    let dir = tempfile::tempdir().unwrap();
    let st = store(dir.path(), Durability::Process);
    let db = open(&st, 1);
    let sync = db.begin_savepoint(SavepointKind::Sync).unwrap();
    assert!(matches!(
        db.begin_savepoint(SavepointKind::Async),
        Err(SqlError::Api(_))
    ));
    db.release_savepoint(sync).unwrap();
    assert!(!db.in_transaction());
}

#[test]
fn a_deferred_foreign_key_fails_the_release_and_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let st = store(dir.path(), Durability::Process);
    let db = open(&st, 1);
    db.exec(
        "CREATE TABLE p (id INTEGER PRIMARY KEY);
         CREATE TABLE c (pid REFERENCES p(id) DEFERRABLE INITIALLY DEFERRED)",
        &[],
    )
    .unwrap();
    let sp = db.begin_savepoint(SavepointKind::Async).unwrap();
    db.exec("INSERT INTO c VALUES (7)", &[]).unwrap();
    let err = db.release_savepoint(sp).unwrap_err();
    assert!(
        err.to_string().contains("FOREIGN KEY constraint failed"),
        "{err}"
    );
    assert!(!db.in_transaction());
    assert_eq!(count(&db, "SELECT count(*) FROM c"), 0);
}

/// A transaction far larger than the connection's page cache, with turns flushed (and made
/// durable) while it is open, then the process "dies" before it commits: the reopened
/// database has none of it and is intact. With cache spill on, SQLite would have written
/// uncommitted pages into those turns.
#[test]
fn turns_flushed_during_an_async_transaction_carry_none_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let st = store(dir.path(), Durability::Process);
    let db = open(&st, 1);
    db.exec("CREATE TABLE t (v BLOB)", &[]).unwrap();
    commit(&db);
    let sp = db.begin_savepoint(SavepointKind::Async).unwrap();
    for i in 0..200 {
        // 200 × 8 KiB ≈ 1.6 MB, six times the 256 KiB page cache.
        db.exec(
            "INSERT INTO t VALUES (randomblob(8192))",
            &[] as &[SqlValue],
        )
        .unwrap();
        if i % 50 == 0 {
            assert!(
                !db.storage().has_pending(),
                "a page of the open transaction reached the turn batch"
            );
            if let Some(c) = db.storage().flush() {
                c.wait().unwrap();
            }
        }
    }
    assert!(!db.storage().has_pending());
    drop(db); // the process ends with the transaction open
    let db = open(&st, 1);
    assert_eq!(count(&db, "SELECT count(*) FROM t"), 0);
    assert_eq!(db.integrity_check().unwrap(), "ok");

    // And committed, it is all there after a reopen.
    let sp2 = db.begin_savepoint(SavepointKind::Async).unwrap();
    for _ in 0..200 {
        db.exec("INSERT INTO t VALUES (randomblob(8192))", &[])
            .unwrap();
    }
    db.release_savepoint(sp2).unwrap();
    commit(&db);
    drop(db);
    let db = open(&st, 1);
    assert_eq!(count(&db, "SELECT count(*) FROM t"), 200);
    assert_eq!(db.integrity_check().unwrap(), "ok");
    let _ = sp;
}

/// The control for the test above: a synchronous savepoint (which never spans a turn) keeps
/// SQLite's cache spill on, and the same transaction then does put pages in the batch before
/// it commits. So the test above would catch spilling.
#[test]
fn a_sync_savepoint_keeps_cache_spill_on() {
    let dir = tempfile::tempdir().unwrap();
    let st = store(dir.path(), Durability::Process);
    let db = open(&st, 1);
    db.exec("CREATE TABLE t (v BLOB)", &[]).unwrap();
    commit(&db);
    let sp = db.begin_savepoint(SavepointKind::Sync).unwrap();
    let mut spilled = false;
    for _ in 0..200 {
        db.exec("INSERT INTO t VALUES (randomblob(8192))", &[])
            .unwrap();
        spilled |= db.storage().has_pending();
    }
    assert!(
        spilled,
        "SQLite never spilled: the spill test proves nothing"
    );
    db.rollback_savepoint(sp).unwrap();
}
