//! Drives one job through its phases until it is done or the next step waits for a
//! person or the clock. See the module docs of [`crate::engine`] for the invariants.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use super::crew::{spawn_crew, Crew, Pacing};
use super::job_lease::JobLease;
use super::pipeline::Pipeline;
use super::progress::{CutoverReport, RangeProgress};
use super::record::{JobControl, JobRecord, Phase};
use super::throttle::Throttle;
use crate::error::{Error, Result};
use crate::job::{ContractAfter, CutoverMode, JobSpec, VerifyMethod};
use crate::state::chunks::ChunkCounts;
use crate::state::{Outcome, StateStore};

/// How often the running process reads the job's control and saves its progress.
const CONTROL_INTERVAL: Duration = Duration::from_millis(250);
/// Replication messages (about three per single-row transaction) read per catch-up
/// transaction.
const CATCH_UP_BATCH: usize = 50_000;
/// Once caught up, catch-up passes start at most this often: a little lag for far
/// fewer transactions on the server.
const CATCH_UP_PASS_INTERVAL: Duration = Duration::from_millis(20);
/// Before cutover, catch-up passes repeat (at most this often) until one finds fewer
/// changes than this: the changes drained under the writes lock.
const CUTOVER_TAIL_PASSES: usize = 20;
const CUTOVER_TAIL_CHANGES: u64 = 100;
/// Transient errors (a lost connection, a server restarting) are retried this often in
/// a row, after a back-off doubling from `TRANSIENT_BACKOFF` up to `TRANSIENT_BACKOFF_MAX`.
const TRANSIENT_RETRIES: u32 = 8;
const TRANSIENT_BACKOFF: Duration = Duration::from_millis(250);
const TRANSIENT_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How long a job waits for the server to free a connection, a replication slot or a
/// WAL sender: doubling from the first wait up to the longest, as long as it takes.
const RESOURCE_WAIT_FIRST: Duration = Duration::from_millis(250);
const RESOURCE_WAIT_MAX: Duration = Duration::from_secs(30);
/// How often (in control intervals) the copy reads every worker's progress from the sink.
const PROGRESS_TICKS: u64 = 4;
/// Cutover attempts when the writes lock is busy.
const CUTOVER_ATTEMPTS: u32 = 5;

/// Why `run` returned without an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    Done,
    /// Verified and caught up; `job cutover NAME` continues.
    WaitingForCutover,
    /// Contract runs at this time (or only on `job contract NAME` when `None`).
    WaitingForContract(Option<DateTime<Utc>>),
    /// Stopped by a signal at a batch boundary, checkpoints written.
    Stopped,
    Aborted,
    /// Another process runs this job; it was asked (through the control) to act.
    RunningElsewhere,
}

pub struct RunOptions {
    /// Becomes true on SIGINT/SIGTERM: stop at the next batch boundary.
    pub shutdown: watch::Receiver<bool>,
    /// Told of progress, batch timings and failures (progress bar, metrics).
    pub observer: Arc<dyn JobObserver>,
    /// How long to wait for the job's lease when another process holds it (a killed
    /// run's session can hold it for a moment after the process is gone).
    pub claim_wait: Duration,
    /// Once ready to cut over, keep applying changes until cutover is asked for,
    /// instead of returning [`RunEnd::WaitingForCutover`].
    pub follow: bool,
    /// This process's name among the workers sharing a job (`serve --worker-id`).
    pub worker: String,
    /// How long a chunk's lease lasts without renewal (`state.lease`).
    pub lease: Duration,
}

/// Watches a running job: the progress display and the metrics implement it.
pub trait JobObserver: Send + Sync {
    /// The record, whenever it is saved.
    fn progress(&self, record: &JobRecord);

    /// One copy batch finished after `took`.
    fn batch(&self, _job: &str, _took: Duration) {}

    /// `worker` (this process) copied `rows` more rows of `job`.
    fn copied(&self, _job: &str, _worker: &str, _rows: u64) {}

    /// `worker` finished a chunk of `job`.
    fn chunk_done(&self, _job: &str, _worker: &str) {}

    /// Where the chunks of `job` stand.
    fn chunks(&self, _job: &str, _counts: ChunkCounts) {}

    /// The job stopped with `error`.
    fn failed(&self, _job: &str, _error: &Error) {}
}

