//! The operations pgfork performs, one module each. They take resolved options, report progress
//! through [`crate::progress::Progress`], and return a serializable report; they never print.

pub mod backup;
pub mod clone_db;
pub mod expire;
pub mod fork;
pub mod identity;
pub mod info;
pub mod restore;
pub mod stanza;
pub mod stanza_repo;
