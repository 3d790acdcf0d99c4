//! `migrate`, `status`, `rollback`, `baseline`, `create` and `validate`.

use std::io::Write;

use chrono::Utc;

use super::table::Table;
use crate::config::{Config, DatabaseKind};
use crate::error::{Error, Result};
use crate::migrate::{
    self, check_applied_unchanged, load_every_folder, open_target, Baseline, Body,
    DatabaseMigrations, Event, Format, Migrator, Status, Step, Tool, Version,
    NO_TRANSACTION_MARKER,
};
use crate::state::{self, Outcome, StateStore};

/// Parses a version given on the command line: Flyway's dotted versions where a
/// selected folder uses them, else semver or a plain number.
fn parse_version(text: &str, databases: &[DatabaseMigrations]) -> Result<Version> {
    let dotted = databases.iter().any(|d| {
        d.migrations
            .iter()
            .any(|m| m.version.style() == migrate::VersionStyle::Dotted)
    });
    if dotted {
        Version::parse_any(text)
    } else {
        Version::parse(text)
    }
    .map_err(Error::Usage)
}

/// Parses a version given on the command line. It must name a version of the selected
/// folders (or one recorded in their databases), so that a typo never silently means
/// "everything"; `recorded` says whether a database knows it.
fn version_arg(text: &str, databases: &[DatabaseMigrations], recorded: bool) -> Result<Version> {
    let version = parse_version(text, databases)?;
    let in_files = databases
        .iter()
        .any(|d| d.migrations.iter().any(|m| m.version == version));
    if in_files || recorded {
        return Ok(version);
    }
    let folders: Vec<String> = databases
        .iter()
        .map(|d| d.folder.display().to_string())
        .collect();
    Err(Error::Usage(format!(
        "no migration has version `{text}` in {}",
        folders.join(", ")
    )))
}

fn show_event(event: Event<'_>) {
    let mut out = std::io::stdout().lock();
    let verb = |step| {
        if step == Step::Up {
            "applying"
        } else {
            "rolling back"
        }
    };
    match event {
        Event::Started(database, m, step) => {
            let _ = write!(
                out,
                "{database}: {} {} {} ... ",
                verb(step),
                m.version,
                m.name
            );
        }
        Event::Finished(.., took) => {
            let _ = writeln!(out, "done in {}ms", took.as_millis());
        }
        Event::WouldRun(database, m, step) => {
            let action = if step == Step::Up {
                "would apply"
            } else {
                "would roll back"
            };
            let _ = writeln!(out, "{database}: {action} {} {}", m.version, m.name);
            if let Body::Sql { up, down } = &m.body {
                let script = if step == Step::Up {
                    Some(up)
                } else {
                    down.as_ref()
                };
                if let Some(script) = script {
                    let mode = if script.transactional {
                        "in one transaction"
                    } else {
                        "statement by statement, no transaction"
                    };
                    let _ = writeln!(out, "    -- {} ({mode})", script.file.display());
                    for line in script
                        .sql
                        .lines()
                        .filter(|l| l.trim() != NO_TRANSACTION_MARKER)
                    {
                        let _ = writeln!(out, "    {line}");
                    }
                }
            }
        }
    }
    let _ = out.flush();
}

/// What a run did, followed through its events: the versions finished per database, and
/// the database of a migration started and not finished (where a failure happened).
#[derive(Default)]
struct Progress {
    finished: Vec<(String, String)>,
    running: Option<String>,
}

impl Progress {
    fn follow(&mut self, event: &Event<'_>) {
        match event {
            Event::Started(database, ..) => self.running = Some(database.to_string()),
            Event::Finished(database, m, ..) => {
                self.running = None;
                self.finished
                    .push((database.to_string(), m.version.to_string()));
            }
            Event::WouldRun(..) => {}
        }
    }

