//! `cinder do list|get`: what the Durable Objects of a state directory hold, read without
//! running any code: namespaces, object ids, keys and bytes per object, and stored values
//! decoded from V8's serialization format ([`crate::v8wire`]) to JSON.
//!
//! Works on a stopped node's state and, read-only, on a running one's (through a snapshot
//! copy: [`cinder_storage::inspect`]). Which namespace an object belongs to is not stored with
//! every object; it is recovered from the id itself: an id carries a MAC keyed by its
//! namespace, so checking it against each namespace the state knows of (the classes recorded
//! in `durable-object-migrations.json`, and the node's internal namespaces) names the owner.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use cinder_core::IdFactory;
use cinder_storage::inspect::{ObjectSummary, StoreView, ViewKind};
use serde_json::{json, Value};

use crate::cli::{DoCommand, DoGetArgs, DoListArgs};

/// Namespaces of the node's own services (no worker declares them).
const INTERNAL_NAMESPACES: &[&str] = &[
    cinder_d1::NAMESPACE,
    cinder_r2::service::BUCKET_NAMESPACE,
    cinder_r2::service::REGISTRY_NAMESPACE,
    // cinder-kv's and cinder-queues' INTERNAL_NAMESPACE (not dependencies of the gateway).
    "cinder:kv",
    "cinder:queue",
];

/// What `cinder do` prints for an object whose namespace no known one accepts.
const UNKNOWN_NAMESPACE: &str = "(unknown)";

/// The core's record of an object's namespace (`cinder_core`'s `META_NAMESPACE_KEY`).
const META_NAMESPACE_KEY: &[u8] = b"namespace";

