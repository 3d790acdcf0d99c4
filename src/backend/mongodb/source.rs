//! A collection as the source of a job.
//!
//! Rows travel as two values: the `_id` as key text ([`super::order`]) and the whole
//! document as BSON bytes, reshaped by the job's transform pipeline (run on the source
//! server, in the same aggregation that reads the batch). Batches are `_id` ranges in
//! MongoDB's order; digests hash the documents' bytes in that order.
//!
//! MongoDB has no lock that makes writers wait, so [`Source::hold_writes`] holds
//! nothing: verification compares while writes go on, and rechecks a differing range
//! after catching up. The fence of cutover is a validator that refuses every write
//! (the collection's own validator is saved beside the job's checkpoints and put back
//! by [`Source::unfence`]).

use async_trait::async_trait;
use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document, RawDocumentBuf};
use mongodb::change_stream::ChangeStream;
use mongodb::{Collection, Database};
use sha2::{Digest as _, Sha256};

use super::capture::{position_of, token_of, EventReader, CHANGE_STREAM_HISTORY_LOST};
use super::order::{between, id_of, key_of};
use super::{connect, error_code, store_error};
use crate::engine::progress::{KeyRange, Lag};
use crate::engine::row::{Digest, Field, Key, Position, Projection, Row, Schema, Value};
use crate::engine::source::{Batch, BatchReader, ChangeBatch, RowFormat, Rows};
use crate::engine::Source;
use crate::error::{Error, Result};
use crate::job::JobSpec;
use crate::secret::SecretUrl;

/// Where the job keeps what it must remember on the source's side (the fence).
pub const CHECKPOINTS: &str = "switchyard_checkpoints";
/// Documents a verification reads per round trip.
const DIGEST_BATCH: u32 = 5000;

pub struct MongoSource {
    name: String,
    url: SecretUrl,
    job: String,
    database: Database,
    collection: String,
    pipeline: Vec<Document>,
    schema: Schema,
    events: EventReader,
    /// The open change stream and the position it stands at (a mutex only so that the
    /// source is `Sync`; one task uses it at a time).
    stream: tokio::sync::Mutex<Option<(Position, ChangeStream<Document>)>>,
    /// Seconds behind, as of the last read of changes.
    lag_seconds: f64,
}

/// The neutral shape of a collection's rows: its `_id`, and the document.
pub fn document_schema() -> Schema {
    Schema {
        fields: vec![
            Field {
                name: "_id".into(),
                type_name: "bson".into(),
            },
            Field {
                name: "document".into(),
                type_name: "bson document".into(),
            },
        ],
        key: vec![0],
        computed: Vec::new(),
    }
}

