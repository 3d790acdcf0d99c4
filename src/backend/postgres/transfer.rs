//! A table to and from JSON Lines: each row as `to_jsonb` writes it (timestamps in
//! ISO 8601, numerics with every digit, `bytea` as `\x…`, arrays and JSON nested), read
//! back by `jsonb_populate_recordset` into the same types.
//!
//! Invariants: an export reads in primary-key order, each batch after the key of the
//! previous batch's last row (taken from that row's own line, so the line is the
//! cursor); an import upserts by primary key (writing a batch twice changes nothing),
//! leaves generated columns to the table, and at the end moves each sequence of the
//! table past the values imported.

use async_trait::async_trait;
use serde_json::Value;
use tokio_postgres::Client;

use super::connect;
use super::table::{column_sequences, ident, TableInfo, TableName};
use crate::error::{Error, Result};
use crate::ops::transfer::{Chunk, Exporter, Importer};
use crate::secret::SecretUrl;

async fn table(client: &Client, database: &str, name: &str) -> Result<TableInfo> {
    let name = TableName::parse(name);
    TableInfo::load(client, database, &name, None)
        .await
        .map_err(|error| match error {
            Error::Refused(reason) if reason.contains("has no primary key") => Error::Refused(format!(
                "table {name} has no primary key: export and import need one, to read in order and to write each row once"
            )),
            other => other,
        })
}

pub struct TableExport {
    database: String,
    client: Client,
    select: String,
    after: String,
    estimate: String,
}

impl TableExport {
    /// `filter` is an SQL condition on the table's columns (`--where`).
    pub async fn open(
        database: &str,
        url: &SecretUrl,
        name: &str,
        filter: Option<&str>,
    ) -> Result<TableExport> {
        let client = connect(database, url).await?;
        let info = table(&client, database, name).await?;
        let keys = info.key_list(Some("t"));
        let restriction = filter
            .map(|f| format!("({f})"))
            .unwrap_or_else(|| "true".into());
        let table_sql = info.name.sql();
        Ok(TableExport {
            database: database.to_string(),
            select: format!(
                "SELECT to_jsonb(t)::text FROM {table_sql} t WHERE {restriction} ORDER BY {keys} LIMIT $1"
            ),
            after: format!(
                "SELECT to_jsonb(t)::text FROM {table_sql} t WHERE {restriction} AND ({keys}) > (SELECT {} FROM jsonb_populate_record(NULL::{table_sql}, $2::text::jsonb) r) ORDER BY {keys} LIMIT $1",
                info.key_list(Some("r"))
            ),
            estimate: match filter {
                Some(_) => format!("SELECT count(*) FROM {table_sql} t WHERE {restriction}"),
                None => format!("SELECT GREATEST(reltuples, 0)::bigint FROM pg_class WHERE oid = {}", info.oid),
            },
            client,
        })
    }
}

#[async_trait]
impl Exporter for TableExport {
    async fn total(&mut self) -> Result<Option<u64>> {
        let row = self
            .client
            .query_one(&self.estimate, &[])
            .await
            .map_err(|e| Error::database(&self.database, "cannot count the rows", e))?;
        Ok(Some(row.get::<_, i64>(0) as u64).filter(|n| *n > 0))
    }

    async fn next(&mut self, cursor: Option<&Value>, size: usize) -> Result<Chunk> {
        let limit = size as i64;
        let rows = match cursor.and_then(Value::as_str) {
            Some(last) => self.client.query(&self.after, &[&limit, &last]).await,
            None => self.client.query(&self.select, &[&limit]).await,
        }
        .map_err(|e| Error::database(&self.database, "cannot read the table", e))?;
        let lines: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
        Ok(Chunk {
            cursor: lines.last().map(|line| Value::String(line.clone())),
            lines,
            restarted: false,
        })
    }
}

pub struct TableImport {
    database: String,
    client: Client,
    info: TableInfo,
    upsert: String,
}

impl TableImport {
    pub async fn open(database: &str, url: &SecretUrl, name: &str) -> Result<TableImport> {
        let client = connect(database, url).await?;
        let info = table(&client, database, name).await?;
        let columns: Vec<String> = info.columns.iter().map(|c| ident(&c.name)).collect();
        let keys = info.key_names();
        let updates: Vec<String> = info
            .columns
            .iter()
            .filter(|c| !keys.contains(&c.name))
            .map(|c| format!("{0} = EXCLUDED.{0}", ident(&c.name)))
            .collect();
        let on_conflict = if updates.is_empty() {
            "DO NOTHING".to_string()
        } else {
            format!("DO UPDATE SET {}", updates.join(", "))
        };
        let table_sql = info.name.sql();
        let upsert = format!(
            "INSERT INTO {table_sql} ({list}) OVERRIDING SYSTEM VALUE SELECT {list} FROM jsonb_populate_recordset(NULL::{table_sql}, $1::text::jsonb) ON CONFLICT ({}) {on_conflict}",
            info.key_list(None),
            list = columns.join(", ")
        );
        Ok(TableImport {
            database: database.to_string(),
            client,
            info,
            upsert,
        })
    }
}

#[async_trait]
impl Importer for TableImport {
    async fn write(&mut self, lines: &[String], first_line: u64) -> Result<()> {
        for (n, line) in lines.iter().enumerate() {
            match serde_json::from_str::<Value>(line) {
                Ok(Value::Object(_)) => {}
                _ => {
                    return Err(Error::Refused(format!(
                        "line {}: not a JSON object (a row as `switchyard export` writes it)",
                        first_line + n as u64
                    )))
                }
            }
        }
        let batch = format!("[{}]", lines.join(","));
        self.client
            .execute(&self.upsert, &[&batch])
            .await
            .map(drop)
            .map_err(|e| {
                Error::database(
                    &self.database,
                    format!(
                        "cannot import lines {}–{} into {}",
                        first_line,
                        first_line + lines.len() as u64 - 1,
                        self.info.name
                    ),
                    e,
                )
            })
    }

    async fn finish(&mut self) -> Result<()> {
        for sequence in column_sequences(&self.client, &self.database, &self.info.name).await? {
            // Only when rows hold values: an empty table leaves its sequence as it is.
            let statement = format!(
                "SELECT setval('{}', GREATEST(m, {})) FROM (SELECT max({})::bigint AS m FROM {}) x WHERE m IS NOT NULL",
                sequence.sequence.replace('\'', "''"),
                sequence.last_value.unwrap_or(0),
                ident(&sequence.column),
                self.info.name.sql(),
            );
            self.client.query(&statement, &[]).await.map_err(|e| {
                Error::database(
                    &self.database,
                    format!(
                        "cannot move sequence {} past the imported values",
                        sequence.sequence
                    ),
                    e,
                )
            })?;
        }
        Ok(())
    }
}
