//! Verify of a copy into an index: the source's rows, made documents as the copy makes
//! them, against the index's documents of the same `_id`s; and the counts.
//!
//! Invariants:
//! - A chunk is compared by reading its rows from the source and the documents of their
//!   `_id`s from the index (`_mget`, real time): with `checksum` every document must
//!   equal its row's, else it must be there. Memory holds one page of each.
//! - Writers wait while a chunk is compared (the engine holds them), so the changes
//!   drained first bring the index to the source's state; a difference left (a write
//!   the hold did not cover, on a source without one) is settled before it is reported:
//!   the changes are applied and the differing rows read again, up to [`SETTLE_ROUNDS`]
//!   times.
//! - The last chunk (no upper bound) also compares the table's count with the index's,
//!   which finds documents of rows that are gone.

use std::collections::HashMap;
use std::time::Duration;

use elasticsearch::http::Method;
use serde_json::{json, Value};

use super::digest::canonical;
use super::documents::Documents;
use super::path_segment;
use super::sink::ElasticSink;
use crate::engine::progress::KeyRange;
use crate::engine::row::Key;
use crate::engine::source::{RowFormat, Rows};
use crate::engine::Source;
use crate::error::{Error, Result};

/// Rows read (and documents fetched) at once.
const PAGE: usize = 1000;
const SETTLE_ROUNDS: usize = 5;
/// Differing rows settled one by one; more are reported as they are.
const MAX_SETTLED: usize = 10_000;

impl ElasticSink {
    /// Why `chunk` of the source and the index differ once writes in flight settled, or
    /// `None`.
    pub(super) async fn compare_rows(
        &mut self,
        documents: &Documents,
        source: &mut dyn Source,
        chunk: &KeyRange,
        checksum: bool,
    ) -> Result<Option<String>> {
        let mut differing = self
            .differing_rows(documents, source, chunk, checksum)
            .await?;
        if differing.len() > MAX_SETTLED {
            return Ok(Some(format!(
                "{} differs: more than {MAX_SETTLED} documents are missing or unequal",
                chunk.describe()
            )));
        }
        for _ in 0..SETTLE_ROUNDS {
            if differing.is_empty() {
                break;
            }
            self.drain(source).await?;
            let mut still = Vec::new();
            for (id, key) in differing {
                let wanted = documents.current(source, &key).await?;
                let held = self.get(self.target(), &id).await?;
                let equal = match (&wanted, &held) {
                    (None, None) => true,
                    (Some((_, wanted)), Some(held)) => {
                        !checksum || canonical(wanted) == canonical(held)
                    }
                    _ => false,
                };
                if !equal {
                    still.push((id, key));
                }
            }
            differing = still;
            if !differing.is_empty() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        if !differing.is_empty() {
            let named: Vec<&str> = differing
                .iter()
                .take(5)
                .map(|(id, _)| id.as_str())
                .collect();
            return Ok(Some(format!(
                "{}: {} documents are missing or differ from their rows after settling, e.g. _id {}",
                chunk.describe(),
                differing.len(),
                named.join(", ")
            )));
        }
        if chunk.upper.is_none() {
            return self.compare_counts(source, chunk).await;
        }
        Ok(None)
    }

    /// The `_id`s and keys of the chunk's rows whose documents are missing or (with
    /// `checksum`) differ.
    async fn differing_rows(
        &self,
        documents: &Documents,
        source: &mut dyn Source,
        chunk: &KeyRange,
        checksum: bool,
    ) -> Result<Vec<(String, Key)>> {
        let mut reader = source.reader(&Vec::new(), RowFormat::Values).await?;
        let mut after = chunk.lower.clone();
        let mut differing = Vec::new();
        loop {
            let batch = reader.read(chunk, after.as_ref(), PAGE).await?;
            let Rows::Values(rows) = batch.rows else {
                return Err(Error::State("verify reads rows as values".into()));
            };
            let mut wanted: Vec<(String, Key, Value)> = Vec::with_capacity(rows.len());
            for row in &rows {
                if let Some((id, document)) = documents.document(row)? {
                    wanted.push((id, documents.key(row), document));
                }
            }
            let ids: Vec<&str> = wanted.iter().map(|(id, _, _)| id.as_str()).collect();
            let held = self.documents_of(&ids).await?;
            for (id, key, document) in wanted {
                let equal = held
                    .get(&id)
                    .is_some_and(|held| !checksum || canonical(held) == canonical(&document));
                if !equal {
                    differing.push((id, key));
                }
            }
            if batch.done || batch.last_key.is_none() {
                return Ok(differing);
            }
            after = batch.last_key;
        }
    }

    /// The source's row count against the index's document count, settled like rows.
    async fn compare_counts(
        &mut self,
        source: &mut dyn Source,
        chunk: &KeyRange,
    ) -> Result<Option<String>> {
        let whole = KeyRange {
            number: chunk.number,
            lower: None,
            upper: None,
        };
        let (mut rows, mut held) = (0, 0);
        for round in 0..SETTLE_ROUNDS {
            if round > 0 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                self.drain(source).await?;
                self.refresh(self.target()).await?;
            }
            rows = source.digest(&whole, &Vec::new(), false).await?.rows;
            held = self.es.count(self.target()).await?;
            if rows == held {
                return Ok(None);
            }
        }
        Ok(Some(format!(
            "the source has {rows} rows, `{}` {held} documents",
            self.target()
        )))
    }

    /// The documents of `ids` on the target, by real-time `_mget`.
    async fn documents_of(&self, ids: &[&str]) -> Result<HashMap<String, Value>> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let path = format!("/{}/_mget", path_segment(self.target()));
        let reply = self
            .es
            .expect(
                Method::Post,
                &path,
                Some(&json!({ "ids": ids })),
                &format!("cannot read documents of `{}`", self.target()),
            )
            .await?;
        Ok(reply["docs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|doc| doc["found"] == true)
            .filter_map(|doc| Some((doc["_id"].as_str()?.to_string(), doc["_source"].clone())))
            .collect())
    }
}
