//! Snapshot points: reflink clones of a stanza's data directory taken inside pg_backup_start and
//! pg_backup_stop, with their backup_label and the WAL from start to stop, kept read-only beside
//! the cluster as starting points for forks at any later moment. Each lives in
//! `<snapshot_dir>/<id>/` — the clone in `data/` (tablespaces in place under `pg_tblspc`), its
//! record in `snapshot.json`, written last: a snapshot point exists only when its record does.
//! The clone's `PG_VERSION` is kept as `PG_VERSION.pgfork-snapshot`, so neither pg_ctl nor
//! postgres takes it for a data directory; a fork puts it back.
//!
//! A fork holds its point with a shared `flock` on the point's lease file, `<id>/lease`, from
//! before it checks the point until its clone is complete; the kernel drops it with the process.
//! Removing a point takes the exclusive flock without waiting — a point in use is never removed —
//! then renames `<id>` to `.<id>.deleting` before deleting it: readers see a whole point or none,
//! and a fork that finds its chosen point gone takes the next older one.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::Resolved;
use crate::error::{Error, IoContext, Result};
use crate::pg::lsn::Lsn;
use crate::repo::codec::Codec;
use crate::repo::manifest::TablespaceEntry;
use crate::repo::object::{self, FORMAT, Kind};

/// Name of a snapshot point's record.
pub const RECORD: &str = "snapshot.json";
/// Where `PG_VERSION` is kept in a snapshot point's clone.
pub const HIDDEN_PG_VERSION: &str = "PG_VERSION.pgfork-snapshot";
/// Name of a snapshot point's lease file: forks hold its shared flock, removal its exclusive one.
pub const LEASE: &str = "lease";
/// Suffix of the hidden name a point is renamed to while it is removed (`.<id>.deleting`).
const DELETING: &str = ".deleting";
/// How long a fork waits for a removal that holds a point's lease to finish (it holds it only
/// while renaming the point away).
const REMOVAL_WAIT: Duration = Duration::from_secs(30);
/// Largest record accepted.
const MAX_RECORD: usize = 1 << 20;

/// What a snapshot point records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotPoint {
    /// Repository format.
    pub format: u32,
    /// Its id: the time it was taken (`20250715-013657`).
    pub id: String,
    /// The stanza.
    pub stanza: String,
    /// The cluster's system identifier.
    pub system_identifier: u64,
    /// Major version.
    pub pg_version: u32,
    /// Timeline at backup start.
    pub timeline: u32,
    /// pg_backup_start's LSN.
    pub start_lsn: Lsn,
    /// pg_backup_stop's LSN: the point is consistent from here.
    pub stop_lsn: Lsn,
    /// WAL segment of the start.
    pub start_wal: String,
    /// WAL segment of the stop.
    pub stop_wal: String,
    /// Wall-clock start.
    pub start_time: DateTime<Utc>,
    /// Wall-clock stop.
    pub stop_time: DateTime<Utc>,
    /// WAL segment size.
    pub segment_size: u64,
    /// The WAL segments the clone carries in `pg_wal` (start to stop).
    pub wal: Vec<String>,
    /// Tablespaces (in place under the clone's `pg_tblspc`), with their original locations.
    pub tablespaces: Vec<TablespaceEntry>,
    /// The data directory it was taken of.
    pub source: PathBuf,
    /// The backup set whose scan it was, when a backup kept it.
    pub backup: Option<String>,
}

impl SnapshotPoint {
    /// A point of stanza `main` (system 7, PostgreSQL 18) with id `id` stopped at `at`, for tests.
    #[cfg(test)]
    pub(crate) fn sample(id: &str, at: DateTime<Utc>) -> SnapshotPoint {
        SnapshotPoint {
            format: u32::from(FORMAT),
            id: id.into(),
            stanza: "main".into(),
            system_identifier: 7,
            pg_version: 18,
            timeline: 1,
            start_lsn: Lsn(0),
            stop_lsn: Lsn(0),
            start_wal: String::new(),
            stop_wal: String::new(),
            start_time: at,
            stop_time: at,
            segment_size: 16 << 20,
            wal: Vec::new(),
            tablespaces: Vec::new(),
            source: PathBuf::new(),
            backup: None,
        }
    }

    /// The id of a snapshot point taken at `at`.
    pub fn id_at(at: DateTime<Utc>) -> String {
        at.format("%Y%m%d-%H%M%S").to_string()
    }

    /// Whether `name` has the form of an id.
    pub fn is_id(name: &str) -> bool {
        let bytes = name.as_bytes();
        bytes.len() == 15 && bytes.iter().enumerate().all(|(i, b)| if i == 8 { *b == b'-' } else { b.is_ascii_digit() })
    }

