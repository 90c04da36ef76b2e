//! The manifest of a backup set: every file as an ordered list of extents (zeros, or a slice of a
//! run stored in some set's pack), the WAL the set carries, and what the backup found. Putting the
//! manifest is the commit point of a set.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::pg::lsn::Lsn;
use crate::repo::label::{BackupType, SetLabel};
use crate::repo::object::FORMAT;
/// Largest run plaintext: 16 pages.
pub const MAX_RUN: usize = 128 * 1024;

/// Where a stored run is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRef {
    /// The set whose pack holds the run.
    pub set: SetLabel,
    /// Pack number within that set.
    pub pack: u32,
    /// Offset of the stored run in the pack.
    pub at: u64,
    /// Stored (encoded) length.
    pub stored: u32,
    /// Plaintext length of the whole run.
    pub run_len: u32,
    /// xxh3-64 of the run's plaintext.
    pub run_sum: u64,
    /// Where this extent starts inside the run's plaintext.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skip: u32,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// A byte range of a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    /// Offset in the file.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// The run holding the bytes; `None` for zeros.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunRef>,
}

impl Extent {
    /// Whether `next` continues this extent (same run, contiguous, or both zero) so they can merge.
    pub fn continued_by(&self, next: &Extent) -> bool {
        self.continues_at(next.offset, next.run.as_ref().map(|r| (r, r.skip)))
    }

    /// Whether bytes at `offset` that are `run`'s plaintext from `skip` on (zeros for `None`)
    /// continue this extent.
    pub fn continues_at(&self, offset: u64, run: Option<(&RunRef, u32)>) -> bool {
        if self.offset + self.len != offset {
            return false;
        }
        match (&self.run, run) {
            (None, None) => true,
            (Some(a), Some((b, skip))) => {
                a.set == b.set && a.pack == b.pack && a.at == b.at && u64::from(a.skip) + self.len == u64::from(skip)
            }
            _ => false,
        }
    }
}

/// One file of the set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the data directory (`base/5/16384`, `pg_tblspc/16400/PG_18_…/5/16500`).
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Extents in offset order, covering `0..size`.
    pub extents: Vec<Extent>,
}

impl FileEntry {
    /// The extent covering `offset`, by binary search.
    pub fn extent_at(&self, offset: u64) -> Option<&Extent> {
        let idx = self.extents.partition_point(|e| e.offset + e.len <= offset);
        self.extents.get(idx).filter(|e| e.offset <= offset)
    }
}

/// A directory to recreate (with its mode), including empty ones such as `pg_wal`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    /// Path relative to the data directory.
    pub path: String,
    /// Permission bits.
    pub mode: u32,
}

/// A tablespace: its OID and the location it had when backed up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TablespaceEntry {
    /// OID (the name under pg_tblspc).
    pub oid: u32,
    /// The directory the link pointed to.
    pub location: String,
}

/// A WAL segment stored in the set (`<set>/wal/<name>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalEntry {
    /// Segment file name.
    pub name: String,
    /// Plaintext size.
    pub size: u64,
    /// xxh3-64 of the plaintext.
    pub sum: u64,
    /// Bytes the segment's object takes in the repository.
    #[serde(default)]
    pub stored: u64,
}

/// A page whose checksum did not match, twice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadPage {
    /// File path relative to the data directory.
    pub path: String,
    /// Block number within the relation.
    pub block: u32,
    /// Checksum stored in the page.
    pub stored: u16,
    /// Checksum computed from its content.
    pub computed: u16,
}

/// Sizes and counts of a set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetStats {
    /// Bytes of all files (the database size).
    pub database_size: u64,
    /// Plaintext bytes this set stored itself (the rest it references).
    pub backup_size: u64,
    /// Bytes this set's objects take in the repository.
    pub repo_size: u64,
    /// Files in the set.
    pub files: u64,
    /// Pages examined.
    pub pages_total: u64,
    /// Pages stored by this set (changed since its prior, or all for a full).
    pub pages_changed: u64,
}

