//! The switch: the target takes the source's place, and on abort gives it back.
//!
//! Before either, the way back's capture of the target starts (see [`super::way_back`]):
//! every write the target takes after the switch is captured.
//!
//! Within one database it is one transaction on the sink's session: lock the tables
//! whose foreign keys reference the source, then the source against writes
//! (`EXCLUSIVE`, under `lock_timeout`), drain the last changes, carry the dependents
//! (see [`super::carry`]), rename source → `<table>_old` and target → `<table>`, move
//! owned sequences, move identity sequences past the copied values, record the
//! cutover. Writers wait for the lock, then continue on the new table. After the commit,
//! re-pointed foreign keys are validated and materialized views rebuilt.
//!
//! The way back is a job of its own whose cutover is the same switch in the other
//! direction, so an abort after a cutover loses no write either.
//!
//! Across servers the source is fenced first (renamed to `<table>_old` on its server,
//! so writes to it fail from then on), then in one transaction on the target the last
//! changes are drained, the target takes the source's name if it has another, and the
//! cutover is recorded; then `[cutover] command` runs. A cutover that fails before the
//! target commits unfences the source; a crash in between leaves it fenced, and the
//! resumed cutover goes on from there.

use std::time::Instant;

use super::carry::{referencing_tables, Carry};
use super::dependents::{refuse_blocking, Carrying};
use super::sink::PgSink;
use super::table::{column_sequences, ident, literal, ColumnSequence, TableName};
use crate::engine::progress::CutoverReport;
use crate::engine::source::Source;
use crate::error::{Error, Result};
use crate::job::{CatchUpMethod, Dependents};

/// How many times a step after the commit (validating a foreign key, swapping in a
/// materialized view) is tried when it waits longer than `lock_timeout`.
const FINISH_ATTEMPTS: u32 = 5;

impl PgSink {
    fn catches_up(&self) -> bool {
        self.spec.catch_up.method == CatchUpMethod::LogicalReplication
    }

    /// Within the open transaction: applies everything the source captured until now
    /// (writes to the source are stopped). Returns the changes and the position.
    async fn drain(
        &mut self,
        source: &mut dyn Source,
    ) -> Result<(u64, Option<crate::engine::row::Position>)> {
        if !self.catches_up() {
            return Ok((0, None));
        }
        let after = self.checkpoints().position().await?.ok_or_else(|| {
            Error::State("the job has no saved capture position to drain from".into())
        })?;
        let batch = source.read_changes(&after, None).await?;
        let drained = self.apply_within(&batch, source).await?;
        Ok((drained, batch.end))
    }

    pub(super) async fn cutover_in_server(
        &mut self,
        source: &mut dyn Source,
    ) -> Result<CutoverReport> {
        let table = self.local_source.clone().expect("in-server cutover");
        let old = self.aside.clone();
        if self.side.exists(&old.sql()).await? {
            return Err(Error::Refused(format!(
                "cutover would rename {} to {old}, which exists already: drop or rename it first",
                self.source_name
            )));
        }
        let target = self.target_name.clone().expect("copy");
        let carrying = self.carrying(&target).await?;
        refuse_blocking(&self.side, &table, self.spec.kind, carrying).await?;
        // Read before the lock: the source's session would wait for the renames. Rows
        // inserted after it are drained, so the column's maximum covers them.
        let positions = source.identity_positions().await?;
        self.side
            .client
            .batch_execute("BEGIN")
            .await
            .map_err(self.side.failed("cannot begin the cutover"))?;
        let started = Instant::now();
        let result = async {
            let mut locks = Vec::new();
            if carrying.is_some_and(|c| c.to.is_some()) {
                let referencing = referencing_tables(&self.side, table.oid).await?;
                if !referencing.is_empty() {
                    locks.push(format!(
                        "LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
                        referencing.join(", ")
                    ));
                }
            }
            locks.push(format!(
                "LOCK TABLE {} IN EXCLUSIVE MODE",
                self.source_name.sql()
            ));
            self.ddl().run(&locks, "cutover").await?;
            crate::crash_point!("cutover.after_lock");
            let blocked_from = Instant::now();
            // Writes wait on the lock, so reading until caught up drains everything.
            let (drained, end) = self.drain(source).await?;
            crate::crash_point!("cutover.after_drain");
            // Read under the lock, while the source still has the name.
            let carry = match carrying.and_then(|c| c.to) {
                Some(to) => Carry::read(&self.side, table.oid, to).await?,
                None => Carry::default(),
            };
            self.ddl().run(&carry.detach, "cutover").await?;
            let current = self.source_name.clone();
            self.swap(&current, &old.name, &target, "cutover").await?;
            self.advance_identities(&current, &positions).await?;
            self.ddl().run(&carry.attach, "cutover").await?;
            crate::crash_point!("cutover.after_swap");
            // Recorded in the same transaction as the swap: never done twice.
            let blocked = blocked_from.elapsed();
            self.checkpoints()
                .record_cutover(blocked.as_millis() as i64, drained as i64)
                .await?;
            self.checkpoints().save_after_cutover(&carry.finish).await?;
            crate::crash_point!("cutover.after_record");
            self.side
                .client
                .batch_execute("COMMIT")
                .await
                .map_err(self.side.failed("cannot commit the cutover"))?;
            Ok::<_, Error>((blocked, drained, end))
        }
        .await;
        let (writes_blocked, changes_drained, end) = match result {
            Ok(done) => done,
            Err(error) => {
                let _ = self.side.client.batch_execute("ROLLBACK").await;
                return Err(error);
            }
        };
        tracing::info!(job = %self.spec.name, blocked_ms = writes_blocked.as_millis() as u64, took_ms = started.elapsed().as_millis() as u64, "cut over");
        crate::crash_point!("cutover.after_switch");
        self.finish_carry().await?;
        if let Some(end) = end {
            source.confirm(&end).await?;
        }
        Ok(CutoverReport {
            writes_blocked,
            changes_drained,
            alias: None,
        })
    }

