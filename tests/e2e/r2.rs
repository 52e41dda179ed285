//! R2 bucket bindings (`r2_buckets`) and the S3 endpoint of `cinder dev --s3-port`, against the
//! real binary: the binding's conformance suite (tests/fixtures/r2), a large object streamed
//! through a worker with the server's memory bounded, a Durable Object using a bucket, state
//! across a restart, kill -9 during puts, and boto3 and the aws CLI sharing the buckets with
//! the worker.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{client, fixture, Server};
use crate::streaming::RssWatch;

fn r2_fixture() -> String {
    fixture("r2").to_str().expect("utf-8 path").to_string()
}

#[test]
fn binding_conformance_suite() {
    let server = Server::start(&[&r2_fixture()]);
    server.run_cases(10);
    let log = server.stderr();
    assert!(!log.contains("not supported yet"), "{log}");
    assert!(
        !server.stdout().contains("S3 API"),
        "the S3 endpoint is off unless --s3-port is given"
    );
}

const SIZE: u64 = 256 * 1024 * 1024;
/// RSS growth allowed while moving SIZE bytes in and out: half of it, so a server that held
/// the object whole in either direction cannot pass.
const MAX_GROWTH: u64 = SIZE / 2;

fn pattern(i: u64) -> u8 {
    ((i * 7) % 253) as u8
}

/// `len` bytes of `pattern`, generated as they are read.
struct Pattern {
    pos: u64,
    len: u64,
}

impl Read for Pattern {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min((self.len - self.pos) as usize);
        for (k, b) in buf[..n].iter_mut().enumerate() {
            *b = pattern(self.pos + k as u64);
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// Reads a response body to its end, checking each byte against `pattern` from `start`.
fn check_pattern(mut resp: reqwest::blocking::Response, start: u64) -> u64 {
    let mut buf = vec![0u8; 256 * 1024];
    let mut seen = 0u64;
    loop {
        let n = resp.read(&mut buf).expect("read the body");
        if n == 0 {
            return seen;
        }
        for (k, b) in buf[..n].iter().enumerate() {
            let at = start + seen + k as u64;
            assert_eq!(*b, pattern(at), "byte {at} differs");
        }
        seen += n as u64;
    }
}

#[test]
fn large_object_streams_through_the_worker_with_bounded_memory() {
    // The front door refuses bodies over 100 MB by default (Cloudflare's plan limit).
    let server = Server::start(&[&r2_fixture(), "--threads", "1", "--max-body-mb", "300"]);
    let http = client();
    // Warm the isolate, the allocator and the R2 paths so the baseline includes them.
    for _ in 0..2 {
        let resp = http
            .put(server.url("/obj/warm"))
            .body(vec![5u8; 8 << 20])
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            http.get(server.url("/obj/warm"))
                .send()
                .unwrap()
                .bytes()
                .unwrap()
                .len(),
            8 << 20
        );
    }
    let baseline = server.rss_bytes();
    assert!(baseline > 0, "cannot read the server's RSS");
    let watch = RssWatch::start(server.pid());

    let started = Instant::now();
    let resp = http
        .put(server.url("/obj/big.bin"))
        .header("content-type", "application/x-pattern")
        .body(reqwest::blocking::Body::sized(
            Pattern { pos: 0, len: SIZE },
            SIZE,
        ))
        .send()
        .expect("PUT the large object");
    let status = resp.status();
    let put: serde_json::Value = resp.json().expect("the R2Object as JSON");
    assert_eq!(status, 200, "{put}");
    assert_eq!(put["size"], SIZE, "{put}");
    let upload = started.elapsed();

    let started = Instant::now();
    let resp = http.get(server.url("/obj/big.bin")).send().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "application/x-pattern",
        "httpMetadata from the request headers"
    );
    assert_eq!(check_pattern(resp, 0), SIZE);
    let download = started.elapsed();

    // A range in the middle reads only that part.
    let from = SIZE / 2 - 1000;
    let resp = http
        .get(server.url("/obj/big.bin"))
        .header("range", format!("bytes={from}-{}", from + 99_999))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(
        resp.headers()["content-range"],
        format!("bytes {from}-{}/{SIZE}", from + 99_999).as_str()
    );
    assert_eq!(check_pattern(resp, from), 100_000);

