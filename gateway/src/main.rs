//! `cinder`: the command-line entry point, listeners and routing. Owns sockets; depends on
//! `cinder-stateless` for running scripts.
//!
//! `cinder dev` reads wrangler configuration ([`config`]), starts the engine's [`Host`], serves
//! HTTP with axum ([`server`]), fires cron triggers ([`cron`]), serves the R2 buckets over the
//! S3 API when `--s3-port` is given (`cinder_r2::s3`), and shuts down gracefully on
//! SIGINT/SIGTERM: the listeners close, in-flight requests finish, then the process exits 0.
//! `cinder d1 …` ([`d1cmd`]) queries and migrates the same state's D1 databases.

use std::io::{IsTerminal, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use cinder_stateless::{Host, HostConfig, DEFAULT_HEAP_LIMIT_BYTES};
use clap::Parser;
use tokio::sync::watch;

mod bundle;
mod cli;
mod config;
mod cron;
mod d1cmd;
mod devvars;
mod jsonc;
mod listener;
mod migrations;
mod server;
mod websocket;

use cli::{Cli, Command, DevArgs};
use config::WorkerConfig;

/// wrangler dev's default port.
const DEFAULT_PORT: u16 = 8787;
/// How long in-flight requests get to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// The startup snapshot made by `build.rs`: every isolate starts from it, and with it the
/// binary reads nothing outside itself to start.
static SNAPSHOT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/snapshot.bin"));
/// The op and file lists the snapshot was made with (`cinder_stateless::snapshot::fingerprint`).
static SNAPSHOT_FINGERPRINT: &str = include_str!(concat!(env!("OUT_DIR"), "/snapshot.fingerprint"));

fn main() -> ExitCode {
    cinder_stateless::snapshot::use_prebuilt(SNAPSHOT, SNAPSHOT_FINGERPRINT);
    let cli = Cli::parse();
    // `cinder d1` prints wrangler's output; the engine's logs would only be noise there.
    init_tracing(if matches!(cli.command, Command::D1(_)) {
        "error"
    } else {
        "info,fjall=warn,lsm_tree=warn"
    });
    match cli.command {
        Command::D1(cmd) => d1cmd::run(cmd),
        Command::Serve(_) => {
            eprintln!(
                "error: `cinder serve` (cluster nodes) is not implemented yet; use `cinder dev` to run a project on one machine"
            );
            ExitCode::from(2)
        }
        Command::Dev(args) => {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("cinder-net")
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: could not start the network runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(dev(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(message) => {
                    eprintln!("error: {message}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_tracing(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

/// Reads the configs named on the command line: the positional target first, then each
/// `-c`, or the current directory when none is given.
fn load_workers(args: &DevArgs) -> Result<Vec<WorkerConfig>, String> {
    let mut targets: Vec<PathBuf> = args.target.iter().cloned().collect();
    targets.extend(args.configs.iter().cloned());
    if targets.is_empty() {
        targets.push(PathBuf::from("."));
    }
    let mut workers: Vec<WorkerConfig> = Vec::new();
    for target in &targets {
        let path = config::locate(target).map_err(|e| e.to_string())?;
        let cfg = config::load(&path, args.env.as_deref()).map_err(|e| e.to_string())?;
        for warning in &cfg.warnings {
            tracing::warn!("{warning}");
        }
        if let Some(other) = workers.iter().find(|w| w.spec.name == cfg.spec.name) {
            return Err(format!(
                "two workers named {:?} ({} and {}); names must differ within one run",
                cfg.spec.name,
                other.path.display(),
                cfg.path.display()
            ));
        }
        workers.push(cfg);
    }

    // A service binding can only reach a worker of this run; an unknown target is left out of
    // `env` with a warning rather than failing, as wrangler dev does for unstarted services.
    let names: Vec<String> = workers.iter().map(|w| w.spec.name.clone()).collect();
    for w in &mut workers {
        let file = w.path.display().to_string();
        w.spec.services.retain(|s| {
            let known = names.contains(&s.service);
            if !known {
                tracing::warn!(
                    "{file}: service binding {} -> worker {:?}: no such worker in this run, so env.{} is undefined (add it with -c path/to/its/wrangler.toml)",
                    s.binding, s.service, s.binding
                );
            }
            known
        });
    }

    if let Some(primary) = workers.first_mut() {
        for (key, value) in &args.vars {
            primary.spec.vars.retain(|(k, _)| k != key);
            primary
                .spec
                .vars
                .push((key.clone(), serde_json::Value::String(value.clone())));
        }
    }
    Ok(workers)
}

async fn dev(args: DevArgs) -> Result<(), String> {
    let mut workers = load_workers(&args)?;
    let primary = &workers[0];

    let persist_to = args
        .persist_to
        .clone()
        .unwrap_or_else(|| primary.spec.root.join(".cinder").join("state"));
    std::fs::create_dir_all(&persist_to).map_err(|e| {
        format!(
            "could not create the state directory {}: {e}",
            persist_to.display()
        )
    })?;
    for w in &mut workers {
        match bundle::prepare(&mut w.spec, w.no_bundle) {
            Ok(bundle::Prepared::AsIs) => {}
            Ok(bundle::Prepared::Bundled { with, out }) => tracing::info!(
                worker = %w.spec.name,
                "bundled with {with} into {}",
                out.display()
            ),
            Err(e) => return Err(e),
        }
        let mut warnings = Vec::new();
        w.spec.classes = migrations::apply(
            &persist_to,
            &w.spec.name,
            &w.path.display().to_string(),
            &w.migrations,
            &w.spec.durable_objects,
            &mut warnings,
        )?;
        for warning in warnings {
            tracing::warn!("{warning}");
        }
    }
    let primary = &workers[0];

    let ip = match (args.ip, &primary.dev_ip) {
        (Some(ip), _) => ip,
        (None, Some(text)) => parse_dev_ip(text).ok_or_else(|| {
            format!(
                "{}: [dev] ip = {text:?} is not an IP address",
                primary.path.display()
            )
        })?,
        (None, None) => IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    let port = args.port.or(primary.dev_port).unwrap_or(DEFAULT_PORT);
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(ip, port))
        .await
        .map_err(|e| format!("could not listen on {ip}:{port}: {e}"))?;
    let local_addr = listener
        .local_addr()
        .map_err(|e| format!("could not read the listening address: {e}"))?;
    let s3_listener = match args.s3_port {
        None => None,
        Some(p) => Some(
            tokio::net::TcpListener::bind(SocketAddr::new(ip, p))
                .await
                .map_err(|e| format!("could not listen on {ip}:{p} for --s3-port: {e}"))?,
        ),
    };

    let primary_name = primary.spec.name.clone();
    let default_cron = primary.spec.crons.first().cloned().unwrap_or_default();
    let triggers: Vec<(String, String)> = workers
        .iter()
        .flat_map(|w| {
            w.spec
                .crons
                .iter()
                .map(|c| (w.spec.name.clone(), c.clone()))
        })
        .collect();
    for w in &workers {
        tracing::info!(
            worker = %w.spec.name,
            config = %w.path.display(),
            "loading {}",
            w.spec.main.display()
        );
    }
    let host_config = HostConfig {
        workers: workers.into_iter().map(|w| w.spec).collect(),
        threads: args.threads.unwrap_or(0),
        allow_private_fetch: args.allow_private_fetch,
        heap_limit_bytes: DEFAULT_HEAP_LIMIT_BYTES,
        state_dir: Some(persist_to.clone()),
        durability: Default::default(),
        hibernate_after: args
            .hibernate_after_ms
            .map(Duration::from_millis)
            .unwrap_or(cinder_stateless::DEFAULT_HIBERNATE_AFTER),
        enable_r2: s3_listener.is_some(),
    };
    if args.allow_private_fetch {
        tracing::warn!("--allow-private-fetch: fetch() may reach loopback and private addresses");
    }
    // Loading scripts compiles and evaluates them; keep that off the async worker threads.
    let host = tokio::task::spawn_blocking(move || Host::start(host_config))
        .await
        .map_err(|e| format!("the engine panicked while starting: {e}"))?
        .map_err(|e| e.to_string())?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut crons = cron::spawn_all(&host, triggers, stop_rx.clone());

    let front = Arc::new(server::Front {
        host: host.clone(),
        primary: primary_name,
        default_cron,
        test_scheduled: args.test_scheduled,
        local_addr,
        max_body_bytes: args.max_body_mb.saturating_mul(1_000_000),
    });
    let app = server::router(front);
    let limits = listener::Limits {
        max_connections: args.max_connections,
        ..listener::Limits::default()
    };
    let server = tokio::spawn(listener::serve(listener, app, limits, stop_rx.clone()));

    let mut s3_server = None;
    if let Some(listener) = s3_listener {
        let r2 = host
            .r2()
            .ok_or("the S3 endpoint needs R2 storage, which the engine did not open")?;
        let s3_addr = listener
            .local_addr()
            .map_err(|e| format!("could not read the S3 listening address: {e}"))?;
        let router = cinder_r2::s3::s3_router(
            r2,
            cinder_r2::s3::S3Config {
                credentials: vec![cinder_r2::s3::Credentials {
                    access_key_id: args.s3_access_key_id.clone(),
                    secret_access_key: args.s3_secret_access_key.clone(),
                }],
                ..Default::default()
            },
        );
        let mut stop = stop_rx.clone();
        s3_server = Some(tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
        }));
        println!(
            "S3 API on http://{s3_addr} (access key id {:?})",
            args.s3_access_key_id
        );
    }

    println!("Ready on http://{local_addr}");
    // Tests and scripts wait for this line; make sure it leaves the process now.
    let _ = std::io::stdout().flush();

    let signal = shutdown_signal();
    tokio::pin!(signal);
    let mut server = server;
    let served = tokio::select! {
        name = &mut signal => {
            tracing::info!("{name} received: finishing in-flight requests");
            let _ = stop_tx.send(true);
            tokio::select! {
                r = &mut server => Some(r),
                _ = tokio::time::sleep(SHUTDOWN_GRACE) => {
                    tracing::warn!("in-flight requests still running after {}s; exiting anyway", SHUTDOWN_GRACE.as_secs());
                    None
                }
                name = shutdown_signal() => {
                    tracing::warn!("second {name}: exiting without waiting");
                    None
                }
            }
        }
        r = &mut server => Some(r),
    };
    let _ = stop_tx.send(true);
    if let Some(s3) = s3_server {
        if served.is_none() {
            // Exiting without waiting (grace expired, or a second signal).
            s3.abort();
        }
        // Bounded like the main server: a client holding a connection must not stall exit.
        match tokio::time::timeout(SHUTDOWN_GRACE, s3).await {
            Ok(Err(e)) if e.is_cancelled() => {}
            Ok(Ok(Err(e))) => tracing::warn!("S3 server error: {e}"),
            Ok(Err(e)) => tracing::warn!("S3 server task failed: {e}"),
            Err(_) => tracing::warn!("S3 requests still running at exit"),
            Ok(Ok(Ok(()))) => {}
        }
    }
    while crons.join_next().await.is_some() {}
    host.shutdown().await;
    match served {
        Some(Ok(Ok(()))) | None => {
            tracing::info!("stopped");
            Ok(())
        }
        Some(Ok(Err(e))) => Err(format!("server error: {e}")),
        Some(Err(e)) => Err(format!("server task failed: {e}")),
    }
}

/// `[dev] ip` may say "localhost" (wrangler's default), which we take as 127.0.0.1.
fn parse_dev_ip(text: &str) -> Option<IpAddr> {
    if text == "localhost" {
        return Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    text.parse().ok()
}

/// Resolves on SIGINT or SIGTERM with the signal's name.
async fn shutdown_signal() -> &'static str {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term => "SIGTERM",
    }
}
