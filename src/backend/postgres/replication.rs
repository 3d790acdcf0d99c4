//! A job's change stream: a replication connection (the walsender protocol, through
//! `pgwire-replication`) on the job's slot. The server decodes each WAL record once, as
//! it is written, and sends the changes of the published table as their transactions
//! commit; reading the slot through SQL instead decodes again from the slot's restart
//! point on every read, which under a busy server costs seconds of lag.
//!
//! Invariants:
//! - [`ReplicationStream::read`] returns whole transactions only, in commit order. A
//!   transaction cut by the read's limit stays buffered for the next read.
//! - Being caught up is proven, not guessed: the caller commits a marker (a logical
//!   message with [`MARKER_PREFIX`], in a transaction of its own, so that it is flushed
//!   and sent in commit order) and the read that receives it has received every
//!   transaction that committed before it.
//! - The server learns a position only from [`ReplicationStream::confirm`], which the caller
//!   calls once the changes up to it committed on the target with their checkpoint; the
//!   slot never moves past what a crash could lose.

use std::time::Duration;

use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent};

use super::pgoutput::{decode, Message};
use crate::error::{Error, Result};
use crate::secret::SecretUrl;

/// The prefix of the logical messages that mark a position in the WAL.
pub const MARKER_PREFIX: &str = "switchyard";

/// How long a read waits for the next event before the stream counts as broken.
const SILENCE: Duration = Duration::from_secs(60);

/// What one [`ReplicationStream::read`] returned.
pub struct Read {
    /// Whole transactions, in commit order.
    pub messages: Vec<Message>,
    /// The marker arrived: nothing committed before it is left unread.
    pub caught_up: bool,
}

pub struct ReplicationStream {
    client: ReplicationClient,
    database: String,
    /// Received messages not yet returned: whole transactions up to `complete`, then
    /// the start of the one being received.
    buffer: Vec<Message>,
    complete: usize,
}

impl ReplicationStream {
    /// Starts streaming `slot` (only the tables of `publication`) from `start`; the
    /// server also starts no earlier than the slot's confirmed position.
    pub async fn open(
        database: &str,
        url: &SecretUrl,
        slot: &str,
        publication: &str,
        application_name: &str,
        start: u64,
    ) -> Result<ReplicationStream> {
        let settings = super::tls::ConnectionSettings::parse(database, url)?;
        let config = &settings.config;
        let user = config.get_user().unwrap_or("postgres");
        let password = config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        let dbname = config.get_dbname().unwrap_or(user);
        let (host, port) = settings.host_and_port();
        let tls = settings.tls.replication(&host);
        let settings = if host.starts_with('/') {
            ReplicationConfig::unix(&host, port, user, password, dbname, slot, publication)
        } else {
            ReplicationConfig::new(&host, user, password, dbname, slot, publication).with_port(port)
        }
        .with_tls(tls)
        .with_start_lsn(Lsn::from_u64(start))
        .with_application_name(application_name)
        .with_status_interval(Duration::from_millis(500));
        let mut client = ReplicationClient::connect(settings)
            .await
            .map_err(|e| stream_error(database, "cannot start", e))?;
        client
            .wait_started()
            .await
            .map_err(|e| stream_error(database, "cannot start", e))?;
        Ok(ReplicationStream {
            client,
            database: database.to_string(),
            buffer: Vec::new(),
            complete: 0,
        })
    }

    /// Receives until the marker `marker` arrives, or until whole transactions of at
    /// least `max_messages` messages are ready (no limit when `None`).
    pub async fn read(&mut self, marker: &str, max_messages: Option<usize>) -> Result<Read> {
        loop {
            if max_messages.is_some_and(|max| self.complete >= max) {
                return Ok(self.take(false));
            }
            let event = tokio::time::timeout(SILENCE, self.client.recv())
                .await
                .map_err(|_| Error::Replication {
                    database: self.database.clone(),
                    message: format!("the replication stream sent nothing for {SILENCE:?}"),
                    transient: true,
                })?
                .map_err(|e| stream_error(&self.database, "broke", e))?
                .ok_or_else(|| Error::Replication {
                    database: self.database.clone(),
                    message: "the server ended the replication stream".into(),
                    transient: true,
                })?;
            match event {
                ReplicationEvent::Begin {
                    final_lsn,
                    commit_time_micros,
                    ..
                } => self
                    .buffer
                    .push(Message::begin(final_lsn.as_u64(), commit_time_micros)),
                ReplicationEvent::XLogData { data, .. } => {
                    let message = decode(&data).map_err(|e| {
                        Error::State(format!("cannot decode a replication message: {e}"))
                    })?;
                    if !matches!(message, Message::Other) {
                        self.buffer.push(message);
                    }
                }
                ReplicationEvent::Commit { end_lsn, .. } => {
                    self.buffer.push(Message::Commit {
                        end_lsn: end_lsn.as_u64(),
                    });
                    self.complete = self.buffer.len();
                }
                ReplicationEvent::Message {
                    prefix, content, ..
                } if prefix == MARKER_PREFIX && content.as_ref() == marker.as_bytes() => {
                    return Ok(self.take(true));
                }
                _ => {}
            }
        }
    }

    fn take(&mut self, caught_up: bool) -> Read {
        let messages = self.buffer.drain(..self.complete).collect();
        self.complete = 0;
        Read {
            messages,
            caught_up,
        }
    }

    /// Tells the server that everything up to `lsn` is applied and committed: the slot
    /// may release the WAL before it.
    pub fn confirm(&self, lsn: u64) {
        self.client.update_applied_lsn(Lsn::from_u64(lsn));
    }

    /// Ends the stream and waits (briefly) for the connection to close.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.client.shutdown()).await;
    }
}

fn stream_error(database: &str, what: &str, error: pgwire_replication::PgWireError) -> Error {
    let message = error.to_string();
    // Broken connections, a server going down, or a slot still held by a dying
    // session of a previous run are worth another try.
    let transient = match &error {
        pgwire_replication::PgWireError::Server(_) => [
            "SQLSTATE 08",
            "SQLSTATE 57P0",
            "SQLSTATE 53300",
            "SQLSTATE 55006",
        ]
        .iter()
        .any(|code| message.contains(code)),
        pgwire_replication::PgWireError::Auth(_) | pgwire_replication::PgWireError::Tls(_) => false,
        _ => true,
    };
    Error::Replication {
        database: database.to_string(),
        message: format!("replication stream {what}: {message}"),
        transient,
    }
}
