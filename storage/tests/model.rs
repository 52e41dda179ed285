//! Property test: the storage API against an in-memory BTreeMap model, through real fjall on
//! disk, across flushes, reopens, transactions and rollbacks.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use cinder_storage::{
    ErrorKind, ListOptions, ObjectId, ObjectStorage, ReadOptions, Section, Store, StoreConfig,
    WriteOptions,
};
use proptest::prelude::*;

const IDS: [ObjectId; 2] = [[7; 32], {
    let mut id = [7; 32];
    id[31] = 8;
    id
}];

#[derive(Debug, Clone)]
enum Op {
    Put(usize, String, u8),
    PutNoCache(usize, String, u8),
    PutMany(usize, Vec<(String, u8)>),
    Delete(usize, String),
    DeleteMany(usize, Vec<String>),
    Get(usize, String),
    GetMany(usize, Vec<String>),
    List(usize, ListOptions),
    DeleteAll(usize),
    SetAlarm(usize, i64),
    DeleteAlarm(usize),
    RawPut(usize, String, u8),
    Txn(usize, Vec<TxOp>, bool),
    TooBig(usize, u8),
    Flush,
    /// Flush, then read the object while the committer may still be writing the batch (the
    /// handle reads its in-flight layers), through the blocking and the prepared paths.
    FlushThenRead(usize, ListOptions, String),
    Reopen,
}

#[derive(Debug, Clone)]
enum TxOp {
    Put(String, u8),
    Delete(String),
    Get(String),
    List(ListOptions),
}

fn key() -> impl Strategy<Value = String> {
    // A small alphabet so keys collide; "é" and "\u{7f}" exercise UTF-8 byte order.
    proptest::string::string_regex("[ab\u{e9}\u{7f}]{0,3}").unwrap()
}

fn list_opts() -> impl Strategy<Value = ListOptions> {
    (
        proptest::option::of(key()),
        proptest::option::of(key()),
        proptest::option::of(key()),
        proptest::option::of(key()),
        any::<bool>(),
        proptest::option::of(1usize..5),
        any::<bool>(),
    )
        .prop_map(
            |(start, start_after, end, prefix, reverse, limit, no_cache)| {
                // Both start and start_after is an error; tested separately.
                let start_after = if start.is_some() { None } else { start_after };
                ListOptions {
                    start,
                    start_after,
                    end,
                    prefix,
                    reverse,
                    limit,
                    no_cache,
                }
            },
        )
}

