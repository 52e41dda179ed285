//! The Rust bucket API against a real fjall store and a real actor runtime in a temp dir.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use cinder_core::{Runtime, RuntimeConfig};
use cinder_r2::*;
use cinder_storage::{Store, StoreConfig};
use futures::StreamExt;
use md5::Digest;

struct Node {
    runtime: Runtime,
    r2: R2Service,
    _store: Arc<Store>,
}

async fn start(dir: &Path) -> Node {
    let store = Store::open(&dir.join("store"), StoreConfig::default()).expect("store");
    let engine = R2Engine::open(&dir.join("blobs")).expect("blob dir");
    let cfg = RuntimeConfig {
        threads: 2,
        ..Default::default()
    };
    let runtime = Runtime::start(store.clone(), cfg, engine.namespaces()).expect("runtime");
    let r2 = engine.start(&runtime).await.expect("r2 start");
    Node {
        runtime,
        r2,
        _store: store,
    }
}

async fn stop(node: Node) {
    let rt = node.runtime.clone();
    drop(node.r2);
    tokio::task::spawn_blocking(move || rt.shutdown())
        .await
        .expect("shutdown");
}

fn body(data: &[u8]) -> futures::stream::Iter<std::vec::IntoIter<Result<Bytes, Infallible>>> {
    futures::stream::iter(vec![Ok(Bytes::copy_from_slice(data))])
}

async fn read(mut s: BodyStream) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(b) = s.next().await {
        out.extend_from_slice(&b.expect("body chunk"));
    }
    out
}

async fn get_bytes(b: &Bucket, key: &str, opts: GetOptions) -> Option<(R2Object, Vec<u8>)> {
    match b.get(key, opts).await.expect("get") {
        GetResult::Found(o) => {
            let data = read(o.body).await;
            Some((o.object, data))
        }
        GetResult::NotFound => None,
        GetResult::PreconditionFailed(o) => panic!("unexpected precondition failure on {}", o.key),
    }
}

fn blob_files(dir: &Path) -> usize {
    let mut n = 0;
    for sub in std::fs::read_dir(dir.join("blobs")).expect("blob dir") {
        n += std::fs::read_dir(sub.expect("entry").path())
            .expect("sub dir")
            .count();
    }
    n
}

