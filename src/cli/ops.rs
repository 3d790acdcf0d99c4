//! `health` and `erase`.

use std::path::Path;

use super::table::Table;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::ops::erase::{self, subject_digest, Erased};
use crate::ops::health::{self, Severity};
use crate::state::{self, Outcome};

pub async fn health(config: &Config, selected: &[String], json: bool) -> Result<()> {
    let store = state::open(&config.state.url).await?;
    let findings = health::check(config, selected, store.as_ref()).await?;
    let actions = findings
        .iter()
        .filter(|f| f.status == Severity::Action)
        .count();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&findings).expect("findings serialise")
        );
    } else {
        let mut table = Table::new(&["DATABASE", "CHECK", "STATUS", "DETAIL"]);
        for finding in &findings {
            table.row(
                vec![
                    finding.database.clone().unwrap_or_else(|| "-".into()),
                    finding.check.clone(),
                    finding.status.as_str().to_string(),
                    finding.message.clone(),
                ],
                finding
                    .fix
                    .iter()
                    .map(|fix| format!("Fix: {fix}"))
                    .collect(),
            );
        }
        print!("{}", table.render());
    }
    match actions {
        0 => {
            if !json {
                println!("healthy: nothing needs action");
            }
            Ok(())
        }
        n => Err(Error::Unhealthy(format!(
            "{n} finding{} need{} action",
            if n == 1 { "" } else { "s" },
            if n == 1 { "s" } else { "" }
        ))),
    }
}

pub async fn erase(
    config: &Config,
    subject: &str,
    map: &Path,
    dry_run: bool,
    json: bool,
) -> Result<()> {
    if subject.trim().is_empty() {
        return Err(Error::Usage("--subject is empty".into()));
    }
    let entries = erase::load_map(map, config)?;
    let digest = subject_digest(subject);
    let outcome = erase::erase(config, &entries, subject, dry_run).await;
    let (done, error) = match outcome {
        Ok(done) => (done, None),
        Err((done, error)) => (done, Some(error)),
    };
    if !dry_run {
        let store = state::open(&config.state.url).await?;
        let mut databases: Vec<&str> = entries.iter().map(|e| e.database.as_str()).collect();
        databases.dedup();
        for database in databases {
            let here: Vec<String> = done
                .iter()
                .filter(|e| e.database == database)
                .map(|e| format!("{} {} in {}", e.action.past(), e.count, e.target))
                .collect();
            let (result, detail) = match &error {
                Some(error) if here.is_empty() => (
                    Outcome::Failed,
                    format!("erasure of subject {digest}: {error}"),
                ),
                _ => (
                    Outcome::Ok,
                    format!("erasure of subject {digest}: {}", here.join(", ")),
                ),
            };
            state::audit(store.as_ref(), Some(database), result, detail).await;
        }
    }
    report(&done, &digest, dry_run, json);
    match error {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

fn report(done: &[Erased], digest: &str, dry_run: bool, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(done).expect("the report serialises")
        );
        return;
    }
    let mut table = Table::new(&["DATABASE", "WHERE", "ACTION", "COUNT"]);
    for erased in done {
        let action = if dry_run {
            format!("would be {}", erased.action.past())
        } else {
            erased.action.past().to_string()
        };
        table.row(
            vec![
                erased.database.clone(),
                erased.target.clone(),
                action,
                erased.count.to_string(),
            ],
            Vec::new(),
        );
    }
    print!("{}", table.render());
    let total: u64 = done.iter().map(|e| e.count).sum();
    if dry_run {
        println!("dry run for subject {digest}: {total} rows and documents would be erased; nothing was changed");
    } else {
        println!("subject {digest}: {total} rows and documents erased (recorded in the audit log under the digest)");
    }
}
