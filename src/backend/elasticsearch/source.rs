//! An index as a job's source: read whole in point-in-time order, its changes caught up
//! by a watermark field.
//!
//! Rows are documents: `_id`, `_source` (JSON) and `_version` (the sink writes it as an
//! external version, so an older copy of a document never replaces a newer one).
//!
//! Invariants:
//! - One key range, read in point-in-time order; its checkpoint is the point in time
//!   and the last sort values ([`super::pit`]), so a resumed run goes on from the last
//!   batch while the point in time lives, and reads again from the start once it
//!   expired (writes are idempotent).
//! - Change capture is a watermark: a position is the newest `catch_up.field` value
//!   applied (epoch milliseconds), and every pass reads the documents whose field is at
//!   or after it less a settling window ([`Watermark::settle`], twice the refresh
//!   interval), so a document made visible late by a refresh is still read. A document
//!   delivered once at a version is not delivered again at that version by the same
//!   process. Deletes leave no watermark: the sink finds them by comparing `_id`s (at
//!   verify and at cutover, while the source is write-blocked).
//! - Contract deletes the old index, never one the alias names.
//! - Elasticsearch cannot make writers wait: [`Source::hold_writes`] holds nothing, and
//!   [`Source::fence`] is the index's write block (`index.blocks.write`), which makes
//!   writes fail until it is lifted.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use elasticsearch::http::Method;
use serde_json::{json, Value};

use super::digest;
use super::pit::{After, Pages};
use super::{path_segment, Es};
use crate::engine::progress::{KeyRange, Lag};
use crate::engine::row::{
    Change, Digest, Field, Key, Position, Projection, Row, Schema, Value as RowValue,
};
use crate::engine::source::{Batch, BatchReader, ChangeBatch, RowFormat, Rows};
use crate::engine::Source;
use crate::error::{Error, Result};

/// Documents read per page of a catch-up pass.
const CHANGES_PAGE: usize = 1000;

/// The fields a document travels in.
pub fn document_schema() -> Schema {
    let field = |name: &str, type_name: &str| Field {
        name: name.to_string(),
        type_name: type_name.to_string(),
    };
    Schema {
        fields: vec![
            field("_id", "keyword"),
            field("_source", "object"),
            field("_version", "long"),
        ],
        key: vec![0],
        computed: Vec::new(),
    }
}

/// A search hit (or a get) as a row of [`document_schema`].
pub fn row_of(hit: &Value) -> Row {
    Row(vec![
        RowValue::Text(hit["_id"].as_str().unwrap_or_default().to_string()),
        RowValue::Json(hit["_source"].clone()),
        RowValue::Int(hit["_version"].as_i64().unwrap_or(1)),
    ])
}

/// How changes are found: the field every write sets, and how far back each pass looks.
#[derive(Debug, Clone)]
pub struct Watermark {
    pub field: String,
    /// How far before the position each pass reads again.
    pub settle: Duration,
    /// The index never refreshes by itself (`refresh_interval: -1`): each pass
    /// refreshes it first.
    pub refresh_first: bool,
}

pub struct ElasticSource {
    es: Es,
    /// The index read (the one the alias named when the job began).
    index: String,
    /// The alias: an index it names is never deleted ([`Source::contract`]).
    alias: String,
    opensearch: bool,
    schema: Schema,
    /// The watermark field, when the job catches up.
    field: Option<String>,
    /// Its settling window, read from the index on first use (the way back's index
    /// does not exist yet when the job opens).
    watermark: Option<Watermark>,
    /// Documents delivered whose watermark lies in the settling window, with the
    /// version and watermark they were delivered at: not delivered again at it.
    delivered: HashMap<String, (i64, i64)>,
    /// Whether the last pass read everything there was.
    drained: bool,
    position: Option<i64>,
}

impl ElasticSource {
    pub fn open(
        es: &Es,
        alias: &str,
        index: &str,
        opensearch: bool,
        field: Option<&str>,
    ) -> ElasticSource {
        ElasticSource {
            es: es.clone(),
            index: index.to_string(),
            alias: alias.to_string(),
            opensearch,
            schema: document_schema(),
            field: field.map(str::to_string),
            watermark: None,
            delivered: HashMap::new(),
            drained: false,
            position: None,
        }
    }

