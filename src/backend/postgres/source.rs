//! A PostgreSQL table as the source of a job: key ranges, batches read with `COPY`,
//! change capture ([`super::capture`]), digests for verification, and the fence that
//! takes it out of use at a cutover onto another server.
//!
//! Invariants:
//! - Every identifier from a job file is quoted; values travel as parameters, or as
//!   quoted constants in `COPY`, which takes no parameters.
//! - Fencing renames the source to its aside name (`<table>_old`; for the way back, the
//!   name the new table had before) in a committed transaction, so writes to it fail
//!   from then on; a source found under that name (and not under its own) is a fenced
//!   one, and a resumed cutover goes on from there.

use std::time::Duration;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use tokio_postgres::Client;

use super::capture::Capture;
use super::checkpoints::Checkpoints;
use super::ddl::Ddl;
use super::dependents::refuse_blocking;
use super::session::{Sessions, Side};
use super::table::{column_sequences, ident, TableInfo, TableName};
use super::verify;
use crate::engine::progress::{KeyRange, Lag};
use crate::engine::row::{Digest, Key, Position, Projection, Row, Schema, Value};
use crate::engine::source::{Batch, BatchReader, ChangeBatch, RowFormat, Rows, Source};
use crate::error::{Error, Result};
use crate::job::{JobKind, JobSpec};

pub struct PgSource {
    job: String,
    kind: JobKind,
    side: Side,
    /// The source's name in the job file.
    name: TableName,
    /// The name it takes when fenced.
    aside: TableName,
    /// `None` once the job's contract dropped it.
    table: Option<TableInfo>,
    schema: Schema,
    capture: Capture,
    lock_timeout: Duration,
    contract_sql: Vec<String>,
    /// Replication slots the job needs on this server: its own, and its way back's
    /// when the target is in the same database.
    slots_needed: i64,
}

impl PgSource {
    /// Connects and reads the source table (or, after a fence, its aside name). When
    /// `may_be_gone` (the job's contract has begun), a table found under neither name
    /// is one the contract dropped: what is left to do needs only the database.
    pub async fn open(
        spec: &JobSpec,
        url: &crate::secret::SecretUrl,
        sessions: &Sessions,
        lock_timeout: Duration,
        aside: TableName,
        may_be_gone: bool,
    ) -> Result<PgSource> {
        let side = Side::open(&spec.source.database, url, sessions).await?;
        let name = TableName::parse(spec.source.table.as_deref().unwrap_or_default());
        let current = if side.exists(&name.sql()).await? {
            Some(name.clone())
        } else if side.exists(&aside.sql()).await? {
            Some(aside.clone())
        } else if may_be_gone {
            None
        } else {
            Some(name.clone())
        };
        let table = match current {
            Some(current) => Some(
                TableInfo::load(
                    &side.client,
                    &side.database,
                    &current,
                    spec.key_columns().as_deref(),
                )
                .await?,
            ),
            None => None,
        };
        let database_oid = side.database_oid().await?;
        Ok(PgSource {
            job: spec.name.clone(),
            kind: spec.kind,
            capture: Capture::new(&spec.name, database_oid),
            schema: table.as_ref().map(TableInfo::schema).unwrap_or_default(),
            side,
            name,
            aside,
            table,
            lock_timeout,
            contract_sql: spec.contract.sql.clone(),
            slots_needed: match &spec.target {
                Some(target) if target.database != spec.source.database => 1,
                _ => 2,
            },
        })
    }

    /// The source's table; an error once the job's contract dropped it.
    pub fn table(&self) -> Result<&TableInfo> {
        self.table.as_ref().ok_or_else(|| self.dropped())
    }

    fn dropped(&self) -> Error {
        Error::State(format!(
            "{} in database `{}` was dropped by the job's contract",
            self.name, self.side.database
        ))
    }

    pub fn side(&self) -> &Side {
        &self.side
    }

    pub fn capture(&self) -> &Capture {
        &self.capture
    }

