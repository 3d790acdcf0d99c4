//! An in-memory source and sink, so the engine's phases can be tested without a server:
//! a table of integer keys with a change log, copied into another table that keeps its
//! checkpoints beside its rows (as a transactional sink does). Writes to the source
//! arrive between batch reads ([`State::write_every`]); a sink can be told to fail after
//! some batches (a crash) or to keep a wrong value (a verification mismatch).
//!
//! Both sides share one [`Memory`], like two servers that outlive any run of the job:
//! a new [`Pipeline`] over the same memory is a resumed run.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use super::progress::{CutoverReport, KeyRange, Lag, RangeProgress};
use super::row::{Change, Digest, Field, Key, Position, Projection, Row, Schema, Value};
use super::sink::{BatchWriter, CopyWorker, PairedWorker, Sink};
use super::source::{Batch, BatchReader, ChangeBatch, RowFormat, Rows, Source};
use super::Pipeline;
use crate::error::{Error, Result};

/// What both sides hold.
#[derive(Debug, Default)]
pub struct State {
    pub source: BTreeMap<i64, String>,
    /// Committed changes of the source: (position, change), in commit order.
    pub log: Vec<(u64, Change)>,
    pub capturing: bool,
    pub fenced: bool,
    pub target: BTreeMap<i64, String>,
    pub ranges: Vec<RangeProgress>,
    /// The fence of the lease that seized each range last.
    pub fences: BTreeMap<i32, i64>,
    pub position: Option<u64>,
    pub cutover: Option<CutoverReport>,
    /// Source writes made so far by the simulated writer.
    pub writes: u64,
    /// Batches written by the sink so far.
    pub batches: u64,
    /// Write a source change after every this many batch reads (0: never).
    pub write_every: u64,
    reads: u64,
    /// The sink fails (a crash) at this batch number.
    pub fail_at_batch: Option<u64>,
    /// The sink writes this key's value wrong.
    pub corrupt_key: Option<i64>,
}

/// The shared memory of both sides.
#[derive(Clone, Default)]
pub struct Memory(pub Arc<Mutex<State>>);

impl Memory {
    /// A source of `rows` rows, keys 1..=rows.
    pub fn with_rows(rows: i64) -> Memory {
        let memory = Memory::default();
        memory.state().source = (1..=rows).map(|k| (k, format!("v{k}"))).collect();
        memory
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().expect("memory lock")
    }

    /// A pipeline over this memory (a new run of the job).
    pub fn pipeline(&self) -> Pipeline {
        Pipeline::new(
            Box::new(MemorySource(self.clone())),
            Box::new(MemorySink(self.clone())),
        )
    }
}

impl State {
    /// A write to the source, as an application makes it: an update, an insert, a
    /// delete, in turn.
    fn write(&mut self) {
        assert!(!self.fenced, "the engine let a write reach a fenced source");
        self.writes += 1;
        let n = self.writes as i64;
        let key = self
            .source
            .keys()
            .nth((n * 7919) as usize % self.source.len().max(1))
            .copied();
        let change = match (n % 3, key) {
            (0, Some(key)) => {
                self.source.remove(&key);
                Change::Delete {
                    key: vec![key.to_string()],
                }
            }
            (1, Some(key)) => {
                let value = format!("w{n}");
                self.source.insert(key, value.clone());
                Change::Upsert {
                    old_key: None,
                    row: row(key, &value),
                }
            }
            _ => {
                let key = 1_000_000 + n;
                let value = format!("new{n}");
                self.source.insert(key, value.clone());
                Change::Upsert {
                    old_key: None,
                    row: row(key, &value),
                }
            }
        };
        if self.capturing {
            let position = self.log.last().map_or(1, |(p, _)| p + 1);
            self.log.push((position, change));
        }
    }

    fn digest(table: &BTreeMap<i64, String>, chunk: &KeyRange) -> Digest {
        let rows: Vec<String> = table
            .range(bounds(chunk))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        Digest {
            rows: rows.len() as u64,
            hash: rows.join(","),
        }
    }
}

fn row(key: i64, value: &str) -> Row {
    Row(vec![Value::Int(key), Value::Text(value.to_string())])
}

fn key_of(key: &Key) -> i64 {
    key[0].parse().expect("integer keys")
}