    /// The watermark, when the job catches up.
    async fn watermark(&mut self) -> Result<Option<Watermark>> {
        if self.watermark.is_none() {
            if let Some(field) = &self.field {
                self.watermark = Some(watermark(&self.es, &self.index, field).await?);
            }
        }
        Ok(self.watermark.clone())
    }

    pub fn pages(&self) -> Pages {
        Pages::new(&self.es, &self.index, self.opensearch)
    }

    async fn set_write_block(&self, blocked: bool) -> Result<()> {
        let path = format!("/{}/_settings", path_segment(&self.index));
        self.es
            .expect(
                Method::Put,
                &path,
                Some(&json!({"index": {"blocks": {"write": blocked}}})),
                &format!("cannot set the write block of `{}`", self.index),
            )
            .await
            .map(drop)
    }

    pub async fn refresh(&self) -> Result<()> {
        let path = format!("/{}/_refresh", path_segment(&self.index));
        self.es
            .expect(Method::Post, &path, None, "cannot refresh the source index")
            .await
            .map(drop)
    }
}

/// The watermark of `field` in `index`: its settling window from the index's refresh
/// interval.
async fn watermark(es: &Es, index: &str, field: &str) -> Result<Watermark> {
    let path = format!(
        "/{}/_settings?include_defaults=true&flat_settings=true",
        path_segment(index)
    );
    let settings = es
        .expect(
            Method::Get,
            &path,
            None,
            "cannot read the source index's settings",
        )
        .await?;
    let entry = settings
        .as_object()
        .and_then(|o| o.values().next())
        .cloned()
        .unwrap_or_default();
    let interval = entry["settings"]["index.refresh_interval"]
        .as_str()
        .or(entry["defaults"]["index.refresh_interval"].as_str())
        .unwrap_or("1s")
        .to_string();
    let refresh_first = interval == "-1";
    let every = humantime::parse_duration(&interval).unwrap_or(Duration::from_secs(1));
    Ok(Watermark {
        field: field.to_string(),
        settle: (every * 2).max(Duration::from_secs(2)),
        refresh_first,
    })
}

struct PitReader {
    pages: Pages,
}

#[async_trait]
impl BatchReader for PitReader {
    async fn read(
        &mut self,
        _range: &KeyRange,
        after: Option<&Key>,
        limit: usize,
    ) -> Result<Batch> {
        let after = after.and_then(|key| After::from_key(key));
        let page = self.pages.next(after.as_ref(), limit).await?;
        let done = page.hits.len() < limit;
        if done {
            self.pages.close(&page.pit).await;
        }
        Ok(Batch {
            rows: Rows::Values(page.hits.iter().map(row_of).collect()),
            last_key: page.after().or(after).map(|a| a.to_key()),
            done,
        })
    }
}

fn millis(position: &Position) -> Result<i64> {
    position
        .0
        .parse()
        .map_err(|_| Error::State(format!("`{}` is not a watermark position", position.0)))
}

#[async_trait]
impl Source for ElasticSource {
    fn schema(&self) -> &Schema {
        &self.schema
    }

    async fn reconnect(&mut self) -> Result<()> {
        Ok(())
    }

    async fn end_leftover_sessions(&mut self) -> Result<()> {
        Ok(())
    }

    async fn estimate_rows(&mut self) -> Result<u64> {
        self.es.count(&self.index).await
    }

    async fn plan_ranges(&mut self, _concurrency: usize) -> Result<Vec<KeyRange>> {
        Ok(vec![KeyRange {
            number: 0,
            lower: None,
            upper: None,
        }])
    }

    async fn replica_lag(&mut self) -> Result<f64> {
        Ok(0.0)
    }

    async fn reader(
        &self,
        _projection: &Projection,
        format: RowFormat,
    ) -> Result<Box<dyn BatchReader>> {
        if format != RowFormat::Values {
            return Err(Error::State(
                "an Elasticsearch source reads documents only".into(),
            ));
        }
        Ok(Box::new(PitReader {
            pages: self.pages(),
        }))
    }

    async fn fetch(&mut self, key: &Key) -> Result<Option<Row>> {
        let path = format!(
            "/{}/_doc/{}",
            path_segment(&self.index),
            path_segment(key.first().map_or("", String::as_str))
        );
        let reply = self.es.call(Method::Get, &path, None).await?;
        match reply.status {
            404 => Ok(None),
            _ if reply.is_success() => Ok(Some(row_of(&reply.body))),
            _ => Err(self.es.refused("cannot read a source document", &reply)),
        }
    }

