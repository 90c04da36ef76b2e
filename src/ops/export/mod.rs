//! `export`: one file holding a data directory that starts on its own — a tar archive, LZ4- or
//! Zstandard-compressed, optionally age-encrypted — from a backup set (what `restore` would
//! write for it) or from the running cluster (an online base backup with the WAL from its start
//! to its stop). `tar -x` after `lz4 -d` or `zstd -d` (and `age -d`) gives the directory back.
//! The file is written under a temporary name and renamed into place once complete and durable.
//! Its last entry is a manifest of every file's SHA-256 (`manifest.rs`); `check.rs` reads an
//! export against it and `extract.rs` unpacks one only once it matched.

pub mod check;
pub mod crypt;
pub mod extract;
pub mod live;
pub mod manifest;
pub mod retention;
pub mod set;
pub mod sink;

use std::path::{Path, PathBuf};
use std::time::Instant;

use age::secrecy::SecretString;
use serde::Serialize;

use crate::config::Resolved;
use crate::error::{Error, Result};
use crate::pg::lsn::Lsn;
use crate::progress::Progress;
use crate::repo::label::SetLabel;
use crate::util::{fsx, ms_since};

pub use check::{CheckReport, check};
pub use extract::extract;
pub use live::LiveSource;
pub use sink::{AGE_SUFFIX, Compression, EntryOwner, Sink};

/// What to export.
#[derive(Debug, Clone)]
pub enum Source {
    /// A backup set of the stanza; the newest when `label` is `None`.
    Set {
        /// The stanza and its repository.
        resolved: Box<Resolved>,
        /// The set.
        label: Option<SetLabel>,
    },
    /// The running cluster, through an online backup.
    Live(LiveSource),
}

/// Where the export goes.
#[derive(Debug, Clone)]
pub enum Target {
    /// This file; its name tells the compression (`.tar.lz4`, `.tar.zst`, `.age` when encrypted).
    File(PathBuf),
    /// `backup_<tag>_<YYYYMMDD>.tar.lz4` (or `.tar.zst`, `.age` when encrypted) in this directory,
    /// as pg-basebackup names its files; the tag defaults to the cluster's name.
    Named {
        /// The directory.
        dir: PathBuf,
        /// The tag.
        tag: Option<String>,
        /// The compression.
        compression: Compression,
    },
}

/// An export request.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// What to export.
    pub source: Source,
    /// Where.
    pub target: Target,
    /// Encrypt with this passphrase (age format).
    pub passphrase: Option<SecretString>,
    /// Replace an existing file (atomically: the old one stays until the new one is complete).
    pub replace: bool,
}

