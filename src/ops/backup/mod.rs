//! `backup`: an online physical backup into the stanza's repository. Full, or diff/incr built by
//! the page scanner from pages whose LSN passed the prior set's start; the set carries the WAL from
//! its start to its stop, and its manifest, put last, commits it. Retention runs afterwards.

pub mod snapshot;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chrono::Utc;
use rayon::prelude::*;
use serde::Serialize;
use xxhash_rust::xxh3::xxh3_64;

use crate::config::Resolved;
use crate::error::{Error, Result};
use crate::ops::expire::{ExpireReport, apply_retention};
use crate::ops::identity::become_owner_of;
use crate::ops::snapshot::{PointSlot, Taken};
use crate::pg::backup_label::BackupLabel;
use crate::pg::datadir::{ControlData, DataDir};
use crate::pg::external_conf::ExternalConf;
use crate::pg::lsn::Lsn;
use crate::pg::session::Session;
use crate::progress::Progress;
use crate::repo::label::{BackupType, SetLabel};
use crate::repo::manifest::{DirEntry, Extent, FileEntry, MAX_RUN, Manifest, OutsideConfig, SetStats, WalEntry};
use crate::repo::object::{FORMAT, Kind};
use crate::scan::{ScanRequest, ScannedFile, scan_file};
use crate::stanza::{Stanza, check_server, server_target};
use crate::util::{Laps, ms_since};

/// A backup request.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// Requested type; incr when `None`. A full is taken when there is nothing to base it on.
    pub kind: Option<BackupType>,
    /// Ask for an immediate checkpoint (pg_backup_start's `fast`).
    pub fast_checkpoint: bool,
}

/// What a backup did.
#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    /// Stanza.
    pub stanza: String,
    /// The new set.
    pub label: SetLabel,
    /// Its type.
    pub kind: BackupType,
    /// The set it is based on.
    pub prior: Option<SetLabel>,
    /// Start LSN.
    pub start_lsn: Lsn,
    /// Stop LSN.
    pub stop_lsn: Lsn,
    /// Whether a reflink snapshot was scanned.
    pub snapshot: bool,
    /// Sizes and counts.
    pub stats: SetStats,
    /// Pages with bad checksums.
    pub bad_pages: usize,
    /// WAL segments stored with the set.
    pub wal_segments: usize,
    /// Wall time, milliseconds.
    pub duration_ms: f64,
    /// Milliseconds per step: backup_start (the checkpoint), snapshot, scan, backup_stop, wal,
    /// manifest, expire.
    pub timings: Vec<(&'static str, f64)>,
    /// Remarks (a full instead of the requested type, and why).
    pub notes: Vec<String>,
    /// Leftovers of interrupted backups removed first.
    pub cleaned: Vec<SetLabel>,
    /// The snapshot point the scanned snapshot was kept as (with `snapshot = true`).
    pub snapshot_point: Option<String>,
    /// What retention removed afterwards.
    pub expired: ExpireReport,
}

