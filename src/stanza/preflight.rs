//! The WAL pre-flight of a recovery: before anything is written, walk the timeline path from the
//! set's start to the target (following the target timeline's history file) and require every
//! segment on the way to be archived — or carried by the set — and the target to lie within the
//! archive.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use chrono::{DateTime, Utc};

use crate::error::{Error, Result};
use crate::pg::lsn::{TimelineId, WalSegment};
use crate::repo::archive::WalFileKind;
use crate::repo::handle::Repo;
use crate::repo::manifest::Manifest;
use crate::stanza::recovery::{RecoveryRequest, Target, TargetTimeline, parse_history};
use crate::stanza::snapshots::SnapshotPoint;

/// Where a recovery starts: a backup set, or a snapshot point. Both carry the WAL from their start
/// to their stop.
#[derive(Debug, Clone)]
pub struct StartingPoint {
    /// How messages name it: `backup 20250715-013657F`, `snapshot point 20250715-013657`.
    pub name: String,
    /// Timeline at its start.
    pub timeline: u32,
    /// WAL segment of its start.
    pub start_wal: String,
    /// WAL segment of its stop.
    pub stop_wal: String,
    /// WAL segment size.
    pub segment_size: u64,
    /// Wall-clock stop: consistent from here.
    pub stop_time: DateTime<Utc>,
    /// The WAL segments it carries.
    pub wal: Vec<String>,
}

impl StartingPoint {
    /// A backup set as a starting point.
    pub fn of_set(set: &Manifest) -> Result<StartingPoint> {
        Ok(StartingPoint {
            name: format!("backup {}", set.label),
            timeline: set.timeline,
            start_wal: set.start_wal.clone(),
            stop_wal: set.stop_wal.clone(),
            segment_size: set
                .segment_size()
                .ok_or_else(|| Error::invalid(format!("backup {}", set.label), "carries no WAL segment"))?,
            stop_time: set.stop_time,
            wal: set.wal.iter().map(|w| w.name.clone()).collect(),
        })
    }

    /// A snapshot point as a starting point.
    pub fn of_snapshot(point: &SnapshotPoint) -> StartingPoint {
        StartingPoint {
            name: format!("snapshot point {}", point.id),
            timeline: point.timeline,
            start_wal: point.start_wal.clone(),
            stop_wal: point.stop_wal.clone(),
            segment_size: point.segment_size,
            stop_time: point.stop_time,
            wal: point.wal.clone(),
        }
    }
}

/// One timeline of the path: segments `first..=last` (`None`: up to the target or the archive's
/// end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Leg {
    timeline: u32,
    first: u64,
    last: Option<u64>,
}

/// What the walk found.
#[derive(Debug, Clone)]
pub struct Walk {
    /// (timeline, first segment, last segment) of each leg.
    pub timelines: Vec<(u32, String, String)>,
    /// The last segment recovery may read.
    pub last_name: String,
}

/// Archived segments per timeline, by number, with when each was archived.
type Archived = BTreeMap<TimelineId, BTreeMap<u64, SystemTime>>;