fn bounds(range: &KeyRange) -> (std::ops::Bound<i64>, std::ops::Bound<i64>) {
    use std::ops::Bound::{Excluded, Included, Unbounded};
    (
        range
            .lower
            .as_ref()
            .map_or(Unbounded, |k| Excluded(key_of(k))),
        range
            .upper
            .as_ref()
            .map_or(Unbounded, |k| Included(key_of(k))),
    )
}

fn position(p: &Position) -> u64 {
    p.0.parse().expect("numeric positions")
}

pub struct MemorySource(Memory);

#[async_trait]
impl Source for MemorySource {
    fn schema(&self) -> &Schema {
        static SCHEMA: std::sync::OnceLock<Schema> = std::sync::OnceLock::new();
        SCHEMA.get_or_init(|| Schema {
            fields: ["id", "v"]
                .map(|name| Field {
                    name: name.into(),
                    type_name: "text".into(),
                })
                .to_vec(),
            key: vec![0],
            computed: Vec::new(),
        })
    }
    async fn reconnect(&mut self) -> Result<()> {
        Ok(())
    }
    async fn end_leftover_sessions(&mut self) -> Result<()> {
        Ok(())
    }
    async fn estimate_rows(&mut self) -> Result<u64> {
        Ok(self.0.state().source.len() as u64)
    }
    async fn plan_ranges(&mut self, concurrency: usize) -> Result<Vec<KeyRange>> {
        let max = self.0.state().source.keys().last().copied().unwrap_or(0);
        let step = max / concurrency as i64 + 1;
        Ok((0..concurrency as i64)
            .map(|i| KeyRange {
                number: i as i32,
                lower: (i > 0).then(|| vec![(i * step).to_string()]),
                upper: (i + 1 < concurrency as i64).then(|| vec![((i + 1) * step).to_string()]),
            })
            .collect())
    }
    async fn replica_lag(&mut self) -> Result<f64> {
        Ok(0.0)
    }
    async fn reader(&self, _: &Projection, format: RowFormat) -> Result<Box<dyn BatchReader>> {
        assert_eq!(format, RowFormat::Values);
        Ok(Box::new(MemoryReader(self.0.clone())))
    }
    async fn fetch(&mut self, key: &Key) -> Result<Option<Row>> {
        Ok(self
            .0
            .state()
            .source
            .get(&key_of(key))
            .map(|v| row(key_of(key), v)))
    }
    async fn start_capture(&mut self) -> Result<Position> {
        let mut state = self.0.state();
        state.capturing = true;
        Ok(Position(
            state.log.last().map_or(0, |(p, _)| *p).to_string(),
        ))
    }
    async fn read_changes(&mut self, after: &Position, max: Option<usize>) -> Result<ChangeBatch> {
        let state = self.0.state();
        let after = position(after);
        let pending: Vec<&(u64, Change)> = state.log.iter().filter(|(p, _)| *p > after).collect();
        let taken = max.unwrap_or(usize::MAX).min(pending.len());
        Ok(ChangeBatch {
            changes: pending[..taken].iter().map(|(_, c)| c.clone()).collect(),
            end: pending[..taken]
                .last()
                .map(|(p, _)| Position(p.to_string())),
            drained: taken == pending.len(),
        })
    }
    async fn confirm(&mut self, _: &Position) -> Result<()> {
        Ok(())
    }
    async fn lag(&mut self) -> Result<Lag> {
        Ok(Lag::default())
    }
    async fn stop_capture(&mut self) -> Result<()> {
        let mut state = self.0.state();
        state.capturing = false;
        state.log.clear();
        Ok(())
    }
    async fn chunks(&mut self, range: &KeyRange) -> Result<Vec<KeyRange>> {
        Ok(vec![range.clone()])
    }
    async fn digest(&mut self, chunk: &KeyRange, _: &Projection, _: bool) -> Result<Digest> {
        Ok(State::digest(&self.0.state().source, chunk))
    }
    async fn hold_writes(&mut self) -> Result<()> {
        Ok(())
    }
    async fn release_writes(&mut self) -> Result<()> {
        Ok(())
    }
    async fn fence(&mut self) -> Result<()> {
        self.0.state().fenced = true;
        Ok(())
    }
    async fn unfence(&mut self) -> Result<()> {
        self.0.state().fenced = false;
        Ok(())
    }
    async fn contract(&mut self) -> Result<()> {
        Ok(())
    }
    async fn forget(&mut self) -> Result<()> {
        Ok(())
    }
}

struct MemoryReader(Memory);

