//! `archive-push` and `archive-get`: PostgreSQL's archive_command and restore_command.
//!
//! archive-push exits 0 only once the file is durable in the repository, accepts a second push of
//! identical content, refuses different content and segments of another cluster. archive-get
//! tells a file that is absent (PostgreSQL asks for files that do not exist) from one it cannot
//! deliver intact, and fetches the next segments in a background process into a spool directory
//! beside pg_wal, so replay does not wait on the repository one file at a time.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Serialize;
use xxhash_rust::xxh3::{xxh3_64, xxh3_128};

use crate::config::Resolved;
use crate::error::{Error, IoContext, Result};
use crate::ops::identity::{become_owner_of, become_repository_user};
use crate::pg::lsn::WalSegment;
use crate::pg::wal_header::SegmentHeader;
use crate::repo::archive::{PushOutcome, WalFileKind, classify};
use crate::repo::keys::Layout;
use crate::repo::stanza::StanzaRecord;
use crate::stanza::{Stanza, storage_of};
use crate::util::fsx;

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

/// Pushes the WAL file at `path` into the archive of the stanza in every repository of
/// `targets` (all of the stanza's, or the one named), in parallel; succeeds only when every one
/// holds it durably.
pub fn archive_push(targets: &[Resolved], path: &Path) -> Result<PushReport> {
    // A pgBackRest repository among the stanza's gets its WAL from pgBackRest's own archive-push;
    // named alone, it is refused.
    if let [only] = targets {
        only.repo.refuse_write(&only.repo_name, "archive-push")?;
    }
    let targets: Vec<Resolved> =
        targets.iter().filter(|t| t.repo.refuse_write(&t.repo_name, "archive-push").is_ok()).cloned().collect();
    let targets = targets.as_slice();
    let Some(first) = targets.first() else { return Err(Error::refused("no repository to push to", None)) };
    act_as_repository_owner(first)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| Error::invalid(path.display().to_string(), "no file name"))?;
    let (kind, _) = classify(&name)
        .ok_or_else(|| Error::refused(format!("{name} is not a WAL segment, history, partial or backup file"), None))?;
    let bytes = std::fs::read(path).at("read", path)?;
    let push = |resolved: &Resolved| -> Result<PushOutcome> {
        let stanza = Stanza::open(resolved)?;
        if matches!(kind, WalFileKind::Segment | WalFileKind::Partial) {
            check_segment_cluster(&name, &bytes, stanza.record())?;
        }
        stanza.archive().push(&name, &bytes)
    };
    let outcomes: Vec<Result<PushOutcome>> = if targets.len() == 1 {
        vec![push(first)]
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = targets.iter().map(|t| scope.spawn(move || push(t))).collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(Error::invalid("archive-push", "a push thread panicked"))))
                .collect()
        })
    };
    let mut already_archived = true;
    for (target, outcome) in targets.iter().zip(outcomes) {
        match outcome {
            Ok(outcome) => already_archived &= outcome == PushOutcome::AlreadyArchived,
            Err(e) if targets.len() == 1 => return Err(e),
            Err(e) => return Err(Error::invalid(format!("repository {}", target.repo_name), e.to_string())),
        }
    }
    Ok(PushReport { name, size: bytes.len() as u64, already_archived })
}

/// Refuses a segment whose long page header names another cluster than the stanza's.
pub(crate) fn check_segment_cluster(name: &str, bytes: &[u8], record: &StanzaRecord) -> Result<()> {
    let header = SegmentHeader::parse(bytes)
        .ok_or_else(|| Error::refused(format!("{name} does not start with a WAL segment header"), None))?;
    if header.system_identifier != record.current.system_identifier {
        return Err(Error::refused(
            format!(
                "WAL segment {name} was written by system identifier {}, but stanza {} belongs to {}: is this the correct stanza?",
                header.system_identifier, record.name, record.current.system_identifier
            ),
            Some("point this server's archive_command at its own stanza".into()),
        ));
    }
    Ok(())
}

/// What archive-get found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetched {
    /// The file is in place.
    Found,
    /// The archive does not have it (PostgreSQL asks for files that do not exist).
    Absent,
}

