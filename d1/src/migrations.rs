//! `wrangler d1 migrations create|list|apply` and `wrangler d1 execute`, as a library for the
//! gateway's `cinder d1 …` commands, with wrangler's files, table and output.
//!
//! - Migrations are the `*.sql` files directly in `migrations_dir` (default `migrations`, next
//!   to the wrangler config), ordered by their leading number (`0001_init.sql`), then by name.
//! - Applied ones are recorded in `d1_migrations` (or `migrations_table`) exactly as wrangler
//!   creates it: `id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE, applied_at TIMESTAMP
//!   DEFAULT CURRENT_TIMESTAMP NOT NULL`.
//! - `apply` runs each unapplied migration, in order, as one `batch` (its statements and the
//!   `INSERT` recording it: one transaction), and stops at the first that fails, which leaves
//!   nothing of itself behind. Migrations are never applied twice: the record commits with them.
//!
//! Each command returns what wrangler would print (`output`) and the structured outcome; the
//! CLI prints `output` and maps errors to its exit status. The prompts wrangler shows in a
//! terminal are answered "yes", as wrangler does in a non-interactive context.

use std::path::{Path, PathBuf};

use cinder_sql::split_statements;
use serde_json::Value;

use crate::error::D1Error;
use crate::result::{value_display, Statement};
use crate::service::D1Service;
use crate::table;

/// wrangler's default `migrations_dir`.
pub const DEFAULT_MIGRATIONS_DIR: &str = "migrations";
/// wrangler's default `migrations_table`.
pub const DEFAULT_MIGRATIONS_TABLE: &str = "d1_migrations";

/// An error of a CLI command; `Display` is wrangler's message (without its `✘ [ERROR]`).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// No migrations directory (wrangler: `No migrations present at <dir>.`).
    #[error("No migrations present at {0}.")]
    NoMigrationsDir(String),
    /// A migration name with a path separator.
    #[error("The migration name {0:?} contains a path separator (\"/\" or \"\\\"). Please remove this and try again.")]
    BadName(String),
    /// Reading or writing a file failed.
    #[error("{0}")]
    Io(String),
    /// Neither or both of `--command` and `--file`.
    #[error("{0}")]
    Usage(String),
    /// The database refused a statement: the message without its `D1_ERROR:` prefix, as
    /// wrangler prints it. For `apply`, `output` already names the failed migration.
    #[error("{message}")]
    Query { message: String, output: String },
}

/// Where the migrations of one database live.
#[derive(Debug, Clone)]
pub struct MigrationsConfig {
    /// The directory holding the wrangler config (`migrations_dir` is relative to it).
    pub project_dir: PathBuf,
    /// `migrations_dir` as configured, if it was.
    pub migrations_dir: Option<String>,
    /// `migrations_table`, if configured.
    pub migrations_table: Option<String>,
    /// The config file's name, for messages (`wrangler.toml`).
    pub config_file: String,
}

impl MigrationsConfig {
    fn dir(&self) -> PathBuf {
        self.project_dir.join(
            self.migrations_dir
                .as_deref()
                .unwrap_or(DEFAULT_MIGRATIONS_DIR),
        )
    }

    fn table(&self) -> &str {
        self.migrations_table
            .as_deref()
            .unwrap_or(DEFAULT_MIGRATIONS_TABLE)
    }

    fn missing_warning(&self) -> String {
        let mut w = String::from("No migrations folder found.");
        if self.migrations_dir.is_none() {
            w.push_str(&format!(
                " Set `migrations_dir` in your {} file to choose a different path.",
                self.config_file
            ));
        }
        w
    }

    fn existing_dir(&self, out: &mut String) -> Result<PathBuf, CliError> {
        let dir = self.dir();
        if dir.is_dir() {
            return Ok(dir);
        }
        out.push_str(&format!("▲ [WARNING] {}\n", self.missing_warning()));
        Err(CliError::NoMigrationsDir(dir.display().to_string()))
    }
}

