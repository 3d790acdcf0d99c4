//! Applies neutral changes of the source ([`Change`]) to a PostgreSQL target, inside the
//! caller's transaction, idempotently: upserts of the new row (through the job's
//! projection), deletes by key, a key change deletes the old key. Replaying a suffix of
//! changes in commit order therefore converges on the source's state whatever the
//! target already held.
//!
//! An upsert may leave unchanged values out ([`Value::Unchanged`], PostgreSQL's TOASTed
//! values): they are kept from the target's row of the same column name, or, when the
//! target never had the row, the row is read from the source as it is now; a
//! projection that needs one otherwise is refused with a hint. Such an update that
//! changes the key first clears the new key, which the copy may have written from a
//! later state (it reached the old key before the change and the new one after).

use std::collections::HashMap;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use super::table::{ident, TableInfo};
use crate::engine::row::{Change, Key, Projected, Projection, Row, Schema, Value};
use crate::engine::source::Source;
use crate::error::{Error, Result};

/// Whether `change` touches only its own key's row and carries it whole (neither its
/// key changed nor values were left out): such changes of different keys commute.
pub fn touches_one_key(change: &Change) -> bool {
    match change {
        Change::Upsert { old_key, row } => old_key.is_none() && !row.0.contains(&Value::Unchanged),
        Change::Delete { .. } => true,
    }
}

/// Statements sent in one pipelined burst at most.
const PIPELINE_DEPTH: usize = 1_000;

pub struct ChangeApply {
    database: String,
    /// The source's rows as changes carry them.
    source: Schema,
    source_name: String,
    target: TableInfo,
    projection: Projection,
    upsert: Option<Statement>,
    delete: Option<Statement>,
    partial: HashMap<Vec<bool>, Statement>,
    /// Upserts and deletes waiting to be sent together (pipelined, in order).
    queued: Vec<(Statement, Vec<Option<String>>)>,
}

impl ChangeApply {
    pub fn new(
        database: &str,
        source: Schema,
        source_name: String,
        target: TableInfo,
        projection: Projection,
    ) -> ChangeApply {
        ChangeApply {
            database: database.to_string(),
            source,
            source_name,
            target,
            projection,
            upsert: None,
            delete: None,
            partial: HashMap::new(),
            queued: Vec::new(),
        }
    }

    /// Applies `changes` in order within the caller's transaction; `source` gives rows
    /// that a change left incomplete. Returns how many changes it applied.
    pub async fn apply(
        &mut self,
        client: &Client,
        changes: &[Change],
        source: &mut dyn Source,
    ) -> Result<u64> {
        // Whatever a failed call queued was rolled back with its transaction.
        self.queued.clear();
        for change in changes {
            match change {
                Change::Upsert { old_key, row } => {
                    self.update(client, old_key.as_ref(), row, source).await?
                }
                Change::Delete { key } => self.delete_key(client, key).await?,
            }
        }
        self.flush(client).await?;
        Ok(changes.len() as u64)
    }

    /// Applies `changes`, each touching one key with the whole row
    /// ([`touches_one_key`]), in order within the caller's transaction.
    pub async fn apply_keyed(&mut self, client: &Client, changes: &[&Change]) -> Result<()> {
        self.queued.clear();
        for change in changes {
            match change {
                Change::Upsert { row, .. } => self.upsert(client, &row.0).await?,
                Change::Delete { key } => self.delete_key(client, key).await?,
            }
        }
        self.flush(client).await
    }

