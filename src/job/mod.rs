//! Online jobs as users write them: the job file and its checks.

mod spec;

pub use spec::{
    load, parse, parse_window, CatchUpMethod, ContractAfter, CopySettings, CutoverMethod,
    CutoverMode, Endpoint, JobKind, JobSpec, VerifyMethod,
};