    pub(super) async fn cutover_across(
        &mut self,
        source: &mut dyn Source,
    ) -> Result<CutoverReport> {
        let target = self.target_name.clone().expect("copy");
        let taking = target.sibling(&self.source_name.name);
        if taking != target && self.side.exists(&taking.sql()).await? {
            return Err(Error::Refused(format!(
                "cutover would rename {target} to {taking} on `{}`, which exists already: drop or rename it first",
                self.side.database
            )));
        }
        let fenced_from = Instant::now();
        source.fence().await?;
        crate::crash_point!("cutover.after_lock");
        // Fenced: the source hands out no more values.
        let positions = source.identity_positions().await?;
        self.side
            .client
            .batch_execute("BEGIN")
            .await
            .map_err(self.side.failed("cannot begin the cutover"))?;
        let result = async {
            let (drained, end) = self.drain(source).await?;
            crate::crash_point!("cutover.after_drain");
            if taking != target {
                self.ddl()
                    .run(
                        &[format!(
                            "ALTER TABLE {} RENAME TO {}",
                            target.sql(),
                            ident(&taking.name)
                        )],
                        "cutover",
                    )
                    .await?;
            }
            self.advance_identities(&taking, &positions).await?;
            crate::crash_point!("cutover.after_swap");
            let blocked = fenced_from.elapsed();
            self.checkpoints()
                .record_cutover(blocked.as_millis() as i64, drained as i64)
                .await?;
            crate::crash_point!("cutover.after_record");
            self.side
                .client
                .batch_execute("COMMIT")
                .await
                .map_err(self.side.failed("cannot commit the cutover"))?;
            Ok::<_, Error>((blocked, drained, end))
        }
        .await;
        let (writes_blocked, changes_drained, end) = match result {
            Ok(done) => done,
            Err(error) => {
                let _ = self.side.client.batch_execute("ROLLBACK").await;
                // Writes go back to the source until the cutover is tried again.
                if let Err(unfence) = source.unfence().await {
                    tracing::error!(job = %self.spec.name, error = %unfence, "cannot give the source its name back after a failed cutover; the next cutover attempt goes on from here");
                }
                return Err(error);
            }
        };
        tracing::info!(job = %self.spec.name, writes_failed_ms = writes_blocked.as_millis() as u64, "cut over onto another database");
        crate::crash_point!("cutover.after_switch");
        if let Some(end) = end {
            source.confirm(&end).await?;
        }
        self.run_cutover_command().await?;
        Ok(CutoverReport {
            writes_blocked,
            changes_drained,
            alias: None,
        })
    }

    /// Whether (and onto what) this cutover carries the source's dependents: within one
    /// database, unless the job says `dependents = "refuse"`.
    pub(super) async fn carrying(&self, target: &TableName) -> Result<Option<Carrying>> {
        if self.local_source.is_none() || self.spec.cutover.dependents != Dependents::Carry {
            return Ok(None);
        }
        let to: Option<u32> = self
            .side
            .scalar(
                "SELECT to_regclass($1)::oid",
                &[&target.sql()],
                "cannot find the target table",
            )
            .await?;
        Ok(Some(Carrying { to }))
    }