    /// Writes the record into `dir` (the commit point of the snapshot point).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(|e| Error::invalid(RECORD, e.to_string()))?;
        let sealed = object::seal(&Codec::plain(), Kind::Snapshot, RECORD.as_bytes(), &json);
        crate::util::fsx::write_atomic(&dir.join(RECORD), &sealed, 0o600)
    }

    /// Reads the record in `dir`; `None` when there is none (not a complete snapshot point).
    pub fn load(dir: &Path) -> Result<Option<SnapshotPoint>> {
        let path = dir.join(RECORD);
        let stored = match std::fs::read(&path) {
            Ok(stored) => stored,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("read", path, e)),
        };
        let what = path.display().to_string();
        let json = object::open(&Codec::plain(), Kind::Snapshot, RECORD.as_bytes(), &stored, MAX_RECORD, &what)?;
        let point: SnapshotPoint = serde_json::from_slice(&json).map_err(|e| Error::invalid(&what, e.to_string()))?;
        if point.format > u32::from(FORMAT) {
            return Err(Error::refused(
                format!("{what} has format {}; this pgfork reads up to {FORMAT}", point.format),
                None,
            ));
        }
        Ok(Some(point))
    }
}

/// The directory holding a stanza's snapshot points: `snapshot_dir` from the stanza's
/// configuration, else `pgfork-snapshots/<stanza>` beside the data directory (on its file system,
/// since a reflink cannot cross file systems; never inside it).
pub fn snapshot_dir(resolved: &Resolved) -> PathBuf {
    match &resolved.stanza.snapshot_dir {
        Some(dir) => dir.clone(),
        None => {
            let data = &resolved.stanza.data;
            data.parent().unwrap_or(Path::new("/")).join("pgfork-snapshots").join(&resolved.name)
        }
    }
}

/// A snapshot point found on disk.
#[derive(Debug, Clone)]
pub struct Found {
    /// Its directory.
    pub dir: PathBuf,
    /// Its record.
    pub point: SnapshotPoint,
}

impl Found {
    /// The clone of the data directory.
    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }
}

/// The snapshot points in `dir`, oldest first, and the problems met: a record that cannot be read,
/// or a point of another cluster (`system_identifier`), is listed there and never used.
pub fn list(dir: &Path, system_identifier: u64) -> Result<(Vec<Found>, Vec<String>)> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), Vec::new())),
        Err(e) => return Err(Error::io("list", dir, e)),
    };
    let (mut found, mut problems) = (Vec::new(), Vec::new());
    for entry in entries {
        let entry = entry.at("list", dir)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !SnapshotPoint::is_id(&name) {
            continue;
        }
        match SnapshotPoint::load(&entry.path()) {
            Ok(Some(point)) if point.system_identifier == system_identifier => {
                found.push(Found { dir: entry.path(), point })
            }
            Ok(Some(point)) => problems.push(format!(
                "snapshot point {name} belongs to system identifier {}, not this stanza's cluster: ignored",
                point.system_identifier
            )),
            Ok(None) => {}
            Err(e) => problems.push(format!("snapshot point {name}: {e}")),
        }
    }
    found.sort_by(|a, b| a.point.id.cmp(&b.point.id));
    Ok((found, problems))
}

/// Removes what a killed snapshot or an interrupted removal left in `dir`: partial directories,
/// `.<id>.deleting` directories, and point directories without a record. Returns how many.
pub fn remove_incomplete(dir: &Path) -> Result<u64> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(0) };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let hidden = name.starts_with('.') && (name.ends_with(".partial") || name.ends_with(DELETING));
        let uncommitted = SnapshotPoint::is_id(&name) && !entry.path().join(RECORD).exists();
        if hidden || uncommitted {
            remove_tree(&entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Removes a directory that is no snapshot point (a partial one, one being deleted). Another
/// process removing it too is no failure.
pub fn remove_tree(dir: &Path) -> Result<()> {
    let _ = std::fs::remove_file(dir.join(RECORD));
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(_) if !dir.exists() => Ok(()),
        Err(e) => Err(Error::io("remove", dir, e)),
    }
}

/// What [`remove_point`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// The point is gone.
    Removed,
    /// Forks hold its lease: it was left as it is. Says who, when that can be told.
    InUse(String),
    /// It was not there (already removed by another process).
    Absent,
}

/// Removes snapshot point `id` from `dir` unless a fork holds its lease: takes the lease's
/// exclusive flock without waiting, renames the point to `.<id>.deleting` (from then on nobody
/// lists or leases it), then deletes that.
pub fn remove_point(dir: &Path, id: &str) -> Result<Removal> {
    let point = dir.join(id);
    let lease = point.join(LEASE);
    let held = match crate::util::fsx::lock_exclusive(&lease, 0o600, false) {
        Ok(Some(held)) => held,
        Ok(None) => return Ok(Removal::InUse(format!("{} holds its lease {}", holders(&lease), lease.display()))),
        Err(_) if !point.exists() => return Ok(Removal::Absent),
        Err(e) => return Err(e),
    };
    // Another removal may have renamed the point between the open and the flock.
    if !crate::util::fsx::is_at(&held, &lease) {
        return Ok(Removal::Absent);
    }
    let deleting = dir.join(format!(".{id}{DELETING}"));
    // What an interrupted removal of a point of this id left.
    if deleting.exists() {
        remove_tree(&deleting)?;
    }
    match std::fs::rename(&point, &deleting) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Removal::Absent),
        Err(e) => return Err(Error::io("rename for removal", &point, e)),
    }
    crate::util::fsx::fsync_dir(dir)?;
    drop(held);
    remove_tree(&deleting)?;
    Ok(Removal::Removed)
}

