//! The command line: what each command accepts, and how its results are shown. Human
//! output goes to stdout, logs to stderr; `--json` gives machine output for listings.

mod audit;
mod jobs;
mod migrations;
mod ops;
mod table;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::Config;
use crate::engine::Request;
use crate::error::Result;

#[derive(Debug, Parser)]
#[command(
    name = "switchyard",
    version,
    about = "Zero-downtime schema migrations and online backfills for PostgreSQL, MongoDB and Elasticsearch",
    long_about = "Zero-downtime schema migrations and online backfills.\n\n\
        Versioned migrations live in migrations/<database>/ (one folder per configured database) \
        and their history is kept in each database. Start with `switchyard status`.\n\n\
        Online jobs (copy, backfill) live in jobs/<name>.toml: `switchyard job plan jobs/NAME.toml` shows \
        what one will do, `switchyard job run` runs it, `switchyard serve` runs them all on their schedules.\n\n\
        Exit codes: 0 success; 1 a migration, job or check failed; 2 bad usage, bad configuration \
        or an invalid file (nothing was changed).",
    after_help = "Configuration: --config FILE (default config/switchyard.toml), overridden by \
        SWITCHYARD__SECTION__KEY environment variables, e.g. SWITCHYARD__DATABASES__POSTGRESQL__URL."
)]
pub struct Cli {
    /// Configuration file [default: config/switchyard.toml, or built-in defaults if absent]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Log format on stderr
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// More log detail on stderr (-v info, -vv debug); SWITCHYARD_LOG=filter overrides
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply pending migrations in version order; stop at the first failure
    #[command(
        after_help = "Folders of sqlx, golang-migrate, Flyway and dbmate are read as they are. Over several \
        databases, migrations run in one order that honours each one's depends_on.\n\n\
        Examples:\n  switchyard migrate\n  switchyard migrate --version 1.2.0 --databases postgresql\n  switchyard migrate --dry-run"
    )]
    Migrate {
        /// Apply up to and including this version
        #[arg(long, value_name = "V")]
        version: Option<String>,
        /// Only these databases (names from the configuration)
        #[arg(long, num_args = 1.., value_delimiter = ',', value_name = "NAME")]
        databases: Vec<String>,
        /// Print what would run, change nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Show every migration and its status (COMPLETED, FAILED, ROLLED_BACK, PENDING)
    Status {
        #[arg(long, num_args = 1.., value_delimiter = ',', value_name = "NAME")]
        databases: Vec<String>,
        /// Print a JSON array instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Undo everything applied after version V (V = 0 or 0.0.0 undoes all), newest first
    #[command(
        after_help = "A migration without a rollback file (NNN_name_rollback.sql) is irreversible: \
        rollback then refuses and changes nothing.\n\nExample:\n  switchyard rollback 1.0.0 --databases postgresql"
    )]
    Rollback {
        /// The version to return to
        #[arg(value_name = "V")]
        version: String,
        #[arg(long, num_args = 1.., value_delimiter = ',', value_name = "NAME")]
        databases: Vec<String>,
        /// Print what would run, change nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Create the files of a new migration with the next version
    #[command(
        after_help = "Example:\n  switchyard create \"Add user preferences\" --database postgresql"
    )]
    Create {
        /// What the migration does, in words; it becomes the file name
        name: String,
        /// The database (a name from the configuration, or postgresql/mongodb/elasticsearch)
        #[arg(long, value_name = "NAME")]
        database: String,
    },
    /// Record migrations as applied without running them: up to a version, or what another tool applied
    #[command(
        after_help = "For a database another tool already migrated: its history table \
        (flyway_schema_history, _sqlx_migrations, schema_migrations, alembic_version) is read and \
        those versions are recorded with the local files' checksums, so `migrate` runs only newer ones. \
        Refused, changing nothing, when that history names a version the folder lacks or a failed or \
        dirty migration. Alembic revisions match the file whose name starts with the revision \
        (0003_ae1027a6acf_add_email.sql).\n\nExamples:\n  switchyard baseline --from flyway --databases postgresql\n  \
        switchyard baseline 1.4.0 --databases postgresql"
    )]
    Baseline {
        /// Mark every version up to and including V applied (Flyway's baselineVersion)
        #[arg(
            value_name = "V",
            required_unless_present = "from",
            conflicts_with = "from"
        )]
        version: Option<String>,
        /// Read the versions another tool applied from its history table
        #[arg(long, value_enum, value_name = "TOOL")]
        from: Option<crate::migrate::Tool>,
        /// Only these databases (names from the configuration)
        #[arg(long, num_args = 1.., value_delimiter = ',', value_name = "NAME")]
        databases: Vec<String>,
        /// Print what would be recorded, change nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Check every migration file (format, versions) and, unless --offline, that applied files are unchanged
    Validate {
        /// Check the files only; do not connect to the databases
        #[arg(long)]
        offline: bool,
    },
    /// Online jobs: copy or backfill in throttled, resumable batches, catch up, verify, cut over
    #[command(subcommand)]
    Job(JobCommand),
    /// The daemon: run the jobs folder's jobs on their schedules and windows, resume
    /// unfinished ones, serve the HTTP API and /metrics (server.listen)
    #[command(
        after_help = "API: GET /jobs, GET /jobs/NAME, POST /jobs (a job file's TOML), \
        POST /jobs/NAME/pause|resume|cutover|contract|abort, PATCH /jobs/NAME {\"rows_per_second\": N}, \
        GET /metrics, /healthz, /readyz. With server.token set, changes need `Authorization: Bearer TOKEN`.\n\n\
        Many workers: with state.url on PostgreSQL, start `switchyard serve` on as many hosts as you like, \
        on the same configuration. One runs each job; the others copy its chunks while it copies \
        (a PostgreSQL target). `switchyard job status NAME --json` shows the chunks and who copied them."
    )]
    Serve {
        /// This worker's name in chunk leases, `job status` and the metrics' `worker` label
        /// (default: host and process id)
        #[arg(long, value_name = "ID")]
        worker_id: Option<String>,
    },
    /// Check every database and job: reachable, migrations, replication slots and the WAL
    /// they hold, aliases, failed or stuck jobs; exit 1 when something needs action
    #[command(
        after_help = "Each finding is ok, notice (worth knowing) or ACTION (something to do), with the \
        command or SQL that fixes it. A replication slot named switchyard_* that no unfinished job owns \
        is an ACTION: the WAL it holds grows until the disk fills.\n\nExamples:\n  switchyard health\n  \
        switchyard health --databases postgresql --json"
    )]
    Health {
        /// Only these databases (names from the configuration); jobs are always checked
        #[arg(long, num_args = 1.., value_delimiter = ',', value_name = "NAME")]
        databases: Vec<String>,
        /// Print a JSON array of findings instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Erase a data subject's personal data from every configured database (GDPR / DSGVO)
    #[command(
        after_help = "The mapping file (default config/erasure.toml) says where personal data lives: \
        [[erase]] entries with database, table|collection|index, field (the column or dotted path \
        holding the subject's id), action = \"delete\" or \"anonymise\" with set = { column = \"SQL\" } \
        (MongoDB, Elasticsearch: JSON values). PostgreSQL's entries run in one transaction. The \
        subject is recorded in the audit log only as a digest.\n\nExamples:\n  \
        switchyard erase --subject 4711 --dry-run\n  switchyard erase --subject 4711 --json"
    )]
    Erase {
        /// The data subject's id, as the mapping's fields hold it
        #[arg(long, value_name = "ID")]
        subject: String,
        /// The mapping file
        #[arg(long, value_name = "FILE", default_value = crate::ops::erase::DEFAULT_MAP)]
        map: PathBuf,
        /// Count what would be erased, change nothing
        #[arg(long)]
        dry_run: bool,
        /// Print the report as JSON
        #[arg(long)]
        json: bool,
    },
    /// Export a table, collection or index to JSON Lines, in batches; run it again to resume
    #[command(
        after_help = "Lines keep each store's types: a row as PostgreSQL's to_jsonb writes it, a document \
        in MongoDB's canonical Extended JSON, an index's {\"_id\", \"_source\"}. With --out, the export \
        goes to FILE.partial and is renamed to FILE when complete; a killed export resumes where it \
        stopped when run again. --where filters: SQL (PostgreSQL), a JSON query document (MongoDB), \
        a JSON query (Elasticsearch).\n\nExamples:\n  switchyard export --database postgresql --table public.customers --out customers.jsonl\n  \
        switchyard export --database mongodb --collection events --where '{\"kind\": \"login\"}' --out logins.jsonl"
    )]
    Export {
        #[command(flatten)]
        what: TransferTarget,
        /// The file to write [default: standard output, not resumable]
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Only what this condition matches
        #[arg(long = "where", value_name = "FILTER")]
        filter: Option<String>,
    },
    /// Import JSON Lines (as export writes them) into a table, collection or index, idempotently by key
    #[command(
        after_help = "Each row is upserted by its primary key, each document written by its _id, so \
        importing a file twice leaves the same data. A killed import resumes after the last batch \
        it wrote (FILE.import-progress). Sequences of the table are moved past the imported ids.\n\n\
        Example:\n  switchyard import --database postgresql --table public.customers customers.jsonl"
    )]
    Import {
        #[command(flatten)]
        what: TransferTarget,
        /// The JSON Lines file
        file: PathBuf,
    },
    /// Show the audit log: who ran what, when, and how it ended
    Audit {
        /// How many entries, newest first
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Only entries from this time on: 2026-12-01T09:00:00Z, 2026-12-01 (UTC), or 24h / 7days ago
        #[arg(long, value_name = "WHEN", value_parser = audit::parse_since)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// Print a JSON array instead of a table
        #[arg(long)]
        json: bool,
    },
}

