//! `cinder`: the command-line entry point, listeners and routing. Owns sockets; depends on
//! `cinder-stateless` for running scripts.
//!
//! `cinder dev` reads wrangler configuration ([`config`]), starts the engine's [`Host`], serves
//! HTTP with axum ([`server`]), fires cron triggers ([`cron`]), serves the R2 buckets over the
//! S3 API when `--s3-port` is given (`cinder_r2::s3`), and shuts down gracefully on
//! SIGINT/SIGTERM: the listeners close, in-flight requests finish, then the process exits 0.
//! `cinder serve --config node.toml` ([`serve`]) hosts several projects on one node, routed by
//! their wrangler routes ([`routes`]), and deploys new code on SIGHUP without dropping requests.
//! Both run through [`run`]. `cinder d1 …` ([`d1cmd`]) queries and migrates the same state's
//! D1 databases.

use std::io::IsTerminal;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

mod admin;
mod bundle;
mod cli;
mod config;
mod cron;
mod d1cmd;
mod devvars;
mod docmd;
mod jsonc;
mod listener;
mod migrations;
mod node;
mod routes;
mod run;
mod serve;
mod server;
mod v8wire;
mod websocket;

use cli::{Cli, Command, DevArgs, LogFormat};
use config::WorkerConfig;

/// wrangler dev's default port.
const DEFAULT_PORT: u16 = 8787;

/// The startup snapshot made by `build.rs`: every isolate starts from it, and with it the
/// binary reads nothing outside itself to start.
static SNAPSHOT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/snapshot.bin"));
/// The op and file lists the snapshot was made with (`cinder_stateless::snapshot::fingerprint`).
static SNAPSHOT_FINGERPRINT: &str = include_str!(concat!(env!("OUT_DIR"), "/snapshot.fingerprint"));

fn main() -> ExitCode {
    cinder_stateless::snapshot::use_prebuilt(SNAPSHOT, SNAPSHOT_FINGERPRINT);
    let cli = Cli::parse();
    // `cinder d1` and `cinder do` print results; the engine's logs would only be noise there.
    init_tracing(
        if matches!(cli.command, Command::D1(_) | Command::Do(_)) {
            "error"
        } else {
            "info,fjall=warn,lsm_tree=warn"
        },
        cli.log_format,
    );
    match cli.command {
        Command::D1(cmd) => d1cmd::run(cmd),
        Command::Do(cmd) => docmd::run(cmd),
        Command::Serve(args) => block_on(serve::serve(args)),
        Command::Dev(args) => block_on(dev(args)),
    }
}

/// Runs a node command on the network runtime; its error becomes `error: ...` and exit 1.
fn block_on(node: impl std::future::Future<Output = Result<(), String>>) -> ExitCode {
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
    match runtime.block_on(node) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(default_filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false)
            .init(),
        // One JSON object per line, the event's fields at the top level next to `timestamp`,
        // `level`, `target` and `message`: what log shippers index without configuration.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_ansi(false)
            .init(),
    }
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
    run::prepare_workers(&mut workers, &persist_to)?;
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
    let primary_name = primary.spec.name.clone();
    let default_cron = primary.spec.crons.first().cloned().unwrap_or_default();
    if args.allow_private_fetch {
        tracing::warn!("--allow-private-fetch: fetch() may reach loopback and private addresses");
    }
    run::run(run::Plan {
        workers,
        listen: SocketAddr::new(ip, port),
        state_dir: persist_to,
        threads: args.threads.unwrap_or(0),
        allow_private_fetch: args.allow_private_fetch,
        durability: Default::default(),
        hibernate_after: args
            .hibernate_after_ms
            .map(Duration::from_millis)
            .unwrap_or(cinder_stateless::DEFAULT_HIBERNATE_AFTER),
        max_body_mb: args.max_body_mb,
        max_connections: args.max_connections,
        kv_clock_offset_ms: args.kv_clock_offset.saturating_mul(1000),
        admin: args.admin,
        s3: args.s3_port.map(|port| run::S3Plan {
            listen: SocketAddr::new(ip, port),
            access_key_id: args.s3_access_key_id.clone(),
            secret_access_key: args.s3_secret_access_key.clone(),
        }),
        dispatch: server::Dispatch::Primary(primary_name),
        default_cron,
        test_scheduled: args.test_scheduled,
        reload: None,
    })
    .await
}

/// `[dev] ip` may say "localhost" (wrangler's default), which we take as 127.0.0.1.
fn parse_dev_ip(text: &str) -> Option<IpAddr> {
    if text == "localhost" {
        return Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    text.parse().ok()
}
