//! Discovery and parsing of one database's migration folder, in the formats of seed 003.
//!
//! A migration is a group of files sharing a base name `NNN_name`:
//! - PostgreSQL: `NNN_name.sql` (required; its first line may be
//!   `-- switchyard:no-transaction`), `NNN_name.json` (optional metadata; without it the
//!   version is `NNN`), `NNN_name_rollback.sql` (optional).
//! - MongoDB and Elasticsearch: `NNN_name.json` with `operations`, and optionally
//!   `NNN_name_rollback.json`.
//!
//! Invariants of a parsed folder: versions are unique, all of one style, and sorted; the
//! checksum covers the files that define the forward migration (metadata and up script),
//! so editing one after it was applied is detected, while a rollback script may still be
//! fixed. Every problem found is reported with its file, not only the first.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::operations::{ElasticOperation, MongoOperation};
use super::version::{Version, VersionStyle};
use crate::config::DatabaseKind;
use crate::error::{at_field, FileProblem};

/// The first line that makes a PostgreSQL script run outside a transaction.
pub const NO_TRANSACTION_MARKER: &str = "-- switchyard:no-transaction";
const ROLLBACK_SUFFIX: &str = "_rollback";

/// One SQL script, with whether it runs inside a transaction.
#[derive(Debug, Clone)]
pub struct SqlScript {
    pub file: PathBuf,
    pub sql: String,
    pub transactional: bool,
}

impl SqlScript {
    fn new(file: PathBuf, sql: String) -> SqlScript {
        let transactional = sql.lines().next().map(str::trim) != Some(NO_TRANSACTION_MARKER);
        SqlScript {
            file,
            sql,
            transactional,
        }
    }
}

/// What a migration does, per kind of database.
#[derive(Debug, Clone)]
pub enum Body {
    Sql {
        up: SqlScript,
        down: Option<SqlScript>,
    },
    Mongo {
        up: Vec<MongoOperation>,
        down: Option<Vec<MongoOperation>>,
    },
    Elastic {
        up: Vec<ElasticOperation>,
        down: Option<Vec<ElasticOperation>>,
    },
}

#[derive(Debug, Clone)]
pub struct Migration {
    pub version: Version,
    pub name: String,
    pub description: Option<String>,
    /// The files the checksum covers, in the order hashed.
    pub files: Vec<PathBuf>,
    /// Hex SHA-256 over the files that define the forward migration.
    pub checksum: String,
    pub body: Body,
}

impl Migration {
    /// The file a user should look at for this migration (metadata, else the script).
    pub fn main_file(&self) -> &Path {
        &self.files[0]
    }
}

/// The metadata file of seed 003; rollback files of MongoDB and Elasticsearch have the
/// same shape, where only `operations` is required.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    database_type: Option<String>,
    /// Free text in seed 003 (`schema`, `data`); accepted and not interpreted.
    #[serde(default, rename = "migration_type")]
    _migration_type: Option<String>,
    #[serde(default)]
    operations: Option<serde_json::Value>,
}

#[derive(Default)]
struct Group {
    metadata: Option<PathBuf>,
    script: Option<PathBuf>,
    rollback_sql: Option<PathBuf>,
    rollback_json: Option<PathBuf>,
}

/// Reads every migration of one database from `dir` (a missing folder has none).
pub fn load_folder(dir: &Path, kind: DatabaseKind) -> Result<Vec<Migration>, Vec<FileProblem>> {
    let mut problems = Vec::new();
    let groups = match group_files(dir, &mut problems) {
        Some(groups) => groups,
        None => {
            return if problems.is_empty() {
                Ok(Vec::new())
            } else {
                Err(problems)
            }
        }
    };
    let mut migrations = Vec::new();
    for (base, group) in groups {
        match load_migration(dir, &base, group, kind) {
            Ok(migration) => migrations.push(migration),
            Err(problem) => problems.push(problem),
        }
    }
    check_versions(&mut migrations, &mut problems);
    if problems.is_empty() {
        Ok(migrations)
    } else {
        Err(problems)
    }
}

fn group_files(dir: &Path, problems: &mut Vec<FileProblem>) -> Option<BTreeMap<String, Group>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            problems.push(problem(dir, format!("cannot read the folder: {e}")));
            return None;
        }
    };
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(file_name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
        else {
            continue;
        };
        if file_name.starts_with('.') || !path.is_file() {
            continue;
        }
        let (stem, extension) = match file_name.rsplit_once('.') {
            Some((stem, ext @ ("sql" | "json"))) => (stem.to_string(), ext),
            _ => continue, // READMEs and other notes live beside migrations
        };
        let (base, rollback) = match stem.strip_suffix(ROLLBACK_SUFFIX) {
            Some(base) => (base.to_string(), true),
            None => (stem, false),
        };
        let group = groups.entry(base).or_default();
        let slot = match (extension, rollback) {
            ("sql", false) => &mut group.script,
            ("sql", true) => &mut group.rollback_sql,
            ("json", false) => &mut group.metadata,
            _ => &mut group.rollback_json,
        };
        *slot = Some(path);
    }
    Some(groups)
}