impl MongoSource {
    pub async fn open(spec: &JobSpec, name: &str, url: &SecretUrl) -> Result<MongoSource> {
        let collection = spec.source.collection.clone().unwrap_or_default();
        let pipeline = spec
            .transform
            .pipeline
            .0
            .iter()
            .map(super::to_document)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Usage(format!("job `{}`: transform.pipeline: {e}", spec.name)))?;
        Ok(MongoSource {
            name: name.to_string(),
            url: url.clone(),
            job: spec.name.clone(),
            database: connect(name, url).await?,
            events: EventReader {
                collection: collection.clone(),
                transformed: !pipeline.is_empty(),
                set_aside: None,
            },
            collection,
            pipeline,
            schema: document_schema(),
            stream: tokio::sync::Mutex::new(None),
            lag_seconds: 0.0,
        })
    }

    fn error(&self, context: &str, e: mongodb::error::Error) -> Error {
        store_error(&self.name, &self.url, context, e)
    }

    /// The name cutover sets the old collection aside under: that rename is the
    /// cutover's own, passed over by a stream that sees it (a cutover resumed after
    /// it; the way back, which watches the source's name from before the switch).
    pub fn with_set_aside(mut self, aside: &str) -> MongoSource {
        self.events.set_aside = Some(aside.to_string());
        self
    }

    /// The source's database, as connected.
    pub fn database(&self) -> &Database {
        &self.database
    }

    fn collection(&self) -> Collection<Document> {
        self.database.collection(&self.collection)
    }

    fn checkpoints(&self) -> Collection<Document> {
        self.database.collection(CHECKPOINTS)
    }

    fn fence_id(&self) -> String {
        format!("{}:fence", self.job)
    }

    async fn saved_fence(&self) -> Result<Option<Document>> {
        self.checkpoints()
            .find_one(doc! {"_id": self.fence_id()})
            .await
            .map_err(|e| self.error("cannot read the job's checkpoints", e))
    }

    /// The `listCollections` entry of the collection `filter` finds, if any.
    async fn collection_entry(&self, filter: Document) -> Result<Option<Document>> {
        let info = self
            .database
            .run_command(doc! {"listCollections": 1, "filter": filter})
            .await
            .map_err(|e| self.error("cannot read the source's options", e))?;
        Ok(info
            .get_document("cursor")
            .and_then(|c| c.get_array("firstBatch"))
            .ok()
            .and_then(|b| b.first())
            .and_then(Bson::as_document)
            .cloned())
    }

    /// The name the fenced collection has now: found by its UUID, since cutover renames
    /// it (a name alone could be the new collection's by then); `None` once it is gone.
    async fn fenced_name(&self, saved: &Document) -> Result<Option<String>> {
        let filter = match saved.get("uuid") {
            Some(uuid) => doc! {"info.uuid": uuid},
            None => doc! {"name": saved.get_str("collection").unwrap_or(&self.collection)},
        };
        Ok(self
            .collection_entry(filter)
            .await?
            .and_then(|entry| entry.get_str("name").ok().map(str::to_string)))
    }

    fn gone(&self) -> Error {
        Error::Refused(format!(
            "job `{}`: the source collection `{}` is gone, so it cannot be fenced for cutover",
            self.job, self.collection
        ))
    }

    /// The documents of `filter`, in `_id` order, reshaped by the pipeline.
    fn stages(&self, filter: Document, limit: Option<usize>) -> Vec<Document> {
        let mut stages = vec![doc! {"$match": filter}, doc! {"$sort": {"_id": 1}}];
        if let Some(limit) = limit {
            stages.push(doc! {"$limit": limit as i64});
        }
        stages.extend(self.pipeline.iter().cloned());
        stages
    }

    async fn open_stream(&self, after: Option<&Position>) -> Result<ChangeStream<Document>> {
        let mut watch = self
            .database
            .watch()
            .pipeline(vec![self.events.filter()])
            .max_await_time(std::time::Duration::from_millis(200));
        if let Some(after) = after {
            let token = mongodb::bson::from_document(token_of(after)?)
                .map_err(|e| Error::State(format!("not a resume token: {e}")))?;
            watch = watch.start_after(token);
        }
        watch
            .await
            .map(|stream| stream.with_type::<Document>())
            .map_err(|e| self.stream_error(e))
    }

    fn stream_error(&self, e: mongodb::error::Error) -> Error {
        match error_code(&e) {
            Some(40573) => Error::Refused(format!(
                "database `{}`: change streams need a replica set, and this server is standalone: start it as a (single-node) replica set (mongod --replSet rs0, then rs.initiate()), or copy without catching up (`[catch_up] method = \"none\"`, with writes to the source stopped)",
                self.name
            )),
            Some(CHANGE_STREAM_HISTORY_LOST) => Error::Refused(format!(
                "job `{}`: the source's oplog no longer holds the changes after the job's last position (the job stood still longer than the oplog's window), so it cannot catch up without losing writes. Abort it (switchyard job abort {}) and run it again, with a larger oplog (replSetResizeOplog) if the copy takes longer than the oplog holds",
                self.job, self.job
            )),
            _ => self.error("the change stream failed", e),
        }
    }
}

