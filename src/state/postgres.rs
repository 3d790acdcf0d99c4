//! The shared state store: schema `switchyard` in a PostgreSQL database, for several
//! hosts (or `serve` processes) working from one state.

use std::time::Duration;

use async_trait::async_trait;
use tokio_postgres::Client;

use super::chunks::{ChunkLease, ChunkLeases, ChunkState, ChunkStatus};
use super::job_lease::{HeldJob, JobHolder, JobLeases};
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
);
CREATE SEQUENCE IF NOT EXISTS switchyard.chunk_fences;
CREATE TABLE IF NOT EXISTS switchyard.chunks (
    job        text NOT NULL,
    chunk      int NOT NULL,
    status     text NOT NULL DEFAULT 'pending',
    owner      text,
    fence      bigint NOT NULL DEFAULT 0,
    expires_at timestamptz,
    copied_by  text,
    PRIMARY KEY (job, chunk)
);
CREATE TABLE IF NOT EXISTS switchyard.job_leases (
    job        text PRIMARY KEY,
    owner      text NOT NULL,
    host       text NOT NULL,
    pid        bigint NOT NULL,
    fence      bigint NOT NULL,
    expires_at timestamptz NOT NULL
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

#[async_trait]
impl JobLeases for PostgresState {
    async fn take_job(
        &self,
        job: &str,
        holder: &JobHolder,
        lease: Duration,
        over: Option<i64>,
    ) -> Result<Option<i64>> {
        self.client
            .query_opt(
                "INSERT INTO switchyard.job_leases AS l (job, owner, host, pid, fence, expires_at)
                 VALUES ($1, $2, $3, $4, nextval('switchyard.chunk_fences'), now() + $5::float8 * interval '1 second')
                 ON CONFLICT (job) DO UPDATE
                    SET owner = EXCLUDED.owner, host = EXCLUDED.host, pid = EXCLUDED.pid,
                        fence = EXCLUDED.fence, expires_at = EXCLUDED.expires_at
                  WHERE l.expires_at < now() OR l.owner = EXCLUDED.owner OR l.fence = $6
                 RETURNING l.fence",
                &[&job, &holder.worker, &holder.host, &holder.pid, &lease.as_secs_f64(), &over],
            )
            .await
            .map(|row| row.map(|r| r.get(0)))
            .map_err(|e| Error::database(NAME, "cannot take the job's lease", e))
    }

    async fn job_holder(&self, job: &str) -> Result<Option<HeldJob>> {
        self.client
            .query_opt(
                "SELECT owner, host, pid, fence, expires_at FROM switchyard.job_leases WHERE job = $1",
                &[&job],
            )
            .await
            .map(|row| {
                row.map(|r| HeldJob {
                    holder: JobHolder {
                        worker: r.get(0),
                        host: r.get(1),
                        pid: r.get(2),
                    },
                    fence: r.get(3),
                    expires_at: r.get(4),
                })
            })
            .map_err(|e| Error::database(NAME, "cannot read the job's lease", e))
    }

    async fn renew_job(&self, job: &str, fence: i64, lease: Duration) -> Result<bool> {
        self.client
            .execute(
                "UPDATE switchyard.job_leases SET expires_at = now() + $3::float8 * interval '1 second'
                  WHERE job = $1 AND fence = $2",
                &[&job, &fence, &lease.as_secs_f64()],
            )
            .await
            .map(|n| n == 1)
            .map_err(|e| Error::database(NAME, "cannot renew the job's lease", e))
    }

    async fn release_job(&self, job: &str, fence: i64) -> Result<()> {
        self.client
            .execute(
                "DELETE FROM switchyard.job_leases WHERE job = $1 AND fence = $2",
                &[&job, &fence],
            )
            .await
            .map(drop)
            .map_err(|e| Error::database(NAME, "cannot give the job's lease back", e))
    }

    async fn save_job_under(&self, job: &str, record: &str, fence: i64) -> Result<bool> {
        // The lease row is share-locked: a take waits for this write, and this write
        // for a take under way (and then finds the new fence).
        self.client
            .execute(
                "INSERT INTO switchyard.jobs (name, record)
                 SELECT $1, $2 WHERE EXISTS (
                     SELECT 1 FROM switchyard.job_leases WHERE job = $1 AND fence = $3 FOR SHARE)
                 ON CONFLICT (name) DO UPDATE SET record = EXCLUDED.record",
                &[&job, &record, &fence],
            )
            .await
            .map(|n| n == 1)
            .map_err(|e| Error::database(NAME, "cannot save the job's state", e))
    }
}

#[async_trait]
impl ChunkLeases for PostgresState {
    async fn add_chunks(&self, job: &str, chunks: &[(i32, bool)]) -> Result<()> {
        let (numbers, done): (Vec<i32>, Vec<bool>) = chunks.iter().copied().unzip();
        self.client
            .execute(
                "INSERT INTO switchyard.chunks (job, chunk, status)
                 SELECT $1, n, CASE WHEN d THEN 'done' ELSE 'pending' END FROM unnest($2::int[], $3::bool[]) AS c(n, d)
                 ON CONFLICT (job, chunk) DO NOTHING",
                &[&job, &numbers, &done],
            )
            .await
            .map(drop)
            .map_err(|e| Error::database(NAME, "cannot record the job's chunks", e))
    }

    async fn lease_chunk(
        &self,
        job: &str,
        worker: &str,
        lease: std::time::Duration,
    ) -> Result<Option<ChunkLease>> {
        let row = self
            .client
            .query_opt(
                "UPDATE switchyard.chunks AS c
                    SET status = 'leased', owner = $2, fence = nextval('switchyard.chunk_fences'),
                        expires_at = now() + $3::float8 * interval '1 second'
                  WHERE (c.job, c.chunk) = (
                        SELECT job, chunk FROM switchyard.chunks
                         WHERE job = $1 AND (status = 'pending' OR (status = 'leased' AND expires_at < now()))
                         ORDER BY status DESC, chunk LIMIT 1 FOR UPDATE SKIP LOCKED)
                 RETURNING c.chunk, c.fence",
                &[&job, &worker, &lease.as_secs_f64()],
            )
            .await
            .map_err(|e| Error::database(NAME, "cannot lease a chunk", e))?;
        Ok(row.map(|r| ChunkLease {
            chunk: r.get(0),
            fence: r.get(1),
        }))
    }

    async fn renew_chunk(
        &self,
        job: &str,
        lease: &ChunkLease,
        duration: std::time::Duration,
    ) -> Result<bool> {
        self.client
            .execute(
                "UPDATE switchyard.chunks SET expires_at = now() + $4::float8 * interval '1 second'
                  WHERE job = $1 AND chunk = $2 AND fence = $3 AND status = 'leased'",
                &[&job, &lease.chunk, &lease.fence, &duration.as_secs_f64()],
            )
            .await
            .map(|n| n == 1)
            .map_err(|e| Error::database(NAME, "cannot renew a chunk's lease", e))
    }

    async fn finish_chunk(&self, job: &str, lease: &ChunkLease, worker: &str) -> Result<bool> {
        self.client
            .execute(
                "UPDATE switchyard.chunks SET status = 'done', owner = NULL, expires_at = NULL, copied_by = $4
                  WHERE job = $1 AND chunk = $2 AND fence = $3 AND status = 'leased'",
                &[&job, &lease.chunk, &lease.fence, &worker],
            )
            .await
            .map(|n| n == 1)
            .map_err(|e| Error::database(NAME, "cannot mark a chunk done", e))
    }

    async fn release_chunk(&self, job: &str, lease: &ChunkLease) -> Result<()> {
        self.client
            .execute(
                "UPDATE switchyard.chunks SET status = 'pending', owner = NULL, expires_at = NULL
                  WHERE job = $1 AND chunk = $2 AND fence = $3 AND status = 'leased'",
                &[&job, &lease.chunk, &lease.fence],
            )
            .await
            .map(drop)
            .map_err(|e| Error::database(NAME, "cannot give a chunk back", e))
    }

    async fn release_worker_chunks(&self, job: &str, worker: &str) -> Result<()> {
        self.client
            .execute(
                "UPDATE switchyard.chunks SET status = 'pending', owner = NULL, expires_at = NULL
                  WHERE job = $1 AND owner = $2 AND status = 'leased'",
                &[&job, &worker],
            )
            .await
            .map(drop)
            .map_err(|e| Error::database(NAME, "cannot give chunks back", e))
    }

    async fn chunks(&self, job: &str) -> Result<Vec<ChunkState>> {
        let rows = self
            .client
            .query(
                "SELECT chunk, status, owner, copied_by FROM switchyard.chunks WHERE job = $1 ORDER BY chunk",
                &[&job],
            )
            .await
            .map_err(|e| Error::database(NAME, "cannot read the job's chunks", e))?;
        Ok(rows
            .iter()
            .map(|r| ChunkState {
                chunk: r.get(0),
                status: ChunkStatus::parse(r.get(1)),
                owner: r.get(2),
                copied_by: r.get(3),
            })
            .collect())
    }

    async fn forget_chunks(&self, job: &str) -> Result<()> {
        self.client
            .execute("DELETE FROM switchyard.chunks WHERE job = $1", &[&job])
            .await
            .map(drop)
            .map_err(|e| Error::database(NAME, "cannot remove the job's chunks", e))
    }
}
