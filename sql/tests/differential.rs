//! Differential property test: random schemas and statements run on the fjall-backed engine
//! and on a plain in-memory rusqlite database give the same results and the same failures,
//! across turns, transactionSync commits and rollbacks, cache spills and reopening.

mod common;

use cinder_sql::{SqlConfig, SqlError, SqlStorage, SqlValue};
use cinder_storage::Durability;
use proptest::prelude::*;
use rusqlite::types::ValueRef;

#[derive(Debug, Clone)]
enum Op {
    Create {
        t: u8,
        types: Vec<&'static str>,
    },
    Insert {
        t: u8,
        id: Option<i64>,
        vals: Vec<SqlValue>,
    },
    Bulk {
        t: u8,
        n: u16,
        width: u16,
    },
    Update {
        t: u8,
        col: u8,
        val: SqlValue,
        below: i64,
    },
    Delete {
        t: u8,
        m: i64,
        r: i64,
    },
    Select {
        t: u8,
    },
    Aggregate {
        t: u8,
    },
    Index {
        t: u8,
        col: u8,
    },
    Drop {
        t: u8,
    },
    Txn {
        ops: Vec<Op>,
        commit: bool,
    },
    Turn,
    Reopen,
}

fn value() -> impl Strategy<Value = SqlValue> {
    prop_oneof![
        Just(SqlValue::Null),
        (-1000i64..1000).prop_map(SqlValue::Integer),
        (-1.0e6f64..1.0e6).prop_map(SqlValue::Real),
        "[a-z]{0,12}".prop_map(SqlValue::Text),
        prop::collection::vec(any::<u8>(), 0..40).prop_map(SqlValue::Blob),
    ]
}

fn col_type() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("INTEGER"),
        Just("TEXT"),
        Just("REAL"),
        Just("BLOB"),
        Just(""),
        Just("INTEGER NOT NULL"),
        Just("TEXT UNIQUE"),
    ]
}

fn simple_op() -> impl Strategy<Value = Op> {
    let t = 0u8..3;
    prop_oneof![
        (t.clone(), prop::collection::vec(col_type(), 1..4))
            .prop_map(|(t, types)| Op::Create { t, types }),
        (
            t.clone(),
            prop::option::of(0i64..50),
            prop::collection::vec(value(), 1..4)
        )
            .prop_map(|(t, id, vals)| Op::Insert { t, id, vals }),
        (t.clone(), 1u16..200, 1u16..900).prop_map(|(t, n, width)| Op::Bulk { t, n, width }),
        (t.clone(), 0u8..3, value(), 0i64..60).prop_map(|(t, col, val, below)| Op::Update {
            t,
            col,
            val,
            below
        }),
        (t.clone(), 1i64..5, 0i64..5).prop_map(|(t, m, r)| Op::Delete { t, m, r }),
        t.clone().prop_map(|t| Op::Select { t }),
        t.clone().prop_map(|t| Op::Aggregate { t }),
        (t.clone(), 0u8..3).prop_map(|(t, col)| Op::Index { t, col }),
        t.prop_map(|t| Op::Drop { t }),
        Just(Op::Turn),
        Just(Op::Reopen),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => simple_op(),
        1 => (prop::collection::vec(simple_op(), 1..6), any::<bool>())
            .prop_map(|(ops, commit)| Op::Txn { ops, commit }),
    ]
}

/// SQL text and bindings of a statement op (None for control ops).
fn sql_of(op: &Op) -> Option<(String, Vec<SqlValue>)> {
    Some(match op {
        Op::Create { t, types } => {
            let cols: Vec<String> = types
                .iter()
                .enumerate()
                .map(|(i, ty)| format!("c{i} {ty}"))
                .collect();
            (
                format!(
                    "CREATE TABLE IF NOT EXISTS t{t} (id INTEGER PRIMARY KEY, {})",
                    cols.join(", ")
                ),
                vec![],
            )
        }
        Op::Insert { t, id, vals } => {
            let cols: Vec<String> = (0..vals.len()).map(|i| format!("c{i}")).collect();
            let marks: Vec<&str> = vals.iter().map(|_| "?").collect();
            let mut b = vec![SqlValue::from(*id)];
            b.extend(vals.iter().cloned());
            (
                format!(
                    "INSERT INTO t{t} (id, {}) VALUES (?, {})",
                    cols.join(", "),
                    marks.join(", ")
                ),
                b,
            )
        }
        Op::Bulk { t, n, width } => (
            format!(
                "WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < {n})
                 INSERT INTO t{t} (c0) SELECT printf('%0{width}d', x * 7919) FROM s"
            ),
            vec![],
        ),
        Op::Update { t, col, val, below } => (
            format!("UPDATE t{t} SET c{col} = ? WHERE id < ?"),
            vec![val.clone(), SqlValue::Integer(*below)],
        ),
        Op::Delete { t, m, r } => (format!("DELETE FROM t{t} WHERE id % {m} = {r}"), vec![]),
        Op::Select { t } => (format!("SELECT * FROM t{t} ORDER BY id"), vec![]),
        Op::Aggregate { t } => (
            format!("SELECT count(*), sum(id), max(c0), min(length(c0)), total(id) FROM t{t}"),
            vec![],
        ),
        Op::Index { t, col } => (
            format!("CREATE INDEX IF NOT EXISTS i{t}_{col} ON t{t} (c{col})"),
            vec![],
        ),
        Op::Drop { t } => (format!("DROP TABLE IF EXISTS t{t}"), vec![]),
        Op::Txn { .. } | Op::Turn | Op::Reopen => return None,
    })
}

