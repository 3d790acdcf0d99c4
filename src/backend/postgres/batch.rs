//! Copy batches into PostgreSQL, with their checkpoints.
//!
//! Within one database a batch is one statement ([`InServerWorker`]): it reads the next
//! rows of a range after the range's last key, writes them (INSERT into the target, or
//! UPDATE in place for a backfill), and moves the range's checkpoint in
//! `switchyard.copy_progress`, all in the statement's own transaction.
//!
//! From another server a batch arrives as `COPY` data ([`CopyWriter`]), streamed into
//! `COPY … FROM STDIN` in a transaction that also moves the checkpoint.
//!
//! Either way a batch is wholly there with its checkpoint, or not at all, whatever
//! instant the process dies.

use std::collections::HashMap;

use async_trait::async_trait;
use futures::SinkExt;
use tokio_postgres::{Client, Statement};

use super::checkpoints::{hold_fence, seize_range, unfenced};
use super::table::{ident, TableInfo};
use crate::engine::progress::RangeProgress;
use crate::engine::sink::{BatchWriter, CopyWorker};
use crate::engine::source::{Batch, Rows};
use crate::error::{Error, Result};

/// What a batch writes.
#[derive(Debug, Clone)]
pub enum Write {
    /// INSERT into `target` the `(column, expression over the source row)` pairs.
    Copy {
        target: String,
        columns: Vec<(String, String)>,
    },
    /// UPDATE the source in place: `column = expression`.
    Fill { columns: Vec<(String, String)> },
}

#[derive(Debug, Clone)]
pub struct BatchSql {
    pub job: String,
    pub source: TableInfo,
    pub write: Write,
}

/// The first part of every batch statement: the range's row, locked, if `$3` is its
/// fence.
const FENCE: &str = "fence AS (
    SELECT 1 FROM switchyard.copy_progress WHERE job = $1 AND range_no = $2 AND fence = $3 FOR UPDATE
)";

impl BatchSql {
    /// The batch statement. Parameters: `$1` job, `$2` range number, `$3` the worker's
    /// fence, then the last key (when `after`), then the range's upper key (when
    /// `upper`), all as text. It reads and writes nothing unless `$3` is the range's
    /// fence, whose row it locks first; its last column says whether it was.
    pub fn statement(&self, after: bool, upper: bool, limit: usize) -> String {
        if let (Write::Fill { columns }, [key]) = (&self.write, self.source.key.as_slice()) {
            return self.fill_by_range(&key.name, columns, after, upper, limit);
        }
        let (condition, _) = self.source.range_condition(Some("s"), after, upper, 4);
        let keys = self.source.key_list(Some("s"));
        let key_aliases: Vec<String> = (0..self.source.key.len())
            .map(|i| format!("_sy_k{i}"))
            .collect();
        let key_select: Vec<String> = self
            .source
            .key
            .iter()
            .zip(&key_aliases)
            .map(|(c, alias)| format!("s.{} AS {alias}", ident(&c.name)))
            .collect();
        let last_key: Vec<String> = key_aliases.iter().map(|a| format!("{a}::text")).collect();
        let order_desc: Vec<String> = key_aliases.iter().map(|a| format!("{a} DESC")).collect();
        let (select_extra, write) = match &self.write {
            Write::Copy { target, columns } => {
                let select: Vec<String> = columns
                    .iter()
                    .map(|(c, e)| format!(", ({e}) AS {}", ident(c)))
                    .collect();
                let names: Vec<String> = columns.iter().map(|(c, _)| ident(c)).collect();
                (
                    select.concat(),
                    format!(
                        "INSERT INTO {target} ({names}) OVERRIDING SYSTEM VALUE SELECT {names} FROM batch",
                        names = names.join(", ")
                    ),
                )
            }
            Write::Fill { columns } => {
                let sets: Vec<String> = columns
                    .iter()
                    .map(|(c, e)| format!("{} = ({e})", ident(c)))
                    .collect();
                let matches: Vec<String> =
                    key_aliases.iter().map(|a| format!("batch.{a}")).collect();
                (
                    String::new(),
                    format!(
                        "UPDATE {source} AS s SET {sets} FROM batch WHERE ({keys}) = ({matches})",
                        source = self.source.name.sql(),
                        sets = sets.join(", "),
                        matches = matches.join(", ")
                    ),
                )
            }
        };
        format!(
            "WITH {FENCE}, batch AS (
                SELECT {key_select}{select_extra} FROM {source} AS s WHERE EXISTS (SELECT 1 FROM fence) AND {condition} ORDER BY {keys} LIMIT {limit}
             ), written AS (
                {write}
             ), last AS (
                SELECT ARRAY[{last_key}] AS k FROM batch ORDER BY {order_desc} LIMIT 1
             ), progress AS (
                UPDATE switchyard.copy_progress
                   SET last_key = COALESCE((SELECT k FROM last), last_key),
                       rows = rows + (SELECT count(*) FROM batch),
                       done = (SELECT count(*) FROM batch) < {limit}
                 WHERE job = $1 AND range_no = $2 AND EXISTS (SELECT 1 FROM fence)
                 RETURNING last_key, done
             )
             SELECT (SELECT count(*) FROM batch), (SELECT last_key FROM progress), (SELECT done FROM progress), EXISTS (SELECT 1 FROM fence)",
            key_select = key_select.join(", "),
            source = self.source.name.sql(),
            last_key = last_key.join(", "),
            order_desc = order_desc.join(", "),
        )
    }
}

