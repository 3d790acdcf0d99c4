//! [`Migrator`]: applies and rolls back migrations across one or more databases. The
//! command line runs it, and so can an application that migrates at start-up, as sqlx's
//! `migrate!` or refinery's `embed_migrations!` do.
//!
//! Invariants: every folder is parsed and every `depends_on` edge checked before a
//! database is touched; a run takes the migration lock of each database it acts on (in
//! name order, so two runs cannot deadlock), refuses edited applied files, decides the
//! whole order before the first migration runs, stops at the first failure, and releases
//! every lock on every path out.

use std::path::PathBuf;
use std::time::Duration;

use super::baseline::{to_record, Baseline};
use super::files::Migration;
use super::order::{check_dependencies, order_down, order_up, Step as Planned};
use super::plan::{check_applied_unchanged, pending, status_rows, to_revert, StatusRow};
use super::target::{MigrationTarget, Step};
use super::version::Version;
use super::{load_databases, load_folder_of, open_target, DatabaseMigrations};
use crate::config::{Config, DatabaseConfig, DatabaseKind};
use crate::error::{Error, Result};
use crate::migrate::history::{HistoryRow, Status};
use crate::secret::SecretUrl;

/// What a run reports as it goes, for a progress display.
#[derive(Debug)]
pub enum Event<'a> {
    Started(&'a str, &'a Migration, Step),
    Finished(&'a str, &'a Migration, Step, Duration),
    /// A dry run: this would run.
    WouldRun(&'a str, &'a Migration, Step),
}

/// One migration a run applied or rolled back (or, in a dry run, would have).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub database: String,
    pub version: String,
    pub name: String,
    pub duration: Duration,
}

/// The migrations of the selected databases, ready to run.
///
/// ```no_run
/// # async fn start() -> switchyard::Result<()> {
/// let migrator = switchyard::Migrator::new("postgres://app@localhost/app", "migrations/postgresql")?;
/// for applied in migrator.migrate().await? {
///     println!("applied {} {}", applied.version, applied.name);
/// }
/// # Ok(())
/// # }
/// ```
pub struct Migrator {
    config: Config,
    databases: Vec<DatabaseMigrations>,
    /// The other configured databases, read for what `depends_on` needs, never changed.
    others: Vec<DatabaseMigrations>,
    actor: String,
    dry_run: bool,
}

impl Migrator {
    /// One database at `url` (`postgres://`, `mongodb://`, or `http(s)://` for
    /// Elasticsearch) with its migrations in `folder`.
    pub fn new(url: &str, folder: impl Into<PathBuf>) -> Result<Migrator> {
        let kind = kind_of_url(url)?;
        let folder = folder.into();
        let name = kind.as_str().to_string();
        let mut config = Config::default();
        config.databases.insert(
            name.clone(),
            DatabaseConfig {
                kind,
                url: SecretUrl::new(url),
                ca_file: None,
                username: None,
                password: None,
                api_key: None,
            },
        );
        let databases = vec![load_folder_of(name, kind, folder)?];
        Migrator::checked(config, databases, Vec::new())
    }

    /// The databases named in `config` (all of them when `selected` is empty), each with
    /// its folder `migrations.dir/<name>`.
    pub fn from_config(config: Config, selected: &[String]) -> Result<Migrator> {
        let databases = load_databases(&config, selected)?;
        // The others are read only for what the selection depends on; a folder of theirs
        // that does not parse matters only when a dependency points into it.
        let others = config
            .databases
            .iter()
            .filter(|(name, _)| !databases.iter().any(|d| &d.name == *name))
            .filter_map(|(name, database)| {
                load_folder_of(
                    name.clone(),
                    database.kind,
                    config.migrations.dir.join(name),
                )
                .ok()
            })
            .collect();
        Migrator::checked(config, databases, others)
    }

    fn checked(
        config: Config,
        databases: Vec<DatabaseMigrations>,
        others: Vec<DatabaseMigrations>,
    ) -> Result<Migrator> {
        let all: Vec<DatabaseMigrations> = databases.iter().chain(&others).cloned().collect();
        let problems: Vec<_> = check_dependencies(&all)
            .into_iter()
            .filter(|p| {
                p.reason.starts_with("depends_on makes a cycle")
                    || databases.iter().any(|d| p.file.starts_with(&d.folder))
            })
            .collect();
        if !problems.is_empty() {
            return Err(Error::InvalidFiles(problems));
        }
        Ok(Migrator {
            config,
            databases,
            others,
            actor: crate::state::actor(),
            dry_run: false,
        })
    }

    /// A dry run: report what would run ([`Event::WouldRun`]) and change nothing.
    pub fn dry_run(mut self, dry_run: bool) -> Migrator {
        self.dry_run = dry_run;
        self
    }

    /// The selected databases with their parsed migrations.
    pub fn databases(&self) -> &[DatabaseMigrations] {
        &self.databases
    }

