//! The new index as a job's sink, and the alias it takes at cutover. Its documents come
//! from another index of the cluster (a reindex, [`Origin::Index`]) or from the rows of
//! another store (a copy, [`Origin::Rows`], made documents by [`Documents`]).
//!
//! Invariants:
//! - Documents are written with `_bulk`, each with the source's `_version` as an
//!   external version (`external_gte`): a replayed older write is refused by the server
//!   (409, counted as already there), so a batch redone after a crash, or a change
//!   applied twice, never undoes a newer one. Any other item the server refuses fails
//!   the batch, naming how many and why, before its checkpoint is saved: nothing is
//!   counted copied that is not there. Items refused for load (429, a full write queue)
//!   are sent again after a back-off.
//! - Checkpoints ([`Checkpoints`]) are saved after the writes they stand for were
//!   acknowledged.
//! - Expand creates `<alias>_vN` (its name saved before it is created) with refresh off
//!   and no replicas; cutover restores both (from the new settings, else the source's)
//!   before anything else.
//! - A copy's documents are versioned by change position ([`super::documents`]); its
//!   source stays in use (it is the source of truth: never fenced), so its cutover
//!   drains the changes committed so far and moves (or creates) the alias; deletes come
//!   as changes.
//! - Cutover of a reindex: the source index is write-blocked, refreshed, its last changes drained,
//!   documents deleted from it meanwhile deleted from the new index (found by `_id`),
//!   the way back's capture started, and then one `_aliases` request moves the alias
//!   (with `is_write_index` when the old index had it); it is recorded once the alias
//!   points at the new index, and a resumed cutover that finds it there does not move
//!   it again.
//! - The way back is this sink with the indexes exchanged ([`Direction::Back`]): its
//!   target is the old index, unblocked for it, and its cutover moves the alias back.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use elasticsearch::http::Method;
use serde_json::{json, Map, Value};

use super::checkpoints::Checkpoints;
use super::digest;
use super::documents::{version_of, Documents};
use super::pit::Pages;
use super::server_copy::ServerCopy;
use super::source::ElasticSource;
use super::{path_segment, Es};
use crate::backend::lease::Lease;
use crate::engine::progress::{AliasTarget, CutoverReport, KeyRange, RangeProgress};
use crate::engine::row::{Change, Position, Row, Value as RowValue};
use crate::engine::sink::{BatchWriter, CopyWorker, PairedWorker};
use crate::engine::source::{Batch, ChangeBatch, RowFormat, Rows};
use crate::engine::{Sink, Source};
use crate::error::{Error, Result};

/// Sends of a bulk request's items refused for load, after back-offs doubling from
/// [`BACKOFF`].
const LOAD_RETRIES: u32 = 8;
const BACKOFF: Duration = Duration::from_millis(200);
/// Refused documents named in an error.
const NAMED: usize = 3;
/// Differing documents settled one by one at verify; more are reported as they are.
const MAX_SETTLED: usize = 10_000;
const SETTLE_ROUNDS: usize = 5;

/// The indexes of a job.
#[derive(Debug, Clone)]
pub struct Indexes {
    pub alias: String,
    /// The index the alias named when the job began (a copy may create the alias).
    pub old: Option<String>,
    /// `<alias>_vN`, built by the job.
    pub new: String,
}

/// Which way a sink writes: the forward job into the new index, or its way back.
#[derive(Debug, Clone)]
pub enum Direction {
    /// Into the new index, created by expand with this mapping and these settings.
    Forward {
        mapping: Value,
        settings: Map<String, Value>,
    },
    /// Into the old index, after a cutover (see [`super::reindex::open_way_back`]).
    Back,
}

/// Where a sink's documents come from.
#[derive(Debug, Clone)]
pub enum Origin {
    /// The old index (a reindex): documents as they are, with their versions.
    Index,
    /// Rows of another store (a copy), made documents so.
    Rows(Documents),
}

impl Origin {
    /// The `_id` of the document a change's key names.
    fn id_of_key(&self, key: &crate::engine::row::Key) -> Result<String> {
        match self {
            Origin::Index => Ok(key.join(":")),
            Origin::Rows(documents) => documents.id_of_key(key),
        }
    }
}

