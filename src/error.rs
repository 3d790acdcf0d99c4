//! The one error type of the library, and the one place that decides what each error
//! means to a user: its exit code (`2` when the input was wrong and nothing was changed,
//! `1` when something ran and failed).

use std::fmt;
use std::path::PathBuf;

/// A problem found in one file (a migration, a job or the configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProblem {
    pub file: PathBuf,
    pub reason: String,
}

impl fmt::Display for FileProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.reason)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line asked for something that cannot be done as asked.
    #[error("{0}")]
    Usage(String),

    /// A named thing (a job) does not exist.
    #[error("{0}")]
    NotFound(String),

    /// The configuration (file plus environment) is invalid.
    #[error("{file}: {reason}")]
    Config { file: String, reason: String },

    /// One or more migration or job files are invalid.
    #[error("{}", problems_text(.0))]
    InvalidFiles(Vec<FileProblem>),

    /// The request conflicts with what is recorded (an applied file was edited, a
    /// migration has no rollback): refused before anything was changed.
    #[error("{0}")]
    Refused(String),

    /// A database could not be reached or answered with an error outside a migration.
    #[error("database `{database}`: {context}: {message}")]
    Database {
        database: String,
        context: String,
        message: String,
        #[source]
        source: tokio_postgres::Error,
    },

    /// A store other than PostgreSQL (MongoDB, Elasticsearch) could not be reached or
    /// answered with an error.
    #[error("database `{database}`: {context}: {message}")]
    Store {
        database: String,
        context: String,
        message: String,
        /// Whether trying again can succeed (a lost connection, no server selectable, an
        /// error the server labels retryable).
        transient: bool,
    },

    /// A job's replication stream could not start, or broke.
    #[error("database `{database}`: {message}")]
    Replication {
        database: String,
        message: String,
        /// Whether starting it again can succeed (a lost connection, a server
        /// restarting, a slot still held by a dying session).
        transient: bool,
    },

    /// A TLS handshake failed or the server's certificate was refused. Definite: trying
    /// again does not change a certificate.
    #[error("database `{database}`: {message}")]
    Tls { database: String, message: String },

    /// The server has none free of what the job needs (replication slots, WAL senders,
    /// connections) and others hold: the job waits for one (see
    /// [`Error::is_resource_exhausted`]).
    #[error("database `{database}`: {message}")]
    Exhausted { database: String, message: String },

    /// A lock was not had in time: another run's migration lock, or a table lock that a
    /// job's DDL, verification or cutover waited for longer than `lock_timeout`.
    /// Transient: the engine retries it, and a cutover gives up after its own attempts.
    #[error("database `{database}`: {message}")]
    LockTimeout { database: String, message: String },

    /// A migration ran and failed; it is recorded as FAILED with this error.
    #[error("migration {version} ({name}) failed on `{database}`: {message}")]
    MigrationFailed {
        database: String,
        version: String,
        name: String,
        message: String,
    },

    /// Verification found ranges where source and target differ; cutover is refused.
    #[error("job `{job}`: verification failed, cutover refused:\n{}", .ranges.join("\n"))]
    VerifyFailed { job: String, ranges: Vec<String> },

    /// A copy worker's lease on a chunk passed to another worker (it expired while this
    /// one stalled): the sink refused its batch, and the worker leaves the chunk.
    #[error("job `{job}`: chunk {chunk} is leased to another worker now (this worker's lease expired: was the process stalled?); its batch was not written")]
    LeaseLost { job: String, chunk: i32 },

    /// The job's lease passed to another process (it expired while this one stalled):
    /// this run stopped without writing more.
    #[error("job `{job}`: another worker runs the job now (this process's lease on it expired: was it stalled?); this run stopped without writing more")]
    JobLeaseLost { job: String },

    /// `health` found something that needs action (each finding was printed).
    #[error("{0}")]
    Unhealthy(String),

    /// The state store (audit log, job checkpoints) failed.
    #[error("state store: {0}")]
    State(String),

    /// A local file could not be read or written.
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn problems_text(problems: &[FileProblem]) -> String {
    let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
    lines.join("\n")
}

