//! The folder layouts migrations are read in: seed 003's own, and those of the tools teams
//! switch from, each recognised by its file names (and dbmate's by its sections) as that
//! tool writes them, so a folder is read without renaming a file.
//!
//! | format       | forward                         | rollback                      |
//! |--------------|---------------------------------|-------------------------------|
//! | switchyard   | `NNN_name.sql` / `NNN_name.json` | `NNN_name_rollback.sql/.json` |
//! | up/down      | `N_name.up.sql`                 | `N_name.down.sql`             |
//! | Flyway       | `V<version>__name.sql`, `R__name.sql` (repeatable) | `U<version>__name.sql` |
//! | dbmate       | `N_name.sql`, `-- migrate:up`   | its `-- migrate:down` section |
//!
//! sqlx's up-only `<timestamp>_name.sql` files are switchyard's plain SQL files. A file that
//! matches none of these (a README, notes) is not a migration. One folder uses one format.

use std::fmt;

/// The first line that makes a PostgreSQL script run outside a transaction.
pub const NO_TRANSACTION_MARKER: &str = "-- switchyard:no-transaction";
/// sqlx's marker for the same.
const SQLX_NO_TRANSACTION_MARKER: &str = "-- no-transaction";
/// A leading comment line naming what a plain SQL migration needs in other databases:
/// `-- switchyard:depends_on mongodb=1.2.0 elasticsearch=3`.
pub const DEPENDS_ON_MARKER: &str = "-- switchyard:depends_on";
const ROLLBACK_SUFFIX: &str = "_rollback";
const DBMATE_UP: &str = "-- migrate:up";
const DBMATE_DOWN: &str = "-- migrate:down";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Format {
    Switchyard,
    /// sqlx's reversible migrations and golang-migrate's.
    UpDown,
    /// Flyway's, which refinery shares.
    Flyway,
    Dbmate,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Switchyard => "switchyard's format (NNN_name.sql, NNN_name.json)",
            Format::UpDown => "the up/down format of sqlx and golang-migrate (N_name.up.sql)",
            Format::Flyway => "Flyway's format (V<version>__name.sql)",
            Format::Dbmate => "dbmate's format (-- migrate:up sections)",
        })
    }
}

/// The part a file plays in its migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Seed 003's JSON: metadata, and the operations of MongoDB and Elasticsearch.
    Metadata,
    /// The forward SQL.
    Script,
    /// The rollback SQL.
    Rollback,
    /// The rollback operations of MongoDB and Elasticsearch.
    RollbackJson,
}

/// What a file's name says it is: its format, the base name its migration's files share,
/// and its role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    pub format: Format,
    pub base: String,
    pub role: Role,
}

impl Named {
    fn new(format: Format, base: &str, role: Role) -> Option<Named> {
        Some(Named {
            format,
            base: base.to_string(),
            role,
        })
    }
}

/// Classifies a file by its name; `None` for files that are not migrations.
pub fn classify(file_name: &str) -> Option<Named> {
    let (stem, extension) = file_name.rsplit_once('.')?;
    match extension {
        "json" => match stem.strip_suffix(ROLLBACK_SUFFIX) {
            Some(base) => Named::new(Format::Switchyard, base, Role::RollbackJson),
            None => Named::new(Format::Switchyard, stem, Role::Metadata),
        },
        "sql" => {
            if let Some(base) = stem.strip_suffix(".up") {
                Named::new(Format::UpDown, base, Role::Script)
            } else if let Some(base) = stem.strip_suffix(".down") {
                Named::new(Format::UpDown, base, Role::Rollback)
            } else if let Some(base) = flyway_base(stem, 'V') {
                Named::new(Format::Flyway, base, Role::Script)
            } else if let Some(base) = flyway_base(stem, 'U') {
                Named::new(Format::Flyway, base, Role::Rollback)
            } else if stem.len() > 3 && stem.starts_with("R__") {
                Named::new(Format::Flyway, stem, Role::Script)
            } else if let Some(base) = stem.strip_suffix(ROLLBACK_SUFFIX) {
                Named::new(Format::Switchyard, base, Role::Rollback)
            } else {
                Named::new(Format::Switchyard, stem, Role::Script)
            }
        }
        _ => None,
    }
}