#[async_trait]
impl BatchReader for MemoryReader {
    async fn read(&mut self, range: &KeyRange, after: Option<&Key>, limit: usize) -> Result<Batch> {
        let mut state = self.0.state();
        state.reads += 1;
        if state.write_every > 0 && state.reads % state.write_every == 0 {
            state.write();
        }
        let from = KeyRange {
            lower: after.cloned(),
            ..range.clone()
        };
        let rows: Vec<Row> = state
            .source
            .range(bounds(&from))
            .take(limit)
            .map(|(k, v)| row(*k, v))
            .collect();
        let last_key = rows
            .last()
            .map(|r| vec![r.0[0].to_sql_text().expect("a key")]);
        Ok(Batch {
            done: rows.len() < limit,
            last_key: last_key.or_else(|| after.cloned()),
            rows: Rows::Values(rows),
        })
    }
}

pub struct MemorySink(Memory);

/// Writes batches under the fence of the range it seized last.
struct MemoryWriter(Memory, i64);

fn lease_lost(range: i32) -> Error {
    Error::LeaseLost {
        job: "mem".into(),
        chunk: range,
    }
}

#[async_trait]
impl BatchWriter for MemoryWriter {
    async fn seize(&mut self, known: &RangeProgress, fence: i64) -> Result<RangeProgress> {
        let mut state = self.0.state();
        let number = known.range.number;
        if state
            .fences
            .get(&number)
            .is_some_and(|newer| *newer > fence)
        {
            return Err(lease_lost(number));
        }
        state.fences.insert(number, fence);
        self.1 = fence;
        let saved = state.ranges.iter().find(|r| r.range.number == number);
        Ok(saved.expect("ranges are saved before the copy").clone())
    }

    async fn write(&mut self, batch: Batch, progress: &mut RangeProgress) -> Result<u64> {
        let Rows::Values(rows) = batch.rows else {
            unreachable!("a memory source sends values")
        };
        let mut state = self.0.state();
        if state.fences.get(&progress.range.number) != Some(&self.1) {
            return Err(lease_lost(progress.range.number));
        }
        state.batches += 1;
        if state.fail_at_batch == Some(state.batches) {
            return Err(Error::State(format!(
                "the sink failed at batch {}",
                state.batches
            )));
        }
        // The rows and the checkpoint in one step, as in a transaction.
        for Row(values) in &rows {
            let (Value::Int(key), Value::Text(value)) = (&values[0], &values[1]) else {
                unreachable!("rows of the memory source")
            };
            let value = if state.corrupt_key == Some(*key) {
                "wrong".into()
            } else {
                value.clone()
            };
            state.target.insert(*key, value);
        }
        progress.last_key = batch.last_key;
        progress.rows += rows.len() as u64;
        progress.done = batch.done;
        let saved = state
            .ranges
            .iter_mut()
            .find(|r| r.range.number == progress.range.number);
        *saved.expect("ranges are saved before the copy") = progress.clone();
        Ok(rows.len() as u64)
    }
}

impl MemorySink {
    fn apply_all(state: &mut State, changes: &[Change]) {
        for change in changes {
            match change {
                Change::Upsert { old_key, row } => {
                    if let Some(old) = old_key {
                        state.target.remove(&key_of(old));
                    }
                    let key = row.0[0]
                        .to_sql_text()
                        .expect("a key")
                        .parse()
                        .expect("an integer");
                    state
                        .target
                        .insert(key, row.0[1].to_sql_text().unwrap_or_default());
                }
                Change::Delete { key } => {
                    state.target.remove(&key_of(key));
                }
            }
        }
    }
}

