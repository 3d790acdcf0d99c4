//! A copy from another store (a PostgreSQL table or a MongoDB collection) into a new
//! index behind an alias: the index rebuilt from the source of truth.
//!
//! `[target] index` names the alias; the job builds `<alias>_vN` (N one past the highest
//! there is), fills it with the source's rows made documents ([`super::documents`]),
//! catches up from the source's change capture, verifies row against document
//! ([`super::verify_rows`]) and moves the alias (creating it when it did not exist).
//!
//! Invariants:
//! - The source stays the source of truth: the job never stops its writes, renames it
//!   or runs statements on it ([`KeptSource`]); only verify makes writers wait while it
//!   compares a chunk (as every PostgreSQL job's verify does: a SHARE lock, readers go
//!   on), so that the rows and the documents are compared at one moment. Its change
//!   capture goes at cutover. (MongoDB has no such hold: its differences are settled
//!   by draining the change stream and comparing again.)
//! - There is no way back after cutover (the old index, if any, got no writes since):
//!   until contract deletes it, pointing the alias back is one `_aliases` request.

use std::sync::Arc;

use async_trait::async_trait;

use super::checkpoints::Checkpoints;
use super::documents::Documents;
use super::reindex::{indexes, new_index};
use super::sink::{ElasticSink, Origin};
use super::Es;
use crate::backend::plan::JobPlan;
use crate::config::{Config, DatabaseKind};
use crate::engine::progress::{KeyRange, Lag};
use crate::engine::row::{Digest, Key, Position, Projection, Row, Schema};
use crate::engine::source::{BatchReader, ChangeBatch, RowFormat};
use crate::engine::{Pipeline, Source};
use crate::error::{Error, Result};
use crate::job::{CatchUpMethod, JobSpec};
use crate::state::StateStore;

/// A copy job's source (opened by its store's backend) and the index sink, joined.
pub async fn open_job(
    config: &Config,
    spec: &JobSpec,
    store: &Arc<dyn StateStore>,
) -> Result<Pipeline> {
    let (source, documents) = open_source(config, spec).await?;
    let sink = open_sink(config, spec, store, documents).await?;
    Ok(Pipeline::new(Box::new(KeptSource(source)), Box::new(sink)))
}

/// The job's source, and how its rows become documents.
async fn open_source(config: &Config, spec: &JobSpec) -> Result<(Box<dyn Source>, Documents)> {
    match config.database(&spec.source.database)?.kind {
        DatabaseKind::Postgresql => {
            let source = crate::backend::postgres::open_source(config, spec).await?;
            let documents = Documents::Columns(source.schema().clone());
            Ok((source, documents))
        }
        DatabaseKind::Mongodb => Ok((
            crate::backend::mongodb::open_source(config, spec).await?,
            Documents::Bson,
        )),
        DatabaseKind::Elasticsearch => Err(Error::Usage(format!(
            "job `{}`: an index is rebuilt into another by `kind = \"reindex\"`",
            spec.name
        ))),
    }
}

/// What `job plan` prints for a copy into an index; reads only.
pub async fn plan_job(
    config: &Config,
    spec: &JobSpec,
    store: &Arc<dyn StateStore>,
) -> Result<JobPlan> {
    let (mut source, documents) = open_source(config, spec).await?;
    let target = spec.target.as_ref().expect("a copy has a target");
    let es = Es::connect(&target.database, config.database(&target.database)?)?;
    let alias = target.index.as_deref().unwrap_or_default();
    let state = Checkpoints::new(store, &spec.name).state().await?;
    let found = indexes(&es, &spec.name, &state, alias, true).await?;
    let new = &found.new;
    let (from, rows, log) = match &documents {
        Documents::Columns(_) => (spec.source.table.as_deref(), "rows", "logical replication"),
        Documents::Bson => (
            spec.source.collection.as_deref(),
            "documents",
            "the change stream",
        ),
    };
    let from = from.unwrap_or_default();
    let mut phases = vec![
        (
            "expand".to_string(),
            vec![format!(
                "create `{new}` with {}, refresh off and no replicas during the copy",
                match (&spec.expand.mapping, &found.old) {
                    (Some(_), _) => "the job's mapping".to_string(),
                    (None, Some(old)) => format!("`{old}`'s mapping"),
                    (None, None) => "a dynamic mapping".to_string(),
                }
            )],
        ),
        (
            "copy".to_string(),
            vec![format!(
                "read {from} in key order, {} {rows} per `_bulk` into `{new}` as documents (_id = key, external versions)",
                spec.copy.batch_size
            )],
        ),
    ];
    if spec.catch_up.method != CatchUpMethod::None {
        phases.push((
            "catch_up".to_string(),
            vec![format!(
                "apply the changes to {from} from {log} (deletes delete by _id)"
            )],
        ));
    }
    phases.push((
        "verify".to_string(),
        vec![format!(
            "each of {from}'s {rows} made a document against `{new}`'s (_mget), then the counts"
        )],
    ));
    phases.push((
        "cutover".to_string(),
        vec![
            format!("restore `{new}`'s refresh interval and replicas, apply the last changes (writes to {from} go on)"),
            match &found.old {
                Some(old) => format!("one `_aliases` request: `{alias}` from `{old}` to `{new}`"),
                None => format!("create the alias `{alias}` on `{new}`"),
            },
        ],
    ));
    if let Some(old) = &found.old {
        phases.push(("contract".to_string(), vec![format!("delete `{old}`")]));
    }
    Ok(JobPlan {
        rows_estimate: source.estimate_rows().await?,
        phases,
        dependents: Vec::new(),
    })
}

