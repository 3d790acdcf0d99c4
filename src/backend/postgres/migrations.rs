//! Versioned migrations on PostgreSQL.
//!
//! Invariants:
//! - History lives in `switchyard_migrations` in the database's default schema, one row
//!   per version holding its latest outcome.
//! - A transactional migration and its COMPLETED row commit together; if it fails,
//!   the transaction is rolled back (nothing of it is left) and a FAILED row is written.
//! - A `-- switchyard:no-transaction` script runs one statement at a time, outside any
//!   transaction; if one fails, the earlier ones stay, and the FAILED error says so.
//! - Every statement runs under `lock_timeout`, so DDL waiting for a busy table fails
//!   fast instead of queueing the application's queries behind it.
//! - The migration lock is a session-level advisory lock: runs against one database
//!   never interleave, and a crashed run's lock goes with its connection.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use super::{connect, millis_literal, split_statements};
use crate::error::{describe_postgres_error, Error, Result};
use crate::migrate::{
    Body, ForeignRow, HistoryRow, Migration, MigrationTarget, SqlScript, Status, Step, Tool,
};
use crate::secret::SecretUrl;

/// The advisory lock key of migrations ("SWITCHYD" in ASCII).
const MIGRATION_LOCK_KEY: i64 = 0x5357_4954_4348_5944;

const CREATE_HISTORY: &str = "
CREATE TABLE IF NOT EXISTS switchyard_migrations (
    version     text PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    status      text NOT NULL CHECK (status IN ('COMPLETED', 'FAILED', 'ROLLED_BACK')),
    applied_at  timestamptz NOT NULL DEFAULT now(),
    duration_ms bigint NOT NULL,
    error       text,
    applied_by  text NOT NULL
)";

const RECORD: &str = "
INSERT INTO switchyard_migrations AS h (version, name, checksum, status, applied_at, duration_ms, error, applied_by)
VALUES ($1, $2, $3, $4, now(), $5, $6, $7)
ON CONFLICT (version) DO UPDATE SET
    name = EXCLUDED.name, checksum = EXCLUDED.checksum, status = EXCLUDED.status,
    applied_at = EXCLUDED.applied_at, duration_ms = EXCLUDED.duration_ms,
    error = EXCLUDED.error, applied_by = EXCLUDED.applied_by";

const RECORD_ROLLBACK_FAILURE: &str =
    "UPDATE switchyard_migrations SET error = $2 WHERE version = $1";

/// A PostgreSQL database as a [`MigrationTarget`].
pub struct PostgresMigrations {
    database: String,
    client: Client,
    ddl_lock_timeout: Duration,
}

impl PostgresMigrations {
    /// Connects and sets `lock_timeout` for every statement of this session.
    pub async fn connect(
        database: &str,
        url: &SecretUrl,
        ddl_lock_timeout: Duration,
    ) -> Result<Self> {
        let client = connect(database, url).await?;
        let target = PostgresMigrations {
            database: database.to_string(),
            client,
            ddl_lock_timeout,
        };
        target.set_lock_timeout(ddl_lock_timeout).await?;
        Ok(target)
    }

    async fn set_lock_timeout(&self, timeout: Duration) -> Result<()> {
        self.client
            .batch_execute(&format!("SET lock_timeout = {}", millis_literal(timeout)))
            .await
            .map_err(|e| Error::database(&self.database, "cannot set lock_timeout", e))
    }

    /// Who holds the migration lock, for the message of a run that gave up waiting.
    async fn lock_holder(&self) -> String {
        let query = "SELECT a.pid, coalesce(a.application_name, ''), coalesce(host(a.client_addr), 'local'), \
                            to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')
                     FROM pg_locks l JOIN pg_stat_activity a USING (pid)
                     WHERE l.locktype = 'advisory' AND l.granted AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                       AND l.classid = ($1::bigint >> 32)::oid AND l.objid = ($1::bigint & 4294967295)::oid AND l.objsubid = 1";
        match self.client.query_opt(query, &[&MIGRATION_LOCK_KEY]).await {
            Ok(Some(row)) => format!(
                "held by backend pid {} ({} from {}, connected {} UTC)",
                row.get::<_, i32>(0),
                row.get::<_, String>(1),
                row.get::<_, String>(2),
                row.get::<_, String>(3)
            ),
            _ => "held by another session".to_string(),
        }
    }

