//! Discovery and parsing of one database's migration folder, in the formats of
//! [`super::formats`]: seed 003's and those of sqlx, golang-migrate, Flyway and dbmate.
//!
//! Seed 003's migration is a group of files sharing a base name `NNN_name`:
//! - PostgreSQL: `NNN_name.sql` (required), `NNN_name.json` (optional metadata; without
//!   it the version is `NNN`), `NNN_name_rollback.sql` (optional).
//! - MongoDB and Elasticsearch: `NNN_name.json` with `operations`, and optionally
//!   `NNN_name_rollback.json`.
//!
//! Invariants of a parsed folder: one format; versions unique, of one style, and sorted
//! (repeatable migrations last); the checksum covers what defines the forward migration
//! (metadata and up script, or dbmate's up section), so editing it after it was applied
//! is detected while a rollback may still be fixed; an empty script is a migration that
//! does nothing. Every problem found is reported with its file, not only the first.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::formats::{
    classify, dbmate_sections, header_dependencies, runs_in_transaction, Format, Role,
};
use super::operations::{ElasticOperation, MongoOperation};
use super::version::{Version, VersionStyle};
use crate::config::DatabaseKind;
use crate::error::{at_field, FileProblem};

/// One SQL script, with whether it runs inside a transaction.
#[derive(Debug, Clone)]
pub struct SqlScript {
    pub file: PathBuf,
    pub sql: String,
    pub transactional: bool,
}

impl SqlScript {
    fn new(file: PathBuf, sql: String, format: Format) -> SqlScript {
        let sql = match sql.strip_prefix('\u{feff}') {
            Some(without_mark) => without_mark.to_string(),
            None => sql,
        };
        let transactional = runs_in_transaction(&sql, format);
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

/// A version another database must have reached before a migration runs
/// (`"depends_on": {"mongodb": "1.2.0"}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    pub database: String,
    pub version: Version,
}

#[derive(Debug, Clone)]
pub struct Migration {
    pub version: Version,
    pub name: String,
    pub description: Option<String>,
    /// The layout its files are in.
    pub format: Format,
    /// The files it was read from, the one a user should look at first.
    pub files: Vec<PathBuf>,
    /// Hex SHA-256 over what defines the forward migration.
    pub checksum: String,
    pub depends_on: Vec<Dependency>,
    pub body: Body,
}

impl Migration {
    /// The file a user should look at for this migration (metadata, else the script).
    pub fn main_file(&self) -> &Path {
        &self.files[0]
    }

    /// A repeatable migration (Flyway's `R__name.sql`): re-applied whenever its checksum
    /// changes, never rolled back.
    pub fn is_repeatable(&self) -> bool {
        self.version.is_repeatable()
    }

    /// An empty script with nothing else: it does nothing, and fits every format.
    fn is_blank(&self) -> bool {
        matches!(&self.body, Body::Sql { up, .. } if up.sql.trim().is_empty())
            && self.files.len() == 1
            && self.format == Format::Switchyard
    }
}

#[cfg(test)]
impl Migration {
    /// A plain SQL migration that does nothing, for tests of the decisions over folders
    /// (callers set the fields their case needs).
    pub(crate) fn for_test(version: Version, name: &str) -> Migration {
        let script = SqlScript {
            file: PathBuf::from(format!("{version}_{name}.sql")),
            sql: String::new(),
            transactional: true,
        };
        Migration {
            version,
            name: name.to_string(),
            description: None,
            format: Format::Switchyard,
            files: vec![script.file.clone()],
            checksum: String::new(),
            depends_on: Vec::new(),
            body: Body::Sql {
                up: script,
                down: None,
            },
        }
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
    depends_on: BTreeMap<String, String>,
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

impl Group {
    fn any_file(&self) -> Option<&PathBuf> {
        [
            &self.metadata,
            &self.script,
            &self.rollback_sql,
            &self.rollback_json,
        ]
        .into_iter()
        .flatten()
        .next()
    }
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
    for ((format, base), group) in groups {
        match load_migration(format, &base, group, kind) {
            Ok(migration) => migrations.push(migration),
            Err(problem) => problems.push(problem),
        }
    }
    let one_format = check_format(&migrations, &mut problems);
    check_versions(&mut migrations, one_format, &mut problems);
    if problems.is_empty() {
        Ok(migrations)
    } else {
        Err(problems)
    }
}

fn group_files(
    dir: &Path,
    problems: &mut Vec<FileProblem>,
) -> Option<BTreeMap<(Format, String), Group>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            problems.push(problem(dir, format!("cannot read the folder: {e}")));
            return None;
        }
    };
    let mut groups: BTreeMap<(Format, String), Group> = BTreeMap::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if file_name.starts_with('.') || !path.is_file() {
            continue;
        }
        // READMEs and other notes live beside migrations.
        let Some(named) = classify(file_name) else {
            continue;
        };
        let group = groups.entry((named.format, named.base)).or_default();
        let slot = match named.role {
            Role::Metadata => &mut group.metadata,
            Role::Script => &mut group.script,
            Role::Rollback => &mut group.rollback_sql,
            Role::RollbackJson => &mut group.rollback_json,
        };
        *slot = Some(path);
    }
    Some(groups)
}

