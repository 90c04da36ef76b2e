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

/// [`start_writeback`] of a file already open.
#[allow(unsafe_code)] // one system call nix does not wrap; see the SAFETY note
pub fn start_writeback_of(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range takes a descriptor and two integers and touches no memory of this
    // process; `file` keeps the descriptor open for the duration of the call.
    let _ = unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
}

/// Makes a tree just written durable, once, after its last write: every file's `fdatasync` in
/// parallel (their writeback started as each was completed, [`start_writeback`], so these mostly
/// wait for what is already under way), then the directories. Unlike
/// [`sync_filesystem`], it waits for these files only, not for every other writer of the file
/// system (a running server's checkpoint).
pub fn sync_tree(files: &[std::path::PathBuf], dirs: &[std::path::PathBuf]) -> Result<()> {
    use rayon::prelude::*;
    files.par_iter().try_for_each(|path| File::open(path).and_then(|f| f.sync_data()).at("fsync", path))?;
    dirs.iter().try_for_each(|dir| fsync_dir(dir))
}

/// Removes what processes that are gone left in `parent` under names `<prefix><pid>`: staging
/// directories and snapshots of a killed run. Names of other forms, and those of live processes,
/// are left alone.
pub fn remove_dead_leftovers(parent: &Path, prefix: &str) -> Result<()> {
    let Ok(entries) = fs::read_dir(parent) else { return Ok(()) };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(prefix).and_then(|p| p.parse::<u32>().ok()) else { continue };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            fs::remove_dir_all(entry.path()).at("remove", entry.path())?;
        }
    }
    Ok(())
}

/// The owner (uid, gid) of `path`.
pub fn owner_of(path: &Path) -> Result<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(path).at("stat", path)?;
    Ok((meta.uid(), meta.gid()))
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
    let how = if wait { FlockArg::LockExclusive } else { FlockArg::LockExclusiveNonblock };
    lock_file(path, mode, how)
}

/// Like [`lock_exclusive`], without waiting, for the shared flock: any number of processes hold it
/// together; `None` while one holds the exclusive flock.
pub fn lock_shared(path: &Path, mode: u32) -> Result<Option<Flock<File>>> {
    lock_file(path, mode, FlockArg::LockSharedNonblock)
}

fn lock_file(path: &Path, mode: u32, how: FlockArg) -> Result<Option<Flock<File>>> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(mode)
        .open(path)
        .at("open", path)?;
    match Flock::lock(file, how) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(crate::Error::io("lock", path, e.into())),
    }
}

/// Whether the open `file` is still the one at `path` (not renamed away, removed or replaced).
pub fn is_at(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), fs::metadata(path)) {
        (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
        _ => false,
    }
}

/// The processes holding a flock on the file at `path`, each as `pid N (its command line)`, from
/// `/proc/locks`: for messages, so best effort, empty when none can be told.
pub fn flock_holders(path: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let (Ok(meta), Ok(locks)) = (fs::metadata(path), fs::read_to_string("/proc/locks")) else { return Vec::new() };
    let dev = format!("{:02x}:{:02x}", nix::sys::stat::major(meta.dev()), nix::sys::stat::minor(meta.dev()));
    let mut holders = Vec::new();
    for line in locks.lines() {
        // `1: FLOCK  ADVISORY  READ  1234 fd:01:131 0 EOF`; a waiter's line has `->` after the number.
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 6 || fields[1] != "FLOCK" {
            continue;
        }
        let Some((lock_dev, ino)) = fields[5].rsplit_once(':') else { continue };
        let Ok(pid) = fields[4].parse::<u32>() else { continue };
        // The device /proc/locks names is the file system's, which stat does not give on Btrfs:
        // then the holder's open files tell.
        if ino.parse::<u64>().ok() != Some(meta.ino()) || (lock_dev != dev && !has_open(pid, path)) {
            continue;
        }
        let command = fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).split('\0').filter(|a| !a.is_empty()).collect::<Vec<_>>().join(" "))
            .unwrap_or_default();
        let holder = if command.is_empty() { format!("pid {pid}") } else { format!("pid {pid} ({command})") };
        if !holders.contains(&holder) {
            holders.push(holder);
        }
    }
    holders
}

/// Whether process `pid` has `path` open.
fn has_open(pid: u32, path: &Path) -> bool {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.flatten().any(|fd| fs::read_link(fd.path()).is_ok_and(|target| target == path))
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

    #[test]
    fn shared_flocks_exclude_the_exclusive_one_and_name_their_holders() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lease");
        let first = lock_shared(&path, 0o600).unwrap().expect("a free lock is taken");
        let second = lock_shared(&path, 0o600).unwrap().expect("shared holders share");
        assert!(is_at(&first, &path));
        assert!(lock_exclusive(&path, 0o600, false).unwrap().is_none(), "the exclusive side is refused");
        let holders = flock_holders(&path);
        assert!(holders.iter().any(|h| h.starts_with(&format!("pid {} (", std::process::id()))), "{holders:?}");
        drop((first, second));
        let exclusive = lock_exclusive(&path, 0o600, false).unwrap().expect("free again");
        assert!(lock_shared(&path, 0o600).unwrap().is_none());
        std::fs::rename(&path, dir.path().join("moved")).unwrap();
        assert!(!is_at(&exclusive, &path), "a renamed file is not at its old name");
    }
}
