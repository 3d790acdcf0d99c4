//! `switchyard audit`: the audit log, newest first.

use chrono::{DateTime, Utc};

use super::table::Table;
use crate::config::Config;
use crate::error::Result;
use crate::state;

/// `--since`: an RFC 3339 time (`2026-12-01T09:00:00Z`), a UTC date (`2026-12-01`), or a
/// span back from now (`24h`, `7days`).
pub fn parse_since(text: &str) -> std::result::Result<DateTime<Utc>, String> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.to_utc());
    }
    if let Ok(day) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(day.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc());
    }
    humantime::parse_duration(text)
        .map_err(|_| {
            format!("`{text}` is neither a time (2026-12-01T09:00:00Z), a date (2026-12-01) nor a span (24h, 7days)")
        })
        .and_then(|span| {
            chrono::Duration::from_std(span)
                .map(|span| Utc::now() - span)
                .map_err(|_| format!("`{text}` reaches too far back"))
        })
}

pub async fn show(
    config: &Config,
    limit: usize,
    since: Option<DateTime<Utc>>,
    json: bool,
) -> Result<()> {
    let store = state::open(&config.state.url).await?;
    let entries = store.recent_audit(limit, since).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&entries).expect("audit entries serialise")
        );
        return Ok(());
    }
    if entries.is_empty() {
        println!("The audit log is empty ({}).", config.state.url);
        return Ok(());
    }
    let mut table = Table::new(&["AT", "OUTCOME", "DATABASE", "ACTOR", "COMMAND"]);
    for entry in entries {
        table.row(
            vec![
                entry.at.format("%Y-%m-%d %H:%M:%S").to_string(),
                entry.outcome.as_str().to_string(),
                entry.database.unwrap_or_else(|| "-".into()),
                entry.actor,
                entry.command,
            ],
            vec![entry.detail],
        );
    }
    print!("{}", table.render());
    Ok(())
}
