//! Point-in-time recovery: the target and how to reach it. Chooses the backup set, checks before
//! anything is written that the WAL from the set's start to the target is archived and continuous
//! (following timeline history), and produces the settings that make PostgreSQL recover there.

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::pg::lsn::Lsn;
use crate::repo::handle::Repo;
use crate::repo::label::SetLabel;
use crate::repo::manifest::Manifest;
use crate::stanza::preflight::StartingPoint;
use crate::stanza::{Stanza, preflight};

/// Where recovery stops.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    /// The end of the archived WAL.
    Default,
    /// The backup set's consistent point.
    Immediate,
    /// A time (PostgreSQL's text is kept for the setting).
    Time(DateTime<FixedOffset>, String),
    /// A named restore point (pg_create_restore_point).
    Name(String),
    /// An LSN.
    Lsn(Lsn),
    /// A transaction id.
    Xid(u64),
}

/// What the server does at the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TargetAction {
    /// Pause (hot standby; promote by hand).
    Pause,
    /// Promote and open for writes.
    Promote,
    /// Shut down.
    Shutdown,
}

/// Which timeline recovery follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TargetTimeline {
    /// The newest in the archive.
    Latest,
    /// The backup's.
    Current,
    /// This one.
    Id(u32),
}

impl std::str::FromStr for TargetTimeline {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "latest" => Ok(TargetTimeline::Latest),
            "current" => Ok(TargetTimeline::Current),
            n => n
                .parse()
                .map(TargetTimeline::Id)
                .map_err(|_| Error::invalid(format!("target timeline {s:?}"), "expected latest, current or a number")),
        }
    }
}

impl std::fmt::Display for TargetTimeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetTimeline::Latest => f.write_str("latest"),
            TargetTimeline::Current => f.write_str("current"),
            TargetTimeline::Id(n) => write!(f, "{n}"),
        }
    }
}

/// A recovery request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecoveryRequest {
    /// Where to stop.
    pub target: Target,
    /// Stop just before the target instead of after it.
    pub exclusive: bool,
    /// What to do there.
    pub action: TargetAction,
    /// Which timeline.
    pub timeline: TargetTimeline,
}

/// Parses a recovery target time; a time zone is required (the set is chosen by absolute time).
pub fn parse_time(text: &str) -> Result<Target> {
    let trimmed = text.trim();
    let formats =
        ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%.f%:z", "%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.f%:z"];
    let normalized = trimmed.replace(" UTC", "+00").replace('Z', "+00");
    for format in formats {
        if let Ok(time) = DateTime::parse_from_str(&normalized, format) {
            return Ok(Target::Time(time, trimmed.to_string()));
        }
    }
    Err(Error::refused(
        format!("cannot read the target time {text:?}"),
        Some("write it with a time zone, as PostgreSQL prints it: \"2025-01-01 12:00:00+08\"".into()),
    ))
}

/// The plan of a recovery: which set, which WAL, which settings.
#[derive(Debug, Clone, Serialize)]
pub struct RecoveryPlan {
    /// Where recovery starts: `backup <label>` or `snapshot point <id>`.
    pub from: String,
    /// First WAL segment recovery reads (the set's start).
    pub wal_from: String,
    /// Last archived segment recovery may read on the path to the target.
    pub wal_to: String,
    /// Timeline path followed: (timeline, first segment, last segment).
    pub timelines: Vec<(u32, String, String)>,
    /// Settings written into postgresql.auto.conf.
    pub settings: Vec<(String, String)>,
}

