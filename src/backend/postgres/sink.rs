//! A PostgreSQL table as the sink of a job: expand, batches with their checkpoints,
//! idempotent change application, comparison, and the switch (see [`super::cutover`]).
//! For a backfill the sink is the source table itself, filled in place.
//!
//! Invariants:
//! - Checkpoints live in the sink's database ([`super::checkpoints`]), so each batch
//!   and each catch-up transaction commits its position with its writes.
//! - When the source is in the same configured database, batches and comparisons run
//!   in the server in one statement each (the fast path), and cutover is one
//!   transaction holding the source's lock; otherwise rows come as `COPY` data and the
//!   source is fenced before the last changes are drained.

use std::time::Duration;

use async_trait::async_trait;

use super::apply::ChangeApply;
use super::batch::{BatchSql, CopyWriter, InServerWorker, Write};
use super::capture::Capture;
use super::checkpoints::Checkpoints;
use super::ddl::Ddl;
use super::lanes::{Lanes, LANES_FROM};
use super::session::{Sessions, Side};
use super::table::{ident, literal, TableInfo, TableName};
use super::verify;
use crate::engine::progress::{CutoverReport, KeyRange, RangeProgress};
use crate::engine::row::{Position, Projected, Projection, Schema};
use crate::engine::sink::{CopyWorker, PairedWorker, Sink};
use crate::engine::source::{ChangeBatch, RowFormat, Source};
use crate::error::{Error, Result};
use crate::job::{JobKind, JobSpec};

/// The session setting that names the backfill whose batches a session runs: that job's
/// dual-write trigger skips them (they set the same values, once).
const FILLING_SETTING: &str = "switchyard.filling";

/// The dollar-quote tag of generated function bodies; refused inside expressions.
const BODY_TAG: &str = "$sy_body$";

/// Where a sink stands relative to its source.
pub struct Placement {
    /// The source is in the same configured database.
    pub same_database: bool,
    /// The name the source takes when the target takes its place.
    pub aside: TableName,
    /// Capture the target's changes from before its cutover on, for the way back.
    pub captures_back: bool,
}

pub struct PgSink {
    pub(super) spec: JobSpec,
    pub(super) side: Side,
    pub(super) lock_timeout: Duration,
    /// The source as named in the job file.
    pub(super) source_name: TableName,
    /// The name the source takes at cutover.
    pub(super) aside: TableName,
    /// The capture of the target's changes that the way back reads (see
    /// [`super::way_back`]), when this job has one.
    pub(super) back_capture: Option<Capture>,
    /// The source's table when it is in this database (a backfill's always is).
    pub(super) local_source: Option<TableInfo>,
    /// The target table as named in the job file (a copy's).
    pub(super) target_name: Option<TableName>,
    /// Loaded once the target exists, after expand.
    pub(super) target: Option<TableInfo>,
    pub(super) apply: Option<ChangeApply>,
    /// The sessions applying large catch-up passes in parallel: `None` until the first
    /// such pass, `Some(None)` where the target's constraints order changes.
    pub(super) lanes: Option<Option<Lanes>>,
}

impl PgSink {
    /// Connects to the target's database.
    pub async fn open(
        spec: &JobSpec,
        url: &crate::secret::SecretUrl,
        sessions: &Sessions,
        lock_timeout: Duration,
        placement: Placement,
    ) -> Result<PgSink> {
        for expression in spec.transform.columns.values() {
            if expression.contains(BODY_TAG) {
                return Err(Error::Refused(format!(
                    "field `transform.columns`: an expression may not contain `{BODY_TAG}`"
                )));
            }
        }
        let database = spec
            .target
            .as_ref()
            .map_or(&spec.source.database, |t| &t.database);
        let side = Side::open(database, url, sessions).await?;
        let source_name = TableName::parse(spec.source.table.as_deref().unwrap_or_default());
        let back_capture = if placement.captures_back {
            Some(Capture::new(
                &crate::backend::back_name(&spec.name),
                side.database_oid().await?,
            ))
        } else {
            None
        };
        let local_source = if placement.same_database {
            Some(
                TableInfo::load(
                    &side.client,
                    &side.database,
                    &source_name,
                    spec.key_columns().as_deref(),
                )
                .await?,
            )
        } else {
            None
        };
        Ok(PgSink {
            target_name: spec
                .target
                .as_ref()
                .and_then(|t| t.table.as_deref())
                .map(TableName::parse),
            spec: spec.clone(),
            side,
            lock_timeout,
            source_name,
            aside: placement.aside,
            back_capture,
            local_source,
            target: None,
            apply: None,
            lanes: None,
        })
    }

