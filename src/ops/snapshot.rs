//! `snapshot`: take a snapshot point of the stanza's running cluster — pg_backup_start, a reflink
//! clone of the data directory (tablespaces in place), pg_backup_stop, the WAL from start to stop,
//! its backup_label — built under a partial name and renamed into place once its record is
//! written; delete one; apply the stanza's snapshot retention. A snapshot point costs metadata,
//! then the blocks production rewrites afterwards; forks from it cost the WAL since. A point a
//! fork holds (its lease) is neither deleted nor expired.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::Resolved;
use crate::cow::{CopyMethod, TreePlan, probe_reflink};
use crate::error::{Error, IoContext, Result};
use crate::ops::backup::snapshot::{BackupSource, prepare_at};
use crate::ops::identity::become_owner_of;
use crate::pg::backup_label::BackupLabel;
use crate::pg::datadir::DataDir;
use crate::pg::lsn::Lsn;
use crate::pg::session::Session;
use crate::progress::{Progress, Silent};
use crate::repo::storage::{Held, LocalStorage, Storage};
use crate::stanza::snapshots::{self, Found, HIDDEN_PG_VERSION, Removal, SnapshotPoint};
use crate::stanza::{Stanza, check_server, server_target};
use crate::util::{Laps, fsx, ms_since};

/// What taking a snapshot point did.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotReport {
    /// Stanza.
    pub stanza: String,
    /// The new snapshot point.
    pub point: SnapshotPoint,
    /// Its directory.
    pub dir: PathBuf,
    /// Files cloned.
    pub files: u64,
    /// Wall time, milliseconds.
    pub duration_ms: f64,
    /// Milliseconds per step: backup_start (its checkpoint), clone, backup_stop, wal, record.
    pub timings: Vec<(&'static str, f64)>,
    /// Snapshot points retention removed afterwards.
    pub expired: Vec<String>,
    /// Snapshot points retention would have removed but a fork holds: kept this time, with who.
    pub kept_in_use: Vec<String>,
    /// Leftovers of killed snapshots removed first.
    pub cleaned: u64,
}

/// Takes a snapshot point of the stanza's running cluster.
pub fn take(resolved: &Resolved, progress: &dyn Progress) -> Result<SnapshotReport> {
    let started = Instant::now();
    let data = DataDir::open(&resolved.stanza.data)?;
    let identity = become_owner_of(data.path())?;
    let stanza = Stanza::open(resolved)?;
    let control = data.control()?;
    stanza.record().check_cluster(control.system_identifier, data.major())?;
    let dir = prepare_dir(resolved, &data)?;
    let _lock = lock(&dir)?;
    let cleaned = snapshots::remove_incomplete(&dir)?;
    check_space(&dir, resolved.stanza.snapshot_max_used_percent)?;

    let target = server_target(resolved, data.path(), &identity.name);
    let session = Session::connect_retry(&target, Duration::from_secs(5)).map_err(|e| {
        Error::refused(
            format!("cannot reach the server of stanza {} on {}: {e}", stanza.name(), target.describe()),
            Some("snapshot points are taken online: start the cluster, or set port/socket in the stanza".into()),
        )
    })?;
    check_server(&session, &data, stanza.record().current.system_identifier)?;
    let id = new_id(&dir);
    let partial = dir.join(format!(".{id}.partial"));
    fsx::create_dir_mode(&partial, 0o700)?;

    let mut laps = Laps::start();
    let slot = format!("pgfork_snapshot_{}", std::process::id());
    if let Err(e) = session.query("SELECT pg_create_physical_replication_slot($1, true, true)", &[&slot]) {
        progress.note(&format!("could not reserve WAL with a temporary replication slot ({e}); going on"));
    }
    let start_time = Utc::now();
    let label_name = format!("pgfork snapshot {id}");
    let start: String = session.query_one("SELECT pg_backup_start($1, true)::text", &[&label_name])?.get(0);
    laps.lap("backup_start");
    let source = prepare_at(&data, &partial.join("data"), true)?;
    if !source.snapshot_taken() {
        return Err(Error::refused(
            format!("{} cannot be reflinked into {}", data.path().display(), dir.display()),
            Some("snapshot points need XFS (reflink), Btrfs or OpenZFS 2.2, and snapshot_dir on the data directory's file system".into()),
        ));
    }
    laps.lap("clone");
    let row = session.query_one("SELECT lsn::text, labelfile FROM pg_backup_stop(false)", &[])?;
    let (stop, labelfile): (String, String) = (row.get(0), row.get(1));
    let stop_time = Utc::now();
    laps.lap("backup_stop");
    let segment_size = crate::pg::wal::segment_size(&session)?;
    drop(session);
    let stopped = Stopped { lsn: stop.parse()?, time: stop_time, labelfile };
    let files = source.files.len() as u64;
    let taken = Taken { began: Began { lsn: start.parse()?, time: start_time }, stopped, segment_size, backup: None };
    let point = seal_point(resolved, &data, source, &partial, &id, taken)?;
    laps.lap("wal");
    let final_dir = dir.join(&point.id);
    std::fs::rename(&partial, &final_dir).at("rename into place", &final_dir)?;
    fsx::fsync_dir(&dir)?;
    laps.lap("record");
    let retention = apply_retention(resolved, &dir, control.system_identifier, Utc::now())?;
    Ok(SnapshotReport {
        stanza: stanza.name().to_string(),
        point,
        dir: final_dir,
        files,
        duration_ms: ms_since(started),
        timings: laps.timings,
        expired: retention.removed,
        kept_in_use: retention.in_use,
        cleaned,
    })
}