/// `V1_1__add_users` → `1_1__add_users`: Flyway's prefix letter, a version of digits with
/// `.` or `_` between them, `__`, a name.
fn flyway_base(stem: &str, letter: char) -> Option<&str> {
    let rest = stem.strip_prefix(letter)?;
    let (version, name) = rest.split_once("__")?;
    let version_ok = version.starts_with(|c: char| c.is_ascii_digit())
        && version
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == '_');
    (version_ok && !name.is_empty()).then_some(rest)
}

/// A dbmate file's two sections, each with whether it runs in a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sections {
    pub up: String,
    pub up_transactional: bool,
    /// `None` when the file has no `-- migrate:down` line (then it is irreversible); an
    /// empty section is a rollback that does nothing, as in dbmate.
    pub down: Option<(String, bool)>,
}

/// Splits a dbmate file; `None` when the text is not one (its first non-blank line is not
/// `-- migrate:up`).
pub fn dbmate_sections(text: &str) -> Option<Result<Sections, String>> {
    let first = text.lines().find(|l| !l.trim().is_empty())?;
    first.trim_start().starts_with(DBMATE_UP).then(|| {
        let mut up = (String::new(), true);
        let mut down: Option<(String, bool)> = None;
        for line in text.lines() {
            let trimmed = line.trim();
            if let Some(options) = trimmed.strip_prefix(DBMATE_UP) {
                up.1 = transactional_option(options)?;
            } else if let Some(options) = trimmed.strip_prefix(DBMATE_DOWN) {
                if down.is_some() {
                    return Err(format!("a second `{DBMATE_DOWN}` line"));
                }
                down = Some((String::new(), transactional_option(options)?));
            } else {
                let section = match &mut down {
                    Some((sql, _)) => sql,
                    None => &mut up.0,
                };
                section.push_str(line);
                section.push('\n');
            }
        }
        Ok(Sections {
            up: up.0,
            up_transactional: up.1,
            down,
        })
    })
}

/// dbmate's section options: `transaction:false` (or `:true`).
fn transactional_option(options: &str) -> Result<bool, String> {
    let mut transactional = true;
    for option in options.split_whitespace() {
        transactional = match option {
            "transaction:false" => false,
            "transaction:true" => true,
            other => {
                return Err(format!(
                    "unknown dbmate option `{other}` (known: transaction:false)"
                ))
            }
        };
    }
    Ok(transactional)
}

/// The comment lines a script starts with, where its markers live.
fn leading_comments(sql: &str) -> impl Iterator<Item = &str> {
    sql.lines()
        .map(str::trim)
        .take_while(|l| l.is_empty() || l.starts_with("--"))
        .filter(|l| !l.is_empty())
}

/// Whether a script of `format` runs in one transaction. Not when it starts with
/// switchyard's or sqlx's no-transaction marker; for golang-migrate's and Flyway's files
/// (those tools decide without a marker) not when a statement cannot run in a transaction
/// (`CREATE INDEX CONCURRENTLY`, `VACUUM`, …).
pub fn runs_in_transaction(sql: &str, format: Format) -> bool {
    let marked = leading_comments(sql)
        .any(|l| l == NO_TRANSACTION_MARKER || l == SQLX_NO_TRANSACTION_MARKER);
    if marked {
        return false;
    }
    !(matches!(format, Format::UpDown | Format::Flyway) && has_non_transactional_statement(sql))
}

/// A statement PostgreSQL refuses inside a transaction block. Statements are split at
/// `;` without parsing strings: a `;` inside a literal can only make this answer "no".
fn has_non_transactional_statement(sql: &str) -> bool {
    let code: String = sql
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    code.split(';').any(|statement| {
        let words: Vec<String> = statement
            .split_whitespace()
            .map(str::to_ascii_lowercase)
            .collect();
        let word = |n: usize| words.get(n).map(String::as_str).unwrap_or("");
        let index_concurrently = words
            .windows(2)
            .any(|pair| pair[0] == "index" && pair[1] == "concurrently");
        match (word(0), word(1)) {
            ("vacuum", _) | ("create" | "drop", "database") | ("alter", "system") => true,
            ("reindex", _) => words.iter().any(|w| w == "concurrently"),
            ("create" | "drop", _) => index_concurrently,
            _ => false,
        }
    })
}

