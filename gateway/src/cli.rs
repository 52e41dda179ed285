//! The command line: `cinder dev` (wrangler-compatible flags), `cinder d1` (like
//! `wrangler d1 … --local`) and `cinder serve`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "cinder",
    version,
    about = "Run Cloudflare Workers projects on your own machine",
    long_about = "Run Cloudflare Workers projects on your own machine.\n\n\
Cinder reads a project's wrangler.toml / wrangler.jsonc as it is and serves the worker the way \
`wrangler dev` does: same config, same `env`, same Web APIs.",
    after_long_help = "Examples:\n  \
  cinder dev                              serve the project in the current directory on http://127.0.0.1:8787\n  \
  cinder dev examples/hello               serve another directory\n  \
  cinder dev path/to/wrangler.jsonc       serve a specific config file\n  \
  cinder dev -c api/wrangler.toml -c auth/wrangler.toml\n                                          \
  serve two workers; the first gets the HTTP traffic, the second is reachable through a\n                                          \
  service binding ([[services]] service = \"<its name>\")\n  \
  cinder dev --port 0                     pick a free port (printed on the \"Ready on\" line)\n  \
  RUST_LOG=debug cinder dev               more logging\n\n\
Run `cinder dev --help` for every option."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log line format on stderr: `text` for people, `json` (one object per line) for log
    /// shippers.
    #[arg(long, value_enum, global = true, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

// Parsed once per process: the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve a wrangler project locally (like `wrangler dev`).
    #[command(after_long_help = DEV_HELP)]
    Dev(DevArgs),
    /// Query and migrate the project's local D1 databases (like `wrangler d1 … --local`).
    #[command(subcommand)]
    D1(D1Command),
    /// Run a node hosting several projects, routed by their wrangler routes; SIGHUP deploys
    /// changed code without dropping requests.
    #[command(after_long_help = SERVE_HELP)]
    Serve(ServeArgs),
    /// Inspect the Durable Objects stored in a state directory (read-only; works while a node
    /// runs on it).
    #[command(subcommand)]
    Do(DoCommand),
}

#[derive(Debug, Subcommand)]
pub enum DoCommand {
    /// Namespaces and object ids, with the keys and bytes each object stores.
    #[command(after_long_help = DO_HELP)]
    List(DoListArgs),
    /// An object's stored values (all of them, or one KEY), decoded to JSON.
    #[command(after_long_help = DO_HELP)]
    Get(DoGetArgs),
}

const DO_HELP: &str = "Examples:\n  \
  cinder do list --state .cinder/state\n  \
  cinder do list --state .cinder/state Counter --json\n  \
  cinder do get --state .cinder/state Counter 4f0c…e1 count\n\n\
NAMESPACE is a class name (or worker/Class when several workers have the class). Values that \
JSON cannot express are tagged: {\"$type\": \"Date\", \"value\": …}, Map, Set, BigInt, \
ArrayBuffer and typed arrays (base64); anything else is shown as base64 with its V8 tag.";

#[derive(Debug, Args)]
pub struct DoListArgs {
    /// State directory, as given to `cinder dev --persist-to` [default: .cinder/state].
    #[arg(
        long,
        visible_alias = "persist-to",
        value_name = "DIR",
        default_value = ".cinder/state"
    )]
    pub state: PathBuf,

    /// Only this namespace (a class name, or worker/Class).
    #[arg(value_name = "NAMESPACE")]
    pub namespace: Option<String>,

    /// Also list the objects of the node's own services (KV, R2, D1, queues).
    #[arg(long)]
    pub all: bool,

    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DoGetArgs {
    /// State directory, as given to `cinder dev --persist-to` [default: .cinder/state].
    #[arg(
        long,
        visible_alias = "persist-to",
        value_name = "DIR",
        default_value = ".cinder/state"
    )]
    pub state: PathBuf,

    /// The namespace: a class name, or worker/Class.
    #[arg(value_name = "NAMESPACE")]
    pub namespace: String,

    /// The object id (64 hex digits, as `id.toString()` gives it).
    #[arg(value_name = "ID")]
    pub id: String,

    /// One key; without it, every key of the object.
    #[arg(value_name = "KEY")]
    pub key: Option<String>,
}

/// `cinder d1 …`: against the same state as `cinder dev --persist-to` (which must not be
/// running on it at the same time).
#[derive(Debug, Subcommand)]
pub enum D1Command {
    /// Run SQL against a local database (like `wrangler d1 execute DB --local`).
    #[command(after_long_help = D1_EXECUTE_HELP)]
    Execute(D1ExecuteArgs),
    /// Create, list and apply migrations (like `wrangler d1 migrations …`).
    #[command(subcommand)]
    Migrations(D1MigrationsCommand),
}

