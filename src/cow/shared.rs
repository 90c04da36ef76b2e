//! How much of a tree's space is its own: the bytes of its files' extents that no other file
//! shares (FIEMAP, without `FIEMAP_EXTENT_SHARED`). A fresh reflink copy holds almost none; it
//! grows as the original is rewritten and the copy keeps the old blocks.

use std::path::Path;

use fiemap::FiemapExtentFlags;

use crate::error::{IoContext, Result};

/// Bytes of the extents of every file under `root` that are not shared with another file.
/// Holes take nothing; inline and tail data count as exclusive.
pub fn exclusive_bytes(root: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in walkdir::WalkDir::new(root).follow_links(false) {
        let entry = entry.map_err(|e| crate::Error::io("walk", root, e.into()))?;
        if entry.file_type().is_file() {
            total += exclusive_in_file(entry.path())?;
        }
    }
    Ok(total)
}

/// Bytes of `path`'s extents that no other file shares.
pub fn exclusive_in_file(path: &Path) -> Result<u64> {
    let mut total = 0;
    for extent in fiemap::fiemap(path).at("map extents of", path)? {
        let extent = extent.at("map extents of", path)?;
        if !extent.fe_flags.contains(FiemapExtentFlags::SHARED) {
            total += extent.fe_length;
        }
    }
    Ok(total)
}
