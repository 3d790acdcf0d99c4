//! `switchyard health`: what needs an operator's attention across every configured
//! database and job, each finding with what to do about it.
//!
//! Checks: each database answers (and its server version); its migrations (failed,
//! pending, applied files changed since); PostgreSQL's replication slots with the WAL
//! they hold, and switchyard's slots and publications that no unfinished job owns (the
//! slot left behind that fills a disk); aliases not where a job's cutover put them; jobs
//! failed, paused too long, silent too long, or lagging. Reads only.
//!
//! A finding is `ok`, a `notice` (worth knowing) or `action` (something to do: the
//! command exits 1). The judgments are pure functions of what was read, unit-tested.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::backend::postgres::health::{self as pg, Facts};
use crate::backend::{elasticsearch, mongodb};
use crate::config::{Config, DatabaseKind};
use crate::engine::{JobRecord, Phase};
use crate::error::Result;
use crate::migrate::{Migrator, Status};
use crate::state::StateStore;

/// A job paused longer than this needs a decision.
const PAUSED_TOO_LONG: Duration = Duration::from_secs(3600);
/// A job working (copy, catch-up, verify, cutover) that has not saved its record for
/// this long has probably lost its process.
const SILENT_TOO_LONG: Duration = Duration::from_secs(600);
/// Catch-up lag beyond this needs attention.
const LAG_TOO_LARGE: Duration = Duration::from_secs(900);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Ok,
    Notice,
    Action,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Ok => "ok",
            Severity::Notice => "notice",
            Severity::Action => "ACTION",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The database it concerns; `None` for a job.
    pub database: Option<String>,
    /// What was checked: `server`, `migrations`, `slot NAME`, `job NAME`, …
    pub check: String,
    pub status: Severity,
    pub message: String,
    /// What to do, for a notice or an action.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Finding {
    fn new(
        database: Option<&str>,
        check: impl Into<String>,
        status: Severity,
        message: impl Into<String>,
    ) -> Finding {
        Finding {
            database: database.map(str::to_string),
            check: check.into(),
            status,
            message: message.into(),
            fix: None,
        }
    }

    fn fix(mut self, fix: impl Into<String>) -> Finding {
        self.fix = Some(fix.into());
        self
    }
}

/// Every check for the selected databases (all when empty) and every job.
pub async fn check(
    config: &Config,
    selected: &[String],
    store: &dyn StateStore,
) -> Result<Vec<Finding>> {
    let records = JobRecord::load_all(store).await?;
    let live: Vec<String> = records
        .iter()
        .filter(|r| !r.phase.is_final())
        .map(|r| r.name.clone())
        .collect();
    let names: Vec<String> = if selected.is_empty() {
        config.databases.keys().cloned().collect()
    } else {
        for name in selected {
            config.database(name)?;
        }
        selected.to_vec()
    };
    let mut findings = Vec::new();
    for name in &names {
        let database = config.database(name)?;
        let mut replication = Vec::new();
        let reached = match database.kind {
            DatabaseKind::Postgresql => pg::inspect(name, &database.url).await.map(|facts| {
                replication = judge_replication(name, &facts, &live);
                facts.version
            }),
            DatabaseKind::Mongodb => mongodb::server_version(name, &database.url).await,
            DatabaseKind::Elasticsearch => elasticsearch::server_version(name, database).await,
        };
        match reached {
            Ok(version) => findings.push(Finding::new(Some(name), "server", Severity::Ok, version)),
            Err(error) => {
                findings.push(
                    Finding::new(
                        Some(name),
                        "server",
                        Severity::Action,
                        format!("unreachable: {error}"),
                    )
                    .fix("check the URL in the configuration and that the server runs"),
                );
                continue;
            }
        }
        findings.append(&mut replication);
        match Migrator::from_config(config.clone(), std::slice::from_ref(name)) {
            Ok(migrator) => match migrator.status().await {
                Ok(rows) => findings.extend(judge_migrations(name, &rows)),
                Err(error) => findings.push(Finding::new(
                    Some(name),
                    "migrations",
                    Severity::Action,
                    format!("cannot read the history: {error}"),
                )),
            },
            Err(error) => findings.push(
                Finding::new(
                    Some(name),
                    "migrations",
                    Severity::Action,
                    error.to_string(),
                )
                .fix("fix the files named (switchyard validate --offline)"),
            ),
        }
    }
    for record in &records {
        if let Some(finding) = judge_alias(config, &names, record).await {
            findings.push(finding);
        }
    }
    findings.extend(judge_jobs(&records, Utc::now()));
    Ok(findings)
}