/// Where a backup puts the reflink snapshot it scans so that it stays as a snapshot point: the
/// partial directory of a new point.
pub struct PointSlot {
    /// The stanza's snapshot directory.
    pub dir: PathBuf,
    /// The new point's id.
    pub id: String,
    /// Its partial directory (the clone goes to `data` in it).
    pub partial: PathBuf,
    _lock: Box<dyn Held>,
}

impl PointSlot {
    /// A slot for a backup of `data` taken now, or why there is none (snapshot points need
    /// `snapshot_dir` on the data directory's file system, with room).
    pub fn for_backup(resolved: &Resolved, data: &DataDir) -> std::result::Result<PointSlot, String> {
        let slot = || -> Result<PointSlot> {
            let dir = prepare_dir(resolved, data)?;
            let lock = lock(&dir)?;
            snapshots::remove_incomplete(&dir)?;
            check_space(&dir, resolved.stanza.snapshot_max_used_percent)?;
            let id = new_id(&dir);
            let partial = dir.join(format!(".{id}.partial"));
            fsx::create_dir_mode(&partial, 0o700)?;
            Ok(PointSlot { dir, id, partial, _lock: lock })
        };
        slot().map_err(|e| format!("the backup's snapshot is not kept as a snapshot point: {e}"))
    }

    /// Seals the clone in the slot as a snapshot point and moves it into place.
    pub fn commit(
        self,
        resolved: &Resolved,
        data: &DataDir,
        source: BackupSource,
        taken: Taken,
    ) -> Result<SnapshotPoint> {
        let point = seal_point(resolved, data, source, &self.partial, &self.id, taken)?;
        let final_dir = self.dir.join(&self.id);
        std::fs::rename(&self.partial, &final_dir).at("rename into place", &final_dir)?;
        fsx::fsync_dir(&self.dir)?;
        Ok(point)
    }
}

impl Drop for PointSlot {
    fn drop(&mut self) {
        // Not committed (the backup failed, or no clone was taken): nothing half made stays.
        if self.partial.exists() {
            let _ = snapshots::remove_tree(&self.partial);
        }
    }
}

/// When the online backup began.
pub struct Began {
    /// pg_backup_start's LSN.
    pub lsn: Lsn,
    /// Wall-clock start.
    pub time: DateTime<Utc>,
}

/// What pg_backup_stop returned.
pub struct Stopped {
    /// Its LSN.
    pub lsn: Lsn,
    /// Wall-clock stop.
    pub time: DateTime<Utc>,
    /// The backup label.
    pub labelfile: String,
}

/// The online backup a snapshot point was taken in.
pub struct Taken {
    /// When it began.
    pub began: Began,
    /// When it stopped, with its label.
    pub stopped: Stopped,
    /// The cluster's WAL segment size.
    pub segment_size: u64,
    /// The backup set whose scan the clone was, if any.
    pub backup: Option<String>,
}

