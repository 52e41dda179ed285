//! The SQL API's behaviour through the real engine (fjall on disk).

mod common;

use bytes::Bytes;
use cinder_sql::error::{
    MULTI_PARAMS, NO_STATEMENT, ONE_MANY, ONE_NONE, TRANSACTION_REFUSED, WRONG_BINDINGS,
};
use cinder_sql::{SqlError, SqlValue};
use cinder_storage::{Durability, ListOptions, StorageError};
use common::{commit, open, store};

#[test]
fn exec_cursor_and_multi_statement() {
    let dir = tempfile::tempdir().unwrap();
    let st = store(dir.path(), Durability::Process);
    let db = open(&st, 1);
    let mut c = db
        .exec(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, score REAL, data BLOB);
             INSERT INTO t VALUES (1, 'a', 1.5, x'00ff');
             INSERT INTO t VALUES (2, 'b', NULL, x'');
             SELECT * FROM t WHERE id >= ? ORDER BY id",
            &[SqlValue::Integer(1)],
        )
        .unwrap();
    assert_eq!(c.column_names(), ["id", "name", "score", "data"]);
    assert_eq!(c.rows_written(), 2);
    let rows = c.to_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].get("name"), Some(&SqlValue::Text("a".into())));
    assert_eq!(rows[0].get("score"), Some(&SqlValue::Real(1.5)));
    assert_eq!(rows[0].get("data"), Some(&SqlValue::Blob(vec![0, 0xff])));
    assert_eq!(rows[1].get("score"), Some(&SqlValue::Null));
    assert_eq!(rows[1].get("data"), Some(&SqlValue::Blob(vec![])));

    let raw: Vec<_> = db
        .exec("SELECT id FROM t ORDER BY id", &[])
        .unwrap()
        .raw()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        raw,
        vec![vec![SqlValue::Integer(1)], vec![SqlValue::Integer(2)]]
    );

    let mut one = db
        .exec("UPDATE t SET score = 7 WHERE id = 2 RETURNING score", &[])
        .unwrap();
    assert_eq!(one.rows_written(), 1);
    assert_eq!(one.one().unwrap().values(), [SqlValue::Real(7.0)]);

    let mut empty = db.exec("SELECT * FROM t WHERE id = 99", &[]).unwrap();
    assert_eq!(empty.column_names().len(), 4);
    assert_eq!(empty.one().unwrap_err(), SqlError::Api(ONE_NONE));
    let mut many = db.exec("SELECT * FROM t", &[]).unwrap();
    assert_eq!(many.one().unwrap_err(), SqlError::Api(ONE_MANY));
    // Rows are read as they are pulled (the cursor streams).
    let mut all = db.exec("SELECT * FROM t", &[]).unwrap();
    assert_eq!(all.rows_read(), 1);
    assert_eq!(all.raw().count(), 2);
    assert_eq!(all.rows_read(), 2);
}

#[test]
fn api_errors_have_cloudflare_texts() {
    let dir = tempfile::tempdir().unwrap();
    let st = store(dir.path(), Durability::Process);
    let db = open(&st, 1);
    db.exec("CREATE TABLE t (a)", &[]).unwrap();
    assert_eq!(
        db.exec("SELECT ?; SELECT ?", &[SqlValue::Integer(1)])
            .unwrap_err(),
        SqlError::Api(MULTI_PARAMS)
    );
    assert_eq!(
        db.exec("SELECT ?, ?", &[SqlValue::Integer(1)]).unwrap_err(),
        SqlError::Api(WRONG_BINDINGS)
    );
    assert_eq!(db.exec("  ", &[]).unwrap_err(), SqlError::Api(NO_STATEMENT));
    assert_eq!(
        db.exec("SELECT * FROM nope", &[]).unwrap_err().to_string(),
        "no such table: nope: SQLITE_ERROR"
    );
    assert_eq!(
        db.exec("SELEC 1", &[]).unwrap_err().to_string(),
        "near \"SELEC\": syntax error at offset 0: SQLITE_ERROR"
    );
    db.exec("CREATE TABLE u (id INTEGER PRIMARY KEY, v NOT NULL)", &[])
        .unwrap();
    db.exec("INSERT INTO u VALUES (1, 1)", &[]).unwrap();
    assert_eq!(
        db.exec("INSERT INTO u VALUES (1, 1)", &[]).unwrap_err().to_string(),
        "UNIQUE constraint failed: u.id: SQLITE_CONSTRAINT (extended: SQLITE_CONSTRAINT_PRIMARYKEY)"
    );
}