fn judge_migrations(database: &str, rows: &[crate::migrate::StatusRow]) -> Vec<Finding> {
    let mut findings = Vec::new();
    let fix_failed = format!("fix the migration, then: switchyard migrate --databases {database}");
    for row in rows {
        if row.status == Status::Failed {
            findings.push(
                Finding::new(
                    Some(database),
                    format!("migration {}", row.version),
                    Severity::Action,
                    format!(
                        "{} FAILED: {}",
                        row.name,
                        row.error.as_deref().unwrap_or("no error recorded")
                    ),
                )
                .fix(fix_failed.clone()),
            );
        }
        if let Some(warning) = row
            .warning
            .as_deref()
            .filter(|w| w.starts_with("the files changed"))
        {
            findings.push(
                Finding::new(
                    Some(database),
                    format!("migration {}", row.version),
                    Severity::Action,
                    format!("{}: {warning}", row.name),
                )
                .fix("restore the applied file and put the change in a new migration"),
            );
        }
    }
    let applied = rows
        .iter()
        .filter(|r| r.status == Status::Completed)
        .count();
    let pending = rows.iter().filter(|r| r.status == Status::Pending).count();
    let failed = rows.iter().filter(|r| r.status == Status::Failed).count();
    let summary = match failed {
        0 => format!("{applied} applied, {pending} pending"),
        n => format!("{applied} applied, {n} failed, {pending} pending"),
    };
    findings.push(if pending > 0 {
        Finding::new(Some(database), "migrations", Severity::Notice, summary)
            .fix(format!("switchyard migrate --databases {database}"))
    } else {
        Finding::new(Some(database), "migrations", Severity::Ok, summary)
    });
    findings
}

fn size(bytes: i64) -> String {
    bytesize::ByteSize::b(bytes.max(0) as u64).to_string()
}

/// Slots and publications: switchyard's own that no unfinished job owns are actions
/// (the WAL a slot holds grows until the disk fills); another tool's inactive slot that
/// holds WAL is a notice.
fn judge_replication(database: &str, facts: &Facts, live: &[String]) -> Vec<Finding> {
    let owned = facts.owned_names(live);
    let mut findings = Vec::new();
    for slot in &facts.slots {
        let check = format!("slot {}", slot.name);
        let held = size(slot.wal_held_bytes);
        let drop = format!("SELECT pg_drop_replication_slot('{}');", slot.name);
        let finding = if owned.contains(&slot.name) {
            Finding::new(
                Some(database),
                check,
                Severity::Ok,
                format!("held by its job, {held} of WAL"),
            )
        } else if slot.name.starts_with("switchyard_") {
            Finding::new(
                Some(database),
                check,
                Severity::Action,
                format!("no unfinished job owns it, and it holds {held} of WAL that the server cannot recycle"),
            )
            .fix(format!("if no job of another configuration uses it: {drop}"))
        } else if !slot.active && slot.wal_held_bytes > 0 {
            Finding::new(
                Some(database),
                check,
                Severity::Notice,
                format!("not switchyard's; inactive, holding {held} of WAL"),
            )
            .fix(format!("if its consumer is gone: {drop}"))
        } else {
            continue;
        };
        findings.push(finding);
    }
    for publication in facts.publications.iter().filter(|p| !owned.contains(p)) {
        findings.push(
            Finding::new(
                Some(database),
                format!("publication {publication}"),
                Severity::Notice,
                "no unfinished job owns it",
            )
            .fix(format!("DROP PUBLICATION {publication};")),
        );
    }
    findings
}

/// An alias a job's cutover moved: still on the index it put it on?
async fn judge_alias(config: &Config, names: &[String], record: &JobRecord) -> Option<Finding> {
    let target = record.alias.as_ref()?;
    if record.phase == Phase::Aborted {
        return None;
    }
    let spec = crate::job::load(std::path::Path::new(&record.file), config).ok()?;
    let database = spec
        .target
        .as_ref()
        .map_or(&spec.source.database, |t| &t.database);
    if !names.contains(database) {
        return None;
    }
    let check = format!("alias {}", target.alias);
    let indexes = match elasticsearch::alias_indexes(
        database,
        config.database(database).ok()?,
        &target.alias,
    )
    .await
    {
        Ok(indexes) => indexes,
        Err(error) => {
            return Some(Finding::new(
                Some(database),
                check,
                Severity::Action,
                format!("cannot read it: {error}"),
            ))
        }
    };
    Some(if indexes == [target.index.clone()] {
        Finding::new(
            Some(database),
            check,
            Severity::Ok,
            format!("on {}, where job {} put it", target.index, record.name),
        )
    } else {
        let now = if indexes.is_empty() {
            "nowhere (the alias is gone)".to_string()
        } else {
            indexes.join(", ")
        };
        Finding::new(
            Some(database),
            check,
            Severity::Action,
            format!("points at {now}, not at {} where job {}'s cutover put it", target.index, record.name),
        )
        .fix(format!(
            "if that was not meant: POST /_aliases {{\"actions\": [{{\"add\": {{\"index\": \"{}\", \"alias\": \"{}\"}}}}]}} (and remove the others)",
            target.index, target.alias
        ))
    })
}

