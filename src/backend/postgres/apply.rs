//! Applies decoded logical-replication changes of the source to the target, inside the
//! caller's transaction, idempotently: inserts and updates are upserts of the new row
//! (through the job's transform), deletes are by key, a key change deletes the old key.
//! Replaying a suffix of changes in commit order therefore converges on the source's
//! state whatever the target already held.
//!
//! An update leaves unchanged TOASTed values out. They are taken from the old row when
//! the source sends it (REPLICA IDENTITY FULL), else kept from the target's row of the
//! same column name; a transform that needs one otherwise is refused with a hint.

use std::collections::HashMap;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use super::pgoutput::{Message, OldRow, Value};
use super::table::{ident, TableInfo};
use crate::error::{Error, Result};

/// What one call applied.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Applied {
    pub changes: u64,
    /// The end LSN of the last transaction applied, if any.
    pub end_lsn: Option<u64>,
    /// Every transaction committed before the read began was read (not cut short).
    pub drained: bool,
}

/// Statements sent in one pipelined burst at most.
const PIPELINE_DEPTH: usize = 1_000;

pub struct ChangeApply {
    pub database: String,
    pub source: TableInfo,
    pub target: TableInfo,
    /// `(target column, expression over the source row)`.
    pub columns: Vec<(String, String)>,
    upsert: Option<Statement>,
    delete: Option<Statement>,
    partial: HashMap<Vec<bool>, Statement>,
    refetch: Option<Statement>,
    /// Upserts and deletes waiting to be sent together (pipelined, in order).
    queued: Vec<(Statement, Vec<Option<String>>)>,
}

impl ChangeApply {
    pub fn new(
        database: &str,
        source: TableInfo,
        target: TableInfo,
        columns: Vec<(String, String)>,
    ) -> ChangeApply {
        ChangeApply {
            database: database.to_string(),
            source,
            target,
            columns,
            upsert: None,
            delete: None,
            partial: HashMap::new(),
            refetch: None,
            queued: Vec::new(),
        }
    }

    /// Applies decoded `messages` (in order) of the source (`relations` says which
    /// relation ids are the source), skipping transactions that committed before
    /// `applied_upto` (already applied), within the caller's transaction.
    pub async fn apply(
        &mut self,
        client: &Client,
        messages: &[Message],
        relations: &HashMap<u32, bool>,
        applied_upto: u64,
    ) -> Result<Applied> {
        // Whatever a failed call queued was rolled back with its transaction.
        self.queued.clear();
        let mut applied = Applied::default();
        let mut skip = false;
        let is_source = |relation: &u32| -> Result<bool> {
            relations.get(relation).copied().ok_or_else(|| {
                Error::State(format!(
                    "the replication stream changed relation {relation} before describing it; nothing was applied from it (run the job again)"
                ))
            })
        };
        for message in messages {
            match message {
                Message::Begin { final_lsn, .. } => skip = *final_lsn < applied_upto,
                Message::Commit { end_lsn } if !skip => applied.end_lsn = Some(*end_lsn),
                Message::Truncate {
                    relations: truncated,
                } if truncated.iter().any(|r| relations.get(r) == Some(&true)) => {
                    return Err(Error::Refused(format!(
                        "{} was truncated during the job; a truncate cannot be replayed row by row: abort the job and start it again",
                        self.source.name
                    )));
                }
                Message::Insert { relation, new } if !skip && is_source(relation)? => {
                    self.upsert(client, new).await?;
                    applied.changes += 1;
                }
                Message::Update { relation, old, new } if !skip && is_source(relation)? => {
                    self.update(client, old.as_ref(), new.clone()).await?;
                    applied.changes += 1;
                }
                Message::Delete { relation, old_key } if !skip && is_source(relation)? => {
                    self.delete(client, old_key).await?;
                    applied.changes += 1;
                }
                _ => {}
            }
        }
        self.flush(client).await?;
        Ok(applied)
    }

    fn key_positions(&self) -> Vec<usize> {
        self.source
            .key
            .iter()
            .map(|k| {
                self.source
                    .columns
                    .iter()
                    .position(|c| c.name == k.name)
                    .expect("key columns are columns")
            })
            .collect()
    }

    fn key_values(&self, tuple: &[Value]) -> Vec<Option<String>> {
        self.key_positions()
            .into_iter()
            .map(|i| text(&tuple[i]))
            .collect()
    }

    async fn update(
        &mut self,
        client: &Client,
        old: Option<&OldRow>,
        mut new: Vec<Value>,
    ) -> Result<()> {
        // Unchanged TOASTed values: the old row has them when the source sends it whole
        // (a key-only old row has nulls in their place).
        if let Some(OldRow::Full(previous)) = old {
            for (value, previous) in new.iter_mut().zip(previous) {
                if *value == Value::UnchangedToast && *previous != Value::UnchangedToast {
                    *value = previous.clone();
                }
            }
        }
        let old_key = old.map(|o| self.key_values(o.values()));
        let new_key = self.key_values(&new);
        if new.contains(&Value::UnchangedToast) {
            let key = old_key.unwrap_or_else(|| new_key.clone());
            if self.partial_update(client, key, &new).await? == 0 {
                // The target never had the row under that key (its key changed before
                // the copy reached it), so the values left out are nowhere in the
                // stream: take the row from the source as it is now. Later changes,
                // replayed in order, bring it to its final state.
                self.refetch(client, &new_key).await?;
            }
            return Ok(());
        }
        if let Some(old_key) = old_key.filter(|k| *k != new_key) {
            self.delete_key(client, &old_key).await?;
        }
        self.upsert(client, &new).await
    }

