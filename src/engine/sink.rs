//! The sink side of a job: where rows are written, checkpoints kept, and the switch
//! made.
//!
//! Delivery contract (every implementation keeps it; the engine relies on it):
//! - A batch and its checkpoint are durable together ([`BatchWriter::write`]): in one
//!   transaction where the store has them, otherwise the rows idempotently by key and
//!   the checkpoint after. After a crash a batch is wholly there with its checkpoint,
//!   or redone.
//! - [`Sink::apply`] applies changes idempotently by key (upserts of the new row,
//!   deletes by key) and makes the batch's end position durable with them; only then
//!   does the engine confirm the position to the source.
//! - The sink holds the job's lease and checkpoints; both survive the process.
//! - A cutover is recorded with the switch it made ([`Sink::completed_cutover`]), so a
//!   process that dies right after never switches twice.
//! - A sink that fences its batches ([`Sink::fences_copy`]) writes a batch only under
//!   the newest lease of its range: [`CopyWorker::seize`] records the lease's fence
//!   with the range, and a batch carrying an older fence commits nothing. Several
//!   processes can then share one job's copy (see [`crate::state::chunks`]).
//! - Before the switch, a sink that can be read back starts capturing its own changes
//!   (the way back, [`super::Pipeline::reverse`]), so that no write made to the target
//!   after the switch escapes an abort.

use async_trait::async_trait;

use super::progress::{CutoverReport, KeyRange, RangeProgress};
use super::source::{Batch, ChangeBatch, Source};
use crate::error::Result;

/// Writes batches with their checkpoints, on a connection of its own.
#[async_trait]
pub trait BatchWriter: Send {
    /// See [`CopyWorker::seize`]; a writer that keeps no fence returns `known`.
    async fn seize(&mut self, known: &RangeProgress, _fence: i64) -> Result<RangeProgress> {
        Ok(known.clone())
    }

    /// Writes `batch`, the next of `progress`'s range, and its checkpoint (last key,
    /// rows, done) durably together. Updates `progress` to what was made durable and
    /// returns the rows written.
    async fn write(&mut self, batch: Batch, progress: &mut RangeProgress) -> Result<u64>;
}

/// Copies batches of one range after another (a worker of the copy phase).
#[async_trait]
pub trait CopyWorker: Send {
    /// Takes `known`'s range for the lease with `fence` (greater than any lease of the
    /// range before) and returns the range's progress as the sink holds it: from now on
    /// only batches of this worker commit there, and a batch of an older lease, even
    /// one under way, commits nothing ([`crate::error::Error::LeaseLost`]). A sink
    /// that keeps no fence returns `known`, the progress last seen by this process.
    async fn seize(&mut self, known: &RangeProgress, fence: i64) -> Result<RangeProgress>;

    /// Copies (or fills) the next batch of at most `limit` rows of `progress`'s range
    /// after its last key, with its checkpoint. Exactly once: after a crash the batch
    /// is either wholly there with its checkpoint, or not at all. Updates `progress`.
    async fn copy_batch(&mut self, progress: &mut RangeProgress, limit: usize) -> Result<u64>;

    /// Whether the server copies at a rate it is given (a server-side copy, each batch
    /// a look at how far it got): the engine then neither throttles nor backs off its
    /// batches, and gives it the rate in force before each ([`CopyWorker::set_rate`]).
    fn paces_itself(&self) -> bool {
        false
    }

    /// The job's rate in force (rows per second, 0: unthrottled), for a worker that
    /// [paces itself](CopyWorker::paces_itself).
    async fn set_rate(&mut self, _rows_per_second: u64) -> Result<()> {
        Ok(())
    }

    /// Leaves `progress`'s range before it is done (pause, abort, shutdown) at a batch
    /// boundary: a worker whose server copies stops the server's copy.
    async fn leave(&mut self, _progress: &mut RangeProgress) -> Result<()> {
        Ok(())
    }
}

