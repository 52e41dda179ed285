//! Durable Object migrations (`[[migrations]]`): which classes a worker exports as Durable
//! Objects, with which storage backend, under which namespace identity.
//!
//! Each tag is applied once per state directory and remembered in
//! `<state>/durable-object-migrations.json`, as Cloudflare remembers a deployed script's
//! migrations: a later run with the same tags changes nothing, a new tag is applied on top. A
//! class keeps its namespace key (which keys its ids and storage) when `renamed_classes`
//! renames it, so its objects and their data carry over.

use std::collections::BTreeMap;
use std::path::Path;

use cinder_stateless::{DurableObjectBinding, DurableObjectClass};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One `[[migrations]]` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Migration {
    pub tag: String,
    pub new_classes: Vec<String>,
    pub new_sqlite_classes: Vec<String>,
    pub renamed_classes: Vec<(String, String)>,
    pub deleted_classes: Vec<String>,
}

/// Reads `migrations` as written; `Err` names what is wrong.
pub fn parse(value: &Value) -> Result<Vec<Migration>, String> {
    let list = value
        .as_array()
        .ok_or("`migrations` must be a list of tables ([[migrations]])")?;
    let mut out = Vec::new();
    for (i, m) in list.iter().enumerate() {
        let at = |key: &str| format!("migrations[{i}].{key}");
        let obj = m
            .as_object()
            .ok_or_else(|| format!("migrations[{i}] must be a table"))?;
        let strings = |key: &str| -> Result<Vec<String>, String> {
            match obj.get(key) {
                None => Ok(Vec::new()),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|v| {
                        v.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| format!("{} must list class names", at(key)))
                    })
                    .collect(),
                Some(_) => Err(format!("{} must be a list of class names", at(key))),
            }
        };
        let tag = obj
            .get("tag")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{} is required (a string)", at("tag")))?
            .to_string();
        let mut renamed = Vec::new();
        if let Some(r) = obj.get("renamed_classes") {
            let r = r.as_array().ok_or_else(|| {
                format!("{} must be a list of {{from, to}}", at("renamed_classes"))
            })?;
            for e in r {
                let from = e.get("from").and_then(Value::as_str);
                let to = e.get("to").and_then(Value::as_str);
                match (from, to) {
                    (Some(f), Some(t)) => renamed.push((f.to_string(), t.to_string())),
                    _ => {
                        return Err(format!(
                            "{} entries need `from` and `to`",
                            at("renamed_classes")
                        ))
                    }
                }
            }
        }
        out.push(Migration {
            tag,
            new_classes: strings("new_classes")?,
            new_sqlite_classes: strings("new_sqlite_classes")?,
            renamed_classes: renamed,
            deleted_classes: strings("deleted_classes")?,
        });
    }
    Ok(out)
}

/// What the state directory remembers of one worker's migrations.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct WorkerState {
    applied: Vec<String>,
    classes: BTreeMap<String, ClassState>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct ClassState {
    key: String,
    sqlite: bool,
}

const STATE_FILE: &str = "durable-object-migrations.json";

