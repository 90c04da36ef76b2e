//! The metrics of a collection. pgbackrest_exporter's names, labels and meanings come first, so
//! the dashboards and alerts Pigsty ships keep working; pgfork's own follow. Ages ("since last")
//! are computed when the page is served, from the times collected.
//!
//! pgBackRest's "last" backups: for `backup_type="full"` the newest full, for `diff` the newest
//! full or diff, for `incr` the newest of any type (by stop time, across the stanza's
//! repositories); nothing is reported for a stanza without a full.

use chrono::{DateTime, Utc};

use super::collect::{Collected, Readable, StanzaState};
use super::text::Exposition;
use crate::ops::info::SetInfo;
use crate::repo::label::BackupType;

/// The exposition of `collected` as of `now`; `collections` counts the collections so far.
pub fn exposition(collected: Option<&Collected>, collections: u64, now: DateTime<Utc>) -> Exposition {
    let mut e = Exposition::default();
    e.counter(
        "pgfork_exporter_collections_total",
        "Collections of repository and cluster state since the exporter started.",
    )
    .add(&[], collections as f64);
    let Some(c) = collected else { return e };
    e.gauge("pgfork_exporter_last_collection_timestamp_seconds", "When the values were collected (Unix time).")
        .add(&[], c.at.timestamp_millis() as f64 / 1000.0);
    e.gauge("pgfork_exporter_collection_duration_seconds", "How long the last collection took.").add(&[], c.seconds);
    let all_read = c.config_error.is_none()
        && c.stanzas.iter().all(|s| s.error.is_none() && s.repos.iter().all(|r| r.read.is_ok()));
    e.gauge(
        "pgbackrest_exporter_status",
        "pgBackRest exporter get data status: 1 when every configured stanza and repository could be read.",
    )
    .add(&[("stanza", "all-stanzas")], bool_value(all_read));
    for stanza in &c.stanzas {
        stanza_metrics(&mut e, stanza);
        last_backups(&mut e, stanza, now);
        for (repo, readable) in stanza.readable() {
            records(&mut e, &stanza.name, &repo.name, readable, now);
        }
        if let Some((_, first)) = stanza.readable().next() {
            snapshots(&mut e, &stanza.name, first, now);
        }
        archiver(&mut e, stanza);
    }
    e
}

