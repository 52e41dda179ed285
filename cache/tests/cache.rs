//! The Cache API storage on a real directory: freshness by a [`ManualClock`], validators,
//! ranges, `Vary`, what is refused, persistence across reopen.

use std::sync::Arc;

use bytes::Bytes;
use cinder_cache::{
    Cache, CacheConfig, CacheError, CacheStorage, ErrorKind, ManualClock, MatchOptions, PutOutcome,
};
use futures::stream::{self, Stream};
use http::{Request, Response, StatusCode};

const T0: i64 = 1_800_000_000_000;

fn storage(dir: &std::path::Path, clock: &Arc<ManualClock>) -> CacheStorage {
    CacheStorage::open(
        dir,
        CacheConfig {
            clock: clock.clone(),
            ..CacheConfig::default()
        },
    )
    .unwrap()
}

fn setup() -> (tempfile::TempDir, Arc<ManualClock>, Cache) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let cache = storage(dir.path(), &clock).default_cache();
    (dir, clock, cache)
}

type Body = stream::Iter<std::vec::IntoIter<Result<Bytes, std::io::Error>>>;

fn body(data: &[u8]) -> Body {
    let chunks: Vec<Result<Bytes, std::io::Error>> = data
        .chunks(7000)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    stream::iter(chunks)
}

fn resp(status: u16, headers: &[(&str, &str)], data: &[u8]) -> Response<Body> {
    let mut b = Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(body(data)).unwrap()
}

fn get(url: &str, headers: &[(&str, &str)]) -> Request<()> {
    let mut b = Request::builder().uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap()
}

async fn put(
    cache: &Cache,
    req: &Request<()>,
    r: Response<impl Stream<Item = Result<Bytes, std::io::Error>> + Send>,
) -> PutOutcome {
    cache.put(req, r).await.unwrap()
}

async fn fetch(cache: &Cache, req: &Request<()>) -> Option<(StatusCode, http::HeaderMap, Bytes)> {
    let r = cache
        .match_request(req, MatchOptions::default())
        .await
        .unwrap()?;
    let (parts, body) = r.into_parts();
    Some((parts.status, parts.headers, body.bytes().await.unwrap()))
}

#[tokio::test]
async fn put_and_match_stream_a_large_body() {
    let (_d, _c, cache) = setup();
    let data: Vec<u8> = (0..5_000_000u32).map(|i| (i % 253) as u8).collect();
    let req = get("https://example.com/big?x=1", &[]);
    let r = resp(
        200,
        &[
            ("content-type", "application/octet-stream"),
            ("x-a", "1"),
            ("x-a", "2"),
        ],
        &data,
    );
    assert_eq!(put(&cache, &req, r).await, PutOutcome::Stored);
    let m = cache
        .match_request(&req, MatchOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.status(), StatusCode::OK);
    assert_eq!(m.headers()["cf-cache-status"], "HIT");
    assert_eq!(m.headers()["content-length"], "5000000");
    let xa: Vec<_> = m
        .headers()
        .get_all("x-a")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(xa, ["1", "2"]);
    assert_eq!(m.into_body().bytes().await.unwrap(), Bytes::from(data));
    // Another URL (the query is part of the key) misses.
    assert!(fetch(&cache, &get("https://example.com/big?x=2", &[]))
        .await
        .is_none());
}

#[tokio::test]
async fn put_refuses_what_workerd_refuses() {
    let (_d, _c, cache) = setup();
    let post = Request::builder()
        .method("POST")
        .uri("https://e.com/")
        .body(())
        .unwrap();
    let e = cache.put(&post, resp(200, &[], b"x")).await.unwrap_err();
    assert_eq!(
        (e.to_string().as_str(), e.kind()),
        (
            "Cannot cache response to non-GET request.",
            ErrorKind::TypeError
        )
    );
    let req = get("https://e.com/", &[]);
    let e = cache
        .put(&req, resp(206, &[("content-range", "bytes 0-0/2")], b"x"))
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "Cannot cache response to a range request (206 Partial Content)."
    );
    for v in ["*", "accept-encoding, *"] {
        let e = cache
            .put(&req, resp(200, &[("vary", v)], b"x"))
            .await
            .unwrap_err();
        assert!(matches!(e, CacheError::VaryStar));
        assert_eq!(
            e.to_string(),
            "Cannot cache response with 'Vary: *' header."
        );
    }
}