    async fn start_capture(&mut self) -> Result<Position> {
        let settle = self.watermark().await?.map_or(Duration::ZERO, |w| w.settle);
        let start = chrono::Utc::now().timestamp_millis() - settle.as_millis() as i64;
        Ok(Position(start.to_string()))
    }

    async fn read_changes(
        &mut self,
        after: &Position,
        max_changes: Option<usize>,
    ) -> Result<ChangeBatch> {
        let Some(watermark) = self.watermark().await? else {
            return Ok(ChangeBatch {
                changes: Vec::new(),
                end: None,
                drained: true,
            });
        };
        if watermark.refresh_first {
            self.refresh().await?;
        }
        let from = millis(after)? - watermark.settle.as_millis() as i64;
        let pages = self.pages().matching(
            json!({"range": {&watermark.field: {"gte": from, "format": "epoch_millis"}}}),
            vec![json!({&watermark.field: {"order": "asc"}})],
        );
        let limit = max_changes.unwrap_or(usize::MAX);
        let (mut changes, mut newest, mut page_after, mut read) = (Vec::new(), None, None, 0);
        let drained = loop {
            let page = pages.next(page_after.as_ref(), CHANGES_PAGE).await?;
            if page.restarted {
                changes.clear();
            }
            read += page.hits.len();
            for hit in &page.hits {
                let row = row_of(hit);
                let id = hit["_id"].as_str().unwrap_or_default();
                let version = hit["_version"].as_i64().unwrap_or(1);
                let at = hit["sort"][0].as_i64().unwrap_or(0);
                newest = Some(newest.map_or(at, |n: i64| n.max(at)));
                if self.delivered.get(id).is_some_and(|(v, _)| *v == version) {
                    continue;
                }
                self.delivered.insert(id.to_string(), (version, at));
                changes.push(Change::Upsert { old_key: None, row });
            }
            let full = page.hits.len() == CHANGES_PAGE;
            if !full || read >= limit {
                pages.close(&page.pit).await;
                break !full;
            }
            page_after = page.after();
        };
        // What lies before the settling window will not be read again.
        let settle = watermark.settle.as_millis() as i64;
        if let Some(newest) = newest {
            self.position = Some(newest);
            self.delivered.retain(|_, (_, at)| *at >= newest - settle);
        }
        self.drained = drained;
        let end = match newest {
            Some(newest) => Some(Position(newest.max(millis(after)?).to_string())),
            None => None,
        };
        Ok(ChangeBatch {
            changes,
            end,
            drained,
        })
    }

    async fn confirm(&mut self, _upto: &Position) -> Result<()> {
        Ok(())
    }

    async fn lag(&mut self) -> Result<Lag> {
        let seconds = match (self.drained, self.position) {
            (true, _) | (false, None) => 0.0,
            (false, Some(at)) => {
                ((chrono::Utc::now().timestamp_millis() - at).max(0) as f64) / 1000.0
            }
        };
        Ok(Lag { seconds, bytes: 0 })
    }

    async fn stop_capture(&mut self) -> Result<()> {
        Ok(())
    }

    async fn chunks(&mut self, range: &KeyRange) -> Result<Vec<KeyRange>> {
        Ok(vec![range.clone()])
    }

    async fn digest(
        &mut self,
        _chunk: &KeyRange,
        _projection: &Projection,
        _checksum: bool,
    ) -> Result<Digest> {
        Ok(digest::total(&digest::buckets(&self.pages(), false).await?))
    }

    async fn hold_writes(&mut self) -> Result<()> {
        Ok(())
    }

    async fn release_writes(&mut self) -> Result<()> {
        Ok(())
    }

    async fn fence(&mut self) -> Result<()> {
        self.set_write_block(true).await
    }

    async fn unfence(&mut self) -> Result<()> {
        self.set_write_block(false).await
    }

    async fn contract(&mut self) -> Result<()> {
        self.es.delete_old_index(&self.alias, &self.index).await
    }

    async fn forget(&mut self) -> Result<()> {
        Ok(())
    }
}