    let peak = watch.finish();
    eprintln!(
        "r2 large object: {} MiB up in {upload:?}, down in {download:?}; RSS {} -> peak {} MiB",
        SIZE >> 20,
        baseline >> 20,
        peak >> 20
    );
    assert!(
        peak < baseline + MAX_GROWTH,
        "RSS grew from {} MiB to {} MiB while moving {} MiB through R2",
        baseline >> 20,
        peak >> 20,
        SIZE >> 20
    );
    let resp = http.delete(server.url("/obj/big.bin")).send().unwrap();
    assert_eq!(resp.status(), 204);
}

#[test]
fn durable_object_uses_the_bucket() {
    let server = Server::start(&[&r2_fixture()]);
    for n in 1..=3u64 {
        let v = server.get_json("/do/alpha/write");
        assert_eq!(v["n"], n, "{v}");
        assert_eq!(v["back"], format!("write {n}"), "{v}");
        assert_eq!(v["listed"], n, "{v}");
        // What the object wrote is in the bucket the stateless worker sees.
        let resp = server.get(&format!("/obj/do/alpha/{n}"));
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().unwrap(), format!("write {n}"));
    }

    // Concurrent requests each get their own storage value and their own object.
    let base = server.base.clone();
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let url = format!("{base}/do/beta/write");
            std::thread::spawn(move || {
                let resp = client().get(url).send().expect("request");
                assert_eq!(resp.status(), 200);
                resp.json::<serde_json::Value>().expect("json")["n"]
                    .as_u64()
                    .expect("n")
            })
        })
        .collect();
    let mut ns: Vec<u64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    ns.sort();
    assert_eq!(ns, (1..=6).collect::<Vec<_>>());
    for n in ns {
        assert_eq!(server.get(&format!("/obj/do/beta/{n}")).status(), 200);
    }

    let resp = server.get("/do/gamma/critical");
    assert_eq!(resp.status(), 200, "{}", server.stderr());
    assert_eq!(resp.text().unwrap(), "in a critical section");

    let v = server.get_json("/do/gamma/multipart");
    assert_eq!(v["size"], 5 * 1024 * 1024 + 3, "{v}");
}

#[test]
fn objects_survive_a_restart() {
    let state = tempfile::tempdir().unwrap();
    let http = client();
    let etag = {
        let mut server = Server::start_in(state.path(), &[&r2_fixture()]);
        let resp = http
            .put(server.url("/obj/kept.txt"))
            .header("content-type", "text/plain")
            .header("x-meta-note", "durable")
            .body("still here")
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
        let etag = resp.json::<serde_json::Value>().unwrap()["etag"]
            .as_str()
            .unwrap()
            .to_string();
        let status = server.signal_and_wait(libc::SIGTERM, Duration::from_secs(60));
        assert!(status.success(), "{status:?}");
        etag
    };
    assert!(
        state.path().join("r2").is_dir(),
        "R2 blobs live under the state directory"
    );
    let server = Server::start_in(state.path(), &[&r2_fixture()]);
    let resp = server.get("/obj/kept.txt");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["etag"], format!("\"{etag}\"").as_str());
    assert_eq!(resp.headers()["x-custom"], r#"{"note":"durable"}"#);
    assert_eq!(resp.text().unwrap(), "still here");
}