    async fn record(
        &self,
        migration: &Migration,
        status: Status,
        duration: Duration,
        error: Option<&str>,
        applied_by: &str,
    ) -> std::result::Result<(), tokio_postgres::Error> {
        let duration_ms = duration.as_millis() as i64;
        self.client
            .execute(
                RECORD,
                &[
                    &migration.version.as_str(),
                    &migration.name,
                    &migration.checksum,
                    &status.as_str(),
                    &duration_ms,
                    &error,
                    &applied_by,
                ],
            )
            .await
            .map(drop)
    }

    async fn record_success(
        &self,
        outcome: &Outcome<'_>,
    ) -> std::result::Result<(), tokio_postgres::Error> {
        let elapsed = outcome.started.elapsed();
        self.record(
            outcome.migration,
            outcome.status,
            elapsed,
            None,
            outcome.applied_by,
        )
        .await
    }

    /// Runs a script; returns the error text and whether earlier statements stayed.
    async fn run_script(
        &self,
        script: &SqlScript,
        outcome: &Outcome<'_>,
    ) -> std::result::Result<(), (String, bool)> {
        if script.transactional {
            let run = async {
                self.client.batch_execute("BEGIN").await?;
                self.client.batch_execute(&script.sql).await?;
                self.record_success(outcome).await?;
                self.client.batch_execute("COMMIT").await
            };
            if let Err(e) = run.await {
                let _ = self.client.batch_execute("ROLLBACK").await;
                return Err((describe_postgres_error(&e), false));
            }
            return Ok(());
        }
        let statements = split_statements(&script.sql);
        for (index, statement) in statements.iter().enumerate() {
            if let Err(e) = self.client.batch_execute(statement).await {
                let text = format!(
                    "statement {} of {} (no transaction): {}",
                    index + 1,
                    statements.len(),
                    describe_postgres_error(&e)
                );
                return Err((text, index > 0));
            }
        }
        self.record_success(outcome)
            .await
            .map_err(|e| (describe_postgres_error(&e), true))
    }
}

/// What a successful run records, in the same transaction as the migration.
struct Outcome<'a> {
    migration: &'a Migration,
    status: Status,
    started: Instant,
    applied_by: &'a str,
}

#[async_trait]
impl MigrationTarget for PostgresMigrations {
    fn database(&self) -> &str {
        &self.database
    }

    async fn lock(&mut self, wait: Duration) -> Result<()> {
        self.set_lock_timeout(wait).await?;
        let locked = self
            .client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
            .await;
        self.set_lock_timeout(self.ddl_lock_timeout).await?;
        match locked {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => Err(Error::LockTimeout {
                database: self.database.clone(),
                message: format!(
                    "another run holds the migration lock ({}); gave up after waiting {} (migrations.lock_wait)",
                    self.lock_holder().await,
                    humantime::format_duration(wait)
                ),
            }),
            Err(e) => Err(Error::database(&self.database, "cannot take the migration lock", e)),
        }
    }

    async fn unlock(&mut self) -> Result<()> {
        self.client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
            .await
            .map(drop)
            .map_err(|e| Error::database(&self.database, "cannot release the migration lock", e))
    }

    async fn prepare_history(&mut self) -> Result<()> {
        self.client
            .batch_execute(CREATE_HISTORY)
            .await
            .map_err(|e| {
                Error::database(
                    &self.database,
                    "cannot create the history table switchyard_migrations",
                    e,
                )
            })
    }