/// Turns a reflink clone made inside an online backup (`source`, whose snapshot is
/// `<partial>/data`) into snapshot point `id` in `partial`: the WAL from start to stop cloned from
/// the cluster's pg_wal, backup_label written, PG_VERSION hidden, the record written last.
pub fn seal_point(
    resolved: &Resolved,
    data: &DataDir,
    source: BackupSource,
    partial: &Path,
    id: &str,
    taken: Taken,
) -> Result<SnapshotPoint> {
    let Taken { began, stopped, segment_size, backup } = taken;
    let clone = source.keep().ok_or_else(|| Error::invalid("snapshot point", "no reflink clone was taken"))?;
    let label = BackupLabel::parse(&stopped.labelfile)?;
    let wal = crate::pg::wal::backup_segments(&label, stopped.lsn, segment_size)?;
    let mut plan = TreePlan::default();
    for name in &wal {
        plan.add_file(&data.path().join("pg_wal").join(name), &clone.join("pg_wal").join(name))?;
    }
    plan.execute(CopyMethod::Reflink, false, &Silent)?;
    fsx::write_atomic(&clone.join("backup_label"), stopped.labelfile.as_bytes(), 0o600)?;
    // A configuration kept outside the data directory goes into the clone: forks must start.
    if let Some(conf) = crate::pg::external_conf::ExternalConf::find(data.path())? {
        conf.write_into(&clone)?;
    }
    std::fs::rename(clone.join("PG_VERSION"), clone.join(HIDDEN_PG_VERSION)).at("hide PG_VERSION in", &clone)?;
    let point = SnapshotPoint {
        format: u32::from(crate::repo::object::FORMAT),
        id: id.to_string(),
        stanza: resolved.name.clone(),
        system_identifier: data.control()?.system_identifier,
        pg_version: data.major(),
        timeline: label.timeline.0,
        start_lsn: began.lsn,
        stop_lsn: stopped.lsn,
        start_wal: wal.first().cloned().unwrap_or_default(),
        stop_wal: wal.last().cloned().unwrap_or_default(),
        start_time: began.time,
        stop_time: stopped.time,
        segment_size,
        wal,
        tablespaces: data
            .tablespaces()?
            .into_iter()
            .filter_map(|t| {
                t.location
                    .map(|l| crate::repo::manifest::TablespaceEntry { oid: t.oid, location: l.display().to_string() })
            })
            .collect(),
        source: data.path().to_path_buf(),
        backup,
    };
    // Forks flock it while they clone the point; it is there before the point is.
    fsx::write_atomic(&partial.join(snapshots::LEASE), b"", 0o600)?;
    fsx::sync_filesystem(partial)?;
    point.save(partial)?;
    Ok(point)
}

/// Creates the stanza's snapshot directory and checks a reflink reaches it from the data directory.
pub fn prepare_dir(resolved: &Resolved, data: &DataDir) -> Result<PathBuf> {
    let dir = snapshots::snapshot_dir(resolved);
    if dir.starts_with(data.path()) {
        return Err(Error::refused(
            format!("snapshot_dir {} is inside the data directory", dir.display()),
            Some("put snapshot points beside the data directory, on its file system".into()),
        ));
    }
    std::fs::create_dir_all(&dir).at("create directory", &dir)?;
    if probe_reflink(&data.path().join("PG_VERSION"), &dir)? != CopyMethod::Reflink {
        return Err(Error::refused(
            format!("{} cannot be reflinked into {}", data.path().display(), dir.display()),
            Some("snapshot points need XFS (reflink), Btrfs or OpenZFS 2.2, and snapshot_dir on the data directory's file system".into()),
        ));
    }
    Ok(dir)
}

/// One snapshot (or its retention) at a time per directory.
fn lock(dir: &Path) -> Result<Box<dyn Held>> {
    let storage = std::sync::Arc::new(LocalStorage::new(dir));
    storage.lock("lock", &format!("snapshot (pid {})", std::process::id()))
}

/// Refuses a new snapshot point on a file system fuller than `max_percent`.
fn check_space(dir: &Path, max_percent: u8) -> Result<()> {
    let stat = nix::sys::statvfs::statvfs(dir).at("statvfs", dir)?;
    let total = stat.blocks() as f64;
    let used = (stat.blocks() - stat.blocks_free()) as f64;
    let percent = if total > 0.0 { used * 100.0 / total } else { 0.0 };
    if percent > f64::from(max_percent) {
        return Err(Error::refused(
            format!(
                "the file system of {} is {percent:.0}% full (snapshot_max_used_percent = {max_percent}): a snapshot point holds the blocks production rewrites afterwards",
                dir.display()
            ),
            Some(
                "free space, delete old snapshot points (pgfork snapshot --delete ID), or lower snapshot_retention"
                    .into(),
            ),
        ));
    }
    Ok(())
}

