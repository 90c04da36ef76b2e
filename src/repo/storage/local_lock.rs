//! Locks and leases of a local repository: files held with an exclusive `flock`. A lock file
//! records its holder so a refused run can name it; a lease file records what its holder uses. The
//! kernel drops a flock with its process, so a killed holder never leaves anything locked, and a
//! lease file nobody holds is stale and removed by the next look.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, IoContext, Result};
use crate::repo::storage::Held;
use crate::repo::storage::local::LocalStorage;

/// Prefix of a lease file still being written: readers skip it.
const PARTIAL: &str = ".partial-";

/// A held lock or lease file; a lease's file is removed on drop.
struct FileHold {
    _lock: Flock<File>,
    remove: Option<PathBuf>,
}

impl Held for FileHold {
    fn check(&self) -> Result<()> {
        Ok(())
    }
}

impl Drop for FileHold {
    fn drop(&mut self) {
        if let Some(path) = &self.remove {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Takes the lock file at `path` for `holder`, or refuses naming the current holder.
pub fn lock(storage: &LocalStorage, path: &Path, holder: &str) -> Result<Box<dyn Held>> {
    storage.make_parents(path)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o640)
        .open(path)
        .at("open", path)?;
    storage.give(path)?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            let current = std::fs::read_to_string(path).unwrap_or_default();
            let current = if current.trim().is_empty() { "another process" } else { current.trim() };
            return Err(Error::busy(
                format!("{} is locked by {current}", lock_subject(path)),
                Some(format!("wait for it to finish; the lock is {}", path.display())),
            ));
        }
        Err((_, e)) => return Err(Error::io("lock", path, e.into())),
    };
    lock.set_len(0).at("truncate", path)?;
    lock.write_all(format!("{holder}\n").as_bytes()).at("write", path)?;
    Ok(Box::new(FileHold { _lock: lock, remove: None }))
}

/// What a lock at `path` protects, for messages: `stanza main` for `<repo>/main/lock`.
fn lock_subject(path: &Path) -> String {
    match path.parent().and_then(Path::file_name) {
        Some(stanza) => format!("stanza {}", stanza.to_string_lossy()),
        None => path.display().to_string(),
    }
}

/// Creates and holds the lease file `path` with `record`. It is written and locked under a name
/// readers skip, then renamed: a reader never sees a lease that is not yet held or complete.
pub fn lease(storage: &LocalStorage, path: &Path, record: &[u8]) -> Result<Box<dyn Held>> {
    storage.make_parents(path)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let partial = path.with_file_name(format!("{PARTIAL}{name}"));
    let file = OpenOptions::new().write(true).create_new(true).mode(0o640).open(&partial).at("create", &partial)?;
    storage.give(&partial)?;
    let mut lock =
        Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| Error::io("lock", &partial, e.into()))?;
    lock.write_all(record).at("write", &partial)?;
    std::fs::rename(&partial, path).at("rename", &partial)?;
    Ok(Box::new(FileHold { _lock: lock, remove: Some(path.to_path_buf()) }))
}

/// The records of the lease files in `dir` held now; files nobody holds are removed.
pub fn leases(dir: &Path) -> Result<Vec<Vec<u8>>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("list", dir, e)),
    };
    let mut held = Vec::new();
    for entry in entries {
        let entry = entry.at("list", dir)?;
        let partial = entry.file_name().to_string_lossy().starts_with(PARTIAL);
        let path = entry.path();
        let Ok(file) = File::open(&path) else { continue };
        match Flock::lock(file, FlockArg::LockSharedNonblock) {
            // Being written: it becomes a lease under its final name.
            Err((_, nix::errno::Errno::EWOULDBLOCK)) if partial => {}
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => held.push(std::fs::read(&path).at("read", &path)?),
            // Nobody holds it: its process died.
            _ => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    Ok(held)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_named() {
        let dir = tempfile::tempdir().unwrap();
        let storage = LocalStorage::new(dir.path());
        let path = dir.path().join("main/lock");
        let first = lock(&storage, &path, "backup (pid 1)").unwrap();
        let err = lock(&storage, &path, "expire").err().unwrap();
        assert!(matches!(err, Error::Busy { .. }), "a held lock is Busy, not another failure: {err}");
        let text = err.to_string();
        assert!(text.contains("stanza main is locked by backup (pid 1)"), "{text}");
        drop(first);
        lock(&storage, &path, "expire").unwrap();
    }

    #[test]
    fn leases_are_seen_while_held_and_stale_ones_removed() {
        let dir = tempfile::tempdir().unwrap();
        let storage = LocalStorage::new(dir.path());
        let leases_dir = dir.path().join("main/leases");
        assert!(leases(&leases_dir).unwrap().is_empty());
        let held = lease(&storage, &leases_dir.join("a"), b"record").unwrap();
        std::fs::write(leases_dir.join("dead"), b"nobody").unwrap();
        assert_eq!(leases(&leases_dir).unwrap(), vec![b"record".to_vec()]);
        assert!(!leases_dir.join("dead").exists());
        drop(held);
        assert!(leases(&leases_dir).unwrap().is_empty());
    }
}
