//! The job's checkpoints in a database it writes to (schema `switchyard`): copy ranges
//! with their last key, the catch-up position, the cutover record, and which expand and
//! contract statements ran. They live with the data they describe, so each commits in
//! the same transaction as the writes it stands for.
//!
//! A range also holds the fence of the newest chunk lease that seized it
//! ([`seize_range`]); a batch commits only while its fence is the range's, checked
//! under the range row's lock in the batch's own transaction.

use tokio_postgres::Client;

use super::session::Side;
use crate::engine::progress::{KeyRange, RangeProgress};
use crate::engine::row::Position;
use crate::error::{Error, Result};

pub const SCHEMA: &str = "
CREATE SCHEMA IF NOT EXISTS switchyard;
CREATE TABLE IF NOT EXISTS switchyard.copy_progress (
    job       text NOT NULL,
    range_no  int NOT NULL,
    lower_key text[],
    upper_key text[],
    last_key  text[],
    rows      bigint NOT NULL DEFAULT 0,
    done      boolean NOT NULL DEFAULT false,
    PRIMARY KEY (job, range_no)
);
ALTER TABLE switchyard.copy_progress ADD COLUMN IF NOT EXISTS fence bigint NOT NULL DEFAULT 0;
CREATE TABLE IF NOT EXISTS switchyard.catch_up_progress (
    job     text PRIMARY KEY,
    lsn     pg_lsn NOT NULL,
    changes bigint NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS switchyard.cutovers (
    job               text PRIMARY KEY,
    at                timestamptz NOT NULL DEFAULT now(),
    writes_blocked_ms bigint NOT NULL,
    changes_drained   bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS switchyard.after_cutover (
    job        text NOT NULL,
    step       int NOT NULL,
    statements text[] NOT NULL,
    PRIMARY KEY (job, step)
);
CREATE TABLE IF NOT EXISTS switchyard.ddl_steps (
    job            text NOT NULL,
    stage          text NOT NULL,
    done           int NOT NULL DEFAULT 0,
    target_existed boolean,
    PRIMARY KEY (job, stage)
);";

/// The advisory lock key under which jobs create [`SCHEMA`] one at a time.
const SCHEMA_LOCK_KEY: i64 = 0x5357_4a4f_4253_4348;

/// The checkpoints of job `job` in the database of `side`.
pub struct Checkpoints<'a> {
    pub side: &'a Side,
    pub job: &'a str,
}

impl Checkpoints<'_> {
    /// Creates the schema and its tables when missing. Jobs starting together in one
    /// database take turns under a session advisory lock, each creating in a
    /// transaction that starts after the lock is had (so it sees what the one before
    /// created: `IF NOT EXISTS` alone races with a concurrent creation).
    pub async fn create_schema(&self) -> Result<()> {
        let client = &self.side.client;
        let failed = || {
            self.side
                .failed("cannot create the schema `switchyard` for checkpoints")
        };
        client
            .batch_execute(&format!("SELECT pg_advisory_lock({SCHEMA_LOCK_KEY})"))
            .await
            .map_err(failed())?;
        let created = client.batch_execute(SCHEMA).await.map_err(failed());
        let unlocked = client
            .batch_execute(&format!("SELECT pg_advisory_unlock({SCHEMA_LOCK_KEY})"))
            .await
            .map_err(failed());
        created.and(unlocked)
    }

    async fn schema_exists(&self) -> Result<bool> {
        self.side.exists("switchyard.ddl_steps").await
    }

    /// Deletes the job's checkpoints. `keep_contract` keeps the one that says contract's
    /// statements ran: until the engine has saved that the job is done, a crash resumes
    /// in contract, which must not run them again.
    pub async fn forget(&self, keep_contract: bool) -> Result<()> {
        if !self.schema_exists().await? {
            return Ok(());
        }
        let steps = if keep_contract {
            "DELETE FROM switchyard.ddl_steps WHERE job = $1 AND stage <> 'contract'"
        } else {
            "DELETE FROM switchyard.ddl_steps WHERE job = $1"
        };
        for delete in [
            "DELETE FROM switchyard.copy_progress WHERE job = $1",
            "DELETE FROM switchyard.catch_up_progress WHERE job = $1",
            "DELETE FROM switchyard.cutovers WHERE job = $1",
            "DELETE FROM switchyard.after_cutover WHERE job = $1",
            steps,
        ] {
            self.side
                .client
                .execute(delete, &[&self.job])
                .await
                .map_err(self.side.failed("cannot remove the job's checkpoints"))?;
        }
        Ok(())
    }

    pub async fn ranges(&self) -> Result<Vec<RangeProgress>> {
        let rows = self
            .side
            .client
            .query(
                "SELECT range_no, lower_key, upper_key, last_key, rows, done FROM switchyard.copy_progress WHERE job = $1 ORDER BY range_no",
                &[&self.job],
            )
            .await
            .map_err(self.side.failed("cannot read the copy checkpoints"))?;
        Ok(rows
            .iter()
            .map(|r| RangeProgress {
                range: KeyRange {
                    number: r.get(0),
                    lower: r.get(1),
                    upper: r.get(2),
                },
                last_key: r.get(3),
                rows: r.get::<_, i64>(4) as u64,
                done: r.get(5),
            })
            .collect())
    }

    /// Saves planned ranges, all or none: a run that died between two ranges would
    /// leave the keys of the missing ones uncopied.
    pub async fn save_ranges(&self, ranges: &[KeyRange]) -> Result<()> {
        let client = &self.side.client;
        self.side
            .transaction("saving the key ranges", async {
                for range in ranges {
                    client
                        .execute(
                            "INSERT INTO switchyard.copy_progress (job, range_no, lower_key, upper_key) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                            &[&self.job, &range.number, &range.lower, &range.upper],
                        )
                        .await
                        .map_err(|e| Error::database(&self.side.database, "cannot save the key ranges", e))?;
                    crate::crash_point!("copy.after_range_saved");
                }
                Ok(())
            })
            .await
    }

    /// The catch-up position, if capture started.
    pub async fn position(&self) -> Result<Option<Position>> {
        let row = self
            .side
            .client
            .query_opt(
                "SELECT lsn::text FROM switchyard.catch_up_progress WHERE job = $1",
                &[&self.job],
            )
            .await
            .map_err(self.side.failed("cannot read the catch-up checkpoint"))?;
        Ok(row.map(|r| Position(r.get(0))))
    }

    pub async fn save_start(&self, start: &Position) -> Result<()> {
        self.side
            .client
            .execute(
                "INSERT INTO switchyard.catch_up_progress (job, lsn) VALUES ($1, $2::text::pg_lsn) ON CONFLICT (job) DO NOTHING",
                &[&self.job, &start.0],
            )
            .await
            .map(drop)
            .map_err(self.side.failed("cannot save the catch-up checkpoint"))
    }

    /// Moves the catch-up position, within the caller's transaction.
    pub async fn advance(&self, end: &Position, changes: u64) -> Result<()> {
        self.side
            .client
            .execute(
                "UPDATE switchyard.catch_up_progress SET lsn = $2::text::pg_lsn, changes = changes + $3 WHERE job = $1",
                &[&self.job, &end.0, &(changes as i64)],
            )
            .await
            .map(drop)
            .map_err(self.side.failed("cannot save the catch-up checkpoint"))
    }

    pub async fn cutover(&self) -> Result<Option<(i64, i64)>> {
        let row = self
            .side
            .client
            .query_opt(
                "SELECT writes_blocked_ms, changes_drained FROM switchyard.cutovers WHERE job = $1",
                &[&self.job],
            )
            .await
            .map_err(self.side.failed("cannot read the cutover record"))?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// Saves the steps to take once the switch committed, within its transaction, so
    /// that a crash before they ran leaves them to the resumed cutover.
    pub async fn save_after_cutover(&self, steps: &[Vec<String>]) -> Result<()> {
        for (number, statements) in steps.iter().enumerate() {
            self.side
                .client
                .execute(
                    "INSERT INTO switchyard.after_cutover (job, step, statements) VALUES ($1, $2, $3)",
                    &[&self.job, &(number as i32), statements],
                )
                .await
                .map_err(self.side.failed("cannot save the steps after the cutover"))?;
        }
        Ok(())
    }

    /// The steps after the cutover not taken yet, in order: `(number, statements)`.
    pub async fn after_cutover(&self) -> Result<Vec<(i32, Vec<String>)>> {
        let rows = self
            .side
            .client
            .query(
                "SELECT step, statements FROM switchyard.after_cutover WHERE job = $1 ORDER BY step",
                &[&self.job],
            )
            .await
            .map_err(self.side.failed("cannot read the steps after the cutover"))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Marks step `number` taken, within the transaction that took it.
    pub async fn took_after_cutover(&self, number: i32) -> Result<()> {
        self.side
            .client
            .execute(
                "DELETE FROM switchyard.after_cutover WHERE job = $1 AND step = $2",
                &[&self.job, &number],
            )
            .await
            .map(drop)
            .map_err(self.side.failed("cannot mark a step after the cutover"))
    }

    /// Records the cutover, within the caller's transaction (the one of the switch).
    pub async fn record_cutover(&self, blocked_ms: i64, drained: i64) -> Result<()> {
        self.side
            .client
            .execute(
                "INSERT INTO switchyard.cutovers (job, writes_blocked_ms, changes_drained) VALUES ($1, $2, $3)",
                &[&self.job, &blocked_ms, &drained],
            )
            .await
            .map(drop)
            .map_err(self.side.failed("cannot record the cutover"))
    }
}

/// Records `fence` on `known`'s range unless a newer lease's fence is there, and returns
/// the range's progress (see [`crate::engine::sink::CopyWorker::seize`]). Waits for a
/// batch of an older lease under way: its progress is in what this returns, or it
/// commits nothing.
pub async fn seize_range(
    client: &Client,
    database: &str,
    job: &str,
    known: &RangeProgress,
    fence: i64,
) -> Result<RangeProgress> {
    let failed = |e| Error::database(database, "cannot seize a copy range", e);
    let number = known.range.number;
    let row = client
        .query_opt(
            "UPDATE switchyard.copy_progress SET fence = $3 WHERE job = $1 AND range_no = $2 AND fence <= $3 RETURNING last_key, rows, done",
            &[&job, &number, &fence],
        )
        .await
        .map_err(failed)?;
    if let Some(row) = row {
        return Ok(RangeProgress {
            range: known.range.clone(),
            last_key: row.get(0),
            rows: row.get::<_, i64>(1) as u64,
            done: row.get(2),
        });
    }
    Err(unfenced(client, database, job, number).await)
}

/// Why a range does not hold a worker's fence: a newer lease seized it
/// ([`Error::LeaseLost`]), or its checkpoint row is gone (the job was aborted).
pub async fn unfenced(client: &Client, database: &str, job: &str, number: i32) -> Error {
    let exists = client
        .query_opt(
            "SELECT 1 FROM switchyard.copy_progress WHERE job = $1 AND range_no = $2",
            &[&job, &number],
        )
        .await;
    match exists {
        Ok(Some(_)) => Error::LeaseLost {
            job: job.to_string(),
            chunk: number,
        },
        Ok(None) => Error::State(format!(
            "job `{job}`: range {number} has no checkpoint row (was the job aborted meanwhile?)"
        )),
        Err(e) => Error::database(database, "cannot read a copy range", e),
    }
}

/// Locks the range's row for the caller's transaction if `fence` is still the range's;
/// [`Error::LeaseLost`] when a newer lease seized it.
pub async fn hold_fence(
    client: &Client,
    database: &str,
    job: &str,
    number: i32,
    fence: i64,
) -> Result<()> {
    let held = client
        .query_opt(
            "SELECT 1 FROM switchyard.copy_progress WHERE job = $1 AND range_no = $2 AND fence = $3 FOR UPDATE",
            &[&job, &number, &fence],
        )
        .await
        .map_err(|e| Error::database(database, "cannot check a copy range's fence", e))?
        .is_some();
    if held {
        Ok(())
    } else {
        Err(Error::LeaseLost {
            job: job.to_string(),
            chunk: number,
        })
    }
}
