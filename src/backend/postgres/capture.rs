//! Change capture on the source: a publication of the source table and a `pgoutput`
//! slot named after the job, read over the replication protocol
//! ([`super::replication`]) and turned into neutral [`Change`]s.
//!
//! Invariants:
//! - The slot exists before the copy reads a row (the engine starts capture first), so
//!   every change after the copy's first read is captured.
//! - A read returns whole transactions in commit order, none that committed before the
//!   position it was asked to read after; being caught up is proven by a marker.
//! - The slot is confirmed only up to a position the sink made durable.
//! - The source is recognised by its relation id, so its changes are known whatever it
//!   is named when they are decoded (cutover renames it).

use std::collections::HashMap;
use std::time::Instant;

use chrono::{DateTime, Utc};
use tokio_postgres::Client;

use super::pgoutput::{Message, OldRow, Value as PgValue};
use super::replication::{Read, ReplicationStream, MARKER_PREFIX};
use super::session::Side;
use super::table::{ident, TableInfo};
use crate::engine::progress::Lag;
use crate::engine::row::{Change, Key, Position, Row, Value};
use crate::engine::source::ChangeBatch;
use crate::error::{Error, Result};

/// The advisory lock key under which jobs count free replication slots and take one.
const SLOT_ADMISSION_KEY: i64 = 0x5357_534c_4f54_4144;

/// The name of a job's slot and publication in the database with `database_oid`.
pub fn slot_name(job: &str, database_oid: u32) -> String {
    format!("switchyard_{}_{database_oid}", job.to_lowercase())
}

pub struct Capture {
    job: String,
    pub slot: String,
    pub publication: String,
    /// Opened at the first read; see [`super::replication`].
    stream: Option<ReplicationStream>,
    /// Writes the markers a read waits for.
    marker_client: Option<Client>,
    markers: u64,
    /// Relation ids the stream described, and whether each is the source.
    relations: HashMap<u32, bool>,
    /// The commit time of the oldest change the last read may have left unapplied;
    /// `None` when it found the source idle.
    lag_since: Option<DateTime<Utc>>,
}

impl Capture {
    /// Slots are named per server, so the names carry the database's oid.
    pub fn new(job: &str, database_oid: u32) -> Capture {
        let name = slot_name(job, database_oid);
        Capture {
            job: job.to_string(),
            slot: name.clone(),
            publication: name,
            stream: None,
            marker_client: None,
            markers: 0,
            relations: HashMap::new(),
            lag_since: None,
        }
    }

    /// Forgets what was tied to the old connections.
    pub fn disconnected(&mut self) {
        self.stream = None;
        self.marker_client = None;
    }

