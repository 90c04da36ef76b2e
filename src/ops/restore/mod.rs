//! `restore`: rebuild a backup set's data directory — every file from the extents of its chain,
//! its tablespaces at their recorded locations, the set's own WAL, its backup_label — so the
//! cluster starts and recovers to the set's consistent point. `--delta` rewrites only what differs.

pub mod config;
pub mod target;
pub mod write;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::config::Resolved;
use crate::error::{Error, Result};
use crate::ops::identity::become_repository_user;
use crate::ops::restore::target::Destination;
use crate::ops::restore::write::{Counts, FileWriter, LiveHint, SLICE, prepare_file, slices_of};
use crate::pg::backup_label::tablespace_map;
use crate::pg::conf::set_auto_conf;
use crate::progress::Progress;
use crate::repo::label::SetLabel;
use crate::repo::manifest::{Extent, Manifest};
use crate::stanza::Stanza;
use crate::stanza::recovery::{RecoveryPlan, RecoveryRequest, restored_settings, set_and_plan};
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
    /// The caller is `pitr --in-place`: it restores into the stanza's own data directory although
    /// Patroni manages it (having paused Patroni), and stops the server itself, so its dry run (a
    /// pre-flight made while the server still runs) does not refuse a running server.
    pub in_place: bool,
    /// Where the configuration a set kept outside its data directory goes (`--config-dir`);
    /// `None`: with the data, unless the data directory's own configuration lives outside it.
    pub config_dir: Option<PathBuf>,
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

/// Restores a set into `opts.data`, acting as the repository's user.
pub fn restore(resolved: &Resolved, opts: &RestoreOptions, progress: &dyn Progress) -> Result<RestoreReport> {
    become_repository_user(resolved)?;
    restore_as_caller(resolved, opts, progress)
}

/// [`restore`] as whoever runs it: for a caller that has settled who it acts as (a dry run by a
/// root that still has to stop Patroni, or a process that already switched).
pub fn restore_as_caller(resolved: &Resolved, opts: &RestoreOptions, progress: &dyn Progress) -> Result<RestoreReport> {
    let started = Instant::now();
    let stanza = Stanza::open(resolved)?;
    let (mut manifest, plan) = set_and_plan(&stanza, opts.set.as_ref(), opts.recovery.as_ref())?;
    let config = config::Placement::decide(&manifest, &opts.data, opts.config_dir.as_deref())?;
    config.exclude_from(&mut manifest);
    // Refusals come before the dry run returns: a plan for a directory that cannot take it is no
    // plan. Patroni's first: stopping its PostgreSQL by hand, as the others advise, would only make
    // Patroni start it again or fail over.
    if !opts.in_place
        && opts.data == resolved.stanza.data
        && let Some(member) = crate::patroni::Member::detect(resolved)?
    {
        return Err(crate::patroni::refuse_managed(&member, &format!("restore into {}", opts.data.display())));
    }
    let server_stops_first = opts.in_place && opts.dry_run;
    let destination =
        Destination::check(&opts.data, &manifest, &opts.tablespace_locations, opts.delta, server_stops_first)?;
    let mut report = RestoreReport {
        stanza: stanza.name().to_string(),
        label: manifest.label.clone(),
        data: opts.data.clone(),
        files: manifest.files.len() as u64,
        bytes_written: 0,
        bytes_unchanged: 0,
        bytes_cloned: 0,
        files_removed: 0,
        wal_segments: manifest.wal.len() as u64,
        duration_ms: 0.0,
        timings: Vec::new(),
        plan,
        dry_run: opts.dry_run,
        notes: Vec::new(),
    };
    if opts.dry_run {
        report.duration_ms = ms_since(started);
        return Ok(report);
    }
    report.files_removed = destination.prepare(&manifest)?;
    let mut laps = Laps::start();
    let counts = write_files(&stanza, &manifest, &destination, opts.live_source.as_deref(), progress)?;
    report.bytes_written = counts.written.into_inner();
    report.bytes_unchanged = counts.unchanged.into_inner();
    report.bytes_cloned = counts.cloned.into_inner();
    laps.lap("files");
    report.notes = write_recovery_files(&stanza, &manifest, &destination, report.plan.as_ref(), opts.in_place)?;
    laps.lap("wal");
    make_durable(&manifest, &opts.data)?;
    // Last, once the data directory is complete: its configuration may move out of it.
    report.notes.extend(config.finish(&manifest, &opts.data)?);
    laps.lap("sync");
    report.timings = laps.timings;
    report.duration_ms = ms_since(started);
    Ok(report)
}

/// Makes the restored files durable, once, after the last write ([`fsx::sync_tree`]). Flushing
/// each file as it completed, between the writes, made every flush wait for the dirty pages of the
/// whole file system (on a loop device, of the whole image), so the restore's time depended on
/// unrelated writers. Nothing is reported restored before this returns.
fn make_durable(manifest: &Manifest, data: &Path) -> Result<()> {
    let files: Vec<PathBuf> = manifest.files.iter().map(|entry| data.join(&entry.path)).collect();
    let dirs: Vec<PathBuf> = manifest.dirs.iter().map(|d| data.join(&d.path)).chain([data.to_path_buf()]).collect();
    fsx::sync_tree(&files, &dirs)
}

