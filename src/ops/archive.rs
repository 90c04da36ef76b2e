//! `archive-push` and `archive-get`: PostgreSQL's archive_command and restore_command.
//!
//! archive-push exits 0 only once the file is durable in the repository, accepts a second push of
//! identical content, refuses different content and segments of another cluster. archive-get
//! exits non-zero when a file is absent (PostgreSQL asks for files that do not exist) and fetches
//! the next segments in a background process into a spool directory beside pg_wal, so replay does
//! not wait on the repository one file at a time.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::fcntl::{Flock, FlockArg};
use serde::Serialize;

use crate::config::Resolved;
use crate::error::{Error, IoContext, Result};
use crate::ops::identity::become_owner_of;
use crate::ops::stanza_repo::StanzaRepo;
use crate::pg::lsn::WalSegment;
use crate::pg::wal_header::SegmentHeader;
use crate::repo::archive::{Archive, PushOutcome, WalFileKind, classify};

/// Segments fetched ahead of the one PostgreSQL asked for.
pub const PREFETCH: u64 = 8;
/// The spool directory, inside the directory PostgreSQL restores into (pg_wal).
const SPOOL: &str = ".pgfork-prefetch";

/// What archive-push did.
#[derive(Debug, Clone, Serialize)]
pub struct PushReport {
    /// The file name.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// Whether it was already archived with the same content.
    pub already_archived: bool,
}

/// Pushes the WAL file at `path` into the stanza's archive.
pub fn archive_push(resolved: &Resolved, path: &Path) -> Result<PushReport> {
    act_as_repository_owner(resolved)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| Error::invalid(path.display().to_string(), "no file name"))?;
    let (kind, _) = classify(&name)
        .ok_or_else(|| Error::refused(format!("{name} is not a WAL segment, history, partial or backup file"), None))?;
    let repo = StanzaRepo::open(resolved)?;
    let bytes = std::fs::read(path).at("read", path)?;
    if matches!(kind, WalFileKind::Segment | WalFileKind::Partial) {
        let header = SegmentHeader::parse(&bytes)
            .ok_or_else(|| Error::refused(format!("{name} does not start with a WAL segment header"), None))?;
        if header.system_identifier != repo.record.current.system_identifier {
            return Err(Error::refused(
                format!(
                    "WAL segment {name} was written by system identifier {}, but stanza {} belongs to {}: is this the correct stanza?",
                    header.system_identifier, repo.name, repo.record.current.system_identifier
                ),
                Some("point this server's archive_command at its own stanza".into()),
            ));
        }
    }
    let outcome = Archive::new(&repo.storage, &repo.codec, &repo.name).push(&name, &bytes)?;
    Ok(PushReport { name, size: bytes.len() as u64, already_archived: outcome == PushOutcome::AlreadyArchived })
}

/// Fetches `name` into `dest`; `Ok(false)` when it is not archived. Starts a prefetcher for the
/// segments after it.
pub fn archive_get(resolved: &Resolved, name: &str, dest: &Path, prefetch: bool) -> Result<bool> {
    let spool = spool_dir(dest);
    let spooled = spool.join(name);
    if spooled.is_file() {
        std::fs::rename(&spooled, dest).at("move into place", dest)?;
        if prefetch {
            start_prefetcher(resolved, name, &spool);
        }
        return Ok(true);
    }
    if nix::unistd::Uid::effective().is_root() {
        // The fetched file belongs to whoever owns the directory it goes to (PostgreSQL's pg_wal).
        become_owner_of(dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")))?;
    }
    let repo = StanzaRepo::open(resolved)?;
    let archive = Archive::new(&repo.storage, &repo.codec, &repo.name);
    let Some(bytes) = archive.get(name)? else { return Ok(false) };
    write_replace(dest, &bytes)?;
    if prefetch {
        start_prefetcher(resolved, name, &spool);
    }
    Ok(true)
}

/// The prefetcher's work: fetch up to [`PREFETCH`] segments after `after` into `spool`, skipping
/// those already there; stop at the first one the archive lacks. One prefetcher runs per spool.
pub fn prefetch(resolved: &Resolved, after: &str, spool: &Path) -> Result<()> {
    std::fs::create_dir_all(spool).at("create directory", spool)?;
    let lock_path = spool.join(".lock");
    let lock_file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .at("open", &lock_path)?;
    let Ok(_lock) = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock) else { return Ok(()) };
    // Segment numbering does not depend on the size for the names that follow `after`.
    let size = segment_size_of(spool).unwrap_or(16 * 1024 * 1024);
    let Some(first) = WalSegment::parse(after, size) else { return Ok(()) };
    remove_stale(spool, &first, size);
    let repo = StanzaRepo::open(resolved)?;
    let archive = Archive::new(&repo.storage, &repo.codec, &repo.name);
    for number in first.number + 1..=first.number + PREFETCH {
        let name = WalSegment { timeline: first.timeline, number }.file_name(size);
        let target = spool.join(&name);
        if target.exists() {
            continue;
        }
        match archive.get(&name)? {
            Some(bytes) => write_replace(&target, &bytes)?,
            None => break,
        }
    }
    Ok(())
}

/// Where prefetched segments wait: beside the file PostgreSQL asked for.
pub fn spool_dir(dest: &Path) -> PathBuf {
    dest.parent().unwrap_or(Path::new(".")).join(SPOOL)
}

fn start_prefetcher(resolved: &Resolved, name: &str, spool: &Path) {
    if classify(name).map(|(k, _)| k) != Some(WalFileKind::Segment) {
        return;
    }
    let Ok(exe) = std::env::current_exe() else { return };
    let mut cmd = Command::new(exe);
    cmd.arg("archive-get")
        .arg("--prefetch-after")
        .arg(name)
        .arg("--spool")
        .arg(spool)
        .arg("--stanza")
        .arg(&resolved.name);
    if let Some(config) = &resolved.config_path {
        cmd.arg("--config").arg(config);
    }
    // Detached: PostgreSQL waits for this process only, not for the prefetcher.
    let _ = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn();
}

fn remove_stale(spool: &Path, current: &WalSegment, size: u64) {
    let Ok(entries) = std::fs::read_dir(spool) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(seg) = WalSegment::parse(&name, size)
            && (seg.timeline != current.timeline || seg.number <= current.number)
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn segment_size_of(spool: &Path) -> Option<u64> {
    crate::pg::wal::segment_size_in(spool.parent()?)
}

/// Writes `bytes` to a temporary name beside `dest` and renames it over `dest`.
fn write_replace(dest: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = dest.with_file_name(format!(
        ".{}.pgfork-tmp.{}",
        dest.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
        std::process::id()
    ));
    let mut file =
        OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).at("create", &tmp)?;
    file.write_all(bytes).at("write", &tmp)?;
    drop(file);
    std::fs::rename(&tmp, dest).at("move into place", dest)
}

fn act_as_repository_owner(resolved: &Resolved) -> Result<()> {
    if nix::unistd::Uid::effective().is_root() {
        let anchor =
            if resolved.repo.path.exists() { resolved.repo.path.clone() } else { resolved.stanza.data.clone() };
        become_owner_of(&anchor)?;
    }
    Ok(())
}
