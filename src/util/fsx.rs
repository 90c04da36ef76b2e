//! File-system helpers with the durability rules every writer in pgfork follows: write to a
//! temporary name, fsync, rename into place, fsync the directory.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

use crate::error::{IoContext, Result};

/// Writes `bytes` to `path` so that after a crash the file holds either its old content or all of
/// the new: temp file in the same directory, fsync, rename, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = temp_name(path);
    let result = (|| {
        let mut file =
            OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp).at("create", &tmp)?;
        file.write_all(bytes).at("write", &tmp)?;
        file.set_permissions(fs::Permissions::from_mode(mode)).at("chmod", &tmp)?;
        file.sync_all().at("fsync", &tmp)?;
        fs::rename(&tmp, path).at("rename into place", path)?;
        fsync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Marks the name of a temporary file pgfork writes before renaming it into place.
const TEMP_MARK: &str = ".pgfork-tmp.";

/// A temporary name beside `path`, unique to this process and call: `.<name>.pgfork-tmp.<pid>.<n>`.
pub fn temp_name(path: &Path) -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}{TEMP_MARK}{}.{n}", std::process::id()))
}

/// The pid of the process that wrote a temporary named by [`temp_name`] (or by earlier versions,
/// without the counter); `None` for any other name.
pub fn temp_pid(name: &str) -> Option<u32> {
    let (_, tail) = name.strip_prefix('.')?.rsplit_once(TEMP_MARK)?;
    tail.split('.').next()?.parse().ok()
}

/// Starts writing back the dirty pages of the file at `path` without waiting for them (Linux
/// `sync_file_range(SYNC_FILE_RANGE_WRITE)`): the device works while the caller goes on, and the
/// `fdatasync` that makes the file durable later finds little left to write. A hint only: it
/// guarantees nothing, and a file system that does not take it is not an error.
pub fn start_writeback(path: &Path) -> Result<()> {
    let file = File::open(path).at("open", path)?;
    start_writeback_of(&file);
    Ok(())
}

#[allow(unsafe_code)] // one system call nix does not wrap; see the SAFETY note
fn start_writeback_of(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range takes a descriptor and two integers and touches no memory of this
    // process; `file` keeps the descriptor open for the duration of the call.
    let _ = unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
}

/// Fsyncs a directory so that entries created or renamed in it are durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at("fsync directory", dir)
}

/// Reads into `buf` from `offset` until it is full or the file ends; returns the bytes read.
pub fn read_fully_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Creates a directory with `mode`, failing if it exists.
pub fn create_dir_mode(path: &Path, mode: u32) -> Result<()> {
    fs::DirBuilder::new().mode(mode).create(path).at("create directory", path)?;
    // The umask may have narrowed the mode.
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).at("chmod", path)
}

/// Opens (creating with `mode`, never truncating) the lock file at `path` and takes its exclusive
/// flock, waiting for it when `wait`; `None` when another process holds it and `wait` is false.
/// The kernel releases the lock when the returned file is dropped or the process ends.
pub fn lock_exclusive(path: &Path, mode: u32, wait: bool) -> Result<Option<Flock<File>>> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(mode)
        .open(path)
        .at("open", path)?;
    let how = if wait { FlockArg::LockExclusive } else { FlockArg::LockExclusiveNonblock };
    match Flock::lock(file, how) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(crate::Error::io("lock", path, e.into())),
    }
}

/// Whether another process holds the flock of the lock file at `path` (a missing file: no).
pub fn is_locked(path: &Path) -> bool {
    let Ok(file) = File::open(path) else { return false };
    matches!(Flock::lock(file, FlockArg::LockExclusiveNonblock), Err((_, nix::errno::Errno::EWOULDBLOCK)))
}

/// Flushes the whole file system holding `path` (syncfs).
pub fn sync_filesystem(path: &Path) -> Result<()> {
    let dir = File::open(path).at("open", path)?;
    nix::unistd::syncfs(&dir).at("syncfs", path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_content_and_sets_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.conf");
        write_atomic(&path, b"one", 0o600).unwrap();
        write_atomic(&path, b"two", 0o640).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "no temp file left behind");
    }

    #[test]
    fn temporary_names_carry_the_writers_pid() {
        let tmp = temp_name(Path::new("/x/000000010000000000000002"));
        let name = tmp.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(temp_pid(&name), Some(std::process::id()));
        assert_eq!(temp_pid(".a.pgfork-tmp.77"), Some(77));
        for other in ["000000010000000000000002", ".a.pgfork-tmp.x", "a.pgfork-tmp.5", ".pgfork-tmp."] {
            assert_eq!(temp_pid(other), None, "{other}");
        }
    }
}
