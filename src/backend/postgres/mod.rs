//! PostgreSQL: connections, the migration target with its history table and lock, and a
//! table as the source or the sink of an online job. One file per concern:
//!
//! - [`session`]: a job's sessions on one database, and the leftovers of earlier runs
//! - [`source`]: a table as a source; [`capture`] its change capture over
//!   [`replication`] (decoded by [`pgoutput`])
//! - [`sink`]: a table as a sink; [`batch`] its batches, [`apply`] its change
//!   application, [`verify`] its comparisons, [`cutover`] its switch
//! - [`checkpoints`] and [`ddl`]: what a job keeps and runs in a database
//! - [`dependents`] and [`plan`]: what `job plan` shows; [`carry`] how cutover carries
//!   dependents to the new table
//! - [`tls`]: how every connection (queries and replication) is made, TLS included

mod apply;
mod batch;
mod capture;
mod carry;
mod checkpoints;
mod cutover;
mod ddl;
mod dependents;
pub mod erase;
pub mod health;
mod lanes;
mod migrations;
mod pgoutput;
mod plan;
mod replication;
mod session;
mod sink;
mod source;
mod split;
mod table;
mod tls;
pub mod transfer;
mod verify;

pub use migrations::PostgresMigrations;
pub use split::split_statements;
pub use tls::ConnectionSettings;

use std::sync::Arc;

use crate::backend::plan::JobPlan;

use tokio_postgres::Client;

use crate::config::Config;
use crate::engine::Pipeline;
use crate::error::{Error, Result};
use crate::job::{CatchUpMethod, Endpoint, JobKind, JobSpec};
use crate::secret::SecretUrl;
use table::TableName;

pub use super::APPLICATION_NAME;

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
    let tls::ConnectionSettings {
        mut config,
        tls: settings,
    } = tls::ConnectionSettings::parse(database, url)?;
    config.ssl_mode(settings.wire_mode());
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
        .connect(settings.connector(database)?)
        .await
        .map_err(|e| {
            settings
                .refusal(database, &e)
                .unwrap_or_else(|| Error::database(database, format!("cannot connect to {url}"), e))
        })?;
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

/// The two sides of a PostgreSQL job, connected. `aside` is the name the source takes
/// when the target takes its place.
async fn open_sides(
    config: &Config,
    spec: &JobSpec,
    aside: TableName,
    captures_back: bool,
    source_may_be_gone: bool,
) -> Result<(source::PgSource, sink::PgSink)> {
    let sessions = session::Sessions::new(&spec.name);
    open_sides_with(
        config,
        spec,
        aside,
        captures_back,
        source_may_be_gone,
        sessions,
    )
    .await
}

async fn open_sides_with(
    config: &Config,
    spec: &JobSpec,
    aside: TableName,
    captures_back: bool,
    source_may_be_gone: bool,
    sessions: session::Sessions,
) -> Result<(source::PgSource, sink::PgSink)> {
    let lock_timeout = config.migrations.lock_timeout;
    let source_db = config.database(&spec.source.database)?;
    let target = spec
        .target
        .as_ref()
        .map_or(&spec.source.database, |t| &t.database);
    let target_db = config.database(target)?;
    let source = source::PgSource::open(
        spec,
        &source_db.url,
        &sessions,
        lock_timeout,
        aside.clone(),
        source_may_be_gone,
    )
    .await?;
    let sink = sink::PgSink::open(
        spec,
        &target_db.url,
        &sessions,
        lock_timeout,
        sink::Placement {
            same_database: *target == spec.source.database,
            aside,
            captures_back,
        },
    )
    .await?;
    Ok((source, sink))
}

/// The name the source of `spec` takes at cutover: `<table>_old`.
fn forward_aside(spec: &JobSpec) -> TableName {
    source::old_name(&TableName::parse(
        spec.source.table.as_deref().unwrap_or_default(),
    ))
}