    pub(super) fn checkpoints(&self) -> Checkpoints<'_> {
        Checkpoints {
            side: &self.side,
            job: &self.spec.name,
        }
    }

    pub(super) fn ddl(&self) -> Ddl<'_> {
        Ddl {
            side: &self.side,
            job: &self.spec.name,
            lock_timeout: self.lock_timeout,
        }
    }

    fn fills(&self) -> bool {
        self.spec.kind == JobKind::Backfill
    }

    /// The target table, read on first use (it exists once expand ran).
    pub(super) async fn target(&mut self) -> Result<&TableInfo> {
        if self.target.is_none() {
            let name = self.target_name.clone().expect("a copy job has a target");
            let key: Vec<String> = self.spec.key_columns().unwrap_or_else(|| {
                self.local_source
                    .as_ref()
                    .map(TableInfo::key_names)
                    .unwrap_or_default()
            });
            let key = (!key.is_empty()).then_some(key);
            let target = TableInfo::load(
                &self.side.client,
                &self.side.database,
                &name,
                key.as_deref(),
            )
            .await
            .map_err(|e| match e {
                Error::Refused(reason) => Error::Refused(format!(
                    "{reason} (the target needs it for catch-up upserts)"
                )),
                other => other,
            })?;
            self.target = Some(target);
        }
        Ok(self.target.as_ref().expect("loaded above"))
    }

    /// The target's columns and what fills each from the source row: columns of both
    /// tables copy by name, `[transform] columns` add or override.
    pub(super) fn projection(&self, source: &Schema, target: &TableInfo) -> Result<Projection> {
        for column in self.spec.transform.columns.keys() {
            if let Some(why) = target.unwritable(column) {
                return Err(Error::Refused(format!(
                    "field `transform.columns.{column}`: {why}"
                )));
            }
            if target.key.iter().any(|k| &k.name == column) {
                return Err(Error::Refused(format!(
                    "field `transform.columns.{column}`: the key is copied as it is, not transformed"
                )));
            }
        }
        for key in source.key_names() {
            if target.column(&key).is_none() {
                return Err(Error::Refused(format!(
                    "field `target.table`: table {} has no column `{key}` for the source's key",
                    target.name
                )));
            }
        }
        Ok(target
            .columns
            .iter()
            .filter_map(|c| {
                let expression = match self.spec.transform.columns.get(&c.name) {
                    Some(expression) => expression.clone(),
                    None => format!("s.{}", ident(&source.field(&c.name)?.name)),
                };
                Some(Projected {
                    name: c.name.clone(),
                    expression,
                    type_name: c.type_sql.clone(),
                })
            })
            .collect())
    }

    /// What verify compares: the [`PgSink::projection`], and the target's stored
    /// generated columns that the source has a column of the same name for (its own
    /// generated one or a plain one), which the target computed itself.
    fn compared_projection(&self, source: &Schema, target: &TableInfo) -> Result<Projection> {
        let mut projection = self.projection(source, target)?;
        projection.extend(target.computed.iter().filter_map(|c| {
            let field = source
                .computed
                .iter()
                .chain(&source.fields)
                .find(|f| f.name == c.name)?;
            Some(Projected {
                name: c.name.clone(),
                expression: format!("s.{}", ident(&field.name)),
                type_name: c.type_sql.clone(),
            })
        }));
        Ok(projection)
    }

    /// Refuses a target whose columns cannot take the source's rows: a NOT NULL column
    /// without a default that nothing fills, or a column copied by name from a type
    /// the target's type cannot be assigned from (checked where both types exist, as
    /// the planner would check the copy's INSERT).
    async fn check_columns(
        &self,
        source: &Schema,
        target: &TableInfo,
        projection: &Projection,
    ) -> Result<()> {
        let unfilled: Vec<String> = self
            .side
            .client
            .query(
                "SELECT attname::text FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped
                   AND attnotnull AND NOT atthasdef AND attgenerated = '' AND attidentity = ''
                   AND NOT attname::text = ANY ($2::text[]) ORDER BY attnum",
                &[&target.oid, &projection.iter().map(|p| p.name.clone()).collect::<Vec<_>>()],
            )
            .await
            .map_err(self.side.failed(format!("cannot read the columns of {}", target.name)))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if let Some(column) = unfilled.first() {
            return Err(Error::Refused(format!(
                "field `target.table`: column `{column}` of {} is NOT NULL without a default, and the source has no column of that name: fill it under [transform] columns",
                target.name
            )));
        }
        for projected in projection {
            let Some(field) = source.field(&projected.name) else {
                continue;
            };
            if projected.expression != format!("s.{}", ident(&field.name))
                || field.type_name == projected.type_name
            {
                continue;
            }
            let known: bool = self
                .side
                .scalar(
                    "SELECT to_regtype($1) IS NOT NULL",
                    &[&field.type_name],
                    "cannot read the catalog",
                )
                .await?;
            if !known {
                continue;
            }
            let assignable = self
                .side
                .client
                .batch_execute(&format!(
                    "EXPLAIN INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE SELECT NULL::{}",
                    target.name.sql(),
                    ident(&projected.name),
                    field.type_name
                ))
                .await;
            if let Err(e) = assignable {
                return Err(Error::Refused(format!(
                    "field `target.table`: column `{}` of {} is {}, which cannot take the source's {} ({}): change the column, or convert it under [transform] columns",
                    projected.name,
                    target.name,
                    projected.type_name,
                    field.type_name,
                    crate::error::describe_postgres_error(&e)
                )));
            }
        }
        Ok(())
    }

    /// Binary COPY when every column is a plain copy of the same built-in type.
    fn row_format(source: &Schema, target: &TableInfo, projection: &Projection) -> RowFormat {
        let binary = projection.iter().all(|p| {
            let column = target
                .column(&p.name)
                .expect("projected columns are columns");
            source.field(&p.name).is_some_and(|f| {
                p.expression == format!("s.{}", ident(&f.name))
                    && f.type_name == column.type_sql
                    && column.portable_binary()
            })
        });
        RowFormat::PostgresCopy { binary }
    }

    /// A backfill's `(column, expression)` pairs, checked against the table.
    pub(super) fn fill_columns(&self) -> Result<Vec<(String, String)>> {
        let table = self
            .local_source
            .as_ref()
            .expect("a backfill's table is local");
        self.spec
            .transform
            .columns
            .iter()
            .map(|(column, expression)| {
                if table.key.iter().any(|k| &k.name == column) {
                    return Err(Error::Refused(format!(
                        "field `transform.columns.{column}`: a backfill cannot change the key"
                    )));
                }
                let why = table.unwritable(column).or_else(|| {
                    table
                        .column(column)
                        .is_some_and(|c| c.always_identity)
                        .then(|| format!("column `{column}` of {} is GENERATED ALWAYS AS IDENTITY: the database hands out its values", table.name))
                });
                match why {
                    Some(why) => Err(Error::Refused(format!(
                        "field `transform.columns.{column}`: {why}"
                    ))),
                    None => Ok((column.clone(), expression.clone())),
                }
            })
            .collect()
    }

    /// The statement of one in-server batch (see [`BatchSql::statement`]).
    pub(super) async fn batch_sql(&mut self) -> Result<BatchSql> {
        let source = self
            .local_source
            .clone()
            .expect("in-server batches need the source in this database");
        let write = if self.fills() {
            Write::Fill {
                columns: self.fill_columns()?,
            }
        } else {
            let target = self.target().await?.clone();
            Write::Copy {
                target: target.name.sql(),
                columns: self
                    .projection(&source.schema(), &target)?
                    .into_iter()
                    .map(|p| (p.name, p.expression))
                    .collect(),
            }
        };
        Ok(BatchSql {
            job: self.spec.name.clone(),
            source,
            write,
        })
    }

    pub(super) fn fill_trigger_sql(&self, columns: &[(String, String)]) -> Vec<String> {
        let table = &self.source_name;
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
            format!("DROP TRIGGER IF EXISTS {trigger} ON {}", table.sql()),
            format!(
                "CREATE TRIGGER {trigger} BEFORE INSERT OR UPDATE ON {} FOR EACH ROW
                 WHEN (current_setting('{FILLING_SETTING}', true) IS DISTINCT FROM {})
                 EXECUTE FUNCTION {function}()",
                table.sql(),
                literal(&self.spec.name)
            ),
        ]
    }

    pub(super) fn drop_fill_trigger_sql(&self) -> Vec<String> {
        vec![
            format!(
                "DROP TRIGGER IF EXISTS {} ON {}",
                ident(&format!("switchyard_fill_{}", self.spec.name)),
                self.source_name.sql()
            ),
            format!(
                "DROP FUNCTION IF EXISTS switchyard.{}()",
                ident(&format!("fill_{}", self.spec.name))
            ),
        ]
    }

    /// Removes the way back's capture of the target, if this job has one (idempotent).
    async fn stop_back_capture(&mut self) -> Result<()> {
        if let Some(capture) = self.back_capture.as_mut() {
            capture.stop(&self.side).await?;
        }
        Ok(())
    }

    /// Before a switch: starts capturing the target's changes for the way back
    /// (idempotent), so that the writes it takes after the switch can be carried back.
    pub(super) async fn start_back_capture(&mut self) -> Result<()> {
        if self.back_capture.is_none() {
            return Ok(());
        }
        let target = self.target().await?.clone();
        let capture = self.back_capture.as_ref().expect("checked above");
        capture.start(&self.side, &target, 1).await.map(drop)
    }

    /// Applies `batch` in one transaction of the control session, with its position.
    pub(super) async fn apply_in_transaction(
        &mut self,
        batch: &ChangeBatch,
        source: &mut dyn Source,
    ) -> Result<u64> {
        self.side
            .client
            .batch_execute("BEGIN")
            .await
            .map_err(self.side.failed("cannot begin a catch-up transaction"))?;
        let applied = match self.apply_within(batch, source).await {
            Ok(applied) => applied,
            Err(error) => {
                let _ = self.side.client.batch_execute("ROLLBACK").await;
                return Err(error);
            }
        };
        self.side
            .client
            .batch_execute("COMMIT")
            .await
            .map_err(self.side.failed("cannot commit a catch-up transaction"))?;
        Ok(applied)
    }

    /// Takes the job's session-scoped advisory lock, if free.
    async fn lock_job(&self) -> Result<bool> {
        self.side
            .scalar(
                "SELECT pg_try_advisory_lock(hashtextextended('switchyard job ' || $1, 0))",
                &[&self.spec.name],
                "cannot claim the job",
            )
            .await
    }

    /// Applies `batch` within the caller's transaction and moves the position with it.
    pub(super) async fn apply_within(
        &mut self,
        batch: &ChangeBatch,
        source: &mut dyn Source,
    ) -> Result<u64> {
        if self.apply.is_none() {
            let target = self.target().await?.clone();
            let projection = self.projection(source.schema(), &target)?;
            self.apply = Some(ChangeApply::new(
                &self.side.database,
                source.schema().clone(),
                self.source_name.to_string(),
                target,
                projection,
            ));
        }
        let applier = self.apply.as_mut().expect("set above");
        let applied = applier
            .apply(&self.side.client, &batch.changes, source)
            .await?;
        crate::crash_point!("catch_up.after_write");
        if let Some(end) = &batch.end {
            self.checkpoints().advance(end, applied).await?;
        }
        crate::crash_point!("catch_up.after_checkpoint");
        Ok(applied)
    }
}