/// What an export did.
#[derive(Debug, Clone, Serialize)]
pub struct ExportReport {
    /// The file written.
    pub file: PathBuf,
    /// The set exported, for a set.
    pub set: Option<SetLabel>,
    /// The data directory exported, for a running cluster.
    pub data: Option<PathBuf>,
    /// Start LSN of the backup.
    pub start_lsn: Option<Lsn>,
    /// Stop LSN: the data directory is consistent once recovered to it.
    pub stop_lsn: Option<Lsn>,
    /// PostgreSQL major version.
    pub pg_version: u32,
    /// LZ4 or Zstandard.
    pub compression: Compression,
    /// Whether the file is age-encrypted.
    pub encrypted: bool,
    /// Live: whether the files were read from a reflink snapshot (else live, as they changed).
    pub snapshot: bool,
    /// Files of the data directory.
    pub files: u64,
    /// WAL segments included.
    pub wal_segments: u64,
    /// Bytes of the data directory (uncompressed).
    pub data_bytes: u64,
    /// Bytes of the file.
    pub file_bytes: u64,
    /// Wall time, milliseconds.
    pub duration_ms: f64,
    /// Milliseconds per step.
    pub timings: Vec<(&'static str, f64)>,
    /// Remarks.
    pub notes: Vec<String>,
    /// Temporaries of killed exports removed first.
    pub cleaned: Vec<PathBuf>,
}

/// What opening a source tells about the archive to write.
pub struct Opened {
    /// Who owns the entries.
    pub owner: EntryOwner,
    /// Their modification time.
    pub mtime: u64,
    /// The tag of a named target by default: the cluster's or the stanza's name.
    pub tag: String,
}

/// Exports `opts.source` into `opts.target`. `check` runs between chunks and stops the export
/// when it fails (a termination signal); nothing is left under the target's name then.
pub fn export(opts: &ExportOptions, progress: &dyn Progress, check: &dyn Fn() -> Result<()>) -> Result<ExportReport> {
    let started = Instant::now();
    if let Target::File(path) = &opts.target {
        Compression::of_name(path, opts.passphrase.is_some())?;
    }
    let mut report = match &opts.source {
        Source::Set { resolved, label } => {
            let (set, opened) = set::open(resolved, label.as_ref())?;
            let Begun { mut sink, mut report } = begin(opts, &opened)?;
            let manifest = set.manifest();
            report.set = Some(manifest.label.clone());
            report.start_lsn = Some(manifest.start_lsn);
            report.stop_lsn = Some(manifest.stop_lsn);
            report.pg_version = manifest.pg_version;
            let mut laps = crate::util::Laps::start();
            set.write(&mut sink, &mut report, progress, check)?;
            laps.lap("files");
            report.data_bytes = sink.data_bytes;
            report.file_bytes = sink.commit()?;
            laps.lap("commit");
            report.timings = laps.timings;
            report
        }
        Source::Live(live) => live::export(live, opts, progress, check)?,
    };
    report.duration_ms = ms_since(started);
    Ok(report)
}

/// A sink opened at the resolved destination, and the report begun for it.
pub struct Begun {
    /// The sink.
    pub sink: Sink,
    /// The report, with the file, format and cleaned temporaries filled in.
    pub report: ExportReport,
}

/// Resolves the destination (as the user the export runs as), refuses what must not be written,
/// removes temporaries of killed exports beside it, and opens the sink.
pub fn begin(opts: &ExportOptions, opened: &Opened) -> Result<Begun> {
    let encrypted = opts.passphrase.is_some();
    let (file, compression) = match &opts.target {
        Target::File(path) => (path.clone(), Compression::of_name(path, encrypted)?),
        Target::Named { dir, tag, compression } => {
            let tag = tag.clone().unwrap_or_else(|| opened.tag.clone());
            (dir.join(default_name(&tag, *compression, encrypted)), *compression)
        }
    };
    check_destination(&file, opts.replace)?;
    let dir = file.parent().unwrap_or(Path::new(".")).to_path_buf();
    let cleaned = remove_dead_temporaries(&dir)?;
    let sink = Sink::create(&file, compression, opts.passphrase.as_ref(), opened.owner.clone(), opened.mtime)?;
    let report = ExportReport {
        file,
        set: None,
        data: None,
        start_lsn: None,
        stop_lsn: None,
        pg_version: 0,
        compression,
        encrypted,
        snapshot: false,
        files: 0,
        wal_segments: 0,
        data_bytes: 0,
        file_bytes: 0,
        duration_ms: 0.0,
        timings: Vec::new(),
        notes: Vec::new(),
        cleaned,
    };
    Ok(Begun { sink, report })
}

/// pg-basebackup's file name: `backup_<tag>_<YYYYMMDD>` and the format's extension, the tag made
/// safe for a file name.
pub fn default_name(tag: &str, compression: Compression, encrypted: bool) -> String {
    let tag: String = tag.chars().map(|c| if c.is_alphanumeric() || "-_.".contains(c) { c } else { '-' }).collect();
    let date = chrono::Local::now().format("%Y%m%d");
    format!("backup_{tag}_{date}{}{}", compression.extension(), if encrypted { AGE_SUFFIX } else { "" })
}

/// Refuses a destination that exists (unless `replace`), is a directory, or lies in a directory
/// this process cannot write.
fn check_destination(file: &Path, replace: bool) -> Result<()> {
    let dir = match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(Error::refused(
            format!("cannot write {}: {} is not a directory", file.display(), dir.display()),
            Some("create the directory first".into()),
        ));
    }
    if let Err(e) = nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK) {
        let user = current_user();
        return Err(Error::refused(
            format!("cannot write {}: {} is not writable by {user} ({e})", file.display(), dir.display()),
            Some(format!("choose a directory {user} can write to")),
        ));
    }
    match std::fs::symlink_metadata(file) {
        Ok(meta) if meta.is_dir() => Err(Error::refused(
            format!("{} is a directory", file.display()),
            Some("name the file to write, such as DIR/backup.tar.lz4".into()),
        )),
        Ok(_) if !replace => Err(Error::refused(
            format!("{} exists", file.display()),
            Some("pass --force to replace it (the old file stays until the new one is complete)".into()),
        )),
        _ => Ok(()),
    }
}

