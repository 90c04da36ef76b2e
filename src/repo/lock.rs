//! One backup or expire per stanza at a time: an exclusive `flock` on a lock file, which records
//! its holder so a refused run can name it. The lock dies with its process, so a killed backup
//! never leaves the stanza locked.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, IoContext, Result};

/// A held stanza lock; released on drop.
pub struct StanzaLock {
    _lock: Flock<std::fs::File>,
}

impl StanzaLock {
    /// Takes the lock at `path` for `command`, or refuses naming the current holder.
    pub fn acquire(path: &Path, stanza: &str, command: &str) -> Result<StanzaLock> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).at("create directory", parent)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o640)
            .open(path)
            .at("open", path)?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                let holder = std::fs::read_to_string(path).unwrap_or_default();
                return Err(Error::refused(
                    format!("stanza {stanza} is locked by {}", holder.trim().if_empty("another process")),
                    Some(format!("wait for it to finish; the lock is {}", path.display())),
                ));
            }
            Err((_, e)) => return Err(Error::io("lock", path, e.into())),
        };
        let host = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
        let holder = format!(
            "{command} (pid {} on {host}, since {})\n",
            std::process::id(),
            chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC")
        );
        lock.set_len(0).at("truncate", path)?;
        lock.write_all(holder.as_bytes()).at("write", path)?;
        Ok(StanzaLock { _lock: lock })
    }
}

trait IfEmpty {
    fn if_empty<'a>(&'a self, other: &'a str) -> &'a str;
}

impl IfEmpty for str {
    fn if_empty<'a>(&'a self, other: &'a str) -> &'a str {
        if self.is_empty() { other } else { self }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("main.lock");
        let first = StanzaLock::acquire(&path, "main", "backup").unwrap();
        let err = StanzaLock::acquire(&path, "main", "expire").err().unwrap();
        let text = err.to_string();
        assert!(text.contains("locked by backup (pid"), "{text}");
        drop(first);
        StanzaLock::acquire(&path, "main", "expire").unwrap();
    }
}
