//! Baselines: recording migrations as applied without running them, for a database
//! that another tool (or a hand) already brought that far. Pure decisions over the other
//! tool's history rows, read by the backend as text.
//!
//! Invariant: a baseline records only versions the folder has (so a checksum can be
//! kept), never over a failed or dirty migration of the other tool, and decides everything
//! before it records anything.

use super::files::Migration;
use super::history::{HistoryRow, Status};
use super::version::Version;
use crate::error::{Error, Result};

/// A migration tool whose history table a baseline reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Tool {
    Flyway,
    Sqlx,
    GolangMigrate,
    Dbmate,
    Alembic,
}

impl Tool {
    pub fn name(self) -> &'static str {
        match self {
            Tool::Flyway => "Flyway",
            Tool::Sqlx => "sqlx",
            Tool::GolangMigrate => "golang-migrate",
            Tool::Dbmate => "dbmate",
            Tool::Alembic => "Alembic",
        }
    }

    /// The table the tool keeps its history in (its default name).
    pub fn table(self) -> &'static str {
        match self {
            Tool::Flyway => "flyway_schema_history",
            Tool::Sqlx => "_sqlx_migrations",
            Tool::GolangMigrate | Tool::Dbmate => "schema_migrations",
            Tool::Alembic => "alembic_version",
        }
    }

    /// The query that reads the history, every column as text, in the order applied.
    pub fn query(self) -> &'static str {
        match self {
            Tool::Flyway => "SELECT version, type, script, success::text FROM flyway_schema_history ORDER BY installed_rank",
            Tool::Sqlx => "SELECT version::text, success::text FROM _sqlx_migrations ORDER BY version",
            Tool::GolangMigrate => "SELECT version::text, dirty::text FROM schema_migrations",
            Tool::Dbmate => "SELECT version::text FROM schema_migrations ORDER BY version",
            Tool::Alembic => "SELECT version_num::text FROM alembic_version",
        }
    }
}

/// One row of [`Tool::query`]: its columns as text (`None` for NULL).
pub type ForeignRow = Vec<Option<String>>;

/// What a baseline records: up to a version, or what another tool applied.
#[derive(Debug, Clone)]
pub enum Baseline {
    UpTo(Version),
    From(Tool),
}

/// What a tool's history says.
#[derive(Debug, Default, PartialEq, Eq)]
struct Said {
    /// Versions applied, as the tool writes them.
    versions: Vec<String>,
    /// Applied along with every version before it (golang-migrate keeps only the last;
    /// Alembic names its head revision).
    through: Option<String>,
    /// Flyway's baseline: every version up to it counts as applied, file or not.
    below: Option<String>,
    /// Failed or dirty migrations, described.
    unfinished: Vec<String>,
}

fn text(row: &ForeignRow, column: usize) -> Option<&str> {
    row.get(column).and_then(|c| c.as_deref())
}

fn interpret(tool: Tool, rows: &[ForeignRow]) -> Result<Said> {
    let mut said = Said::default();
    match tool {
        Tool::Flyway => {
            for row in rows {
                let (version, kind, script) = (text(row, 0), text(row, 1), text(row, 2));
                let kind = kind.unwrap_or("");
                if text(row, 3) != Some("true") {
                    said.unfinished.push(format!(
                        "{} ({}) failed",
                        version.unwrap_or("repeatable"),
                        script.unwrap_or("")
                    ));
                    continue;
                }
                let version = match (version, script) {
                    (Some(v), _) => v.to_string(),
                    // A repeatable migration: its script is R__name.sql.
                    (None, Some(script)) => script
                        .trim_end_matches(".sql")
                        .rsplit('/')
                        .next()
                        .unwrap_or(script)
                        .to_string(),
                    (None, None) => continue,
                };
                match kind {
                    "BASELINE" => said.below = Some(version),
                    k if k.starts_with("UNDO") || k == "DELETE" => {
                        said.versions.retain(|v| v != &version)
                    }
                    "SCHEMA" => {}
                    _ if !said.versions.contains(&version) => said.versions.push(version),
                    _ => {}
                }
            }
        }
        Tool::Sqlx => {
            for row in rows {
                let version = text(row, 0).unwrap_or_default().to_string();
                if text(row, 1) == Some("true") {
                    said.versions.push(version);
                } else {
                    said.unfinished.push(format!("{version} failed"));
                }
            }
        }
        Tool::GolangMigrate => {
            if rows.len() > 1 {
                return Err(Error::Refused(format!(
                    "schema_migrations has {} rows, but golang-migrate keeps one: is this dbmate's table? (use --from dbmate)",
                    rows.len()
                )));
            }
            if let Some(row) = rows.first() {
                let version = text(row, 0).unwrap_or_default().to_string();
                if text(row, 1) == Some("true") {
                    said.unfinished.push(format!("{version} is dirty"));
                } else {
                    said.through = Some(version);
                }
            }
        }
        Tool::Dbmate => {
            said.versions = rows
                .iter()
                .filter_map(|r| text(r, 0).map(str::to_string))
                .collect();
        }
        Tool::Alembic => {
            if rows.len() > 1 {
                return Err(Error::Refused(
                    "alembic_version names several heads (branches): merge them with Alembic first"
                        .into(),
                ));
            }
            said.through = rows.first().and_then(|r| text(r, 0)).map(str::to_string);
        }
    }
    Ok(said)
}

