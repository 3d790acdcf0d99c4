//! A reindex's copy handed to the cluster (`[copy] method = "server"`): one `_reindex`
//! of the old index into the new, in `slices` parallel slices at the job's rate as
//! `requests_per_second`; switchyard follows it and keeps catch-up, verify and cutover.
//!
//! Invariants:
//! - The copy is one range (the index), one engine batch per look at the server's task:
//!   the range's checkpoint holds the task's id (`last_key = ["task", id]`) while it runs,
//!   and its `rows` the documents that task has written, so a run killed meanwhile
//!   follows the same task when it starts again (the task outlives it).
//! - Writes are idempotent: documents keep their versions (`version_type = external`)
//!   and version conflicts are skipped (`conflicts = proceed`: a newer version, written
//!   by the catch-up, is there), so a `_reindex` started again (its task gone, the job
//!   paused) loses nothing and overwrites nothing newer.
//! - A server without the tasks API (some API-compatible servers) gets a synchronous
//!   `_reindex` instead: the range is done when it returns, and nothing can stop it
//!   before.
//! - A document the new mapping refuses ends the server's copy; the job fails naming
//!   the first ones, as the bulk copy does.

use std::time::Duration;

use async_trait::async_trait;
use elasticsearch::http::Method;
use serde_json::{json, Value};

use super::checkpoints::Checkpoints;
use super::{path_segment, Es, REINDEX_TIMEOUT};
use crate::engine::progress::RangeProgress;
use crate::engine::sink::CopyWorker;
use crate::error::{Error, Result};

/// How long the worker waits between two looks at a running task.
const LOOK: Duration = Duration::from_secs(1);
/// Refused documents named in an error.
const NAMED: usize = 3;

pub struct ServerCopy {
    es: Es,
    old: String,
    new: String,
    /// `_reindex`'s `slices` parameter.
    slices: String,
    checkpoints: Checkpoints,
    /// The rate in force, as last given by the engine (`None`: not given yet).
    rate: Option<u64>,
    /// The task the server copies in, as this worker last saw it.
    task: Option<String>,
    /// Whether the server has the tasks API (`None`: not asked yet).
    tasks_api: Option<bool>,
}

impl ServerCopy {
    pub fn new(es: &Es, old: &str, new: &str, slices: String, checkpoints: Checkpoints) -> Self {
        ServerCopy {
            es: es.clone(),
            old: old.to_string(),
            new: new.to_string(),
            slices,
            checkpoints,
            rate: None,
            task: None,
            tasks_api: None,
        }
    }

    async fn has_tasks_api(&mut self) -> Result<bool> {
        if let Some(known) = self.tasks_api {
            return Ok(known);
        }
        let reply = self
            .es
            .call(Method::Get, "/_tasks?actions=*reindex", None)
            .await?;
        let known = reply.is_success();
        if !known {
            tracing::info!(database = %self.es.name(), "the server has no tasks API; its _reindex runs synchronously, and the job follows it only when it returns");
        }
        self.tasks_api = Some(known);
        Ok(known)
    }

    fn path(&self, rows_per_second: u64, wait: bool) -> String {
        format!(
            "/_reindex?slices={}&requests_per_second={}&wait_for_completion={wait}&refresh=false",
            self.slices,
            requests_per_second(rows_per_second)
        )
    }

    fn body(&self, batch: usize) -> Value {
        json!({
            "source": {"index": self.old, "size": batch},
            "dest": {"index": self.new, "version_type": "external"},
            "conflicts": "proceed",
        })
    }

    /// Starts the server's copy; returns the rows it wrote when it ran synchronously
    /// (a server without the tasks API).
    async fn start(&mut self, progress: &mut RangeProgress, batch: usize) -> Result<u64> {
        let synchronous = !self.has_tasks_api().await?;
        let reply = self
            .es
            .call_with_timeout(
                Method::Post,
                &self.path(self.rate.unwrap_or_default(), synchronous),
                Some(&self.body(batch)),
                synchronous.then_some(REINDEX_TIMEOUT),
            )
            .await?;
        if !reply.is_success() {
            let context = format!(
                "cannot start `_reindex` of `{}` into `{}`",
                self.old, self.new
            );
            return Err(self.es.refused(&context, &reply));
        }
        if synchronous {
            self.check_failures(&reply.body)?;
            return self
                .record(progress, None, written(&reply.body), true)
                .await;
        }
        let task = reply.body["task"].as_str().unwrap_or_default().to_string();
        if task.is_empty() {
            return Err(Error::State(format!(
                "`_reindex` of `{}` answered no task: {}",
                self.old, reply.body
            )));
        }
        tracing::info!(task = %task, old = %self.old, new = %self.new, slices = %self.slices, "the cluster copies the index");
        self.record(progress, Some(task), 0, false).await
    }

