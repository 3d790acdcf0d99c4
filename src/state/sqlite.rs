//! The embedded state store: one SQLite file, in WAL mode so that a daemon and CLI
//! commands can use it at once. Calls run on tokio's blocking pool.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};

use super::chunks::{ChunkLease, ChunkLeases, ChunkState, ChunkStatus};
use super::job_lease::{HeldJob, JobHolder, JobLeases};
use super::{AuditEntry, ControlChange, Outcome, StateStore};
use crate::error::{Error, Result};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit_log (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    at       TEXT NOT NULL,
    actor    TEXT NOT NULL,
    command  TEXT NOT NULL,
    database TEXT,
    outcome  TEXT NOT NULL,
    detail   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    name    TEXT PRIMARY KEY,
    record  TEXT NOT NULL,
    control TEXT
);
CREATE TABLE IF NOT EXISTS checkpoints (
    job   TEXT NOT NULL,
    name  TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (job, name)
);
CREATE TABLE IF NOT EXISTS chunks (
    job        TEXT NOT NULL,
    chunk      INTEGER NOT NULL,
    status     TEXT NOT NULL DEFAULT 'pending',
    owner      TEXT,
    fence      INTEGER NOT NULL DEFAULT 0,
    expires_at INTEGER,
    copied_by  TEXT,
    PRIMARY KEY (job, chunk)
);
CREATE TABLE IF NOT EXISTS chunk_fences (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    last INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS job_leases (
    job        TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    host       TEXT NOT NULL,
    pid        INTEGER NOT NULL,
    fence      INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);";

/// How long a writer waits for another process's write lock on the file.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

pub struct SqliteState {
    path: PathBuf,
    connection: Arc<Mutex<Connection>>,
}

impl SqliteState {
    pub async fn open(path: &Path) -> Result<SqliteState> {
        let path = path.to_path_buf();
        let opened = path.clone();
        let connection = tokio::task::spawn_blocking(move || open_file(&opened))
            .await
            .expect("the blocking pool runs the task")
            .map_err(|e| Error::State(format!("{}: {e}", path.display())))?;
        Ok(SqliteState {
            path,
            connection: Arc::new(Mutex::new(connection)),
        })
    }

    async fn with_connection<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let connection = Arc::clone(&self.connection);
        tokio::task::spawn_blocking(move || {
            let connection = connection
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            work(&connection)
        })
        .await
        .expect("the blocking pool runs the task")
        .map_err(|e| Error::State(format!("{}: {e}", self.path.display())))
    }
}

