//! `switchyard erase`: a data subject's personal data erased from every configured
//! database, as the mapping file (`config/erasure.toml`) says where it lives.
//!
//! Invariants: the whole mapping is checked (databases configured, each entry's target
//! of its database's kind, `set` exactly for `anonymise`) before any database is
//! touched; each database's entries run together, in one transaction where the store has
//! them (PostgreSQL); the subject is never written anywhere in clear: the report and the
//! audit log name it by [`subject_digest`].

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::backend::{elasticsearch, mongodb, postgres};
use crate::config::{Config, DatabaseKind};
use crate::error::{Error, FileProblem, Result};

/// The mapping file's default place.
pub const DEFAULT_MAP: &str = "config/erasure.toml";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Delete,
    #[serde(alias = "anonymize")]
    Anonymise,
}

impl Action {
    pub fn past(self) -> &'static str {
        match self {
            Action::Delete => "deleted",
            Action::Anonymise => "anonymised",
        }
    }
}

/// One `[[erase]]` entry: where personal data lives and what to do with it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub database: String,
    #[serde(default)]
    pub table: Option<String>,
    #[serde(default)]
    pub collection: Option<String>,
    #[serde(default)]
    pub index: Option<String>,
    /// The column, field or dotted path holding the subject's id.
    pub field: String,
    pub action: Action,
    /// `anonymise`: column → SQL expression (PostgreSQL), field → value (MongoDB,
    /// Elasticsearch).
    #[serde(default)]
    pub set: BTreeMap<String, toml::Value>,
}

