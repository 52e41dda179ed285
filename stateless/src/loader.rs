//! ES module loading from a worker's project directory, with wrangler's `[[rules]]`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use deno_core::{
    ModuleLoadOptions, ModuleLoadReferrer, ModuleLoadResponse, ModuleLoader, ModuleSource,
    ModuleSourceCode, ModuleSpecifier, ModuleType, RequestedModuleType, ResolutionKind,
};
use deno_error::JsErrorBox;
use globset::{Glob, GlobMatcher};

use crate::{ModuleKind, ModuleRule, WorkerSpec};

/// The specifier of the Workers runtime module.
pub(crate) const CLOUDFLARE_WORKERS: &str = "cloudflare:workers";

const CLOUDFLARE_WORKERS_SOURCE: &str = r#"const cf = globalThis[Symbol.for("cinder.cf")];
export const DurableObject = cf.DurableObject;
export const WorkerEntrypoint = cf.WorkerEntrypoint;
export const RpcTarget = cf.RpcTarget;
export const WorkflowEntrypoint = cf.WorkflowEntrypoint;
export const env = cf.env;
export const waitUntil = cf.waitUntil;
export default cf;
"#;

/// wrangler's default rules, tried after the user's.
pub fn default_rules() -> Vec<ModuleRule> {
    let rule = |kind, globs: &[&str]| ModuleRule {
        kind,
        globs: globs.iter().map(|g| g.to_string()).collect(),
        fallthrough: true,
    };
    vec![
        rule(ModuleKind::ESModule, &["**/*.js", "**/*.mjs"]),
        rule(ModuleKind::Text, &["**/*.txt", "**/*.html", "**/*.sql"]),
        rule(ModuleKind::Data, &["**/*.bin"]),
        rule(ModuleKind::CompiledWasm, &["**/*.wasm", "**/*.wasm?module"]),
    ]
}

struct CompiledRule {
    kind: ModuleKind,
    globs: Vec<GlobMatcher>,
    fallthrough: bool,
    user: bool,
}

/// Rules compiled once per worker; shared by all its isolates.
pub(crate) struct Rules {
    rules: Vec<CompiledRule>,
}

impl Rules {
    pub fn compile(spec: &WorkerSpec) -> Result<Rules, String> {
        let mut rules = Vec::new();
        let user = spec.rules.iter().map(|r| (r, true));
        let defaults = default_rules();
        for (r, is_user) in user.chain(defaults.iter().map(|r| (r, false))) {
            let mut globs = Vec::new();
            for g in &r.globs {
                let glob = Glob::new(g).map_err(|e| format!("invalid rule glob {g:?}: {e}"))?;
                globs.push(glob.compile_matcher());
            }
            rules.push(CompiledRule {
                kind: r.kind,
                globs,
                fallthrough: r.fallthrough,
                user: is_user,
            });
        }
        Ok(Rules { rules })
    }

    /// wrangler's semantics: the first matching rule wins; a user rule without `fallthrough`
    /// removes every later rule of its kind (defaults included).
    pub fn kind_of(&self, rel: &Path) -> Option<ModuleKind> {
        let mut closed: Vec<ModuleKind> = Vec::new();
        for r in &self.rules {
            if closed.contains(&r.kind) {
                continue;
            }
            if r.globs.iter().any(|g| g.is_match(rel)) {
                return Some(r.kind);
            }
            if r.user && !r.fallthrough {
                closed.push(r.kind);
            }
        }
        None
    }
}

/// Which kind of module a file (path relative to the project root) becomes under `rules`
/// followed by wrangler's defaults; `Err` for an invalid glob.
pub fn module_kind_for(rules: &[ModuleRule], rel: &Path) -> Result<Option<ModuleKind>, String> {
    let spec = WorkerSpec {
        rules: rules.to_vec(),
        ..Default::default()
    };
    Ok(Rules::compile(&spec)?.kind_of(rel))
}

pub(crate) struct Loader {
    pub root: PathBuf,
    pub rules: Arc<Rules>,
    pub data: Arc<Mutex<HashMap<String, Bytes>>>,
}

fn not_found(msg: String) -> JsErrorBox {
    JsErrorBox::generic(msg)
}