/// Takes a backup of the stanza's cluster.
pub fn backup(resolved: &Resolved, opts: &BackupOptions, progress: &dyn Progress) -> Result<BackupReport> {
    resolved.repo.refuse_write(&resolved.repo_name, "backup")?;
    let started = Instant::now();
    let data = DataDir::open(&resolved.stanza.data)?;
    let identity = become_owner_of(data.path())?;
    let stanza = Stanza::open(resolved)?;
    let control = data.control()?;
    stanza.record().check_cluster(control.system_identifier, data.major())?;
    let lock = stanza.lock("backup")?;
    let cleaned = stanza.remove_uncommitted()?;
    for label in &cleaned {
        progress.note(&format!("removed {label}, left incomplete by an interrupted backup"));
    }
    let session = connect(&stanza, &data, &identity.name)?;
    let mut base = Base::choose(&stanza, opts.kind.unwrap_or(BackupType::Incr), &control, data.major())?;

    let mut laps = Laps::start();
    let begun = Begun::start(&session, &base.label, opts.fast_checkpoint, progress)?;
    laps.lap("backup_start");
    // With snapshot = true the reflink snapshot scanned is kept as a snapshot point.
    let slot = match resolved.stanza.snapshot.then(|| PointSlot::for_backup(resolved, &data)) {
        Some(Ok(slot)) => Some(slot),
        Some(Err(note)) => {
            base.notes.push(note);
            None
        }
        None => None,
    };
    let source = match &slot {
        Some(slot) => snapshot::prepare_at(&data, &slot.partial.join("data"), true)?,
        None => snapshot::prepare(&data, resolved.stanza.snapshot)?,
    };
    for link in &source.links_left_out {
        base.notes.push(format!("symbolic link {link} is not backed up (a set holds files and directories only)"));
    }
    laps.lap("snapshot");
    let conf = ExternalConf::find(data.path())?;
    let (scanned, pack_bytes) = scan(conf.as_ref(), &stanza, &source, &base, &begun, progress)?;
    laps.lap("scan");
    let stopped = Stopped::stop(&session)?;
    laps.lap("backup_stop");
    let backup_label = BackupLabel::parse(&stopped.labelfile)?;
    let segment_size = crate::pg::wal::segment_size(&session)?;
    let segments = crate::pg::wal::backup_segments(&backup_label, stopped.lsn, segment_size)?;
    let wal = store_wal(&stanza, &base.label, &data.path().join("pg_wal"), &segments)?;
    laps.lap("wal");

    let manifest = Manifest {
        format: u32::from(FORMAT),
        label: base.label.clone(),
        kind: base.kind,
        prior: base.prior.as_ref().map(|m| m.label.clone()),
        references: Vec::new(),
        system_identifier: control.system_identifier,
        pg_version: data.major(),
        timeline: backup_label.timeline.0,
        start_lsn: begun.lsn,
        stop_lsn: stopped.lsn,
        start_wal: segments.first().cloned().unwrap_or_default(),
        stop_wal: segments.last().cloned().unwrap_or_default(),
        start_time: begun.time,
        stop_time: stopped.time,
        backup_label: stopped.labelfile.clone(),
        tablespace_map: (!stopped.spcmapfile.is_empty()).then_some(stopped.spcmapfile),
        tablespaces: source.tablespaces.clone(),
        checksums_enabled: begun.checksums,
        snapshot: source.snapshot_taken(),
        dirs: source
            .dirs
            .iter()
            .cloned()
            .chain(conf.iter().flat_map(|c| &c.dirs).map(|d| DirEntry { path: d.clone(), mode: 0o700 }))
            .collect(),
        files: Vec::new(),
        wal,
        bad_pages: Vec::new(),
        stats: SetStats::default(),
        config: conf.as_ref().map(|c| OutsideConfig {
            origin: c.origin.display().to_string(),
            files: c.files.iter().map(|f| f.rel.clone()).collect(),
            dirs: c.dirs.clone(),
        }),
    }
    .with_files(scanned, pack_bytes);
    for bad in &manifest.bad_pages {
        progress.note(&format!(
            "bad checksum in {} block {} (stored {}, computed {})",
            bad.path, bad.block, bad.stored, bad.computed
        ));
    }
    // A lock that expired unrefreshed (object storage) may be another backup's now: commit nothing.
    lock.check()?;
    stanza.save(&manifest)?;
    laps.lap("manifest");
    let snapshot_point = match slot {
        Some(slot) if source.snapshot_taken() => {
            let taken = Taken {
                began: crate::ops::snapshot::Began { lsn: begun.lsn, time: begun.time },
                stopped: crate::ops::snapshot::Stopped {
                    lsn: stopped.lsn,
                    time: stopped.time,
                    labelfile: manifest.backup_label.clone(),
                },
                segment_size,
                backup: Some(manifest.label.to_string()),
            };
            Some(slot.commit(resolved, &data, source, taken)?.id)
        }
        _ => None,
    };
    drop(session);
    laps.lap("snapshot_point");

    let expired = apply_retention(&stanza, Utc::now(), false)?;
    laps.lap("expire");
    Ok(BackupReport {
        stanza: stanza.name().to_string(),
        label: manifest.label.clone(),
        kind: manifest.kind,
        prior: manifest.prior.clone(),
        start_lsn: manifest.start_lsn,
        stop_lsn: manifest.stop_lsn,
        snapshot: manifest.snapshot,
        bad_pages: manifest.bad_pages.len(),
        stats: manifest.stats.clone(),
        wal_segments: manifest.wal.len(),
        duration_ms: ms_since(started),
        timings: laps.timings,
        notes: base.notes,
        cleaned,
        snapshot_point,
        expired,
    })
}

/// Connects to the stanza's server and checks it serves the stanza's directory and cluster.
fn connect(stanza: &Stanza, data: &DataDir, user: &str) -> Result<Session> {
    let target = server_target(&stanza.config, data.path(), user);
    let session = Session::connect_retry(&target, Duration::from_secs(5)).map_err(|e| {
        Error::refused(
            format!("cannot reach the server of stanza {} on {}: {e}", stanza.name(), target.describe()),
            Some("backups are taken online: start the cluster, or set port/socket in the stanza".into()),
        )
    })?;
    check_server(&session, data, stanza.record().current.system_identifier)?;
    Ok(session)
}

/// What the new set is based on.
struct Base {
    kind: BackupType,
    /// The prior set's manifest (none for a full).
    prior: Option<Manifest>,
    label: SetLabel,
    /// Remarks: a full instead of the requested type, and why.
    notes: Vec<String>,
}

