//! Leases on backup sets: a mount that shows a set as a data directory (and `verify`, which boots
//! one) leases the set and every set it reads pages from, so `expire` — by retention or by
//! request — never removes them from under it. A lease is a file under `<stanza>/leases/` that
//! its process holds an exclusive `flock` on; a lease whose process died is not held and is
//! removed by the next look.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::repo::label::SetLabel;

/// What a lease records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    /// The holding process.
    pub pid: u32,
    /// What it is doing (`mount`, `verify`).
    pub command: String,
    /// The sets it uses.
    pub sets: Vec<SetLabel>,
}

impl LeaseInfo {
    /// `verify (pid 123)`.
    pub fn holder(&self) -> String {
        format!("{} (pid {})", self.command, self.pid)
    }
}

/// A held lease; released (and its file removed) on drop.
pub struct SetLease {
    _lock: Flock<File>,
    path: PathBuf,
}

/// Prefix of a lease still being written.
const PARTIAL: &str = ".partial-";

/// The lease directory of `stanza` in the local repository at `repo`.
fn lease_dir(repo: &Path, stanza: &str) -> PathBuf {
    repo.join(stanza).join("leases")
}

impl SetLease {
    /// Leases `sets` of `stanza` for `command`.
    pub fn take(repo: &Path, stanza: &str, command: &str, sets: Vec<SetLabel>) -> Result<SetLease> {
        let dir = lease_dir(repo, stanza);
        std::fs::create_dir_all(&dir).at("create directory", &dir)?;
        // Expire runs as the repository's owner and must be able to look at and remove leases.
        if let Ok(owner) = std::fs::metadata(repo.join(stanza)) {
            let _ = std::os::unix::fs::chown(&dir, Some(owner.uid()), Some(owner.gid()));
        }
        let info = LeaseInfo { pid: std::process::id(), command: command.to_string(), sets };
        let name = format!("{}-{}", info.pid, chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0));
        // Written and locked under a name readers skip, then renamed: a reader never sees a
        // lease that is not yet locked or not yet complete.
        let partial = dir.join(format!("{PARTIAL}{name}"));
        let file = OpenOptions::new().write(true).create_new(true).mode(0o644).open(&partial).at("create", &partial)?;
        let mut lock = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| Error::io("lock", &partial, e.into()))?;
        let json = serde_json::to_vec(&info).map_err(|e| Error::invalid(name.clone(), e.to_string()))?;
        lock.write_all(&json).at("write", &partial)?;
        let path = dir.join(name);
        std::fs::rename(&partial, &path).at("rename", &partial)?;
        Ok(SetLease { _lock: lock, path })
    }

    /// The leases held now on `stanza`'s sets; leases left by dead processes are removed.
    pub fn held(repo: &Path, stanza: &str) -> Result<Vec<LeaseInfo>> {
        let dir = lease_dir(repo, stanza);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("list", dir, e)),
        };
        let mut held = Vec::new();
        for entry in entries {
            let entry = entry.at("list", &dir)?;
            let partial = entry.file_name().to_string_lossy().starts_with(PARTIAL);
            let path = entry.path();
            let Ok(file) = File::open(&path) else { continue };
            match Flock::lock(file, FlockArg::LockSharedNonblock) {
                // Being written: it becomes a lease under its final name.
                Err((_, nix::errno::Errno::EWOULDBLOCK)) if partial => {}
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                    let text = std::fs::read(&path).at("read", &path)?;
                    let info = serde_json::from_slice::<LeaseInfo>(&text)
                        .map_err(|e| Error::invalid(path.display().to_string(), e.to_string()))?;
                    held.push(info);
                }
                // Nobody holds it: its process died.
                _ => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        Ok(held)
    }
}

impl Drop for SetLease {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_seen_while_held_and_gone_after() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("main")).unwrap();
        let set: SetLabel = "20250101-000000F".parse().unwrap();
        assert!(SetLease::held(dir.path(), "main").unwrap().is_empty());
        let lease = SetLease::take(dir.path(), "main", "verify", vec![set.clone()]).unwrap();
        let held = SetLease::held(dir.path(), "main").unwrap();
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].sets, vec![set]);
        assert!(held[0].holder().starts_with("verify (pid "));
        drop(lease);
        assert!(SetLease::held(dir.path(), "main").unwrap().is_empty());
    }

    #[test]
    fn a_lease_file_nobody_holds_is_stale_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let leases = dir.path().join("main/leases");
        std::fs::create_dir_all(&leases).unwrap();
        std::fs::write(leases.join("999-1"), r#"{"pid":999,"command":"mount","sets":[]}"#).unwrap();
        assert!(SetLease::held(dir.path(), "main").unwrap().is_empty());
        assert!(!leases.join("999-1").exists());
    }
}
