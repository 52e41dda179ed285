//! `cinder-r2-server`: R2 buckets behind the S3 API, standalone (no Workers). Used by the
//! tests that need the server in its own process (RSS, kill -9) and by the throughput
//! benchmark. The `cinder` binary mounts the same router itself.

use std::net::SocketAddr;
use std::path::PathBuf;

use cinder_r2::s3::{s3_router, Credentials, S3Config};
use cinder_r2::R2Engine;
use cinder_storage::{Durability, Store, StoreConfig};
use clap::Parser;

#[derive(Parser)]
#[command(about = "Serve R2 buckets over the S3 API")]
struct Args {
    /// State directory (metadata store and blobs live under it).
    #[arg(long)]
    dir: PathBuf,
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    #[arg(long, default_value = "cinder")]
    access_key: String,
    #[arg(long, default_value = "cinder-secret")]
    secret_key: String,
    /// Base domain for virtual-host-style requests (repeatable).
    #[arg(long, default_value = "localhost")]
    domain: Vec<String>,
    /// `fsync` (survives power loss) or `process` (survives a process crash).
    #[arg(long, default_value = "fsync")]
    durability: String,
    /// Buckets to create at start (like wrangler `r2_buckets`).
    #[arg(long)]
    bucket: Vec<String>,
    /// Executor threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("cinder-r2-server: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let durability = match args.durability.as_str() {
        "fsync" => Durability::Fsync,
        "process" => Durability::Process,
        other => return Err(format!("unknown durability {other:?} (fsync or process)").into()),
    };
    let store = Store::open(
        &args.dir.join("store"),
        StoreConfig {
            durability,
            ..Default::default()
        },
    )?;
    let engine = R2Engine::open_with(&args.dir.join("blobs"), durability)?;
    let mut cfg = cinder_core::RuntimeConfig::default();
    if let Some(t) = args.threads {
        cfg.threads = t;
    }
    let runtime = cinder_core::Runtime::start(store, cfg, engine.namespaces())?;
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let rt = runtime.clone();
    tokio.block_on(async move {
        let r2 = engine.start(&rt).await?;
        for b in &args.bucket {
            r2.ensure_bucket(b).await?;
        }
        let router = s3_router(
            r2,
            S3Config {
                credentials: vec![Credentials {
                    access_key_id: args.access_key,
                    secret_access_key: args.secret_key,
                }],
                domains: args.domain,
                region: "auto".into(),
            },
        );
        let listener = tokio::net::TcpListener::bind(args.listen).await?;
        println!("listening on http://{}", listener.local_addr()?);
        use std::io::Write;
        std::io::stdout().flush()?;
        axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        Ok::<(), Box<dyn std::error::Error>>(())
    })?;
    runtime.shutdown();
    Ok(())
}
