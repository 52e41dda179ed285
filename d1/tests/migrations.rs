//! `d1 migrations create|list|apply` and `d1 execute` against a real store and runtime.

use std::sync::Arc;

use cinder_core::{Runtime, RuntimeConfig};
use cinder_d1::migrations::{self, CliError, MigrationsConfig, Target};
use cinder_d1::{namespace_spec, D1Service, Statement};
use cinder_sql::SqlValue;
use cinder_storage::{Durability, Store, StoreConfig};

fn runtime(store: &Arc<Store>) -> Runtime {
    Runtime::start(
        store.clone(),
        RuntimeConfig {
            threads: 1,
            ..RuntimeConfig::default()
        },
        vec![namespace_spec()],
    )
    .unwrap()
}

fn config(project: &std::path::Path) -> MigrationsConfig {
    MigrationsConfig {
        project_dir: project.to_owned(),
        migrations_dir: None,
        migrations_table: None,
        config_file: "wrangler.toml".into(),
    }
}

fn target() -> Target {
    Target {
        name: "DB".into(),
        id: "db-id".into(),
        location: ".cinder/state".into(),
    }
}

#[tokio::test]
async fn migrations_apply_once_in_order_each_in_a_transaction() {
    let state = tempfile::tempdir().unwrap();
    let project = tempfile::tempdir().unwrap();
    let store = Store::open(
        state.path(),
        StoreConfig {
            durability: Durability::Fsync,
            ..StoreConfig::default()
        },
    )
    .unwrap();
    let rt = runtime(&store);
    let db = D1Service::from_runtime(&rt, "db-id").unwrap();
    let cfg = config(project.path());

    // No directory yet: list and apply say so, as wrangler does.
    let e = migrations::list(&db, &cfg).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "No migrations present at {}.",
            project.path().join("migrations").display()
        )
    );

    // create: numbered files, wrangler's header line and message.
    let first = migrations::create(&cfg, "create users").unwrap();
    assert_eq!(first.file_name, "0001_create_users.sql");
    let header = std::fs::read_to_string(&first.path).unwrap();
    assert!(
        header.starts_with("-- Migration number: 0001 \t "),
        "{header}"
    );
    assert!(first
        .output
        .contains("✅ Successfully created Migration '0001_create_users.sql'!"));
    std::fs::write(
        &first.path,
        "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT);\n\
         INSERT INTO users (name) VALUES ('first; with a semicolon');\n",
    )
    .unwrap();
    let second = migrations::create(&cfg, "add email").unwrap();
    assert_eq!(second.file_name, "0002_add_email.sql");
    std::fs::write(&second.path, "ALTER TABLE users ADD COLUMN email TEXT;\n").unwrap();
    assert!(matches!(
        migrations::create(&cfg, "a/b"),
        Err(CliError::BadName(_))
    ));

    let listed = migrations::list(&db, &cfg).await.unwrap();
    assert_eq!(
        listed.unapplied,
        ["0001_create_users.sql", "0002_add_email.sql"]
    );
    assert!(listed.output.starts_with("Migrations to be applied:\n┌"));
    assert!(listed.output.contains("│ 0002_add_email.sql    │"));

    let applied = migrations::apply(&db, &cfg, &target()).await.unwrap();
    assert_eq!(
        applied.applied,
        ["0001_create_users.sql", "0002_add_email.sql"]
    );
    assert!(applied
        .output
        .contains("🚣 3 commands executed successfully."));
    assert!(applied
        .output
        .contains("│ 0002_add_email.sql    │ ✅     │"));

    // Recorded exactly as wrangler records them, in order.
    let rows = db
        .query(Statement::new(
            "SELECT id, name, typeof(applied_at) FROM d1_migrations ORDER BY id",
        ))
        .await
        .unwrap();
    assert_eq!(
        rows.rows,
        vec![
            vec![
                SqlValue::Integer(1),
                "0001_create_users.sql".into(),
                "text".into()
            ],
            vec![
                SqlValue::Integer(2),
                "0002_add_email.sql".into(),
                "text".into()
            ],
        ]
    );
    let schema = db
        .query(Statement::new(
            "SELECT sql FROM sqlite_master WHERE name = 'd1_migrations'",
        ))
        .await
        .unwrap();
    let sql = schema.rows[0][0].as_str().unwrap().to_owned();
    assert!(
        sql.contains("id         INTEGER PRIMARY KEY AUTOINCREMENT"),
        "{sql}"
    );
    assert!(sql.contains("name       TEXT UNIQUE"), "{sql}");
    assert!(
        sql.contains("applied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP NOT NULL"),
        "{sql}"
    );

    // Applied once: a second run has nothing to do.
    let again = migrations::apply(&db, &cfg, &target()).await.unwrap();
    assert!(again.applied.is_empty());
    assert_eq!(again.output, "✅ No migrations to apply!\n");

    // A failing migration leaves nothing behind and stops the run; later ones wait.
    let bad = migrations::create(&cfg, "bad").unwrap();
    std::fs::write(
        &bad.path,
        "INSERT INTO users (name) VALUES ('half');\nINSERT INTO nowhere VALUES (1);\n",
    )
    .unwrap();
    let after = migrations::create(&cfg, "after").unwrap();
    std::fs::write(&after.path, "CREATE TABLE after_bad (x);\n").unwrap();
    let err = migrations::apply(&db, &cfg, &target()).await.unwrap_err();
    match &err {
        CliError::Query { message, output } => {
            assert_eq!(message, "no such table: nowhere: SQLITE_ERROR");
            assert!(output.contains("│ 0003_bad.sql   │ ❌     │"), "{output}");
            assert!(output.contains("│ 0004_after.sql │ 🕒️     │"), "{output}");
            assert!(output.contains("Migration 0003_bad.sql failed with the following errors:"));
        }
        other => panic!("{other:?}"),
    }
    let half = db
        .query(Statement::new(
            "SELECT count(*) FROM users WHERE name = 'half'",
        ))
        .await
        .unwrap();
    assert_eq!(half.rows, vec![vec![SqlValue::Integer(0)]]);
    let listed = migrations::list(&db, &cfg).await.unwrap();
    assert_eq!(listed.unapplied, ["0003_bad.sql", "0004_after.sql"]);
    rt.shutdown();
}

