//! `info`: the stanza and its backup sets, with the fields `pgbackrest info` shows plus what the
//! page scanner found (pages changed, bad checksums).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::Resolved;
use crate::error::{Error, Result};
use crate::pg::lsn::Lsn;
use crate::repo::archive::WalFileKind;
use crate::repo::label::{BackupType, SetLabel};
use crate::repo::manifest::BadPage;
use crate::repo::scrub::ScrubRecord;
use crate::repo::verification::VerificationRecord;
use crate::stanza::{Stanza, snapshots};

/// The state of a stanza.
#[derive(Debug, Clone, Serialize)]
pub struct InfoReport {
    /// Stanza name.
    pub stanza: String,
    /// The repository's name in the configuration.
    pub repo: String,
    /// Where the repository is (a directory, or a bucket at an endpoint).
    pub location: String,
    /// "ok", or "error (…)".
    pub status: String,
    /// Whether everything could be read: `info` exits non-zero otherwise.
    pub healthy: bool,
    /// The Patroni member managing the stanza's cluster, when one does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patroni: Option<String>,
    /// For a repository of another tool (pgBackRest), what it is and how it stores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub foreign: Option<String>,
    /// Cipher of the repository.
    pub cipher: String,
    /// Compression of the repository.
    pub compression: String,
    /// The cluster's system identifier.
    pub system_identifier: u64,
    /// The cluster's major version.
    pub pg_version: u32,
    /// Backup sets, oldest first.
    pub sets: Vec<SetInfo>,
    /// Sets that could not be read, with the reason.
    pub errors: Vec<String>,
    /// The WAL archive per timeline.
    pub archive: Vec<ArchiveRange>,
    /// The latest `scrub` of the archive.
    pub archive_scrub: Option<ScrubRecord>,
    /// Snapshot points beside the cluster, oldest first.
    pub snapshot_points: Vec<SnapshotInfo>,
    /// Snapshot points that are ignored (another cluster's, an unreadable record), and why.
    pub snapshot_notes: Vec<String>,
    /// From the earliest set's consistent point to the newest archived WAL: the times a restore can reach.
    pub recovery_window: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

/// Archived WAL of one timeline.
#[derive(Debug, Clone, Serialize)]
pub struct ArchiveRange {
    /// Timeline.
    pub timeline: u32,
    /// Oldest segment.
    pub min: String,
    /// Newest segment.
    pub max: String,
    /// Files archived (segments, history, partial and backup files).
    pub files: usize,
}

/// One snapshot point.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotInfo {
    /// Its id.
    pub id: String,
    /// Timeline.
    pub timeline: u32,
    /// Start LSN.
    pub start_lsn: Lsn,
    /// Stop LSN: forks can start from here.
    pub stop_lsn: Lsn,
    /// Start time.
    pub start_time: DateTime<Utc>,
    /// Stop time.
    pub stop_time: DateTime<Utc>,
    /// Bytes it holds that production no longer shares (what keeping it costs).
    pub exclusive_bytes: u64,
    /// The backup set it was scanned for, if a backup kept it.
    pub backup: Option<String>,
}

/// One backup set.
#[derive(Debug, Clone, Serialize)]
pub struct SetInfo {
    /// Label.
    pub label: SetLabel,
    /// Type.
    pub kind: BackupType,
    /// The set it is based on.
    pub prior: Option<SetLabel>,
    /// Sets it reads pages from.
    pub references: Vec<SetLabel>,
    /// Start time.
    pub start_time: DateTime<Utc>,
    /// Stop time.
    pub stop_time: DateTime<Utc>,
    /// Start LSN.
    pub start_lsn: Lsn,
    /// Stop LSN.
    pub stop_lsn: Lsn,
    /// First WAL segment.
    pub wal_start: String,
    /// Last WAL segment.
    pub wal_stop: String,
    /// Size of the database.
    pub database_size: u64,
    /// Plaintext bytes this set stored (the database backup size).
    pub backup_size: u64,
    /// Bytes of this set in the repository.
    pub repo_size: u64,
    /// Bytes in the repository of this set and every set it references (what a restore reads from).
    pub repo_set_size: u64,
    /// Files.
    pub files: u64,
    /// Pages examined.
    pub pages_total: u64,
    /// Pages stored by this set.
    pub pages_changed: u64,
    /// Pages with bad checksums.
    pub bad_checksums: usize,
    /// The bad pages (at most 50).
    pub bad_pages: Vec<BadPage>,
    /// Whether a reflink snapshot was scanned.
    pub snapshot: bool,
    /// The latest `verify` of the set.
    pub verification: Option<VerificationRecord>,
    /// The latest `scrub` of the set.
    pub scrub: Option<ScrubRecord>,
    /// An unreadable set this one may depend on: then it cannot be restored until that set is
    /// repaired.
    pub depends_on_damaged: Option<SetLabel>,
}