/// How the CLI names the database in its messages (wrangler: `DB (id) from path`).
#[derive(Debug, Clone)]
pub struct Target {
    /// The name or binding given on the command line.
    pub name: String,
    /// The database's id (`database_id`, else the binding).
    pub id: String,
    /// Where its data lives (the `--persist-to` directory).
    pub location: String,
}

fn escape_identifier(id: &str) -> String {
    format!("\"{}\"", id.replace('"', "\"\""))
}

fn create_table_sql(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {}(\n\t\tid         INTEGER PRIMARY KEY AUTOINCREMENT,\n\t\tname       TEXT UNIQUE,\n\t\tapplied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP NOT NULL\n);",
        escape_identifier(table)
    )
}

/// The leading number of a migration file name (`0001_init.sql` → 1).
fn number(name: &str) -> Option<u64> {
    let head = name.split('_').next().unwrap_or("");
    let digits: String = head.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Migration files in apply order: numbered before unnumbered, by number, then by name.
pub fn migration_names(cfg: &MigrationsConfig) -> Result<Vec<String>, CliError> {
    let dir = cfg.dir();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(_) => return Ok(Vec::new()),
    };
    let mut names = Vec::new();
    for e in entries {
        let e = e.map_err(|e| CliError::Io(format!("reading {}: {e}", dir.display())))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let is_file = e.file_type().map(|t| t.is_file()).unwrap_or(false);
        if is_file && name.ends_with(".sql") && !name.starts_with('.') {
            names.push(name);
        }
    }
    names.sort_by(|a, b| match (number(a), number(b)) {
        (Some(x), Some(y)) if x != y => x.cmp(&y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        _ => a.cmp(b),
    });
    Ok(names)
}

/// What `migrations create` did.
#[derive(Debug, Clone)]
pub struct Created {
    pub file_name: String,
    pub path: PathBuf,
    pub output: String,
}

/// `wrangler d1 migrations create DB "message"`: the next numbered, empty migration file.
pub fn create(cfg: &MigrationsConfig, message: &str) -> Result<Created, CliError> {
    let name = message.replace(' ', "_");
    if name.contains('/') || name.contains('\\') {
        return Err(CliError::BadName(message.to_owned()));
    }
    let mut output = String::new();
    let dir = cfg.dir();
    if !dir.is_dir() {
        output.push_str(&format!(
            "? {}\nOk to create {}?\n🤖 Using fallback value in non-interactive context: yes\n",
            cfg.missing_warning(),
            dir.display()
        ));
        std::fs::create_dir_all(&dir)
            .map_err(|e| CliError::Io(format!("creating {}: {e}", dir.display())))?;
    }
    let next = migration_names(cfg)?
        .iter()
        .filter_map(|n| number(n))
        .max()
        .unwrap_or(0)
        + 1;
    let number = format!("{next:04}");
    let file_name = format!("{number}_{name}.sql");
    let path = dir.join(&file_name);
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    std::fs::write(&path, format!("-- Migration number: {number} \t {now}\n"))
        .map_err(|e| CliError::Io(format!("writing {}: {e}", path.display())))?;
    output.push_str(&format!(
        "✅ Successfully created Migration '{file_name}'!\n\nThe migration is available for editing here\n{}/{file_name}\n",
        dir.display()
    ));
    Ok(Created {
        file_name,
        path,
        output,
    })
}

async fn applied(db: &D1Service, table: &str) -> Result<Vec<String>, CliError> {
    let query = |e: D1Error| CliError::Query {
        message: e.cause(),
        output: String::new(),
    };
    db.query(Statement::new(create_table_sql(table)))
        .await
        .map_err(query)?;
    let list = db
        .query(Statement::new(format!(
            "SELECT *\n\t\tFROM {}\n\t\tORDER BY id",
            escape_identifier(table)
        )))
        .await
        .map_err(query)?;
    let col = list.columns.iter().position(|c| c == "name");
    Ok(list
        .rows
        .iter()
        .filter_map(|r| col.and_then(|i| r[i].as_str().map(str::to_owned)))
        .collect())
}

/// What `migrations list` found.
#[derive(Debug, Clone)]
pub struct Listed {
    pub unapplied: Vec<String>,
    pub output: String,
}

/// `wrangler d1 migrations list DB --local`: the migration files not yet applied.
pub async fn list(db: &D1Service, cfg: &MigrationsConfig) -> Result<Listed, CliError> {
    let mut output = String::new();
    cfg.existing_dir(&mut output)?;
    let done = applied(db, cfg.table()).await?;
    let unapplied: Vec<String> = migration_names(cfg)?
        .into_iter()
        .filter(|m| !done.contains(m))
        .collect();
    if unapplied.is_empty() {
        output.push_str("✅ No migrations to apply!\n");
    } else {
        output.push_str("Migrations to be applied:\n");
        let rows: Vec<Vec<String>> = unapplied.iter().map(|m| vec![m.clone()]).collect();
        output.push_str(&table::render(&["Name"], &rows));
    }
    Ok(Listed { unapplied, output })
}

/// What `migrations apply` did.
#[derive(Debug, Clone)]
pub struct Applied {
    /// Migrations applied by this run, in order.
    pub applied: Vec<String>,
    pub output: String,
}

/// `wrangler d1 migrations apply DB --local`: applies every unapplied migration in order,
/// each in one transaction together with its record in the migrations table.
pub async fn apply(
    db: &D1Service,
    cfg: &MigrationsConfig,
    target: &Target,
) -> Result<Applied, CliError> {
    let mut output = String::new();
    let dir = cfg.existing_dir(&mut output)?;
    let done = applied(db, cfg.table()).await?;
    let pending: Vec<String> = migration_names(cfg)?
        .into_iter()
        .filter(|m| !done.contains(m))
        .collect();
    if pending.is_empty() {
        output.push_str("✅ No migrations to apply!\n");
        return Ok(Applied {
            applied: Vec::new(),
            output,
        });
    }
    output.push_str("Migrations to be applied:\n");
    let names: Vec<Vec<String>> = pending.iter().map(|m| vec![m.clone()]).collect();
    output.push_str(&table::render(&["name"], &names));
    output.push_str(&format!(
        "? About to apply {} migration(s)\nYour database may not be available to serve requests during the migration, continue?\n🤖 Using fallback value in non-interactive context: yes\n",
        pending.len()
    ));
    let mut status: Vec<&str> = vec!["🕒️"; pending.len()];
    let mut applied = Vec::new();
    for (i, name) in pending.iter().enumerate() {
        let path = dir.join(name);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| CliError::Io(format!("reading {}: {e}", path.display())))?;
        let sql = format!(
            "{text}\nINSERT INTO {} (name)\nvalues ('{}');",
            escape_identifier(cfg.table()),
            name.replace('\'', "''")
        );
        let result = execute_statements(db, target, &sql).await;
        let (ok, err) = match result {
            Ok((_, log)) => {
                output.push_str(&log);
                (true, None)
            }
            Err(e) => (false, Some(e)),
        };
        status[i] = if ok { "✅" } else { "❌" };
        let rows: Vec<Vec<String>> = pending
            .iter()
            .zip(&status)
            .map(|(n, s)| vec![n.clone(), (*s).to_owned()])
            .collect();
        output.push_str(&table::render(&["name", "status"], &rows));
        if let Some(e) = err {
            output.push_str(&format!(
                "✘ [ERROR] Migration {name} failed with the following errors:\n"
            ));
            return Err(CliError::Query {
                message: e.cause(),
                output,
            });
        }
        applied.push(name.clone());
    }
    Ok(Applied { applied, output })
}