#[tokio::test]
async fn execute_prints_like_wrangler() {
    let state = tempfile::tempdir().unwrap();
    let store = Store::open(state.path(), StoreConfig::default()).unwrap();
    let rt = runtime(&store);
    let db = D1Service::from_runtime(&rt, "db-id").unwrap();
    let out = migrations::execute(
        &db,
        &target(),
        Some("CREATE TABLE t (a, b); INSERT INTO t VALUES (1, x'0102'), (2.5, 'two'); SELECT * FROM t;"),
        None,
        false,
        true,
    )
    .await
    .unwrap();
    assert!(out
        .output
        .starts_with("🌀 Executing on local database DB (db-id) from .cinder/state:\n"));
    assert!(out
        .output
        .contains("🚣 3 commands executed successfully.\n"));
    assert!(out.output.contains("│ 1   │ [1, 2] │"), "{}", out.output);
    assert!(out.output.contains("│ 2.5 │ two    │"), "{}", out.output);
    assert_eq!(out.json[2]["results"][0]["b"], "[1, 2]");
    assert_eq!(out.json[2]["success"], true);
    assert!(out.json[2]["meta"]["duration"].is_number());

    let file = state.path().join("x.sql");
    std::fs::write(&file, "SELECT count(*) AS n FROM t;").unwrap();
    let json = migrations::execute(&db, &target(), None, Some(&file), true, false)
        .await
        .unwrap();
    let doc: serde_json::Value = serde_json::from_str(&json.output).unwrap();
    assert_eq!(doc[0]["results"], serde_json::json!([{"n": 2}]));
    assert!(json.output.starts_with("[\n  {\n"));

    let err = migrations::execute(
        &db,
        &target(),
        Some("SELECT * FROM nope"),
        None,
        true,
        false,
    )
    .await
    .unwrap_err();
    assert_eq!(err.to_string(), "no such table: nope: SQLITE_ERROR");
    assert_eq!(
        migrations::json_error(&err.to_string()),
        "{\n  \"error\": {\n    \"text\": \"no such table: nope: SQLITE_ERROR\"\n  }\n}"
    );
    assert!(matches!(
        migrations::execute(&db, &target(), None, None, false, false).await,
        Err(CliError::Usage(_))
    ));
    rt.shutdown();
}

#[tokio::test]
async fn execute_without_a_terminal_prints_logs_then_json() {
    let state = tempfile::tempdir().unwrap();
    let store = Store::open(state.path(), StoreConfig::default()).unwrap();
    let rt = runtime(&store);
    let db = D1Service::from_runtime(&rt, "db-id").unwrap();
    let out = migrations::execute(&db, &target(), Some("SELECT 1 AS one"), None, false, false)
        .await
        .unwrap();
    let (log, doc) = out.output.split_once("[\n").unwrap();
    assert!(
        log.ends_with("🚣 1 command executed successfully.\n"),
        "{log}"
    );
    let doc: serde_json::Value = serde_json::from_str(&format!("[\n{doc}")).unwrap();
    assert_eq!(doc[0]["results"], serde_json::json!([{"one": 1}]));
    rt.shutdown();
}
