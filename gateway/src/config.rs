//! wrangler configuration (`wrangler.toml`, `wrangler.jsonc`, `wrangler.json`) read as it is,
//! turned into the [`WorkerSpec`] the engine runs.
//!
//! Keys we do not know produce a warning naming the key and never fail the load, because real
//! projects carry deploy-only keys and keys newer than this reader. Bindings we do not run yet
//! (analytics engine, AI, ...) warn "not supported yet" and are left out of `env`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cinder_stateless::{
    D1DatabaseBinding, DurableObjectBinding, KvNamespaceBinding, ModuleKind, ModuleRule,
    QueueConsumerConfig, QueueProducerBinding, R2BucketBinding, ServiceBinding, WorkerSpec,
};
use serde::Deserialize;
use serde_json::Value;

use crate::migrations::{self, Migration};
use crate::routes::RoutePattern;
use crate::{devvars, jsonc};

/// A binding list as written: each entry's keys, kept loosely typed.
type BindingList = Vec<BTreeMap<String, Value>>;

/// File names looked for, in order, when given a directory.
pub const CONFIG_NAMES: [&str; 3] = ["wrangler.toml", "wrangler.jsonc", "wrangler.json"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("could not read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no wrangler.toml, wrangler.jsonc or wrangler.json in {}", dir.display())]
    NotFound { dir: PathBuf },
    #[error("{}:{line}:{column}: {message}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

/// One worker's configuration, ready for the engine, plus what the gateway itself uses.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub path: PathBuf,
    pub spec: WorkerSpec,
    /// `[[migrations]]`, applied against the state directory when the run starts.
    pub migrations: Vec<Migration>,
    /// `[[d1_databases]]` as written (`cinder d1` needs more of them than the engine does).
    pub d1: Vec<D1Config>,
    /// `no_bundle = true`: run `main` as it is even if it imports packages.
    pub no_bundle: bool,
    /// `route` / `routes` (custom domains included): what `cinder serve` sends to this worker.
    pub routes: Vec<RoutePattern>,
    /// `[dev]` `ip` and `port`: defaults for `cinder dev` when the flags are absent.
    pub dev_ip: Option<String>,
    pub dev_port: Option<u16>,
    /// Everything worth telling the user that did not stop the load.
    pub warnings: Vec<String>,
}

/// One `[[d1_databases]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct D1Config {
    pub binding: String,
    pub database_name: Option<String>,
    pub database_id: Option<String>,
    pub preview_database_id: Option<String>,
    pub migrations_dir: Option<String>,
    pub migrations_table: Option<String>,
}

impl D1Config {
    /// The key the database's data is stored under, for `cinder dev` and `cinder d1` alike:
    /// the id wrangler's local mode uses (`preview_database_id`, else `database_id`), else the
    /// name, else the binding.
    pub fn key(&self) -> String {
        self.preview_database_id
            .clone()
            .or_else(|| self.database_id.clone())
            .or_else(|| self.database_name.clone())
            .unwrap_or_else(|| self.binding.clone())
    }
}

/// Finds the configuration file for `target`: a file is taken as it is, a directory is
/// searched for [`CONFIG_NAMES`].
pub fn locate(target: &Path) -> Result<PathBuf, ConfigError> {
    if target.is_file() {
        return Ok(target.to_path_buf());
    }
    if target.is_dir() {
        for name in CONFIG_NAMES {
            let candidate = target.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
        return Err(ConfigError::NotFound {
            dir: target.to_path_buf(),
        });
    }
    Err(ConfigError::Read {
        path: target.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
    })
}

/// Reads one configuration file; `env` selects an `[env.NAME]` section.
pub fn load(path: &Path, env: Option<&str>) -> Result<WorkerConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut warnings = Vec::new();
    let raw = parse(path, &text, &mut warnings)?;
    build(path, raw, env, warnings)
}

fn is_toml(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()) == Some("toml")
}

fn parse(path: &Path, text: &str, warnings: &mut Vec<String>) -> Result<RawConfig, ConfigError> {
    let mut unknown = Vec::new();
    let raw = if is_toml(path) {
        let syntax = |e: toml::de::Error| {
            let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
            ConfigError::Syntax {
                path: path.to_path_buf(),
                line,
                column,
                message: e.message().trim().to_string(),
            }
        };
        let de = toml::de::Deserializer::parse(text).map_err(syntax)?;
        serde_ignored::deserialize(de, |p| unknown.push(p.to_string())).map_err(syntax)?
    } else {
        let json = jsonc::to_json(text);
        let mut de = serde_json::Deserializer::from_str(&json);
        let raw: RawConfig = serde_ignored::deserialize(&mut de, |p| unknown.push(p.to_string()))
            .and_then(|raw| de.end().map(|()| raw))
            .map_err(|e| ConfigError::Syntax {
                path: path.to_path_buf(),
                line: e.line(),
                column: e.column(),
                message: strip_position(&e.to_string()),
            })?;
        raw
    };
    for key in unknown {
        // serde_ignored writes `?` for each Option it passes through.
        let key = key.replace("?.", "");
        warnings.push(format!("{}: unknown key `{key}` ignored", path.display()));
    }
    Ok(raw)
}

/// serde_json appends " at line L column C"; we print the position in front instead.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_string(),
        None => message.to_string(),
    }
}

/// 1-based line and column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
    (line, column)
}

