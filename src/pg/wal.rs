//! Which WAL a backup needs: the segment size of a server, and the segments from a backup's start
//! to its stop.

use crate::error::{Error, Result};
use crate::pg::backup_label::BackupLabel;
use crate::pg::lsn::{Lsn, WalSegment};
use crate::pg::session::Session;

/// The WAL segment size of the cluster whose pg_wal is `wal_dir`: the size of any segment in it
/// (PostgreSQL creates them all at full size); `None` without one.
pub fn segment_size_in(wal_dir: &std::path::Path) -> Option<u64> {
    std::fs::read_dir(wal_dir).ok()?.flatten().find_map(|e| {
        crate::pg::lsn::is_segment_name(&e.file_name().to_string_lossy())
            .then(|| e.metadata().ok().map(|m| m.len()))
            .flatten()
    })
}

/// The server's WAL segment size in bytes.
pub fn segment_size(session: &Session) -> Result<u64> {
    let row = session.query_one(
        "SELECT setting::bigint, coalesce(unit, '') FROM pg_settings WHERE name = 'wal_segment_size'",
        &[],
    )?;
    let (value, unit): (i64, String) = (row.get(0), row.get(1));
    let factor = match unit.as_str() {
        "B" | "" => 1,
        "8kB" => 8192,
        "MB" => 1024 * 1024,
        other => return Err(Error::invalid("wal_segment_size", format!("unexpected unit {other:?}"))),
    };
    Ok(value as u64 * factor)
}

/// The segment file names from the label's start segment to the segment holding `stop`.
pub fn backup_segments(label: &BackupLabel, stop: Lsn, segment_size: u64) -> Result<Vec<String>> {
    let first = WalSegment::parse(&label.start_wal_file, segment_size)
        .ok_or_else(|| Error::invalid("backup label", format!("bad WAL file name {}", label.start_wal_file)))?;
    let last = stop.segment_no(segment_size);
    if last < first.number {
        return Err(Error::invalid("backup stop", format!("stop {stop} precedes start {}", label.start_lsn)));
    }
    Ok((first.number..=last)
        .map(|number| WalSegment { timeline: label.timeline, number }.file_name(segment_size))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::lsn::TimelineId;

    #[test]
    fn lists_segments_from_start_to_stop() {
        let label = BackupLabel {
            start_lsn: Lsn(0x0200_0028),
            start_wal_file: "000000010000000000000002".into(),
            timeline: TimelineId(1),
        };
        let seg = 16 * 1024 * 1024;
        assert_eq!(
            backup_segments(&label, Lsn(0x0400_0100), seg).unwrap(),
            vec!["000000010000000000000002", "000000010000000000000003", "000000010000000000000004"]
        );
        assert!(backup_segments(&label, Lsn(0x0100_0000), seg).is_err());
    }
}
