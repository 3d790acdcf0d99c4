//! A run's hold on its job ([`crate::state::job_lease`]): taken before the run claims
//! the job in its sink, renewed by a heartbeat, given back when the run ends.
//!
//! Invariants:
//! - Every write of the job's record names the lease's fence, and is refused once the
//!   lease passed to another process: the run then stops with
//!   [`Error::JobLeaseLost`], having changed nothing more.
//! - Before acting on the databases after a break in which the lease could have passed
//!   on (a reconnect, the cutover), the run renews it and stops if it cannot: a renewed
//!   lease is this run's for a whole lease length, which no statement outlives unseen.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::heartbeat::Heartbeat;
use crate::error::{Error, Result};
use crate::state::job_lease::JobHolder;
use crate::state::StateStore;

/// How often a run waiting for another's live lease looks again.
const TAKE_POLL: Duration = Duration::from_millis(100);

pub(super) struct JobLease {
    store: Arc<dyn StateStore>,
    job: String,
    fence: i64,
    duration: Duration,
    heartbeat: Heartbeat,
}

impl JobLease {
    /// Takes `job`'s lease for `worker` (this process), waiting up to `wait` for
    /// another's to expire or its process to be found gone; `None` when it is still
    /// held at the end.
    pub async fn take(
        store: Arc<dyn StateStore>,
        job: &str,
        worker: &str,
        duration: Duration,
        wait: Duration,
    ) -> Result<Option<JobLease>> {
        let holder = JobHolder::this_process(worker);
        let deadline = Instant::now() + wait;
        let fence = loop {
            if let Some(fence) = store.take_job(job, &holder, duration, None).await? {
                break fence;
            }
            if let Some(held) = store.job_holder(job).await? {
                if held.holder.is_gone() {
                    if let Some(fence) = store
                        .take_job(job, &holder, duration, Some(held.fence))
                        .await?
                    {
                        break fence;
                    }
                }
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(TAKE_POLL).await;
        };
        let heartbeat = {
            let (store, name) = (store.clone(), job.to_string());
            Heartbeat::start(duration, job, "the job's lease", move || {
                let (store, name) = (store.clone(), name.clone());
                async move { store.renew_job(&name, fence, duration).await }
            })
        };
        Ok(Some(JobLease {
            store,
            job: job.to_string(),
            fence,
            duration,
            heartbeat,
        }))
    }

    pub fn fence(&self) -> i64 {
        self.fence
    }

    /// Fails with [`Error::JobLeaseLost`] once the heartbeat found the lease taken.
    pub fn check(&self) -> Result<()> {
        if self.heartbeat.lost() {
            return Err(self.lost());
        }
        Ok(())
    }

    /// Renews the lease now; fails with [`Error::JobLeaseLost`] when it passed on.
    pub async fn confirm(&self) -> Result<()> {
        self.check()?;
        if !self
            .store
            .renew_job(&self.job, self.fence, self.duration)
            .await?
        {
            return Err(self.lost());
        }
        Ok(())
    }

    /// The error of a run whose lease passed to another process.
    pub fn lost(&self) -> Error {
        Error::JobLeaseLost {
            job: self.job.clone(),
        }
    }

    /// Gives the lease back (nothing, once another holds it).
    pub async fn release(self) {
        drop(self.heartbeat);
        if let Err(error) = self.store.release_job(&self.job, self.fence).await {
            tracing::warn!(job = %self.job, %error, "cannot give the job's lease back; it expires");
        }
    }
}
