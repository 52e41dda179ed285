//! `cinder d1 execute|migrations …`: wrangler's `d1` commands against the local databases of
//! a project, i.e. the same state `cinder dev --persist-to` serves them from. No isolate is
//! started: the command opens the node's store and an actor runtime with D1's namespace only,
//! and prints what `cinder_d1::migrations` says wrangler prints.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use cinder_core::{Runtime, RuntimeConfig};
use cinder_d1::migrations::{self, CliError, MigrationsConfig, Target};
use cinder_d1::D1Service;
use cinder_storage::{Store, StoreConfig};

use crate::cli::{D1Command, D1MigrationsCommand, D1Target};
use crate::config::{self, D1Config, WorkerConfig};

/// Runs one `cinder d1` command; the exit status is 1 on any failure (as wrangler's).
pub fn run(cmd: D1Command) -> ExitCode {
    let json = matches!(&cmd, D1Command::Execute(e) if e.json);
    match dispatch(cmd) {
        Ok(output) => {
            print!("{output}");
            let _ = std::io::stdout().flush();
            ExitCode::SUCCESS
        }
        Err(Failure { output, message }) => {
            print!("{output}");
            if json {
                println!("{}", migrations::json_error(&message));
            } else {
                eprintln!("✘ [ERROR] {message}");
            }
            let _ = std::io::stdout().flush();
            ExitCode::FAILURE
        }
    }
}

/// What went wrong, with whatever was printed before it.
struct Failure {
    output: String,
    message: String,
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure {
            output: String::new(),
            message,
        }
    }
}

impl From<CliError> for Failure {
    fn from(e: CliError) -> Failure {
        match e {
            CliError::Query { message, output } => Failure { output, message },
            other => other.to_string().into(),
        }
    }
}

fn dispatch(cmd: D1Command) -> Result<String, Failure> {
    match cmd {
        D1Command::Execute(args) => {
            let project = Project::load(&args.target)?;
            let interactive = std::io::stdout().is_terminal();
            project.with_database(|db, target| async move {
                migrations::execute(
                    &db,
                    &target,
                    args.command.as_deref(),
                    args.file.as_deref(),
                    args.json,
                    interactive,
                )
                .await
                .map(|e| e.output)
            })
        }
        D1Command::Migrations(D1MigrationsCommand::Create(args)) => {
            let (worker, d1) = find(args.config.as_deref(), args.env.as_deref(), &args.database)?;
            let created = migrations::create(&migrations_config(&worker, &d1), &args.message)?;
            Ok(created.output)
        }
        D1Command::Migrations(D1MigrationsCommand::List(target)) => {
            let project = Project::load(&target)?;
            let cfg = migrations_config(&project.worker, &project.d1);
            project.with_database(|db, _| async move {
                migrations::list(&db, &cfg).await.map(|l| l.output)
            })
        }
        D1Command::Migrations(D1MigrationsCommand::Apply(target)) => {
            let project = Project::load(&target)?;
            let cfg = migrations_config(&project.worker, &project.d1);
            project.with_database(|db, target| async move {
                migrations::apply(&db, &cfg, &target)
                    .await
                    .map(|a| a.output)
            })
        }
    }
}

/// The worker config and the D1 entry named `name` (its binding or its `database_name`).
fn find(
    config: Option<&Path>,
    env: Option<&str>,
    name: &str,
) -> Result<(WorkerConfig, D1Config), Failure> {
    let target = config.unwrap_or(Path::new("."));
    let path = config::locate(target).map_err(|e| e.to_string())?;
    let worker = config::load(&path, env).map_err(|e| e.to_string())?;
    let d1 = worker
        .d1
        .iter()
        .find(|d| d.binding == name || d.database_name.as_deref() == Some(name))
        .cloned()
        .ok_or_else(|| {
            format!(
                "Couldn't find a D1 DB with the name or binding '{name}' in your {} file.",
                file_name(&worker.path)
            )
        })?;
    Ok((worker, d1))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

fn migrations_config(worker: &WorkerConfig, d1: &D1Config) -> MigrationsConfig {
    MigrationsConfig {
        project_dir: worker.spec.root.clone(),
        migrations_dir: d1.migrations_dir.clone(),
        migrations_table: d1.migrations_table.clone(),
        config_file: file_name(&worker.path),
    }
}

/// A project's database, resolved from the command line.
struct Project {
    worker: WorkerConfig,
    d1: D1Config,
    name: String,
    persist_to: PathBuf,
}

impl Project {
    fn load(t: &D1Target) -> Result<Project, Failure> {
        if t.remote {
            return Err(String::from(
                "cinder has no remote D1 databases: every database is local (drop --remote)",
            )
            .into());
        }
        let (worker, d1) = find(t.config.as_deref(), t.env.as_deref(), &t.database)?;
        // The same default as `cinder dev`.
        let persist_to = t
            .persist_to
            .clone()
            .unwrap_or_else(|| worker.spec.root.join(".cinder").join("state"));
        Ok(Project {
            worker,
            d1,
            name: t.database.clone(),
            persist_to,
        })
    }

    /// Opens the state, runs `f` against the database, and closes the state again.
    fn with_database<F, Fut>(self, f: F) -> Result<String, Failure>
    where
        F: FnOnce(D1Service, Target) -> Fut,
        Fut: std::future::Future<Output = Result<String, CliError>>,
    {
        let store_dir = self.persist_to.join("store");
        std::fs::create_dir_all(&store_dir).map_err(|e| {
            format!(
                "could not create the state directory {}: {e}",
                store_dir.display()
            )
        })?;
        let store = Store::open(&store_dir, StoreConfig::default()).map_err(|e| {
            format!(
                "could not open the local state in {} (is `cinder dev` running on it?): {e}",
                self.persist_to.display()
            )
        })?;
        let rt = Runtime::start(
            store,
            RuntimeConfig {
                threads: 1,
                ..RuntimeConfig::default()
            },
            vec![cinder_d1::namespace_spec()],
        )
        .map_err(|e| format!("could not start the database engine: {e}"))?;
        let result = (|| {
            let db = D1Service::from_runtime(&rt, &self.d1.key()).map_err(|e| e.to_string())?;
            let target = Target {
                name: self.name.clone(),
                id: self.d1.key(),
                location: self.persist_to.display().to_string(),
            };
            let io = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("could not start a runtime: {e}"))?;
            io.block_on(f(db, target)).map_err(Failure::from)
        })();
        // Waits for what the command wrote to be durable and the engine to stop.
        rt.shutdown();
        result
    }
}