    /// Looks at `task`, after [`LOOK`] when this worker looked at it before.
    async fn follow(&mut self, progress: &mut RangeProgress, task: &str) -> Result<u64> {
        if self.task.as_deref() == Some(task) {
            tokio::time::sleep(LOOK).await;
        }
        let path = format!("/_tasks/{}", path_segment(task));
        let reply = self.es.call(Method::Get, &path, None).await?;
        match reply.status {
            200 if reply.body["completed"] == true => {
                let response = &reply.body["response"];
                if !reply.body["error"].is_null() {
                    return Err(self.es.refused(
                        &format!("the cluster's `_reindex` of `{}` failed", self.old),
                        &reply,
                    ));
                }
                self.check_failures(response)?;
                self.record(progress, None, written(response), true).await
            }
            200 => {
                let status = &reply.body["task"]["status"];
                let rows = written(status);
                self.record(progress, Some(task.to_string()), rows, false)
                    .await
            }
            404 => {
                tracing::warn!(task, "the server's reindex task is gone (was the node restarted?); starting the copy again");
                self.record(progress, None, 0, false).await
            }
            _ => Err(self
                .es
                .refused(&format!("cannot follow task `{task}`"), &reply)),
        }
    }

    fn check_failures(&self, response: &Value) -> Result<()> {
        let failures = response["failures"].as_array().cloned().unwrap_or_default();
        if failures.is_empty() {
            return Ok(());
        }
        let named: Vec<String> = failures
            .iter()
            .take(NAMED)
            .map(|f| {
                let cause = &f["cause"];
                format!(
                    "_id `{}`: {}: {}",
                    f["id"].as_str().unwrap_or_default(),
                    cause["type"].as_str().unwrap_or_default(),
                    cause["reason"].as_str().unwrap_or_default()
                )
            })
            .collect();
        Err(Error::Store {
            database: self.es.name().to_string(),
            context: format!("`{}` refused {} documents", self.new, failures.len()),
            message: format!(
                "{}; the cluster's `_reindex` stops at a refused batch: fix the new mapping (a field whose values do not fit its type), abort the job and run it again, or copy with `method = \"bulk\"`, which reports the refused documents and goes on",
                named.join("; ")
            ),
            transient: false,
        })
    }

    /// Saves the range's checkpoint: the running task (if any), the rows it wrote, and
    /// whether the copy is done. Returns the rows written since the last look.
    async fn record(
        &mut self,
        progress: &mut RangeProgress,
        task: Option<String>,
        rows: u64,
        done: bool,
    ) -> Result<u64> {
        let running_before = progress.last_key.is_some();
        let next = RangeProgress {
            range: progress.range.clone(),
            last_key: task.map(|id| vec!["task".to_string(), id]),
            rows,
            done,
        };
        self.checkpoints.save_range(&next).await?;
        self.task = task_of(&next);
        let new_rows = if running_before {
            rows.saturating_sub(progress.rows)
        } else {
            rows
        };
        *progress = next;
        Ok(new_rows)
    }
}

/// The task a range's checkpoint names, while the server copies.
fn task_of(progress: &RangeProgress) -> Option<String> {
    match progress.last_key.as_deref() {
        Some([kind, id]) if kind == "task" => Some(id.clone()),
        _ => None,
    }
}

/// Documents a `_reindex` (or its task's status) wrote, version conflicts included
/// (a newer version was there: the document is copied).
fn written(status: &Value) -> u64 {
    ["created", "updated", "version_conflicts"]
        .iter()
        .map(|field| status[field].as_u64().unwrap_or(0))
        .sum()
}

/// The job's rate as `requests_per_second` (documents per second; -1: unthrottled).
fn requests_per_second(rows_per_second: u64) -> String {
    match rows_per_second {
        0 => "-1".to_string(),
        rate => rate.to_string(),
    }
}

#[async_trait]
impl CopyWorker for ServerCopy {
    async fn seize(&mut self, known: &RangeProgress, _fence: i64) -> Result<RangeProgress> {
        Ok(known.clone())
    }

    async fn copy_batch(&mut self, progress: &mut RangeProgress, limit: usize) -> Result<u64> {
        match task_of(progress) {
            Some(task) => self.follow(progress, &task).await,
            None => self.start(progress, limit).await,
        }
    }

    fn paces_itself(&self) -> bool {
        true
    }

    async fn set_rate(&mut self, rows_per_second: u64) -> Result<()> {
        let before = self.rate.replace(rows_per_second);
        let Some(task) = self.task.clone() else {
            return Ok(());
        };
        if before.is_some_and(|rate| rate != rows_per_second) {
            let path = format!(
                "/_reindex/{}/_rethrottle?requests_per_second={}",
                path_segment(&task),
                requests_per_second(rows_per_second)
            );
            self.es
                .expect(
                    Method::Post,
                    &path,
                    None,
                    "cannot change the reindex's rate",
                )
                .await?;
            tracing::info!(task = %task, rows_per_second, "the cluster's reindex goes at the new rate");
        }
        Ok(())
    }

    async fn leave(&mut self, progress: &mut RangeProgress) -> Result<()> {
        let Some(task) = task_of(progress) else {
            return Ok(());
        };
        let path = format!("/_tasks/{}/_cancel", path_segment(&task));
        let reply = self.es.call(Method::Post, &path, None).await?;
        if !reply.is_success() && reply.status != 404 {
            return Err(self
                .es
                .refused(&format!("cannot stop the reindex task `{task}`"), &reply));
        }
        tracing::info!(task = %task, "stopped the cluster's reindex; it starts again from the first document when the job goes on");
        self.record(progress, None, 0, false).await.map(|_| ())
    }
}