/// The `database=version` pairs of a script's `-- switchyard:depends_on` lines.
pub fn header_dependencies(sql: &str) -> Result<Vec<(String, String)>, String> {
    let mut found = Vec::new();
    for line in leading_comments(sql) {
        let Some(pairs) = line.strip_prefix(DEPENDS_ON_MARKER) else {
            continue;
        };
        for pair in pairs.split(|c: char| c.is_whitespace() || c == ',') {
            if pair.is_empty() {
                continue;
            }
            match pair.split_once('=') {
                Some((database, version)) if !database.is_empty() && !version.is_empty() => {
                    found.push((database.to_string(), version.to_string()))
                }
                _ => {
                    return Err(format!(
                        "`{DEPENDS_ON_MARKER}` takes database=version pairs, not `{pair}`"
                    ))
                }
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn format_of(name: &str) -> Option<(Format, String, Role)> {
        classify(name).map(|n| (n.format, n.base, n.role))
    }

    #[test]
    fn file_names_say_their_format() {
        use Format::*;
        use Role::*;
        let cases = [
            ("001_users.sql", Some((Switchyard, "001_users", Script))),
            ("001_users.json", Some((Switchyard, "001_users", Metadata))),
            (
                "001_users_rollback.sql",
                Some((Switchyard, "001_users", Rollback)),
            ),
            (
                "001_users_rollback.json",
                Some((Switchyard, "001_users", RollbackJson)),
            ),
            (
                "20240101_users.up.sql",
                Some((UpDown, "20240101_users", Script)),
            ),
            (
                "20240101_users.down.sql",
                Some((UpDown, "20240101_users", Rollback)),
            ),
            ("V1_1__users.sql", Some((Flyway, "1_1__users", Script))),
            ("V2.0.1__users.sql", Some((Flyway, "2.0.1__users", Script))),
            ("U1_1__users.sql", Some((Flyway, "1_1__users", Rollback))),
            ("R__views.sql", Some((Flyway, "R__views", Script))),
            ("Vx__users.sql", Some((Switchyard, "Vx__users", Script))),
            ("README.md", None),
        ];
        for (name, expected) in cases {
            let expected = expected.map(|(f, b, r)| (f, b.to_string(), r));
            assert_eq!(format_of(name), expected, "{name}");
        }
    }

    #[test]
    fn dbmate_sections_split_with_their_options() {
        let text = "-- migrate:up transaction:false\nCREATE INDEX CONCURRENTLY i ON t (x);\n\n-- migrate:down\nDROP INDEX i;\n";
        let sections = dbmate_sections(text).unwrap().unwrap();
        assert_eq!(sections.up, "CREATE INDEX CONCURRENTLY i ON t (x);\n\n");
        assert!(!sections.up_transactional);
        assert_eq!(sections.down, Some(("DROP INDEX i;\n".to_string(), true)));
        assert!(dbmate_sections("CREATE TABLE t ();").is_none());
        let up_only = dbmate_sections("-- migrate:up\nSELECT 1;")
            .unwrap()
            .unwrap();
        assert_eq!(up_only.down, None);
        assert!(dbmate_sections("-- migrate:up nolock\n")
            .unwrap()
            .unwrap_err()
            .contains("unknown dbmate option `nolock`"));
    }

    #[test]
    fn transactions_follow_markers_and_what_each_tool_does() {
        let concurrently = "CREATE INDEX CONCURRENTLY i ON t (x);";
        assert!(runs_in_transaction(concurrently, Format::Switchyard));
        assert!(!runs_in_transaction(concurrently, Format::UpDown));
        assert!(!runs_in_transaction(
            "drop index concurrently if exists i;",
            Format::Flyway
        ));
        assert!(!runs_in_transaction("VACUUM t;", Format::Flyway));
        assert!(runs_in_transaction(
            "CREATE TABLE t (concurrently int);",
            Format::Flyway
        ));
        assert!(!runs_in_transaction(
            "-- no-transaction\nCREATE TABLE t ();",
            Format::UpDown
        ));
        assert!(!runs_in_transaction(
            "-- switchyard:depends_on mongodb=1\n-- switchyard:no-transaction\nSELECT 1;",
            Format::Switchyard
        ));
    }

    #[test]
    fn depends_on_lines_give_pairs() {
        let sql = "-- switchyard:depends_on mongodb=1.2.0, elasticsearch=3\n-- note\nSELECT 1;\n-- switchyard:depends_on ignored=1";
        assert_eq!(
            header_dependencies(sql).unwrap(),
            [
                ("mongodb".to_string(), "1.2.0".to_string()),
                ("elasticsearch".to_string(), "3".to_string())
            ]
        );
        assert!(header_dependencies("-- switchyard:depends_on mongodb")
            .unwrap_err()
            .contains("database=version"));
    }
}
