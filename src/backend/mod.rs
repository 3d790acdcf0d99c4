//! One folder per kind of database. Each implements the small traits its consumers
//! define (for migrations: [`crate::migrate::MigrationTarget`]); callers dispatch on the
//! configured [`crate::config::DatabaseKind`].

/// The name switchyard's connections give themselves (PostgreSQL's `application_name`,
/// MongoDB's `appName`), so that operators can find them in the server's session lists
/// (and see who holds a lock).
pub const APPLICATION_NAME: &str = "switchyard";

pub mod elasticsearch;
pub mod lease;
pub mod mongodb;
pub mod plan;
pub mod postgres;

/// The name of a job's way back, the job that carries the new table's or collection's
/// writes back to the old one after cutover (its slot, sessions and checkpoints carry it).
pub(crate) fn back_name(job: &str) -> String {
    format!("{job}_back")
}

use std::sync::Arc;

use crate::config::{Config, DatabaseKind};
use crate::engine::{JobRecord, Pipeline};
use crate::error::Result;
use crate::job::JobSpec;
use crate::state::StateStore;

/// The source and sink of a job as its record says it stands, for the engine: one
/// place for the CLI and `serve`.
pub async fn open_job(
    config: &Config,
    spec: &JobSpec,
    store: &Arc<dyn StateStore>,
) -> Result<Pipeline> {
    let source_may_be_gone = JobRecord::load(store.as_ref(), &spec.name)
        .await?
        .is_some_and(|record| record.source_may_be_gone());
    if into_index(config, spec)? {
        return elasticsearch::open_copy_job(config, spec, store).await;
    }
    match config.database(&spec.source.database)?.kind {
        DatabaseKind::Postgresql => postgres::open_job(config, spec, source_may_be_gone).await,
        DatabaseKind::Mongodb => mongodb::open_job(config, spec).await,
        DatabaseKind::Elasticsearch => elasticsearch::open_job(config, spec, store).await,
    }
}

/// The source and sink of a job for a process that only copies chunks of it while
/// another process runs it ([`crate::engine::help`]). Only PostgreSQL sinks fence
/// their batches; for the others the engine declines to help.
pub async fn open_helper(
    config: &Config,
    spec: &JobSpec,
    store: &Arc<dyn StateStore>,
) -> Result<Pipeline> {
    let into_postgres = match &spec.target {
        Some(target) => config.database(&target.database)?.kind == DatabaseKind::Postgresql,
        None => config.database(&spec.source.database)?.kind == DatabaseKind::Postgresql,
    };
    let from_postgres = config.database(&spec.source.database)?.kind == DatabaseKind::Postgresql;
    if into_postgres && from_postgres {
        postgres::open_helper(config, spec).await
    } else {
        open_job(config, spec, store).await
    }
}

/// What `job plan` prints for a job, changing nothing.
/// What a job will do; `store` holds the checkpoints of an Elasticsearch target (whether
/// its expand already ran).
pub async fn plan_job(
    config: &Config,
    spec: &JobSpec,
    store: &Arc<dyn StateStore>,
) -> Result<plan::JobPlan> {
    if into_index(config, spec)? {
        return elasticsearch::plan_copy_job(config, spec, store).await;
    }
    match config.database(&spec.source.database)?.kind {
        DatabaseKind::Postgresql => postgres::plan_job(config, spec).await,
        DatabaseKind::Mongodb => mongodb::plan_job(config, spec).await,
        DatabaseKind::Elasticsearch => elasticsearch::plan_job(config, spec, store).await,
    }
}

/// Whether `spec` copies a table or collection of another store into an index (the
/// only path into an index besides a reindex; the job's validation allows no other).
fn into_index(config: &Config, spec: &JobSpec) -> Result<bool> {
    Ok(match &spec.target {
        Some(target) => config.database(&target.database)?.kind == DatabaseKind::Elasticsearch,
        None => false,
    })
}
