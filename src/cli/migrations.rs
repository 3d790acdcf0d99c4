//! `migrate`, `status`, `rollback`, `create` and `validate`.

use std::io::Write;

use super::audit;
use super::table::Table;
use crate::config::{Config, DatabaseKind};
use crate::error::{Error, Result};
use crate::migrate::{
    self, check_applied_unchanged, load_databases, load_every_folder, open_target, status_rows,
    Body, DatabaseMigrations, Event, Runner, Status, Step, Version, NO_TRANSACTION_MARKER,
};
use crate::state::{self, actor, Outcome, StateStore};

/// Parses a version given on the command line. It must name a version of the selected
/// folders (or one recorded in their databases), so that a typo never silently means
/// "everything"; `recorded` says whether a database knows it.
fn version_arg(text: &str, databases: &[DatabaseMigrations], recorded: bool) -> Result<Version> {
    let version = Version::parse(text).map_err(Error::Usage)?;
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

fn show_event(database: &str, event: Event<'_>) {
    let mut out = std::io::stdout().lock();
    let verb = |step| {
        if step == Step::Up {
            "applying"
        } else {
            "rolling back"
        }
    };
    match event {
        Event::Started(m, step) => {
            let _ = write!(
                out,
                "{database}: {} {} {} ... ",
                verb(step),
                m.version,
                m.name
            );
        }
        Event::Finished(_, _, took) => {
            let _ = writeln!(out, "done in {}ms", took.as_millis());
        }
        Event::WouldRun(m, step) => {
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

pub async fn migrate(
    config: &Config,
    version: Option<&str>,
    selected: &[String],
    dry_run: bool,
) -> Result<()> {
    let databases = load_databases(config, selected)?;
    let up_to = version
        .map(|v| version_arg(v, &databases, false))
        .transpose()?;
    // A dry run changes nothing, so it writes no audit entry.
    let store = if dry_run {
        None
    } else {
        Some(state::open(&config.state.url).await?)
    };
    let actor = actor();
    let runner = Runner {
        lock_wait: config.migrations.lock_wait,
        actor: &actor,
        dry_run,
    };
    for database in &databases {
        let name = database.name.as_str();
        let mut target = open_target(config, name).await?;
        let mut applied = Vec::new();
        let outcome = runner
            .migrate(
                target.as_mut(),
                &database.migrations,
                up_to.as_ref(),
                &mut |event| {
                    if let Event::Finished(m, ..) = &event {
                        applied.push(m.version.to_string());
                    }
                    show_event(name, event);
                },
            )
            .await;
        let nothing = "nothing to apply".to_string();
        let count = conclude(
            store.as_deref(),
            name,
            outcome,
            &applied,
            "applied",
            nothing,
        )
        .await?;
        let total = database.migrations.len();
        match (dry_run, count) {
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

/// Ends one database's run: finishes a FAILED progress line, and writes the audit entry
/// (`done`: the versions that ran, `verb` for them) unless `store` is `None` (dry run).
async fn conclude(
    store: Option<&dyn StateStore>,
    name: &str,
    outcome: Result<usize>,
    done: &[String],
    verb: &str,
    nothing: String,
) -> Result<usize> {
    if matches!(outcome, Err(Error::MigrationFailed { .. })) {
        println!("FAILED");
    }
    if let Some(store) = store {
        let (result, detail) = match &outcome {
            Ok(_) if done.is_empty() => (Outcome::Ok, nothing),
            Ok(_) => (Outcome::Ok, format!("{verb} {}", done.join(", "))),
            Err(e) if done.is_empty() => (Outcome::Failed, e.to_string()),
            Err(e) => (
                Outcome::Failed,
                format!("{verb} {} before: {e}", done.join(", ")),
            ),
        };
        audit::record(store, Some(name), result, detail).await;
    }
    outcome
}

pub async fn rollback(
    config: &Config,
    version: &str,
    selected: &[String],
    dry_run: bool,
) -> Result<()> {
    let databases = load_databases(config, selected)?;
    let wanted = Version::parse(version).map_err(Error::Usage)?;
    let mut recorded = wanted.is_zero();
    let mut targets = Vec::new();
    for database in &databases {
        let mut target = open_target(config, &database.name).await?;
        if !recorded {
            let history = target.history().await?;
            recorded = history
                .iter()
                .any(|row| Version::parse(&row.version).is_ok_and(|v| v == wanted));
        }
        targets.push(target);
    }
    let to = version_arg(version, &databases, recorded)?;
    // A dry run changes nothing, so it writes no audit entry.
    let store = if dry_run {
        None
    } else {
        Some(state::open(&config.state.url).await?)
    };
    let actor = actor();
    let runner = Runner {
        lock_wait: config.migrations.lock_wait,
        actor: &actor,
        dry_run,
    };
    for (database, mut target) in databases.iter().zip(targets) {
        let name = database.name.as_str();
        let mut reverted = Vec::new();
        let outcome = runner
            .rollback(target.as_mut(), &database.migrations, &to, &mut |event| {
                if let Event::Finished(m, ..) = &event {
                    reverted.push(m.version.to_string());
                }
                show_event(name, event);
            })
            .await;
        let nothing = format!("nothing to roll back after {to}");
        let count = conclude(
            store.as_deref(),
            name,
            outcome,
            &reverted,
            "rolled back",
            nothing,
        )
        .await?;
        match (dry_run, count) {
            (true, 0) | (false, 0) => println!("{name}: nothing applied after {to}"),
            (true, n) => println!("{name}: dry run: {n} would be rolled back; nothing was changed"),
            (false, n) => println!("{name}: {n} rolled back; now at {to}"),
        }
    }
    Ok(())
}

pub async fn status(config: &Config, selected: &[String], json: bool) -> Result<()> {
    let databases = load_databases(config, selected)?;
    let mut rows = Vec::new();
    for database in &databases {
        let mut target = open_target(config, &database.name).await?;
        let history = target.history().await?;
        rows.extend(status_rows(&database.name, &database.migrations, &history));
    }
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
    let base = format!("{prefix}_{slug}");
    let metadata = serde_json::json!({
        "version": version.to_string(),
        "name": slug,
        "description": description,
        "database_type": kind.as_str(),
        "migration_type": "schema",
    });
    let mut files: Vec<(String, String)> = Vec::new();
    match kind {
        DatabaseKind::Postgresql => {
            files.push((format!("{base}.json"), pretty(&metadata)));
            files.push((format!("{base}.sql"), format!("-- {description}\n-- Runs in one transaction. Put `{NO_TRANSACTION_MARKER}` on the first line for CREATE INDEX CONCURRENTLY.\n\n")));
            files.push((format!("{base}_rollback.sql"), format!("-- Undo: {description}\n-- Delete this file if the migration cannot be undone.\n\n")));
        }
        DatabaseKind::Mongodb | DatabaseKind::Elasticsearch => {
            let mut metadata = metadata;
            metadata["operations"] = serde_json::json!([]);
            files.push((format!("{base}.json"), pretty(&metadata)));
        }
    }
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