/// Writes every file of the set. Every file is created first, then slices of them are filled in
/// parallel: one large relation must not keep a single core busy. As soon as a file's last slice
/// is written its writeback starts, without waiting, so the disk works while the other threads
/// decompress; twice as many threads as cores keep both busy. Durability comes after the last
/// write ([`make_durable`]).
fn write_files(
    stanza: &Stanza,
    manifest: &Manifest,
    destination: &Destination,
    live_source: Option<&Path>,
    progress: &dyn Progress,
) -> Result<Counts> {
    let target = destination.data.as_path();
    for entry in &manifest.files {
        prepare_file(target, entry, destination.delta)?;
    }
    // From an object store the work waits on round trips, not on cores: more threads, each holding
    // a smaller slice's fetched bytes (the memory stays about the same).
    let remote = stanza.storage().local_path(&stanza.layout().record()).is_none();
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let (threads, slice) = if remote { (cores * 8, SLICE / 4) } else { (cores * 2, SLICE) };
    let slices: Vec<(usize, &[Extent])> = manifest
        .files
        .iter()
        .enumerate()
        .flat_map(|(i, entry)| slices_of(entry, slice).into_iter().map(move |part| (i, part)))
        .collect();
    let remaining: Vec<AtomicU64> = manifest.files.iter().map(|_| AtomicU64::new(0)).collect();
    for (i, _) in &slices {
        remaining[*i].fetch_add(1, Ordering::Relaxed);
    }
    let counts = Counts::default();
    let clone_works = AtomicBool::new(true);
    let writer = FileWriter {
        target,
        reader: stanza.runs(),
        delta: destination.delta,
        live: live_source.map(|dir| LiveHint { dir, since: manifest.start_lsn }),
        clone: (!destination.delta).then_some(&clone_works),
        counts: &counts,
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| Error::invalid("restore threads", e.to_string()))?;
    progress.begin("restore", manifest.stats.database_size);
    pool.install(|| {
        slices.par_iter().try_for_each(|(i, extents)| {
            let entry = &manifest.files[*i];
            writer.write(entry, extents)?;
            progress.advance(extents.iter().map(|e| e.len).sum());
            if remaining[*i].fetch_sub(1, Ordering::AcqRel) == 1 {
                fsx::start_writeback(&target.join(&entry.path))?;
            }
            Ok::<(), Error>(())
        })
    })?;
    progress.end();
    Ok(counts)
}

/// Writes what makes the directory start where it should: the set's WAL, backup_label, the
/// tablespace map, the postgresql.auto.conf settings and, with a plan, recovery.signal. Returns
/// what the DBA does next. `in_place`: the stanza's own cluster keeps archiving into its repository
/// (PostgreSQL archives nothing before promotion, then the new timeline).
fn write_recovery_files(
    stanza: &Stanza,
    manifest: &Manifest,
    destination: &Destination,
    plan: Option<&RecoveryPlan>,
    in_place: bool,
) -> Result<Vec<String>> {
    let target = destination.data.as_path();
    let reader = stanza.runs();
    for entry in &manifest.wal {
        let bytes = reader.read_wal(&manifest.label, entry)?;
        fsx::write_atomic(&target.join("pg_wal").join(&entry.name), &bytes, 0o600)?;
    }
    fsx::write_atomic(&target.join("backup_label"), manifest.backup_label.as_bytes(), 0o600)?;
    if manifest.tablespace_map.is_some() && !destination.locations.is_empty() {
        let entries: Vec<(u32, &Path)> = destination.locations.iter().map(|(oid, p)| (*oid, p.as_path())).collect();
        fsx::write_atomic(&target.join("tablespace_map"), tablespace_map(&entries)?.as_bytes(), 0o600)?;
    }
    let (reason, settings) = restored_settings(&manifest.label, plan);
    let settings: Vec<(&str, String)> = settings
        .iter()
        .filter(|(k, _)| !(in_place && k == "archive_mode"))
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    set_auto_conf(target, &reason, &settings)?;
    if plan.is_none() {
        return Ok(vec![
            "archive_mode is off in the restored cluster so it cannot write into the repository: once it is \
             checked, turn archiving on (ALTER SYSTEM SET archive_mode = on) and take a full backup"
                .to_string(),
        ]);
    }
    fsx::write_atomic(&target.join("recovery.signal"), b"", 0o600)?;
    Ok(vec![
        "after checking the recovered cluster: promote it (pg_ctl promote, unless it promoted itself), \
         turn archiving on (ALTER SYSTEM SET archive_mode = on; restart) and take a full backup"
            .to_string(),
    ])
}