    async fn upsert(&mut self, client: &Client, row: &[Value]) -> Result<()> {
        if self.upsert.is_none() {
            let sets: Vec<String> = self
                .columns
                .iter()
                .filter(|(c, _)| !self.target.key.iter().any(|k| &k.name == c))
                .map(|(c, _)| format!("{col} = EXCLUDED.{col}", col = ident(c)))
                .collect();
            let conflict = if sets.is_empty() {
                "DO NOTHING".to_string()
            } else {
                format!("DO UPDATE SET {}", sets.join(", "))
            };
            let sql = format!(
                "INSERT INTO {target} ({columns}) SELECT {exprs} FROM (SELECT {values}) AS s ON CONFLICT ({keys}) {conflict}",
                target = self.target.name.sql(),
                columns = self.columns.iter().map(|(c, _)| ident(c)).collect::<Vec<_>>().join(", "),
                exprs = self.columns.iter().map(|(_, e)| format!("({e})")).collect::<Vec<_>>().join(", "),
                values = self.source_values(None).0,
                keys = self.target.key_list(None),
            );
            self.upsert = Some(self.prepare(client, &sql).await?);
        }
        let values: Vec<Option<String>> = row.iter().map(text).collect();
        let statement = self.upsert.clone().expect("prepared above");
        self.enqueue(client, statement, values).await
    }

    async fn delete(&mut self, client: &Client, old_key: &[Value]) -> Result<()> {
        let key = self.key_values(old_key);
        self.delete_key(client, &key).await
    }

    async fn delete_key(&mut self, client: &Client, key: &[Option<String>]) -> Result<()> {
        if self.delete.is_none() {
            let sql = format!(
                "DELETE FROM {} WHERE ({}) = {}",
                self.target.name.sql(),
                self.target.key_list(None),
                self.source.key_params(1)
            );
            self.delete = Some(self.prepare(client, &sql).await?);
        }
        let statement = self.delete.clone().expect("prepared above");
        self.enqueue(client, statement, key.to_vec()).await
    }

    /// Upserts the source's current row of `key` (if it still exists) into the target.
    async fn refetch(&mut self, client: &Client, key: &[Option<String>]) -> Result<()> {
        if self.refetch.is_none() {
            let sets: Vec<String> = self
                .columns
                .iter()
                .map(|(c, _)| format!("{col} = EXCLUDED.{col}", col = ident(c)))
                .collect();
            let sql = format!(
                "INSERT INTO {target} ({columns}) SELECT {exprs} FROM {source} AS s WHERE ({source_keys}) = {key_params}
                 ON CONFLICT ({keys}) DO UPDATE SET {sets}",
                target = self.target.name.sql(),
                columns = self.columns.iter().map(|(c, _)| ident(c)).collect::<Vec<_>>().join(", "),
                exprs = self.columns.iter().map(|(_, e)| format!("({e})")).collect::<Vec<_>>().join(", "),
                source = self.source.name.sql(),
                source_keys = self.source.key_list(Some("s")),
                key_params = self.source.key_params(1),
                keys = self.target.key_list(None),
                sets = sets.join(", "),
            );
            self.refetch = Some(self.prepare(client, &sql).await?);
        }
        let statement = self.refetch.clone().expect("prepared above");
        self.execute(client, &statement, key).await.map(drop)
    }

    /// An update with values the server left out: they come from the target's row.
    /// Returns how many rows it updated (0 when the target has no row of that key).
    async fn partial_update(
        &mut self,
        client: &Client,
        key: Vec<Option<String>>,
        row: &[Value],
    ) -> Result<u64> {
        let mask: Vec<bool> = row.iter().map(|v| *v == Value::UnchangedToast).collect();
        if !self.partial.contains_key(&mask) {
            for (column, unchanged) in self.source.columns.iter().zip(&mask) {
                if *unchanged && self.target.column(&column.name).is_none() {
                    return Err(Error::Refused(format!(
                        "an update of {} left column `{}` out (unchanged TOAST value) and the target has no such column to keep it from: \
                         set `ALTER TABLE {} REPLICA IDENTITY FULL` for the job's duration",
                        self.source.name, column.name, self.source.name
                    )));
                }
            }
            let (values, next) = self.source_values(Some(&mask));
            let sql = format!(
                "UPDATE {target} AS t SET ({columns}) = (SELECT {exprs} FROM (SELECT {values}) AS s) WHERE ({keys}) = {key_params}",
                target = self.target.name.sql(),
                columns = self.columns.iter().map(|(c, _)| ident(c)).collect::<Vec<_>>().join(", "),
                exprs = self.columns.iter().map(|(_, e)| format!("({e})")).collect::<Vec<_>>().join(", "),
                keys = self.target.key_list(Some("t")),
                key_params = self.source.key_params(next),
            );
            let statement = self.prepare(client, &sql).await?;
            self.partial.insert(mask.clone(), statement);
        }
        let mut values: Vec<Option<String>> = row
            .iter()
            .zip(&mask)
            .filter(|(_, unchanged)| !**unchanged)
            .map(|(v, _)| text(v))
            .collect();
        values.extend(key);
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
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if unchanged.is_some_and(|mask| mask[i]) {
                    format!("t.{col} AS {col}", col = ident(&c.name))
                } else {
                    next += 1;
                    format!("${}::text::{} AS {}", next - 1, c.type_sql, ident(&c.name))
                }
            })
            .collect();
        (values.join(", "), next)
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

fn text(value: &Value) -> Option<String> {
    match value {
        Value::Text(text) => Some(text.clone()),
        Value::Null | Value::UnchangedToast => None,
    }
}