    /// Creates the publication and slot when missing; returns the slot's start. The
    /// slot is created only while the server has `needed` free (this one, and the
    /// job's way back's when it will be on this server too), checked and taken under an
    /// advisory lock: jobs starting together never take the last slots between them
    /// and then all wait at cutover for one more. Short of them, the job waits
    /// ([`Error::Exhausted`]).
    pub async fn start(&self, side: &Side, table: &TableInfo, needed: i64) -> Result<Position> {
        let published: bool = side
            .scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
                &[&self.publication],
                "cannot read publications",
            )
            .await?;
        if !published {
            side.client
                .batch_execute(&format!("CREATE PUBLICATION {} FOR TABLE {}", ident(&self.publication), table.name.sql()))
                .await
                .map_err(side.failed("cannot create the publication (needs wal_level = logical and ownership of the table)"))?;
        }
        let slot: Option<String> = side
            .client
            .query_opt(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.slot],
            )
            .await
            .map_err(side.failed("cannot read replication slots"))?
            .map(|r| r.get(0));
        Ok(Position(match slot {
            Some(lsn) => lsn,
            None => self.create_slot(side, needed).await?,
        }))
    }

    async fn create_slot(&self, side: &Side, needed: i64) -> Result<String> {
        let lock = |verb: &str| format!("SELECT pg_advisory_{verb}({SLOT_ADMISSION_KEY})");
        side.client
            .batch_execute(&lock("lock"))
            .await
            .map_err(side.failed("cannot take the slot admission lock"))?;
        let created = async {
            let free: i64 = side
                .scalar(
                    "SELECT current_setting('max_replication_slots')::bigint - count(*) FROM pg_replication_slots",
                    &[],
                    "cannot count free replication slots",
                )
                .await?;
            if free < needed {
                return Err(Error::Exhausted {
                    database: side.database.clone(),
                    message: format!(
                        "the job needs {needed} free replication slots (its own, and its way back's from cutover), the server has {free} (max_replication_slots)"
                    ),
                });
            }
            side.scalar(
                "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&self.slot],
                "cannot create the replication slot (needs wal_level = logical and a free max_replication_slots)",
            )
            .await
        }
        .await;
        let unlocked = side
            .client
            .batch_execute(&lock("unlock"))
            .await
            .map_err(side.failed("cannot release the slot admission lock"));
        let lsn = created?;
        unlocked?;
        Ok(lsn)
    }

    /// Drops the slot and publication (idempotent), so no WAL is held for the job. The
    /// slot's stream is closed first, ours or one a dead run left.
    pub async fn stop(&mut self, side: &Side) -> Result<()> {
        if let Some(stream) = self.stream.take() {
            stream.close().await;
        }
        side.end_sessions(
            "SELECT count(pg_terminate_backend(active_pid)) FROM pg_replication_slots
             WHERE slot_name = $1 AND active_pid IS NOT NULL",
            &[&self.slot],
            &format!(
                "the session streaming from the replication slot {}",
                self.slot
            ),
        )
        .await?;
        side.client
            .execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1", &[&self.slot])
            .await
            .map_err(side.failed("cannot drop the replication slot"))?;
        side.client
            .batch_execute(&format!(
                "DROP PUBLICATION IF EXISTS {}",
                ident(&self.publication)
            ))
            .await
            .map_err(side.failed("cannot drop the publication"))
    }

    /// Whole transactions after `after`: until every transaction committed before now
    /// is read (`drained`), or about `max_changes` messages when given.
    pub async fn read(
        &mut self,
        side: &Side,
        table: &TableInfo,
        after: &Position,
        max_changes: Option<usize>,
    ) -> Result<ChangeBatch> {
        let after = parse_lsn(&after.0);
        self.markers += 1;
        let marker = format!("{} {} {}", self.job, std::process::id(), self.markers);
        let written = Instant::now();
        // A transaction of its own on its own connection: it commits (and so reaches
        // the stream) even while the control session holds a lock in an open
        // transaction.
        if self.marker_client.is_none() {
            self.marker_client = Some(side.connect().await?);
        }
        self.marker_client
            .as_ref()
            .expect("connected above")
            .execute(
                "SELECT pg_logical_emit_message(true, $1, $2)",
                &[&MARKER_PREFIX, &marker],
            )
            .await
            .map_err(side.failed("cannot mark the WAL position to catch up to"))?;
        if self.stream.is_none() {
            let stream = ReplicationStream::open(
                &side.database,
                &side.url,
                &self.slot,
                &self.publication,
                &side.sessions.application_name(),
                after,
            )
            .await?;
            // The server describes each relation once per stream.
            self.relations.clear();
            self.stream = Some(stream);
        }
        let Read {
            messages,
            caught_up,
        } = self
            .stream
            .as_mut()
            .expect("opened above")
            .read(&marker, max_changes)
            .await?;
        // The oldest change not applied yet: none when caught up with nothing read;
        // younger than the marker when caught up; younger than the last transaction
        // read otherwise.
        self.lag_since = match (caught_up, last_change_commit(&messages)) {
            (true, None) => None,
            (true, Some(_)) | (false, None) => Some(Utc::now() - written.elapsed()),
            (false, Some(at)) => Some(at),
        };
        let mut batch = self.changes(table, &messages, after)?;
        batch.drained = caught_up;
        Ok(batch)
    }

    /// The source's changes among `messages`, skipping transactions that committed
    /// before `after`.
    fn changes(
        &mut self,
        table: &TableInfo,
        messages: &[Message],
        after: u64,
    ) -> Result<ChangeBatch> {
        let mut batch = ChangeBatch::default();
        let mut skip = false;
        let key_positions = table.key_positions();
        let key = |values: &[PgValue]| -> Key {
            key_positions
                .iter()
                .map(|&i| match &values[i] {
                    PgValue::Text(text) => text.clone(),
                    PgValue::Null | PgValue::UnchangedToast => String::new(),
                })
                .collect()
        };
        for message in messages {
            match message {
                Message::Relation { id, columns, .. } => {
                    let ours = *id == table.oid;
                    if ours {
                        let expected: Vec<&str> =
                            table.columns.iter().map(|c| c.name.as_str()).collect();
                        if columns.iter().map(String::as_str).collect::<Vec<_>>() != expected {
                            return Err(Error::Refused(format!(
                                "the columns of {} changed during the job ({} now): abort the job and start it again",
                                table.name,
                                columns.join(", ")
                            )));
                        }
                    }
                    self.relations.insert(*id, ours);
                }
                Message::Begin { final_lsn, .. } => skip = *final_lsn < after,
                Message::Commit { end_lsn } if !skip => {
                    batch.end = Some(Position(format_lsn(*end_lsn)));
                }
                Message::Truncate { relations } if relations.contains(&table.oid) => {
                    return Err(Error::Refused(format!(
                        "{} was truncated during the job; a truncate cannot be replayed row by row: abort the job and start it again",
                        table.name
                    )));
                }
                Message::Insert { relation, new } if !skip && self.is_source(*relation)? => {
                    batch.changes.push(Change::Upsert {
                        old_key: None,
                        row: row(new),
                    });
                }
                Message::Update { relation, old, new } if !skip && self.is_source(*relation)? => {
                    let mut new = new.clone();
                    // Unchanged TOASTed values: the old row has them when the source
                    // sends it whole (a key-only old row has nulls in their place).
                    if let Some(OldRow::Full(previous)) = old {
                        for (value, previous) in new.iter_mut().zip(previous) {
                            if *value == PgValue::UnchangedToast
                                && *previous != PgValue::UnchangedToast
                            {
                                *value = previous.clone();
                            }
                        }
                    }
                    let new_key = key(&new);
                    let old_key = old
                        .as_ref()
                        .map(|o| key(o.values()))
                        .filter(|k| *k != new_key);
                    batch.changes.push(Change::Upsert {
                        old_key,
                        row: row(&new),
                    });
                }
                Message::Delete { relation, old_key } if !skip && self.is_source(*relation)? => {
                    batch.changes.push(Change::Delete { key: key(old_key) });
                }
                _ => {}
            }
        }
        Ok(batch)
    }

    fn is_source(&self, relation: u32) -> Result<bool> {
        self.relations.get(&relation).copied().ok_or_else(|| {
            Error::State(format!(
                "the replication stream changed relation {relation} before describing it; nothing was applied from it (run the job again)"
            ))
        })
    }

    /// Tells the server that everything up to `upto` is durable in the sink.
    pub fn confirm(&self, upto: &Position) {
        if let Some(stream) = &self.stream {
            stream.confirm(parse_lsn(&upto.0));
        }
    }

    pub async fn lag(&self, side: &Side) -> Result<Lag> {
        let row = side
            .client
            .query_opt(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.slot],
            )
            .await
            .map_err(side.failed("cannot read the replication slot"))?;
        let bytes = row.map(|r| r.get::<_, i64>(0).max(0) as u64).unwrap_or(0);
        let seconds = self.lag_since.map_or(0.0, |since| {
            (Utc::now() - since)
                .num_microseconds()
                .unwrap_or(i64::MAX)
                .max(0) as f64
                / 1e6
        });
        Ok(Lag { seconds, bytes })
    }
}