async fn open_sink(
    config: &Config,
    spec: &JobSpec,
    store: &Arc<dyn StateStore>,
    documents: Documents,
) -> Result<ElasticSink> {
    let target = spec.target.as_ref().expect("a copy has a target");
    let es = Es::connect(&target.database, config.database(&target.database)?)?;
    let opensearch = es.is_opensearch().await?;
    let alias = target.index.as_deref().unwrap_or_default();
    let checkpoints = Checkpoints::new(store, &spec.name);
    let state = checkpoints.state().await?;
    let found = indexes(&es, &spec.name, &state, alias, true).await?;
    let expanded = state.contains_key("new");
    let direction = new_index(&es, spec, expanded, found.old.as_deref()).await?;
    Ok(ElasticSink::new(
        &es,
        opensearch,
        checkpoints,
        found,
        direction,
        Origin::Rows(documents),
        spec.catch_up.method != CatchUpMethod::None,
    ))
}

/// A source that stays in use: reads, change capture and verify's hold pass through;
/// fencing and contract statements do nothing.
struct KeptSource(Box<dyn Source>);

#[async_trait]
impl Source for KeptSource {
    fn schema(&self) -> &Schema {
        self.0.schema()
    }
    async fn reconnect(&mut self) -> Result<()> {
        self.0.reconnect().await
    }
    async fn end_leftover_sessions(&mut self) -> Result<()> {
        self.0.end_leftover_sessions().await
    }
    async fn estimate_rows(&mut self) -> Result<u64> {
        self.0.estimate_rows().await
    }
    async fn plan_ranges(&mut self, concurrency: usize) -> Result<Vec<KeyRange>> {
        self.0.plan_ranges(concurrency).await
    }
    async fn replica_lag(&mut self) -> Result<f64> {
        self.0.replica_lag().await
    }
    async fn reader(
        &self,
        projection: &Projection,
        format: RowFormat,
    ) -> Result<Box<dyn BatchReader>> {
        self.0.reader(projection, format).await
    }
    async fn fetch(&mut self, key: &Key) -> Result<Option<Row>> {
        self.0.fetch(key).await
    }
    async fn start_capture(&mut self) -> Result<Position> {
        self.0.start_capture().await
    }
    async fn read_changes(
        &mut self,
        after: &Position,
        max_changes: Option<usize>,
    ) -> Result<ChangeBatch> {
        self.0.read_changes(after, max_changes).await
    }
    async fn confirm(&mut self, upto: &Position) -> Result<()> {
        self.0.confirm(upto).await
    }
    async fn lag(&mut self) -> Result<Lag> {
        self.0.lag().await
    }
    async fn stop_capture(&mut self) -> Result<()> {
        self.0.stop_capture().await
    }
    async fn chunks(&mut self, range: &KeyRange) -> Result<Vec<KeyRange>> {
        self.0.chunks(range).await
    }
    async fn digest(
        &mut self,
        chunk: &KeyRange,
        projection: &Projection,
        checksum: bool,
    ) -> Result<Digest> {
        self.0.digest(chunk, projection, checksum).await
    }
    async fn hold_writes(&mut self) -> Result<()> {
        self.0.hold_writes().await
    }
    async fn release_writes(&mut self) -> Result<()> {
        self.0.release_writes().await
    }
    async fn fence(&mut self) -> Result<()> {
        Ok(())
    }
    async fn unfence(&mut self) -> Result<()> {
        Ok(())
    }
    async fn contract(&mut self) -> Result<()> {
        Ok(())
    }
    async fn forget(&mut self) -> Result<()> {
        self.0.forget().await
    }
}
