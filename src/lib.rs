//! pgfork: instant PostgreSQL forks, database clones, backups and point-in-time recovery on
//! copy-on-write file systems.
//!
//! The library holds everything; the `pgfork` binary only parses arguments ([`cli`]) and prints.

pub mod cli;
pub mod config;
pub mod cow;
pub mod error;
pub mod fuzz;
pub mod mount;
pub mod ops;
pub mod patroni;
pub mod pg;
pub mod pgbr;
pub mod progress;
pub mod repo;
pub mod scan;
pub mod stanza;
pub mod util;

pub use error::{Error, Result};
