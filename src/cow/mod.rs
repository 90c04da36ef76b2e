//! Copy-on-write copies: file system detection, reflink (FICLONE) with a sparse copy fallback, and
//! parallel tree copies.

pub mod file_copy;
pub mod fs_kind;
pub mod shared;
pub mod tree;

pub use fs_kind::{CopyMethod, FsKind, probe_reflink};
pub use tree::{CopyStats, TreePlan};