    async fn update(
        &mut self,
        client: &Client,
        old_key: Option<&Key>,
        row: &Row,
        source: &mut dyn Source,
    ) -> Result<()> {
        let new_key = self.source.key_of(row);
        if row.0.contains(&Value::Unchanged) {
            let key = old_key.unwrap_or(&new_key).clone();
            if key != new_key {
                // The copy may have reached the new key after this change, and the old
                // key before it: the target then holds both. The row under the new
                // key is a later state that the changes after this one reproduce.
                self.delete_key(client, &new_key).await?;
            }
            if self.partial_update(client, key, &row.0).await? == 0 {
                // The target never had the row under that key (its key changed before
                // the copy reached it), so the values left out are nowhere in the
                // stream: take the row from the source as it is now. Later changes,
                // replayed in order, bring it to its final state.
                if let Some(current) = source.fetch(&new_key).await? {
                    self.upsert(client, &current.0).await?;
                }
            }
            return Ok(());
        }
        if let Some(old_key) = old_key {
            self.delete_key(client, old_key).await?;
        }
        self.upsert(client, &row.0).await
    }

    async fn upsert(&mut self, client: &Client, row: &[Value]) -> Result<()> {
        if self.upsert.is_none() {
            let sets: Vec<String> = self
                .written(true)
                .filter(|p| !self.target.key.iter().any(|k| k.name == p.name))
                .map(|p| format!("{col} = EXCLUDED.{col}", col = ident(&p.name)))
                .collect();
            let conflict = if sets.is_empty() {
                "DO NOTHING".to_string()
            } else {
                format!("DO UPDATE SET {}", sets.join(", "))
            };
            let sql = format!(
                "INSERT INTO {target} ({columns}) OVERRIDING SYSTEM VALUE SELECT {exprs} FROM (SELECT {values}) AS s ON CONFLICT ({keys}) {conflict}",
                target = self.target.name.sql(),
                columns = self.column_list(false),
                exprs = self.expression_list(false),
                values = self.source_values(None).0,
                keys = self.target.key_list(None),
            );
            self.upsert = Some(self.prepare(client, &sql).await?);
        }
        let values: Vec<Option<String>> = row.iter().map(Value::to_sql_text).collect();
        let statement = self.upsert.clone().expect("prepared above");
        self.enqueue(client, statement, values).await
    }

    async fn delete_key(&mut self, client: &Client, key: &Key) -> Result<()> {
        if self.delete.is_none() {
            let sql = format!(
                "DELETE FROM {} WHERE ({}) = {}",
                self.target.name.sql(),
                self.target.key_list(None),
                self.key_params(1)
            );
            self.delete = Some(self.prepare(client, &sql).await?);
        }
        let statement = self.delete.clone().expect("prepared above");
        self.enqueue(client, statement, key.iter().cloned().map(Some).collect())
            .await
    }

    /// An update with values the server left out: they come from the target's row.
    /// Returns how many rows it updated (0 when the target has no row of that key).
    async fn partial_update(&mut self, client: &Client, key: Key, row: &[Value]) -> Result<u64> {
        let mask: Vec<bool> = row.iter().map(|v| *v == Value::Unchanged).collect();
        if !self.partial.contains_key(&mask) {
            for (field, unchanged) in self.source.fields.iter().zip(&mask) {
                if *unchanged && self.target.column(&field.name).is_none() {
                    return Err(Error::Refused(format!(
                        "an update of {} left column `{}` out (unchanged TOAST value) and the target has no such column to keep it from: \
                         set `ALTER TABLE {} REPLICA IDENTITY FULL` for the job's duration",
                        self.source_name, field.name, self.source_name
                    )));
                }
            }
            let (values, next) = self.source_values(Some(&mask));
            let sql = format!(
                "UPDATE {target} AS t SET ({columns}) = (SELECT {exprs} FROM (SELECT {values}) AS s) WHERE ({keys}) = {key_params}",
                target = self.target.name.sql(),
                columns = self.column_list(true),
                exprs = self.expression_list(true),
                keys = self.target.key_list(Some("t")),
                key_params = self.key_params(next),
            );
            let statement = self.prepare(client, &sql).await?;
            self.partial.insert(mask.clone(), statement);
        }
        let mut values: Vec<Option<String>> = row
            .iter()
            .zip(&mask)
            .filter(|(_, unchanged)| !**unchanged)
            .map(|(v, _)| v.to_sql_text())
            .collect();
        values.extend(key.into_iter().map(Some));
        // It reads the target's row: everything queued before it must be there.
        self.flush(client).await?;
        let statement = self.partial[&mask].clone();
        self.execute(client, &statement, &values).await
    }