fn load_migration(
    dir: &Path,
    base: &str,
    group: Group,
    kind: DatabaseKind,
) -> Result<Migration, FileProblem> {
    let any_file = [
        &group.metadata,
        &group.script,
        &group.rollback_sql,
        &group.rollback_json,
    ]
    .into_iter()
    .flatten()
    .next()
    .cloned()
    .unwrap_or_else(|| dir.join(base));
    let Some((prefix, file_name_part)) = split_base(base) else {
        return Err(problem(
            &any_file,
            "the file name must start with a number and `_` (for example 001_create_users.sql)",
        ));
    };
    let metadata = match &group.metadata {
        Some(path) => Some(parse_json::<Metadata>(path)?),
        None => None,
    };
    if let Some(Metadata {
        database_type: Some(declared),
        ..
    }) = &metadata
    {
        if declared != kind.as_str() {
            return Err(problem(
                group.metadata.as_ref().unwrap(),
                format!("field `database_type`: `{declared}` does not match this folder's database kind `{kind}`"),
            ));
        }
    }
    let version_text = metadata
        .as_ref()
        .and_then(|m| m.version.as_deref())
        .unwrap_or(prefix);
    let version_file = group.metadata.as_ref().unwrap_or(&any_file);
    let version = Version::parse(version_text)
        .map_err(|reason| problem(version_file, format!("field `version`: {reason}")))?;
    let name = metadata
        .as_ref()
        .and_then(|m| m.name.clone())
        .unwrap_or_else(|| file_name_part.to_string());
    let description = metadata.as_ref().and_then(|m| m.description.clone());
    let mut files: Vec<PathBuf> = group.metadata.iter().cloned().collect();

    let body = match kind {
        DatabaseKind::Postgresql => {
            if let Some(path) = &group.rollback_json {
                return Err(problem(
                    path,
                    "a PostgreSQL rollback is SQL: name it `_rollback.sql`",
                ));
            }
            if let Some(path) = group
                .metadata
                .as_ref()
                .filter(|_| metadata.as_ref().is_some_and(|m| m.operations.is_some()))
            {
                return Err(problem(
                    path,
                    "field `operations`: PostgreSQL migrations are SQL files, not operations",
                ));
            }
            let Some(script_path) = group.script.clone() else {
                let path = group
                    .metadata
                    .as_ref()
                    .or(group.rollback_sql.as_ref())
                    .unwrap();
                return Err(problem(
                    path,
                    format!("no SQL file: expected `{base}.sql` beside it"),
                ));
            };
            files.push(script_path.clone());
            let up = SqlScript::new(script_path.clone(), read_text(&script_path)?);
            let down = match &group.rollback_sql {
                Some(path) => Some(SqlScript::new(path.clone(), read_text(path)?)),
                None => None,
            };
            Body::Sql { up, down }
        }
        DatabaseKind::Mongodb | DatabaseKind::Elasticsearch => {
            if let Some(path) = group.script.as_ref().or(group.rollback_sql.as_ref()) {
                return Err(problem(
                    path,
                    format!("{kind} migrations are JSON files with `operations`, not SQL"),
                ));
            }
            let Some(meta_path) = group.metadata.clone() else {
                let path = group.rollback_json.as_ref().unwrap();
                return Err(problem(
                    path,
                    format!("a rollback without its migration: expected `{base}.json` beside it"),
                ));
            };
            let operations = metadata
                .and_then(|m| m.operations)
                .ok_or_else(|| problem(&meta_path, "missing field `operations`"))?;
            if kind == DatabaseKind::Mongodb {
                Body::Mongo {
                    up: parse_operations(&meta_path, operations)?,
                    down: parse_rollback(group.rollback_json.as_deref())?,
                }
            } else {
                Body::Elastic {
                    up: parse_operations(&meta_path, operations)?,
                    down: parse_rollback(group.rollback_json.as_deref())?,
                }
            }
        }
    };
    let checksum = checksum(&files)?;
    Ok(Migration {
        version,
        name,
        description,
        files,
        checksum,
        body,
    })
}