#[async_trait]
pub trait Sink: Send + Sync {
    /// Whether [`CopyWorker::seize`] fences batches, so that workers of other processes
    /// may copy the job's chunks.
    fn fences_copy(&self) -> bool {
        false
    }

    /// Claims the job for this process until it ends (a crash releases it). Returns
    /// false, changing nothing, when another process holds it. Ends the sessions of an
    /// earlier run against the sink. Called only by the holder of the job's lease
    /// ([`crate::state::job_lease`]), so a claim may be taken from a run that lost it
    /// (frozen past it), by ending that run's sessions.
    async fn try_claim(&mut self) -> Result<bool>;

    /// After a transient error: connects afresh and claims the job again. Returns
    /// false when another process took the job meanwhile.
    async fn reconnect(&mut self) -> Result<bool>;

    /// Removes what the job keeps in the sink (checkpoints, the capture of the way
    /// back): when a job starts with no record, and once the job is undone.
    async fn start_fresh(&mut self) -> Result<()>;

    /// Runs the expand step (idempotent, each statement once) and checks that the
    /// target can take the source's rows. Returns whether it created the target.
    async fn expand(&mut self, source: &dyn Source) -> Result<bool>;

    /// Saves where change capture starts, unless a position is saved already.
    async fn save_start(&mut self, start: &super::row::Position) -> Result<()>;

    /// The position up to which changes are applied.
    async fn position(&mut self) -> Result<Option<super::row::Position>>;

    /// The job's ranges with their progress; empty before [`Sink::save_ranges`].
    async fn saved_ranges(&mut self) -> Result<Vec<RangeProgress>>;

    /// Saves the planned ranges, all or none.
    async fn save_ranges(&mut self, ranges: &[KeyRange]) -> Result<()>;

    /// A copy worker with its own connections, reading from `source`.
    async fn copy_worker(&mut self, source: &dyn Source) -> Result<Box<dyn CopyWorker>>;

    /// Applies `changes` (in order) with their end position, durably together. May
    /// read rows from `source` that a change left incomplete. Returns changes applied.
    async fn apply(&mut self, changes: &ChangeBatch, source: &mut dyn Source) -> Result<u64>;

    /// Compares one chunk with the source; `Some(why)` when it differs. For a backfill,
    /// whether every row holds what it should.
    async fn compare(
        &mut self,
        source: &mut dyn Source,
        chunk: &KeyRange,
        checksum: bool,
    ) -> Result<Option<String>>;

    /// In one short step: fence the source, apply its last changes, and let the target
    /// take its place; records the cutover with the switch. Fails, changing nothing,
    /// when the source's writes cannot be stopped within the lock timeout. Where the
    /// way back exists, its capture of the target starts before the switch.
    async fn cutover(&mut self, source: &mut dyn Source) -> Result<CutoverReport>;

    /// The cutover this job already made, if any.
    async fn completed_cutover(&mut self) -> Result<Option<CutoverReport>>;

    /// Undoes the job before its cutover: removes checkpoints, what expand set up, and
    /// (when it created it) the target. (After a cutover the way back swaps back.)
    async fn abort(&mut self, source: &mut dyn Source, created_target: bool) -> Result<()>;

    /// Removes the job's helpers and checkpoints after the source's contract ran.
    async fn contract(&mut self) -> Result<()>;
}

/// The copy worker of any source and sink: reads a batch, writes it with its
/// checkpoint. A sink with a faster path for its source (the same database) uses that.
pub struct PairedWorker {
    pub reader: Box<dyn super::source::BatchReader>,
    pub writer: Box<dyn BatchWriter>,
}

#[async_trait]
impl CopyWorker for PairedWorker {
    async fn seize(&mut self, known: &RangeProgress, fence: i64) -> Result<RangeProgress> {
        self.writer.seize(known, fence).await
    }

    async fn copy_batch(&mut self, progress: &mut RangeProgress, limit: usize) -> Result<u64> {
        let after = progress.after().cloned();
        let batch = self
            .reader
            .read(&progress.range, after.as_ref(), limit)
            .await?;
        self.writer.write(batch, progress).await
    }
}
