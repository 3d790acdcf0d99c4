//! `switchyard serve`: runs the jobs of the jobs folder on their schedules and inside
//! their windows, resumes the ones a previous run left unfinished, acts on operators'
//! requests, and serves the HTTP API and `/metrics`.
//!
//! Invariants:
//! - A job runs in one place at a time: each run takes the job's lease in the state
//!   store, then claims the job in its databases (several `serve` processes may share a
//!   state store; the others help with its copy).
//! - The decision to start a job is a pure function of its file, record, control and
//!   the time ([`decide`]), so schedules and windows are tested with a given clock.
//! - SIGTERM stops every job at a batch boundary with its checkpoint written; the next
//!   `serve` resumes them.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::engine::{self, JobControl, JobObserver, JobRecord, Phase, RunOptions};
use crate::error::Result;
use crate::job::{self, parse_window, CatchUpMethod, ContractAfter, CutoverMode, JobSpec};
use crate::metrics::Metrics;
use crate::server::{serve_api, ApiState};
use crate::state::{self, StateStore};

/// How often the scheduler looks at the jobs.
const TICK: Duration = Duration::from_secs(1);
/// How often (in ticks) the databases' migration histories are read for the metrics.
const MIGRATION_METRICS_TICKS: u64 = 30;
/// How often (in ticks) the slots of jobs that stand still are measured against
/// `catch_up.max_slot_wal`.
const SLOT_CHECK_TICKS: u64 = 10;

/// The time, given to the scheduler so that tests can set it.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// Whether `now` falls in a daily window `HH:MM-HH:MM` (UTC; it may wrap midnight).
pub fn in_window(window: &str, now: DateTime<Utc>) -> bool {
    let Ok((start, end)) = parse_window(window) else {
        return false;
    };
    let minute = now.hour() * 60 + now.minute();
    if start < end {
        (start..end).contains(&minute)
    } else {
        minute >= start || minute < end
    }
}

/// Whether the cron `schedule` has an occurrence in `(since, now]`.
pub fn is_due(schedule: &str, since: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    schedule
        .parse::<croner::Cron>()
        .ok()
        .and_then(|cron| cron.find_next_occurrence(&since, false).ok())
        .is_some_and(|next| next <= now)
}

