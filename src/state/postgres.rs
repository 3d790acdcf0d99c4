//! The shared state store: schema `switchyard` in a PostgreSQL database, for several
//! hosts (or `serve` processes) working from one state.

use async_trait::async_trait;
use tokio_postgres::Client;

use super::{AuditEntry, Outcome, StateStore};
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

    async fn recent_audit(&self, limit: usize) -> Result<Vec<AuditEntry>> {
        let rows = self
            .client
            .query(
                "SELECT at, actor, command, database, outcome, detail FROM switchyard.audit_log ORDER BY id DESC LIMIT $1",
                &[&(limit as i64)],
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
}