/// Several observers as one.
impl JobObserver for Vec<Arc<dyn JobObserver>> {
    fn progress(&self, record: &JobRecord) {
        self.iter().for_each(|o| o.progress(record));
    }
    fn batch(&self, job: &str, took: Duration) {
        self.iter().for_each(|o| o.batch(job, took));
    }
    fn copied(&self, job: &str, worker: &str, rows: u64) {
        self.iter().for_each(|o| o.copied(job, worker, rows));
    }
    fn chunk_done(&self, job: &str, worker: &str) {
        self.iter().for_each(|o| o.chunk_done(job, worker));
    }
    fn chunks(&self, job: &str, counts: ChunkCounts) {
        self.iter().for_each(|o| o.chunks(job, counts));
    }
    fn failed(&self, job: &str, error: &Error) {
        self.iter().for_each(|o| o.failed(job, error));
    }
}

enum Flow {
    Next(Phase),
    End(RunEnd),
}

struct Engine<'a> {
    spec: &'a JobSpec,
    backend: Pipeline,
    store: Arc<dyn StateStore>,
    /// The job's lease: every record write is made under it.
    lease: &'a JobLease,
    record: JobRecord,
    options: RunOptions,
    throttle: Arc<Throttle>,
    /// Whether the control read last (by [`Engine::interrupted`]) asked for cutover.
    cutover_requested: bool,
    /// The phase the audit log last heard of: each change is one entry.
    audited_phase: Phase,
}

/// Runs the job from wherever its record says it is.
pub async fn run(
    spec: &JobSpec,
    mut backend: Pipeline,
    store: Arc<dyn StateStore>,
    file: &str,
    options: RunOptions,
) -> Result<RunEnd> {
    let claim_deadline = Instant::now() + options.claim_wait;
    let Some(lease) = JobLease::take(
        store.clone(),
        &spec.name,
        &options.worker,
        options.lease,
        options.claim_wait,
    )
    .await?
    else {
        return Ok(RunEnd::RunningElsewhere);
    };
    let ended = match claim(&mut backend, claim_deadline).await {
        Ok(true) => drive(spec, backend, store, file, options, &lease).await,
        Ok(false) => Ok(RunEnd::RunningElsewhere),
        Err(error) => Err(error),
    };
    lease.release().await;
    ended
}