impl BatchSql {
    /// A fill batch over a one-column key: finds the `limit`-th key of the range, then
    /// updates every row up to it with one index range scan (rather than joining the
    /// batch's keys back to the table, a lookup per row). Same parameters and result as
    /// [`BatchSql::statement`].
    fn fill_by_range(
        &self,
        key: &str,
        columns: &[(String, String)],
        after: bool,
        upper: bool,
        limit: usize,
    ) -> String {
        let (condition, _) = self.source.range_condition(Some("s"), after, upper, 4);
        let (inner, _) = self.source.range_condition(Some("r"), after, upper, 4);
        let sets: Vec<String> = columns
            .iter()
            .map(|(c, e)| format!("{} = ({e})", ident(c)))
            .collect();
        format!(
            "WITH {FENCE}, nth AS (
                SELECT s.{key} AS k FROM {source} AS s WHERE {condition} ORDER BY s.{key} OFFSET {skip} LIMIT 1
             ), written AS (
                UPDATE {source} AS s SET {sets}
                 WHERE EXISTS (SELECT 1 FROM fence) AND {condition}
                   AND s.{key} <= COALESCE((SELECT k FROM nth), (SELECT max(r.{key}) FROM {source} AS r WHERE {inner}))
                RETURNING s.{key} AS k
             ), last AS (
                SELECT COALESCE(
                    (SELECT ARRAY[k::text] FROM nth),
                    (SELECT ARRAY[k::text] FROM written ORDER BY k DESC LIMIT 1)) AS k
             ), progress AS (
                UPDATE switchyard.copy_progress
                   SET last_key = COALESCE((SELECT k FROM last), last_key),
                       rows = rows + (SELECT count(*) FROM written),
                       done = NOT EXISTS (SELECT 1 FROM nth)
                 WHERE job = $1 AND range_no = $2 AND EXISTS (SELECT 1 FROM fence)
                 RETURNING last_key, done
             )
             SELECT (SELECT count(*) FROM written), (SELECT last_key FROM progress), (SELECT done FROM progress), EXISTS (SELECT 1 FROM fence)",
            key = ident(key),
            source = self.source.name.sql(),
            skip = limit.saturating_sub(1),
            sets = sets.join(", "),
        )
    }
}

/// A copy worker within one database, on its own connection, with its statements
/// prepared once.
pub struct InServerWorker {
    pub database: String,
    pub client: Client,
    pub sql: BatchSql,
    pub statements: HashMap<(bool, bool, usize), Statement>,
    /// The fence of the range this worker seized last.
    pub fence: i64,
}

#[async_trait]
impl CopyWorker for InServerWorker {
    async fn seize(&mut self, known: &RangeProgress, fence: i64) -> Result<RangeProgress> {
        self.fence = fence;
        seize_range(&self.client, &self.database, &self.sql.job, known, fence).await
    }