/// A document read as a row: its key text and bytes.
fn row_of(document: &RawDocumentBuf) -> Result<(Key, Row)> {
    let id = document
        .get("_id")
        .ok()
        .flatten()
        .and_then(|id| Bson::try_from(id).ok())
        .ok_or_else(|| {
            Error::Refused(
                "a document came out of the transform pipeline without `_id`: the stages must keep it".into(),
            )
        })?;
    let key = key_of(&id);
    let row = Row(vec![
        Value::Text(key[0].clone()),
        Value::Bytes(document.as_bytes().to_vec()),
    ]);
    Ok((key, row))
}

struct MongoReader {
    collection: Collection<Document>,
    stages: Box<dyn Fn(Document, usize) -> Vec<Document> + Send + Sync>,
    describe: Box<dyn Fn(mongodb::error::Error) -> Error + Send + Sync>,
}

#[async_trait]
impl BatchReader for MongoReader {
    async fn read(&mut self, range: &KeyRange, after: Option<&Key>, limit: usize) -> Result<Batch> {
        let lower = after.or(range.lower.as_ref()).map(id_of).transpose()?;
        let upper = range.upper.as_ref().map(id_of).transpose()?;
        let stages = (self.stages)(between(lower.as_ref(), upper.as_ref()), limit);
        let read = async {
            self.collection
                .aggregate(stages)
                .with_type::<RawDocumentBuf>()
                .await?
                .try_collect::<Vec<_>>()
                .await
        };
        let documents = read.await.map_err(&self.describe)?;
        let mut rows = Vec::with_capacity(documents.len());
        let mut last_key = None;
        for document in &documents {
            let (key, row) = row_of(document)?;
            rows.push(row);
            last_key = Some(key);
        }
        Ok(Batch {
            done: documents.len() < limit,
            rows: Rows::Values(rows),
            last_key,
        })
    }
}

/// Count and hash of documents in `_id` order, as both sides compute them.
pub async fn digest_of(
    cursor: mongodb::Cursor<RawDocumentBuf>,
    checksum: bool,
) -> mongodb::error::Result<Digest> {
    let mut hasher = Sha256::new();
    let mut rows = 0_u64;
    let mut cursor = cursor;
    while let Some(document) = cursor.try_next().await? {
        rows += 1;
        if checksum {
            hasher.update((document.as_bytes().len() as u64).to_le_bytes());
            hasher.update(document.as_bytes());
        }
    }
    Ok(Digest {
        rows,
        hash: if checksum {
            hex::encode(hasher.finalize())
        } else {
            String::new()
        },
    })
}

#[async_trait]
impl Source for MongoSource {
    fn schema(&self) -> &Schema {
        &self.schema
    }

    async fn reconnect(&mut self) -> Result<()> {
        *self.stream.get_mut() = None;
        Ok(())
    }

    async fn end_leftover_sessions(&mut self) -> Result<()> {
        Ok(()) // a killed client's operations end with its connections
    }

    async fn estimate_rows(&mut self) -> Result<u64> {
        self.collection()
            .estimated_document_count()
            .await
            .map_err(|e| self.error("cannot count the source's documents", e))
    }

    async fn plan_ranges(&mut self, concurrency: usize) -> Result<Vec<KeyRange>> {
        let count = self.estimate_rows().await?;
        let mut bounds: Vec<Key> = Vec::new();
        if concurrency > 1 && count > 10_000 {
            for part in 1..concurrency as u64 {
                let found = self
                    .collection()
                    .find(doc! {})
                    .sort(doc! {"_id": 1})
                    .skip(count * part / concurrency as u64)
                    .limit(1)
                    .projection(doc! {"_id": 1})
                    .await
                    .map_err(|e| self.error("cannot split the source into ranges", e))?
                    .try_next()
                    .await
                    .map_err(|e| self.error("cannot split the source into ranges", e))?;
                if let Some(id) = found.and_then(|d| d.get("_id").cloned()) {
                    let key = key_of(&id);
                    if bounds.last() != Some(&key) {
                        bounds.push(key);
                    }
                }
            }
        }
        let mut ranges = Vec::new();
        let mut lower = None;
        for (number, upper) in bounds.into_iter().map(Some).chain([None]).enumerate() {
            ranges.push(KeyRange {
                number: number as i32 + 1,
                lower: lower.clone(),
                upper: upper.clone(),
            });
            lower = upper;
        }
        Ok(ranges)
    }