pub struct ElasticSink {
    pub(super) es: Es,
    opensearch: bool,
    job: String,
    pub(super) indexes: Indexes,
    direction: Direction,
    pub(super) origin: Origin,
    checkpoints: Checkpoints,
    /// The job's claim; `None` in a copy worker's handle.
    lease: Option<Lease>,
    /// The way back's source and sink, whose capture cutover starts before the switch.
    way_back: Option<Box<(ElasticSource, ElasticSink)>>,
    /// Whether the job catches up (otherwise a difference at verify is never settled).
    catches_up: bool,
    /// A reindex the cluster copies (`[copy] method = "server"`): `_reindex`'s slices.
    server_copy: Option<String>,
}

/// The index a sink writes, and the one it reads from.
impl ElasticSink {
    pub fn new(
        es: &Es,
        opensearch: bool,
        checkpoints: Checkpoints,
        indexes: Indexes,
        direction: Direction,
        origin: Origin,
        catches_up: bool,
    ) -> ElasticSink {
        let holder = format!("{} pid {}", crate::state::actor(), std::process::id());
        let job = checkpoints.job().to_string();
        ElasticSink {
            es: es.clone(),
            opensearch,
            lease: Some(super::lease::lease(es, &format!("job:{job}"), holder)),
            job,
            indexes,
            direction,
            origin,
            checkpoints,
            way_back: None,
            catches_up,
            server_copy: None,
        }
    }

    /// Has the cluster copy the old index into the new (`_reindex` in `slices`).
    pub fn copied_by_server(mut self, slices: String) -> ElasticSink {
        self.server_copy = Some(slices);
        self
    }

    pub fn with_way_back(mut self, source: ElasticSource, sink: ElasticSink) -> ElasticSink {
        self.way_back = Some(Box::new((source, sink)));
        self
    }

    /// The index written.
    fn alias_target(&self) -> AliasTarget {
        AliasTarget {
            alias: self.indexes.alias.clone(),
            index: self.target().to_string(),
        }
    }

    pub(super) fn target(&self) -> &str {
        match self.direction {
            Direction::Forward { .. } => &self.indexes.new,
            Direction::Back => self.indexes.old.as_deref().unwrap_or_default(),
        }
    }

    /// The index read (a reindex's).
    fn source(&self) -> &str {
        match self.direction {
            Direction::Forward { .. } => self.indexes.old.as_deref().unwrap_or_default(),
            Direction::Back => &self.indexes.new,
        }
    }

    fn pages(&self, index: &str) -> Pages {
        Pages::new(&self.es, index, self.opensearch)
    }

    pub(super) fn writer(&self) -> ElasticWriter {
        ElasticWriter {
            es: self.es.clone(),
            index: self.target().to_string(),
            checkpoints: self.checkpoints.clone(),
            origin: self.origin.clone(),
            version: 1,
        }
    }

    async fn exists(&self, index: &str) -> Result<bool> {
        let reply = self
            .es
            .call(Method::Head, &format!("/{}", path_segment(index)), None)
            .await?;
        Ok(reply.is_success())
    }

    async fn put_settings(&self, index: &str, settings: Value, context: &str) -> Result<()> {
        let path = format!("/{}/_settings", path_segment(index));
        self.es
            .expect(Method::Put, &path, Some(&settings), context)
            .await
            .map(drop)
    }

    pub(super) async fn refresh(&self, index: &str) -> Result<()> {
        let path = format!("/{}/_refresh", path_segment(index));
        self.es
            .expect(
                Method::Post,
                &path,
                None,
                &format!("cannot refresh `{index}`"),
            )
            .await
            .map(drop)
    }

    /// Applies every change the source has from the saved position on; returns how many.
    pub(super) async fn drain(&mut self, source: &mut dyn Source) -> Result<u64> {
        let mut applied = 0;
        loop {
            let Some(after) = self.position().await? else {
                return Ok(0);
            };
            let batch = source.read_changes(&after, None).await?;
            if batch.end.is_none() {
                return Ok(applied);
            }
            applied += self.apply(&batch, source).await?;
            if batch.drained {
                return Ok(applied);
            }
        }
    }

