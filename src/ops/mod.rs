//! The operations pgfork performs, one module each. They take resolved options, report progress
//! through [`crate::progress::Progress`], and return a serializable report; they never print.

pub mod archive;
pub mod archive_async;
pub mod backup;
pub mod check;
pub mod clone_db;
pub mod expire;
pub mod export;
pub mod exporter;
pub mod fork;
pub mod identity;
pub mod info;
pub mod pitr;
pub mod restore;
pub mod schedule;
pub mod scrub;
pub mod snapshot;
pub mod stanza;
pub mod verify;
