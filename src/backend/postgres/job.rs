//! An online job on PostgreSQL: the engine's traits over one database holding both the
//! source and the target.
//!
//! Invariants (see also [`super::batch`] and [`super::apply`]):
//! - Change capture (a publication and a `pgoutput` slot named after the job) exists
//!   before the copy reads a row, so every change after the copy's first read is
//!   captured; replaying them in commit order over the copy converges on the source.
//! - Checkpoints live in the job's database (schema `switchyard`), so each batch and
//!   each catch-up transaction commits its position with its writes. The slot is
//!   confirmed only after the applied changes committed. Each expand and contract
//!   statement of the job file commits with its own checkpoint, so none runs twice.
//! - Cutover holds a write-blocking lock on the source for as short as possible: drain
//!   the last changes, swap names, commit. The slot and publication are dropped right
//!   after, so no WAL is held once they are no longer needed; abort drops them too.
//! - Every identifier from a job file is quoted; values travel as parameters.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use super::apply::{Applied, ChangeApply};
use super::batch::{BatchSql, PostgresCopyWorker, Write};
use super::pgoutput::Message;
use super::stream::{ChangeStream, Read, MARKER_PREFIX};
use super::table::{ident, literal, TableInfo, TableName};
use super::{connect_as, millis_literal};
use crate::engine::traits::{
    AppliedChanges, ChangeApplier, Copier, CopyWorker, CutoverReport, Expander, KeyRange, Lag,
    Lease, Mismatch, RangeProgress, Switcher, Verifier,
};
use crate::error::{Error, Result};
use crate::job::{CatchUpMethod, JobKind, JobSpec};
use crate::secret::SecretUrl;

const PROGRESS_SCHEMA: &str = "
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
CREATE TABLE IF NOT EXISTS switchyard.ddl_steps (
    job            text NOT NULL,
    stage          text NOT NULL,
    done           int NOT NULL DEFAULT 0,
    target_existed boolean,
    PRIMARY KEY (job, stage)
);";

/// The session setting that names the backfill whose batches a session runs: that job's
/// dual-write trigger skips them (they set the same values, once).
const FILLING_SETTING: &str = "switchyard.filling";

/// The dollar-quote tag of generated function bodies; refused inside expressions.
const BODY_TAG: &str = "$sy_body$";

pub struct PostgresJob {
    spec: JobSpec,
    database: String,
    url: SecretUrl,
    ddl_lock_timeout: Duration,
    client: Client,
    source: TableInfo,
    slot: String,
    publication: String,
    /// Loaded after expand (the target may not exist before).
    apply: Option<ChangeApply>,
    /// Relation ids the change stream described, and whether each is the source.
    relations: HashMap<u32, bool>,
    /// Opened at the first catch-up read; see [`super::stream`].
    stream: Option<ChangeStream>,
    /// Writes the markers a read waits for (see [`super::stream`]).
    marker_client: Option<Client>,
    /// Markers written so far (each read writes one).
    markers: u64,
    /// The commit time of the oldest change the last read may have left unapplied;
    /// `None` when it found the source idle.
    lag_since: Option<chrono::DateTime<chrono::Utc>>,
}

impl PostgresJob {
    /// Connects and reads the source table.
    pub async fn open(
        spec: &JobSpec,
        url: &SecretUrl,
        ddl_lock_timeout: Duration,
    ) -> Result<PostgresJob> {
        let database = spec.source.database.clone();
        let session = session_name(&spec.name);
        let client = connect_as(&database, url, &session).await?;
        let name = TableName::parse(spec.source.table.as_deref().unwrap_or_default());
        let source =
            TableInfo::load(&client, &database, &name, spec.key_columns().as_deref()).await?;
        // Slots are named per server, so the name carries the database's identity.
        let database_oid: u32 = client
            .query_one(
                "SELECT oid FROM pg_database WHERE datname = current_database()",
                &[],
            )
            .await
            .map_err(|e| Error::database(&database, "cannot read the database's oid", e))?
            .get(0);
        let lowered = format!("{}_{database_oid}", spec.name.to_lowercase());
        for expression in spec.transform.columns.values() {
            if expression.contains(BODY_TAG) {
                return Err(Error::Refused(format!(
                    "field `transform.columns`: an expression may not contain `{BODY_TAG}`"
                )));
            }
        }
        Ok(PostgresJob {
            spec: spec.clone(),
            database,
            url: url.clone(),
            ddl_lock_timeout,
            client,
            source,
            slot: format!("switchyard_{lowered}"),
            publication: format!("switchyard_{lowered}"),
            apply: None,
            relations: HashMap::new(),
            stream: None,
            marker_client: None,
            markers: 0,
            lag_since: None,
        })
    }