#[async_trait]
impl Sink for MemorySink {
    fn fences_copy(&self) -> bool {
        true
    }
    async fn try_claim(&mut self) -> Result<bool> {
        Ok(true)
    }
    async fn reconnect(&mut self) -> Result<bool> {
        Ok(true)
    }
    async fn start_fresh(&mut self) -> Result<()> {
        let mut state = self.0.state();
        state.ranges.clear();
        state.fences.clear();
        state.position = None;
        state.cutover = None;
        Ok(())
    }
    async fn expand(&mut self, _: &dyn Source) -> Result<bool> {
        Ok(true)
    }
    async fn save_start(&mut self, start: &Position) -> Result<()> {
        self.0.state().position.get_or_insert(position(start));
        Ok(())
    }
    async fn position(&mut self) -> Result<Option<Position>> {
        Ok(self.0.state().position.map(|p| Position(p.to_string())))
    }
    async fn saved_ranges(&mut self) -> Result<Vec<RangeProgress>> {
        Ok(self.0.state().ranges.clone())
    }
    async fn save_ranges(&mut self, ranges: &[KeyRange]) -> Result<()> {
        self.0.state().ranges = ranges
            .iter()
            .map(|range| RangeProgress {
                range: range.clone(),
                last_key: None,
                rows: 0,
                done: false,
            })
            .collect();
        Ok(())
    }
    async fn copy_worker(&mut self, source: &dyn Source) -> Result<Box<dyn CopyWorker>> {
        Ok(Box::new(PairedWorker {
            reader: source.reader(&Vec::new(), RowFormat::Values).await?,
            writer: Box::new(MemoryWriter(self.0.clone(), 0)),
        }))
    }
    async fn apply(&mut self, batch: &ChangeBatch, _: &mut dyn Source) -> Result<u64> {
        let mut state = self.0.state();
        Self::apply_all(&mut state, &batch.changes);
        if let Some(end) = &batch.end {
            state.position = Some(position(end));
        }
        Ok(batch.changes.len() as u64)
    }
    async fn compare(
        &mut self,
        source: &mut dyn Source,
        chunk: &KeyRange,
        _: bool,
    ) -> Result<Option<String>> {
        let theirs = source.digest(chunk, &Vec::new(), true).await?;
        let ours = State::digest(&self.0.state().target, chunk);
        Ok(Digest::difference(&theirs, &ours))
    }
    async fn cutover(&mut self, source: &mut dyn Source) -> Result<CutoverReport> {
        source.fence().await?;
        let after = self.position().await?.unwrap_or(Position("0".into()));
        let last = source.read_changes(&after, None).await?;
        let drained = self.apply(&last, source).await?;
        let report = CutoverReport {
            writes_blocked: std::time::Duration::ZERO,
            changes_drained: drained,
            alias: None,
        };
        self.0.state().cutover = Some(report.clone());
        Ok(report)
    }
    async fn completed_cutover(&mut self) -> Result<Option<CutoverReport>> {
        Ok(self.0.state().cutover.clone())
    }
    async fn abort(&mut self, _: &mut dyn Source, created_target: bool) -> Result<()> {
        let mut state = self.0.state();
        if created_target {
            state.target.clear();
        }
        state.ranges.clear();
        state.position = None;
        Ok(())
    }
    async fn contract(&mut self) -> Result<()> {
        self.start_fresh().await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::watch;

    use super::*;
    use crate::engine::{run, JobControl, JobObserver, JobRecord, Phase, RunEnd, RunOptions};
    use crate::state::StateStore;

    struct Quiet;
    impl JobObserver for Quiet {
        fn progress(&self, _: &JobRecord) {}
    }

    /// A copy job in batches of 10 over 3 ranges; `copy` adds to its `[copy]` table.
    fn spec(copy: &str, extra: &str) -> crate::job::JobSpec {
        crate::job::parse(&format!(
            "name = \"mem\"\nkind = \"copy\"\n[source]\ndatabase = \"a\"\ntable = \"t\"\n\
             [target]\ndatabase = \"b\"\ntable = \"t\"\n[copy]\nbatch_size = 10\nconcurrency = 3\n{copy}\n{extra}"
        ))
        .expect("a valid job")
    }

    async fn store(dir: &tempfile::TempDir) -> Arc<dyn StateStore> {
        let url = format!("sqlite://{}/state.db", dir.path().display());
        crate::state::open(&crate::secret::SecretUrl::new(url))
            .await
            .expect("a state store")
    }

    /// The options of a run by worker `worker` (its shutdown never comes).
    fn options(worker: &str) -> RunOptions {
        let (keep, shutdown) = watch::channel(false);
        std::mem::forget(keep);
        RunOptions {
            shutdown,
            observer: Arc::new(Quiet),
            claim_wait: Duration::ZERO,
            follow: false,
            worker: worker.into(),
            lease: Duration::from_secs(30),
        }
    }

    async fn run_once(
        memory: &Memory,
        spec: &crate::job::JobSpec,
        store: &Arc<dyn StateStore>,
    ) -> Result<RunEnd> {
        let options = options("test");
        run(
            spec,
            memory.pipeline(),
            store.clone(),
            "jobs/mem.toml",
            options,
        )
        .await
    }

    /// The job's lease: a second process finds the job held; once the lease passed to
    /// another (the holder stalled past it), the run stops at its next record write,
    /// writing nothing more.
    #[tokio::test]
    async fn a_run_whose_lease_passed_on_stops_without_writing_its_record() {
        use crate::state::job_lease::JobHolder;
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let memory = Memory::with_rows(600);
        let spec = spec("rows_per_second = 100", "");
        let running = {
            let (memory, spec, store) = (memory.clone(), spec.clone(), store.clone());
            tokio::spawn(async move { run_once(&memory, &spec, &store).await })
        };
        let held = loop {
            let record = JobRecord::load(store.as_ref(), "mem").await.unwrap();
            if record.is_some_and(|r| r.phase == Phase::Copy && r.rows_copied > 0) {
                break store.job_holder("mem").await.unwrap().unwrap();
            }
            tokio::task::yield_now().await;
        };
        assert_eq!(held.holder.worker, "test");
        let elsewhere = run(
            &spec,
            memory.pipeline(),
            store.clone(),
            "jobs/mem.toml",
            options("other"),
        )
        .await
        .unwrap();
        assert_eq!(elsewhere, RunEnd::RunningElsewhere);
        // Another takes the lease over, as it would once the holder froze past it.
        let taker = JobHolder::this_process("taker");
        store
            .take_job("mem", &taker, Duration::from_secs(30), Some(held.fence))
            .await
            .unwrap()
            .unwrap();
        let record = store.job("mem").await.unwrap();
        let error = running.await.unwrap().unwrap_err();
        assert!(matches!(error, Error::JobLeaseLost { .. }), "{error}");
        assert_eq!(
            store.job("mem").await.unwrap(),
            record,
            "the record stays as it was"
        );
        assert_eq!(
            store.job_holder("mem").await.unwrap().unwrap().holder,
            taker,
            "the lease stays the taker's"
        );
    }

    /// A second process helps with the copy of a job another runs: both copy chunks,
    /// every row is counted once, and the target ends equal.
    #[tokio::test]
    async fn a_helper_copies_chunks_of_a_job_another_process_runs() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let memory = Memory::with_rows(600);
        let spec = spec(
            "rows_per_second = 300\nchunks = 12",
            "[cutover]\nmode = \"manual\"\n[contract]\nafter = \"manual\"\n",
        );
        let running = {
            let (memory, spec, store) = (memory.clone(), spec.clone(), store.clone());
            tokio::spawn(async move { run_once(&memory, &spec, &store).await })
        };
        // Wait for the running process to plan its chunks.
        loop {
            let record = JobRecord::load(store.as_ref(), "mem").await.unwrap();
            let chunks = store.chunks("mem").await.unwrap();
            if record.is_some_and(|r| r.phase == Phase::Copy) && !chunks.is_empty() {
                break;
            }
            tokio::task::yield_now().await;
        }
        let helped =
            crate::engine::help(&spec, memory.pipeline(), store.clone(), options("helper"))
                .await
                .unwrap();
        assert_eq!(helped, RunEnd::RunningElsewhere);
        assert_eq!(running.await.unwrap().unwrap(), RunEnd::WaitingForCutover);
        assert!(equal(&memory));
        let chunks = store.chunks("mem").await.unwrap();
        assert_eq!(crate::state::chunks::workers(&chunks), ["helper", "test"]);
        let counted: u64 = memory.state().ranges.iter().map(|r| r.rows).sum();
        assert_eq!(counted, 600, "every row counted once");
    }

