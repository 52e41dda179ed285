//! D1 through the real actor runtime and a real store on disk: result shapes, meta counts,
//! batch atomicity, exec, dump, sessions and error texts.

use std::sync::Arc;

use cinder_core::{Runtime, RuntimeConfig};
use cinder_d1::{
    namespace_spec, D1Error, D1Service, First, Statement, FIRST_PRIMARY, NO_STATEMENTS,
};
use cinder_sql::SqlValue;
use cinder_storage::{Durability, Store, StoreConfig};
use serde_json::json;

struct Env {
    _dir: tempfile::TempDir,
    store: Arc<Store>,
    rt: Runtime,
}

fn start() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path(),
        StoreConfig {
            durability: Durability::Fsync,
            ..StoreConfig::default()
        },
    )
    .unwrap();
    let rt = runtime(&store);
    Env {
        _dir: dir,
        store,
        rt,
    }
}

fn runtime(store: &Arc<Store>) -> Runtime {
    Runtime::start(
        store.clone(),
        RuntimeConfig {
            threads: 2,
            ..RuntimeConfig::default()
        },
        vec![namespace_spec()],
    )
    .unwrap()
}

fn stmt(sql: &str, params: Vec<SqlValue>) -> Statement {
    Statement::new(sql).bind(params)
}

const SCHEMA: &str = "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, avatar BLOB);
                      CREATE INDEX users_name ON users (name);";

#[tokio::test]
async fn results_and_meta_are_shaped_like_d1() {
    let env = start();
    let db = D1Service::from_runtime(&env.rt, "db-1").unwrap();
    let exec = db.exec(SCHEMA).await.unwrap();
    assert_eq!(exec.count, 2);
    assert!(exec.duration >= 0.0);

    let insert = db
        .query(stmt(
            "INSERT INTO users (name, avatar) VALUES (?, ?), (?, ?)",
            vec![
                "ada".into(),
                SqlValue::Blob(vec![1, 2, 3]),
                "bob".into(),
                SqlValue::Null,
            ],
        ))
        .await
        .unwrap();
    let m = &insert.meta;
    assert_eq!((m.changes, m.last_row_id, m.rows_written), (2, 2, 2));
    assert!(m.changed_db);
    assert!(m.size_after >= 8192, "size_after {}", m.size_after);
    assert_eq!(m.served_by_primary, Some(true));
    assert!(insert.rows.is_empty());

    let all = db
        .query(stmt(
            "SELECT id, name, avatar FROM users WHERE name >= ? ORDER BY id",
            vec!["a".into()],
        ))
        .await
        .unwrap();
    let v = all.to_json();
    assert_eq!(v["success"], json!(true));
    assert_eq!(
        v["results"],
        json!([
            {"id": 1, "name": "ada", "avatar": [1, 2, 3]},
            {"id": 2, "name": "bob", "avatar": null},
        ])
    );
    let meta = &v["meta"];
    for key in [
        "served_by",
        "served_by_primary",
        "timings",
        "duration",
        "changes",
        "last_row_id",
        "changed_db",
        "size_after",
        "rows_read",
        "rows_written",
    ] {
        assert!(meta.get(key).is_some(), "meta.{key} missing: {meta}");
    }
    assert!(meta["timings"]["sql_duration_ms"].is_number());
    assert_eq!(meta["changed_db"], json!(false));
    assert_eq!(meta["changes"], json!(0));
    assert_eq!(meta["rows_read"], json!(2));
    assert_eq!(meta["rows_written"], json!(0));

    // raw({columnNames: true}), first(), first(column).
    assert_eq!(
        all.raw(true)[0],
        vec![SqlValue::Text("id".into()), "name".into(), "avatar".into()]
    );
    assert_eq!(all.raw(false).len(), 2);
    assert_eq!(
        all.first(Some("name")).unwrap(),
        Some(First::Value("ada".into()))
    );
    match all.first(None).unwrap() {
        Some(First::Row(cols)) => assert_eq!(cols[0], ("id".into(), SqlValue::Integer(1))),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        all.first(Some("nope")).unwrap_err().to_string(),
        "D1_COLUMN_NOTFOUND: Column not found (nope)"
    );
    let none = db
        .query(stmt("SELECT * FROM users WHERE id = ?", vec![99.into()]))
        .await
        .unwrap();
    assert_eq!(none.first(None).unwrap(), None);

    // Indexed point read: one row read.
    let point = db
        .query(stmt(
            "SELECT id FROM users WHERE name = ?",
            vec!["bob".into()],
        ))
        .await
        .unwrap();
    assert_eq!(point.rows, vec![vec![SqlValue::Integer(2)]]);
    assert_eq!(point.meta.rows_read, 1);

    let update = db
        .query(stmt(
            "UPDATE users SET name = upper(name) WHERE id = ?",
            vec![1.into()],
        ))
        .await
        .unwrap();
    assert_eq!((update.meta.changes, update.meta.rows_written), (1, 1));
    assert!(update.meta.changed_db);
    env.rt.shutdown();
}