    fn done_in(&self, database: &str) -> Vec<String> {
        self.finished
            .iter()
            .filter(|(d, _)| d == database)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// Ends a run: finishes a FAILED progress line, and writes one audit entry per database
/// (`verb` for the versions that ran, `nothing` when none did) unless `store` is `None`
/// (dry run). A failure is the entry of the database it happened in, or of every
/// database when it came before any migration ran.
async fn conclude<T>(
    store: Option<&dyn StateStore>,
    databases: &[DatabaseMigrations],
    outcome: &Result<T>,
    progress: &Progress,
    verb: &str,
    nothing: &str,
) {
    if matches!(outcome, Err(Error::MigrationFailed { .. })) {
        println!("FAILED");
    }
    let Some(store) = store else {
        return;
    };
    let before_any = progress.running.is_none() && progress.finished.is_empty();
    for database in databases {
        let name = database.name.as_str();
        let done = progress.done_in(name);
        let failed_here = progress.running.as_deref() == Some(name) || before_any;
        let (result, detail) = match outcome {
            Err(e) if failed_here && done.is_empty() => (Outcome::Failed, e.to_string()),
            Err(e) if failed_here => (
                Outcome::Failed,
                format!("{verb} {} before: {e}", done.join(", ")),
            ),
            _ if done.is_empty() => (Outcome::Ok, nothing.to_string()),
            _ => (Outcome::Ok, format!("{verb} {}", done.join(", "))),
        };
        state::audit(store, Some(name), result, detail).await;
    }
}

pub async fn migrate(
    config: &Config,
    version: Option<&str>,
    selected: &[String],
    dry_run: bool,
) -> Result<()> {
    let migrator = Migrator::from_config(config.clone(), selected)?.dry_run(dry_run);
    let databases = migrator.databases();
    let up_to = version
        .map(|v| version_arg(v, databases, false))
        .transpose()?;
    // A dry run changes nothing, so it writes no audit entry.
    let store = if dry_run {
        None
    } else {
        Some(state::open(&config.state.url).await?)
    };
    let mut progress = Progress::default();
    let outcome = migrator
        .migrate_to(up_to.as_ref(), &mut |event| {
            progress.follow(&event);
            show_event(event);
        })
        .await;
    conclude(
        store.as_deref(),
        databases,
        &outcome,
        &progress,
        "applied",
        "nothing to apply",
    )
    .await;
    let done = outcome?;
    for database in databases {
        let name = database.name.as_str();
        let total = database.migrations.len();
        match (dry_run, done.iter().filter(|a| a.database == name).count()) {
            (true, 0) => {
                println!("{name}: dry run: nothing to apply ({total} migrations, all applied)")
            }
            (true, n) => println!("{name}: dry run: {n} would be applied; nothing was changed"),
            (false, 0) => println!("{name}: up to date ({total} migrations)"),
            (false, n) => println!("{name}: {n} applied"),
        }
    }
    Ok(())
}

pub async fn rollback(
    config: &Config,
    version: &str,
    selected: &[String],
    dry_run: bool,
) -> Result<()> {
    let migrator = Migrator::from_config(config.clone(), selected)?.dry_run(dry_run);
    let databases = migrator.databases();
    let wanted = parse_version(version, databases)?;
    let recorded = wanted.is_zero()
        || migrator.status().await?.iter().any(|row| {
            row.status != Status::Pending
                && Version::parse_any(&row.version).is_ok_and(|v| v == wanted)
        });
    let to = version_arg(version, databases, recorded)?;
    // A dry run changes nothing, so it writes no audit entry.
    let store = if dry_run {
        None
    } else {
        Some(state::open(&config.state.url).await?)
    };
    let mut progress = Progress::default();
    let outcome = migrator
        .rollback(&to, &mut |event| {
            progress.follow(&event);
            show_event(event);
        })
        .await;
    let nothing = format!("nothing to roll back after {to}");
    conclude(
        store.as_deref(),
        databases,
        &outcome,
        &progress,
        "rolled back",
        &nothing,
    )
    .await;
    let done = outcome?;
    for database in databases {
        let name = database.name.as_str();
        match (dry_run, done.iter().filter(|a| a.database == name).count()) {
            (_, 0) => println!("{name}: nothing applied after {to}"),
            (true, n) => println!("{name}: dry run: {n} would be rolled back; nothing was changed"),
            (false, n) => println!("{name}: {n} rolled back; now at {to}"),
        }
    }
    Ok(())
}

pub async fn baseline(
    config: &Config,
    version: Option<&str>,
    from: Option<Tool>,
    selected: &[String],
    dry_run: bool,
) -> Result<()> {
    let migrator = Migrator::from_config(config.clone(), selected)?.dry_run(dry_run);
    let databases = migrator.databases();
    let how = match (version, from) {
        (_, Some(tool)) => Baseline::From(tool),
        (Some(version), None) => Baseline::UpTo(version_arg(version, databases, false)?),
        (None, None) => {
            return Err(Error::Usage(
                "give a version (switchyard baseline 1.4.0) or a tool (--from flyway)".into(),
            ))
        }
    };
    let source = match from {
        Some(tool) => format!(" from {}'s {}", tool.name(), tool.table()),
        None => String::new(),
    };
    let outcome = migrator.baseline(&how).await;
    if !dry_run {
        let store = state::open(&config.state.url).await?;
        for database in databases {
            let (result, detail) = match &outcome {
                Ok(done) => {
                    let versions: Vec<&str> = done
                        .iter()
                        .filter(|a| a.database == database.name)
                        .map(|a| a.version.as_str())
                        .collect();
                    (
                        Outcome::Ok,
                        format!("baseline{source}: recorded {}", versions.join(", ")),
                    )
                }
                Err(e) => (Outcome::Failed, format!("baseline{source}: {e}")),
            };
            state::audit(store.as_ref(), Some(&database.name), result, detail).await;
        }
    }
    let done = outcome?;
    for database in databases {
        let versions: Vec<String> = done
            .iter()
            .filter(|a| a.database == database.name)
            .map(|a| format!("{} {}", a.version, a.name))
            .collect();
        let name = &database.name;
        match (dry_run, versions.is_empty()) {
            (_, true) => println!("{name}: nothing to record{source}: every version it names is recorded already"),
            (true, false) => println!(
                "{name}: dry run: would record as applied{source}, without running them:\n  {}",
                versions.join("\n  ")
            ),
            (false, false) => println!(
                "{name}: recorded as applied{source}, without running them:\n  {}\n`switchyard migrate` now runs only what comes after",
                versions.join("\n  ")
            ),
        }
    }
    Ok(())
}

pub async fn status(config: &Config, selected: &[String], json: bool) -> Result<()> {
    let migrator = Migrator::from_config(config.clone(), selected)?;
    let databases = migrator.databases();
    let rows = migrator.status().await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).expect("status rows serialise")
        );
        return Ok(());
    }
    if rows.is_empty() {
        let folders: Vec<String> = databases
            .iter()
            .map(|d| d.folder.display().to_string())
            .collect();
        println!("No migrations in {}. Create one with: switchyard create \"what it does\" --database NAME", folders.join(", "));
        return Ok(());
    }
    let mut table = Table::new(&[
        "STATUS", "DATABASE", "VERSION", "NAME", "APPLIED", "DURATION",
    ]);
    for row in &rows {
        let applied = row.status != Status::Pending;
        let mut notes = Vec::new();
        if let Some(error) = &row.error {
            notes.push(format!("Error: {error}"));
        }
        if let Some(warning) = &row.warning {
            notes.push(format!("Warning: {warning}"));
        }
        table.row(
            vec![
                row.status.as_str().to_string(),
                row.database.clone(),
                row.version.clone(),
                row.name.clone(),
                row.applied_at
                    .filter(|_| applied)
                    .map_or("-".into(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string()),
                row.duration_ms
                    .filter(|_| applied)
                    .map_or("-".into(), |d| format!("{d}ms")),
            ],
            notes,
        );
    }
    print!("{}", table.render());
    Ok(())
}

