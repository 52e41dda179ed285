//! KV semantics through the real engine: a fjall store in a temp dir, a real core runtime and
//! the internal shard objects. Time is a [`ManualClock`], so expirations and cache TTLs are
//! crossed by moving it, never by sleeping.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cinder_core::{Runtime, RuntimeConfig};
use cinder_kv::{
    CacheStatus, ErrorKind, GetOptions, Kv, KvConfig, KvError, ListOptions, ManualClock,
    OperationBudget, PutOptions,
};
use cinder_storage::{Store, StoreConfig};

struct Node {
    _dir: Option<tempfile::TempDir>,
    store: Arc<Store>,
    rt: Runtime,
    kv: Kv,
    clock: Arc<ManualClock>,
}

fn config(clock: &Arc<ManualClock>, shards: u32) -> KvConfig {
    KvConfig {
        shards,
        clock: clock.clone(),
        ..KvConfig::default()
    }
}

fn start_in(
    dir: &std::path::Path,
    clock: Arc<ManualClock>,
    shards: u32,
) -> (Arc<Store>, Runtime, Kv) {
    let store = Store::open(dir, StoreConfig::default()).unwrap();
    let kv = Kv::new(config(&clock, shards));
    let rt = Runtime::start(
        store.clone(),
        RuntimeConfig {
            threads: 2,
            ..RuntimeConfig::default()
        },
        kv.namespaces(),
    )
    .unwrap();
    kv.attach(&rt).unwrap();
    (store, rt, kv)
}

fn node(shards: u32) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(cinder_core::now_ms());
    let (store, rt, kv) = start_in(dir.path(), clock.clone(), shards);
    Node {
        _dir: Some(dir),
        store,
        rt,
        kv,
        clock,
    }
}

async fn stop(rt: Runtime) {
    tokio::task::spawn_blocking(move || rt.shutdown())
        .await
        .unwrap();
}

