//! `expire`: removing backup sets by the repository's retention (full by count or by time, diff by
//! count) or one set on request — never a set that a kept set depends on.

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::config::{RepoConfig, Resolved, RetentionType};
use crate::error::{Error, Result};
use crate::ops::identity::become_repository_user;
use crate::pg::lsn::WalSegment;
use crate::repo::archive::WalFileKind;
use crate::repo::handle::Readable;
use crate::repo::label::{BackupType, SetLabel};
use crate::repo::manifest::Manifest;
use crate::stanza::Stanza;

/// What expire removed (or would remove).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ExpireReport {
    /// Sets removed.
    pub removed: Vec<SetLabel>,
    /// Bytes freed in the repository.
    pub freed_bytes: u64,
    /// Sets kept.
    pub kept: Vec<SetLabel>,
    /// Whether nothing was actually removed.
    pub dry_run: bool,
    /// Archived WAL files removed because no kept set needs them.
    pub wal_removed: u64,
    /// Sets whose manifest cannot be read: kept, and named here.
    pub unreadable: Vec<String>,
    /// Sets retention would remove but a mount or verify is using: kept, with who uses them.
    pub in_use: Vec<String>,
    /// Snapshot points removed by the stanza's snapshot retention.
    pub snapshot_points_removed: Vec<String>,
    /// Snapshot points retention would remove but a fork holds: kept this time, with who.
    pub snapshot_points_in_use: Vec<String>,
}

/// Runs expire for the stanza: by retention, or removing `set` and the sets that depend on it.
pub fn expire(resolved: &Resolved, set: Option<&SetLabel>, dry_run: bool) -> Result<ExpireReport> {
    resolved.repo.refuse_write(&resolved.repo_name, "expire")?;
    become_repository_user(resolved)?;
    let repo = Stanza::open(resolved)?;
    let _lock = repo.lock("expire")?;
    repo.remove_uncommitted()?;
    let Some(label) = set else { return apply_retention(&repo, Utc::now(), dry_run) };
    let readable = repo.readable_manifests()?;
    if !readable.manifests.iter().any(|m| &m.label == label) {
        return Err(Error::refused(format!("backup {label} does not exist in stanza {}", repo.name()), None));
    }
    let remove = with_dependents(&readable.manifests, label);
    let leases = repo.leases()?;
    if let Some((set, lease)) =
        remove.iter().find_map(|set| leases.iter().find(|l| l.sets.contains(set)).map(|l| (set, l)))
    {
        return Err(Error::refused(
            format!("backup {set} is in use by {}", lease.holder()),
            Some("wait for it to finish (or unmount it), then expire again".into()),
        ));
    }
    remove_sets(&repo, &readable, &remove, dry_run)
}

/// Applies the retention policy (the caller holds the lock): never a set that a kept set depends
/// on, that may depend on an unreadable one, or that a mount or verify is using.
pub fn apply_retention(repo: &Stanza, now: DateTime<Utc>, dry_run: bool) -> Result<ExpireReport> {
    let readable = repo.readable_manifests()?;
    let mut remove = retention_victims(&readable.manifests, &repo.config.repo, now);
    readable.protect(&mut remove);
    let in_use = spare_leased(repo, &mut remove)?;
    let mut report = remove_sets(repo, &readable, &remove, dry_run)?;
    report.in_use = in_use;
    if !dry_run {
        let dir = crate::stanza::snapshots::snapshot_dir(&repo.config);
        let system_identifier = repo.record().current.system_identifier;
        let retention = crate::ops::snapshot::apply_retention(&repo.config, &dir, system_identifier, now)?;
        report.snapshot_points_removed = retention.removed;
        report.snapshot_points_in_use = retention.in_use;
    }
    Ok(report)
}

/// Takes the sets a mount or verify holds a lease on out of `remove`; returns them with their user.
fn spare_leased(repo: &Stanza, remove: &mut BTreeSet<SetLabel>) -> Result<Vec<String>> {
    let mut in_use = Vec::new();
    for lease in repo.leases()? {
        for set in &lease.sets {
            if remove.remove(set) {
                in_use.push(format!("{set}: in use by {}", lease.holder()));
            }
        }
    }
    Ok(in_use)
}