/// A PostgreSQL job's source and sink, joined for the engine; a copy that catches up
/// can also carry the new table's writes back after its cutover ([`way_back`]). Once
/// the job's contract has begun (`source_may_be_gone`), its source may have been dropped.
pub async fn open_job(
    config: &Config,
    spec: &JobSpec,
    source_may_be_gone: bool,
) -> Result<Pipeline> {
    let captures_back =
        spec.kind == JobKind::Copy && spec.catch_up.method == CatchUpMethod::LogicalReplication;
    let (source, sink) = open_sides(
        config,
        spec,
        forward_aside(spec),
        captures_back,
        source_may_be_gone,
    )
    .await?;
    let pipeline = Pipeline::new(Box::new(source), Box::new(sink));
    if !captures_back {
        return Ok(pipeline);
    }
    let (config, spec) = (Arc::new(config.clone()), Arc::new(spec.clone()));
    Ok(pipeline.with_reverse(Box::new(move || {
        let (config, spec) = (config.clone(), spec.clone());
        Box::pin(async move {
            let (back, aside) = way_back(&spec);
            let (source, sink) = open_sides(&config, &back, aside, false, false).await?;
            Ok(Pipeline::new(Box::new(source), Box::new(sink)))
        })
    })))
}

/// The two sides of a job for a process that only copies its chunks while another runs
/// it ([`crate::engine::help`]): its sessions are the job's helpers', which the running
/// process leaves alone when it ends leftovers (the fences of their batches guard the
/// ranges instead).
pub async fn open_helper(config: &Config, spec: &JobSpec) -> Result<Pipeline> {
    let sessions = session::Sessions::helper(&spec.name);
    let (source, sink) =
        open_sides_with(config, spec, forward_aside(spec), false, false, sessions).await?;
    Ok(Pipeline::new(Box::new(source), Box::new(sink)))
}

/// The job that carries writes back after `spec`'s cutover: the new table (the target,
/// under the source's name) is its source and the set-aside source (`<table>_old`) its
/// target; its cutover gives the old table its name back and puts the new one aside
/// under the name it had before (or `<table>_old` on its server when it had the
/// source's name). It copies nothing: it only catches up and cuts over.
pub(crate) fn way_back(spec: &JobSpec) -> (JobSpec, TableName) {
    let source = TableName::parse(spec.source.table.as_deref().unwrap_or_default());
    let forward_target = spec.target.as_ref().expect("a copy has a target");
    let target = TableName::parse(forward_target.table.as_deref().unwrap_or_default());
    let new_table = target.sibling(&source.name);
    let aside = if new_table != target {
        target
    } else {
        source::old_name(&new_table)
    };
    let mut back = spec.clone();
    back.name = crate::backend::back_name(&spec.name);
    back.source = Endpoint {
        database: forward_target.database.clone(),
        table: Some(new_table.to_string()),
        ..spec.source.clone()
    };
    back.target = Some(Endpoint {
        database: spec.source.database.clone(),
        table: Some(source::old_name(&source).to_string()),
        key: None,
        ..forward_target.clone()
    });
    back.expand = Default::default();
    back.transform = Default::default();
    back.contract = Default::default();
    (back, aside)
}

/// A table as the source of a job into another store (which keeps the checkpoints).
pub async fn open_source(
    config: &Config,
    spec: &JobSpec,
) -> Result<Box<dyn crate::engine::Source>> {
    let sessions = session::Sessions::new(&spec.name);
    let source = source::PgSource::open(
        spec,
        &config.database(&spec.source.database)?.url,
        &sessions,
        config.migrations.lock_timeout,
        forward_aside(spec),
        false,
    )
    .await?;
    Ok(Box::new(source))
}

/// What `job plan` prints for a PostgreSQL job.
pub async fn plan_job(config: &Config, spec: &JobSpec) -> Result<JobPlan> {
    let (mut source, mut sink) =
        open_sides(config, spec, forward_aside(spec), false, false).await?;
    plan::plan(&mut source, &mut sink).await
}