/// Walks and checks the WAL from `set` to `request`'s target.
pub fn walk(repo: &Repo, set: &StartingPoint, request: &RecoveryRequest) -> Result<Walk> {
    let size = set.segment_size;
    let start = WalSegment::parse(&set.start_wal, size)
        .ok_or_else(|| Error::invalid(&set.name, format!("bad start WAL name {:?}", set.start_wal)))?;
    let mut archived: Archived = BTreeMap::new();
    for (timeline, files) in repo.archive().list()? {
        let segments = archived.entry(timeline).or_default();
        for file in files.iter().filter(|f| f.kind == WalFileKind::Segment) {
            if let Some(segment) = WalSegment::parse(&file.name, size) {
                segments.insert(segment.number, file.modified);
            }
        }
    }
    let legs = timeline_path(repo, set, request, &archived, start.number, size)?;
    let target_segment = match &request.target {
        Target::Lsn(lsn) => Some(lsn.segment_no(size)),
        _ => None,
    };
    // The set's own WAL counts as present: it travels with the set.
    let in_set: BTreeSet<&str> = set.wal.iter().map(String::as_str).collect();
    let mut walk = Walk { timelines: Vec::new(), last_name: set.stop_wal.clone() };
    let mut newest_archived = None;
    for (i, leg) in legs.iter().enumerate() {
        let tli = TimelineId(leg.timeline);
        let name = |number: u64| WalSegment { timeline: tli, number }.file_name(size);
        let have = archived.get(&tli);
        let end = match leg.last {
            Some(last) => last,
            None => {
                let newest = have.and_then(|h| h.keys().next_back().copied()).unwrap_or(0);
                let max = newest.max(start.number.saturating_sub(1));
                match target_segment {
                    Some(segment) if segment > max => {
                        return Err(Error::refused(
                            format!(
                                "target LSN is past the end of the archive on timeline {tli} (newest segment {})",
                                name(max)
                            ),
                            Some("wait for the segment holding it to be archived (or run pg_switch_wal())".into()),
                        ));
                    }
                    Some(segment) => segment,
                    None => max,
                }
            }
        };
        for number in leg.first..=end {
            if !have.is_some_and(|h| h.contains_key(&number)) && !in_set.contains(name(number).as_str()) {
                return Err(Error::refused(
                    format!(
                        "WAL segment {} is missing from the archive of stanza {}: recovery from {} cannot pass it",
                        name(number),
                        repo.name(),
                        set.name
                    ),
                    Some("choose a later backup with --set, or a target before this segment".into()),
                ));
            }
        }
        walk.last_name = name(end.max(leg.first));
        if i == legs.len() - 1 {
            newest_archived = have.and_then(|h| h.get(&end.max(leg.first)).copied());
        }
        walk.timelines.push((leg.timeline, name(leg.first), walk.last_name.clone()));
    }
    check_time_reachable(request, set, newest_archived, &walk.last_name)?;
    Ok(walk)
}

/// The timeline path: the set's timeline, then each switch recorded in the target timeline's
/// history, ending on the target timeline.
fn timeline_path(
    repo: &Repo,
    set: &StartingPoint,
    request: &RecoveryRequest,
    archived: &Archived,
    start: u64,
    size: u64,
) -> Result<Vec<Leg>> {
    let target_tli = match request.timeline {
        TargetTimeline::Current => set.timeline,
        TargetTimeline::Id(n) => n,
        TargetTimeline::Latest => archived.keys().map(|t| t.0).max().unwrap_or(set.timeline).max(set.timeline),
    };
    if target_tli == set.timeline {
        return Ok(vec![Leg { timeline: set.timeline, first: start, last: None }]);
    }
    let history_name = format!("{target_tli:08X}.history");
    let history = repo.archive().get(&history_name)?.ok_or_else(|| {
        Error::refused(
            format!("timeline {target_tli} has no history file {history_name} in the archive"),
            Some("pass --target-timeline current, or the timeline the backup is on".into()),
        )
    })?;
    let mut legs = Vec::new();
    let mut from = start;
    let mut on_path = false;
    for (tli, switch) in parse_history(&String::from_utf8_lossy(&history)) {
        on_path |= tli == set.timeline;
        if !on_path {
            continue;
        }
        let switch_segment = switch.segment_no(size);
        if switch_segment < from {
            return Err(Error::refused(
                format!(
                    "{} started after timeline {tli} ended at {switch}: it is not on the way to timeline {target_tli}",
                    set.name
                ),
                None,
            ));
        }
        legs.push(Leg { timeline: tli, first: from, last: Some(switch_segment.saturating_sub(1)) });
        from = switch_segment;
    }
    if !on_path {
        return Err(Error::refused(
            format!("timeline {target_tli} does not descend from timeline {} of {}", set.timeline, set.name),
            None,
        ));
    }
    legs.push(Leg { timeline: target_tli, first: from, last: None });
    Ok(legs)
}

/// Refuses a time target past the newest WAL: the time the last segment on the path was archived
/// or, when that segment is only in the set (nothing after it was archived), the set's stop time.
fn check_time_reachable(
    request: &RecoveryRequest,
    set: &StartingPoint,
    newest_archived: Option<SystemTime>,
    last_name: &str,
) -> Result<()> {
    let Target::Time(target, text) = &request.target else { return Ok(()) };
    // The set carries the WAL to its own stop, whatever the archive holds.
    let (reach, source): (DateTime<Utc>, String) = match newest_archived.map(DateTime::<Utc>::from) {
        Some(at) if at > set.stop_time => (at, format!("its newest segment {last_name} was archived at")),
        _ => (set.stop_time, format!("nothing after {} was archived; it ends at", set.name)),
    };
    if *target > reach {
        return Err(Error::refused(
            format!("target time {text} is after the end of the archive: {source} {reach}"),
            Some("wait for the WAL holding the target to be archived (or run pg_switch_wal())".into()),
        ));
    }
    Ok(())
}
