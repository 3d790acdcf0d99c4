//! `health`.

use super::table::Table;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::ops::health::{self, Severity};
use crate::state;

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
