//! Where a restore writes: the data directory and the tablespace locations. Checked before
//! anything is written (no running server, empty unless delta); then prepared (created, or with
//! delta cleared of files the set does not have) with the set's directories and tablespace links.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::pg::datadir::PostmasterPid;
use crate::repo::manifest::Manifest;
use crate::util::fsx;

/// The data directory and tablespace locations of a restore.
#[derive(Debug, Clone)]
pub struct Destination {
    /// The data directory.
    pub data: PathBuf,
    /// Each tablespace's location, by OID.
    pub locations: Vec<(u32, PathBuf)>,
    /// Whether existing content is kept and only what differs rewritten.
    pub delta: bool,
}

impl Destination {
    /// The destination of `manifest` in `data` (tablespaces at `overrides` or their recorded
    /// locations), refused when a running server owns a directory (unless `server_stops_first`: a
    /// pre-flight of a caller that stops it) or, without delta, one is not empty.
    pub fn check(
        data: &Path,
        manifest: &Manifest,
        overrides: &std::collections::BTreeMap<u32, PathBuf>,
        delta: bool,
        server_stops_first: bool,
    ) -> Result<Destination> {
        let locations: Vec<(u32, PathBuf)> = manifest
            .tablespaces
            .iter()
            .map(|t| (t.oid, overrides.get(&t.oid).cloned().unwrap_or_else(|| PathBuf::from(&t.location))))
            .collect();
        check_target(data, delta, server_stops_first)?;
        for (_, location) in &locations {
            check_target(location, delta, server_stops_first)?;
        }
        Ok(Destination { data: data.to_path_buf(), locations, delta })
    }

    /// Creates the data directory (or, with delta, removes the files the set does not have) and
    /// the set's directories and tablespace links; returns how many files were removed.
    pub fn prepare(&self, manifest: &Manifest) -> Result<u64> {
        let mut removed = 0;
        if !self.data.exists() {
            fsx::create_dir_mode(&self.data, 0o700)?;
        } else if self.delta {
            removed = remove_extra_files(&self.data, manifest, &self.locations)?;
        }
        create_dirs(&self.data, manifest, &self.locations)?;
        Ok(removed)
    }
}

/// Refuses a directory a running server owns, and a non-empty one without delta.
fn check_target(dir: &Path, delta: bool, server_stops_first: bool) -> Result<()> {
    if let Some(pid) = PostmasterPid::running(dir).filter(|_| !server_stops_first) {
        return Err(Error::refused(
            format!("{} belongs to a running server (pid {}, port {})", dir.display(), pid.pid, pid.port),
            Some("stop it before restoring into it".into()),
        ));
    }
    let non_empty = std::fs::read_dir(dir).map(|mut d| d.next().is_some()).unwrap_or(false);
    if non_empty && !delta {
        return Err(Error::refused(
            format!("{} is not empty", dir.display()),
            Some("restore into an empty directory, or pass --delta to rewrite only what differs".into()),
        ));
    }
    Ok(())
}

fn tablespace_link(locations: &[(u32, PathBuf)], rel: &str) -> Option<PathBuf> {
    let oid = rel.strip_prefix("pg_tblspc/")?;
    locations.iter().find(|(o, _)| o.to_string() == oid).map(|(_, p)| p.clone())
}

fn create_dirs(target: &Path, manifest: &Manifest, locations: &[(u32, PathBuf)]) -> Result<()> {
    for dir in &manifest.dirs {
        let path = target.join(&dir.path);
        if let Some(location) = tablespace_link(locations, &dir.path) {
            std::fs::create_dir_all(&location).at("create directory", &location)?;
            if std::fs::symlink_metadata(&path).is_ok() {
                if std::fs::read_link(&path).ok().as_deref() == Some(location.as_path()) {
                    continue;
                }
                remove_any(&path)?;
            }
            std::os::unix::fs::symlink(&location, &path).at("create link", &path)?;
            continue;
        }
        std::fs::create_dir_all(&path).at("create directory", &path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(dir.mode)).at("chmod", &path)?;
    }
    Ok(())
}

fn remove_any(path: &Path) -> Result<()> {
    let meta = std::fs::symlink_metadata(path).at("stat", path)?;
    if meta.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) }.at("remove", path)
}

/// Delta: removes files under `target` (and its tablespaces) that the set does not have.
fn remove_extra_files(target: &Path, manifest: &Manifest, locations: &[(u32, PathBuf)]) -> Result<u64> {
    let wanted: HashSet<&str> = manifest
        .files
        .iter()
        .map(|f| f.path.as_str())
        .chain(manifest.wal.iter().map(|w| w.name.as_str()))
        // Written from the manifest after the files.
        .chain(["backup_label", "tablespace_map"])
        .collect();
    let mut removed = 0;
    let walker = walkdir::WalkDir::new(target).min_depth(1).follow_links(false);
    for entry in walker {
        let entry = entry.map_err(|e| Error::io("walk", target, e.into()))?;
        if !entry.file_type().is_file() {
            continue;
        }
        let Ok(rel) = entry.path().strip_prefix(target) else { continue };
        let rel = rel.to_string_lossy().into_owned();
        let wal_name = rel.strip_prefix("pg_wal/").unwrap_or("");
        if !wanted.contains(rel.as_str()) && !wanted.contains(wal_name) {
            std::fs::remove_file(entry.path()).at("remove", entry.path())?;
            removed += 1;
        }
    }
    for (oid, root) in locations {
        let prefix = format!("pg_tblspc/{oid}");
        for entry in walkdir::WalkDir::new(root).min_depth(1).into_iter().filter_map(|e| e.ok()) {
            if entry.file_type().is_file() {
                let Ok(inside) = entry.path().strip_prefix(root) else { continue };
                let rel = format!("{prefix}/{}", inside.to_string_lossy());
                if !wanted.contains(rel.as_str()) {
                    std::fs::remove_file(entry.path()).at("remove", entry.path())?;
                    removed += 1;
                }
            }
        }
    }
    remove_extra_dirs(target, manifest)?;
    Ok(removed)
}

/// Removes the directories of `target` the set does not have, now emptied of files: a leftover
/// such as a replication slot's `pg_replslot/<slot>` would stop the server at startup.
fn remove_extra_dirs(target: &Path, manifest: &Manifest) -> Result<()> {
    let wanted: HashSet<&str> = manifest.dirs.iter().map(|d| d.path.as_str()).collect();
    let walker = walkdir::WalkDir::new(target).min_depth(1).follow_links(false).contents_first(true);
    for entry in walker {
        let entry = entry.map_err(|e| Error::io("walk", target, e.into()))?;
        if !entry.file_type().is_dir() {
            continue;
        }
        let Ok(rel) = entry.path().strip_prefix(target) else { continue };
        if wanted.contains(rel.to_string_lossy().as_ref()) {
            continue;
        }
        match std::fs::remove_dir(entry.path()) {
            Ok(()) => {}
            // Something else the set does not name (a socket, a link) is left with its directory.
            Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {}
            Err(e) => return Err(Error::io("remove", entry.path(), e)),
        }
    }
    Ok(())
}
