//! Applies a plan to one database: take the lock, read the history, refuse edited
//! applied files, then run each migration in order, stopping at the first failure. The
//! lock is released on every path out, including errors.

use std::time::Duration;

use super::files::Migration;
use super::plan::{check_applied_unchanged, pending, to_revert};
use super::target::{MigrationTarget, Step};
use super::version::Version;
use crate::error::Result;

/// What the runner reports as it goes, for a progress display.
#[derive(Debug)]
pub enum Event<'a> {
    Started(&'a Migration, Step),
    Finished(&'a Migration, Step, Duration),
    /// `--dry-run`: this would run.
    WouldRun(&'a Migration, Step),
}

pub struct Runner<'a> {
    pub lock_wait: Duration,
    /// `user@host`, recorded in the history.
    pub actor: &'a str,
    pub dry_run: bool,
}

impl Runner<'_> {
    /// Applies the pending migrations up to `up_to` (all when `None`). Returns how many ran.
    pub async fn migrate<'m>(
        &self,
        target: &mut dyn MigrationTarget,
        migrations: &'m [Migration],
        up_to: Option<&Version>,
        on_event: &mut (dyn FnMut(Event<'m>) + Send),
    ) -> Result<usize> {
        if self.dry_run {
            let history = target.history().await?;
            check_applied_unchanged(target.database(), migrations, &history)?;
            let todo = pending(migrations, &history, up_to);
            todo.iter()
                .for_each(|m| on_event(Event::WouldRun(m, Step::Up)));
            return Ok(todo.len());
        }
        target.lock(self.lock_wait).await?;
        let outcome = async {
            target.prepare_history().await?;
            let history = target.history().await?;
            check_applied_unchanged(target.database(), migrations, &history)?;
            let todo = pending(migrations, &history, up_to);
            self.run_each(target, &todo, Step::Up, on_event).await
        }
        .await;
        release(target, outcome).await
    }

    /// Undoes the applied migrations after `to`, newest first. Returns how many ran.
    pub async fn rollback<'m>(
        &self,
        target: &mut dyn MigrationTarget,
        migrations: &'m [Migration],
        to: &Version,
        on_event: &mut (dyn FnMut(Event<'m>) + Send),
    ) -> Result<usize> {
        if self.dry_run {
            let history = target.history().await?;
            check_applied_unchanged(target.database(), migrations, &history)?;
            let todo = to_revert(target.database(), migrations, &history, to)?;
            todo.iter()
                .for_each(|m| on_event(Event::WouldRun(m, Step::Down)));
            return Ok(todo.len());
        }
        target.lock(self.lock_wait).await?;
        let outcome = async {
            let history = target.history().await?;
            check_applied_unchanged(target.database(), migrations, &history)?;
            let todo = to_revert(target.database(), migrations, &history, to)?;
            self.run_each(target, &todo, Step::Down, on_event).await
        }
        .await;
        release(target, outcome).await
    }

    async fn run_each<'m>(
        &self,
        target: &mut dyn MigrationTarget,
        todo: &[&'m Migration],
        step: Step,
        on_event: &mut (dyn FnMut(Event<'m>) + Send),
    ) -> Result<usize> {
        for migration in todo {
            on_event(Event::Started(migration, step));
            let took = target.apply(migration, step, self.actor).await?;
            on_event(Event::Finished(migration, step, took));
        }
        Ok(todo.len())
    }
}

/// Releases the migration lock whatever the outcome; the outcome's error wins.
async fn release(target: &mut dyn MigrationTarget, outcome: Result<usize>) -> Result<usize> {
    let released = target.unlock().await;
    let count = outcome?;
    released?;
    Ok(count)
}
