//! Prometheus metrics. Every name is registered once, here; values come from job
//! records and batch timings as the engine reports them, never from inside a loop over
//! rows. Label sets stay small: `job`, `phase`, `kind`, `version`, and `worker` (one
//! per process sharing a job, `serve --worker-id`) and `state` (of a chunk).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use prometheus::{
    CounterVec, Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::engine::{JobObserver, JobRecord, Phase};
use crate::error::Error;
use crate::migrate::{HistoryRow, Status};
use crate::state::chunks::ChunkCounts;

/// Batch durations, in seconds: 1 ms to about 30 s.
const BATCH_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

pub struct Metrics {
    registry: Registry,
    rows_copied: IntCounterVec,
    rows_total: IntGaugeVec,
    changes_applied: IntCounterVec,
    lag_seconds: GaugeVec,
    lag_bytes: IntGaugeVec,
    phase: IntGaugeVec,
    waiting: IntGaugeVec,
    batch_duration: HistogramVec,
    throttle_wait: CounterVec,
    eta: GaugeVec,
    errors: IntCounterVec,
    verify_mismatches: IntCounterVec,
    migrations_applied: IntCounterVec,
    migration_duration: HistogramVec,
    worker_rows: IntCounterVec,
    worker_chunks: IntCounterVec,
    chunks: IntGaugeVec,
    /// What each job's counters were last raised to (records carry totals).
    seen: Mutex<HashMap<String, Seen>>,
    /// The history rows already counted, per database: `(version, applied_at)`.
    seen_migrations: Mutex<HashMap<String, HashSet<(String, i64)>>>,
}