/// Whether to start (or resume) a job now. `since`: when the scheduler last looked;
/// `digest`: the job file's now (see [`file_digest`]).
pub fn decide(
    spec: &JobSpec,
    record: Option<&JobRecord>,
    control: &JobControl,
    digest: &str,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> bool {
    if control.abort_requested {
        return record.is_some_and(|r| !r.phase.is_final());
    }
    if spec.window.as_deref().is_some_and(|w| !in_window(w, now)) {
        return false;
    }
    let Some(record) = record else {
        return spec
            .schedule
            .as_deref()
            .is_none_or(|s| is_due(s, since, now));
    };
    match record.phase {
        Phase::Done | Phase::Aborted => false,
        // A failed job waits for `job resume` or a change to its file.
        Phase::Failed => {
            control.retry_requested
                || record
                    .file_digest
                    .as_deref()
                    .is_some_and(|failed_with| failed_with != digest)
        }
        Phase::Paused => !control.paused,
        // Serve keeps a job with catch-up applying changes while it waits for cutover.
        Phase::ReadyToCutover => {
            control.cutover_requested
                || spec.cutover.mode == CutoverMode::Auto
                || spec.catch_up.method != CatchUpMethod::None
        }
        Phase::Cutover | Phase::Verify if record.cutover_at.is_some() => {
            let due = match spec.contract.after {
                ContractAfter::Manual => false,
                ContractAfter::Delay(delay) => record.cutover_at.is_some_and(|at| {
                    at + chrono::Duration::from_std(delay).unwrap_or(chrono::TimeDelta::MAX) <= now
                }),
            };
            // A backfill that catches up goes on filling the rows written until then.
            control.contract_requested || due || spec.fills_from_changes()
        }
        _ => true,
    }
}

/// Runs the daemon until SIGTERM or Ctrl-C, as worker `worker` among the processes
/// sharing the state store.
pub async fn serve(config: Config, clock: Arc<dyn Clock>, worker: String) -> Result<()> {
    let store = state::open(&config.state.url).await?;
    let metrics = Arc::new(Metrics::new());
    let shutdown = crate::shutdown::signal();
    let config = Arc::new(config);
    let api = ApiState {
        config: config.clone(),
        store: store.clone(),
        metrics: metrics.clone(),
    };
    let bound = serve_api(api).await?;
    tracing::info!(%bound, "serving the HTTP API and /metrics");
    let scheme = if config.server.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    eprintln!(
        "switchyard serve: {scheme}://{bound} (jobs from {}, worker {worker})",
        config.jobs.dir.display()
    );

    let mut since = clock.now();
    let mut running: HashMap<String, JoinHandle<()>> = HashMap::new();
    // Jobs due but not running (serve.max_jobs), with when they became due.
    let mut line: HashMap<String, DateTime<Utc>> = HashMap::new();
    // The live settings of each job's file as last seen.
    let mut live: HashMap<String, LiveSettings> = HashMap::new();
    let mut reported: HashSet<String> = HashSet::new();
    let mut stop = shutdown.clone();
    for tick in 0u64.. {
        if tick % MIGRATION_METRICS_TICKS == 0 {
            observe_migrations(&config, &metrics).await;
        }
        let now = clock.now();
        running.retain(|_, task| !task.is_finished());
        let mut due = Vec::new();
        for (file, spec, digest) in job_files(&config, &mut reported) {
            let control = JobControl::load(store.as_ref(), &spec.name).await?;
            let record = JobRecord::load(store.as_ref(), &spec.name).await?;
            if let Some(window) = &spec.window {
                let outside = !in_window(window, now);
                if record.is_some() && control.outside_window != outside {
                    JobControl::update(store.as_ref(), &spec.name, move |c| {
                        c.outside_window = outside
                    })
                    .await?;
                }
            }
            if running.contains_key(&spec.name) {
                apply_live_changes(store.as_ref(), &spec, &mut live).await?;
                continue;
            }
            live.insert(spec.name.clone(), LiveSettings::of(&spec));
            // Jobs that wait (for cutover, contract, their window) stay visible too.
            if let Some(record) = &record {
                metrics.progress(record);
                if tick % SLOT_CHECK_TICKS == 0 && engine::holds_a_guarded_slot(&spec, record) {
                    if let Err(error) = guard_slot(&config, &spec, record, &store, &metrics).await {
                        tracing::debug!(job = %spec.name, %error, "cannot measure the job's slot");
                    }
                }
            }
            if !decide(&spec, record.as_ref(), &control, &digest, since, now) {
                line.remove(&spec.name);
                continue;
            }
            let since_due = *line.entry(spec.name.clone()).or_insert(now);
            due.push((
                !control.abort_requested,
                since_due,
                file,
                spec,
                digest,
                record,
                control,
            ));
        }
        // Aborts first, then in the order the jobs became due, then by name.
        due.sort_by(|a, b| (a.0, a.1, &a.3.name).cmp(&(b.0, b.1, &b.3.name)));
        for (_, _, file, spec, digest, record, control) in due {
            if running.len() >= config.serve.max_jobs {
                let reason = format!(
                    "in line: {} jobs run (serve.max_jobs = {})",
                    running.len(),
                    config.serve.max_jobs
                );
                wait_in_line(store.as_ref(), &metrics, &spec, &file, record, reason).await?;
                continue;
            }
            line.remove(&spec.name);
            if control.retry_requested {
                JobControl::update(store.as_ref(), &spec.name, |c| c.retry_requested = false)
                    .await?;
            }
            let task = tokio::spawn(run_job(
                config.clone(),
                spec.clone(),
                (file, digest),
                store.clone(),
                (metrics.clone(), worker.clone()),
                shutdown.clone(),
            ));
            running.insert(spec.name.clone(), task);
        }
        since = now;
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = stop.changed() => break,
        }
    }
    for (_, task) in running {
        let _ = task.await;
    }
    Ok(())
}

/// The settings of a job file that a running job takes at its next batch: changed in
/// the file, they are passed on as an operator's request would be (the later of the
/// two wins).
#[derive(Debug, Clone, PartialEq)]
struct LiveSettings {
    rows_per_second: u64,
    cutover: CutoverMode,
}

