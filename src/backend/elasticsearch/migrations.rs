//! Versioned migrations on Elasticsearch.
//!
//! Invariants:
//! - History lives in the index `switchyard-migrations`, one document per version
//!   (`_id` = version) holding its latest outcome, as PostgreSQL's table does; every
//!   write to it is refreshed before the run goes on, so `status` reads it at once.
//! - A run in progress keeps, in `switchyard-migration-progress` (`_id` = version), the
//!   migration's checksum, direction and how many operations completed. A run killed at
//!   any point is resumed by the next `migrate` from there (the same files only), the
//!   operation it was in sent again as one that may be done already.
//! - A migration that fails undoes what it did ([`crate::migrate::undo`]): the inverses
//!   of its completed operations, newest first, stopping at the first that has none; the
//!   FAILED record names what was left.
//! - The lock is a [`Lease`] in `switchyard-locks`, kept alive by a heartbeat; the run
//!   checks it before each operation and stops if it was lost.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use elasticsearch::http::Method;
use serde_json::{json, Value};

use super::{operations, path_segment, Es};
use crate::backend::lease::Lease;
use crate::config::DatabaseConfig;
use crate::error::{Error, Result};
use crate::migrate::{
    undo, Body, ElasticOperation, HistoryRow, Migration, MigrationTarget, Status, Step,
};

const HISTORY: &str = "switchyard-migrations";
const PROGRESS: &str = "switchyard-migration-progress";

/// An Elasticsearch cluster as a [`MigrationTarget`].
pub struct ElasticMigrations {
    es: Es,
    lease: Lease,
}

impl ElasticMigrations {
    pub fn connect(name: &str, database: &DatabaseConfig, holder: &str) -> Result<Self> {
        let es = Es::connect(name, database)?;
        let lease = super::lease::lease(&es, "migrations", holder.to_string());
        Ok(ElasticMigrations { es, lease })
    }

    fn document_path(index: &str, migration: &Migration) -> String {
        format!(
            "/{index}/_doc/{}?refresh=true",
            path_segment(migration.version.as_str())
        )
    }

    async fn record(
        &self,
        migration: &Migration,
        status: Status,
        duration: Duration,
        error: Option<&str>,
        applied_by: &str,
    ) -> Result<()> {
        let row = json!({
            "version": migration.version.as_str(),
            "name": &migration.name,
            "checksum": &migration.checksum,
            "status": status.as_str(),
            "applied_at": chrono::Utc::now().to_rfc3339(),
            "duration_ms": duration.as_millis() as i64,
            "error": error,
            "applied_by": applied_by,
        });
        self.es
            .expect(
                Method::Put,
                &Self::document_path(HISTORY, migration),
                Some(&row),
                "cannot record the migration in switchyard-migrations",
            )
            .await
            .map(drop)
    }

    /// The operations of `step`, newest-first inverses for a rollback without a file.
    fn operations(&self, migration: &Migration, step: Step) -> Result<Vec<ElasticOperation>> {
        let Body::Elastic { up, down } = &migration.body else {
            return Err(Error::Usage(format!(
                "{}: not an Elasticsearch migration",
                migration.main_file().display()
            )));
        };
        undo::operations_for(migration, up, down.as_deref(), step)
    }

    /// How many operations of `migration` a killed run in this direction completed.
    async fn resumed_at(&self, migration: &Migration, step: Step) -> Result<Option<usize>> {
        let reply = self
            .es
            .call(
                Method::Get,
                &Self::document_path(PROGRESS, migration).replace("?refresh=true", ""),
                None,
            )
            .await?;
        if reply.status == 404 {
            return Ok(None);
        }
        if !reply.is_success() {
            return Err(self
                .es
                .refused("cannot read the migration's progress", &reply));
        }
        let saved = &reply.body["_source"];
        let same_run =
            saved["checksum"] == migration.checksum.as_str() && saved["direction"] == step.as_str();
        Ok(same_run.then(|| saved["completed"].as_u64().unwrap_or(0) as usize))
    }

    async fn save_progress(
        &self,
        migration: &Migration,
        step: Step,
        completed: usize,
    ) -> Result<()> {
        let progress = json!({
            "checksum": &migration.checksum,
            "direction": step.as_str(),
            "completed": completed,
        });
        self.es
            .expect(
                Method::Put,
                &Self::document_path(PROGRESS, migration),
                Some(&progress),
                "cannot save the migration's progress",
            )
            .await
            .map(drop)
    }

    async fn clear_progress(&self, migration: &Migration) -> Result<()> {
        let reply = self
            .es
            .call(
                Method::Delete,
                &Self::document_path(PROGRESS, migration),
                None,
            )
            .await?;
        match reply.is_success() || reply.status == 404 {
            true => Ok(()),
            false => Err(self
                .es
                .refused("cannot clear the migration's progress", &reply)),
        }
    }

