//! A collection as the sink of a job: a copy's target, or a backfill's collection
//! filled in place.
//!
//! Invariants:
//! - The job's checkpoints live in the target's database, collection
//!   `switchyard_checkpoints`: `<job>:state` (capture start, position applied, the
//!   cutover) and `<job>:range:<n>` per key range. A standalone server has no
//!   transactions, so each batch is written idempotently by `_id` (inserted, and
//!   replaced where it already is) and its checkpoint saved after it: a batch a crash
//!   cut short is redone with the same result.
//! - Changes are applied idempotently by `_id` and their end position saved after them:
//!   a replay from an earlier position converges on the same documents.
//! - A backfill that catches up fills again, with its own pipeline, every document a
//!   change touched (by `_id`, in batches), until its contract: a document written
//!   after the fill passed it is filled as well. Its verify settles the documents the
//!   pipeline would still change before it counts them as differing.
//! - The job is claimed with a lease ([`Lease`], `job:<name>` in `switchyard_locks`)
//!   kept alive while the process lives.
//! - Cutover: the source is fenced (every write refused), its last changes drained, the
//!   way back's capture started (a copy that catches up), then the source is renamed
//!   `<name>_old` (`set_aside` is saved in the state once it is, so a resumed cutover
//!   neither drains nor renames again), its own validator put back, and the target
//!   renamed `<name>`; it is recorded once the target has the name. Documents an
//!   application wrote under `<name>` between the two renames (MongoDB creates a
//!   collection on first insert) are moved into the target before it takes the name.
//! - The way back is this sink again with the sides exchanged (see
//!   [`super::open_way_back`]): its cutover is the swap back.

use std::time::Instant;

use async_trait::async_trait;
use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document, RawDocumentBuf};
use mongodb::options::UpdateModifications;
use mongodb::{Collection, Database};

use super::capture::updates_of;
use super::order::{between, id_of, of_batch};
use super::source::{digest_of, regex_escape, MongoSource, CHECKPOINTS};
use super::{error_code, store_error, DUPLICATE_KEY, NAMESPACE_EXISTS, NAMESPACE_NOT_FOUND};
use crate::backend::lease::Lease;
use crate::engine::progress::{CutoverReport, KeyRange, RangeProgress};
use crate::engine::row::{Change, Key, Position, Value};
use crate::engine::sink::{BatchWriter, CopyWorker, PairedWorker};
use crate::engine::source::{Batch, ChangeBatch, RowFormat, Rows};
use crate::engine::{Sink, Source};
use crate::error::{Error, Result};
use crate::migrate::MongoOperation;

/// Documents a backfill fills again per update, of those changes wrote.
const FILL_AGAIN_BATCH: usize = 1000;

/// Where a sink's collections are, and what the job does with them.
pub struct Placement {
    pub name: String,
    pub url: crate::secret::SecretUrl,
    pub database: Database,
    /// The collection written: the copy's target, or the backfill's source.
    pub collection: String,
    /// The source's database and collection (renamed at cutover).
    pub source_database: Database,
    pub source_collection: String,
    /// The name the source is set aside under at cutover (`<name>_old`).
    pub aside: String,
    /// The target is in the source's database (one configured database).
    pub same_database: bool,
    /// Backfill: the update pipeline that fills each document.
    pub fill: Option<Vec<Document>>,
    pub expand: Vec<MongoOperation>,
}

pub struct MongoSink {
    at: Placement,
    job: String,
    /// The job's claim; `None` in a copy worker's handle, which claims nothing.
    lease: Option<Lease>,
    /// The way back's source and sink, whose capture cutover starts before the switch.
    way_back: Option<Box<(MongoSource, MongoSink)>>,
}

impl MongoSink {
    pub fn new(job: &str, at: Placement) -> MongoSink {
        let lease = super::lease::lease(
            &at.database,
            &at.name,
            &at.url,
            &format!("job:{job}"),
            format!("{} pid {}", crate::state::actor(), std::process::id()),
        );
        MongoSink {
            at,
            job: job.to_string(),
            lease: Some(lease),
            way_back: None,
        }
    }