/// The version and name a file name gives, before any metadata.
fn named_version(
    format: Format,
    base: &str,
    file: &Path,
) -> Result<(Version, String), FileProblem> {
    if format == Format::Flyway {
        if let Some(name) = base.strip_prefix(super::version::REPEATABLE_PREFIX) {
            return Ok((Version::repeatable(name), name.to_string()));
        }
        let (version, name) = base.split_once("__").expect("classified as Flyway");
        let version = Version::parse_flyway(version).map_err(|reason| problem(file, reason))?;
        return Ok((version, name.to_string()));
    }
    let Some((prefix, name)) = split_base(base) else {
        return Err(problem(
            file,
            "the file name must start with a number and `_` (for example 001_create_users.sql, \
             or another tool's name: 1_name.up.sql, V1__name.sql)",
        ));
    };
    let version = Version::parse(prefix).map_err(|reason| problem(file, reason))?;
    Ok((version, name.to_string()))
}

fn load_migration(
    format: Format,
    base: &str,
    group: Group,
    kind: DatabaseKind,
) -> Result<Migration, FileProblem> {
    let any_file = group.any_file().expect("a group has a file").clone();
    let (mut version, mut name) = named_version(format, base, &any_file)?;
    // Read once: parsed for its fields, hashed as written.
    let metadata_text = match &group.metadata {
        Some(path) => Some(read_text(path)?),
        None => None,
    };
    let metadata = match (&group.metadata, &metadata_text) {
        (Some(path), Some(text)) => Some(parse_json_text::<Metadata>(path, text)?),
        _ => None,
    };
    if let (Some(meta), Some(path)) = (&metadata, &group.metadata) {
        if let Some(declared) = &meta.database_type {
            if declared != kind.as_str() {
                return Err(problem(
                    path,
                    format!("field `database_type`: `{declared}` does not match this folder's database kind `{kind}`"),
                ));
            }
        }
        if let Some(text) = &meta.version {
            version = Version::parse(text)
                .map_err(|reason| problem(path, format!("field `version`: {reason}")))?;
        }
        if let Some(text) = &meta.name {
            name = text.clone();
        }
    }
    let description = metadata.as_ref().and_then(|m| m.description.clone());
    let mut files: Vec<PathBuf> = group.metadata.iter().cloned().collect();
    let mut hashed: Vec<String> = metadata_text.into_iter().collect();
    let mut format = format;
    let mut dependencies: Vec<(String, String, PathBuf)> = metadata
        .as_ref()
        .map(|m| {
            m.depends_on
                .iter()
                .map(|(d, v)| (d.clone(), v.clone(), group.metadata.clone().unwrap()))
                .collect()
        })
        .unwrap_or_default();

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
                let expected = match format {
                    Format::UpDown => format!("{base}.up.sql"),
                    Format::Flyway => format!("V{base}.sql"),
                    _ => format!("{base}.sql"),
                };
                return Err(problem(
                    path,
                    format!("no SQL file: expected `{expected}` beside it"),
                ));
            };
            files.push(script_path.clone());
            let raw = read_text(&script_path)?;
            // Editors on Windows start files with a byte-order mark; the server must not see it.
            let text = raw.strip_prefix('\u{feff}').unwrap_or(&raw).to_string();
            for (database, version) in
                header_dependencies(&text).map_err(|reason| problem(&script_path, reason))?
            {
                dependencies.push((database, version, script_path.clone()));
            }
            let sections = match format {
                Format::Switchyard => dbmate_sections(&text),
                _ => None,
            };
            match sections {
                Some(sections) => {
                    let sections = sections.map_err(|reason| problem(&script_path, reason))?;
                    format = Format::Dbmate;
                    if let Some(path) = &group.rollback_sql {
                        return Err(problem(
                            path,
                            format!("`{}` is a dbmate file: its rollback is its `-- migrate:down` section", script_path.display()),
                        ));
                    }
                    hashed.push(sections.up.clone());
                    let script = |sql: String, transactional: bool| SqlScript {
                        file: script_path.clone(),
                        sql,
                        transactional,
                    };
                    Body::Sql {
                        up: script(sections.up, sections.up_transactional),
                        down: sections.down.map(|(sql, t)| script(sql, t)),
                    }
                }
                None => {
                    hashed.push(raw.clone());
                    let blank = text.trim().is_empty();
                    let up = SqlScript::new(script_path.clone(), text, format);
                    // An empty migration changes nothing, so undoing it is nothing too.
                    let down = match &group.rollback_sql {
                        Some(path) => Some(SqlScript::new(path.clone(), read_text(path)?, format)),
                        None if blank => Some(up.clone()),
                        None => None,
                    };
                    Body::Sql { up, down }
                }
            }
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
    if let Some(path) = group
        .rollback_sql
        .as_ref()
        .filter(|_| format == Format::Flyway)
    {
        if version.is_repeatable() {
            return Err(problem(path, "a repeatable migration has no undo file"));
        }
    }
    let depends_on = dependencies
        .into_iter()
        .map(|(database, text, file)| {
            Version::parse_any(&text)
                .map(|version| Dependency {
                    database: database.clone(),
                    version,
                })
                .map_err(|reason| problem(&file, format!("depends_on `{database}`: {reason}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Migration {
        version,
        name,
        description,
        format,
        files,
        checksum: checksum(&hashed),
        depends_on,
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
    parse_json_text(path, &read_text(path)?)
}

/// Parses `text`, the contents of `path`, naming the field of any problem.
fn parse_json_text<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, FileProblem> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
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

/// SHA-256 over each part's length and bytes (for seed 003's files, the files as read).
fn checksum(parts: &[String]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// Refuses a folder whose migrations are in more than one format, naming a file of each;
/// true when there is one format.
fn check_format(migrations: &[Migration], problems: &mut Vec<FileProblem>) -> bool {
    let mut counts: BTreeMap<Format, (usize, &Migration)> = BTreeMap::new();
    for migration in migrations.iter().filter(|m| !m.is_blank()) {
        counts.entry(migration.format).or_insert((0, migration)).0 += 1;
    }
    let Some((&format, &(_, example))) = counts.iter().max_by_key(|(_, (count, _))| *count) else {
        return true;
    };
    for other in migrations
        .iter()
        .filter(|m| !m.is_blank() && m.format != format)
    {
        problems.push(problem(
            other.main_file(),
            format!(
                "this file is in {}, but `{}` is in {}: one folder uses one format",
                other.format,
                example.main_file().display(),
                format
            ),
        ));
    }
    counts.len() < 2
}

/// Refuses duplicate versions and (in a folder of one format, where the style follows
/// from it) mixed version styles, then sorts by version.
fn check_versions(
    migrations: &mut [Migration],
    check_style: bool,
    problems: &mut Vec<FileProblem>,
) {
    migrations.sort_by(|a, b| {
        a.version
            .cmp(&b.version)
            .then_with(|| a.main_file().cmp(b.main_file()))
    });
    // The folder's style is its majority's; each file of another style is reported.
    let numbered: Vec<&Migration> = migrations.iter().filter(|m| !m.is_repeatable()).collect();
    let mut counts: BTreeMap<String, (usize, VersionStyle)> = BTreeMap::new();
    for m in &numbered {
        let style = m.version.style();
        counts.entry(style.to_string()).or_insert((0, style)).0 += 1;
    }
    if let Some(&(_, style)) = counts
        .values()
        .max_by_key(|(count, _)| *count)
        .filter(|_| check_style)
    {
        let example = numbered
            .iter()
            .find(|m| m.version.style() == style)
            .unwrap();
        for other in numbered.iter().filter(|m| m.version.style() != style) {
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

    #[test]
    fn up_down_pairs_are_one_migration_each() {
        let dir = folder(&[
            ("2_b.up.sql", "CREATE INDEX CONCURRENTLY i ON t (x);"),
            ("2_b.down.sql", "DROP INDEX CONCURRENTLY i;"),
            ("10_c.up.sql", "SELECT 1;"),
            ("1_a.up.sql", "CREATE TABLE t (x int);"),
            ("1_a.down.sql", "DROP TABLE t;"),
            ("3_empty.up.sql", ""),
        ]);
        let migrations = load_folder(dir.path(), DatabaseKind::Postgresql).unwrap();
        let names: Vec<(&str, &str)> = migrations
            .iter()
            .map(|m| (m.version.as_str(), m.name.as_str()))
            .collect();
        assert_eq!(names, [("1", "a"), ("2", "b"), ("3", "empty"), ("10", "c")]);
        let Body::Sql { up, down } = &migrations[1].body else {
            panic!()
        };
        assert!(
            !up.transactional,
            "golang-migrate runs CONCURRENTLY outside a transaction"
        );
        assert!(!down.as_ref().unwrap().transactional);
        assert!(matches!(&migrations[3].body, Body::Sql { down: None, .. }));
        let Body::Sql {
            down: Some(undo), ..
        } = &migrations[2].body
        else {
            panic!("an empty migration is undone by doing nothing")
        };
        assert!(undo.sql.is_empty());
        assert!(migrations.iter().all(|m| m.format == Format::UpDown));
    }

    #[test]
    fn flyway_versions_undo_files_and_repeatables() {
        let dir = folder(&[
            ("V1__init.sql", "CREATE TABLE t (x int);"),
            ("U1__init.sql", "DROP TABLE t;"),
            ("V1_1__more.sql", "ALTER TABLE t ADD y int;"),
            ("V1.10__later.sql", "SELECT 1;"),
            ("V2__two.sql", "SELECT 2;"),
            (
                "R__views.sql",
                "CREATE OR REPLACE VIEW v AS SELECT x FROM t;",
            ),
        ]);
        let migrations = load_folder(dir.path(), DatabaseKind::Postgresql).unwrap();
        let versions: Vec<&str> = migrations.iter().map(|m| m.version.as_str()).collect();
        assert_eq!(versions, ["1", "1.1", "1.10", "2", "R__views"]);
        assert!(migrations[4].is_repeatable());
        assert_eq!(migrations[4].name, "views");
        assert!(matches!(
            &migrations[0].body,
            Body::Sql { down: Some(_), .. }
        ));
    }

    #[test]
    fn dbmate_files_are_split_and_checksummed_by_their_up_section() {
        let up = "-- migrate:up\nCREATE TABLE t (x int);\n";
        let dir = folder(&[(
            "20240101000000_t.sql",
            &format!("{up}-- migrate:down\nDROP TABLE t;\n"),
        )]);
        let first = load_folder(dir.path(), DatabaseKind::Postgresql).unwrap();
        assert_eq!(first[0].format, Format::Dbmate);
        let Body::Sql { up: script, down } = &first[0].body else {
            panic!()
        };
        assert_eq!(script.sql, "CREATE TABLE t (x int);\n");
        assert_eq!(down.as_ref().unwrap().sql, "DROP TABLE t;\n");
        std::fs::write(
            dir.path().join("20240101000000_t.sql"),
            format!("{up}-- migrate:down\nDROP TABLE IF EXISTS t;\n"),
        )
        .unwrap();
        let second = load_folder(dir.path(), DatabaseKind::Postgresql).unwrap();
        assert_eq!(
            first[0].checksum, second[0].checksum,
            "a fixed down section is not a changed migration"
        );
    }

    #[test]
    fn a_byte_order_mark_is_not_sent_to_the_server() {
        let dir = folder(&[
            ("1_a.sql", "\u{feff}-- migrate:up\nSELECT 1;\n"),
            (
                "2_b.sql",
                "\u{feff}-- migrate:up\nSELECT 2;\n-- migrate:down\n",
            ),
        ]);
        let migrations = load_folder(dir.path(), DatabaseKind::Postgresql).unwrap();
        assert!(migrations.iter().all(|m| m.format == Format::Dbmate));
        let dir = folder(&[("1_a.up.sql", "\u{feff}SELECT 1;")]);
        let migrations = load_folder(dir.path(), DatabaseKind::Postgresql).unwrap();
        let Body::Sql { up, .. } = &migrations[0].body else {
            panic!()
        };
        assert_eq!(up.sql, "SELECT 1;");
    }

    #[test]
    fn one_folder_uses_one_format() {
        let dir = folder(&[
            ("1_a.up.sql", "SELECT 1;"),
            ("2_b.up.sql", "SELECT 1;"),
            ("V3__c.sql", "SELECT 1;"),
            ("4_empty.sql", ""),
        ]);
        let reasons = reasons(load_folder(dir.path(), DatabaseKind::Postgresql));
        assert_eq!(reasons.len(), 1, "{reasons:#?}");
        assert!(
            reasons[0].starts_with(
                "V3__c.sql: this file is in Flyway's format (V<version>__name.sql), but `"
            ) && reasons[0].contains("1_a.up.sql` is in the up/down format"),
            "{reasons:#?}"
        );
    }

    #[test]
    fn depends_on_is_read_from_metadata_and_headers() {
        let dir = folder(&[
            (
                "001_a.json",
                r#"{"version":"1.0.0","depends_on":{"mongodb":"2"}}"#,
            ),
            (
                "001_a.sql",
                "-- switchyard:depends_on elasticsearch=1.0.0\nSELECT 1;",
            ),
        ]);
        let migrations = load_folder(dir.path(), DatabaseKind::Postgresql).unwrap();
        let found: Vec<(String, String)> = migrations[0]
            .depends_on
            .iter()
            .map(|d| (d.database.clone(), d.version.to_string()))
            .collect();
        assert_eq!(
            found,
            [
                ("mongodb".to_string(), "2".to_string()),
                ("elasticsearch".to_string(), "1.0.0".to_string())
            ]
        );
    }
}
