//! Online jobs as users write them: the job file and its checks.

mod spec;

pub use spec::{
    load, load_text, parse, parse_window, CatchUpMethod, ContractAfter, CopyMethod, CopySettings,
    CutoverMethod, CutoverMode, Dependents, Endpoint, JobKind, JobSpec, Slices, VerifyMethod,
};
