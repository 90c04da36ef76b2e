//! `restore`: rebuild a backup set's data directory — every file from the extents of its chain,
//! its tablespaces at their recorded locations, the set's own WAL, its backup_label — so the
//! cluster starts and recovers to the set's consistent point. `--delta` rewrites only what differs.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::config::Resolved;
use crate::cow::fs_kind::is_clone_unsupported;
use crate::error::{Error, IoContext, Result};
use crate::ops::identity::become_owner_of;
use crate::ops::recovery::{RecoveryPlan, RecoveryRequest, set_and_plan};
use crate::ops::stanza_repo::StanzaRepo;
use crate::pg::backup_label::tablespace_map;
use crate::pg::conf::set_auto_conf;
use crate::pg::datadir::PostmasterPid;
use crate::pg::lsn::Lsn;
use crate::pg::page::{BLCKSZ, PageHeader, is_all_zero};
use crate::progress::Progress;
use crate::repo::label::SetLabel;
use crate::repo::manifest::{Extent, FileEntry, Manifest, RunRef};
use crate::repo::read::RunReader;
use crate::scan::selects_by_lsn;
use crate::util::fsx;
use crate::util::{Laps, ms_since};

/// A restore request.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The set; the newest when `None`.
    pub set: Option<SetLabel>,
    /// The data directory to restore into.
    pub data: PathBuf,
    /// Rewrite only what differs in an existing directory.
    pub delta: bool,
    /// Recover to a target through the WAL archive; `None` stops at the set's consistent point.
    pub recovery: Option<RecoveryRequest>,
    /// Check and print the plan; write nothing.
    pub dry_run: bool,
    /// Tablespace locations to use instead of the recorded ones, by OID.
    pub tablespace_locations: std::collections::BTreeMap<u32, PathBuf>,
    /// With `delta` onto a fork of a running cluster: that cluster's data directory. Pages whose
    /// LSN there is older than the set's start are unchanged since the set, so the fork already
    /// holds them: they are neither read from the repository nor compared.
    pub live_source: Option<PathBuf>,
}

/// What a restore did.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    /// Stanza.
    pub stanza: String,
    /// The set restored.
    pub label: SetLabel,
    /// The data directory.
    pub data: PathBuf,
    /// Files in the set.
    pub files: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Bytes found already right (delta).
    pub bytes_unchanged: u64,
    /// Bytes cloned from an unencoded repository on the same file system (FICLONERANGE): no data
    /// was copied for them.
    pub bytes_cloned: u64,
    /// Files removed because the set does not have them (delta).
    pub files_removed: u64,
    /// WAL segments written to pg_wal.
    pub wal_segments: u64,
    /// Wall time, milliseconds.
    pub duration_ms: f64,
    /// Milliseconds per step: files, wal, sync.
    pub timings: Vec<(&'static str, f64)>,
    /// The recovery plan, when recovering to a target.
    pub plan: Option<RecoveryPlan>,
    /// Whether nothing was written.
    pub dry_run: bool,
    /// Remarks.
    pub notes: Vec<String>,
}