/// Opens (creating when new) the file, in WAL mode, with the schema in place.
fn open_file(path: &Path) -> std::result::Result<Connection, String> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    let connection = Connection::open(path).map_err(|e| e.to_string())?;
    connection
        .busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| e.to_string())?;
    // Switching to WAL does not wait on the busy handler, so several processes opening
    // a new file at once retry here until the first one has set it up.
    let deadline = Instant::now() + BUSY_TIMEOUT;
    loop {
        let setup = connection
            .pragma_update(None, "journal_mode", "WAL")
            .and_then(|_| connection.execute_batch(SCHEMA));
        match setup {
            Ok(()) => return Ok(connection),
            Err(e) if is_busy(&e) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Runs `work` in a transaction that takes the write lock first (waiting on the busy
/// timeout): a deferred read-then-write fails at once when another writer comes between.
fn immediate<T>(c: &Connection, work: impl FnOnce() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    c.execute_batch("BEGIN IMMEDIATE")?;
    match work() {
        Ok(value) => c.execute_batch("COMMIT").map(|()| value),
        Err(error) => {
            let _ = c.execute_batch("ROLLBACK");
            Err(error)
        }
    }
}

/// Milliseconds since the epoch, now and `ahead` from now: lease expiries.
fn epoch_millis(ahead: Duration) -> i64 {
    (chrono::Utc::now() + chrono::Duration::from_std(ahead).unwrap_or(chrono::TimeDelta::MAX))
        .timestamp_millis()
}

fn is_busy(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

#[async_trait]
impl StateStore for SqliteState {
    async fn append_audit(&self, entry: &AuditEntry) -> Result<()> {
        let entry = entry.clone();
        self.with_connection(move |c| {
            c.execute(
                "INSERT INTO audit_log (at, actor, command, database, outcome, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![entry.at.to_rfc3339(), entry.actor, entry.command, entry.database, entry.outcome.as_str(), entry.detail],
            )
            .map(drop)
        })
        .await
    }

    async fn recent_audit(
        &self,
        limit: usize,
        since: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<Vec<AuditEntry>> {
        self.with_connection(move |c| {
            let mut statement = c.prepare(
                "SELECT at, actor, command, database, outcome, detail FROM audit_log ORDER BY id DESC",
            )?;
            let rows = statement.query_map([], |row| {
                let at: String = row.get(0)?;
                let outcome: String = row.get(4)?;
                Ok(AuditEntry {
                    at: chrono::DateTime::parse_from_rfc3339(&at)
                        .map(|t| t.to_utc())
                        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e)))?,
                    actor: row.get(1)?,
                    command: row.get(2)?,
                    database: row.get(3)?,
                    outcome: Outcome::parse(&outcome),
                    detail: row.get(5)?,
                })
            })?;
            // Entries are appended in time order, so the newest-first scan stops at the
            // first one before `since`.
            rows.take_while(|entry| match (entry, since) {
                (Ok(entry), Some(since)) => entry.at >= since,
                _ => true,
            })
            .take(limit)
            .collect()
        })
        .await
    }

    async fn put_job(&self, name: &str, record: &str) -> Result<()> {
        let (name, record) = (name.to_string(), record.to_string());
        self.with_connection(move |c| {
            c.execute(
                "INSERT INTO jobs (name, record) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET record = excluded.record",
                params![name, record],
            )
            .map(drop)
        })
        .await
    }

    async fn job(&self, name: &str) -> Result<Option<String>> {
        let name = name.to_string();
        self.with_connection(move |c| {
            c.query_row("SELECT record FROM jobs WHERE name = ?1", [name], |row| {
                row.get(0)
            })
            .optional()
        })
        .await
    }

    async fn jobs(&self) -> Result<Vec<String>> {
        self.with_connection(|c| {
            let mut statement = c.prepare("SELECT record FROM jobs ORDER BY name")?;
            let rows = statement.query_map([], |row| row.get(0))?;
            rows.collect()
        })
        .await
    }

    async fn control(&self, name: &str) -> Result<Option<String>> {
        let name = name.to_string();
        self.with_connection(move |c| {
            c.query_row("SELECT control FROM jobs WHERE name = ?1", [name], |row| {
                row.get(0)
            })
            .optional()
            .map(Option::flatten)
        })
        .await
    }

    async fn update_control(&self, name: &str, change: ControlChange) -> Result<()> {
        let name = name.to_string();
        self.with_connection(move |c| {
            immediate(c, || {
                let current: Option<String> = c
                    .query_row("SELECT control FROM jobs WHERE name = ?1", [&name], |row| row.get(0))
                    .optional()?
                    .flatten();
                c.execute(
                    "INSERT INTO jobs (name, record, control) VALUES (?1, '{}', ?2) ON CONFLICT (name) DO UPDATE SET control = excluded.control",
                    params![name, change(current)],
                )
            })
            .map(drop)
        })
        .await
    }

    async fn checkpoint(&self, job: &str, name: &str) -> Result<Option<String>> {
        let (job, name) = (job.to_string(), name.to_string());
        self.with_connection(move |c| {
            c.query_row(
                "SELECT value FROM checkpoints WHERE job = ?1 AND name = ?2",
                [job, name],
                |row| row.get(0),
            )
            .optional()
        })
        .await
    }

    async fn put_checkpoint(&self, job: &str, name: &str, value: &str) -> Result<()> {
        let (job, name, value) = (job.to_string(), name.to_string(), value.to_string());
        self.with_connection(move |c| {
            c.execute(
                "INSERT INTO checkpoints (job, name, value) VALUES (?1, ?2, ?3) ON CONFLICT (job, name) DO UPDATE SET value = excluded.value",
                params![job, name, value],
            )
            .map(drop)
        })
        .await
    }

    async fn forget_checkpoints(&self, job: &str) -> Result<()> {
        let job = job.to_string();
        self.with_connection(move |c| {
            c.execute("DELETE FROM checkpoints WHERE job = ?1", [job])
                .map(drop)
        })
        .await
    }
}

#[async_trait]
impl JobLeases for SqliteState {
    async fn take_job(
        &self,
        job: &str,
        holder: &JobHolder,
        lease: Duration,
        over: Option<i64>,
    ) -> Result<Option<i64>> {
        let (job, holder) = (job.to_string(), holder.clone());
        self.with_connection(move |c| {
            immediate(c, || {
                let held = read_job_holder(c, &job)?;
                let now = epoch_millis(Duration::ZERO);
                let live_and_another = held.is_some_and(|held| {
                    held.holder.worker != holder.worker
                        && held.expires_at.timestamp_millis() >= now
                        && Some(held.fence) != over
                });
                if live_and_another {
                    return Ok(None);
                }
                let fence = next_fence(c)?;
                c.execute(
                    "INSERT INTO job_leases (job, owner, host, pid, fence, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (job) DO UPDATE SET owner = excluded.owner, host = excluded.host, pid = excluded.pid,
                         fence = excluded.fence, expires_at = excluded.expires_at",
                    params![job, holder.worker, holder.host, holder.pid, fence, epoch_millis(lease)],
                )?;
                Ok(Some(fence))
            })
        })
        .await
    }

    async fn job_holder(&self, job: &str) -> Result<Option<HeldJob>> {
        let job = job.to_string();
        self.with_connection(move |c| read_job_holder(c, &job))
            .await
    }

    async fn renew_job(&self, job: &str, fence: i64, lease: Duration) -> Result<bool> {
        let job = job.to_string();
        self.with_connection(move |c| {
            c.execute(
                "UPDATE job_leases SET expires_at = ?3 WHERE job = ?1 AND fence = ?2",
                params![job, fence, epoch_millis(lease)],
            )
            .map(|n| n == 1)
        })
        .await
    }

    async fn release_job(&self, job: &str, fence: i64) -> Result<()> {
        let job = job.to_string();
        self.with_connection(move |c| {
            c.execute(
                "DELETE FROM job_leases WHERE job = ?1 AND fence = ?2",
                params![job, fence],
            )
            .map(drop)
        })
        .await
    }

    async fn save_job_under(&self, job: &str, record: &str, fence: i64) -> Result<bool> {
        let (job, record) = (job.to_string(), record.to_string());
        self.with_connection(move |c| {
            c.execute(
                "INSERT INTO jobs (name, record)
                 SELECT ?1, ?2 WHERE EXISTS (SELECT 1 FROM job_leases WHERE job = ?1 AND fence = ?3)
                 ON CONFLICT (name) DO UPDATE SET record = excluded.record",
                params![job, record, fence],
            )
            .map(|n| n == 1)
        })
        .await
    }
}

fn read_job_holder(c: &Connection, job: &str) -> rusqlite::Result<Option<HeldJob>> {
    c.query_row(
        "SELECT owner, host, pid, fence, expires_at FROM job_leases WHERE job = ?1",
        [job],
        |row| {
            Ok(HeldJob {
                holder: JobHolder {
                    worker: row.get(0)?,
                    host: row.get(1)?,
                    pid: row.get(2)?,
                },
                fence: row.get(3)?,
                expires_at: chrono::DateTime::from_timestamp_millis(row.get(4)?)
                    .unwrap_or_default(),
            })
        },
    )
    .optional()
}

/// The next fence of the store's one sequence (chunk and job leases).
fn next_fence(c: &Connection) -> rusqlite::Result<i64> {
    c.query_row(
        "INSERT INTO chunk_fences (id, last) VALUES (1, 1) ON CONFLICT (id) DO UPDATE SET last = last + 1 RETURNING last",
        [],
        |row| row.get(0),
    )
}

#[async_trait]
impl ChunkLeases for SqliteState {
    async fn add_chunks(&self, job: &str, chunks: &[(i32, bool)]) -> Result<()> {
        let (job, chunks) = (job.to_string(), chunks.to_vec());
        self.with_connection(move |c| {
            immediate(c, || {
                for (chunk, done) in chunks {
                    c.execute(
                        "INSERT INTO chunks (job, chunk, status) VALUES (?1, ?2, ?3) ON CONFLICT (job, chunk) DO NOTHING",
                        params![job, chunk, if done { "done" } else { "pending" }],
                    )?;
                }
                Ok(())
            })
        })
        .await
    }

    async fn lease_chunk(
        &self,
        job: &str,
        worker: &str,
        lease: Duration,
    ) -> Result<Option<ChunkLease>> {
        let (job, worker) = (job.to_string(), worker.to_string());
        self.with_connection(move |c| {
            immediate(c, || {
                let Some(chunk): Option<i32> = c
                    .query_row(
                        "SELECT chunk FROM chunks WHERE job = ?1 AND (status = 'pending' OR (status = 'leased' AND expires_at < ?2))
                          ORDER BY status DESC, chunk LIMIT 1",
                        params![job, epoch_millis(Duration::ZERO)],
                        |row| row.get(0),
                    )
                    .optional()?
                else {
                    return Ok(None);
                };
                let fence = next_fence(c)?;
                c.execute(
                    "UPDATE chunks SET status = 'leased', owner = ?3, fence = ?4, expires_at = ?5 WHERE job = ?1 AND chunk = ?2",
                    params![job, chunk, worker, fence, epoch_millis(lease)],
                )?;
                Ok(Some(ChunkLease { chunk, fence }))
            })
        })
        .await
    }

    async fn renew_chunk(&self, job: &str, lease: &ChunkLease, duration: Duration) -> Result<bool> {
        let (job, lease) = (job.to_string(), *lease);
        self.with_connection(move |c| {
            c.execute(
                "UPDATE chunks SET expires_at = ?4 WHERE job = ?1 AND chunk = ?2 AND fence = ?3 AND status = 'leased'",
                params![job, lease.chunk, lease.fence, epoch_millis(duration)],
            )
            .map(|n| n == 1)
        })
        .await
    }

    async fn finish_chunk(&self, job: &str, lease: &ChunkLease, worker: &str) -> Result<bool> {
        let (job, lease, worker) = (job.to_string(), *lease, worker.to_string());
        self.with_connection(move |c| {
            c.execute(
                "UPDATE chunks SET status = 'done', owner = NULL, expires_at = NULL, copied_by = ?4
                  WHERE job = ?1 AND chunk = ?2 AND fence = ?3 AND status = 'leased'",
                params![job, lease.chunk, lease.fence, worker],
            )
            .map(|n| n == 1)
        })
        .await
    }

    async fn release_chunk(&self, job: &str, lease: &ChunkLease) -> Result<()> {
        let (job, lease) = (job.to_string(), *lease);
        self.with_connection(move |c| {
            c.execute(
                "UPDATE chunks SET status = 'pending', owner = NULL, expires_at = NULL
                  WHERE job = ?1 AND chunk = ?2 AND fence = ?3 AND status = 'leased'",
                params![job, lease.chunk, lease.fence],
            )
            .map(drop)
        })
        .await
    }

    async fn release_worker_chunks(&self, job: &str, worker: &str) -> Result<()> {
        let (job, worker) = (job.to_string(), worker.to_string());
        self.with_connection(move |c| {
            c.execute(
                "UPDATE chunks SET status = 'pending', owner = NULL, expires_at = NULL
                  WHERE job = ?1 AND owner = ?2 AND status = 'leased'",
                params![job, worker],
            )
            .map(drop)
        })
        .await
    }

    async fn chunks(&self, job: &str) -> Result<Vec<ChunkState>> {
        let job = job.to_string();
        self.with_connection(move |c| {
            let mut statement = c.prepare(
                "SELECT chunk, status, owner, copied_by FROM chunks WHERE job = ?1 ORDER BY chunk",
            )?;
            let rows = statement.query_map([job], |row| {
                let status: String = row.get(1)?;
                Ok(ChunkState {
                    chunk: row.get(0)?,
                    status: ChunkStatus::parse(&status),
                    owner: row.get(2)?,
                    copied_by: row.get(3)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn forget_chunks(&self, job: &str) -> Result<()> {
        let job = job.to_string();
        self.with_connection(move |c| {
            c.execute("DELETE FROM chunks WHERE job = ?1", [job])
                .map(drop)
        })
        .await
    }
}
