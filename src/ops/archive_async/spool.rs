//! The queue of asynchronous archiving: a directory inside pg_wal, `.pgfork-archive-<stanza>`, on
//! the WAL's own file system (so a queued copy is a reflink where the file system has them) and
//! left out of base backups, forks and snapshot points with the rest of pg_wal's contents.
//!
//! What it holds:
//! - `<WAL file name>`: a file archive-push accepted. It was copied (reflink or data) under a
//!   temporary name, fsynced, hard-linked to its name (`link(2)` never replaces a file) and the
//!   directory fsynced, all before archive-push returned: it survives a crash from then on,
//!   whatever PostgreSQL does with its own file. It is removed only once every repository of the
//!   stanza holds it durably.
//! - `pushed/<WAL file name>`: a file the pusher stored in every repository straight from pg_wal,
//!   ahead of PostgreSQL, with the identity (device, inode, size, change times) of the pg_wal file
//!   it read; archive-push accepts a file with that identity without copying it.
//! - `pusher.lock`: flocked by the one pusher of the queue, holding its pid.
//! - `pusher.error`: the pusher's latest failure, until a round of pushes succeeds.
//! - temporaries `.<name>.pgfork-tmp.<pid>.<n>`; the pusher removes those of dead writers.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use nix::fcntl::Flock;
use serde::{Deserialize, Serialize};

use crate::config::Resolved;
use crate::cow::file_copy::copy_file;
use crate::cow::fs_kind::CopyMethod;
use crate::error::{Error, IoContext, Result};
use crate::repo::archive::classify;
use crate::util::fsx;

/// A temporary older than this is stale even if a process with its pid runs (pids are reused).
const STALE_AFTER: Duration = Duration::from_secs(3600);
/// Bytes compared at a time when a file is found queued already.
const COMPARE_CHUNK: usize = 1 << 20;

/// The queue of one stanza.
#[derive(Debug, Clone)]
pub struct Spool {
    wal_dir: PathBuf,
    dir: PathBuf,
}

/// A queued file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    /// Its WAL file name.
    pub name: String,
    /// Its size.
    pub size: u64,
}

/// What [`Spool::enqueue`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// The file is queued now.
    Queued,
    /// The same content was queued already.
    AlreadyQueued,
    /// Queuing it would take the queue past its limit; nothing was written.
    Full {
        /// Files queued.
        files: usize,
        /// Their bytes.
        bytes: u64,
    },
}

/// What tells a file's content apart without reading it while nothing rewrites it in place:
/// PostgreSQL reuses a segment's inode only after renaming it to a later name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileIdentity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileIdentity {
    /// The identity of the file `meta` describes.
    pub fn of(meta: &fs::Metadata) -> FileIdentity {
        FileIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// Its size.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn to_line(self) -> String {
        let FileIdentity { dev, ino, size, mtime, ctime } = self;
        format!("{dev} {ino} {size} {} {} {} {}\n", mtime.0, mtime.1, ctime.0, ctime.1)
    }

    fn parse(line: &str) -> Option<FileIdentity> {
        let mut fields = line.split_whitespace();
        let mut next = || fields.next()?.parse::<i64>().ok();
        let (dev, ino, size) = (next()?, next()?, next()?);
        let mtime = (next()?, next()?);
        let ctime = (next()?, next()?);
        Some(FileIdentity { dev: dev as u64, ino: ino as u64, size: u64::try_from(size).ok()?, mtime, ctime })
    }
}

/// A failure of the pusher, kept for archive-push to report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PusherError {
    /// The WAL file it could not push.
    pub file: String,
    /// The repository it could not push to.
    pub repository: String,
    /// What went wrong.
    pub message: String,
    /// What to do about it, when known.
    pub hint: Option<String>,
    /// A refusal that trying again does not cure (different content archived, another cluster's
    /// segment, a wrong passphrase or credentials): archive-push fails at once. Anything else (an
    /// unreachable or unwritable repository) only once the queue is full.
    pub permanent: bool,
    /// When the pusher started failing.
    pub since: DateTime<Utc>,
}