impl Entry {
    /// The table, collection or index it names.
    pub fn target(&self) -> &str {
        self.table
            .as_deref()
            .or(self.collection.as_deref())
            .or(self.index.as_deref())
            .unwrap_or_default()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MapFile {
    #[serde(default)]
    erase: Vec<Entry>,
}

/// What one entry erased (or, in a dry run, would).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Erased {
    pub database: String,
    pub target: String,
    pub action: Action,
    pub count: u64,
}

/// A stable, one-way name for the subject: `sha256:` and the first 16 hex digits.
pub fn subject_digest(subject: &str) -> String {
    let digest = hex::encode(Sha256::digest(subject.as_bytes()));
    format!("sha256:{}", &digest[..16])
}

/// Reads and checks the mapping file against the configuration: every problem at once.
pub fn load_map(path: &Path, config: &Config) -> Result<Vec<Entry>> {
    let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::Usage(format!(
            "{}: no erasure mapping; write one (see README, \"GDPR erasure\") or name it with --map FILE",
            path.display()
        )),
        _ => Error::io(path, e),
    })?;
    let problem = |reason: String| FileProblem {
        file: path.to_path_buf(),
        reason,
    };
    let map: MapFile = toml::from_str(&text).map_err(|e| {
        Error::InvalidFiles(vec![problem(
            e.message().to_string() + &line_of(&text, e.span()),
        )])
    })?;
    if map.erase.is_empty() {
        return Err(Error::InvalidFiles(vec![problem(
            "no [[erase]] entries: nothing says where personal data lives".into(),
        )]));
    }
    let mut problems = Vec::new();
    for (n, entry) in map.erase.iter().enumerate() {
        let at = format!("erase[{}] ({} {})", n + 1, entry.database, entry.target());
        let Some(database) = config.databases.get(&entry.database) else {
            problems.push(problem(format!(
                "{at}: no database `{}` is configured",
                entry.database
            )));
            continue;
        };
        let named = [&entry.table, &entry.collection, &entry.index]
            .iter()
            .filter(|t| t.is_some())
            .count();
        let (wanted, key) = match database.kind {
            DatabaseKind::Postgresql => (&entry.table, "table"),
            DatabaseKind::Mongodb => (&entry.collection, "collection"),
            DatabaseKind::Elasticsearch => (&entry.index, "index"),
        };
        if named != 1 || wanted.is_none() {
            problems.push(problem(format!(
                "{at}: a {} database's entry names exactly one `{key}`",
                database.kind
            )));
        }
        if entry.field.trim().is_empty() {
            problems.push(problem(format!("{at}: `field` is empty")));
        }
        match (entry.action, entry.set.is_empty()) {
            (Action::Anonymise, true) => problems.push(problem(format!(
                "{at}: `anonymise` needs `set` (what to write instead)"
            ))),
            (Action::Delete, false) => {
                problems.push(problem(format!("{at}: `delete` takes no `set`")))
            }
            _ => {}
        }
        if database.kind == DatabaseKind::Postgresql {
            for (column, value) in &entry.set {
                if !value.is_str() {
                    problems.push(problem(format!(
                        "{at}: set.{column} must be an SQL expression in a string (\"NULL\", \"'erased'\")"
                    )));
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(map.erase)
    } else {
        Err(Error::InvalidFiles(problems))
    }
}

fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    span.map(|s| format!(" (line {})", text[..s.start].lines().count().max(1)))
        .unwrap_or_default()
}

/// The databases the entries name, each once, in the mapping's order.
pub fn databases(entries: &[Entry]) -> Vec<&str> {
    let mut databases: Vec<&str> = Vec::new();
    for entry in entries {
        if !databases.contains(&entry.database.as_str()) {
            databases.push(&entry.database);
        }
    }
    databases
}

/// Erases (or counts, when `dry_run`) the subject's data in each database of the
/// mapping, database by database in the mapping's order; returns what each entry did.
/// A database that fails stops the erasure there, with what the others did in the error.
pub async fn erase(
    config: &Config,
    entries: &[Entry],
    subject: &str,
    dry_run: bool,
) -> std::result::Result<Vec<Erased>, (Vec<Erased>, Error)> {
    let mut done = Vec::new();
    for name in databases(entries) {
        let mine: Vec<&Entry> = entries.iter().filter(|e| e.database == name).collect();
        let database = config.database(name).map_err(|e| (done.clone(), e))?;
        let counts = match database.kind {
            DatabaseKind::Postgresql => {
                postgres::erase::erase(name, &database.url, &mine, subject, dry_run).await
            }
            DatabaseKind::Mongodb => {
                mongodb::erase::erase(name, &database.url, &mine, subject, dry_run).await
            }
            DatabaseKind::Elasticsearch => {
                elasticsearch::erase::erase(name, database, &mine, subject, dry_run).await
            }
        };
        match counts {
            Ok(counts) => done.extend(mine.iter().zip(counts).map(|(entry, count)| Erased {
                database: name.to_string(),
                target: entry.target().to_string(),
                action: entry.action,
                count,
            })),
            Err(error) => return Err((done, error)),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let mut config = Config::default();
        for (name, kind) in [
            ("postgresql", DatabaseKind::Postgresql),
            ("mongodb", DatabaseKind::Mongodb),
        ] {
            config.databases.insert(
                name.into(),
                crate::config::DatabaseConfig {
                    kind,
                    url: crate::secret::SecretUrl::new("postgres://x/y"),
                    ca_file: None,
                    username: None,
                    password: None,
                    api_key: None,
                },
            );
        }
        config
    }

    fn problems(text: &str) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("erasure.toml");
        std::fs::write(&path, text).unwrap();
        match load_map(&path, &config()) {
            Err(Error::InvalidFiles(problems)) => problems.into_iter().map(|p| p.reason).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_problem_of_a_mapping_is_named() {
        let found = problems(
            r#"
[[erase]]
database = "postgresql"
collection = "users"
field = "id"
action = "delete"
[[erase]]
database = "nowhere"
table = "t"
field = "id"
action = "delete"
[[erase]]
database = "postgresql"
table = "orders"
field = "customer_id"
action = "anonymise"
[[erase]]
database = "mongodb"
collection = "events"
field = "user.id"
action = "delete"
set = { note = "x" }
[[erase]]
database = "postgresql"
table = "notes"
field = "user_id"
action = "anonymise"
set = { body = 5 }
"#,
        );
        assert_eq!(
            found,
            [
                "erase[1] (postgresql users): a postgresql database's entry names exactly one `table`",
                "erase[2] (nowhere t): no database `nowhere` is configured",
                "erase[3] (postgresql orders): `anonymise` needs `set` (what to write instead)",
                "erase[4] (mongodb events): `delete` takes no `set`",
                "erase[5] (postgresql notes): set.body must be an SQL expression in a string (\"NULL\", \"'erased'\")",
            ]
        );
        assert_eq!(
            problems("[[erase]]\ndatabase = \"postgresql\"\ntable = \"t\"\nfield = \"id\"\naction = \"shred\"\n")[0],
            "unknown variant `shred`, expected one of `delete`, `anonymise`, `anonymize` (line 5)"
        );
    }

    #[test]
    fn the_subject_is_named_by_a_digest() {
        assert_eq!(subject_digest("42"), "sha256:73475cb40a568e8d");
        assert_ne!(subject_digest("42"), subject_digest("43"));
    }
}