    /// A copy's sink whose cutover starts the capture of `source` (the new collection)
    /// for `sink` (the old one) before the switch: nothing written to the new
    /// collection afterwards escapes an abort.
    pub fn with_way_back(mut self, source: MongoSource, sink: MongoSink) -> MongoSink {
        self.way_back = Some(Box::new((source, sink)));
        self
    }

    pub(super) fn error(&self, context: &str, e: mongodb::error::Error) -> Error {
        store_error(&self.at.name, &self.at.url, context, e)
    }

    pub(super) fn target(&self) -> Collection<Document> {
        self.at.database.collection(&self.at.collection)
    }

    /// The target, read as the bytes it holds.
    pub(super) fn raw_target(&self) -> Collection<RawDocumentBuf> {
        self.at.database.collection(&self.at.collection)
    }

    /// Applies every change the source has, from the saved position on; returns how
    /// many.
    pub(super) async fn drain(&mut self, source: &mut dyn Source) -> Result<u64> {
        let Some(mut position) = self.position().await? else {
            return Ok(0);
        };
        let mut drained = 0;
        loop {
            let batch = source.read_changes(&position, None).await?;
            drained += self.apply(&batch, source).await?;
            if let Some(end) = batch.end {
                position = end;
            }
            if batch.drained {
                return Ok(drained);
            }
        }
    }

    fn checkpoints(&self) -> Collection<Document> {
        self.at.database.collection(CHECKPOINTS)
    }

    fn state_id(&self) -> String {
        format!("{}:state", self.job)
    }

    async fn state(&self) -> Result<Document> {
        Ok(self
            .checkpoints()
            .find_one(doc! {"_id": self.state_id()})
            .await
            .map_err(|e| self.error("cannot read the job's checkpoints", e))?
            .unwrap_or_default())
    }

    async fn set_state(&self, fields: Document) -> Result<()> {
        self.checkpoints()
            .update_one(doc! {"_id": self.state_id()}, doc! {"$set": fields})
            .upsert(true)
            .await
            .map(drop)
            .map_err(|e| self.error("cannot save the job's checkpoint", e))
    }

    async fn exists(&self, database: &Database, collection: &str) -> Result<bool> {
        super::has_collection(database, collection)
            .await
            .map_err(|e| self.error("cannot list collections", e))
    }

    /// Sets the source aside: renames it to [`Placement::aside`], unless that is done.
    async fn set_aside(&self) -> Result<()> {
        let (database, from, to) = (
            &self.at.source_database,
            &self.at.source_collection,
            &self.at.aside,
        );
        if !self.exists(database, from).await? {
            return Ok(());
        }
        match self.rename_command(database, from, to, false).await {
            Ok(()) => Ok(()),
            Err(e) if error_code(&e) == Some(NAMESPACE_EXISTS) => Err(self.aside_taken(database)),
            Err(e) => Err(self.error(&format!("cannot rename `{from}` to `{to}`"), e)),
        }
    }

    fn aside_taken(&self, database: &Database) -> Error {
        Error::Refused(format!(
            "job `{}`: a collection `{}` exists already in `{}`, and cutover sets the source aside under that name: drop or rename it, then run the job again",
            self.job,
            self.at.aside,
            database.name()
        ))
    }

    /// Gives the target the source's name (unless it has it). Documents an application
    /// wrote under that name after the source left it are moved into the target first.
    /// Refuses a source collection that does not exist (a name mistyped would copy
    /// nothing, then cut over onto an empty collection).
    async fn require_source(&self) -> Result<()> {
        if self
            .exists(&self.at.source_database, &self.at.source_collection)
            .await?
        {
            return Ok(());
        }
        Err(super::missing_source(
            &self.job,
            &self.at.source_collection,
            &self.at.source_database,
        ))
    }

