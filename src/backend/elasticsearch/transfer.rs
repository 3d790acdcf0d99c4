//! An index to and from JSON Lines: each document as `{"_id": …, "_source": {…}}`.
//!
//! Invariants: an export reads through a point in time ([`super::pit`]); its cursor is
//! the point in time and the last sort values, and when the point in time expired (a
//! resume much later) the read starts again from the first document and says so, so the
//! file starts again too. An import indexes each document by its `_id` (writing a batch
//! twice changes nothing) and refreshes the index at the end.

use async_trait::async_trait;
use serde_json::{json, Value};

use super::pit::{After, Pages};
use super::{path_segment, Es};
use crate::config::DatabaseConfig;
use crate::error::{Error, Result};
use crate::ops::transfer::{Chunk, Exporter, Importer};

pub struct IndexExport {
    es: Es,
    index: String,
    pages: Pages,
    query: Value,
    pit: Option<String>,
}

impl IndexExport {
    /// `filter` is a query in the query DSL (`--where '{"term": {"plan": "pro"}}'`).
    pub async fn open(
        name: &str,
        database: &DatabaseConfig,
        index: &str,
        filter: Option<&str>,
    ) -> Result<IndexExport> {
        let es = Es::connect(name, database)?;
        let query = match filter {
            Some(text) => serde_json::from_str(text).map_err(|e| {
                Error::Usage(format!("--where for Elasticsearch is a JSON query: {e}"))
            })?,
            None => json!({"match_all": {}}),
        };
        let opensearch = es.is_opensearch().await?;
        let pages = Pages::new(&es, index, opensearch).matching(query.clone(), Vec::new());
        Ok(IndexExport {
            es,
            index: index.to_string(),
            pages,
            query,
            pit: None,
        })
    }
}

#[async_trait]
impl Exporter for IndexExport {
    async fn total(&mut self) -> Result<Option<u64>> {
        let reply = self
            .es
            .expect(
                elasticsearch::http::Method::Post,
                &format!("/{}/_count", path_segment(&self.index)),
                Some(&json!({"query": self.query})),
                &format!("cannot count the documents of `{}`", self.index),
            )
            .await?;
        Ok(reply["count"].as_u64())
    }

    async fn next(&mut self, cursor: Option<&Value>, size: usize) -> Result<Chunk> {
        let after = cursor.and_then(|c| {
            let key: Vec<String> = serde_json::from_value(c.clone()).ok()?;
            After::from_key(&key)
        });
        let page = self.pages.next(after.as_ref(), size).await?;
        self.pit = Some(page.pit.clone());
        let lines = page
            .hits
            .iter()
            .map(|hit| json!({"_id": hit["_id"], "_source": hit["_source"]}).to_string())
            .collect();
        Ok(Chunk {
            lines,
            cursor: page.after().map(|a| json!(a.to_key())),
            restarted: page.restarted,
        })
    }

    async fn finish(&mut self) {
        if let Some(pit) = &self.pit {
            self.pages.close(pit).await;
        }
    }
}

pub struct IndexImport {
    es: Es,
    index: String,
}

impl IndexImport {
    pub fn open(name: &str, database: &DatabaseConfig, index: &str) -> Result<IndexImport> {
        Ok(IndexImport {
            es: Es::connect(name, database)?,
            index: index.to_string(),
        })
    }
}

#[async_trait]
impl Importer for IndexImport {
    async fn write(&mut self, lines: &[String], first_line: u64) -> Result<()> {
        let mut body = String::new();
        for (n, line) in lines.iter().enumerate() {
            let at = format!("line {}", first_line + n as u64);
            let value: Value = serde_json::from_str(line)
                .map_err(|e| Error::Refused(format!("{at}: invalid JSON: {e}")))?;
            let (Some(id), Some(source)) = (
                value["_id"].as_str(),
                value.get("_source").filter(|s| s.is_object()),
            ) else {
                return Err(Error::Refused(format!(
                    "{at}: not a document as `switchyard export` writes it ({{\"_id\": \"…\", \"_source\": {{…}}}})"
                )));
            };
            body.push_str(&format!(
                "{}\n{source}\n",
                json!({"index": {"_index": self.index, "_id": id}})
            ));
        }
        let reply = self.es.bulk("/_bulk", body).await?;
        let failed = reply.body["items"].as_array().and_then(|items| {
            items
                .iter()
                .enumerate()
                .find_map(|(n, item)| item["index"].get("error").map(|error| (n, error.clone())))
        });
        match failed {
            None if reply.is_success() => Ok(()),
            None => Err(self.es.refused("cannot import into the index", &reply)),
            Some((n, error)) => Err(Error::Refused(format!(
                "line {}: the index refused the document: {}",
                first_line + n as u64,
                error["reason"].as_str().unwrap_or(&error.to_string())
            ))),
        }
    }

    async fn finish(&mut self) -> Result<()> {
        self.es
            .expect(
                elasticsearch::http::Method::Post,
                &format!("/{}/_refresh", path_segment(&self.index)),
                None,
                "cannot refresh the index",
            )
            .await
            .map(drop)
    }
}
