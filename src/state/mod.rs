//! The state store: where switchyard keeps what must outlive a process and be shared by
//! every shell on the same configuration: the audit log, and each job's record (phase,
//! progress figures) and control (pause, throttle, cutover, abort requests). A job's
//! checkpoints live with the data, in the sink's database, so that each commits with the
//! writes it stands for (see [`crate::engine`]); a target with no transactions
//! (Elasticsearch) keeps them here instead, each saved after the writes it stands for
//! were acknowledged.
//!
//! Chunk leases ([`chunks`]) let many workers share one job's copy; the job's lease
//! ([`job_lease`]) says which one runs the rest of it.
//!
//! Records are opaque JSON here; their meaning lives in [`crate::engine`]. A job's
//! record is written only by the process holding its lease, its control only by
//! operators' commands, so the two never overwrite each other.
//!
//! Two implementations behind one trait: an embedded SQLite file (the default; no server
//! needed) and a PostgreSQL schema `switchyard` (shared by many hosts). Both create
//! their tables on open, idempotently and safely when several processes open at once.
//! Entries hold no secrets: callers pass redacted text only.

pub mod chunks;
pub mod job_lease;
mod postgres;
mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::secret::SecretUrl;

/// Whether an audited command succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
        }
    }

    fn parse(text: &str) -> Outcome {
        if text == "ok" {
            Outcome::Ok
        } else {
            Outcome::Failed
        }
    }
}

/// Who ran what, when, against which database, and how it ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEntry {
    pub at: DateTime<Utc>,
    /// `user@host` of the process that acted.
    pub actor: String,
    /// The command as typed, less the binary's path (`migrate --databases postgresql`).
    pub command: String,
    pub database: Option<String>,
    pub outcome: Outcome,
    /// What happened: versions applied, or the error.
    pub detail: String,
}

/// Everything the state store keeps; chunk and job leases are traits of their own
/// ([`chunks`], [`job_lease`]).
#[async_trait]
pub trait StateStore: chunks::ChunkLeases + job_lease::JobLeases + Send + Sync {
    async fn append_audit(&self, entry: &AuditEntry) -> Result<()>;

    /// The newest `limit` entries (at or after `since`, when given), newest first.
    async fn recent_audit(
        &self,
        limit: usize,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<AuditEntry>>;

    /// Saves a job's record (JSON written by the process running the job).
    async fn put_job(&self, name: &str, record: &str) -> Result<()>;

    async fn job(&self, name: &str) -> Result<Option<String>>;

    /// Every job's record, by name.
    async fn jobs(&self) -> Result<Vec<String>>;

    /// A job's control (JSON written by operators: pause, throttle, cutover, abort).
    async fn control(&self, name: &str) -> Result<Option<String>>;

    /// Replaces a job's control with `change(current)`, atomically against other writers.
    async fn update_control(&self, name: &str, change: ControlChange) -> Result<()>;

    /// One checkpoint (`name`) of a job whose target keeps none itself.
    async fn checkpoint(&self, job: &str, name: &str) -> Result<Option<String>>;

    async fn put_checkpoint(&self, job: &str, name: &str, value: &str) -> Result<()>;

    /// Removes every checkpoint of a job (idempotent).
    async fn forget_checkpoints(&self, job: &str) -> Result<()>;
}

/// A read-modify-write of a control record: gets the current JSON (if any), returns the new.
pub type ControlChange = Box<dyn FnOnce(Option<String>) -> String + Send>;

/// Opens the store named by `state.url`: `sqlite://PATH` or `postgres://…`.
pub async fn open(url: &SecretUrl) -> Result<Arc<dyn StateStore>> {
    let text = url.expose();
    if let Some(path) = text.strip_prefix("sqlite://") {
        Ok(Arc::new(sqlite::SqliteState::open(path.as_ref()).await?))
    } else if text.starts_with("postgres://") || text.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PostgresState::open(url).await?))
    } else {
        Err(Error::Config {
            file: "state.url".into(),
            reason: format!("`{url}` is neither sqlite://PATH nor postgres://…"),
        })
    }
}

/// Records one audit entry for this process (its command line as typed, less the binary:
/// it holds no secrets, those live in the configuration). A failure to record is logged,
/// not fatal to work already done.
pub async fn audit(
    store: &dyn StateStore,
    database: Option<&str>,
    outcome: Outcome,
    detail: String,
) {
    let entry = AuditEntry {
        at: Utc::now(),
        actor: actor(),
        command: command_line(std::env::args().skip(1)),
        database: database.map(str::to_string),
        outcome,
        detail,
    };
    if let Err(error) = store.append_audit(&entry).await {
        tracing::error!(%error, "could not write the audit log");
    }
}

/// The command as typed, with what must not be kept in clear (`--subject ID`, an erasure's
/// data subject) replaced by `…`.
fn command_line(args: impl Iterator<Item = String>) -> String {
    let mut words = Vec::new();
    let mut hide_next = false;
    for arg in args {
        if hide_next {
            words.push("…".to_string());
            hide_next = false;
        } else if arg == "--subject" {
            hide_next = true;
            words.push(arg);
        } else if arg.starts_with("--subject=") {
            words.push("--subject=…".to_string());
        } else {
            words.push(arg);
        }
    }
    words.join(" ")
}

/// This process's default name among the workers sharing jobs: `host-pid`.
pub fn default_worker_id() -> String {
    let host = whoami::hostname().unwrap_or_else(|_| "unknown".to_string());
    format!("{host}-{}", std::process::id())
}

/// Whether a process of this machine is alive.
pub fn process_alive(pid: i64) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists; nothing is sent.
    let answer = unsafe { libc::kill(pid, 0) };
    answer == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// `user@host` of this process (the OS account), for audit entries and
/// history rows.
pub fn actor() -> String {
    let user = whoami::username().unwrap_or_else(|_| "unknown".to_string());
    let host = whoami::hostname().unwrap_or_else(|_| "unknown".to_string());
    format!("{user}@{host}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_erasure_s_subject_is_not_kept_in_the_command_line() {
        let args = |text: &str| {
            text.split(' ')
                .map(str::to_string)
                .collect::<Vec<_>>()
                .into_iter()
        };
        assert_eq!(
            super::command_line(args("erase --subject 4711 --json")),
            "erase --subject … --json"
        );
        assert_eq!(
            super::command_line(args("erase --subject=4711")),
            "erase --subject=…"
        );
    }
}
