//! Choosing the WAL a fork carries: for a hot fork every segment from the backup's start to its
//! stop, for a cold fork every segment from the last checkpoint's redo point; history files always.

use std::path::Path;

use crate::cow::TreePlan;
use crate::error::{Error, IoContext, Result};
use crate::pg::datadir::DataDir;
use crate::pg::lsn::{Lsn, WalSegment, is_history_file, is_segment_name};
use crate::pg::wal::{backup_segments, segment_size_in};

use crate::pg::backup_label::BackupLabel;

/// Adds the segments from the label's start to `stop` (and history files) to `plan`; returns how
/// many segments. A missing segment is an error naming it.
pub fn add_backup_wal(
    plan: &mut TreePlan,
    src: &DataDir,
    dst_data: &Path,
    label: &BackupLabel,
    stop: Lsn,
    segment_size: u64,
) -> Result<u64> {
    let names = backup_segments(label, stop, segment_size)?;
    let wal_dir = src.path().join("pg_wal");
    for name in &names {
        let path = wal_dir.join(name);
        if !path.exists() {
            return Err(Error::invalid(
                format!("WAL segment {name}"),
                format!(
                    "needed by the fork (backup {}..{stop}) but missing from {}; it was removed during the copy",
                    label.start_lsn,
                    wal_dir.display()
                ),
            ));
        }
        plan.add_file(&path, &dst_data.join("pg_wal").join(name))?;
    }
    add_history_files(plan, &wal_dir, dst_data)?;
    Ok(names.len() as u64)
}

/// Adds every segment at or after `redo`'s segment (and history files) to `plan`: what crash
/// recovery of a stopped cluster can need. Returns how many segments.
pub fn add_checkpoint_wal(plan: &mut TreePlan, src: &DataDir, dst_data: &Path, redo: Lsn) -> Result<u64> {
    let wal_dir = src.path().join("pg_wal");
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(&wal_dir).at("read directory", &wal_dir)? {
        let name = entry.at("read directory", &wal_dir)?.file_name().to_string_lossy().into_owned();
        if is_segment_name(&name) {
            segments.push(name);
        }
    }
    let segment_size = segment_size_in(&wal_dir);
    let Some(segment_size) = segment_size.filter(|s| s.is_power_of_two() && *s >= 1024 * 1024) else {
        return Err(Error::invalid(wal_dir.display().to_string(), "no WAL segment found"));
    };
    let first = redo.segment_no(segment_size);
    let mut count = 0;
    for name in segments {
        if WalSegment::parse(&name, segment_size).is_some_and(|s| s.number >= first) {
            plan.add_file(&wal_dir.join(&name), &dst_data.join("pg_wal").join(&name))?;
            count += 1;
        }
    }
    add_history_files(plan, &wal_dir, dst_data)?;
    Ok(count)
}

fn add_history_files(plan: &mut TreePlan, wal_dir: &Path, dst_data: &Path) -> Result<()> {
    for entry in std::fs::read_dir(wal_dir).at("read directory", wal_dir)? {
        let entry = entry.at("read directory", wal_dir)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_history_file(&name) {
            plan.add_file(&entry.path(), &dst_data.join("pg_wal").join(&name))?;
        }
    }
    Ok(())
}