fn md5_hex(d: &[u8]) -> String {
    hex::encode(md5::Md5::digest(d))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_head_get_round_trip_with_metadata() {
    let dir = tempfile::tempdir().expect("tmp");
    let node = start(dir.path()).await;
    node.r2.ensure_bucket("b").await.expect("bucket");
    let b = node.r2.bucket("b");
    let http = HttpMetadata {
        content_type: Some("text/plain".into()),
        cache_control: Some("max-age=60".into()),
        ..Default::default()
    };
    let put = b
        .put(
            "dir/hello.txt",
            body(b"hello world"),
            PutOptions {
                http_metadata: http.clone(),
                custom_metadata: vec![("z".into(), "1".into()), ("a".into(), "2".into())],
                ..Default::default()
            },
        )
        .await
        .expect("put")
        .expect("stored");
    assert_eq!(put.size, 11);
    assert_eq!(put.etag, md5_hex(b"hello world"));
    assert_eq!(put.http_etag(), format!("\"{}\"", put.etag));
    assert_eq!(put.checksums.md5.as_deref(), Some(put.etag.as_str()));
    assert_eq!(put.version.len(), 32);
    assert_eq!(put.storage_class, StorageClass::Standard);
    let head = b
        .head("dir/hello.txt")
        .await
        .expect("head")
        .expect("exists");
    assert_eq!(head.http_metadata, http);
    assert_eq!(
        head.custom_metadata,
        vec![
            ("z".to_owned(), "1".to_owned()),
            ("a".to_owned(), "2".to_owned())
        ]
    );
    assert_eq!(head.version, put.version);
    assert_eq!(head.uploaded, put.uploaded);
    let (o, data) = get_bytes(&b, "dir/hello.txt", GetOptions::default())
        .await
        .expect("found");
    assert_eq!(data, b"hello world");
    assert_eq!(
        o.range,
        Some(ObjectRange {
            offset: 0,
            length: 11
        })
    );
    assert!(b.head("missing").await.expect("head").is_none());
    assert!(get_bytes(&b, "missing", GetOptions::default())
        .await
        .is_none());
    // An empty object has no blob at all.
    let e = b
        .put("empty", body(b""), PutOptions::default())
        .await
        .expect("put")
        .expect("stored");
    assert_eq!(e.etag, md5_hex(b""));
    let (_, data) = get_bytes(&b, "empty", GetOptions::default())
        .await
        .expect("found");
    assert!(data.is_empty());
    assert_eq!(blob_files(dir.path()), 1);
    stop(node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checksums_are_verified_and_stored() {
    let dir = tempfile::tempdir().expect("tmp");
    let node = start(dir.path()).await;
    node.r2.ensure_bucket("b").await.expect("bucket");
    let b = node.r2.bucket("b");
    let sha = hex::encode(sha2::Sha256::digest(b"value"));
    let o = b
        .put(
            "k",
            body(b"value"),
            PutOptions {
                checksum: Some(Checksum::from_hex(ChecksumAlgorithm::Sha256, &sha).expect("hex")),
                ..Default::default()
            },
        )
        .await
        .expect("put")
        .expect("stored");
    assert_eq!(o.checksums.sha256.as_deref(), Some(sha.as_str()));
    let wrong = "00".repeat(16);
    let err = b
        .put(
            "k2",
            body(b"value"),
            PutOptions {
                checksum: Some(Checksum::from_hex(ChecksumAlgorithm::Md5, &wrong).expect("hex")),
                ..Default::default()
            },
        )
        .await
        .expect_err("bad digest");
    assert_eq!(err.code(), 10037);
    assert!(err
        .binding_message("put")
        .starts_with("put: The MD5 checksum you specified did not match what we received."));
    assert!(b.head("k2").await.expect("head").is_none());
    assert_eq!(blob_files(dir.path()), 1, "the refused body left no file");
    let short = Checksum::from_bytes(ChecksumAlgorithm::Sha1, &[1, 2, 3]).expect_err("length");
    assert_eq!(short.to_string(), "SHA-1 is 20 bytes, not 3");
    stop(node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_and_conditionals() {
    let dir = tempfile::tempdir().expect("tmp");
    let node = start(dir.path()).await;
    node.r2.ensure_bucket("b").await.expect("bucket");
    let b = node.r2.bucket("b");
    let o = b
        .put("k", body(b"0123456789"), PutOptions::default())
        .await
        .expect("put")
        .expect("stored");
    let range = |offset, length, suffix| GetOptions {
        range: RangeRequest::Spec(RangeSpec {
            offset,
            length,
            suffix,
        }),
        ..Default::default()
    };
    let (r, d) = get_bytes(&b, "k", range(Some(2), Some(3), None))
        .await
        .expect("found");
    assert_eq!(d, b"234");
    assert_eq!(
        r.range,
        Some(ObjectRange {
            offset: 2,
            length: 3
        })
    );
    assert_eq!(
        get_bytes(&b, "k", range(None, None, Some(4)))
            .await
            .expect("found")
            .1,
        b"6789"
    );
    assert_eq!(
        get_bytes(&b, "k", range(Some(7), None, None))
            .await
            .expect("found")
            .1,
        b"789"
    );
    let err = b
        .get("k", range(Some(11), None, None))
        .await
        .expect_err("past the end");
    assert_eq!(err.code(), 10039);
    let header = |h: &str| GetOptions {
        range: RangeRequest::Header(h.into()),
        ..Default::default()
    };
    assert_eq!(
        get_bytes(&b, "k", header("bytes=1-2"))
            .await
            .expect("found")
            .1,
        b"12"
    );
    // The binding gives the whole object for an unsatisfiable header range.
    assert_eq!(
        get_bytes(&b, "k", header("bytes=50-"))
            .await
            .expect("found")
            .1,
        b"0123456789"
    );

    let cond = |c: Conditional| GetOptions {
        only_if: Some(c),
        ..Default::default()
    };
    let strong = |e: &str| Some(vec![EtagCondition::Strong(e.to_owned())]);
    assert!(get_bytes(
        &b,
        "k",
        cond(Conditional {
            etag_matches: strong(&o.etag),
            ..Default::default()
        })
    )
    .await
    .is_some());
    match b
        .get(
            "k",
            cond(Conditional {
                etag_matches: strong("nope"),
                ..Default::default()
            }),
        )
        .await
        .expect("get")
    {
        GetResult::PreconditionFailed(p) => assert_eq!(p.etag, o.etag),
        other => panic!("expected a precondition failure, got {other:?}"),
    }
    let after = Conditional {
        uploaded_after: Some(o.uploaded + 1000),
        seconds_granularity: true,
        ..Default::default()
    };
    assert!(matches!(
        b.get("k", cond(after)).await.expect("get"),
        GetResult::PreconditionFailed(_)
    ));
    let before = Conditional {
        uploaded_before: Some(o.uploaded + 2000),
        ..Default::default()
    };
    assert!(get_bytes(&b, "k", cond(before)).await.is_some());

    // Conditional put: If-None-Match: * refuses an existing key and leaves it alone.
    let mut h = http::HeaderMap::new();
    h.insert("if-none-match", http::HeaderValue::from_static("*"));
    let only_if = Conditional::from_headers(&h);
    let refused = b
        .put(
            "k",
            body(b"other"),
            PutOptions {
                only_if: only_if.clone(),
                ..Default::default()
            },
        )
        .await
        .expect("put");
    assert!(refused.is_none());
    assert_eq!(
        get_bytes(&b, "k", GetOptions::default())
            .await
            .expect("found")
            .1,
        b"0123456789"
    );
    assert!(b
        .put(
            "new",
            body(b"x"),
            PutOptions {
                only_if,
                ..Default::default()
            }
        )
        .await
        .expect("put")
        .is_some());
    // HTTP precedence: a matching If-Match wins over a failing If-Unmodified-Since.
    let c = Conditional {
        etag_matches: strong(&o.etag),
        uploaded_before: Some(0),
        seconds_granularity: true,
        ..Default::default()
    };
    assert_eq!(
        c.evaluate(Some((&o.etag, o.uploaded))),
        ConditionOutcome::Pass
    );
    stop(node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_prefix_delimiter_and_cursors() {
    let dir = tempfile::tempdir().expect("tmp");
    let node = start(dir.path()).await;
    node.r2.ensure_bucket("b").await.expect("bucket");
    let b = node.r2.bucket("b");
    let mut keys = Vec::new();
    for i in 0..25 {
        keys.push(format!("flat/{i:02}"));
    }
    for d in ["a", "b", "c"] {
        for i in 0..3 {
            keys.push(format!("tree/{d}/{i}"));
        }
    }
    keys.push("tree/top".into());
    for k in &keys {
        b.put(
            k,
            body(k.as_bytes()),
            PutOptions {
                custom_metadata: vec![("k".into(), k.clone())],
                ..Default::default()
            },
        )
        .await
        .expect("put");
    }
    // Pages of 10 over 25 keys.
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = b
            .list(ListOptions {
                prefix: Some("flat/".into()),
                limit: Some(10),
                cursor: cursor.clone(),
                ..Default::default()
            })
            .await
            .expect("list");
        seen.extend(page.objects.iter().map(|o| o.key.clone()));
        assert!(page.objects.iter().all(|o| o.custom_metadata.is_empty()));
        if !page.truncated {
            assert!(page.cursor.is_none());
            break;
        }
        cursor = page.cursor;
    }
    assert_eq!(seen, keys[..25].to_vec());
    // Delimiter: three prefixes and one key; with limit 2 the cursor resumes after a prefix.
    let all = b
        .list(ListOptions {
            prefix: Some("tree/".into()),
            delimiter: Some("/".into()),
            include_custom_metadata: true,
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(
        all.delimited_prefixes,
        vec!["tree/a/", "tree/b/", "tree/c/"]
    );
    assert_eq!(all.objects.len(), 1);
    assert_eq!(
        all.objects[0].custom_metadata,
        vec![("k".to_owned(), "tree/top".to_owned())]
    );
    let p1 = b
        .list(ListOptions {
            prefix: Some("tree/".into()),
            delimiter: Some("/".into()),
            limit: Some(2),
            ..Default::default()
        })
        .await
        .expect("list");
    assert!(p1.truncated);
    assert_eq!(p1.delimited_prefixes, vec!["tree/a/", "tree/b/"]);
    let p2 = b
        .list(ListOptions {
            prefix: Some("tree/".into()),
            delimiter: Some("/".into()),
            limit: Some(2),
            cursor: p1.cursor,
            ..Default::default()
        })
        .await
        .expect("list");
    assert!(!p2.truncated);
    assert_eq!(p2.delimited_prefixes, vec!["tree/c/"]);
    assert_eq!(
        p2.objects
            .iter()
            .map(|o| o.key.as_str())
            .collect::<Vec<_>>(),
        vec!["tree/top"]
    );
    let sa = b
        .list(ListOptions {
            start_after: Some("flat/22".into()),
            limit: Some(3),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(
        sa.objects
            .iter()
            .map(|o| o.key.as_str())
            .collect::<Vec<_>>(),
        vec!["flat/23", "flat/24", "tree/a/0"]
    );
    for bad in [0, 1001] {
        let e = b
            .list(ListOptions {
                limit: Some(bad),
                ..Default::default()
            })
            .await
            .expect_err("limit");
        assert_eq!(
            e.binding_message("list"),
            "list: MaxKeys params must be positive integer <= 1000. (10022)"
        );
    }
    stop(node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_upload_lifecycle() {
    let dir = tempfile::tempdir().expect("tmp");
    let node = start(dir.path()).await;
    node.r2.ensure_bucket("b").await.expect("bucket");
    let b = node.r2.bucket("b");
    const MIB: usize = 1024 * 1024;
    let p1: Vec<u8> = (0..5 * MIB).map(|i| (i % 251) as u8).collect();
    let p2: Vec<u8> = (0..5 * MIB).map(|i| (i % 241) as u8).collect();
    let p3 = b"tail".to_vec();
    let up = b
        .create_multipart_upload(
            "big",
            MultipartOptions {
                custom_metadata: vec![("m".into(), "v".into())],
                ..Default::default()
            },
        )
        .await
        .expect("create");
    // Out of order, and part 2 uploaded twice (the second replaces the first).
    let u3 = up.upload_part(3, body(&p3), None).await.expect("part 3");
    let _ = up
        .upload_part(2, body(&p1), None)
        .await
        .expect("part 2, first");
    let u2 = up.upload_part(2, body(&p2), None).await.expect("part 2");
    let u1 = up.upload_part(1, body(&p1), None).await.expect("part 1");
    assert_eq!(u1.etag, md5_hex(&p1));
    let parts = up.list_parts(0, 2).await.expect("list parts");
    assert_eq!(
        parts
            .parts
            .iter()
            .map(|p| p.part_number)
            .collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert!(parts.truncated);
    // A wrong etag and a too-small middle part are refused.
    let bad = up
        .complete(vec![
            u1.clone(),
            UploadedPart {
                part_number: 2,
                etag: "0".repeat(32),
            },
            u3.clone(),
        ])
        .await
        .expect_err("wrong etag");
    assert_eq!(bad.code(), 10025);
    let small = up
        .complete(vec![u3.clone(), u1.clone()])
        .await
        .expect_err("small middle");
    assert_eq!(small.code(), 10011);
    let resumed = b.resume_multipart_upload("big", up.upload_id());
    let o = resumed.complete(vec![u1, u2, u3]).await.expect("complete");
    assert_eq!(o.size, (10 * MIB + 4) as u64);
    assert!(o.etag.ends_with("-3"));
    assert_eq!(o.parts, 3);
    let mut whole = p1.clone();
    whole.extend_from_slice(&p2);
    whole.extend_from_slice(&p3);
    let (head, data) = get_bytes(&b, "big", GetOptions::default())
        .await
        .expect("found");
    assert_eq!(head.custom_metadata, vec![("m".to_owned(), "v".to_owned())]);
    assert!(data == whole, "multipart body differs");
    let spanning = GetOptions {
        range: RangeRequest::Spec(RangeSpec {
            offset: Some(5 * MIB as u64 - 3),
            length: Some(6),
            suffix: None,
        }),
        ..Default::default()
    };
    let (_, d) = get_bytes(&b, "big", spanning).await.expect("found");
    assert_eq!(d, whole[5 * MIB - 3..5 * MIB + 3].to_vec());
    // The replaced part 2 blob is gone: three part blobs remain.
    assert_eq!(blob_files(dir.path()), 3);
    // Aborted uploads drop their parts and refuse more.
    let up2 = b
        .create_multipart_upload("gone", MultipartOptions::default())
        .await
        .expect("create");
    up2.upload_part(1, body(b"abc"), None).await.expect("part");
    up2.abort().await.expect("abort");
    up2.abort().await.expect("abort twice is fine");
    let e = up2
        .upload_part(2, body(b"x"), None)
        .await
        .expect_err("aborted");
    assert_eq!(
        e.binding_message("uploadPart"),
        "uploadPart: The specified multipart upload does not exist. (10024)"
    );
    let e = b
        .resume_multipart_upload("big", "nonsense")
        .upload_part(1, body(b"x"), None)
        .await
        .expect_err("bad id");
    assert_eq!(e.code(), 10024);
    assert_eq!(blob_files(dir.path()), 3);
    // Overwriting and deleting free the blobs.
    b.delete(&["big".to_owned()]).await.expect("delete");
    assert_eq!(blob_files(dir.path()), 0);
    stop(node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_buckets() {
    let dir = tempfile::tempdir().expect("tmp");
    let node = start(dir.path()).await;
    let r2 = &node.r2;
    assert_eq!(
        r2.create_bucket("Bad_Name").await.expect_err("name").code(),
        10005
    );
    r2.create_bucket("one").await.expect("create");
    assert!(matches!(
        r2.create_bucket("one").await,
        Err(R2Error::BucketAlreadyExists)
    ));
    r2.ensure_bucket("one").await.expect("ensure is idempotent");
    r2.create_bucket("two").await.expect("create");
    let names: Vec<String> = r2
        .list_buckets()
        .await
        .expect("list")
        .into_iter()
        .map(|b| b.name)
        .collect();
    assert_eq!(names, vec!["one", "two"]);
    let b = r2.bucket("one");
    let long = "k".repeat(1025);
    let e = b
        .put(&long, body(b"x"), PutOptions::default())
        .await
        .expect_err("long key");
    assert_eq!(
        e.binding_message("put"),
        "put: The specified object name is not valid. (10020)"
    );
    b.put(&"k".repeat(1024), body(b"x"), PutOptions::default())
        .await
        .expect("1024-byte key");
    let meta = vec![("m".to_owned(), "v".repeat(8192))];
    let e = b
        .put(
            "m",
            body(b"x"),
            PutOptions {
                custom_metadata: meta,
                ..Default::default()
            },
        )
        .await
        .expect_err("meta");
    assert_eq!(
        e.binding_message("put"),
        "put: Your metadata headers exceed the maximum allowed metadata size. (10012)"
    );
    assert!(matches!(
        r2.delete_bucket("one").await,
        Err(R2Error::BucketNotEmpty)
    ));
    b.delete(&["k".repeat(1024)]).await.expect("delete");
    // An upload in progress does not keep a bucket alive.
    let up = b
        .create_multipart_upload("u", MultipartOptions::default())
        .await
        .expect("create");
    up.upload_part(1, body(b"part"), None).await.expect("part");
    r2.delete_bucket("one").await.expect("delete empty bucket");
    assert_eq!(blob_files(dir.path()), 0);
    assert!(matches!(b.head("x").await, Err(R2Error::NoSuchBucket)));
    assert!(matches!(
        b.put("x", body(b"x"), PutOptions::default()).await,
        Err(R2Error::NoSuchBucket)
    ));
    assert_eq!(blob_files(dir.path()), 0, "a refused put keeps no blob");
    let names: Vec<String> = r2
        .list_buckets()
        .await
        .expect("list")
        .into_iter()
        .map(|b| b.name)
        .collect();
    assert_eq!(names, vec!["two"]);
    stop(node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_keep_deleted_bodies_and_copies_share_them() {
    let dir = tempfile::tempdir().expect("tmp");
    let node = start(dir.path()).await;
    node.r2.ensure_bucket("b").await.expect("bucket");
    node.r2.ensure_bucket("c").await.expect("bucket");
    let b = node.r2.bucket("b");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    b.put("k", body(&data), PutOptions::default())
        .await
        .expect("put");
    let GetResult::Found(reading) = b.get("k", GetOptions::default()).await.expect("get") else {
        panic!("object missing");
    };
    b.delete(&["k".to_owned()])
        .await
        .expect("delete while reading");
    assert_eq!(
        blob_files(dir.path()),
        1,
        "the body outlives its object while read"
    );
    assert!(read(reading.body).await == data);
    assert_eq!(
        blob_files(dir.path()),
        0,
        "and goes once the reader is done"
    );

    b.put(
        "src",
        body(&data),
        PutOptions {
            custom_metadata: vec![("a".into(), "1".into())],
            ..Default::default()
        },
    )
    .await
    .expect("put");
    let c = node.r2.bucket("c");
    let copy = c
        .copy_from(&b, "src", "dst", CopyOptions::default())
        .await
        .expect("copy");
    assert_eq!(copy.custom_metadata, vec![("a".to_owned(), "1".to_owned())]);
    let replaced = c
        .copy_from(
            &b,
            "src",
            "dst2",
            CopyOptions {
                replace_metadata: Some(MultipartOptions::default()),
                ..Default::default()
            },
        )
        .await
        .expect("copy");
    assert!(replaced.custom_metadata.is_empty());
    b.delete(&["src".to_owned()]).await.expect("delete source");
    assert!(
        get_bytes(&c, "dst", GetOptions::default())
            .await
            .expect("copy")
            .1
            == data
    );
    assert!(matches!(
        c.copy_from(&b, "src", "x", CopyOptions::default()).await,
        Err(R2Error::NoSuchKey)
    ));
    stop(node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_objects_and_sweeps_orphans() {
    let dir = tempfile::tempdir().expect("tmp");
    let node = start(dir.path()).await;
    node.r2.ensure_bucket("b").await.expect("bucket");
    let b = node.r2.bucket("b");
    // A large body arrives in many chunks and is never held whole.
    let chunks = (0..64u8).map(|i| Ok::<_, Infallible>(Bytes::from(vec![i; 1 << 20])));
    let o = b
        .put(
            "big",
            futures::stream::iter(chunks),
            PutOptions {
                expected_length: Some(64 << 20),
                ..Default::default()
            },
        )
        .await
        .expect("put")
        .expect("stored");
    b.put("small", body(b"s"), PutOptions::default())
        .await
        .expect("put");
    let up = b
        .create_multipart_upload("mp", MultipartOptions::default())
        .await
        .expect("create");
    up.upload_part(1, body(b"pending part"), None)
        .await
        .expect("part");
    // A short body is refused when the length was announced.
    let e = b
        .put(
            "short",
            body(b"abc"),
            PutOptions {
                expected_length: Some(4),
                ..Default::default()
            },
        )
        .await
        .expect_err("short");
    assert!(matches!(e, R2Error::IncompleteBody));
    stop(node).await;
    // Orphans as a crash would leave them: a body written but never recorded.
    let stray = dir.path().join("blobs/ab/ab000000000000000000000000000001");
    std::fs::write(&stray, b"orphan").expect("stray");
    assert_eq!(blob_files(dir.path()), 4);
    let node = start(dir.path()).await;
    assert!(!stray.exists(), "the orphan was swept at start");
    assert_eq!(
        blob_files(dir.path()),
        3,
        "referenced blobs and upload parts stay"
    );
    let b = node.r2.bucket("b");
    let (got, data) = get_bytes(&b, "big", GetOptions::default())
        .await
        .expect("survived");
    assert_eq!(got.etag, o.etag);
    assert_eq!(md5_hex(&data), o.etag);
    let up = b.resume_multipart_upload("mp", up.upload_id());
    let parts = up.list_parts(0, 10).await.expect("parts");
    assert_eq!(parts.parts.len(), 1);
    stop(node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_while_serving_spares_bodies_in_flight() {
    let dir = tempfile::tempdir().expect("tmp");
    let node = start(dir.path()).await;
    node.r2.ensure_bucket("b").await.expect("bucket");
    let b = node.r2.bucket("b");
    // A put whose body arrives in two halves, with a sweep run between them.
    let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Bytes, Infallible>>();
    let writer = {
        let b = b.clone();
        tokio::spawn(async move { b.put("slow", rx, PutOptions::default()).await })
    };
    let half = vec![7u8; 1 << 20];
    tx.unbounded_send(Ok(Bytes::from(half.clone())))
        .expect("send");
    // Wait (with a deadline) until the body's file exists, i.e. the put is mid-write.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while blob_files(dir.path()) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the put never started writing"
        );
        tokio::task::yield_now().await;
    }
    let report = node.r2.sweep_orphans().await.expect("sweep");
    assert_eq!(report.removed, 0, "a body being written was swept");
    tx.unbounded_send(Ok(Bytes::from(half.clone())))
        .expect("send");
    drop(tx);
    let o = writer.await.expect("join").expect("put").expect("stored");
    assert_eq!(o.size, 2 << 20);
    let (_, data) = get_bytes(&b, "slow", GetOptions::default())
        .await
        .expect("found");
    assert_eq!(data.len(), 2 << 20);
    // With the put done, a sweep finds nothing to remove either.
    assert_eq!(node.r2.sweep_orphans().await.expect("sweep").removed, 0);
    assert_eq!(blob_files(dir.path()), 1);
    stop(node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_uploads_expire() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = Store::open(&dir.path().join("store"), StoreConfig::default()).expect("store");
    let mut engine = R2Engine::open(&dir.path().join("blobs")).expect("blob dir");
    engine.set_upload_ttl(std::time::Duration::from_millis(300));
    let runtime = Runtime::start(store.clone(), RuntimeConfig::default(), engine.namespaces())
        .expect("runtime");
    let r2 = engine.start(&runtime).await.expect("start");
    r2.ensure_bucket("b").await.expect("bucket");
    let b = r2.bucket("b");
    let up = b
        .create_multipart_upload("k", MultipartOptions::default())
        .await
        .expect("create");
    up.upload_part(1, body(b"abandoned"), None)
        .await
        .expect("part");
    assert_eq!(blob_files(dir.path()), 1);
    // The bucket's alarm aborts it; wait for that with a deadline.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while blob_files(dir.path()) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the upload was never expired"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let e = up.list_parts(0, 10).await.expect_err("expired");
    assert_eq!(e.code(), 10024);
    let node = Node {
        runtime,
        r2,
        _store: store,
    };
    stop(node).await;
}
