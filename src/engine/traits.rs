//! What the engine asks of a backend, as small capability traits. A backend implements
//! them for its kind of database; the engine never knows which one it drives.
//!
//! Delivery contracts are written on each trait: copy batches are exactly-once (a batch
//! and its checkpoint commit together), change application is at-least-once and in
//! commit order (so applying must be idempotent).

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// A slice of the source's key space, copied by one worker at a time. Keys are held in
/// text form, one entry per key column, and compared by the database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRange {
    pub number: i32,
    /// Exclusive; `None` is the start of the key space.
    pub lower: Option<Vec<String>>,
    /// Inclusive; `None` is the end of the key space.
    pub upper: Option<Vec<String>>,
}

/// A range and how far its copy got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeProgress {
    pub range: KeyRange,
    /// The last key copied; the next batch starts after it.
    pub last_key: Option<Vec<String>>,
    pub rows: u64,
    pub done: bool,
}

/// Makes sure a job runs in one place at a time.
#[async_trait]
pub trait Lease: Send {
    /// Claims the job for this process until it ends (a crash releases it). Returns
    /// false, changing nothing, when another process holds it.
    async fn try_claim(&mut self) -> Result<bool>;

    /// After a transient error: connects afresh (forgetting what was tied to the old
    /// connection) and claims the job again. Returns false when another process took
    /// the job meanwhile.
    async fn reconnect(&mut self) -> Result<bool>;
}

/// Creates and removes what a job needs around the data.
#[async_trait]
pub trait Expander: Send {
    /// Removes what an earlier job of the same name left in the database (checkpoints,
    /// markers): called once, when a job starts with no record.
    async fn start_fresh(&mut self) -> Result<()>;

    /// Runs the expand step (idempotent) and prepares change capture, so that every
    /// change made after this returns will be captured. Returns whether it created the
    /// target.
    async fn expand(&mut self) -> Result<bool>;

    /// Undoes the job. Before cutover: removes capture, checkpoints and (when it created
    /// it) the target; after cutover: swaps the source back.
    async fn abort(&mut self, after_cutover: bool, created_target: bool) -> Result<()>;

    /// Runs the contract step and removes the job's helpers (triggers, capture).
    async fn contract(&mut self) -> Result<()>;
}

/// Batch copying over key ranges.
#[async_trait]
pub trait Copier: Send {
    /// Estimated rows in the source.
    async fn estimate_rows(&mut self) -> Result<u64>;

    /// The job's ranges with their progress: planned (about `concurrency` of them) and
    /// saved on the first call, read back on every later one.
    async fn ranges(&mut self, concurrency: usize) -> Result<Vec<RangeProgress>>;

    /// A worker with its own connection.
    async fn worker(&self) -> Result<Box<dyn CopyWorker>>;

    /// How far the slowest replica of the source is behind it, in seconds (0 without
    /// replicas): the copy holds while this is above `copy.max_lag`.
    async fn replica_lag(&mut self) -> Result<f64>;
}

#[async_trait]
pub trait CopyWorker: Send {
    /// Copies (or fills) the next batch of at most `limit` rows of `progress`'s range
    /// after its last key, and commits the new checkpoint in the same transaction.
    /// Exactly once: after a crash the batch is either wholly there with its checkpoint,
    /// or not at all. Updates `progress` to what was committed.
    async fn copy_batch(&mut self, progress: &mut RangeProgress, limit: usize) -> Result<u64>;
}

/// How far change application is behind the source.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Lag {
    /// Age of the oldest committed change not yet applied; 0 when caught up.
    pub seconds: f64,
    /// Change-log bytes not yet confirmed (PostgreSQL: WAL bytes held by the slot).
    pub bytes: u64,
}

/// What one pass of change application did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppliedChanges {
    pub changes: u64,
    /// The pass applied everything captured when it looked (it was not cut short by
    /// `max_changes`).
    pub drained: bool,
}

/// Applies the changes captured since expand.
#[async_trait]
pub trait ChangeApplier: Send {
    /// Applies up to `max_changes` captured changes (whole transactions, in commit
    /// order) and durably records the position reached with them, then confirms it to
    /// the change log. At least once: a change may be applied again after a crash.
    async fn apply_changes(&mut self, max_changes: usize) -> Result<AppliedChanges>;

    async fn lag(&mut self) -> Result<Lag>;
}

/// A key range whose source and target differ.
#[derive(Debug, Clone, PartialEq)]
pub struct Mismatch {
    pub range: KeyRange,
    pub detail: String,
}

#[async_trait]
pub trait Verifier: Send {
    /// Compares source and target (or, for a backfill, each row with what it should
    /// hold) in chunks of bounded size within `ranges`; `checksum` compares contents,
    /// otherwise counts only. Returns the chunks that differ.
    ///
    /// Without `consistent`, nothing is locked, so chunks that writes touched meanwhile
    /// may differ. With it, each chunk is compared while writes to the source wait
    /// (briefly: one chunk), after the last captured changes were applied, so a
    /// difference found is real.
    async fn verify(
        &mut self,
        ranges: &[KeyRange],
        checksum: bool,
        consistent: bool,
    ) -> Result<Vec<Mismatch>>;
}

/// What a cutover did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CutoverReport {
    pub writes_blocked: Duration,
    pub changes_drained: u64,
}

#[async_trait]
pub trait Switcher: Send {
    /// In one short step: block writes to the source, apply the last changes, swap the
    /// target in under the source's name. Fails (changing nothing) when the writes lock
    /// cannot be had within the lock timeout.
    async fn cutover(&mut self) -> Result<CutoverReport>;

    /// The cutover this job already made, if any: a process can die after the swap
    /// committed and before the engine saved it, and a cutover must never run twice.
    async fn completed_cutover(&mut self) -> Result<Option<CutoverReport>>;
}
