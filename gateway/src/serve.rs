//! `cinder serve --config node.toml`: one production node hosting several wrangler projects,
//! each under its own name, routed by its `routes` / `route` patterns and custom domains
//! ([`crate::routes`]), state under one directory.
//!
//! Deploys without downtime: on SIGHUP the node reads `node.toml` and every project's config
//! again, and each project whose files changed is switched to its new code with
//! [`Host::redeploy`](cinder_stateless::Host::redeploy) — requests already running finish on the
//! old version, new ones start on the new one, its Durable Objects are reset once (storage
//! kept). Route changes apply with the same reload. Adding or removing a project, or changing
//! its Durable Object classes or buckets, needs a restart (the reload says so).

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Mutex};

use crate::cli::ServeArgs;
use crate::config::WorkerConfig;
use crate::node::{self, NodeConfig};
use crate::run::{self, Plan};
use crate::server::{Dispatch, Front};

pub async fn serve(args: ServeArgs) -> Result<(), String> {
    let node_path = args.config.clone();
    let node = node::load(&node_path).map_err(|e| e.to_string())?;
    for w in &node.warnings {
        tracing::warn!("{w}");
    }
    let state_dir = args
        .state
        .clone()
        .or_else(|| node.state.clone())
        .ok_or_else(|| {
            format!(
                "no state directory: pass --state DIR or set [node] state in {}",
                node_path.display()
            )
        })?;
    let mut workers = Vec::with_capacity(node.projects.len());
    let mut fingerprints = HashMap::new();
    for entry in &node.projects {
        let cfg = node::load_project(entry).map_err(|e| e.to_string())?;
        for w in &cfg.warnings {
            tracing::warn!("{w}");
        }
        if let Some(other) = workers
            .iter()
            .find(|w: &&WorkerConfig| w.spec.name == cfg.spec.name)
        {
            return Err(format!(
                "two projects are named {:?} ({} and {}); give one a `name` in {}",
                cfg.spec.name,
                other.path.display(),
                cfg.path.display(),
                node_path.display()
            ));
        }
        if cfg.routes.is_empty() {
            tracing::warn!(
                worker = %cfg.spec.name,
                "{}: no `routes`; the project gets no outside traffic (service bindings still reach it)",
                cfg.path.display()
            );
        }
        fingerprints.insert(cfg.spec.name.clone(), fingerprint(&cfg));
        workers.push(cfg);
    }
    let table = node::route_table(&workers)?;
    for (pattern, worker) in table.patterns() {
        tracing::info!(%worker, "route {}", pattern.text);
    }
    run::prepare_workers(&mut workers, &state_dir)?;
    let listen = args.listen.unwrap_or(node.listen);
    run::run(Plan {
        workers,
        listen,
        state_dir: state_dir.clone(),
        threads: node.threads,
        allow_private_fetch: node.allow_private_fetch,
        durability: node.durability,
        hibernate_after: node
            .hibernate_after_ms
            .map(Duration::from_millis)
            .unwrap_or(cinder_stateless::DEFAULT_HIBERNATE_AFTER),
        max_body_mb: node.max_body_mb,
        max_connections: node.max_connections,
        kv_clock_offset_ms: 0,
        admin: args.admin.or(node.admin),
        s3: None,
        dispatch: Dispatch::Routes(std::sync::RwLock::new(Arc::new(table))),
        default_cron: String::new(),
        test_scheduled: false,
        reload: Some(Reload {
            node_path,
            state_dir,
            fingerprints: Mutex::new(fingerprints),
        }),
    })
    .await
}

/// What a reload needs: where the configuration is, and what each running project's files
/// looked like when it was last deployed.
pub struct Reload {
    node_path: PathBuf,
    state_dir: PathBuf,
    fingerprints: Mutex<HashMap<String, u64>>,
}

impl Reload {
    /// Reloads on every SIGHUP until the node stops.
    pub async fn on_sighup(self, front: Arc<Front>, mut stop: watch::Receiver<bool>) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot listen for SIGHUP, so no reloads: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                got = hup.recv() => if got.is_none() { return },
                _ = stop.wait_for(|s| *s) => return,
            }
            tracing::info!("SIGHUP: reloading {}", self.node_path.display());
            match self.reload(&front).await {
                Ok(summary) => tracing::info!("reload done: {summary}"),
                Err(e) => tracing::error!("reload failed, the node keeps its current code: {e}"),
            }
        }
    }

    /// Reads the configuration again, redeploys changed projects and swaps the route table.
    async fn reload(&self, front: &Front) -> Result<String, String> {
        let node: NodeConfig = node::load(&self.node_path).map_err(|e| e.to_string())?;
        let mut known = self.fingerprints.lock().await;
        let mut workers = Vec::new();
        let mut deployed = Vec::new();
        let mut unchanged = Vec::new();
        for entry in &node.projects {
            let mut cfg = node::load_project(entry).map_err(|e| e.to_string())?;
            let name = cfg.spec.name.clone();
            let Some(before) = known.get(&name).copied() else {
                tracing::warn!(
                    worker = %name,
                    "{}: a new project is started by restarting the node, not by a reload",
                    cfg.path.display()
                );
                continue;
            };
            let now = fingerprint(&cfg);
            if now != before {
                run::prepare_worker(&mut cfg, &self.state_dir)?;
                front
                    .host
                    .redeploy(cfg.spec.clone())
                    .await
                    .map_err(|e| format!("{name}: {e}"))?;
                known.insert(name.clone(), now);
                deployed.push(name);
            } else {
                unchanged.push(name);
            }
            workers.push(cfg);
        }
        for name in known.keys() {
            if !workers.iter().any(|w| &w.spec.name == name) {
                tracing::warn!(
                    worker = %name,
                    "no longer in {}, but a running project is only removed by restarting the node",
                    self.node_path.display()
                );
            }
        }
        let table = node::route_table(&workers)?;
        if let Dispatch::Routes(lock) = &front.dispatch {
            match lock.write() {
                Ok(mut t) => *t = Arc::new(table),
                Err(poisoned) => *poisoned.into_inner() = Arc::new(table),
            }
        }
        Ok(format!(
            "deployed [{}], unchanged [{}]",
            deployed.join(", "),
            unchanged.join(", ")
        ))
    }
}

/// What decides whether a project changed: its configuration as read, and the path, size and
/// modification time of every file under its directory (dependencies and build output left
/// out: `node_modules`, `.git`, `.cinder`, `.wrangler`).
fn fingerprint(cfg: &WorkerConfig) -> u64 {
    let mut files = BTreeMap::new();
    collect_files(&cfg.spec.root, &mut files, 0);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    format!("{:?}", cfg.spec).hash(&mut h);
    format!("{:?}", cfg.routes).hash(&mut h);
    files.hash(&mut h);
    h.finish()
}

fn collect_files(dir: &Path, out: &mut BTreeMap<PathBuf, (u64, u128)>, depth: usize) {
    const SKIP: [&str; 4] = ["node_modules", ".git", ".cinder", ".wrangler"];
    if depth > 16 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            let skip = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| SKIP.contains(&n));
            if !skip {
                collect_files(&path, out, depth + 1);
            }
        } else {
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            out.insert(path, (meta.len(), mtime));
        }
    }
}
