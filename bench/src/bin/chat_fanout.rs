//! Chat fan-out (issue 13): one room of `examples/chat` with `--sockets` WebSockets; `--senders`
//! of them post messages (each with at most `--window` of its own messages not yet seen back)
//! and every socket counts the messages the room delivers to it.
//!
//! Prints messages accepted/s (posted and broadcast by the room), deliveries/s (frames that
//! reached the sockets: accepted × sockets when nobody falls behind) and the p50/p99 time from
//! a post to its sender seeing it broadcast. Works against any server running the example
//! (cinder or workerd); start it with the per-user limiter opened up:
//! `--var CHAT_BURST:1000000000 --var CHAT_RATE_PER_SEC:1000000000` (bench/workers/stateful.py
//! does). Ends with one `chat_fanout key=value ...` line for scripts.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use futures::{SinkExt, StreamExt};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser, Debug)]
#[command(about = "Chat fan-out: one room, many sockets, messages delivered per second")]
struct Args {
    /// Base URL of the server running examples/chat (http:// or ws://).
    #[arg(long, default_value = "ws://127.0.0.1:8787")]
    url: String,
    /// Sockets in the room.
    #[arg(long, default_value_t = 1000)]
    sockets: usize,
    /// How many of them post messages.
    #[arg(long, default_value_t = 8)]
    senders: usize,
    /// Messages a sender may have posted and not yet seen broadcast.
    #[arg(long, default_value_t = 4)]
    window: usize,
    /// Seconds measured.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Seconds of posting before the measurement.
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// Room name (default: a new one per run).
    #[arg(long)]
    room: Option<String>,
    /// Client runtime threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

#[derive(Default)]
struct Counters {
    /// `message` frames received, all sockets together.
    delivered: AtomicU64,
    /// `joined` frames received (to know when the joins have settled).
    joined: AtomicU64,
    /// Messages the senders saw broadcast back to themselves.
    accepted: AtomicU64,
    errors: AtomicU64,
}

struct Sender {
    sent_at: Mutex<VecDeque<Instant>>,
    window: Semaphore,
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(run(args)) {
        eprintln!("chat_fanout: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), String> {
    if args.senders == 0 || args.senders > args.sockets {
        return Err("--senders must be between 1 and --sockets".into());
    }
    let base = args
        .url
        .trim_end_matches('/')
        .replacen("http://", "ws://", 1);
    let room = args
        .room
        .clone()
        .unwrap_or_else(|| format!("fanout-{}-{}", std::process::id(), rand::random::<u32>()));
    let counters = Arc::new(Counters::default());
    let latencies = Arc::new(Mutex::new(Vec::<u64>::new()));
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));

