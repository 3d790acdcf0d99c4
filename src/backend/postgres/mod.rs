//! PostgreSQL: connections, the migration target with its history table and lock, and a
//! table as the source or the sink of an online job. One file per concern:
//!
//! - [`session`]: a job's sessions on one database, and the leftovers of earlier runs
//! - [`source`]: a table as a source; [`capture`] its change capture over
//!   [`replication`] (decoded by [`pgoutput`])
//! - [`sink`]: a table as a sink; [`batch`] its batches, [`apply`] its change
//!   application, [`verify`] its comparisons, [`cutover`] its switch
//! - [`checkpoints`] and [`ddl`]: what a job keeps and runs in a database
//! - [`dependents`] and [`plan`]: what `job plan` shows

mod apply;
mod batch;
mod capture;
mod checkpoints;
mod cutover;
mod ddl;
mod dependents;
mod migrations;
mod pgoutput;
mod plan;
mod replication;
mod session;
mod sink;
mod source;
mod split;
mod table;
mod verify;

pub use dependents::Dependent;
pub use migrations::PostgresMigrations;
pub use plan::JobPlan;
pub use split::split_statements;

use tokio_postgres::{Client, NoTls};

use crate::config::Config;
use crate::engine::Pipeline;
use crate::error::{Error, Result};
use crate::job::JobSpec;
use crate::secret::SecretUrl;

/// The `application_name` switchyard's sessions carry, so that operators can find them
/// in `pg_stat_activity` (and see who holds a lock).
pub const APPLICATION_NAME: &str = "switchyard";

/// Opens a connection; the connection task runs until the client is dropped.
/// `database` is the configured name, used in error messages.
pub async fn connect(database: &str, url: &SecretUrl) -> Result<Client> {
    connect_with(database, url, APPLICATION_NAME, None).await
}

/// [`connect`] with a given `application_name` (unless the URL sets one) and, when
/// given, session options (`-c name=value …`, after the URL's own).
pub async fn connect_with(
    database: &str,
    url: &SecretUrl,
    application_name: &str,
    options: Option<&str>,
) -> Result<Client> {
    let mut config: tokio_postgres::Config = url.expose().parse().map_err(|e| Error::Config {
        file: format!("databases.{database}.url"),
        reason: format!("`{url}` is not a valid PostgreSQL URL: {e}"),
    })?;
    if config.get_application_name().is_none() {
        config.application_name(application_name);
    }
    if let Some(options) = options {
        let merged = match config.get_options() {
            Some(own) => format!("{options} {own}"),
            None => options.to_string(),
        };
        config.options(&merged);
    }
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|e| Error::database(database, format!("cannot connect to {url}"), e))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "PostgreSQL connection closed");
        }
    });
    Ok(client)
}

/// `Duration` as a PostgreSQL interval literal in milliseconds (for `SET … = '…'`).
pub fn millis_literal(duration: std::time::Duration) -> String {
    format!("'{}ms'", duration.as_millis())
}

/// The two sides of a PostgreSQL job, connected.
async fn open_sides(config: &Config, spec: &JobSpec) -> Result<(source::PgSource, sink::PgSink)> {
    let sessions = session::Sessions::new(&spec.name);
    let lock_timeout = config.migrations.lock_timeout;
    let source_db = config.database(&spec.source.database)?;
    let target = spec
        .target
        .as_ref()
        .map_or(&spec.source.database, |t| &t.database);
    let target_db = config.database(target)?;
    let source = source::PgSource::open(spec, &source_db.url, &sessions, lock_timeout).await?;
    let same_database = *target == spec.source.database;
    let sink =
        sink::PgSink::open(spec, &target_db.url, &sessions, lock_timeout, same_database).await?;
    Ok((source, sink))
}

/// A PostgreSQL job's source and sink, joined for the engine.
pub async fn open_job(config: &Config, spec: &JobSpec) -> Result<Pipeline> {
    let (source, sink) = open_sides(config, spec).await?;
    Ok(Pipeline::new(Box::new(source), Box::new(sink)))
}

/// What `job plan` prints for a PostgreSQL job.
pub async fn plan_job(config: &Config, spec: &JobSpec) -> Result<JobPlan> {
    let (mut source, mut sink) = open_sides(config, spec).await?;
    plan::plan(&mut source, &mut sink).await
}