fn row(values: &[PgValue]) -> Row {
    Row(values
        .iter()
        .map(|v| match v {
            PgValue::Null => Value::Null,
            PgValue::UnchangedToast => Value::Unchanged,
            PgValue::Text(text) => Value::Text(text.clone()),
        })
        .collect())
}

/// The commit time of the last transaction in `messages` that changed rows (the
/// markers' own transactions change none).
fn last_change_commit(messages: &[Message]) -> Option<DateTime<Utc>> {
    let mut begun = None;
    let mut last = None;
    for message in messages {
        match message {
            Message::Begin { committed_at, .. } => begun = Some(*committed_at),
            Message::Insert { .. }
            | Message::Update { .. }
            | Message::Delete { .. }
            | Message::Truncate { .. } => last = begun.or(last),
            _ => {}
        }
    }
    last
}

/// `0/2E2D930` → 0x2E2D930.
pub fn parse_lsn(text: &str) -> u64 {
    let (high, low) = text.split_once('/').unwrap_or(("0", "0"));
    (u64::from_str_radix(high, 16).unwrap_or(0) << 32) | u64::from_str_radix(low, 16).unwrap_or(0)
}

pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

#[cfg(test)]
mod tests {
    use super::Capture;

    /// The longest job name the job file allows, its way back and the largest database
    /// oid still give a slot name PostgreSQL keeps whole (63 bytes).
    #[test]
    fn the_longest_names_fit_a_slot() {
        let job = "n".repeat(36);
        let back = crate::backend::back_name(&job);
        assert_eq!(Capture::new(&back, u32::MAX).slot.len(), 63);
    }
}
