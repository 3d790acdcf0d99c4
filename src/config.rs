//! Configuration: a TOML file (default `config/switchyard.toml`, built-in defaults when
//! it is absent) layered with `SWITCHYARD__SECTION__KEY` environment variables.
//!
//! Invariants: unknown fields are rejected, every error names the file and the field
//! path, and URLs are held as [`SecretUrl`] so that no output can show a password.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{at_field, Error, Result};
use crate::secret::{Secret, SecretUrl};

/// Where the configuration is read from when `--config` is not given.
pub const DEFAULT_CONFIG_FILE: &str = "config/switchyard.toml";
/// The prefix of configuration environment variables (`SWITCHYARD__STATE__URL`).
pub const ENV_PREFIX: &str = "SWITCHYARD";
const DEFAULT_STATE_URL: &str = "sqlite://data/switchyard.db";
const DEFAULT_LEASE: Duration = Duration::from_secs(30);
const DEFAULT_LISTEN: &str = "127.0.0.1:9464";
const DEFAULT_MIGRATIONS_DIR: &str = "migrations";
const DEFAULT_JOBS_DIR: &str = "jobs";
const DEFAULT_DDL_LOCK_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_MIGRATION_LOCK_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub state: StateConfig,
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub migrations: MigrationsConfig,
    #[serde(default)]
    pub jobs: JobsConfig,
    #[serde(default)]
    pub serve: ServeConfig,
    /// Named databases; `migrations/<name>/` holds each one's migrations.
    #[serde(default)]
    pub databases: BTreeMap<String, DatabaseConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// `sqlite://PATH` (embedded, the default) or `postgres://…` (shared by many hosts).
    pub url: SecretUrl,
    /// How long a worker's lease on a chunk of a job lasts without a heartbeat: a dead
    /// or frozen worker's chunk goes to another worker after this.
    #[serde(default = "default_lease", with = "humantime_serde")]
    pub lease: Duration,
}

