//! `switchyard job …`: plan, run, status, and the operator's controls.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::table::Table;
use crate::config::Config;
use crate::engine::{self, JobObserver, JobRecord, Phase, Request, RunEnd, RunOptions};
use crate::error::{Error, Result};
use crate::job::{self, JobSpec};
use crate::metrics::Metrics;
use crate::server::serve_metrics;
use crate::state::chunks::{ChunkCounts, ChunkState};
use crate::state::{self, Outcome, StateStore};

pub async fn plan(config: &Config, file: &Path) -> Result<()> {
    let spec = job::load(file, config)?;
    let store = state::open(&config.state.url).await?;
    let plan = crate::backend::plan_job(config, &spec, &store).await?;
    println!(
        "job {} ({}), source {}: about {} {}",
        spec.name,
        spec.kind.as_str(),
        spec.source.object(),
        plan.rows_estimate,
        if spec.source.table.is_some() {
            "rows"
        } else {
            "documents"
        }
    );
    match spec.copy.rows_per_second {
        0 => println!("throttle: none (unthrottled; `switchyard job throttle {} --rows-per-second N` limits it live)", spec.name),
        rate => println!(
            "throttle: {rate} rows/s, so the copy takes about {}",
            humantime::format_duration(std::time::Duration::from_secs(plan.rows_estimate / rate.max(1)))
        ),
    }
    for (phase, statements) in &plan.phases {
        println!("\n{phase}:");
        for statement in statements {
            for line in statement.lines() {
                println!("    {}", line.trim_end());
            }
        }
    }
    if plan.dependents.is_empty() {
        println!("\nnothing else depends on the source");
    } else {
        println!("\nwhat depends on the source:");
        for d in &plan.dependents {
            let mark = if d.blocks_cutover {
                "BLOCKS CUTOVER"
            } else {
                "ok"
            };
            println!("    {mark:<14} {} {}: {}", d.kind, d.name, d.handling);
        }
    }
    println!("\nnothing was changed");
    Ok(())
}

/// Shows a job's record on the progress bar.
struct BarObserver(ProgressBar);

impl JobObserver for BarObserver {
    fn progress(&self, record: &JobRecord) {
        self.0.set_length(record.rows_total.max(record.rows_copied));
        self.0.set_position(record.rows_copied);
        let lag = if record.phase == Phase::CatchUp {
            format!(" lag {:.1}s", record.lag_seconds)
        } else {
            String::new()
        };
        self.0
            .set_message(format!("{}{lag}", record.phase.as_str()));
    }
}

fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>18} [{bar:30}] {human_pos}/{human_len} rows  {per_sec}  eta {eta}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar
}

/// Drives a job in this process until it is done or waits; prints where it stands.
/// How long `job run` waits for a job another process holds (a killed run's session
/// can hold it for a moment), and how long a control command does.
const RUN_CLAIM_WAIT: Duration = Duration::from_secs(15);
const CONTROL_CLAIM_WAIT: Duration = Duration::from_secs(2);

async fn drive(
    config: &Config,
    store: Arc<dyn StateStore>,
    spec: &JobSpec,
    file: &str,
    claim_wait: Duration,
    metrics: Option<Arc<Metrics>>,
    follow: bool,
) -> Result<RunEnd> {
    let backend = crate::backend::open_job(config, spec, &store).await?;
    let bar = progress_bar();
    let mut observers: Vec<Arc<dyn JobObserver>> = vec![Arc::new(BarObserver(bar.clone()))];
    if let Some(metrics) = metrics {
        observers.push(metrics);
    }
    let options = RunOptions {
        shutdown: crate::shutdown::signal(),
        observer: Arc::new(observers),
        claim_wait,
        follow,
        worker: state::default_worker_id(),
        lease: config.state.lease,
    };
    let outcome = engine::run(spec, backend, store.clone(), file, options)
        .await
        .map_err(|error| match error {
            // A field of the job file the databases refused (a target that cannot take
            // the source's rows): named with its file, like every other bad field.
            Error::Refused(reason) if reason.starts_with("field `") => {
                Error::Refused(format!("{file}: {reason}"))
            }
            other => other,
        });
    bar.finish_and_clear();
    let record = JobRecord::load(store.as_ref(), &spec.name).await?;
    let (result, detail) = match (&outcome, &record) {
        (Ok(end), Some(record)) => (
            Outcome::Ok,
            format!(
                "{end:?}; phase {}, {} rows copied, {} changes applied",
                record.phase.as_str(),
                record.rows_copied,
                record.changes_applied
            ),
        ),
        (Ok(end), None) => (Outcome::Ok, format!("{end:?}")),
        (Err(e), _) => (Outcome::Failed, e.to_string()),
    };
    state::audit(store.as_ref(), Some(&spec.source.database), result, detail).await;
    let end = outcome?;
    let name = &spec.name;
    match &end {
        RunEnd::Done => println!("job {name}: done"),
        RunEnd::WaitingForCutover => println!("job {name}: verified and caught up, ready to cut over: switchyard job cutover {name}"),
        RunEnd::WaitingForContract(Some(due)) => println!(
            "job {name}: cut over; contract is due at {} UTC (or now: switchyard job contract {name})",
            due.format("%Y-%m-%d %H:%M:%S")
        ),
        RunEnd::WaitingForContract(None) => println!("job {name}: waiting for contract: switchyard job contract {name}"),
        RunEnd::Stopped => println!("job {name}: stopped at a batch boundary, checkpoints written; run it again to continue"),
        RunEnd::Aborted => println!("job {name}: aborted"),
        RunEnd::RunningElsewhere => println!("job {name}: runs in another process, which acts on the job's control"),
    }
    if let Some(record) = record.filter(|r| r.writes_blocked_ms.is_some() && end != RunEnd::Aborted)
    {
        println!(
            "job {name}: writes to the source were blocked for {}ms at cutover",
            record.writes_blocked_ms.unwrap_or(0)
        );
    }
    Ok(end)
}