fn judge_jobs(records: &[JobRecord], now: DateTime<Utc>) -> Vec<Finding> {
    let mut findings = Vec::new();
    for record in records.iter().filter(|r| !r.phase.is_final()) {
        let check = format!("job {}", record.name);
        let name = &record.name;
        let since = |at: DateTime<Utc>| (now - at).to_std().unwrap_or_default();
        let ago = |at: DateTime<Utc>| {
            humantime::format_duration(Duration::from_secs(since(at).as_secs())).to_string()
        };
        let finding = match record.phase {
            Phase::Failed => Finding::new(
                None,
                check,
                Severity::Action,
                format!("failed {} ago: {}", ago(record.updated_at), record.error.as_deref().unwrap_or("no error recorded")),
            )
            .fix(format!("fix the cause, then resume it: switchyard job run {} (or switchyard job abort {name})", record.file)),
            Phase::Paused if since(record.updated_at) > PAUSED_TOO_LONG => Finding::new(
                None,
                check,
                Severity::Action,
                format!("paused for {} (its slot keeps holding WAL meanwhile)", ago(record.updated_at)),
            )
            .fix(format!("switchyard job resume {name}, or switchyard job abort {name}")),
            Phase::Copy | Phase::CatchUp | Phase::Verify | Phase::Cutover | Phase::Expand
                if since(record.updated_at) > SILENT_TOO_LONG =>
            {
                Finding::new(
                    None,
                    check,
                    Severity::Action,
                    format!("in {} but silent for {}: its process may be gone", record.phase.as_str(), ago(record.updated_at)),
                )
                .fix(format!("switchyard job run {} resumes it from its checkpoint", record.file))
            }
            _ if record.lag_seconds > LAG_TOO_LARGE.as_secs_f64() => Finding::new(
                None,
                check,
                Severity::Action,
                format!("{}, catch-up lag {:.0} s ({})", record.phase.as_str(), record.lag_seconds, size(record.lag_bytes as i64)),
            )
            .fix(format!("raise its rate (switchyard job throttle {name} --rows-per-second 0) or find what slows the target")),
            _ => Finding::new(
                None,
                check,
                Severity::Ok,
                format!("{}, lag {:.1} s", record.phase.as_str(), record.lag_seconds),
            ),
        };
        findings.push(finding);
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::postgres::health::Slot;
    use crate::job::JobKind;

    fn facts(slots: &[(&str, bool, i64)], publications: &[&str]) -> Facts {
        Facts {
            version: "PostgreSQL 17".into(),
            database_oid: 16384,
            slots: slots
                .iter()
                .map(|(name, active, held)| Slot {
                    name: name.to_string(),
                    active: *active,
                    wal_held_bytes: *held,
                })
                .collect(),
            publications: publications.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn a_slot_no_job_owns_is_an_action_naming_the_wal_it_holds() {
        let found = judge_replication(
            "pg",
            &facts(
                &[
                    ("switchyard_live_16384", true, 10),
                    ("switchyard_live_back_16384", false, 10),
                    ("switchyard_gone_16384", false, 3 * 1024 * 1024),
                    ("debezium", false, 2048),
                    ("debezium_busy", true, 2048),
                ],
                &["switchyard_gone_16384", "switchyard_live_16384"],
            ),
            &["live".to_string()],
        );
        let summary: Vec<(String, Severity)> =
            found.iter().map(|f| (f.check.clone(), f.status)).collect();
        assert_eq!(
            summary,
            [
                ("slot switchyard_live_16384".to_string(), Severity::Ok),
                ("slot switchyard_live_back_16384".to_string(), Severity::Ok),
                ("slot switchyard_gone_16384".to_string(), Severity::Action),
                ("slot debezium".to_string(), Severity::Notice),
                (
                    "publication switchyard_gone_16384".to_string(),
                    Severity::Notice
                ),
            ]
        );
        assert!(
            found[2].message.contains("3.1 MB of WAL")
                || found[2].message.contains("3.0 MiB of WAL"),
            "{}",
            found[2].message
        );
        assert_eq!(
            found[2].fix.as_deref(),
            Some("if no job of another configuration uses it: SELECT pg_drop_replication_slot('switchyard_gone_16384');")
        );
    }

    #[test]
    fn failed_paused_and_silent_jobs_need_action() {
        let now = Utc::now();
        let job = |name: &str, phase: Phase, minutes_ago: i64| {
            let mut record = JobRecord::new(name, JobKind::Copy, &format!("jobs/{name}.toml"));
            record.phase = phase;
            record.updated_at = now - chrono::Duration::minutes(minutes_ago);
            record
        };
        let mut failed = job("broken", Phase::Failed, 1);
        failed.error = Some("disk full".into());
        let found = judge_jobs(
            &[
                failed,
                job("resting", Phase::Paused, 120),
                job("quiet", Phase::Copy, 30),
                job("busy", Phase::Copy, 0),
                job("finished", Phase::Done, 9999),
            ],
            now,
        );
        let summary: Vec<(String, Severity)> =
            found.iter().map(|f| (f.check.clone(), f.status)).collect();
        assert_eq!(
            summary,
            [
                ("job broken".to_string(), Severity::Action),
                ("job resting".to_string(), Severity::Action),
                ("job quiet".to_string(), Severity::Action),
                ("job busy".to_string(), Severity::Ok),
            ]
        );
        assert!(
            found[0].message.ends_with(": disk full"),
            "{}",
            found[0].message
        );
        assert_eq!(
            found[1].message,
            "paused for 2h (its slot keeps holding WAL meanwhile)"
        );
    }
}