/// The keys of a wrangler configuration this reader knows. Deploy-only and not-yet-supported
/// keys are typed as [`Value`] so they are accepted whatever they hold.
// Many fields exist only so that their keys count as known; they are never read.
#[allow(dead_code)]
#[derive(Debug, Default, Deserialize)]
struct RawConfig {
    name: Option<String>,
    main: Option<String>,
    compatibility_date: Option<String>,
    compatibility_flags: Option<Vec<String>>,
    vars: Option<BTreeMap<String, Value>>,
    durable_objects: Option<RawDurableObjects>,
    migrations: Option<Value>,
    kv_namespaces: Option<BindingList>,
    r2_buckets: Option<BindingList>,
    d1_databases: Option<BindingList>,
    services: Option<Vec<RawService>>,
    rules: Option<Vec<RawRule>>,
    triggers: Option<RawTriggers>,
    limits: Option<RawLimits>,
    dev: Option<RawDev>,
    env: Option<BTreeMap<String, RawConfig>>,

    /// `[[queues.producers]]` and `[[queues.consumers]]`, read by [`queues`].
    queues: Option<Value>,

    // Bindings and features that exist on Cloudflare but not here yet: warned about.
    analytics_engine_datasets: Option<Value>,
    ai: Option<Value>,
    vectorize: Option<Value>,
    hyperdrive: Option<Value>,
    browser: Option<Value>,
    workflows: Option<Value>,
    send_email: Option<Value>,
    dispatch_namespaces: Option<Value>,
    mtls_certificates: Option<Value>,
    version_metadata: Option<Value>,
    assets: Option<Value>,
    site: Option<Value>,
    build: Option<Value>,
    tail_consumers: Option<Value>,
    #[serde(rename = "unsafe")]
    unsafe_: Option<Value>,

    // Deploy-time keys: meaningless for a local run, accepted silently.
    #[serde(rename = "$schema")]
    _schema: Option<Value>,
    account_id: Option<Value>,
    workers_dev: Option<Value>,
    preview_urls: Option<Value>,
    route: Option<Value>,
    routes: Option<Value>,
    zone_id: Option<Value>,
    usage_model: Option<Value>,
    logpush: Option<Value>,
    observability: Option<Value>,
    placement: Option<Value>,
    send_metrics: Option<Value>,
    keep_vars: Option<Value>,
    minify: Option<Value>,
    node_compat: Option<Value>,
    no_bundle: Option<Value>,
    find_additional_modules: Option<Value>,
    base_dir: Option<Value>,
    preserve_file_names: Option<Value>,
    upload_source_maps: Option<Value>,
    compliance_region: Option<Value>,
    legacy_env: Option<Value>,
    jsx_factory: Option<Value>,
    jsx_fragment: Option<Value>,
    tsconfig: Option<Value>,
    alias: Option<Value>,
    define: Option<Value>,
    first_party_worker: Option<Value>,
    logfwdr: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
struct RawDurableObjects {
    bindings: Option<BindingList>,
}

#[derive(Debug, Deserialize)]
struct RawService {
    binding: String,
    service: String,
    entrypoint: Option<String>,
    environment: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct RawRule {
    #[serde(rename = "type")]
    kind: String,
    globs: Vec<String>,
    fallthrough: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
struct RawTriggers {
    crons: Option<Vec<String>>,
}

#[allow(dead_code)]
#[derive(Debug, Default, Deserialize)]
struct RawLimits {
    cpu_ms: Option<u64>,
    subrequests: Option<Value>,
}

#[allow(dead_code)]
#[derive(Debug, Default, Deserialize)]
struct RawDev {
    ip: Option<String>,
    port: Option<u16>,
    local_protocol: Option<Value>,
    upstream_protocol: Option<Value>,
    host: Option<Value>,
    inspector_port: Option<Value>,
    enable_containers: Option<Value>,
    container_engine: Option<Value>,
}

/// Applies `[env.NAME]` the way wrangler does: inheritable keys fall back to the top level,
/// bindings and vars do not (wrangler warns about those too).
fn select_env(
    path: &Path,
    mut top: RawConfig,
    env: Option<&str>,
    warnings: &mut Vec<String>,
) -> Result<RawConfig, ConfigError> {
    let mut envs = top.env.take().unwrap_or_default();
    let Some(name) = env else {
        for name in envs.keys() {
            warnings.push(format!(
                "{}: [env.{name}] ignored (select it with --env {name})",
                path.display()
            ));
        }
        return Ok(top);
    };
    let Some(mut sel) = envs.remove(name) else {
        return Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            message: format!("no [env.{name}] section (asked for by --env {name})"),
        });
    };
    let mut not_inherited = |key: &str, top_has: bool, env_has: bool| {
        if top_has && !env_has {
            warnings.push(format!(
                "{}: `{key}` is set at the top level but not in [env.{name}]; as in wrangler it is not inherited",
                path.display()
            ));
        }
    };
    not_inherited("vars", top.vars.is_some(), sel.vars.is_some());
    not_inherited("services", top.services.is_some(), sel.services.is_some());
    not_inherited(
        "durable_objects",
        top.durable_objects.is_some(),
        sel.durable_objects.is_some(),
    );
    not_inherited(
        "kv_namespaces",
        top.kv_namespaces.is_some(),
        sel.kv_namespaces.is_some(),
    );
    not_inherited(
        "r2_buckets",
        top.r2_buckets.is_some(),
        sel.r2_buckets.is_some(),
    );
    not_inherited(
        "d1_databases",
        top.d1_databases.is_some(),
        sel.d1_databases.is_some(),
    );
    not_inherited("queues", top.queues.is_some(), sel.queues.is_some());

