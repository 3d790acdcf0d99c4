//! Named crash points for fault-injection tests.
//!
//! `crash_point!("copy.after_batch")` marks an instant between two steps where a crash
//! must leave nothing lost or duplicated once the job resumes. In a build with the
//! `failpoints` feature (tests only), the `FAILPOINTS` environment variable of the
//! [`fail`](https://docs.rs/fail) crate arms them, e.g. `FAILPOINTS=copy.after_batch=return`
//! ends the process there at once with [`CRASH_EXIT_CODE`], as a kill would: no
//! destructor, no flush, no rollback but the server's. `sleep(ms)` and the crate's other
//! actions work too; an armed point says `crash point <name> reached` on stderr before
//! its action. In every other build the macro expands to nothing.
//!
//! Names are `<phase>.<instant>`; `<phase>` is the phase the job's record shows when the
//! point is reached. `tests/failpoints.rs` crashes at each one.

/// The exit code of a process ended by a crash point.
pub const CRASH_EXIT_CODE: i32 = 86;

/// Ends the process at crash point `name` at once.
#[cfg(feature = "failpoints")]
pub fn crash(name: &str) -> ! {
    eprintln!("crash point {name}: ending the process");
    // SAFETY: `_exit` ends the process without running anything else, like a kill.
    unsafe { libc::_exit(CRASH_EXIT_CODE) }
}

/// Says on stderr that armed crash point `name` is reached (before its action, so a
/// test can act while the point sleeps).
#[cfg(feature = "failpoints")]
pub fn announce(name: &str) {
    if fail::list().iter().any(|(armed, _)| armed == name) {
        eprintln!("crash point {name} reached");
    }
}

/// Marks a crash point (see the module docs). The name is any `&str` expression.
#[cfg(feature = "failpoints")]
#[macro_export]
macro_rules! crash_point {
    ($name:expr) => {
        $crate::failpoint::announce($name);
        fail::fail_point!($name, |_| $crate::failpoint::crash($name))
    };
}

/// Marks a crash point (see the module docs); nothing in this build.
#[cfg(not(feature = "failpoints"))]
#[macro_export]
macro_rules! crash_point {
    ($name:expr) => {};
}
