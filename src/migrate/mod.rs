//! Versioned migrations (the seeds' migration system): files per database in the
//! formats of seed 003, history kept in each database, checksums, a lock per database,
//! dry runs.
//!
//! Data flows one way: [`files`] parses a folder into [`Migration`]s, [`plan`] decides
//! against the recorded [`HistoryRow`]s, [`runner`] applies through a
//! [`MigrationTarget`] that a backend implements.

mod baseline;
mod files;
mod formats;
mod history;
mod migrator;
mod operations;
mod order;
mod plan;
mod target;
pub mod undo;
mod version;

pub use baseline::{Baseline, ForeignRow, Tool};
pub use files::{load_folder, Body, Dependency, Migration, SqlScript};
pub use formats::{Format, DEPENDS_ON_MARKER, NO_TRANSACTION_MARKER};
pub use history::{HistoryRow, Status};
pub use migrator::{Applied, Event, Migrator};
pub use operations::{index_name, ElasticOperation, IndexKey, MongoOperation, Operation};
pub use plan::{check_applied_unchanged, status_rows, StatusRow};
pub use target::{MigrationTarget, Step};
pub use version::{Version, VersionStyle};

use std::path::{Path, PathBuf};

use crate::backend::elasticsearch::ElasticMigrations;
use crate::backend::mongodb::MongoMigrations;
use crate::backend::postgres::PostgresMigrations;
use crate::config::{Config, DatabaseKind};
use crate::error::{Error, FileProblem, Result};

/// One configured database with its parsed migration folder.
#[derive(Debug, Clone)]
pub struct DatabaseMigrations {
    pub name: String,
    pub kind: DatabaseKind,
    pub folder: PathBuf,
    pub migrations: Vec<Migration>,
}

/// The databases a command acts on: those named (each must be configured), or every
/// configured one. Their folders are parsed first, so that an invalid file anywhere
/// stops the command before anything changes.
pub fn load_databases(config: &Config, selected: &[String]) -> Result<Vec<DatabaseMigrations>> {
    let names: Vec<&String> = if selected.is_empty() {
        config.databases.keys().collect()
    } else {
        for name in selected {
            config.database(name)?;
        }
        selected.iter().collect()
    };
    if names.is_empty() {
        return Err(Error::Usage(
            "no databases are configured: add a [databases.NAME] section to the configuration (see config/switchyard.toml)".into(),
        ));
    }
    let named = names
        .into_iter()
        .map(|name| (name.clone(), config.databases[name].kind))
        .collect();
    load_named(config, named, Vec::new())
}

/// Parses the folder of each `(name, kind)`, reporting every problem (with `problems`
/// found before) at once.
fn load_named(
    config: &Config,
    named: Vec<(String, DatabaseKind)>,
    mut problems: Vec<FileProblem>,
) -> Result<Vec<DatabaseMigrations>> {
    let mut loaded = Vec::new();
    for (name, kind) in named {
        let folder = config.migrations.dir.join(&name);
        match load_folder_of(name, kind, folder) {
            Ok(database) => loaded.push(database),
            Err(Error::InvalidFiles(mut found)) => problems.append(&mut found),
            Err(other) => return Err(other),
        }
    }
    if problems.is_empty() {
        Ok(loaded)
    } else {
        Err(Error::InvalidFiles(problems))
    }
}

/// Parses one database's folder.
fn load_folder_of(name: String, kind: DatabaseKind, folder: PathBuf) -> Result<DatabaseMigrations> {
    let migrations = load_folder(&folder, kind).map_err(Error::InvalidFiles)?;
    Ok(DatabaseMigrations {
        name,
        kind,
        folder,
        migrations,
    })
}

/// Every folder under the migrations directory, configured or not, parsed; a folder that
/// is neither configured nor one of the default names is a problem, as is a `depends_on`
/// that names an unknown version or makes a cycle. For `validate`.
pub fn load_every_folder(config: &Config) -> Result<Vec<DatabaseMigrations>> {
    let dir = &config.migrations.dir;
    let mut names: Vec<String> = config.databases.keys().cloned().collect();
    let mut problems = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries.flatten().filter(|e| e.path().is_dir()) {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !name.starts_with('.') && !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(dir, e)),
    }
    names.sort();
    let mut named = Vec::new();
    for name in names {
        let kind = config
            .databases
            .get(&name)
            .map(|d| d.kind)
            .or_else(|| DatabaseKind::from_default_name(&name));
        match kind {
            Some(kind) => named.push((name, kind)),
            None => problems.push(FileProblem {
                file: dir.join(&name),
                reason: format!(
                    "no database named `{name}` in the configuration, so its kind is unknown"
                ),
            }),
        }
    }
    let loaded = load_named(config, named, problems)?;
    let problems = order::check_dependencies(&loaded);
    if problems.is_empty() {
        Ok(loaded)
    } else {
        Err(Error::InvalidFiles(problems))
    }
}

/// Connects to a configured database as a migration target.
pub async fn open_target(config: &Config, name: &str) -> Result<Box<dyn MigrationTarget>> {
    let database = config.database(name)?;
    match database.kind {
        DatabaseKind::Postgresql => Ok(Box::new(
            PostgresMigrations::connect(name, &database.url, config.migrations.lock_timeout)
                .await?,
        )),
        DatabaseKind::Mongodb => Ok(Box::new(
            MongoMigrations::connect(name, &database.url, &holder()).await?,
        )),
        DatabaseKind::Elasticsearch => Ok(Box::new(ElasticMigrations::connect(
            name,
            database,
            &holder(),
        )?)),
    }
}

/// Who holds a migration lock taken here, as a waiting run is told.
fn holder() -> String {
    format!("{} pid {}", crate::state::actor(), std::process::id())
}

/// The version `create` gives a new migration in `folder`, and the file prefix.
pub fn next_version(migrations: &[Migration], folder: &Path) -> (Version, String) {
    let highest_prefix = std::fs::read_dir(folder)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.split_once('_')
                .and_then(|(p, _)| p.parse::<u64>().ok())
        })
        .max()
        .unwrap_or(0);
    let prefix = format!("{:03}", highest_prefix + 1);
    let version = match migrations.iter().rfind(|m| !m.is_repeatable()) {
        Some(last) => last.version.next(),
        None => Version::parse("1.0.0").expect("a valid version"),
    };
    (version, prefix)
}