#[async_trait]
impl Sink for PgSink {
    fn fences_copy(&self) -> bool {
        true
    }

    /// Takes the job's advisory lock, then ends the sessions a dead run left behind:
    /// a killed process's batch statement can still be running on the server, and it
    /// would commit its batch after this run read the checkpoint. Only then may the
    /// checkpoints be read. A lock still held is a frozen run's (this run holds the
    /// job's lease): its sessions are ended, and the lock taken.
    async fn try_claim(&mut self) -> Result<bool> {
        let mut claimed = self.lock_job().await?;
        if !claimed {
            // The lock is a frozen holder's, whose lease this run took: once its
            // sessions are ended, the lock is free.
            self.side.end_leftover_sessions().await?;
            claimed = self.lock_job().await?;
        }
        if claimed {
            self.side.end_leftover_sessions().await?;
        }
        Ok(claimed)
    }

    async fn reconnect(&mut self) -> Result<bool> {
        // Sessions of the old connections count as leftovers from here on.
        self.side.sessions.renew();
        self.side.reconnect().await?;
        // Prepared statements belonged to the old session.
        self.apply = None;
        self.lanes = None;
        self.try_claim().await
    }

    async fn start_fresh(&mut self) -> Result<()> {
        self.stop_back_capture().await?;
        self.checkpoints().forget(false).await
    }

