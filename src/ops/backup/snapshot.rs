//! What a backup reads: the live files, read with pread (their pages are usually in the page
//! cache), or — when the stanza asks for it and the file system can clone — a reflink snapshot of
//! the data directory (instant, one point in time per file, and safe to memory-map because nothing
//! else writes it). Either way the same list of files and directories, relative to
//! the data directory, with the exclusions of a base backup.

use std::path::{Path, PathBuf};

use crate::cow::{CopyMethod, TreePlan, probe_reflink};
use crate::error::Result;
use crate::pg::datadir::DataDir;
use crate::pg::layout::{Disposition, classify};
use crate::progress::Silent;
use crate::repo::manifest::{DirEntry, TablespaceEntry};
use crate::scan::ReadMode;

/// One file to back up.
pub struct SourceFile {
    /// Path relative to the data directory.
    pub rel: String,
    /// Where to read it.
    pub path: PathBuf,
    /// Its size when listed.
    pub size: u64,
}

/// The files of a backup and how to read them; removes its snapshot on drop.
pub struct BackupSource {
    /// Files, `global/pg_control` last.
    pub files: Vec<SourceFile>,
    /// Directories to recreate.
    pub dirs: Vec<DirEntry>,
    /// Tablespaces.
    pub tablespaces: Vec<TablespaceEntry>,
    /// mmap (snapshot) or pread (live).
    pub mode: ReadMode,
    /// Symbolic links in the data directory other than tablespaces, as `path -> target`: a set
    /// holds files and directories only, so these are not in the backup.
    pub links_left_out: Vec<String>,
    snapshot: Option<PathBuf>,
}

impl BackupSource {
    /// Whether a reflink snapshot is being read.
    pub fn snapshot_taken(&self) -> bool {
        self.snapshot.is_some()
    }

    /// Keeps the snapshot instead of removing it when the source is dropped; returns where it is.
    pub fn keep(mut self) -> Option<PathBuf> {
        self.snapshot.take()
    }
}

impl Drop for BackupSource {
    fn drop(&mut self) {
        if let Some(dir) = &self.snapshot {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The snapshot directory name for a data directory: beside it, hidden, named for pgfork.
pub fn snapshot_dir(data: &Path) -> PathBuf {
    let name = data.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    data.with_file_name(format!(".{name}.pgfork-snapshot"))
}

/// Plans the backup of `data`; with `want_snapshot`, takes a reflink snapshot beside it when the
/// file system allows (otherwise the live files are read).
pub fn prepare(data: &DataDir, want_snapshot: bool) -> Result<BackupSource> {
    let snap = snapshot_dir(data.path());
    if snap.exists() {
        // Left by a killed backup: only pgfork uses this name.
        std::fs::remove_dir_all(&snap).ok();
    }
    prepare_at(data, &snap, want_snapshot)
}

/// Plans the backup of `data` with its snapshot (if one is taken) at `snap`, which must not exist;
/// its parent must.
pub fn prepare_at(data: &DataDir, snap: &Path, want_snapshot: bool) -> Result<BackupSource> {
    let snap = snap.to_path_buf();
    let parent = snap.parent().unwrap_or(Path::new("/"));
    let writable = want_snapshot && nix::unistd::access(parent, nix::unistd::AccessFlags::W_OK).is_ok();
    let method = if writable { probe_reflink(&data.path().join("PG_VERSION"), parent)? } else { CopyMethod::Copy };

    let mut plan = TreePlan::default();
    let tablespaces = data.tablespaces()?;
    let linked: Vec<String> =
        tablespaces.iter().filter(|t| t.location.is_some()).map(|t| format!("pg_tblspc/{}", t.oid)).collect();
    plan.add_tree(data.path(), &snap, &|rel, is_dir| {
        if linked.iter().any(|l| l == rel) { Disposition::Skip } else { classify(rel, is_dir) }
    })?;
    let mut entries = Vec::new();
    for ts in &tablespaces {
        let Some(location) = &ts.location else { continue };
        let rel = format!("pg_tblspc/{}", ts.oid);
        plan.dirs.push((snap.join(&rel), 0o700));
        if let Some(version_dir) = data.tablespace_version_dir(location)? {
            plan.add_tree(&location.join(&version_dir), &snap.join(&rel).join(&version_dir), &classify)?;
        }
        entries.push(TablespaceEntry { oid: ts.oid, location: location.display().to_string() });
    }
    plan.prune_unlogged();

    let (mode, snapshot) = if method == CopyMethod::Reflink {
        plan.execute(CopyMethod::Reflink, true, &Silent)?;
        (ReadMode::Map, Some(snap.clone()))
    } else {
        (ReadMode::Pread, None)
    };
    let rel_of = |p: &Path| p.strip_prefix(&snap).expect("planned under the snapshot").to_string_lossy().into_owned();
    let dirs = plan.dirs.iter().skip(1).map(|(p, mode)| DirEntry { path: rel_of(p), mode: *mode }).collect();
    let mut files: Vec<SourceFile> = plan
        .files
        .iter()
        .map(|job| SourceFile {
            rel: rel_of(&job.dst),
            path: if snapshot.is_some() { job.dst.clone() } else { job.src.clone() },
            size: job.size,
        })
        .collect();
    files.sort_by(|a, b| (a.rel == "global/pg_control").cmp(&(b.rel == "global/pg_control")).then(a.rel.cmp(&b.rel)));
    let links_left_out =
        plan.symlinks.iter().map(|(link, target)| format!("{} -> {}", rel_of(link), target.display())).collect();
    Ok(BackupSource { files, dirs, tablespaces: entries, mode, links_left_out, snapshot })
}
