//! Bundling, as `wrangler dev` does it: a worker written in TypeScript or importing npm
//! packages is bundled with esbuild into one ES module before it runs. Plain ES modules with
//! relative imports run as they are (no build step).
//!
//! esbuild is taken from the project (`node_modules/.bin/esbuild`, which every wrangler
//! project has through wrangler's own dependencies), else from `PATH`, else fetched with
//! `npx`. Beyond wrangler: when the project imports packages but has no `node_modules` yet,
//! `npm install` runs first.

use std::path::{Path, PathBuf};
use std::process::Command;

use cinder_stateless::WorkerSpec;

/// File extensions esbuild must compile.
const COMPILED: [&str; 5] = ["ts", "tsx", "mts", "cts", "jsx"];

/// What `prepare` did.
pub enum Prepared {
    AsIs,
    Bundled { with: String, out: PathBuf },
}

/// Bundles `spec`'s entry when it needs it, pointing `spec.main` at the bundle (under
/// `<root>/.cinder/bundle/`).
pub fn prepare(spec: &mut WorkerSpec, no_bundle: bool) -> Result<Prepared, String> {
    let main = if spec.main.is_absolute() {
        spec.main.clone()
    } else {
        spec.root.join(&spec.main)
    };
    if no_bundle || !needs_bundle(&main, &spec.root) {
        return Ok(Prepared::AsIs);
    }
    ensure_packages(&spec.root)?;
    let out = spec
        .root
        .join(".cinder")
        .join("bundle")
        .join(format!("{}.js", sanitize(&spec.name)));
    let (program, pre_args) = find_esbuild(&spec.root);
    let mut cmd = Command::new(&program);
    cmd.args(&pre_args)
        .arg(&main)
        .args([
            "--bundle",
            "--format=esm",
            "--target=es2022",
            "--platform=browser",
            "--conditions=workerd,worker,browser",
            "--main-fields=browser,module,main",
            "--external:cloudflare:*",
            "--external:node:*",
            "--define:process.env.NODE_ENV=\"development\"",
            "--log-level=warning",
            "--sourcemap=inline",
        ])
        .arg(format!("--outfile={}", out.display()))
        .current_dir(&spec.root);
    let output = cmd.output().map_err(|e| {
        format!(
            "{} needs bundling (TypeScript or npm packages) but esbuild could not be run ({program}: {e}); install it with `npm install --save-dev esbuild` in {}",
            main.display(),
            spec.root.display()
        )
    })?;
    if !output.status.success() {
        return Err(format!(
            "bundling {} with esbuild failed:\n{}{}",
            main.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let warnings = String::from_utf8_lossy(&output.stderr);
    if !warnings.trim().is_empty() {
        tracing::warn!("esbuild: {}", warnings.trim());
    }
    spec.main = out.clone();
    Ok(Prepared::Bundled {
        with: format!("{program} {}", pre_args.join(" "))
            .trim()
            .to_string(),
        out,
    })
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// TypeScript/JSX, or an import of a package, anywhere reachable from `main` by relative
/// imports.
fn needs_bundle(main: &Path, root: &Path) -> bool {
    let mut seen = std::collections::HashSet::new();
    let mut todo = vec![main.to_path_buf()];
    while let Some(file) = todo.pop() {
        if !seen.insert(file.clone()) || seen.len() > 2000 {
            continue;
        }
        let ext = file.extension().and_then(|e| e.to_str()).unwrap_or("");
        if COMPILED.contains(&ext) {
            return true;
        }
        if !matches!(ext, "js" | "mjs" | "cjs") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        for spec in import_specifiers(&text) {
            if spec.starts_with("./") || spec.starts_with("../") || spec.starts_with('/') {
                let target = file.parent().unwrap_or(root).join(&spec);
                if target.starts_with(root) {
                    todo.push(target);
                }
            } else if !spec.starts_with("cloudflare:")
                && !spec.starts_with("node:")
                && !spec.starts_with("file:")
            {
                return true;
            }
        }
    }
    false
}

/// The module specifiers of `import ... from "x"`, `export ... from "x"`, `import "x"` and
/// `import("x")` in a source text (a scan, not a parser: good enough to decide whether to
/// bundle).
fn import_specifiers(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &bytes[i..];
        let after = if rest.starts_with(b"from") && boundary(bytes, i, 4) {
            Some(i + 4)
        } else if rest.starts_with(b"import") && boundary(bytes, i, 6) {
            Some(i + 6)
        } else {
            None
        };
        if let Some(mut j) = after {
            while j < bytes.len() && (bytes[j] == b' ' || bytes[j] == b'(' || bytes[j] == b'\t') {
                j += 1;
            }
            if j < bytes.len() && (bytes[j] == b'"' || bytes[j] == b'\'') {
                let quote = bytes[j];
                if let Some(len) = bytes[j + 1..].iter().position(|b| *b == quote) {
                    let spec = String::from_utf8_lossy(&bytes[j + 1..j + 1 + len]);
                    if !spec.contains('\n') {
                        out.push(spec.into_owned());
                    }
                }
            }
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    out
}

fn boundary(bytes: &[u8], start: usize, len: usize) -> bool {
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b == b'.';
    (start == 0 || !ident(bytes[start - 1])) && bytes.get(start + len).is_none_or(|b| !ident(*b))
}

/// `npm install` when the project declares packages but has none installed.
fn ensure_packages(root: &Path) -> Result<(), String> {
    if !root.join("package.json").is_file() || root.join("node_modules").is_dir() {
        return Ok(());
    }
    tracing::info!(
        "{}: package.json but no node_modules: running `npm install`",
        root.display()
    );
    let status = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund"])
        .current_dir(root)
        .status()
        .map_err(|e| format!("could not run `npm install` in {}: {e}", root.display()))?;
    if !status.success() {
        return Err(format!("`npm install` failed in {}", root.display()));
    }
    Ok(())
}

/// The esbuild to run: the project's, one on PATH, or one fetched by npx.
fn find_esbuild(root: &Path) -> (String, Vec<String>) {
    let mut dir = Some(root);
    while let Some(d) = dir {
        let candidate = d.join("node_modules").join(".bin").join("esbuild");
        if candidate.is_file() {
            return (candidate.display().to_string(), Vec::new());
        }
        dir = d.parent();
    }
    let on_path = Command::new("esbuild")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if on_path {
        return ("esbuild".into(), Vec::new());
    }
    ("npx".into(), vec!["--yes".into(), "esbuild@0.25".into()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_specifiers_of_imports_and_exports() {
        let src = r#"
import { Hono } from "hono";
import x, { y } from './local.js';
export { z } from "../up.mjs";
import "side-effect";
const m = await import('dynamic');
const from = 1; // not an import: «ünïcode» around
import { DurableObject } from "cloudflare:workers";
"#;
        assert_eq!(
            import_specifiers(src),
            vec![
                "hono",
                "./local.js",
                "../up.mjs",
                "side-effect",
                "dynamic",
                "cloudflare:workers"
            ]
        );
    }

    #[test]
    fn bundles_typescript_and_packages_but_not_plain_relative_modules() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("src")).unwrap();
        std::fs::write(
            root.join("src/a.js"),
            "import { b } from './b.js';\nexport default {};",
        )
        .unwrap();
        std::fs::write(
            root.join("src/b.js"),
            "import { DurableObject } from 'cloudflare:workers';\nexport const b = 1;",
        )
        .unwrap();
        assert!(!needs_bundle(&root.join("src/a.js"), root));
        std::fs::write(
            root.join("src/b.js"),
            "import { Hono } from 'hono';\nexport const b = 1;",
        )
        .unwrap();
        assert!(needs_bundle(&root.join("src/a.js"), root));
        std::fs::write(root.join("src/c.ts"), "export default {};").unwrap();
        assert!(needs_bundle(&root.join("src/c.ts"), root));
    }
}
