//! A collection to and from JSON Lines: each document in canonical Extended JSON
//! (`{"$oid": …}`, `{"$date": …}`, `{"$numberLong": …}`, `{"$numberDecimal": …}`), so
//! every BSON type comes back as it was.
//!
//! Invariants: an export reads in `_id` order, each batch after the last `_id` written
//! (the cursor); an import replaces each document by its `_id` (upserting), so writing a
//! batch twice changes nothing; a line without `_id` is refused (it could not be
//! written once only).

use async_trait::async_trait;
use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::Collection;
use serde_json::Value;

use super::{connect, store_error};
use crate::error::{Error, Result};
use crate::ops::transfer::{Chunk, Exporter, Importer};
use crate::secret::SecretUrl;

fn to_bson(value: Value, what: &str) -> Result<Bson> {
    Bson::try_from(value).map_err(|e| Error::Refused(format!("{what}: not Extended JSON: {e}")))
}

pub struct CollectionExport {
    database: String,
    url: SecretUrl,
    collection: Collection<Document>,
    filter: Document,
}

impl CollectionExport {
    /// `filter` is a query document in JSON (`--where '{"plan": "pro"}'`).
    pub async fn open(
        database: &str,
        url: &SecretUrl,
        name: &str,
        filter: Option<&str>,
    ) -> Result<CollectionExport> {
        let filter = match filter {
            Some(text) => {
                let value: Value = serde_json::from_str(text).map_err(|e| {
                    Error::Usage(format!("--where for MongoDB is a JSON query document: {e}"))
                })?;
                match to_bson(value, "--where")? {
                    Bson::Document(filter) => filter,
                    _ => return Err(Error::Usage("--where for MongoDB is a JSON object".into())),
                }
            }
            None => Document::new(),
        };
        let db = connect(database, url).await?;
        Ok(CollectionExport {
            database: database.to_string(),
            url: url.clone(),
            collection: db.collection(name),
            filter,
        })
    }
}

#[async_trait]
impl Exporter for CollectionExport {
    async fn total(&mut self) -> Result<Option<u64>> {
        self.collection
            .count_documents(self.filter.clone())
            .await
            .map(Some)
            .map_err(|e| store_error(&self.database, &self.url, "cannot count the documents", e))
    }

    async fn next(&mut self, cursor: Option<&Value>, size: usize) -> Result<Chunk> {
        let mut filter = self.filter.clone();
        if let Some(last) = cursor {
            let last = to_bson(last.clone(), "the export's cursor")?;
            filter = doc! {"$and": [filter, {"_id": {"$gt": last}}]};
        }
        let read = |e| store_error(&self.database, &self.url, "cannot read the collection", e);
        let found = self
            .collection
            .find(filter)
            .sort(doc! {"_id": 1})
            .limit(size as i64)
            .await
            .map_err(read)?;
        let documents: Vec<Document> = found.try_collect().await.map_err(read)?;
        let cursor = documents
            .last()
            .and_then(|d| d.get("_id"))
            .map(|id| id.clone().into_canonical_extjson());
        Ok(Chunk {
            lines: documents
                .into_iter()
                .map(|d| Bson::Document(d).into_canonical_extjson().to_string())
                .collect(),
            cursor,
            restarted: false,
        })
    }
}

pub struct CollectionImport {
    database: String,
    url: SecretUrl,
    collection: Collection<Document>,
}

impl CollectionImport {
    pub async fn open(database: &str, url: &SecretUrl, name: &str) -> Result<CollectionImport> {
        let db = connect(database, url).await?;
        Ok(CollectionImport {
            database: database.to_string(),
            url: url.clone(),
            collection: db.collection(name),
        })
    }
}

#[async_trait]
impl Importer for CollectionImport {
    async fn write(&mut self, lines: &[String], first_line: u64) -> Result<()> {
        for (n, line) in lines.iter().enumerate() {
            let at = format!("line {}", first_line + n as u64);
            let value: Value = serde_json::from_str(line)
                .map_err(|e| Error::Refused(format!("{at}: invalid JSON: {e}")))?;
            let Bson::Document(document) = to_bson(value, &at)? else {
                return Err(Error::Refused(format!(
                    "{at}: not a JSON object (a document)"
                )));
            };
            let Some(id) = document.get("_id").cloned() else {
                return Err(Error::Refused(format!(
                    "{at}: the document has no _id, so it could not be imported once only"
                )));
            };
            self.collection
                .replace_one(doc! {"_id": id}, document)
                .upsert(true)
                .await
                .map_err(|e| {
                    store_error(&self.database, &self.url, format!("cannot import {at}"), e)
                })?;
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}
