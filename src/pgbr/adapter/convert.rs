//! A pgBackRest set's manifest as a pgfork manifest: paths under the data directory, every file
//! one pack (its index in the pgBackRest manifest) cut into runs, the WAL from the archive, the
//! backup label read from the set itself. Sets pgfork cannot use (taken offline: no WAL range)
//! are refused by name.

use chrono::{DateTime, Utc};

use crate::error::{Error, Result};
use crate::pg::lsn::WalSegment;
use crate::pgbr::{PgbrManifest, PgbrStanza};
use crate::repo::label::SetLabel;
use crate::repo::manifest::{DirEntry, Extent, FileEntry, Manifest, RunRef, SetStats, TablespaceEntry, WalEntry};
use crate::repo::object::FORMAT;

/// Bytes of one run of a converted file: the unit the mount caches and restore slices.
pub const RUN: u64 = 1024 * 1024;

/// The pgBackRest directory of the data directory's files.
const PG_DATA: &str = "pg_data";

/// The path a pgBackRest manifest name has in a data directory: `pg_data/base/1` is `base/1`,
/// `pg_tblspc/16400/…` stays; `pg_data` itself is the root (`Some("")`).
pub fn data_path(name: &str) -> Option<&str> {
    if name == PG_DATA {
        return Some("");
    }
    name.strip_prefix("pg_data/").or_else(|| name.starts_with("pg_tblspc/").then_some(name))
}