    async fn expand(&mut self, source: &dyn Source) -> Result<bool> {
        self.checkpoints().create_schema().await?;
        let exists_at_start = match &self.target_name {
            Some(name) => self.side.exists(&name.sql()).await?,
            None => true,
        };
        let existed = self.ddl().target_existed(exists_at_start).await?;
        self.ddl()
            .run_steps("expand", &self.spec.expand.sql.clone())
            .await?;
        if self.fills() {
            // Expand may have added the columns a backfill fills.
            let table = self
                .local_source
                .as_ref()
                .expect("a backfill's table is local");
            self.local_source = Some(
                TableInfo::load(
                    &self.side.client,
                    &self.side.database,
                    &table.name,
                    Some(&table.key_names()),
                )
                .await?,
            );
            let columns = self.fill_columns()?;
            self.ddl()
                .run(&self.fill_trigger_sql(&columns), "dual-write trigger")
                .await?;
            return Ok(false);
        }
        // The target must exist now, with a unique index on the key, and take the
        // source's rows; if it cannot, what expand created goes again.
        self.target = None;
        let checked = async {
            let target = self.target().await?.clone();
            let projection = self.projection(source.schema(), &target)?;
            self.check_columns(source.schema(), &target, &projection)
                .await
        }
        .await;
        if let Err(error @ Error::Refused(_)) = checked {
            if !existed {
                let target = self.target_name.clone().expect("a copy has a target");
                self.ddl()
                    .run(
                        &[format!("DROP TABLE IF EXISTS {}", target.sql())],
                        "expand",
                    )
                    .await?;
            }
            self.checkpoints().forget(false).await?;
            return Err(error);
        }
        checked?;
        Ok(!existed)
    }

