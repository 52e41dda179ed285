//! Running a node: what `cinder dev` and `cinder serve` share once their configuration is read.
//! Prepares each worker (bundling, Durable Object migrations), starts the engine's [`Host`],
//! the HTTP listener, cron triggers and the optional S3 endpoint, prints the `Ready on` line,
//! and shuts down gracefully on SIGINT/SIGTERM: the listeners close, in-flight requests finish
//! (bounded), then the engine stops.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cinder_stateless::{Durability, Host, HostConfig, DEFAULT_HEAP_LIMIT_BYTES};
use tokio::sync::watch;

use crate::config::WorkerConfig;
use crate::{admin, bundle, cron, listener, migrations, server};

/// How long in-flight requests get to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Everything one run of a node needs.
pub struct Plan {
    /// Prepared with [`prepare_workers`].
    pub workers: Vec<WorkerConfig>,
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    pub threads: usize,
    pub allow_private_fetch: bool,
    pub durability: Durability,
    pub hibernate_after: Duration,
    pub max_body_mb: u64,
    pub max_connections: usize,
    /// Test knob (`cinder dev --kv-clock-offset`): KV's clock runs this far ahead.
    pub kv_clock_offset_ms: i64,
    /// Where `/metrics` and `/healthz` are served (never the public listener).
    pub admin: Option<SocketAddr>,
    pub s3: Option<S3Plan>,
    pub dispatch: server::Dispatch,
    /// The cron pattern `/cdn-cgi/handler/scheduled` uses when it names none.
    pub default_cron: String,
    pub test_scheduled: bool,
    /// `cinder serve`: what SIGHUP reloads.
    pub reload: Option<crate::serve::Reload>,
}

/// The S3 endpoint's address and the one credential it accepts.
pub struct S3Plan {
    pub listen: SocketAddr,
    pub access_key_id: String,
    pub secret_access_key: String,
}

/// Bundles each worker that needs it and applies its Durable Object migrations against the
/// state directory (created if missing).
pub fn prepare_workers(workers: &mut [WorkerConfig], state_dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(state_dir).map_err(|e| {
        format!(
            "could not create the state directory {}: {e}",
            state_dir.display()
        )
    })?;
    for w in workers {
        prepare_worker(w, state_dir)?;
    }
    Ok(())
}

/// [`prepare_workers`] for one worker.
pub fn prepare_worker(w: &mut WorkerConfig, state_dir: &Path) -> Result<(), String> {
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
        state_dir,
        &w.spec.name,
        &w.path.display().to_string(),
        &w.migrations,
        &w.spec.durable_objects,
        &mut warnings,
    )?;
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    Ok(())
}

/// Runs the node until a shutdown signal.
pub async fn run(plan: Plan) -> Result<(), String> {
    let Plan {
        workers,
        listen,
        state_dir,
        threads,
        allow_private_fetch,
        durability,
        hibernate_after,
        max_body_mb,
        max_connections,
        kv_clock_offset_ms,
        admin,
        s3,
        dispatch,
        default_cron,
        test_scheduled,
        reload,
    } = plan;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("could not listen on {listen}: {e}"))?;
    let local_addr = listener
        .local_addr()
        .map_err(|e| format!("could not read the listening address: {e}"))?;
    // The admin listener is its own socket: metrics never leak onto the public address.
    let admin_listener = match admin {
        None => None,
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("could not listen on {addr} for the admin endpoint: {e}"))?,
        ),
    };
    let s3_listener = match &s3 {
        None => None,
        Some(p) => Some(
            tokio::net::TcpListener::bind(p.listen)
                .await
                .map_err(|e| format!("could not listen on {} for S3: {e}", p.listen))?,
        ),
    };

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
        threads,
        allow_private_fetch,
        heap_limit_bytes: DEFAULT_HEAP_LIMIT_BYTES,
        state_dir: Some(state_dir),
        durability,
        hibernate_after,
        enable_r2: s3_listener.is_some(),
        kv_clock_offset_ms,
    };
    // Loading scripts compiles and evaluates them; keep that off the async worker threads.
    let host = tokio::task::spawn_blocking(move || Host::start(host_config))
        .await
        .map_err(|e| format!("the engine panicked while starting: {e}"))?
        .map_err(|e| e.to_string())?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut crons = cron::spawn_all(&host, triggers, stop_rx.clone());

    let mut metrics = None;
    let mut admin_server = None;
    if let Some(listener) = admin_listener {
        let m = Arc::new(admin::Metrics::new(host.clone()));
        let addr = listener
            .local_addr()
            .map_err(|e| format!("could not read the admin listening address: {e}"))?;
        let router = admin::router(m.clone());
        let mut stop = stop_rx.clone();
        admin_server = Some(tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
        }));
        metrics = Some(m);
        println!("Admin (/metrics, /healthz) on http://{addr}");
    }

    let front = Arc::new(server::Front {
        host: host.clone(),
        dispatch,
        metrics,
        default_cron,
        test_scheduled,
        local_addr,
        max_body_bytes: max_body_mb.saturating_mul(1_000_000),
    });
    let app = server::router(front.clone());
    let limits = listener::Limits {
        max_connections,
        ..listener::Limits::default()
    };
    let server = tokio::spawn(listener::serve(listener, app, limits, stop_rx.clone()));
    let reloader = reload.map(|r| tokio::spawn(r.on_sighup(front.clone(), stop_rx.clone())));

    let mut s3_server = None;
    if let (Some(listener), Some(plan)) = (s3_listener, s3) {
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
                    access_key_id: plan.access_key_id.clone(),
                    secret_access_key: plan.secret_access_key,
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
            plan.access_key_id
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
    if let Some(admin) = admin_server {
        // A scraper holding a keep-alive connection must not stall exit.
        admin.abort();
        let _ = admin.await;
    }
    if let Some(r) = reloader {
        // A redeploy in progress finishes or is cut here; either way the engine stops next.
        r.abort();
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
