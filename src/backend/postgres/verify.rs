//! Verification: the source's key ranges split into chunks of bounded size, and each
//! chunk compared by count and content hash. The hash is
//! `sum(hashtextextended(ROW(columns)::text, 0))` over the target's columns (summed
//! exactly: `sum` of `bigint` is `numeric`), computed
//! the same way on each server (job sessions share text formats, see
//! [`super::session`]), or in one statement when both tables are in one database.

use tokio_postgres::types::ToSql;

use super::session::Side;
use super::table::{ident, TableInfo};
use crate::engine::progress::KeyRange;
use crate::engine::row::{Digest, Key, Projection};
use crate::error::Result;

/// Rows in one verification chunk: the most writes wait for in a consistent check.
const CHUNK_ROWS: i64 = 20_000;

/// Key bounds as text parameters, lower then upper (when present).
pub fn key_params<'a>(
    lower: &'a Option<Key>,
    upper: &'a Option<Key>,
) -> Vec<&'a (dyn ToSql + Sync)> {
    lower
        .iter()
        .chain(upper.iter())
        .flatten()
        .map(|v| v as &(dyn ToSql + Sync))
        .collect()
}

/// Splits `range` of `table` into chunks of at most [`CHUNK_ROWS`] keys (an index walk).
pub async fn chunks(side: &Side, table: &TableInfo, range: &KeyRange) -> Result<Vec<KeyRange>> {
    let mut chunks = Vec::new();
    let mut lower = range.lower.clone();
    loop {
        let (condition, next) =
            table.range_condition(Some("s"), lower.is_some(), range.upper.is_some(), 1);
        let sql = format!(
            "SELECT {array} FROM {source} AS s WHERE {condition} ORDER BY {keys} OFFSET ${next} LIMIT 1",
            array = table.key_text_array(Some("s")),
            source = table.name.sql(),
            keys = table.key_list(Some("s")),
        );
        let offset = CHUNK_ROWS - 1;
        let mut params = key_params(&lower, &range.upper);
        params.push(&offset);
        let upper: Option<Key> = side
            .client
            .query_opt(&sql, &params)
            .await
            .map_err(side.failed("cannot split a range for verification"))?
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

/// The content hash of `row` (SQL expressions over `s`) as text; empty when only
/// counting.
fn hash_of(row: &[String], checksum: bool) -> String {
    if checksum {
        format!(
            "COALESCE(sum(hashtextextended(ROW({})::text, 0)), 0)::text",
            row.join(", ")
        )
    } else {
        // Counting only: an aggregate all the same, so the query gives one row.
        "''::text || count(*) * 0".to_string()
    }
}

/// The digest of `row` over the rows of `chunk` in `table`.
pub async fn digest(
    side: &Side,
    table: &TableInfo,
    row: &[String],
    chunk: &KeyRange,
    checksum: bool,
) -> Result<Digest> {
    let (condition, _) =
        table.range_condition(Some("s"), chunk.lower.is_some(), chunk.upper.is_some(), 1);
    let sql = format!(
        "SELECT count(*), {} FROM {} AS s WHERE {condition}",
        hash_of(row, checksum),
        table.name.sql()
    );
    let result = side
        .client
        .query_one(&sql, &key_params(&chunk.lower, &chunk.upper))
        .await
        .map_err(side.failed("verification query failed"))?;
    Ok(Digest {
        rows: result.get::<_, i64>(0) as u64,
        hash: result.get(1),
    })
}

/// The target's side of a comparison across servers: each column of `projection` in
/// its text form (the source's side is the same, see `PgSource::digest`).
pub fn target_row(projection: &Projection) -> Vec<String> {
    projection
        .iter()
        .map(|p| format!("s.{}::text", ident(&p.name)))
        .collect()
}

/// Compares `chunk` of `source` and `target` in one database, in one statement (one
/// snapshot); `Some(why)` when they differ.
pub async fn compare_in_server(
    side: &Side,
    source: &TableInfo,
    target: &TableInfo,
    projection: &Projection,
    chunk: &KeyRange,
    checksum: bool,
) -> Result<Option<String>> {
    let (condition, _) =
        source.range_condition(Some("s"), chunk.lower.is_some(), chunk.upper.is_some(), 1);
    // A column copied as it is needs no cast (a cast with a type modifier costs a
    // function call per row).
    let source_row: Vec<String> = projection
        .iter()
        .map(|p| {
            let plain = format!("s.{}", ident(&p.name));
            let same_type = source
                .column(&p.name)
                .is_some_and(|c| c.type_sql == p.type_name);
            if p.expression == plain && same_type {
                plain
            } else {
                format!("({})::{}", p.expression, p.type_name)
            }
        })
        .collect();
    let target_row: Vec<String> = projection
        .iter()
        .map(|p| format!("s.{}", ident(&p.name)))
        .collect();
    // Both sides in one statement (one snapshot), each read once.
    let sql = format!(
        "SELECT a.rows, a.hash, b.rows, b.hash
         FROM (SELECT count(*) AS rows, {source_hash} AS hash FROM {source} AS s WHERE {condition}) AS a,
              (SELECT count(*) AS rows, {target_hash} AS hash FROM {target} AS s WHERE {condition}) AS b",
        source = source.name.sql(),
        target = target.name.sql(),
        source_hash = hash_of(&source_row, checksum),
        target_hash = hash_of(&target_row, checksum),
    );
    let row = side
        .client
        .query_one(&sql, &key_params(&chunk.lower, &chunk.upper))
        .await
        .map_err(side.failed("verification query failed"))?;
    let digest = |rows: usize, hash: usize| Digest {
        rows: row.get::<_, i64>(rows) as u64,
        hash: row.get(hash),
    };
    Ok(Digest::difference(&digest(0, 1), &digest(2, 3)))
}

/// For a backfill: how many rows of `chunk` do not hold what `columns` compute.
pub async fn compare_fill(
    side: &Side,
    table: &TableInfo,
    columns: &[(String, String)],
    chunk: &KeyRange,
) -> Result<Option<String>> {
    let (condition, _) =
        table.range_condition(Some("s"), chunk.lower.is_some(), chunk.upper.is_some(), 1);
    let differs: Vec<String> = columns
        .iter()
        .map(|(c, e)| format!("s.{} IS DISTINCT FROM ({e})", ident(c)))
        .collect();
    let sql = format!(
        "SELECT count(*) FROM {source} AS s WHERE {condition} AND ({differs})",
        source = table.name.sql(),
        differs = differs.join(" OR ")
    );
    let wrong: i64 = side
        .client
        .query_one(&sql, &key_params(&chunk.lower, &chunk.upper))
        .await
        .map_err(side.failed("verification query failed"))?
        .get(0);
    Ok((wrong > 0).then(|| format!("{wrong} rows do not hold their computed values")))
}