/// Restores a set into `opts.data`.
pub fn restore(resolved: &Resolved, opts: &RestoreOptions, progress: &dyn Progress) -> Result<RestoreReport> {
    let started = Instant::now();
    become_owner_of(&resolved.repo.path)?;
    let repo = StanzaRepo::open(resolved)?;
    let (manifest, plan) =
        set_and_plan(&repo, resolved.config_path.as_deref(), opts.set.as_ref(), opts.recovery.as_ref())?;
    let label = manifest.label.clone();
    let target = &opts.data;
    // Refusals come before the dry run returns: a plan for a directory that cannot take it is no plan.
    check_target(target, opts.delta)?;
    let locations: Vec<(u32, PathBuf)> = manifest
        .tablespaces
        .iter()
        .map(|t| (t.oid, opts.tablespace_locations.get(&t.oid).cloned().unwrap_or_else(|| PathBuf::from(&t.location))))
        .collect();
    for (_, location) in &locations {
        check_target(location, opts.delta)?;
    }
    if opts.dry_run {
        return Ok(RestoreReport {
            stanza: repo.name.clone(),
            label,
            data: target.clone(),
            files: manifest.files.len() as u64,
            bytes_written: 0,
            bytes_unchanged: 0,
            bytes_cloned: 0,
            files_removed: 0,
            wal_segments: manifest.wal.len() as u64,
            duration_ms: ms_since(started),
            timings: Vec::new(),
            plan,
            dry_run: true,
            notes: Vec::new(),
        });
    }

    let mut files_removed = 0;
    if !target.exists() {
        fsx::create_dir_mode(target, 0o700)?;
    } else if opts.delta {
        files_removed = remove_extra_files(target, &manifest, &locations)?;
    }
    create_dirs(target, &manifest, &locations)?;

    let mut laps = Laps::start();
    let reader = RunReader::new(&repo.storage, &repo.codec, &repo.name);
    let written = AtomicU64::new(0);
    let unchanged = AtomicU64::new(0);
    let cloned = AtomicU64::new(0);
    let clone_works = std::sync::atomic::AtomicBool::new(true);
    progress.begin("restore", manifest.stats.database_size);
    // Create every file first, then fill slices of them in parallel: one large relation must not
    // keep a single core busy. A file is flushed as soon as its last slice is written, so the disk
    // works while the other threads decompress; twice as many threads as cores keep both busy.
    let slices: Vec<(usize, &[Extent])> = manifest
        .files
        .iter()
        .map(|entry| prepare_file(target, entry, opts.delta))
        .collect::<Result<Vec<()>>>()?
        .into_iter()
        .enumerate()
        .flat_map(|(i, ())| slices_of(&manifest.files[i]).into_iter().map(move |slice| (i, slice)))
        .collect();
    let remaining: Vec<AtomicU64> = manifest.files.iter().map(|_| AtomicU64::new(0)).collect();
    for (i, _) in &slices {
        remaining[*i].fetch_add(1, Ordering::Relaxed);
    }
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get() * 2);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| Error::invalid("restore threads", e.to_string()))?;
    pool.install(|| {
        slices.par_iter().try_for_each(|(i, extents)| {
            let entry = &manifest.files[*i];
            let live = opts.live_source.as_deref().map(|dir| LiveHint { dir, since: manifest.start_lsn });
            let clone = (!opts.delta).then_some(&clone_works);
            let (w, u, c) = restore_extents(target, entry, extents, &reader, opts.delta, live, clone)?;
            cloned.fetch_add(c, Ordering::Relaxed);
            written.fetch_add(w, Ordering::Relaxed);
            unchanged.fetch_add(u, Ordering::Relaxed);
            progress.advance(extents.iter().map(|e| e.len).sum());
            if remaining[*i].fetch_sub(1, Ordering::AcqRel) == 1 {
                let path = target.join(&entry.path);
                File::open(&path).and_then(|f| f.sync_data()).at("fsync", &path)?;
            }
            Ok::<(), Error>(())
        })
    })?;
    progress.end();
    laps.lap("files");

    let wal_dir = target.join("pg_wal");
    for entry in &manifest.wal {
        let bytes = reader.read_wal(&label, entry)?;
        fsx::write_atomic(&wal_dir.join(&entry.name), &bytes, 0o600)?;
    }
    fsx::write_atomic(&target.join("backup_label"), manifest.backup_label.as_bytes(), 0o600)?;
    if manifest.tablespace_map.is_some() && !locations.is_empty() {
        let entries: Vec<(u32, &Path)> = locations.iter().map(|(oid, p)| (*oid, p.as_path())).collect();
        fsx::write_atomic(&target.join("tablespace_map"), tablespace_map(&entries)?.as_bytes(), 0o600)?;
    }
    let (reason, settings) = restored_settings(&label, plan.as_ref());
    let settings: Vec<(&str, String)> = settings.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    set_auto_conf(target, &reason, &settings)?;
    let notes = match &plan {
        Some(_) => {
            fsx::write_atomic(&target.join("recovery.signal"), b"", 0o600)?;
            vec![
                "after checking the recovered cluster: promote it (pg_ctl promote, unless it promoted itself), \
                 turn archiving on (ALTER SYSTEM SET archive_mode = on; restart) and take a full backup"
                    .to_string(),
            ]
        }
        None => vec![
            "archive_mode is off in the restored cluster so it cannot write into the repository: once it is \
             checked, turn archiving on (ALTER SYSTEM SET archive_mode = on) and take a full backup"
                .to_string(),
        ],
    };
    laps.lap("wal");
    // Files were flushed as they completed (a syncfs would also wait for every other writer of
    // the file system, such as a running server's checkpoint); now the directories.
    for dir in manifest.dirs.iter().map(|d| target.join(&d.path)).chain([target.to_path_buf()]) {
        fsx::fsync_dir(&dir)?;
    }
    laps.lap("sync");
    Ok(RestoreReport {
        stanza: repo.name.clone(),
        label,
        data: target.clone(),
        files: manifest.files.len() as u64,
        bytes_written: written.into_inner(),
        bytes_unchanged: unchanged.into_inner(),
        bytes_cloned: cloned.into_inner(),
        files_removed,
        wal_segments: manifest.wal.len() as u64,
        duration_ms: ms_since(started),
        timings: laps.timings,
        plan,
        dry_run: false,
        notes,
    })
}

