//! Streaming cursors: rows come from SQLite as they are pulled, cursors interleave, and a
//! cursor that outlives its database fails cleanly.

mod common;

use cinder_sql::error::{ONE_MANY, ONE_NONE};
use cinder_sql::{SqlError, SqlValue, CANCELED_CLOSED, CANCELED_DELETED};
use cinder_storage::Durability;
use common::{commit, open, store};

fn int(v: &SqlValue) -> i64 {
    v.as_i64().expect("an integer")
}

#[test]
fn a_select_over_a_million_rows_that_stops_after_ten_reads_about_ten() {
    let dir = tempfile::tempdir().unwrap();
    let st = store(dir.path(), Durability::Process);
    let db = open(&st, 1);
    db.exec(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);
         WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000)
         INSERT INTO t SELECT x, 'row' FROM c;",
        &[],
    )
    .unwrap();
    commit(&db);

    let mut cursor = db.exec("SELECT id, v FROM t", &[]).unwrap();
    assert_eq!(cursor.column_names(), ["id", "v"]);
    for expected in 1..=10 {
        let row = cursor.next_row().unwrap().unwrap();
        assert_eq!(int(&row[0]), expected);
    }
    // One row ahead, as workerd's cursor is: 11 rows stepped, not a million.
    let read = cursor.rows_read();
    assert!(
        (10..=12).contains(&read),
        "rows_read after ten rows: {read}"
    );
    assert_eq!(cursor.rows_written(), 0);

    // The rest streams on, and the count grows with it.
    let rest = cursor.raw().count();
    assert_eq!(rest, 1_000_000 - 10);
    assert!(cursor.rows_read() >= 1_000_000);
    assert!(cursor.next_row().unwrap().is_none());
    assert!(!cursor.has_more());
}

#[test]
fn cursors_interleave_and_count_their_own_rows() {
    let dir = tempfile::tempdir().unwrap();
    let st = store(dir.path(), Durability::Process);
    let db = open(&st, 1);
    db.exec(
        "CREATE TABLE abc (a, b, c); INSERT INTO abc VALUES (1, 2, 3), (4, 5, 6);
         CREATE TABLE cde (c, d, e); INSERT INTO cde VALUES (7, 8, 9), (1, 2, 3);",
        &[],
    )
    .unwrap();
    // workerd's sql-test.js: an in-JS join of two tables.
    let mut join = Vec::new();
    let mut col_reads = Vec::new();
    let mut rows = db.exec("SELECT * FROM abc", &[]).unwrap();
    while let Some(row) = rows.next_named().unwrap() {
        let mut cols = db.exec("SELECT * FROM cde", &[]).unwrap();
        while let Some(col) = cols.next_named().unwrap() {
            join.push((int(row.get("a").unwrap()), int(col.get("c").unwrap())));
        }
        col_reads.push(cols.rows_read());
    }
    assert_eq!(join, [(1, 7), (1, 1), (4, 7), (4, 1)]);
    assert_eq!(rows.rows_read(), 2);
    assert_eq!(col_reads, [2, 2]);

    // The same SQL run again while a cursor over it is unfinished gets its own statement.
    let mut first = db.exec("SELECT a FROM abc ORDER BY a", &[]).unwrap();
    let mut second = db.exec("SELECT a FROM abc ORDER BY a", &[]).unwrap();
    assert_eq!(int(&second.next_row().unwrap().unwrap()[0]), 1);
    assert_eq!(int(&first.next_row().unwrap().unwrap()[0]), 1);
    assert_eq!(int(&second.next_row().unwrap().unwrap()[0]), 4);
    assert_eq!(int(&first.next_row().unwrap().unwrap()[0]), 4);
    assert!(first.next_row().unwrap().is_none());
    assert!(second.next_row().unwrap().is_none());
    // A cursor that was done before the statement ran again stays done.
    let _third = db.exec("SELECT a FROM abc ORDER BY a", &[]).unwrap();
    assert!(first.next_row().unwrap().is_none());
}