#[test]
fn refusals_are_decided_by_the_authorizer() {
    let dir = tempfile::tempdir().unwrap();
    let st = store(dir.path(), Durability::Process);
    let db = open(&st, 1);
    db.exec("CREATE TABLE t (a)", &[]).unwrap();
    db.kv().put("k", Bytes::from_static(b"v")).unwrap();

    for sql in [
        "BEGIN",
        "BEGIN TRANSACTION",
        "begin immediate",
        "COMMIT",
        "END",
        "ROLLBACK",
        "SAVEPOINT sp",
        "RELEASE sp",
        "ROLLBACK TO sp",
        "INSERT INTO t VALUES (1); BEGIN",
    ] {
        assert_eq!(
            db.exec(sql, &[]).unwrap_err(),
            SqlError::Api(TRANSACTION_REFUSED),
            "{sql}"
        );
    }
    // SQLite's own texts for authorizer denials, surfaced as workerd does (message: CODE).
    let na = "not authorized: SQLITE_AUTH";
    let kv_read = "access to _cf_KV.key is prohibited: SQLITE_AUTH";
    for (sql, want) in [
        ("SELECT * FROM _cf_KV", kv_read),
        ("SELECT * FROM \"_CF_kv\"", kv_read),
        ("INSERT INTO _cf_KV VALUES ('x', x'00')", na),
        ("DELETE FROM _cf_KV", na),
        ("DROP TABLE _cf_KV", na),
        ("CREATE TABLE _cf_mine (a)", na),
        ("CREATE INDEX _cf_i ON t(a)", na),
        ("CREATE VIEW _cf_v AS SELECT 1", na),
        ("ATTACH DATABASE 'other.db' AS other", na),
        ("DETACH DATABASE other", na),
        ("CREATE TEMP TABLE tt (a)", na),
        ("PRAGMA journal_mode = DELETE", na),
        ("PRAGMA journal_mode", na),
        ("PRAGMA locking_mode = NORMAL", na),
        ("PRAGMA synchronous = FULL", na),
        ("PRAGMA writable_schema = ON", na),
        ("PRAGMA page_size = 512", na),
        ("PRAGMA table_info(_cf_KV)", na),
        ("PRAGMA foreign_keys = maybe", na),
        ("PRAGMA integrity_check", na),
        ("CREATE VIRTUAL TABLE v USING dbstat", na),
        (
            "SELECT sqlite_version()",
            "not authorized to use function: sqlite_version at offset 7: SQLITE_ERROR",
        ),
    ] {
        assert_eq!(db.exec(sql, &[]).unwrap_err().to_string(), want, "{sql}");
    }
    // RENAME TO a reserved name: the bundled SQLite does not show the new name to the
    // authorizer, so a guard undoes it; the table keeps its name.
    db.exec("PRAGMA case_sensitive_like = ON", &[]).unwrap();
    for sql in [
        "ALTER TABLE t RENAME TO _cf_mine",
        "ALTER TABLE t RENAME TO _CF_other",
        "INSERT INTO t VALUES (5); ALTER TABLE t RENAME TO _cf_x",
    ] {
        assert_eq!(
            db.exec(sql, &[]).unwrap_err().to_string(),
            "not authorized: SQLITE_AUTH",
            "{sql}"
        );
    }
    db.exec(
        "ALTER TABLE t RENAME TO t2; ALTER TABLE t2 RENAME TO t",
        &[],
    )
    .unwrap();
    db.exec("ALTER TABLE t ADD COLUMN b", &[]).unwrap();
    assert!(db.exec("SELECT a, b FROM t", &[]).is_ok());
    // The engine's own cached KV statement, typed by the user, is still refused.
    db.kv().get("k").unwrap();
    assert_eq!(
        db.exec(
            "SELECT value FROM _cf_KV WHERE key = ?1",
            &[SqlValue::from("k")]
        )
        .unwrap_err()
        .to_string(),
        "access to _cf_KV.value is prohibited: SQLITE_AUTH"
    );
    // Loading extensions: the function is allowed by name but the connection never enables
    // extension loading, so SQLite itself refuses.
    let e = db
        .exec("SELECT load_extension('/tmp/evil.so')", &[])
        .unwrap_err()
        .to_string();
    assert_eq!(e, "not authorized: SQLITE_ERROR");

    // Allowed PRAGMAs and their argument shapes.
    for sql in [
        "PRAGMA foreign_keys",
        "PRAGMA foreign_keys = OFF",
        "PRAGMA foreign_keys = 'on'",
        "PRAGMA table_info(t)",
        "PRAGMA table_list",
        "PRAGMA quick_check",
        "PRAGMA quick_check(10)",
        "PRAGMA optimize",
        "PRAGMA data_version",
        "PRAGMA page_size",
        "PRAGMA index_list(t)",
    ] {
        db.exec(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    // The KV table was not touched by any refused statement.
    assert_eq!(db.kv().get("k").unwrap().as_deref(), Some(&b"v"[..]));
}

#[test]
fn transaction_sync_commits_rolls_back_and_nests() {
    let dir = tempfile::tempdir().unwrap();
    let st = store(dir.path(), Durability::Process);
    let db = open(&st, 1);
    db.exec("CREATE TABLE t (a INTEGER)", &[]).unwrap();
    db.transaction_sync(|| -> Result<(), SqlError> {
        db.exec("INSERT INTO t VALUES (1)", &[])?;
        db.kv().put("k1", Bytes::from_static(b"1"))?;
        Ok(())
    })
    .unwrap();
    let r: Result<(), SqlError> = db.transaction_sync(|| {
        db.exec("INSERT INTO t VALUES (2)", &[])?;
        db.kv().put("k2", Bytes::from_static(b"2"))?;
        db.exec("SELECT * FROM missing", &[])?;
        Ok(())
    });
    assert!(r.is_err());
    // Nested: inner failure rolls back the inner part only.
    db.transaction_sync(|| -> Result<(), SqlError> {
        db.exec("INSERT INTO t VALUES (3)", &[])?;
        let inner: Result<(), SqlError> = db.transaction_sync(|| {
            db.exec("INSERT INTO t VALUES (4)", &[])?;
            Err(SqlError::Api("inner fails"))
        });
        assert!(inner.is_err());
        Ok(())
    })
    .unwrap();
    let vals: Vec<_> = db
        .exec("SELECT a FROM t ORDER BY a", &[])
        .unwrap()
        .raw()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        vals,
        vec![vec![SqlValue::Integer(1)], vec![SqlValue::Integer(3)]]
    );
    assert!(db.kv().get("k2").unwrap().is_none());
    assert!(db.kv().get("k1").unwrap().is_some());

    // The first write of the table in a rolled-back transaction: the KV table creation rolls
    // back too, and the KV API still works afterwards.
    let db2 = open(&st, 2);
    let r: Result<(), SqlError> = db2.transaction_sync(|| {
        db2.kv().put("x", Bytes::from_static(b"1"))?;
        Err(SqlError::Api("no"))
    });
    assert!(r.is_err());
    assert!(db2.kv().get("x").unwrap().is_none());
    db2.kv().put("y", Bytes::from_static(b"2")).unwrap();
    assert!(db2.kv().get("y").unwrap().is_some());

    // Turns cannot end inside a transaction.
    let r: Result<(), SqlError> = db.transaction_sync(|| {
        assert!(db.flush().is_err());
        Ok(())
    });
    r.unwrap();
}

#[test]
fn data_survives_reopen_and_database_size_tracks_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let st = store(dir.path(), Durability::Fsync);
        let db = open(&st, 7);
        assert_eq!(db.database_size().unwrap(), 0);
        db.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, s TEXT)", &[])
            .unwrap();
        for i in 0..500 {
            db.exec(
                "INSERT INTO t VALUES (?, ?)",
                &[SqlValue::Integer(i), SqlValue::Text("x".repeat(200))],
            )
            .unwrap();
        }
        db.kv().put("kv", Bytes::from_static(b"value")).unwrap();
        commit(&db);
        assert!(db.database_size().unwrap() > 100_000);
    }
    let st = store(dir.path(), Durability::Fsync);
    let db = open(&st, 7);
    let n = db
        .exec("SELECT count(*) AS n FROM t", &[])
        .unwrap()
        .one()
        .unwrap();
    assert_eq!(n.get("n"), Some(&SqlValue::Integer(500)));
    assert_eq!(db.kv().get("kv").unwrap().as_deref(), Some(&b"value"[..]));
    // Another object's database is separate.
    let other = open(&st, 8);
    assert!(other.exec("SELECT * FROM t", &[]).is_err());

    db.delete_all().unwrap();
    assert!(db.exec("SELECT * FROM t", &[]).is_err());
    assert!(db.kv().get("kv").unwrap().is_none());
    commit(&db);
    drop(db);
    let db = open(&st, 7);
    let left = db
        .storage()
        .raw_range(cinder_storage::Section::Sql, &[], None)
        .unwrap();
    assert!(
        db.exec("SELECT * FROM t", &[]).is_err(),
        "left after deleteAll: {:?}",
        left.iter()
            .map(|(k, v)| (k.clone(), v.len()))
            .collect::<Vec<_>>()
    );
    assert_eq!(db.database_size().unwrap(), 0);
}