fn bool_value(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

fn seconds_since(at: DateTime<Utc>, now: DateTime<Utc>) -> f64 {
    (now - at).num_milliseconds() as f64 / 1000.0
}

/// Stanza, repository and WAL archive status.
fn stanza_metrics(e: &mut Exposition, s: &StanzaState) {
    e.gauge(
        "pgbackrest_stanza_status",
        "Current stanza status: 0 ok, 1 missing stanza path, 2 no valid backups, 4 different across repos, 99 other.",
    )
    .add(&[("stanza", s.name.as_str())], s.code() as f64);
    for repo in &s.repos {
        let key = repo.key.to_string();
        e.gauge("pgbackrest_repo_status", "Current repository status, with the codes of pgbackrest_stanza_status.")
            .add(
                &[("cipher", repo.cipher.as_str()), ("repo_key", key.as_str()), ("stanza", s.name.as_str())],
                repo.code() as f64,
            );
        if let Ok(r) = &repo.read {
            let (db, version) = (r.database_id.to_string(), r.info.pg_version.to_string());
            let has_wal = r.info.archive.iter().any(|a| !a.min.is_empty() && !a.max.is_empty());
            e.gauge(
                "pgbackrest_wal_archive_status",
                "Current WAL archive status: 1 when the archive holds WAL (its oldest and newest segment are known).",
            )
            .add(
                &[
                    ("database_id", db.as_str()),
                    ("pg_version", version.as_str()),
                    ("repo_key", key.as_str()),
                    ("stanza", s.name.as_str()),
                    ("wal_max", ""),
                    ("wal_min", ""),
                ],
                bool_value(has_wal),
            );
        }
    }
}

/// The newest set of each kind pgBackRest's "last" metrics look at.
fn last_backups(e: &mut Exposition, s: &StanzaState, now: DateTime<Utc>) {
    let sets: Vec<&SetInfo> = s.readable().flat_map(|(_, r)| r.info.sets.iter()).collect();
    let newest =
        |kinds: &[BackupType]| sets.iter().filter(|x| kinds.contains(&x.kind)).max_by_key(|x| x.stop_time).copied();
    let Some(full) = newest(&[BackupType::Full]) else { return };
    let diff = newest(&[BackupType::Full, BackupType::Diff]).unwrap_or(full);
    let incr = newest(&[BackupType::Full, BackupType::Diff, BackupType::Incr]).unwrap_or(diff);
    for (kind, set) in [("full", full), ("diff", diff), ("incr", incr)] {
        let labels = [("backup_type", kind), ("block_incr", "n"), ("stanza", s.name.as_str())];
        let duration = (set.stop_time - set.start_time).num_milliseconds() as f64 / 1000.0;
        e.gauge(
            "pgbackrest_backup_since_last_completion_seconds",
            "Seconds since the last completed full, differential or incremental backup.",
        )
        .add(&labels, seconds_since(set.stop_time, now));
        e.gauge(
            "pgbackrest_backup_last_duration_seconds",
            "Backup duration for the last full, differential or incremental backup.",
        )
        .add(&labels, duration);
        e.gauge(
            "pgbackrest_backup_last_size_bytes",
            "Full uncompressed size of the database in the last full, differential or incremental backup.",
        )
        .add(&labels, set.database_size as f64);
        e.gauge(
            "pgbackrest_backup_last_delta_bytes",
            "Amount of data in the database to actually backup in the last full, differential or incremental backup.",
        )
        .add(&labels, set.backup_size as f64);
        e.gauge(
            "pgbackrest_backup_last_repo_size_bytes",
            "Full compressed files size to restore the database from the last full, differential or incremental backup.",
        )
        .add(&labels, set.repo_set_size as f64);
        e.gauge(
            "pgbackrest_backup_last_repo_delta_bytes",
            "Compressed files size in the last full, differential or incremental backup.",
        )
        .add(&labels, set.repo_size as f64);
        e.gauge(
            "pgbackrest_backup_last_error_status",
            "Error status in the last full, differential or incremental backup: 1 when it recorded pages with bad checksums.",
        )
        .add(&labels, bool_value(set.bad_checksums > 0));
        e.gauge(
            "pgfork_backup_last_pages_changed",
            "Pages the last full, differential or incremental backup stored (changed since the set it is based on).",
        )
        .add(&[("backup_type", kind), ("stanza", s.name.as_str())], set.pages_changed as f64);
    }
}

/// The verification and scrub records of one repository.
fn records(e: &mut Exposition, stanza: &str, repo: &str, r: &Readable, now: DateTime<Utc>) {
    let labels = [("repo", repo), ("stanza", stanza)];
    let verifications: Vec<_> = r.info.sets.iter().filter_map(|s| s.verification.as_ref()).collect();
    if let Some(latest) = verifications.iter().max_by_key(|v| v.at) {
        e.gauge("pgfork_verify_last_success", "1 when the latest verify of a set in the repository proved it.")
            .add(&labels, bool_value(latest.proven));
        e.gauge("pgfork_verify_last_duration_seconds", "How long the latest verify took.")
            .add(&labels, latest.duration_ms / 1000.0);
    }
    if let Some(proven) = verifications.iter().filter(|v| v.proven).max_by_key(|v| v.at) {
        e.gauge("pgfork_verify_since_last_seconds", "Seconds since a verify last proved a set of the repository.")
            .add(&labels, seconds_since(proven.at, now));
    }
    let scrubs: Vec<_> =
        r.info.sets.iter().filter_map(|s| s.scrub.as_ref()).chain(r.info.archive_scrub.as_ref()).collect();
    if let Some(latest) = scrubs.iter().map(|s| s.at).max() {
        e.gauge(
            "pgfork_scrub_last_success",
            "1 when the latest scrub of every set and of the archive found every object intact.",
        )
        .add(&labels, bool_value(scrubs.iter().all(|s| s.intact)));
        e.gauge("pgfork_scrub_since_last_seconds", "Seconds since the repository was last scrubbed (any part of it).")
            .add(&labels, seconds_since(latest, now));
        e.gauge("pgfork_scrub_damaged_objects", "Damaged objects the latest scrubs named.")
            .add(&labels, scrubs.iter().map(|s| s.damaged.len()).sum::<usize>() as f64);
    }
    e.gauge("pgfork_scrub_unscrubbed_sets", "Backup sets no scrub has read yet.")
        .add(&labels, r.info.sets.iter().filter(|s| s.scrub.is_none()).count() as f64);
}

/// Snapshot points beside the cluster.
fn snapshots(e: &mut Exposition, stanza: &str, r: &Readable, now: DateTime<Utc>) {
    let points = &r.info.snapshot_points;
    let labels = [("stanza", stanza)];
    e.gauge("pgfork_snapshot_points", "Snapshot points kept beside the cluster.").add(&labels, points.len() as f64);
    e.gauge(
        "pgfork_snapshot_exclusive_bytes",
        "Space the snapshot points hold that the cluster no longer shares with them.",
    )
    .add(&labels, points.iter().map(|p| p.exclusive_bytes).sum::<u64>() as f64);
    if let Some(newest) = points.iter().map(|p| p.stop_time).max() {
        e.gauge("pgfork_snapshot_since_last_seconds", "Seconds since the newest snapshot point was taken.")
            .add(&labels, seconds_since(newest, now));
    }
}

/// The cluster's archiver, when the cluster answered.
fn archiver(e: &mut Exposition, s: &StanzaState) {
    let labels = [("stanza", s.name.as_str())];
    e.gauge("pgfork_cluster_up", "1 when the stanza's cluster answered the exporter.")
        .add(&labels, bool_value(s.archiver.is_ok()));
    let Ok(a) = &s.archiver else { return };
    e.gauge(
        "pgfork_archive_lag_seconds",
        "Seconds since the oldest WAL segment still waiting to be archived was completed (0 when none waits).",
    )
    .add(&labels, a.lag_seconds);
    e.gauge(
        "pgfork_archive_failed_count",
        "Failed archive_command runs since the statistics were reset (pg_stat_archiver).",
    )
    .add(&labels, a.failed_count as f64);
    if let Some(ready) = a.ready {
        e.gauge("pgfork_archive_ready_count", "WAL segments waiting to be archived.").add(&labels, ready as f64);
    }
}