impl Base {
    /// The type, prior and label of the new set: `requested`, unless there is nothing compatible
    /// to base it on (then a full, with the reason in the notes).
    fn choose(stanza: &Stanza, requested: BackupType, control: &ControlData, major: u32) -> Result<Base> {
        let mut notes = Vec::new();
        let labels = stanza.labels()?;
        let (mut kind, prior) = choose_prior(requested, &labels, &mut notes);
        let prior = match prior {
            Some(label) => {
                let manifest = stanza.manifest(&label)?;
                match incompatible(&manifest, control.system_identifier, major, control.timeline.0) {
                    Some(reason) => {
                        notes.push(format!("taking a full backup instead of {kind}: {reason}"));
                        kind = BackupType::Full;
                        None
                    }
                    None => Some(manifest),
                }
            }
            None => None,
        };
        let label = new_label(kind, prior.as_ref().map(|m| &m.label), &labels);
        Ok(Base { kind, prior, label, notes })
    }
}

/// A backup begun on the server: `pg_backup_start` returned.
struct Begun {
    lsn: Lsn,
    time: chrono::DateTime<Utc>,
    /// Whether the cluster has data checksums (pages are validated).
    checksums: bool,
}

impl Begun {
    /// Reserves WAL with a temporary slot (dropped with the session) and starts the backup.
    fn start(session: &Session, label: &SetLabel, fast: bool, progress: &dyn Progress) -> Result<Begun> {
        let checksums = session.show("data_checksums")? == "on";
        let slot = format!("pgfork_backup_{}", std::process::id());
        if let Err(e) = session.query("SELECT pg_create_physical_replication_slot($1, true, true)", &[&slot]) {
            progress.note(&format!("could not reserve WAL with a temporary replication slot ({e}); going on"));
        }
        let time = Utc::now();
        let start: String =
            session.query_one("SELECT pg_backup_start($1, $2)::text", &[&label.as_str(), &fast])?.get(0);
        Ok(Begun { lsn: start.parse()?, time, checksums })
    }
}

/// What `pg_backup_stop` returned.
struct Stopped {
    lsn: Lsn,
    time: chrono::DateTime<Utc>,
    labelfile: String,
    spcmapfile: String,
}

impl Stopped {
    fn stop(session: &Session) -> Result<Stopped> {
        let row = session.query_one("SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(false)", &[])?;
        let (stop, labelfile, spcmapfile): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        Ok(Stopped { lsn: stop.parse()?, time: Utc::now(), labelfile, spcmapfile })
    }
}

/// Scans every file in parallel into the new set's packs; `pg_control` last, after every other
/// file. Returns the files and the bytes the packs take.
fn scan(
    conf: Option<&ExternalConf>,
    stanza: &Stanza,
    source: &snapshot::BackupSource,
    base: &Base,
    begun: &Begun,
    progress: &dyn Progress,
) -> Result<(Vec<ScannedFile>, u64)> {
    let sink = stanza.packs(&base.label);
    let total: u64 = source.files.iter().map(|f| f.size).sum();
    progress.begin("backup", total);
    let scan_one = |file: &snapshot::SourceFile| -> Result<Option<ScannedFile>> {
        let request = ScanRequest {
            rel_path: &file.rel,
            file: &file.path,
            mode: source.mode,
            prior: base.prior.as_ref().and_then(|m| m.file(&file.rel)),
            since: base.prior.as_ref().map(|m| m.start_lsn),
            verify_before: begun.checksums.then_some(begun.lsn),
        };
        let scanned = scan_file(&request, &sink)?;
        progress.advance(scanned.as_ref().map_or(0, |s| s.entry.size));
        Ok(scanned)
    };
    let Some((control_file, rest)) = source.files.split_last() else {
        return Err(Error::invalid("backup", "the data directory has no files"));
    };
    let mut scanned: Vec<Option<ScannedFile>> = rest.par_iter().map(scan_one).collect::<Result<_>>()?;
    scanned.push(scan_one(control_file)?);
    progress.end();
    // A configuration kept outside the data directory (Debian's /etc/postgresql) goes into the set
    // as the data directory's own files: a set that cannot boot is only half a backup.
    if let Some(conf) = conf {
        for file in &conf.files {
            scanned.push(Some(stored_whole(&sink, &file.rel, file.text.as_bytes())?));
        }
    }
    sink.finish()?;
    Ok((scanned.into_iter().flatten().collect(), sink.stored_bytes()))
}

