//! A job's two sides joined: what each phase of [`super::run`] asks of the source and
//! the sink, for every pair of stores.
//!
//! Invariants kept here, on top of each side's delivery contract:
//! - The lease is held on the sink (where the checkpoints are) before anything reads a
//!   checkpoint, and then what an earlier run left running on either side is ended.
//! - Capture starts (and its start is saved in the sink) before the first batch reads.
//! - A change position is confirmed to the source only after the sink applied the
//!   changes up to it and made the position durable with them.
//! - A consistent comparison holds the source's writes, drains the last changes into
//!   the sink, then compares: a difference it finds is real.
//! - After a cutover the way back is a pipeline of its own ([`Pipeline::reverse`]): the
//!   new table is its source, the old one its sink. Its capture was started by the
//!   forward sink before the switch ([`Sink::cutover`]), so every write made to the new
//!   table after the switch reaches the old one, and an abort is that pipeline's cutover.

use futures::future::BoxFuture;

use super::progress::{AppliedChanges, CutoverReport, KeyRange, Lag, Mismatch, RangeProgress};
use super::row::Position;
use super::sink::{CopyWorker, Sink};
use super::source::Source;
use crate::error::{Error, Result};

/// Opens the way back of a job that cut over: the target as a source, the source as a
/// sink (see [`Pipeline::reverse`]).
pub type OpenReverse = Box<dyn Fn() -> BoxFuture<'static, Result<Pipeline>> + Send + Sync>;

pub struct Pipeline {
    pub source: Box<dyn Source>,
    pub sink: Box<dyn Sink>,
    /// The sink's position, read once and then kept as changes are applied.
    position: Option<Position>,
    /// How to open the way back (`None` where the stores have none).
    open_reverse: Option<OpenReverse>,
    /// The way back, once opened.
    reverse: Option<Box<Pipeline>>,
}

impl Pipeline {
    pub fn new(source: Box<dyn Source>, sink: Box<dyn Sink>) -> Pipeline {
        Pipeline {
            source,
            sink,
            position: None,
            open_reverse: None,
            reverse: None,
        }
    }

    /// A pipeline whose changes after a cutover can be carried back by the pipeline
    /// `open_reverse` opens.
    pub fn with_reverse(mut self, open_reverse: OpenReverse) -> Pipeline {
        self.open_reverse = Some(open_reverse);
        self
    }

    /// The way back after a cutover, opened (and claimed) on first use; `None` where
    /// the stores have none.
    pub async fn reverse(&mut self) -> Result<Option<&mut Pipeline>> {
        if self.reverse.is_none() {
            let Some(open) = &self.open_reverse else {
                return Ok(None);
            };
            let mut reverse = open().await?;
            if !reverse.try_claim().await? {
                return Err(Error::Refused(
                    "another process holds the job's way back (its reverse capture)".into(),
                ));
            }
            self.reverse = Some(Box::new(reverse));
        }
        Ok(self.reverse.as_deref_mut())
    }

    /// Removes the way back's capture and checkpoints (idempotent): at contract, and
    /// once an abort swapped back.
    pub async fn close_reverse(&mut self) -> Result<()> {
        if let Some(reverse) = self.reverse().await? {
            reverse.source.stop_capture().await?;
            reverse.sink.start_fresh().await?;
        }
        self.reverse = None;
        Ok(())
    }

    pub async fn try_claim(&mut self) -> Result<bool> {
        if !self.sink.try_claim().await? {
            return Ok(false);
        }
        self.source.end_leftover_sessions().await?;
        Ok(true)
    }

    /// The sink first: it holds the lease, and its reconnect makes the sessions of the
    /// old connections (on both sides) leftovers.
    pub async fn reconnect(&mut self) -> Result<bool> {
        self.position = None;
        self.reverse = None;
        if !self.sink.reconnect().await? {
            return Ok(false);
        }
        self.source.reconnect().await?;
        self.source.end_leftover_sessions().await?;
        Ok(true)
    }

    pub async fn start_fresh(&mut self) -> Result<()> {
        self.position = None;
        self.source.forget().await?;
        self.sink.start_fresh().await
    }

    /// Expand, then capture (when the job catches up). Returns whether expand created
    /// the target.
    pub async fn expand(&mut self, capture: bool) -> Result<bool> {
        let created = self.sink.expand(self.source.as_ref()).await?;
        crate::crash_point!("expand.after_ddl");
        if capture {
            let start = self.source.start_capture().await?;
            self.sink.save_start(&start).await?;
            crate::crash_point!("expand.after_capture");
        }
        Ok(created)
    }

    pub async fn estimate_rows(&mut self) -> Result<u64> {
        self.source.estimate_rows().await
    }

    /// The job's ranges with their progress: planned on the source and saved in the
    /// sink on the first call, read back on every later one.
    pub async fn ranges(&mut self, concurrency: usize) -> Result<Vec<RangeProgress>> {
        let saved = self.sink.saved_ranges().await?;
        if !saved.is_empty() {
            return Ok(saved);
        }
        let planned = self.source.plan_ranges(concurrency).await?;
        self.sink.save_ranges(&planned).await?;
        self.sink.saved_ranges().await
    }

