//! Verifying a MongoDB copy or backfill while writes go on.
//!
//! MongoDB has no lock that makes writers wait, so a range compared by count and hash
//! can differ only because a write landed between reading the source and reading the
//! target. A differing range is therefore walked document by document (in batches,
//! memory bounded by the batch), and the documents that differ are settled: the
//! changes up to now are applied and each is compared again, for a few rounds. A
//! document that still differs after them is a real difference; one that writes keep
//! moving for every round is reported too, naming it (cutover, which fences the source
//! and drains, is where such a document is last brought over).
//!
//! A backfill's range is walked the same way, comparing each document with what the
//! update pipeline makes of it; the unfilled ones are settled by applying the changes
//! (which fills again what writes touched) and checking them again.

use std::collections::HashMap;

use mongodb::bson::{doc, Bson, Document, RawDocumentBuf};

use super::order::{between, id_of, key_of};
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

    /// Backfill: why `chunk` is not filled once the documents that writes were moving
    /// have settled, or `None` when every document is as `fill` makes it.
    pub(super) async fn settle_unfilled(
        &mut self,
        source: &mut dyn Source,
        chunk: &KeyRange,
        fill: &[Document],
    ) -> Result<Option<String>> {
        let Some(mut keys) = self.unfilled_in(chunk, fill).await? else {
            return Ok(Some(format!(
                "more than {MAX_SETTLED} documents are not as the update pipeline makes them"
            )));
        };
        let captures = self.position().await?.is_some();
        for _ in 0..SETTLE_ROUNDS {
            if keys.is_empty() || !captures {
                break;
            }
            self.drain(source).await?;
            let ids = keys.iter().map(id_of).collect::<Result<Vec<_>>>()?;
            keys = self.unfilled(doc! {"_id": {"$in": ids}}, fill).await?;
        }
        if keys.is_empty() {
            return Ok(None);
        }
        let named: Vec<&str> = keys.iter().take(NAMED).map(|k| k[0].as_str()).collect();
        let after = if captures {
            format!(" after catching up {SETTLE_ROUNDS} times")
        } else {
            String::new()
        };
        Ok(Some(format!(
            "{} documents are not as the update pipeline makes them{after} (_id {})",
            keys.len(),
            named.join(", ")
        )))
    }

    /// Backfill: the keys of `chunk`'s unfilled documents, walked in batches; `None`
    /// past [`MAX_SETTLED`].
    async fn unfilled_in(&self, chunk: &KeyRange, fill: &[Document]) -> Result<Option<Vec<Key>>> {
        use futures::TryStreamExt;
        let upper = chunk.upper.as_ref().map(id_of).transpose()?;
        let mut after = chunk.lower.as_ref().map(id_of).transpose()?;
        let mut unfilled = Vec::new();
        loop {
            let ids: Vec<Bson> = async {
                self.target()
                    .find(between(after.as_ref(), upper.as_ref()))
                    .sort(doc! {"_id": 1})
                    .projection(doc! {"_id": 1})
                    .limit(WALK_BATCH as i64)
                    .await?
                    .try_collect::<Vec<Document>>()
                    .await
            }
            .await
            .map_err(|e| self.error("cannot read the collection to verify", e))?
            .into_iter()
            .filter_map(|mut d| d.remove("_id"))
            .collect();
            let Some(last) = ids.last().cloned() else {
                return Ok(Some(unfilled));
            };
            let full = ids.len() == WALK_BATCH;
            unfilled.extend(self.unfilled(doc! {"_id": {"$in": ids}}, fill).await?);
            if unfilled.len() > MAX_SETTLED {
                return Ok(None);
            }
            if !full {
                return Ok(Some(unfilled));
            }
            after = Some(last);
        }
    }

    /// Backfill: the keys of the documents matching `filter` (a bounded batch) that
    /// the fill would still change. A document gone between the two reads is not one.
    async fn unfilled(&self, filter: Document, fill: &[Document]) -> Result<Vec<Key>> {
        use futures::TryStreamExt;
        let mut stages = vec![doc! {"$match": filter.clone()}];
        stages.extend(fill.iter().cloned());
        let read = async {
            let mut held: HashMap<String, Document> = HashMap::new();
            let mut documents = self.target().find(filter).await?;
            while let Some(document) = documents.try_next().await? {
                let id = document.get("_id").cloned().unwrap_or(Bson::Null);
                held.insert(key_of(&id).remove(0), document);
            }
            let mut filled = self.target().aggregate(stages).await?;
            let mut differ = Vec::new();
            while let Some(should) = filled.try_next().await? {
                let key = key_of(should.get("_id").unwrap_or(&Bson::Null));
                if held.get(&key[0]).is_some_and(|is| *is != should) {
                    differ.push(key);
                }
            }
            Ok::<_, mongodb::error::Error>(differ)
        };
        read.await
            .map_err(|e| self.error("cannot check the backfill", e))
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
                    .and_then(|id| Bson::try_from(id).ok())
                    .ok_or_else(|| Error::State("a target document without `_id`".into()))?;
                let key = key_of(&id).remove(0);
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