impl LiveSettings {
    fn of(spec: &JobSpec) -> LiveSettings {
        LiveSettings {
            rows_per_second: spec.copy.rows_per_second,
            cutover: spec.cutover.mode,
        }
    }
}

/// Passes the changes to a running job's live settings on to its control.
async fn apply_live_changes(
    store: &dyn StateStore,
    spec: &JobSpec,
    live: &mut HashMap<String, LiveSettings>,
) -> Result<()> {
    let now = LiveSettings::of(spec);
    let Some(before) = live.insert(spec.name.clone(), now.clone()) else {
        return Ok(());
    };
    if before.rows_per_second != now.rows_per_second {
        tracing::info!(job = %spec.name, rows_per_second = now.rows_per_second, "throttle changed in the job file");
        let rate = now.rows_per_second;
        JobControl::update(store, &spec.name, move |c| c.rows_per_second = Some(rate)).await?;
    }
    if before.cutover != now.cutover && now.cutover == CutoverMode::Auto {
        tracing::info!(job = %spec.name, "cutover mode changed to auto in the job file");
        JobControl::update(store, &spec.name, |c| c.cutover_requested = true).await?;
    }
    Ok(())
}

/// Measures the slot of a job not running here against `catch_up.max_slot_wal`
/// ([`engine::drop_overflowing_slot`]); fails the job when its slot was dropped.
async fn guard_slot(
    config: &Config,
    spec: &JobSpec,
    record: &JobRecord,
    store: &Arc<dyn StateStore>,
    metrics: &Metrics,
) -> Result<()> {
    let mut pipeline = crate::backend::open_job(config, spec, store).await?;
    let Some(error) = engine::drop_overflowing_slot(spec, &mut pipeline, record).await? else {
        return Ok(());
    };
    metrics.failed(&spec.name, &error);
    let mut record = record.clone();
    record.fail(&error);
    record.save(store.as_ref()).await?;
    metrics.progress(&record);
    Ok(())
}

/// Shows that a due job waits in line for a free run: in its record (a new one
/// in `pending` for a job that never ran) and in the metrics.
async fn wait_in_line(
    store: &dyn StateStore,
    metrics: &Metrics,
    spec: &JobSpec,
    file: &std::path::Path,
    record: Option<JobRecord>,
    reason: String,
) -> Result<()> {
    let mut record = record
        .unwrap_or_else(|| JobRecord::new(&spec.name, spec.kind, &file.display().to_string()));
    if record.waiting.as_deref() != Some(reason.as_str()) {
        record.waiting = Some(reason);
        record.save(store).await?;
    }
    metrics.progress(&record);
    Ok(())
}

/// Reads each configured PostgreSQL database's migration history into the metrics; a
/// database that cannot be read is logged and tried again later.
async fn observe_migrations(config: &Config, metrics: &Metrics) {
    for (name, database) in &config.databases {
        if database.kind != crate::config::DatabaseKind::Postgresql {
            continue;
        }
        let history = async {
            crate::migrate::open_target(config, name)
                .await?
                .history()
                .await
        }
        .await;
        match history {
            Ok(history) => metrics.observe_migrations(name, &history),
            Err(error) => {
                tracing::warn!(database = %name, %error, "cannot read the migration history for metrics")
            }
        }
    }
}

/// The SHA-256 of a job file's text, in hex.
pub fn file_digest(text: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text))
}

/// Every valid job file of the jobs folder, with its digest; an invalid one is logged
/// once.
fn job_files(config: &Config, reported: &mut HashSet<String>) -> Vec<(PathBuf, JobSpec, String)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(&config.jobs.dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .filter_map(|file| {
            // One read gives the spec and the digest.
            let text = std::fs::read_to_string(&file).map_err(|e| {
                crate::error::Error::InvalidFiles(vec![crate::error::FileProblem {
                    file: file.clone(),
                    reason: format!("cannot read: {e}"),
                }])
            });
            let spec = text.and_then(|text| {
                let spec = job::load_text(&file, &text, config)?;
                Ok((spec, file_digest(text.as_bytes())))
            });
            match spec {
                Ok((spec, digest)) => Some((file, spec, digest)),
                Err(error) => {
                    if reported.insert(error.to_string()) {
                        tracing::warn!(%error, "job file skipped");
                    }
                    None
                }
            }
        })
        .collect()
}