    async fn replica_lag(&mut self) -> Result<f64> {
        Ok(0.0) // writes wait for the replicas through the write concern the URL sets
    }

    async fn reader(&self, _: &Projection, format: RowFormat) -> Result<Box<dyn BatchReader>> {
        if format != RowFormat::Values {
            return Err(Error::Usage("a MongoDB source reads documents only".into()));
        }
        let (pipeline, name, url) = (self.pipeline.clone(), self.name.clone(), self.url.clone());
        Ok(Box::new(MongoReader {
            collection: self.collection(),
            stages: Box::new(move |filter, limit| {
                let mut stages = vec![
                    doc! {"$match": filter},
                    doc! {"$sort": {"_id": 1}},
                    doc! {"$limit": limit as i64},
                ];
                stages.extend(pipeline.iter().cloned());
                stages
            }),
            describe: Box::new(move |e| store_error(&name, &url, "cannot read a batch", e)),
        }))
    }

    async fn fetch(&mut self, key: &Key) -> Result<Option<Row>> {
        let stages = self.stages(doc! {"_id": id_of(key)?}, Some(1));
        let found = async {
            self.collection()
                .aggregate(stages)
                .with_type::<RawDocumentBuf>()
                .await?
                .try_next()
                .await
        }
        .await
        .map_err(|e| self.error("cannot read a document", e))?;
        found.map(|d| row_of(&d).map(|(_, row)| row)).transpose()
    }

    async fn start_capture(&mut self) -> Result<Position> {
        let mut stream = self.open_stream(None).await?;
        // The initial answer carries a token for "now"; a getMore gives one otherwise.
        if stream.resume_token().is_none() {
            stream
                .next_if_any()
                .await
                .map_err(|e| self.stream_error(e))?;
        }
        let token = stream.resume_token().ok_or_else(|| {
            Error::State("the change stream gave no resume token to start from".into())
        })?;
        let token: Document = mongodb::bson::to_document(&token)
            .map_err(|e| Error::State(format!("a resume token that is not a document: {e}")))?;
        Ok(position_of(&token))
    }

    async fn read_changes(
        &mut self,
        after: &Position,
        max_changes: Option<usize>,
    ) -> Result<ChangeBatch> {
        let open = self.stream.get_mut().take();
        let (mut at, mut stream) = match open {
            Some((at, stream)) if &at == after => (at, stream),
            _ => (after.clone(), self.open_stream(Some(after)).await?),
        };
        let mut batch = ChangeBatch::default();
        let limit = max_changes.unwrap_or(usize::MAX);
        let outcome: Result<()> = async {
            loop {
                let Some(event) = stream
                    .next_if_any()
                    .await
                    .map_err(|e| self.stream_error(e))?
                else {
                    batch.drained = true;
                    self.lag_seconds = 0.0;
                    break;
                };
                if let Ok(time) = event.get_timestamp("clusterTime") {
                    let now = chrono::Utc::now().timestamp();
                    self.lag_seconds = (now - i64::from(time.time)).max(0) as f64;
                }
                if let Some(change) = self.events.change(&event)? {
                    batch.changes.push(change);
                }
                if let Ok(token) = event.get_document("_id") {
                    at = position_of(token);
                    batch.end = Some(at.clone());
                }
                if batch.changes.len() >= limit {
                    break;
                }
            }
            Ok(())
        }
        .await;
        outcome?;
        if let Some(token) = stream.resume_token() {
            if let Ok(token) = mongodb::bson::to_document(&token) {
                if batch.drained {
                    // Past the last event: where an empty batch left the stream.
                    at = position_of(&token);
                    batch.end = Some(at.clone());
                }
            }
        }
        *self.stream.get_mut() = Some((at, stream));
        Ok(batch)
    }

    async fn confirm(&mut self, _: &Position) -> Result<()> {
        Ok(()) // the oplog keeps its window whatever the job read
    }

    async fn lag(&mut self) -> Result<Lag> {
        Ok(Lag {
            seconds: self.lag_seconds,
            bytes: 0,
        })
    }