    async fn save_start(&mut self, start: &Position) -> Result<()> {
        self.checkpoints().save_start(start).await
    }

    async fn position(&mut self) -> Result<Option<Position>> {
        self.checkpoints().position().await
    }

    async fn saved_ranges(&mut self) -> Result<Vec<RangeProgress>> {
        self.checkpoints().ranges().await
    }

    async fn save_ranges(&mut self, ranges: &[KeyRange]) -> Result<()> {
        self.checkpoints().save_ranges(ranges).await
    }

    async fn copy_worker(&mut self, source: &dyn Source) -> Result<Box<dyn CopyWorker>> {
        let client = self.side.connect().await?;
        if self.local_source.is_some() {
            if self.fills() {
                // The batch sets the same expressions: the dual-write trigger stands aside.
                client
                    .execute(
                        &format!("SELECT set_config('{FILLING_SETTING}', $1, false)"),
                        &[&self.spec.name],
                    )
                    .await
                    .map_err(self.side.failed("cannot mark the fill session"))?;
            }
            let sql = self.batch_sql().await?;
            return Ok(Box::new(InServerWorker {
                database: self.side.database.clone(),
                client,
                sql,
                statements: Default::default(),
                fence: 0,
            }));
        }
        let target = self.target().await?.clone();
        let projection = self.projection(source.schema(), &target)?;
        let format = Self::row_format(source.schema(), &target, &projection);
        let columns: Vec<String> = projection.iter().map(|p| ident(&p.name)).collect();
        Ok(Box::new(PairedWorker {
            reader: source.reader(&projection, format).await?,
            writer: Box::new(CopyWriter {
                database: self.side.database.clone(),
                client,
                job: self.spec.name.clone(),
                target: format!("{} ({})", target.name.sql(), columns.join(", ")),
                fence: 0,
            }),
        }))
    }

