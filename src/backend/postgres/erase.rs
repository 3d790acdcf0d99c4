//! Erasure on PostgreSQL: every entry of the database in one transaction (all erased,
//! or nothing), each statement under a lock timeout so that a busy table fails the
//! erasure instead of queueing the application behind it.

use super::connect;
use super::table::{ident, TableName};
use crate::error::{Error, Result};
use crate::ops::erase::{Action, Entry};
use crate::secret::SecretUrl;

const LOCK_TIMEOUT: &str = "10s";

/// The rows each entry erased (or, in a dry run, matches).
pub async fn erase(
    database: &str,
    url: &SecretUrl,
    entries: &[&Entry],
    subject: &str,
    dry_run: bool,
) -> Result<Vec<u64>> {
    let mut client = connect(database, url).await?;
    let fail = |context: String| move |e| Error::database(database, &context, e);
    let transaction = client
        .transaction()
        .await
        .map_err(fail("cannot begin the erasure".into()))?;
    transaction
        .batch_execute(&format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
        .await
        .map_err(fail("cannot set lock_timeout".into()))?;
    let mut counts = Vec::new();
    for entry in entries {
        let table = TableName::parse(entry.target());
        let column_type: Option<String> = transaction
            .query_opt(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute
                 WHERE attrelid = to_regclass($1) AND attname = $2 AND NOT attisdropped AND attnum > 0",
                &[&table.sql(), &entry.field],
            )
            .await
            .map_err(fail(format!("cannot read the columns of {table}")))?
            .map(|row| row.get(0));
        let Some(column_type) = column_type else {
            return Err(Error::Refused(format!(
                "database `{database}`: {table} has no column `{}` (or there is no table {table}); nothing was erased",
                entry.field
            )));
        };
        let filter = format!("{} = CAST($1::text AS {column_type})", ident(&entry.field));
        let context = format!("cannot erase from {table}");
        let count = if dry_run {
            let row = transaction
                .query_one(
                    &format!("SELECT count(*) FROM {} WHERE {filter}", table.sql()),
                    &[&subject],
                )
                .await
                .map_err(fail(context))?;
            row.get::<_, i64>(0) as u64
        } else {
            let statement = match entry.action {
                Action::Delete => format!("DELETE FROM {} WHERE {filter}", table.sql()),
                Action::Anonymise => {
                    let assignments: Vec<String> = entry
                        .set
                        .iter()
                        .map(|(column, expression)| {
                            format!(
                                "{} = {}",
                                ident(column),
                                expression.as_str().unwrap_or("NULL")
                            )
                        })
                        .collect();
                    format!(
                        "UPDATE {} SET {} WHERE {filter}",
                        table.sql(),
                        assignments.join(", ")
                    )
                }
            };
            transaction
                .execute(&statement, &[&subject])
                .await
                .map_err(fail(context))?
        };
        counts.push(count);
    }
    let end = if dry_run {
        transaction.rollback().await
    } else {
        transaction.commit().await
    };
    end.map_err(fail("cannot commit the erasure".into()))?;
    Ok(counts)
}
