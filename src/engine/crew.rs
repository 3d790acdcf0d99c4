//! The copy phase's workers: many tasks in one process, and the tasks of other
//! processes (`serve` on other hosts) on the same job, sharing its chunks through the
//! state store's leases ([`crate::state::chunks`]).
//!
//! Each task, in turn: leases a chunk, seizes its range in the sink with the lease's
//! fence ([`CopyWorker::seize`]), copies it batch by batch, and marks it done. Invariants:
//! - A batch is written only under a live lease. A heartbeat renews the lease every
//!   third of its length; when a renewal finds it leased again (this process stalled
//!   past it), the task leaves the chunk before its next batch, and a sink that fences
//!   refuses a batch already under way.
//! - A chunk is marked done in the store only once the sink made its last batch
//!   durable. One done in the sink but not in the store (a crash between the two) is
//!   seized again, found done, and marked.
//! - On stop (pause, shutdown, a failure) a task gives its chunk back at a batch
//!   boundary; a task that dies gives it back by letting its lease expire.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::heartbeat::Heartbeat;
use super::pipeline::Pipeline;
use super::progress::RangeProgress;
use super::record::{JobControl, JobRecord, Phase};
use super::run::{JobObserver, RunEnd, RunOptions};
use super::sink::CopyWorker;
use super::throttle::Throttle;
use crate::error::{Error, Result};
use crate::job::JobSpec;
use crate::state::chunks::{ChunkCounts, ChunkLease};
use crate::state::StateStore;

/// How often a helper ([`help`]) reads the job's control and record.
const HELPER_LOOK: Duration = Duration::from_millis(250);
/// How long a task with no chunk to lease waits before looking again, while chunks
/// leased by other workers are not done.
const IDLE_WAIT: Duration = Duration::from_millis(200);
/// How often a task waiting on `hold` or `IDLE_WAIT` looks at `stop`.
const STOP_POLL: Duration = Duration::from_millis(50);

/// What the copy tasks of one process share.
pub(super) struct Crew {
    pub job: String,
    /// This process's worker id (`serve --worker-id`).
    pub worker: String,
    pub store: Arc<dyn StateStore>,
    /// How long a chunk's lease lasts without renewal.
    pub lease: Duration,
    /// The progress last seen of each range, for sinks that keep none under a fence.
    pub known: Mutex<HashMap<i32, RangeProgress>>,
    /// Rows this process copied.
    pub copied: AtomicU64,
    /// Time spent waiting (rate limit, replica lag, slow batches), in microseconds.
    pub waited_micros: AtomicU64,
    /// Stop at the next batch boundary (pause, abort, shutdown, a failed task).
    pub stop: AtomicBool,
    /// Wait before the next batch (replicas are behind).
    pub hold: AtomicBool,
}

impl Crew {
    pub fn new(
        job: &str,
        worker: &str,
        store: Arc<dyn StateStore>,
        lease: Duration,
        ranges: &[RangeProgress],
    ) -> Crew {
        Crew {
            job: job.to_string(),
            worker: worker.to_string(),
            store,
            lease,
            known: Mutex::new(ranges.iter().map(|r| (r.range.number, r.clone())).collect()),
            copied: AtomicU64::new(0),
            waited_micros: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            hold: AtomicBool::new(false),
        }
    }