fn default_lease() -> Duration {
    DEFAULT_LEASE
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            url: SecretUrl::new(DEFAULT_STATE_URL),
            lease: DEFAULT_LEASE,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address of `/metrics` and the HTTP API; loopback unless configured otherwise.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// When set, mutating HTTP endpoints require `Authorization: Bearer <token>`.
    #[serde(default)]
    pub token: Option<Secret>,
    /// Lets `serve` listen beyond loopback without a token (anyone who reaches the port
    /// may then pause, cut over or abort every job).
    #[serde(default)]
    pub allow_unauthenticated: bool,
    /// A PEM certificate chain and its key: the HTTP API and `/metrics` over TLS.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

impl ServerConfig {
    /// Refuses to expose the jobs API beyond loopback without a token, unless
    /// `allow_unauthenticated` says so.
    pub fn check_exposure(&self) -> Result<()> {
        if self.listen.ip().is_loopback() || self.token.is_some() || self.allow_unauthenticated {
            return Ok(());
        }
        Err(Error::Usage(format!(
            "serve refuses to listen on {} without `server.token`: anyone who reaches the port could pause, cut over or abort every job. \
             Set server.token (or SWITCHYARD__SERVER__TOKEN), listen on loopback, or write server.allow_unauthenticated = true",
            self.listen
        )))
    }
}

fn default_listen() -> SocketAddr {
    DEFAULT_LISTEN
        .parse()
        .expect("the default listen address is valid")
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            token: None,
            allow_unauthenticated: false,
            tls_cert: None,
            tls_key: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationsConfig {
    /// The folder holding one sub-folder of migration files per database.
    #[serde(default = "default_migrations_dir")]
    pub dir: PathBuf,
    /// `lock_timeout` set for every migration's DDL, so that a migration waiting for a
    /// busy table fails instead of blocking the application's queries behind it.
    #[serde(default = "default_ddl_lock_timeout", with = "humantime_serde")]
    pub lock_timeout: Duration,
    /// How long `migrate` and `rollback` wait for another run's migration lock.
    #[serde(default = "default_lock_wait", with = "humantime_serde")]
    pub lock_wait: Duration,
}

fn default_migrations_dir() -> PathBuf {
    PathBuf::from(DEFAULT_MIGRATIONS_DIR)
}
fn default_ddl_lock_timeout() -> Duration {
    DEFAULT_DDL_LOCK_TIMEOUT
}
fn default_lock_wait() -> Duration {
    DEFAULT_MIGRATION_LOCK_WAIT
}

impl Default for MigrationsConfig {
    fn default() -> Self {
        MigrationsConfig {
            dir: default_migrations_dir(),
            lock_timeout: DEFAULT_DDL_LOCK_TIMEOUT,
            lock_wait: DEFAULT_MIGRATION_LOCK_WAIT,
        }
    }
}

/// How `serve` runs jobs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Jobs running at once; the others wait in line (when they became due, then name).
    #[serde(default = "default_max_jobs")]
    pub max_jobs: usize,
}

fn default_max_jobs() -> usize {
    4
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            max_jobs: default_max_jobs(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsConfig {
    /// The folder of job files that `serve` runs (and `POST /jobs` writes to).
    #[serde(default = "default_jobs_dir")]
    pub dir: PathBuf,
}

fn default_jobs_dir() -> PathBuf {
    PathBuf::from(DEFAULT_JOBS_DIR)
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            dir: default_jobs_dir(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    pub kind: DatabaseKind,
    pub url: SecretUrl,
    /// Elasticsearch: the CA certificate (PEM) that signed the server's, for `https://`.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// Elasticsearch: basic authentication (or `https://user:password@host` in the URL).
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<crate::secret::Secret>,
    /// Elasticsearch: an API key, as the base64 `id:key` Kibana shows.
    #[serde(default)]
    pub api_key: Option<crate::secret::Secret>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DatabaseKind {
    Postgresql,
    Mongodb,
    Elasticsearch,
}

impl DatabaseKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DatabaseKind::Postgresql => "postgresql",
            DatabaseKind::Mongodb => "mongodb",
            DatabaseKind::Elasticsearch => "elasticsearch",
        }
    }

    /// The kind a folder name stands for when the configuration does not name it
    /// (the default names of seed 003's layout).
    pub fn from_default_name(name: &str) -> Option<Self> {
        match name {
            "postgresql" => Some(DatabaseKind::Postgresql),
            "mongodb" => Some(DatabaseKind::Mongodb),
            "elasticsearch" => Some(DatabaseKind::Elasticsearch),
            _ => None,
        }
    }
}

impl std::fmt::Display for DatabaseKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Config {
    /// Loads the configuration. An explicitly named file must exist; the default file
    /// may be absent, in which case built-in defaults and the environment apply.
    pub fn load(explicit: Option<&Path>) -> Result<Config> {
        Self::load_with_env(explicit, std::env::vars())
    }

    /// [`Config::load`] with the environment given, so that tests need not change the
    /// process environment.
    pub fn load_with_env(
        explicit: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config> {
        let path = explicit.unwrap_or(Path::new(DEFAULT_CONFIG_FILE));
        let file_label = path.display().to_string();
        if explicit.is_some() && !path.is_file() {
            return Err(Error::Config {
                file: file_label,
                reason: "no such file (give an existing file to --config, or omit it to use config/switchyard.toml or the built-in defaults)".into(),
            });
        }
        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(key, _)| key.starts_with(&format!("{ENV_PREFIX}__")))
            .collect();
        let source_label = if env.is_empty() {
            file_label.clone()
        } else {
            format!("{file_label} (with {ENV_PREFIX}__* environment variables)")
        };
        let layered = config::Config::builder()
            .add_source(
                config::File::from(path)
                    .format(config::FileFormat::Toml)
                    .required(false),
            )
            .add_source(
                config::Environment::with_prefix(ENV_PREFIX)
                    .prefix_separator("__")
                    .separator("__")
                    .source(Some(env)),
            )
            .build()
            .map_err(|e| Error::Config {
                file: file_label.clone(),
                reason: e.to_string(),
            })?;
        let tree: serde_json::Value = layered.try_deserialize().map_err(|e| Error::Config {
            file: source_label.clone(),
            reason: e.to_string(),
        })?;
        let config: Config = serde_path_to_error::deserialize(tree).map_err(|e| Error::Config {
            file: source_label.clone(),
            reason: at_field("", e.path(), &e.inner().to_string()),
        })?;
        config.validate().map_err(|reason| Error::Config {
            file: source_label,
            reason,
        })?;
        Ok(config)
    }

    /// Checks what serde cannot: names, URL schemes. Returns the field path and reason.
    fn validate(&self) -> std::result::Result<(), String> {
        let state = self.state.url.expose();
        if !(state.starts_with("sqlite://") || is_postgres_url(state)) {
            return Err(format!(
                "field `state.url`: `{}` is neither sqlite://PATH nor postgres://…",
                self.state.url
            ));
        }
        if self.state.lease < Duration::from_secs(1) {
            return Err(
                "field `state.lease`: must be at least 1s (heartbeats renew it every third)".into(),
            );
        }
        if self.serve.max_jobs == 0 {
            return Err("field `serve.max_jobs`: must be at least 1".into());
        }
        if self.server.tls_cert.is_some() != self.server.tls_key.is_some() {
            return Err(
                "field `server.tls_cert`: set both server.tls_cert and server.tls_key, or neither"
                    .into(),
            );
        }
        for (name, database) in &self.databases {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(format!(
                    "field `databases.{name}`: a database name may hold only letters, digits, `_` and `-` (it names a folder under migrations/)"
                ));
            }
            let url = database.url.expose();
            let ok = match database.kind {
                DatabaseKind::Postgresql => is_postgres_url(url),
                DatabaseKind::Mongodb => {
                    url.starts_with("mongodb://") || url.starts_with("mongodb+srv://")
                }
                DatabaseKind::Elasticsearch => {
                    url.starts_with("http://") || url.starts_with("https://")
                }
            };
            if !ok {
                return Err(format!(
                    "field `databases.{name}.url`: `{}` is not a {} URL",
                    database.url, database.kind
                ));
            }
            let elastic_only = [
                ("ca_file", database.ca_file.is_some()),
                ("username", database.username.is_some()),
                ("password", database.password.is_some()),
                ("api_key", database.api_key.is_some()),
            ];
            if database.kind != DatabaseKind::Elasticsearch {
                if let Some((field, _)) = elastic_only.iter().find(|(_, set)| *set) {
                    return Err(format!(
                        "field `databases.{name}.{field}`: for Elasticsearch; {} takes its TLS settings and credentials in the URL",
                        database.kind
                    ));
                }
            }
            if database.password.is_some() && database.username.is_none() {
                return Err(format!(
                    "field `databases.{name}.password`: set `username` too"
                ));
            }
        }
        Ok(())
    }

    /// The configured database of this name, or a usage error listing the known ones.
    pub fn database(&self, name: &str) -> Result<&DatabaseConfig> {
        self.databases.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.databases.keys().map(String::as_str).collect();
            Error::Usage(format!(
                "no database named `{name}` in the configuration (configured: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ))
        })
    }
}

fn is_postgres_url(url: &str) -> bool {
    (url.starts_with("postgres://") || url.starts_with("postgresql://"))
        && crate::backend::postgres::ConnectionSettings::parse("", &SecretUrl::new(url)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn load(toml: &str, env: &[(&str, &str)]) -> Result<Config> {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(toml.as_bytes()).unwrap();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::load_with_env(Some(file.path()), env)
    }

    #[test]
    fn defaults_apply_to_an_empty_file() {
        let config = load("", &[]).unwrap();
        assert_eq!(config.state.url.expose(), DEFAULT_STATE_URL);
        assert_eq!(config.server.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.migrations.lock_timeout, Duration::from_secs(5));
        assert!(config.databases.is_empty());
    }

    #[test]
    fn environment_overrides_and_adds() {
        let config = load(
            "[databases.postgresql]\nkind = \"postgresql\"\nurl = \"postgres://a@h/db\"\n",
            &[
                (
                    "SWITCHYARD__DATABASES__POSTGRESQL__URL",
                    "postgres://b:pw@h/db",
                ),
                ("SWITCHYARD__MIGRATIONS__LOCK_TIMEOUT", "2s"),
            ],
        )
        .unwrap();
        assert_eq!(
            config.databases["postgresql"].url.expose(),
            "postgres://b:pw@h/db"
        );
        assert_eq!(config.migrations.lock_timeout, Duration::from_secs(2));
    }

    #[test]
    fn unknown_field_is_named_with_its_path() {
        let err = load(
            "[databases.pg]\nkind = \"postgresql\"\nurl = \"postgres://h/db\"\nulr = 1\n",
            &[],
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("databases.pg"), "{text}");
        assert!(text.contains("unknown field `ulr`"), "{text}");
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn bad_kind_is_named_with_its_path() {
        let err = load(
            "[databases.pg]\nkind = \"mysql\"\nurl = \"postgres://h/db\"\n",
            &[],
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("field `databases.pg.kind`"),
            "{err}"
        );
    }

    #[test]
    fn url_errors_never_show_the_password() {
        let err = load(
            "[databases.pg]\nkind = \"mongodb\"\nurl = \"postgres://u:topsecret@h/db\"\n",
            &[],
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("databases.pg.url"), "{text}");
        assert!(!text.contains("topsecret"), "{text}");
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let err =
            Config::load_with_env(Some(Path::new("no/such/file.toml")), Vec::new()).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err
            .to_string()
            .starts_with("no/such/file.toml: no such file"));
    }
}