fn remove_sets(repo: &Stanza, readable: &Readable, remove: &BTreeSet<SetLabel>, dry_run: bool) -> Result<ExpireReport> {
    let manifests = &readable.manifests;
    let mut report = ExpireReport { dry_run, ..Default::default() };
    for manifest in manifests {
        if remove.contains(&manifest.label) {
            report.freed_bytes += repo.storage().size(&repo.layout().set(&manifest.label))?;
            if !dry_run {
                repo.remove_set(&manifest.label)?;
            }
            report.removed.push(manifest.label.clone());
        } else {
            report.kept.push(manifest.label.clone());
        }
    }
    report.unreadable = readable.unreadable.iter().map(|(l, e)| format!("{l}: {e}")).collect();
    // A set whose manifest cannot be read may need older WAL than any readable one: keep it all.
    let oldest_kept = manifests.iter().find(|m| !remove.contains(&m.label));
    if let Some(oldest) = oldest_kept.filter(|_| readable.unreadable.is_empty()) {
        report.wal_removed = expire_wal(repo, oldest, dry_run)?;
    }
    Ok(report)
}

/// Removes archived WAL older than the start of the oldest kept set (history files stay).
fn expire_wal(repo: &Stanza, oldest: &Manifest, dry_run: bool) -> Result<u64> {
    let Some(size) = oldest.segment_size() else { return Ok(0) };
    let Some(start) = WalSegment::parse(&oldest.start_wal, size) else { return Ok(0) };
    let archive = repo.archive();
    let mut removed = 0;
    for files in archive.list()?.values() {
        for file in files.iter().filter(|f| f.kind != WalFileKind::History) {
            let segment = file.name.get(..24).and_then(|base| WalSegment::parse(base, size));
            if segment.is_some_and(|s| s.number < start.number) {
                if !dry_run {
                    archive.delete(&file.name)?;
                }
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// The sets retention removes: everything not kept, where kept means the fulls within retention,
/// the newest `retention_diff` diffs of kept fulls, incrs whose prior is kept, and whatever a kept
/// set references.
pub fn retention_victims(manifests: &[Manifest], settings: &RepoConfig, now: DateTime<Utc>) -> BTreeSet<SetLabel> {
    let fulls: Vec<&Manifest> = manifests.iter().filter(|m| m.kind == BackupType::Full).collect();
    let mut kept: BTreeSet<SetLabel> = BTreeSet::new();
    match settings.retention_full_type {
        RetentionType::Count => {
            let n = settings.retention_full.max(1) as usize;
            kept.extend(fulls.iter().rev().take(n).map(|m| m.label.clone()));
        }
        RetentionType::Time => {
            let cutoff = now - Duration::days(i64::from(settings.retention_full));
            kept.extend(fulls.iter().filter(|m| m.stop_time >= cutoff).map(|m| m.label.clone()));
            // The newest full before the window is what restores to the window's first moments.
            if let Some(anchor) = fulls.iter().rev().find(|m| m.stop_time < cutoff) {
                kept.insert(anchor.label.clone());
            }
        }
    }
    let diffs: Vec<&Manifest> = manifests
        .iter()
        .filter(|m| m.kind == BackupType::Diff && kept.iter().any(|k| k.as_str() == m.label.full_part()))
        .collect();
    let keep_diffs = settings.retention_diff.map(|n| n as usize).unwrap_or(diffs.len());
    kept.extend(diffs.iter().rev().take(keep_diffs).map(|m| m.label.clone()));
    for m in manifests.iter().filter(|m| m.kind == BackupType::Incr) {
        if m.prior.as_ref().is_some_and(|p| kept.contains(p)) {
            kept.insert(m.label.clone());
        }
    }
    // Dependencies of kept sets stay, whatever the policy says.
    let mut changed = true;
    while changed {
        changed = false;
        for m in manifests {
            if kept.contains(&m.label) {
                for dep in m.references.iter().chain(m.prior.iter()) {
                    changed |= kept.insert(dep.clone());
                }
            }
        }
    }
    manifests.iter().map(|m| m.label.clone()).filter(|l| !kept.contains(l)).collect()
}

/// `label` and every set that depends on it, directly or not.
pub fn with_dependents(manifests: &[Manifest], label: &SetLabel) -> BTreeSet<SetLabel> {
    let mut remove: BTreeSet<SetLabel> = [label.clone()].into();
    let mut changed = true;
    while changed {
        changed = false;
        for m in manifests {
            if !remove.contains(&m.label) && m.references.iter().chain(m.prior.iter()).any(|d| remove.contains(d)) {
                changed |= remove.insert(m.label.clone());
            }
        }
    }
    remove
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::lsn::Lsn;
    use crate::repo::manifest::SetStats;

    fn manifest(label: &str, prior: Option<&str>, days_ago: i64) -> Manifest {
        let label: SetLabel = label.parse().unwrap();
        let prior: Option<SetLabel> = prior.map(|p| p.parse().unwrap());
        let time = Utc::now() - Duration::days(days_ago);
        Manifest {
            format: 2,
            kind: label.kind(),
            references: prior.iter().cloned().collect(),
            label,
            prior,
            system_identifier: 1,
            pg_version: 18,
            timeline: 1,
            start_lsn: Lsn(0),
            stop_lsn: Lsn(0),
            start_wal: String::new(),
            stop_wal: String::new(),
            start_time: time,
            stop_time: time,
            backup_label: String::new(),
            tablespace_map: None,
            tablespaces: vec![],
            checksums_enabled: true,
            snapshot: true,
            dirs: vec![],
            files: vec![],
            wal: vec![],
            bad_pages: vec![],
            stats: SetStats::default(),
            config: None,
        }
    }

    fn settings(kind: RetentionType, full: u32, diff: Option<u32>) -> RepoConfig {
        let mut config = crate::config::Config::parse("[repo.x]\npath = \"/x\"\n").unwrap();
        let mut repo = config.repo.remove("x").unwrap();
        (repo.retention_full_type, repo.retention_full, repo.retention_diff) = (kind, full, diff);
        repo
    }

    const F1: &str = "20250101-000000F";
    const F1I: &str = "20250101-000000F_20250102-000000I";
    const F2: &str = "20250103-000000F";
    const F2D: &str = "20250103-000000F_20250104-000000D";
    const F2DI: &str = "20250103-000000F_20250104-010000I";
    const F2D2: &str = "20250103-000000F_20250105-000000D";

    fn sample() -> Vec<Manifest> {
        vec![
            manifest(F1, None, 10),
            manifest(F1I, Some(F1), 9),
            manifest(F2, None, 8),
            manifest(F2D, Some(F2), 7),
            manifest(F2DI, Some(F2D), 7),
            manifest(F2D2, Some(F2), 6),
        ]
    }

    fn labels(names: &[&str]) -> BTreeSet<SetLabel> {
        names.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn count_retention_removes_old_fulls_with_their_dependents() {
        let victims = retention_victims(&sample(), &settings(RetentionType::Count, 1, None), Utc::now());
        assert_eq!(victims, labels(&[F1, F1I]));
        assert!(retention_victims(&sample(), &settings(RetentionType::Count, 2, None), Utc::now()).is_empty());
    }

    #[test]
    fn diff_retention_keeps_what_kept_sets_need() {
        let victims = retention_victims(&sample(), &settings(RetentionType::Count, 2, Some(1)), Utc::now());
        // The older diff goes, and the incr built on it with it.
        assert_eq!(victims, labels(&[F2D, F2DI]));
    }

    #[test]
    fn time_retention_keeps_the_anchor_before_the_window() {
        let victims = retention_victims(&sample(), &settings(RetentionType::Time, 7, None), Utc::now());
        // F2 (8 days) anchors the 7-day window; F1 is older than the anchor.
        assert_eq!(victims, labels(&[F1, F1I]));
    }

    #[test]
    fn removing_one_set_takes_its_dependents() {
        assert_eq!(with_dependents(&sample(), &F2D.parse().unwrap()), labels(&[F2D, F2DI]));
        assert_eq!(with_dependents(&sample(), &F2.parse().unwrap()), labels(&[F2, F2D, F2DI, F2D2]));
    }
}