    async fn history(&mut self) -> Result<Vec<HistoryRow>> {
        let exists: bool = self
            .client
            .query_one(
                "SELECT to_regclass('switchyard_migrations') IS NOT NULL",
                &[],
            )
            .await
            .map_err(|e| Error::database(&self.database, "cannot read the migration history", e))?
            .get(0);
        if !exists {
            return Ok(Vec::new());
        }
        let rows = self
            .client
            .query(
                "SELECT version, name, checksum, status, applied_at, duration_ms, error, applied_by FROM switchyard_migrations",
                &[],
            )
            .await
            .map_err(|e| Error::database(&self.database, "cannot read the migration history", e))?;
        rows.into_iter()
            .map(|row| {
                let status: String = row.get(3);
                Ok(HistoryRow {
                    version: row.get(0),
                    name: row.get(1),
                    checksum: row.get(2),
                    status: Status::parse_stored(&status).ok_or_else(|| {
                        Error::Refused(format!(
                        "database `{}`: switchyard_migrations holds an unknown status `{status}`",
                        self.database
                    ))
                    })?,
                    applied_at: row.get(4),
                    duration_ms: row.get(5),
                    error: row.get(6),
                    applied_by: row.get(7),
                })
            })
            .collect()
    }

    async fn record_applied(&mut self, migration: &Migration, applied_by: &str) -> Result<()> {
        self.record(
            migration,
            Status::Completed,
            Duration::ZERO,
            None,
            applied_by,
        )
        .await
        .map_err(|e| Error::database(&self.database, "cannot record the baseline", e))
    }

    async fn foreign_history(&mut self, tool: Tool) -> Result<Option<Vec<ForeignRow>>> {
        let read = |e| Error::database(&self.database, format!("cannot read {}", tool.table()), e);
        let exists: bool = self
            .client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&tool.table()])
            .await
            .map_err(read)?
            .get(0);
        if !exists {
            return Ok(None);
        }
        let rows = self.client.query(tool.query(), &[]).await.map_err(read)?;
        Ok(Some(
            rows.iter()
                .map(|row| {
                    (0..row.len())
                        .map(|i| row.get::<_, Option<String>>(i))
                        .collect()
                })
                .collect(),
        ))
    }

    async fn apply(
        &mut self,
        migration: &Migration,
        step: Step,
        applied_by: &str,
    ) -> Result<Duration> {
        let Body::Sql { up, down } = &migration.body else {
            return Err(Error::Usage(format!(
                "{}: not a PostgreSQL migration",
                migration.main_file().display()
            )));
        };
        let (script, status) = match step {
            Step::Up => (up, Status::Completed),
            Step::Down => (
                down.as_ref().ok_or_else(|| {
                    Error::Refused(format!("migration {} has no rollback", migration.version))
                })?,
                Status::RolledBack,
            ),
        };
        let started = Instant::now();
        let outcome = Outcome {
            migration,
            status,
            started,
            applied_by,
        };
        match self.run_script(script, &outcome).await {
            Ok(()) => Ok(started.elapsed()),
            Err((message, partial)) => {
                let message = if partial {
                    format!("{message} (the statements before it took effect and were not undone)")
                } else {
                    message
                };
                let recorded = match step {
                    Step::Up => {
                        self.record(
                            migration,
                            Status::Failed,
                            started.elapsed(),
                            Some(&message),
                            applied_by,
                        )
                        .await
                    }
                    Step::Down => self
                        .client
                        .execute(
                            RECORD_ROLLBACK_FAILURE,
                            &[
                                &migration.version.as_str(),
                                &format!("rollback failed: {message}"),
                            ],
                        )
                        .await
                        .map(drop),
                };
                let message = match recorded {
                    Ok(()) => message,
                    Err(e) => format!(
                        "{message} (and recording the failure failed too: {})",
                        describe_postgres_error(&e)
                    ),
                };
                Err(Error::MigrationFailed {
                    database: self.database.clone(),
                    version: migration.version.to_string(),
                    name: migration.name.clone(),
                    message: match step {
                        Step::Up => message,
                        Step::Down => format!("rollback failed: {message}"),
                    },
                })
            }
        }
    }
}
