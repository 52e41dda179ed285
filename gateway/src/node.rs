//! `node.toml`: what `cinder serve` runs — the node's listeners and state, and the wrangler
//! projects it hosts. The format is documented in the README ("cinder serve"); unknown keys
//! warn, as in wrangler configuration, and never fail the load.
//!
//! ```toml
//! [node]
//! listen = "0.0.0.0:8080"
//! state = "/var/lib/cinder"
//!
//! [[project]]
//! path = "/srv/shop"          # a project directory or its wrangler file
//! env = "production"          # optional [env.NAME] of that config
//! ```
//!
//! `[cluster]` is reserved for running the node as part of a cluster (not yet).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use cinder_stateless::Durability;
use serde::Deserialize;

use crate::config::{self, ConfigError, WorkerConfig};
use crate::routes::{RoutePattern, RouteTable};

/// The default public address of a node.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// A parsed `node.toml`, its relative paths resolved against the file's directory.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub listen: SocketAddr,
    pub state: Option<PathBuf>,
    pub threads: usize,
    pub durability: Durability,
    pub allow_private_fetch: bool,
    pub max_body_mb: u64,
    pub max_connections: usize,
    pub hibernate_after_ms: Option<u64>,
    /// Where `/metrics` and `/healthz` are served.
    pub admin: Option<SocketAddr>,
    pub projects: Vec<ProjectEntry>,
    pub warnings: Vec<String>,
}

/// One `[[project]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectEntry {
    pub path: PathBuf,
    pub env: Option<String>,
    /// Replaces the wrangler `name` (two projects may both be called "worker").
    pub name: Option<String>,
    /// Replaces the wrangler `route` / `routes` when given.
    pub routes: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
struct RawNode {
    node: Option<RawNodeSection>,
    #[serde(default)]
    project: Vec<RawProject>,
    cluster: Option<toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
struct RawNodeSection {
    listen: Option<String>,
    state: Option<PathBuf>,
    threads: Option<usize>,
    durability: Option<String>,
    allow_private_fetch: Option<bool>,
    max_body_mb: Option<u64>,
    max_connections: Option<usize>,
    hibernate_after_ms: Option<u64>,
    admin: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawProject {
    path: PathBuf,
    env: Option<String>,
    name: Option<String>,
    routes: Option<Vec<String>>,
}

/// Reads and checks `node.toml`.
pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

fn parse(path: &Path, text: &str) -> Result<NodeConfig, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let mut unknown = Vec::new();
    let de = toml::de::Deserializer::parse(text).map_err(|e| invalid(e.message().to_string()))?;
    let raw: RawNode = serde_ignored::deserialize(de, |p| unknown.push(p.to_string()))
        .map_err(|e| invalid(e.message().trim().to_string()))?;
    let mut warnings: Vec<String> = unknown
        .into_iter()
        .map(|k| {
            format!(
                "{}: unknown key `{}` ignored",
                path.display(),
                k.replace("?.", "")
            )
        })
        .collect();
    if raw.cluster.is_some() {
        warnings.push(format!(
            "{}: [cluster] is not supported yet; this node runs alone",
            path.display()
        ));
    }
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let node = raw.node.unwrap_or_default();
    let listen_text = node.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let listen = listen_text.parse::<SocketAddr>().map_err(|_| {
        invalid(format!(
            "[node] listen = {listen_text:?} is not an address like \"0.0.0.0:8080\""
        ))
    })?;
    let durability = match node.durability.as_deref() {
        None | Some("fsync") => Durability::Fsync,
        Some("process") => Durability::Process,
        Some(other) => {
            return Err(invalid(format!(
                "[node] durability = {other:?}: expected \"fsync\" or \"process\""
            )))
        }
    };
    let admin = match node.admin.as_deref() {
        None => None,
        Some(text) => Some(text.parse::<SocketAddr>().map_err(|_| {
            invalid(format!(
                "[node] admin = {text:?} is not an address like \"127.0.0.1:9787\""
            ))
        })?),
    };
    if raw.project.is_empty() {
        return Err(invalid(
            "no [[project]]: add one per wrangler project, e.g. [[project]] path = \"../shop\""
                .to_string(),
        ));
    }
    let projects = raw
        .project
        .into_iter()
        .map(|p| ProjectEntry {
            path: base.join(p.path),
            env: p.env,
            name: p.name,
            routes: p.routes,
        })
        .collect();
    Ok(NodeConfig {
        listen,
        state: node.state.map(|s| base.join(s)),
        threads: node.threads.unwrap_or(0),
        durability,
        allow_private_fetch: node.allow_private_fetch.unwrap_or(false),
        max_body_mb: node.max_body_mb.unwrap_or(100),
        max_connections: node.max_connections.unwrap_or(10_000),
        hibernate_after_ms: node.hibernate_after_ms,
        admin,
        projects,
        warnings,
    })
}

/// Reads one project's wrangler configuration as the node runs it: `name` and routes replaced
/// when the node file says so.
pub fn load_project(entry: &ProjectEntry) -> Result<WorkerConfig, ConfigError> {
    let path = config::locate(&entry.path)?;
    let mut cfg = config::load(&path, entry.env.as_deref())?;
    if let Some(name) = &entry.name {
        cfg.spec.name = name.clone();
    }
    if let Some(routes) = &entry.routes {
        cfg.routes = routes
            .iter()
            .map(|r| RoutePattern::parse(r, false))
            .collect::<Result<_, _>>()
            .map_err(|message| ConfigError::Invalid {
                path: path.clone(),
                message,
            })?;
    }
    Ok(cfg)
}

/// The node's route table: every project's routes and custom domains.
pub fn route_table(workers: &[WorkerConfig]) -> Result<RouteTable, String> {
    let mut table = RouteTable::default();
    for w in workers {
        for r in &w.routes {
            table.add(r.clone(), &w.spec.name)?;
        }
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_complete_file_parses_and_paths_resolve_against_it() {
        let cfg = parse(
            Path::new("/etc/cinder/node.toml"),
            r#"
[node]
listen = "0.0.0.0:9000"
state = "state"
threads = 2
durability = "process"
colour = "blue"

[[project]]
path = "shop"
env = "production"
routes = ["shop.example.com/*"]

[[project]]
path = "/srv/blog"
name = "blog"

[cluster]
peers = []
"#,
        )
        .unwrap();
        assert_eq!(cfg.listen, "0.0.0.0:9000".parse::<SocketAddr>().unwrap());
        assert_eq!(cfg.state, Some(PathBuf::from("/etc/cinder/state")));
        assert_eq!(cfg.durability, Durability::Process);
        assert_eq!(cfg.projects[0].path, PathBuf::from("/etc/cinder/shop"));
        assert_eq!(cfg.projects[1].path, PathBuf::from("/srv/blog"));
        assert_eq!(cfg.projects[1].name.as_deref(), Some("blog"));
        let all = cfg.warnings.join("\n");
        assert!(all.contains("unknown key `node.colour`"), "{all}");
        assert!(all.contains("[cluster] is not supported yet"), "{all}");
    }

    #[test]
    fn bad_values_say_what_is_expected() {
        let p = Path::new("node.toml");
        let err = parse(p, "[[project]]\npath = \"a\"\n[node]\nlisten = \"nope\"\n").unwrap_err();
        assert!(err.to_string().contains("not an address"), "{err}");
        let err = parse(p, "[node]\nlisten = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(err.to_string().contains("no [[project]]"), "{err}");
        let err = parse(
            p,
            "[[project]]\npath = \"a\"\n[node]\ndurability = \"maybe\"\n",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("\"fsync\" or \"process\""),
            "{err}"
        );
    }
}
