//! The operations the seeds promise beside migrations, for every configured store:
//! [`health`] (what needs an operator's attention) and [`erase`] (a data subject's
//! personal data, everywhere).

pub mod erase;
pub mod health;