    fn failed(
        &self,
        context: impl Into<String>,
    ) -> impl FnOnce(tokio_postgres::Error) -> Error + '_ {
        let context = context.into();
        move |e| Error::database(&self.database, context, e)
    }

    /// The first column of the one row `sql` returns.
    async fn scalar<T: for<'a> tokio_postgres::types::FromSql<'a>>(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        context: &str,
    ) -> Result<T> {
        let row = self
            .client
            .query_one(sql, params)
            .await
            .map_err(self.failed(context))?;
        row.try_get(0).map_err(self.failed(context))
    }

    /// Whether a table of this name exists.
    async fn exists(&self, name: &TableName) -> Result<bool> {
        self.scalar(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&name.sql()],
            "cannot read the catalog",
        )
        .await
    }

    fn target_name(&self) -> Option<TableName> {
        self.spec
            .target
            .as_ref()
            .and_then(|t| t.table.as_deref())
            .map(TableName::parse)
    }

    fn catches_up(&self) -> bool {
        self.spec.kind == JobKind::Copy
            && self.spec.catch_up.method == CatchUpMethod::LogicalReplication
    }

    /// The target's `(column, expression over the source row)` pairs: columns of both
    /// tables copy by name, `[transform] columns` add or override.
    fn copy_columns(&self, target: &TableInfo) -> Result<Vec<(String, String)>> {
        for column in self.spec.transform.columns.keys() {
            if target.column(column).is_none() {
                return Err(Error::Refused(format!(
                    "field `transform.columns.{column}`: table {} has no column `{column}`",
                    target.name
                )));
            }
            if target.key.iter().any(|k| &k.name == column) {
                return Err(Error::Refused(format!(
                    "field `transform.columns.{column}`: the key is copied as it is, not transformed"
                )));
            }
        }
        Ok(target
            .columns
            .iter()
            .filter_map(|c| match self.spec.transform.columns.get(&c.name) {
                Some(expression) => Some((c.name.clone(), expression.clone())),
                None => self
                    .source
                    .column(&c.name)
                    .map(|_| (c.name.clone(), format!("s.{}", ident(&c.name)))),
            })
            .collect())
    }

    fn fill_columns(&self) -> Result<Vec<(String, String)>> {
        self.spec
            .transform
            .columns
            .iter()
            .map(|(column, expression)| match self.source.column(column) {
                Some(_) if self.source.key.iter().any(|k| &k.name == column) => Err(Error::Refused(format!(
                    "field `transform.columns.{column}`: a backfill cannot change the key"
                ))),
                Some(_) => Ok((column.clone(), expression.clone())),
                None => Err(Error::Refused(format!(
                    "field `transform.columns.{column}`: table {} has no column `{column}` (add it in [expand] sql)",
                    self.source.name
                ))),
            })
            .collect()
    }

    async fn load_target(&self) -> Result<TableInfo> {
        let name = self.target_name().expect("a copy job has a target");
        TableInfo::load(
            &self.client,
            &self.database,
            &name,
            Some(&self.source.key_names()),
        )
        .await
        .map_err(|e| match e {
            Error::Refused(reason) => Error::Refused(format!(
                "{reason} (the target needs it for catch-up upserts)"
            )),
            other => other,
        })
    }

    async fn batch_sql(&self) -> Result<BatchSql> {
        let write = match self.spec.kind {
            JobKind::Copy => {
                let target = self.load_target().await?;
                Write::Copy {
                    target: target.name.sql(),
                    columns: self.copy_columns(&target)?,
                }
            }
            _ => Write::Fill {
                columns: self.fill_columns()?,
            },
        };
        Ok(BatchSql {
            job: self.spec.name.clone(),
            source: self.source.clone(),
            write,
        })
    }

    async fn new_applier(&self) -> Result<ChangeApply> {
        let target = self.load_target().await?;
        let columns = self.copy_columns(&target)?;
        Ok(ChangeApply::new(
            &self.database,
            self.source.clone(),
            target,
            columns,
        ))
    }

    async fn set_lock_timeout(&self) -> Result<()> {
        self.client
            .batch_execute(&format!(
                "SET lock_timeout = {}",
                millis_literal(self.ddl_lock_timeout)
            ))
            .await
            .map_err(self.failed("cannot set lock_timeout"))
    }

    /// The error of `what`'s statement `number` (from 1).
    fn statement_failed(&self, what: &str, number: usize, e: tokio_postgres::Error) -> Error {
        if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) {
            Error::LockTimeout {
                database: self.database.clone(),
                message: format!("{what} statement {number} waited longer than lock_timeout for a lock; try again when the table is quieter"),
            }
        } else {
            Error::database(
                &self.database,
                format!("{what} statement {number} failed"),
                e,
            )
        }
    }

    /// Runs statements that may run again (switchyard's own, all idempotent).
    async fn run_ddl(&self, statements: &[String], what: &str) -> Result<()> {
        self.set_lock_timeout().await?;
        for (i, statement) in statements.iter().enumerate() {
            self.client
                .batch_execute(statement)
                .await
                .map_err(|e| self.statement_failed(what, i + 1, e))?;
        }
        Ok(())
    }

    /// Runs the job file's `stage` statements (expand or contract) that have not run
    /// yet. Each commits together with its checkpoint in `switchyard.ddl_steps`, so a
    /// crash never runs one twice. A statement that cannot run in a transaction block
    /// (`CREATE INDEX CONCURRENTLY`) runs alone and is marked after: a crash between the
    /// two runs it again, so such a statement should say `IF NOT EXISTS`.
    async fn run_steps(&self, stage: &str, statements: &[String]) -> Result<()> {
        self.set_lock_timeout().await?;
        let done: i32 = self
            .client
            .query_opt(
                "SELECT done FROM switchyard.ddl_steps WHERE job = $1 AND stage = $2",
                &[&self.spec.name, &stage],
            )
            .await
            .map_err(self.failed("cannot read the job's DDL checkpoint"))?
            .map_or(0, |row| row.get(0));
        let mark = "INSERT INTO switchyard.ddl_steps (job, stage, done) VALUES ($1, $2, $3)
                    ON CONFLICT (job, stage) DO UPDATE SET done = EXCLUDED.done";
        for (i, statement) in statements.iter().enumerate().skip(done.max(0) as usize) {
            let number = i + 1;
            let marked = [
                &self.spec.name as &(dyn tokio_postgres::types::ToSql + Sync),
                &stage,
                &(number as i32),
            ];
            let in_transaction = async {
                self.client.batch_execute("BEGIN").await?;
                self.client.batch_execute(statement).await?;
                self.client.execute(mark, &marked).await?;
                self.client.batch_execute("COMMIT").await
            }
            .await;
            let Err(e) = in_transaction else { continue };
            let _ = self.client.batch_execute("ROLLBACK").await;
            if e.code() != Some(&SqlState::ACTIVE_SQL_TRANSACTION) {
                return Err(self.statement_failed(stage, number, e));
            }
            self.client
                .batch_execute(statement)
                .await
                .map_err(|e| self.statement_failed(stage, number, e))?;
            self.client
                .execute(mark, &marked)
                .await
                .map_err(self.failed("cannot save the job's DDL checkpoint"))?;
        }
        Ok(())
    }

    fn fill_trigger_sql(&self, columns: &[(String, String)]) -> Vec<String> {
        let function = format!("switchyard.{}", ident(&format!("fill_{}", self.spec.name)));
        let trigger = ident(&format!("switchyard_fill_{}", self.spec.name));
        let exprs: Vec<String> = columns.iter().map(|(_, e)| format!("({e})")).collect();
        let targets: Vec<String> = columns
            .iter()
            .map(|(c, _)| format!("NEW.{}", ident(c)))
            .collect();
        vec![
            format!(
                "CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS {BODY_TAG}
                 BEGIN
                     SELECT {exprs} INTO {targets} FROM (SELECT NEW.*) AS s;
                     RETURN NEW;
                 END {BODY_TAG}",
                exprs = exprs.join(", "),
                targets = targets.join(", ")
            ),
            format!("DROP TRIGGER IF EXISTS {trigger} ON {}", self.source.name.sql()),
            format!(
                "CREATE TRIGGER {trigger} BEFORE INSERT OR UPDATE ON {} FOR EACH ROW
                 WHEN (current_setting('{FILLING_SETTING}', true) IS DISTINCT FROM {})
                 EXECUTE FUNCTION {function}()",
                self.source.name.sql(),
                literal(&self.spec.name)
            ),
        ]
    }

    fn drop_fill_trigger_sql(&self) -> Vec<String> {
        vec![
            format!(
                "DROP TRIGGER IF EXISTS {} ON {}",
                ident(&format!("switchyard_fill_{}", self.spec.name)),
                self.source.name.sql()
            ),
            format!(
                "DROP FUNCTION IF EXISTS switchyard.{}()",
                ident(&format!("fill_{}", self.spec.name))
            ),
        ]
    }

    /// Drops the slot and publication (idempotent), so no WAL is held for the job. The
    /// slot's stream is closed first, ours or one a dead run left.
    async fn drop_capture(&mut self) -> Result<()> {
        self.close_stream().await;
        self.end_sessions(
            "SELECT count(pg_terminate_backend(active_pid)) FROM pg_replication_slots
             WHERE slot_name = $1 AND active_pid IS NOT NULL",
            &self.slot,
            &format!(
                "the session streaming from the replication slot {}",
                self.slot
            ),
        )
        .await?;
        self.client
            .execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1", &[&self.slot])
            .await
            .map_err(self.failed("cannot drop the replication slot"))?;
        self.client
            .batch_execute(&format!(
                "DROP PUBLICATION IF EXISTS {}",
                ident(&self.publication)
            ))
            .await
            .map_err(self.failed("cannot drop the publication"))
    }

    /// Deletes the job's checkpoints. `keep_contract` keeps the one that says contract's
    /// statements ran: until the engine has saved that the job is done, a crash resumes
    /// in contract, which must not run them again.
    async fn forget_progress(&self, keep_contract: bool) -> Result<()> {
        let exists: bool = self
            .scalar(
                "SELECT to_regclass('switchyard.ddl_steps') IS NOT NULL",
                &[],
                "cannot read the job's checkpoints",
            )
            .await?;
        if !exists {
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
            steps,
        ] {
            self.client
                .execute(delete, &[&self.spec.name])
                .await
                .map_err(self.failed("cannot remove the job's checkpoints"))?;
        }
        Ok(())
    }

    /// The job's change stream, opened at the catch-up checkpoint on first use.
    async fn stream(&mut self) -> Result<&mut ChangeStream> {
        if self.stream.is_none() {
            let start = self.applied_upto().await?;
            let stream = ChangeStream::open(
                &self.database,
                &self.url,
                &self.slot,
                &self.publication,
                &session_name(&self.spec.name),
                start,
            )
            .await?;
            // The server describes each relation once per stream.
            self.relations.clear();
            self.stream = Some(stream);
        }
        Ok(self.stream.as_mut().expect("opened above"))
    }

    /// Closes the change stream, if open.
    async fn close_stream(&mut self) {
        if let Some(stream) = self.stream.take() {
            stream.close().await;
        }
    }

    /// Whole transactions from the stream: until every transaction committed before
    /// now is read (`caught_up`), or about `max_changes` messages when given. Relation
    /// descriptions are recorded here.
    async fn read_changes(&mut self, max_changes: Option<usize>) -> Result<Read> {
        self.markers += 1;
        let marker = format!("{} {} {}", self.spec.name, std::process::id(), self.markers);
        let written = Instant::now();
        // A transaction of its own on its own connection: it commits (and so reaches
        // the stream) even while this connection holds a lock in an open transaction.
        if self.marker_client.is_none() {
            let client =
                connect_as(&self.database, &self.url, &session_name(&self.spec.name)).await?;
            self.marker_client = Some(client);
        }
        self.marker_client
            .as_ref()
            .expect("connected above")
            .execute(
                "SELECT pg_logical_emit_message(true, $1, $2)",
                &[&MARKER_PREFIX, &marker],
            )
            .await
            .map_err(self.failed("cannot mark the WAL position to catch up to"))?;
        let read = self.stream().await?.read(&marker, max_changes).await?;
        for message in &read.messages {
            self.note_relation(message)?;
        }
        // The oldest change not applied yet: none when caught up with nothing read;
        // younger than the marker when caught up; younger than the last transaction
        // read otherwise.
        let last_commit = last_change_commit(&read.messages);
        self.lag_since = match (read.caught_up, last_commit) {
            (true, None) => None,
            (true, Some(_)) | (false, None) => Some(chrono::Utc::now() - written.elapsed()),
            (false, Some(at)) => Some(at),
        };
        Ok(read)
    }

    /// Records which relation id is the source, and refuses a source whose columns
    /// changed under the job.
    fn note_relation(&mut self, message: &Message) -> Result<()> {
        let Message::Relation {
            id,
            schema,
            name,
            columns,
        } = message
        else {
            return Ok(());
        };
        let ours = self.source.name.name == *name
            && self.source.name.schema.as_deref().unwrap_or(schema) == schema;
        if ours {
            let expected: Vec<&str> = self
                .source
                .columns
                .iter()
                .map(|c| c.name.as_str())
                .collect();
            if columns.iter().map(String::as_str).collect::<Vec<_>>() != expected {
                return Err(Error::Refused(format!(
                    "the columns of {} changed during the job ({} now): abort the job and start it again",
                    self.source.name,
                    columns.join(", ")
                )));
            }
        }
        self.relations.insert(*id, ours);
        Ok(())
    }

    async fn applied_upto(&self) -> Result<u64> {
        let row = self
            .client
            .query_opt(
                "SELECT lsn::text FROM switchyard.catch_up_progress WHERE job = $1",
                &[&self.spec.name],
            )
            .await
            .map_err(self.failed("cannot read the catch-up checkpoint"))?;
        Ok(row.map(|r| parse_lsn(&r.get::<_, String>(0))).unwrap_or(0))
    }

    /// Reads changes and applies them within the caller's transaction, moving the
    /// checkpoint. The server learns the position only once the caller committed
    /// (`ChangeStream::confirm`). `None` reads until caught up, whatever the amount:
    /// the drain under a lock.
    async fn apply_within(&mut self, max_changes: Option<usize>) -> Result<Applied> {
        let Read {
            messages,
            caught_up: drained,
        } = self.read_changes(max_changes).await?;
        if messages.is_empty() {
            return Ok(Applied {
                drained,
                ..Applied::default()
            });
        }
        crate::crash_point!("catch_up.after_read");
        let upto = self.applied_upto().await?;
        if self.apply.is_none() {
            self.apply = Some(self.new_applier().await?);
        }
        let applier = self.apply.as_mut().expect("set above");
        let mut applied = applier
            .apply(&self.client, &messages, &self.relations, upto)
            .await?;
        applied.drained = drained;
        crate::crash_point!("catch_up.after_write");
        if let Some(end) = applied.end_lsn {
            self.client
                .execute(
                    "UPDATE switchyard.catch_up_progress SET lsn = $2::text::pg_lsn, changes = changes + $3 WHERE job = $1",
                    &[&self.spec.name, &format_lsn(end), &(applied.changes as i64)],
                )
                .await
                .map_err(self.failed("cannot save the catch-up checkpoint"))?;
        }
        crate::crash_point!("catch_up.after_checkpoint");
        Ok(applied)
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
        self.run_ddl(
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

    /// Moves the ownership of sequences owned by `from`'s columns to the same columns of
    /// `to`, so that dropping the old table later does not drop the sequence the new
    /// one's defaults use.
    async fn move_owned_sequences(&self, from: &TableName, to: &TableName) -> Result<()> {
        let rows = self
            .client
            .query(
                "SELECT s.oid::regclass::text, a.attname::text FROM pg_depend d
                 JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
                 JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                 WHERE d.refobjid = to_regclass($1)::oid AND d.deptype = 'a'",
                &[&from.sql()],
            )
            .await
            .map_err(self.failed("cannot read the sequences owned by the source"))?;
        for row in rows {
            let (sequence, column): (String, String) = (row.get(0), row.get(1));
            self.client
                .batch_execute(&format!(
                    "ALTER SEQUENCE {sequence} OWNED BY {}.{}",
                    to.sql(),
                    ident(&column)
                ))
                .await
                .map_err(self.failed(format!("cannot move sequence {sequence} to {to}")))?;
        }
        Ok(())
    }

    /// What depends on the source, and whether cutover can keep it working.
    pub async fn dependents(&self) -> Result<Vec<Dependent>> {
        let rows = self
            .client
            .query(
                "SELECT 'view', v.oid::regclass::text FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
                   JOIN pg_class v ON v.oid = r.ev_class WHERE d.refobjid = $1 AND v.oid <> $1
                 UNION SELECT 'foreign key', conname || ' on ' || conrelid::regclass::text FROM pg_constraint
                   WHERE confrelid = $1 AND contype = 'f'
                 UNION SELECT 'trigger', tgname FROM pg_trigger WHERE tgrelid = $1 AND NOT tgisinternal
                   AND tgname NOT LIKE 'switchyard_fill_%'
                 UNION SELECT 'sequence', s.oid::regclass::text FROM pg_depend d JOIN pg_class s ON s.oid = d.objid
                   AND s.relkind = 'S' WHERE d.refobjid = $1 AND d.deptype = 'a'
                 ORDER BY 1, 2",
                &[&self.source.oid],
            )
            .await
            .map_err(self.failed("cannot read what depends on the source"))?;
        Ok(rows
            .iter()
            .map(|r| {
                let kind: String = r.get(0);
                let name: String = r.get(1);
                let (blocks, handling) = match kind.as_str() {
                    "view" => (true, "would keep reading the old table after the rename: recreate it on the new table in [expand], or drop it first"),
                    "foreign key" => (true, "would keep pointing at the old table: move it to the new table first"),
                    "trigger" => (false, "stays on the old table: create it on the target in [expand] if it must keep firing"),
                    _ => (false, "moves to the new table's column at cutover"),
                };
                Dependent { kind, name, blocks_cutover: blocks && self.spec.kind == JobKind::Copy, handling: handling.to_string() }
            })
            .collect())
    }

    /// The plan `job plan` prints: what each phase will run.
    pub async fn plan(&self) -> Result<JobPlan> {
        let rows = self.estimate().await?;
        let mut phases: Vec<(String, Vec<String>)> = Vec::new();
        let mut expand = self.spec.expand.sql.clone();
        expand.push(PROGRESS_SCHEMA.trim().to_string());
        if self.catches_up() {
            expand.push(format!(
                "CREATE PUBLICATION {} FOR TABLE {}",
                ident(&self.publication),
                self.source.name.sql()
            ));
            expand.push(format!(
                "SELECT pg_create_logical_replication_slot('{}', 'pgoutput')",
                self.slot
            ));
        }
        let target_exists = match self.target_name() {
            Some(name) => self.exists(&name).await?,
            None => true,
        };
        let batch = if self.spec.kind == JobKind::Copy && !target_exists {
            format!(
                "(the target {} is created by expand; the batch statement is shown once it exists)",
                self.target_name().expect("copy")
            )
        } else {
            let sql = self.batch_sql().await?;
            if let Write::Fill { columns } = &sql.write {
                expand.extend(self.fill_trigger_sql(columns));
            }
            sql.statement(true, true, self.spec.copy.batch_size)
        };
        phases.push(("expand".into(), expand));
        phases.push((
            format!(
                "copy ({} workers, {} rows a batch)",
                self.spec.copy.concurrency, self.spec.copy.batch_size
            ),
            vec![batch],
        ));
        if self.catches_up() {
            phases.push(("catch_up".into(), vec![format!("START_REPLICATION SLOT {} LOGICAL (pgoutput), changes applied as upserts and deletes by key", self.slot)]));
        }
        phases.push((
            "verify".into(),
            vec![format!(
                "{:?} per key range, source and target in one snapshot",
                self.spec.verify.method
            )
            .to_lowercase()],
        ));
        if self.spec.kind == JobKind::Copy {
            let old = self
                .source
                .name
                .sibling(&format!("{}_old", self.source.name.name));
            let target = self.target_name().expect("copy");
            phases.push((
                format!(
                    "cutover ({:?}, when lag < {})",
                    self.spec.cutover.mode,
                    humantime::format_duration(self.spec.cutover.max_lag)
                )
                .to_lowercase(),
                vec![
                    format!(
                        "LOCK TABLE {} IN EXCLUSIVE MODE  -- lock_timeout {}",
                        self.source.name.sql(),
                        humantime::format_duration(self.ddl_lock_timeout)
                    ),
                    "-- apply the last changes".into(),
                    format!(
                        "ALTER TABLE {} RENAME TO {}",
                        self.source.name.sql(),
                        ident(&old.name)
                    ),
                    format!(
                        "ALTER TABLE {} RENAME TO {}",
                        target.sql(),
                        ident(&self.source.name.name)
                    ),
                ],
            ));
        }
        let mut contract = self.spec.contract.sql.clone();
        if self.spec.kind == JobKind::Backfill {
            contract.extend(self.drop_fill_trigger_sql());
        }
        phases.push(("contract".into(), contract));
        Ok(JobPlan {
            rows_estimate: rows,
            phases,
            dependents: self.dependents().await?,
        })
    }

    async fn estimate(&self) -> Result<u64> {
        let estimate: f32 = self
            .scalar(
                "SELECT reltuples FROM pg_class WHERE oid = $1",
                &[&self.source.oid],
                "cannot read the row estimate",
            )
            .await?;
        if estimate >= 0.0 {
            return Ok(estimate as u64);
        }
        // Never analysed: count (the table is small or new).
        let count: i64 = self
            .scalar(
                &format!("SELECT count(*) FROM {}", self.source.name.sql()),
                &[],
                "cannot count the source",
            )
            .await?;
        Ok(count as u64)
    }

    async fn plan_ranges(&self, concurrency: usize) -> Result<Vec<KeyRange>> {
        if concurrency <= 1 {
            return Ok(vec![KeyRange {
                number: 0,
                lower: None,
                upper: None,
            }]);
        }
        let boundaries = if self.source.key.len() == 1
            && ["smallint", "integer", "bigint"].contains(&self.source.key[0].type_sql.as_str())
        {
            self.integer_boundaries(concurrency).await?
        } else {
            self.quantile_boundaries(concurrency).await?
        };
        let mut ranges = Vec::new();
        let mut lower = None;
        for (i, upper) in boundaries.into_iter().enumerate() {
            ranges.push(KeyRange {
                number: i as i32,
                lower: lower.clone(),
                upper: Some(upper.clone()),
            });
            lower = Some(upper);
        }
        ranges.push(KeyRange {
            number: ranges.len() as i32,
            lower,
            upper: None,
        });
        Ok(ranges)
    }
}

impl PostgresJob {
    /// Even splits of `min..=max` of an integer key (an index lookup each end).
    async fn integer_boundaries(&self, concurrency: usize) -> Result<Vec<Vec<String>>> {
        let key = ident(&self.source.key[0].name);
        let row = self
            .client
            .query_one(
                &format!(
                    "SELECT min({key})::bigint, max({key})::bigint FROM {}",
                    self.source.name.sql()
                ),
                &[],
            )
            .await
            .map_err(self.failed("cannot read the key's bounds"))?;
        let (Some(min), Some(max)): (Option<i64>, Option<i64>) = (row.get(0), row.get(1)) else {
            return Ok(Vec::new());
        };
        let span = (max as i128 - min as i128) / concurrency as i128;
        let mut boundaries: Vec<Vec<String>> = (1..concurrency as i128)
            .map(|i| vec![(min as i128 + span * i).to_string()])
            .collect();
        boundaries.dedup();
        Ok(boundaries)
    }

    /// Keys that split the table into `concurrency` parts of equal row counts.
    async fn quantile_boundaries(&self, concurrency: usize) -> Result<Vec<Vec<String>>> {
        let keys = self.source.key_list(None);
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT k FROM (
                         SELECT k, tile, row_number() OVER (PARTITION BY tile ORDER BY ord DESC) AS last_in_tile FROM (
                             SELECT {array} AS k, row_number() OVER (ORDER BY {keys}) AS ord, ntile($1) OVER (ORDER BY {keys}) AS tile
                             FROM {source}) AS a) AS b
                     WHERE last_in_tile = 1 AND tile < $1 ORDER BY tile",
                    array = self.source.key_text_array(None),
                    source = self.source.name.sql()
                ),
                &[&(concurrency as i32)],
            )
            .await
            .map_err(self.failed("cannot split the source into key ranges"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}

/// Something that depends on the source table.
#[derive(Debug, Clone, PartialEq)]
pub struct Dependent {
    pub kind: String,
    pub name: String,
    pub blocks_cutover: bool,
    pub handling: String,
}

#[derive(Debug, Clone)]
pub struct JobPlan {
    pub rows_estimate: u64,
    pub phases: Vec<(String, Vec<String>)>,
    pub dependents: Vec<Dependent>,
}

/// `0/2E2D930` → 0x2E2D930.
pub fn parse_lsn(text: &str) -> u64 {
    let (high, low) = text.split_once('/').unwrap_or(("0", "0"));
    (u64::from_str_radix(high, 16).unwrap_or(0) << 32) | u64::from_str_radix(low, 16).unwrap_or(0)
}

pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

impl PostgresJob {
    async fn fresh_connection(&mut self) -> Result<()> {
        self.client = connect_as(&self.database, &self.url, &session_name(&self.spec.name)).await?;
        // Prepared statements and relation descriptions belonged to the old session.
        self.apply = None;
        self.stream = None;
        self.marker_client = None;
        Ok(())
    }
}

/// The commit time of the last transaction in `messages` that changed rows (the
/// markers' own transactions change none).
fn last_change_commit(messages: &[Message]) -> Option<chrono::DateTime<chrono::Utc>> {
    let mut begun = None;
    let mut last = None;
    for message in messages {
        match message {
            Message::Begin { committed_at, .. } => begun = Some(*committed_at),
            Message::Insert { .. }
            | Message::Update { .. }
            | Message::Delete { .. }
            | Message::Truncate { .. } => last = begun.or(last),
            _ => {}
        }
    }
    last
}

/// The `application_name` of every session of a job: the lease holder ends leftovers.
fn session_name(job: &str) -> String {
    format!("switchyard job {job}")
}

/// How long ending a dead run's sessions may take.
const LEFTOVER_WAIT: Duration = Duration::from_secs(30);

impl PostgresJob {
    /// Ends sessions until none is left: `terminate` signals them (one text parameter,
    /// `param`) and returns how many it signalled. `what` names them in the error when
    /// some will not end within [`LEFTOVER_WAIT`].
    async fn end_sessions(&self, terminate: &str, param: &str, what: &str) -> Result<()> {
        let deadline = Instant::now() + LEFTOVER_WAIT;
        loop {
            let remaining: i64 = self
                .client
                .query_one(terminate, &[&param])
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
}

#[async_trait]
impl Lease for PostgresJob {
    async fn reconnect(&mut self) -> Result<bool> {
        self.fresh_connection().await?;
        self.try_claim().await
    }

    /// Takes the job's advisory lock, then ends the sessions a dead run left behind:
    /// a killed process's batch statement can still be running on the server, and it
    /// would commit its batch after this run read the checkpoint. Only then may the
    /// checkpoints be read.
    async fn try_claim(&mut self) -> Result<bool> {
        let claimed: bool = self
            .scalar(
                "SELECT pg_try_advisory_lock(hashtextextended('switchyard job ' || $1, 0))",
                &[&self.spec.name],
                "cannot claim the job",
            )
            .await?;
        if !claimed {
            return Ok(false);
        }
        self.end_sessions(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE application_name = $1 AND datname = current_database() AND pid <> pg_backend_pid()",
            &session_name(&self.spec.name),
            &format!("job `{}`: sessions of a previous run", self.spec.name),
        )
        .await?;
        Ok(true)
    }
}

#[async_trait]
impl Expander for PostgresJob {
    async fn start_fresh(&mut self) -> Result<()> {
        self.forget_progress(false).await
    }

    async fn expand(&mut self) -> Result<bool> {
        self.client
            .batch_execute(PROGRESS_SCHEMA)
            .await
            .map_err(self.failed("cannot create the schema `switchyard` for checkpoints"))?;
        let target_name = self.target_name();
        let exists_at_start = match &target_name {
            Some(name) => self.exists(name).await?,
            None => true,
        };
        // Whether the target was there before the first expand statement, whichever run
        // of expand this is.
        let existed: bool = self
            .scalar(
                "INSERT INTO switchyard.ddl_steps (job, stage, target_existed) VALUES ($1, 'expand', $2)
                 ON CONFLICT (job, stage) DO UPDATE SET target_existed = COALESCE(ddl_steps.target_existed, EXCLUDED.target_existed)
                 RETURNING target_existed",
                &[&self.spec.name, &exists_at_start],
                "cannot save the job's DDL checkpoint",
            )
            .await?;
        self.run_steps("expand", &self.spec.expand.sql.clone())
            .await?;
        crate::crash_point!("expand.after_ddl");
        // Expand may have added the columns a backfill fills.
        self.source = TableInfo::load(
            &self.client,
            &self.database,
            &self.source.name,
            Some(&self.source.key_names()),
        )
        .await?;
        match self.spec.kind {
            JobKind::Copy => {
                if self.spec.catch_up.method == CatchUpMethod::LogicalReplication {
                    self.start_capture().await?;
                    crate::crash_point!("expand.after_capture");
                }
                // The target must exist now, with a unique index on the key.
                self.load_target().await?;
            }
            _ => {
                let columns = self.fill_columns()?;
                self.run_ddl(&self.fill_trigger_sql(&columns), "dual-write trigger")
                    .await?;
            }
        }
        let exists_now: bool = match &target_name {
            Some(name) => self.exists(name).await?,
            None => true,
        };
        Ok(!existed && exists_now)
    }

    async fn abort(&mut self, after_cutover: bool, created_target: bool) -> Result<()> {
        if after_cutover {
            let target = self.target_name().expect("copy");
            let old = self
                .source
                .name
                .sibling(&format!("{}_old", self.source.name.name));
            let current = self.source.name.clone();
            self.client
                .batch_execute("BEGIN")
                .await
                .map_err(self.failed("cannot swap back"))?;
            let swap = async {
                self.swap(&current, &target.name, &old, "swap back").await?;
                self.client
                    .batch_execute("COMMIT")
                    .await
                    .map_err(self.failed("cannot swap back"))
            };
            if let Err(error) = swap.await {
                let _ = self.client.batch_execute("ROLLBACK").await;
                return Err(error);
            }
        } else {
            self.drop_capture().await?;
            if self.spec.kind == JobKind::Copy && created_target {
                let target = self.target_name().expect("copy");
                self.run_ddl(&[format!("DROP TABLE IF EXISTS {}", target.sql())], "abort")
                    .await?;
            }
        }
        if self.spec.kind == JobKind::Backfill {
            self.run_ddl(&self.drop_fill_trigger_sql(), "abort").await?;
        }
        self.forget_progress(false).await
    }

    async fn contract(&mut self) -> Result<()> {
        self.drop_capture().await?;
        crate::crash_point!("contract.after_drop_capture");
        self.run_steps("contract", &self.spec.contract.sql.clone())
            .await?;
        if self.spec.kind == JobKind::Backfill {
            self.run_ddl(&self.drop_fill_trigger_sql(), "contract")
                .await?;
        }
        crate::crash_point!("contract.after_ddl");
        self.forget_progress(true).await
    }
}

impl PostgresJob {
    /// Creates the publication and slot (when missing) and the catch-up checkpoint at
    /// the slot's start.
    async fn start_capture(&self) -> Result<()> {
        let published: bool = self
            .scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
                &[&self.publication],
                "cannot read publications",
            )
            .await?;
        if !published {
            self.client
                .batch_execute(&format!("CREATE PUBLICATION {} FOR TABLE {}", ident(&self.publication), self.source.name.sql()))
                .await
                .map_err(self.failed("cannot create the publication (needs wal_level = logical and ownership of the table)"))?;
        }
        let slot: Option<String> = self
            .client
            .query_opt(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.slot],
            )
            .await
            .map_err(self.failed("cannot read replication slots"))?
            .map(|r| r.get(0));
        let start = match slot {
            Some(lsn) => lsn,
            None => self.scalar("SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')", &[&self.slot], "cannot create the replication slot (needs wal_level = logical and a free max_replication_slots)").await?,
        };
        self.client
            .execute(
                "INSERT INTO switchyard.catch_up_progress (job, lsn) VALUES ($1, $2::text::pg_lsn) ON CONFLICT (job) DO NOTHING",
                &[&self.spec.name, &start],
            )
            .await
            .map(drop)
            .map_err(self.failed("cannot save the catch-up checkpoint"))
    }
}

#[async_trait]
impl Copier for PostgresJob {
    async fn estimate_rows(&mut self) -> Result<u64> {
        self.estimate().await
    }

    async fn ranges(&mut self, concurrency: usize) -> Result<Vec<RangeProgress>> {
        let read = "SELECT range_no, lower_key, upper_key, last_key, rows, done FROM switchyard.copy_progress WHERE job = $1 ORDER BY range_no";
        let mut rows = self
            .client
            .query(read, &[&self.spec.name])
            .await
            .map_err(self.failed("cannot read the copy checkpoints"))?;
        if rows.is_empty() {
            let ranges = self.plan_ranges(concurrency).await?;
            // All or none: a run that died between two ranges would leave the keys of
            // the missing ones uncopied.
            let save = async {
                self.client.batch_execute("BEGIN").await?;
                for range in &ranges {
                    self.client
                        .execute(
                            "INSERT INTO switchyard.copy_progress (job, range_no, lower_key, upper_key) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                            &[&self.spec.name, &range.number, &range.lower, &range.upper],
                        )
                        .await?;
                    crate::crash_point!("copy.after_range_saved");
                }
                self.client.batch_execute("COMMIT").await
            };
            if let Err(e) = save.await {
                let _ = self.client.batch_execute("ROLLBACK").await;
                return Err(Error::database(
                    &self.database,
                    "cannot save the key ranges",
                    e,
                ));
            }
            rows = self
                .client
                .query(read, &[&self.spec.name])
                .await
                .map_err(self.failed("cannot read the copy checkpoints"))?;
        }
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

    async fn replica_lag(&mut self) -> Result<f64> {
        self.client
            .query_one("SELECT COALESCE(max(extract(epoch FROM replay_lag)), 0)::float8 FROM pg_stat_replication", &[])
            .await
            .map(|row| row.get(0))
            .map_err(self.failed("cannot read the standbys' replication lag"))
    }

    async fn worker(&self) -> Result<Box<dyn CopyWorker>> {
        let client = connect_as(&self.database, &self.url, &session_name(&self.spec.name)).await?;
        if self.spec.kind == JobKind::Backfill {
            // The batch sets the same expressions: the dual-write trigger stands aside.
            client
                .execute(
                    &format!("SELECT set_config('{FILLING_SETTING}', $1, false)"),
                    &[&self.spec.name],
                )
                .await
                .map_err(self.failed("cannot mark the fill session"))?;
        }
        Ok(Box::new(PostgresCopyWorker {
            database: self.database.clone(),
            client,
            sql: self.batch_sql().await?,
            statements: Default::default(),
        }))
    }
}

#[async_trait]
impl ChangeApplier for PostgresJob {
    async fn apply_changes(&mut self, max_changes: usize) -> Result<AppliedChanges> {
        self.client
            .batch_execute("BEGIN")
            .await
            .map_err(self.failed("cannot begin a catch-up transaction"))?;
        let applied = match self.apply_within(Some(max_changes)).await {
            Ok(applied) => applied,
            Err(error) => {
                let _ = self.client.batch_execute("ROLLBACK").await;
                return Err(error);
            }
        };
        self.client
            .batch_execute("COMMIT")
            .await
            .map_err(self.failed("cannot commit a catch-up transaction"))?;
        crate::crash_point!("catch_up.after_commit");
        if let Some(end) = applied.end_lsn {
            self.stream().await?.confirm(end);
        }
        crate::crash_point!("catch_up.after_advance");
        Ok(AppliedChanges {
            changes: applied.changes,
            drained: applied.drained,
        })
    }

    async fn lag(&mut self) -> Result<Lag> {
        let row = self
            .client
            .query_opt(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.slot],
            )
            .await
            .map_err(self.failed("cannot read the replication slot"))?;
        let bytes = row.map(|r| r.get::<_, i64>(0).max(0) as u64).unwrap_or(0);
        let seconds = self.lag_since.map_or(0.0, |since| {
            (chrono::Utc::now() - since)
                .num_microseconds()
                .unwrap_or(i64::MAX)
                .max(0) as f64
                / 1e6
        });
        Ok(Lag { seconds, bytes })
    }
}

/// Rows in one verification chunk: the most writes wait for in a consistent check.
const VERIFY_CHUNK_ROWS: i64 = 20_000;

impl PostgresJob {
    /// Splits `range` into chunks of at most [`VERIFY_CHUNK_ROWS`] keys (an index walk).
    async fn chunks(&self, range: &KeyRange) -> Result<Vec<KeyRange>> {
        let mut chunks = Vec::new();
        let mut lower = range.lower.clone();
        loop {
            let (condition, next) =
                self.source
                    .range_condition(Some("s"), lower.is_some(), range.upper.is_some(), 1);
            let sql = format!(
                "SELECT {array} FROM {source} AS s WHERE {condition} ORDER BY {keys} OFFSET ${next} LIMIT 1",
                array = self.source.key_text_array(Some("s")),
                source = self.source.name.sql(),
                keys = self.source.key_list(Some("s")),
            );
            let offset = VERIFY_CHUNK_ROWS - 1;
            let mut params = key_params(&lower, &range.upper);
            params.push(&offset);
            let upper: Option<Vec<String>> = self
                .client
                .query_opt(&sql, &params)
                .await
                .map_err(self.failed("cannot split a range for verification"))?
                .map(|r| r.get(0));
            match upper {
                Some(upper) => {
                    chunks.push(KeyRange {
                        number: range.number,
                        lower: lower.clone(),
                        upper: Some(upper.clone()),
                    });
                    lower = Some(upper);
                }
                None => {
                    chunks.push(KeyRange {
                        number: range.number,
                        lower,
                        upper: range.upper.clone(),
                    });
                    return Ok(chunks);
                }
            }
        }
    }

    /// Compares one chunk; `Some(detail)` when it differs.
    async fn compare(&self, chunk: &KeyRange, checksum: bool) -> Result<Option<String>> {
        let (condition, _) =
            self.source
                .range_condition(Some("s"), chunk.lower.is_some(), chunk.upper.is_some(), 1);
        let params = key_params(&chunk.lower, &chunk.upper);
        if self.spec.kind != JobKind::Copy {
            let differs: Vec<String> = self
                .fill_columns()?
                .iter()
                .map(|(c, e)| format!("s.{} IS DISTINCT FROM ({e})", ident(c)))
                .collect();
            let sql = format!(
                "SELECT count(*) FROM {source} AS s WHERE {condition} AND ({differs})",
                source = self.source.name.sql(),
                differs = differs.join(" OR ")
            );
            let wrong: i64 = self
                .client
                .query_one(&sql, &params)
                .await
                .map_err(self.failed("verification query failed"))?
                .get(0);
            return Ok(
                (wrong > 0).then(|| format!("{wrong} rows do not hold their computed values"))
            );
        }
        let target = self.load_target().await?;
        let columns = self.copy_columns(&target)?;
        let source_row: Vec<String> = columns
            .iter()
            .map(|(c, e)| {
                format!(
                    "({e})::{}",
                    target.column(c).expect("a target column").type_sql
                )
            })
            .collect();
        let target_row: Vec<String> = columns
            .iter()
            .map(|(c, _)| format!("s.{}", ident(c)))
            .collect();
        let digest = |row: &[String]| {
            if checksum {
                format!(
                    "COALESCE(sum(hashtextextended(ROW({})::text, 0)::numeric), 0)::text",
                    row.join(", ")
                )
            } else {
                // Counting only: an aggregate all the same, so the subquery gives one row.
                "''::text || count(*) * 0".to_string()
            }
        };
        // Both sides in one statement: one snapshot.
        let sql = format!(
            "SELECT (SELECT count(*) FROM {source} AS s WHERE {condition}), (SELECT {source_digest} FROM {source} AS s WHERE {condition}),
                    (SELECT count(*) FROM {target} AS s WHERE {condition}), (SELECT {target_digest} FROM {target} AS s WHERE {condition})",
            source = self.source.name.sql(),
            target = target.name.sql(),
            source_digest = digest(&source_row),
            target_digest = digest(&target_row),
        );
        let row = self
            .client
            .query_one(&sql, &params)
            .await
            .map_err(self.failed("verification query failed"))?;
        let (source_rows, source_digest, target_rows, target_digest): (i64, String, i64, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        Ok(if source_rows != target_rows {
            Some(format!(
                "source has {source_rows} rows, target {target_rows}"
            ))
        } else if source_digest != target_digest {
            Some(format!(
                "{source_rows} rows on both sides, but their contents differ"
            ))
        } else {
            None
        })
    }

    /// Compares a chunk while writes to the source wait, after applying the last changes.
    async fn compare_consistently(
        &mut self,
        chunk: &KeyRange,
        checksum: bool,
    ) -> Result<Option<String>> {
        self.client
            .batch_execute("BEGIN")
            .await
            .map_err(self.failed("cannot begin a verification"))?;
        let result = async {
            self.run_ddl(
                &[format!(
                    "LOCK TABLE {} IN SHARE MODE",
                    self.source.name.sql()
                )],
                "verify",
            )
            .await?;
            // Writes wait on the lock, so reading up to a marker drains everything.
            let last_end = if self.catches_up() {
                self.apply_within(None).await?.end_lsn
            } else {
                None
            };
            let outcome = self.compare(chunk, checksum).await?;
            self.client
                .batch_execute("COMMIT")
                .await
                .map_err(self.failed("cannot end a verification"))?;
            Ok::<_, Error>((outcome, last_end))
        }
        .await;
        match result {
            Ok((outcome, last_end)) => {
                if let Some(end) = last_end {
                    self.stream().await?.confirm(end);
                }
                Ok(outcome)
            }
            Err(error) => {
                let _ = self.client.batch_execute("ROLLBACK").await;
                Err(error)
            }
        }
    }
}

/// Key bounds as text parameters, lower then upper (when present).
fn key_params<'a>(
    lower: &'a Option<Vec<String>>,
    upper: &'a Option<Vec<String>>,
) -> Vec<&'a (dyn tokio_postgres::types::ToSql + Sync)> {
    lower
        .iter()
        .chain(upper.iter())
        .flatten()
        .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect()
}

#[async_trait]
impl Verifier for PostgresJob {
    async fn verify(
        &mut self,
        ranges: &[KeyRange],
        checksum: bool,
        consistent: bool,
    ) -> Result<Vec<Mismatch>> {
        let mut mismatches = Vec::new();
        for range in ranges {
            let chunks = if consistent {
                vec![range.clone()]
            } else {
                self.chunks(range).await?
            };
            for chunk in chunks {
                let differs = if consistent {
                    self.compare_consistently(&chunk, checksum).await?
                } else {
                    self.compare(&chunk, checksum).await?
                };
                if let Some(detail) = differs {
                    mismatches.push(Mismatch {
                        detail: format!("{}: {detail}", describe_range(&chunk)),
                        range: chunk,
                    });
                }
            }
        }
        Ok(mismatches)
    }
}

/// `range 2 (keys after [100] up to [200])`.
pub fn describe_range(range: &KeyRange) -> String {
    let show = |key: &Option<Vec<String>>| key.as_ref().map(|k| format!("({})", k.join(", ")));
    match (show(&range.lower), show(&range.upper)) {
        (None, None) => format!("range {} (all keys)", range.number),
        (Some(l), None) => format!("range {} (keys after {l})", range.number),
        (None, Some(u)) => format!("range {} (keys up to {u})", range.number),
        (Some(l), Some(u)) => format!("range {} (keys after {l} up to {u})", range.number),
    }
}

#[async_trait]
impl Switcher for PostgresJob {
    async fn completed_cutover(&mut self) -> Result<Option<CutoverReport>> {
        let row = self
            .client
            .query_opt(
                "SELECT writes_blocked_ms, changes_drained FROM switchyard.cutovers WHERE job = $1",
                &[&self.spec.name],
            )
            .await
            .map_err(self.failed("cannot read the cutover record"))?;
        match row {
            Some(row) => {
                // The capture may outlive a process that died right after the swap.
                self.drop_capture().await?;
                Ok(Some(CutoverReport {
                    writes_blocked: Duration::from_millis(row.get::<_, i64>(0) as u64),
                    changes_drained: row.get::<_, i64>(1) as u64,
                }))
            }
            None => Ok(None),
        }
    }

    async fn cutover(&mut self) -> Result<CutoverReport> {
        if let Some(report) = self.completed_cutover().await? {
            return Ok(report);
        }
        let target = self.target_name().expect("copy");
        let source = self.source.name.clone();
        let old = source.sibling(&format!("{}_old", source.name));
        let taken: bool = self.exists(&old).await?;
        if taken {
            return Err(Error::Refused(format!("cutover would rename {source} to {old}, which exists already: drop or rename it first")));
        }
        let blocking: Vec<Dependent> = self
            .dependents()
            .await?
            .into_iter()
            .filter(|d| d.blocks_cutover)
            .collect();
        if !blocking.is_empty() {
            let lines: Vec<String> = blocking
                .iter()
                .map(|d| format!("{} {}: {}", d.kind, d.name, d.handling))
                .collect();
            return Err(Error::Refused(format!(
                "cutover refused, it would break:\n{}",
                lines.join("\n")
            )));
        }
        self.client
            .batch_execute("BEGIN")
            .await
            .map_err(self.failed("cannot begin the cutover"))?;
        let started = Instant::now();
        let result = async {
            self.run_ddl(
                &[format!("LOCK TABLE {} IN EXCLUSIVE MODE", source.sql())],
                "cutover",
            )
            .await?;
            crate::crash_point!("cutover.after_lock");
            let blocked_from = Instant::now();
            // Writes wait on the lock, so reading up to a marker drains everything.
            let (drained, last_end) = if self.catches_up() {
                let applied = self.apply_within(None).await?;
                (applied.changes, applied.end_lsn)
            } else {
                (0, None)
            };
            crate::crash_point!("cutover.after_drain");
            self.swap(&source, &old.name, &target, "cutover").await?;
            crate::crash_point!("cutover.after_swap");
            // Recorded in the same transaction as the swap: never done twice.
            let blocked = blocked_from.elapsed();
            self.client
                .execute(
                    "INSERT INTO switchyard.cutovers (job, writes_blocked_ms, changes_drained) VALUES ($1, $2, $3)",
                    &[&self.spec.name, &(blocked.as_millis() as i64), &(drained as i64)],
                )
                .await
                .map_err(self.failed("cannot record the cutover"))?;
            crate::crash_point!("cutover.after_record");
            self.client
                .batch_execute("COMMIT")
                .await
                .map_err(self.failed("cannot commit the cutover"))?;
            Ok::<_, Error>((blocked, drained, last_end))
        }
        .await;
        let (writes_blocked, changes_drained, last_end) = match result {
            Ok(done) => done,
            Err(error) => {
                let _ = self.client.batch_execute("ROLLBACK").await;
                return Err(error);
            }
        };
        tracing::info!(job = %self.spec.name, blocked_ms = writes_blocked.as_millis() as u64, took_ms = started.elapsed().as_millis() as u64, "cut over");
        crate::crash_point!("cutover.after_commit");
        if let Some(end) = last_end {
            self.stream().await?.confirm(end);
        }
        self.drop_capture().await?;
        crate::crash_point!("cutover.after_drop_capture");
        Ok(CutoverReport {
            writes_blocked,
            changes_drained,
        })
    }
}