#[tokio::test]
async fn what_cloudflare_does_not_store_is_not_stored() {
    let (_d, _c, cache) = setup();
    let cases: &[(u16, &[(&str, &str)])] = &[
        (200, &[("cache-control", "no-store")]),
        (200, &[("cache-control", "private")]),
        (200, &[("cache-control", "no-cache")]),
        (200, &[("cache-control", "max-age=0")]),
        (200, &[("set-cookie", "session=1")]),
        (304, &[("etag", "\"a\"")]),
        (500, &[]),
        (200, &[("expires", "Thu, 01 Jan 1970 00:00:00 GMT")]),
    ];
    for (i, (status, headers)) in cases.iter().enumerate() {
        let req = get(&format!("https://e.com/{i}"), &[]);
        let out = put(&cache, &req, resp(*status, headers, b"body")).await;
        assert!(matches!(out, PutOutcome::NotStored(_)), "case {i}: {out:?}");
        assert!(fetch(&cache, &req).await.is_none(), "case {i}");
    }
    // private=Set-Cookie: stored, without the cookie.
    let req = get("https://e.com/cookie", &[]);
    let r = resp(
        200,
        &[
            ("set-cookie", "s=1"),
            ("cache-control", "private=Set-Cookie, max-age=60"),
        ],
        b"ok",
    );
    assert_eq!(put(&cache, &req, r).await, PutOutcome::Stored);
    let (_, h, b) = fetch(&cache, &req).await.unwrap();
    assert!(h.get("set-cookie").is_none());
    assert_eq!(b, Bytes::from_static(b"ok"));
    // A 500 with explicit freshness is stored.
    let req = get("https://e.com/err", &[]);
    assert_eq!(
        put(
            &cache,
            &req,
            resp(500, &[("cache-control", "max-age=5")], b"e")
        )
        .await,
        PutOutcome::Stored
    );
    assert_eq!(
        fetch(&cache, &req).await.unwrap().0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
}

#[tokio::test]
async fn freshness_follows_cache_control_expires_and_status_defaults() {
    let (_d, clock, cache) = setup();
    let a = get("https://e.com/a", &[]);
    put(
        &cache,
        &a,
        resp(200, &[("cache-control", "public, max-age=60")], b"a"),
    )
    .await;
    let b = get("https://e.com/b", &[]);
    put(
        &cache,
        &b,
        resp(200, &[("cache-control", "max-age=600, s-maxage=30")], b"b"),
    )
    .await;
    let c = get("https://e.com/c", &[]);
    let date = httpdate_at(T0);
    let expires = httpdate_at(T0 + 120_000);
    put(
        &cache,
        &c,
        resp(200, &[("date", &date), ("expires", &expires)], b"c"),
    )
    .await;
    let d = get("https://e.com/d", &[]);
    put(&cache, &d, resp(404, &[], b"d")).await;
    let e = get("https://e.com/e", &[]);
    put(&cache, &e, resp(200, &[], b"e")).await;

    clock.advance_ms(29_999);
    assert!(fetch(&cache, &b).await.is_some());
    clock.advance_ms(1);
    assert!(
        fetch(&cache, &b).await.is_none(),
        "s-maxage wins over max-age"
    );
    clock.advance_ms(29_999);
    assert!(fetch(&cache, &a).await.is_some());
    clock.advance_ms(1);
    assert!(fetch(&cache, &a).await.is_none());
    clock.advance_ms(60_000);
    assert!(fetch(&cache, &c).await.is_none(), "Expires - Date = 120 s");
    assert!(fetch(&cache, &d).await.is_some());
    clock.advance_ms(60_000); // 180 s: Cloudflare's default TTL of a 404
    assert!(fetch(&cache, &d).await.is_none());
    clock.advance_ms(7_200_000 - 180_000 - 1);
    assert!(
        fetch(&cache, &e).await.is_some(),
        "a 200 without directives: 2 h"
    );
    clock.advance_ms(1);
    assert!(fetch(&cache, &e).await.is_none());
}

fn httpdate_at(ms: i64) -> String {
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64))
}

#[tokio::test]
async fn validators_answer_304() {
    let (_d, _c, cache) = setup();
    let url = "https://e.com/v";
    let lm = httpdate_at(T0 - 3_600_000);
    let r = resp(
        200,
        &[
            ("etag", "\"abc\""),
            ("last-modified", &lm),
            ("cache-control", "max-age=60"),
        ],
        b"payload",
    );
    put(&cache, &get(url, &[]), r).await;
    let status = |h: &[(&str, &str)]| {
        let req = get(url, h);
        let cache = cache.clone();
        async move {
            fetch(&cache, &req)
                .await
                .map(|(s, _, b)| (s.as_u16(), b.len()))
        }
    };
    assert_eq!(
        status(&[("if-none-match", "\"abc\"")]).await,
        Some((304, 0))
    );
    assert_eq!(
        status(&[("if-none-match", "W/\"abc\"")]).await,
        Some((304, 0)),
        "weak comparison"
    );
    assert_eq!(
        status(&[("if-none-match", "\"x\", \"abc\"")]).await,
        Some((304, 0))
    );
    assert_eq!(status(&[("if-none-match", "*")]).await, Some((304, 0)));
    assert_eq!(
        status(&[("if-none-match", "\"other\"")]).await,
        Some((200, 7))
    );
    let later = httpdate_at(T0);
    let earlier = httpdate_at(T0 - 7_200_000);
    assert_eq!(
        status(&[("if-modified-since", &later)]).await,
        Some((304, 0))
    );
    assert_eq!(status(&[("if-modified-since", &lm)]).await, Some((304, 0)));
    assert_eq!(
        status(&[("if-modified-since", &earlier)]).await,
        Some((200, 7))
    );
    // If-None-Match decides when present.
    assert_eq!(
        status(&[
            ("if-none-match", "\"other\""),
            ("if-modified-since", &later)
        ])
        .await,
        Some((200, 7))
    );
    let (s, h, _) = fetch(&cache, &get(url, &[("if-none-match", "\"abc\"")]))
        .await
        .unwrap();
    assert_eq!(
        (s, h["etag"].to_str().unwrap()),
        (StatusCode::NOT_MODIFIED, "\"abc\"")
    );
}