/// The postgresql.auto.conf changes of a restored set: the comment above them and the settings.
/// Without a plan the set stops at its consistent point with archiving off, so the copy cannot
/// write into the repository.
pub fn restored_settings(label: &SetLabel, plan: Option<&RecoveryPlan>) -> (String, Vec<(String, String)>) {
    match plan {
        Some(plan) => (format!("pgfork: recovery from backup {label}"), plan.settings.clone()),
        None => (
            format!("pgfork: restored from backup {label}; archiving off until checked"),
            vec![("archive_mode".to_string(), "off".to_string())],
        ),
    }
}

/// Refuses a directory a running server owns, and a non-empty one without delta.
fn check_target(dir: &Path, delta: bool) -> Result<()> {
    if let Some(pid) = PostmasterPid::running(dir) {
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
        let rel = entry.path().strip_prefix(target).expect("under target").to_string_lossy().into_owned();
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
                let rel =
                    format!("{prefix}/{}", entry.path().strip_prefix(root).expect("under root").to_string_lossy());
                if !wanted.contains(rel.as_str()) {
                    std::fs::remove_file(entry.path()).at("remove", entry.path())?;
                    removed += 1;
                }
            }
        }
    }
    Ok(removed)
}

/// Bytes of extents restored as one unit of parallel work.
const SLICE: u64 = 32 * 1024 * 1024;

/// Splits a file's extents into runs of about [`SLICE`] bytes.
fn slices_of(entry: &FileEntry) -> Vec<&[Extent]> {
    let mut slices = Vec::new();
    let (mut begin, mut bytes) = (0, 0);
    for (i, extent) in entry.extents.iter().enumerate() {
        bytes += extent.len;
        if bytes >= SLICE {
            slices.push(&entry.extents[begin..=i]);
            (begin, bytes) = (i + 1, 0);
        }
    }
    if begin < entry.extents.len() || slices.is_empty() {
        slices.push(&entry.extents[begin..]);
    }
    slices
}

/// Creates (or, with delta, keeps) the file, and gives it its final size and mode.
fn prepare_file(target: &Path, entry: &FileEntry, delta: bool) -> Result<()> {
    let path = target.join(&entry.path);
    let keep = delta && path.is_file();
    let file =
        OpenOptions::new().write(true).create(true).truncate(!keep).mode(entry.mode).open(&path).at("create", &path)?;
    file.set_len(entry.size).at("size", &path)?;
    file.set_permissions(std::fs::Permissions::from_mode(entry.mode)).at("chmod", &path)
}

/// Writes `extents` of one file (already at its final size); returns (bytes written, bytes already
/// right).
/// With a delta restore onto a fork of a live cluster: the live data directory, whose pages with an
/// LSN older than the set's start are unchanged since the set and so already right in the fork.
#[derive(Clone, Copy)]
struct LiveHint<'a> {
    dir: &'a Path,
    since: Lsn,
}

