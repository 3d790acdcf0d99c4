//! What the state store holds for a job: its record (written by the process running it)
//! and its control (written by operators' commands).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::job::JobKind;
use crate::state::chunks::ChunkCounts;
use crate::state::StateStore;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Pending,
    Expand,
    Copy,
    CatchUp,
    Verify,
    ReadyToCutover,
    Cutover,
    Contract,
    Done,
    Paused,
    Failed,
    Aborted,
}

impl Phase {
    pub const ALL: [Phase; 12] = [
        Phase::Pending,
        Phase::Expand,
        Phase::Copy,
        Phase::CatchUp,
        Phase::Verify,
        Phase::ReadyToCutover,
        Phase::Cutover,
        Phase::Contract,
        Phase::Done,
        Phase::Paused,
        Phase::Failed,
        Phase::Aborted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Expand => "expand",
            Phase::Copy => "copy",
            Phase::CatchUp => "catch_up",
            Phase::Verify => "verify",
            Phase::ReadyToCutover => "ready_to_cutover",
            Phase::Cutover => "cutover",
            Phase::Contract => "contract",
            Phase::Done => "done",
            Phase::Paused => "paused",
            Phase::Failed => "failed",
            Phase::Aborted => "aborted",
        }
    }

    /// Phases a job never leaves by itself.
    pub fn is_final(self) -> bool {
        matches!(self, Phase::Done | Phase::Aborted)
    }
}

/// A job's record: its phase and progress, as `job status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    pub name: String,
    pub kind: JobKind,
    pub phase: Phase,
    /// While paused or failed: the phase to continue in.
    #[serde(default)]
    pub resume_phase: Option<Phase>,
    pub rows_copied: u64,
    /// Estimate, from the planner's statistics.
    pub rows_total: u64,
    pub rows_per_second: f64,
    pub changes_applied: u64,
    pub lag_seconds: f64,
    /// Change-log bytes not yet confirmed (PostgreSQL: WAL held by the slot).
    #[serde(default)]
    pub lag_bytes: u64,
    /// Key ranges verification found different (before re-checking them).
    #[serde(default)]
    pub verify_mismatches: u64,
    pub eta_seconds: Option<f64>,
    pub error: Option<String>,
    /// The job file it runs from.
    pub file: String,
    /// Time copy workers spent waiting: on the rate limit, on replica lag, on slow
    /// batches.
    #[serde(default)]
    pub throttle_wait_seconds: f64,
    /// Whether expand created the target (so that abort may drop it).
    #[serde(default)]
    pub created_target: bool,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default)]
    pub cutover_at: Option<DateTime<Utc>>,
    /// Where the cutover pointed an alias (Elasticsearch targets).
    #[serde(default)]
    pub alias: Option<crate::engine::progress::AliasTarget>,
    /// How long writes to the source were blocked at cutover.
    #[serde(default)]
    pub writes_blocked_ms: Option<u64>,
    /// Why the job waits instead of working: in `serve`'s line for a free run
    /// (`serve.max_jobs`), or for the server to free what it needs (a connection, a
    /// replication slot, a WAL sender).
    #[serde(default)]
    pub waiting: Option<String>,
    /// The fields of the job file that shape the data ([`crate::job::JobSpec::shape`]),
    /// as the job began writing data with them.
    #[serde(default)]
    pub shape: Option<std::collections::BTreeMap<String, String>>,
    /// The SHA-256 of the job file when the job failed under `serve`, which starts it
    /// again once the file differs.
    #[serde(default)]
    pub file_digest: Option<String>,
    /// The worker (`serve --worker-id`) of the process running the job last: once
    /// another run holds the job, that process is gone, and the chunks it held go back.
    #[serde(default)]
    pub worker: Option<String>,
}

