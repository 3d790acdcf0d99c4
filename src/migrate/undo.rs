//! The operations a JSON migration (MongoDB, Elasticsearch) runs for a step, and the
//! undo of one that failed midway.
//!
//! Invariants:
//! - Rollback runs the `_rollback.json` operations when there is one, else every
//!   operation's inverse, newest first; an operation without one refuses the rollback
//!   before anything changes.
//! - Undo after a failure applies the inverses of the operations that completed (and of
//!   the failing one when it may have done part), newest first, and stops at the first
//!   without an inverse; what it says names what was undone and what was left in place.

use futures::future::BoxFuture;

use super::operations::Operation;
use super::{Migration, Step};
use crate::error::{Error, Result};

/// The operations `step` runs: `up`, or `down` (the rollback file), or the inverses of
/// `up` newest first.
pub fn operations_for<O: Operation>(
    migration: &Migration,
    up: &[O],
    down: Option<&[O]>,
    step: Step,
) -> Result<Vec<O>> {
    match (step, down) {
        (Step::Up, _) => Ok(up.to_vec()),
        (Step::Down, Some(down)) => Ok(down.to_vec()),
        (Step::Down, None) => up
            .iter()
            .rev()
            .map(|operation| {
                operation.inverse().ok_or_else(|| {
                    Error::Refused(format!(
                        "migration {} has no rollback: {operation} has no inverse (add a _rollback.json beside {})",
                        migration.version,
                        migration.main_file().display()
                    ))
                })
            })
            .collect(),
    }
}

/// The first operation of `up` without an inverse, with its index.
pub fn first_without_inverse<O: Operation>(up: &[O]) -> Option<(usize, &O)> {
    up.iter().enumerate().find(|(_, o)| o.inverse().is_none())
}

/// Undoes `operations[..=failed]` after operation `failed` failed, applying each inverse
/// with `apply`; says what was undone and what was left.
pub async fn undo<'a, O: Operation + 'a>(
    operations: &[O],
    failed: usize,
    apply: impl Fn(O) -> BoxFuture<'a, std::result::Result<(), String>>,
) -> String {
    let mut undone = Vec::new();
    for index in (0..=failed).rev() {
        let operation = &operations[index];
        if index == failed && !operation.may_be_partial() {
            continue;
        }
        let Some(inverse) = operation.inverse() else {
            let left: Vec<String> = (0..=index)
                .filter(|&i| i != failed || operations[i].may_be_partial())
                .map(|i| format!("operation {} ({})", i + 1, operations[i]))
                .collect();
            let undone = match undone.is_empty() {
                true => "nothing was undone".to_string(),
                false => describe_undone(&undone),
            };
            return format!(
                "{undone}; left in place, since operation {} has no inverse: {}",
                index + 1,
                left.join(", ")
            );
        };
        if let Err(why) = apply(inverse).await {
            return format!(
                "{}; undoing operation {} ({operation}) failed too: {why}; it and the operations before it are left in place",
                describe_undone(&undone),
                index + 1
            );
        }
        undone.push(index + 1);
    }
    describe_undone(&undone)
}

/// What a rollback that failed at operation `failed` (counted from 0) left.
pub fn rollback_failed(why: &str, failed: usize) -> String {
    format!(
        "rollback failed: {why} (operations 1 to {failed} of the rollback took effect; run the rollback again to go on from there)"
    )
}

fn describe_undone(undone: &[usize]) -> String {
    if undone.is_empty() {
        "nothing had changed".into()
    } else {
        let list: Vec<String> = undone.iter().map(ToString::to_string).collect();
        format!("undone: operation {}", list.join(", "))
    }
}
