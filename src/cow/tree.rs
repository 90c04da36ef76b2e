//! Copying a directory tree: plan it (directories, files, links, with a filter deciding what is
//! left out), then clone or copy the files in parallel.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;

use crate::cow::file_copy::{FileOutcome, copy_file};
use crate::cow::fs_kind::CopyMethod;
use crate::error::{Error, IoContext, Result};
use crate::pg::layout::{Disposition, unlogged_non_init_forks};
use crate::progress::Progress;

/// One file to copy.
#[derive(Debug, Clone)]
pub struct FileJob {
    /// Source path.
    pub src: PathBuf,
    /// Destination path (must not exist).
    pub dst: PathBuf,
    /// Allocated bytes (what a copy would write).
    pub allocated: u64,
    /// Logical size when planned.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
}

/// Everything a tree copy creates, in creation order.
#[derive(Debug, Default)]
pub struct TreePlan {
    /// Directories with their modes, parents before children.
    pub dirs: Vec<(PathBuf, u32)>,
    /// Regular files.
    pub files: Vec<FileJob>,
    /// Symbolic links: where to create them, and their target as stored.
    pub symlinks: Vec<(PathBuf, PathBuf)>,
}

/// Counts from executing a plan.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CopyStats {
    /// Files created.
    pub files: u64,
    /// Files that share extents with their source.
    pub cloned_files: u64,
    /// Bytes of data written by real copies.
    pub copied_bytes: u64,
    /// Logical size of all files.
    pub logical_bytes: u64,
    /// Files that disappeared between planning and copying (dropped relations on a live cluster).
    pub vanished_files: u64,
}

impl TreePlan {
    /// Adds the tree at `src_root` to be recreated at `dst_root`. `filter` sees each entry's path
    /// relative to `src_root` (`/`-separated) and whether it is a directory; `dst_root` itself is
    /// always created. Symbolic links inside the tree are recreated as links, except where
    /// `filter` skips them.
    pub fn add_tree(
        &mut self,
        src_root: &Path,
        dst_root: &Path,
        filter: &dyn Fn(&str, bool) -> Disposition,
    ) -> Result<()> {
        let root_meta = fs::metadata(src_root).at("stat", src_root)?;
        self.dirs.push((dst_root.to_path_buf(), root_meta.mode() & 0o7777));
        let mut walker = walkdir::WalkDir::new(src_root).min_depth(1).follow_links(false).into_iter();
        while let Some(entry) = walker.next() {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) if is_vanished(&e) => continue,
                Err(e) => {
                    let path = e.path().unwrap_or(src_root).to_path_buf();
                    return Err(Error::io("walk", path, e.into()));
                }
            };
            let rel = entry.path().strip_prefix(src_root).expect("walkdir stays under its root");
            let rel_text = rel.to_string_lossy().replace('\\', "/");
            let file_type = entry.file_type();
            let dst = dst_root.join(rel);
            match filter(&rel_text, file_type.is_dir()) {
                Disposition::Skip => {
                    if file_type.is_dir() {
                        walker.skip_current_dir();
                    }
                    continue;
                }
                Disposition::EmptyDir => {
                    // Follow a link here: a symlinked pg_wal becomes a real directory in the copy.
                    let mode = fs::metadata(entry.path()).map(|m| m.mode() & 0o7777).unwrap_or(0o700);
                    self.dirs.push((dst, mode));
                    walker.skip_current_dir();
                    continue;
                }
                Disposition::Copy => {}
            }
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                Err(e) if is_vanished(&e) => continue,
                Err(e) => return Err(Error::io("stat", entry.path(), e.into())),
            };
            if file_type.is_dir() {
                self.dirs.push((dst, meta.mode() & 0o7777));
            } else if file_type.is_symlink() {
                let target = fs::read_link(entry.path()).at("read link", entry.path())?;
                self.symlinks.push((dst, target));
            } else if file_type.is_file() {
                self.files.push(FileJob {
                    src: entry.path().to_path_buf(),
                    dst,
                    allocated: meta.blocks() * 512,
                    size: meta.len(),
                    mode: meta.mode() & 0o7777,
                });
            }
            // Sockets, fifos and devices have no place in a data directory; they are left out.
        }
        Ok(())
    }

    /// Adds one file.
    pub fn add_file(&mut self, src: &Path, dst: &Path) -> Result<()> {
        let meta = fs::metadata(src).at("stat", src)?;
        self.files.push(FileJob {
            src: src.to_path_buf(),
            dst: dst.to_path_buf(),
            allocated: meta.blocks() * 512,
            size: meta.len(),
            mode: meta.mode() & 0o7777,
        });
        Ok(())
    }

    /// Drops the non-init forks of unlogged relations (PostgreSQL recreates them from the init fork).
    pub fn prune_unlogged(&mut self) {
        let mut by_dir: std::collections::HashMap<PathBuf, Vec<String>> = std::collections::HashMap::new();
        for job in &self.files {
            if let (Some(parent), Some(name)) = (job.src.parent(), job.src.file_name()) {
                by_dir.entry(parent.to_path_buf()).or_default().push(name.to_string_lossy().into_owned());
            }
        }
        let mut skip: std::collections::HashSet<PathBuf> = std::collections::HashSet::new();
        for (dir, names) in &by_dir {
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            skip.extend(unlogged_non_init_forks(&refs).into_iter().map(|n| dir.join(n)));
        }
        if !skip.is_empty() {
            self.files.retain(|job| !skip.contains(&job.src));
        }
    }

    /// Bytes a real copy of all files would write.
    pub fn allocated_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.allocated).sum()
    }

    /// Creates the directories, files (in parallel, with `method`) and links. A file that vanished
    /// since planning is skipped when `tolerate_vanished`, an error otherwise.
    pub fn execute(&self, method: CopyMethod, tolerate_vanished: bool, progress: &dyn Progress) -> Result<CopyStats> {
        for (dir, mode) in &self.dirs {
            match fs::DirBuilder::new().mode(0o700).create(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => {}
                Err(e) => return Err(Error::io("create directory", dir, e)),
            }
            fs::set_permissions(dir, fs::Permissions::from_mode(*mode)).at("chmod", dir)?;
        }
        let cloned = AtomicU64::new(0);
        let copied = AtomicU64::new(0);
        let logical = AtomicU64::new(0);
        let vanished = AtomicU64::new(0);
        self.files.par_iter().try_for_each(|job| {
            let src = match File::open(&job.src) {
                Ok(file) => file,
                Err(e) if tolerate_vanished && e.kind() == std::io::ErrorKind::NotFound => {
                    vanished.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Err(e) => return Err(Error::io("open", &job.src, e)),
            };
            let dst =
                OpenOptions::new().write(true).create_new(true).mode(job.mode).open(&job.dst).at("create", &job.dst)?;
            match copy_file(&src, &dst, method, &|n| progress.advance(n)).at("copy", &job.src)? {
                FileOutcome::Cloned => {
                    cloned.fetch_add(1, Ordering::Relaxed);
                }
                FileOutcome::Copied(bytes) => {
                    copied.fetch_add(bytes, Ordering::Relaxed);
                }
            }
            logical.fetch_add(dst.metadata().map(|m| m.len()).unwrap_or(0), Ordering::Relaxed);
            Ok(())
        })?;
        for (link, target) in &self.symlinks {
            std::os::unix::fs::symlink(target, link).at("create link", link)?;
        }
        let vanished = vanished.into_inner();
        Ok(CopyStats {
            files: self.files.len() as u64 - vanished,
            cloned_files: cloned.into_inner(),
            copied_bytes: copied.into_inner(),
            logical_bytes: logical.into_inner(),
            vanished_files: vanished,
        })
    }
}

