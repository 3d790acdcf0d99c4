//! The online-jobs engine: expand → copy → catch up → verify → cut over → contract, as
//! a durable state machine that drives one [`Source`] into one [`Sink`], whichever
//! stores they are (joined in a [`Pipeline`]). Rows and changes travel between them in
//! the neutral form of [`row`].
//!
//! Invariants:
//! - The phase is saved in the state store *before* the phase acts, so a restarted run
//!   re-enters the phase it was in; every phase is written to be re-entered safely.
//! - Progress within a phase lives with the data, in the sink: each copy batch makes its
//!   checkpoint (last key of its range) durable with its writes, and each catch-up
//!   batch the change-log position it reached with its applies; the source is told a
//!   position only after that. A kill at any instant therefore loses nothing and
//!   duplicates nothing.
//! - A backfill that catches up (one whose store has no dual-write trigger: MongoDB)
//!   has its sink fill again every row a change touched, from before its first batch
//!   until its contract, so rows written meanwhile end filled too.
//! - One process runs a job at a time: it holds the job's lease in the state store
//!   ([`job_lease`]) and writes the job's record only under the lease's fence, so a
//!   run that stalled past its lease changes nothing once another took the job over.
//! - Operators act through the job's control record (pause, throttle, cutover, abort,
//!   contract); the running process reads it between batches, so commands take effect
//!   live from any shell, with or without `serve`.
//!
//! ```text
//!  pending → expand → copy ──→ catch_up → verify → ready_to_cutover → cutover → contract → done
//!                       └─(backfill)─→ (catch_up) → verify ──────────────────────→ contract → done
//!  any phase → paused (and back) | failed | aborted
//! ```

mod crew;
mod heartbeat;
mod job_lease;
#[cfg(test)]
mod memory;
mod pipeline;
pub mod progress;
mod record;
pub mod row;
mod run;
pub mod sink;
pub mod source;
mod throttle;

pub use crew::help;
pub use pipeline::Pipeline;
pub use record::{request, JobControl, JobRecord, Phase, Request};
pub use run::{drop_overflowing_slot, holds_a_guarded_slot, run, JobObserver, RunEnd, RunOptions};
pub use sink::Sink;
pub use source::Source;
pub use throttle::Throttle;