    sel.name = sel
        .name
        .or_else(|| top.name.as_ref().map(|n| format!("{n}-{name}")));
    sel.main = sel.main.or(top.main);
    sel.compatibility_date = sel.compatibility_date.or(top.compatibility_date);
    sel.compatibility_flags = sel.compatibility_flags.or(top.compatibility_flags);
    sel.rules = sel.rules.or(top.rules);
    sel.triggers = sel.triggers.or(top.triggers);
    sel.limits = sel.limits.or(top.limits);
    sel.dev = sel.dev.or(top.dev);
    sel.route = sel.route.or(top.route);
    sel.routes = sel.routes.or(top.routes);
    sel.migrations = sel.migrations.or(top.migrations);
    Ok(sel)
}

fn build(
    path: &Path,
    raw: RawConfig,
    env: Option<&str>,
    mut warnings: Vec<String>,
) -> Result<WorkerConfig, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let raw = select_env(path, raw, env, &mut warnings)?;
    let root = path
        .parent()
        .map(Path::to_path_buf)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."));
    let root = std::fs::canonicalize(&root).unwrap_or(root);
    let file = path.display();

    let name = match raw.name {
        Some(n) if !n.trim().is_empty() => n,
        _ => {
            let fallback = root
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("worker")
                .to_string();
            warnings.push(format!("{file}: no `name`; using {fallback:?}"));
            fallback
        }
    };

    let main_rel = raw.main.ok_or_else(|| {
        invalid(
            "`main` is not set: point it at the worker's entry module, e.g. main = \"src/index.js\""
                .to_string(),
        )
    })?;
    let main = root.join(&main_rel);
    if !main.is_file() {
        return Err(invalid(format!(
            "main = {main_rel:?}: {} does not exist",
            main.display()
        )));
    }
    let mut vars: Vec<(String, Value)> = raw
        .vars
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, toml_dates_to_strings(v)))
        .collect();
    for (key, value) in read_dev_vars(&root, env, &mut warnings) {
        vars.retain(|(k, _)| *k != key);
        vars.push((key, Value::String(value)));
    }

    let mut rules = Vec::new();
    for rule in raw.rules.unwrap_or_default() {
        let kind = match rule.kind.as_str() {
            "ESModule" => ModuleKind::ESModule,
            "Text" => ModuleKind::Text,
            "Data" => ModuleKind::Data,
            "CompiledWasm" => ModuleKind::CompiledWasm,
            other => {
                warnings.push(format!(
                    "{file}: [[rules]] type {other:?} is not supported yet (supported: ESModule, Text, Data, CompiledWasm); rule ignored"
                ));
                continue;
            }
        };
        rules.push(ModuleRule {
            kind,
            globs: rule.globs,
            fallthrough: rule.fallthrough.unwrap_or(false),
        });
    }

    let services = raw
        .services
        .unwrap_or_default()
        .into_iter()
        .map(|s| {
            if s.environment.is_some() {
                warnings.push(format!(
                    "{file}: service binding {:?}: `environment` ignored; it binds to the worker named {:?} in this run",
                    s.binding, s.service
                ));
            }
            ServiceBinding {
                binding: s.binding,
                service: s.service,
                entrypoint: s.entrypoint,
            }
        })
        .collect();

    let crons = raw.triggers.and_then(|t| t.crons).unwrap_or_default();
    for cron in &crons {
        if let Err(e) = parse_cron(cron) {
            return Err(invalid(format!(
                "triggers.crons: {cron:?} is not a valid cron expression: {e}"
            )));
        }
    }

    let (cpu_ms, subrequests) = match raw.limits {
        Some(l) => (l.cpu_ms, l.subrequests),
        None => (None, None),
    };
    if subrequests.is_some() {
        warnings.push(format!("{file}: limits.subrequests is not enforced yet"));
    }
    if cpu_ms == Some(0) {
        return Err(invalid("limits.cpu_ms must be greater than 0".to_string()));
    }

    let mut durable_objects = Vec::new();
    for (i, b) in raw
        .durable_objects
        .as_ref()
        .and_then(|d| d.bindings.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
    {
        let text = |key: &str| b.get(key).and_then(Value::as_str).map(str::to_string);
        let (Some(binding), Some(class_name)) = (text("name"), text("class_name")) else {
            return Err(invalid(format!(
                "durable_objects.bindings[{i}] needs `name` and `class_name`"
            )));
        };
        if b.get("environment").is_some() {
            warnings.push(format!(
                "{file}: durable_objects.bindings[{i}]: `environment` ignored; the class is taken from the worker named by `script_name` in this run"
            ));
        }
        durable_objects.push(DurableObjectBinding {
            binding,
            class_name,
            script_name: text("script_name"),
        });
    }
    let migrations = match &raw.migrations {
        Some(v) => migrations::parse(v).map_err(invalid)?,
        None => Vec::new(),
    };

    let d1 = d1_databases(raw.d1_databases.as_deref().unwrap_or_default()).map_err(invalid)?;
    let mut r2_buckets: Vec<R2BucketBinding> = Vec::new();
    for (i, b) in raw.r2_buckets.iter().flatten().enumerate() {
        let text = |key: &str| b.get(key).and_then(Value::as_str).map(str::to_string);
        let Some(binding) = text("binding").filter(|s| !s.is_empty()) else {
            return Err(invalid(format!("r2_buckets[{i}] needs `binding`")));
        };
        // Locally the bucket is `bucket_name` (as wrangler dev does), or the binding's name
        // when the config leaves it to be provisioned on deploy.
        let bucket_name = text("bucket_name")
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| binding.clone());
        if bucket_name.len() > 255 || bucket_name.chars().any(|c| c == '/' || c.is_control()) {
            return Err(invalid(format!(
                "r2_buckets[{i}]: bucket_name {bucket_name:?} is not a valid bucket name"
            )));
        }
        if r2_buckets.iter().any(|x| x.binding == binding) {
            return Err(invalid(format!(
                "r2_buckets[{i}]: binding {binding:?} is defined twice"
            )));
        }
        r2_buckets.push(R2BucketBinding {
            binding,
            bucket_name,
        });
    }

    let kv_namespaces =
        kv_namespaces(raw.kv_namespaces.as_deref().unwrap_or_default()).map_err(invalid)?;
    let (queue_producers, queue_consumers) = match &raw.queues {
        Some(v) => queues(v, &file.to_string(), &mut warnings).map_err(invalid)?,
        None => (Vec::new(), Vec::new()),
    };
    let others = [
        (
            "analytics_engine_datasets",
            raw.analytics_engine_datasets.is_some(),
        ),
        ("ai", raw.ai.is_some()),
        ("vectorize", raw.vectorize.is_some()),
        ("hyperdrive", raw.hyperdrive.is_some()),
        ("browser", raw.browser.is_some()),
        ("workflows", raw.workflows.is_some()),
        ("send_email", raw.send_email.is_some()),
        ("dispatch_namespaces", raw.dispatch_namespaces.is_some()),
        ("mtls_certificates", raw.mtls_certificates.is_some()),
        ("version_metadata", raw.version_metadata.is_some()),
        ("assets", raw.assets.is_some()),
        ("site", raw.site.is_some()),
        ("build", raw.build.is_some()),
        ("tail_consumers", raw.tail_consumers.is_some()),
        ("unsafe", raw.unsafe_.is_some()),
    ];
    for (key, present) in others {
        if present {
            warnings.push(format!("{file}: `{key}` is not supported yet; ignored"));
        }
    }

    let routes = routes(raw.route.as_ref(), raw.routes.as_ref()).map_err(invalid)?;

    let (dev_ip, dev_port) = match raw.dev {
        Some(d) => (d.ip, d.port),
        None => (None, None),
    };

    Ok(WorkerConfig {
        path: path.to_path_buf(),
        spec: WorkerSpec {
            name,
            root,
            main,
            rules,
            compatibility_date: raw.compatibility_date,
            compatibility_flags: raw.compatibility_flags.unwrap_or_default(),
            vars,
            services,
            cpu_ms,
            crons,
            durable_objects,
            classes: Vec::new(),
            d1_databases: d1
                .iter()
                .map(|d| D1DatabaseBinding {
                    binding: d.binding.clone(),
                    database: d.key(),
                })
                .collect(),
            r2_buckets,
            kv_namespaces,
            queue_producers,
            queue_consumers,
        },
        migrations,
        d1,
        no_bundle: raw
            .no_bundle
            .as_ref()
            .and_then(Value::as_bool)
            .unwrap_or(false),
        routes,
        dev_ip,
        dev_port,
        warnings,
    })
}