/// Picks the set for `request` (or checks the named one).
pub fn choose_set(manifests: &[Manifest], named: Option<&SetLabel>, target: &Target) -> Result<SetLabel> {
    if let Some(label) = named {
        let manifest = manifests
            .iter()
            .find(|m| &m.label == label)
            .ok_or_else(|| Error::refused(format!("backup {label} does not exist"), None))?;
        match target {
            Target::Time(t, text) if *t < manifest.stop_time => {
                return Err(Error::refused(
                    format!("target time {text} is before backup {label} reached consistency ({})", manifest.stop_time),
                    Some("choose an earlier backup with --set, or let pgfork choose".into()),
                ));
            }
            Target::Lsn(lsn) if *lsn < manifest.stop_lsn => {
                return Err(Error::refused(
                    format!("target LSN {lsn} is before backup {label} reached consistency ({})", manifest.stop_lsn),
                    None,
                ));
            }
            _ => {}
        }
        return Ok(label.clone());
    }
    let newest = manifests.last().ok_or_else(|| Error::refused("the stanza has no backup", None))?;
    let chosen = match target {
        Target::Time(t, text) => manifests.iter().rev().find(|m| m.stop_time <= *t).ok_or_else(|| {
            Error::refused(
                format!(
                    "target time {text} is before the earliest backup's consistent point ({})",
                    manifests[0].stop_time
                ),
                None,
            )
        })?,
        Target::Lsn(lsn) => manifests.iter().rev().find(|m| m.stop_lsn <= *lsn).ok_or_else(|| {
            Error::refused(
                format!(
                    "target LSN {lsn} is before the earliest backup's consistent point ({})",
                    manifests[0].stop_lsn
                ),
                None,
            )
        })?,
        _ => newest,
    };
    Ok(chosen.label.clone())
}

/// The set to restore or mount and, with a recovery request, its checked plan: for a request the
/// set [`choose_set`] picks (or `named`), else `named` or the newest set.
pub fn set_and_plan(
    stanza: &Stanza,
    named: Option<&SetLabel>,
    request: Option<&RecoveryRequest>,
) -> Result<(Manifest, Option<RecoveryPlan>)> {
    let Some(request) = request else {
        let label = match named {
            Some(label) => label.clone(),
            None => stanza
                .labels()?
                .pop()
                .ok_or_else(|| Error::refused(format!("stanza {} has no backup", stanza.name()), None))?,
        };
        return Ok((stanza.manifest(&label)?, None));
    };
    // A named set needs only its own manifest; otherwise every readable one is a candidate (a
    // damaged, unrelated set must not block recovery).
    let mut manifests = match named {
        Some(label) => vec![stanza.manifest(label)?],
        None => stanza.readable_manifests()?.manifests,
    };
    let label = choose_set(&manifests, named, &request.target)?;
    let manifest = match manifests.iter().position(|m| m.label == label) {
        Some(chosen) => manifests.swap_remove(chosen),
        None => stanza.manifest(&label)?,
    };
    let command = restore_command(&stanza.config);
    let plan = plan(stanza, &StartingPoint::of_set(&manifest)?, request, &command)?;
    Ok((manifest, Some(plan)))
}

/// Checks the archive holds every segment recovery needs from `set` to the target, and returns the
/// plan. Fails naming the first missing segment, or when the target lies past the archive's end.
pub fn plan(
    repo: &Repo,
    start: &StartingPoint,
    request: &RecoveryRequest,
    restore_command: &str,
) -> Result<RecoveryPlan> {
    let settings = settings(request, restore_command);
    if request.target == Target::Immediate {
        return Ok(RecoveryPlan {
            from: start.name.clone(),
            wal_from: start.start_wal.clone(),
            wal_to: start.stop_wal.clone(),
            timelines: vec![(start.timeline, start.start_wal.clone(), start.stop_wal.clone())],
            settings,
        });
    }
    let walk = preflight::walk(repo, start, request)?;
    Ok(RecoveryPlan {
        from: start.name.clone(),
        wal_from: start.start_wal.clone(),
        wal_to: walk.last_name,
        timelines: walk.timelines,
        settings,
    })
}

/// The parameters that each set a recovery target (at most one may be set).
pub const RECOVERY_TARGETS: &[&str] =
    &["recovery_target", "recovery_target_lsn", "recovery_target_name", "recovery_target_time", "recovery_target_xid"];

/// The recovery settings for postgresql.auto.conf.
pub fn settings(request: &RecoveryRequest, restore_command: &str) -> Vec<(String, String)> {
    let mut out = vec![("restore_command".to_string(), restore_command.to_string())];
    let target = match &request.target {
        Target::Default => None,
        Target::Immediate => Some(("recovery_target", "immediate".to_string())),
        Target::Time(_, text) => Some(("recovery_target_time", text.clone())),
        Target::Name(name) => Some(("recovery_target_name", name.clone())),
        Target::Lsn(lsn) => Some(("recovery_target_lsn", lsn.to_string())),
        Target::Xid(xid) => Some(("recovery_target_xid", xid.to_string())),
    };
    // Clear every other target so an old one in the restored configuration cannot combine with ours;
    // the clearing lines come first: PostgreSQL refuses an empty target set after a non-empty one.
    for &name in RECOVERY_TARGETS {
        if target.as_ref().is_none_or(|(n, _)| *n != name) {
            out.push((name.to_string(), String::new()));
        }
    }
    if let Some((name, value)) = &target {
        out.push((name.to_string(), value.clone()));
        // Immediate and restore-point targets have no exclusive form.
        let inclusive = !request.exclusive || matches!(request.target, Target::Immediate | Target::Name(_));
        out.push(("recovery_target_inclusive".into(), inclusive.to_string()));
        out.push(("recovery_target_action".into(), format!("{:?}", request.action).to_lowercase()));
    }
    out.push(("recovery_target_timeline".into(), request.timeline.to_string()));
    out.push(("archive_mode".into(), "off".into()));
    out
}