/// Reads the stanza's state; `set` limits the sets shown.
pub fn info(resolved: &Resolved, set: Option<&SetLabel>) -> Result<InfoReport> {
    let repo = Stanza::open(resolved)?;
    let readable = repo.readable_manifests()?;
    let manifests = &readable.manifests;
    let mut errors: Vec<String> = readable.unreadable.iter().map(|(label, e)| format!("{label}: {e}")).collect();
    if let Some(set) = set
        && !manifests.iter().any(|m| &m.label == set)
        && !readable.unreadable.iter().any(|(label, _)| label == set)
    {
        return Err(Error::refused(format!("backup {set} does not exist in stanza {}", repo.name()), None));
    }
    // Each set's directory is measured once, however many sets reference it.
    let mut sizes: BTreeMap<SetLabel, u64> = BTreeMap::new();
    let mut size_of = |label: &SetLabel| -> Result<u64> {
        if let Some(size) = sizes.get(label) {
            return Ok(*size);
        }
        let size = repo.storage().size(&repo.layout().set(label))?;
        sizes.insert(label.clone(), size);
        Ok(size)
    };
    let mut sets = Vec::new();
    for m in manifests.iter().filter(|m| set.is_none_or(|s| &m.label == s)) {
        let repo_size = size_of(&m.label)?;
        let mut repo_set_size = repo_size;
        for reference in &m.references {
            repo_set_size += size_of(reference)?;
        }
        sets.push(SetInfo {
            label: m.label.clone(),
            kind: m.kind,
            prior: m.prior.clone(),
            references: m.references.clone(),
            start_time: m.start_time,
            stop_time: m.stop_time,
            start_lsn: m.start_lsn,
            stop_lsn: m.stop_lsn,
            wal_start: m.start_wal.clone(),
            wal_stop: m.stop_wal.clone(),
            database_size: m.stats.database_size,
            backup_size: m.stats.backup_size,
            repo_size,
            repo_set_size,
            files: m.stats.files,
            pages_total: m.stats.pages_total,
            pages_changed: m.stats.pages_changed,
            bad_checksums: m.bad_pages.len(),
            bad_pages: m.bad_pages.iter().take(50).cloned().collect(),
            snapshot: m.snapshot,
            verification: VerificationRecord::load(&repo, &m.label).unwrap_or_else(|e| {
                errors.push(format!("{}: {e}", m.label));
                None
            }),
            scrub: ScrubRecord::load(&repo, &repo.layout().scrub(&m.label)).unwrap_or_else(|e| {
                errors.push(format!("{}: {e}", m.label));
                None
            }),
            depends_on_damaged: readable.damaged_dependency(m).cloned(),
        });
    }
    let mut ranges = Vec::new();
    let mut newest: Option<DateTime<Utc>> = None;
    for (tli, files) in repo.archive().list()? {
        let segments: Vec<_> = files.iter().filter(|f| f.kind == WalFileKind::Segment).collect();
        if let (Some(min), Some(max)) = (segments.first(), segments.last()) {
            let modified: DateTime<Utc> = max.modified.into();
            newest = Some(newest.map_or(modified, |n| n.max(modified)));
            ranges.push(ArchiveRange {
                timeline: tli.0,
                min: min.name.clone(),
                max: max.name.clone(),
                files: files.len(),
            });
        }
    }
    let recovery_window = match (manifests.first(), newest) {
        (Some(first), Some(newest)) if newest >= first.stop_time => Some((first.stop_time, newest)),
        (Some(first), _) => Some((first.stop_time, first.stop_time)),
        _ => None,
    };
    let archive_scrub = ScrubRecord::load(&repo, &repo.layout().archive_scrub()).unwrap_or_else(|e| {
        errors.push(format!("archive scrub record: {e}"));
        None
    });
    let (snapshot_points, snapshot_notes) = snapshot_points(resolved, repo.record().current.system_identifier)?;
    let healthy = errors.is_empty();
    let status = if !healthy {
        "error (unreadable objects)".to_string()
    } else if manifests.is_empty() {
        "error (no valid backups)".to_string()
    } else {
        "ok".to_string()
    };
    Ok(InfoReport {
        stanza: repo.name().to_string(),
        repo: resolved.repo_name.clone(),
        location: repo.storage().location(),
        status,
        healthy,
        patroni: crate::patroni::describe(resolved),
        foreign: repo.storage().foreign_description(),
        cipher: repo.record().cipher_name().into(),
        compression: format!("{:?}", repo.record().compression).to_lowercase(),
        system_identifier: repo.record().current.system_identifier,
        pg_version: repo.record().current.pg_version,
        sets,
        errors,
        archive: ranges,
        archive_scrub,
        snapshot_points,
        snapshot_notes,
        recovery_window,
    })
}

/// The stanza's snapshot points with the space each holds exclusively.
fn snapshot_points(resolved: &Resolved, system_identifier: u64) -> Result<(Vec<SnapshotInfo>, Vec<String>)> {
    let (found, mut notes) = snapshots::list(&snapshots::snapshot_dir(resolved), system_identifier)?;
    let mut points = Vec::new();
    for f in found {
        let exclusive_bytes = crate::cow::shared::exclusive_bytes(&f.dir).unwrap_or_else(|e| {
            notes.push(format!("snapshot point {}: its space cannot be measured: {e}", f.point.id));
            0
        });
        let p = f.point;
        points.push(SnapshotInfo {
            id: p.id,
            timeline: p.timeline,
            start_lsn: p.start_lsn,
            stop_lsn: p.stop_lsn,
            start_time: p.start_time,
            stop_time: p.stop_time,
            exclusive_bytes,
            backup: p.backup,
        });
    }
    Ok((points, notes))
}