pub fn run(cmd: DoCommand) -> ExitCode {
    let result = match cmd {
        DoCommand::List(args) => list(&args),
        DoCommand::Get(args) => get(&args),
    };
    match result {
        Ok(text) => {
            print!("{text}");
            let _ = std::io::stdout().flush();
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// A namespace this state knows of.
struct Known {
    /// Its key: `worker/Class` for a worker's class, `cinder:…` for internal ones.
    key: String,
    /// The class name, for a worker's class.
    class: Option<String>,
    ids: IdFactory,
}

struct State {
    view: StoreView,
    namespaces: Vec<Known>,
}

impl State {
    fn open(dir: &Path) -> Result<State, String> {
        if !dir.is_dir() {
            return Err(format!("{} is not a directory", dir.display()));
        }
        let view = StoreView::open(&dir.join("store")).map_err(|e| e.to_string())?;
        if view.kind() == ViewKind::SnapshotOfRunning {
            eprintln!(
                "note: a running node holds {}; showing a snapshot of what it had made durable",
                dir.display()
            );
        }
        let mut namespaces = Vec::new();
        for (key, class) in recorded_classes(dir)? {
            namespaces.push(Known {
                ids: IdFactory::from_unique_key(&key),
                key,
                class: Some(class),
            });
        }
        for key in INTERNAL_NAMESPACES {
            namespaces.push(Known {
                key: key.to_string(),
                class: None,
                ids: IdFactory::from_unique_key(key),
            });
        }
        Ok(State { view, namespaces })
    }

    /// The namespace key owning `o`.
    fn owner(&self, o: &ObjectSummary) -> String {
        if let Some((_, v)) = o.meta.iter().find(|(k, _)| k == META_NAMESPACE_KEY) {
            return String::from_utf8_lossy(v).into_owned();
        }
        self.namespaces
            .iter()
            .find(|n| n.ids.id_from_bytes(o.id).is_ok())
            .map(|n| n.key.clone())
            .unwrap_or_else(|| UNKNOWN_NAMESPACE.to_string())
    }

    /// The namespace a command-line argument names: a key (`worker/Class`) or a class name
    /// that only one worker has.
    fn resolve(&self, arg: &str) -> Result<&Known, String> {
        if let Some(n) = self.namespaces.iter().find(|n| n.key == arg) {
            return Ok(n);
        }
        let by_class: Vec<&Known> = self
            .namespaces
            .iter()
            .filter(|n| n.class.as_deref() == Some(arg))
            .collect();
        match by_class.as_slice() {
            [one] => Ok(one),
            [] => Err(format!(
                "no Durable Object namespace {arg:?} in this state; known: {}",
                self.namespaces
                    .iter()
                    .filter(|n| n.class.is_some())
                    .map(|n| n.key.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            many => Err(format!(
                "class {arg:?} exists in several workers ({}); name it as worker/Class",
                many.iter()
                    .map(|n| n.key.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
}

/// `(namespace key, class name)` of every class recorded by migrations in the state dir.
fn recorded_classes(dir: &Path) -> Result<Vec<(String, String)>, String> {
    let path = dir.join("durable-object-migrations.json");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("could not read {}: {e}", path.display())),
    };
    let all: Value = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{}: unreadable ({e})", path.display()))?;
    let mut out = Vec::new();
    for worker in all.as_object().into_iter().flat_map(|m| m.values()) {
        let classes = worker.get("classes").and_then(Value::as_object);
        for (class, c) in classes.into_iter().flatten() {
            if let Some(key) = c.get("key").and_then(Value::as_str) {
                out.push((key.to_string(), class.clone()));
            }
        }
    }
    Ok(out)
}

fn list(args: &DoListArgs) -> Result<String, String> {
    let state = State::open(&args.state)?;
    let only = match &args.namespace {
        Some(n) => Some(state.resolve(n)?.key.clone()),
        None => None,
    };
    let mut rows = Vec::new();
    for o in state.view.objects().map_err(|e| e.to_string())? {
        let ns = state.owner(&o);
        if only.as_ref().is_some_and(|k| *k != ns) {
            continue;
        }
        // Internal namespaces are the node's own; shown only when asked for by name.
        if only.is_none() && !args.all && ns.starts_with("cinder:") {
            continue;
        }
        rows.push((ns, o));
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.id.cmp(&b.1.id)));
    if args.json {
        let objects: Vec<Value> = rows
            .iter()
            .map(|(ns, o)| {
                json!({
                    "namespace": ns,
                    "id": hex(&o.id),
                    "keys": o.kv_keys,
                    "bytes": o.kv_bytes,
                    "sqlBytes": o.sql_bytes,
                })
            })
            .collect();
        let mut namespaces: BTreeMap<&str, (u64, u64, u64)> = BTreeMap::new();
        for (ns, o) in &rows {
            let e = namespaces.entry(ns).or_default();
            e.0 += 1;
            e.1 += o.kv_keys;
            e.2 += o.kv_bytes + o.sql_bytes;
        }
        let namespaces: Vec<Value> = namespaces
            .into_iter()
            .map(|(ns, (objects, keys, bytes))| {
                json!({"namespace": ns, "objects": objects, "keys": keys, "bytes": bytes})
            })
            .collect();
        let out = json!({"namespaces": namespaces, "objects": objects});
        return Ok(format!("{}\n", pretty(&out)));
    }
    if rows.is_empty() {
        return Ok("no Durable Objects with stored data\n".into());
    }
    let width = rows
        .iter()
        .map(|(ns, _)| ns.len())
        .max()
        .unwrap_or(9)
        .max(9);
    let mut out = format!(
        "{:<width$}  {:<64}  {:>8}  {:>12}  {:>12}\n",
        "NAMESPACE", "OBJECT ID", "KEYS", "BYTES", "SQL BYTES"
    );
    for (ns, o) in &rows {
        out.push_str(&format!(
            "{:<width$}  {:<64}  {:>8}  {:>12}  {:>12}\n",
            ns,
            hex(&o.id),
            o.kv_keys,
            o.kv_bytes,
            o.sql_bytes
        ));
    }
    Ok(out)
}

fn get(args: &DoGetArgs) -> Result<String, String> {
    let state = State::open(&args.state)?;
    let ns = state.resolve(&args.namespace)?;
    let id = ns.ids.id_from_string(&args.id).map_err(|e| e.to_string())?;
    let id = *id.bytes();
    let value = match &args.key {
        Some(key) => {
            let raw = state
                .view
                .kv_get(&id, key.as_bytes())
                .map_err(|e| e.to_string())?
                .ok_or_else(|| {
                    format!(
                        "object {} of {} has no key {key:?}",
                        args.id.to_lowercase(),
                        ns.key
                    )
                })?;
            crate::v8wire::to_json(&raw)
        }
        None => {
            let mut map = serde_json::Map::new();
            for (k, v) in state.view.kv_entries(&id).map_err(|e| e.to_string())? {
                map.insert(
                    String::from_utf8_lossy(&k).into_owned(),
                    crate::v8wire::to_json(&v),
                );
            }
            Value::Object(map)
        }
    };
    Ok(format!("{}\n", pretty(&value)))
}

fn hex(id: &[u8; 32]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}