/// `001_create_users` → (`001`, `create_users`).
fn split_base(base: &str) -> Option<(&str, &str)> {
    let (prefix, rest) = base.split_once('_')?;
    (!prefix.is_empty() && prefix.chars().all(|c| c.is_ascii_digit()) && !rest.is_empty())
        .then_some((prefix, rest))
}

fn parse_operations<Op: DeserializeOwned>(
    path: &Path,
    operations: serde_json::Value,
) -> Result<Vec<Op>, FileProblem> {
    serde_path_to_error::deserialize::<_, Vec<Op>>(operations).map_err(|e| {
        problem(
            path,
            at_field("operations", e.path(), &e.inner().to_string()),
        )
    })
}

fn parse_rollback<Op: DeserializeOwned>(
    path: Option<&Path>,
) -> Result<Option<Vec<Op>>, FileProblem> {
    match path {
        Some(path) => {
            let operations = parse_json::<Metadata>(path)?
                .operations
                .ok_or_else(|| problem(path, "missing field `operations`"))?;
            Ok(Some(parse_operations(path, operations)?))
        }
        None => Ok(None),
    }
}

fn parse_json<T: DeserializeOwned>(path: &Path) -> Result<T, FileProblem> {
    let text = read_text(path)?;
    let mut deserializer = serde_json::Deserializer::from_str(&text);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        if e.inner().is_syntax() || e.inner().is_eof() {
            problem(path, format!("invalid JSON: {}", e.inner()))
        } else {
            problem(path, at_field("", e.path(), &e.inner().to_string()))
        }
    })
}

fn read_text(path: &Path) -> Result<String, FileProblem> {
    std::fs::read_to_string(path).map_err(|e| problem(path, format!("cannot read: {e}")))
}

