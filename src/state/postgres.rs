//! The shared state store: schema `switchyard` in a PostgreSQL database, for several
//! hosts (or `serve` processes) working from one state.

use async_trait::async_trait;
use tokio_postgres::Client;

use super::{AuditEntry, ControlChange, Outcome, StateStore};
use crate::backend::postgres::connect;
use crate::error::{Error, Result};
use crate::secret::SecretUrl;

/// Serialises schema creation between processes opening the store at once.
const SCHEMA_LOCK_KEY: i64 = 0x5357_5354_4154_4531;
const NAME: &str = "state";

const SCHEMA: &str = "
CREATE SCHEMA IF NOT EXISTS switchyard;
CREATE TABLE IF NOT EXISTS switchyard.audit_log (
    id       bigserial PRIMARY KEY,
    at       timestamptz NOT NULL,
    actor    text NOT NULL,
    command  text NOT NULL,
    database text,
    outcome  text NOT NULL,
    detail   text NOT NULL
);
CREATE TABLE IF NOT EXISTS switchyard.jobs (
    name    text PRIMARY KEY,
    record  text NOT NULL,
    control text
);
CREATE TABLE IF NOT EXISTS switchyard.checkpoints (
    job   text NOT NULL,
    name  text NOT NULL,
    value text NOT NULL,
    PRIMARY KEY (job, name)
);";

pub struct PostgresState {
    client: Client,
}

impl PostgresState {
    pub async fn open(url: &SecretUrl) -> Result<PostgresState> {
        let client = connect(NAME, url).await?;
        let setup =
            format!("BEGIN; SELECT pg_advisory_xact_lock({SCHEMA_LOCK_KEY}); {SCHEMA} COMMIT;");
        client
            .batch_execute(&setup)
            .await
            .map_err(|e| Error::database(NAME, "cannot create the state schema `switchyard`", e))?;
        Ok(PostgresState { client })
    }
}

#[async_trait]
impl StateStore for PostgresState {
    async fn append_audit(&self, entry: &AuditEntry) -> Result<()> {
        self.client
            .execute(
                "INSERT INTO switchyard.audit_log (at, actor, command, database, outcome, detail) VALUES ($1, $2, $3, $4, $5, $6)",
                &[&entry.at, &entry.actor, &entry.command, &entry.database, &entry.outcome.as_str(), &entry.detail],
            )
            .await
            .map(drop)
            .map_err(|e| Error::database(NAME, "cannot write the audit log", e))
    }

    async fn recent_audit(
        &self,
        limit: usize,
        since: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<Vec<AuditEntry>> {
        let rows = self
            .client
            .query(
                "SELECT at, actor, command, database, outcome, detail FROM switchyard.audit_log WHERE $2::timestamptz IS NULL OR at >= $2 ORDER BY id DESC LIMIT $1",
                &[&(limit as i64), &since],
            )
            .await
            .map_err(|e| Error::database(NAME, "cannot read the audit log", e))?;
        Ok(rows
            .into_iter()
            .map(|row| AuditEntry {
                at: row.get(0),
                actor: row.get(1),
                command: row.get(2),
                database: row.get(3),
                outcome: Outcome::parse(row.get(4)),
                detail: row.get(5),
            })
            .collect())
    }

    async fn put_job(&self, name: &str, record: &str) -> Result<()> {
        self.client
            .execute(
                "INSERT INTO switchyard.jobs (name, record) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET record = EXCLUDED.record",
                &[&name, &record],
            )
            .await
            .map(drop)
            .map_err(|e| Error::database(NAME, "cannot save the job's state", e))
    }

    async fn job(&self, name: &str) -> Result<Option<String>> {
        self.client
            .query_opt(
                "SELECT record FROM switchyard.jobs WHERE name = $1",
                &[&name],
            )
            .await
            .map(|row| row.map(|r| r.get(0)))
            .map_err(|e| Error::database(NAME, "cannot read the job's state", e))
    }

    async fn jobs(&self) -> Result<Vec<String>> {
        self.client
            .query("SELECT record FROM switchyard.jobs ORDER BY name", &[])
            .await
            .map(|rows| rows.iter().map(|r| r.get(0)).collect())
            .map_err(|e| Error::database(NAME, "cannot read the jobs", e))
    }

    async fn control(&self, name: &str) -> Result<Option<String>> {
        self.client
            .query_opt(
                "SELECT control FROM switchyard.jobs WHERE name = $1",
                &[&name],
            )
            .await
            .map(|row| row.and_then(|r| r.get(0)))
            .map_err(|e| Error::database(NAME, "cannot read the job's control", e))
    }

    async fn update_control(&self, name: &str, change: ControlChange) -> Result<()> {
        let failed = |e| Error::database(NAME, "cannot update the job's control", e);
        self.client.batch_execute("BEGIN").await.map_err(failed)?;
        let work = async {
            self.client
                .execute("INSERT INTO switchyard.jobs (name, record) VALUES ($1, '{}') ON CONFLICT (name) DO NOTHING", &[&name])
                .await?;
            let current: Option<String> = self
                .client
                .query_one(
                    "SELECT control FROM switchyard.jobs WHERE name = $1 FOR UPDATE",
                    &[&name],
                )
                .await?
                .get(0);
            let updated = change(current);
            self.client
                .execute(
                    "UPDATE switchyard.jobs SET control = $2 WHERE name = $1",
                    &[&name, &updated],
                )
                .await?;
            self.client.batch_execute("COMMIT").await
        };
        if let Err(e) = work.await {
            let _ = self.client.batch_execute("ROLLBACK").await;
            return Err(failed(e));
        }
        Ok(())
    }

    async fn checkpoint(&self, job: &str, name: &str) -> Result<Option<String>> {
        self.client
            .query_opt(
                "SELECT value FROM switchyard.checkpoints WHERE job = $1 AND name = $2",
                &[&job, &name],
            )
            .await
            .map(|row| row.map(|r| r.get(0)))
            .map_err(|e| Error::database(NAME, "cannot read a checkpoint", e))
    }

    async fn put_checkpoint(&self, job: &str, name: &str, value: &str) -> Result<()> {
        self.client
            .execute(
                "INSERT INTO switchyard.checkpoints (job, name, value) VALUES ($1, $2, $3) ON CONFLICT (job, name) DO UPDATE SET value = EXCLUDED.value",
                &[&job, &name, &value],
            )
            .await
            .map(drop)
            .map_err(|e| Error::database(NAME, "cannot save a checkpoint", e))
    }

    async fn forget_checkpoints(&self, job: &str) -> Result<()> {
        self.client
            .execute("DELETE FROM switchyard.checkpoints WHERE job = $1", &[&job])
            .await
            .map(drop)
            .map_err(|e| Error::database(NAME, "cannot remove the job's checkpoints", e))
    }
}
