//! pg-basebackup's retention: after a successful export, the exports in its directory older than
//! a number of minutes are removed. Only files named as pg-basebackup names them
//! (`backup_*.tar.lz4`, `.tar.zst`, either with `.age`) are candidates, never the file just
//! written, and nothing at all when the new export failed (the caller runs this only after it).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::error::{Error, Result};
use crate::ops::export::sink::{AGE_SUFFIX, Compression};
use crate::util::fsx;

/// Whether `name` is one pg-basebackup gives its files.
pub fn is_export_name(name: &str) -> bool {
    let inner = name.strip_suffix(AGE_SUFFIX).unwrap_or(name);
    name.starts_with("backup_") && [Compression::Lz4, Compression::Zstd].iter().any(|c| inner.ends_with(c.extension()))
}

/// Removes the exports in `dir` last modified more than `age` before `now`, except `keep`;
/// returns what was removed, oldest first.
pub fn remove_older_than(dir: &Path, age: Duration, now: SystemTime, keep: &Path) -> Result<Vec<PathBuf>> {
    let mut old = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("read directory", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("read directory", dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if !is_export_name(&name) || path == keep {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        let modified = meta.modified().unwrap_or(now);
        if meta.is_file() && now.duration_since(modified).unwrap_or_default() > age {
            old.push((modified, path));
        }
    }
    old.sort();
    let mut removed = Vec::new();
    for (_, path) in old {
        std::fs::remove_file(&path).map_err(|e| Error::io("remove", &path, e))?;
        removed.push(path);
    }
    if !removed.is_empty() {
        fsx::fsync_dir(dir)?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_old_exports_go() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let hours_ago = |h: u64| now - Duration::from_secs(h * 3600);
        let make = |name: &str, at: SystemTime| {
            let path = dir.path().join(name);
            std::fs::write(&path, b"x").unwrap();
            std::fs::File::options().write(true).open(&path).unwrap().set_modified(at).unwrap();
            path
        };
        let old = make("backup_pg-meta_20250101.tar.lz4", hours_ago(30));
        let old_sealed = make("backup_pg-meta_20250102.tar.zst.age", hours_ago(25));
        let recent = make("backup_pg-meta_20250103.tar.lz4", hours_ago(1));
        let foreign = make("notes.tar.lz4", hours_ago(48));
        let other = make("backup_x.sql", hours_ago(48));
        let kept_new = make("backup_pg-meta_20240101.tar.lz4", hours_ago(99));
        let removed = remove_older_than(dir.path(), Duration::from_secs(20 * 3600), now, &kept_new).unwrap();
        assert_eq!(removed, [old.clone(), old_sealed.clone()]);
        assert!(recent.exists() && foreign.exists() && other.exists() && kept_new.exists());
    }
}
