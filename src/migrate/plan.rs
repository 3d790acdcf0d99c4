//! Pure decisions over a folder's migrations and a database's history: what is pending,
//! what a rollback undoes, what `status` shows, and whether applied files changed.
//! Nothing here touches a database, so all of it is unit-tested.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::files::{Body, Migration};
use super::history::{HistoryRow, Status};
use super::undo;
use super::version::Version;
use crate::error::{Error, Result};

fn recorded<'h>(history: &'h [HistoryRow], version: &Version) -> Option<&'h HistoryRow> {
    history
        .iter()
        .find(|row| Version::parse_any(&row.version).is_ok_and(|v| &v == version))
}

/// Applied: recorded COMPLETED, and for a repeatable migration with the checksum it has
/// now (a changed repeatable is due again).
fn is_applied(history: &[HistoryRow], migration: &Migration) -> bool {
    recorded(history, &migration.version).is_some_and(|row| {
        row.status == Status::Completed
            && (!migration.is_repeatable() || row.checksum == migration.checksum)
    })
}

/// The applied migrations whose files changed since they were applied (repeatable ones
/// are meant to change: they are re-applied instead).
fn changed_since_applied<'m>(
    migrations: &'m [Migration],
    history: &[HistoryRow],
) -> Vec<(&'m Migration, String)> {
    migrations
        .iter()
        .filter(|m| !m.is_repeatable())
        .filter_map(|m| {
            recorded(history, &m.version)
                .filter(|row| row.status == Status::Completed && row.checksum != m.checksum)
                .map(|row| (m, row.checksum.clone()))
        })
        .collect()
}

/// Refuses when a file of an applied migration changed after it was applied.
pub fn check_applied_unchanged(
    database: &str,
    migrations: &[Migration],
    history: &[HistoryRow],
) -> Result<()> {
    let changed = changed_since_applied(migrations, history);
    if changed.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = changed
        .iter()
        .map(|(m, applied)| {
            format!(
                "{}: migration {} was applied to `{database}` with checksum {}, but its files now have checksum {}",
                m.main_file().display(),
                m.version,
                short(applied),
                short(&m.checksum)
            )
        })
        .collect();
    Err(Error::Refused(format!(
        "{}\napplied migrations must not change: restore the applied files and put the change in a new migration",
        lines.join("\n")
    )))
}

fn short(checksum: &str) -> &str {
    &checksum[..checksum.len().min(12)]
}

/// Migrations not applied (never run, failed, or rolled back), in version order, up to
/// and including `up_to`; then the repeatable ones new or changed since last applied.
pub fn pending<'m>(
    migrations: &'m [Migration],
    history: &[HistoryRow],
    up_to: Option<&Version>,
) -> Vec<&'m Migration> {
    migrations
        .iter()
        .filter(|m| !is_applied(history, m))
        .filter(|m| m.is_repeatable() || up_to.is_none_or(|limit| &m.version <= limit))
        .collect()
}

/// The applied migrations after `target`, newest first: what `rollback target` undoes.
/// Refused, naming each one, when any of them has no file or no rollback.
pub fn to_revert<'m>(
    database: &str,
    migrations: &'m [Migration],
    history: &[HistoryRow],
    target: &Version,
) -> Result<Vec<&'m Migration>> {
    let mut problems = Vec::new();
    let mut chosen = Vec::new();
    let mut applied_after: Vec<(Version, &HistoryRow)> = history
        .iter()
        .filter(|row| row.status == Status::Completed)
        .filter_map(|row| Version::parse_any(&row.version).ok().map(|v| (v, row)))
        .filter(|(v, _)| v > target && !v.is_repeatable())
        .collect();
    applied_after.sort_by(|a, b| b.0.cmp(&a.0));
    for (version, row) in applied_after {
        match migrations.iter().find(|m| m.version == version) {
            None => problems.push(format!(
                "migration {version} ({}) is applied to `{database}` but its files are gone",
                row.name
            )),
            Some(m) if !has_rollback(m) => problems.push(format!(
                "{}: migration {version} has no rollback ({}), so it is irreversible",
                m.main_file().display(),
                rollback_hint(m)
            )),
            Some(m) => chosen.push(m),
        }
    }
    if !problems.is_empty() {
        return Err(Error::Refused(format!(
            "rollback refused, nothing was changed:\n{}",
            problems.join("\n")
        )));
    }
    Ok(chosen)
}