    async fn take_name(&self) -> Result<()> {
        let (database, from, to) = (
            &self.at.database,
            &self.at.collection,
            &self.at.source_collection,
        );
        if !self.exists(database, from).await? {
            return Ok(());
        }
        match self.rename_command(database, from, to, false).await {
            Ok(()) => return Ok(()),
            Err(e) if error_code(&e) == Some(NAMESPACE_EXISTS) => {}
            Err(e) => return Err(self.error(&format!("cannot rename `{from}` to `{to}`"), e)),
        }
        self.move_stray_writes(database, to, from).await?;
        self.rename_command(database, from, to, true)
            .await
            .map_err(|e| self.error(&format!("cannot rename `{from}` to `{to}`"), e))
    }

    async fn rename_command(
        &self,
        database: &Database,
        from: &str,
        to: &str,
        drop_target: bool,
    ) -> mongodb::error::Result<()> {
        let name = database.name();
        database
            .client()
            .database("admin")
            .run_command(doc! {"renameCollection": format!("{name}.{from}"), "to": format!("{name}.{to}"), "dropTarget": drop_target})
            .await
            .map(drop)
    }

    /// Documents written under `name` after the source left it go into `into` (the
    /// rename that follows drops `name`).
    async fn move_stray_writes(&self, database: &Database, name: &str, into: &str) -> Result<()> {
        let strays: Vec<Document> = async {
            database
                .collection::<Document>(name)
                .find(doc! {})
                .await?
                .try_collect()
                .await
        }
        .await
        .map_err(|e| self.error("cannot read writes made during the cutover", e))?;
        let target = database.collection::<Document>(into);
        for document in strays {
            let id = document.get("_id").cloned().unwrap_or(Bson::Null);
            target
                .replace_one(doc! {"_id": id}, document)
                .upsert(true)
                .await
                .map_err(|e| self.error("cannot move writes made during the cutover", e))?;
        }
        Ok(())
    }

    /// Writes whole documents by `_id`: inserted, or replacing what is there.
    async fn put(&self, documents: Vec<RawDocumentBuf>) -> Result<()> {
        let target = self.raw_target();
        let duplicates: Vec<usize> = match target.insert_many(&documents).ordered(false).await {
            Ok(_) => return Ok(()),
            Err(e) => match &*e.kind {
                mongodb::error::ErrorKind::InsertMany(many)
                    if many.write_concern_error.is_none()
                        && many.write_errors.as_ref().is_some_and(|errors| {
                            errors.iter().all(|w| w.code == DUPLICATE_KEY)
                        }) =>
                {
                    many.write_errors
                        .iter()
                        .flatten()
                        .map(|w| w.index)
                        .collect()
                }
                _ => return Err(self.error("cannot write a batch", e)),
            },
        };
        for index in duplicates {
            let document = &documents[index];
            let id = document
                .get("_id")
                .ok()
                .flatten()
                .and_then(|id| Bson::try_from(id).ok())
                .unwrap_or(Bson::Null);
            target
                .replace_one(doc! {"_id": id}, document)
                .upsert(true)
                .await
                .map_err(|e| self.error("cannot write a batch", e))?;
        }
        Ok(())
    }

    async fn apply_one(&self, change: &Change, source: &mut dyn Source) -> Result<()> {
        match change {
            Change::Delete { key } => {
                self.target()
                    .delete_one(doc! {"_id": id_of(key)?})
                    .await
                    .map_err(|e| self.error("cannot apply a delete", e))?;
            }
            Change::Upsert { row, .. } => {
                let key: Key = vec![row.0[0].to_sql_text().unwrap_or_default()];
                match &row.0[1] {
                    Value::Bytes(bytes) => self.put(vec![raw(bytes)?]).await?,
                    Value::Patch(patch) => {
                        for update in updates_of(patch)? {
                            let applied = self
                                .target()
                                .update_one(doc! {"_id": id_of(&key)?}, update)
                                .await;
                            if applied.is_err() {
                                // Replayed over a later state it no longer fits: the
                                // document as it is now is right.
                                return self.refetch(&key, source).await;
                            }
                        }
                    }
                    _ => return self.refetch(&key, source).await,
                }
            }
        }
        Ok(())
    }

