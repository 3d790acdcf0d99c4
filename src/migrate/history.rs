//! What a database records about its migrations, and the statuses a user sees.

use chrono::{DateTime, Utc};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Completed,
    Failed,
    RolledBack,
    /// Never stored: a migration file with no history row.
    Pending,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Completed => "COMPLETED",
            Status::Failed => "FAILED",
            Status::RolledBack => "ROLLED_BACK",
            Status::Pending => "PENDING",
        }
    }

    /// Parses a stored status (never `PENDING`).
    pub fn parse_stored(text: &str) -> Option<Status> {
        match text {
            "COMPLETED" => Some(Status::Completed),
            "FAILED" => Some(Status::Failed),
            "ROLLED_BACK" => Some(Status::RolledBack),
            _ => None,
        }
    }
}

/// One row of `switchyard_migrations`: the latest outcome for one version.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryRow {
    pub version: String,
    pub name: String,
    pub checksum: String,
    pub status: Status,
    pub applied_at: DateTime<Utc>,
    pub duration_ms: i64,
    pub error: Option<String>,
    pub applied_by: String,
}