#[test]
fn writes_and_transactions_while_a_cursor_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let st = store(dir.path(), Durability::Process);
    let db = open(&st, 1);
    db.exec(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v);
         INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c');",
        &[],
    )
    .unwrap();
    commit(&db);

    let mut reader = db.exec("SELECT id FROM t ORDER BY id", &[]).unwrap();
    assert_eq!(int(&reader.next_row().unwrap().unwrap()[0]), 1);
    // Writes commit while the reader is open, and the turn can end.
    db.exec("INSERT INTO t VALUES (10, 'x')", &[]).unwrap();
    db.transaction_sync(|| {
        db.exec("UPDATE t SET v = 'B' WHERE id = 2", &[])
            .map(|_| ())
    })
    .unwrap();
    let failed: Result<(), SqlError> = db.transaction_sync(|| {
        db.exec("DELETE FROM t", &[])?;
        Err(SqlError::Api("roll back"))
    });
    assert!(failed.is_err());
    commit(&db);
    // The reader goes on across the turn boundary.
    let rest: Vec<i64> = reader.raw().map(|r| int(&r.unwrap()[0])).collect();
    assert_eq!(rest.first(), Some(&2));
    assert!(rest.contains(&3));
    assert_eq!(
        db.exec("SELECT v FROM t WHERE id = 2", &[])
            .unwrap()
            .one()
            .unwrap()
            .values(),
        [SqlValue::Text("B".into())]
    );
    assert_eq!(
        db.exec("SELECT count(*) FROM t", &[])
            .unwrap()
            .one()
            .unwrap()
            .values(),
        [SqlValue::Integer(4)]
    );

    // A write statement runs to completion in exec(): its rows are buffered and its change is
    // committed even if nobody reads them, so the turn can end at once.
    let returning = db
        .exec("UPDATE t SET v = v || '!' RETURNING id", &[])
        .unwrap();
    assert_eq!(returning.rows_written(), 4);
    commit(&db);
    drop(returning);
    assert_eq!(
        db.exec("SELECT count(*) FROM t WHERE v LIKE '%!'", &[])
            .unwrap()
            .one()
            .unwrap()
            .values(),
        [SqlValue::Integer(4)]
    );
}

#[test]
fn one_on_a_streaming_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let st = store(dir.path(), Durability::Process);
    let db = open(&st, 1);
    db.exec("CREATE TABLE t (a); INSERT INTO t VALUES (1), (2);", &[])
        .unwrap();
    let mut many = db.exec("SELECT a FROM t", &[]).unwrap();
    assert_eq!(many.one().unwrap_err(), SqlError::Api(ONE_MANY));
    // `one()` closed it.
    assert!(many.next_row().unwrap().is_none());
    let mut none = db.exec("SELECT a FROM t WHERE a > 5", &[]).unwrap();
    assert_eq!(none.one().unwrap_err(), SqlError::Api(ONE_NONE));
    let one = db
        .exec("SELECT a FROM t WHERE a = 2", &[])
        .unwrap()
        .one()
        .unwrap();
    assert_eq!(one.values(), [SqlValue::Integer(2)]);
}

#[test]
fn delete_all_cancels_unfinished_cursors() {
    let dir = tempfile::tempdir().unwrap();
    let st = store(dir.path(), Durability::Process);
    let db = open(&st, 1);
    db.exec(
        "CREATE TABLE t (a); INSERT INTO t VALUES (1), (2), (3);",
        &[],
    )
    .unwrap();
    let mut open_cursor = db.exec("SELECT a FROM t", &[]).unwrap();
    open_cursor.next_row().unwrap();
    let mut done_cursor = db.exec("SELECT a FROM t WHERE a = 3", &[]).unwrap();
    done_cursor.next_row().unwrap();
    db.delete_all().unwrap();
    assert_eq!(
        open_cursor.next_row().unwrap_err(),
        SqlError::Api(CANCELED_DELETED)
    );
    assert_eq!(open_cursor.column_names(), ["a"]);
    assert!(done_cursor.next_row().unwrap().is_none());
    // The fresh database works.
    db.exec("CREATE TABLE t (b)", &[]).unwrap();
    commit(&db);
}

#[test]
fn a_cursor_that_outlives_its_database_fails_instead_of_crashing() {
    let dir = tempfile::tempdir().unwrap();
    let st = store(dir.path(), Durability::Process);
    let db = open(&st, 1);
    db.exec(
        "CREATE TABLE t (a); INSERT INTO t VALUES (1), (2), (3);",
        &[],
    )
    .unwrap();
    let mut cursor = db.exec("SELECT a FROM t", &[]).unwrap();
    assert!(cursor.next_row().unwrap().is_some());
    let read = cursor.rows_read();
    drop(db);
    assert_eq!(
        cursor.next_row().unwrap_err(),
        SqlError::Api(CANCELED_CLOSED)
    );
    assert_eq!(
        cursor.next_row().unwrap_err(),
        SqlError::Api(CANCELED_CLOSED)
    );
    assert_eq!(cursor.rows_read(), read);
    assert_eq!(cursor.column_names(), ["a"]);
}
