//! `ctx.storage.sql`, `ctx.storage.kv`, SQLite transactions and bookmarks from JS, over HTTP
//! against the real binary (fixture `sql`): a conformance suite, write atomicity, a kill -9
//! durability test, and ten thousand SQLite-backed objects on a bounded number of file
//! descriptors.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{fixture, Server};

fn start() -> Server {
    Server::start(&[fixture("sql").to_str().unwrap()])
}

fn err(name: &str, message: &str) -> Value {
    json!({"name": name, "message": message})
}

#[test]
fn cursors_values_and_errors_match_workerd() {
    let server = start();
    let c = server.get_json("/sql/conformance?name=conf");
    assert_eq!(
        c["numbers"],
        json!([{"n": 123, "r": 1.5, "neg": -7, "big": 9007199254740992u64}]),
        "integers beyond 2^53 lose precision, as on Cloudflare"
    );
    // Numbers bind as doubles, NULL/undefined as NULL, buffers as BLOBs, everything else as
    // its string (JSG's union coercion).
    assert_eq!(
        c["typeofs"],
        json!({"a": "real", "b": "text", "c": "null", "d": "null", "e": "blob", "f": "blob", "g": "text", "h": "text"})
    );
    assert_eq!(
        c["coerced"],
        json!({"t": "true", "big": "10", "obj": "[object Object]"})
    );
    assert_eq!(
        c["bigint"],
        json!({"t": "integer", "exact": 1, "s": "4611686018427387905"}),
        "a BigInt bound into an INTEGER column keeps every digit"
    );
    assert_eq!(
        c["blob"],
        json!({"isArrayBuffer": true, "bytes": [0, 255, 7]})
    );
    assert_eq!(c["blobView"], json!([8, 7]));
    assert_eq!(c["blobLiteral"], json!([255]));
    assert_eq!(c["emptyBlob"], json!([]));
    assert_eq!(c["text"], json!({"s": "héllo 🔥 a\u{0}b", "n": 5}));
    assert_eq!(c["null"], json!({"z": null}));

    assert_eq!(
        c["next"],
        json!([
            {"done": false, "value": {"col": 1}},
            {"done": false, "value": {"col": "foo"}},
            {"done": false, "value": {"col": 3}},
            {"done": true},
            {"done": true}
        ])
    );
    assert_eq!(
        c["toArray"],
        json!([{"value": 1}, {"value": "foo"}, {"value": 3}])
    );
    assert_eq!(c["one"], json!({"foo": 123, "bar": "abc"}));
    assert_eq!(c["afterOne"], json!([]));
    assert_eq!(
        c["oneNone"]["error"],
        err(
            "Error",
            "Expected exactly one result from SQL query, but got no results."
        )
    );
    assert_eq!(
        c["oneMany"]["error"],
        err(
            "Error",
            "Expected exactly one result from SQL query, but got multiple results."
        )
    );
    assert_eq!(c["raw"], json!([[1, "x"], [2, "y"]]));
    assert_eq!(
        c["rawSharesPosition"],
        json!({"first": {"v": 1}, "rest": [[2], [3]]})
    );
    assert_eq!(c["iteratorProtocol"], json!([{"seven": 7}]));
    assert_eq!(c["joinColumns"], json!(["a", "b", "c", "c", "d", "e"]));
    assert_eq!(c["joinRaw"], json!([[1, 2, 3, 7, 8, 9]]));
    assert_eq!(
        c["joinObject"],
        json!([{"a": 1, "b": 2, "c": 7, "d": 8, "e": 9}]),
        "a duplicate column name keeps the last value"
    );
    assert_eq!(c["columnsAfterConsumption"], c["joinColumns"]);
    assert_eq!(c["writeColumns"], json!([]));
    assert_eq!(
        c["multi"]["rows"],
        json!([{"x": 1}, {"x": 2}]),
        "the cursor covers the last statement"
    );
    assert_eq!(c["multi"]["rowsWritten"], 2);
    assert_eq!(c["insertCounts"], json!({"rowsWritten": 3, "rows": []}));
    assert_eq!(c["returning"], json!([{"x": 40}, {"x": 50}]));
    assert_eq!(
        c["databaseSize"],
        json!({"pageMultiple": true, "grew": 4096, "back": true})
    );

    let e = &c["errors"];
    assert_eq!(
        e["syntax"],
        err(
            "Error",
            "near \";\": syntax error at offset 7: SQLITE_ERROR"
        )
    );
    assert_eq!(
        e["syntax2"],
        err(
            "Error",
            "near \";\": syntax error at offset 8: SQLITE_ERROR"
        )
    );
    assert_eq!(
        e["empty"],
        err("Error", "SQL code did not contain a statement.")
    );
    assert_eq!(e["semicolon"], e["empty"]);
    assert_eq!(
        e["noTable"],
        err("Error", "no such table: nowhere: SQLITE_ERROR")
    );
    assert_eq!(
        e["mismatch"],
        err("Error", "datatype mismatch: SQLITE_MISMATCH")
    );
    assert_eq!(
        e["unique"],
        err(
            "Error",
            "UNIQUE constraint failed: u.name: SQLITE_CONSTRAINT (extended: SQLITE_CONSTRAINT_UNIQUE)"
        )
    );
    assert_eq!(
        e["notNull"],
        err(
            "Error",
            "NOT NULL constraint failed: nn.v: SQLITE_CONSTRAINT (extended: SQLITE_CONSTRAINT_NOTNULL)"
        )
    );
    assert_eq!(
        e["check"],
        err(
            "Error",
            "CHECK constraint failed: v IN ('A','B'): SQLITE_CONSTRAINT (extended: SQLITE_CONSTRAINT_CHECK)"
        )
    );
    assert_eq!(
        e["reservedCreate"],
        err("Error", "not authorized: SQLITE_AUTH")
    );
    assert_eq!(
        e["reservedRead"],
        err("Error", "access to _cf_KV.key is prohibited: SQLITE_AUTH")
    );
    let refused = "To execute a transaction, please use the state.storage.transaction() or state.storage.transactionSync() APIs instead of the SQL BEGIN TRANSACTION or SAVEPOINT statements. The JavaScript API is safer because it will automatically roll back on exceptions, and because it interacts correctly with Durable Objects' automatic atomic write coalescing.";
    for k in ["begin", "savepoint", "commit"] {
        assert_eq!(e[k], err("Error", refused), "{k}");
    }
    assert_eq!(
        e["wrongBindings"],
        err("Error", "Wrong number of parameter bindings for SQL query.")
    );
    assert_eq!(
        e["multiParams"],
        err(
            "Error",
            "When executing multiple SQL statements in a single call, only the last statement can have parameters."
        )
    );
    assert_eq!(e["pragma"], err("Error", "not authorized: SQLITE_AUTH"));
    assert_eq!(e["attach"], err("Error", "not authorized: SQLITE_AUTH"));
    assert_eq!(e["symbol"]["name"], "TypeError");
    assert_eq!(
        e["tooManyColumns"],
        err("Error", "too many columns on wide: SQLITE_ERROR")
    );
    assert_eq!(e["tooBig"]["name"], "Error");
    assert!(
        e["tooBig"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("SQLITE_TOOBIG")),
        "{e}"
    );
    assert_eq!(c["allowedPragmas"]["tableInfo"], json!(["a", "b", "c"]));
    assert_eq!(
        c["allowedPragmas"]["quickCheck"],
        json!([{"quick_check": "ok"}])
    );
}