/// Writes `extents` of one file (already at its final size); returns (bytes written, bytes already
/// right, bytes cloned). With `clone`, aligned extents of an unencoded local repository are cloned
/// while `clone` stays true (the first refusal of the file system turns it off).
fn restore_extents(
    target: &Path,
    entry: &FileEntry,
    extents: &[Extent],
    reader: &RunReader<'_>,
    delta: bool,
    live: Option<LiveHint<'_>>,
    clone: Option<&std::sync::atomic::AtomicBool>,
) -> Result<(u64, u64, u64)> {
    let path = target.join(&entry.path);
    let file = OpenOptions::new().read(true).write(true).open(&path).at("open", &path)?;
    // Only main forks carry LSNs that tell a page is unchanged.
    let live = live.filter(|_| delta && selects_by_lsn(&entry.path));
    let live_file = live.and_then(|l| File::open(l.dir.join(&entry.path)).ok());
    let mut cache: Option<(RunRef, Vec<u8>)> = None;
    let (mut written, mut unchanged, mut cloned) = (0u64, 0u64, 0u64);
    let mut local = Vec::new();
    let mut pack: Option<(PathBuf, File)> = None;
    for extent in extents {
        let len = usize::try_from(extent.len).map_err(|_| Error::invalid(&entry.path, "extent too large"))?;
        if let (Some(flag), Some(run)) = (clone, &extent.run)
            && flag.load(Ordering::Relaxed)
            && let Some(pack_path) = reader.plain_pack_path(run)
        {
            let from = run.at + u64::from(run.skip);
            if extent.offset % 4096 == 0 && extent.len % 4096 == 0 && from % 4096 == 0 && extent.len > 0 {
                if pack.as_ref().is_none_or(|(p, _)| *p != pack_path) {
                    let opened = File::open(&pack_path).at("open", &pack_path)?;
                    pack = Some((pack_path, opened));
                }
                let (_, pack_file) = pack.as_ref().expect("opened");
                let length = std::num::NonZeroU64::new(extent.len).expect("non-empty");
                match reflink_copy::ReflinkBlockBuilder::new(pack_file, &file, length)
                    .from_offset(from)
                    .to_offset(extent.offset)
                    .reflink_block()
                {
                    Ok(()) => {
                        cloned += extent.len;
                        continue;
                    }
                    Err(e) if is_clone_unsupported(&e) => flag.store(false, Ordering::Relaxed),
                    Err(e) => return Err(Error::io("clone into", &path, e)),
                }
            }
        }
        // Pages the live cluster has not changed since the set began need no work at all.
        let mut stale: Option<Vec<bool>> = None;
        if let (Some(hint), Some(live_file)) = (live, &live_file) {
            local.resize(len, 0);
            let got =
                fsx::read_fully_at(live_file, &mut local, extent.offset).at("read", hint.dir.join(&entry.path))?;
            let flags: Vec<bool> = local
                .chunks(BLCKSZ)
                .enumerate()
                .map(|(i, page)| {
                    let whole = (i + 1) * BLCKSZ <= got;
                    let header = PageHeader::parse(page);
                    !(whole && !is_all_zero(page) && header.is_some_and(|h| !h.is_new() && h.lsn < hint.since))
                })
                .collect();
            if !flags.contains(&true) {
                unchanged += extent.len;
                continue;
            }
            stale = Some(flags);
        }
        let wanted: Vec<u8> = match &extent.run {
            None if !delta => continue, // a hole in a new file reads as zeros
            None => vec![0u8; len],
            Some(run) => {
                let same =
                    cache.as_ref().is_some_and(|(r, _)| r.set == run.set && r.pack == run.pack && r.at == run.at);
                if !same {
                    cache = Some((run.clone(), reader.read(run, &entry.path)?));
                }
                let plain = &cache.as_ref().expect("cached").1;
                let skip = run.skip as usize;
                plain
                    .get(skip..skip + len)
                    .ok_or_else(|| {
                        Error::invalid(format!("backup {}, file {}", run.set, entry.path), "extent outside its run")
                    })?
                    .to_vec()
            }
        };
        if let Some(flags) = stale {
            for (i, page) in wanted.chunks(BLCKSZ).enumerate() {
                let at = extent.offset + (i * BLCKSZ) as u64;
                if flags[i] {
                    file.write_all_at(page, at).at("write", &path)?;
                    written += page.len() as u64;
                } else {
                    unchanged += page.len() as u64;
                }
            }
            continue;
        }
        if delta {
            local.resize(len, 0);
            let got = fsx::read_fully_at(&file, &mut local, extent.offset).at("read", &path)?;
            if got == len && local == wanted {
                unchanged += extent.len;
                continue;
            }
        }
        file.write_all_at(&wanted, extent.offset).at("write", &path)?;
        written += extent.len;
    }
    Ok((written, unchanged, cloned))
}
