//! Verifying a MongoDB copy while writes go on.
//!
//! MongoDB has no lock that makes writers wait, so a range compared by count and hash
//! can differ only because a write landed between reading the source and reading the
//! target. A differing range is therefore walked document by document (in batches,
//! memory bounded by the batch), and the documents that differ are settled: the
//! changes up to now are applied and each is compared again, for a few rounds. A
//! document that still differs after them is a real difference; one that writes keep
//! moving for every round is reported too, naming it (cutover, which fences the source
//! and drains, is where such a document is last brought over).

use std::collections::HashMap;

use mongodb::bson::{doc, RawDocumentBuf};

use super::order::{between, id_of};
use super::sink::MongoSink;
use crate::engine::progress::KeyRange;
use crate::engine::row::{Key, Value};
use crate::engine::source::{RowFormat, Rows};
use crate::engine::{Sink, Source};
use crate::error::{Error, Result};

/// Documents compared per round trip while walking a range.
const WALK_BATCH: usize = 5000;
/// More differing documents than this are not writes in flight: reported as they are.
const MAX_SETTLED: usize = 10_000;
/// Rounds of catching up and comparing again.
const SETTLE_ROUNDS: usize = 5;
/// Documents named in a report.
const NAMED: usize = 5;

impl MongoSink {
    /// Why `chunk` differs once the documents that writes were moving have settled,
    /// or `None` when it does not. `difference` is what the count and hash found.
    pub(super) async fn settle_difference(
        &mut self,
        source: &mut dyn Source,
        chunk: &KeyRange,
        difference: String,
    ) -> Result<Option<String>> {
        if self.position().await?.is_none() {
            return Ok(Some(difference)); // no capture: nothing can have moved
        }
        let Some(mut keys) = self.differing(source, chunk).await? else {
            return Ok(Some(format!(
                "{difference} (more than {MAX_SETTLED} documents differ)"
            )));
        };
        for _ in 0..SETTLE_ROUNDS {
            if keys.is_empty() {
                return Ok(None);
            }
            self.drain(source).await?;
            let mut still = Vec::new();
            for key in keys {
                if self.differs(source, &key).await? {
                    still.push(key);
                }
            }
            keys = still;
        }
        if keys.is_empty() {
            return Ok(None);
        }
        let named: Vec<&str> = keys.iter().take(NAMED).map(|k| k[0].as_str()).collect();
        Ok(Some(format!(
            "{difference}: {} documents still differ after catching up {SETTLE_ROUNDS} times (_id {})",
            keys.len(),
            named.join(", ")
        )))
    }

    /// The keys of `chunk` whose documents differ between the source (as the transform
    /// makes them) and the target; `None` past [`MAX_SETTLED`].
    async fn differing(
        &self,
        source: &mut dyn Source,
        chunk: &KeyRange,
    ) -> Result<Option<Vec<Key>>> {
        let mut reader = source.reader(&Vec::new(), RowFormat::Values).await?;
        let mut after = chunk.lower.clone();
        let mut differ = Vec::new();
        loop {
            let batch = reader.read(chunk, after.as_ref(), WALK_BATCH).await?;
            let Rows::Values(rows) = batch.rows else {
                return Err(Error::State("a MongoDB source read COPY data".into()));
            };
            let upto = if batch.done {
                chunk.upper.clone()
            } else {
                batch.last_key.clone()
            };
            let mut held = self.target_documents(after.as_ref(), upto.as_ref()).await?;
            for row in rows {
                let (Value::Text(key), Value::Bytes(bytes)) = (&row.0[0], &row.0[1]) else {
                    return Err(Error::State("a document read as something else".into()));
                };
                if held.remove(key).as_deref() != Some(bytes.as_slice()) {
                    differ.push(vec![key.clone()]);
                }
            }
            differ.extend(held.into_keys().map(|key| vec![key]));
            if differ.len() > MAX_SETTLED {
                return Ok(None);
            }
            if batch.done || batch.last_key.is_none() {
                return Ok(Some(differ));
            }
            after = batch.last_key;
        }
    }

    /// The target's documents after `lower` up to `upper`, by key text.
    async fn target_documents(
        &self,
        lower: Option<&Key>,
        upper: Option<&Key>,
    ) -> Result<HashMap<String, Vec<u8>>> {
        use futures::TryStreamExt;
        let lower = lower.map(id_of).transpose()?;
        let upper = upper.map(id_of).transpose()?;
        let documents: Vec<RawDocumentBuf> = async {
            self.raw_target()
                .find(between(lower.as_ref(), upper.as_ref()))
                .await?
                .try_collect()
                .await
        }
        .await
        .map_err(|e| self.error("cannot read the target to verify", e))?;
        documents
            .into_iter()
            .map(|document| {
                let id = document
                    .get("_id")
                    .ok()
                    .flatten()
                    .and_then(|id| mongodb::bson::Bson::try_from(id).ok())
                    .ok_or_else(|| Error::State("a target document without `_id`".into()))?;
                let key = super::order::key_of(&id).remove(0);
                Ok((key, document.into_bytes()))
            })
            .collect()
    }

    /// Whether the document of `key` differs between the source and the target now.
    async fn differs(&self, source: &mut dyn Source, key: &Key) -> Result<bool> {
        let expected = match source.fetch(key).await? {
            Some(row) => match &row.0[1] {
                Value::Bytes(bytes) => Some(bytes.clone()),
                other => return Err(Error::State(format!("a document read as {other:?}"))),
            },
            None => None,
        };
        let found = self
            .raw_target()
            .find_one(doc! {"_id": id_of(key)?})
            .await
            .map_err(|e| self.error("cannot read the target to verify", e))?
            .map(RawDocumentBuf::into_bytes);
        Ok(expected != found)
    }
}