    /// Takes what `JoinSet::join_next` gave: the first failure is kept and stops the
    /// other tasks. False once every task has ended.
    pub fn ended(
        &self,
        ended: Option<std::result::Result<Result<()>, tokio::task::JoinError>>,
        failure: &mut Option<Error>,
    ) -> bool {
        let error = match ended {
            None => return false,
            Some(Ok(Ok(()))) => return true,
            Some(Ok(Err(error))) => error,
            Some(Err(panic)) => Error::State(format!("a copy worker died: {panic}")),
        };
        self.stop.store(true, Ordering::SeqCst);
        failure.get_or_insert(error);
        true
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Waits `wait`, or less when `stop` is set meanwhile.
    async fn idle(&self, wait: Duration) {
        let until = Instant::now() + wait;
        while !self.stopped() && Instant::now() < until {
            tokio::time::sleep(STOP_POLL).await;
        }
    }

    fn remember(&self, progress: &RangeProgress) {
        self.known
            .lock()
            .expect("known ranges")
            .insert(progress.range.number, progress.clone());
    }
}

/// How a task paces its batches, and whom it tells how long they took.
#[derive(Clone)]
pub(super) struct Pacing {
    pub observer: Arc<dyn JobObserver>,
    pub throttle: Arc<Throttle>,
    pub batch_size: usize,
    /// A batch slower than this is followed by a pause as long as it took.
    pub max_lag: Duration,
}

/// Starts `count` copy tasks of `crew`, each with its own connections.
pub(super) async fn spawn_crew(
    backend: &mut Pipeline,
    crew: &Arc<Crew>,
    pacing: Pacing,
    count: usize,
) -> Result<JoinSet<Result<()>>> {
    let mut tasks = JoinSet::new();
    for _ in 0..count {
        let worker = backend.worker().await?;
        tasks.spawn(copy_chunks(worker, crew.clone(), pacing.clone()));
    }
    Ok(tasks)
}

/// Copies chunks of a job that another process runs (it holds the job's lease, and
/// does everything but the copy alone): while the job is in its copy phase with no
/// pause or abort asked, `copy.concurrency` tasks lease its chunks as the running
/// process's tasks do. Returns [`RunEnd::RunningElsewhere`] once every chunk is done,
/// the job left its copy phase, or this process is stopping; at once when the job's
/// sink cannot fence batches ([`crate::engine::Sink::fences_copy`]) or its chunks are
/// not planned yet.
pub async fn help(
    spec: &JobSpec,
    mut backend: Pipeline,
    store: Arc<dyn StateStore>,
    options: RunOptions,
) -> Result<RunEnd> {
    let copying = |record: Option<&JobRecord>| record.is_some_and(|r| r.phase == Phase::Copy);
    if !backend.sink.fences_copy()
        || !copying(JobRecord::load(store.as_ref(), &spec.name).await?.as_ref())
    {
        return Ok(RunEnd::RunningElsewhere);
    }
    let ranges = backend.sink.saved_ranges().await?;
    let counts = ChunkCounts::of(&store.chunks(&spec.name).await?);
    if ranges.is_empty() || counts.pending == 0 {
        return Ok(RunEnd::RunningElsewhere);
    }
    let control = JobControl::load(store.as_ref(), &spec.name).await?;
    let throttle = Arc::new(Throttle::new(
        control.rows_per_second.unwrap_or(spec.copy.rows_per_second),
        spec.copy.batch_size,
    ));
    let crew = Arc::new(Crew::new(
        &spec.name,
        &options.worker,
        store.clone(),
        options.lease,
        &ranges,
    ));
    let pacing = Pacing {
        observer: options.observer.clone(),
        throttle: throttle.clone(),
        batch_size: spec.copy.batch_size,
        max_lag: spec.copy.max_lag,
    };
    let tasks = spec.copy.concurrency.min(counts.pending);
    tracing::info!(job = %spec.name, worker = %options.worker, tasks, "copying chunks of a job another worker runs");
    let mut tasks = spawn_crew(&mut backend, &crew, pacing, tasks).await?;
    let mut failure = None;
    loop {
        tokio::select! {
            ended = tasks.join_next() => if !crew.ended(ended, &mut failure) { break },
            _ = tokio::time::sleep(HELPER_LOOK) => {
                let control = JobControl::load(store.as_ref(), &spec.name).await?;
                throttle.set_rate(control.rows_per_second.unwrap_or(spec.copy.rows_per_second));
                let stop = *options.shutdown.borrow()
                    || control.paused
                    || control.abort_requested
                    || control.outside_window
                    || !copying(JobRecord::load(store.as_ref(), &spec.name).await?.as_ref());
                if stop {
                    crew.stop.store(true, Ordering::SeqCst);
                }
            }
        }
    }
    match failure {
        Some(error) => Err(error),
        None => Ok(RunEnd::RunningElsewhere),
    }
}

/// How a task left a chunk.
enum Left {
    Done,
    /// Stopped at a batch boundary: given back.
    Stopped,
    /// Leased again by another worker.
    Lost,
}

/// One copy task: leases chunks until every chunk is done or `stop` is set.
pub(super) async fn copy_chunks(
    mut worker: Box<dyn CopyWorker>,
    crew: Arc<Crew>,
    pacing: Pacing,
) -> Result<()> {
    while !crew.stopped() {
        let Some(lease) = crew
            .store
            .lease_chunk(&crew.job, &crew.worker, crew.lease)
            .await?
        else {
            if ChunkCounts::of(&crew.store.chunks(&crew.job).await?).all_done() {
                return Ok(());
            }
            // Others hold the rest: their leases may expire (a dead worker's chunk).
            crew.idle(IDLE_WAIT).await;
            continue;
        };
        match copy_chunk(worker.as_mut(), &crew, &pacing, lease).await {
            Ok(Left::Done) => {}
            Ok(Left::Stopped) => {
                crew.store.release_chunk(&crew.job, &lease).await?;
                return Ok(());
            }
            Ok(Left::Lost) | Err(Error::LeaseLost { .. }) => {
                tracing::warn!(job = %crew.job, worker = %crew.worker, chunk = lease.chunk, "the chunk's lease passed to another worker; left it");
            }
            Err(error) => {
                // Given back, for another worker to take at once.
                if let Err(not_released) = crew.store.release_chunk(&crew.job, &lease).await {
                    tracing::warn!(job = %crew.job, error = %not_released, "cannot give a chunk back; it is free once its lease expires");
                }
                return Err(error);
            }
        }
    }
    Ok(())
}

async fn copy_chunk(
    worker: &mut dyn CopyWorker,
    crew: &Crew,
    pacing: &Pacing,
    lease: ChunkLease,
) -> Result<Left> {
    let known = crew
        .known
        .lock()
        .expect("known ranges")
        .get(&lease.chunk)
        .cloned()
        .ok_or_else(|| {
            Error::State(format!(
                "job `{}`: chunk {} has no key range in the sink (were its checkpoints removed?)",
                crew.job, lease.chunk
            ))
        })?;
    let mut progress = worker.seize(&known, lease.fence).await?;
    let heartbeat = {
        let (store, job, duration) = (crew.store.clone(), crew.job.clone(), crew.lease);
        Heartbeat::start(duration, &crew.job, "a chunk's lease", move || {
            let (store, job) = (store.clone(), job.clone());
            async move { store.renew_chunk(&job, &lease, duration).await }
        })
    };
    crate::crash_point!("copy.after_seize");
    while !progress.done {
        let waiting = Instant::now();
        while crew.hold.load(Ordering::SeqCst) && !crew.stopped() {
            tokio::time::sleep(STOP_POLL).await;
        }
        if crew.stopped() {
            worker.leave(&mut progress).await?;
            crew.remember(&progress);
            return Ok(Left::Stopped);
        }
        if heartbeat.lost() {
            return Ok(Left::Lost);
        }
        let paced_here = !worker.paces_itself();
        if paced_here {
            pacing.throttle.admit(pacing.batch_size).await;
        } else {
            worker.set_rate(pacing.throttle.rate()).await?;
        }
        crate::crash_point!("copy.before_batch");
        let mut waited = waiting.elapsed();
        let started = Instant::now();
        let rows = worker.copy_batch(&mut progress, pacing.batch_size).await?;
        crate::crash_point!("copy.after_batch");
        let took = started.elapsed();
        pacing.observer.copied(&crew.job, &crew.worker, rows);
        if paced_here {
            pacing.observer.batch(&crew.job, took);
        }
        if paced_here && took > pacing.max_lag {
            // The database is struggling: give it as long again before the next batch.
            tracing::warn!(
                took_ms = took.as_millis() as u64,
                "a batch took longer than copy.max_lag; backing off"
            );
            tokio::time::sleep(took).await;
            waited += took;
        }
        crew.waited_micros
            .fetch_add(waited.as_micros() as u64, Ordering::Relaxed);
        crew.copied.fetch_add(rows, Ordering::Relaxed);
    }
    crew.remember(&progress);
    drop(heartbeat);
    if crew
        .store
        .finish_chunk(&crew.job, &lease, &crew.worker)
        .await?
    {
        pacing.observer.chunk_done(&crew.job, &crew.worker);
        Ok(Left::Done)
    } else {
        // Its lease expired as the last batch committed: whoever took it finds it done.
        Ok(Left::Lost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::progress::KeyRange;

    struct Quiet;
    impl JobObserver for Quiet {
        fn progress(&self, _: &JobRecord) {}
    }

    /// What a worker that paces itself was told, shared with the test.
    #[derive(Default)]
    struct Told {
        rates: Vec<u64>,
        batches: usize,
        left: bool,
    }

    /// A server-side copy done after `batches` looks of 100 rows each; stops the crew
    /// (`stop`) during the first look.
    struct ServerLike {
        told: Arc<Mutex<Told>>,
        batches: usize,
        stop: Option<Arc<Crew>>,
    }

    impl ServerLike {
        /// A copy done after three looks, and what it will be told.
        fn of_three_looks(stop: Option<Arc<Crew>>) -> (Box<ServerLike>, Arc<Mutex<Told>>) {
            let told = Arc::new(Mutex::new(Told::default()));
            let worker = ServerLike {
                told: told.clone(),
                batches: 3,
                stop,
            };
            (Box::new(worker), told)
        }
    }

    #[async_trait::async_trait]
    impl CopyWorker for ServerLike {
        async fn seize(&mut self, known: &RangeProgress, _: i64) -> Result<RangeProgress> {
            Ok(known.clone())
        }
        async fn copy_batch(&mut self, progress: &mut RangeProgress, _: usize) -> Result<u64> {
            let mut told = self.told.lock().unwrap();
            told.batches += 1;
            progress.rows += 100;
            progress.done = told.batches == self.batches;
            if let Some(crew) = self.stop.take() {
                crew.stop.store(true, Ordering::SeqCst);
            }
            Ok(100)
        }
        fn paces_itself(&self) -> bool {
            true
        }
        async fn set_rate(&mut self, rows_per_second: u64) -> Result<()> {
            self.told.lock().unwrap().rates.push(rows_per_second);
            Ok(())
        }
        async fn leave(&mut self, _: &mut RangeProgress) -> Result<()> {
            self.told.lock().unwrap().left = true;
            Ok(())
        }
    }

    async fn crew_of_one_chunk(dir: &tempfile::TempDir) -> Arc<Crew> {
        let url = format!("sqlite://{}/state.db", dir.path().display());
        let store = crate::state::open(&crate::secret::SecretUrl::new(url))
            .await
            .unwrap();
        store.add_chunks("job", &[(0, false)]).await.unwrap();
        let range = RangeProgress {
            range: KeyRange {
                number: 0,
                lower: None,
                upper: None,
            },
            last_key: None,
            rows: 0,
            done: false,
        };
        Arc::new(Crew::new(
            "job",
            "w1",
            store,
            Duration::from_secs(30),
            &[range],
        ))
    }

    /// One row a second with batches of 1,000: a batch the engine paced would wait
    /// about 1,000 s for the second.
    fn slow_pacing() -> Pacing {
        Pacing {
            observer: Arc::new(Quiet),
            throttle: Arc::new(Throttle::new(1, 1_000)),
            batch_size: 1_000,
            max_lag: Duration::from_millis(1),
        }
    }

    #[tokio::test]
    async fn a_worker_that_paces_itself_is_given_the_rate_not_throttled() {
        let dir = tempfile::tempdir().unwrap();
        let crew = crew_of_one_chunk(&dir).await;
        let (worker, told) = ServerLike::of_three_looks(None);
        tokio::time::timeout(
            Duration::from_secs(10),
            copy_chunks(worker, crew.clone(), slow_pacing()),
        )
        .await
        .expect("neither throttled nor backed off")
        .unwrap();
        {
            let told = told.lock().unwrap();
            assert_eq!((told.batches, told.rates.clone()), (3, vec![1, 1, 1]));
            assert!(!told.left);
        }
        assert!(ChunkCounts::of(&crew.store.chunks("job").await.unwrap()).all_done());
        assert_eq!(crew.copied.load(Ordering::Relaxed), 300);
    }

    #[tokio::test]
    async fn a_stopped_worker_leaves_its_range_and_gives_the_chunk_back() {
        let dir = tempfile::tempdir().unwrap();
        let crew = crew_of_one_chunk(&dir).await;
        let (worker, told) = ServerLike::of_three_looks(Some(crew.clone()));
        copy_chunks(worker, crew.clone(), slow_pacing())
            .await
            .unwrap();
        assert_eq!(told.lock().unwrap().batches, 1);
        assert!(told.lock().unwrap().left, "left before the next batch");
        let counts = ChunkCounts::of(&crew.store.chunks("job").await.unwrap());
        assert_eq!((counts.pending, counts.leased, counts.done), (1, 0, 0));
    }
}
