//! The job's lease: which one process runs a job (its expand, catch-up, verify, cutover,
//! contract, and the record of where it stands), while any number help with its copy
//! ([`super::chunks`]).
//!
//! - A run takes the lease before it claims the job in its sink: when nobody holds it,
//!   when its holder let it expire (the process died or froze), when it is this
//!   worker's own (a restarted process with the same `--worker-id`), or when its holder
//!   ran on this host and its process is gone (a killed `job run` started again does not
//!   wait for the expiry). Every take draws a fence from the sequence chunk leases use,
//!   greater than any given before.
//! - The holder renews it every third of its length (the engine's heartbeat).
//! - The job's record is written only under the lease ([`JobLeases::save_job_under`]):
//!   a write naming an older fence changes nothing, so a holder frozen past its lease
//!   and thawed after another took the job over cannot move the job back, and learns
//!   at its first write that it lost it. A run that takes the lease from a frozen
//!   holder also ends that holder's sessions where the sink has them (PostgreSQL), so
//!   the thawed holder cannot write to the databases either.
//! - Expiry is the store's clock.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::error::Result;

/// A process that holds, or asks for, a job's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobHolder {
    /// Its worker id (`serve --worker-id`).
    pub worker: String,
    pub host: String,
    pub pid: i64,
}

impl JobHolder {
    /// This process, as `worker`.
    pub fn this_process(worker: &str) -> JobHolder {
        JobHolder {
            worker: worker.to_string(),
            host: whoami::hostname().unwrap_or_default(),
            pid: i64::from(std::process::id()),
        }
    }

    /// Whether it ran on this host and its process is gone.
    pub fn is_gone(&self) -> bool {
        self.host == whoami::hostname().unwrap_or_default() && !super::process_alive(self.pid)
    }
}

/// A job's lease as the store has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldJob {
    pub holder: JobHolder,
    pub fence: i64,
    /// Past this (the store's clock), the lease may be taken.
    pub expires_at: DateTime<Utc>,
}

#[async_trait]
pub trait JobLeases: Send + Sync {
    /// Takes `job`'s lease for `holder` for `lease`: when nobody holds it, its lease
    /// expired, it is `holder.worker`'s, or its fence is `over` (a holder found gone).
    /// Its new fence, or `None`, changing nothing, while another's lease is live.
    async fn take_job(
        &self,
        job: &str,
        holder: &JobHolder,
        lease: Duration,
        over: Option<i64>,
    ) -> Result<Option<i64>>;

    /// Who holds `job`'s lease, if anybody (expired or not).
    async fn job_holder(&self, job: &str) -> Result<Option<HeldJob>>;

    /// Extends the lease with `fence` by `lease` from now; false once the job's lease
    /// has another fence (it expired and was taken) or none.
    async fn renew_job(&self, job: &str, fence: i64, lease: Duration) -> Result<bool>;

    /// Gives the lease with `fence` back; does nothing once it has another.
    async fn release_job(&self, job: &str, fence: i64) -> Result<()>;

    /// Writes `job`'s record if its lease still has `fence`; false (nothing written)
    /// otherwise.
    async fn save_job_under(&self, job: &str, record: &str, fence: i64) -> Result<bool>;
}
