//! switchyard: zero-downtime schema migrations and online backfills across PostgreSQL,
//! MongoDB and Elasticsearch.
//!
//! Data flows one way: configuration and files are parsed ([`config`], [`migrate`]),
//! decisions are made without side effects ([`migrate`]'s plan), and a backend
//! ([`backend`]) carries them out against a database. [`state`] keeps what must
//! outlive a process; [`cli`] is the only place that prints.
//!
//! An application that migrates its database at start-up uses [`Migrator`]:
//! `Migrator::new(url, folder)?.migrate().await?` (see `examples/migrate_on_startup.rs`).

pub mod backend;
pub mod cli;
pub mod config;
pub mod engine;
pub mod error;
pub mod failpoint;
pub mod job;
pub mod metrics;
pub mod migrate;
pub mod ops;
pub mod secret;
pub mod serve;
pub mod server;
pub mod shutdown;
pub mod state;

pub use error::{Error, Result};
pub use migrate::Migrator;