    fn ddl(&self) -> Ddl<'_> {
        Ddl {
            side: &self.side,
            job: &self.job,
            lock_timeout: self.lock_timeout,
        }
    }

    /// Renamed aside, or dropped after that by the contract.
    fn fenced(&self) -> bool {
        self.table
            .as_ref()
            .is_none_or(|table| table.name != self.name)
    }

    /// Even splits of `min..=max` of an integer key (an index lookup each end).
    async fn integer_boundaries(&self, concurrency: usize) -> Result<Vec<Key>> {
        let key = ident(&self.table()?.key[0].name);
        let row = self
            .side
            .client
            .query_one(
                &format!(
                    "SELECT min({key})::bigint, max({key})::bigint FROM {}",
                    self.table()?.name.sql()
                ),
                &[],
            )
            .await
            .map_err(self.side.failed("cannot read the key's bounds"))?;
        let (Some(min), Some(max)): (Option<i64>, Option<i64>) = (row.get(0), row.get(1)) else {
            return Ok(Vec::new());
        };
        let span = (max as i128 - min as i128) / concurrency as i128;
        let mut boundaries: Vec<Key> = (1..concurrency as i128)
            .map(|i| vec![(min as i128 + span * i).to_string()])
            .collect();
        boundaries.dedup();
        Ok(boundaries)
    }

    /// Keys that split the table into `concurrency` parts of equal row counts.
    async fn quantile_boundaries(&self, concurrency: usize) -> Result<Vec<Key>> {
        let keys = self.table()?.key_list(None);
        let rows = self
            .side
            .client
            .query(
                &format!(
                    "SELECT k FROM (
                         SELECT k, tile, row_number() OVER (PARTITION BY tile ORDER BY ord DESC) AS last_in_tile FROM (
                             SELECT {array} AS k, row_number() OVER (ORDER BY {keys}) AS ord, ntile($1) OVER (ORDER BY {keys}) AS tile
                             FROM {source}) AS a) AS b
                     WHERE last_in_tile = 1 AND tile < $1 ORDER BY tile",
                    array = self.table()?.key_text_array(None),
                    source = self.table()?.name.sql()
                ),
                &[&(concurrency as i32)],
            )
            .await
            .map_err(self.side.failed("cannot split the source into key ranges"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// The source's side of a comparison across servers: each expression of
    /// `projection` in the text form the target's type gives it (where this server
    /// knows that type; else the expression's own text form).
    async fn compared_row(&self, projection: &Projection) -> Result<Vec<String>> {
        let types: Vec<String> = projection.iter().map(|p| p.type_name.clone()).collect();
        let known: Vec<bool> = self
            .side
            .scalar(
                "SELECT COALESCE(array_agg(to_regtype(t) IS NOT NULL ORDER BY n), '{}') FROM unnest($1::text[]) WITH ORDINALITY AS u(t, n)",
                &[&types],
                "cannot read the catalog",
            )
            .await?;
        Ok(projection
            .iter()
            .zip(known)
            .map(|(p, known)| {
                if known {
                    format!("(({})::{})::text", p.expression, p.type_name)
                } else {
                    format!("({})::text", p.expression)
                }
            })
            .collect())
    }
}

/// `<table>_old`, the name a source takes at cutover.
pub fn old_name(name: &TableName) -> TableName {
    name.sibling(&format!("{}_old", name.name))
}

#[async_trait]
impl Source for PgSource {
    fn schema(&self) -> &Schema {
        &self.schema
    }

    async fn reconnect(&mut self) -> Result<()> {
        self.side.reconnect().await?;
        self.capture.disconnected();
        Ok(())
    }

    async fn end_leftover_sessions(&mut self) -> Result<()> {
        self.side.end_leftover_sessions().await
    }

    async fn estimate_rows(&mut self) -> Result<u64> {
        let estimate: f32 = self
            .side
            .scalar(
                "SELECT reltuples FROM pg_class WHERE oid = $1",
                &[&self.table()?.oid],
                "cannot read the row estimate",
            )
            .await?;
        if estimate >= 0.0 {
            return Ok(estimate as u64);
        }
        // Never analysed: count (the table is small or new).
        let count: i64 = self
            .side
            .scalar(
                &format!("SELECT count(*) FROM {}", self.table()?.name.sql()),
                &[],
                "cannot count the source",
            )
            .await?;
        Ok(count as u64)
    }

    async fn plan_ranges(&mut self, concurrency: usize) -> Result<Vec<KeyRange>> {
        if concurrency <= 1 {
            return Ok(vec![KeyRange {
                number: 0,
                lower: None,
                upper: None,
            }]);
        }
        let key = &self.table()?.key;
        let boundaries = if key.len() == 1
            && ["smallint", "integer", "bigint"].contains(&key[0].type_sql.as_str())
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

    async fn replica_lag(&mut self) -> Result<f64> {
        self.side
            .client
            .query_one("SELECT COALESCE(max(extract(epoch FROM replay_lag)), 0)::float8 FROM pg_stat_replication", &[])
            .await
            .map(|row| row.get(0))
            .map_err(self.side.failed("cannot read the standbys' replication lag"))
    }

    async fn reader(
        &self,
        projection: &Projection,
        format: RowFormat,
    ) -> Result<Box<dyn BatchReader>> {
        let RowFormat::PostgresCopy { binary } = format else {
            return Ok(Box::new(TextReader {
                database: self.side.database.clone(),
                client: self.side.connect().await?,
                table: self.table()?.clone(),
            }));
        };
        let columns: Vec<String> = projection
            .iter()
            .map(|p| format!("({}) AS {}", p.expression, ident(&p.name)))
            .collect();
        Ok(Box::new(CopyReader {
            database: self.side.database.clone(),
            client: self.side.connect().await?,
            table: self.table()?.clone(),
            columns: columns.join(", "),
            binary,
        }))
    }

    async fn fetch(&mut self, key: &Key) -> Result<Option<Row>> {
        let sql = format!(
            "SELECT {} FROM {} AS s WHERE ({}) = {}",
            text_columns(self.table()?),
            self.table()?.name.sql(),
            self.table()?.key_list(Some("s")),
            self.table()?.key_params(1)
        );
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = key
            .iter()
            .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        let row = self
            .side
            .client
            .query_opt(&sql, &params)
            .await
            .map_err(self.side.failed("cannot read a row of the source"))?;
        Ok(row.map(|row| text_row(&row, row.len())))
    }

    async fn start_capture(&mut self) -> Result<Position> {
        self.capture
            .start(&self.side, self.table()?, self.slots_needed)
            .await
    }

    async fn read_changes(
        &mut self,
        after: &Position,
        max_changes: Option<usize>,
    ) -> Result<ChangeBatch> {
        let table = self.table.as_ref().ok_or_else(|| self.dropped())?;
        self.capture
            .read(&self.side, table, after, max_changes)
            .await
    }

    async fn confirm(&mut self, upto: &Position) -> Result<()> {
        self.capture.confirm(upto);
        Ok(())
    }

    async fn lag(&mut self) -> Result<Lag> {
        self.capture.lag(&self.side).await
    }

    async fn stop_capture(&mut self) -> Result<()> {
        if self.kind != JobKind::Copy {
            return Ok(());
        }
        self.capture.stop(&self.side).await
    }

    async fn chunks(&mut self, range: &KeyRange) -> Result<Vec<KeyRange>> {
        verify::chunks(&self.side, self.table()?, range).await
    }

    async fn digest(
        &mut self,
        chunk: &KeyRange,
        projection: &Projection,
        checksum: bool,
    ) -> Result<Digest> {
        let row = self.compared_row(projection).await?;
        verify::digest(&self.side, self.table()?, &row, chunk, checksum).await
    }

    async fn hold_writes(&mut self) -> Result<()> {
        self.side
            .client
            .batch_execute("BEGIN")
            .await
            .map_err(self.side.failed("cannot begin a verification"))?;
        let locked = self
            .ddl()
            .run(
                &[format!(
                    "LOCK TABLE {} IN SHARE MODE",
                    self.table()?.name.sql()
                )],
                "verify",
            )
            .await;
        if locked.is_err() {
            let _ = self.side.client.batch_execute("ROLLBACK").await;
        }
        locked
    }

    async fn release_writes(&mut self) -> Result<()> {
        self.side
            .client
            .batch_execute("COMMIT")
            .await
            .map_err(self.side.failed("cannot end a verification"))
    }

    async fn fence(&mut self) -> Result<()> {
        if self.fenced() {
            return Ok(());
        }
        let old = self.aside.clone();
        if self.side.exists(&old.sql()).await? {
            return Err(Error::Refused(format!(
                "cutover would rename {} to {old}, which exists already: drop or rename it first",
                self.name
            )));
        }
        // Nothing can be carried to another server.
        refuse_blocking(&self.side, self.table()?, self.kind, None).await?;
        let ddl = self.ddl();
        self.side
            .transaction("fencing the source", async {
                ddl.run(
                    &[
                        format!("LOCK TABLE {} IN EXCLUSIVE MODE", self.name.sql()),
                        format!(
                            "ALTER TABLE {} RENAME TO {}",
                            self.name.sql(),
                            ident(&old.name)
                        ),
                    ],
                    "cutover",
                )
                .await
            })
            .await?;
        self.table.as_mut().expect("not fenced, so present").name = old;
        Ok(())
    }

    async fn identity_positions(&mut self) -> Result<Vec<(String, i64)>> {
        let table = &self.table()?.name;
        let sequences = column_sequences(&self.side.client, &self.side.database, table).await?;
        Ok(sequences
            .into_iter()
            .filter_map(|s| Some((s.column, s.last_value?)))
            .collect())
    }

    async fn unfence(&mut self) -> Result<()> {
        if !self.fenced() {
            return Ok(());
        }
        self.ddl()
            .run(
                &[format!(
                    "ALTER TABLE {} RENAME TO {}",
                    self.table()?.name.sql(),
                    ident(&self.name.name)
                )],
                "unfence",
            )
            .await?;
        if let Some(table) = self.table.as_mut() {
            table.name = self.name.clone();
        }
        Ok(())
    }

    async fn contract(&mut self) -> Result<()> {
        let checkpoints = Checkpoints {
            side: &self.side,
            job: &self.job,
        };
        checkpoints.create_schema().await?;
        self.ddl()
            .run_steps("contract", &self.contract_sql.clone())
            .await
    }

    async fn forget(&mut self) -> Result<()> {
        Checkpoints {
            side: &self.side,
            job: &self.job,
        }
        .forget(false)
        .await
    }
}

/// Reads a range's batches as `COPY` data on a session of its own: first the batch's
/// last key (an index walk), then the rows up to it, streamed.
/// `s."column"::text, …` of every column of `table`, in order.
fn text_columns(table: &TableInfo) -> String {
    let columns: Vec<String> = table
        .columns
        .iter()
        .map(|c| format!("s.{}::text", ident(&c.name)))
        .collect();
    columns.join(", ")
}

/// The first `width` values of `row`, selected as text.
fn text_row(row: &tokio_postgres::Row, width: usize) -> Row {
    Row((0..width)
        .map(|i| match row.get::<_, Option<String>>(i) {
            Some(text) => Value::Text(text),
            None => Value::Null,
        })
        .collect())
}

/// Batches as rows of text values (each column's text form, in the schema's order), for
/// sinks of other stores.
struct TextReader {
    database: String,
    client: Client,
    table: TableInfo,
}

#[async_trait]
impl BatchReader for TextReader {
    async fn read(&mut self, range: &KeyRange, after: Option<&Key>, limit: usize) -> Result<Batch> {
        let sql = format!(
            "SELECT {columns}, {key} FROM {source} AS s WHERE {within} ORDER BY {keys} LIMIT {limit}",
            columns = text_columns(&self.table),
            key = self.table.key_text_array(Some("s")),
            source = self.table.name.sql(),
            within = self
                .table
                .range_condition_literal(Some("s"), after, range.upper.as_ref()),
            keys = self.table.key_list(Some("s")),
        );
        let found = self.client.query(&sql, &[]).await.map_err(|e| {
            Error::database(
                &self.database,
                format!("batch of range {} failed", range.number),
                e,
            )
        })?;
        let width = self.table.columns.len();
        let last_key: Option<Key> = found.last().map(|row| row.get(width));
        let rows = found
            .iter()
            .map(|row| text_row(row, width))
            .collect::<Vec<_>>();
        Ok(Batch {
            done: rows.len() < limit,
            rows: Rows::Values(rows),
            last_key: last_key.or_else(|| after.cloned()),
        })
    }
}

struct CopyReader {
    database: String,
    client: Client,
    table: TableInfo,
    /// `(expression) AS "column", …` of the projection.
    columns: String,
    binary: bool,
}

#[async_trait]
impl BatchReader for CopyReader {
    async fn read(&mut self, range: &KeyRange, after: Option<&Key>, limit: usize) -> Result<Batch> {
        let failed = |context: &str| {
            let database = self.database.clone();
            let context = context.to_string();
            move |e| Error::database(&database, context, e)
        };
        let within = self
            .table
            .range_condition_literal(Some("s"), after, range.upper.as_ref());
        let last: Option<Key> = self
            .client
            .query_opt(
                &format!(
                    "SELECT {array} FROM {source} AS s WHERE {within} ORDER BY {keys} OFFSET {skip} LIMIT 1",
                    array = self.table.key_text_array(Some("s")),
                    source = self.table.name.sql(),
                    keys = self.table.key_list(Some("s")),
                    skip = limit.saturating_sub(1),
                ),
                &[],
            )
            .await
            .map_err(failed(&format!("batch of range {} failed", range.number)))?
            .map(|r| r.get(0));
        let done = last.is_none();
        let upto = last.as_ref().or(range.upper.as_ref());
        let condition = self.table.range_condition_literal(Some("s"), after, upto);
        let copy = format!(
            "COPY (SELECT {columns} FROM {source} AS s WHERE {condition} ORDER BY {keys}) TO STDOUT (FORMAT {format})",
            columns = self.columns,
            source = self.table.name.sql(),
            keys = self.table.key_list(Some("s")),
            format = if self.binary { "binary" } else { "text" },
        );
        let data = self
            .client
            .copy_out(&copy)
            .await
            .map_err(failed(&format!("batch of range {} failed", range.number)))?;
        let database = self.database.clone();
        let data = data
            .map_err(move |e| Error::database(&database, "reading a batch failed", e))
            .boxed();
        Ok(Batch {
            rows: Rows::PostgresCopy {
                binary: self.binary,
                data,
            },
            last_key: last.or_else(|| after.cloned()),
            done,
        })
    }
}
