//! The online-jobs engine: expand → copy → catch up → verify → cut over → contract, as
//! a durable state machine that any backend drives through the traits of [`traits`].
//!
//! Invariants:
//! - The phase is saved in the state store *before* the phase acts, so a restarted run
//!   re-enters the phase it was in; every phase is written to be re-entered safely.
//! - Progress within a phase lives with the data: each copy batch commits its checkpoint
//!   (last key of its range) in the same transaction as its writes, and each catch-up
//!   batch commits the change-log position it reached with its applies. A kill at any
//!   instant therefore loses nothing and duplicates nothing.
//! - Operators act through the job's control record (pause, throttle, cutover, abort,
//!   contract); the running process reads it between batches, so commands take effect
//!   live from any shell, with or without `serve`.
//!
//! ```text
//!  pending → expand → copy ──→ catch_up → verify → ready_to_cutover → cutover → contract → done
//!                       └─(backfill)──────→ verify ─────────────────────────────→ contract → done
//!  any phase → paused (and back) | failed | aborted
//! ```

mod record;
mod run;
mod throttle;
pub mod traits;

pub use record::{request, JobControl, JobRecord, Phase, Request};
pub use run::{run, JobObserver, RunEnd, RunOptions};
pub use throttle::Throttle;