fn checksum(files: &[PathBuf]) -> Result<String, FileProblem> {
    let mut hasher = Sha256::new();
    for file in files {
        let bytes = std::fs::read(file).map_err(|e| problem(file, format!("cannot read: {e}")))?;
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Refuses mixed version styles and duplicate versions, then sorts by version.
fn check_versions(migrations: &mut [Migration], problems: &mut Vec<FileProblem>) {
    migrations.sort_by(|a, b| {
        a.version
            .cmp(&b.version)
            .then_with(|| a.main_file().cmp(b.main_file()))
    });
    // The folder's style is its majority's; each file of the other style is reported.
    let semver = migrations
        .iter()
        .filter(|m| m.version.style() == VersionStyle::Semver)
        .count();
    let style = if semver * 2 >= migrations.len() {
        VersionStyle::Semver
    } else {
        VersionStyle::Number
    };
    if let Some(example) = migrations.iter().find(|m| m.version.style() == style) {
        for other in migrations.iter().filter(|m| m.version.style() != style) {
            problems.push(problem(
                other.main_file(),
                format!(
                    "version `{}` is {}, but `{}` uses {}: one folder uses one version style",
                    other.version,
                    other.version.style(),
                    example.main_file().display(),
                    style
                ),
            ));
        }
    }
    for pair in migrations.windows(2) {
        if pair[0].version == pair[1].version {
            problems.push(problem(
                pair[1].main_file(),
                format!(
                    "duplicate version `{}`: `{}` has it too",
                    pair[1].version,
                    pair[0].main_file().display()
                ),
            ));
        }
    }
}

fn problem(file: &Path, reason: impl Into<String>) -> FileProblem {
    FileProblem {
        file: file.to_path_buf(),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    fn reasons(result: Result<Vec<Migration>, Vec<FileProblem>>) -> Vec<String> {
        result
            .unwrap_err()
            .into_iter()
            .map(|p| {
                format!(
                    "{}: {}",
                    p.file.file_name().unwrap().to_string_lossy(),
                    p.reason
                )
            })
            .collect()
    }

    #[test]
    fn postgres_formats_are_read_and_sorted() {
        let dir = folder(&[
            (
                "002_b.json",
                r#"{"version":"1.1.0","name":"b","database_type":"postgresql","migration_type":"schema"}"#,
            ),
            (
                "002_b.sql",
                "-- switchyard:no-transaction\nCREATE INDEX CONCURRENTLY i ON t (x);",
            ),
            (
                "001_a.json",
                r#"{"version":"1.0.0","name":"a","description":"first"}"#,
            ),
            ("001_a.sql", "CREATE TABLE t (x int);"),
            ("001_a_rollback.sql", "DROP TABLE t;"),
            ("README.md", "notes"),
        ]);
        let migrations = load_folder(dir.path(), DatabaseKind::Postgresql).unwrap();
        assert_eq!(migrations.len(), 2);
        assert_eq!(migrations[0].version.as_str(), "1.0.0");
        assert_eq!(migrations[0].description.as_deref(), Some("first"));
        let Body::Sql { up, down } = &migrations[0].body else {
            panic!()
        };
        assert!(up.transactional);
        assert!(down.is_some());
        let Body::Sql { up, down } = &migrations[1].body else {
            panic!()
        };
        assert!(!up.transactional);
        assert!(down.is_none());
        assert_eq!(migrations[0].checksum.len(), 64);
    }

    #[test]
    fn plain_sql_takes_its_version_from_the_file_name() {
        let dir = folder(&[("010_x.sql", "SELECT 1;"), ("9_y.sql", "SELECT 1;")]);
        let migrations = load_folder(dir.path(), DatabaseKind::Postgresql).unwrap();
        let versions: Vec<&str> = migrations.iter().map(|m| m.version.as_str()).collect();
        assert_eq!(versions, ["9", "010"]);
        assert_eq!(migrations[1].name, "x");
    }

    #[test]
    fn missing_folder_has_no_migrations() {
        let migrations =
            load_folder(Path::new("no/such/folder"), DatabaseKind::Postgresql).unwrap();
        assert!(migrations.is_empty());
    }

    #[test]
    fn every_problem_is_reported_with_its_file() {
        let dir = folder(&[
            ("001_a.json", r#"{"version":"1.0.0", "name": }"#),
            ("002_b.json", r#"{"version":"1.1.0"}"#),
            ("003_c.json", r#"{"version":"1.1.0"}"#),
            ("003_c.sql", "SELECT 1;"),
            ("004_d.json", r#"{"version":"1.1.0"}"#),
            ("004_d.sql", "SELECT 1;"),
            ("005_e.sql", "SELECT 1;"),
            ("nonumber.sql", "SELECT 1;"),
            ("006_f.json", r#"{"version":"2.0.0","colour":"red"}"#),
            ("006_f.sql", "SELECT 1;"),
        ]);
        let reasons = reasons(load_folder(dir.path(), DatabaseKind::Postgresql));
        let expect = [
            "001_a.json: invalid JSON",
            "002_b.json: no SQL file: expected `002_b.sql` beside it",
            "004_d.json: duplicate version `1.1.0`: ",
            "005_e.sql: version `005` is a plain number (like 3), but ",
            "nonumber.sql: the file name must start with a number",
            "006_f.json: unknown field `colour`, expected one of `version`",
        ];
        for expected in expect {
            assert!(
                reasons.iter().any(|r| r.starts_with(expected)),
                "{expected:?} not in {reasons:#?}"
            );
        }
        assert_eq!(reasons.len(), expect.len(), "{reasons:#?}");
    }

    #[test]
    fn mongo_operations_are_checked() {
        let dir = folder(&[
            (
                "001_a.json",
                r#"{"version":"1.0.0","name":"a","database_type":"mongodb","operations":[
                    {"type":"create_collection","collection":"users","options":{"validator":{}}},
                    {"type":"create_index","collection":"users","index":[["email",1]],"options":{"name":"e"}}]}"#,
            ),
            (
                "002_b.json",
                r#"{"version":"1.1.0","operations":[{"type":"rename_field","collection":"users","from":"a"}]}"#,
            ),
        ]);
        let reasons = reasons(load_folder(dir.path(), DatabaseKind::Mongodb));
        assert_eq!(reasons.len(), 1, "{reasons:#?}");
        assert!(
            reasons[0].starts_with("002_b.json: field `operations[0]`: missing field `to`"),
            "{reasons:#?}"
        );
    }

    #[test]
    fn wrong_database_type_is_refused() {
        let dir = folder(&[
            (
                "001_a.json",
                r#"{"version":"1.0.0","database_type":"mongodb"}"#,
            ),
            ("001_a.sql", ""),
        ]);
        let reasons = reasons(load_folder(dir.path(), DatabaseKind::Postgresql));
        assert!(
            reasons[0].contains("does not match this folder's database kind `postgresql`"),
            "{reasons:?}"
        );
    }

    #[test]
    fn elastic_rollback_file_is_read() {
        let dir = folder(&[
            (
                "001_a.json",
                r#"{"version":"1.0.0","operations":[{"type":"create_index","index":"users","mapping":{}}]}"#,
            ),
            (
                "001_a_rollback.json",
                r#"{"operations":[{"type":"delete_index","index":"users"}]}"#,
            ),
        ]);
        let migrations = load_folder(dir.path(), DatabaseKind::Elasticsearch).unwrap();
        let Body::Elastic {
            down: Some(down), ..
        } = &migrations[0].body
        else {
            panic!()
        };
        assert_eq!(
            down,
            &[ElasticOperation::DeleteIndex {
                index: "users".into()
            }]
        );
    }
}