#[derive(Default, Clone, Copy)]
struct Seen {
    rows_copied: u64,
    changes_applied: u64,
    throttle_wait: f64,
    verify_mismatches: u64,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are registered once");
    metric
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let int_gauge = |name: &str, help: &str, labels: &[&str]| {
            register(
                &registry,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let gauge = |name: &str, help: &str| {
            register(
                &registry,
                GaugeVec::new(Opts::new(name, help), &["job"]).expect("valid metric"),
            )
        };
        let build_info = int_gauge(
            "switchyard_build_info",
            "The running switchyard's version.",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        Metrics {
            rows_copied: counter(
                "switchyard_job_rows_copied_total",
                "Rows copied (or filled) by the job.",
                &["job"],
            ),
            rows_total: int_gauge(
                "switchyard_job_rows_estimated",
                "Estimated rows in the job's source (not `_total`: it is a gauge).",
                &["job"],
            ),
            changes_applied: counter(
                "switchyard_job_changes_applied_total",
                "Captured changes applied by catch-up.",
                &["job"],
            ),
            lag_seconds: gauge(
                "switchyard_job_lag_seconds",
                "Age of the oldest committed change not yet applied; 0 when caught up.",
            ),
            lag_bytes: int_gauge(
                "switchyard_job_lag_bytes",
                "WAL bytes between the slot's confirmed position and the server's current one.",
                &["job"],
            ),
            phase: int_gauge(
                "switchyard_job_phase",
                "1 for the job's current phase, 0 for the others.",
                &["job", "phase"],
            ),
            waiting: int_gauge(
                "switchyard_job_waiting",
                "1 while the job waits: in serve's line (serve.max_jobs), or for the server to free a connection, slot or WAL sender.",
                &["job"],
            ),
            batch_duration: register(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "switchyard_job_batch_duration_seconds",
                        "Time one copy batch took.",
                    )
                    .buckets(BATCH_BUCKETS.to_vec()),
                    &["job"],
                )
                .expect("valid metric"),
            ),
            throttle_wait: register(
                &registry,
                CounterVec::new(
                    Opts::new(
                        "switchyard_job_throttle_wait_seconds_total",
                        "Time copy workers waited on throttling.",
                    ),
                    &["job"],
                )
                .expect("valid metric"),
            ),
            eta: gauge(
                "switchyard_job_eta_seconds",
                "Estimated seconds until the copy completes.",
            ),
            errors: counter(
                "switchyard_job_errors_total",
                "Errors that stopped the job, by kind.",
                &["job", "kind"],
            ),
            verify_mismatches: counter(
                "switchyard_verify_mismatches_total",
                "Key ranges that verification found different.",
                &["job"],
            ),
            migrations_applied: counter(
                "switchyard_migrations_applied_total",
                "Migrations applied, as recorded in each database's history.",
                &["database"],
            ),
            migration_duration: register(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "switchyard_migration_duration_seconds",
                        "Time applied migrations took.",
                    )
                    .buckets(BATCH_BUCKETS.to_vec()),
                    &["database"],
                )
                .expect("valid metric"),
            ),
            worker_rows: counter(
                "switchyard_worker_rows_copied_total",
                "Rows this worker copied (or filled) of the job, of every worker's rows_copied.",
                &["job", "worker"],
            ),
            worker_chunks: counter(
                "switchyard_worker_chunks_copied_total",
                "Chunks of the job this worker finished.",
                &["job", "worker"],
            ),
            chunks: int_gauge(
                "switchyard_job_chunks",
                "The job's chunks by state (done, leased, pending), as the worker running the job last saw them.",
                &["job", "state"],
            ),
            seen: Mutex::new(HashMap::new()),
            seen_migrations: Mutex::new(HashMap::new()),
            registry,
        }
    }

    /// Counts the COMPLETED rows of a database's migration history not counted before
    /// (the series exist from the first call, at 0).
    pub fn observe_migrations(&self, database: &str, history: &[HistoryRow]) {
        let applied = self.migrations_applied.with_label_values(&[database]);
        let duration = self.migration_duration.with_label_values(&[database]);
        let mut seen = self.seen_migrations.lock().expect("metrics lock");
        let counted = seen.entry(database.to_string()).or_default();
        for row in history.iter().filter(|r| r.status == Status::Completed) {
            if counted.insert((row.version.clone(), row.applied_at.timestamp_micros())) {
                applied.inc();
                duration.observe(row.duration_ms as f64 / 1000.0);
            }
        }
    }

    /// The Prometheus text format of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("metrics encode");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl JobObserver for Metrics {
    fn copied(&self, job: &str, worker: &str, rows: u64) {
        self.worker_rows
            .with_label_values(&[job, worker])
            .inc_by(rows);
    }

    fn chunk_done(&self, job: &str, worker: &str) {
        self.worker_chunks.with_label_values(&[job, worker]).inc();
    }

    fn chunks(&self, job: &str, counts: ChunkCounts) {
        for (state, count) in [
            ("done", counts.done),
            ("leased", counts.leased),
            ("pending", counts.pending),
        ] {
            self.chunks
                .with_label_values(&[job, state])
                .set(count as i64);
        }
    }

    fn progress(&self, record: &JobRecord) {
        let job = record.name.as_str();
        let mut seen = self.seen.lock().expect("metrics lock");
        if !seen.contains_key(job) {
            // Counters exist from the start at 0, so that rate() and increase() see them.
            for kind in Error::KINDS {
                self.errors.with_label_values(&[job, kind]);
            }
        }
        let last = seen.entry(job.to_string()).or_default();
        self.rows_copied
            .with_label_values(&[job])
            .inc_by(record.rows_copied.saturating_sub(last.rows_copied));
        self.changes_applied
            .with_label_values(&[job])
            .inc_by(record.changes_applied.saturating_sub(last.changes_applied));
        self.throttle_wait
            .with_label_values(&[job])
            .inc_by((record.throttle_wait_seconds - last.throttle_wait).max(0.0));
        self.verify_mismatches.with_label_values(&[job]).inc_by(
            record
                .verify_mismatches
                .saturating_sub(last.verify_mismatches),
        );
        *last = Seen {
            rows_copied: last.rows_copied.max(record.rows_copied),
            changes_applied: last.changes_applied.max(record.changes_applied),
            throttle_wait: last.throttle_wait.max(record.throttle_wait_seconds),
            verify_mismatches: last.verify_mismatches.max(record.verify_mismatches),
        };
        self.rows_total
            .with_label_values(&[job])
            .set(record.rows_total as i64);
        self.lag_seconds
            .with_label_values(&[job])
            .set(record.lag_seconds);
        self.lag_bytes
            .with_label_values(&[job])
            .set(record.lag_bytes as i64);
        self.eta
            .with_label_values(&[job])
            .set(record.eta_seconds.unwrap_or(0.0));
        self.waiting
            .with_label_values(&[job])
            .set(i64::from(record.waiting.is_some()));
        for phase in Phase::ALL {
            self.phase
                .with_label_values(&[job, phase.as_str()])
                .set(i64::from(phase == record.phase));
        }
    }

    fn batch(&self, job: &str, took: Duration) {
        self.batch_duration
            .with_label_values(&[job])
            .observe(took.as_secs_f64());
    }

    fn failed(&self, job: &str, error: &Error) {
        self.errors.with_label_values(&[job, error.kind()]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobKind;

    #[test]
    fn each_applied_migration_counts_once() {
        let metrics = Metrics::new();
        let row = |version: &str, status| HistoryRow {
            version: version.into(),
            name: "m".into(),
            checksum: String::new(),
            status,
            applied_at: chrono::Utc::now(),
            duration_ms: 40,
            error: None,
            applied_by: "me".into(),
        };
        let history = vec![row("1", Status::Completed), row("2", Status::Failed)];
        metrics.observe_migrations("pg", &history);
        metrics.observe_migrations("pg", &history);
        let text = metrics.render();
        assert!(
            text.contains("switchyard_migrations_applied_total{database=\"pg\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("switchyard_migration_duration_seconds_count{database=\"pg\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn counters_follow_record_totals() {
        let metrics = Metrics::new();
        let mut record = JobRecord::new("accounts", JobKind::Copy, "jobs/accounts.toml");
        record.rows_copied = 500;
        record.phase = Phase::Copy;
        metrics.progress(&record);
        record.rows_copied = 1_200;
        metrics.progress(&record);
        metrics.batch("accounts", Duration::from_millis(12));
        let text = metrics.render();
        assert!(
            text.contains("switchyard_job_rows_copied_total{job=\"accounts\"} 1200"),
            "{text}"
        );
        assert!(
            text.contains("switchyard_job_phase{job=\"accounts\",phase=\"copy\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("switchyard_job_phase{job=\"accounts\",phase=\"verify\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("switchyard_job_batch_duration_seconds_count{job=\"accounts\"} 1"),
            "{text}"
        );
        assert!(text.contains("switchyard_build_info{version=\""), "{text}");
        assert!(
            text.contains("switchyard_job_errors_total{job=\"accounts\",kind=\"database\"} 0"),
            "{text}"
        );
    }
}