/// The classes a worker exports as Durable Objects after applying its migrations (new tags are
/// applied and recorded in `state_dir`), plus the classes it binds without any migration,
/// which run KV-backed with a warning as under `wrangler dev`.
pub fn apply(
    state_dir: &Path,
    worker: &str,
    config_file: &str,
    migrations: &[Migration],
    bindings: &[DurableObjectBinding],
    warnings: &mut Vec<String>,
) -> Result<Vec<DurableObjectClass>, String> {
    let path = state_dir.join(STATE_FILE);
    let mut all: BTreeMap<String, WorkerState> = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            format!(
                "{}: unreadable ({e}); remove it to start over",
                path.display()
            )
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        Err(e) => return Err(format!("could not read {}: {e}", path.display())),
    };
    let before = all.clone();
    let state = all.entry(worker.to_string()).or_default();
    for m in migrations {
        if state.applied.contains(&m.tag) {
            continue;
        }
        let mut add = |name: &String, sqlite: bool| -> Result<(), String> {
            if state.classes.contains_key(name) {
                return Err(format!(
                    "{config_file}: migration {:?} creates Durable Object class {name:?}, which an earlier migration already created",
                    m.tag
                ));
            }
            state.classes.insert(
                name.clone(),
                ClassState {
                    key: format!("{worker}/{name}"),
                    sqlite,
                },
            );
            Ok(())
        };
        for c in &m.new_classes {
            add(c, false)?;
        }
        for c in &m.new_sqlite_classes {
            add(c, true)?;
        }
        for (from, to) in &m.renamed_classes {
            let class = state.classes.remove(from).ok_or_else(|| {
                format!(
                    "{config_file}: migration {:?} renames Durable Object class {from:?}, which does not exist",
                    m.tag
                )
            })?;
            if state.classes.contains_key(to) {
                return Err(format!(
                    "{config_file}: migration {:?} renames {from:?} to {to:?}, which already exists",
                    m.tag
                ));
            }
            state.classes.insert(to.clone(), class);
        }
        for c in &m.deleted_classes {
            if bindings
                .iter()
                .any(|b| b.script_name.is_none() && &b.class_name == c)
            {
                return Err(format!(
                    "{config_file}: migration {:?} deletes Durable Object class {c:?}, but a durable_objects binding still uses it; remove the binding first",
                    m.tag
                ));
            }
            state.classes.remove(c);
        }
        state.applied.push(m.tag.clone());
    }
    let mut classes: Vec<DurableObjectClass> = state
        .classes
        .iter()
        .map(|(name, c)| DurableObjectClass {
            class_name: name.clone(),
            unique_key: c.key.clone(),
            sqlite: c.sqlite,
        })
        .collect();
    let unmigrated: Vec<&str> = bindings
        .iter()
        .filter(|b| b.script_name.is_none() || b.script_name.as_deref() == Some(worker))
        .map(|b| b.class_name.as_str())
        .filter(|c| !classes.iter().any(|k| k.class_name == *c))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if !unmigrated.is_empty() {
        let list = unmigrated
            .iter()
            .map(|c| format!("\"{c}\""))
            .collect::<Vec<_>>()
            .join(", ");
        warnings.push(format!(
            "{config_file}: you have configured `durable_objects` exported by this Worker ({}), but no `migrations` for them. This may not work as expected until you add a `migrations` section to your configuration file. Add the following configuration:\n\n[[migrations]]\ntag = \"v1\"\nnew_sqlite_classes = [{list}]\n\nRefer to https://developers.cloudflare.com/durable-objects/reference/durable-objects-migrations/ for more details. Until then they run as KV-backed classes.",
            unmigrated.join(", ")
        ));
        for c in unmigrated {
            classes.push(DurableObjectClass {
                class_name: c.to_string(),
                unique_key: format!("{worker}/{c}"),
                sqlite: false,
            });
        }
    }
    if all != before {
        write_atomically(&path, &serde_json::to_vec_pretty(&all).unwrap_or_default())
            .map_err(|e| format!("could not record migrations in {}: {e}", path.display()))?;
    }
    Ok(classes)
}

/// Writes `bytes` to `path` so that a crash leaves either the old or the new file.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(class: &str) -> DurableObjectBinding {
        DurableObjectBinding {
            binding: class.to_uppercase(),
            class_name: class.into(),
            script_name: None,
        }
    }

    fn migrations(json: &str) -> Vec<Migration> {
        parse(&serde_json::from_str(json).unwrap()).unwrap()
    }

    #[test]
    fn tags_apply_once_and_renames_keep_the_namespace_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Vec::new();
        let v1 =
            migrations(r#"[{"tag":"v1","new_classes":["Counter"],"new_sqlite_classes":["Room"]}]"#);
        let c = apply(dir.path(), "app", "wrangler.toml", &v1, &[], &mut w).unwrap();
        assert_eq!(c.len(), 2);
        assert!(c.iter().any(|c| c.class_name == "Room" && c.sqlite));
        // The same tags again: nothing changes (and creating Counter twice is not an error).
        let again = apply(dir.path(), "app", "wrangler.toml", &v1, &[], &mut w).unwrap();
        assert_eq!(again, c);
        let v2 = migrations(
            r#"[{"tag":"v1","new_classes":["Counter"],"new_sqlite_classes":["Room"]},
                {"tag":"v2","renamed_classes":[{"from":"Counter","to":"Tally"}],"deleted_classes":["Room"]}]"#,
        );
        let after = apply(dir.path(), "app", "wrangler.toml", &v2, &[], &mut w).unwrap();
        assert_eq!(
            after,
            vec![DurableObjectClass {
                class_name: "Tally".into(),
                unique_key: "app/Counter".into(),
                sqlite: false,
            }]
        );
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn a_bound_class_without_migration_warns_and_runs_kv_backed() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Vec::new();
        let c = apply(
            dir.path(),
            "app",
            "wrangler.toml",
            &[],
            &[binding("Counter")],
            &mut w,
        )
        .unwrap();
        assert_eq!(c.len(), 1);
        assert!(!c[0].sqlite);
        assert!(w[0].contains("[[migrations]]\ntag = \"v1\"\nnew_sqlite_classes = [\"Counter\"]"));
    }

    #[test]
    fn deleting_a_bound_class_or_renaming_a_missing_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Vec::new();
        let m = migrations(
            r#"[{"tag":"v1","new_classes":["A"]},{"tag":"v2","deleted_classes":["A"]}]"#,
        );
        let e = apply(
            dir.path(),
            "app",
            "wrangler.toml",
            &m,
            &[binding("A")],
            &mut w,
        )
        .unwrap_err();
        assert!(e.contains("remove the binding first"), "{e}");
        let m = migrations(r#"[{"tag":"v1","renamed_classes":[{"from":"X","to":"Y"}]}]"#);
        let e = apply(dir.path(), "other", "wrangler.toml", &m, &[], &mut w).unwrap_err();
        assert!(e.contains("does not exist"), "{e}");
    }
}