    async fn copy_batch(&mut self, progress: &mut RangeProgress, limit: usize) -> Result<u64> {
        let after = progress
            .last_key
            .clone()
            .or_else(|| progress.range.lower.clone());
        let upper = progress.range.upper.clone();
        let shape = (after.is_some(), upper.is_some(), limit);
        let statement = match self.statements.get(&shape) {
            Some(statement) => statement.clone(),
            None => {
                let text = self.sql.statement(shape.0, shape.1, limit);
                let prepared = self.client.prepare(&text).await.map_err(|e| {
                    Error::database(&self.database, "cannot prepare the batch statement", e)
                })?;
                self.statements.insert(shape, prepared.clone());
                prepared
            }
        };
        let job = self.sql.job.as_str();
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            vec![&job, &progress.range.number, &self.fence];
        let after_values = after.unwrap_or_default();
        let upper_values = upper.unwrap_or_default();
        params.extend(
            after_values
                .iter()
                .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync)),
        );
        params.extend(
            upper_values
                .iter()
                .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync)),
        );
        let row = self
            .client
            .query_one(&statement, &params)
            .await
            .map_err(|e| {
                Error::database(
                    &self.database,
                    format!("batch of range {} failed", progress.range.number),
                    e,
                )
            })?;
        let rows: i64 = row.get(0);
        let last_key: Option<Vec<String>> = row.get(1);
        let (done, fenced): (Option<bool>, bool) = (row.get(2), row.get(3));
        let (Some(done), true) = (done, fenced) else {
            return Err(unfenced(&self.client, &self.database, job, progress.range.number).await);
        };
        progress.last_key = last_key;
        progress.rows += rows as u64;
        progress.done = done;
        Ok(rows as u64)
    }
}

/// Writes batches of `COPY` data into the target, each in a transaction with its
/// checkpoint, on a connection of its own.
pub struct CopyWriter {
    pub database: String,
    pub client: Client,
    pub job: String,
    /// `"schema"."table" ("a", "b", …)`.
    pub target: String,
    /// The fence of the range this writer seized last.
    pub fence: i64,
}

#[async_trait]
impl BatchWriter for CopyWriter {
    async fn seize(&mut self, known: &RangeProgress, fence: i64) -> Result<RangeProgress> {
        self.fence = fence;
        seize_range(&self.client, &self.database, &self.job, known, fence).await
    }

    async fn write(&mut self, batch: Batch, progress: &mut RangeProgress) -> Result<u64> {
        let Rows::PostgresCopy { binary, mut data } = batch.rows else {
            return Err(Error::State(
                "a PostgreSQL target takes COPY data from its source".into(),
            ));
        };
        let failed = |e| {
            Error::database(
                &self.database,
                format!("batch of range {} failed", progress.range.number),
                e,
            )
        };
        self.client.batch_execute("BEGIN").await.map_err(failed)?;
        let written = async {
            hold_fence(
                &self.client,
                &self.database,
                &self.job,
                progress.range.number,
                self.fence,
            )
            .await?;
            let sink = self
                .client
                .copy_in::<_, bytes::Bytes>(&format!(
                    "COPY {} FROM STDIN (FORMAT {})",
                    self.target,
                    if binary { "binary" } else { "text" }
                ))
                .await
                .map_err(failed)?;
            futures::pin_mut!(sink);
            // Rows go on to the target as the source sends them.
            while let Some(chunk) = futures::StreamExt::next(&mut data).await {
                sink.feed(chunk?).await.map_err(failed)?;
            }
            let rows = sink.as_mut().finish().await.map_err(failed)?;
            self.client
                .execute(
                    "UPDATE switchyard.copy_progress SET last_key = $3, rows = rows + $4, done = $5 WHERE job = $1 AND range_no = $2",
                    &[&self.job, &progress.range.number, &batch.last_key, &(rows as i64), &batch.done],
                )
                .await
                .map_err(failed)?;
            Ok::<_, Error>(rows)
        }
        .await;
        match written {
            Ok(rows) => {
                self.client.batch_execute("COMMIT").await.map_err(failed)?;
                progress.last_key = batch.last_key;
                progress.rows += rows;
                progress.done = batch.done;
                Ok(rows)
            }
            Err(error) => {
                let _ = self.client.batch_execute("ROLLBACK").await;
                Err(error)
            }
        }
    }
}