#[test]
fn transaction_sync_rolls_back_on_throw_and_nests() {
    let server = start();
    let t = server.get_json("/sql/transactions?name=tx");
    assert_eq!(t["value"], "some data");
    assert_eq!(t["committed"], 1);
    assert_eq!(
        t["thrown"]["error"],
        err(
            "Error",
            "no such table: misspelled_table_name: SQLITE_ERROR"
        )
    );
    assert_eq!(t["rolledBack"], 0, "the table created inside is gone");
    assert_eq!(t["kvAfterThrow"], "before", "KV writes roll back with SQL");
    assert_eq!(t["nested"], json!([2, 3, "foo", 2, 2]));
    assert_eq!(t["notFunction"]["error"]["name"], "TypeError");
}

#[test]
fn async_transactions_on_sqlite_join_storage_and_sql() {
    let server = start();
    let t = server.get_json("/sql/async-transactions?name=atx");
    assert_eq!(t["result"], "foo");
    assert_eq!(t["afterCommit"], json!([1, 1]));
    assert_eq!(t["insideBeforeRollback"], 4);
    assert_eq!(
        t["afterRollbackGet"]["error"],
        err("Error", "Cannot get() on rolled back transaction")
    );
    assert_eq!(
        t["afterRollback"],
        json!([1, 1]),
        "txn.rollback() undid both the KV put and the SQL insert"
    );
    assert_eq!(t["thrown"]["error"], err("Error", "txn failure"));
    assert_eq!(t["afterThrow"], json!([1, 1]));
    assert_eq!(t["nestedInner"], 7);
    assert_eq!(
        t["afterNested"], 1,
        "rolling back the outer undoes the inner"
    );
    assert_eq!(
        t["deleteAllInside"]["error"]["message"],
        "Cannot call deleteAll() within a transaction"
    );
    assert_eq!(
        t["usedAfterCommit"]["error"],
        err(
            "Error",
            "Cannot call get() on transaction that has already committed: did you move `txn` outside of the closure?"
        )
    );
    assert_eq!(
        t["usedAfterRollback"]["error"],
        err("Error", "Cannot put() on rolled back transaction")
    );
}

