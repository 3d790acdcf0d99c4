//! PostgreSQL: connections, and the migration target with its history table and lock.

mod apply;
mod batch;
mod job;
mod migrations;
mod pgoutput;
mod split;
mod stream;
mod table;

pub use job::{describe_range, Dependent, JobPlan, PostgresJob};
pub use migrations::PostgresMigrations;
pub use split::split_statements;

use tokio_postgres::{Client, NoTls};

use crate::error::{Error, Result};
use crate::secret::SecretUrl;

/// The `application_name` switchyard's sessions carry, so that operators can find them
/// in `pg_stat_activity` (and see who holds a lock).
pub const APPLICATION_NAME: &str = "switchyard";

/// Opens a connection; the connection task runs until the client is dropped.
/// `database` is the configured name, used in error messages.
pub async fn connect(database: &str, url: &SecretUrl) -> Result<Client> {
    connect_as(database, url, APPLICATION_NAME).await
}

/// [`connect`] with a given `application_name` (unless the URL sets one).
pub async fn connect_as(database: &str, url: &SecretUrl, application_name: &str) -> Result<Client> {
    let mut config: tokio_postgres::Config = url.expose().parse().map_err(|e| Error::Config {
        file: format!("databases.{database}.url"),
        reason: format!("`{url}` is not a valid PostgreSQL URL: {e}"),
    })?;
    if config.get_application_name().is_none() {
        config.application_name(application_name);
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
