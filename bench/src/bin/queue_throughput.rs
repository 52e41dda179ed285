//! Queues benchmark (issue 15): messages per second end to end, from the first `send` to the
//! consumer's ack of the last message, with `Durability::Fsync` (a send resolves once its
//! messages are durable). The consumer acks every batch at once, so the figure is the queue's
//! own cost: durable enqueue, batching, delivery, and the durable removal of acked messages.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cinder_core::{Runtime, RuntimeConfig};
use cinder_queues::{
    BatchOutcome, ConsumerSettings, MessageBatch, OutgoingMessage, Queues, QueuesConfig,
};
use cinder_storage::{Store, StoreConfig};
use clap::Parser;
use futures::future::BoxFuture;
use tokio::sync::Notify;

#[derive(Parser, Debug)]
#[command(about = "Queues: messages/s end to end")]
struct Args {
    /// Messages sent with sendBatch.
    #[arg(long, default_value_t = 100_000)]
    batched: usize,
    /// Messages sent one by one with send.
    #[arg(long, default_value_t = 20_000)]
    single: usize,
    /// Concurrent producers.
    #[arg(long, default_value_t = 32)]
    producers: usize,
    /// Body size in bytes.
    #[arg(long, default_value_t = 100)]
    body_bytes: usize,
    /// Consumer max_batch_size.
    #[arg(long, default_value_t = 100)]
    consumer_batch: u32,
    /// Executor threads of the actor runtime.
    #[arg(long, default_value_t = 2)]
    executors: usize,
    /// Directory for the data (default: a temp dir under the current directory).
    #[arg(long)]
    dir: Option<PathBuf>,
}

struct Counter {
    acked: AtomicUsize,
    batches: AtomicUsize,
    target: AtomicUsize,
    done: Notify,
}

async fn run(
    q: &Queues,
    name: &str,
    args: &Args,
    total: usize,
    per_send: usize,
) -> (f64, f64, f64) {
    let counter = Arc::new(Counter {
        acked: AtomicUsize::new(0),
        batches: AtomicUsize::new(0),
        target: AtomicUsize::new(total),
        done: Notify::new(),
    });
    let c = counter.clone();
    let consumer = move |batch: MessageBatch| -> BoxFuture<'static, BatchOutcome> {
        let n = batch.messages.len();
        c.batches.fetch_add(1, Ordering::Relaxed);
        let now = c.acked.fetch_add(n, Ordering::SeqCst) + n;
        if now >= c.target.load(Ordering::SeqCst) {
            c.done.notify_one();
        }
        Box::pin(async { BatchOutcome::ok() })
    };
    q.set_consumer(
        name,
        ConsumerSettings {
            max_batch_size: args.consumer_batch,
            max_batch_timeout: Duration::ZERO,
            ..Default::default()
        },
        Arc::new(consumer),
    )
    .await
    .expect("consumer");
    let queue = q.queue(name);
    let body = Bytes::from(vec![b'm'; args.body_bytes]);
    let start = Instant::now();
    let sends = total / per_send;
    let next = Arc::new(AtomicUsize::new(0));
    let producers: Vec<_> = (0..args.producers)
        .map(|_| {
            let (queue, body, next) = (queue.clone(), body.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    if next.fetch_add(1, Ordering::Relaxed) >= sends {
                        break;
                    }
                    let msg = OutgoingMessage::new(body.clone(), "bytes");
                    if per_send == 1 {
                        queue.send(msg).await.expect("send");
                    } else {
                        let batch = vec![msg; per_send];
                        queue.send_batch(&batch, None).await.expect("sendBatch");
                    }
                }
            })
        })
        .collect();
    for p in producers {
        p.await.expect("producer");
    }
    let sent = start.elapsed();
    let notified = counter.done.notified();
    if counter.acked.load(Ordering::SeqCst) < total {
        notified.await;
    }
    let all = start.elapsed();
    let batches = counter.batches.load(Ordering::Relaxed);
    (
        total as f64 / sent.as_secs_f64(),
        total as f64 / all.as_secs_f64(),
        total as f64 / batches.max(1) as f64,
    )
}

fn main() {
    let args = Args::parse();
    let tmp = match &args.dir {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir_in("."),
    }
    .expect("temp dir");
    let store = Store::open(tmp.path(), StoreConfig::default()).expect("store");
    let q = Queues::new(QueuesConfig::default());
    let rt = Runtime::start(
        store,
        RuntimeConfig {
            threads: args.executors,
            ..RuntimeConfig::default()
        },
        q.namespaces(),
    )
    .expect("runtime");
    q.attach(&rt).expect("attach");
    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio");
    client.block_on(async {
        println!(
            "Queues bench: {} B bodies, {} producers, consumer max_batch_size {}, {} executor threads, Durability::Fsync",
            args.body_bytes, args.producers, args.consumer_batch, args.executors
        );
        let (send, e2e, per_batch) = run(&q, "batched", &args, args.batched, 100).await;
        println!(
            "sendBatch(100) x {}: sent {send:.0} msg/s, end to end {e2e:.0} msg/s, {per_batch:.1} msgs per consumer batch",
            args.batched / 100
        );
        let (send, e2e, per_batch) = run(&q, "single", &args, args.single, 1).await;
        println!(
            "send() x {}: sent {send:.0} msg/s, end to end {e2e:.0} msg/s, {per_batch:.1} msgs per consumer batch",
            args.single
        );
    });
    drop(client);
    rt.shutdown();
}
