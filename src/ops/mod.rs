//! The operations the seeds promise beside migrations, for every configured store:
//! [`health`] (what needs an operator's attention), [`erase`] (a data subject's personal
//! data, everywhere) and [`transfer`] (export and import as JSON Lines).

pub mod erase;
pub mod health;
pub mod transfer;