/// Converts `m`, a manifest of `stanza`, with WAL segments of `segment_size` bytes.
pub fn convert(stanza: &PgbrStanza, m: &PgbrManifest, segment_size: u64) -> Result<Manifest> {
    let what = format!("pgBackRest set {}", m.label);
    let label: SetLabel = m.label.parse()?;
    let (Some(start_lsn), Some(stop_lsn), Some(start_wal), Some(stop_wal)) =
        (m.start_lsn, m.stop_lsn, m.archive_start.clone(), m.archive_stop.clone())
    else {
        return Err(Error::refused(
            format!("{what} was taken offline (it has no WAL range): pgfork reads online sets"),
            Some("restore this set with pgbackrest restore".into()),
        ));
    };
    let first = WalSegment::parse(&start_wal, segment_size)
        .ok_or_else(|| Error::invalid(&what, format!("archive start {start_wal:?} is not a WAL segment name")))?;
    let last = WalSegment::parse(&stop_wal, segment_size)
        .ok_or_else(|| Error::invalid(&what, format!("archive stop {stop_wal:?} is not a WAL segment name")))?;
    if last.timeline != first.timeline || last.number < first.number {
        return Err(Error::invalid(&what, format!("WAL range {start_wal}..{stop_wal} runs backwards")));
    }
    let wal = (first.number..=last.number)
        .map(|number| WalEntry {
            name: WalSegment { timeline: first.timeline, number }.file_name(segment_size),
            size: segment_size,
            sum: 0,
            stored: 0,
        })
        .collect();

    let read_text = |name: &str| -> Result<Option<String>> {
        let Some(file) = m.files.iter().find(|f| f.name == name) else { return Ok(None) };
        let bytes = stanza.read_file(m, file)?;
        String::from_utf8(bytes).map(Some).map_err(|_| Error::invalid(format!("{what}, {name}"), "not text"))
    };
    let backup_label = read_text("pg_data/backup_label")?
        .ok_or_else(|| Error::invalid(&what, "it has no backup_label: not an online backup pgfork can start"))?;
    let tablespace_map = read_text("pg_data/tablespace_map")?;

    let mut files = Vec::new();
    let mut stats = SetStats::default();
    for (index, file) in m.files.iter().enumerate() {
        let Some(path) = data_path(&file.name) else { continue };
        // Restore writes these from the manifest's own fields.
        if path == "backup_label" || path == "tablespace_map" {
            continue;
        }
        let pack = u32::try_from(index).map_err(|_| Error::invalid(&what, "too many files"))?;
        files.push(FileEntry {
            path: path.to_string(),
            size: file.size,
            mode: file.mode,
            extents: runs_of(&label, pack, file.size)?,
        });
        stats.database_size += file.size;
        stats.files += 1;
        if file.reference.is_none() {
            stats.backup_size += file.size;
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    stats.repo_size = stanza.set(&m.label).map_or(0, |s| s.repo_size_delta);
    stats.pages_total = stats.database_size / 8192;
    stats.pages_changed = stats.backup_size / 8192;

    let mut dirs: Vec<DirEntry> = m
        .paths
        .iter()
        .filter_map(|p| data_path(&p.name).filter(|path| !path.is_empty()).map(|path| (path, p.mode)))
        .map(|(path, mode)| DirEntry { path: path.to_string(), mode })
        .collect();
    for needed in ["pg_wal", "pg_tblspc"] {
        if !dirs.iter().any(|d| d.path == needed) {
            dirs.push(DirEntry { path: needed.into(), mode: 0o700 });
        }
    }
    dirs.sort_by(|a, b| a.path.cmp(&b.path));
    dirs.dedup_by(|a, b| a.path == b.path);

    let tablespaces =
        m.tablespaces.iter().map(|t| TablespaceEntry { oid: t.oid, location: t.location.clone() }).collect();
    let parse_set = |s: &String| s.parse::<SetLabel>();
    Ok(Manifest {
        format: u32::from(FORMAT),
        label,
        kind: m.backup_type,
        prior: m.prior.as_ref().map(parse_set).transpose()?,
        references: m.references.iter().filter(|r| **r != m.label).map(parse_set).collect::<Result<_>>()?,
        system_identifier: m.system_identifier,
        pg_version: m.pg_version,
        timeline: m.timeline.unwrap_or(first.timeline.0),
        start_lsn,
        stop_lsn,
        start_wal,
        stop_wal,
        start_time: time_of(m.start_time, &what)?,
        stop_time: time_of(m.stop_time, &what)?,
        backup_label,
        tablespace_map,
        tablespaces,
        checksums_enabled: m.options.checksum_page,
        snapshot: false,
        dirs,
        files,
        wal,
        bad_pages: Vec::new(),
        stats,
        config: None,
    })
}

/// A file of `size` bytes as extents of runs of at most [`RUN`] bytes of pack `pack`.
fn runs_of(label: &SetLabel, pack: u32, size: u64) -> Result<Vec<Extent>> {
    let mut extents = Vec::new();
    let mut at = 0;
    while at < size {
        let len = RUN.min(size - at);
        let len32 = u32::try_from(len).map_err(|_| Error::invalid("run", "too long"))?;
        extents.push(Extent {
            offset: at,
            len,
            run: Some(RunRef { set: label.clone(), pack, at, stored: len32, run_len: len32, run_sum: 0, skip: 0 }),
        });
        at += len;
    }
    Ok(extents)
}

fn time_of(seconds: i64, what: &str) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp(seconds, 0).ok_or_else(|| Error::invalid(what, format!("time {seconds} out of range")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_into_the_data_directory() {
        assert_eq!(data_path("pg_data"), Some(""));
        assert_eq!(data_path("pg_data/base/1/1259"), Some("base/1/1259"));
        assert_eq!(data_path("pg_tblspc/16400/PG_15_202209061/5/1"), Some("pg_tblspc/16400/PG_15_202209061/5/1"));
        assert_eq!(data_path("pg_datax/y"), None);
    }

    #[test]
    fn files_are_cut_into_runs() {
        let label: SetLabel = "20250101-000000F".parse().unwrap();
        let extents = runs_of(&label, 3, 2 * RUN + 5).unwrap();
        assert_eq!(extents.len(), 3);
        assert_eq!(extents[2].offset, 2 * RUN);
        assert_eq!(extents[2].len, 5);
        let run = extents[2].run.as_ref().unwrap();
        assert_eq!((run.pack, run.at, run.stored, run.skip), (3, 2 * RUN, 5, 0));
        assert!(runs_of(&label, 0, 0).unwrap().is_empty());
    }
}