/// `route` (one) and `routes` (a list): each a pattern string or `{ pattern, zone_name |
/// zone_id, custom_domain }`.
fn routes(route: Option<&Value>, routes: Option<&Value>) -> Result<Vec<RoutePattern>, String> {
    let mut entries: Vec<(String, &Value)> = Vec::new();
    if let Some(r) = route {
        entries.push(("route".to_string(), r));
    }
    match routes {
        None => {}
        Some(Value::Array(list)) => entries.extend(
            list.iter()
                .enumerate()
                .map(|(i, r)| (format!("routes[{i}]"), r)),
        ),
        Some(_) => return Err("`routes` must be a list of route patterns".to_string()),
    }
    entries
        .into_iter()
        .map(|(key, entry)| {
            let (pattern, custom) = match entry {
                Value::String(p) => (p.as_str(), false),
                Value::Object(o) => match o.get("pattern").and_then(Value::as_str) {
                    Some(p) => (
                        p,
                        o.get("custom_domain").and_then(Value::as_bool) == Some(true),
                    ),
                    None => return Err(format!("{key} needs a `pattern`")),
                },
                _ => {
                    return Err(format!(
                        "{key} must be a pattern string or {{ pattern = \"...\" }}"
                    ))
                }
            };
            RoutePattern::parse(pattern, custom).map_err(|e| format!("{key}: {e}"))
        })
        .collect()
}

/// `[[d1_databases]]`: each needs a `binding`, and bindings must differ.
fn d1_databases(list: &[BTreeMap<String, Value>]) -> Result<Vec<D1Config>, String> {
    let mut out: Vec<D1Config> = Vec::new();
    for (i, b) in list.iter().enumerate() {
        let text = |key: &str| b.get(key).and_then(Value::as_str).map(str::to_string);
        let Some(binding) = text("binding") else {
            return Err(format!("d1_databases[{i}] needs `binding`"));
        };
        if out.iter().any(|d| d.binding == binding) {
            return Err(format!(
                "d1_databases[{i}]: the binding {binding:?} is declared twice"
            ));
        }
        out.push(D1Config {
            binding,
            database_name: text("database_name"),
            database_id: text("database_id"),
            preview_database_id: text("preview_database_id"),
            migrations_dir: text("migrations_dir"),
            migrations_table: text("migrations_table"),
        });
    }
    Ok(out)
}