    /// `$1::text::integer AS "id", …`: the source row from text parameters, numbered
    /// from 1 over the columns sent; a column marked unchanged reads the target's
    /// current value instead. Returns the SQL and the next free parameter number.
    fn source_values(&self, unchanged: Option<&[bool]>) -> (String, usize) {
        let mut next = 1;
        let values: Vec<String> = self
            .source
            .fields
            .iter()
            .enumerate()
            .map(|(i, f)| {
                if unchanged.is_some_and(|mask| mask[i]) {
                    format!("t.{col} AS {col}", col = ident(&f.name))
                } else {
                    next += 1;
                    format!("${}::text::{} AS {}", next - 1, f.type_name, ident(&f.name))
                }
            })
            .collect();
        (values.join(", "), next)
    }

    /// `($n::text::t1, …)`: the source's key from text parameters, from `$first`.
    fn key_params(&self, first: usize) -> String {
        let params: Vec<String> = self
            .source
            .key
            .iter()
            .enumerate()
            .map(|(i, &k)| format!("${}::text::{}", first + i, self.source.fields[k].type_name))
            .collect();
        format!("({})", params.join(", "))
    }

    /// The projected columns an insert writes, or (`updating`) an update may set: not
    /// an always-identity column, which keeps the value its row was inserted with.
    fn written(&self, updating: bool) -> impl Iterator<Item = &Projected> {
        self.projection.iter().filter(move |p| {
            !updating
                || !self
                    .target
                    .column(&p.name)
                    .is_some_and(|c| c.always_identity)
        })
    }

    fn column_list(&self, updating: bool) -> String {
        let names: Vec<String> = self.written(updating).map(|p| ident(&p.name)).collect();
        names.join(", ")
    }

    fn expression_list(&self, updating: bool) -> String {
        let exprs: Vec<String> = self
            .written(updating)
            .map(|p| format!("({})", p.expression))
            .collect();
        exprs.join(", ")
    }

    /// Queues a statement whose result nothing waits for; sent in batches.
    async fn enqueue(
        &mut self,
        client: &Client,
        statement: Statement,
        values: Vec<Option<String>>,
    ) -> Result<()> {
        self.queued.push((statement, values));
        if self.queued.len() >= PIPELINE_DEPTH {
            self.flush(client).await?;
        }
        Ok(())
    }

    /// Sends every queued statement at once: tokio-postgres pipelines requests that are
    /// in flight together and the server runs them in the order sent, so one round trip
    /// serves the whole batch.
    async fn flush(&mut self, client: &Client) -> Result<()> {
        let queued = std::mem::take(&mut self.queued);
        let sends = queued.iter().map(|(statement, values)| async move {
            let params: Vec<&(dyn ToSql + Sync)> =
                values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
            client.execute(statement, &params).await
        });
        futures::future::try_join_all(sends)
            .await
            .map(drop)
            .map_err(|e| Error::database(&self.database, "a catch-up change failed", e))
    }

    async fn prepare(&self, client: &Client, sql: &str) -> Result<Statement> {
        client
            .prepare(sql)
            .await
            .map_err(|e| Error::database(&self.database, "cannot prepare a catch-up statement", e))
    }

    async fn execute(
        &self,
        client: &Client,
        statement: &Statement,
        values: &[Option<String>],
    ) -> Result<u64> {
        let params: Vec<&(dyn ToSql + Sync)> =
            values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        client
            .execute(statement, &params)
            .await
            .map_err(|e| Error::database(&self.database, "a catch-up change failed", e))
    }
}