    fn equal(memory: &Memory) -> bool {
        let state = memory.state();
        state.source == state.target
    }

    #[tokio::test]
    async fn a_copy_under_writes_runs_every_phase_and_ends_equal() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let memory = Memory::with_rows(500);
        memory.state().write_every = 2;
        let spec = spec(
            "",
            "[cutover]\nmode = \"manual\"\n[contract]\nafter = \"manual\"\n",
        );
        assert_eq!(
            run_once(&memory, &spec, &store).await.unwrap(),
            RunEnd::WaitingForCutover
        );
        assert!(memory.state().writes > 20, "writes came during the copy");
        assert!(equal(&memory), "verified and caught up");
        // Writes after the run returned arrive at cutover.
        for _ in 0..5 {
            memory.state().write();
        }
        crate::engine::request(store.as_ref(), "mem", crate::engine::Request::Cutover)
            .await
            .unwrap();
        let end = run_once(&memory, &spec, &store).await.unwrap();
        assert_eq!(end, RunEnd::WaitingForContract(None));
        assert!(equal(&memory) && memory.state().fenced);
        crate::engine::request(store.as_ref(), "mem", crate::engine::Request::Contract)
            .await
            .unwrap();
        assert_eq!(
            run_once(&memory, &spec, &store).await.unwrap(),
            RunEnd::Done
        );
        let record = JobRecord::load(store.as_ref(), "mem")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(record.phase, Phase::Done);
    }

    #[tokio::test]
    async fn a_run_that_fails_at_any_batch_resumes_to_an_equal_target() {
        let dir = tempfile::tempdir().unwrap();
        let spec = spec(
            "",
            "[cutover]\nmode = \"auto\"\n[contract]\nafter = \"manual\"\n",
        );
        let memory = Memory::with_rows(300);
        memory.state().write_every = 3;
        run_once(&memory, &spec, &store(&dir).await).await.unwrap();
        let batches = memory.state().batches;
        assert!(batches > 30, "{batches} batches");
        for fail_at in 1..=batches {
            let store = store(&dir).await;
            let memory = Memory::with_rows(300);
            {
                let mut state = memory.state();
                state.write_every = 3;
                state.fail_at_batch = Some(fail_at);
            }
            let name = format!("mem_{fail_at}");
            let spec = crate::job::JobSpec {
                name: name.clone(),
                ..spec.clone()
            };
            let failed = run_once(&memory, &spec, &store).await;
            assert!(failed.is_err(), "batch {fail_at}: the sink failed");
            let record = JobRecord::load(store.as_ref(), &name)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                (record.phase, record.resume_phase),
                (Phase::Failed, Some(Phase::Copy))
            );
            let copied_before = memory.state().target.len();
            memory.state().fail_at_batch = None;
            let end = run_once(&memory, &spec, &store).await.unwrap();
            assert_eq!(end, RunEnd::WaitingForContract(None), "batch {fail_at}");
            assert!(
                equal(&memory),
                "batch {fail_at}: resumed to an equal target"
            );
            assert!(
                copied_before < memory.state().target.len(),
                "batch {fail_at}: the resumed run copied the rest"
            );
        }
    }

    #[tokio::test]
    async fn a_difference_fails_verify_and_refuses_cutover() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let memory = Memory::with_rows(200);
        memory.state().corrupt_key = Some(77);
        let spec = spec("", "[cutover]\nmode = \"auto\"\n");
        let error = run_once(&memory, &spec, &store).await.unwrap_err();
        assert!(matches!(error, Error::VerifyFailed { .. }), "{error}");
        assert!(error.to_string().contains("contents differ"), "{error}");
        assert!(
            !memory.state().fenced && memory.state().cutover.is_none(),
            "no cutover"
        );
        let record = JobRecord::load(store.as_ref(), "mem")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (record.phase, record.resume_phase),
            (Phase::Failed, Some(Phase::Verify))
        );
    }

    #[tokio::test]
    async fn pause_throttle_and_abort_are_read_between_batches() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let memory = Memory::with_rows(2_000);
        let spec = spec("rows_per_second = 2000", "");
        let job = {
            let (memory, spec, store) = (memory.clone(), spec.clone(), store.clone());
            tokio::spawn(async move { run_once(&memory, &spec, &store).await })
        };
        let record_phase = |store: Arc<dyn StateStore>| async move {
            JobRecord::load(store.as_ref(), "mem")
                .await
                .unwrap()
                .map(|r| r.phase)
        };
        while record_phase(store.clone()).await != Some(Phase::Copy) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        crate::engine::request(store.as_ref(), "mem", crate::engine::Request::Pause)
            .await
            .unwrap();
        while record_phase(store.clone()).await != Some(Phase::Paused) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let batches = memory.state().batches;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(memory.state().batches, batches, "no batch while paused");
        crate::engine::request(store.as_ref(), "mem", crate::engine::Request::Throttle(100))
            .await
            .unwrap();
        let control = JobControl::load(store.as_ref(), "mem").await.unwrap();
        // Slower, so the abort is read before the copy ends.
        assert_eq!(control.rows_per_second, Some(100));
        crate::engine::request(store.as_ref(), "mem", crate::engine::Request::Resume)
            .await
            .unwrap();
        while memory.state().batches == batches {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        crate::engine::request(store.as_ref(), "mem", crate::engine::Request::Abort)
            .await
            .unwrap();
        assert_eq!(job.await.unwrap().unwrap(), RunEnd::Aborted);
        let state = memory.state();
        assert!(
            state.target.is_empty() && state.ranges.is_empty(),
            "abort left nothing"
        );
        assert!(!state.fenced);
    }
}