    async fn apply(&mut self, batch: &ChangeBatch, source: &mut dyn Source) -> Result<u64> {
        if batch.changes.len() >= LANES_FROM {
            if self.lanes.is_none() {
                self.lanes = Some(Lanes::open(self, &*source).await?);
            }
            if let Some(Some(mut lanes)) = self.lanes.take() {
                let applied = self.apply_in_lanes(&mut lanes, batch, source).await;
                self.lanes = Some(Some(lanes));
                return applied;
            }
            self.lanes = Some(None);
        }
        self.apply_in_transaction(batch, source).await
    }

    async fn compare(
        &mut self,
        source: &mut dyn Source,
        chunk: &KeyRange,
        checksum: bool,
    ) -> Result<Option<String>> {
        if self.fills() {
            let table = self
                .local_source
                .clone()
                .expect("a backfill's table is local");
            return verify::compare_fill(&self.side, &table, &self.fill_columns()?, chunk).await;
        }
        let target = self.target().await?.clone();
        let projection = self.compared_projection(source.schema(), &target)?;
        if let Some(local) = &self.local_source {
            return verify::compare_in_server(
                &self.side,
                local,
                &target,
                &projection,
                chunk,
                checksum,
            )
            .await;
        }
        let theirs = source.digest(chunk, &projection, checksum).await?;
        let row = verify::target_row(&projection);
        let ours = verify::digest(&self.side, &target, &row, chunk, checksum).await?;
        Ok(crate::engine::row::Digest::difference(&theirs, &ours))
    }

    async fn cutover(&mut self, source: &mut dyn Source) -> Result<CutoverReport> {
        // A job expanded by an older version may lack a checkpoint table cutover uses.
        self.checkpoints().create_schema().await?;
        if let Some(report) = self.completed_cutover().await? {
            return Ok(report);
        }
        self.start_back_capture().await?;
        crate::crash_point!("cutover.after_back_capture");
        if self.local_source.is_some() {
            self.cutover_in_server(source).await
        } else {
            self.cutover_across(source).await
        }
    }

    async fn completed_cutover(&mut self) -> Result<Option<CutoverReport>> {
        let Some((blocked_ms, drained)) = self.checkpoints().cutover().await? else {
            return Ok(None);
        };
        // A crash may have come between the switch and the steps after it.
        self.finish_carry().await?;
        Ok(Some(CutoverReport {
            writes_blocked: Duration::from_millis(blocked_ms as u64),
            changes_drained: drained as u64,
            alias: None,
        }))
    }

    async fn abort(&mut self, _source: &mut dyn Source, created_target: bool) -> Result<()> {
        // A cutover attempt that failed may have started the way back's capture.
        self.stop_back_capture().await?;
        if !self.fills() && created_target {
            let target = self.target_name.clone().expect("copy");
            self.ddl()
                .run(&[format!("DROP TABLE IF EXISTS {}", target.sql())], "abort")
                .await?;
        }
        if self.fills() {
            self.ddl()
                .run(&self.drop_fill_trigger_sql(), "abort")
                .await?;
        }
        self.checkpoints().forget(false).await
    }

    async fn contract(&mut self) -> Result<()> {
        if self.fills() {
            self.ddl()
                .run(&self.drop_fill_trigger_sql(), "contract")
                .await?;
        }
        self.checkpoints().forget(true).await
    }
}