/// `[[kv_namespaces]]`: each needs a `binding`; the namespace is `id`, or the binding's name
/// when the config leaves the id to be provisioned on deploy (as `wrangler dev` does locally).
/// `preview_id` is for `wrangler dev --remote` and plays no part locally.
fn kv_namespaces(list: &[BTreeMap<String, Value>]) -> Result<Vec<KvNamespaceBinding>, String> {
    let mut out: Vec<KvNamespaceBinding> = Vec::new();
    for (i, b) in list.iter().enumerate() {
        let text = |key: &str| {
            b.get(key)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let Some(binding) = text("binding") else {
            return Err(format!("kv_namespaces[{i}] needs `binding`"));
        };
        if out.iter().any(|k| k.binding == binding) {
            return Err(format!(
                "kv_namespaces[{i}]: binding {binding:?} is defined twice"
            ));
        }
        let id = text("id").unwrap_or_else(|| binding.clone());
        out.push(KvNamespaceBinding { binding, id });
    }
    Ok(out)
}

/// `queues`: `[[queues.producers]]` ({binding, queue, delivery_delay?}) and
/// `[[queues.consumers]]` ({queue, max_batch_size?, max_batch_timeout?, max_retries?,
/// retry_delay?, dead_letter_queue?, max_concurrency?}). Ranges are checked when the consumer
/// is registered (cinder-queues); here only shapes and types.
fn queues(
    v: &Value,
    file: &str,
    warnings: &mut Vec<String>,
) -> Result<(Vec<QueueProducerBinding>, Vec<QueueConsumerConfig>), String> {
    let Some(obj) = v.as_object() else {
        return Err("`queues` must be a table with `producers` and/or `consumers`".into());
    };
    for key in obj.keys() {
        if key != "producers" && key != "consumers" {
            warnings.push(format!("{file}: unknown key `queues.{key}`; ignored"));
        }
    }
    let list = |key: &str| -> Result<Vec<serde_json::Map<String, Value>>, String> {
        match obj.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    item.as_object()
                        .cloned()
                        .ok_or_else(|| format!("queues.{key}[{i}] must be a table"))
                })
                .collect(),
            Some(_) => Err(format!("queues.{key} must be an array of tables")),
        }
    };
    let text = |m: &serde_json::Map<String, Value>,
                what: &str,
                key: &str|
     -> Result<Option<String>, String> {
        match m.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            Some(_) => Err(format!("{what}.{key} must be a non-empty string")),
        }
    };
    let number = |m: &serde_json::Map<String, Value>,
                  what: &str,
                  key: &str|
     -> Result<Option<u32>, String> {
        match m.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| format!("{what}.{key} must be a whole number of at least 0")),
        }
    };
    let mut producers: Vec<QueueProducerBinding> = Vec::new();
    for (i, p) in list("producers")?.iter().enumerate() {
        let what = format!("queues.producers[{i}]");
        let binding = text(p, &what, "binding")?.ok_or(format!("{what} needs `binding`"))?;
        let queue = text(p, &what, "queue")?.ok_or(format!("{what} needs `queue`"))?;
        if producers.iter().any(|x| x.binding == binding) {
            return Err(format!("{what}: binding {binding:?} is defined twice"));
        }
        producers.push(QueueProducerBinding {
            binding,
            queue,
            delivery_delay: number(p, &what, "delivery_delay")?,
        });
    }
    let mut consumers: Vec<QueueConsumerConfig> = Vec::new();
    for (i, c) in list("consumers")?.iter().enumerate() {
        let what = format!("queues.consumers[{i}]");
        let queue = text(c, &what, "queue")?.ok_or(format!("{what} needs `queue`"))?;
        if consumers.iter().any(|x| x.queue == queue) {
            return Err(format!("{what}: queue {queue:?} has two consumers"));
        }
        for key in c.keys() {
            const KNOWN: [&str; 9] = [
                "queue",
                "max_batch_size",
                "max_batch_timeout",
                "max_retries",
                "retry_delay",
                "dead_letter_queue",
                "max_concurrency",
                "type",
                "visibility_timeout_ms",
            ];
            if !KNOWN.contains(&key.as_str()) {
                warnings.push(format!("{file}: unknown key `{what}.{key}`; ignored"));
            }
        }
        if c.get("type").and_then(Value::as_str) == Some("http_pull") {
            warnings.push(format!(
                "{file}: {what}: pull consumers (type = \"http_pull\") are not supported; queue {queue:?} gets no consumer"
            ));
            continue;
        }
        consumers.push(QueueConsumerConfig {
            queue,
            max_batch_size: number(c, &what, "max_batch_size")?,
            max_batch_timeout: number(c, &what, "max_batch_timeout")?,
            max_retries: number(c, &what, "max_retries")?,
            retry_delay: number(c, &what, "retry_delay")?,
            dead_letter_queue: text(c, &what, "dead_letter_queue")?,
            max_concurrency: number(c, &what, "max_concurrency")?,
        });
    }
    Ok((producers, consumers))
}

/// `.dev.vars` (or `.dev.vars.<env>` when an environment is selected and that file exists)
/// next to the configuration.
fn read_dev_vars(
    root: &Path,
    env: Option<&str>,
    warnings: &mut Vec<String>,
) -> Vec<(String, String)> {
    let mut path = root.join(".dev.vars");
    if let Some(env) = env {
        let specific = root.join(format!(".dev.vars.{env}"));
        if specific.is_file() {
            path = specific;
        }
    }
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            warnings.push(format!("{}: could not read: {e}", path.display()));
            return Vec::new();
        }
    };
    let parsed = devvars::parse(&text);
    for problem in parsed.problems {
        warnings.push(format!("{}: {problem}", path.display()));
    }
    parsed.vars
}