#[test]
fn kv_api_limits_order_and_list() {
    let dir = tempfile::tempdir().unwrap();
    let st = store(dir.path(), Durability::Process);
    let db = open(&st, 1);
    let kv = db.kv();
    assert!(kv.get("nothing").unwrap().is_none());
    assert!(kv.list(&ListOptions::default()).unwrap().is_empty());
    let keys = ["b", "a", "ab", "é", "z", "a\u{10FFFF}", "aa"];
    kv.put_many(
        keys.iter()
            .map(|k| (k.to_string(), Bytes::from(k.as_bytes().to_vec())))
            .collect(),
    )
    .unwrap();
    let all: Vec<String> = kv
        .list(&ListOptions::default())
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let mut want: Vec<String> = keys.iter().map(|s| s.to_string()).collect();
    want.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    assert_eq!(all, want);
    let pre: Vec<String> = kv
        .list(&ListOptions {
            prefix: Some("a".into()),
            reverse: true,
            limit: Some(2),
            ..Default::default()
        })
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(pre, ["a\u{10FFFF}", "ab"]);
    let range: Vec<String> = kv
        .list(&ListOptions {
            start_after: Some("a".into()),
            end: Some("b".into()),
            ..Default::default()
        })
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(range, ["aa", "ab", "a\u{10FFFF}"]);
    let got = kv
        .get_many(&["z".into(), "missing".into(), "a".into()])
        .unwrap();
    assert_eq!(
        got.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        ["a", "z"]
    );
    assert!(kv.delete("a").unwrap());
    assert!(!kv.delete("a").unwrap());
    assert_eq!(kv.delete_many(&["b".into(), "zz".into()]).unwrap(), 1);

    let big_key = "k".repeat(2049);
    assert_eq!(
        kv.put(&big_key, Bytes::new()).unwrap_err(),
        SqlError::Storage(StorageError::KeyTooLarge { size: 2049 })
    );
    assert_eq!(
        kv.put("k", Bytes::from(vec![0u8; 200_000]))
            .unwrap_err()
            .to_string(),
        "Values cannot be larger than 131072 bytes. A value of size 200000 was provided."
    );
    let many: Vec<String> = (0..129).map(|i| i.to_string()).collect();
    assert_eq!(
        kv.get_many(&many).unwrap_err(),
        SqlError::Storage(StorageError::TooManyKeys { count: 129 })
    );
    assert_eq!(
        kv.list(&ListOptions {
            limit: Some(0),
            ..Default::default()
        })
        .unwrap_err(),
        SqlError::Storage(StorageError::ListLimit)
    );
    // A failing put_many changes nothing.
    let mut entries: Vec<(String, Bytes)> = vec![("ok".into(), Bytes::new())];
    entries.push(("bad".into(), Bytes::from(vec![0u8; 200_000])));
    assert!(kv.put_many(entries).is_err());
    assert!(kv.get("ok").unwrap().is_none());
}

