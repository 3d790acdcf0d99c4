//! What `switchyard health` reads from a PostgreSQL database: the server's version, the
//! logical replication slots of the database with the WAL each holds, and switchyard's
//! publications. Reads only.

use super::capture::slot_name;
use super::connect;
use crate::error::{Error, Result};
use crate::secret::SecretUrl;

/// A logical replication slot of the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub name: String,
    pub active: bool,
    /// WAL the server keeps for it: from its restart position to the current one.
    pub wal_held_bytes: i64,
}

#[derive(Debug, Clone)]
pub struct Facts {
    pub version: String,
    pub slots: Vec<Slot>,
    /// Publications named as switchyard names them.
    pub publications: Vec<String>,
    pub database_oid: u32,
}

impl Facts {
    /// The slot (and publication) names the jobs `live` may own here, forward and back.
    pub fn owned_names(&self, live: &[String]) -> Vec<String> {
        live.iter()
            .flat_map(|job| [job.clone(), crate::backend::back_name(job)])
            .map(|job| slot_name(&job, self.database_oid))
            .collect()
    }
}

pub async fn inspect(database: &str, url: &SecretUrl) -> Result<Facts> {
    let client = connect(database, url).await?;
    let read = |e| Error::database(database, "cannot read the server's state", e);
    let head = client
        .query_one(
            "SELECT current_setting('server_version'), oid FROM pg_database WHERE datname = current_database()",
            &[],
        )
        .await
        .map_err(read)?;
    let slots = client
        .query(
            "SELECT slot_name::text, active, COALESCE(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint
             FROM pg_replication_slots WHERE slot_type = 'logical' AND database = current_database() ORDER BY slot_name",
            &[],
        )
        .await
        .map_err(read)?;
    let publications = client
        .query(
            "SELECT pubname::text FROM pg_publication WHERE pubname LIKE 'switchyard\\_%' ORDER BY pubname",
            &[],
        )
        .await
        .map_err(read)?;
    Ok(Facts {
        version: format!("PostgreSQL {}", head.get::<_, String>(0)),
        database_oid: head.get(1),
        slots: slots
            .iter()
            .map(|row| Slot {
                name: row.get(0),
                active: row.get(1),
                wal_held_bytes: row.get(2),
            })
            .collect(),
        publications: publications.iter().map(|row| row.get(0)).collect(),
    })
}
