//! Catch-up applied in parallel by key, where order allows: a pass of many changes is
//! spread over `copy.concurrency` sessions of the target (lanes), each applying the
//! changes of its keys in their order.
//!
//! Invariants:
//! - The changes of one key go to one lane, in their order. A change that touches two
//!   keys (its key changed) or reads a current row (an update with unchanged TOAST
//!   values) is a barrier: the lanes finish what came before it, it is applied alone
//!   on the job's control session, and the lanes go on after it.
//! - Lanes are used only where the order of different keys cannot matter: the target
//!   has no unique index but its key's, no foreign key or exclusion constraint, and no
//!   trigger of its own. Elsewhere, for a pass of few changes, and at cutover (whose
//!   drain commits with the switch), changes are applied in one transaction in order,
//!   with the position.
//! - Each lane commits on its own session; the position moves only after every lane
//!   and barrier committed. A crash in between replays the pass from the position saved
//!   before it, and applies are idempotent by key ([`super::apply`]), so the target
//!   converges on the source. (The count of changes applied then counts the replayed
//!   ones again.)
//! - Lane sessions are job sessions: a run that takes the job over ends them.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use tokio_postgres::Client;

use super::apply::{touches_one_key, ChangeApply};
use super::sink::PgSink;
use crate::engine::row::{Change, Schema};
use crate::engine::source::{ChangeBatch, Source};
use crate::error::Result;

/// A pass of fewer changes is applied in one transaction with its position.
pub(super) const LANES_FROM: usize = 256;

/// The target's sessions that apply changes in parallel.
pub(super) struct Lanes {
    lanes: Vec<Lane>,
    /// The source's rows, whose key picks the lane.
    source: Schema,
}

struct Lane {
    client: Client,
    apply: ChangeApply,
}

impl Lanes {
    /// The lanes of the target of `sink` (opened on first use), or `None` where the
    /// order of different keys can matter or the job has one copy task.
    pub async fn open(sink: &mut PgSink, source: &dyn Source) -> Result<Option<Lanes>> {
        let count = sink.spec.copy.concurrency;
        if count < 2 {
            return Ok(None);
        }
        let target = sink.target().await?.clone();
        let order_free: bool = sink
            .side
            .scalar(
                "SELECT (SELECT count(*) FROM pg_index WHERE indrelid = $1 AND indisunique) <= 1
                    AND NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = $1 AND contype IN ('f', 'x'))
                    AND NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = $1 AND NOT tgisinternal)",
                &[&target.oid],
                "cannot read the target's constraints",
            )
            .await?;
        if !order_free {
            tracing::info!(job = %sink.spec.name, "catch-up applied in one session: the target has unique indexes, foreign keys or triggers that order changes");
            return Ok(None);
        }
        let projection = sink.projection(source.schema(), &target)?;
        let mut lanes = Vec::with_capacity(count);
        for _ in 0..count {
            lanes.push(Lane {
                client: sink.side.connect().await?,
                apply: ChangeApply::new(
                    &sink.side.database,
                    source.schema().clone(),
                    sink.source_name.to_string(),
                    target.clone(),
                    projection.clone(),
                ),
            });
        }
        tracing::info!(job = %sink.spec.name, lanes = count, "catch-up applied in parallel by key");
        Ok(Some(Lanes {
            lanes,
            source: source.schema().clone(),
        }))
    }

    /// Applies `changes`, none a barrier, each lane in its own transaction.
    async fn apply(&mut self, database: &str, changes: &[Change]) -> Result<()> {
        let count = self.lanes.len() as u64;
        let mut shares: Vec<Vec<&Change>> = vec![Vec::new(); self.lanes.len()];
        for change in changes {
            shares[(self.lane_of(change) % count) as usize].push(change);
        }
        let runs = self
            .lanes
            .iter_mut()
            .zip(shares)
            .filter(|(_, share)| !share.is_empty())
            .map(|(lane, share)| async move {
                let client = &lane.client;
                let failed =
                    |what: &'static str| move |e| crate::error::Error::database(database, what, e);
                client
                    .batch_execute("BEGIN")
                    .await
                    .map_err(failed("cannot begin a catch-up transaction"))?;
                if let Err(error) = lane.apply.apply_keyed(client, &share).await {
                    let _ = client.batch_execute("ROLLBACK").await;
                    return Err(error);
                }
                client
                    .batch_execute("COMMIT")
                    .await
                    .map_err(failed("cannot commit a catch-up transaction"))
            });
        futures::future::try_join_all(runs).await.map(drop)
    }

    /// A hash of the change's key (as text, as deletes carry it).
    fn lane_of(&self, change: &Change) -> u64 {
        let mut hasher = DefaultHasher::new();
        match change {
            Change::Upsert { row, .. } => self.source.key_of(row).hash(&mut hasher),
            Change::Delete { key } => key.hash(&mut hasher),
        }
        hasher.finish()
    }
}

impl PgSink {
    /// Applies a pass in lanes (see the module docs), barriers on the control session,
    /// then moves the position. Returns how many changes it applied.
    pub(super) async fn apply_in_lanes(
        &mut self,
        lanes: &mut Lanes,
        batch: &ChangeBatch,
        source: &mut dyn Source,
    ) -> Result<u64> {
        let database = self.side.database.clone();
        let mut rest = batch.changes.as_slice();
        while !rest.is_empty() {
            let keyed = rest.iter().take_while(|c| touches_one_key(c)).count();
            if keyed > 0 {
                lanes.apply(&database, &rest[..keyed]).await?;
                rest = &rest[keyed..];
                continue;
            }
            let barrier = ChangeBatch {
                changes: rest[..1].to_vec(),
                end: None,
                drained: false,
            };
            self.apply_in_transaction(&barrier, source).await?;
            rest = &rest[1..];
        }
        crate::crash_point!("catch_up.after_write");
        if let Some(end) = &batch.end {
            self.checkpoints()
                .advance(end, batch.changes.len() as u64)
                .await?;
        }
        crate::crash_point!("catch_up.after_checkpoint");
        Ok(batch.changes.len() as u64)
    }
}
