//! What `job plan` prints, for every kind of store: the phases with the statements or
//! operations each runs, the size of the source, and what else depends on the source
//! and what cutover does with it. Building a plan reads and never changes anything.

/// A job's plan, as `job plan` prints it.
#[derive(Debug, Clone)]
pub struct JobPlan {
    /// Rows or documents in the source, as the server estimates them.
    pub rows_estimate: u64,
    /// Each phase's heading and the statements or operations it runs, in order.
    pub phases: Vec<(String, Vec<String>)>,
    pub dependents: Vec<Dependent>,
}

/// Something that depends on the source, and what cutover does with it.
#[derive(Debug, Clone, PartialEq)]
pub struct Dependent {
    pub kind: String,
    pub name: String,
    pub blocks_cutover: bool,
    pub handling: String,
}
