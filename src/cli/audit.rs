//! `switchyard audit`, and the one helper every changing command uses to write its entry.

use chrono::Utc;

use super::table::Table;
use crate::config::Config;
use crate::error::Result;
use crate::state::{self, actor, AuditEntry, Outcome, StateStore};

/// The command line as typed, less the binary (it holds no secrets: those live in the
/// configuration).
pub fn command_line() -> String {
    std::env::args().skip(1).collect::<Vec<_>>().join(" ")
}

/// Records one entry; a failure to record is logged, not fatal to work already done.
pub async fn record(
    store: &dyn StateStore,
    database: Option<&str>,
    outcome: Outcome,
    detail: String,
) {
    let entry = AuditEntry {
        at: Utc::now(),
        actor: actor(),
        command: command_line(),
        database: database.map(str::to_string),
        outcome,
        detail,
    };
    if let Err(error) = store.append_audit(&entry).await {
        tracing::error!(%error, "could not write the audit log");
    }
}

pub async fn show(config: &Config, limit: usize, json: bool) -> Result<()> {
    let store = state::open(&config.state.url).await?;
    let entries = store.recent_audit(limit).await?;
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
