//! A job's checkpoints on an Elasticsearch target, in the state store (`state.url`):
//! `state` (the job's indexes, the settings to restore, where catch-up stands, the
//! cutover) and `range:<n>` per key range.
//!
//! Invariants:
//! - Elasticsearch has no transactions: a checkpoint is written after the writes it
//!   stands for were acknowledged, and those writes are idempotent (by `_id`, with the
//!   source's version), so a batch a crash cut short is redone with the same result.
//! - Only the process holding the job's lease writes them.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::engine::progress::{KeyRange, RangeProgress};
use crate::error::{Error, Result};
use crate::state::StateStore;

#[derive(Clone)]
pub struct Checkpoints {
    store: Arc<dyn StateStore>,
    job: String,
}

impl Checkpoints {
    pub fn new(store: &Arc<dyn StateStore>, job: &str) -> Checkpoints {
        Checkpoints {
            store: store.clone(),
            job: job.to_string(),
        }
    }

    /// The job whose checkpoints these are.
    pub fn job(&self) -> &str {
        &self.job
    }

    async fn get(&self, name: &str) -> Result<Option<Value>> {
        match self.store.checkpoint(&self.job, name).await? {
            Some(text) => serde_json::from_str(&text).map(Some).map_err(|e| {
                Error::State(format!(
                    "job `{}`: checkpoint {name} is damaged: {e}",
                    self.job
                ))
            }),
            None => Ok(None),
        }
    }

    async fn put(&self, name: &str, document: &Value) -> Result<()> {
        self.store
            .put_checkpoint(&self.job, name, &document.to_string())
            .await
    }

    /// The job's state (an empty object before anything was saved).
    pub async fn state(&self) -> Result<Map<String, Value>> {
        Ok(match self.get("state").await? {
            Some(Value::Object(state)) => state,
            _ => Map::new(),
        })
    }

    /// Sets `fields` in the job's state, keeping the others.
    pub async fn update_state(&self, fields: Value) -> Result<()> {
        let mut state = self.state().await?;
        if let Value::Object(fields) = fields {
            state.extend(fields);
        }
        self.put("state", &Value::Object(state)).await
    }

    /// The numbers of the job's ranges, once planned (sources number them as they will).
    async fn range_numbers(&self) -> Result<Vec<i64>> {
        let state = self.state().await?;
        Ok(state
            .get("ranges")
            .and_then(Value::as_array)
            .map(|numbers| numbers.iter().filter_map(Value::as_i64).collect())
            .unwrap_or_default())
    }

    pub async fn ranges(&self) -> Result<Vec<RangeProgress>> {
        let mut ranges = Vec::new();
        for number in self.range_numbers().await? {
            let document = self.get(&format!("range:{number}")).await?.ok_or_else(|| {
                Error::State(format!(
                    "job `{}`: the checkpoint of range {number} is missing from the state store",
                    self.job
                ))
            })?;
            ranges.push(range_progress(&document)?);
        }
        Ok(ranges)
    }

    /// Saves the planned ranges, then their numbers (which makes them the job's).
    pub async fn save_ranges(&self, ranges: &[KeyRange]) -> Result<()> {
        for range in ranges {
            self.save_range(&RangeProgress {
                range: range.clone(),
                last_key: None,
                rows: 0,
                done: false,
            })
            .await?;
        }
        let numbers: Vec<i32> = ranges.iter().map(|range| range.number).collect();
        self.update_state(json!({ "ranges": numbers })).await
    }

    pub async fn save_range(&self, progress: &RangeProgress) -> Result<()> {
        let document = json!({
            "range": progress.range,
            "last_key": progress.last_key,
            "rows": progress.rows,
            "done": progress.done,
        });
        self.put(&format!("range:{}", progress.range.number), &document)
            .await
    }

    /// Removes every checkpoint of the job (idempotent).
    pub async fn forget(&self) -> Result<()> {
        self.store.forget_checkpoints(&self.job).await
    }
}

fn range_progress(document: &Value) -> Result<RangeProgress> {
    let broken = |e: serde_json::Error| Error::State(format!("a range checkpoint is damaged: {e}"));
    Ok(RangeProgress {
        range: serde_json::from_value(document["range"].clone()).map_err(broken)?,
        last_key: serde_json::from_value(document["last_key"].clone()).map_err(broken)?,
        rows: document["rows"].as_u64().unwrap_or(0),
        done: document["done"].as_bool().unwrap_or(false),
    })
}