fn tx_op() -> impl Strategy<Value = TxOp> {
    prop_oneof![
        (key(), any::<u8>()).prop_map(|(k, v)| TxOp::Put(k, v)),
        key().prop_map(TxOp::Delete),
        key().prop_map(TxOp::Get),
        list_opts().prop_map(TxOp::List),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let o = 0usize..2;
    prop_oneof![
        6 => (o.clone(), key(), any::<u8>()).prop_map(|(o, k, v)| Op::Put(o, k, v)),
        2 => (o.clone(), key(), any::<u8>()).prop_map(|(o, k, v)| Op::PutNoCache(o, k, v)),
        2 => (o.clone(), prop::collection::vec((key(), any::<u8>()), 0..4)).prop_map(|(o, e)| Op::PutMany(o, e)),
        3 => (o.clone(), key()).prop_map(|(o, k)| Op::Delete(o, k)),
        1 => (o.clone(), prop::collection::vec(key(), 0..4)).prop_map(|(o, k)| Op::DeleteMany(o, k)),
        2 => (o.clone(), key()).prop_map(|(o, k)| Op::Get(o, k)),
        1 => (o.clone(), prop::collection::vec(key(), 0..4)).prop_map(|(o, k)| Op::GetMany(o, k)),
        5 => (o.clone(), list_opts()).prop_map(|(o, l)| Op::List(o, l)),
        1 => o.clone().prop_map(Op::DeleteAll),
        1 => (o.clone(), 1i64..1000).prop_map(|(o, t)| Op::SetAlarm(o, t)),
        1 => o.clone().prop_map(Op::DeleteAlarm),
        1 => (o.clone(), key(), any::<u8>()).prop_map(|(o, k, v)| Op::RawPut(o, k, v)),
        2 => (o.clone(), prop::collection::vec(tx_op(), 0..6), any::<bool>()).prop_map(|(o, t, r)| Op::Txn(o, t, r)),
        1 => (o.clone(), 0u8..3).prop_map(|(o, w)| Op::TooBig(o, w)),
        3 => Just(Op::Flush),
        2 => (o.clone(), list_opts(), key()).prop_map(|(o, l, k)| Op::FlushThenRead(o, l, k)),
        1 => Just(Op::Reopen),
    ]
}

type Kv = BTreeMap<String, Bytes>;

#[derive(Clone, Default, Debug, PartialEq)]
struct ObjModel {
    kv: Kv,
    sql: Kv,
    alarm: Option<i64>,
}

fn model_list(kv: &Kv, o: &ListOptions) -> Vec<(String, Bytes)> {
    let mut v: Vec<(String, Bytes)> = kv
        .iter()
        .filter(|(k, _)| o.start.as_ref().is_none_or(|s| k.as_str() >= s.as_str()))
        .filter(|(k, _)| {
            o.start_after
                .as_ref()
                .is_none_or(|s| k.as_str() > s.as_str())
        })
        .filter(|(k, _)| o.end.as_ref().is_none_or(|e| k.as_str() < e.as_str()))
        .filter(|(k, _)| o.prefix.as_ref().is_none_or(|p| k.starts_with(p.as_str())))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if o.reverse {
        v.reverse();
    }
    if let Some(l) = o.limit {
        v.truncate(l);
    }
    v
}

fn val(v: u8) -> Bytes {
    Bytes::from(vec![v; 1 + v as usize % 5])
}

struct Harness {
    dir: tempfile::TempDir,
    store: Option<Arc<Store>>,
    objs: Vec<ObjectStorage>,
    /// State as the objects see it (flushed + this turn).
    current: Vec<ObjModel>,
    /// State as of the last flush.
    flushed: Vec<ObjModel>,
}

impl Harness {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut h = Harness {
            dir,
            store: None,
            objs: Vec::new(),
            current: vec![ObjModel::default(); 2],
            flushed: vec![ObjModel::default(); 2],
        };
        h.open();
        h
    }

    fn open(&mut self) {
        self.objs.clear();
        self.store = None;
        let cfg = StoreConfig {
            cache_bytes: 4096,
            ..StoreConfig::default()
        };
        let store = Store::open(self.dir.path(), cfg).unwrap();
        self.objs = IDS.iter().map(|id| store.object(*id)).collect();
        self.store = Some(store);
    }

    fn flush(&mut self) {
        for o in &self.objs {
            if let Some(c) = o.flush() {
                c.wait().unwrap();
            }
            assert!(!o.has_pending());
        }
        self.flushed = self.current.clone();
    }

    fn check_all(&self) {
        for (i, o) in self.objs.iter().enumerate() {
            let all = o.list(&ListOptions::default()).unwrap();
            let want: Vec<_> = self.current[i].kv.clone().into_iter().collect();
            assert_eq!(all, want, "object {i} full list");
            let sql = o.raw_range(Section::Sql, b"", None).unwrap();
            let want: Vec<_> = self.current[i]
                .sql
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.clone()))
                .collect();
            assert_eq!(sql, want, "object {i} sql section");
            assert_eq!(o.get_alarm().unwrap(), self.current[i].alarm);
        }
        // A fresh handle has no turn: it reads the committed state, through the shared cache,
        // which must never answer with a value older than the last flush.
        let store = self.store.as_ref().unwrap();
        for (i, id) in IDS.iter().enumerate() {
            let fresh = store.object(*id);
            let probes = self.flushed[i]
                .kv
                .keys()
                .chain(self.current[i].kv.keys())
                .cloned()
                .chain(["a".to_string(), "b".to_string(), String::new()]);
            for k in probes {
                assert_eq!(
                    fresh.get(&k).unwrap(),
                    self.flushed[i].kv.get(&k).cloned(),
                    "committed {k:?}"
                );
            }
        }
        let mut alarms: Vec<(ObjectId, i64)> = (0..2)
            .filter_map(|i| self.flushed[i].alarm.map(|a| (IDS[i], a)))
            .collect();
        alarms.sort_by_key(|&(id, at)| (at, id));
        assert_eq!(self.store.as_ref().unwrap().alarms().unwrap(), alarms);
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Put(i, k, v) => {
                self.objs[i].put(&k, val(v)).unwrap();
                self.current[i].kv.insert(k, val(v));
            }
            Op::PutNoCache(i, k, v) => {
                self.objs[i]
                    .put_with(&k, val(v), WriteOptions { no_cache: true })
                    .unwrap();
                self.current[i].kv.insert(k, val(v));
            }
            Op::PutMany(i, e) => {
                self.objs[i]
                    .put_many(e.iter().map(|(k, v)| (k.clone(), val(*v))).collect())
                    .unwrap();
                for (k, v) in e {
                    self.current[i].kv.insert(k, val(v));
                }
            }
            Op::Delete(i, k) => {
                let existed = self.objs[i].delete(&k).unwrap();
                assert_eq!(existed, self.current[i].kv.remove(&k).is_some());
            }
            Op::DeleteMany(i, ks) => {
                let n = self.objs[i].delete_many(&ks).unwrap();
                let mut want = 0;
                for k in &ks {
                    if self.current[i].kv.remove(k).is_some() {
                        want += 1;
                    }
                }
                assert_eq!(n, want);
            }
            Op::Get(i, k) => {
                let want = self.current[i].kv.get(&k).cloned();
                assert_eq!(self.objs[i].get(&k).unwrap(), want);
                let prepared = self.objs[i].get_prepared(&k, ReadOptions::default());
                assert_eq!(prepared.run_here().unwrap(), want);
            }
            Op::GetMany(i, ks) => {
                let got = self.objs[i].get_many(&ks).unwrap();
                let want: Kv = ks
                    .iter()
                    .filter_map(|k| self.current[i].kv.get(k).map(|v| (k.clone(), v.clone())))
                    .collect();
                let want: Vec<_> = want.into_iter().collect();
                assert_eq!(got, want);
                let prepared = self.objs[i].get_many_prepared(&ks, ReadOptions::default());
                assert_eq!(prepared.run_here().unwrap(), want);
            }
            Op::List(i, l) => {
                let want = model_list(&self.current[i].kv, &l);
                assert_eq!(self.objs[i].list(&l).unwrap(), want, "{l:?}");
                let prepared = self.objs[i].list_prepared(&l).run_here().unwrap();
                assert_eq!(prepared, want, "prepared {l:?}");
            }
            Op::FlushThenRead(i, l, k) => {
                let commits: Vec<_> = self.objs.iter().filter_map(|o| o.flush()).collect();
                let o = &self.objs[i];
                let want = model_list(&self.current[i].kv, &l);
                let cold = o.list_prepared(&l);
                let point = o.get_prepared(&k, ReadOptions::default());
                assert_eq!(o.list(&l).unwrap(), want, "in flight {l:?}");
                assert_eq!(o.get(&k).unwrap(), self.current[i].kv.get(&k).cloned());
                assert_eq!(o.get_alarm().unwrap(), self.current[i].alarm);
                // Run after the batch may have landed: still the state it was prepared in.
                for c in commits {
                    c.wait().unwrap();
                }
                assert_eq!(cold.run_here().unwrap(), want, "prepared in flight {l:?}");
                assert_eq!(
                    point.run_here().unwrap(),
                    self.current[i].kv.get(&k).cloned()
                );
                self.flushed = self.current.clone();
            }
            Op::DeleteAll(i) => {
                self.objs[i].delete_all().unwrap();
                self.current[i].kv.clear();
            }
            Op::SetAlarm(i, t) => {
                self.objs[i].set_alarm(t).unwrap();
                self.current[i].alarm = Some(t);
            }
            Op::DeleteAlarm(i) => {
                self.objs[i].delete_alarm().unwrap();
                self.current[i].alarm = None;
            }
            Op::RawPut(i, k, v) => {
                self.objs[i].raw_put(Section::Sql, k.as_bytes(), val(v));
                self.current[i].sql.insert(k, val(v));
            }
            Op::Txn(i, ops, rollback) => {
                let mut m = self.current[i].kv.clone();
                let tx = self.objs[i].transaction();
                for op in ops {
                    match op {
                        TxOp::Put(k, v) => {
                            tx.put(&k, val(v)).unwrap();
                            m.insert(k, val(v));
                        }
                        TxOp::Delete(k) => {
                            assert_eq!(tx.delete(&k).unwrap(), m.remove(&k).is_some());
                        }
                        TxOp::Get(k) => assert_eq!(tx.get(&k).unwrap(), m.get(&k).cloned()),
                        TxOp::List(l) => assert_eq!(tx.list(&l).unwrap(), model_list(&m, &l)),
                    }
                }
                // The turn does not see the transaction's writes before commit.
                let outside = self.objs[i].list(&ListOptions::default()).unwrap();
                assert_eq!(
                    outside,
                    self.current[i].kv.clone().into_iter().collect::<Vec<_>>()
                );
                if rollback {
                    tx.rollback();
                    assert_eq!(tx.get("a").unwrap_err().kind(), ErrorKind::Error);
                    tx.commit();
                } else {
                    tx.commit();
                    self.current[i].kv = m;
                }
            }
            Op::TooBig(i, which) => {
                let o = &self.objs[i];
                let err = match which {
                    0 => o.put(&"k".repeat(2049), val(1)).unwrap_err(),
                    1 => o
                        .put(
                            "a",
                            Bytes::from(vec![0; cinder_storage::ENFORCED_MAX_VALUE_BYTES + 1]),
                        )
                        .unwrap_err(),
                    _ => o
                        .put_many((0..129).map(|n| (format!("k{n}"), val(1))).collect())
                        .unwrap_err(),
                };
                assert_eq!(err.kind(), ErrorKind::RangeError);
            }
            Op::Flush => self.flush(),
            Op::Reopen => {
                // Unflushed writes die with the process; flushed ones survive.
                self.open();
                self.current = self.flushed.clone();
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn storage_matches_model(ops in prop::collection::vec(op(), 1..40)) {
        let mut h = Harness::new();
        for op in ops {
            h.apply(op);
            h.check_all();
        }
        h.flush();
        h.open();
        h.check_all();
    }
}
