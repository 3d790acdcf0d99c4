//! Locks on stores with no session-scoped lock: a lease record that expires.
//!
//! MongoDB and Elasticsearch have no lock that dies with its connection, so a lock held
//! as a plain flag outlives a crashed run (the complaint most often made of
//! migrate-mongo and Mongock). Here a lock is a record with an owner and an expiry,
//! kept by a [`LeaseStore`] (a document in `switchyard_locks`, `switchyard-locks`):
//! - taking it is one atomic compare-and-set on the store that succeeds only on an
//!   expired lease, one this run owns, or none;
//! - while held, a heartbeat pushes the expiry forward every third of the lease; if a
//!   renewal finds the lease owned by someone else (it expired and was taken over), the
//!   lease is marked lost and the holder stops before its next step;
//! - a crashed run stops renewing, and its lease can be taken once it has expired, or at
//!   once from the same machine when the process that holds it is gone (the lease names
//!   its host and process id), so a run killed and started again does not wait.
//!
//! Expiry compares the clocks of the machines running switchyard: keep them in sync to
//! within a fraction of the lease.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::task::JoinHandle;

use crate::error::{Error, Result};

/// How long a lease lasts without renewal.
pub const LEASE: Duration = Duration::from_secs(30);

/// Why a run holding a lost lease stops.
pub const LOST: &str = "the migration lock's lease expired and may be another run's now (was the process stalled?); stopped before this operation";

/// What a lease record holds.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseRecord {
    /// Unique to one run.
    pub owner: String,
    /// `user@host pid N`, shown to a run that waits.
    pub holder: String,
    pub host: String,
    pub pid: i64,
    pub taken_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// Where lease records live. Each call is atomic on the store.
#[async_trait]
pub trait LeaseStore: Send + Sync + 'static {
    /// Writes `lease` as record `id` when there is none, it expired before `now`, or it
    /// is `lease.owner`'s already; false when another live lease holds it.
    async fn take(&self, id: &str, lease: &LeaseRecord, now: DateTime<Utc>) -> Result<bool>;

    /// Writes `lease` as record `id` if it still belongs to `previous`.
    async fn replace(&self, id: &str, previous: &str, lease: &LeaseRecord) -> Result<bool>;

    async fn read(&self, id: &str) -> Result<Option<LeaseRecord>>;

    /// Moves the expiry of `owner`'s lease; false when it is not `owner`'s any more.
    async fn renew(&self, id: &str, owner: &str, expires_at: DateTime<Utc>) -> Result<bool>;

    /// Removes `owner`'s lease; another's is left alone.
    async fn release(&self, id: &str, owner: &str) -> Result<()>;
}

pub struct Lease {
    store: Arc<dyn LeaseStore>,
    id: String,
    owner: String,
    holder: String,
    heartbeat: Option<JoinHandle<()>>,
    lost: Arc<AtomicBool>,
}

impl Lease {
    pub fn new(store: Arc<dyn LeaseStore>, id: &str, holder: String) -> Self {
        Lease {
            store,
            id: id.to_string(),
            owner: format!("{holder} {}", Utc::now().timestamp_millis()),
            holder,
            heartbeat: None,
            lost: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Takes the lease, waiting up to `wait` for another run's to be released or to
    /// expire. `Ok(Err(description))` when it was still held at the end.
    pub async fn acquire(&mut self, wait: Duration) -> Result<std::result::Result<(), String>> {
        let deadline = Instant::now() + wait;
        loop {
            let now = Utc::now();
            if self.store.take(&self.id, &self.record(now), now).await?
                || self.take_from_the_dead().await?
            {
                self.start_heartbeat();
                return Ok(Ok(()));
            }
            if Instant::now() >= deadline {
                return Ok(Err(self.describe_holder().await));
            }
            tokio::time::sleep(Duration::from_millis(200).min(wait)).await;
        }
    }

    fn record(&self, now: DateTime<Utc>) -> LeaseRecord {
        LeaseRecord {
            owner: self.owner.clone(),
            holder: self.holder.clone(),
            host: whoami::hostname().unwrap_or_default(),
            pid: i64::from(std::process::id()),
            taken_at: now,
            expires_at: now + LEASE,
        }
    }

    /// Takes a live lease whose holder ran on this machine and is gone.
    async fn take_from_the_dead(&self) -> Result<bool> {
        let Some(lease) = self.store.read(&self.id).await? else {
            return Ok(false);
        };
        let here = whoami::hostname().unwrap_or_default();
        if lease.host != here || crate::state::process_alive(lease.pid) {
            return Ok(false);
        }
        self.store
            .replace(&self.id, &lease.owner, &self.record(Utc::now()))
            .await
    }

    async fn describe_holder(&self) -> String {
        match self.store.read(&self.id).await {
            Ok(Some(lease)) => format!(
                "held by {}, whose lease runs until {} unless renewed",
                lease.holder,
                lease.expires_at.format("%Y-%m-%d %H:%M:%S UTC")
            ),
            _ => "held by another run".into(),
        }
    }

    fn start_heartbeat(&mut self) {
        if let Some(old) = self.heartbeat.take() {
            old.abort();
        }
        self.lost.store(false, Ordering::SeqCst);
        let store = self.store.clone();
        let (id, owner, lost) = (self.id.clone(), self.owner.clone(), self.lost.clone());
        self.heartbeat = Some(tokio::spawn(async move {
            let mut renewed = Instant::now();
            loop {
                tokio::time::sleep(LEASE / 3).await;
                match store.renew(&id, &owner, Utc::now() + LEASE).await {
                    Ok(true) => renewed = Instant::now(),
                    Ok(false) => break,
                    Err(_) if renewed.elapsed() < LEASE => continue,
                    Err(_) => break,
                }
            }
            lost.store(true, Ordering::SeqCst);
        }));
    }

    /// Whether the lease expired and may be another run's now.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    pub async fn release(&mut self) -> Result<()> {
        if let Some(heartbeat) = self.heartbeat.take() {
            heartbeat.abort();
        }
        self.store.release(&self.id, &self.owner).await
    }
}

/// Takes `lease` as `database`'s migration lock, waiting at most `wait`.
pub async fn lock(lease: &mut Lease, database: &str, wait: Duration) -> Result<()> {
    match lease.acquire(wait).await? {
        Ok(()) => Ok(()),
        Err(holder) => Err(Error::LockTimeout {
            database: database.to_string(),
            message: format!(
                "another run holds the migration lock ({holder}); gave up after waiting {} (migrations.lock_wait)",
                humantime::format_duration(wait)
            ),
        }),
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(heartbeat) = self.heartbeat.take() {
            heartbeat.abort();
        }
    }
}