    /// After the cutover's commit (or when a resumed cutover finds it committed): the
    /// steps saved with it, each in a transaction of its own that also marks it taken
    /// (validating the foreign keys re-pointed at the new table, swapping in rebuilt
    /// materialized views), tried again when a lock is not had in time. The cutover
    /// stands either way; a step that fails is logged with what to run by hand.
    pub(super) async fn finish_carry(&self) -> Result<()> {
        for (number, group) in self.checkpoints().after_cutover().await? {
            let mut attempt = 1;
            loop {
                let ddl = self.ddl();
                let checkpoints = self.checkpoints();
                let done = self
                    .side
                    .transaction("carrying the dependents", async {
                        ddl.run(&group, "cutover").await?;
                        checkpoints.took_after_cutover(number).await
                    })
                    .await;
                match done {
                    Ok(()) => break,
                    Err(error) if error.is_transient() && attempt < FINISH_ATTEMPTS => {
                        attempt += 1;
                    }
                    Err(error) => {
                        tracing::error!(job = %self.spec.name, %error, statements = %group.join("; "), "the cutover is done, but this step after it failed: run the statements by hand");
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// `[cutover] command`, with the job and the target's URL in its environment.
    async fn run_cutover_command(&self) -> Result<()> {
        let Some(command) = &self.spec.cutover.command else {
            return Ok(());
        };
        let status = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .env("SWITCHYARD_JOB", &self.spec.name)
            .env("SWITCHYARD_TARGET_URL", self.side.url.expose())
            .status()
            .await
            .map_err(|e| {
                Error::Refused(format!(
                    "job `{}` cut over, but `[cutover] command` could not start: {e}",
                    self.spec.name
                ))
            })?;
        if status.success() {
            Ok(())
        } else {
            Err(Error::Refused(format!(
                "job `{}` cut over, but `[cutover] command` failed ({status}); it is not run again",
                self.spec.name
            )))
        }
    }

    /// Within the caller's transaction: renames `current` to `aside` and `incoming` to
    /// `current`'s name, and moves the sequences the set-aside table owned to the table
    /// that now has the name.
    async fn swap(
        &self,
        current: &TableName,
        aside: &str,
        incoming: &TableName,
        what: &str,
    ) -> Result<()> {
        self.ddl()
            .run(
                &[
                    format!("ALTER TABLE {} RENAME TO {}", current.sql(), ident(aside)),
                    format!(
                        "ALTER TABLE {} RENAME TO {}",
                        incoming.sql(),
                        ident(&current.name)
                    ),
                ],
                what,
            )
            .await?;
        self.move_owned_sequences(&current.sibling(aside), current)
            .await
    }

    /// Within the cutover: moves the sequence of each identity or serial column of
    /// `table` (the table taking the name) past the largest value the copy and the
    /// drain wrote (identities with `OVERRIDING SYSTEM VALUE`) and past the source's
    /// sequence of that column (`positions`), so that rows inserted from now on get
    /// values never handed out before. Such a column without an index is scanned, while
    /// writes wait.
    async fn advance_identities(
        &self,
        table: &TableName,
        positions: &[(String, i64)],
    ) -> Result<()> {
        let sequences = column_sequences(&self.side.client, &self.side.database, table).await?;
        for ColumnSequence {
            column, sequence, ..
        } in sequences
        {
            let handed_out = positions
                .iter()
                .find(|(name, _)| *name == column)
                .map_or("NULL".to_string(), |(_, last)| last.to_string());
            self.side
                .client
                .batch_execute(&format!(
                    "SELECT setval({sequence}::regclass, high)
                     FROM (SELECT GREATEST(max({column}), {handed_out}) AS high FROM {table}) AS s WHERE high IS NOT NULL",
                    sequence = literal(&sequence),
                    column = ident(&column),
                    table = table.sql(),
                ))
                .await
                .map_err(
                    self.side
                        .failed(format!("cannot move sequence {sequence} of {table}.{column} past the copied values")),
                )?;
        }
        Ok(())
    }

    /// Moves the ownership of sequences owned by `from`'s columns to the same columns of
    /// `to`, so that dropping the old table later does not drop the sequence the new
    /// one's defaults use.
    async fn move_owned_sequences(&self, from: &TableName, to: &TableName) -> Result<()> {
        let rows = self
            .side
            .client
            .query(
                "SELECT s.oid::regclass::text, a.attname::text FROM pg_depend d
                 JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
                 JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                 WHERE d.refobjid = to_regclass($1)::oid AND d.deptype = 'a'",
                &[&from.sql()],
            )
            .await
            .map_err(
                self.side
                    .failed("cannot read the sequences owned by the source"),
            )?;
        for row in rows {
            let (sequence, column): (String, String) = (row.get(0), row.get(1));
            self.side
                .client
                .batch_execute(&format!(
                    "ALTER SEQUENCE {sequence} OWNED BY {}.{}",
                    to.sql(),
                    ident(&column)
                ))
                .await
                .map_err(
                    self.side
                        .failed(format!("cannot move sequence {sequence} to {to}")),
                )?;
        }
        Ok(())
    }
}
