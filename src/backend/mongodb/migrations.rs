//! Versioned migrations on MongoDB.
//!
//! Invariants:
//! - History lives in the collection `switchyard_migrations`, one document per version
//!   (`_id` = version) holding its latest outcome, as PostgreSQL's table does.
//! - A run in progress keeps, in `switchyard_migration_progress` (`_id` = version), the
//!   migration's checksum, direction, how many operations completed and the last `_id`
//!   of the data operation under way. A run killed at any point is resumed by the next
//!   `migrate` from there (the same files only: a changed checksum starts over); the
//!   progress document goes once the outcome is recorded.
//! - A migration that fails undoes what it did, as a PostgreSQL transaction would: the
//!   inverses of its completed operations (and of the failing one, when it is a data
//!   operation with an inverse), newest first. Undoing stops at the first operation that
//!   has none, and the FAILED record names what was left in place.
//! - Rollback runs `_rollback.json` when there is one, else every operation's inverse,
//!   newest first; one without an inverse refuses the rollback before anything changes
//!   (checked by the plan, again here).
//! - The lock is a [`Lease`] kept alive by a heartbeat; the run checks it before each
//!   operation and stops if it was lost.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::{Collection, Database};

use super::operations::{self, Checkpoint, Failure};
use super::{connect, store_error};
use crate::backend::lease::Lease;
use crate::error::{Error, Result};
use crate::migrate::{
    undo, Body, HistoryRow, Migration, MigrationTarget, MongoOperation, Status, Step,
};
use crate::secret::SecretUrl;

const HISTORY: &str = "switchyard_migrations";
const PROGRESS: &str = "switchyard_migration_progress";

/// A MongoDB database as a [`MigrationTarget`].
pub struct MongoMigrations {
    name: String,
    url: SecretUrl,
    database: Database,
    lease: Lease,
}

impl MongoMigrations {
    pub async fn connect(name: &str, url: &SecretUrl, holder: &str) -> Result<Self> {
        let database = connect(name, url).await?;
        let lease = super::lease::lease(&database, name, url, "migrations", holder.to_string());
        Ok(MongoMigrations {
            name: name.to_string(),
            url: url.clone(),
            database,
            lease,
        })
    }

    fn error(&self, context: &str, e: mongodb::error::Error) -> Error {
        store_error(&self.name, &self.url, context, e)
    }

    fn history_collection(&self) -> Collection<Document> {
        self.database.collection(HISTORY)
    }

    async fn record(
        &self,
        migration: &Migration,
        status: Status,
        duration: Duration,
        error: Option<&str>,
        applied_by: &str,
    ) -> Result<()> {
        let row = doc! {
            "_id": migration.version.as_str(),
            "version": migration.version.as_str(),
            "name": &migration.name,
            "checksum": &migration.checksum,
            "status": status.as_str(),
            "applied_at": DateTime::now(),
            "duration_ms": duration.as_millis() as i64,
            "error": error.map_or(Bson::Null, |e| Bson::String(e.to_string())),
            "applied_by": applied_by,
        };
        self.history_collection()
            .replace_one(doc! {"_id": migration.version.as_str()}, row)
            .upsert(true)
            .await
            .map(drop)
            .map_err(|e| self.error("cannot record the migration in switchyard_migrations", e))
    }

    /// The operations of `step`, newest-first inverses for a rollback without a file.
    fn operations(&self, migration: &Migration, step: Step) -> Result<Vec<MongoOperation>> {
        let Body::Mongo { up, down } = &migration.body else {
            return Err(Error::Usage(format!(
                "{}: not a MongoDB migration",
                migration.main_file().display()
            )));
        };
        undo::operations_for(migration, up, down.as_deref(), step)
    }

    /// Runs `operations` from where `progress` says; on failure, the index of the
    /// operation that failed and why.
    async fn run(
        &self,
        operations: &[MongoOperation],
        progress: &mut Progress,
    ) -> std::result::Result<(), (usize, Failure)> {
        let resumed_at = progress.resumed.then_some(progress.completed);
        for (index, operation) in operations.iter().enumerate().skip(progress.completed) {
            if self.lease.is_lost() {
                return Err((index, crate::backend::lease::LOST.into()));
            }
            let may_be_done = resumed_at == Some(index);
            operations::apply(&self.database, operation, may_be_done, progress)
                .await
                .map_err(|why| {
                    (
                        index,
                        format!("operation {} ({operation}): {why}", index + 1),
                    )
                })?;
            progress
                .complete(index + 1)
                .await
                .map_err(|why| (index, why))?;
        }
        Ok(())
    }

    /// Undoes operations `..=failed` after a failure; says what was undone and what was
    /// left.
    async fn undo(&self, operations: &[MongoOperation], failed: usize) -> String {
        let database = &self.database;
        undo::undo(operations, failed, |inverse| {
            Box::pin(async move {
                let mut none = operations::NoCheckpoint::default();
                operations::apply(database, &inverse, true, &mut none).await
            })
        })
        .await
    }
}

#[async_trait]
impl MigrationTarget for MongoMigrations {
    fn database(&self) -> &str {
        &self.name
    }

    async fn lock(&mut self, wait: Duration) -> Result<()> {
        crate::backend::lease::lock(&mut self.lease, &self.name, wait).await
    }

    async fn unlock(&mut self) -> Result<()> {
        self.lease.release().await
    }

    async fn prepare_history(&mut self) -> Result<()> {
        Ok(()) // a collection exists from its first write
    }

    async fn history(&mut self) -> Result<Vec<HistoryRow>> {
        let read = async {
            self.history_collection()
                .find(doc! {})
                .await?
                .try_collect()
                .await
        };
        let documents: Vec<Document> = read
            .await
            .map_err(|e| self.error("cannot read the migration history", e))?;
        documents.iter().map(|d| self.history_row(d)).collect()
    }