    async fn stop_capture(&mut self) -> Result<()> {
        *self.stream.get_mut() = None;
        Ok(())
    }

    async fn chunks(&mut self, range: &KeyRange) -> Result<Vec<KeyRange>> {
        Ok(vec![range.clone()])
    }

    async fn digest(&mut self, chunk: &KeyRange, _: &Projection, checksum: bool) -> Result<Digest> {
        let lower = chunk.lower.as_ref().map(id_of).transpose()?;
        let upper = chunk.upper.as_ref().map(id_of).transpose()?;
        let stages = self.stages(between(lower.as_ref(), upper.as_ref()), None);
        let read = async {
            let cursor = self
                .collection()
                .aggregate(stages)
                .batch_size(DIGEST_BATCH)
                .with_type::<RawDocumentBuf>()
                .await?;
            digest_of(cursor, checksum).await
        };
        read.await
            .map_err(|e| self.error("cannot read the source to verify", e))
    }

    async fn hold_writes(&mut self) -> Result<()> {
        Ok(())
    }

    async fn release_writes(&mut self) -> Result<()> {
        Ok(())
    }

    async fn fence(&mut self) -> Result<()> {
        let saved = match self.saved_fence().await? {
            Some(saved) => saved,
            None => {
                let filter = doc! {"name": &self.collection};
                let Some(entry) = self.collection_entry(filter).await? else {
                    return Err(self.gone());
                };
                let uuid = entry.get_document("info").ok().and_then(|i| i.get("uuid"));
                let options = entry.get_document("options").cloned().unwrap_or_default();
                let mut kept = doc! {"_id": self.fence_id(), "collection": &self.collection};
                if let Some(uuid) = uuid {
                    kept.insert("uuid", uuid);
                }
                for field in ["validator", "validationLevel", "validationAction"] {
                    if let Some(value) = options.get(field) {
                        kept.insert(field, value.clone());
                    }
                }
                self.checkpoints()
                    .insert_one(kept.clone())
                    .await
                    .map_err(|e| self.error("cannot save the source's validator", e))?;
                kept
            }
        };
        // A resumed cutover may find the source renamed already: the fence follows it.
        let Some(name) = self.fenced_name(&saved).await? else {
            return Err(self.gone());
        };
        self.database
            .run_command(doc! {
                "collMod": name,
                "validator": {"$expr": false},
                "validationLevel": "strict",
                "validationAction": "error",
            })
            .await
            .map(drop)
            .map_err(|e| self.error("cannot fence the source (collMod validator)", e))
    }

    async fn unfence(&mut self) -> Result<()> {
        let Some(saved) = self.saved_fence().await? else {
            return Ok(());
        };
        if let Some(name) = self.fenced_name(&saved).await? {
            let mut command = doc! {
                "collMod": name,
                "validator": saved.get_document("validator").cloned().unwrap_or_default(),
            };
            for field in ["validationLevel", "validationAction"] {
                if let Some(value) = saved.get(field) {
                    command.insert(field, value.clone());
                }
            }
            self.database
                .run_command(command)
                .await
                .map_err(|e| self.error("cannot lift the fence (collMod validator)", e))?;
        }
        self.checkpoints()
            .delete_one(doc! {"_id": self.fence_id()})
            .await
            .map(drop)
            .map_err(|e| self.error("cannot update the job's checkpoints", e))
    }

    async fn contract(&mut self) -> Result<()> {
        Ok(()) // the old collection goes in the sink's contract, where it knows its name
    }

    async fn forget(&mut self) -> Result<()> {
        *self.stream.get_mut() = None;
        self.checkpoints()
            .delete_many(doc! {"_id": {"$regex": format!("^{}:", regex_escape(&self.job))}})
            .await
            .map(drop)
            .map_err(|e| self.error("cannot remove the job's checkpoints", e))
    }
}

/// `text` matched literally in a regular expression.
pub fn regex_escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                vec![c]
            } else {
                vec!['\\', c]
            }
        })
        .collect()
}