/// Who holds the lease file at `path`, for messages.
fn holders(path: &Path) -> String {
    let holders = crate::util::fsx::flock_holders(path);
    if holders.is_empty() { "another process".into() } else { holders.join(", ") }
}

/// A snapshot point held by a fork: it cannot be removed until this is dropped.
#[derive(Debug)]
pub struct Leased {
    /// The point, its record read again under the lease.
    pub found: Found,
    _lease: nix::fcntl::Flock<File>,
}

/// Takes the shared lease of snapshot point `found` for a fork. `None` when the point is gone,
/// or going: removed, or renamed for removal, before the lease was taken. A removal holding the
/// lease is waited for (it holds it while renaming the point away); one that keeps it longer than
/// [`REMOVAL_WAIT`] is reported as busy.
pub fn lease(found: &Found) -> Result<Option<Leased>> {
    let path = found.dir.join(LEASE);
    let deadline = Instant::now() + REMOVAL_WAIT;
    loop {
        let held = match crate::util::fsx::lock_shared(&path, 0o600) {
            Ok(held) => held,
            Err(_) if !found.dir.exists() => return Ok(None),
            Err(e) => return Err(e),
        };
        match held {
            Some(held) if crate::util::fsx::is_at(&held, &path) => {
                return match SnapshotPoint::load(&found.dir)? {
                    Some(point) if point.id == found.point.id => {
                        Ok(Some(Leased { found: Found { dir: found.dir.clone(), point }, _lease: held }))
                    }
                    _ => Ok(None),
                };
            }
            // Renamed for removal between the open and the flock.
            Some(_) => return Ok(None),
            None if Instant::now() > deadline => {
                return Err(Error::busy(
                    format!(
                        "snapshot point {} is being deleted: {} has held its lease {} for {} s",
                        found.point.id,
                        holders(&path),
                        path.display(),
                        REMOVAL_WAIT.as_secs()
                    ),
                    Some("let the deletion finish, then fork again".into()),
                ));
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_the_time_form() {
        let id = SnapshotPoint::id_at(chrono::DateTime::UNIX_EPOCH);
        assert_eq!(id, "19700101-000000");
        assert!(SnapshotPoint::is_id(&id));
        for bad in ["", "19700101-00000", "19700101_000000", "1970010a-000000", ".19700101-000000.partial"] {
            assert!(!SnapshotPoint::is_id(bad), "{bad}");
        }
    }

    /// A point with a record (and no clone) in `dir`.
    fn point(dir: &Path, id: &str) -> Found {
        let point = SnapshotPoint::sample(id, chrono::DateTime::UNIX_EPOCH);
        let point_dir = dir.join(id);
        std::fs::create_dir_all(point_dir.join("data")).unwrap();
        point.save(&point_dir).unwrap();
        Found { dir: point_dir, point }
    }

    #[test]
    fn a_leased_point_is_not_removed_and_a_removed_one_not_leased() {
        let dir = tempfile::tempdir().unwrap();
        let (older, newer) = (point(dir.path(), "20250101-000000"), point(dir.path(), "20250101-010000"));
        let leased = lease(&newer).unwrap().expect("a point is leased");
        assert_eq!(leased.found.point, newer.point);
        let Removal::InUse(holder) = remove_point(dir.path(), "20250101-010000").unwrap() else {
            panic!("a leased point was removed")
        };
        assert!(holder.contains(&format!("pid {}", std::process::id())), "{holder}");
        assert_eq!(list(dir.path(), 7).unwrap().0.len(), 2);
        drop(leased);

        assert_eq!(remove_point(dir.path(), "20250101-010000").unwrap(), Removal::Removed);
        assert_eq!(remove_point(dir.path(), "20250101-010000").unwrap(), Removal::Absent);
        assert!(lease(&newer).unwrap().is_none(), "a removed point was leased");
        assert!(!dir.path().join(".20250101-010000.deleting").exists());

        // A removal interrupted after its rename: neither listed nor leased, and cleaned up.
        std::fs::rename(&older.dir, dir.path().join(".20250101-000000.deleting")).unwrap();
        assert!(list(dir.path(), 7).unwrap().0.is_empty());
        assert!(lease(&older).unwrap().is_none());
        assert_eq!(remove_incomplete(dir.path()).unwrap(), 1);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
