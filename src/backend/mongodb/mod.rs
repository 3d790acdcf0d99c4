//! MongoDB: connections, errors as users read them, and the migration target with its
//! history collection, lease lock and operations. One file per concern:
//!
//! - [`migrations`]: the [`crate::migrate::MigrationTarget`] (history, checksums, undo of
//!   a migration that failed midway)
//! - [`lease`]: the migration lock, a lease document with an expiry kept alive by a
//!   heartbeat
//! - [`operations`]: seed 003's operations applied, data operations in resumable
//!   `_id`-range batches
//! - [`order`]: the order of `_id`s across types, and keys as text
//! - [`source`]: a collection as a job's source; [`capture`] its change stream
//! - [`plan`]: what `job plan` prints
//! - [`sink`]: a collection as a job's sink (a copy's target, a backfill's collection);
//!   [`verify`] its comparison with the source while writes go on
//!
//! The database a URL names (`mongodb://host/app`) is the one acted on; the driver's own
//! URL options (`tls=true`, `tlsCAFile=…`, `replicaSet=…`) are honoured as they are.

mod capture;
pub mod erase;
mod lease;
mod migrations;
mod operations;
mod order;
mod plan;
mod sink;
mod source;
pub mod transfer;
mod verify;

pub use migrations::MongoMigrations;
pub(crate) use order::id_of;

use crate::config::Config;
use crate::engine::Pipeline;
use crate::job::{CatchUpMethod, JobKind, JobSpec};

use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::{Bson, Document};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::ClientOptions;
use mongodb::{Client, Database};

use crate::error::{Error, Result};
use crate::secret::SecretUrl;

/// How long the driver looks for a server before an operation fails, unless the URL's
/// `serverSelectionTimeoutMS` says otherwise (the driver's own default is 30 s).
const SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to the database the URL names. `database` is the configured name, for
/// messages. The driver connects lazily: the first command shows whether it answers.
pub async fn connect(database: &str, url: &SecretUrl) -> Result<Database> {
    let mut options = ClientOptions::parse(url.expose())
        .await
        .map_err(|e| store_error(database, url, "invalid MongoDB URL", e))?;
    if options.app_name.is_none() {
        options.app_name = Some(crate::backend::APPLICATION_NAME.to_string());
    }
    if options.server_selection_timeout.is_none() {
        options.server_selection_timeout = Some(SERVER_SELECTION_TIMEOUT);
    }
    let Some(name) = options.default_database.clone() else {
        return Err(Error::Usage(format!(
            "database `{database}`: the URL {} names no database: add it as its path (mongodb://host:27017/app)",
            url.redacted()
        )));
    };
    let client = Client::with_options(options)
        .map_err(|e| store_error(database, url, "cannot create a MongoDB client", e))?;
    Ok(client.database(&name))
}

/// A MongoDB job's source and sink, joined for the engine. A job catching up from a
/// change stream (a copy, or a backfill filling again what is written meanwhile) needs
/// a replica set: a standalone server is refused before anything changes. Such a copy also has a way back ([`open_way_back`]), whose capture its
/// cutover starts before the switch.
pub async fn open_job(config: &Config, spec: &JobSpec) -> Result<Pipeline> {
    let sides = Sides::of(config, spec)?;
    let aside = format!("{}_old", sides.source_collection);
    let source = source::MongoSource::open(spec, &spec.source.database, sides.source_url)
        .await?
        .with_set_aside(&aside);
    let source_database = connect(&spec.source.database, sides.source_url).await?;
    let captures = spec.catch_up.method == CatchUpMethod::ChangeStream;
    if captures {
        require_replica_set(&spec.source.database, sides.source_url, &source_database).await?;
    }
    let fill = match spec.kind {
        JobKind::Backfill => Some(
            spec.transform
                .update
                .0
                .iter()
                .map(to_document)
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| Error::Usage(format!("job `{}`: transform.update: {e}", spec.name)))?,
        ),
        _ => None,
    };
    let placement = sink::Placement {
        name: sides.target_name.clone(),
        url: sides.target_url.clone(),
        database: connect(&sides.target_name, sides.target_url).await?,
        collection: sides.target_collection.clone(),
        source_database,
        source_collection: sides.source_collection.clone(),
        aside,
        same_database: sides.target_name == spec.source.database,
        fill,
        expand: spec.expand.operations.clone(),
    };
    if !(captures && spec.kind == JobKind::Copy) {
        let sink = sink::MongoSink::new(&spec.name, placement);
        return Ok(Pipeline::new(Box::new(source), Box::new(sink)));
    }
    let (back_source, back_sink) = open_way_back(config, spec).await?;
    let sink = sink::MongoSink::new(&spec.name, placement).with_way_back(back_source, back_sink);
    let (config, spec) = (Arc::new(config.clone()), Arc::new(spec.clone()));
    Ok(
        Pipeline::new(Box::new(source), Box::new(sink)).with_reverse(Box::new(move || {
            let (config, spec) = (config.clone(), spec.clone());
            Box::pin(async move {
                let (source, sink) = open_way_back(&config, &spec).await?;
                Ok(Pipeline::new(Box::new(source), Box::new(sink)))
            })
        })),
    )
}

