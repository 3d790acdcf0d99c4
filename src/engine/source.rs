//! The source side of a job: where rows are read from and changes captured.
//!
//! Delivery contract (every implementation keeps it; the engine relies on it):
//! - [`Source::start_capture`] returns only once every change committed after it will
//!   be delivered by [`Source::read_changes`]; the engine calls it before the first
//!   batch is read, so replaying the changes over the copy converges on the source.
//! - [`Source::read_changes`] returns whole transactions in commit order, none that
//!   ended at or before `after`. At least once: after a crash, changes after the last
//!   position the sink made durable come again, so sinks apply idempotently.
//! - A position is confirmed to the store ([`Source::confirm`]) only after the sink
//!   made everything up to it durable; the store may then forget what lies before.
//! - Batches ([`BatchReader::read`]) hold rows in key order within one range, and say
//!   the last key they cover: rows added behind it later arrive as changes.
//! - [`Source::fence`] makes writes to the source fail (or wait) from its return on,
//!   until cutover completes or [`Source::unfence`] undoes it.

use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;

use super::progress::{KeyRange, Lag};
use super::row::{Change, Digest, Key, Position, Projection, Row, Schema};
use crate::error::Result;

/// The rows of one batch, in the form the sink asked for.
pub enum Rows {
    /// Rows in the neutral form, in the order of the projection they were read with.
    Values(Vec<Row>),
    /// PostgreSQL `COPY` data of the projection's columns, streamed as it is read (a
    /// PostgreSQL sink writes it with `COPY … FROM STDIN` unchanged).
    PostgresCopy {
        binary: bool,
        data: Pin<Box<dyn Stream<Item = Result<Bytes>> + Send>>,
    },
}

/// The encodings a sink can write; a source reads in the one asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowFormat {
    Values,
    /// COPY data; `binary` when every column's type is the same built-in type on both
    /// servers (binary COPY is exact only then), text otherwise.
    PostgresCopy {
        binary: bool,
    },
}

/// One batch of a range.
pub struct Batch {
    pub rows: Rows,
    /// The last key the batch covers (`None` when the range held nothing after the
    /// batch's start).
    pub last_key: Option<Key>,
    /// The range holds no row after this batch.
    pub done: bool,
}

/// Reads the batches of ranges, on a connection of its own.
#[async_trait]
pub trait BatchReader: Send {
    /// The next batch of at most `limit` rows of `range` after `after`.
    async fn read(&mut self, range: &KeyRange, after: Option<&Key>, limit: usize) -> Result<Batch>;
}

/// Changes read from the source's change log.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChangeBatch {
    pub changes: Vec<Change>,
    /// The position after the last transaction read (`None` when none was read).
    pub end: Option<Position>,
    /// Everything committed when the read began was read (it was not cut short).
    pub drained: bool,
}

#[async_trait]
pub trait Source: Send + Sync {
    /// The source's rows as they travel.
    fn schema(&self) -> &Schema;

    /// After a transient error: forgets everything tied to the old connections.
    async fn reconnect(&mut self) -> Result<()>;

    /// Ends what an earlier run of the job left running against the source (a killed
    /// process's statements can outlive it). Called once the job's lease is held.
    async fn end_leftover_sessions(&mut self) -> Result<()>;

    async fn estimate_rows(&mut self) -> Result<u64>;

    /// Splits the key space into about `concurrency` ranges.
    async fn plan_ranges(&mut self, concurrency: usize) -> Result<Vec<KeyRange>>;

    /// How far the slowest replica of the source is behind it, in seconds (0 without
    /// replicas): the copy holds while this is above `copy.max_lag`.
    async fn replica_lag(&mut self) -> Result<f64>;

    /// A reader of batches of `projection`, encoded as `format`.
    async fn reader(
        &self,
        projection: &Projection,
        format: RowFormat,
    ) -> Result<Box<dyn BatchReader>>;

    /// The row of `key` as it is now, if it exists.
    async fn fetch(&mut self, key: &Key) -> Result<Option<Row>>;

    /// Starts change capture (idempotent) and returns the position it starts at.
    async fn start_capture(&mut self) -> Result<Position>;

    /// Changes after `after`: until every transaction committed before the call is
    /// read, or whole transactions of about `max_changes` changes when given.
    async fn read_changes(
        &mut self,
        after: &Position,
        max_changes: Option<usize>,
    ) -> Result<ChangeBatch>;

    /// Everything up to `upto` is durable in the sink.
    async fn confirm(&mut self, upto: &Position) -> Result<()>;

    async fn lag(&mut self) -> Result<Lag>;

    /// Removes change capture (idempotent), so the store holds nothing for the job.
    async fn stop_capture(&mut self) -> Result<()>;

    /// `range` split into chunks of bounded size for verification.
    async fn chunks(&mut self, range: &KeyRange) -> Result<Vec<KeyRange>>;

    /// Count and (with `checksum`) content hash of `projection` over the rows of
    /// `chunk`, computed as the sink computes its own.
    async fn digest(
        &mut self,
        chunk: &KeyRange,
        projection: &Projection,
        checksum: bool,
    ) -> Result<Digest>;

    /// Makes writes to the source wait, until [`Source::release_writes`].
    async fn hold_writes(&mut self) -> Result<()>;

    async fn release_writes(&mut self) -> Result<()>;

    /// Takes the source out of use for cutover: from here on writes to it fail. Does
    /// nothing when it is fenced already (a resumed cutover).
    async fn fence(&mut self) -> Result<()>;

    /// The last value the source's own generator of each column handed out (a
    /// PostgreSQL identity sequence), so that the target goes on after it; read at
    /// cutover. None by default.
    async fn identity_positions(&mut self) -> Result<Vec<(String, i64)>> {
        Ok(Vec::new())
    }

    /// Undoes [`Source::fence`] (a cutover that could not complete, an abort).
    async fn unfence(&mut self) -> Result<()>;

    /// Runs the job's contract statements where the old data lives, each exactly once
    /// (its checkpoints stay until [`Source::forget`]).
    async fn contract(&mut self) -> Result<()>;

    /// Removes the checkpoints this job keeps on the source side (idempotent): when a
    /// job starts with no record, and on abort.
    async fn forget(&mut self) -> Result<()>;
}