fn now_s(clock: &ManualClock) -> i64 {
    use cinder_kv::Clock;
    clock.now_ms() / 1000
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

#[tokio::test(flavor = "multi_thread")]
async fn put_get_delete_with_metadata_and_expiration() {
    let n = node(4);
    let ns = n.kv.namespace("ns1");
    let opts = PutOptions {
        expiration_ttl: Some(3600),
        metadata: Some(r#"{"owner":"ada"}"#.into()),
        ..Default::default()
    };
    ns.put("greeting", b("hello"), &opts).await.unwrap();
    let got = ns.get("greeting", &GetOptions::default()).await.unwrap();
    let e = got.entry.unwrap();
    assert_eq!(e.value, b("hello"));
    assert_eq!(e.metadata.as_deref(), Some(r#"{"owner":"ada"}"#));
    assert_eq!(e.expiration, Some(now_s(&n.clock) + 3600));
    // Written through this node: answered by its cache.
    assert_eq!(got.cache_status, CacheStatus::Hit);

    // Another namespace with the same key is separate.
    let other = n.kv.namespace("ns2");
    assert!(other
        .get("greeting", &GetOptions::default())
        .await
        .unwrap()
        .entry
        .is_none());

    ns.delete("greeting").await.unwrap();
    assert!(ns
        .get("greeting", &GetOptions::default())
        .await
        .unwrap()
        .entry
        .is_none());
    // Deleting an absent key is fine.
    ns.delete("greeting").await.unwrap();
    assert_eq!(ns.stored_keys().await.unwrap(), 0);
    stop(n.rt).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn large_values_stream_in_and_are_replaced_whole() {
    let n = node(2);
    let ns = n.kv.namespace("big");
    // 3 MiB + 17 bytes in 64 KiB pieces, as a ReadableStream would deliver it.
    let total = 3 * 1024 * 1024 + 17;
    let data: Vec<u8> = (0..total).map(|i| (i * 31 % 251) as u8).collect();
    let data = Bytes::from(data);
    let pieces: Vec<Result<Bytes, std::io::Error>> = data
        .chunks(64 * 1024)
        .map(|c| Ok(data.slice_ref(c)))
        .collect();
    ns.put_stream(
        "blob",
        futures::stream::iter(pieces),
        &PutOptions::default(),
    )
    .await
    .unwrap();
    // A second node (empty cache) reads it from the shard.
    let node_b = Kv::new(config(&n.clock, 2));
    node_b.attach(&n.rt).unwrap();
    let got = node_b
        .namespace("big")
        .get("blob", &GetOptions::default())
        .await
        .unwrap();
    assert_eq!(got.cache_status, CacheStatus::Miss);
    assert_eq!(got.entry.unwrap().value, data);
    // 1 record + 25 chunks of 128 KiB.
    assert_eq!(ns.stored_keys().await.unwrap(), 1 + 25);
    // Exactly the limit is accepted and read back whole.
    let max = Bytes::from(vec![0x5a; cinder_kv::limits::MAX_VALUE_BYTES]);
    ns.put("max", max.clone(), &PutOptions::default())
        .await
        .unwrap();
    let got = node_b
        .namespace("big")
        .get("max", &GetOptions::default())
        .await
        .unwrap();
    assert_eq!(got.entry.unwrap().value, max);
    ns.delete("max").await.unwrap();
    ns.put("blob", b("small now"), &PutOptions::default())
        .await
        .unwrap();
    assert_eq!(
        ns.stored_keys().await.unwrap(),
        1,
        "old chunks removed with the overwrite"
    );
    stop(n.rt).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_and_error_texts_match_cloudflare() {
    let n = node(2);
    let ns = n.kv.namespace("limits");
    let none = PutOptions::default();
    let err = |r: Result<(), KvError>| r.unwrap_err();

    let e = err(ns.put("", b("v"), &none).await);
    assert_eq!(
        (e.to_string().as_str(), e.kind()),
        ("Key name cannot be empty.", ErrorKind::TypeError)
    );
    assert_eq!(
        err(ns.put(".", b("v"), &none).await).to_string(),
        "\".\" is not allowed as a key name."
    );
    assert_eq!(
        err(ns.delete("..").await).to_string(),
        "\"..\" is not allowed as a key name."
    );
    let long = "é".repeat(257);
    let e = ns.get(&long, &GetOptions::default()).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "KV GET failed: 414 UTF-8 encoded length of 514 exceeds key length limit of 512."
    );
    assert_eq!(e.kind(), ErrorKind::Error);
    // 512 bytes exactly is fine.
    ns.put(&"k".repeat(512), b("v"), &none).await.unwrap();

    let ttl = |t| PutOptions {
        expiration_ttl: Some(t),
        ..Default::default()
    };
    assert_eq!(
        err(ns.put("k", b("v"), &ttl(59)).await).to_string(),
        "KV PUT failed: 400 Invalid expiration_ttl of 59. Expiration TTL must be at least 60."
    );
    assert_eq!(
        err(ns.put("k", b("v"), &ttl(0)).await).to_string(),
        "KV PUT failed: 400 Invalid expiration_ttl of 0. Please specify integer greater than 0."
    );
    let now = now_s(&n.clock);
    let at = |t| PutOptions {
        expiration: Some(t),
        ..Default::default()
    };
    assert_eq!(
        err(ns.put("k", b("v"), &at(now)).await).to_string(),
        format!("KV PUT failed: 400 Invalid expiration of {now}. Please specify integer greater than the current number of seconds since the UNIX epoch.")
    );
    assert_eq!(
        err(ns.put("k", b("v"), &at(now + 59)).await).to_string(),
        format!("KV PUT failed: 400 Invalid expiration of {}. Expiration times must be at least 60 seconds in the future.", now + 59)
    );
    ns.put("k", b("v"), &at(now + 60)).await.unwrap();

    let meta = PutOptions {
        metadata: Some(format!("\"{}\"", "m".repeat(1023))),
        ..Default::default()
    };
    assert_eq!(
        err(ns.put("k", b("v"), &meta).await).to_string(),
        "KV PUT failed: 413 Metadata length of 1025 exceeds limit of 1024."
    );

    let e = ns
        .get(
            "k",
            &GetOptions {
                cache_ttl: Some(29),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "KV GET failed: 400 Invalid cache_ttl of 29. Cache TTL must be at least 30."
    );
    ns.get(
        "k",
        &GetOptions {
            cache_ttl: Some(30),
        },
    )
    .await
    .unwrap();

    let e = ns
        .list(&ListOptions {
            limit: Some(1001),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "KV GET failed: 400 Invalid key_count_limit of 1001. Please specify an integer less than 1000.");
    let e = ns
        .list(&ListOptions {
            cursor: Some("zz".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("KV GET failed: 400 Invalid cursor"),
        "{e}"
    );

    // Texts the binding raises for bulk gets it checks itself.
    assert_eq!(
        cinder_kv::limits::bulk_type_error("arrayBuffer").to_string(),
        "KV GET_BULK failed: 400 \"arrayBuffer\" is not a valid type. Use \"json\" or \"text\""
    );

    // 25 MiB + 1 from a stream: rejected with the full length, nothing stored.
    let mib = Bytes::from(vec![7u8; 1 << 20]);
    let mut pieces: Vec<Result<Bytes, std::io::Error>> = (0..25).map(|_| Ok(mib.clone())).collect();
    pieces.push(Ok(b("x")));
    let e = ns
        .put_stream("huge", futures::stream::iter(pieces), &none)
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "KV PUT failed: 413 Value length of 26214401 exceeds limit of 26214400."
    );
    assert!(ns
        .get("huge", &GetOptions::default())
        .await
        .unwrap()
        .entry
        .is_none());
    stop(n.rt).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bulk_get_answers_in_request_order() {
    let n = node(4);
    let ns = n.kv.namespace("bulk");
    for i in 0..10 {
        ns.put(
            &format!("key{i}"),
            b(&format!("v{i}")),
            &PutOptions::default(),
        )
        .await
        .unwrap();
    }
    let keys: Vec<String> = ["key3", "missing", "key0", "key9", "key3"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let got = ns.get_many(&keys, &GetOptions::default()).await.unwrap();
    let values: Vec<(String, Option<Bytes>)> = got
        .into_iter()
        .map(|(k, e)| (k, e.map(|e| e.value)))
        .collect();
    assert_eq!(
        values,
        vec![
            ("key3".into(), Some(b("v3"))),
            ("missing".into(), None),
            ("key0".into(), Some(b("v0"))),
            ("key9".into(), Some(b("v9"))),
            ("key3".into(), Some(b("v3"))),
        ]
    );
    let many: Vec<String> = (0..101).map(|i| format!("k{i}")).collect();
    assert_eq!(
        ns.get_many(&many, &GetOptions::default())
            .await
            .unwrap_err()
            .to_string(),
        "KV GET_BULK failed: 400 You can request a maximum of 100 keys"
    );
    assert_eq!(
        ns.get_many(&[], &GetOptions::default())
            .await
            .unwrap_err()
            .to_string(),
        "KV GET_BULK failed: 400 You must request a minimum of 1 key"
    );
    assert_eq!(
        ns.get_many(&["".into()], &GetOptions::default())
            .await
            .unwrap_err()
            .to_string(),
        "KV GET_BULK failed: 400 Key names must not be empty"
    );
    assert_eq!(
        ns.get_many(&many[..100], &GetOptions::default())
            .await
            .unwrap()
            .len(),
        100
    );
    stop(n.rt).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn list_is_utf8_ordered_across_shards_with_cursors() {
    let n = node(8);
    let ns = n.kv.namespace("list");
    let mut names: Vec<String> = Vec::new();
    for i in 0..1300 {
        // Mixed scripts: byte order differs from UTF-16 order for some of these.
        let name = match i % 5 {
            0 => format!("a/{i:04}"),
            1 => format!("é/{i:04}"),
            2 => format!("\u{FF61}/{i:04}"),
            3 => format!("\u{1F600}/{i:04}"),
            _ => format!("Z/{i:04}"),
        };
        names.push(name);
    }
    let puts = names.iter().enumerate().map(|(i, k)| {
        let ns = ns.clone();
        let opts = PutOptions {
            metadata: (i % 100 == 0).then(|| format!("{{\"i\":{i}}}")),
            ..Default::default()
        };
        async move { ns.put(k, b("v"), &opts).await }
    });
    for r in futures::future::join_all(puts).await {
        r.unwrap();
    }
    let mut sorted = names.clone();
    sorted.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));

    for limit in [1000i64, 7] {
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = ns
                .list(&ListOptions {
                    limit: Some(limit),
                    cursor: cursor.clone(),
                    ..Default::default()
                })
                .await
                .unwrap();
            assert!(page.keys.len() <= limit as usize);
            seen.extend(page.keys.iter().map(|k| k.name.clone()));
            if page.list_complete {
                assert!(page.cursor.is_none());
                break;
            }
            cursor = Some(page.cursor.expect("incomplete page has a cursor"));
        }
        assert_eq!(seen, sorted, "limit {limit}");
    }
    // Default page size is 1,000; metadata travels with the keys.
    let first = ns.list(&ListOptions::default()).await.unwrap();
    assert_eq!(first.keys.len(), 1000);
    assert!(!first.list_complete);
    let k0 = first.keys.iter().find(|k| k.name == "a/0000").unwrap();
    assert_eq!(k0.metadata.as_deref(), Some("{\"i\":0}"));
    // Prefix.
    let page = ns
        .list(&ListOptions {
            prefix: Some("é/".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(page.list_complete);
    assert_eq!(page.keys.len(), 260);
    assert!(page.keys.iter().all(|k| k.name.starts_with("é/")));
    stop(n.rt).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_page_may_be_empty_yet_incomplete_when_keys_expired() {
    let n = node(1);
    let ns = n.kv.namespace("tomb");
    let ttl = PutOptions {
        expiration_ttl: Some(60),
        ..Default::default()
    };
    for k in ["a1", "a2", "a3", "a4"] {
        ns.put(k, b("x"), &ttl).await.unwrap();
    }
    for k in ["b1", "b2"] {
        ns.put(k, b("y"), &PutOptions::default()).await.unwrap();
    }
    n.clock.advance_ms(60_000);
    let mut pages = Vec::new();
    let mut cursor = None;
    loop {
        let page = ns
            .list(&ListOptions {
                limit: Some(2),
                cursor: cursor.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        let names: Vec<String> = page.keys.into_iter().map(|k| k.name).collect();
        pages.push((names, page.list_complete));
        if page.list_complete {
            break;
        }
        cursor = page.cursor;
    }
    assert_eq!(
        pages,
        vec![
            (vec![], false),
            (vec![], false),
            (vec!["b1".to_string(), "b2".to_string()], true),
        ]
    );
    stop(n.rt).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_keys_vanish_then_the_sweep_removes_them() {
    let n = node(2);
    let ns = n.kv.namespace("exp");
    let now = now_s(&n.clock);
    ns.put(
        "short",
        b("1"),
        &PutOptions {
            expiration_ttl: Some(60),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    ns.put(
        "long",
        b("2"),
        &PutOptions {
            expiration: Some(now + 600),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    ns.put("forever", b("3"), &PutOptions::default())
        .await
        .unwrap();
    let big = Bytes::from(vec![1u8; 300_000]);
    ns.put(
        "short-big",
        big,
        &PutOptions {
            expiration_ttl: Some(60),
            ..Default::default()
        },
    )
    .await
    .unwrap();

    // The shard's alarm points at its earliest expiration.
    let shard = ns.shard_id("short").unwrap();
    let alarms = n.store.alarms().unwrap();
    let at = alarms
        .iter()
        .find(|(id, _)| id == shard.bytes())
        .map(|(_, at)| *at);
    assert_eq!(at, Some((now + 60) * 1000));

    n.clock.advance_ms(61_000);
    let get = |k: &'static str| {
        let ns = ns.clone();
        async move {
            ns.get(k, &GetOptions::default())
                .await
                .unwrap()
                .entry
                .map(|e| e.value)
        }
    };
    assert_eq!(
        get("short").await,
        None,
        "expired: gone from reads (even from the cache)"
    );
    assert_eq!(get("short-big").await, None);
    assert_eq!(get("long").await, Some(b("2")));
    let names: Vec<String> = ns
        .list(&ListOptions::default())
        .await
        .unwrap()
        .keys
        .into_iter()
        .map(|k| k.name)
        .collect();
    assert_eq!(names, vec!["forever".to_string(), "long".to_string()]);

    // Still stored until the sweep (the alarm handler) runs: records, chunks, index lines.
    let before = ns.stored_keys().await.unwrap();
    // 4 records, 3 expiration index lines, 3 chunks of short-big's 300,000 bytes.
    assert_eq!(before, 4 + 3 + 3);
    ns.sweep_expired().await.unwrap();
    assert_eq!(
        ns.stored_keys().await.unwrap(),
        2 + 1,
        "forever, long and long's index line"
    );
    stop(n.rt).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_alarm_sweeps_expired_keys_in_the_background() {
    // The engine's clock runs 100 s behind the wall clock, so the shard's alarm (set from the
    // engine's expiration, fired by the wall clock) is already due when the key is written; the
    // sweep it runs finds nothing expired yet and looks again shortly. Once the engine's clock
    // passes the expiration, the next alarm removes the key.
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(cinder_core::now_ms() - 100_000);
    let (_store, rt, kv) = start_in(dir.path(), clock.clone(), 1);
    let ns = kv.namespace("bg");
    ns.put(
        "k",
        b("v"),
        &PutOptions {
            expiration_ttl: Some(60),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(ns.stored_keys().await.unwrap(), 2);
    clock.advance_ms(61_000);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if ns.stored_keys().await.unwrap() == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the alarm never removed the expired key"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop(rt).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_are_cached_per_node_for_the_cache_ttl() {
    let n = node(2);
    let a = n.kv.namespace("cc");
    // A second node: its own read cache, the same shard objects.
    let kv_b = Kv::new(config(&n.clock, 2));
    kv_b.attach(&n.rt).unwrap();
    let bns = kv_b.namespace("cc");
    let read = |ns: &cinder_kv::KvNamespace, ttl: Option<i64>| {
        let ns = ns.clone();
        async move {
            let r = ns.get("k", &GetOptions { cache_ttl: ttl }).await.unwrap();
            (r.entry.map(|e| e.value), r.cache_status)
        }
    };
    a.put("k", b("one"), &PutOptions::default()).await.unwrap();
    assert_eq!(read(&bns, None).await, (Some(b("one")), CacheStatus::Miss));
    assert_eq!(read(&bns, None).await, (Some(b("one")), CacheStatus::Hit));

    a.put("k", b("two"), &PutOptions::default()).await.unwrap();
    assert_eq!(
        read(&a, None).await.0,
        Some(b("two")),
        "visible at once where written"
    );
    assert_eq!(
        read(&bns, None).await.0,
        Some(b("one")),
        "stale elsewhere within 60 s"
    );
    n.clock.advance_ms(59_000);
    assert_eq!(read(&bns, None).await.0, Some(b("one")));
    n.clock.advance_ms(1_000);
    assert_eq!(
        read(&bns, Some(300)).await,
        (Some(b("two")), CacheStatus::Miss)
    );

    // That read asked for a 300 s cacheTtl: the entry now lives that long on node B.
    a.delete("k").await.unwrap();
    n.clock.advance_ms(299_000);
    assert_eq!(read(&bns, None).await.0, Some(b("two")));
    n.clock.advance_ms(1_000);
    assert_eq!(read(&bns, None).await.0, None);
    // Absence is cached too; a write through B is visible to B at once.
    bns.put("k", b("three"), &PutOptions::default())
        .await
        .unwrap();
    assert_eq!(read(&bns, None).await.0, Some(b("three")));
    stop(n.rt).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invocation_gets_1000_operations() {
    let n = node(1);
    let budget = OperationBudget::default();
    let ns = n.kv.namespace("budget").with_budget(budget.clone());
    for i in 0..999 {
        ns.get(&format!("k{i}"), &GetOptions::default())
            .await
            .unwrap();
    }
    ns.put("k", b("v"), &PutOptions::default()).await.unwrap();
    assert_eq!(budget.used(), 1000);
    let e = ns.delete("k").await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "Too many API requests by single worker invocation."
    );
    // A new invocation has a fresh budget; the delete above did nothing.
    let fresh =
        n.kv.namespace("budget")
            .with_budget(OperationBudget::default());
    assert!(fresh
        .get("k", &GetOptions::default())
        .await
        .unwrap()
        .entry
        .is_some());
    stop(n.rt).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn entries_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(cinder_core::now_ms());
    let big = Bytes::from(vec![9u8; 200_000]);
    {
        let (_store, rt, kv) = start_in(dir.path(), clock.clone(), 4);
        let ns = kv.namespace("durable");
        ns.put(
            "small",
            b("s"),
            &PutOptions {
                metadata: Some("1".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        ns.put("big", big.clone(), &PutOptions::default())
            .await
            .unwrap();
        stop(rt).await;
    }
    let (_store, rt, kv) = start_in(dir.path(), clock, 4);
    let ns = kv.namespace("durable");
    let s = ns.get("small", &GetOptions::default()).await.unwrap();
    assert_eq!(s.cache_status, CacheStatus::Miss);
    let s = s.entry.unwrap();
    assert_eq!((s.value, s.metadata.as_deref()), (b("s"), Some("1")));
    assert_eq!(
        ns.get("big", &GetOptions::default())
            .await
            .unwrap()
            .entry
            .unwrap()
            .value,
        big
    );
    stop(rt).await;
}
