//! Reading a whole index in a stable order: a point in time (a snapshot the server keeps
//! while it is used) paged with `search_after` on `_shard_doc`, the way Elasticsearch
//! recommends for deep reads. Elasticsearch opens one at `/<index>/_pit`, OpenSearch at
//! `/<index>/_search/point_in_time`; both are searched the same way.
//!
//! Invariants:
//! - A page's `after` (the point in time's id and the last sort values) continues the
//!   read exactly where the page before ended, as long as the point in time lives
//!   ([`KEEP_ALIVE`], renewed by every page).
//! - A point in time that expired (a process that stood still too long) cannot be
//!   continued: [`Pages::next`] then starts again from the first document, and says so
//!   ([`Page::restarted`]): a reader whose writes are idempotent loses nothing by it.
//! - A reader that has read its last page closes the point in time ([`Pages::close`]):
//!   an open one keeps the server holding the index as it was (and a write to it, on
//!   some servers, copying it).

use elasticsearch::http::Method;
use serde_json::{json, Value};

use super::{path_segment, Es};
use crate::error::Result;

/// How long the server keeps a point in time between two pages.
pub const KEEP_ALIVE: &str = "10m";

/// Where a read stands: the point in time and the sort values of the last document read.
#[derive(Debug, Clone, PartialEq)]
pub struct After {
    pub pit: String,
    pub sort: Value,
}

impl After {
    /// As a checkpoint key: `[pit id, sort values as JSON]`.
    pub fn to_key(&self) -> Vec<String> {
        vec![self.pit.clone(), self.sort.to_string()]
    }

    pub fn from_key(key: &[String]) -> Option<After> {
        match key {
            [pit, sort] => Some(After {
                pit: pit.clone(),
                sort: serde_json::from_str(sort).ok()?,
            }),
            _ => None,
        }
    }
}

/// One page of hits.
pub struct Page {
    pub hits: Vec<Value>,
    /// The point in time the page was read in (to go on in, or to close).
    pub pit: String,
    /// The point in time was gone, so the read started again from the first document.
    pub restarted: bool,
}

impl Page {
    /// Where the next page starts (`None` when the page was empty).
    pub fn after(&self) -> Option<After> {
        self.hits.last().map(|hit| After {
            pit: self.pit.clone(),
            sort: hit["sort"].clone(),
        })
    }
}

/// Pages of one index (or of the documents of `query` in it).
pub struct Pages {
    es: Es,
    index: String,
    opensearch: bool,
    query: Value,
    /// Sort keys before `_shard_doc` (the watermark field, for catch-up).
    sort: Vec<Value>,
}

impl Pages {
    pub fn new(es: &Es, index: &str, opensearch: bool) -> Pages {
        Pages {
            es: es.clone(),
            index: index.to_string(),
            opensearch,
            query: json!({"match_all": {}}),
            sort: Vec::new(),
        }
    }

    /// Only the documents `query` matches, sorted by `sort` first.
    pub fn matching(mut self, query: Value, sort: Vec<Value>) -> Pages {
        self.query = query;
        self.sort = sort;
        self
    }

    async fn open(&self) -> Result<String> {
        let index = path_segment(&self.index);
        let path = if self.opensearch {
            format!("/{index}/_search/point_in_time?keep_alive={KEEP_ALIVE}")
        } else {
            format!("/{index}/_pit?keep_alive={KEEP_ALIVE}")
        };
        let reply = self
            .es
            .expect(
                Method::Post,
                &path,
                None,
                &format!("cannot open a point in time on `{}`", self.index),
            )
            .await?;
        let id = reply["pit_id"].as_str().or(reply["id"].as_str());
        Ok(id.unwrap_or_default().to_string())
    }

    /// Up to `size` documents after `after` (from the first without it), with their
    /// `_version`.
    pub async fn next(&self, after: Option<&After>, size: usize) -> Result<Page> {
        let (pit, sort_after) = match after {
            Some(after) => (after.pit.clone(), Some(after.sort.clone())),
            None => (self.open().await?, None),
        };
        let (reply, pit, restarted) = match self.search(&pit, sort_after.as_ref(), size).await? {
            Some(reply) => (reply, pit, false),
            None => {
                tracing::warn!(index = %self.index, "the point in time expired; reading the index again from its first document");
                let pit = self.open().await?;
                let reply = self.search(&pit, None, size).await?;
                (reply.unwrap_or_default(), pit, true)
            }
        };
        let pit = reply["pit_id"].as_str().map_or(pit, str::to_string);
        let hits = reply["hits"]["hits"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        Ok(Page {
            hits,
            pit,
            restarted,
        })
    }

    /// `None` when the point in time is gone.
    async fn search(&self, pit: &str, after: Option<&Value>, size: usize) -> Result<Option<Value>> {
        let mut sort = self.sort.clone();
        sort.push(json!({"_shard_doc": "asc"}));
        let mut body = json!({
            "size": size,
            "version": true,
            "track_total_hits": false,
            "query": self.query,
            "pit": {"id": pit, "keep_alive": KEEP_ALIVE},
            "sort": sort,
        });
        if let Some(after) = after {
            body["search_after"] = after.clone();
        }
        let reply = self.es.call(Method::Post, "/_search", Some(&body)).await?;
        if reply.is_success() {
            return Ok(Some(reply.body));
        }
        let text = reply.body.to_string();
        if reply.status == 404 || text.contains("search_context_missing") {
            return Ok(None);
        }
        Err(self
            .es
            .refused(&format!("cannot read `{}`", self.index), &reply))
    }

    /// Frees the point in time on the server (it would expire anyway).
    pub async fn close(&self, pit: &str) {
        let (path, body) = if self.opensearch {
            ("/_search/point_in_time", json!({"pit_id": [pit]}))
        } else {
            ("/_pit", json!({"id": pit}))
        };
        if let Err(error) = self.es.call(Method::Delete, path, Some(&body)).await {
            tracing::debug!(%error, "a point in time was not closed; it expires by itself");
        }
    }
}
