//! A job's sessions on one PostgreSQL database: the control session, further sessions
//! for workers, and the ending of sessions an earlier run left behind.
//!
//! Invariants:
//! - Every session of a job carries the `application_name` `switchyard job NAME #GEN`,
//!   where GEN changes with each run and each reconnect. Sessions of the job with
//!   another GEN belong to a run that is gone (killed, or cut off from its server):
//!   their in-flight statements could still commit behind the new run's checkpoint
//!   read, so the lease holder ends them before reading any checkpoint.
//! - Processes that only copy chunks of a job another runs (helpers) name their
//!   sessions `switchyard helper NAME #GEN`: they are no leftovers, and the fence of
//!   each batch keeps a stale helper from writing.
//! - Job sessions use fixed text formats (UTC, ISO dates, shortest exact floats, hex
//!   bytea), so values read as text on one server are written unchanged on another,
//!   and digests of the same rows agree across servers.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_postgres::types::{FromSql, ToSql};
use tokio_postgres::Client;

use super::connect_with;
use crate::error::{Error, Result};
use crate::secret::SecretUrl;

/// Session settings of every job session (see the module docs).
const SESSION_OPTIONS: &str = "-c TimeZone=UTC -c DateStyle=ISO,MDY -c IntervalStyle=postgres -c extra_float_digits=1 -c bytea_output=hex";

/// How long ending a dead run's sessions may take.
const LEFTOVER_WAIT: Duration = Duration::from_secs(30);

/// The names of one job's sessions, shared by both sides of the job.
#[derive(Clone)]
pub struct Sessions {
    job: String,
    /// `job` for the process running the job, `helper` for one copying its chunks.
    role: &'static str,
    generation: Arc<Mutex<String>>,
}

impl Sessions {
    pub fn new(job: &str) -> Sessions {
        Sessions {
            job: job.to_string(),
            role: "job",
            generation: Arc::new(Mutex::new(fresh_generation())),
        }
    }

    /// The sessions of a helper (see the module docs).
    pub fn helper(job: &str) -> Sessions {
        Sessions {
            role: "helper",
            ..Sessions::new(job)
        }
    }

    /// Sessions opened from now on belong to a new generation; older ones count as
    /// leftovers.
    pub fn renew(&self) {
        *self.generation.lock().expect("generation lock") = fresh_generation();
    }

    /// Every session of the job, of any generation, starts with this.
    pub fn prefix(&self) -> String {
        format!("switchyard {} {} #", self.role, self.job)
    }

    pub fn application_name(&self) -> String {
        format!(
            "{}{}",
            self.prefix(),
            self.generation.lock().expect("generation lock")
        )
    }
}

fn fresh_generation() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{:x}", (std::process::id() << 8) ^ nanos)
}

/// The job's control session on one database, and how to open more.
pub struct Side {
    /// The configured database name, for messages.
    pub database: String,
    pub url: SecretUrl,
    pub sessions: Sessions,
    pub client: Client,
}

impl Side {
    pub async fn open(database: &str, url: &SecretUrl, sessions: &Sessions) -> Result<Side> {
        let client = open_session(database, url, sessions).await?;
        Ok(Side {
            database: database.to_string(),
            url: url.clone(),
            sessions: sessions.clone(),
            client,
        })
    }

    /// Another session of the job on this database.
    pub async fn connect(&self) -> Result<Client> {
        open_session(&self.database, &self.url, &self.sessions).await
    }

    /// Replaces the control session with a new one.
    pub async fn reconnect(&mut self) -> Result<()> {
        self.client = self.connect().await?;
        Ok(())
    }

    /// Maps a driver error to one that names this database and what failed.
    pub fn failed(
        &self,
        context: impl Into<String>,
    ) -> impl FnOnce(tokio_postgres::Error) -> Error {
        let context = context.into();
        let database = self.database.clone();
        move |e| Error::database(&database, context, e)
    }

    /// The first column of the one row `sql` returns.
    pub async fn scalar<T: for<'a> FromSql<'a>>(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        context: &str,
    ) -> Result<T> {
        let row = self
            .client
            .query_one(sql, params)
            .await
            .map_err(self.failed(context))?;
        row.try_get(0).map_err(self.failed(context))
    }

    /// The database's oid (replication slots are per server, so their names carry it).
    pub async fn database_oid(&self) -> Result<u32> {
        self.scalar(
            "SELECT oid FROM pg_database WHERE datname = current_database()",
            &[],
            "cannot read the database's oid",
        )
        .await
    }

    /// Whether a relation of this (quoted) name exists.
    pub async fn exists(&self, name_sql: &str) -> Result<bool> {
        self.scalar(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&name_sql],
            "cannot read the catalog",
        )
        .await
    }

    /// Ends the job's sessions of other generations on this database.
    pub async fn end_leftover_sessions(&self) -> Result<()> {
        let prefix = self.sessions.prefix();
        let current = self.sessions.application_name();
        self.end_sessions(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE left(application_name, length($1)) = $1 AND application_name <> $2
               AND datname = current_database() AND pid <> pg_backend_pid()",
            &[&prefix, &current],
            &format!("job `{}`: sessions of a previous run", self.sessions.job),
        )
        .await
    }

    /// Ends sessions until none is left: `terminate` signals them and returns how many
    /// it signalled. `what` names them in the error when some will not end within
    /// [`LEFTOVER_WAIT`].
    pub async fn end_sessions(
        &self,
        terminate: &str,
        params: &[&(dyn ToSql + Sync)],
        what: &str,
    ) -> Result<()> {
        let deadline = Instant::now() + LEFTOVER_WAIT;
        loop {
            let remaining: i64 = self
                .client
                .query_one(terminate, params)
                .await
                .map_err(self.failed(format!("cannot end {what}")))?
                .get(0);
            if remaining == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Refused(format!(
                    "{what}: {remaining} would not end (needs the right to signal them: same role or pg_signal_backend)"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Runs `work` in a transaction on the control session: committed when it
    /// succeeds, rolled back when it fails.
    pub async fn transaction<T, F>(&self, context: &str, work: F) -> Result<T>
    where
        F: std::future::Future<Output = Result<T>>,
    {
        self.client
            .batch_execute("BEGIN")
            .await
            .map_err(self.failed(format!("cannot begin ({context})")))?;
        match work.await {
            Ok(value) => {
                self.client
                    .batch_execute("COMMIT")
                    .await
                    .map_err(self.failed(format!("cannot commit ({context})")))?;
                Ok(value)
            }
            Err(error) => {
                let _ = self.client.batch_execute("ROLLBACK").await;
                Err(error)
            }
        }
    }
}

async fn open_session(database: &str, url: &SecretUrl, sessions: &Sessions) -> Result<Client> {
    connect_with(
        database,
        url,
        &sessions.application_name(),
        Some(SESSION_OPTIONS),
    )
    .await
}