/// Claims the job in its stores (for the holder of the job's lease), trying until
/// `deadline`: false when another process still holds it then.
async fn claim(backend: &mut Pipeline, deadline: Instant) -> Result<bool> {
    while !backend.try_claim().await? {
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(true)
}

/// Runs the claimed job under `lease`.
async fn drive(
    spec: &JobSpec,
    backend: Pipeline,
    store: Arc<dyn StateStore>,
    file: &str,
    options: RunOptions,
    lease: &JobLease,
) -> Result<RunEnd> {
    let mut record = match JobRecord::load(store.as_ref(), &spec.name).await? {
        Some(record) => record,
        None => JobRecord::new(&spec.name, spec.kind, file),
    };
    if record.kind != spec.kind {
        return Err(Error::Refused(format!(
            "job `{}` ran as a {} job; its file now says {}: abort it first, or give the new job another name",
            spec.name,
            record.kind.as_str(),
            spec.kind.as_str()
        )));
    }
    refuse_reshaping(spec, &mut record)?;
    record.file = file.to_string();
    // The process that ran the job before is gone (this one holds the job now): its
    // chunks go back at once rather than when their leases expire.
    if let Some(previous) = record.worker.replace(options.worker.clone()) {
        store.release_worker_chunks(&spec.name, &previous).await?;
    }
    let throttle = Arc::new(Throttle::new(
        spec.copy.rows_per_second,
        spec.copy.batch_size,
    ));
    let audited_phase = record.phase;
    let mut engine = Engine {
        spec,
        backend,
        store,
        lease,
        record,
        options,
        throttle,
        cutover_requested: false,
        audited_phase,
    };
    engine.drive().await
}

/// Whether the job has a forward slot that `catch_up.max_slot_wal` limits: from the
/// copy (when the slot began to hold WAL) until the cutover drops it.
pub fn holds_a_guarded_slot(spec: &JobSpec, record: &JobRecord) -> bool {
    spec.kind.cuts_over()
        && spec.catch_up.method != crate::job::CatchUpMethod::None
        && spec.catch_up.max_slot_wal.as_u64() > 0
        && record.cutover_at.is_none()
        && matches!(
            record.working_phase(),
            Phase::Copy | Phase::CatchUp | Phase::Verify | Phase::ReadyToCutover
        )
}

/// For a job standing still (paused, failed, waiting) with `record`: when its forward
/// slot holds more WAL than `catch_up.max_slot_wal`, drops the slot and returns the
/// error the job fails with, so that a forgotten job never fills the source's disk.
pub async fn drop_overflowing_slot(
    spec: &JobSpec,
    backend: &mut Pipeline,
    record: &JobRecord,
) -> Result<Option<Error>> {
    if !holds_a_guarded_slot(spec, record) {
        return Ok(None);
    }
    let held = backend.lag().await?.bytes;
    if !spec.catch_up.overflows(held) {
        return Ok(None);
    }
    backend.give_up_capture().await?;
    tracing::error!(job = %spec.name, held, "replication slot dropped: it held more WAL than catch_up.max_slot_wal");
    Ok(Some(spec.catch_up.slot_overflow(&spec.name, held)))
}

/// Refuses to go on with a job whose file changed, since it began writing data, in a
/// field that shapes the data, naming each change. Until then (a file being fixed
/// after a refusal) the shape is only recorded.
fn refuse_reshaping(spec: &JobSpec, record: &mut JobRecord) -> Result<()> {
    let now = spec.shape();
    let wrote_data = record.rows_copied > 0
        || !matches!(
            record.working_phase(),
            Phase::Pending | Phase::Expand | Phase::Copy
        );
    let started = match &record.shape {
        Some(started) if wrote_data => started,
        _ => {
            record.shape = Some(now);
            return Ok(());
        }
    };
    if record.phase.is_final() || *started == now {
        return Ok(());
    }
    let fields: std::collections::BTreeSet<&String> = started.keys().chain(now.keys()).collect();
    let changes: Vec<String> = fields
        .into_iter()
        .filter(|field| started.get(*field) != now.get(*field))
        .map(|field| {
            let show =
                |value: Option<&String>| value.map_or("(none)".to_string(), |v| format!("`{v}`"));
            format!(
                "{field} was {}, is now {}",
                show(started.get(field)),
                show(now.get(field))
            )
        })
        .collect();
    Err(Error::Refused(format!(
        "job `{}` started with another shape of its data; its file changed: {}. Revert the change, or abort the job (switchyard job abort {}) and give the changed file another job name",
        spec.name,
        changes.join("; "),
        spec.name
    )))
}

impl Engine<'_> {
    async fn drive(&mut self) -> Result<RunEnd> {
        let mut phase = self.record.working_phase();
        if phase == Phase::Done || phase == Phase::Aborted {
            return Ok(if phase == Phase::Done {
                RunEnd::Done
            } else {
                RunEnd::Aborted
            });
        }
        let mut retries = 0;
        let mut waits = 0;
        loop {
            let control = JobControl::load(self.store.as_ref(), &self.spec.name).await?;
            if control.abort_requested {
                return self.abort().await;
            }
            self.record.error = None;
            self.record.waiting = None;
            self.enter(phase).await?;
            crate::crash_point!(&format!("{}.start", phase.as_str()));
            let flow = match self.step(phase).await {
                Ok(flow) => {
                    crate::crash_point!(&format!("{}.end", phase.as_str()));
                    retries = 0;
                    waits = 0;
                    flow
                }
                Err(error) if error.is_resource_exhausted() => {
                    waits += 1;
                    let wait = RESOURCE_WAIT_FIRST
                        .saturating_mul(1 << waits.min(6))
                        .min(RESOURCE_WAIT_MAX);
                    tracing::warn!(job = %self.spec.name, %error, wait_ms = wait.as_millis() as u64, "the server has nothing free for the job; waiting");
                    self.record.waiting = Some(format!(
                        "for the server to free what the job needs: {error}"
                    ));
                    self.save().await?;
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.options.shutdown.changed() => {}
                    }
                    if *self.options.shutdown.borrow() {
                        return Ok(RunEnd::Stopped);
                    }
                    continue;
                }
                Err(error) if error.is_transient() && retries < TRANSIENT_RETRIES => {
                    retries += 1;
                    self.options.observer.failed(&self.spec.name, &error);
                    let wait = TRANSIENT_BACKOFF
                        .saturating_mul(1 << retries.min(5))
                        .min(TRANSIENT_BACKOFF_MAX);
                    tracing::warn!(job = %self.spec.name, %error, retry = retries, wait_ms = wait.as_millis() as u64, "transient error; reconnecting");
                    self.record.error = Some(format!(
                        "retrying ({retries}/{TRANSIENT_RETRIES}) after: {error}"
                    ));
                    self.save().await?;
                    tokio::time::sleep(wait).await;
                    // Reconnecting ends the sessions of other runs of the job: only
                    // while the lease is still this run's.
                    self.lease.confirm().await?;
                    match self.backend.reconnect().await {
                        Ok(true) => {}
                        Ok(false) => return Ok(RunEnd::RunningElsewhere),
                        Err(error) => {
                            tracing::warn!(job = %self.spec.name, %error, "cannot reconnect yet")
                        }
                    }
                    continue;
                }
                Err(error) => {
                    self.options.observer.failed(&self.spec.name, &error);
                    self.record.phase = phase;
                    self.record.fail(&error);
                    self.save().await?;
                    return Err(error);
                }
            };
            match flow {
                Flow::Next(next) => phase = next,
                Flow::End(end) => return Ok(end),
            }
        }
    }

    /// Saves the phase before it acts.
    async fn enter(&mut self, phase: Phase) -> Result<()> {
        self.record.phase = phase;
        self.record.resume_phase = None;
        tracing::info!(job = %self.spec.name, phase = phase.as_str(), "phase");
        self.save().await
    }

    async fn save(&mut self) -> Result<()> {
        if !self
            .record
            .save_under(self.store.as_ref(), self.lease.fence())
            .await?
        {
            return Err(self.lease.lost());
        }
        self.options.observer.progress(&self.record);
        if self.record.phase != self.audited_phase {
            let (outcome, why) = match (&self.record.phase, &self.record.error) {
                (Phase::Failed, Some(error)) => (Outcome::Failed, format!(": {error}")),
                _ => (Outcome::Ok, String::new()),
            };
            let detail = format!(
                "job {}: {} → {}{why}",
                self.spec.name,
                self.audited_phase.as_str(),
                self.record.phase.as_str()
            );
            crate::state::audit(
                self.store.as_ref(),
                Some(&self.spec.source.database),
                outcome,
                detail,
            )
            .await;
            self.audited_phase = self.record.phase;
        }
        Ok(())
    }

    async fn step(&mut self, phase: Phase) -> Result<Flow> {
        let copy = self.spec.kind.cuts_over();
        Ok(match phase {
            Phase::Pending => {
                self.backend.start_fresh().await?;
                self.store.forget_chunks(&self.spec.name).await?;
                Flow::Next(Phase::Expand)
            }
            Phase::Expand => {
                let created = self.backend.expand(self.catches_up()).await?;
                self.record.created_target |= created;
                Flow::Next(Phase::Copy)
            }
            Phase::Copy => match self.copy().await? {
                Some(end) => Flow::End(end),
                None if self.catches_up() => Flow::Next(Phase::CatchUp),
                None => Flow::Next(Phase::Verify),
            },
            Phase::CatchUp => match self.catch_up(Until::CaughtUp).await? {
                Some(end) => Flow::End(end),
                None => Flow::Next(Phase::Verify),
            },
            Phase::Verify => {
                self.verify().await?;
                if copy {
                    Flow::Next(Phase::ReadyToCutover)
                } else {
                    self.record.cutover_at.get_or_insert_with(Utc::now);
                    return self.contract_when_due().await;
                }
            }
            Phase::ReadyToCutover => {
                let control = JobControl::load(self.store.as_ref(), &self.spec.name).await?;
                if self.spec.cutover.mode == CutoverMode::Auto || control.cutover_requested {
                    Flow::Next(Phase::Cutover)
                } else if self.options.follow && self.catches_up() {
                    match self.catch_up(Until::CutoverRequested).await? {
                        Some(end) => Flow::End(end),
                        None => Flow::Next(Phase::Cutover),
                    }
                } else {
                    Flow::End(RunEnd::WaitingForCutover)
                }
            }
            Phase::Cutover => {
                if self.record.cutover_at.is_none() {
                    if let Some(end) = self.cutover().await? {
                        return Ok(Flow::End(end));
                    }
                }
                // The way back starts applying where its capture started, before the
                // switch (idempotent: a resumed run passes here again).
                if let Some(reverse) = self.backend.reverse().await? {
                    reverse.expand(true).await?;
                }
                return self.contract_when_due().await;
            }
            Phase::Contract => {
                if self.spec.fills_from_changes() {
                    // A backfill fills what was written until its contract.
                    while !self.apply_pass().await?.drained {}
                }
                self.backend.contract().await?;
                JobControl::update(self.store.as_ref(), &self.spec.name, |c| {
                    c.contract_requested = false
                })
                .await?;
                Flow::Next(Phase::Done)
            }
            Phase::Done => Flow::End(RunEnd::Done),
            Phase::Paused | Phase::Failed | Phase::Aborted => {
                unreachable!("never entered as a working phase")
            }
        })
    }

    /// Whether the job applies the source's changes: a copy into its target, a
    /// backfill by filling again the rows they touched.
    fn catches_up(&self) -> bool {
        self.spec.catch_up.method != crate::job::CatchUpMethod::None
    }

    /// One pass of applying changes, counted in the record.
    async fn apply_pass(&mut self) -> Result<crate::engine::progress::AppliedChanges> {
        let pass = self.backend.apply_changes(Some(CATCH_UP_BATCH)).await?;
        self.record.changes_applied += pass.changes;
        Ok(pass)
    }

    /// Between batches: the shutdown signal, and the control (pause, throttle, abort).
    /// Returns why to stop, if anything says so.
    async fn interrupted(&mut self) -> Result<Option<Interrupt>> {
        if *self.options.shutdown.borrow() {
            return Ok(Some(Interrupt::Shutdown));
        }
        self.lease.check()?;
        let control = JobControl::load(self.store.as_ref(), &self.spec.name).await?;
        self.cutover_requested = control.cutover_requested;
        self.throttle.set_rate(
            control
                .rows_per_second
                .unwrap_or(self.spec.copy.rows_per_second),
        );
        Ok(if control.abort_requested {
            Some(Interrupt::Abort)
        } else if control.paused || control.outside_window {
            Some(Interrupt::Pause)
        } else {
            None
        })
    }

    /// Handles an interruption in `phase`: waits out a pause (then returns `None` to go
    /// on), or returns how the run ends.
    async fn handle(&mut self, interrupt: Interrupt, phase: Phase) -> Result<Option<RunEnd>> {
        match interrupt {
            Interrupt::Shutdown => {
                self.record.phase = phase;
                self.save().await?;
                Ok(Some(RunEnd::Stopped))
            }
            Interrupt::Abort => self.abort().await.map(Some),
            Interrupt::Pause => {
                self.record.phase = Phase::Paused;
                self.record.resume_phase = Some(phase);
                self.save().await?;
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(CONTROL_INTERVAL) => {}
                        _ = self.options.shutdown.changed() => {}
                    }
                    self.guard_slot().await?;
                    match self.interrupted().await? {
                        Some(Interrupt::Pause) => continue,
                        Some(other) => return Box::pin(self.handle(other, phase)).await,
                        None => break,
                    }
                }
                self.enter(phase).await?;
                Ok(None)
            }
        }
    }

    /// While the job stands still: fails it when its slot held too much WAL
    /// (see [`drop_overflowing_slot`]).
    async fn guard_slot(&mut self) -> Result<()> {
        match drop_overflowing_slot(self.spec, &mut self.backend, &self.record).await? {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    async fn abort(&mut self) -> Result<RunEnd> {
        let after_cutover = self.record.cutover_at.is_some() && self.spec.kind.cuts_over();
        if after_cutover {
            self.swap_back().await?;
            self.backend.forget().await?;
        } else {
            self.backend.abort(self.record.created_target).await?;
        }
        self.store.forget_chunks(&self.spec.name).await?;
        self.record.phase = Phase::Aborted;
        self.record.resume_phase = None;
        self.save().await?;
        Ok(RunEnd::Aborted)
    }

    /// The copy (or in-place fill) phase: tasks leasing chunks (key ranges), batches
    /// throttled; other processes may lease chunks of the job too ([`help`]).
    async fn copy(&mut self) -> Result<Option<RunEnd>> {
        loop {
            let ranges = self.backend.ranges(self.chunks()).await?;
            self.record.rows_total = self
                .backend
                .estimate_rows()
                .await?
                .max(ranges.iter().map(|r| r.rows).sum());
            self.record.rows_copied = ranges.iter().map(|r| r.rows).sum();
            let chunks: Vec<(i32, bool)> =
                ranges.iter().map(|r| (r.range.number, r.done)).collect();
            self.store.add_chunks(&self.spec.name, &chunks).await?;
            if self.chunk_counts().await?.all_done() {
                return Ok(None);
            }
            match self.copy_chunks(&ranges).await? {
                None => return Ok(None),
                Some(interrupt) => {
                    if let Some(end) = self.handle(interrupt, Phase::Copy).await? {
                        return Ok(Some(end));
                    }
                }
            }
        }
    }

    /// Rows copied by every worker, as the sink holds them.
    async fn rows_copied_everywhere(&mut self) -> Result<u64> {
        let ranges = self.backend.ranges(self.chunks()).await?;
        Ok(ranges.iter().map(|r| r.rows).sum())
    }

    /// How many chunks the job's copy plans.
    fn chunks(&self) -> usize {
        self.spec.copy.chunks(self.backend.sink.fences_copy())
    }

    /// Where the job's chunks stand, told to the observer too.
    async fn chunk_counts(&self) -> Result<ChunkCounts> {
        let counts = ChunkCounts::of(&self.store.chunks(&self.spec.name).await?);
        self.options.observer.chunks(&self.spec.name, counts);
        Ok(counts)
    }

    /// Copies until every chunk is done, here or by other workers (`None`), or
    /// something interrupts.
    async fn copy_chunks(&mut self, ranges: &[RangeProgress]) -> Result<Option<Interrupt>> {
        let crew = Arc::new(Crew::new(
            &self.spec.name,
            &self.options.worker,
            self.store.clone(),
            self.options.lease,
            ranges,
        ));
        let pending = ranges.iter().filter(|r| !r.done).count().max(1);
        let pacing = self.pacing();
        let count = self.spec.copy.concurrency.min(pending);
        let mut tasks = spawn_crew(&mut self.backend, &crew, pacing, count).await?;
        let waited_before = self.record.throttle_wait_seconds;
        let started = Instant::now();
        let start_rows = self.record.rows_copied;
        // Rows copied by every worker, as the sink had them at the last look, less
        // those this process had copied then.
        let mut others = start_rows;
        let mut ticks = 0u64;
        let mut interrupt = None;
        let mut failure = None;
        loop {
            tokio::select! {
                ended = tasks.join_next() => if !crew.ended(ended, &mut failure) { break },
                _ = tokio::time::sleep(CONTROL_INTERVAL) => {
                    ticks += 1;
                    if interrupt.is_none() {
                        interrupt = self.interrupted().await?;
                        if interrupt.is_some() { crew.stop.store(true, Ordering::SeqCst); }
                    }
                    // Replicas falling behind: hold the copy until they catch up.
                    let replica_lag = self.backend.replica_lag().await?;
                    let behind = replica_lag > self.spec.copy.max_lag.as_secs_f64();
                    if behind != crew.hold.swap(behind, Ordering::SeqCst) {
                        tracing::warn!(job = %self.spec.name, replica_lag, held = behind, "replica lag against copy.max_lag");
                    }
                    if ticks % PROGRESS_TICKS == 0 {
                        let mine = crew.copied.load(Ordering::Relaxed);
                        others = self.rows_copied_everywhere().await?.saturating_sub(mine);
                        self.chunk_counts().await?;
                    }
                    self.record.throttle_wait_seconds = waited_before + crew.waited_micros.load(Ordering::Relaxed) as f64 / 1e6;
                    self.progress(others + crew.copied.load(Ordering::Relaxed), start_rows, started);
                    self.save().await?;
                }
            }
        }
        self.record.throttle_wait_seconds =
            waited_before + crew.waited_micros.load(Ordering::Relaxed) as f64 / 1e6;
        if failure.is_none() {
            let all = self.rows_copied_everywhere().await?;
            self.progress(all, start_rows, started);
            self.chunk_counts().await?;
        }
        self.save().await?;
        match failure {
            Some(error) => Err(error),
            None => Ok(interrupt),
        }
    }

    fn pacing(&self) -> Pacing {
        Pacing {
            observer: self.options.observer.clone(),
            throttle: self.throttle.clone(),
            batch_size: self.spec.copy.batch_size,
            max_lag: self.spec.copy.max_lag,
        }
    }

    fn progress(&mut self, copied: u64, start_rows: u64, started: Instant) {
        self.record.rows_copied = copied;
        // The planner's estimate can fall short of a table that grew meanwhile.
        self.record.rows_total = self.record.rows_total.max(copied);
        let seconds = started.elapsed().as_secs_f64();
        if seconds > 0.0 && copied > start_rows {
            self.record.rows_per_second = (copied - start_rows) as f64 / seconds;
        }
        let left = self.record.rows_total.saturating_sub(copied) as f64;
        self.record.eta_seconds =
            (self.record.rows_per_second > 0.0).then(|| left / self.record.rows_per_second);
    }

    /// Applies captured changes until `until` holds. The control (pause, abort, a
    /// cutover request) is read at most every [`CONTROL_INTERVAL`], and whenever a pass
    /// found nothing to apply.
    async fn catch_up(&mut self, until: Until) -> Result<Option<RunEnd>> {
        let max_lag = self.spec.cutover.max_lag;
        let mut last_save = Instant::now();
        let mut last_check: Option<Instant> = None;
        loop {
            if last_check.is_none_or(|at| at.elapsed() >= CONTROL_INTERVAL) {
                last_check = Some(Instant::now());
                if let Some(interrupt) = self.interrupted().await? {
                    if let Some(end) = self.handle(interrupt, self.record.phase).await? {
                        return Ok(Some(end));
                    }
                }
                if until == Until::CutoverRequested && self.cutover_requested {
                    self.save().await?;
                    return Ok(None);
                }
            }
            let pass_started = Instant::now();
            let pass = self.apply_pass().await?;
            crate::crash_point!("catch_up.after_pass");
            let applied = pass.changes;
            let lag = self.backend.lag().await?;
            tracing::debug!(job = %self.spec.name, applied, drained = pass.drained, lag_seconds = lag.seconds, "catch-up pass");
            self.record.lag_seconds = lag.seconds;
            self.record.lag_bytes = lag.bytes;
            if self.spec.catch_up.overflows(lag.bytes) {
                self.backend.give_up_capture().await?;
                return Err(self.spec.catch_up.slot_overflow(&self.spec.name, lag.bytes));
            }
            if last_save.elapsed() >= CONTROL_INTERVAL {
                self.save().await?;
                last_save = Instant::now();
            }
            // Caught up: what was there is applied, and what came since is young enough.
            if until == Until::CaughtUp && pass.drained && lag.seconds <= max_lag.as_secs_f64() {
                self.save().await?;
                return Ok(None);
            }
            if applied == 0 {
                last_check = None;
                tokio::time::sleep(CONTROL_INTERVAL / 5).await;
            } else if pass.drained {
                // Caught up: gather changes for a moment rather than apply each alone.
                let rest = CATCH_UP_PASS_INTERVAL.saturating_sub(pass_started.elapsed());
                tokio::time::sleep(rest).await;
            }
        }
    }

    async fn verify(&mut self) -> Result<()> {
        let checksum = match self.spec.verify.method {
            VerifyMethod::None => return Ok(()),
            VerifyMethod::Count => false,
            VerifyMethod::Checksum => true,
        };
        let ranges: Vec<_> = self
            .backend
            .ranges(self.chunks())
            .await?
            .into_iter()
            .map(|r| r.range)
            .collect();
        let suspects = self.backend.verify(&ranges, checksum, false, false).await?;
        if suspects.is_empty() {
            return Ok(());
        }
        self.record.verify_mismatches += suspects.len() as u64;
        // Writes went on while comparing: check the differing chunks again, each while
        // writes wait for a moment, after the last changes were applied.
        tracing::info!(job = %self.spec.name, chunks = suspects.len(), "chunks differ; checking them again consistently");
        let chunks: Vec<_> = suspects.into_iter().map(|m| m.range).collect();
        let drain = self.catches_up();
        let mismatches = self.backend.verify(&chunks, checksum, true, drain).await?;
        if mismatches.is_empty() {
            return Ok(());
        }
        Err(Error::VerifyFailed {
            job: self.spec.name.clone(),
            ranges: mismatches.into_iter().map(|m| m.detail).collect(),
        })
    }

    /// Waits for the lag gate, then cuts over, retrying when the writes lock is busy.
    async fn cutover(&mut self) -> Result<Option<RunEnd>> {
        if let Some(report) = self.backend.completed_cutover().await? {
            return self.cut_over(report).await.map(|()| None);
        }
        if self.catches_up() {
            if let Some(end) = self.catch_up(Until::CaughtUp).await? {
                return Ok(Some(end));
            }
            self.catch_up_tail().await?;
        }
        let mut attempt = 0;
        let report = loop {
            attempt += 1;
            self.lease.confirm().await?;
            match self.backend.cutover().await {
                Ok(report) => break report,
                Err(Error::LockTimeout { .. }) if attempt < CUTOVER_ATTEMPTS => {
                    let jitter = Duration::from_millis(
                        100 * attempt as u64 + (Utc::now().timestamp_subsec_millis() % 100) as u64,
                    );
                    tracing::warn!(job = %self.spec.name, attempt, "the source is busy; cutover retries");
                    tokio::time::sleep(jitter).await;
                    if self.catches_up() {
                        self.catch_up(Until::CaughtUp).await?;
                        self.catch_up_tail().await?;
                    }
                }
                Err(Error::LockTimeout { database, message }) => {
                    // Not left to the transient retries as well: they would multiply the
                    // attempts.
                    return Err(Error::Refused(format!(
                        "job `{}`: cutover gave up after {CUTOVER_ATTEMPTS} attempts, the source stayed busy (database `{database}`: {message}); nothing was switched: run `switchyard job cutover {}` again when it is quieter",
                        self.spec.name, self.spec.name
                    )));
                }
                Err(error) => return Err(error),
            }
        };
        self.cut_over(report).await?;
        Ok(None)
    }

    /// Saves that the job cut over.
    async fn cut_over(&mut self, report: CutoverReport) -> Result<()> {
        self.record.changes_applied += report.changes_drained;
        self.record.writes_blocked_ms = Some(report.writes_blocked.as_millis() as u64);
        self.record.cutover_at = Some(Utc::now());
        self.record.alias = report.alias;
        self.record.lag_seconds = 0.0;
        JobControl::update(self.store.as_ref(), &self.spec.name, |c| {
            c.cutover_requested = false
        })
        .await?;
        self.save().await
    }

    /// Just before cutover: applies until a pass finds only a few changes, so that what
    /// is left to drain while writes are blocked is small.
    async fn catch_up_tail(&mut self) -> Result<()> {
        for _ in 0..CUTOVER_TAIL_PASSES {
            let pass = self.apply_pass().await?;
            if pass.drained && pass.changes < CUTOVER_TAIL_CHANGES {
                break;
            }
        }
        Ok(())
    }

    /// Contract now if it is due or asked for; otherwise say when. When following a
    /// job that cut over, the writes made to the new table are carried back to the old
    /// one as they come until then (so an abort has little left to drain); a backfill
    /// that catches up goes on filling the rows written meanwhile.
    async fn contract_when_due(&mut self) -> Result<Flow> {
        let from = self.record.cutover_at.unwrap_or_else(Utc::now);
        let due = match self.spec.contract.after {
            ContractAfter::Manual => None,
            ContractAfter::Delay(delay) => {
                Some(from + chrono::Duration::from_std(delay).unwrap_or(chrono::TimeDelta::MAX))
            }
        };
        let follows = self.options.follow && self.record.cutover_at.is_some();
        loop {
            let control = JobControl::load(self.store.as_ref(), &self.spec.name).await?;
            if control.contract_requested || due.is_some_and(|due| due <= Utc::now()) {
                return Ok(Flow::Next(Phase::Contract));
            }
            if !follows {
                self.save().await?;
                return Ok(Flow::End(RunEnd::WaitingForContract(due)));
            }
            if let Some(interrupt) = self.interrupted().await? {
                if let Some(end) = self.handle(interrupt, self.record.phase).await? {
                    return Ok(Flow::End(end));
                }
            }
            let started = Instant::now();
            let fills = self.spec.fills_from_changes();
            let followed = match fills {
                true => Some(&mut self.backend),
                false => self.backend.reverse().await?,
            };
            let Some(followed) = followed else {
                self.save().await?;
                return Ok(Flow::End(RunEnd::WaitingForContract(due)));
            };
            let mut applied = 0;
            while started.elapsed() < CONTROL_INTERVAL {
                let pass = followed.apply_changes(Some(CATCH_UP_BATCH)).await?;
                applied += pass.changes;
                if pass.drained {
                    tokio::time::sleep(CONTROL_INTERVAL / 5).await;
                }
            }
            if fills {
                self.record.changes_applied += applied;
            }
        }
    }

    /// After a cutover: the way back applies the writes made to the new table since,
    /// then cuts over onto the old table, which so takes its place back with every
    /// write. Resumable: a cutover of the way back that committed is not repeated.
    async fn swap_back(&mut self) -> Result<()> {
        let job = self.spec.name.clone();
        let Some(reverse) = self.backend.reverse().await? else {
            return Err(Error::Refused(format!(
                "job `{job}` has no way back: the writes made to the new table or collection since its cutover cannot be carried to the old one (it cut over without change capture, `catch_up.method = \"none\"`, or its store does not capture them back yet); nothing was changed. The old data is kept until contract"
            )));
        };
        if reverse.completed_cutover().await?.is_none() {
            reverse.expand(true).await?;
            // The backlog before writes stop; what comes meanwhile drains in the switch.
            while !reverse.apply_changes(Some(CATCH_UP_BATCH)).await?.drained {}
            let mut attempt = 0;
            let report = loop {
                attempt += 1;
                match reverse.cutover().await {
                    Ok(report) => break report,
                    Err(Error::LockTimeout { .. }) if attempt < CUTOVER_ATTEMPTS => {
                        tracing::warn!(job = %job, attempt, "the new table is busy; swapping back retries");
                        tokio::time::sleep(Duration::from_millis(100 * attempt as u64)).await;
                    }
                    Err(error) => return Err(error),
                }
            };
            self.record.changes_applied += report.changes_drained;
            tracing::info!(job = %job, blocked_ms = report.writes_blocked.as_millis() as u64, "swapped back");
        }
        self.backend.close_reverse().await
    }
}

/// How long catch-up goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Until {
    /// Until a pass drains what it found and the lag is under `cutover.max_lag`.
    CaughtUp,
    /// Until cutover is asked for (following the source while waiting for it).
    CutoverRequested,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interrupt {
    Shutdown,
    Pause,
    Abort,
}