    async fn record_applied(&mut self, migration: &Migration, applied_by: &str) -> Result<()> {
        self.record(
            migration,
            Status::Completed,
            Duration::ZERO,
            None,
            applied_by,
        )
        .await
    }

    async fn apply(
        &mut self,
        migration: &Migration,
        step: Step,
        applied_by: &str,
    ) -> Result<Duration> {
        let operations = self.operations(migration, step)?;
        let started = Instant::now();
        let mut progress = Progress::load(&self.database, migration, step)
            .await
            .map_err(|e| self.error("cannot read the migration's progress", e))?;
        let outcome = self.run(&operations, &mut progress).await;
        let status = match step {
            Step::Up => Status::Completed,
            Step::Down => Status::RolledBack,
        };
        let message = match outcome {
            Ok(()) => {
                self.record(migration, status, started.elapsed(), None, applied_by)
                    .await?;
                progress
                    .clear()
                    .await
                    .map_err(|e| self.error("cannot clear the migration's progress", e))?;
                return Ok(started.elapsed());
            }
            Err((failed, why)) => match step {
                Step::Up => {
                    let undo = self.undo(&operations, failed).await;
                    format!("{why} ({undo})")
                }
                Step::Down => undo::rollback_failed(&why, failed),
            },
        };
        match step {
            Step::Up => {
                self.record(
                    migration,
                    Status::Failed,
                    started.elapsed(),
                    Some(&message),
                    applied_by,
                )
                .await?;
                progress
                    .clear()
                    .await
                    .map_err(|e| self.error("cannot clear the migration's progress", e))?;
            }
            Step::Down => {
                self.history_collection()
                    .update_one(
                        doc! {"_id": migration.version.as_str()},
                        doc! {"$set": {"error": &message}},
                    )
                    .await
                    .map_err(|e| self.error("cannot record the failed rollback", e))?;
            }
        }
        Err(Error::MigrationFailed {
            database: self.name.clone(),
            version: migration.version.to_string(),
            name: migration.name.clone(),
            message,
        })
    }
}

impl MongoMigrations {
    fn history_row(&self, document: &Document) -> Result<HistoryRow> {
        let text = |field: &str| document.get_str(field).unwrap_or_default().to_string();
        let status = text("status");
        Ok(HistoryRow {
            version: text("version"),
            name: text("name"),
            checksum: text("checksum"),
            status: Status::parse_stored(&status).ok_or_else(|| {
                Error::Refused(format!(
                    "database `{}`: switchyard_migrations holds an unknown status `{status}`",
                    self.name
                ))
            })?,
            applied_at: document
                .get_datetime("applied_at")
                .ok()
                .and_then(|at| chrono::DateTime::from_timestamp_millis(at.timestamp_millis()))
                .unwrap_or_default(),
            duration_ms: document
                .get("duration_ms")
                .and_then(|d| d.as_i64().or_else(|| d.as_i32().map(i64::from)))
                .unwrap_or_default(),
            error: document.get_str("error").ok().map(str::to_string),
            applied_by: text("applied_by"),
        })
    }
}

/// A run's place in its migration, kept in `switchyard_migration_progress`.
struct Progress {
    collection: Collection<Document>,
    version: String,
    completed: usize,
    last_id: Option<Bson>,
    /// Loaded from an earlier, unfinished run.
    resumed: bool,
}

impl Progress {
    async fn load(
        database: &Database,
        migration: &Migration,
        step: Step,
    ) -> mongodb::error::Result<Progress> {
        let collection = database.collection::<Document>(PROGRESS);
        let version = migration.version.to_string();
        let direction = step.as_str();
        let saved = collection.find_one(doc! {"_id": &version}).await?;
        let mut progress = Progress {
            collection,
            version,
            completed: 0,
            last_id: None,
            resumed: false,
        };
        if let Some(saved) = saved.filter(|s| {
            s.get_str("checksum") == Ok(migration.checksum.as_str())
                && s.get_str("direction") == Ok(direction)
        }) {
            progress.completed = saved.get_i64("completed").unwrap_or(0) as usize;
            progress.last_id = saved.get("last_id").cloned();
            progress.resumed = true;
        } else {
            progress.persist(doc! {"checksum": &migration.checksum, "direction": direction, "completed": 0_i64}).await?;
        }
        Ok(progress)
    }

    async fn persist(&self, fields: Document) -> mongodb::error::Result<()> {
        self.collection
            .update_one(doc! {"_id": &self.version}, doc! {"$set": fields})
            .upsert(true)
            .await
            .map(drop)
    }

    async fn complete(&mut self, completed: usize) -> std::result::Result<(), Failure> {
        self.completed = completed;
        self.last_id = None;
        self.persist(doc! {"completed": completed as i64, "last_id": Bson::Null})
            .await
            .map_err(|e| {
                format!(
                    "cannot save the migration's progress: {}",
                    super::describe(&e)
                )
            })
    }

    async fn clear(&self) -> mongodb::error::Result<()> {
        self.collection
            .delete_one(doc! {"_id": &self.version})
            .await
            .map(drop)
    }
}

impl Checkpoint for Progress {
    fn last_id(&self) -> Option<&Bson> {
        self.last_id.as_ref().filter(|id| !matches!(id, Bson::Null))
    }

    fn save(&mut self, last_id: Bson) -> BoxFuture<'_, std::result::Result<(), Failure>> {
        Box::pin(async move {
            self.last_id = Some(last_id.clone());
            self.persist(doc! {"last_id": last_id}).await.map_err(|e| {
                format!(
                    "cannot save the migration's progress: {}",
                    super::describe(&e)
                )
            })
        })
    }
}