    // Join one by one, as users arrive: each join is broadcast to everyone already there.
    let t0 = Instant::now();
    let mut writers = Vec::new();
    let mut readers = Vec::new();
    let mut senders = Vec::new();
    for i in 0..args.sockets {
        let name = format!("u{i}");
        let url = format!("{base}/api/room/{room}/websocket?name={name}");
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .map_err(|e| format!("socket {i}: connect {url}: {e}"))?;
        let (write, mut read) = ws.split();
        match read.next().await {
            Some(Ok(Message::Text(t))) if t.contains("\"type\":\"history\"") => {}
            other => {
                return Err(format!(
                    "socket {i}: expected the history frame, got {other:?}"
                ))
            }
        }
        let sender = (i < args.senders).then(|| {
            Arc::new(Sender {
                sent_at: Mutex::new(VecDeque::new()),
                window: Semaphore::new(args.window),
            })
        });
        senders.push(sender.clone());
        let own = format!("\"name\":\"{name}\"");
        let (counters, latencies, measuring) =
            (counters.clone(), latencies.clone(), measuring.clone());
        readers.push(tokio::spawn(async move {
            while let Some(frame) = read.next().await {
                let Ok(Message::Text(t)) = frame else {
                    if frame.is_err() {
                        break;
                    }
                    continue;
                };
                if t.contains("\"type\":\"message\"") {
                    counters.delivered.fetch_add(1, Ordering::Relaxed);
                    if let Some(s) = &sender {
                        if t.contains(&own) {
                            let sent = s.sent_at.lock().unwrap().pop_front();
                            if let (Some(sent), true) = (sent, measuring.load(Ordering::Relaxed)) {
                                latencies
                                    .lock()
                                    .unwrap()
                                    .push(sent.elapsed().as_nanos() as u64);
                            }
                            counters.accepted.fetch_add(1, Ordering::Relaxed);
                            s.window.add_permits(1);
                        }
                    }
                } else if t.contains("\"type\":\"joined\"") {
                    counters.joined.fetch_add(1, Ordering::Relaxed);
                } else if t.contains("\"type\":\"error\"") {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    eprintln!("chat_fanout: the room answered {t}");
                }
            }
        }));
        writers.push(write);
    }
    // Every socket hears about each later join.
    let joins = (args.sockets * (args.sockets - 1) / 2) as u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    while counters.joined.load(Ordering::Relaxed) < joins {
        if Instant::now() > deadline {
            return Err(format!(
                "joins did not settle: {} of {joins} join frames after 120 s",
                counters.joined.load(Ordering::Relaxed)
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "{} sockets joined room {room} in {:.1} s ({joins} join frames delivered)",
        args.sockets,
        t0.elapsed().as_secs_f64()
    );

    // The senders post until told to stop.
    let mut tasks = Vec::new();
    for (i, mut write) in writers.drain(..args.senders).enumerate() {
        let s = senders[i].clone().expect("a sender");
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let Ok(permit) = s.window.acquire().await else {
                    break;
                };
                permit.forget();
                s.sent_at.lock().unwrap().push_back(Instant::now());
                n += 1;
                let msg = format!("{{\"type\":\"message\",\"text\":\"{i}:{n}\"}}");
                if write.send(Message::Text(msg.into())).await.is_err() {
                    break;
                }
            }
            write
        }));
    }
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;
    let (d0, a0) = (
        counters.delivered.load(Ordering::Relaxed),
        counters.accepted.load(Ordering::Relaxed),
    );
    measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.secs)).await;
    let secs = start.elapsed().as_secs_f64();
    let (d1, a1) = (
        counters.delivered.load(Ordering::Relaxed),
        counters.accepted.load(Ordering::Relaxed),
    );
    measuring.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for s in senders.iter().flatten() {
        s.window.close();
    }
    let mut writers_back = Vec::new();
    for t in tasks {
        if let Ok(w) = t.await {
            writers_back.push(w);
        }
    }
    writers_back.append(&mut writers);
    for mut w in writers_back {
        let _ = w.close().await;
    }
    for r in readers {
        r.abort();
    }

    let errors = counters.errors.load(Ordering::Relaxed);
    if errors > 0 {
        return Err(format!(
            "the room refused {errors} messages: start the server with \
             --var CHAT_BURST:1000000000 --var CHAT_RATE_PER_SEC:1000000000"
        ));
    }
    let mut lat = latencies.lock().unwrap().clone();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len().max(1) - 1) as f64 * p).round() as usize)
            .map_or(0.0, |n| *n as f64 / 1e6)
    };
    let accepted = (a1 - a0) as f64 / secs;
    let delivered = (d1 - d0) as f64 / secs;
    println!(
        "accepted {accepted:.0} msg/s, delivered {delivered:.0} frames/s \
         ({:.0} % of accepted x sockets), post -> own broadcast p50 {:.2} ms p99 {:.2} ms",
        100.0 * delivered / (accepted * args.sockets as f64).max(1.0),
        pct(0.5),
        pct(0.99)
    );
    println!(
        "chat_fanout sockets={} senders={} window={} secs={secs:.1} accepted_per_s={accepted:.0} \
         delivered_per_s={delivered:.0} p50_ms={:.3} p99_ms={:.3}",
        args.sockets,
        args.senders,
        args.window,
        pct(0.5),
        pct(0.99)
    );
    Ok(())
}