fn has_rollback(migration: &Migration) -> bool {
    match &migration.body {
        Body::Sql { down, .. } => down.is_some(),
        Body::Mongo { up, down } => down.is_some() || undo::first_without_inverse(up).is_none(),
        Body::Elastic { up, down } => down.is_some() || undo::first_without_inverse(up).is_none(),
    }
}

fn rollback_hint(migration: &Migration) -> String {
    let file = migration.main_file();
    let stem = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("NNN_name");
    let extension = if matches!(migration.body, Body::Sql { .. }) {
        "sql"
    } else {
        "json"
    };
    let without_inverse = match &migration.body {
        Body::Mongo { up, .. } => undo::first_without_inverse(up).map(no_inverse),
        Body::Elastic { up, .. } => undo::first_without_inverse(up).map(no_inverse),
        Body::Sql { .. } => None,
    };
    format!(
        "{}add {stem}_rollback.{extension} beside it",
        without_inverse.unwrap_or_default()
    )
}

fn no_inverse(found: (usize, &impl std::fmt::Display)) -> String {
    format!("operation {} ({}) has no inverse; ", found.0 + 1, found.1)
}

/// One line of `status`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusRow {
    pub database: String,
    pub version: String,
    pub name: String,
    pub status: Status,
    pub applied_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
    pub error: Option<String>,
    /// Something the user should know: a file changed since applied, or missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// Every migration of the folder with its recorded outcome, and the recorded versions