    pub async fn worker(&mut self) -> Result<Box<dyn CopyWorker>> {
        self.sink.copy_worker(self.source.as_ref()).await
    }

    pub async fn replica_lag(&mut self) -> Result<f64> {
        self.source.replica_lag().await
    }

    /// Reads changes (about `max_changes`, or all there are when `None`), applies them
    /// in the sink with their position, then confirms the position to the source.
    pub async fn apply_changes(&mut self, max_changes: Option<usize>) -> Result<AppliedChanges> {
        let after = match &self.position {
            Some(position) => position.clone(),
            None => self.sink.position().await?.ok_or_else(|| {
                crate::error::Error::State(
                    "the job catches up but has no saved capture position (run it again to expand)"
                        .into(),
                )
            })?,
        };
        let batch = self.source.read_changes(&after, max_changes).await?;
        let Some(end) = batch.end.clone() else {
            self.position = Some(after);
            return Ok(AppliedChanges {
                changes: 0,
                drained: batch.drained,
            });
        };
        crate::crash_point!("catch_up.after_read");
        let changes = self.sink.apply(&batch, self.source.as_mut()).await?;
        crate::crash_point!("catch_up.after_commit");
        self.source.confirm(&end).await?;
        crate::crash_point!("catch_up.after_advance");
        self.position = Some(end);
        Ok(AppliedChanges {
            changes,
            drained: batch.drained,
        })
    }

    pub async fn lag(&mut self) -> Result<Lag> {
        self.source.lag().await
    }

    /// Compares `ranges` chunk by chunk (see [`Sink::compare`]). Without `consistent`,
    /// nothing is held, so chunks that writes touched meanwhile may differ. With it,
    /// each range is compared as one chunk while the source's writes wait, after the
    /// last changes were applied (when `drain`).
    pub async fn verify(
        &mut self,
        ranges: &[KeyRange],
        checksum: bool,
        consistent: bool,
        drain: bool,
    ) -> Result<Vec<Mismatch>> {
        let mut mismatches = Vec::new();
        for range in ranges {
            let chunks = if consistent {
                vec![range.clone()]
            } else {
                self.source.chunks(range).await?
            };
            for chunk in chunks {
                let differs = if consistent {
                    self.compare_consistently(&chunk, checksum, drain).await?
                } else {
                    self.sink
                        .compare(self.source.as_mut(), &chunk, checksum)
                        .await?
                };
                if let Some(detail) = differs {
                    mismatches.push(Mismatch {
                        detail: format!("{}: {detail}", chunk.describe()),
                        range: chunk,
                    });
                }
            }
        }
        Ok(mismatches)
    }

    async fn compare_consistently(
        &mut self,
        chunk: &KeyRange,
        checksum: bool,
        drain: bool,
    ) -> Result<Option<String>> {
        self.source.hold_writes().await?;
        let compared = async {
            if drain {
                // Writes wait, so reading until caught up drains everything.
                self.apply_changes(None).await?;
            }
            self.sink
                .compare(self.source.as_mut(), chunk, checksum)
                .await
        }
        .await;
        let released = self.source.release_writes().await;
        let outcome = compared?;
        released?;
        Ok(outcome)
    }

    /// Drops the capture of a job whose slot held too much WAL: it cannot catch up any
    /// more.
    pub async fn give_up_capture(&mut self) -> Result<()> {
        self.source.stop_capture().await
    }

    /// Cuts over (see [`Sink::cutover`]); the capture goes once it did.
    pub async fn cutover(&mut self) -> Result<CutoverReport> {
        let report = self.sink.cutover(self.source.as_mut()).await?;
        crate::crash_point!("cutover.after_commit");
        self.source.stop_capture().await?;
        crate::crash_point!("cutover.after_drop_capture");
        Ok(report)
    }

    /// The cutover this job already made, if any (its capture is removed: a process can
    /// die between the switch and that).
    pub async fn completed_cutover(&mut self) -> Result<Option<CutoverReport>> {
        let report = self.sink.completed_cutover().await?;
        if report.is_some() {
            self.source.stop_capture().await?;
        }
        Ok(report)
    }

    /// Undoes the job before its cutover: capture, checkpoints and (when expand
    /// created it) the target go; the source stays as it was.
    pub async fn abort(&mut self, created_target: bool) -> Result<()> {
        self.source.stop_capture().await?;
        self.position = None;
        self.sink
            .abort(self.source.as_mut(), created_target)
            .await?;
        self.source.forget().await
    }

    /// After the way back swapped the tables back: the job's checkpoints go on both
    /// sides (the target, with every row it had, is kept).
    pub async fn forget(&mut self) -> Result<()> {
        self.position = None;
        self.sink.start_fresh().await?;
        self.source.forget().await
    }

    pub async fn contract(&mut self) -> Result<()> {
        self.source.stop_capture().await?;
        self.close_reverse().await?;
        crate::crash_point!("contract.after_drop_capture");
        self.source.contract().await?;
        crate::crash_point!("contract.after_ddl");
        self.sink.contract().await
    }
}
