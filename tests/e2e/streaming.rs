//! Bodies stream both ways: 200 MB through the server with bounded memory.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
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
pub(crate) struct RssWatch {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    handle: Option<thread::JoinHandle<()>>,
}

impl RssWatch {
    pub(crate) fn start(pid: u32) -> RssWatch {
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

    pub(crate) fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join().unwrap();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

fn warm_server() -> (Server, u64) {
    // 200 MB bodies: over the default 100 MB request limit.
    let server = Server::start(&[
        fixture("globals").to_str().unwrap(),
        "--threads",
        "1",
        "--max-body-mb",
        "1000",
    ]);
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
    // A raw HTTP/1.1 exchange so upload and download run at the same time, on two threads:
    // the echo can only finish if the server streams both ways.
    let addr = server.base.trim_start_matches("http://").to_string();
    let stream = TcpStream::connect(&addr).expect("connect");
    let mut writer = stream.try_clone().unwrap();
    let upload = thread::spawn(move || {
        write!(
            writer,
            "POST /echo HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {SIZE}\r\nconnection: close\r\n\r\n"
        )
        .unwrap();
        let mut body = PatternReader { pos: 0 };
        std::io::copy(&mut body, &mut writer).expect("upload");
    });
    let mut reader = BufReader::new(stream);
    let head = read_head(&mut reader);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut seen: u64 = 0;
    for_each_body_chunk(&mut reader, &head, |chunk| {
        for (k, b) in chunk.iter().enumerate() {
            assert_eq!(
                *b,
                pattern(seen + k as u64),
                "byte {} differs",
                seen + k as u64
            );
        }
        seen += chunk.len() as u64;
    });
    upload.join().unwrap();
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

/// Reads the response head (status line and headers), lower-cased.
fn read_head(reader: &mut impl BufRead) -> String {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "connection closed in the head: {head}"
        );
        if line == "\r\n" {
            return head.to_ascii_lowercase().replace("http/1.1", "HTTP/1.1");
        }
        head.push_str(&line);
    }
}

/// Feeds the body to `f` piece by piece: chunked, sized or until close.
fn for_each_body_chunk(reader: &mut impl BufRead, head: &str, mut f: impl FnMut(&[u8])) {
    let mut buf = vec![0u8; 256 * 1024];
    if head.contains("transfer-encoding: chunked") {
        loop {
            let mut size_line = String::new();
            reader.read_line(&mut size_line).unwrap();
            let size = usize::from_str_radix(size_line.trim().split(';').next().unwrap(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size line {size_line:?}"));
            if size == 0 {
                return;
            }
            let mut left = size;
            while left > 0 {
                let n = left.min(buf.len());
                reader.read_exact(&mut buf[..n]).unwrap();
                f(&buf[..n]);
                left -= n;
            }
            let mut crlf = [0u8; 2];
            reader.read_exact(&mut crlf).unwrap();
        }
    }
    loop {
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            return;
        }
        f(&buf[..n]);
    }
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