#[test]
fn sync_kv_follows_workerd() {
    let server = start();
    let r = server.get_json("/sql/sync-kv?name=kv");
    assert_eq!(r["missing"], true);
    assert_eq!(r["values"], json!([123, "abc"]));
    assert_eq!(r["list"], json!([["bar", "abc"], ["foo", 123]]));
    assert_eq!(r["reverse"], json!([["foo", 123], ["bar", "abc"]]));
    assert_eq!(
        r["invalidated"]["error"],
        err(
            "Error",
            "kv.list() iterator was invalidated because a new call to kv.list() was started. Only one kv.list() iterator can exist at a time."
        )
    );
    assert_eq!(r["second"], json!([["bar", "abc"], ["foo", 123]]));
    assert_eq!(r["prefix"], json!([["bar", "abc"], ["baz", false]]));
    assert_eq!(r["limit"], json!([["bar", "abc"]]));
    assert_eq!(r["reverseLimit"], json!([["foo", 123]]));
    assert_eq!(r["range"], json!([["bar", "abc"]]));
    assert_eq!(r["startAfter"], json!([["baz", false]]));
    assert_eq!(r["deleteMissing"], false);
    assert_eq!(r["deleteOne"], true);
    assert_eq!(r["afterDelete"], json!([["baz", false], ["foo", 123]]));
    assert_eq!(r["structured"], true);
    assert_eq!(
        r["limitZero"]["error"],
        err("TypeError", "List limit must be positive.")
    );
    assert_eq!(r["bigKey"]["error"]["name"], "RangeError");
    assert_eq!(r["bothStarts"]["error"]["name"], "TypeError");

    let shared = server.get_json("/sql/shared-kv?name=kv2");
    assert_eq!(
        shared,
        json!({"viaAsync": "from sync", "viaSync": 5, "cfTable": "access to _cf_KV.key is prohibited: SQLITE_AUTH"})
    );
}

#[test]
fn a_cursor_reads_rows_only_as_they_are_pulled() {
    let server = start();
    let s = server.get_json("/sql/streaming?name=stream&rows=100000");
    assert_eq!(s["firstTen"], json!([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]));
    assert_eq!(s["more"], 11);
    assert_eq!(s["rest"], 100000 - 11);
    let at_start = s["atStart"].as_u64().unwrap();
    let after_ten = s["afterTen"].as_u64().unwrap();
    assert!(
        at_start <= 2,
        "exec read {at_start} rows before any was pulled"
    );
    assert!(
        (10..=12).contains(&after_ten),
        "ten rows pulled, {after_ten} read: the cursor did not stream"
    );
    assert!(s["afterAll"].as_u64().unwrap() >= 100000, "{s}");
}

#[test]
fn delete_all_wipes_sql_and_kv_and_stops_cursors() {
    let server = start();
    let d = server.get_json("/sql/delete-all?name=wipe");
    assert_eq!(d["first"], 1);
    assert_eq!(
        d["cursorAfter"]["error"],
        err(
            "Error",
            "SQLite query was canceled because the database was deleted."
        )
    );
    assert_eq!(d["tables"], json!([]));
    assert_eq!(d["kv"], Value::Null);
    assert_eq!(d["usable"], 1);
}