/// `metrics_listen`: serve `/metrics` there while the job runs.
pub async fn run(
    config: &Config,
    file: &Path,
    metrics_listen: Option<SocketAddr>,
    follow: bool,
) -> Result<()> {
    let spec = job::load(file, config)?;
    let store = state::open(&config.state.url).await?;
    let metrics = match metrics_listen {
        Some(listen) => {
            let metrics = Arc::new(Metrics::new());
            let bound = serve_metrics(listen, metrics.clone()).await?;
            eprintln!("metrics on http://{bound}/metrics");
            Some(metrics)
        }
        None => None,
    };
    match drive(
        config,
        store.clone(),
        &spec,
        &file.display().to_string(),
        RUN_CLAIM_WAIT,
        metrics,
        follow,
    )
    .await?
    {
        RunEnd::RunningElsewhere => {
            let holder = match store.job_holder(&spec.name).await? {
                Some(held) => format!(
                    " (worker {} on {}, pid {}; its lease runs until {} UTC unless renewed)",
                    held.holder.worker,
                    held.holder.host,
                    held.holder.pid,
                    held.expires_at.format("%Y-%m-%d %H:%M:%S")
                ),
                None => String::new(),
            };
            Err(Error::Refused(format!(
                "job `{}` is already running in another process{holder}",
                spec.name
            )))
        }
        _ => Ok(()),
    }
}

pub async fn status(config: &Config, name: Option<&str>, json: bool) -> Result<()> {
    let store = state::open(&config.state.url).await?;
    let records = match name {
        Some(name) => vec![JobRecord::load(store.as_ref(), name)
            .await?
            .ok_or_else(|| {
                Error::Usage(format!(
                    "no job named `{name}` has run with this state store ({})",
                    config.state.url
                ))
            })?],
        None => JobRecord::load_all(store.as_ref()).await?,
    };
    if json {
        let mut rows = Vec::new();
        for record in &records {
            rows.push(record.status(store.as_ref()).await?);
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).expect("status serialises")
        );
        return Ok(());
    }
    let mut chunks = Vec::new();
    let mut holders = Vec::new();
    for record in &records {
        chunks.push(store.chunks(&record.name).await?);
        holders.push(store.job_holder(&record.name).await?);
    }
    if records.is_empty() {
        println!(
            "No jobs have run with this state store ({}).",
            config.state.url
        );
        return Ok(());
    }
    let mut table = Table::new(&[
        "NAME", "KIND", "PHASE", "ROWS", "RATE", "LAG", "ETA", "UPDATED",
    ]);
    for ((r, chunks), held) in records.iter().zip(&chunks).zip(&holders) {
        let mut notes = Vec::new();
        if let Some(error) = &r.error {
            notes.push(format!("Error: {error}"));
        }
        if let Some(held) = held {
            notes.push(format!(
                "Run by {} (lease until {} UTC)",
                held.holder.worker,
                held.expires_at.format("%H:%M:%S")
            ));
        }
        if let Some(note) = chunks_note(chunks) {
            notes.push(note);
        }
        table.row(
            vec![
                r.name.clone(),
                r.kind.as_str().into(),
                r.phase.as_str().into(),
                format!("{}/{}", r.rows_copied, r.rows_total),
                format!("{:.0}/s", r.rows_per_second),
                format!("{:.1}s", r.lag_seconds),
                r.eta_seconds.map_or("-".into(), |s| {
                    humantime::format_duration(std::time::Duration::from_secs(s as u64)).to_string()
                }),
                r.updated_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            ],
            notes,
        );
    }
    print!("{}", table.render());
    Ok(())
}

/// `Chunks: 5 done (by w1, w2), 2 leased (w3), 1 pending`, while the copy is shared.
fn chunks_note(chunks: &[ChunkState]) -> Option<String> {
    let counts = ChunkCounts::of(chunks);
    if counts.all_done() {
        return None;
    }
    let names = |names: Vec<String>| match names.is_empty() {
        true => String::new(),
        false => format!(" ({})", names.join(", ")),
    };
    Some(format!(
        "Chunks: {} done{}, {} leased{}, {} pending",
        counts.done,
        names(crate::state::chunks::workers(chunks)),
        counts.leased,
        names(crate::state::chunks::holders(chunks)),
        counts.pending
    ))
}

pub async fn control(config: &Config, name: &str, command: Request) -> Result<()> {
    let store = state::open(&config.state.url).await?;
    let record = engine::request(store.as_ref(), name, command).await?;
    state::audit(
        store.as_ref(),
        None,
        Outcome::Ok,
        format!("job {name}: {} requested", command.name()),
    )
    .await;
    match command {
        Request::Pause => println!("job {name}: pause requested; it pauses at the next batch boundary (switchyard job resume {name})"),
        Request::Resume => println!("job {name}: resumed"),
        Request::Throttle(0) => println!("job {name}: unthrottled"),
        Request::Throttle(rate) => println!("job {name}: throttled to {rate} rows/s"),
        Request::Cutover | Request::Contract | Request::Abort => {
            // Act now, in this process, unless another process runs the job.
            let spec = job::load(Path::new(&record.file), config)?;
            drive(
                config,
                store,
                &spec,
                &record.file,
                CONTROL_CLAIM_WAIT,
                None,
                false,
            )
            .await?;
        }
    }
    Ok(())
}