/// `(parent timeline, switch LSN)` entries of a timeline history file.
pub fn parse_history(text: &str) -> Vec<(u32, Lsn)> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let tli = fields.next()?.parse().ok()?;
            let lsn = fields.next()?.parse().ok()?;
            Some((tli, lsn))
        })
        .collect()
}

/// The postgresql.auto.conf changes of a restored set: the comment above them and the settings.
/// Without a plan the set stops at its consistent point with archiving off, so the copy cannot
/// write into the repository.
pub fn restored_settings(label: &SetLabel, plan: Option<&RecoveryPlan>) -> (String, Vec<(String, String)>) {
    match plan {
        Some(plan) => (format!("pgfork: recovery from backup {label}"), plan.settings.clone()),
        None => (
            format!("pgfork: restored from backup {label}; archiving off until checked"),
            vec![("archive_mode".to_string(), "off".to_string())],
        ),
    }
}

/// The restore_command that fetches from this configuration's stanza: from the repository the
/// restore reads when the stanza has several (every one holds the same WAL, and one that cannot be
/// reached must not stop recovery from another), reading the secrets from the configuration's
/// secrets file when it names one (a server pgfork starts has none in its environment).
pub fn restore_command(resolved: &crate::config::Resolved) -> String {
    let exe = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "pgfork".into());
    let config = resolved.config_path.as_ref().map(|c| format!(" --config \"{}\"", c.display())).unwrap_or_default();
    let repo = if resolved.repos.len() > 1 { format!(" --repo \"{}\"", resolved.repo_name) } else { String::new() };
    let secrets = resolved.secrets_file.as_ref().map(|f| format!(" --secrets \"{}\"", f.display())).unwrap_or_default();
    format!("\"{exe}\" archive-get %f \"%p\" --stanza \"{}\"{config}{repo}{secrets}", resolved.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    use chrono::Utc;

    #[test]
    fn parses_target_times_with_zones() {
        for text in [
            "2025-01-01 12:00:00+08",
            "2025-01-01 04:00:00.123456+00",
            "2025-01-01T04:00:00Z",
            "2025-01-01 04:00:00 UTC",
            "2025-01-01 12:00:00+08:00",
        ] {
            let Target::Time(t, _) = parse_time(text).unwrap() else { panic!() };
            assert_eq!(t.with_timezone(&Utc).format("%Y-%m-%d %H").to_string(), "2025-01-01 04", "{text}");
        }
        assert!(parse_time("2025-01-01 12:00:00").is_err(), "a time without zone is ambiguous");
    }

    #[test]
    fn reads_history_files() {
        let text = "1\t0/3000000\tno recovery target specified\n\n2\t0/5000A0\tat restore point \"x\"\n";
        assert_eq!(parse_history(text), vec![(1, Lsn(0x300_0000)), (2, Lsn(0x50_00A0))]);
    }

    #[test]
    fn settings_clear_other_targets_and_turn_archiving_off() {
        let request = RecoveryRequest {
            target: Target::Xid(1234),
            exclusive: true,
            action: TargetAction::Promote,
            timeline: TargetTimeline::Latest,
        };
        let s = settings(&request, "cmd");
        let get = |n: &str| s.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(get("recovery_target_xid"), Some("1234"));
        assert_eq!(get("recovery_target_time"), Some(""));
        assert_eq!(get("recovery_target_inclusive"), Some("false"));
        assert_eq!(get("recovery_target_action"), Some("promote"));
        assert_eq!(get("archive_mode"), Some("off"));
        let default = RecoveryRequest { target: Target::Default, ..request };
        assert!(settings(&default, "cmd").iter().all(|(k, _)| k != "recovery_target_action"));
    }
}
