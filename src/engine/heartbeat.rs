//! Keeping a lease alive: a task that renews it every third of its length until
//! dropped, and notes when a renewal found it taken (it expired while this process
//! stalled). A renewal that fails (the store is unreachable) is tried again at the
//! next beat: the lease outlives two misses.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::error::Result;

pub(super) struct Heartbeat {
    lost: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Heartbeat {
    /// Calls `renew` every third of `lease`: it answers whether the lease is still
    /// this process's. `what` names the lease in the log.
    pub fn start<R, F>(lease: Duration, job: &str, what: &'static str, renew: R) -> Heartbeat
    where
        R: Fn() -> F + Send + 'static,
        F: Future<Output = Result<bool>> + Send,
    {
        let lost = Arc::new(AtomicBool::new(false));
        let flag = lost.clone();
        let job = job.to_string();
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(lease / 3).await;
                match renew().await {
                    Ok(true) => {}
                    Ok(false) => {
                        flag.store(true, Ordering::SeqCst);
                        return;
                    }
                    Err(error) => tracing::warn!(job = %job, %error, "cannot renew {what}"),
                }
            }
        });
        Heartbeat { lost, task }
    }

    /// Whether a renewal found the lease taken.
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.task.abort();
    }
}