pub fn create(config: &Config, description: &str, database: &str) -> Result<()> {
    // A configured database, or a folder of seed 003's default names.
    let kind = config
        .database(database)
        .map(|configured| configured.kind)
        .or_else(|unknown| DatabaseKind::from_default_name(database).ok_or(unknown))?;
    let slug = slug(description);
    if slug.is_empty() {
        return Err(Error::Usage(format!(
            "`{description}` has no letters or digits to name a file after"
        )));
    }
    let folder = config.migrations.dir.join(database);
    let existing = migrate::load_folder(&folder, kind).map_err(Error::InvalidFiles)?;
    let (version, prefix) = migrate::next_version(&existing, &folder);
    std::fs::create_dir_all(&folder).map_err(|e| Error::io(&folder, e))?;
    let format = existing
        .iter()
        .rfind(|m| !m.is_repeatable() && !m.files.is_empty())
        .map_or(Format::Switchyard, |m| m.format);
    let last = existing.iter().rfind(|m| !m.is_repeatable());
    // Another tool's folder gets its next file in that tool's naming: the next number,
    // or a timestamp where the folder's versions are timestamps.
    let next = || match last {
        Some(m) if m.version.as_str().len() >= 14 => Utc::now().format("%Y%m%d%H%M%S").to_string(),
        Some(m) => m.version.next().to_string(),
        None => "1".to_string(),
    };
    let header = format!("-- {description}\n");
    let mut files: Vec<(String, String)> = Vec::new();
    let version = match (kind, format) {
        (DatabaseKind::Postgresql, format @ (Format::UpDown | Format::Flyway)) => {
            let v = next();
            let (up, down) = if format == Format::Flyway {
                (format!("V{v}__{slug}.sql"), format!("U{v}__{slug}.sql"))
            } else {
                (format!("{v}_{slug}.up.sql"), format!("{v}_{slug}.down.sql"))
            };
            files.push((up, header.clone()));
            files.push((down, format!("-- Undo: {description}\n")));
            v
        }
        (DatabaseKind::Postgresql, Format::Dbmate) => {
            let v = next();
            files.push((
                format!("{v}_{slug}.sql"),
                format!("-- migrate:up\n{header}\n-- migrate:down\n"),
            ));
            v
        }
        (DatabaseKind::Postgresql, Format::Switchyard) => {
            let base = format!("{prefix}_{slug}");
            files.push((
                format!("{base}.json"),
                pretty(&metadata(&version, &slug, description, kind)),
            ));
            files.push((format!("{base}.sql"), format!("{header}-- Runs in one transaction. Put `{NO_TRANSACTION_MARKER}` on the first line for CREATE INDEX CONCURRENTLY.\n\n")));
            files.push((format!("{base}_rollback.sql"), format!("-- Undo: {description}\n-- Delete this file if the migration cannot be undone.\n\n")));
            version.to_string()
        }
        (DatabaseKind::Mongodb | DatabaseKind::Elasticsearch, _) => {
            let mut metadata = metadata(&version, &slug, description, kind);
            metadata["operations"] = serde_json::json!([]);
            files.push((format!("{prefix}_{slug}.json"), pretty(&metadata)));
            version.to_string()
        }
    };
    for (name, _) in &files {
        let path = folder.join(name);
        if path.exists() {
            return Err(Error::Refused(format!(
                "{}: already exists; nothing was created",
                path.display()
            )));
        }
    }
    for (name, text) in &files {
        let path = folder.join(name);
        std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
        println!("created {}", path.display());
    }
    println!(
        "version {version}: edit the files, then run `switchyard migrate --databases {database}`"
    );
    Ok(())
}

