//! Snapshot points: reflink clones of a stanza's data directory taken inside pg_backup_start and
//! pg_backup_stop, with their backup_label and the WAL from start to stop, kept read-only beside
//! the cluster as starting points for forks at any later moment. Each lives in
//! `<snapshot_dir>/<id>/` — the clone in `data/` (tablespaces in place under `pg_tblspc`), its
//! record in `snapshot.json`, written last: a snapshot point exists only when its record does.
//! The clone's `PG_VERSION` is kept as `PG_VERSION.pgfork-snapshot`, so neither pg_ctl nor
//! postgres takes it for a data directory; a fork puts it back.

use std::path::{Path, PathBuf};

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

/// Removes what a killed snapshot left in `dir`: partial directories, and point directories without
/// a record. Returns how many.
pub fn remove_incomplete(dir: &Path) -> Result<u64> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(0) };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let partial = name.starts_with('.') && name.ends_with(".partial");
        let uncommitted = SnapshotPoint::is_id(&name) && !entry.path().join(RECORD).exists();
        if partial || uncommitted {
            remove_point(&entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Removes a snapshot point's directory: its record first, so from then on it is no snapshot
/// point whatever remains.
pub fn remove_point(dir: &Path) -> Result<()> {
    let _ = std::fs::remove_file(dir.join(RECORD));
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", dir, e)),
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
}
