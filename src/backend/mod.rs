//! One folder per kind of database. Each implements the small traits its consumers
//! define (for migrations: [`crate::migrate::MigrationTarget`]); callers dispatch on the
//! configured [`crate::config::DatabaseKind`].

pub mod postgres;