/// Seed 003's metadata file of a new migration.
fn metadata(
    version: &Version,
    slug: &str,
    description: &str,
    kind: DatabaseKind,
) -> serde_json::Value {
    serde_json::json!({
        "version": version.to_string(),
        "name": slug,
        "description": description,
        "database_type": kind.as_str(),
        "migration_type": "schema",
    })
}

fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).expect("JSON serialises") + "\n"
}

/// `Add user preferences` → `add_user_preferences`.
fn slug(text: &str) -> String {
    let lowered: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    lowered
        .split('_')
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join("_")
}

pub async fn validate(config: &Config, offline: bool) -> Result<()> {
    let databases = load_every_folder(config)?;
    let mut checked_against = Vec::new();
    if !offline {
        for database in databases.iter().filter(|d| {
            d.kind != DatabaseKind::Elasticsearch && config.databases.contains_key(&d.name)
        }) {
            let mut target = open_target(config, &database.name).await?;
            let history = target.history().await?;
            check_applied_unchanged(&database.name, &database.migrations, &history)?;
            checked_against.push(database.name.clone());
        }
    }
    for database in &databases {
        println!(
            "{}: {} migrations, valid",
            database.folder.display(),
            database.migrations.len()
        );
    }
    if offline {
        println!("files checked (offline: applied checksums not compared)");
    } else if !checked_against.is_empty() {
        println!("applied checksums match in: {}", checked_against.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::slug;

    #[test]
    fn slugs_are_snake_case() {
        assert_eq!(slug("Add user preferences"), "add_user_preferences");
        assert_eq!(slug("  Fix: index (v2)!"), "fix_index_v2");
        assert_eq!(slug("!!!"), "");
    }
}