#[tokio::test]
async fn ranges_answer_206_and_416() {
    let (_d, _c, cache) = setup();
    let url = "https://e.com/r";
    let data: Vec<u8> = (0..100u8).collect();
    put(
        &cache,
        &get(url, &[]),
        resp(200, &[("cache-control", "max-age=60")], &data),
    )
    .await;
    let (s, h, b) = fetch(&cache, &get(url, &[("range", "bytes=10-19")]))
        .await
        .unwrap();
    assert_eq!(s, StatusCode::PARTIAL_CONTENT);
    assert_eq!(h["content-range"], "bytes 10-19/100");
    assert_eq!(h["content-length"], "10");
    assert_eq!(&b[..], &data[10..20]);
    let (_, h, b) = fetch(&cache, &get(url, &[("range", "bytes=-5")]))
        .await
        .unwrap();
    assert_eq!(
        (h["content-range"].to_str().unwrap(), &b[..]),
        ("bytes 95-99/100", &data[95..])
    );
    let (s, h, b) = fetch(&cache, &get(url, &[("range", "bytes=100-")]))
        .await
        .unwrap();
    assert_eq!(
        (s, h["content-range"].to_str().unwrap(), b.len()),
        (StatusCode::RANGE_NOT_SATISFIABLE, "bytes */100", 0)
    );
    // Several ranges: the whole body (a server may ignore Range).
    let (s, _, b) = fetch(&cache, &get(url, &[("range", "bytes=0-1,5-6")]))
        .await
        .unwrap();
    assert_eq!((s, b.len()), (StatusCode::OK, 100));
}

#[tokio::test]
async fn vary_keeps_one_entry_per_variant() {
    let (_d, _c, cache) = setup();
    let url = "https://e.com/vary";
    let cc = ("cache-control", "max-age=60");
    put(
        &cache,
        &get(url, &[("accept-encoding", "gzip")]),
        resp(200, &[cc, ("vary", "Accept-Encoding")], b"gz"),
    )
    .await;
    put(
        &cache,
        &get(url, &[("accept-encoding", "br")]),
        resp(200, &[cc, ("vary", "accept-encoding")], b"br"),
    )
    .await;
    let body_for = |h: &'static str| {
        let cache = cache.clone();
        async move {
            fetch(&cache, &get(url, &[("accept-encoding", h)]))
                .await
                .map(|x| x.2)
        }
    };
    assert_eq!(body_for("gzip").await, Some(Bytes::from_static(b"gz")));
    assert_eq!(body_for("br").await, Some(Bytes::from_static(b"br")));
    assert_eq!(body_for("zstd").await, None);
    assert!(fetch(&cache, &get(url, &[])).await.is_none());
    // A response that does not vary replaces every variant this request matches.
    put(
        &cache,
        &get(url, &[("accept-encoding", "gzip")]),
        resp(200, &[cc], b"plain"),
    )
    .await;
    assert_eq!(body_for("gzip").await, Some(Bytes::from_static(b"plain")));
    assert_eq!(body_for("zstd").await, Some(Bytes::from_static(b"plain")));
}

#[tokio::test]
async fn methods_delete_and_named_caches() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let caches = storage(dir.path(), &clock);
    let default = caches.default_cache();
    let named = caches.open_cache("custom:cache");
    let url = "https://e.com/m";
    put(
        &default,
        &get(url, &[]),
        resp(200, &[("cache-control", "max-age=60")], b"d"),
    )
    .await;
    assert!(
        fetch(&named, &get(url, &[])).await.is_none(),
        "caches are separate"
    );
    let post = Request::builder().method("POST").uri(url).body(()).unwrap();
    assert!(default
        .match_request(&post, MatchOptions::default())
        .await
        .unwrap()
        .is_none());
    let ignore = MatchOptions {
        ignore_method: true,
    };
    assert!(default
        .match_request(&post, ignore)
        .await
        .unwrap()
        .is_some());
    assert!(!default
        .delete(&post, MatchOptions::default())
        .await
        .unwrap());
    assert!(default.delete(&post, ignore).await.unwrap());
    assert!(!default
        .delete(&get(url, &[]), MatchOptions::default())
        .await
        .unwrap());
    assert!(fetch(&default, &get(url, &[])).await.is_none());
}

