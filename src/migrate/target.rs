//! The contract between the migration runner and a database backend.

use std::time::Duration;

use async_trait::async_trait;

use super::baseline::{ForeignRow, Tool};
use super::files::Migration;
use super::history::HistoryRow;
use crate::error::{Error, Result};

/// Which way a migration runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Up,
    Down,
}

impl Step {
    /// `up` or `down`, as a stored progress record names the direction.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Up => "up",
            Step::Down => "down",
        }
    }
}

/// A database that migrations are applied to, with its history kept inside it.
///
/// Contract: `lock` is held until `unlock` or until the connection ends (so a crashed
/// run never leaves a stale lock); `apply` records its outcome itself: on success the
/// history row is written in the same transaction as the migration wherever the
/// database allows it; on failure the row says FAILED (for `Up`) with the error, and the
/// error is returned as [`crate::Error::MigrationFailed`].
#[async_trait]
pub trait MigrationTarget: Send {
    /// The database's name in the configuration, for messages.
    fn database(&self) -> &str;

    /// Takes this database's migration lock, waiting at most `wait` for another run.
    async fn lock(&mut self, wait: Duration) -> Result<()>;

    async fn unlock(&mut self) -> Result<()>;

    /// Creates the history table (collection, index) if it does not exist.
    async fn prepare_history(&mut self) -> Result<()>;

    /// The recorded history; empty when there is no history table yet. Reads only.
    async fn history(&mut self) -> Result<Vec<HistoryRow>>;

    /// Records `migration` as applied without running it (a baseline): COMPLETED, with
    /// its checksum and no duration.
    async fn record_applied(&mut self, migration: &Migration, applied_by: &str) -> Result<()>;

    /// The rows of another tool's history table ([`Tool::query`]), or `None` when the
    /// table does not exist. Reads only.
    async fn foreign_history(&mut self, tool: Tool) -> Result<Option<Vec<ForeignRow>>> {
        Err(Error::Refused(format!(
            "database `{}`: baseline --from {} reads a SQL history table, which only PostgreSQL databases have",
            self.database(),
            tool.name()
        )))
    }

    /// Runs one migration in the given direction and records the outcome.
    async fn apply(
        &mut self,
        migration: &Migration,
        step: Step,
        applied_by: &str,
    ) -> Result<Duration>;
}