    /// Deletes from the target the documents the source no longer has (deletes leave no
    /// watermark); returns how many. Once the changes are drained the target holds every
    /// source document, so equal counts mean nothing is gone and the `_id` sweep (a read
    /// of both indexes) is skipped.
    async fn delete_gone(&self) -> Result<u64> {
        self.refresh(self.target()).await?;
        if self.es.count(self.source()).await? == self.es.count(self.target()).await? {
            return Ok(0);
        }
        let (source, target) = (self.pages(self.source()), self.pages(self.target()));
        let wanted = digest::buckets(&source, true).await?;
        let held = digest::buckets(&target, true).await?;
        let buckets = digest::differing(&wanted, &held);
        if buckets.is_empty() {
            return Ok(0);
        }
        let wanted = digest::documents_in(&source, &buckets, true).await?;
        let held = digest::documents_in(&target, &buckets, true).await?;
        let gone: Vec<Action> = held
            .keys()
            .filter(|id| !wanted.contains_key(*id))
            .map(|id| Action::Delete { id: id.clone() })
            .collect();
        let count = gone.len() as u64;
        self.writer().send(gone).await?;
        Ok(count)
    }

    /// Where change capture started, once saved.
    async fn start(&self) -> Result<Option<Position>> {
        let state = self.checkpoints.state().await?;
        Ok(state
            .get("start")
            .and_then(Value::as_str)
            .map(|p| Position(p.to_string())))
    }

    /// The write of a changed row that did not carry every value: the row as the source
    /// has it now (a delete when it is gone).
    async fn read_again(&self, source: &mut dyn Source, row: &Row, version: i64) -> Result<Action> {
        let Origin::Rows(documents) = &self.origin else {
            return Err(Error::State("a document change lacks its document".into()));
        };
        let key = documents.key(row);
        Ok(match documents.current(source, &key).await? {
            Some((id, source)) => Action::Index {
                id,
                source,
                version,
            },
            None => Action::Delete {
                id: documents.id_of_key(&key)?,
            },
        })
    }