/// What `export` and `import` act on: a database and one of its tables, collections or
/// indexes (the flag of its kind).
#[derive(Debug, clap::Args)]
pub struct TransferTarget {
    /// The database (a name from the configuration)
    #[arg(long, value_name = "NAME")]
    database: String,
    /// A PostgreSQL table (schema.table), with a primary key
    #[arg(long, value_name = "T")]
    table: Option<String>,
    /// A MongoDB collection
    #[arg(long, value_name = "C")]
    collection: Option<String>,
    /// An Elasticsearch index or alias
    #[arg(long, value_name = "I")]
    index: Option<String>,
}

impl TransferTarget {
    fn resolve(self, config: &Config) -> Result<crate::ops::transfer::Target> {
        crate::ops::transfer::target(
            config,
            &self.database,
            self.table,
            self.collection,
            self.index,
        )
    }
}

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Print what the job will do (phases, SQL, row estimate, what depends on the source); change nothing
    Plan {
        /// The job file (jobs/NAME.toml)
        file: PathBuf,
    },
    /// Run the job in the foreground as far as it can go; run it again to resume
    #[command(
        after_help = "Exits 0 when the job is done, or when its next step is manual (cutover, contract) \
        or not yet due; Ctrl-C stops at a batch boundary with the checkpoint written.\n\n\
        Example:\n  switchyard job run jobs/accounts_partitioned.toml"
    )]
    Run {
        /// The job file (jobs/NAME.toml)
        file: PathBuf,
        /// Serve Prometheus metrics on this address while the job runs (e.g. 127.0.0.1:9465)
        #[arg(long, value_name = "ADDR")]
        metrics_listen: Option<std::net::SocketAddr>,
        /// Once verified, keep applying the source's changes until `job cutover NAME`
        /// (from another shell or the API) instead of exiting: the cutover then has
        /// almost nothing left to drain. Ctrl-C stops at a batch boundary.
        #[arg(long)]
        follow: bool,
    },
    /// Show every job (or one) with its phase, progress, rate, lag and ETA
    Status {
        name: Option<String>,
        /// Print a JSON array instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Pause at the next batch boundary
    Pause { name: String },
    /// Continue a paused job
    Resume { name: String },
    /// Catch up, then cut over (once verified)
    Cutover { name: String },
    /// Run the contract step now
    Contract { name: String },
    /// Stop and undo: before cutover remove what expand made; after cutover swap back
    Abort { name: String },
    /// Change the copy rate live; 0 removes the limit
    Throttle {
        name: String,
        #[arg(long, value_name = "N")]
        rows_per_second: u64,
    },
}