#[test]
fn sql_and_kv_writes_of_one_turn_are_kept_or_dropped_together() {
    let server = start();
    let kept = server.get_json("/sql/turn?name=turn-kept");
    assert_eq!(kept["done"]["ok"], "done");
    assert_eq!(kept["state"], json!({"sqlRows": 1, "kv": 1, "asyncKv": 1}));
    // ctx.abort() before the turn ends: the turn's batch (SQL pages and both KV writes) is
    // dropped whole; had any of them been written on its own, it would be there.
    let dropped = server.get_json("/sql/turn?name=turn-dropped&abort=1");
    assert_eq!(
        dropped["state"],
        json!({"sqlRows": 0, "kv": null, "asyncKv": null}),
        "{dropped}"
    );
}

#[test]
fn bookmarks_restore_across_abort_and_can_be_undone() {
    let server = start();
    let p = server.get_json("/sql/pitr?name=pitr");
    let shape = |b: &Value| {
        let parts: Vec<&str> = b.as_str().unwrap_or_default().split('-').collect();
        parts.len() == 4
            && [8, 8, 8, 32]
                .iter()
                .zip(&parts)
                .all(|(n, p)| p.len() == *n && p.chars().all(|c| c.is_ascii_hexdigit()))
    };
    let prep = &p["prep"];
    for b in [&prep["b1"], &prep["b2"], &prep["forNow"], &p["undo"]] {
        assert!(shape(b), "not a bookmark: {b} in {p}");
    }
    let s = |v: &Value| v.as_str().unwrap().to_string();
    assert!(
        s(&prep["b1"]) < s(&prep["b2"]) && s(&prep["b2"]) < s(&prep["forNow"]),
        "bookmarks sort in time order: {prep}"
    );
    assert_eq!(
        prep["errors"]["future"]["error"],
        err("Error", "Cannot get a bookmark for a time in the future.")
    );
    assert_eq!(
        prep["errors"]["old"]["error"],
        err(
            "Error",
            "Point-in-time recovery is only possible within the last 30 days."
        )
    );
    assert_eq!(
        prep["errors"]["invalid"]["error"],
        err("Error", "Invalid bookmark.")
    );
    assert_eq!(p["before"], json!({"rows": [1, 2], "x": 2}));
    // `await onNextSessionRestoreBookmark(b1); ctx.abort()` in one turn: SQL and KV are back
    // at b1 in the next instance.
    assert_eq!(p["afterRestore"], json!({"rows": [1], "x": 1}), "{p}");
    assert_eq!(p["afterB2"], json!({"rows": [1, 2], "x": 2}), "{p}");
    assert_eq!(
        p["afterUndo"],
        json!({"rows": [1], "x": 1}),
        "the returned bookmark undoes the restore: {p}"
    );
}

#[test]
fn kv_backed_classes_refuse_the_sqlite_apis_with_workerd_texts() {
    let server = start();
    let r = server.get_json("/sql/kv-class?name=k");
    assert_eq!(r["sqlIsObject"], true);
    let not_sqlite = "This Durable Object is not backed by SQLite storage, so the SQL API is not available. SQL can be enabled on a new Durable Object class by using the `new_sqlite_classes` instead of `new_classes` under `[[migrations]]` in your wrangler.toml, but an already-deployed class cannot be converted to SQLite (except by deleting the existing data).";
    assert_eq!(r["exec"]["error"], err("Error", not_sqlite));
    assert_eq!(r["size"]["error"], err("Error", not_sqlite));
    assert!(
        r["kv"]["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("The storage.kv (synchronous KV) API is only available for SQLite-backed Durable Objects")),
        "{r}"
    );
    assert_eq!(
        r["transactionSync"]["error"],
        err("Error", "Durable Object is not backed by SQL.")
    );
    assert_eq!(
        r["bookmark"]["error"],
        err(
            "Error",
            "This Durable Object's storage back-end does not implement point-in-time recovery."
        )
    );
}

/// The state of one object's database, opened directly from the store (the server must be
/// stopped): `PRAGMA integrity_check`, which user SQL may not run.
fn integrity_check(state: &Path, object_hex: &str) -> String {
    let store =
        cinder_storage::Store::open(&state.join("store"), cinder_storage::StoreConfig::default())
            .expect("open the stopped server's store");
    let mut id = [0u8; 32];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(&object_hex[2 * i..2 * i + 2], 16).expect("hex id");
    }
    let db = cinder_sql::SqlStorage::open(store.object(id), cinder_sql::SqlConfig::default())
        .expect("open the object's database");
    db.integrity_check().expect("integrity_check")
}