    /// Where the alias points now, and whether it is the write index there.
    async fn alias_now(&self) -> Result<Vec<(String, bool)>> {
        let path = format!("/_alias/{}", path_segment(&self.indexes.alias));
        let reply = self.es.call(Method::Get, &path, None).await?;
        if reply.status == 404 {
            return Ok(Vec::new());
        }
        if !reply.is_success() {
            return Err(self.es.refused("cannot read the alias", &reply));
        }
        let alias = &self.indexes.alias;
        Ok(reply
            .body
            .as_object()
            .map(|indexes| {
                indexes
                    .iter()
                    .map(|(index, entry)| {
                        let write = entry["aliases"][alias]["is_write_index"] == true;
                        (index.clone(), write)
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// One `_aliases` request: the alias leaves the source index for the target.
    async fn move_alias(&self) -> Result<()> {
        let now = self.alias_now().await?;
        if now.iter().map(|(i, _)| i.as_str()).eq([self.target()]) {
            return Ok(()); // a resumed cutover: moved already
        }
        let write = now.iter().any(|(_, write)| *write);
        let mut add = json!({"index": self.target(), "alias": self.indexes.alias});
        if write {
            add["is_write_index"] = json!(true);
        }
        let mut actions: Vec<Value> = now
            .iter()
            .map(|(index, _)| json!({"remove": {"index": index, "alias": self.indexes.alias}}))
            .collect();
        actions.push(json!({"add": add}));
        self.es
            .expect(
                Method::Post,
                "/_aliases",
                Some(&json!({"actions": actions})),
                &format!("cannot move the alias `{}`", self.indexes.alias),
            )
            .await
            .map(drop)
    }

    /// The document `id` as it is on `index`, by real-time get.
    pub(super) async fn get(&self, index: &str, id: &str) -> Result<Option<Value>> {
        let path = format!("/{}/_doc/{}", path_segment(index), path_segment(id));
        let reply = self.es.call(Method::Get, &path, None).await?;
        match reply.status {
            404 => Ok(None),
            _ if reply.is_success() => Ok(Some(reply.body["_source"].clone())),
            _ => Err(self.es.refused("cannot read a document", &reply)),
        }
    }

    /// Why the two indexes differ once the documents writes were moving have settled
    /// (the changes applied, deletes carried over), or `None`.
    async fn settle(&mut self, source: &mut dyn Source, checksum: bool) -> Result<Option<String>> {
        let (from, into) = (self.pages(self.source()), self.pages(self.target()));
        let wanted = digest::buckets(&from, !checksum).await?;
        let held = digest::buckets(&into, !checksum).await?;
        let buckets: BTreeSet<usize> = digest::differing(&wanted, &held);
        if buckets.is_empty() {
            return Ok(None);
        }
        let (w, h) = (digest::total(&wanted), digest::total(&held));
        let difference = format!(
            "the source has {} documents, the new index {}; {} of {} buckets differ",
            w.rows,
            h.rows,
            buckets.len(),
            digest::BUCKETS
        );
        if !self.catches_up {
            return Ok(Some(difference));
        }
        let mut ids = digest::differing_ids(
            &digest::documents_in(&from, &buckets, !checksum).await?,
            &digest::documents_in(&into, &buckets, !checksum).await?,
        );
        if ids.len() > MAX_SETTLED {
            return Ok(Some(format!(
                "{difference} (more than {MAX_SETTLED} documents)"
            )));
        }
        for _ in 0..SETTLE_ROUNDS {
            if ids.is_empty() {
                return Ok(None);
            }
            self.drain(source).await?;
            let mut still = Vec::new();
            let mut gone = Vec::new();
            for id in ids {
                let wanted = self.get(self.source(), &id).await?;
                let held = self.get(self.target(), &id).await?;
                match (wanted, held) {
                    (None, Some(_)) => gone.push(Action::Delete { id }),
                    (Some(a), Some(b))
                        if !checksum || digest::canonical(&a) == digest::canonical(&b) => {}
                    _ => still.push(id),
                }
            }
            self.writer().send(gone).await?;
            ids = still;
            if !ids.is_empty() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        if ids.is_empty() {
            return Ok(None);
        }
        let named: Vec<&str> = ids.iter().take(5).map(String::as_str).collect();
        Ok(Some(format!(
            "{difference}: {} documents differ after settling, e.g. _id {}",
            ids.len(),
            named.join(", ")
        )))
    }

    async fn create_target(&self, mapping: &Value, settings: &Map<String, Value>) -> Result<()> {
        let mut settings = settings.clone();
        settings.insert("index.refresh_interval".into(), json!("-1"));
        settings.insert("index.number_of_replicas".into(), json!(0));
        let body = json!({"settings": settings, "mappings": mapping});
        let path = format!("/{}", path_segment(self.target()));
        let reply = self.es.call(Method::Put, &path, Some(&body)).await?;
        if reply.is_success() || reply.error_type() == Some("resource_already_exists_exception") {
            Ok(())
        } else {
            Err(Error::Refused(format!(
                "job `{}`: cannot create `{}` with the new mapping and settings: {}",
                self.job,
                self.target(),
                reply.reason()
            )))
        }
    }

    /// Refresh interval and replicas as the new index is to have them.
    async fn restore_settings(&self) -> Result<()> {
        let state = self.checkpoints.state().await?;
        let Some(restore) = state.get("restore") else {
            return Ok(());
        };
        self.put_settings(
            self.target(),
            json!({"index": {"refresh_interval": restore["refresh_interval"], "number_of_replicas": restore["number_of_replicas"]}}),
            "cannot restore the new index's refresh interval and replicas",
        )
        .await?;
        self.refresh(self.target()).await
    }
}

/// One write of a bulk request.
#[derive(Debug, Clone)]
pub(super) enum Action {
    Index {
        id: String,
        source: Value,
        version: i64,
    },
    Delete {
        id: String,
    },
}

impl Action {
    /// The write of `row`: a document of the old index with its own version, or a row
    /// of another store made a document at `version`. `None` when the row lacks a value
    /// (read it again from the source).
    fn of(origin: &Origin, row: &Row, version: i64) -> Result<Option<Action>> {
        if let Origin::Rows(documents) = origin {
            return Ok(documents.document(row)?.map(|(id, source)| Action::Index {
                id,
                source,
                version,
            }));
        }
        match row.0.as_slice() {
            [RowValue::Text(id), RowValue::Json(source), RowValue::Int(version)] => {
                Ok(Some(Action::Index {
                    id: id.clone(),
                    source: source.clone(),
                    version: *version,
                }))
            }
            _ => Err(Error::State(
                "an Elasticsearch sink takes documents from an Elasticsearch source".into(),
            )),
        }
    }

    fn id(&self) -> &str {
        match self {
            Action::Index { id, .. } | Action::Delete { id } => id,
        }
    }

    fn lines(&self, index: &str, out: &mut String) {
        match self {
            Action::Index {
                id,
                source,
                version,
            } => {
                let meta = json!({"index": {"_index": index, "_id": id, "version": version, "version_type": "external_gte"}});
                out.push_str(&format!("{meta}\n{source}\n"));
            }
            Action::Delete { id } => {
                out.push_str(&format!(
                    "{}\n",
                    json!({"delete": {"_index": index, "_id": id}})
                ));
            }
        }
    }
}

/// Writes batches into one index, with their checkpoints after.
pub(super) struct ElasticWriter {
    es: Es,
    index: String,
    checkpoints: Checkpoints,
    origin: Origin,
    /// The version of a copy's rows (where its change capture starts).
    version: i64,
}

impl ElasticWriter {
    /// Sends `actions` in one bulk request (again for the items refused for load);
    /// fails naming the documents the server refused.
    pub(super) async fn send(&self, mut actions: Vec<Action>) -> Result<()> {
        let mut refused: Vec<String> = Vec::new();
        let mut refused_count = 0;
        for attempt in 0..=LOAD_RETRIES {
            if actions.is_empty() {
                break;
            }
            if attempt > 0 {
                let wait = BACKOFF.saturating_mul(1 << attempt.min(6));
                tracing::warn!(index = %self.index, documents = actions.len(), wait_ms = wait.as_millis() as u64, "the server refused writes for load; sending them again");
                tokio::time::sleep(wait).await;
            }
            let mut body = String::new();
            actions.iter().for_each(|a| a.lines(&self.index, &mut body));
            let reply = self.es.bulk("/_bulk", body).await?;
            if reply.status == 429 {
                continue;
            }
            if !reply.is_success() {
                return Err(self
                    .es
                    .refused(&format!("cannot write into `{}`", self.index), &reply));
            }
            let items = reply.body["items"].as_array().cloned().unwrap_or_default();
            let mut again = Vec::new();
            for (action, item) in actions.into_iter().zip(items.iter()) {
                let result = item
                    .as_object()
                    .and_then(|o| o.values().next())
                    .cloned()
                    .unwrap_or_default();
                let status = result["status"].as_u64().unwrap_or(0);
                let kind = result["error"]["type"].as_str().unwrap_or_default();
                match status {
                    200..=299 => {}
                    // A newer version is there already; a delete of what is gone.
                    409 if kind == "version_conflict_engine_exception" => {}
                    404 if matches!(action, Action::Delete { .. }) => {}
                    429 => again.push(action),
                    _ if kind == "es_rejected_execution_exception" => again.push(action),
                    _ => {
                        refused_count += 1;
                        if refused.len() < NAMED {
                            refused.push(format!(
                                "_id `{}`: {kind}: {}",
                                action.id(),
                                result["error"]["reason"].as_str().unwrap_or_default()
                            ));
                        }
                    }
                }
            }
            actions = again;
        }
        if refused_count > 0 {
            return Err(Error::Store {
                database: self.es.name().to_string(),
                context: format!("`{}` refused {refused_count} documents", self.index),
                message: format!(
                    "{}; the batch's checkpoint was not saved, so they are sent again when the job runs again: fix the new mapping (a field whose values do not fit its type), abort the job and run it again",
                    refused.join("; ")
                ),
                transient: false,
            });
        }
        if !actions.is_empty() {
            return Err(Error::Store {
                database: self.es.name().to_string(),
                context: format!("cannot write into `{}`", self.index),
                message: format!(
                    "{} documents still refused for load after {LOAD_RETRIES} retries",
                    actions.len()
                ),
                transient: true,
            });
        }
        Ok(())
    }
}

#[async_trait]
impl BatchWriter for ElasticWriter {
    async fn write(&mut self, batch: Batch, progress: &mut RangeProgress) -> Result<u64> {
        let Rows::Values(rows) = batch.rows else {
            return Err(Error::State("an Elasticsearch sink takes documents".into()));
        };
        let mut actions = Vec::with_capacity(rows.len());
        for row in &rows {
            actions.push(
                Action::of(&self.origin, row, self.version)?
                    .ok_or_else(|| Error::State("a copied row lacks a value".into()))?,
            );
        }
        let count = actions.len() as u64;
        self.send(actions).await?;
        crate::crash_point!("copy.after_write");
        let next = RangeProgress {
            range: progress.range.clone(),
            last_key: batch.last_key.or(progress.last_key.clone()),
            rows: progress.rows + count,
            done: batch.done,
        };
        self.checkpoints.save_range(&next).await?;
        *progress = next;
        Ok(count)
    }
}

#[async_trait]
impl Sink for ElasticSink {
    async fn try_claim(&mut self) -> Result<bool> {
        let Some(lease) = self.lease.as_mut() else {
            return Err(Error::State(
                "a copy worker's handle cannot claim the job".into(),
            ));
        };
        Ok(lease.acquire(Duration::ZERO).await?.is_ok())
    }

    async fn reconnect(&mut self) -> Result<bool> {
        self.try_claim().await
    }

    async fn start_fresh(&mut self) -> Result<()> {
        self.checkpoints.forget().await
    }

    async fn expand(&mut self, _source: &dyn Source) -> Result<bool> {
        let state = self.checkpoints.state().await?;
        if let Some(created) = state.get("created_target").and_then(Value::as_bool) {
            return Ok(created);
        }
        if matches!(self.origin, Origin::Index) && !self.exists(self.source()).await? {
            return Err(Error::Refused(format!(
                "job `{}`: the source index `{}` does not exist",
                self.job,
                self.source()
            )));
        }
        let Direction::Forward { mapping, settings } = self.direction.clone() else {
            // The way back writes into the old index, blocked by the forward cutover.
            self.put_settings(
                self.target(),
                json!({"index": {"blocks": {"write": false}}}),
                "cannot lift the old index's write block",
            )
            .await?;
            return Ok(false);
        };
        // The name first, so that a run killed after the create knows the index is its own.
        let creating = state.get("creating").and_then(Value::as_str) == Some(self.target());
        if !creating && self.exists(self.target()).await? {
            return Err(Error::Refused(format!(
                "job `{}`: the index `{}` exists already and this job did not create it: delete it, or point the alias `{}` at it and run the job again",
                self.job,
                self.target(),
                self.indexes.alias
            )));
        }
        let restore = json!({
            "refresh_interval": settings.get("index.refresh_interval").cloned().unwrap_or(Value::Null),
            "number_of_replicas": settings.get("index.number_of_replicas").cloned().unwrap_or(Value::Null),
        });
        self.checkpoints
            .update_state(json!({"creating": self.target(), "old": self.indexes.old, "new": self.indexes.new, "restore": restore}))
            .await?;
        self.create_target(&mapping, &settings).await?;
        self.checkpoints
            .update_state(json!({"created_target": true}))
            .await?;
        Ok(true)
    }

    async fn save_start(&mut self, start: &Position) -> Result<()> {
        if self.position().await?.is_none() {
            self.checkpoints
                .update_state(json!({"start": start.0, "position": start.0}))
                .await?;
        }
        Ok(())
    }

    async fn position(&mut self) -> Result<Option<Position>> {
        let state = self.checkpoints.state().await?;
        Ok(state
            .get("position")
            .and_then(Value::as_str)
            .map(|p| Position(p.to_string())))
    }

    async fn saved_ranges(&mut self) -> Result<Vec<RangeProgress>> {
        self.checkpoints.ranges().await
    }

    async fn save_ranges(&mut self, ranges: &[KeyRange]) -> Result<()> {
        self.checkpoints.save_ranges(ranges).await
    }

    async fn copy_worker(&mut self, source: &dyn Source) -> Result<Box<dyn CopyWorker>> {
        if let Some(slices) = &self.server_copy {
            return Ok(Box::new(ServerCopy::new(
                &self.es,
                self.source(),
                self.target(),
                slices.clone(),
                self.checkpoints.clone(),
            )));
        }
        let mut writer = self.writer();
        if let (Origin::Rows(_), Some(start)) = (&self.origin, self.start().await?) {
            writer.version = version_of(&start)?;
        }
        Ok(Box::new(PairedWorker {
            reader: source.reader(&Vec::new(), RowFormat::Values).await?,
            writer: Box::new(writer),
        }))
    }

    async fn apply(&mut self, changes: &ChangeBatch, source: &mut dyn Source) -> Result<u64> {
        let version = match (&self.origin, &changes.end) {
            (Origin::Rows(_), Some(end)) => version_of(end)?,
            _ => 0,
        };
        let mut actions = Vec::with_capacity(changes.changes.len());
        for change in &changes.changes {
            match change {
                Change::Upsert { row, old_key } => {
                    if let (Origin::Rows(documents), Some(old)) = (&self.origin, old_key) {
                        actions.push(Action::Delete {
                            id: documents.id_of_key(old)?,
                        });
                    }
                    match Action::of(&self.origin, row, version)? {
                        Some(action) => actions.push(action),
                        None => actions.push(self.read_again(source, row, version).await?),
                    }
                }
                Change::Delete { key } => actions.push(Action::Delete {
                    id: self.origin.id_of_key(key)?,
                }),
            }
        }
        self.writer().send(actions).await?;
        crate::crash_point!("catch_up.after_write");
        if let Some(end) = &changes.end {
            self.checkpoints
                .update_state(json!({"position": end.0}))
                .await?;
        }
        Ok(changes.changes.len() as u64)
    }

    async fn compare(
        &mut self,
        source: &mut dyn Source,
        chunk: &KeyRange,
        checksum: bool,
    ) -> Result<Option<String>> {
        self.refresh(self.target()).await?;
        match &self.origin {
            Origin::Index => self.settle(source, checksum).await,
            Origin::Rows(documents) => {
                let documents = documents.clone();
                self.compare_rows(&documents, source, chunk, checksum).await
            }
        }
    }

    async fn cutover(&mut self, source: &mut dyn Source) -> Result<CutoverReport> {
        let started = Instant::now();
        if matches!(self.direction, Direction::Forward { .. }) {
            self.restore_settings().await?;
        }
        source.fence().await?;
        crate::crash_point!("cutover.after_lock");
        let mut drained;
        if matches!(self.origin, Origin::Index) {
            self.refresh(self.source()).await?;
            drained = self.drain(source).await?;
            drained += self.delete_gone().await?;
        } else {
            drained = self.drain(source).await?;
            self.refresh(self.target()).await?;
        }
        crate::crash_point!("cutover.after_drain");
        if let Some(back) = self.way_back.as_deref_mut() {
            let start = back.0.start_capture().await?;
            back.1.save_start(&start).await?;
            crate::crash_point!("cutover.after_back_capture");
        }
        self.move_alias().await?;
        crate::crash_point!("cutover.after_swap");
        // A copy's source is never blocked.
        let blocked = match self.origin {
            Origin::Index => started.elapsed(),
            Origin::Rows(_) => Duration::ZERO,
        };
        self.checkpoints
            .update_state(json!({"cutover": {"writes_blocked_ms": blocked.as_millis() as u64, "changes": drained}}))
            .await?;
        crate::crash_point!("cutover.after_record");
        Ok(CutoverReport {
            writes_blocked: blocked,
            changes_drained: drained,
            alias: Some(self.alias_target()),
        })
    }

    async fn completed_cutover(&mut self) -> Result<Option<CutoverReport>> {
        let state = self.checkpoints.state().await?;
        Ok(state.get("cutover").map(|c| CutoverReport {
            writes_blocked: Duration::from_millis(c["writes_blocked_ms"].as_u64().unwrap_or(0)),
            changes_drained: c["changes"].as_u64().unwrap_or(0),
            alias: Some(self.alias_target()),
        }))
    }

    async fn abort(&mut self, source: &mut dyn Source, created_target: bool) -> Result<()> {
        if created_target && matches!(self.direction, Direction::Forward { .. }) {
            let path = format!("/{}", path_segment(self.target()));
            let reply = self.es.call(Method::Delete, &path, None).await?;
            if !(reply.is_success() || reply.status == 404) {
                return Err(self.es.refused("cannot delete the new index", &reply));
            }
        }
        source.unfence().await?;
        self.start_fresh().await
    }

    async fn contract(&mut self) -> Result<()> {
        // A reindex's old index is its source's to delete.
        if let (Origin::Rows(_), Some(old)) = (&self.origin, &self.indexes.old) {
            self.es.delete_old_index(&self.indexes.alias, old).await?;
        }
        self.start_fresh().await
    }
}