    async fn refetch(&self, key: &Key, source: &mut dyn Source) -> Result<()> {
        match source.fetch(key).await? {
            Some(row) => match &row.0[1] {
                Value::Bytes(bytes) => self.put(vec![raw(bytes)?]).await,
                other => Err(Error::State(format!("a document read as {other:?}"))),
            },
            None => self
                .target()
                .delete_one(doc! {"_id": id_of(key)?})
                .await
                .map(drop)
                .map_err(|e| self.error("cannot apply a delete", e)),
        }
    }

    async fn target_digest(
        &self,
        chunk: &KeyRange,
        checksum: bool,
    ) -> Result<crate::engine::row::Digest> {
        let lower = chunk.lower.as_ref().map(id_of).transpose()?;
        let upper = chunk.upper.as_ref().map(id_of).transpose()?;
        let read = async {
            let cursor = self
                .raw_target()
                .find(between(lower.as_ref(), upper.as_ref()))
                .sort(doc! {"_id": 1})
                .batch_size(5000)
                .await?;
            digest_of(cursor, checksum).await
        };
        read.await
            .map_err(|e| self.error("cannot read the target to verify", e))
    }

    /// Backfill: fills again the documents that `changes` wrote (inserted, updated,
    /// replaced), as they are now; a delete leaves nothing to fill. The fill is a
    /// pipeline update, so filling a document twice changes nothing the second time.
    async fn fill_again(&self, changes: &[Change], fill: &[Document]) -> Result<()> {
        let mut written: Vec<String> = changes
            .iter()
            .filter_map(|change| match change {
                Change::Upsert { row, .. } => row.0[0].to_sql_text(),
                Change::Delete { .. } => None,
            })
            .collect();
        written.sort_unstable();
        written.dedup();
        for keys in written.chunks(FILL_AGAIN_BATCH) {
            let ids = keys
                .iter()
                .map(|key| id_of(&vec![key.clone()]))
                .collect::<Result<Vec<_>>>()?;
            self.target()
                .update_many(
                    doc! {"_id": {"$in": ids}},
                    UpdateModifications::Pipeline(fill.to_vec()),
                )
                .await
                .map_err(|e| self.error("cannot fill the documents written meanwhile", e))?;
        }
        Ok(())
    }
}

fn raw(bytes: &[u8]) -> Result<RawDocumentBuf> {
    RawDocumentBuf::from_bytes(bytes.to_vec())
        .map_err(|e| Error::State(format!("a document that is not BSON: {e}")))
}

/// A range's checkpoint document.
fn range_document(job: &str, progress: &RangeProgress) -> Document {
    doc! {
        "_id": format!("{job}:range:{}", progress.range.number),
        "number": progress.range.number,
        "lower": progress.range.lower.as_ref().map(|k| k[0].clone()),
        "upper": progress.range.upper.as_ref().map(|k| k[0].clone()),
        "last_key": progress.last_key.as_ref().map(|k| k[0].clone()),
        "rows": progress.rows as i64,
        "done": progress.done,
    }
}

fn range_progress(document: &Document) -> RangeProgress {
    let key = |field: &str| document.get_str(field).ok().map(|k| vec![k.to_string()]);
    RangeProgress {
        range: KeyRange {
            number: document.get_i32("number").unwrap_or_default(),
            lower: key("lower"),
            upper: key("upper"),
        },
        last_key: key("last_key"),
        rows: document.get_i64("rows").unwrap_or_default() as u64,
        done: document.get_bool("done").unwrap_or_default(),
    }
}

/// Writes copy batches, then their range's checkpoint.
struct MongoWriter {
    sink: MongoSink,
}