impl PusherError {
    /// The failure of pushing `file` to `repository` with `error`, failing since `since`.
    pub fn new(file: &str, repository: &str, error: &Error, since: DateTime<Utc>) -> PusherError {
        let (message, hint, permanent) = match error {
            Error::Refused { message, hint } => (message.clone(), hint.clone(), true),
            other => (other.to_string(), None, false),
        };
        PusherError { file: file.into(), repository: repository.into(), message, hint, permanent, since }
    }

    /// One line for messages: what failed since when.
    pub fn describe(&self) -> String {
        let what = match (self.file.as_str(), self.repository.as_str()) {
            ("", "") => String::new(),
            ("", repository) => format!(" to reach repository {repository}"),
            (file, "") => format!(" to push {file}"),
            (file, repository) => format!(" to push {file} to repository {repository}"),
        };
        format!(
            "the archive pusher has been failing since {}{what}: {}",
            self.since.format("%Y-%m-%d %H:%M:%S UTC"),
            self.message
        )
    }
}

impl Spool {
    /// The queue of the stanza `resolved` names, in its data directory's pg_wal; refused when
    /// there is no pg_wal there.
    pub fn of(resolved: &Resolved) -> Result<Spool> {
        let wal_dir = resolved.stanza.data.join("pg_wal");
        if !wal_dir.is_dir() {
            return Err(Error::refused(
                format!(
                    "asynchronous archiving of stanza {} queues WAL beside {}, which does not exist",
                    resolved.name,
                    wal_dir.display()
                ),
                Some("set data in the stanza to the cluster's data directory".into()),
            ));
        }
        Ok(Spool::in_wal_dir(&wal_dir, &resolved.name))
    }

    /// The queue of `stanza` in `wal_dir`.
    pub fn in_wal_dir(wal_dir: &Path, stanza: &str) -> Spool {
        let plain = !stanza.is_empty()
            && !stanza.starts_with('.')
            && stanza.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        let tag =
            if plain { stanza.to_string() } else { format!("{:016x}", xxhash_rust::xxh3::xxh3_64(stanza.as_bytes())) };
        Spool { wal_dir: wal_dir.to_path_buf(), dir: wal_dir.join(format!(".pgfork-archive-{tag}")) }
    }

    /// The pg_wal directory the queue lives in.
    pub fn wal_dir(&self) -> &Path {
        &self.wal_dir
    }