/// The bytes of object `key` in the crash test: a pattern seeded by the key, so a body that
/// mixes two uploads or stops short is caught.
fn crash_body(key: &str, len: usize) -> Vec<u8> {
    let seed = key
        .bytes()
        .fold(17u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
    (0..len as u64)
        .map(|i| (seed.wrapping_add(i.wrapping_mul(131)) % 251) as u8)
        .collect()
}

/// Reads `key` through the worker: `None` when it is absent.
fn read_back(server: &Server, key: &str) -> Option<Vec<u8>> {
    let resp = server.get(&format!("/obj/{key}"));
    match resp.status().as_u16() {
        404 => None,
        200 => Some(resp.bytes().expect("body").to_vec()),
        other => panic!("GET {key}: {other}: {}", resp.text().unwrap_or_default()),
    }
}

#[test]
fn kill_9_during_puts_loses_no_acknowledged_object_and_shows_no_partial_one() {
    use rand::Rng;
    let state = tempfile::tempdir().unwrap();
    let args = [r2_fixture()];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut rng = rand::rng();
    // Every key a client started to upload, and whether the worker acknowledged it.
    let mut tried: Vec<(String, usize, bool)> = Vec::new();
    for round in 0..4 {
        let server = Server::start_in(state.path(), &args);
        for (key, len, acked) in &tried {
            match read_back(&server, key) {
                Some(got) => assert!(
                    got == crash_body(key, *len),
                    "round {round}: {key} is visible with {} bytes of {len} or wrong content",
                    got.len()
                ),
                None => assert!(!acked, "round {round}: acknowledged {key} was lost"),
            }
        }
        // Kill once the clients together got this many answers: a random moment that does not
        // depend on timing, most likely in the middle of some upload.
        let kill_after = rng.random_range(3..25);
        let (tx, rx) = std::sync::mpsc::channel::<(String, usize, bool)>();
        let clients: Vec<_> = (0..3)
            .map(|c| {
                let (base, tx) = (server.base.clone(), tx.clone());
                let lens: Vec<usize> = (0..200)
                    .map(|_| rand::rng().random_range(1..3 << 20))
                    .collect();
                std::thread::spawn(move || {
                    let client = client();
                    for (seq, len) in lens.into_iter().enumerate() {
                        let key = format!("crash/{round}-{c}-{seq}");
                        // Reported before the upload starts, so a cut-off one is checked too.
                        if tx.send((key.clone(), len, false)).is_err() {
                            return;
                        }
                        let resp = client
                            .put(format!("{base}/obj/{key}"))
                            .body(crash_body(&key, len))
                            .send();
                        let Ok(resp) = resp else { return };
                        if resp.status() != 200 {
                            return;
                        }
                        let Ok(o) = resp.json::<serde_json::Value>() else {
                            return;
                        };
                        assert_eq!(o["size"], len as u64, "{key}: {o}");
                        if tx.send((key, len, true)).is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        drop(tx);
        let mut acks = 0;
        while acks < kill_after {
            match rx.recv_timeout(Duration::from_secs(120)) {
                Ok(report) => {
                    acks += report.2 as usize;
                    tried.push(report);
                }
                Err(e) => panic!("round {round}: clients stopped answering: {e}"),
            }
        }
        drop(server); // SIGKILL
        for c in clients {
            c.join().expect("client thread");
        }
        tried.extend(rx.try_iter());
        // A key reported twice (started, then acknowledged) counts as acknowledged.
        tried.sort_by(|a, b| a.0.cmp(&b.0).then(b.2.cmp(&a.2)));
        tried.dedup_by(|a, b| a.0 == b.0);
    }
    let server = Server::start_in(state.path(), &args);
    let acked = tried.iter().filter(|t| t.2).count();
    let mut visible = 0;
    for (key, len, acked) in &tried {
        match read_back(&server, key) {
            Some(got) => {
                assert!(
                    got == crash_body(key, *len),
                    "{key}: partial or wrong content"
                );
                visible += 1;
            }
            None => assert!(!acked, "acknowledged {key} was lost"),
        }
    }
    eprintln!(
        "r2 kill -9: {} puts started, {acked} acknowledged, {visible} visible after the kills",
        tried.len()
    );
    assert!(acked >= 12, "{acked} acknowledged puts");
    assert!(visible >= acked);
    // The listing agrees with the reads: nothing half-written is listed either.
    let listed = server.get_json("/list/crash/");
    assert_eq!(listed.as_u64(), Some(visible as u64), "{listed}");
}

/// The "S3 API on http://ADDR ..." line `cinder dev` prints before "Ready on".
fn s3_endpoint(server: &Server) -> String {
    let out = server.stdout();
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("S3 API on "))
        .unwrap_or_else(|| panic!("no S3 API line in stdout:\n{out}"));
    line.split_whitespace().next().expect("address").to_string()
}

fn require_s3_clients() {
    let ok = Command::new("python3")
        .args(["-c", "import boto3"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "boto3 is needed: run scripts/install-s3-test-deps");
    let aws = Command::new("aws")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        aws,
        "the aws CLI is needed: run scripts/install-s3-test-deps"
    );
}

#[test]
fn s3_endpoint_shares_the_buckets_with_the_worker() {
    require_s3_clients();
    let server = Server::start(&[
        &r2_fixture(),
        "--s3-port",
        "0",
        "--s3-access-key-id",
        "e2e-key",
        "--s3-secret-access-key",
        "e2e-secret",
    ]);
    let endpoint = s3_endpoint(&server);
    let mut child = Command::new("python3")
        .arg(fixture("r2").join("s3_interop.py"))
        .env("S3_ENDPOINT", &endpoint)
        .env("S3_ACCESS_KEY", "e2e-key")
        .env("S3_SECRET_KEY", "e2e-secret")
        .env("WORKER", &server.base)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("s3_interop.py did not finish within 300 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    let mut err = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        status.success() && out.contains("all passed"),
        "s3_interop.py failed ({status:?}):\n{out}\n{err}\nserver stderr:\n{}",
        server.stderr()
    );
}