/// Runs a parsed command line to completion.
pub async fn run(cli: Cli) -> Result<()> {
    let config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Migrate {
            version,
            databases,
            dry_run,
        } => migrations::migrate(&config, version.as_deref(), &databases, dry_run).await,
        Command::Status { databases, json } => migrations::status(&config, &databases, json).await,
        Command::Rollback {
            version,
            databases,
            dry_run,
        } => migrations::rollback(&config, &version, &databases, dry_run).await,
        Command::Baseline {
            version,
            from,
            databases,
            dry_run,
        } => migrations::baseline(&config, version.as_deref(), from, &databases, dry_run).await,
        Command::Create { name, database } => migrations::create(&config, &name, &database),
        Command::Validate { offline } => migrations::validate(&config, offline).await,
        Command::Job(command) => match command {
            JobCommand::Plan { file } => jobs::plan(&config, &file).await,
            JobCommand::Run {
                file,
                metrics_listen,
                follow,
            } => jobs::run(&config, &file, metrics_listen, follow).await,
            JobCommand::Status { name, json } => jobs::status(&config, name.as_deref(), json).await,
            JobCommand::Pause { name } => jobs::control(&config, &name, Request::Pause).await,
            JobCommand::Resume { name } => jobs::control(&config, &name, Request::Resume).await,
            JobCommand::Cutover { name } => jobs::control(&config, &name, Request::Cutover).await,
            JobCommand::Contract { name } => jobs::control(&config, &name, Request::Contract).await,
            JobCommand::Abort { name } => jobs::control(&config, &name, Request::Abort).await,
            JobCommand::Throttle {
                name,
                rows_per_second,
            } => jobs::control(&config, &name, Request::Throttle(rows_per_second)).await,
        },
        Command::Serve { worker_id } => {
            let worker = worker_id.unwrap_or_else(crate::state::default_worker_id);
            crate::serve::serve(
                config,
                std::sync::Arc::new(crate::serve::SystemClock),
                worker,
            )
            .await
        }
        Command::Health { databases, json } => ops::health(&config, &databases, json).await,
        Command::Export { what, out, filter } => {
            let target = what.resolve(&config)?;
            ops::export(&config, &target, filter.as_deref(), out.as_deref()).await
        }
        Command::Import { what, file } => {
            let target = what.resolve(&config)?;
            ops::import(&config, &target, &file).await
        }
        Command::Erase {
            subject,
            map,
            dry_run,
            json,
        } => ops::erase(&config, &subject, &map, dry_run, json).await,
        Command::Audit { limit, since, json } => audit::show(&config, limit, since, json).await,
    }
}