/// Everything about one backup set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version.
    pub format: u32,
    /// The set's label.
    pub label: SetLabel,
    /// Full, diff or incr.
    pub kind: BackupType,
    /// The set this one is based on.
    pub prior: Option<SetLabel>,
    /// Other sets whose packs this one reads, sorted.
    pub references: Vec<SetLabel>,
    /// Cluster identity.
    pub system_identifier: u64,
    /// Major version.
    pub pg_version: u32,
    /// Timeline at backup start.
    pub timeline: u32,
    /// Backup start LSN.
    pub start_lsn: Lsn,
    /// Backup stop LSN.
    pub stop_lsn: Lsn,
    /// WAL segment of the start.
    pub start_wal: String,
    /// WAL segment of the stop.
    pub stop_wal: String,
    /// Wall-clock start.
    pub start_time: DateTime<Utc>,
    /// Wall-clock stop.
    pub stop_time: DateTime<Utc>,
    /// The label file from pg_backup_stop.
    pub backup_label: String,
    /// The tablespace map from pg_backup_stop, if any tablespace.
    pub tablespace_map: Option<String>,
    /// Tablespaces.
    pub tablespaces: Vec<TablespaceEntry>,
    /// Whether the cluster has data checksums (pages were validated).
    pub checksums_enabled: bool,
    /// Whether a reflink snapshot was scanned (otherwise the live files, with pread).
    pub snapshot: bool,
    /// Directories.
    pub dirs: Vec<DirEntry>,
    /// Files, sorted by path.
    pub files: Vec<FileEntry>,
    /// WAL from start to stop.
    pub wal: Vec<WalEntry>,
    /// Pages that failed checksum validation.
    pub bad_pages: Vec<BadPage>,
    /// Sizes and counts.
    pub stats: SetStats,
    /// The configuration the cluster kept outside its data directory, stored in the set as data
    /// directory files so the set boots on its own; `None` when it lived inside.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<OutsideConfig>,
}

/// Where a set's configuration came from when it lived outside the data directory (Debian's
/// `/etc/postgresql/<version>/<cluster>`), and which of the set's files and directories it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutsideConfig {
    /// The directory it came from.
    pub origin: String,
    /// Its files, as paths in the data directory (postgresql.conf first).
    pub files: Vec<String>,
    /// Directories only it needs (an included directory).
    pub dirs: Vec<String>,
}

impl Manifest {
    /// The manifest as stored (JSON).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a manifest serializes: plain data, string keys")
    }

    /// Parses a stored manifest of `label`; `what` names it in errors. A manifest of a newer
    /// format, or one naming another set, is refused.
    pub fn from_json(json: &[u8], label: &SetLabel, what: &str) -> Result<Manifest> {
        let manifest: Manifest = serde_json::from_slice(json).map_err(|e| Error::invalid(what, e.to_string()))?;
        if manifest.format > u32::from(FORMAT) {
            return Err(Error::refused(
                format!("{what} has format {}; this pgfork reads formats up to {FORMAT}", manifest.format),
                Some("use the pgfork version that wrote the set, or a newer one".into()),
            ));
        }
        if &manifest.label != label {
            return Err(Error::invalid(what, format!("it names backup {}", manifest.label)));
        }
        Ok(manifest)
    }

    /// The WAL segment size of the cluster, from the segments the set carries.
    pub fn segment_size(&self) -> Option<u64> {
        self.wal.first().map(|w| w.size).filter(|s| s.is_power_of_two())
    }

    /// Looks a file up by path.
    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        self.files.binary_search_by(|f| f.path.as_str().cmp(path)).ok().map(|i| &self.files[i])
    }

    /// Every set this manifest needs (itself and its references).
    pub fn sets_needed(&self) -> Vec<SetLabel> {
        let mut sets = self.references.clone();
        sets.push(self.label.clone());
        sets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(set: &str, skip: u32) -> Option<RunRef> {
        Some(RunRef { set: set.parse().unwrap(), pack: 1, at: 0, stored: 10, run_len: 16384, run_sum: 1, skip })
    }

    #[test]
    fn extents_merge_only_when_contiguous_in_one_run() {
        let a = Extent { offset: 0, len: 8192, run: run("20250101-000000F", 0) };
        let b = Extent { offset: 8192, len: 8192, run: run("20250101-000000F", 8192) };
        let c = Extent { offset: 8192, len: 8192, run: run("20250101-000000F", 0) };
        assert!(a.continued_by(&b));
        assert!(!a.continued_by(&c));
        let z1 = Extent { offset: 16384, len: 8192, run: None };
        let z2 = Extent { offset: 24576, len: 8192, run: None };
        assert!(z1.continued_by(&z2) && !b.continued_by(&z2));
    }

    #[test]
    fn finds_the_extent_covering_an_offset() {
        let file = FileEntry {
            path: "base/5/1".into(),
            size: 24576,
            mode: 0o600,
            extents: vec![
                Extent { offset: 0, len: 16384, run: run("20250101-000000F", 0) },
                Extent { offset: 16384, len: 8192, run: None },
            ],
        };
        assert_eq!(file.extent_at(8192).unwrap().offset, 0);
        assert_eq!(file.extent_at(16384).unwrap().offset, 16384);
        assert!(file.extent_at(24576).is_none());
    }
}
