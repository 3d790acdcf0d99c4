//! The operations the seeds promise beside migrations, for every configured store:
//! [`health`] (what needs an operator's attention).

pub mod health;