impl Loader {
    fn load_file(&self, spec: &ModuleSpecifier, json: bool) -> Result<ModuleSource, JsErrorBox> {
        let path = spec
            .to_file_path()
            .map_err(|_| not_found(format!("cannot load {spec}")))?;
        let rel = path.strip_prefix(&self.root).unwrap_or(&path).to_path_buf();
        let bytes = std::fs::read(&path)
            .map_err(|e| not_found(format!("Could not load module {}: {e}", path.display())))?;
        if json {
            return Ok(ModuleSource::new(
                ModuleType::Json,
                ModuleSourceCode::Bytes(bytes.into_boxed_slice().into()),
                spec,
                None,
            ));
        }
        let kind = self.rules.kind_of(&rel).ok_or_else(|| {
            not_found(format!(
                "No module rule matches {} (add a [[rules]] entry to import it)",
                rel.display()
            ))
        })?;
        let code = match kind {
            ModuleKind::ESModule => {
                let text = String::from_utf8(bytes).map_err(|_| {
                    JsErrorBox::generic(format!("{} is not valid UTF-8", rel.display()))
                })?;
                return Ok(ModuleSource::new(
                    ModuleType::JavaScript,
                    ModuleSourceCode::String(text.into()),
                    spec,
                    None,
                ));
            }
            ModuleKind::Text => {
                let text = String::from_utf8_lossy(&bytes);
                let lit = serde_json::to_string(&text).unwrap_or_else(|_| "\"\"".into());
                format!("export default {lit};\n")
            }
            ModuleKind::Data | ModuleKind::CompiledWasm => {
                let key = spec.to_string();
                if let Ok(mut map) = self.data.lock() {
                    map.insert(key.clone(), Bytes::from(bytes));
                }
                let lit = serde_json::to_string(&key).unwrap_or_else(|_| "\"\"".into());
                if kind == ModuleKind::Data {
                    format!(
                        "export default globalThis[Symbol.for(\"cinder.moduleData\")]({lit});\n"
                    )
                } else {
                    format!(
                        "export default new WebAssembly.Module(globalThis[Symbol.for(\"cinder.moduleData\")]({lit}));\n"
                    )
                }
            }
        };
        Ok(ModuleSource::new(
            ModuleType::JavaScript,
            ModuleSourceCode::String(code.into()),
            spec,
            None,
        ))
    }
}

impl ModuleLoader for Loader {
    fn resolve(
        &self,
        specifier: &str,
        referrer: &str,
        _kind: ResolutionKind,
    ) -> Result<ModuleSpecifier, JsErrorBox> {
        if specifier == CLOUDFLARE_WORKERS {
            return ModuleSpecifier::parse(CLOUDFLARE_WORKERS)
                .map_err(|e| JsErrorBox::generic(e.to_string()));
        }
        if specifier.starts_with("node:") || specifier.starts_with("cloudflare:") {
            return Err(JsErrorBox::generic(format!(
                "Module {specifier:?} is not available in cinder yet"
            )));
        }
        let is_path = specifier.starts_with("./")
            || specifier.starts_with("../")
            || specifier.starts_with('/')
            || specifier.starts_with("file:");
        if !is_path {
            return Err(JsErrorBox::generic(format!(
                "Cannot resolve {specifier:?} from {referrer}: bare module specifiers need a \
                 bundler (cinder does not resolve node_modules; bundle with esbuild first)"
            )));
        }
        let resolved = deno_core::resolve_import(specifier, referrer)
            .map_err(|e| JsErrorBox::generic(e.to_string()))?;
        if let Ok(path) = resolved.to_file_path() {
            let norm = deno_core::normalize_path(std::borrow::Cow::Owned(path));
            if !norm.starts_with(&self.root) {
                return Err(JsErrorBox::generic(format!(
                    "Module {} is outside the project directory {}",
                    norm.display(),
                    self.root.display()
                )));
            }
        }
        Ok(resolved)
    }

    fn load(
        &self,
        spec: &ModuleSpecifier,
        _referrer: Option<&ModuleLoadReferrer>,
        options: ModuleLoadOptions,
    ) -> ModuleLoadResponse {
        if spec.as_str() == CLOUDFLARE_WORKERS {
            return ModuleLoadResponse::Sync(Ok(ModuleSource::new(
                ModuleType::JavaScript,
                ModuleSourceCode::String(CLOUDFLARE_WORKERS_SOURCE.to_string().into()),
                spec,
                None,
            )));
        }
        let json = matches!(options.requested_module_type, RequestedModuleType::Json);
        ModuleLoadResponse::Sync(self.load_file(spec, json))
    }
}
