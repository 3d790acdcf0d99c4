//! What the engine and both sides of a job say about how far a job got: key ranges and
//! their checkpoints, catch-up lag, verification mismatches, and what a cutover did.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::row::Key;

/// A slice of the source's key space, copied by one worker at a time. Keys are held in
/// text form, one entry per key column, and compared by the store that owns them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRange {
    pub number: i32,
    /// Exclusive; `None` is the start of the key space.
    pub lower: Option<Key>,
    /// Inclusive; `None` is the end of the key space.
    pub upper: Option<Key>,
}

impl KeyRange {
    /// `range 2 (keys after (100) up to (200))`.
    pub fn describe(&self) -> String {
        let show = |key: &Option<Key>| key.as_ref().map(|k| format!("({})", k.join(", ")));
        match (show(&self.lower), show(&self.upper)) {
            (None, None) => format!("range {} (all keys)", self.number),
            (Some(l), None) => format!("range {} (keys after {l})", self.number),
            (None, Some(u)) => format!("range {} (keys up to {u})", self.number),
            (Some(l), Some(u)) => format!("range {} (keys after {l} up to {u})", self.number),
        }
    }
}

/// A range and how far its copy got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeProgress {
    pub range: KeyRange,
    /// The last key copied; the next batch starts after it.
    pub last_key: Option<Key>,
    pub rows: u64,
    pub done: bool,
}

impl RangeProgress {
    /// Where the next batch starts: after the last key copied, or after the range's
    /// lower bound.
    pub fn after(&self) -> Option<&Key> {
        self.last_key.as_ref().or(self.range.lower.as_ref())
    }
}

/// How far change application is behind the source.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Lag {
    /// Age of the oldest committed change not yet applied; 0 when caught up.
    pub seconds: f64,
    /// Change-log bytes not yet confirmed (PostgreSQL: WAL bytes held by the slot).
    pub bytes: u64,
}

/// What one pass of change application did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppliedChanges {
    pub changes: u64,
    /// The pass applied everything captured when it looked (it was not cut short by
    /// its limit).
    pub drained: bool,
}

/// A key range whose source and target differ.
#[derive(Debug, Clone, PartialEq)]
pub struct Mismatch {
    pub range: KeyRange,
    pub detail: String,
}

/// What a cutover did.
#[derive(Debug, Clone, PartialEq)]
pub struct CutoverReport {
    pub writes_blocked: Duration,
    pub changes_drained: u64,
    /// Where the cutover pointed a name that stays (an Elasticsearch alias → its new
    /// index), for `health` to check it still points there.
    pub alias: Option<AliasTarget>,
}

/// An alias and the index a cutover moved it onto.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AliasTarget {
    pub alias: String,
    pub index: String,
}
