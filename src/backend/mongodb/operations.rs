//! Seed 003's MongoDB operations, applied.
//!
//! Invariants:
//! - Schema operations (collections, indexes) are single commands: each happens wholly
//!   or not at all. When `may_be_done` (a resumed run, an undo), finding it already done
//!   is success.
//! - Data operations run in `_id`-ordered batches of [`BATCH`] documents, so a large
//!   collection is never held in one write, and record the last `_id` done in the
//!   migration's progress after each batch. `add_field`, `remove_field` and
//!   `rename_field` only touch documents that still need it, so redoing a batch after a
//!   crash changes nothing twice; `update_documents` resumes after the last recorded
//!   `_id` (in MongoDB's order, across `_id` types), and a batch cut short by a crash is
//!   applied again (an update that is not idempotent, such as `$inc`, can then apply
//!   twice to that batch's documents).

use futures::TryStreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use mongodb::bson::{doc, Bson, Document};
use mongodb::options::UpdateModifications;
use mongodb::{Collection, Database};

use super::order::{after, of_batch};
use super::{
    error_code, to_bson, to_document, INDEX_NOT_FOUND, NAMESPACE_EXISTS, NAMESPACE_NOT_FOUND,
};
use crate::migrate::{IndexKey, MongoOperation};

/// Documents per batch of a data operation.
pub const BATCH: usize = 1000;

/// Why an operation failed, as the history records it.
pub type Failure = String;

/// Where a data operation is: the last `_id` it finished, saved by the caller.
pub trait Checkpoint: Send {
    fn last_id(&self) -> Option<&Bson>;
    fn save(&mut self, last_id: Bson) -> futures::future::BoxFuture<'_, Result<(), Failure>>;
}

/// A checkpoint that keeps nothing: for operations that are not resumed (an undo, a
/// job's expand, whose operations are each idempotent).
#[derive(Default)]
pub struct NoCheckpoint {
    last_id: Option<Bson>,
}

impl Checkpoint for NoCheckpoint {
    fn last_id(&self) -> Option<&Bson> {
        self.last_id.as_ref()
    }

    fn save(&mut self, last_id: Bson) -> futures::future::BoxFuture<'_, Result<(), Failure>> {
        self.last_id = Some(last_id);
        Box::pin(async { Ok(()) })
    }
}

/// Applies one operation to `database`.
pub async fn apply(
    database: &Database,
    operation: &MongoOperation,
    may_be_done: bool,
    checkpoint: &mut dyn Checkpoint,
) -> Result<(), Failure> {
    let collection = database.collection::<Document>(operation.collection());
    match operation {
        MongoOperation::CreateCollection {
            collection: name,
            options,
        } => {
            let mut command = doc! {"create": name};
            if let Some(options) = options {
                command.extend(to_document(options)?);
            }
            command_allowing(database, command, may_be_done.then_some(NAMESPACE_EXISTS)).await
        }
        MongoOperation::DropCollection { collection: name } => {
            command_allowing(database, doc! {"drop": name}, Some(NAMESPACE_NOT_FOUND)).await
        }
        MongoOperation::CreateIndex {
            collection: name,
            index,
            options,
        } => {
            let mut spec = doc! {"key": index_keys(index)?, "name": crate::migrate::index_name(index, options.as_ref())};
            if let Some(options) = options {
                let options = to_document(options)?;
                spec.extend(options.into_iter().filter(|(key, _)| key != "name"));
            }
            command_allowing(
                database,
                doc! {"createIndexes": name, "indexes": [spec]},
                None,
            )
            .await
        }
        MongoOperation::DropIndex {
            collection: name,
            name: index,
        } => {
            command_allowing(
                database,
                doc! {"dropIndexes": name, "index": index},
                may_be_done.then_some(INDEX_NOT_FOUND),
            )
            .await
        }
        MongoOperation::AddField {
            field,
            value,
            filter,
            ..
        } => {
            let mut wanted = doc! {field.as_str(): {"$exists": false}};
            if let Some(filter) = filter {
                wanted = doc! {"$and": [to_document(filter)?, wanted]};
            }
            let update = doc! {"$set": {field.as_str(): to_bson(value)?}};
            until_none_match(&collection, operation, wanted, update.into()).await
        }
        MongoOperation::RemoveField { field, .. } => {
            let wanted = doc! {field.as_str(): {"$exists": true}};
            let update = doc! {"$unset": {field.as_str(): ""}};
            until_none_match(&collection, operation, wanted, update.into()).await
        }
        MongoOperation::RenameField { from, to, .. } => {
            let wanted = doc! {from.as_str(): {"$exists": true}};
            let update = doc! {"$rename": {from.as_str(): to.as_str()}};
            until_none_match(&collection, operation, wanted, update.into()).await
        }
        MongoOperation::UpdateDocuments { filter, update, .. } => {
            let update = match update {
                serde_json::Value::Array(stages) => UpdateModifications::Pipeline(
                    stages.iter().map(to_document).collect::<Result<_, _>>()?,
                ),
                other => UpdateModifications::Document(to_document(other)?),
            };
            in_id_order(
                &collection,
                operation,
                to_document(filter)?,
                update,
                checkpoint,
            )
            .await
        }
    }
}