fn is_vanished(err: &walkdir::Error) -> bool {
    err.io_error().is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Silent;

    #[test]
    fn copies_a_tree_with_filter_modes_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(src.join("base/5")).unwrap();
        fs::create_dir_all(src.join("pg_wal/archive_status")).unwrap();
        fs::write(src.join("base/5/100"), vec![7u8; 9000]).unwrap();
        fs::write(src.join("base/5/200"), b"unlogged").unwrap();
        fs::write(src.join("base/5/200_init"), b"init").unwrap();
        fs::write(src.join("pg_wal/000000010000000000000001"), b"wal").unwrap();
        fs::write(src.join("postmaster.pid"), b"1").unwrap();
        fs::set_permissions(src.join("base/5/100"), fs::Permissions::from_mode(0o640)).unwrap();
        std::os::unix::fs::symlink("/elsewhere", src.join("link")).unwrap();

        let dst = dir.path().join("dst");
        let mut plan = TreePlan::default();
        plan.add_tree(&src, &dst, &|rel, is_dir| crate::pg::layout::classify(rel, is_dir)).unwrap();
        plan.prune_unlogged();
        let stats = plan.execute(CopyMethod::Copy, false, &Silent).unwrap();

        assert_eq!(fs::read(dst.join("base/5/100")).unwrap(), vec![7u8; 9000]);
        assert_eq!(fs::metadata(dst.join("base/5/100")).unwrap().mode() & 0o777, 0o640);
        assert!(dst.join("base/5/200_init").exists());
        assert!(!dst.join("base/5/200").exists(), "unlogged main fork copied");
        assert!(dst.join("pg_wal").is_dir() && !dst.join("pg_wal/archive_status").exists());
        assert!(!dst.join("postmaster.pid").exists());
        assert_eq!(fs::read_link(dst.join("link")).unwrap(), PathBuf::from("/elsewhere"));
        assert_eq!(stats.files, 2);
        assert_eq!(stats.logical_bytes, 9004);
    }

    #[test]
    fn vanished_files_are_counted_when_tolerated() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("gone"), b"x").unwrap();
        let mut plan = TreePlan::default();
        plan.add_tree(&src, &dir.path().join("dst"), &|_, _| Disposition::Copy).unwrap();
        fs::remove_file(src.join("gone")).unwrap();
        assert!(plan.execute(CopyMethod::Copy, false, &Silent).is_err());
        let plan2 = TreePlan {
            dirs: vec![(dir.path().join("dst2"), 0o700)],
            files: plan.files.iter().map(|f| FileJob { dst: dir.path().join("dst2/gone"), ..f.clone() }).collect(),
            ..Default::default()
        };
        let stats = plan2.execute(CopyMethod::Copy, true, &Silent).unwrap();
        assert_eq!(stats.vanished_files, 1);
    }
}
