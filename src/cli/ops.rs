//! `health`, `erase`, `export` and `import`.

use std::path::Path;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::table::Table;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::ops::erase::{self, subject_digest, Erased};
use crate::ops::health::{self, Severity};
use crate::ops::transfer::{self, Target};
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
        for database in erase::databases(&entries) {
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

/// Which way a transfer goes, as its messages say it.
#[derive(Clone, Copy)]
enum Way {
    Export,
    Import,
}

impl Way {
    fn past(self) -> &'static str {
        match self {
            Way::Export => "exported",
            Way::Import => "imported",
        }
    }
}

/// A progress bar on stderr; `unit` is what it counts.
fn transfer_bar(way: Way, target: &Target) -> ProgressBar {
    let unit = match way {
        Way::Export => "rows",
        Way::Import => "bytes",
    };
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    let template = format!(
        "{{msg}} [{{bar:30}}] {{human_pos}}/{{human_len}} {unit}  {{per_sec}}  eta {{eta}}"
    );
    bar.set_style(
        ProgressStyle::with_template(&template)
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_message(format!(
        "{} {}",
        match way {
            Way::Export => "export",
            Way::Import => "import",
        },
        target.name
    ));
    bar
}

/// Ends a transfer: clears its bar, writes its audit entry, and gives its outcome.
async fn conclude(
    config: &Config,
    target: &Target,
    bar: ProgressBar,
    outcome: Result<transfer::Moved>,
    way: Way,
    file: &str,
) -> Result<transfer::Moved> {
    bar.finish_and_clear();
    let store = state::open(&config.state.url).await?;
    let verb = way.past();
    let (result, detail) = match &outcome {
        Ok(moved) => {
            let direction = match way {
                Way::Export => "to",
                Way::Import => "from",
            };
            let resumed = if moved.resumed { " (resumed)" } else { "" };
            (
                Outcome::Ok,
                format!(
                    "{verb} {} lines of {} {direction} {file}{resumed}",
                    moved.lines, target.name
                ),
            )
        }
        Err(error) => (
            Outcome::Failed,
            format!("{verb} {} {file}: {error}", target.name),
        ),
    };
    state::audit(store.as_ref(), Some(&target.database), result, detail).await;
    outcome
}

fn resumed(moved: &transfer::Moved) -> &'static str {
    if moved.resumed {
        " (resumed where the last run stopped)"
    } else {
        ""
    }
}

/// Follows a transfer's progress on its bar.
fn follow(bar: &ProgressBar) -> impl FnMut(u64, Option<u64>) + Send + '_ {
    move |done, total| {
        if let Some(total) = total {
            bar.set_length(total.max(done));
        }
        bar.set_position(done);
    }
}

pub async fn export(
    config: &Config,
    target: &Target,
    filter: Option<&str>,
    out: Option<&Path>,
) -> Result<()> {
    let bar = transfer_bar(Way::Export, target);
    let outcome = transfer::export(config, target, filter, out, &mut follow(&bar)).await;
    let file = out.map_or("standard output".to_string(), |p| p.display().to_string());
    let moved = conclude(config, target, bar, outcome, Way::Export, &file).await?;
    if out.is_some() {
        println!(
            "exported {} rows of {} to {file}{}",
            moved.lines,
            target.name,
            resumed(&moved)
        );
    }
    Ok(())
}

pub async fn import(config: &Config, target: &Target, file: &Path) -> Result<()> {
    let bar = transfer_bar(Way::Import, target);
    let outcome = transfer::import(config, target, file, &mut follow(&bar)).await;
    let name = file.display().to_string();
    let moved = conclude(config, target, bar, outcome, Way::Import, &name).await?;
    println!(
        "imported {} lines of {name} into {}{}",
        moved.lines,
        target.name,
        resumed(&moved)
    );
    Ok(())
}