#[tokio::test]
async fn entries_persist_are_replaced_whole_and_purged() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let url = "https://e.com/p";
    {
        let cache = storage(dir.path(), &clock).default_cache();
        put(
            &cache,
            &get(url, &[]),
            resp(200, &[("cache-control", "max-age=60")], b"one"),
        )
        .await;
        put(
            &cache,
            &get(url, &[]),
            resp(200, &[("cache-control", "max-age=60")], b"two"),
        )
        .await;
    }
    let files = |p: &std::path::Path| walk(p).len();
    assert_eq!(
        files(dir.path()),
        2,
        "one meta + one body: the replaced body is gone"
    );
    let cache = storage(dir.path(), &clock).default_cache();
    assert_eq!(
        fetch(&cache, &get(url, &[])).await.unwrap().2,
        Bytes::from_static(b"two")
    );
    // Limit on entry size.
    let small = CacheStorage::open(
        dir.path(),
        CacheConfig {
            clock: clock.clone(),
            max_entry_bytes: 10,
        },
    )
    .unwrap()
    .open_cache("small");
    assert!(matches!(
        put(&small, &get(url, &[]), resp(200, &[], b"01234567890")).await,
        PutOutcome::NotStored(_)
    ));
    clock.advance_ms(60_000);
    assert_eq!(cache.purge_expired().await.unwrap(), 2);
    assert_eq!(files(dir.path()), 0);
}

#[tokio::test]
async fn the_storage_sweep_reaches_caches_not_opened_since_start() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let url = "https://example.com/swept";
    {
        let s = storage(dir.path(), &clock);
        for cache in [s.default_cache(), s.open_cache("a"), s.open_cache("b")] {
            put(
                &cache,
                &get(url, &[]),
                resp(200, &[("cache-control", "max-age=60")], b"short"),
            )
            .await;
        }
        put(
            &s.open_cache("a"),
            &get("https://example.com/kept", &[]),
            resp(200, &[("cache-control", "max-age=3600")], b"long"),
        )
        .await;
    }
    // A new process: nothing opened yet, and nothing expired.
    let s = storage(dir.path(), &clock);
    assert_eq!(s.purge_expired().await.unwrap(), 0);
    assert_eq!(walk(dir.path()).len(), 8);
    clock.advance_ms(61_000);
    assert_eq!(s.purge_expired().await.unwrap(), 6);
    assert_eq!(walk(dir.path()).len(), 2, "the one-hour entry stays");
    let kept = fetch(&s.open_cache("a"), &get("https://example.com/kept", &[]))
        .await
        .unwrap();
    assert_eq!(kept.2, Bytes::from_static(b"long"));
}

fn walk(p: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_replacements_never_mix_two_responses() {
    let (_d, _c, cache) = setup();
    let url = "https://e.com/race";
    let size = 200_000;
    let writer = {
        let cache = cache.clone();
        tokio::spawn(async move {
            for i in 0..40u8 {
                let fill = if i % 2 == 0 { b'A' } else { b'B' };
                let len = size + i as usize;
                let r = resp(200, &[("cache-control", "max-age=600")], &vec![fill; len]);
                assert_eq!(put(&cache, &get(url, &[]), r).await, PutOutcome::Stored);
            }
        })
    };
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move {
                let mut seen = 0;
                for _ in 0..200 {
                    if let Some((_, h, b)) = fetch(&cache, &get(url, &[])).await {
                        let len: usize = h["content-length"].to_str().unwrap().parse().unwrap();
                        assert_eq!(b.len(), len, "body length matches its headers");
                        assert!(b.iter().all(|&c| c == b[0]), "one response, never a mix");
                        // Put i has length size + i and fill A for even i: head and body
                        // come from the same put.
                        assert_eq!((len - size) % 2 == 0, b[0] == b'A');
                        seen += 1;
                    }
                    tokio::task::yield_now().await;
                }
                seen
            })
        })
        .collect();
    writer.await.unwrap();
    let mut hits = 0;
    for r in readers {
        hits += r.await.unwrap();
    }
    assert!(hits > 0);
    let (_, _, b) = fetch(&cache, &get(url, &[])).await.unwrap();
    assert_eq!((b.len(), b[0]), (size + 39, b'B'));
}