    /// Runs `operations` from `start`; on failure, the index of the operation that
    /// failed and why.
    async fn run(
        &self,
        migration: &Migration,
        step: Step,
        operations: &[ElasticOperation],
        resumed_at: Option<usize>,
    ) -> std::result::Result<(), (usize, String)> {
        for (index, operation) in operations.iter().enumerate().skip(resumed_at.unwrap_or(0)) {
            if self.lease.is_lost() {
                return Err((index, crate::backend::lease::LOST.into()));
            }
            let may_be_done = resumed_at == Some(index);
            operations::apply(&self.es, operation, may_be_done)
                .await
                .map_err(|why| {
                    (
                        index,
                        format!("operation {} ({operation}): {why}", index + 1),
                    )
                })?;
            crate::crash_point!("migration.after_operation");
            self.save_progress(migration, step, index + 1)
                .await
                .map_err(|e| (index, e.to_string()))?;
        }
        Ok(())
    }

    fn history_row(&self, source: &Value) -> Result<HistoryRow> {
        let text = |field: &str| source[field].as_str().unwrap_or_default().to_string();
        let status = text("status");
        Ok(HistoryRow {
            version: text("version"),
            name: text("name"),
            checksum: text("checksum"),
            status: Status::parse_stored(&status).ok_or_else(|| {
                Error::Refused(format!(
                    "database `{}`: switchyard-migrations holds an unknown status `{status}`",
                    self.es.name()
                ))
            })?,
            applied_at: chrono::DateTime::parse_from_rfc3339(&text("applied_at"))
                .map(|at| at.with_timezone(&chrono::Utc))
                .unwrap_or_default(),
            duration_ms: source["duration_ms"].as_i64().unwrap_or_default(),
            error: source["error"].as_str().map(str::to_string),
            applied_by: text("applied_by"),
        })
    }
}

#[async_trait]
impl MigrationTarget for ElasticMigrations {
    fn database(&self) -> &str {
        self.es.name()
    }

    async fn lock(&mut self, wait: Duration) -> Result<()> {
        let name = self.es.name().to_string();
        crate::backend::lease::lock(&mut self.lease, &name, wait).await
    }

    async fn unlock(&mut self) -> Result<()> {
        self.lease.release().await
    }

    async fn prepare_history(&mut self) -> Result<()> {
        let keyword = json!({ "type": "keyword" });
        let mapping = json!({ "mappings": { "properties": {
            "version": keyword, "name": keyword, "checksum": keyword, "status": keyword,
            "applied_at": { "type": "date" }, "duration_ms": { "type": "long" },
            "error": { "type": "text" }, "applied_by": keyword,
        } } });
        let reply = self
            .es
            .call(Method::Put, &format!("/{HISTORY}"), Some(&mapping))
            .await?;
        match reply.is_success() || reply.error_type() == Some("resource_already_exists_exception")
        {
            true => Ok(()),
            false => Err(self
                .es
                .refused("cannot create the index switchyard-migrations", &reply)),
        }
    }

    async fn history(&mut self) -> Result<Vec<HistoryRow>> {
        let reply = self
            .es
            .call(
                Method::Post,
                &format!("/{HISTORY}/_search"),
                Some(&json!({ "size": 10_000, "query": { "match_all": {} } })),
            )
            .await?;
        if reply.error_type() == Some("index_not_found_exception") {
            return Ok(Vec::new());
        }
        if !reply.is_success() {
            return Err(self.es.refused("cannot read the migration history", &reply));
        }
        let hits = reply.body["hits"]["hits"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        hits.iter()
            .map(|hit| self.history_row(&hit["_source"]))
            .collect()
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
        let resumed_at = self.resumed_at(migration, step).await?;
        if resumed_at.is_none() {
            self.save_progress(migration, step, 0).await?;
        }
        let outcome = self.run(migration, step, &operations, resumed_at).await;
        let Err((failed, why)) = outcome else {
            let status = match step {
                Step::Up => Status::Completed,
                Step::Down => Status::RolledBack,
            };
            self.record(migration, status, started.elapsed(), None, applied_by)
                .await?;
            self.clear_progress(migration).await?;
            return Ok(started.elapsed());
        };
        let message = match step {
            Step::Up => {
                let es = &self.es;
                let undone = undo::undo(&operations, failed, |inverse| {
                    Box::pin(async move { operations::apply(es, &inverse, true).await })
                })
                .await;
                let message = format!("{why} ({undone})");
                self.record(
                    migration,
                    Status::Failed,
                    started.elapsed(),
                    Some(&message),
                    applied_by,
                )
                .await?;
                self.clear_progress(migration).await?;
                message
            }
            Step::Down => {
                let message = undo::rollback_failed(&why, failed);
                self.es
                    .expect(
                        Method::Post,
                        &Self::document_path(HISTORY, migration).replace("/_doc/", "/_update/"),
                        Some(&json!({ "doc": { "error": &message } })),
                        "cannot record the failed rollback",
                    )
                    .await?;
                message
            }
        };
        Err(Error::MigrationFailed {
            database: self.es.name().to_string(),
            version: migration.version.to_string(),
            name: migration.name.clone(),
            message,
        })
    }
}