/// How long a job that cannot start for a transient reason (its server is down) waits
/// before its first retry; each retry doubles it, up to [`START_RETRY_MAX`].
const START_RETRY_FIRST: Duration = Duration::from_secs(1);
const START_RETRY_MAX: Duration = Duration::from_secs(300);

/// Runs one job to its end, or, when another process runs it, copies chunks of it
/// while it copies ([`engine::help`]). A job that cannot start for a transient reason is
/// tried again with back-off, saying so; one that fails is recorded `failed` with its
/// error and the digest of its file, so that `serve` starts it again only once the
/// file changes or `job resume` is asked. A helper's failure, and a run's that lost the
/// job's lease, are only logged: the job is the running process's to record.
async fn run_job(
    config: Arc<Config>,
    spec: JobSpec,
    (file, digest): (PathBuf, String),
    store: Arc<dyn StateStore>,
    (metrics, worker): (Arc<Metrics>, String),
    mut shutdown: watch::Receiver<bool>,
) {
    let mut delay = START_RETRY_FIRST;
    let error = loop {
        let backend = match crate::backend::open_job(&config, &spec, &store).await {
            Ok(backend) => backend,
            Err(error) if error.is_transient() => {
                tracing::warn!(job = %spec.name, %error, retry_in = ?delay, "the job cannot start yet; trying again");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return,
                }
                delay = (delay * 2).min(START_RETRY_MAX);
                continue;
            }
            Err(error) => {
                metrics.failed(&spec.name, &error);
                break error;
            }
        };
        let options = || RunOptions {
            shutdown: shutdown.clone(),
            observer: metrics.clone(),
            claim_wait: Duration::ZERO,
            follow: true,
            worker: worker.clone(),
            lease: config.state.lease,
        };
        let ran = engine::run(
            &spec,
            backend,
            store.clone(),
            &file.display().to_string(),
            options(),
        )
        .await;
        match ran {
            Ok(engine::RunEnd::RunningElsewhere) => {
                let helped = async {
                    let helper = crate::backend::open_helper(&config, &spec, &store).await?;
                    engine::help(&spec, helper, store.clone(), options()).await
                };
                if let Err(error) = helped.await {
                    tracing::warn!(job = %spec.name, %error, "cannot copy chunks of the job another worker runs");
                }
                return;
            }
            Ok(end) => {
                tracing::info!(job = %spec.name, ?end, "job stopped");
                return;
            }
            Err(error @ crate::error::Error::JobLeaseLost { .. }) => {
                // The job is the new holder's to record.
                tracing::error!(job = %spec.name, %error, "job left to the worker that holds it now");
                return;
            }
            Err(error) => break error,
        }
    };
    tracing::error!(job = %spec.name, %error, "job failed; it starts again once its file changes, or on `switchyard job resume {}`", spec.name);
    if let Err(not_recorded) = record_failure(store.as_ref(), &spec, &file, digest, &error).await {
        tracing::error!(job = %spec.name, error = %not_recorded, "cannot record the job's failure");
    }
}