const D1_EXECUTE_HELP: &str = "Examples:\n  \
  cinder d1 execute DB --command \"SELECT * FROM users\"\n  \
  cinder d1 execute DB --file schema.sql\n  \
  cinder d1 execute my-database --command \"SELECT 1\" --json\n\n\
DB is the binding or the database_name of a [[d1_databases]] entry of the config.";

#[derive(Debug, Subcommand)]
pub enum D1MigrationsCommand {
    /// Create the next numbered, empty migration file in `migrations_dir`.
    Create(D1CreateArgs),
    /// List the migrations not yet applied to the local database.
    List(D1Target),
    /// Apply every migration not yet applied, in order, each in one transaction.
    Apply(D1Target),
}

/// Which database, in which project, with which state.
#[derive(Debug, Args)]
pub struct D1Target {
    /// The database: its binding or its `database_name` in the config.
    #[arg(value_name = "DATABASE")]
    pub database: String,

    /// Config file or project directory [default: the current directory].
    #[arg(short = 'c', long = "config", value_name = "CONFIG")]
    pub config: Option<PathBuf>,

    /// Use the `[env.NAME]` section of the config.
    #[arg(short = 'e', long = "env", value_name = "NAME")]
    pub env: Option<String>,

    /// Directory of local state, as given to `cinder dev --persist-to` [default:
    /// .cinder/state in the project directory].
    #[arg(long, value_name = "DIR")]
    pub persist_to: Option<PathBuf>,

    /// Accepted for wrangler compatibility: every database here is local.
    #[arg(long)]
    pub local: bool,

    /// Not supported: cinder has no remote databases.
    #[arg(long)]
    pub remote: bool,
}

#[derive(Debug, Args)]
pub struct D1ExecuteArgs {
    #[command(flatten)]
    pub target: D1Target,

    /// SQL to run (one or more statements).
    #[arg(long, value_name = "SQL")]
    pub command: Option<String>,

    /// A file of SQL to run.
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,

    /// Print the results as JSON only.
    #[arg(long)]
    pub json: bool,

    /// Accepted for wrangler compatibility (nothing is asked).
    #[arg(short = 'y', long)]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct D1CreateArgs {
    /// The database: its binding or its `database_name` in the config.
    #[arg(value_name = "DATABASE")]
    pub database: String,

    /// What the migration does; becomes its file name (`0002_<message>.sql`).
    #[arg(value_name = "MESSAGE")]
    pub message: String,

    /// Config file or project directory [default: the current directory].
    #[arg(short = 'c', long = "config", value_name = "CONFIG")]
    pub config: Option<PathBuf>,

    /// Use the `[env.NAME]` section of the config.
    #[arg(short = 'e', long = "env", value_name = "NAME")]
    pub env: Option<String>,
}