type Outcome = Result<Vec<Vec<SqlValue>>, ()>;

fn reference_run(conn: &rusqlite::Connection, sql: &str, b: &[SqlValue]) -> Outcome {
    let mut st = conn.prepare(sql).map_err(|_| ())?;
    let params: Vec<rusqlite::types::Value> = b
        .iter()
        .map(|v| match v {
            SqlValue::Null => rusqlite::types::Value::Null,
            SqlValue::Integer(i) => rusqlite::types::Value::Integer(*i),
            SqlValue::Real(x) => rusqlite::types::Value::Real(*x),
            SqlValue::Text(s) => rusqlite::types::Value::Text(s.clone()),
            SqlValue::Blob(v) => rusqlite::types::Value::Blob(v.clone()),
        })
        .collect();
    let n = st.column_count();
    let mut rows = st
        .query(rusqlite::params_from_iter(params))
        .map_err(|_| ())?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(|_| ())? {
        out.push(
            (0..n)
                .map(|i| match r.get_ref(i).unwrap() {
                    ValueRef::Null => SqlValue::Null,
                    ValueRef::Integer(i) => SqlValue::Integer(i),
                    ValueRef::Real(x) => SqlValue::Real(x),
                    ValueRef::Text(t) => SqlValue::Text(String::from_utf8_lossy(t).into_owned()),
                    ValueRef::Blob(b) => SqlValue::Blob(b.to_vec()),
                })
                .collect(),
        );
    }
    Ok(out)
}

struct Pair {
    store: std::sync::Arc<cinder_storage::Store>,
    engine: Option<SqlStorage>,
    reference: rusqlite::Connection,
}

impl Pair {
    fn engine(&self) -> &SqlStorage {
        self.engine.as_ref().unwrap()
    }

    fn reopen(&mut self) {
        common::commit(self.engine());
        self.engine = None;
        self.engine = Some(
            SqlStorage::open(
                self.store.object(common::id(1)),
                SqlConfig {
                    cache_kib: 16,
                    ..SqlConfig::default()
                },
            )
            .unwrap(),
        );
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Turn => common::commit(self.engine()),
            Op::Reopen => self.reopen(),
            Op::Txn { ops, commit } => {
                self.reference.execute_batch("SAVEPOINT ref").unwrap();
                let engine = self.engine.take().unwrap();
                let r: Result<(), SqlError> = engine.transaction_sync(|| {
                    for o in ops {
                        if let Some((sql, b)) = sql_of(o) {
                            let got = engine
                                .exec(&sql, &b)
                                .and_then(|mut c| c.raw().collect::<Result<Vec<_>, _>>())
                                .map_err(|_| ());
                            let want = reference_run(&self.reference, &sql, &b);
                            assert_eq!(got, want, "in transaction: {sql}");
                        }
                    }
                    if *commit {
                        Ok(())
                    } else {
                        Err(SqlError::Api("rolled back by the test"))
                    }
                });
                self.engine = Some(engine);
                if *commit {
                    r.unwrap();
                    self.reference.execute_batch("RELEASE ref").unwrap();
                } else {
                    prop_assert!(r.is_err());
                    self.reference
                        .execute_batch("ROLLBACK TO ref; RELEASE ref")
                        .unwrap();
                }
            }
            _ => {
                let (sql, b) = sql_of(op).unwrap();
                let got = self
                    .engine()
                    .exec(&sql, &b)
                    .and_then(|mut c| c.raw().collect::<Result<Vec<_>, _>>())
                    .map_err(|_| ());
                let want = reference_run(&self.reference, &sql, &b);
                prop_assert_eq!(got, want, "{}", sql);
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_plain_sqlite(ops in prop::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let store = common::store(dir.path(), Durability::Process);
        let engine = SqlStorage::open(store.object(common::id(1)), SqlConfig { cache_kib: 16, ..SqlConfig::default() }).unwrap();
        let reference = rusqlite::Connection::open_in_memory().unwrap();
        reference.execute_batch("PRAGMA foreign_keys = ON").unwrap();
        let mut pair = Pair { store, engine: Some(engine), reference };
        for op in &ops {
            pair.apply(op)?;
        }
        // Everything, one last time, after a reopen from fjall.
        pair.reopen();
        for t in 0..3u8 {
            pair.apply(&Op::Select { t })?;
            pair.apply(&Op::Aggregate { t })?;
        }
        let ok = pair.engine().integrity_check().unwrap();
        prop_assert_eq!(ok, "ok");
    }
}