impl JobRecord {
    pub fn new(name: &str, kind: JobKind, file: &str) -> JobRecord {
        let now = Utc::now();
        JobRecord {
            name: name.to_string(),
            kind,
            phase: Phase::Pending,
            resume_phase: None,
            rows_copied: 0,
            rows_total: 0,
            rows_per_second: 0.0,
            changes_applied: 0,
            lag_seconds: 0.0,
            lag_bytes: 0,
            verify_mismatches: 0,
            eta_seconds: None,
            error: None,
            file: file.to_string(),
            throttle_wait_seconds: 0.0,
            created_target: false,
            started_at: now,
            updated_at: now,
            cutover_at: None,
            alias: None,
            writes_blocked_ms: None,
            waiting: None,
            shape: None,
            file_digest: None,
            worker: None,
        }
    }

    /// The phase the job works in, or continues in once resumed (while paused or
    /// failed).
    pub fn working_phase(&self) -> Phase {
        match self.phase {
            Phase::Paused | Phase::Failed => self.resume_phase.unwrap_or(Phase::Pending),
            phase => phase,
        }
    }

    /// Marks the job failed with `error`; resumed, it continues where it was.
    pub fn fail(&mut self, error: &crate::error::Error) {
        self.resume_phase = Some(self.working_phase());
        self.phase = Phase::Failed;
        self.error = Some(error.to_string());
    }

    /// Whether the job's contract has begun, or the job has ended: the contract may
    /// have dropped its source.
    pub fn source_may_be_gone(&self) -> bool {
        matches!(
            self.working_phase(),
            Phase::Contract | Phase::Done | Phase::Aborted
        )
    }

    pub async fn load(store: &dyn StateStore, name: &str) -> Result<Option<JobRecord>> {
        match store.job(name).await? {
            Some(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| Error::State(format!("job `{name}`: unreadable record: {e}"))),
            None => Ok(None),
        }
    }

    pub async fn load_all(store: &dyn StateStore) -> Result<Vec<JobRecord>> {
        let mut records = Vec::new();
        for text in store.jobs().await? {
            // A control written before the job ever ran leaves an empty record.
            if let Ok(record) = serde_json::from_str(&text) {
                records.push(record);
            }
        }
        Ok(records)
    }

    /// The object `job status --json` and `GET /jobs` show: the record's fields, who
    /// holds the job's lease (`held_by`), and, once its copy was shared out in chunks,
    /// where they stand (`chunks`) and which workers copied them (`workers`).
    pub async fn status(&self, store: &dyn StateStore) -> Result<serde_json::Value> {
        let mut status = self.status_fields();
        let held = store.job_holder(&self.name).await?;
        status["held_by"] = serde_json::json!(held.map(|h| h.holder.worker));
        let chunks = store.chunks(&self.name).await?;
        if !chunks.is_empty() {
            status["chunks"] = serde_json::json!(ChunkCounts::of(&chunks));
            status["workers"] = serde_json::json!(crate::state::chunks::workers(&chunks));
        }
        Ok(status)
    }

    /// The record's own fields of [`JobRecord::status`].
    fn status_fields(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "kind": self.kind.as_str(),
            "phase": self.phase.as_str(),
            "rows_copied": self.rows_copied,
            "rows_total": self.rows_total,
            "rows_per_second": self.rows_per_second,
            "lag_seconds": self.lag_seconds,
            "eta_seconds": self.eta_seconds,
            "error": self.error,
            "changes_applied": self.changes_applied,
            "throttle_wait_seconds": self.throttle_wait_seconds,
            "writes_blocked_ms": self.writes_blocked_ms,
            "waiting": self.waiting,
            "updated_at": self.updated_at,
        })
    }

    /// Saves the record of a job no run holds (a failure to start, a job waiting in
    /// line); a run saves under its lease ([`JobRecord::save_under`]).
    pub async fn save(&mut self, store: &dyn StateStore) -> Result<()> {
        let text = self.stamped();
        store.put_job(&self.name, &text).await
    }

    /// Saves the record if the job's lease still has `fence`; false, writing nothing,
    /// once it passed on.
    pub async fn save_under(&mut self, store: &dyn StateStore, fence: i64) -> Result<bool> {
        let text = self.stamped();
        store.save_job_under(&self.name, &text, fence).await
    }

    fn stamped(&mut self) -> String {
        self.updated_at = Utc::now();
        serde_json::to_string(self).expect("a job record serialises")
    }
}