const DEV_HELP: &str = "Examples:\n  \
  cinder dev                                 project in the current directory\n  \
  cinder dev examples/hello --port 8080      another project, another port\n  \
  cinder dev -c a/wrangler.toml -c b/wrangler.toml\n                                             \
  two workers in one run; `a` serves HTTP, `b` answers service bindings\n  \
  cinder dev --test-scheduled                then: curl 'http://127.0.0.1:8787/__scheduled?cron=*+*+*+*+*'\n  \
  cinder dev --s3-port 9000                  also serve the R2 buckets over the S3 API:\n                                             \
  aws --endpoint-url http://127.0.0.1:9000 s3 ls s3://<bucket_name>\n                                             \
  (credentials: AWS_ACCESS_KEY_ID=cinder AWS_SECRET_ACCESS_KEY=cinder-secret)\n\n\
Secrets: put KEY=value lines in `.dev.vars` next to wrangler.toml; they appear in `env` like vars.\n\
Logging: RUST_LOG=info (default), RUST_LOG=debug, RUST_LOG=cinder=trace.\n\
Stop with Ctrl-C: in-flight requests finish first.";

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Project directory or config file (default: the current directory).
    #[arg(value_name = "DIR|CONFIG")]
    pub target: Option<PathBuf>,

    /// Config file of a worker to run; repeat to run several workers (the first one serves HTTP,
    /// the others are reachable through service bindings).
    #[arg(short = 'c', long = "config", value_name = "CONFIG")]
    pub configs: Vec<PathBuf>,

    /// Use the `[env.NAME]` section of the config(s).
    #[arg(short = 'e', long = "env", value_name = "NAME")]
    pub env: Option<String>,

    /// Port to listen on [default: 8787, or `[dev] port`; 0 picks a free one].
    #[arg(long)]
    pub port: Option<u16>,

    /// Address to listen on [default: 127.0.0.1, or `[dev] ip`].
    #[arg(long)]
    pub ip: Option<IpAddr>,

    /// Directory for local state (Durable Objects, KV, ...) [default: .cinder/state in the
    /// project directory].
    #[arg(long, value_name = "DIR")]
    pub persist_to: Option<PathBuf>,

    /// Let the global fetch() reach loopback and private addresses (refused by default).
    #[arg(long)]
    pub allow_private_fetch: bool,

    /// Executor threads running scripts [default: one per core].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,

    /// Serve `/__scheduled?cron=...` to fire the scheduled handler on demand.
    #[arg(long)]
    pub test_scheduled: bool,

    /// Largest request body accepted, in MB (Cloudflare's default plan limit is 100); past it
    /// the request gets 413.
    #[arg(long, value_name = "MB", default_value_t = 100)]
    pub max_body_mb: u64,

    /// Client connections served at once; a connection past it gets 503.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub max_connections: usize,

    /// How long a Durable Object whose only connections are hibernatable WebSockets stays in
    /// memory without events [default: 10000, Cloudflare's 10 s].
    #[arg(long, value_name = "MS")]
    pub hibernate_after_ms: Option<u64>,

    /// Serve `/metrics` (Prometheus) and `/healthz` on this address, e.g. 127.0.0.1:9787.
    /// Off unless given; never served on the worker's own listener.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,

    /// Extra string var for the primary worker, as KEY:VALUE (repeatable).
    #[arg(long = "var", value_name = "KEY:VALUE", value_parser = parse_var)]
    pub vars: Vec<(String, String)>,

    /// Serve the R2 buckets (`r2_buckets`) over an S3-compatible API on this port, on the same
    /// address as the worker (0 picks a free one). Off unless given. Requests must be signed
    /// with AWS Signature V4 (headers or presigned URLs) using the credentials below; the
    /// region is `auto` (`us-east-1` works too).
    #[arg(long, value_name = "PORT")]
    pub s3_port: Option<u16>,

    /// Access key id S3 clients sign with.
    #[arg(long, value_name = "ID", default_value = DEFAULT_S3_ACCESS_KEY_ID, requires = "s3_port")]
    pub s3_access_key_id: String,

    /// Secret access key S3 clients sign with.
    #[arg(long, value_name = "SECRET", default_value = DEFAULT_S3_SECRET_ACCESS_KEY, requires = "s3_port")]
    pub s3_secret_access_key: String,

    /// Test knob (hidden): run the KV engine's clock this many seconds ahead of the wall clock,
    /// so a test restarts the server "later" and sees keys expire without waiting.
    #[arg(long, value_name = "SECONDS", hide = true, default_value_t = 0)]
    pub kv_clock_offset: i64,
}

/// Credentials the S3 endpoint accepts when none are given: for local development only.
pub const DEFAULT_S3_ACCESS_KEY_ID: &str = "cinder";
pub const DEFAULT_S3_SECRET_ACCESS_KEY: &str = "cinder-secret";

fn parse_var(s: &str) -> Result<(String, String), String> {
    match s.split_once(':') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY:VALUE, got {s:?}")),
    }
}

