//! The migration lock on MongoDB: a lease document that expires.
//!
//! MongoDB has no session-scoped lock that dies with its connection, so a lock held as a
//! plain flag outlives a crashed run (the complaint most often made of migrate-mongo and
//! Mongock). Here the lock is the document `{_id: "migrations"}` in `switchyard_locks`
//! with an owner and an expiry:
//! - taking it is one atomic `findAndModify` that matches only an expired lease or one
//!   this run owns, upserting when there is none; a live lease of another run makes the
//!   upsert collide on `_id`, which means "held";
//! - while held, a heartbeat pushes the expiry forward every third of the lease; if a
//!   renewal finds the lease owned by someone else (it expired and was taken over), the
//!   lease is marked lost and the run stops before its next operation;
//! - a crashed run stops renewing, and its lease can be taken once it has expired, or at
//!   once from the same machine when the process that holds it is gone (the lease names
//!   its host and process id), so a run killed and started again does not wait.
//!
//! Expiry compares the clocks of the machines running switchyard: keep them in sync to
//! within a fraction of the lease.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mongodb::bson::{doc, DateTime, Document};
use mongodb::options::ReturnDocument;
use mongodb::{Collection, Database};
use tokio::task::JoinHandle;

use super::{error_code, DUPLICATE_KEY};

/// How long a lease lasts without renewal.
pub const LEASE: Duration = Duration::from_secs(30);
const COLLECTION: &str = "switchyard_locks";

pub struct Lease {
    locks: Collection<Document>,
    id: String,
    /// Unique to this run.
    owner: String,
    /// `user@host pid N`, shown to a run that waits.
    holder: String,
    heartbeat: Option<JoinHandle<()>>,
    lost: Arc<AtomicBool>,
}

impl Lease {
    pub fn new(database: &Database, id: &str, holder: String) -> Self {
        Lease {
            locks: database.collection(COLLECTION),
            id: id.to_string(),
            owner: format!("{holder} {}", DateTime::now().timestamp_millis()),
            holder,
            heartbeat: None,
            lost: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Takes the lease, waiting up to `wait` for another run's to be released or to
    /// expire. `Ok(Err(description))` when it was still held at the end.
    pub async fn acquire(
        &mut self,
        wait: Duration,
    ) -> mongodb::error::Result<std::result::Result<(), String>> {
        let deadline = Instant::now() + wait;
        loop {
            if self.try_take().await? {
                self.start_heartbeat();
                return Ok(Ok(()));
            }
            if Instant::now() >= deadline {
                return Ok(Err(self.describe_holder().await));
            }
            tokio::time::sleep(Duration::from_millis(200).min(wait)).await;
        }
    }

    async fn try_take(&self) -> mongodb::error::Result<bool> {
        let now = DateTime::now();
        let expires = DateTime::from_millis(now.timestamp_millis() + LEASE.as_millis() as i64);
        let taken = self
            .locks
            .find_one_and_update(
                doc! {"_id": &self.id, "$or": [{"expires_at": {"$lt": now}}, {"owner": &self.owner}]},
                doc! {"$set": self.fields(now, expires)},
            )
            .upsert(true)
            .return_document(ReturnDocument::After)
            .await;
        match taken {
            Ok(_) => Ok(true),
            Err(e) if error_code(&e) == Some(DUPLICATE_KEY) => self.take_from_the_dead().await,
            Err(e) => Err(e),
        }
    }

    /// Takes a live lease whose holder ran on this machine and is gone.
    async fn take_from_the_dead(&self) -> mongodb::error::Result<bool> {
        let Some(lease) = self.locks.find_one(doc! {"_id": &self.id}).await? else {
            return Ok(false);
        };
        let host = whoami::hostname().unwrap_or_default();
        let pid = lease.get_i64("pid").ok();
        let dead = lease.get_str("host") == Ok(host.as_str())
            && pid.is_some_and(|pid| !process_alive(pid));
        if !dead {
            return Ok(false);
        }
        let previous = lease.get_str("owner").unwrap_or_default();
        let now = DateTime::now();
        let expires = DateTime::from_millis(now.timestamp_millis() + LEASE.as_millis() as i64);
        let taken = self
            .locks
            .update_one(
                doc! {"_id": &self.id, "owner": previous},
                doc! {"$set": self.fields(now, expires)},
            )
            .await?;
        Ok(taken.modified_count == 1)
    }

    fn fields(&self, now: DateTime, expires: DateTime) -> Document {
        doc! {
            "owner": &self.owner,
            "holder": &self.holder,
            "host": whoami::hostname().unwrap_or_default(),
            "pid": i64::from(std::process::id()),
            "taken_at": now,
            "expires_at": expires,
        }
    }

    async fn describe_holder(&self) -> String {
        match self.locks.find_one(doc! {"_id": &self.id}).await {
            Ok(Some(lease)) => {
                let holder = lease.get_str("holder").unwrap_or("another run");
                let until = lease
                    .get_datetime("expires_at")
                    .ok()
                    .and_then(|at| chrono::DateTime::from_timestamp_millis(at.timestamp_millis()))
                    .map(|at| at.format("%Y-%m-%d %H:%M:%S UTC").to_string())
                    .unwrap_or_else(|| "an unknown time".into());
                format!("held by {holder}, whose lease runs until {until} unless renewed")
            }
            _ => "held by another run".into(),
        }
    }

    fn start_heartbeat(&mut self) {
        if let Some(old) = self.heartbeat.take() {
            old.abort();
        }
        self.lost.store(false, Ordering::SeqCst);
        let locks = self.locks.clone();
        let (id, owner, lost) = (self.id.clone(), self.owner.clone(), self.lost.clone());
        self.heartbeat = Some(tokio::spawn(async move {
            let mut renewed = Instant::now();
            loop {
                tokio::time::sleep(LEASE / 3).await;
                let expires = DateTime::from_millis(
                    DateTime::now().timestamp_millis() + LEASE.as_millis() as i64,
                );
                match locks
                    .update_one(
                        doc! {"_id": &id, "owner": &owner},
                        doc! {"$set": {"expires_at": expires}},
                    )
                    .await
                {
                    Ok(result) if result.matched_count == 1 => renewed = Instant::now(),
                    Ok(_) => break,
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

    pub async fn release(&mut self) -> mongodb::error::Result<()> {
        if let Some(heartbeat) = self.heartbeat.take() {
            heartbeat.abort();
        }
        self.locks
            .delete_one(doc! {"_id": &self.id, "owner": &self.owner})
            .await
            .map(drop)
    }
}

/// Whether a process of this machine is alive.
fn process_alive(pid: i64) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists; nothing is sent.
    let answer = unsafe { libc::kill(pid, 0) };
    answer == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(heartbeat) = self.heartbeat.take() {
            heartbeat.abort();
        }
    }
}
