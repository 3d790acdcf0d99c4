//! `job plan` for PostgreSQL: what each phase will run, the row estimate, and what
//! depends on the source. Reads only; changes nothing.

use super::checkpoints;
use super::dependents::dependents;
use super::sink::PgSink;
use super::source::{old_name, PgSource};
use super::table::ident;
use crate::backend::plan::JobPlan;
use crate::engine::Source;
use crate::error::Result;
use crate::job::JobKind;

pub async fn plan(source: &mut PgSource, sink: &mut PgSink) -> Result<JobPlan> {
    let spec = sink.spec.clone();
    let copy = spec.kind == JobKind::Copy;
    let catches_up = copy && spec.catch_up.method == crate::job::CatchUpMethod::LogicalReplication;
    let rows = source.estimate_rows().await?;
    let in_server = sink.local_source.is_some();
    let mut phases: Vec<(String, Vec<String>)> = Vec::new();
    let mut expand = spec.expand.sql.clone();
    expand.push(checkpoints::SCHEMA.trim().to_string());
    if catches_up {
        let capture = source.capture();
        expand.push(format!(
            "CREATE PUBLICATION {} FOR TABLE {}  -- on `{}`",
            ident(&capture.publication),
            source.table()?.name.sql(),
            spec.source.database
        ));
        expand.push(format!(
            "SELECT pg_create_logical_replication_slot('{}', 'pgoutput')",
            capture.slot
        ));
    }
    let target_exists = match &sink.target_name {
        Some(name) => sink.side.exists(&name.sql()).await?,
        None => true,
    };
    let batch = if copy && !target_exists {
        format!(
            "(the target {} is created by expand; the batch statement is shown once it exists)",
            sink.target_name.clone().expect("copy")
        )
    } else if in_server {
        let sql = sink.batch_sql().await?;
        if let super::batch::Write::Fill { columns } = &sql.write {
            expand.extend(sink.fill_trigger_sql(columns));
        }
        sql.statement(true, true, spec.copy.batch_size)
    } else {
        let target = sink.target().await?.clone();
        format!(
            "COPY (SELECT … FROM {} ORDER BY key) TO STDOUT on `{}`, streamed into COPY {} FROM STDIN on `{}` with the range's checkpoint",
            source.table()?.name.sql(),
            spec.source.database,
            target.name.sql(),
            sink.side.database
        )
    };
    phases.push(("expand".into(), expand));
    phases.push((
        format!(
            "copy ({} workers, {} rows a batch)",
            spec.copy.concurrency, spec.copy.batch_size
        ),
        vec![batch],
    ));
    if catches_up {
        phases.push(("catch_up".into(), vec![format!("START_REPLICATION SLOT {} LOGICAL (pgoutput), changes applied as upserts and deletes by key", source.capture().slot)]));
    }
    let how = if in_server {
        "source and target in one snapshot"
    } else {
        "digests computed on each server over the same key ranges"
    };
    phases.push((
        "verify".into(),
        vec![format!("{:?} per key range, {how}", spec.verify.method).to_lowercase()],
    ));
    if copy {
        let name = &sink.source_name;
        let target = sink.target_name.clone().expect("copy");
        let lock = format!(
            "LOCK TABLE {} IN EXCLUSIVE MODE  -- lock_timeout {}",
            name.sql(),
            humantime::format_duration(sink.lock_timeout)
        );
        let rename_source = format!(
            "ALTER TABLE {} RENAME TO {}",
            name.sql(),
            ident(&old_name(name).name)
        );
        let rename_target = format!(
            "ALTER TABLE {} RENAME TO {}",
            target.sql(),
            ident(&name.name)
        );
        let steps = if in_server {
            vec![
                lock,
                "-- apply the last changes".into(),
                rename_source,
                rename_target,
                match spec.cutover.dependents {
                    crate::job::Dependents::Carry => {
                        "-- carry what depends on the source to the new table (below)".into()
                    }
                    crate::job::Dependents::Refuse => {
                        "-- dependents = \"refuse\": nothing else is carried".into()
                    }
                },
            ]
        } else {
            let mut steps = vec![
                format!("-- on `{}`:", spec.source.database),
                lock,
                rename_source,
                format!("-- on `{}`: apply the last changes", sink.side.database),
            ];
            if target.name != name.name {
                steps.push(rename_target);
            }
            if let Some(command) = &spec.cutover.command {
                steps.push(format!("-- then: {command}"));
            }
            steps
        };
        phases.push((
            format!(
                "cutover ({:?}, when lag < {})",
                spec.cutover.mode,
                humantime::format_duration(spec.cutover.max_lag)
            )
            .to_lowercase(),
            steps,
        ));
    }
    let carrying = match &sink.target_name {
        Some(target) if copy => sink.carrying(target).await?,
        _ => None,
    };
    let mut contract = spec.contract.sql.clone();
    if !copy {
        contract.extend(sink.drop_fill_trigger_sql());
    }
    phases.push(("contract".into(), contract));
    Ok(JobPlan {
        rows_estimate: rows,
        phases,
        dependents: dependents(source.side(), source.table()?, spec.kind, carrying).await?,
    })
}