/// What operators asked of a job.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobControl {
    #[serde(default)]
    pub paused: bool,
    /// Overrides `copy.rows_per_second` (0: unthrottled) while set.
    #[serde(default)]
    pub rows_per_second: Option<u64>,
    #[serde(default)]
    pub cutover_requested: bool,
    #[serde(default)]
    pub contract_requested: bool,
    #[serde(default)]
    pub abort_requested: bool,
    /// Set by `serve` while the job's daily window is closed: the job pauses.
    #[serde(default)]
    pub outside_window: bool,
    /// `job resume` of a failed job: `serve` starts it again (and clears this).
    #[serde(default)]
    pub retry_requested: bool,
}

/// What an operator asks of a job (`switchyard job …`, or the HTTP API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Pause,
    Resume,
    Cutover,
    Contract,
    Abort,
    Throttle(u64),
}

impl Request {
    pub fn name(self) -> &'static str {
        match self {
            Request::Pause => "pause",
            Request::Resume => "resume",
            Request::Cutover => "cutover",
            Request::Contract => "contract",
            Request::Abort => "abort",
            Request::Throttle(_) => "throttle",
        }
    }
}

/// Records an operator's request in the job's control, after checking it makes sense
/// for the job as it stands. Returns the job's record.
pub async fn request(store: &dyn StateStore, name: &str, request: Request) -> Result<JobRecord> {
    let record = JobRecord::load(store, name).await?.ok_or_else(|| {
        Error::NotFound(format!(
            "no job named `{name}` has run with this state store"
        ))
    })?;
    if record.phase.is_final() {
        return Err(Error::Refused(format!(
            "job `{name}` is {}; nothing to {}",
            record.phase.as_str(),
            request.name()
        )));
    }
    if request == Request::Cutover {
        if !record.kind.cuts_over() {
            return Err(Error::Refused(format!(
                "job `{name}` is a {}: only copy and reindex jobs cut over",
                record.kind.as_str()
            )));
        }
        if matches!(record.phase, Phase::Pending | Phase::Expand | Phase::Copy) {
            return Err(Error::Refused(format!(
                "job `{name}` is in {}; it can cut over once verified",
                record.phase.as_str()
            )));
        }
    }
    JobControl::update(store, name, move |c| match request {
        Request::Pause => c.paused = true,
        Request::Resume => {
            c.paused = false;
            c.retry_requested = true;
        }
        Request::Cutover => c.cutover_requested = true,
        Request::Contract => c.contract_requested = true,
        Request::Abort => c.abort_requested = true,
        Request::Throttle(rate) => c.rows_per_second = Some(rate),
    })
    .await?;
    Ok(record)
}

impl JobControl {
    pub async fn load(store: &dyn StateStore, name: &str) -> Result<JobControl> {
        match store.control(name).await? {
            Some(text) => serde_json::from_str(&text)
                .map_err(|e| Error::State(format!("job `{name}`: unreadable control: {e}"))),
            None => Ok(JobControl::default()),
        }
    }

    /// Applies `change` to the stored control, atomically.
    pub async fn update(
        store: &dyn StateStore,
        name: &str,
        change: impl FnOnce(&mut JobControl) + Send + 'static,
    ) -> Result<()> {
        store
            .update_control(
                name,
                Box::new(move |current| {
                    let mut control: JobControl = current
                        .and_then(|t| serde_json::from_str(&t).ok())
                        .unwrap_or_default();
                    change(&mut control);
                    serde_json::to_string(&control).expect("a job control serialises")
                }),
            )
            .await
    }
}