/// whose files are gone, in version order.
pub fn status_rows(
    database: &str,
    migrations: &[Migration],
    history: &[HistoryRow],
) -> Vec<StatusRow> {
    let changed = changed_since_applied(migrations, history);
    let mut rows: Vec<(Option<Version>, StatusRow)> = migrations
        .iter()
        .map(|m| {
            let row = recorded(history, &m.version);
            let repeat_due = m.is_repeatable()
                && row.is_some_and(|r| r.status == Status::Completed)
                && !is_applied(history, m);
            let warning = if repeat_due {
                Some("changed since it was last applied: `migrate` applies it again".to_string())
            } else {
                changed
                    .iter()
                    .any(|(c, _)| c.version == m.version)
                    .then(|| "the files changed after this migration was applied".to_string())
            };
            let status = match row {
                _ if repeat_due => Status::Pending,
                Some(r) => r.status,
                None => Status::Pending,
            };
            let status_row = StatusRow {
                database: database.to_string(),
                version: m.version.to_string(),
                name: m.name.clone(),
                status,
                applied_at: row.map(|r| r.applied_at),
                duration_ms: row.map(|r| r.duration_ms),
                error: row.and_then(|r| r.error.clone()),
                warning,
            };
            (Some(m.version.clone()), status_row)
        })
        .collect();
    for row in history {
        let version = Version::parse_any(&row.version).ok();
        let has_file = version
            .as_ref()
            .is_some_and(|v| migrations.iter().any(|m| &m.version == v));
        if !has_file {
            rows.push((
                version,
                StatusRow {
                    database: database.to_string(),
                    version: row.version.clone(),
                    name: row.name.clone(),
                    status: row.status,
                    applied_at: Some(row.applied_at),
                    duration_ms: Some(row.duration_ms),
                    error: row.error.clone(),
                    warning: Some(
                        "recorded in the database, but no file has this version".to_string(),
                    ),
                },
            ));
        }
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    rows.into_iter().map(|(_, row)| row).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn migration(version: &str, checksum: &str, reversible: bool) -> Migration {
        let mut migration =
            Migration::for_test(Version::parse(version).unwrap(), &format!("m{version}"));
        migration.files = vec![PathBuf::from(format!("{version}_m.sql"))];
        migration.checksum = checksum.to_string();
        if let Body::Sql { up, down } = &mut migration.body {
            *down = reversible.then(|| up.clone());
        }
        migration
    }

    fn row(version: &str, checksum: &str, status: Status) -> HistoryRow {
        HistoryRow {
            version: version.to_string(),
            name: format!("m{version}"),
            checksum: checksum.to_string(),
            status,
            applied_at: Utc::now(),
            duration_ms: 5,
            error: (status == Status::Failed).then(|| "boom".to_string()),
            applied_by: "tester".to_string(),
        }
    }

    fn versions(list: &[&Migration]) -> Vec<String> {
        list.iter().map(|m| m.version.to_string()).collect()
    }

    #[test]
    fn pending_skips_only_completed() {
        let files = [
            migration("1", "a", true),
            migration("2", "b", true),
            migration("3", "c", true),
            migration("4", "d", true),
        ];
        let history = [
            row("1", "a", Status::Completed),
            row("2", "b", Status::Failed),
            row("3", "c", Status::RolledBack),
        ];
        assert_eq!(versions(&pending(&files, &history, None)), ["2", "3", "4"]);
        let limit = Version::parse("3").unwrap();
        assert_eq!(
            versions(&pending(&files, &history, Some(&limit))),
            ["2", "3"]
        );
    }

    #[test]
    fn changed_applied_file_is_refused_but_failed_one_is_not() {
        let files = [
            migration("1", "a-edited", true),
            migration("2", "b-edited", true),
        ];
        let history = [
            row("1", "a", Status::Completed),
            row("2", "b", Status::Failed),
        ];
        let err = check_applied_unchanged("pg", &files, &history).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("1_m.sql: migration 1 was applied to `pg` with checksum a, but its files now have checksum a-edited"), "{text}");
        assert!(!text.contains("2_m.sql"));
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn rollback_takes_applied_after_target_newest_first() {
        let files = [
            migration("1", "a", true),
            migration("2", "b", true),
            migration("3", "c", true),
        ];
        let history = [
            row("1", "a", Status::Completed),
            row("2", "b", Status::Completed),
            row("3", "c", Status::Completed),
        ];
        let target = Version::parse("1").unwrap();
        assert_eq!(
            versions(&to_revert("pg", &files, &history, &target).unwrap()),
            ["3", "2"]
        );
        let zero = Version::parse("0").unwrap();
        assert_eq!(
            versions(&to_revert("pg", &files, &history, &zero).unwrap()),
            ["3", "2", "1"]
        );
    }

    #[test]
    fn rollback_refuses_irreversible_and_lost_files() {
        let files = [migration("1", "a", true), migration("2", "b", false)];
        let history = [
            row("1", "a", Status::Completed),
            row("2", "b", Status::Completed),
            row("3", "c", Status::Completed),
        ];
        let err = to_revert("pg", &files, &history, &Version::parse("0").unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("migration 3 (m3) is applied to `pg` but its files are gone"),
            "{err}"
        );
        assert!(
            err.contains("2_m.sql: migration 2 has no rollback (add 2_m_rollback.sql beside it)"),
            "{err}"
        );
    }

    #[test]
    fn status_lists_files_and_orphans_in_order() {
        let files = [migration("1", "a", true), migration("3", "c", true)];
        let history = [
            row("1", "x", Status::Completed),
            row("2", "b", Status::Completed),
        ];
        let rows = status_rows("pg", &files, &history);
        let summary: Vec<(String, Status, bool)> = rows
            .iter()
            .map(|r| (r.version.clone(), r.status, r.warning.is_some()))
            .collect();
        assert_eq!(
            summary,
            [
                ("1".into(), Status::Completed, true),
                ("2".into(), Status::Completed, true),
                ("3".into(), Status::Pending, false)
            ]
        );
    }
}