/// Splits `sql` and runs its statements as one `batch`; returns the results and wrangler's
/// log lines for a local execution.
async fn execute_statements(
    db: &D1Service,
    target: &Target,
    sql: &str,
) -> Result<(Vec<crate::D1Result>, String), D1Error> {
    let statements: Vec<Statement> = split_statements(sql)
        .into_iter()
        .map(Statement::new)
        .collect();
    let mut log = format!(
        "🌀 Executing on local database {} ({}) from {}:\n🌀 To execute on your remote database, add a --remote flag to your wrangler command.\n",
        target.name, target.id, target.location
    );
    let results = db.batch(statements).await?;
    log.push_str(&format!(
        "🚣 {} command{} executed successfully.\n",
        results.len(),
        if results.len() == 1 { "" } else { "s" }
    ));
    Ok((results, log))
}

/// What `d1 execute` produced.
#[derive(Debug, Clone)]
pub struct Executed {
    /// wrangler's `--json` document: `[{results, success, meta: {duration}}]`, one per
    /// statement.
    pub json: Value,
    pub output: String,
}

/// `wrangler d1 execute DB --local (--command SQL | --file PATH) [--json]`: the statements run
/// as one batch (one transaction). `--json` prints only the JSON document; otherwise the log
/// lines come first, then each result's rows as a table if `interactive` (stdout is a
/// terminal), else the JSON document, as wrangler does.
pub async fn execute(
    db: &D1Service,
    target: &Target,
    command: Option<&str>,
    file: Option<&Path>,
    json: bool,
    interactive: bool,
) -> Result<Executed, CliError> {
    let sql = match (command, file) {
        (Some(_), Some(_)) => {
            return Err(CliError::Usage(
                "Error: can't provide both --command and --file.".into(),
            ))
        }
        (Some(c), None) => c.to_owned(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .map_err(|e| CliError::Io(format!("reading {}: {e}", f.display())))?,
        (None, None) => {
            return Err(CliError::Usage(
                "Missing required option --command or --file. Provide a SQL command inline with --command=\"<SQL>\", or a path to a SQL file with --file=<path>.".into(),
            ))
        }
    };
    let (results, log) =
        execute_statements(db, target, &sql)
            .await
            .map_err(|e| CliError::Query {
                message: e.cause(),
                output: String::new(),
            })?;
    let doc: Vec<Value> = results
        .iter()
        .map(|r| {
            let rows: Vec<Value> = r
                .results_json()
                .into_iter()
                .zip(&r.rows)
                .map(|(mut obj, row)| {
                    // wrangler prints BLOBs (arrays) as "[1, 2]" strings.
                    if let Value::Object(m) = &mut obj {
                        for (v, raw) in m.values_mut().zip(row) {
                            if matches!(raw, cinder_sql::SqlValue::Blob(_)) {
                                *v = Value::String(value_display(raw));
                            }
                        }
                    }
                    obj
                })
                .collect();
            serde_json::json!({
                "results": rows,
                "success": true,
                "meta": { "duration": r.meta.duration },
            })
        })
        .collect();
    let json_doc = Value::Array(doc);
    let pretty = || {
        let mut s = serde_json::to_string_pretty(&json_doc).unwrap_or_default();
        s.push('\n');
        s
    };
    // As wrangler: `--json` prints the document alone; otherwise its log lines, then tables
    // when stdout is a terminal, else the same JSON document.
    let output = if json {
        pretty()
    } else if interactive {
        let mut s = log;
        for r in &results {
            if r.rows.is_empty() {
                continue;
            }
            let head: Vec<&str> = r.columns.iter().map(String::as_str).collect();
            let rows: Vec<Vec<String>> = r
                .rows
                .iter()
                .map(|row| row.iter().map(value_display).collect())
                .collect();
            s.push_str(&table::render(&head, &rows));
        }
        s
    } else {
        log + &pretty()
    };
    Ok(Executed {
        json: json_doc,
        output,
    })
}

/// wrangler's `--json` error document: `{"error": {"text": message}}`.
pub fn json_error(message: &str) -> String {
    let v = serde_json::json!({ "error": { "text": message } });
    serde_json::to_string_pretty(&v).unwrap_or_default()
}