#[async_trait]
impl BatchWriter for MongoWriter {
    async fn write(&mut self, batch: Batch, progress: &mut RangeProgress) -> Result<u64> {
        let Rows::Values(rows) = batch.rows else {
            return Err(Error::Usage("a MongoDB target takes documents only".into()));
        };
        let count = rows.len() as u64;
        let documents = rows
            .iter()
            .map(|row| match &row.0[1] {
                Value::Bytes(bytes) => raw(bytes),
                other => Err(Error::State(format!("a document read as {other:?}"))),
            })
            .collect::<Result<Vec<_>>>()?;
        if !documents.is_empty() {
            self.sink.put(documents).await?;
        }
        let mut next = progress.clone();
        if batch.last_key.is_some() {
            next.last_key = batch.last_key;
        }
        next.rows += count;
        next.done = batch.done;
        self.sink.save_range(&next).await?;
        *progress = next;
        Ok(count)
    }
}

/// Fills a backfill's batches in place, then saves their range's checkpoint.
struct FillWorker {
    sink: MongoSink,
    fill: Vec<Document>,
}

#[async_trait]
impl CopyWorker for FillWorker {
    async fn seize(&mut self, known: &RangeProgress, _fence: i64) -> Result<RangeProgress> {
        Ok(known.clone())
    }

    async fn copy_batch(&mut self, progress: &mut RangeProgress, limit: usize) -> Result<u64> {
        let lower = progress.after().map(id_of).transpose()?;
        let upper = progress.range.upper.as_ref().map(id_of).transpose()?;
        let target = self.sink.target();
        let ids: Vec<Bson> = async {
            target
                .find(between(lower.as_ref(), upper.as_ref()))
                .sort(doc! {"_id": 1})
                .projection(doc! {"_id": 1})
                .limit(limit as i64)
                .await?
                .try_collect::<Vec<Document>>()
                .await
        }
        .await
        .map_err(|e| self.sink.error("cannot read a batch", e))?
        .into_iter()
        .filter_map(|mut d| d.remove("_id"))
        .collect();
        let count = ids.len() as u64;
        let mut next = progress.clone();
        if let Some(last) = ids.last() {
            next.last_key = Some(super::order::key_of(last));
            target
                .update_many(
                    of_batch(ids),
                    UpdateModifications::Pipeline(self.fill.clone()),
                )
                .await
                .map_err(|e| self.sink.error("cannot fill a batch", e))?;
        }
        next.rows += count;
        next.done = count < limit as u64;
        self.sink.save_range(&next).await?;
        *progress = next;
        Ok(count)
    }
}

impl MongoSink {
    async fn save_range(&self, progress: &RangeProgress) -> Result<()> {
        let document = range_document(&self.job, progress);
        self.checkpoints()
            .replace_one(
                doc! {"_id": document.get_str("_id").unwrap_or_default()},
                document,
            )
            .upsert(true)
            .await
            .map(drop)
            .map_err(|e| self.error("cannot save a range's checkpoint", e))
    }

    /// Another handle on the same collections, for a worker.
    fn worker(&self) -> MongoSink {
        MongoSink {
            at: Placement {
                name: self.at.name.clone(),
                url: self.at.url.clone(),
                database: self.at.database.clone(),
                collection: self.at.collection.clone(),
                source_database: self.at.source_database.clone(),
                source_collection: self.at.source_collection.clone(),
                aside: self.at.aside.clone(),
                same_database: self.at.same_database,
                fill: self.at.fill.clone(),
                expand: Vec::new(),
            },
            job: self.job.clone(),
            lease: None,
            way_back: None,
        }
    }
}

#[async_trait]
impl Sink for MongoSink {
    async fn try_claim(&mut self) -> Result<bool> {
        let Some(lease) = self.lease.as_mut() else {
            return Err(Error::State(
                "a copy worker's handle cannot claim the job".into(),
            ));
        };
        Ok(lease.acquire(std::time::Duration::ZERO).await?.is_ok())
    }