/// SQL writes from JS hold the output gate: an acknowledged increment is durable. Each round
/// runs the counter from two client threads, kills the server with SIGKILL at a random number
/// of acknowledged increments, and checks after a restart that the counter is at least every
/// acknowledged value and the database is intact.
#[test]
fn every_acknowledged_sql_write_survives_kill_9() {
    const ROUNDS: usize = 10;
    let state = tempfile::tempdir().unwrap();
    let dir = fixture("sql");
    let args = [dir.to_str().unwrap()];
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut random = move |n: u64| {
        // xorshift: a different kill point every round and every run.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut object = String::new();
    let mut floor = 0i64;
    for round in 0..ROUNDS {
        let mut server = Server::start_in(state.path(), &args);
        let now = server.get_json("/sql/counter-value?name=crash");
        let v = now["v"].as_i64().unwrap();
        assert!(
            v >= floor,
            "round {round}: counter is {v} after a restart, but {floor} was acknowledged"
        );
        assert_eq!(now["quickCheck"], "ok");
        let kill_at = 20 + random(200) as i64;
        let acked = Arc::new(AtomicI64::new(v));
        let stop = Arc::new(AtomicBool::new(false));
        let url = server.url("/sql/counter?name=crash");
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (acked, stop, url) = (acked.clone(), stop.clone(), url.clone());
                std::thread::spawn(move || {
                    let client = crate::harness::client();
                    let mut id = String::new();
                    while !stop.load(Ordering::SeqCst) {
                        // Requests in flight when the server dies fail: they were never
                        // acknowledged.
                        let Ok(resp) = client.get(&url).send() else {
                            break;
                        };
                        let Ok(body) = resp.json::<Value>() else {
                            break;
                        };
                        if let Some(v) = body["v"].as_i64() {
                            acked.fetch_max(v, Ordering::SeqCst);
                            id = body["id"].as_str().unwrap_or_default().to_string();
                        }
                    }
                    id
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(120);
        while acked.load(Ordering::SeqCst) < v + kill_at {
            assert!(
                Instant::now() < deadline,
                "round {round}: increments stalled"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        server.signal_and_wait(libc::SIGKILL, Duration::from_secs(30));
        stop.store(true, Ordering::SeqCst);
        for t in threads {
            let id = t.join().unwrap();
            if !id.is_empty() {
                object = id;
            }
        }
        floor = acked.load(Ordering::SeqCst);
        drop(server);
        assert_eq!(
            integrity_check(state.path(), &object),
            "ok",
            "round {round}: the database is damaged"
        );
    }
    let server = Server::start_in(state.path(), &args);
    let v = server.get_json("/sql/counter-value?name=crash")["v"]
        .as_i64()
        .unwrap();
    assert!(v >= floor, "final counter {v} < acknowledged {floor}");
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Ten thousand SQLite-backed objects, each with its own database, touched from JS: the
/// process's open file descriptors do not grow with the number of objects (a database is a
/// key range of the node's one store, not a file).
#[test]
fn ten_thousand_sqlite_objects_need_no_file_descriptors() {
    let server = start();
    server.get_json("/sql/touch?from=0&count=100");
    let before = open_fds(server.pid());
    assert!(before > 0, "cannot read /proc/{}/fd", server.pid());
    let mut from = 100;
    while from < 10_100 {
        assert_eq!(
            server.get_json(&format!("/sql/touch?from={from}&count=1000")),
            json!(1000)
        );
        from += 1000;
    }
    let after = open_fds(server.pid());
    assert!(
        after < before + 64,
        "open descriptors went from {before} to {after} over 10,000 objects"
    );
    // The databases are there: a second touch of an early one finds its first row.
    assert_eq!(server.get_json("/sql/touch?from=5&count=1"), json!(1));
}