    /// The queue directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates the queue directory (durably) when it is missing.
    pub fn create(&self) -> Result<()> {
        for (dir, parent) in [(&self.dir, &self.wal_dir), (&self.pushed_dir(), &self.dir)] {
            if dir.is_dir() {
                continue;
            }
            match fsx::create_dir_mode(dir, 0o700) {
                Ok(()) => fsx::fsync_dir(parent)?,
                Err(_) if dir.is_dir() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn pushed_dir(&self) -> PathBuf {
        self.dir.join("pushed")
    }

    /// The queued files, oldest name first (a timeline's history file before its segments).
    pub fn queued(&self) -> Result<Vec<Queued>> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("list", &self.dir, e)),
        };
        let mut queued = Vec::new();
        for entry in entries {
            let entry = entry.at("list", &self.dir)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if classify(&name).is_none() {
                continue;
            }
            match entry.metadata() {
                Ok(meta) if meta.is_file() => queued.push(Queued { name, size: meta.len() }),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("stat", entry.path(), e)),
            }
        }
        queued.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(queued)
    }

    /// Whether `name` is queued.
    pub fn holds(&self, name: &str) -> bool {
        self.dir.join(name).is_file()
    }

    /// The path of queued `name`.
    pub fn path_of(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Queues a durable copy of `src` as `name`, unless the queue already holds files and this one
    /// would take it past `limit` bytes. A file queued under that name already is compared:
    /// the same content is fine, different content is refused.
    pub fn enqueue(&self, name: &str, src: &Path, limit: u64) -> Result<Enqueued> {
        let source = File::open(src).at("open", src)?;
        let size = source.metadata().at("stat", src)?.len();
        // Another writer of the name may come and its file be pushed and go between two looks.
        for _ in 0..3 {
            if let Some(done) = self.try_enqueue(name, &source, src, size, limit)? {
                return Ok(done);
            }
        }
        Err(Error::invalid(self.dir.join(name).display().to_string(), "queued and removed again while being queued"))
    }

    /// One attempt of [`Spool::enqueue`]; `None` when a file queued under the name left meanwhile.
    fn try_enqueue(&self, name: &str, source: &File, src: &Path, size: u64, limit: u64) -> Result<Option<Enqueued>> {
        let dest = self.dir.join(name);
        if dest.exists() {
            return self.compare(name, source, src);
        }
        let queued = self.queued()?;
        let bytes: u64 = queued.iter().map(|q| q.size).sum();
        if !queued.is_empty() && bytes.saturating_add(size) > limit {
            return Ok(Some(Enqueued::Full { files: queued.len(), bytes }));
        }
        let tmp = fsx::temp_name(&dest);
        let linked = (|| {
            let copy = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).at("create", &tmp)?;
            copy_file(source, &copy, CopyMethod::Reflink, &|_| {}).at("copy into the archive queue", &tmp)?;
            copy.sync_all().at("fsync", &tmp)?;
            match fs::hard_link(&tmp, &dest) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(Error::io("link into place", &dest, e)),
            }
        })();
        let _ = fs::remove_file(&tmp);
        if !linked? {
            return self.compare(name, source, src);
        }
        fsx::fsync_dir(&self.dir)?;
        Ok(Some(Enqueued::Queued))
    }

    /// Compares queued `name` with `source`: the same is [`Enqueued::AlreadyQueued`]; `None` when
    /// it left the queue meanwhile (pushed).
    fn compare(&self, name: &str, source: &File, src: &Path) -> Result<Option<Enqueued>> {
        let dest = self.dir.join(name);
        let queued = match File::open(&dest) {
            Ok(queued) => queued,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("open", dest, e)),
        };
        if same_content(source, &queued).at("compare with the queued copy", src)? {
            return Ok(Some(Enqueued::AlreadyQueued));
        }
        Err(Error::refused(
            format!("WAL file {name} is queued for archiving in {} with different content", self.dir.display()),
            Some(
                "another cluster may have archived through this data directory; compare the two, and remove the \
                 queued one only if it is not this cluster's WAL"
                    .into(),
            ),
        ))
    }

    /// Removes queued `name` (it is in every repository).
    pub fn remove(&self, name: &str) -> Result<()> {
        let path = self.dir.join(name);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io("remove", path, e)),
            _ => Ok(()),
        }
    }

    /// Records that `name`, read from the pg_wal file with `identity`, is in every repository.
    /// Not synced: archive-push trusts a record only after every repository had the file durably,
    /// and a record lost in a crash costs a second push of the same content.
    pub fn mark_pushed(&self, name: &str, identity: &FileIdentity) -> Result<()> {
        let path = self.pushed_dir().join(name);
        let tmp = fsx::temp_name(&path);
        fs::write(&tmp, identity.to_line()).at("write", &tmp)?;
        fs::rename(&tmp, &path).at("rename into place", &path)
    }

    /// Whether the pusher pushed `name` from a file with `identity`; the record is consumed.
    pub fn take_pushed(&self, name: &str, identity: &FileIdentity) -> bool {
        let path = self.pushed_dir().join(name);
        let recorded = fs::read_to_string(&path).ok().and_then(|text| FileIdentity::parse(&text));
        let matches = recorded.as_ref() == Some(identity);
        if matches {
            let _ = fs::remove_file(&path);
        }
        matches
    }

    /// Whether a record says `name` was pushed from pg_wal.
    pub fn was_pushed(&self, name: &str) -> bool {
        self.pushed_dir().join(name).exists()
    }

    /// Removes the records of files pg_wal no longer has as they were read (PostgreSQL archived
    /// and recycled them).
    pub fn prune_pushed(&self) {
        let Ok(entries) = fs::read_dir(self.pushed_dir()) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let recorded = fs::read_to_string(entry.path()).ok().and_then(|text| FileIdentity::parse(&text));
            let current = fs::metadata(self.wal_dir.join(&name)).ok().map(|m| FileIdentity::of(&m));
            if recorded.is_none() || recorded != current {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    /// The pusher's latest failure, if it recorded one.
    pub fn error(&self) -> Option<PusherError> {
        let bytes = fs::read(self.dir.join("pusher.error")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Records the pusher's failure.
    pub fn set_error(&self, error: &PusherError) -> Result<()> {
        let json = serde_json::to_vec_pretty(error).map_err(|e| Error::invalid("pusher error", e.to_string()))?;
        fsx::write_atomic(&self.dir.join("pusher.error"), &json, 0o600)
    }

    /// Forgets the pusher's failure.
    pub fn clear_error(&self) {
        let _ = fs::remove_file(self.dir.join("pusher.error"));
    }

    /// Takes the pusher's lock (waiting for it when `wait`), recording this process's pid in it;
    /// `None` when another pusher holds it and `wait` is false.
    pub fn lock_pusher(&self, wait: bool) -> Result<Option<Flock<File>>> {
        let path = self.dir.join("pusher.lock");
        let Some(mut lock) = fsx::lock_exclusive(&path, 0o600, wait)? else { return Ok(None) };
        lock.set_len(0).at("truncate", &path)?;
        lock.write_all(format!("{}\n", std::process::id()).as_bytes()).at("write", &path)?;
        Ok(Some(lock))
    }

    /// Whether a pusher holds the lock now.
    pub fn pusher_running(&self) -> bool {
        fsx::is_locked(&self.dir.join("pusher.lock"))
    }

    /// Removes temporaries whose writer died (or that are older than an hour).
    pub fn remove_dead_temporaries(&self) {
        for dir in [self.dir.clone(), self.pushed_dir()] {
            let Ok(entries) = fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                let Some(pid) = fsx::temp_pid(&entry.file_name().to_string_lossy()) else { continue };
                let old = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| SystemTime::now().duration_since(t).unwrap_or_default() > STALE_AFTER);
                if old || !process_alive(pid) {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
    }
}

fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else { return false };
    !matches!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None), Err(nix::errno::Errno::ESRCH))
}

/// Whether two files hold the same bytes.
fn same_content(a: &File, b: &File) -> std::io::Result<bool> {
    if a.metadata()?.len() != b.metadata()?.len() {
        return Ok(false);
    }
    let (mut left, mut right) = (vec![0u8; COMPARE_CHUNK], vec![0u8; COMPARE_CHUNK]);
    let mut offset = 0;
    loop {
        let n = fsx::read_fully_at(a, &mut left, offset)?;
        let m = fsx::read_fully_at(b, &mut right, offset)?;
        if n != m || left[..n] != right[..m] {
            return Ok(false);
        }
        if n < COMPARE_CHUNK {
            return Ok(true);
        }
        offset += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: &str = "000000010000000000000003";

    fn spool() -> (tempfile::TempDir, Spool) {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("pg_wal")).unwrap();
        let spool = Spool::in_wal_dir(&dir.path().join("pg_wal"), "main");
        spool.create().unwrap();
        (dir, spool)
    }

    fn wal_file(spool: &Spool, name: &str, bytes: &[u8]) -> PathBuf {
        let path = spool.wal_dir().join(name);
        fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn queues_a_copy_once_and_refuses_other_content() {
        let (_dir, spool) = spool();
        let src = wal_file(&spool, SEG, b"segment bytes");
        assert_eq!(spool.enqueue(SEG, &src, 1 << 30).unwrap(), Enqueued::Queued);
        // The queued copy is its own file: rewriting pg_wal's leaves it intact.
        fs::write(&src, b"recycled").unwrap();
        assert_eq!(fs::read(spool.path_of(SEG)).unwrap(), b"segment bytes");
        let err = spool.enqueue(SEG, &src, 1 << 30).unwrap_err();
        assert!(err.to_string().contains("different content"), "{err}");
        fs::write(&src, b"segment bytes").unwrap();
        assert_eq!(spool.enqueue(SEG, &src, 1 << 30).unwrap(), Enqueued::AlreadyQueued);
        assert_eq!(spool.queued().unwrap(), vec![Queued { name: SEG.into(), size: 13 }]);
        let names: Vec<String> =
            fs::read_dir(spool.dir()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        assert!(names.iter().all(|n| !n.contains("pgfork-tmp")), "{names:?}");
    }

    #[test]
    fn the_limit_refuses_growth_but_never_an_empty_queue() {
        let (_dir, spool) = spool();
        let a = wal_file(&spool, "000000010000000000000001", &[1; 100]);
        let b = wal_file(&spool, "000000010000000000000002", &[2; 100]);
        assert_eq!(spool.enqueue("000000010000000000000001", &a, 50).unwrap(), Enqueued::Queued);
        assert_eq!(
            spool.enqueue("000000010000000000000002", &b, 150).unwrap(),
            Enqueued::Full { files: 1, bytes: 100 }
        );
        assert!(!spool.holds("000000010000000000000002"));
        spool.remove("000000010000000000000001").unwrap();
        assert_eq!(spool.enqueue("000000010000000000000002", &b, 50).unwrap(), Enqueued::Queued);
    }

    #[test]
    fn pushed_records_match_only_the_file_they_were_read_from() {
        let (_dir, spool) = spool();
        let src = wal_file(&spool, SEG, b"segment");
        let identity = FileIdentity::of(&fs::metadata(&src).unwrap());
        spool.mark_pushed(SEG, &identity).unwrap();
        // PostgreSQL recycles a segment by renaming it: another file under the name is not it.
        fs::rename(&src, spool.wal_dir().join("000000010000000000000009")).unwrap();
        let other = wal_file(&spool, SEG, b"segment");
        assert!(!spool.take_pushed(SEG, &FileIdentity::of(&fs::metadata(&other).unwrap())));
        spool.prune_pushed();
        assert!(!spool.was_pushed(SEG), "the record of a file pg_wal no longer has is pruned");
        spool.mark_pushed(SEG, &FileIdentity::of(&fs::metadata(&other).unwrap())).unwrap();
        spool.prune_pushed();
        assert!(spool.take_pushed(SEG, &FileIdentity::of(&fs::metadata(&other).unwrap())));
        assert!(!spool.was_pushed(SEG), "a record is used once");
        assert_eq!(FileIdentity::parse("1 2 x"), None);
    }

    #[test]
    fn one_pusher_holds_the_lock_and_errors_round_trip() {
        let (_dir, spool) = spool();
        assert!(!spool.pusher_running());
        let held = spool.lock_pusher(false).unwrap().unwrap();
        assert!(spool.pusher_running());
        assert!(spool.lock_pusher(false).unwrap().is_none());
        drop(held);
        assert!(!spool.pusher_running());
        let error = PusherError::new(SEG, "main", &Error::refused("no", Some("fix".into())), Utc::now());
        assert!(error.permanent);
        spool.set_error(&error).unwrap();
        assert_eq!(spool.error(), Some(error));
        spool.clear_error();
        assert_eq!(spool.error(), None);
        let io = Error::io("write", "/x", std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        assert!(!PusherError::new(SEG, "main", &io, Utc::now()).permanent);
    }

    #[test]
    fn temporaries_of_dead_writers_are_removed() {
        let (_dir, spool) = spool();
        let dead = spool.dir().join(format!(".{SEG}.pgfork-tmp.{}.0", i32::MAX));
        let mine = fsx::temp_name(&spool.path_of(SEG));
        fs::write(&dead, b"x").unwrap();
        fs::write(&mine, b"x").unwrap();
        spool.remove_dead_temporaries();
        assert!(!dead.exists());
        assert!(mine.exists());
    }

    #[test]
    fn odd_stanza_names_get_a_hashed_directory() {
        let spool = Spool::in_wal_dir(Path::new("/d/pg_wal"), "pg/../x");
        let name = spool.dir().file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with(".pgfork-archive-") && !name.contains('/') && !name.contains(".."), "{name}");
        assert_eq!(
            Spool::in_wal_dir(Path::new("/d/pg_wal"), "pg-meta").dir(),
            Path::new("/d/pg_wal/.pgfork-archive-pg-meta")
        );
    }
}