/// TOML date-times arrive as `{"$__toml_private_datetime": "..."}`; a worker sees a string.
fn toml_dates_to_strings(v: Value) -> Value {
    match v {
        Value::Object(map) => {
            if map.len() == 1 {
                if let Some(Value::String(s)) = map.get("$__toml_private_datetime") {
                    return Value::String(s.clone());
                }
            }
            Value::Object(
                map.into_iter()
                    .map(|(k, v)| (k, toml_dates_to_strings(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.into_iter().map(toml_dates_to_strings).collect()),
        other => other,
    }
}

/// Cloudflare's cron dialect: five fields, `L`, `W` and `#`, day of week 1-7 = Sunday-Saturday
/// (Quartz style) or names.
pub fn parse_cron(pattern: &str) -> Result<croner::Cron, croner::errors::CronError> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Disallowed)
        .year(croner::parser::Year::Disallowed)
        .alternative_weekdays(true)
        .build()
        .parse(pattern)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let p = dir.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        dir
    }

    fn load_dir(dir: &Path, env: Option<&str>) -> Result<WorkerConfig, ConfigError> {
        load(&locate(dir)?, env)
    }

    const MAIN: (&str, &str) = ("src/index.js", "export default {}");

    #[test]
    fn full_toml_config() {
        let dir = project(&[
            MAIN,
            (
                "wrangler.toml",
                r#"
name = "app"
main = "src/index.js"
compatibility_date = "2024-09-23"
compatibility_flags = ["nodejs_compat"]
account_id = "abc"
workers_dev = true

[vars]
GREETING = "hi"
CONFIG = { debug = true, level = 3 }
LIST = [1, 2]

[[services]]
binding = "AUTH"
service = "auth-worker"

[[rules]]
type = "Text"
globs = ["**/*.html"]
fallthrough = true

[[rules]]
type = "CompiledWasm"
globs = ["**/*.wasm"]

[triggers]
crons = ["*/5 * * * *", "0 12 * * MON"]

[limits]
cpu_ms = 100

[dev]
port = 9000
ip = "0.0.0.0"
"#,
            ),
        ]);
        let cfg = load_dir(dir.path(), None).unwrap();
        assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
        let s = &cfg.spec;
        assert_eq!(s.name, "app");
        assert!(s.main.ends_with("src/index.js") && s.main.is_absolute());
        assert_eq!(s.compatibility_date.as_deref(), Some("2024-09-23"));
        assert_eq!(s.compatibility_flags, vec!["nodejs_compat"]);
        assert!(s
            .vars
            .contains(&("GREETING".into(), Value::String("hi".into()))));
        assert!(s.vars.contains(&(
            "CONFIG".into(),
            serde_json::json!({"debug": true, "level": 3})
        )));
        assert!(s.vars.contains(&("LIST".into(), serde_json::json!([1, 2]))));
        assert_eq!(
            s.services,
            vec![ServiceBinding {
                binding: "AUTH".into(),
                service: "auth-worker".into(),
                entrypoint: None
            }]
        );
        assert_eq!(s.rules.len(), 2);
        assert_eq!(s.rules[0].kind, ModuleKind::Text);
        assert!(s.rules[0].fallthrough);
        assert_eq!(s.rules[1].kind, ModuleKind::CompiledWasm);
        assert!(!s.rules[1].fallthrough);
        assert_eq!(s.crons, vec!["*/5 * * * *", "0 12 * * MON"]);
        assert_eq!(s.cpu_ms, Some(100));
        assert_eq!(cfg.dev_port, Some(9000));
        assert_eq!(cfg.dev_ip.as_deref(), Some("0.0.0.0"));
    }

    #[test]
    fn jsonc_config_with_comments_and_trailing_commas() {
        let dir = project(&[
            MAIN,
            (
                "wrangler.jsonc",
                r#"{
  // a comment
  "$schema": "node_modules/wrangler/config-schema.json",
  "name": "json-app",
  "main": "src/index.js", /* another */
  "vars": { "A": "1", "B": { "x": [true] }, },
  "triggers": { "crons": ["0 * * * *",], },
}"#,
            ),
        ]);
        let cfg = load_dir(dir.path(), None).unwrap();
        assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
        assert_eq!(cfg.spec.name, "json-app");
        assert!(cfg
            .spec
            .vars
            .contains(&("B".into(), serde_json::json!({"x": [true]}))));
        assert_eq!(cfg.spec.crons, vec!["0 * * * *"]);
    }

    #[test]
    fn unknown_keys_warn_with_their_path() {
        let dir = project(&[
            MAIN,
            (
                "wrangler.toml",
                "name = \"a\"\nmain = \"src/index.js\"\nfrobnicate = 1\n[triggers]\ncrons = []\nevery = \"day\"\n[[services]]\nbinding = \"X\"\nservice = \"y\"\ncolour = \"red\"\n",
            ),
        ]);
        let cfg = load_dir(dir.path(), None).unwrap();
        let all = cfg.warnings.join("\n");
        assert!(all.contains("unknown key `frobnicate`"), "{all}");
        assert!(all.contains("unknown key `triggers.every`"), "{all}");
        assert!(all.contains("unknown key `services.0.colour`"), "{all}");
    }

    #[test]
    fn bindings_parse_and_unsupported_ones_warn_without_failing() {
        let dir = project(&[
            MAIN,
            (
                "wrangler.toml",
                r#"
name = "a"
main = "src/index.js"
[[durable_objects.bindings]]
name = "COUNTER"
class_name = "Counter"
[[migrations]]
tag = "v1"
new_sqlite_classes = ["Counter"]
[[kv_namespaces]]
binding = "CACHE"
id = "123"
preview_id = "456"
[[kv_namespaces]]
binding = "NOID"
[[analytics_engine_datasets]]
binding = "STATS"
[[r2_buckets]]
binding = "FILES"
bucket_name = "files"
[[d1_databases]]
binding = "DB"
database_name = "db"
database_id = "x"
"#,
            ),
        ]);
        let cfg = load_dir(dir.path(), None).unwrap();
        let all = cfg.warnings.join("\n");
        assert!(
            all.contains("`analytics_engine_datasets` is not supported yet"),
            "{all}"
        );
        assert!(!all.contains("CACHE"), "KV is supported: {all}");
        assert_eq!(
            cfg.spec.kv_namespaces,
            vec![
                KvNamespaceBinding {
                    binding: "CACHE".into(),
                    id: "123".into()
                },
                KvNamespaceBinding {
                    binding: "NOID".into(),
                    id: "NOID".into()
                }
            ]
        );
        assert!(!all.contains("env.DB"), "D1 is supported: {all}");
        assert_eq!(
            cfg.spec.d1_databases,
            vec![D1DatabaseBinding {
                binding: "DB".into(),
                database: "x".into()
            }]
        );
        assert!(!all.contains("unknown key"), "{all}");
        assert!(!all.contains("COUNTER"), "{all}");
        assert!(!all.contains("FILES"), "R2 buckets are supported: {all}");
        assert_eq!(
            cfg.spec.r2_buckets,
            vec![R2BucketBinding {
                binding: "FILES".into(),
                bucket_name: "files".into(),
            }]
        );
        assert_eq!(
            cfg.spec.durable_objects,
            vec![DurableObjectBinding {
                binding: "COUNTER".into(),
                class_name: "Counter".into(),
                script_name: None,
            }]
        );
        assert_eq!(
            cfg.migrations[0].new_sqlite_classes,
            vec!["Counter".to_string()]
        );
    }

    #[test]
    fn queues_producers_and_consumers() {
        let dir = project(&[
            MAIN,
            (
                "wrangler.toml",
                r#"
name = "a"
main = "src/index.js"
[[queues.producers]]
binding = "JOBS"
queue = "jobs"
delivery_delay = 5
[[queues.consumers]]
queue = "jobs"
max_batch_size = 20
max_batch_timeout = 1
max_retries = 7
retry_delay = 3
dead_letter_queue = "jobs-dlq"
max_concurrency = 2
colour = "blue"
[[queues.consumers]]
queue = "jobs-dlq"
"#,
            ),
        ]);
        let cfg = load_dir(dir.path(), None).unwrap();
        let all = cfg.warnings.join("\n");
        assert!(!all.contains("not supported yet"), "{all}");
        assert!(
            all.contains("unknown key `queues.consumers[0].colour`"),
            "{all}"
        );
        assert_eq!(
            cfg.spec.queue_producers,
            vec![QueueProducerBinding {
                binding: "JOBS".into(),
                queue: "jobs".into(),
                delivery_delay: Some(5),
            }]
        );
        assert_eq!(
            cfg.spec.queue_consumers,
            vec![
                QueueConsumerConfig {
                    queue: "jobs".into(),
                    max_batch_size: Some(20),
                    max_batch_timeout: Some(1),
                    max_retries: Some(7),
                    retry_delay: Some(3),
                    dead_letter_queue: Some("jobs-dlq".into()),
                    max_concurrency: Some(2),
                },
                QueueConsumerConfig {
                    queue: "jobs-dlq".into(),
                    ..Default::default()
                }
            ]
        );

        let bad = project(&[
            MAIN,
            (
                "wrangler.toml",
                "name = \"a\"\nmain = \"src/index.js\"\n[[queues.producers]]\nqueue = \"q\"\n",
            ),
        ]);
        let err = load_dir(bad.path(), None).unwrap_err().to_string();
        assert!(err.contains("queues.producers[0] needs `binding`"), "{err}");
    }

    #[test]
    fn r2_buckets_default_to_the_binding_name_and_need_a_binding() {
        let dir = project(&[
            MAIN,
            (
                "wrangler.jsonc",
                r#"{
  "name": "a",
  "main": "src/index.js",
  "r2_buckets": [
    { "binding": "ASSETS", "bucket_name": "assets", "preview_bucket_name": "assets-dev", "jurisdiction": "eu" },
    { "binding": "UPLOADS" },
  ],
}"#,
            ),
        ]);
        let cfg = load_dir(dir.path(), None).unwrap();
        assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
        let names: Vec<(&str, &str)> = cfg
            .spec
            .r2_buckets
            .iter()
            .map(|b| (b.binding.as_str(), b.bucket_name.as_str()))
            .collect();
        assert_eq!(names, vec![("ASSETS", "assets"), ("UPLOADS", "UPLOADS")]);

        let dir = project(&[
            MAIN,
            (
                "wrangler.toml",
                "name = \"a\"\nmain = \"src/index.js\"\n[[r2_buckets]]\nbucket_name = \"x\"\n",
            ),
        ]);
        let err = load_dir(dir.path(), None).unwrap_err().to_string();
        assert!(err.contains("r2_buckets[0] needs `binding`"), "{err}");
    }

    #[test]
    fn toml_syntax_error_names_file_and_line() {
        let dir = project(&[
            MAIN,
            (
                "wrangler.toml",
                "name = \"a\"\nmain = \"src/index.js\"\nvars = { A = }\n",
            ),
        ]);
        let err = load_dir(dir.path(), None).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ConfigError::Syntax { line: 3, .. }), "{msg}");
        assert!(msg.contains("wrangler.toml:3:"), "{msg}");
    }

    #[test]
    fn toml_type_error_names_the_line() {
        let dir = project(&[MAIN, ("wrangler.toml", "name = \"a\"\n\nmain = 5\n")]);
        let msg = load_dir(dir.path(), None).unwrap_err().to_string();
        assert!(msg.contains("wrangler.toml:3:"), "{msg}");
    }

    #[test]
    fn jsonc_error_names_file_and_line() {
        let dir = project(&[
            MAIN,
            (
                "wrangler.jsonc",
                "{\n  // c\n  \"name\": \"a\",\n  \"main\": src/index.js\n}\n",
            ),
        ]);
        let err = load_dir(dir.path(), None).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("wrangler.jsonc:4:"), "{msg}");
    }

    #[test]
    fn missing_main_is_a_clear_error() {
        let dir = project(&[("wrangler.toml", "name = \"a\"\n")]);
        let msg = load_dir(dir.path(), None).unwrap_err().to_string();
        assert!(msg.contains("`main` is not set"), "{msg}");
        let dir = project(&[("wrangler.toml", "name = \"a\"\nmain = \"nope.js\"\n")]);
        let msg = load_dir(dir.path(), None).unwrap_err().to_string();
        assert!(
            msg.contains("nope.js") && msg.contains("does not exist"),
            "{msg}"
        );
    }

    #[test]
    fn dev_vars_become_string_vars_and_override() {
        let dir = project(&[
            MAIN,
            (
                "wrangler.toml",
                "name = \"a\"\nmain = \"src/index.js\"\n[vars]\nKEY = \"public\"\nOTHER = \"o\"\n",
            ),
            (".dev.vars", "KEY=secret\nTOKEN=\"t 1\"\n"),
        ]);
        let cfg = load_dir(dir.path(), None).unwrap();
        let get = |k: &str| {
            cfg.spec
                .vars
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("KEY"), Some(Value::String("secret".into())));
        assert_eq!(get("TOKEN"), Some(Value::String("t 1".into())));
        assert_eq!(get("OTHER"), Some(Value::String("o".into())));
    }

    #[test]
    fn env_sections_are_ignored_unless_selected() {
        let toml = "name = \"a\"\nmain = \"src/index.js\"\n[vars]\nSTAGE = \"top\"\n\
                    [env.staging]\n[env.staging.vars]\nSTAGE = \"staging\"\n[env.bare]\nname = \"bare\"\n";
        let dir = project(&[MAIN, ("wrangler.toml", toml)]);
        let cfg = load_dir(dir.path(), None).unwrap();
        assert!(
            cfg.warnings
                .iter()
                .any(|w| w.contains("[env.staging] ignored")),
            "{:?}",
            cfg.warnings
        );
        assert!(cfg
            .spec
            .vars
            .contains(&("STAGE".into(), Value::String("top".into()))));

        let cfg = load_dir(dir.path(), Some("staging")).unwrap();
        assert_eq!(cfg.spec.name, "a-staging");
        assert!(cfg
            .spec
            .vars
            .contains(&("STAGE".into(), Value::String("staging".into()))));

        let cfg = load_dir(dir.path(), Some("bare")).unwrap();
        assert_eq!(cfg.spec.name, "bare");
        assert!(cfg.spec.vars.is_empty());
        assert!(cfg
            .warnings
            .iter()
            .any(|w| w.contains("`vars` is set at the top level")));

        let msg = load_dir(dir.path(), Some("prod")).unwrap_err().to_string();
        assert!(msg.contains("no [env.prod] section"), "{msg}");
    }

    #[test]
    fn invalid_cron_is_an_error() {
        let dir = project(&[
            MAIN,
            (
                "wrangler.toml",
                "name = \"a\"\nmain = \"src/index.js\"\n[triggers]\ncrons = [\"61 * * * *\"]\n",
            ),
        ]);
        let msg = load_dir(dir.path(), None).unwrap_err().to_string();
        assert!(msg.contains("61 * * * *"), "{msg}");
    }

    #[test]
    fn unsupported_rule_types_warn() {
        let dir = project(&[MAIN, ("wrangler.toml", "name = \"a\"\nmain = \"src/index.js\"\n[[rules]]\ntype = \"PythonModule\"\nglobs = [\"*.py\"]\n")]);
        let cfg = load_dir(dir.path(), None).unwrap();
        assert!(cfg.spec.rules.is_empty());
        assert!(cfg.warnings.iter().any(|w| w.contains("PythonModule")));
    }

    #[test]
    fn locate_prefers_toml_and_reports_missing() {
        let dir = project(&[MAIN, ("wrangler.toml", ""), ("wrangler.jsonc", "{}")]);
        assert!(locate(dir.path()).unwrap().ends_with("wrangler.toml"));
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            locate(empty.path()),
            Err(ConfigError::NotFound { .. })
        ));
    }

    #[test]
    fn cron_weekdays_follow_cloudflare() {
        // 1 = Sunday in Cloudflare's cron dialect; 2024-09-22 was a Sunday.
        use chrono::{TimeZone, Utc};
        let cron = parse_cron("0 0 * * 1").unwrap();
        let from = Utc.with_ymd_and_hms(2024, 9, 20, 0, 0, 0).unwrap();
        let next = cron.find_next_occurrence(&from, false).unwrap();
        assert_eq!(next, Utc.with_ymd_and_hms(2024, 9, 22, 0, 0, 0).unwrap());
    }
}