    /// Applies every pending migration.
    pub async fn migrate(&self) -> Result<Vec<Applied>> {
        self.migrate_to(None, &mut |_| {}).await
    }

    /// Applies the pending migrations up to and including `up_to` (all when `None`), in
    /// an order that honours every `depends_on`; stops at the first failure.
    pub async fn migrate_to(
        &self,
        up_to: Option<&Version>,
        on_event: &mut (dyn FnMut(Event<'_>) + Send),
    ) -> Result<Vec<Applied>> {
        let mut targets = self.open_all().await?;
        let outcome = async {
            let histories = self.prepare(&mut targets).await?;
            let queues = self
                .databases
                .iter()
                .zip(&histories)
                .map(|(d, history)| (d.name.as_str(), pending(&d.migrations, history, up_to)))
                .collect();
            let others = self.other_histories().await;
            let order = order_up(queues, |database, version| {
                let history = histories_of(self, &histories, &others, database);
                history.iter().any(|row| {
                    row.status == Status::Completed
                        && Version::parse_any(&row.version).is_ok_and(|v| &v == version)
                })
            })?;
            self.run(&mut targets, &order, Step::Up, on_event).await
        }
        .await;
        self.release(&mut targets, outcome).await
    }

    /// Undoes, newest first, everything applied after `to` in each selected database,
    /// undoing dependents before what they depend on.
    pub async fn rollback(
        &self,
        to: &Version,
        on_event: &mut (dyn FnMut(Event<'_>) + Send),
    ) -> Result<Vec<Applied>> {
        let mut targets = self.open_all().await?;
        let outcome = async {
            let histories = self.prepare(&mut targets).await?;
            let mut queues = Vec::new();
            for (d, history) in self.databases.iter().zip(&histories) {
                queues.push((
                    d.name.as_str(),
                    to_revert(&d.name, &d.migrations, history, to)?,
                ));
            }
            let others = self.other_histories().await;
            let mut applied: Vec<Planned<'_>> = Vec::new();
            for (d, history) in self
                .databases
                .iter()
                .zip(&histories)
                .chain(self.others.iter().zip(&others))
            {
                applied.extend(
                    d.migrations
                        .iter()
                        .filter(|m| {
                            history.iter().any(|row| {
                                row.status == Status::Completed
                                    && Version::parse_any(&row.version)
                                        .is_ok_and(|v| v == m.version)
                            })
                        })
                        .map(|m| (d.name.as_str(), m)),
                );
            }
            let order = order_down(queues, &applied)?;
            self.run(&mut targets, &order, Step::Down, on_event).await
        }
        .await;
        self.release(&mut targets, outcome).await
    }

    /// Records migrations as applied without running them: every version up to one, or
    /// what another tool's history says it applied. Everything is decided (and a failed
    /// or unknown version refused) before anything is recorded.
    pub async fn baseline(&self, baseline: &Baseline) -> Result<Vec<Applied>> {
        let mut targets = self.open_all().await?;
        let outcome = async {
            let histories = self.prepare(&mut targets).await?;
            let mut chosen = Vec::new();
            for ((d, history), target) in self
                .databases
                .iter()
                .zip(&histories)
                .zip(targets.iter_mut())
            {
                let rows = match baseline {
                    Baseline::From(tool) => target.foreign_history(*tool).await?,
                    Baseline::UpTo(_) => None,
                };
                chosen.push(to_record(
                    baseline,
                    &d.name,
                    &d.migrations,
                    rows.as_deref(),
                    history,
                )?);
            }
            let mut done = Vec::new();
            for ((d, list), target) in self.databases.iter().zip(chosen).zip(targets.iter_mut()) {
                for migration in list {
                    if !self.dry_run {
                        target.record_applied(migration, &self.actor).await?;
                    }
                    done.push(Applied {
                        database: d.name.clone(),
                        version: migration.version.to_string(),
                        name: migration.name.clone(),
                        duration: Duration::ZERO,
                    });
                }
            }
            Ok(done)
        }
        .await;
        self.release(&mut targets, outcome).await
    }

    /// Every migration of the selected databases with its recorded outcome.
    pub async fn status(&self) -> Result<Vec<StatusRow>> {
        let mut rows = Vec::new();
        for database in &self.databases {
            let mut target = open_target(&self.config, &database.name).await?;
            let history = target.history().await?;
            rows.extend(status_rows(&database.name, &database.migrations, &history));
        }
        Ok(rows)
    }

    /// Opens every selected database and, unless a dry run, takes their locks in name
    /// order; on a failure the locks taken are released.
    async fn open_all(&self) -> Result<Vec<Box<dyn MigrationTarget>>> {
        let mut targets = Vec::new();
        for database in &self.databases {
            targets.push(open_target(&self.config, &database.name).await?);
        }
        if self.dry_run {
            return Ok(targets);
        }
        let mut by_name: Vec<usize> = (0..targets.len()).collect();
        by_name.sort_by(|&a, &b| self.databases[a].name.cmp(&self.databases[b].name));
        for (n, &i) in by_name.iter().enumerate() {
            if let Err(e) = targets[i].lock(self.config.migrations.lock_wait).await {
                for &held in &by_name[..n] {
                    let _ = targets[held].unlock().await;
                }
                return Err(e);
            }
        }
        Ok(targets)
    }

    /// Makes each history table (unless a dry run), reads it, and refuses edited
    /// applied files.
    async fn prepare(
        &self,
        targets: &mut [Box<dyn MigrationTarget>],
    ) -> Result<Vec<Vec<HistoryRow>>> {
        let mut histories = Vec::new();
        for (database, target) in self.databases.iter().zip(targets.iter_mut()) {
            if !self.dry_run {
                target.prepare_history().await?;
            }
            let history = target.history().await?;
            check_applied_unchanged(&database.name, &database.migrations, &history)?;
            histories.push(history);
        }
        Ok(histories)
    }

    /// Whether `other` takes part in the selection's edges: a selected migration depends
    /// on it, or one of its migrations depends on a selected database.
    fn is_linked(&self, other: &DatabaseMigrations) -> bool {
        let needed = self
            .databases
            .iter()
            .flat_map(|d| &d.migrations)
            .flat_map(|m| &m.depends_on)
            .any(|dependency| dependency.database == other.name);
        let needing = other
            .migrations
            .iter()
            .flat_map(|m| &m.depends_on)
            .any(|dependency| self.databases.iter().any(|d| d.name == dependency.database));
        needed || needing
    }

    /// The histories of the other databases linked to the selection (others are not
    /// contacted and count as empty); one that cannot be read counts as empty too, so a
    /// dependency on it is reported as not applied.
    async fn other_histories(&self) -> Vec<Vec<HistoryRow>> {
        let mut histories = Vec::new();
        for database in &self.others {
            if !self.is_linked(database) {
                histories.push(Vec::new());
                continue;
            }
            let history = async {
                open_target(&self.config, &database.name)
                    .await?
                    .history()
                    .await
            }
            .await;
            histories.push(history.unwrap_or_else(|error| {
                tracing::warn!(database = %database.name, %error, "cannot read the migration history of a database the run depends on");
                Vec::new()
            }));
        }
        histories
    }

    async fn run(
        &self,
        targets: &mut [Box<dyn MigrationTarget>],
        order: &[Planned<'_>],
        step: Step,
        on_event: &mut (dyn FnMut(Event<'_>) + Send),
    ) -> Result<Vec<Applied>> {
        let mut done = Vec::new();
        for &(database, migration) in order {
            let applied = |duration| Applied {
                database: database.to_string(),
                version: migration.version.to_string(),
                name: migration.name.clone(),
                duration,
            };
            if self.dry_run {
                on_event(Event::WouldRun(database, migration, step));
                done.push(applied(Duration::ZERO));
                continue;
            }
            let i = self
                .databases
                .iter()
                .position(|d| d.name == database)
                .expect("ordered steps are of the selected databases");
            on_event(Event::Started(database, migration, step));
            let took = targets[i].apply(migration, step, &self.actor).await?;
            on_event(Event::Finished(database, migration, step, took));
            done.push(applied(took));
        }
        Ok(done)
    }

    /// Releases every lock whatever the outcome; the outcome's error wins.
    async fn release(
        &self,
        targets: &mut [Box<dyn MigrationTarget>],
        outcome: Result<Vec<Applied>>,
    ) -> Result<Vec<Applied>> {
        let mut released = Ok(());
        if !self.dry_run {
            for target in targets.iter_mut() {
                if let Err(e) = target.unlock().await {
                    released = released.and(Err(e));
                }
            }
        }
        let done = outcome?;
        released?;
        Ok(done)
    }
}

fn histories_of<'h>(
    migrator: &Migrator,
    histories: &'h [Vec<HistoryRow>],
    others: &'h [Vec<HistoryRow>],
    database: &str,
) -> &'h [HistoryRow] {
    let selected = migrator.databases.iter().position(|d| d.name == database);
    let other = migrator.others.iter().position(|d| d.name == database);
    match (selected, other) {
        (Some(i), _) => &histories[i],
        (None, Some(i)) => &others[i],
        (None, None) => &[],
    }
}

fn kind_of_url(url: &str) -> Result<DatabaseKind> {
    let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
    match scheme {
        "postgres" | "postgresql" => Ok(DatabaseKind::Postgresql),
        "mongodb" | "mongodb+srv" => Ok(DatabaseKind::Mongodb),
        "http" | "https" => Ok(DatabaseKind::Elasticsearch),
        _ => Err(Error::Usage(format!(
            "cannot tell the database from the URL scheme `{scheme}`: use postgres://, mongodb:// or http(s):// (Elasticsearch)"
        ))),
    }
}