    async fn reconnect(&mut self) -> Result<bool> {
        self.try_claim().await
    }

    async fn start_fresh(&mut self) -> Result<()> {
        self.checkpoints()
            .delete_many(doc! {"_id": {"$regex": format!("^{}:", regex_escape(&self.job))}})
            .await
            .map(drop)
            .map_err(|e| self.error("cannot remove the job's checkpoints", e))
    }

    async fn expand(&mut self, _source: &dyn Source) -> Result<bool> {
        if self.at.fill.is_some() {
            self.require_source().await?;
            return Ok(false);
        }
        let state = self.state().await?;
        if let Ok(created) = state.get_bool("created_target") {
            return Ok(created);
        }
        self.require_source().await?;
        if self
            .exists(&self.at.source_database, &self.at.aside)
            .await?
        {
            return Err(self.aside_taken(&self.at.source_database));
        }
        let existed = self.exists(&self.at.database, &self.at.collection).await?;
        for operation in &self.at.expand {
            let mut none = super::operations::NoCheckpoint::default();
            super::operations::apply(&self.at.database, operation, true, &mut none)
                .await
                .map_err(|why| {
                    Error::Refused(format!("job `{}`: expand: {operation}: {why}", self.job))
                })?;
        }
        if !self.exists(&self.at.database, &self.at.collection).await? {
            match self
                .at
                .database
                .create_collection(&self.at.collection)
                .await
            {
                Ok(()) => {}
                Err(e) if error_code(&e) == Some(NAMESPACE_EXISTS) => {}
                Err(e) => return Err(self.error("cannot create the target collection", e)),
            }
        }
        self.set_state(doc! {"created_target": !existed}).await?;
        Ok(!existed)
    }

    async fn save_start(&mut self, start: &Position) -> Result<()> {
        let state = self.state().await?;
        if state.get_str("position").is_err() {
            self.set_state(doc! {"start": &start.0, "position": &start.0})
                .await?;
        }
        Ok(())
    }

    async fn position(&mut self) -> Result<Option<Position>> {
        Ok(self
            .state()
            .await?
            .get_str("position")
            .ok()
            .map(|p| Position(p.to_string())))
    }

    async fn saved_ranges(&mut self) -> Result<Vec<RangeProgress>> {
        let prefix = format!("^{}:range:", regex_escape(&self.job));
        let documents: Vec<Document> = async {
            self.checkpoints()
                .find(doc! {"_id": {"$regex": prefix}})
                .await?
                .try_collect()
                .await
        }
        .await
        .map_err(|e| self.error("cannot read the job's ranges", e))?;
        let mut ranges: Vec<RangeProgress> = documents.iter().map(range_progress).collect();
        ranges.sort_by_key(|r| r.range.number);
        Ok(ranges)
    }

    async fn save_ranges(&mut self, ranges: &[KeyRange]) -> Result<()> {
        for range in ranges {
            self.save_range(&RangeProgress {
                range: range.clone(),
                last_key: None,
                rows: 0,
                done: false,
            })
            .await?;
        }
        Ok(())
    }

    async fn copy_worker(&mut self, source: &dyn Source) -> Result<Box<dyn CopyWorker>> {
        if let Some(fill) = &self.at.fill {
            return Ok(Box::new(FillWorker {
                sink: self.worker(),
                fill: fill.clone(),
            }));
        }
        Ok(Box::new(PairedWorker {
            reader: source.reader(&Vec::new(), RowFormat::Values).await?,
            writer: Box::new(MongoWriter {
                sink: self.worker(),
            }),
        }))
    }