/// A collection as the source of a job into another store (which keeps the
/// checkpoints). Refused before anything changes: a collection that is not there, and a
/// standalone server when the job catches up from the change stream.
pub async fn open_source(
    config: &Config,
    spec: &JobSpec,
) -> Result<Box<dyn crate::engine::Source>> {
    let name = &spec.source.database;
    let url = &config.database(name)?.url;
    let source = source::MongoSource::open(spec, name, url).await?;
    let database = source.database();
    let collection = spec.source.collection.clone().unwrap_or_default();
    let present = has_collection(database, &collection).await.map_err(|e| {
        store_error(
            name,
            url,
            "cannot list the source database's collections",
            e,
        )
    })?;
    if !present {
        return Err(missing_source(&spec.name, &collection, database));
    }
    if spec.catch_up.method == CatchUpMethod::ChangeStream {
        require_replica_set(name, url, database).await?;
    }
    Ok(Box::new(source))
}

/// Where a job's collections are: names and URLs of both sides.
struct Sides<'a> {
    source_url: &'a SecretUrl,
    source_collection: String,
    target_name: String,
    target_url: &'a SecretUrl,
    target_collection: String,
}

impl<'a> Sides<'a> {
    fn of(config: &'a Config, spec: &JobSpec) -> Result<Sides<'a>> {
        let source_collection = spec.source.collection.clone().unwrap_or_default();
        let (target_name, target_collection) = match &spec.target {
            Some(target) => (
                target.database.clone(),
                target.collection.clone().unwrap_or_default(),
            ),
            None => (spec.source.database.clone(), source_collection.clone()),
        };
        Ok(Sides {
            source_url: &config.database(&spec.source.database)?.url,
            source_collection,
            target_url: &config.database(&target_name)?.url,
            target_name,
            target_collection,
        })
    }
}

/// Whether `database` has a collection named `collection`.
async fn has_collection(database: &Database, collection: &str) -> mongodb::error::Result<bool> {
    let names = database
        .list_collection_names()
        .filter(mongodb::bson::doc! {"name": collection})
        .await?;
    Ok(!names.is_empty())
}

/// A job's source collection is not there: refused before anything changes.
fn missing_source(job: &str, collection: &str, database: &Database) -> Error {
    Error::Refused(format!(
        "job `{job}`: the source collection `{collection}` does not exist in `{}`",
        database.name()
    ))
}

/// What `job plan` prints for a MongoDB job; reads only.
pub async fn plan_job(config: &Config, spec: &JobSpec) -> Result<crate::backend::plan::JobPlan> {
    plan::plan(config, spec).await
}

/// The way back of a copy that cut over: the new collection (the target, under the
/// source's name) is its source, watched from before the forward switch; the old one
/// (`<name>_old`) its sink. Its cutover sets the new collection aside under the name it
/// had before (or `<name>_old` on its server, when it had the source's name) and gives
/// the old one its name back. It copies nothing: it only catches up and cuts over.
/// Documents written after the forward cutover come back as they were written, in the
/// new collection's shape (a transform is not undone).
pub async fn open_way_back(
    config: &Config,
    spec: &JobSpec,
) -> Result<(source::MongoSource, sink::MongoSink)> {
    let sides = Sides::of(config, spec)?;
    let forward_aside = format!("{}_old", sides.source_collection);
    let name = &sides.source_collection;
    let aside = if sides.target_collection != *name {
        sides.target_collection.clone()
    } else {
        forward_aside.clone()
    };
    let mut back = spec.clone();
    back.name = crate::backend::back_name(&spec.name);
    back.source.database = sides.target_name.clone();
    back.transform = Default::default();
    let source = source::MongoSource::open(&back, &sides.target_name, sides.target_url)
        .await?
        .with_set_aside(&forward_aside);
    let placement = sink::Placement {
        name: spec.source.database.clone(),
        url: sides.source_url.clone(),
        database: connect(&spec.source.database, sides.source_url).await?,
        collection: forward_aside,
        source_database: connect(&sides.target_name, sides.target_url).await?,
        source_collection: name.clone(),
        aside,
        same_database: sides.target_name == spec.source.database,
        fill: None,
        expand: Vec::new(),
    };
    Ok((source, sink::MongoSink::new(&back.name, placement)))
}

/// Refuses a standalone server, on which change streams cannot open.
async fn require_replica_set(name: &str, url: &SecretUrl, database: &Database) -> Result<()> {
    let hello = database
        .run_command(mongodb::bson::doc! {"hello": 1})
        .await
        .map_err(|e| store_error(name, url, "cannot reach the server", e))?;
    if hello.contains_key("setName") || hello.get_str("msg") == Ok("isdbgrid") {
        return Ok(());
    }
    Err(Error::Refused(format!(
        "database `{name}`: change streams need a replica set, and this server is standalone: start it as a (single-node) replica set (mongod --replSet rs0, then rs.initiate()), or copy without catching up (`[catch_up] method = \"none\"`, with writes to the source stopped)"
    )))
}

/// A driver error as a user needs to read it, naming the database; never showing the
/// URL's password.
pub fn store_error(
    database: &str,
    url: &SecretUrl,
    context: impl Into<String>,
    error: mongodb::error::Error,
) -> Error {
    let mut message = describe(&error);
    if let Some(password) = url.password() {
        message = message.replace(&password, "***");
    }
    Error::Store {
        database: database.to_string(),
        context: context.into(),
        message,
        transient: is_transient(&error),
    }
}

/// The server's error codes switchyard acts on.
pub(super) const NAMESPACE_NOT_FOUND: i32 = 26;
pub(super) const INDEX_NOT_FOUND: i32 = 27;
pub(super) const NAMESPACE_EXISTS: i32 = 48;
pub(super) const DUPLICATE_KEY: i32 = 11000;

/// The server's code of a command or write error, if it gave one.
pub fn error_code(error: &mongodb::error::Error) -> Option<i32> {
    match &*error.kind {
        ErrorKind::Command(command) => Some(command.code),
        ErrorKind::Write(WriteFailure::WriteError(write)) => Some(write.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(concern)) => Some(concern.code),
        ErrorKind::InsertMany(many) => many
            .write_errors
            .as_ref()
            .and_then(|errors| errors.first())
            .map(|e| e.code),
        _ => None,
    }
}

pub(super) fn describe(error: &mongodb::error::Error) -> String {
    match &*error.kind {
        ErrorKind::Command(command) => {
            format!(
                "{} ({} {})",
                command.message, command.code_name, command.code
            )
        }
        ErrorKind::Write(WriteFailure::WriteError(write)) => {
            format!("{} (code {})", write.message, write.code)
        }
        ErrorKind::Write(WriteFailure::WriteConcernError(concern)) => {
            format!("write concern: {} (code {})", concern.message, concern.code)
        }
        ErrorKind::InsertMany(many) => match many.write_errors.as_ref().and_then(|e| e.first()) {
            Some(first) => format!(
                "{} (code {}; {} of the batch's documents refused)",
                first.message,
                first.code,
                many.write_errors.as_ref().map_or(0, Vec::len)
            ),
            None => error.to_string(),
        },
        ErrorKind::ServerSelection { message, .. } => {
            format!("no server answered: {message}")
        }
        ErrorKind::Io(io) => format!("connection failed: {io}"),
        _ => error.to_string(),
    }
}

fn is_transient(error: &mongodb::error::Error) -> bool {
    const RETRYABLE_CODES: [i32; 9] = [6, 7, 89, 91, 189, 262, 9001, 10107, 11600];
    error.contains_label("RetryableWriteError")
        || error.contains_label("TransientTransactionError")
        || matches!(
            &*error.kind,
            ErrorKind::Io(_)
                | ErrorKind::ServerSelection { .. }
                | ErrorKind::ConnectionPoolCleared { .. }
        )
        || error_code(error).is_some_and(|code| RETRYABLE_CODES.contains(&code))
}

/// A JSON value from a migration or job file as BSON. Extended JSON is honoured
/// (`{"$date": "…"}`, `{"$oid": "…"}`, `{"$numberLong": "…"}`), so a file can say what
/// `mongosh` would.
pub fn to_bson(value: &serde_json::Value) -> std::result::Result<Bson, String> {
    Bson::try_from(value.clone()).map_err(|e| format!("not valid (extended) JSON for MongoDB: {e}"))
}

/// [`to_bson`] for a value that must be a document.
pub fn to_document(value: &serde_json::Value) -> std::result::Result<Document, String> {
    match to_bson(value)? {
        Bson::Document(document) => Ok(document),
        other => Err(format!("expected a document, found {other}")),
    }
}

/// The server's version (`buildInfo`), which also proves it answers.
pub async fn server_version(database: &str, url: &SecretUrl) -> Result<String> {
    let db = connect(database, url).await?;
    let info = db
        .run_command(mongodb::bson::doc! {"buildInfo": 1})
        .await
        .map_err(|e| store_error(database, url, "cannot reach the server", e))?;
    Ok(format!(
        "MongoDB {}",
        info.get_str("version").unwrap_or("of unknown version")
    ))
}