pub(super) fn index_keys(keys: &[IndexKey]) -> Result<Document, Failure> {
    let mut document = Document::new();
    for key in keys {
        document.insert(key.field.clone(), to_bson(&key.direction)?);
    }
    Ok(document)
}

/// Runs a command; the server's error `allowed` (the thing is already so) is success.
async fn command_allowing(
    database: &Database,
    command: Document,
    allowed: Option<i32>,
) -> Result<(), Failure> {
    match database.run_command(command).await {
        Ok(_) => Ok(()),
        Err(e) if allowed.is_some() && error_code(&e) == allowed => Ok(()),
        Err(e) => Err(super::describe(&e)),
    }
}

fn progress_bar(operation: &MongoOperation, total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {pos}/{len} documents ({per_sec}, eta {eta})",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_message(operation.to_string());
    bar
}

/// Updates the documents matching `wanted` in batches until none match: for updates
/// after which a document no longer matches (so a redone batch changes nothing twice).
async fn until_none_match(
    collection: &Collection<Document>,
    operation: &MongoOperation,
    wanted: Document,
    update: UpdateModifications,
) -> Result<(), Failure> {
    let fail = |e: mongodb::error::Error| super::describe(&e);
    let total = collection
        .count_documents(wanted.clone())
        .await
        .map_err(fail)?;
    let bar = progress_bar(operation, total);
    loop {
        let ids = batch_ids(collection, wanted.clone()).await.map_err(fail)?;
        if ids.is_empty() {
            break;
        }
        let count = ids.len() as u64;
        collection
            .update_many(
                doc! {"$and": [wanted.clone(), of_batch(ids)]},
                update.clone(),
            )
            .await
            .map_err(fail)?;
        crate::crash_point!("migration.after_batch");
        bar.inc(count);
    }
    bar.finish_and_clear();
    Ok(())
}

/// Updates the documents matching `filter` once each, in `_id` order, saving the last
/// `_id` done after each batch and resuming after it.
async fn in_id_order(
    collection: &Collection<Document>,
    operation: &MongoOperation,
    filter: Document,
    update: UpdateModifications,
    checkpoint: &mut dyn Checkpoint,
) -> Result<(), Failure> {
    let fail = |e: mongodb::error::Error| super::describe(&e);
    let total = collection
        .count_documents(filter.clone())
        .await
        .map_err(fail)?;
    let bar = progress_bar(operation, total);
    loop {
        let remaining = match checkpoint.last_id() {
            Some(last) => doc! {"$and": [filter.clone(), after(last)]},
            None => filter.clone(),
        };
        let ids = batch_ids(collection, remaining).await.map_err(fail)?;
        let Some(last) = ids.last().cloned() else {
            break;
        };
        let count = ids.len() as u64;
        collection
            .update_many(
                doc! {"$and": [filter.clone(), of_batch(ids)]},
                update.clone(),
            )
            .await
            .map_err(fail)?;
        checkpoint.save(last).await?;
        crate::crash_point!("migration.after_batch");
        bar.inc(count);
    }
    bar.finish_and_clear();
    Ok(())
}

/// The `_id`s of the next batch matching `filter`, in order.
async fn batch_ids(
    collection: &Collection<Document>,
    filter: Document,
) -> mongodb::error::Result<Vec<Bson>> {
    let documents: Vec<Document> = collection
        .find(filter)
        .sort(doc! {"_id": 1})
        .projection(doc! {"_id": 1})
        .limit(BATCH as i64)
        .batch_size(BATCH as u32)
        .await?
        .try_collect()
        .await?;
    Ok(documents
        .into_iter()
        .filter_map(|mut d| d.remove("_id"))
        .collect())
}