/// An id not used yet in `dir` (ids have one-second resolution).
fn new_id(dir: &Path) -> String {
    loop {
        let id = SnapshotPoint::id_at(Utc::now());
        if !dir.join(&id).exists() && !dir.join(format!(".{id}.partial")).exists() {
            return id;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Deletes snapshot point `id` of the stanza; refused (busy) while a fork holds it.
pub fn delete(resolved: &Resolved, id: &str) -> Result<Vec<String>> {
    let data = DataDir::open(&resolved.stanza.data)?;
    become_owner_of(data.path())?;
    let dir = snapshots::snapshot_dir(resolved);
    let _lock = lock(&dir)?;
    snapshots::remove_incomplete(&dir)?;
    let absent = || {
        Error::refused(
            format!("snapshot point {id} does not exist in {}", dir.display()),
            Some("list them with pgfork info".into()),
        )
    };
    if !SnapshotPoint::is_id(id) || !dir.join(id).join(snapshots::RECORD).exists() {
        return Err(absent());
    }
    match snapshots::remove_point(&dir, id)? {
        Removal::Removed => Ok(vec![id.to_string()]),
        Removal::Absent => Err(absent()),
        Removal::InUse(holder) => Err(Error::busy(
            format!("snapshot point {id} is in use by a fork cloning it: {holder}"),
            Some(format!("delete it once that fork is made (pgfork snapshot --delete {id})")),
        )),
    }
}

/// What retention did to the snapshot points.
#[derive(Debug, Clone, Default)]
pub struct Retention {
    /// The ids it removed, oldest first.
    pub removed: Vec<String>,
    /// The points it would have removed but a fork holds, as `<id>: <who holds it>`: kept this
    /// time, removed by a later run.
    pub in_use: Vec<String>,
}

/// Removes the snapshot points the stanza's retention does not keep: beyond the newest
/// `snapshot_retention`, or older than `snapshot_retention_hours`. A point a fork holds is kept
/// this time (and said so).
pub fn apply_retention(
    resolved: &Resolved,
    dir: &Path,
    system_identifier: u64,
    now: DateTime<Utc>,
) -> Result<Retention> {
    let (found, _) = snapshots::list(dir, system_identifier)?;
    let victims =
        retention_victims(&found, resolved.stanza.snapshot_retention, resolved.stanza.snapshot_retention_hours, now);
    let mut retention = Retention::default();
    for id in victims {
        match snapshots::remove_point(dir, &id)? {
            Removal::Removed => retention.removed.push(id),
            Removal::Absent => {}
            Removal::InUse(holder) => {
                tracing::info!("snapshot retention keeps snapshot point {id} this time: {holder}");
                retention.in_use.push(format!("{id}: {holder}"));
            }
        }
    }
    Ok(retention)
}

/// The ids retention removes, oldest first.
fn retention_victims(found: &[Found], count: Option<u32>, hours: Option<u32>, now: DateTime<Utc>) -> Vec<String> {
    let keep_from = count.map_or(0, |n| found.len().saturating_sub(n as usize));
    found
        .iter()
        .enumerate()
        .filter(|(i, f)| {
            let too_many = *i < keep_from;
            let too_old = hours.is_some_and(|h| now - f.point.stop_time > chrono::Duration::hours(i64::from(h)));
            too_many || too_old
        })
        .map(|(_, f)| f.point.id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(id: &str, hours_ago: i64) -> Found {
        let at = Utc::now() - chrono::Duration::hours(hours_ago);
        Found { dir: PathBuf::from(id), point: SnapshotPoint::sample(id, at) }
    }

    #[test]
    fn retention_keeps_the_newest_by_count_and_age() {
        let points = vec![found("20250101-000000", 30), found("20250101-010000", 20), found("20250101-020000", 1)];
        assert_eq!(retention_victims(&points, Some(2), None, Utc::now()), vec!["20250101-000000"]);
        assert_eq!(retention_victims(&points, None, Some(24), Utc::now()), vec!["20250101-000000"]);
        assert_eq!(
            retention_victims(&points, Some(1), Some(24), Utc::now()),
            vec!["20250101-000000", "20250101-010000"]
        );
        assert!(retention_victims(&points, None, None, Utc::now()).is_empty());
    }
}
