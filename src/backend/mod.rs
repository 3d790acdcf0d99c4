//! One folder per kind of database. Each implements the small traits its consumers
//! define (for migrations: [`crate::migrate::MigrationTarget`]); callers dispatch on the
//! configured [`crate::config::DatabaseKind`].

pub mod postgres;

use crate::config::{Config, DatabaseKind};
use crate::engine::Pipeline;
use crate::error::{Error, Result};
use crate::job::JobSpec;

/// The source and sink of a job, for the engine: one place for the CLI and `serve`.
pub async fn open_job(config: &Config, spec: &JobSpec) -> Result<Pipeline> {
    match config.database(&spec.source.database)?.kind {
        DatabaseKind::Postgresql => postgres::open_job(config, spec).await,
        kind => Err(Error::Refused(format!(
            "{kind} jobs are not available in this version"
        ))),
    }
}