/// A file stored whole in runs (not read from the data directory).
fn stored_whole(sink: &crate::repo::pack::PackSink<'_>, rel: &str, bytes: &[u8]) -> Result<ScannedFile> {
    let mut extents = Vec::new();
    for (i, chunk) in bytes.chunks(MAX_RUN).enumerate() {
        let run = sink.write_run(chunk)?;
        extents.push(Extent { offset: (i * MAX_RUN) as u64, len: chunk.len() as u64, run: Some(run) });
    }
    Ok(ScannedFile {
        entry: FileEntry { path: rel.to_string(), size: bytes.len() as u64, mode: 0o600, extents },
        pages_total: 0,
        pages_changed: 0,
        stored_plain: bytes.len() as u64,
        bad_pages: Vec::new(),
    })
}

impl Manifest {
    /// Fills in the files, bad pages, references and totals from what the scan produced.
    fn with_files(mut self, scanned: Vec<ScannedFile>, pack_bytes: u64) -> Manifest {
        let mut stats = SetStats::default();
        for file in scanned {
            stats.database_size += file.entry.size;
            stats.backup_size += file.stored_plain;
            stats.pages_total += file.pages_total;
            stats.pages_changed += file.pages_changed;
            self.bad_pages.extend(file.bad_pages);
            self.files.push(file.entry);
        }
        self.files.sort_by(|a, b| a.path.cmp(&b.path));
        stats.files = self.files.len() as u64;
        stats.repo_size = pack_bytes + self.wal.iter().map(|w| w.stored).sum::<u64>();
        let references: BTreeSet<SetLabel> = self
            .files
            .iter()
            .flat_map(|f| f.extents.iter().filter_map(|e| e.run.as_ref().map(|r| r.set.clone())))
            .filter(|set| *set != self.label)
            .collect();
        self.references = references.into_iter().collect();
        self.stats = stats;
        self
    }
}

/// The type and prior set: a diff is based on the newest full, an incr on the newest set; with no
/// full at all, a full.
fn choose_prior(requested: BackupType, labels: &[SetLabel], notes: &mut Vec<String>) -> (BackupType, Option<SetLabel>) {
    let newest_full = labels.iter().rev().find(|l| l.kind() == BackupType::Full);
    match (requested, newest_full) {
        (BackupType::Full, _) => (BackupType::Full, None),
        (kind, None) => {
            notes.push(format!("no full backup to base a {kind} on: taking a full backup"));
            (BackupType::Full, None)
        }
        (BackupType::Diff, Some(full)) => (BackupType::Diff, Some(full.clone())),
        (BackupType::Incr, Some(full)) => {
            // The newest set of the newest full's chain.
            let newest = labels.iter().rev().find(|l| l.full_part() == full.as_str()).unwrap_or(full);
            (BackupType::Incr, Some(newest.clone()))
        }
    }
}

/// Why pages of `prior` cannot be reused, if they cannot.
fn incompatible(prior: &Manifest, system_identifier: u64, pg_version: u32, timeline: u32) -> Option<String> {
    if prior.system_identifier != system_identifier || prior.pg_version != pg_version {
        return Some(format!("{} belongs to another cluster or version", prior.label));
    }
    if prior.timeline != timeline {
        return Some(format!("the timeline changed from {} to {timeline} since {}", prior.timeline, prior.label));
    }
    None
}

/// A label not yet used: labels have one-second resolution, so wait for the next second if needed.
fn new_label(kind: BackupType, prior: Option<&SetLabel>, existing: &[SetLabel]) -> SetLabel {
    loop {
        let now = Utc::now();
        let label = match prior {
            Some(prior) if kind != BackupType::Full => SetLabel::dependent(prior, kind, now),
            _ => SetLabel::full(now),
        };
        let taken =
            existing.iter().any(|l| l == &label || (kind == BackupType::Full && l.full_part() == label.full_part()));
        if !taken {
            return label;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Stores the backup's WAL segments in the set.
fn store_wal(
    stanza: &Stanza,
    label: &SetLabel,
    wal_dir: &std::path::Path,
    segments: &[String],
) -> Result<Vec<WalEntry>> {
    segments
        .par_iter()
        .map(|name| {
            let path = wal_dir.join(name);
            let bytes = std::fs::read(&path).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Error::invalid(
                    format!("WAL segment {name}"),
                    format!("needed by backup {label} but missing from {}", wal_dir.display()),
                ),
                _ => Error::io("read", &path, e),
            })?;
            if bytes.len() > crate::repo::read::MAX_SEGMENT {
                return Err(Error::invalid(path.display().to_string(), "larger than a WAL segment can be"));
            }
            let key = stanza.layout().set_wal(label, name);
            let stored = stanza.put_object(Kind::Wal, &key, &bytes)?;
            Ok(WalEntry { name: name.clone(), size: bytes.len() as u64, sum: xxh3_64(&bytes), stored })
        })
        .collect()
}