impl Error {
    /// The process exit code for this error: 2 when nothing was changed because the
    /// input was wrong, 1 when something ran and failed.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_)
            | Error::NotFound(_)
            | Error::Config { .. }
            | Error::InvalidFiles(_)
            | Error::Refused(_) => 2,
            Error::Database { .. }
            | Error::Store { .. }
            | Error::Replication { .. }
            | Error::Tls { .. }
            | Error::Exhausted { .. }
            | Error::LockTimeout { .. }
            | Error::MigrationFailed { .. }
            | Error::VerifyFailed { .. }
            | Error::LeaseLost { .. }
            | Error::JobLeaseLost { .. }
            | Error::Unhealthy(_)
            | Error::State(_)
            | Error::Io { .. } => 1,
        }
    }

    /// Whether trying again can succeed: a lost or refused connection, a server
    /// shutting down, a serialization failure or deadlock, a lock timeout. The one
    /// place that decides what is retried; everything else is definite.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::LockTimeout { .. } => true,
            Error::Replication { transient, .. } | Error::Store { transient, .. } => *transient,
            Error::Database { source, .. } => match source.code() {
                // No answer from the server: transient if the connection broke.
                None => {
                    source.is_closed()
                        || std::error::Error::source(source)
                            .is_some_and(|cause| cause.is::<std::io::Error>())
                }
                Some(code) => {
                    let code = code.code();
                    code.starts_with("08") // connection exception
                        || matches!(code, "57P01" | "57P02" | "57P03" | "40001" | "40P01" | "53300" | "55P03")
                }
            },
            _ => false,
        }
    }

    /// Whether the server is out of something a job needs and others hold: connections
    /// (53300), replication slots or WAL senders (53400). Not a failure: the job waits
    /// until one is free, however long that takes.
    pub fn is_resource_exhausted(&self) -> bool {
        const EXHAUSTED: [&str; 2] = ["53300", "53400"];
        match self {
            Error::Exhausted { .. } => true,
            Error::Database { source, .. } => source
                .code()
                .is_some_and(|code| EXHAUSTED.contains(&code.code())),
            Error::Replication { message, .. } => EXHAUSTED
                .iter()
                .any(|code| message.contains(&format!("SQLSTATE {code}"))),
            _ => false,
        }
    }

    /// Every value of [`Error::kind`].
    pub const KINDS: [&'static str; 12] = [
        "usage",
        "not_found",
        "config",
        "invalid_file",
        "refused",
        "database",
        "lock_timeout",
        "migration",
        "verify",
        "state",
        "lease_lost",
        "io",
    ];

    /// A short, fixed name of the error's kind, for metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Usage(_) => "usage",
            Error::NotFound(_) => "not_found",
            Error::Config { .. } => "config",
            Error::InvalidFiles(_) => "invalid_file",
            Error::Refused(_) => "refused",
            Error::Database { .. }
            | Error::Store { .. }
            | Error::Replication { .. }
            | Error::Tls { .. }
            | Error::Exhausted { .. } => "database",
            Error::LockTimeout { .. } => "lock_timeout",
            Error::MigrationFailed { .. } => "migration",
            Error::VerifyFailed { .. } | Error::Unhealthy(_) => "verify",
            Error::State(_) => "state",
            Error::LeaseLost { .. } | Error::JobLeaseLost { .. } => "lease_lost",
            Error::Io { .. } => "io",
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn database(
        database: &str,
        context: impl Into<String>,
        source: tokio_postgres::Error,
    ) -> Self {
        Error::Database {
            database: database.to_string(),
            context: context.into(),
            message: describe_postgres_error(&source),
            source,
        }
    }
}

/// A PostgreSQL error as a user needs to read it: severity, message, SQLSTATE, and the
/// detail, hint and position when the server gave them. (`tokio_postgres::Error`'s own
/// Display says only "db error".)
pub fn describe_postgres_error(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => {
            let mut text = format!(
                "{}: {} (SQLSTATE {})",
                db.severity(),
                db.message(),
                db.code().code()
            );
            if let Some(detail) = db.detail() {
                text.push_str(&format!("; detail: {detail}"));
            }
            if let Some(hint) = db.hint() {
                text.push_str(&format!("; hint: {hint}"));
            }
            if let Some(tokio_postgres::error::ErrorPosition::Original(position)) = db.position() {
                text.push_str(&format!("; at character {position}"));
            }
            text
        }
        None => {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                text.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            text
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// "field `a.b[2]`: message" for a serde error at `path` under `prefix` (empty for the
/// document root). An unknown field is reported at its parent, since the message
/// already names it.
pub fn at_field(prefix: &str, path: &serde_path_to_error::Path, message: &str) -> String {
    use serde_path_to_error::Segment;
    let mut segments: Vec<&Segment> = path.iter().collect();
    if message.starts_with("unknown field") {
        segments.pop();
    }
    let mut field = prefix.to_string();
    for segment in segments {
        match segment {
            Segment::Seq { index } => field.push_str(&format!("[{index}]")),
            Segment::Map { key } => {
                if !field.is_empty() {
                    field.push('.');
                }
                field.push_str(key);
            }
            Segment::Enum { variant } => {
                if !field.is_empty() {
                    field.push('.');
                }
                field.push_str(variant);
            }
            Segment::Unknown => field.push_str(".?"),
        }
    }
    if field.is_empty() {
        message.to_string()
    } else {
        format!("field `{field}`: {message}")
    }
}

#[cfg(test)]
mod tests {
    use super::Error;

    #[test]
    fn only_what_can_succeed_again_is_transient() {
        let lock = Error::LockTimeout {
            database: "pg".into(),
            message: String::new(),
        };
        assert!(lock.is_transient());
        assert!(!Error::Refused(String::new()).is_transient());
        assert!(!Error::VerifyFailed {
            job: String::new(),
            ranges: Vec::new()
        }
        .is_transient());
        assert!(!Error::State(String::new()).is_transient());
    }

    #[test]
    fn every_kind_is_listed() {
        let errors = [
            Error::Usage(String::new()),
            Error::NotFound(String::new()),
            Error::Refused(String::new()),
            Error::State(String::new()),
            Error::InvalidFiles(Vec::new()),
            Error::VerifyFailed {
                job: String::new(),
                ranges: Vec::new(),
            },
        ];
        for error in errors {
            assert!(Error::KINDS.contains(&error.kind()), "{}", error.kind());
        }
    }
}
