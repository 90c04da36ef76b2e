//! What pg_backup_stop returns: the backup label (its WAL start and timeline are parsed), and the
//! tablespace map, which a fork rewrites to point at its own tablespace copies.

use std::path::Path;

use crate::error::{Error, Result};
use crate::pg::lsn::{Lsn, TimelineId};

/// The fields of a backup label a fork needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupLabel {
    /// `START WAL LOCATION`.
    pub start_lsn: Lsn,
    /// The file named beside it.
    pub start_wal_file: String,
    /// `START TIMELINE`.
    pub timeline: TimelineId,
}

impl BackupLabel {
    /// Parses the label text written by pg_backup_stop.
    pub fn parse(text: &str) -> Result<BackupLabel> {
        let bad = |reason: &str| Error::invalid("backup label from pg_backup_stop", reason.to_string());
        let mut start = None;
        let mut timeline = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("START WAL LOCATION: ") {
                // "0/2000028 (file 000000010000000000000002)"
                let (lsn, file) = rest.split_once(" (file ").ok_or_else(|| bad("malformed START WAL LOCATION"))?;
                start = Some((lsn.parse::<Lsn>()?, file.trim_end_matches(')').to_string()));
            } else if let Some(rest) = line.strip_prefix("START TIMELINE: ") {
                timeline = Some(TimelineId(rest.trim().parse().map_err(|_| bad("malformed START TIMELINE"))?));
            }
        }
        let (start_lsn, start_wal_file) = start.ok_or_else(|| bad("no START WAL LOCATION line"))?;
        let timeline = timeline.ok_or_else(|| bad("no START TIMELINE line"))?;
        Ok(BackupLabel { start_lsn, start_wal_file, timeline })
    }
}

/// A `tablespace_map` that maps each tablespace OID to the fork's own copy.
pub fn tablespace_map(entries: &[(u32, &Path)]) -> Result<String> {
    let mut text = String::new();
    for (oid, path) in entries {
        let path = path.to_str().filter(|p| !p.contains(['\n', '\r'])).ok_or_else(|| {
            Error::refused(format!("tablespace path {} cannot be written to tablespace_map", path.display()), None)
        })?;
        text.push_str(&format!("{oid} {path}\n"));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LABEL: &str = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
        CHECKPOINT LOCATION: 0/2000060\nBACKUP METHOD: streamed\nBACKUP FROM: primary\n\
        START TIME: 2025-07-15 01:36:57 UTC\nLABEL: pgfork\nSTART TIMELINE: 1\n";

    #[test]
    fn parses_a_real_label() {
        let label = BackupLabel::parse(LABEL).unwrap();
        assert_eq!(label.start_lsn, Lsn(0x0200_0028));
        assert_eq!(label.start_wal_file, "000000010000000000000002");
        assert_eq!(label.timeline, TimelineId(1));
    }

    #[test]
    fn incomplete_labels_are_errors() {
        assert!(BackupLabel::parse("START TIMELINE: 1\n").is_err());
        assert!(BackupLabel::parse("START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n").is_err());
        assert!(BackupLabel::parse("START WAL LOCATION: zz (file x)\nSTART TIMELINE: 1\n").is_err());
    }

    #[test]
    fn writes_tablespace_maps() {
        let map = tablespace_map(&[(16400, Path::new("/pg/data1_tblspc/16400"))]).unwrap();
        assert_eq!(map, "16400 /pg/data1_tblspc/16400\n");
        assert!(tablespace_map(&[(1, Path::new("/a\nb"))]).is_err());
    }
}