#[tokio::test]
async fn batch_is_all_or_nothing() {
    let env = start();
    let db = D1Service::from_runtime(&env.rt, "db-batch").unwrap();
    db.exec(SCHEMA).await.unwrap();
    let results = db
        .batch(vec![
            stmt("INSERT INTO users (name) VALUES (?)", vec!["a".into()]),
            stmt("INSERT INTO users (name) VALUES (?)", vec!["b".into()]),
            stmt("SELECT count(*) AS n FROM users", vec![]),
        ])
        .await
        .unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[1].meta.last_row_id, 2);
    assert_eq!(results[2].rows, vec![vec![SqlValue::Integer(2)]]);

    // A later statement fails: the earlier ones of the batch are rolled back.
    let err = db
        .batch(vec![
            stmt("INSERT INTO users (name) VALUES (?)", vec!["c".into()]),
            stmt("UPDATE users SET name = 'd' WHERE id = 1", vec![]),
            stmt("INSERT INTO users (id, name) VALUES (1, 'dup')", vec![]),
        ])
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "D1_ERROR: UNIQUE constraint failed: users.id: SQLITE_CONSTRAINT (extended: SQLITE_CONSTRAINT_PRIMARYKEY)"
    );
    let names = db
        .query(stmt("SELECT name FROM users ORDER BY id", vec![]))
        .await
        .unwrap();
    assert_eq!(names.rows, vec![vec!["a".into()], vec!["b".into()]]);

    // exec() is one transaction too.
    let err = db
        .exec("INSERT INTO users (name) VALUES ('e');\nINSERT INTO nowhere VALUES (1);")
        .await
        .unwrap_err();
    assert_eq!(
        err,
        D1Error::Exec {
            line: 2,
            statement: "INSERT INTO nowhere VALUES (1);".into(),
            message: "no such table: nowhere: SQLITE_ERROR".into(),
        }
    );
    assert_eq!(
        err.to_string(),
        "D1_EXEC_ERROR: Error in line 2: INSERT INTO nowhere VALUES (1);: no such table: nowhere: SQLITE_ERROR"
    );
    let n = db
        .query(stmt("SELECT count(*) FROM users", vec![]))
        .await
        .unwrap();
    assert_eq!(n.rows, vec![vec![SqlValue::Integer(2)]]);
    env.rt.shutdown();
}

#[tokio::test]
async fn errors_carry_d1_prefixes() {
    let env = start();
    let db = D1Service::from_runtime(&env.rt, "db-err").unwrap();
    for (sql, want) in [
        (
            "SELECT * FROM missing",
            "D1_ERROR: no such table: missing: SQLITE_ERROR",
        ),
        (
            "SELEC 1",
            "D1_ERROR: near \"SELEC\": syntax error at offset 0: SQLITE_ERROR",
        ),
        (
            "  -- just a comment",
            "D1_ERROR: No SQL statements detected.",
        ),
        ("", "D1_ERROR: No SQL statements detected."),
    ] {
        let e = db.query(Statement::new(sql)).await.unwrap_err();
        assert_eq!(e.to_string(), want, "{sql:?}");
    }
    let e = db
        .query(stmt("SELECT ?", vec![]))
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "D1_ERROR: Wrong number of parameter bindings for SQL query."
    );
    let e = db
        .query(stmt("SELECT ?", vec![SqlValue::Blob(vec![0; 2_000_001])]))
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "D1_ERROR: string or blob too big: SQLITE_TOOBIG"
    );
    assert_eq!(e.cause(), "string or blob too big: SQLITE_TOOBIG");
    assert_eq!(
        D1Error::type_error("undefined", "undefined").to_string(),
        "D1_TYPE_ERROR: Type 'undefined' not supported for value 'undefined'"
    );
    let e = db.exec("  ").await.unwrap_err();
    assert!(e.to_string().ends_with(NO_STATEMENTS), "{e}");
    env.rt.shutdown();
}

#[tokio::test]
async fn sessions_dump_and_durability_across_restarts() {
    let env = start();
    let db = D1Service::from_runtime(&env.rt, "db-s").unwrap();
    db.exec(SCHEMA).await.unwrap();

    let session = db.with_session(Some(FIRST_PRIMARY));
    assert_eq!(session.get_bookmark(), None);
    session
        .query(stmt("INSERT INTO users (name) VALUES ('s')", vec![]))
        .await
        .unwrap();
    let b1 = session
        .get_bookmark()
        .expect("a bookmark after the first query");
    session
        .batch(vec![stmt("SELECT * FROM users", vec![])])
        .await
        .unwrap();
    let b2 = session.get_bookmark().unwrap();
    assert!(b2 > b1);
    // A session resumed from a bookmark keeps it until a newer one arrives.
    let resumed = db.with_session(Some(&b2));
    assert_eq!(resumed.get_bookmark().as_deref(), Some(b2.as_str()));
    resumed.query(stmt("SELECT 1", vec![])).await.unwrap();
    assert!(resumed.get_bookmark().unwrap() > b2);

    // dump(): a SQLite database file with the data in it.
    let file = db.dump().await.unwrap();
    assert!(file.starts_with(b"SQLite format 3\0"));
    let path = env._dir.path().join("dump.sqlite");
    std::fs::write(&path, &file).unwrap();
    let copy = cinder_sql::rusqlite::Connection::open(&path).unwrap();
    let name: String = copy
        .query_row("SELECT name FROM users", [], |r| r.get(0))
        .unwrap();
    assert_eq!(name, "s");

    // Replies left only after their writes were durable: a new runtime on the same store
    // (another process, as far as the data knows) sees everything.
    env.rt.shutdown();
    drop(env.rt);
    let rt = runtime(&env.store);
    let db = D1Service::from_runtime(&rt, "db-s").unwrap();
    let n = db
        .query(stmt("SELECT count(*) FROM users", vec![]))
        .await
        .unwrap();
    assert_eq!(n.rows, vec![vec![SqlValue::Integer(1)]]);
    // Databases are separate objects.
    let other = D1Service::from_runtime(&rt, "db-other").unwrap();
    assert!(other
        .query(stmt("SELECT * FROM users", vec![]))
        .await
        .is_err());
    rt.shutdown();
}