const SERVE_HELP: &str = "Examples:\n  \
  cinder serve --config node.toml                 the projects and settings of node.toml\n  \
  cinder serve --config node.toml --state /var/lib/cinder --listen 0.0.0.0:80\n  \
  kill -HUP <pid>                                 deploy changed projects without dropping requests\n\n\
node.toml (relative paths are relative to it):\n  \
  [node]\n  \
  listen = \"0.0.0.0:8080\"\n  \
  state = \"/var/lib/cinder\"\n\n  \
  [[project]]\n  \
  path = \"/srv/shop\"      # its wrangler routes decide which requests it gets\n\n\
The README's \"cinder serve\" section lists every key.";

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The node's configuration file (node.toml).
    #[arg(short = 'c', long, value_name = "FILE")]
    pub config: PathBuf,

    /// Directory of the node's state [default: `[node] state` of the config].
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,

    /// Address to listen on [default: `[node] listen`, else 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,

    /// Serve `/metrics` (Prometheus) and `/healthz` on this address, never on the public one
    /// [default: `[node] admin`, else off].
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<std::net::SocketAddr>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn d1_commands_parse() {
        let cli = Cli::try_parse_from([
            "cinder",
            "d1",
            "execute",
            "DB",
            "--local",
            "--command",
            "SELECT 1",
            "--json",
            "-c",
            "w.toml",
            "--persist-to",
            "st",
        ])
        .unwrap();
        let Command::D1(D1Command::Execute(e)) = cli.command else {
            panic!("not d1 execute")
        };
        assert_eq!(e.target.database, "DB");
        assert_eq!(e.command.as_deref(), Some("SELECT 1"));
        assert!(e.json && e.target.local && !e.target.remote);
        assert_eq!(e.target.config, Some(PathBuf::from("w.toml")));
        assert_eq!(e.target.persist_to, Some(PathBuf::from("st")));

        let cli = Cli::try_parse_from(["cinder", "d1", "migrations", "create", "DB", "add users"])
            .unwrap();
        let Command::D1(D1Command::Migrations(D1MigrationsCommand::Create(c))) = cli.command else {
            panic!("not d1 migrations create")
        };
        assert_eq!(c.message, "add users");
        for sub in ["list", "apply"] {
            let cli = Cli::try_parse_from(["cinder", "d1", "migrations", sub, "DB", "--local"]);
            assert!(cli.is_ok(), "{sub}: {cli:?}");
        }
    }

    #[test]
    fn dev_flags_parse() {
        let cli = Cli::try_parse_from([
            "cinder",
            "dev",
            "proj",
            "-c",
            "a.toml",
            "--config",
            "b.toml",
            "--port",
            "0",
            "--ip",
            "0.0.0.0",
            "--allow-private-fetch",
            "--threads",
            "2",
            "--var",
            "A:b:c",
        ])
        .unwrap();
        let Command::Dev(d) = cli.command else {
            panic!("not dev")
        };
        assert_eq!(d.target, Some(PathBuf::from("proj")));
        assert_eq!(
            d.configs,
            vec![PathBuf::from("a.toml"), PathBuf::from("b.toml")]
        );
        assert_eq!(d.port, Some(0));
        assert!(d.allow_private_fetch);
        assert_eq!(d.threads, Some(2));
        assert_eq!(d.vars, vec![("A".to_string(), "b:c".to_string())]);
        assert_eq!(d.s3_port, None);
        assert_eq!(d.s3_access_key_id, DEFAULT_S3_ACCESS_KEY_ID);
    }

    #[test]
    fn ops_flags_and_do_commands_parse() {
        let cli = Cli::try_parse_from([
            "cinder",
            "dev",
            "--admin",
            "127.0.0.1:9787",
            "--log-format",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.log_format, LogFormat::Json);
        let Command::Dev(d) = cli.command else {
            panic!("not dev")
        };
        assert_eq!(d.admin, Some("127.0.0.1:9787".parse().unwrap()));
        assert!(Cli::try_parse_from(["cinder", "dev", "--admin", "9787"]).is_err());

        let cli =
            Cli::try_parse_from(["cinder", "do", "list", "--state", "st", "Counter"]).unwrap();
        let Command::Do(DoCommand::List(l)) = cli.command else {
            panic!("not do list")
        };
        assert_eq!(l.state, PathBuf::from("st"));
        assert_eq!(l.namespace.as_deref(), Some("Counter"));
        let cli =
            Cli::try_parse_from(["cinder", "do", "get", "--persist-to", "st", "C", "ab", "k"])
                .unwrap();
        let Command::Do(DoCommand::Get(g)) = cli.command else {
            panic!("not do get")
        };
        assert_eq!((g.namespace.as_str(), g.id.as_str()), ("C", "ab"));
        assert_eq!(g.key.as_deref(), Some("k"));
    }

    #[test]
    fn s3_flags_parse_and_credentials_need_the_port() {
        let cli = Cli::try_parse_from([
            "cinder",
            "dev",
            "--s3-port",
            "9000",
            "--s3-access-key-id",
            "id",
            "--s3-secret-access-key",
            "secret",
        ])
        .unwrap();
        let Command::Dev(d) = cli.command else {
            panic!("not dev")
        };
        assert_eq!(d.s3_port, Some(9000));
        assert_eq!(d.s3_access_key_id, "id");
        assert_eq!(d.s3_secret_access_key, "secret");
        let err = Cli::try_parse_from(["cinder", "dev", "--s3-access-key-id", "id"]).unwrap_err();
        assert!(err.to_string().contains("--s3-port"), "{err}");
    }
}
