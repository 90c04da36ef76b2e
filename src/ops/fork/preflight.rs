//! The checks a fork makes before it touches anything: destination free and not owned by a running
//! server, ports free, source and destination apart.

use std::net::TcpListener;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::ops::fork::options::ForkOptions;
use crate::pg::datadir::{PostmasterPid, process_is_postgres};

/// What already exists at the destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Nothing: the fork creates it.
    Absent,
    /// A stopped directory (and its tablespace directory) that `--force` replaces.
    Replace(Vec<PathBuf>),
}

/// Checks the destination directory and its tablespace directory.
pub fn check_destination(opts: &ForkOptions, src: &Path) -> Result<Destination> {
    let dst = &opts.dst;
    if !dst.is_absolute() {
        return Err(Error::refused(format!("destination {} must be an absolute path", dst.display()), None));
    }
    let dst_real = resolve_existing_prefix(dst);
    if dst_real.starts_with(src) || src.starts_with(&dst_real) {
        return Err(Error::refused(
            format!("destination {} and source {} overlap", dst.display(), src.display()),
            None,
        ));
    }
    let mut existing = Vec::new();
    for path in [dst.clone(), ForkOptions::tablespace_root(dst)] {
        if std::fs::symlink_metadata(&path).is_err() {
            continue;
        }
        if let Some(pid) = PostmasterPid::running(&path) {
            return Err(Error::refused(
                format!(
                    "destination {} belongs to a running server (pid {}, port {})",
                    path.display(),
                    pid.pid,
                    pid.port
                ),
                Some("stop that server, or choose another destination with -D".into()),
            ));
        }
        existing.push(path);
    }
    if existing.is_empty() {
        return Ok(Destination::Absent);
    }
    if !opts.force {
        return Err(Error::refused(
            format!("destination {} already exists", existing[0].display()),
            Some("choose another destination with -D, or pass --force to replace it".into()),
        ));
    }
    Ok(Destination::Replace(existing))
}

/// Refuses a destination port that equals the source's or that something listens on.
pub fn check_port(opts: &ForkOptions, socket_dirs: &[PathBuf]) -> Result<()> {
    if opts.dst_port == opts.src_port {
        return Err(Error::refused(
            format!("the fork's port {} is the source's port", opts.dst_port),
            Some("pass another port with -P".into()),
        ));
    }
    if let Some(user) = port_user(opts.dst_port, socket_dirs) {
        return Err(Error::refused(
            format!("port {} is in use: {user}", opts.dst_port),
            Some("pass a free port with -P".into()),
        ));
    }
    Ok(())
}

/// Describes what holds `port`, checking TCP on loopback and PostgreSQL socket lock files.
pub fn port_user(port: u16, socket_dirs: &[PathBuf]) -> Option<String> {
    for dir in socket_dirs {
        let lock = dir.join(format!(".s.PGSQL.{port}.lock"));
        if let Ok(text) = std::fs::read_to_string(&lock) {
            let pid: i32 = text.lines().next().and_then(|l| l.trim().parse().ok()).unwrap_or(0);
            if process_is_postgres(pid.abs()) {
                return Some(format!("a PostgreSQL server (pid {}) holds {}", pid.abs(), lock.display()));
            }
        }
    }
    match TcpListener::bind(("127.0.0.1", port)) {
        Ok(_) => None,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Some("a process listens on TCP 127.0.0.1".into()),
        Err(_) => None,
    }
}

/// The canonical form of the longest existing prefix of `path`, with the rest appended.
fn resolve_existing_prefix(path: &Path) -> PathBuf {
    let mut rest = Vec::new();
    let mut cursor = path.to_path_buf();
    loop {
        if let Ok(real) = std::fs::canonicalize(&cursor) {
            return rest.iter().rev().fold(real, |acc: PathBuf, part: &std::ffi::OsString| acc.join(part));
        }
        match (cursor.file_name().map(|n| n.to_os_string()), cursor.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                cursor = parent.to_path_buf();
            }
            _ => return path.to_path_buf(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listening_tcp_port_is_in_use() {
        let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(port_user(port, &[]).is_some());
        drop(listener);
        assert!(port_user(port, &[]).is_none());
    }

    #[test]
    fn resolves_paths_that_do_not_exist_yet() {
        let dir = tempfile::tempdir().unwrap();
        let real = std::fs::canonicalize(dir.path()).unwrap();
        assert_eq!(resolve_existing_prefix(&dir.path().join("a/b")), real.join("a/b"));
    }
}
