//! Hibernated WebSockets: opens many sockets to rooms of hibernatable Durable Objects
//! (bench/workers/hibernate), lets the rooms hibernate, and reports the server's RSS per
//! socket and the latency of a message that wakes a room. RSS is read after every room exists
//! (`rss_warm`), at half the sockets and at all of them, each time after the rooms hibernated:
//! `bytes_per_hibernated_socket` is (all − warm) / sockets, `marginal_bytes_per_socket` is
//! (all − half) / (the second half), which leaves out growth that does not scale with sockets.
//!
//! ```sh
//! ulimit -n 1048576
//! cinder dev bench/workers/hibernate --port 8800 &
//! cargo run --release -p cinder-bench --bin ws_hibernation -- --port 8800 --pid $! --sockets 50000
//! ```
//! Connections come from several loopback source addresses (127.0.0.1, .2, ...) so that 50,000
//! of them fit in the ephemeral port range.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use clap::Parser;
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
struct Args {
    /// Server port on 127.0.0.1.
    #[arg(long)]
    port: u16,
    /// Server process id (for its RSS).
    #[arg(long)]
    pid: u32,
    #[arg(long, default_value_t = 50_000)]
    sockets: usize,
    /// Rooms the sockets are spread over.
    #[arg(long, default_value_t = 500)]
    rooms: usize,
    /// Rooms woken one after another to time the wake-up.
    #[arg(long, default_value_t = 200)]
    wake_samples: usize,
    /// Loopback source addresses used.
    #[arg(long, default_value_t = 4)]
    source_ips: u8,
    /// How long to wait for the rooms to hibernate (longer than the server's hibernation delay).
    #[arg(long, default_value_t = 15)]
    idle_secs: u64,
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn open(port: u16, source: Ipv4Addr, room: usize) -> Result<Ws, String> {
    let sock = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    sock.bind(SocketAddr::new(IpAddr::V4(source), 0))
        .map_err(|e| e.to_string())?;
    let stream = sock
        .connect(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
        .await
        .map_err(|e| e.to_string())?;
    let url = format!("ws://127.0.0.1:{port}/room/r{room}");
    let (ws, _) = tokio_tungstenite::client_async(url, stream)
        .await
        .map_err(|e| e.to_string())?;
    Ok(ws)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn open_many(
    a: &Args,
    range: std::ops::Range<usize>,
    sockets: &mut Vec<Option<Ws>>,
    failed: &mut usize,
) {
    let mut next = range.start;
    while next < range.end {
        let batch: Vec<_> = (next..(next + a.concurrency).min(range.end))
            .map(|i| {
                let source = Ipv4Addr::new(127, 0, 0, 1 + (i % a.source_ips.max(1) as usize) as u8);
                open(a.port, source, i % a.rooms)
            })
            .collect();
        next += batch.len();
        for r in futures::future::join_all(batch).await {
            match r {
                Ok(ws) => sockets.push(Some(ws)),
                Err(e) => {
                    *failed += 1;
                    if *failed <= 3 {
                        eprintln!("connect failed: {e}");
                    }
                    sockets.push(None);
                }
            }
        }
    }
}

/// Sends one message on a socket and waits for the room's echo; the round trip.
async fn round_trip(ws: &mut Ws, text: String) -> Option<Duration> {
    let t0 = Instant::now();
    ws.send(Message::Text(text.into())).await.ok()?;
    while let Some(Ok(m)) = ws.next().await {
        if matches!(m, Message::Text(_)) {
            return Some(t0.elapsed());
        }
    }
    None
}

#[tokio::main]
async fn main() {
    let a = Args::parse();
    let rss_start = rss_kib(a.pid);
    let started = Instant::now();
    let mut sockets: Vec<Option<Ws>> = Vec::with_capacity(a.sockets);
    let mut failed = 0usize;
    // Every room exists once (and each server has made its isolates) before anything is
    // measured, so the figures below are what sockets cost, not what start-up costs.
    open_many(&a, 0..a.rooms.min(a.sockets), &mut sockets, &mut failed).await;
    for (i, ws) in sockets.iter_mut().enumerate() {
        if let Some(ws) = ws {
            round_trip(ws, format!("warm {i}")).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(a.idle_secs)).await;
    let rss_warm = rss_kib(a.pid);
    let half = a.rooms.max(a.sockets / 2).min(a.sockets);
    open_many(&a, sockets.len()..half, &mut sockets, &mut failed).await;
    tokio::time::sleep(Duration::from_secs(a.idle_secs)).await;
    let rss_half = rss_kib(a.pid);
    open_many(&a, half..a.sockets, &mut sockets, &mut failed).await;
    let connect_secs = started.elapsed().as_secs_f64();
    let open = sockets.iter().filter(|s| s.is_some()).count();
    let rss_open = rss_kib(a.pid);
    tokio::time::sleep(Duration::from_secs(a.idle_secs)).await;
    let rss_idle = rss_kib(a.pid);

    // Wake rooms one at a time: each message goes to a hibernated room's first socket.
    let mut wakes = Vec::new();
    for room in 0..a.wake_samples.min(a.rooms) {
        let Some(Some(ws)) = sockets.get_mut(room) else {
            continue;
        };
        if let Some(t) = round_trip(ws, format!("wake {room}")).await {
            wakes.push(t);
        }
    }
    wakes.sort();
    let per_socket = (rss_idle.saturating_sub(rss_warm) as f64 * 1024.0)
        / open.saturating_sub(a.rooms).max(1) as f64;
    let marginal =
        (rss_idle.saturating_sub(rss_half) as f64 * 1024.0) / (a.sockets - half).max(1) as f64;
    println!(
        "{{\"sockets\": {open}, \"failed\": {failed}, \"connect_secs\": {connect_secs:.1}, \"rss_start_kib\": {rss_start}, \"rss_warm_kib\": {rss_warm}, \"rss_half_kib\": {rss_half}, \"rss_open_kib\": {rss_open}, \"rss_hibernated_kib\": {rss_idle}, \"bytes_per_hibernated_socket\": {per_socket:.0}, \"marginal_bytes_per_socket\": {marginal:.0}, \"wake_samples\": {}, \"wake_p50_ms\": {:.3}, \"wake_p99_ms\": {:.3}}}",
        wakes.len(),
        percentile(&wakes, 0.5).as_secs_f64() * 1e3,
        percentile(&wakes, 0.99).as_secs_f64() * 1e3,
    );
}
