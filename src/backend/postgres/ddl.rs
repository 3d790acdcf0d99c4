//! The DDL a job runs: its own statements (idempotent, under `lock_timeout`) and the
//! job file's expand and contract statements, each committed with its checkpoint so a
//! crash never runs one twice.

use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use super::millis_literal;
use super::session::Side;
use crate::error::{Error, Result};

/// Runs DDL on one side under a lock timeout.
pub struct Ddl<'a> {
    pub side: &'a Side,
    pub job: &'a str,
    pub lock_timeout: Duration,
}

impl Ddl<'_> {
    pub async fn set_lock_timeout(&self) -> Result<()> {
        self.side
            .client
            .batch_execute(&format!(
                "SET lock_timeout = {}",
                millis_literal(self.lock_timeout)
            ))
            .await
            .map_err(self.side.failed("cannot set lock_timeout"))
    }

    /// The error of `what`'s statement `number` (from 1): a lock timeout is worth
    /// another try, anything else is the statement's own failure.
    pub fn statement_failed(&self, what: &str, number: usize, e: tokio_postgres::Error) -> Error {
        if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) {
            Error::LockTimeout {
                database: self.side.database.clone(),
                message: format!("{what} statement {number} waited longer than lock_timeout for a lock; try again when the table is quieter"),
            }
        } else {
            Error::database(
                &self.side.database,
                format!("{what} statement {number} failed"),
                e,
            )
        }
    }

    /// Runs statements that may run again (switchyard's own, all idempotent).
    pub async fn run(&self, statements: &[String], what: &str) -> Result<()> {
        self.set_lock_timeout().await?;
        for (i, statement) in statements.iter().enumerate() {
            self.side
                .client
                .batch_execute(statement)
                .await
                .map_err(|e| self.statement_failed(what, i + 1, e))?;
        }
        Ok(())
    }

    /// Records whether the target existed before expand's first statement, whichever
    /// run of expand this is, and returns what was recorded first.
    pub async fn target_existed(&self, exists_now: bool) -> Result<bool> {
        self.side
            .scalar(
                "INSERT INTO switchyard.ddl_steps (job, stage, target_existed) VALUES ($1, 'expand', $2)
                 ON CONFLICT (job, stage) DO UPDATE SET target_existed = COALESCE(ddl_steps.target_existed, EXCLUDED.target_existed)
                 RETURNING target_existed",
                &[&self.job, &exists_now],
                "cannot save the job's DDL checkpoint",
            )
            .await
    }

    /// Runs the job file's `stage` statements (expand or contract) that have not run
    /// yet. Each commits together with its checkpoint in `switchyard.ddl_steps`. A
    /// statement that cannot run in a transaction block (`CREATE INDEX CONCURRENTLY`)
    /// runs alone and is marked after: a crash between the two runs it again, so such a
    /// statement should say `IF NOT EXISTS`.
    pub async fn run_steps(&self, stage: &str, statements: &[String]) -> Result<()> {
        self.set_lock_timeout().await?;
        let client = &self.side.client;
        let done: i32 = client
            .query_opt(
                "SELECT done FROM switchyard.ddl_steps WHERE job = $1 AND stage = $2",
                &[&self.job, &stage],
            )
            .await
            .map_err(self.side.failed("cannot read the job's DDL checkpoint"))?
            .map_or(0, |row| row.get(0));
        let mark = "INSERT INTO switchyard.ddl_steps (job, stage, done) VALUES ($1, $2, $3)
                    ON CONFLICT (job, stage) DO UPDATE SET done = EXCLUDED.done";
        for (i, statement) in statements.iter().enumerate().skip(done.max(0) as usize) {
            let number = i + 1;
            let marked = [&self.job as &(dyn ToSql + Sync), &stage, &(number as i32)];
            let in_transaction = async {
                client.batch_execute("BEGIN").await?;
                client.batch_execute(statement).await?;
                client.execute(mark, &marked).await?;
                client.batch_execute("COMMIT").await
            }
            .await;
            let Err(e) = in_transaction else { continue };
            let _ = client.batch_execute("ROLLBACK").await;
            if e.code() != Some(&SqlState::ACTIVE_SQL_TRANSACTION) {
                return Err(self.statement_failed(stage, number, e));
            }
            client
                .batch_execute(statement)
                .await
                .map_err(|e| self.statement_failed(stage, number, e))?;
            client
                .execute(mark, &marked)
                .await
                .map_err(self.side.failed("cannot save the job's DDL checkpoint"))?;
        }
        Ok(())
    }
}