/// Fetches `name` into `dest` from the first repository of `targets` that has it — from the
/// prefetch spool when a checked copy waits there, else from the repository — and starts a
/// prefetcher for the segments after it. Absent everywhere is [`Fetched::Absent`]; any other
/// failure (a damaged object, a wrong passphrase, an unreachable repository) in a repository that
/// is not followed by a find in the next is an `Err`, which the command line turns into an exit
/// status that makes PostgreSQL abort recovery instead of ending it early.
pub fn archive_get(targets: &[Resolved], name: &str, dest: &Path, prefetch: bool) -> Result<Fetched> {
    if nix::unistd::Uid::effective().is_root() {
        // The fetched file belongs to whoever owns the directory it goes to (PostgreSQL's pg_wal).
        become_owner_of(dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")))?;
    }
    let mut failure = None;
    for resolved in targets {
        match fetch_from(resolved, name, dest) {
            Ok(Some(spool)) => {
                if prefetch {
                    start_prefetcher(resolved, name, &spool);
                }
                return Ok(Fetched::Found);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!("archive-get {name} from repository {}: {e}", resolved.repo_name);
                failure.get_or_insert(e);
            }
        }
    }
    match failure {
        None => Ok(Fetched::Absent),
        Some(e) => Err(e),
    }
}

/// Fetches `name` from one repository into `dest`; returns its spool directory when found.
fn fetch_from(resolved: &Resolved, name: &str, dest: &Path) -> Result<Option<PathBuf>> {
    let storage = storage_of(resolved)?;
    let record = StanzaRecord::require(storage.as_ref(), &Layout::new(&resolved.name))?;
    let spool = Spool::of(dest, resolved, storage.location(), &record);
    if spool.take(name, dest, &record)? {
        return Ok(Some(spool.dir));
    }
    let stanza = Stanza::open(resolved)?;
    let Some(bytes) = stanza.archive().get(name)? else { return Ok(None) };
    write_replace(dest, &bytes)?;
    Ok(Some(spool.dir))
}

/// The prefetcher's work: fetch up to [`PREFETCH`] segments after `after` into `spool`, skipping
/// those already there; stop at the first one the archive lacks. One prefetcher runs per spool.
pub fn prefetch(resolved: &Resolved, after: &str, spool_dir: &Path) -> Result<()> {
    std::fs::create_dir_all(spool_dir).at("create directory", spool_dir)?;
    let Some(_lock) = fsx::lock_exclusive(&spool_dir.join(".lock"), 0o600, false)? else { return Ok(()) };
    // Segment numbering does not depend on the size for the names that follow `after`.
    let size = spool_dir.parent().and_then(crate::pg::wal::segment_size_in).unwrap_or(16 * 1024 * 1024);
    let Some(first) = WalSegment::parse(after, size) else { return Ok(()) };
    let spool = Spool { dir: spool_dir.to_path_buf() };
    spool.remove_passed(&first, size);
    let stanza = Stanza::open(resolved)?;
    let archive = stanza.archive();
    for number in first.number + 1..=first.number + PREFETCH {
        let name = WalSegment { timeline: first.timeline, number }.file_name(size);
        if spool.dir.join(&name).exists() {
            continue;
        }
        match archive.get(&name)? {
            Some(bytes) => spool.put(&name, &bytes)?,
            None => break,
        }
    }
    Ok(())
}

/// Where prefetched segments wait, beside the file PostgreSQL asked for: one directory per stanza,
/// repository and cluster, so a file fetched for one is never served to another. Each file has a
/// `.sum` beside it (size and xxh3-128), checked before it is served.
struct Spool {
    dir: PathBuf,
}

impl Spool {
    fn of(dest: &Path, resolved: &Resolved, location: String, record: &StanzaRecord) -> Spool {
        let tag = format!("{}\0{location}\0{}", resolved.name, record.current.system_identifier);
        let parent = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        Spool { dir: parent.join(format!("{SPOOL}-{:016x}", xxh3_64(tag.as_bytes()))) }
    }

    /// Moves a checked spooled copy of `name` to `dest`; `Ok(false)` when none is there. A copy
    /// that fails its check is removed and not served.
    fn take(&self, name: &str, dest: &Path, record: &StanzaRecord) -> Result<bool> {
        let path = self.dir.join(name);
        let Ok(bytes) = std::fs::read(&path) else { return Ok(false) };
        let sum_path = self.dir.join(format!("{name}.sum"));
        let expected = std::fs::read_to_string(&sum_path).unwrap_or_default();
        let kind = classify(name).map(|(kind, _)| kind);
        let valid = expected.trim() == sum_line(&bytes)
            && (kind != Some(WalFileKind::Segment) || check_segment_cluster(name, &bytes, record).is_ok());
        if !valid {
            tracing::warn!("discarding prefetched {} (it does not match its checksum or cluster)", path.display());
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_file(&sum_path);
            return Ok(false);
        }
        std::fs::rename(&path, dest).at("move into place", dest)?;
        let _ = std::fs::remove_file(&sum_path);
        Ok(true)
    }

    /// Spools `bytes` as `name`: its checksum first, then the file under its name.
    fn put(&self, name: &str, bytes: &[u8]) -> Result<()> {
        write_replace(&self.dir.join(format!("{name}.sum")), sum_line(bytes).as_bytes())?;
        write_replace(&self.dir.join(name), bytes)
    }

    /// Removes spooled segments at or before `current`, or of another timeline.
    fn remove_passed(&self, current: &WalSegment, size: u64) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let segment = name.strip_suffix(".sum").unwrap_or(&name);
            if let Some(seg) = WalSegment::parse(segment, size)
                && (seg.timeline != current.timeline || seg.number <= current.number)
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// The check line of a spooled file: its size and xxh3-128.
fn sum_line(bytes: &[u8]) -> String {
    format!("{} {:032x}", bytes.len(), xxh3_128(bytes))
}

/// Starts a prefetcher for the segments after `name`, unless one is still at work on `spool`
/// (recovery asks for a segment every few milliseconds: no process started to find it busy).
fn start_prefetcher(resolved: &Resolved, name: &str, spool: &Path) {
    if classify(name).map(|(k, _)| k) != Some(WalFileKind::Segment) || fsx::is_locked(&spool.join(".lock")) {
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
        .arg(&resolved.name)
        .arg("--repo")
        .arg(&resolved.repo_name);
    if let Some(config) = &resolved.config_path {
        cmd.arg("--config").arg(config);
    }
    if let Some(secrets) = crate::config::secrets::handed_file() {
        cmd.arg("--secrets").arg(secrets);
    }
    // Detached: PostgreSQL waits for this process only, not for the prefetcher.
    let _ = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn();
}

/// Writes `bytes` to a temporary name beside `dest` and renames it over `dest`.
fn write_replace(dest: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = fsx::temp_name(dest);
    let mut file =
        OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).at("create", &tmp)?;
    file.write_all(bytes).at("write", &tmp)?;
    drop(file);
    std::fs::rename(&tmp, dest).at("move into place", dest)
}

fn act_as_repository_owner(resolved: &Resolved) -> Result<()> {
    become_repository_user(resolved).map(drop)
}