#[test]
fn cached_statements_follow_bindings_and_schema_changes() {
    let dir = tempfile::tempdir().unwrap();
    let st = store(dir.path(), Durability::Process);
    let db = open(&st, 1);
    db.exec("CREATE TABLE t (a INTEGER)", &[]).unwrap();
    for i in 0..5 {
        let mut c = db
            .exec(
                "INSERT INTO t VALUES (?) RETURNING a",
                &[SqlValue::Integer(i)],
            )
            .unwrap();
        assert_eq!(c.rows_written(), 1);
        assert_eq!(c.one().unwrap().values(), [SqlValue::Integer(i)]);
    }
    let q = "SELECT * FROM t ORDER BY 1";
    assert_eq!(db.exec(q, &[]).unwrap().column_names(), ["a"]);
    assert_eq!(db.exec(q, &[]).unwrap().count(), 5);
    // Same text, new schema: re-prepared, new columns.
    db.exec("DROP TABLE t; CREATE TABLE t (x TEXT, y TEXT)", &[])
        .unwrap();
    let c = db.exec(q, &[]).unwrap();
    assert_eq!(c.column_names(), ["x", "y"]);
    assert_eq!(c.count(), 0);
    // A failed run leaves no transaction open and the statement usable.
    db.exec("CREATE TABLE u (id INTEGER PRIMARY KEY)", &[])
        .unwrap();
    let ins = "INSERT INTO u VALUES (?)";
    db.exec(ins, &[SqlValue::Integer(1)]).unwrap();
    assert!(db.exec(ins, &[SqlValue::Integer(1)]).is_err());
    assert!(db.exec(ins, &[]).is_err());
    db.exec(ins, &[SqlValue::Integer(2)]).unwrap();
    assert!(db.flush().is_ok());
    // The table's rows under the KV-like scan count.
    // Rows are read as they are pulled (the cursor streams).
    let mut all = db.exec("SELECT * FROM u", &[]).unwrap();
    assert_eq!(all.rows_read(), 1);
    assert_eq!(all.raw().count(), 2);
    assert_eq!(all.rows_read(), 2);
    db.delete_all().unwrap();
    assert!(db.exec(q, &[]).is_err());
}