/// The migration a tool's version names: by version, or for Alembic the one whose name
/// is the revision or starts with `<revision>_` (as `0003_ae1027a6acf_add_email.sql`).
fn named<'m>(tool: Tool, migrations: &'m [Migration], version: &str) -> Option<&'m Migration> {
    if tool == Tool::Alembic {
        return migrations
            .iter()
            .find(|m| m.name == version || m.name.starts_with(&format!("{version}_")));
    }
    let version = Version::parse_any(version).ok()?;
    migrations.iter().find(|m| m.version == version)
}

/// The migrations of `database` a baseline records: those the other tool's `rows` say it
/// applied (or every one up to a version), less those already recorded as applied.
pub fn to_record<'m>(
    baseline: &Baseline,
    database: &str,
    migrations: &'m [Migration],
    rows: Option<&[ForeignRow]>,
    history: &[HistoryRow],
) -> Result<Vec<&'m Migration>> {
    let chosen: Vec<&Migration> = match baseline {
        Baseline::UpTo(version) => migrations
            .iter()
            .filter(|m| !m.is_repeatable() && &m.version <= version)
            .collect(),
        Baseline::From(tool) => {
            let tool = *tool;
            let Some(rows) = rows else {
                return Err(Error::Refused(format!(
                    "database `{database}` has no table {}: nothing to baseline from {} (was it migrated by {} with its default table name?)",
                    tool.table(),
                    tool.name(),
                    tool.name()
                )));
            };
            let said = interpret(tool, rows)?;
            if !said.unfinished.is_empty() {
                return Err(Error::Refused(format!(
                    "{} in `{database}` records a migration that did not finish: {}; repair it with {} first (nothing was changed)",
                    tool.table(),
                    said.unfinished.join(", "),
                    tool.name()
                )));
            }
            let mut missing = Vec::new();
            let mut chosen: Vec<&Migration> = Vec::new();
            for version in &said.versions {
                match named(tool, migrations, version) {
                    Some(m) => chosen.push(m),
                    None => missing.push(version.clone()),
                }
            }
            if let Some(version) = &said.through {
                match named(tool, migrations, version) {
                    Some(last) => chosen.extend(
                        migrations
                            .iter()
                            .filter(|m| !m.is_repeatable() && m.version <= last.version),
                    ),
                    None => missing.push(version.clone()),
                }
            }
            if let Some(below) = said
                .below
                .as_deref()
                .and_then(|v| Version::parse_any(v).ok())
            {
                chosen.extend(
                    migrations
                        .iter()
                        .filter(|m| !m.is_repeatable() && m.version <= below),
                );
            }
            if !missing.is_empty() {
                return Err(Error::Refused(format!(
                    "{} in `{database}` names {} that no file of the folder has: {} (nothing was changed)",
                    tool.table(),
                    if missing.len() == 1 { "a version" } else { "versions" },
                    missing.join(", ")
                )));
            }
            chosen
        }
    };
    let mut chosen: Vec<&Migration> = chosen
        .into_iter()
        .filter(|m| {
            !history.iter().any(|row| {
                row.status == Status::Completed
                    && Version::parse_any(&row.version).is_ok_and(|v| v == m.version)
            })
        })
        .collect();
    chosen.sort_by(|a, b| a.version.cmp(&b.version));
    chosen.dedup_by(|a, b| a.version == b.version);
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn migration(version: Version, name: &str) -> Migration {
        Migration::for_test(version, name)
    }

    fn row(columns: &[Option<&str>]) -> ForeignRow {
        columns.iter().map(|c| c.map(str::to_string)).collect()
    }

    /// A row of `flyway_schema_history` as the query reads it.
    fn flyway(version: Option<&str>, kind: &str, script: &str, success: bool) -> ForeignRow {
        row(&[
            version,
            Some(kind),
            Some(script),
            Some(if success { "true" } else { "false" }),
        ])
    }

    /// The versions a baseline records (or its refusal), with nothing recorded before.
    fn recorded(
        baseline: Baseline,
        folder: &[Migration],
        rows: Option<&[ForeignRow]>,
    ) -> std::result::Result<Vec<String>, String> {
        to_record(&baseline, "pg", folder, rows, &[])
            .map(|chosen| chosen.iter().map(|m| m.version.to_string()).collect())
            .map_err(|e| e.to_string())
    }

    fn flyway_folder() -> Vec<Migration> {
        vec![
            migration(Version::parse_flyway("1").unwrap(), "init"),
            migration(Version::parse_flyway("1.1").unwrap(), "more"),
            migration(Version::parse_flyway("2").unwrap(), "two"),
            migration(Version::repeatable("views"), "views"),
        ]
    }

    #[test]
    fn flyway_history_with_an_undo_and_a_repeatable() {
        let rows = [
            flyway(Some("1"), "SQL", "V1__init.sql", true),
            flyway(Some("1.1"), "SQL", "V1_1__more.sql", true),
            flyway(Some("2"), "SQL", "V2__two.sql", true),
            flyway(Some("2"), "UNDO_SQL", "U2__two.sql", true),
            flyway(None, "SQL", "R__views.sql", true),
        ];
        let chosen = recorded(Baseline::From(Tool::Flyway), &flyway_folder(), Some(&rows));
        assert_eq!(chosen.unwrap(), ["1", "1.1", "R__views"]);
    }

    #[test]
    fn a_failed_or_unknown_version_is_refused() {
        let folder = flyway_folder();
        let refused = |rows: &[ForeignRow], tool| {
            recorded(Baseline::From(tool), &folder, Some(rows)).unwrap_err()
        };
        let failed = refused(
            &[flyway(Some("1"), "SQL", "V1__init.sql", false)],
            Tool::Flyway,
        );
        assert!(
            failed.contains("did not finish: 1 (V1__init.sql) failed"),
            "{failed}"
        );
        let unknown = refused(&[flyway(Some("3"), "SQL", "V3__x.sql", true)], Tool::Flyway);
        assert!(
            unknown.contains("names a version that no file of the folder has: 3"),
            "{unknown}"
        );
        let missing = recorded(Baseline::From(Tool::Sqlx), &folder, None).unwrap_err();
        assert!(
            missing.starts_with("database `pg` has no table _sqlx_migrations"),
            "{missing}"
        );
    }

    #[test]
    fn golang_migrate_and_alembic_name_the_last_applied() {
        let folder = vec![
            migration(Version::parse("1").unwrap(), "a"),
            migration(Version::parse("2").unwrap(), "ae1027a6acf_b"),
            migration(Version::parse("3").unwrap(), "c"),
        ];
        let golang = |dirty: &str| {
            recorded(
                Baseline::From(Tool::GolangMigrate),
                &folder,
                Some(&[row(&[Some("2"), Some(dirty)])]),
            )
        };
        assert_eq!(golang("false").unwrap(), ["1", "2"]);
        assert!(golang("true").unwrap_err().contains("2 is dirty"));
        let alembic = recorded(
            Baseline::From(Tool::Alembic),
            &folder,
            Some(&[row(&[Some("ae1027a6acf")])]),
        );
        assert_eq!(alembic.unwrap(), ["1", "2"]);
        let up_to = recorded(Baseline::UpTo(Version::parse("2").unwrap()), &folder, None);
        assert_eq!(up_to.unwrap(), ["1", "2"]);
    }
}
