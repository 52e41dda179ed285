//! D1 from JS (`env.DB`, fixture `sql`) and the `cinder d1` CLI, against the real binary.

use std::path::Path;
use std::process::Output;

use serde_json::{json, Value};

use crate::harness::{cinder, copy_fixture, fixture, Server};

fn err(message: &str, cause: &str) -> Value {
    json!({"name": "Error", "message": message, "cause": cause})
}

fn assert_meta(meta: &Value) {
    let keys: Vec<&str> = meta
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for k in [
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
        assert!(keys.contains(&k), "meta lacks {k}: {meta}");
    }
    assert!(meta["duration"].is_number() && meta["timings"]["sql_duration_ms"].is_number());
}

#[test]
fn d1_binding_results_meta_errors_batches_and_sessions() {
    let server = Server::start(&[fixture("sql").to_str().unwrap()]);
    let r = server.get_json("/d1/conformance");
    assert_eq!(r["exec"]["count"], 2, "{r}");
    assert!(r["exec"]["duration"].is_number());

    let run = &r["run"];
    assert_eq!(run["success"], true);
    assert_eq!(run["results"], json!([]));
    assert_meta(&run["meta"]);
    assert_eq!(run["meta"]["changes"], 1);
    assert_eq!(run["meta"]["last_row_id"], 1);
    assert_eq!(run["meta"]["rows_written"], 1);
    assert_eq!(run["meta"]["changed_db"], true);
    assert!(run["meta"]["size_after"].as_u64().unwrap() > 0);

    assert_eq!(
        r["all"]["results"],
        json!([
            {"id": 1, "name": "apple", "qty": 1.5, "data": [1, 2, 3], "flag": 1},
            {"id": 2, "name": "pear", "qty": 2, "data": null, "flag": 0}
        ]),
        "booleans bind as 1/0, BLOBs come back as arrays of bytes"
    );
    assert_eq!(r["all"]["success"], true);
    assert_eq!(r["all"]["meta"]["changed_db"], false);
    assert_eq!(r["first"], json!({"name": "apple", "qty": 1.5}));
    assert_eq!(r["firstColumn"], "pear");
    assert_eq!(r["firstNone"], Value::Null);
    assert_eq!(
        r["firstMissingColumn"]["error"],
        err(
            "D1_COLUMN_NOTFOUND: Column not found (nope)",
            "Column not found"
        )
    );
    assert_eq!(r["raw"], json!([[1, "apple"], [2, "pear"]]));
    assert_eq!(
        r["rawColumns"],
        json!([["id", "name"], [1, "apple"], [2, "pear"]])
    );
    assert_eq!(r["params"], json!([1, [0, 0]]));
    assert_eq!(
        r["typeUndefined"]["error"],
        err(
            "D1_TYPE_ERROR: Type 'undefined' not supported for value 'undefined'",
            "Type 'undefined' not supported for value 'undefined'"
        )
    );
    assert_eq!(
        r["typeObject"]["error"],
        err(
            "D1_TYPE_ERROR: Type 'object' not supported for value '[object Object]'",
            "Type 'object' not supported for value '[object Object]'"
        )
    );
    assert_eq!(
        r["syntax"]["error"],
        err(
            "D1_ERROR: near \"SELEC\": syntax error at offset 0: SQLITE_ERROR",
            "near \"SELEC\": syntax error at offset 0: SQLITE_ERROR"
        )
    );
    assert_eq!(
        r["constraint"]["error"]["message"],
        "D1_ERROR: UNIQUE constraint failed: items.name: SQLITE_CONSTRAINT (extended: SQLITE_CONSTRAINT_UNIQUE)"
    );
    // A batch whose third statement fails leaves nothing of the first two.
    assert!(
        r["batchFails"]["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("D1_ERROR: UNIQUE constraint failed"),
        "{r}"
    );
    assert_eq!(r["countAfterFailedBatch"], json!([2, 2]));
    let batch = r["batch"].as_array().unwrap();
    assert_eq!(batch.len(), 2);
    assert_eq!(batch[0]["meta"]["changes"], 1);
    assert_eq!(batch[1]["results"], json!([{"name": "plum"}]));
    assert!(
        r["execError"]["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("D1_EXEC_ERROR: Error in line 2: INSERT INTO nowhere VALUES (1);: no such table: nowhere"),
        "{r}"
    );
    assert_eq!(r["figAfterExecError"], 0, "exec() is all or nothing");
    assert_eq!(r["sessionBefore"], Value::Null);
    assert_eq!(
        r["sessions"],
        json!({"b1IsString": true, "ordered": true, "resumedStart": true, "unconstrained": null})
    );
    assert_eq!(
        r["dump"],
        json!({"isArrayBuffer": true, "header": "SQLite format 3"})
    );
}

#[test]
fn d1_from_a_durable_object_goes_through_its_gates() {
    let server = Server::start(&[fixture("sql").to_str().unwrap()]);
    assert_eq!(server.get_json("/sql/d1-from-object?name=d1"), json!(42));
}

fn run(dir: &Path, state: &Path, args: &[&str]) -> Output {
    cinder()
        .arg("d1")
        .args(args)
        .arg("-c")
        .arg(dir)
        .arg("--persist-to")
        .arg(state)
        .output()
        .expect("run cinder d1")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn cli_applies_migrations_once_and_cinder_dev_sees_them() {
    let project = copy_fixture("sql");
    let dir = project.path();
    let state = tempfile::tempdir().unwrap();

    let listed = run(dir, state.path(), &["migrations", "list", "DB", "--local"]);
    assert!(listed.status.success(), "{listed:?}");
    let out = stdout(&listed);
    assert!(
        out.contains("0001_users.sql") && out.contains("0002_posts.sql"),
        "{out}"
    );

    let applied = run(dir, state.path(), &["migrations", "apply", "DB", "--local"]);
    assert!(applied.status.success(), "{applied:?}");
    let out = stdout(&applied);
    assert!(out.contains("Migrations to be applied:"), "{out}");
    assert_eq!(
        out.matches('✅').count(),
        2 + 1,
        "two ✅ rows in the final table: {out}"
    );

    // Applied once: a second run has nothing to do; `list` agrees; the name works too.
    let again = run(dir, state.path(), &["migrations", "apply", "app-db"]);
    assert!(again.status.success(), "{again:?}");
    assert!(stdout(&again).contains("✅ No migrations to apply!"));
    let listed = run(dir, state.path(), &["migrations", "list", "DB"]);
    assert!(stdout(&listed).contains("✅ No migrations to apply!"));

    let created = cinder()
        .args(["d1", "migrations", "create", "DB", "add flags", "-c"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(created.status.success(), "{created:?}");
    assert!(dir.join("migrations/0003_add_flags.sql").is_file());

    // execute: --command with --json, --file, and a failing statement.
    let q = run(
        dir,
        state.path(),
        &[
            "execute",
            "DB",
            "--command",
            "SELECT name FROM d1_migrations ORDER BY id",
            "--json",
        ],
    );
    assert!(q.status.success(), "{q:?}");
    let doc: Value = serde_json::from_slice(&q.stdout).expect("JSON");
    assert_eq!(
        doc[0]["results"],
        json!([{"name": "0001_users.sql"}, {"name": "0002_posts.sql"}])
    );
    assert_eq!(doc[0]["success"], true);

    std::fs::write(
        dir.join("seed.sql"),
        "INSERT INTO users (name) VALUES ('bob');\nINSERT INTO posts (user_id, body) VALUES (2, 'hi');\n",
    )
    .unwrap();
    let seeded = run(
        dir,
        state.path(),
        &[
            "execute",
            "DB",
            "--file",
            dir.join("seed.sql").to_str().unwrap(),
        ],
    );
    assert!(seeded.status.success(), "{seeded:?}");
    assert!(stdout(&seeded).contains("2 commands executed successfully"));

    let bad = run(
        dir,
        state.path(),
        &[
            "execute",
            "DB",
            "--command",
            "INSERT INTO users (name) VALUES ('ada')",
        ],
    );
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr)
            .contains("✘ [ERROR] UNIQUE constraint failed: users.name"),
        "{bad:?}"
    );
    let unknown = run(
        dir,
        state.path(),
        &["execute", "NOPE", "--command", "SELECT 1"],
    );
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains(
            "Couldn't find a D1 DB with the name or binding 'NOPE' in your wrangler.toml file."
        ),
        "{unknown:?}"
    );

    // `cinder dev` on the same state sees the migrated, seeded database.
    let dir_arg = dir.to_str().unwrap();
    let server = Server::start_in(state.path(), &[dir_arg]);
    let v = server.get_json(
        "/d1/query?sql=SELECT%20u.name,%20p.body%20FROM%20posts%20p%20JOIN%20users%20u%20ON%20u.id%20=%20p.user_id",
    );
    assert_eq!(
        v["ok"]["results"],
        json!([{"name": "bob", "body": "hi"}]),
        "{v}"
    );
    drop(server);

    // And the CLI sees what `cinder dev` wrote.
    let after = run(
        dir,
        state.path(),
        &[
            "execute",
            "DB",
            "--command",
            "SELECT count(*) AS n FROM users",
            "--json",
        ],
    );
    let doc: Value = serde_json::from_slice(&after.stdout).expect("JSON");
    assert_eq!(doc[0]["results"], json!([{"n": 2}]));
}
