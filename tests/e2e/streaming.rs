//! Bodies stream both ways: 200 MB through the server with bounded memory.

use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::harness::{client, fixture, rss_of, Server};

const SIZE: u64 = 200 * 1024 * 1024;
/// Growth of the server's RSS allowed while moving SIZE bytes: half of it, so a server that
/// buffered the body whole cannot pass.
const MAX_GROWTH: u64 = SIZE / 2;

fn pattern(i: u64) -> u8 {
    (i % 251) as u8
}

/// Generates SIZE bytes of a known pattern without holding them.
struct PatternReader {
    pos: u64,
}

impl Read for PatternReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min((SIZE - self.pos) as usize);
        for (k, b) in buf[..n].iter_mut().enumerate() {
            *b = pattern(self.pos + k as u64);
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// Samples the RSS of `pid` until dropped; keeps the peak.
struct RssWatch {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    handle: Option<thread::JoinHandle<()>>,
}

impl RssWatch {
    fn start(pid: u32) -> RssWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), peak.clone());
        let handle = thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(rss_of(pid), Ordering::Relaxed);
                thread::sleep(Duration::from_millis(25));
            }
        });
        RssWatch {
            stop,
            peak,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join().unwrap();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

fn warm_server() -> (Server, u64) {
    let server = Server::start(&[fixture("globals").to_str().unwrap(), "--threads", "1"]);
    // Warm the isolate and the allocator so the baseline includes them.
    for _ in 0..3 {
        let resp = client()
            .post(server.url("/echo"))
            .body(vec![7u8; 1 << 20])
            .send()
            .unwrap();
        assert_eq!(resp.bytes().unwrap().len(), 1 << 20);
    }
    let baseline = server.rss_bytes();
    assert!(baseline > 0, "cannot read the server's RSS");
    (server, baseline)
}

#[test]
fn large_upload_is_echoed_with_bounded_memory() {
    let (server, baseline) = warm_server();
    let watch = RssWatch::start(server.pid());
    let body = reqwest::blocking::Body::sized(PatternReader { pos: 0 }, SIZE);
    let mut resp = client()
        .post(server.url("/echo"))
        .body(body)
        .send()
        .expect("echo request");
    assert_eq!(resp.status(), 200);
    let mut buf = vec![0u8; 256 * 1024];
    let mut seen: u64 = 0;
    loop {
        let n = resp.read(&mut buf).expect("read echoed body");
        if n == 0 {
            break;
        }
        for (k, b) in buf[..n].iter().enumerate() {
            assert_eq!(
                *b,
                pattern(seen + k as u64),
                "byte {} differs",
                seen + k as u64
            );
        }
        seen += n as u64;
    }
    let peak = watch.finish();
    assert_eq!(seen, SIZE);
    assert!(
        peak < baseline + MAX_GROWTH,
        "RSS grew from {} MiB to {} MiB while echoing {} MiB",
        baseline >> 20,
        peak >> 20,
        SIZE >> 20
    );
}

#[test]
fn large_streamed_response_with_bounded_memory() {
    let (server, baseline) = warm_server();
    let watch = RssWatch::start(server.pid());
    let mut resp = server.get(&format!("/stream?mb={}", SIZE >> 20));
    assert_eq!(resp.status(), 200);
    let mut buf = vec![0u8; 256 * 1024];
    let mut seen: u64 = 0;
    loop {
        let n = resp.read(&mut buf).expect("read streamed body");
        if n == 0 {
            break;
        }
        assert!(buf[..n].iter().all(|&b| b == b'x'));
        seen += n as u64;
    }
    let peak = watch.finish();
    assert_eq!(seen, SIZE);
    assert!(
        peak < baseline + MAX_GROWTH,
        "RSS grew from {} MiB to {} MiB while streaming {} MiB",
        baseline >> 20,
        peak >> 20,
        SIZE >> 20
    );
}