#[test]
fn limits_as_documented_with_sqlite_texts() {
    let dir = tempfile::tempdir().unwrap();
    let st = store(dir.path(), Durability::Process);
    let db = open(&st, 1);
    db.exec("CREATE TABLE t (v)", &[]).unwrap();
    // 2 MB per string, BLOB and row.
    db.exec(
        "INSERT INTO t VALUES (?)",
        &[SqlValue::Blob(vec![7; 1_999_000])],
    )
    .unwrap();
    assert_eq!(
        db.exec(
            "INSERT INTO t VALUES (?)",
            &[SqlValue::Blob(vec![7; 2_000_001])]
        )
        .unwrap_err()
        .to_string(),
        "string or blob too big: SQLITE_TOOBIG"
    );
    assert_eq!(
        db.exec("SELECT zeroblob(2000001)", &[])
            .unwrap_err()
            .to_string(),
        "string or blob too big: SQLITE_TOOBIG"
    );
    // 100 columns per table.
    let cols = |n: usize| {
        (0..n)
            .map(|i| format!("c{i}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    db.exec(&format!("CREATE TABLE wide ({})", cols(100)), &[])
        .unwrap();
    assert_eq!(
        db.exec(&format!("CREATE TABLE wider ({})", cols(101)), &[])
            .unwrap_err()
            .to_string(),
        "too many columns on wider: SQLITE_ERROR"
    );
    // 100 KB statements.
    let long = format!("SELECT '{}'", "x".repeat(100_000));
    assert_eq!(
        db.exec(&long, &[]).unwrap_err().to_string(),
        "statement too long: SQLITE_TOOBIG"
    );
    // 100 bound parameters.
    let params = |n: usize| vec!["?"; n].join(", ");
    let hundred: Vec<SqlValue> = (0..100).map(SqlValue::Integer).collect();
    let row = db
        .exec(&format!("SELECT {}", params(100)), &hundred)
        .unwrap()
        .one()
        .unwrap();
    assert_eq!(row.values().len(), 100);
    let e = db
        .exec(&format!("SELECT {}", params(101)), &[])
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("too many SQL variables") && e.ends_with(": SQLITE_ERROR"),
        "{e}"
    );
}

#[test]
fn database_size_follows_every_kind_of_change() {
    let dir = tempfile::tempdir().unwrap();
    let st = store(dir.path(), Durability::Process);
    let db = open(&st, 1);
    let empty = db.database_size().unwrap();
    db.exec("CREATE TABLE t (v)", &[]).unwrap();
    let table = db.database_size().unwrap();
    assert!(table > empty, "{table} > {empty}");
    // Reads leave it (and the cached answer) alone.
    db.exec("SELECT * FROM t", &[]).unwrap();
    assert_eq!(db.database_size().unwrap(), table);
    let big = SqlValue::Blob(vec![1; 100_000]);
    // Inside a transaction it sees the uncommitted pages; a rollback takes them back.
    let r: Result<(), SqlError> = db.transaction_sync(|| {
        db.exec("INSERT INTO t VALUES (?)", std::slice::from_ref(&big))?;
        assert!(db.database_size().unwrap() > table + 90_000);
        Err(SqlError::Api("undo"))
    });
    assert!(r.is_err());
    assert_eq!(db.database_size().unwrap(), table);
    db.kv().put("k", Bytes::from(vec![2; 50_000])).unwrap();
    let with_kv = db.database_size().unwrap();
    assert!(with_kv > table + 40_000);
    db.exec("DELETE FROM t; DROP TABLE t", &[]).unwrap();
    assert!(db.database_size().unwrap() < with_kv);
    db.delete_all().unwrap();
    assert!(db.database_size().unwrap() <= empty + 4096);
}