/// Records `error` as the job's failure (creating its record when it failed before
/// its first phase), with the digest of the file it failed with.
async fn record_failure(
    store: &dyn StateStore,
    spec: &JobSpec,
    file: &std::path::Path,
    digest: String,
    error: &crate::error::Error,
) -> Result<()> {
    let mut record = match JobRecord::load(store, &spec.name).await? {
        Some(record) => record,
        None => JobRecord::new(&spec.name, spec.kind, &file.display().to_string()),
    };
    if record.phase != Phase::Failed {
        record.fail(error);
    }
    record.file_digest = Some(digest);
    record.save(store).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(hour: u32, minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 21, hour, minute, 0).unwrap()
    }

    fn spec(extra: &str) -> JobSpec {
        job::parse(&format!(
            "name = \"j\"\nkind = \"backfill\"\n{extra}\n[source]\ndatabase = \"pg\"\ntable = \"t\"\n[transform]\ncolumns = {{ a = \"1\" }}\n"
        ))
        .unwrap()
    }

    #[test]
    fn windows_may_wrap_midnight() {
        assert!(in_window("01:00-05:00", at(1, 0)));
        assert!(in_window("01:00-05:00", at(4, 59)));
        assert!(!in_window("01:00-05:00", at(5, 0)));
        assert!(in_window("22:00-02:00", at(23, 30)));
        assert!(in_window("22:00-02:00", at(1, 59)));
        assert!(!in_window("22:00-02:00", at(12, 0)));
    }

    #[test]
    fn a_schedule_is_due_once_its_time_passed() {
        assert!(is_due("0 3 * * *", at(2, 59), at(3, 0)));
        assert!(!is_due("0 3 * * *", at(3, 0), at(3, 1)));
        assert!(!is_due("0 3 * * *", at(1, 0), at(2, 59)));
    }

    #[test]
    fn new_jobs_start_on_schedule_and_inside_their_window() {
        let control = JobControl::default();
        assert!(decide(&spec(""), None, &control, "d", at(9, 0), at(9, 0)));
        let scheduled = spec("schedule = \"0 3 * * *\"");
        assert!(!decide(
            &scheduled,
            None,
            &control,
            "d",
            at(2, 0),
            at(2, 59)
        ));
        assert!(decide(&scheduled, None, &control, "d", at(2, 59), at(3, 0)));
        let windowed = spec("window = \"01:00-05:00\"");
        assert!(!decide(
            &windowed,
            None,
            &control,
            "d",
            at(0, 59),
            at(0, 59)
        ));
        assert!(decide(&windowed, None, &control, "d", at(1, 0), at(1, 0)));
    }

    #[test]
    fn records_decide_what_resumes() {
        let control = JobControl::default();
        let mut record = JobRecord::new("j", crate::job::JobKind::Backfill, "jobs/j.toml");
        let job = spec("");
        for (phase, start) in [
            (Phase::Copy, true),
            (Phase::Done, false),
            (Phase::Failed, false),
            (Phase::Paused, true),
        ] {
            record.phase = phase;
            assert_eq!(
                decide(&job, Some(&record), &control, "d", at(9, 0), at(9, 0)),
                start,
                "{phase:?}"
            );
        }
        let paused = JobControl {
            paused: true,
            ..JobControl::default()
        };
        record.phase = Phase::Paused;
        assert!(!decide(
            &job,
            Some(&record),
            &paused,
            "d",
            at(9, 0),
            at(9, 0)
        ));
        // Waiting for contract (24h by default): due only after the delay, or on request.
        record.phase = Phase::Verify;
        record.cutover_at = Some(at(9, 0));
        assert!(!decide(
            &job,
            Some(&record),
            &control,
            "d",
            at(9, 0),
            at(10, 0)
        ));
        assert!(decide(
            &job,
            Some(&record),
            &control,
            "d",
            at(9, 0),
            at(9, 0) + chrono::Duration::hours(24)
        ));
        let asked = JobControl {
            contract_requested: true,
            ..JobControl::default()
        };
        assert!(decide(
            &job,
            Some(&record),
            &asked,
            "d",
            at(9, 0),
            at(10, 0)
        ));
    }

    #[test]
    fn a_failed_job_starts_again_once_its_file_changes_or_on_resume() {
        let mut record = JobRecord::new("j", crate::job::JobKind::Backfill, "jobs/j.toml");
        record.phase = Phase::Failed;
        record.file_digest = Some("before".into());
        let job = spec("");
        let control = JobControl::default();
        assert!(!decide(
            &job,
            Some(&record),
            &control,
            "before",
            at(9, 0),
            at(9, 0)
        ));
        assert!(decide(
            &job,
            Some(&record),
            &control,
            "after",
            at(9, 0),
            at(9, 0)
        ));
        let resumed = JobControl {
            retry_requested: true,
            ..JobControl::default()
        };
        assert!(decide(
            &job,
            Some(&record),
            &resumed,
            "before",
            at(9, 0),
            at(9, 0)
        ));
        // Failed outside serve: no digest, so only `job resume` starts it.
        record.file_digest = None;
        assert!(!decide(
            &job,
            Some(&record),
            &control,
            "after",
            at(9, 0),
            at(9, 0)
        ));
    }
}