/// The name of the user this process acts as.
fn current_user() -> String {
    let uid = nix::unistd::Uid::effective();
    nix::unistd::User::from_uid(uid).ok().flatten().map_or_else(|| format!("uid {uid}"), |u| u.name)
}

/// Removes the temporaries that killed exports left in `dir` (`.<name>.pgfork-tmp.<pid>.<n>` of
/// an export's name, whose process is gone).
fn remove_dead_temporaries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(removed) };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = fsx::temp_pid(&name) else { continue };
        let Some((inner, _)) = name.strip_prefix('.').and_then(|n| n.rsplit_once(".pgfork-tmp.")) else { continue };
        let inner = inner.strip_suffix(AGE_SUFFIX).unwrap_or(inner);
        let is_export = [Compression::Lz4, Compression::Zstd].iter().any(|c| inner.ends_with(c.extension()));
        if is_export && !Path::new("/proc").join(pid.to_string()).exists() {
            std::fs::remove_file(entry.path()).map_err(|e| Error::io("remove", entry.path(), e))?;
            removed.push(entry.path());
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_follow_pg_basebackup() {
        let name = default_name("pg-meta", Compression::Lz4, false);
        assert!(name.starts_with("backup_pg-meta_"), "{name}");
        assert!(name.ends_with(".tar.lz4"));
        assert_eq!(name.len(), "backup_pg-meta_20250713.tar.lz4".len());
        assert!(default_name("a b/c", Compression::Zstd, true).starts_with("backup_a-b-c_"));
        assert!(default_name("x", Compression::Zstd, true).ends_with(".tar.zst.age"));
    }

    #[test]
    fn refuses_existing_files_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x.tar.lz4");
        check_destination(&file, false).unwrap();
        std::fs::write(&file, b"old").unwrap();
        assert!(check_destination(&file, false).is_err());
        check_destination(&file, true).unwrap();
        assert!(check_destination(dir.path(), true).is_err());
        assert!(check_destination(&dir.path().join("missing/x.tar.lz4"), false).is_err());
    }

    #[test]
    fn removes_only_temporaries_of_dead_exports() {
        let dir = tempfile::tempdir().unwrap();
        let dead = dir.path().join(".backup_x_1.tar.lz4.pgfork-tmp.999999999.0");
        let alive = dir.path().join(format!(".backup_x_1.tar.zst.pgfork-tmp.{}.0", std::process::id()));
        let other = dir.path().join(".000000010000000000000001.pgfork-tmp.999999999.0");
        for path in [&dead, &alive, &other] {
            std::fs::write(path, b"").unwrap();
        }
        assert_eq!(remove_dead_temporaries(dir.path()).unwrap(), std::slice::from_ref(&dead));
        assert!(!dead.exists() && alive.exists() && other.exists());
    }
}