    async fn apply(&mut self, changes: &ChangeBatch, source: &mut dyn Source) -> Result<u64> {
        match self.at.fill.clone() {
            Some(fill) => self.fill_again(&changes.changes, &fill).await?,
            None => {
                for change in &changes.changes {
                    self.apply_one(change, source).await?;
                }
            }
        }
        crate::crash_point!("catch_up.after_write");
        if let Some(end) = &changes.end {
            self.set_state(doc! {"position": &end.0}).await?;
        }
        Ok(changes.changes.len() as u64)
    }

    async fn compare(
        &mut self,
        source: &mut dyn Source,
        chunk: &KeyRange,
        checksum: bool,
    ) -> Result<Option<String>> {
        if let Some(fill) = self.at.fill.clone() {
            return self.settle_unfilled(source, chunk, &fill).await;
        }
        let expected = source.digest(chunk, &Vec::new(), checksum).await?;
        let found = self.target_digest(chunk, checksum).await?;
        match crate::engine::row::Digest::difference(&expected, &found) {
            None => Ok(None),
            Some(difference) => {
                let difference = difference.replace("rows", "documents");
                self.settle_difference(source, chunk, difference).await
            }
        }
    }

    async fn cutover(&mut self, source: &mut dyn Source) -> Result<CutoverReport> {
        let started = Instant::now();
        // Each step checks what a run before this one did: `set_aside` is saved once
        // the source is aside, so a resumed cutover neither drains nor renames twice.
        let state = self.state().await?;
        let drained = match state.get_document("set_aside") {
            Ok(done) => done.get_i64("changes").unwrap_or_default() as u64,
            Err(_) => {
                source.fence().await?;
                crate::crash_point!("cutover.after_lock");
                let drained = self.drain(source).await?;
                crate::crash_point!("cutover.after_drain");
                if let Some(back) = self.way_back.as_deref_mut() {
                    let start = back.0.start_capture().await?;
                    back.1.save_start(&start).await?;
                    crate::crash_point!("cutover.after_back_capture");
                }
                self.set_aside().await?;
                self.set_state(doc! {"set_aside": {"changes": drained as i64}})
                    .await?;
                drained
            }
        };
        crate::crash_point!("cutover.after_swap");
        // The fence held writes off the source until it was aside; aside, it takes its
        // own validator back (the way back writes to it).
        source.unfence().await?;
        if !(self.at.same_database && self.at.collection == self.at.source_collection) {
            self.take_name().await?;
        }
        let blocked = started.elapsed();
        self.set_state(doc! {"cutover": {"writes_blocked_ms": blocked.as_millis() as i64, "changes": drained as i64}})
            .await?;
        crate::crash_point!("cutover.after_record");
        Ok(CutoverReport {
            writes_blocked: blocked,
            changes_drained: drained,
            alias: None,
        })
    }

    async fn completed_cutover(&mut self) -> Result<Option<CutoverReport>> {
        let state = self.state().await?;
        Ok(state.get_document("cutover").ok().map(|c| CutoverReport {
            writes_blocked: std::time::Duration::from_millis(
                c.get_i64("writes_blocked_ms").unwrap_or_default() as u64,
            ),
            changes_drained: c.get_i64("changes").unwrap_or_default() as u64,
            alias: None,
        }))
    }

    async fn abort(&mut self, source: &mut dyn Source, created_target: bool) -> Result<()> {
        if created_target && self.at.fill.is_none() {
            match self.target().drop().await {
                Ok(()) => {}
                Err(e) if error_code(&e) == Some(NAMESPACE_NOT_FOUND) => {}
                Err(e) => return Err(self.error("cannot drop the target", e)),
            }
        }
        source.unfence().await?;
        self.start_fresh().await
    }

    async fn contract(&mut self) -> Result<()> {
        if self.at.fill.is_none() {
            let old = self
                .at
                .source_database
                .collection::<Document>(&self.at.aside);
            match old.drop().await {
                Ok(()) => {}
                Err(e) if error_code(&e) == Some(NAMESPACE_NOT_FOUND) => {}
                Err(e) => return Err(self.error("cannot drop the old collection", e)),
            }
        }
        self.start_fresh().await
    }
}
