//! Chunk leases: how the copy of one job is shared by many workers (copy tasks of one
//! process, and `serve` processes on any number of hosts).
//!
//! A job's key ranges (planned once, kept with their progress in the sink) are its
//! chunks; the state store records for each who may copy it now:
//! - `pending`: nobody; `leased`: one worker, until `expires_at`; `done`.
//! - A lease is taken with one atomic statement that skips rows other takers hold
//!   (`FOR UPDATE SKIP LOCKED`), so workers never wait on one another. It picks a
//!   pending chunk or one whose lease expired (its worker died or froze).
//! - Every lease gets a fence: a number drawn from one sequence, greater than any lease
//!   given before. The worker hands it to the sink with each batch; the sink refuses a
//!   batch whose fence is older than the range's (see
//!   [`crate::engine::sink::CopyWorker::seize`]), so a worker that lost its lease
//!   cannot write, even one frozen in the middle of a batch and thawed later.
//! - Renewing, finishing and releasing name the fence, and do nothing once the chunk
//!   was leased again: only the current holder moves its chunk.
//! - Expiry is the store's clock (PostgreSQL's `now()`), so workers on hosts with
//!   clocks apart agree on it.

use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use crate::error::Result;

/// A worker's hold on one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLease {
    /// The chunk's number: the number of its key range.
    pub chunk: i32,
    pub fence: i64,
}

/// Where a chunk stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkStatus {
    Pending,
    Leased,
    Done,
}

impl ChunkStatus {
    pub(super) fn parse(text: &str) -> ChunkStatus {
        match text {
            "leased" => ChunkStatus::Leased,
            "done" => ChunkStatus::Done,
            _ => ChunkStatus::Pending,
        }
    }
}

/// One chunk as `job status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkState {
    pub chunk: i32,
    /// A lease that expired reads as `Leased` until another worker takes it.
    pub status: ChunkStatus,
    /// The worker leasing it (while leased).
    pub owner: Option<String>,
    /// The worker that finished it (once done).
    pub copied_by: Option<String>,
}

/// How many chunks stand where (`job status --json`'s `chunks`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ChunkCounts {
    pub done: usize,
    pub leased: usize,
    pub pending: usize,
}

impl ChunkCounts {
    pub fn of(chunks: &[ChunkState]) -> ChunkCounts {
        let mut counts = ChunkCounts::default();
        for chunk in chunks {
            match chunk.status {
                ChunkStatus::Done => counts.done += 1,
                ChunkStatus::Leased => counts.leased += 1,
                ChunkStatus::Pending => counts.pending += 1,
            }
        }
        counts
    }

    pub fn all_done(&self) -> bool {
        self.leased == 0 && self.pending == 0
    }
}

/// The workers that copied chunks of a job, each once, in order of name.
pub fn workers(chunks: &[ChunkState]) -> Vec<String> {
    names(chunks.iter().filter_map(|c| c.copied_by.clone()))
}

/// The workers holding chunks of a job now, each once, in order of name.
pub fn holders(chunks: &[ChunkState]) -> Vec<String> {
    names(chunks.iter().filter_map(|c| c.owner.clone()))
}

fn names(names: impl Iterator<Item = String>) -> Vec<String> {
    let mut names: Vec<String> = names.collect();
    names.sort();
    names.dedup();
    names
}

/// Chunk leases in the state store; every call is atomic on the store.
#[async_trait]
pub trait ChunkLeases: Send + Sync {
    /// Records the job's chunks `(number, done)` that are not recorded yet; recorded
    /// ones keep where they stand.
    async fn add_chunks(&self, job: &str, chunks: &[(i32, bool)]) -> Result<()>;

    /// Leases a pending chunk, or one whose lease expired, to `worker` for `lease`;
    /// `None` when every chunk is done or held.
    async fn lease_chunk(
        &self,
        job: &str,
        worker: &str,
        lease: Duration,
    ) -> Result<Option<ChunkLease>>;

    /// Extends the lease from now; false when the chunk was leased again meanwhile.
    async fn renew_chunk(&self, job: &str, lease: &ChunkLease, duration: Duration) -> Result<bool>;

    /// Marks the chunk done, copied by `worker`; false when it was leased again.
    async fn finish_chunk(&self, job: &str, lease: &ChunkLease, worker: &str) -> Result<bool>;

    /// Gives the chunk back (pending) so that any worker can take it at once.
    async fn release_chunk(&self, job: &str, lease: &ChunkLease) -> Result<()>;

    /// Gives back every chunk `worker` holds: the job's new runner does so for the one
    /// before it, known gone (it held the job's lease, which a live process keeps).
    async fn release_worker_chunks(&self, job: &str, worker: &str) -> Result<()>;

    /// Every chunk of the job, by number.
    async fn chunks(&self, job: &str) -> Result<Vec<ChunkState>>;

    /// Removes the job's chunks (idempotent).
    async fn forget_chunks(&self, job: &str) -> Result<()>;
}
