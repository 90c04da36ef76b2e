//! `pitr --fork` (and `fork --at`): point-in-time recovery onto a fork of the stanza's cluster,
//! production untouched. The fork starts from the newest snapshot point at or before the target
//! (a reflink of the point, then WAL replay: the cost of the WAL, not of the database), else from a
//! backup set (a hot fork of production, then a delta restore of the set onto it). The fork holds
//! the snapshot point's lease from before it checks the point until the clone is made, so the
//! point cannot be deleted under it; a point deleted before the lease was taken is passed over for
//! the next older one. Either way the
//! fork keeps its own port, name and archive_mode=off, and with `--start` starts paused at the
//! target.

mod from_set;
mod from_snapshot;
pub mod in_place;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::Resolved;
use crate::config::secrets::{self, Secrets, SecretsFile};
use crate::error::{Error, Result};
use crate::ops::fork::ForkOptions;
use crate::pg::datadir::{DataDir, PostmasterPid};
use crate::pg::session::{ConnTarget, Session};
use crate::progress::Progress;
use crate::repo::label::SetLabel;
use crate::stanza::recovery::{RecoveryPlan, RecoveryRequest, Target, TargetAction};
use crate::stanza::snapshots::{self, Leased};

/// A PITR-onto-a-fork request.
#[derive(Debug, Clone)]
pub struct PitrForkOptions {
    /// The fork to make of the stanza's running cluster.
    pub fork: ForkOptions,
    /// The target.
    pub recovery: RecoveryRequest,
    /// The set to start from (then no snapshot point is used); chosen from the target when `None`.
    pub set: Option<SetLabel>,
    /// Start the fork and wait until it reaches the target.
    pub start: bool,
}

/// Where a started fork's recovery stopped.
#[derive(Debug, Clone, Serialize)]
pub struct Reached {
    /// Last replayed LSN.
    pub lsn: String,
    /// Time of the last replayed transaction.
    pub time: Option<String>,
    /// "paused", "promoted" or "shut down".
    pub state: String,
}

/// What pitr --fork did.
#[derive(Debug, Clone, Serialize)]
pub struct PitrForkReport {
    /// The starting point: `snapshot point <id>` or `backup <label>`.
    pub from: String,
    /// The cluster forked.
    pub src: PathBuf,
    /// The fork.
    pub dst: PathBuf,
    /// Its port.
    pub port: u16,
    /// Its cluster_name.
    pub cluster_name: String,
    /// The socket directory or host to reach it on, when known.
    pub connect_host: Option<String>,
    /// The checked recovery plan.
    pub plan: RecoveryPlan,
    /// WAL segments recovery replays from the starting point to the target (at most).
    pub wal_segments_to_replay: u64,
    /// Files in the fork (cloned or restored).
    pub files: u64,
    /// Bytes written (a delta restore from a set; nothing from a snapshot point).
    pub bytes_written: u64,
    /// Bytes found right (shared with production, or cloned from the snapshot point).
    pub bytes_unchanged: u64,
    /// Milliseconds per step.
    pub timings: Vec<(&'static str, f64)>,
    /// Where recovery stopped, when started.
    pub reached: Option<Reached>,
    /// Snapshot points chosen first but deleted while the fork was being prepared, newest first:
    /// the fork started from the next older point (or a backup set).
    pub deleted_points: Vec<String>,
    /// Wall time, milliseconds.
    pub duration_ms: f64,
}

/// Forks the stanza's cluster recovered to the target, from the newest snapshot point at or
/// before it, else from a backup set.
pub fn pitr_fork(resolved: &Resolved, opts: &PitrForkOptions, progress: &dyn Progress) -> Result<PitrForkReport> {
    let started = Instant::now();
    // A fork pgfork starts has a clean environment: its archive-get reads what pgfork has only in
    // its own from a file beside the fork, there while pgfork waits for the target.
    let secrets = if opts.start { Secrets::from_environment(resolved) } else { Secrets::default() };
    let secrets_file = secrets::file_beside(&opts.fork.dst);
    let resolved = &secrets::naming_file(resolved, &secrets, secrets_file.clone());
    let (leased, deleted) = snapshot_for(resolved, opts, progress)?;
    let mut report = match &leased {
        Some(leased) => from_snapshot::run(resolved, opts, &leased.found, progress)?,
        None if deleted.is_empty() => from_set::run(resolved, opts, progress)?,
        None => from_set::run(resolved, opts, progress).map_err(|e| {
            Error::refused(
                format!(
                    "{}, and no older point is at or before the target; from a backup set instead: {e}",
                    deleted_meanwhile(&deleted)
                ),
                Some("take a snapshot point or a backup before the target, or fork to a later target".into()),
            )
        })?,
    };
    // The clone is made: the point may go now.
    drop(leased);
    report.deleted_points = deleted;
    if opts.start {
        let data = DataDir::open(&report.dst)?;
        let user = opts.fork.user.clone().unwrap_or_else(|| owner_name(data.path()));
        let bins = crate::pg::bins::PgBin::locate(data.major(), opts.fork.bindir.as_deref(), Some(&opts.fork.src))?;
        let step = Instant::now();
        let _handed = SecretsFile::write(&secrets_file, &secrets, Some(crate::util::fsx::owner_of(data.path())?))?;
        crate::ops::fork::start_fork(
            &bins,
            &report.dst,
            &report.dst,
            report.port,
            report.connect_host.as_deref(),
            &user,
        )?;
        let target = ConnTarget {
            host: report.connect_host.clone().unwrap_or_else(|| "localhost".into()),
            port: report.port,
            user,
            dbname: "postgres".into(),
        };
        let reached = wait_for_target(&target, &report.dst, opts.recovery.action)?;
        if reached.state == "paused" && !secrets.is_empty() {
            progress.note(&format!(
                "the fork's archive-get read the secrets pgfork has only in its environment from {}, removed \
                 as pitr ends: before promoting or restarting the paused fork (either may fetch from the \
                 archive), give the repository a passphrase_file (or credentials_file) the fork's user can read",
                secrets_file.display()
            ));
        }
        report.reached = Some(reached);
        report.timings.push(("start_and_replay", crate::util::ms_since(step)));
    }
    report.duration_ms = crate::util::ms_since(started);
    Ok(report)
}

/// The newest snapshot point of the stanza at or before the target, leased, unless a set is
/// named; with the ids of newer ones at or before the target that were deleted before their lease
/// was taken (a note says which point is used instead).
fn snapshot_for(
    resolved: &Resolved,
    opts: &PitrForkOptions,
    progress: &dyn Progress,
) -> Result<(Option<Leased>, Vec<String>)> {
    if opts.set.is_some() {
        return Ok((None, Vec::new()));
    }
    let data = DataDir::open(&resolved.stanza.data)?;
    let system_identifier = data.control()?.system_identifier;
    let (found, _) = snapshots::list(&snapshots::snapshot_dir(resolved), system_identifier)?;
    let mut candidates = found.into_iter().rev().filter(|f| match &opts.recovery.target {
        Target::Time(t, _) => f.point.stop_time <= *t,
        Target::Lsn(lsn) => f.point.stop_lsn <= *lsn,
        _ => true,
    });
    let Some(newest) = candidates.next() else { return Ok((None, Vec::new())) };
    // The lease file is the point owner's: as root, become that owner first (the fork does anyway).
    crate::ops::identity::become_owner_of(&opts.fork.src)?;
    let mut deleted = Vec::new();
    for found in std::iter::once(newest).chain(candidates) {
        match snapshots::lease(&found)? {
            Some(leased) => {
                if !deleted.is_empty() {
                    progress.note(&format!("{}; using snapshot point {}", deleted_meanwhile(&deleted), found.point.id));
                }
                return Ok((Some(leased), deleted));
            }
            None => deleted.push(found.point.id),
        }
    }
    progress.note(&format!("{}; starting from a backup set", deleted_meanwhile(&deleted)));
    Ok((None, deleted))
}

/// "snapshot point X was deleted while the fork was being prepared" for `ids`.
fn deleted_meanwhile(ids: &[String]) -> String {
    match ids {
        [id] => format!("snapshot point {id} was deleted while the fork was being prepared"),
        ids => format!("snapshot points {} were deleted while the fork was being prepared", ids.join(", ")),
    }
}

/// The user owning `dir`, by name.
pub(crate) fn owner_name(dir: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir)
        .ok()
        .and_then(|m| nix::unistd::User::from_uid(m.uid().into()).ok().flatten())
        .map(|u| u.name)
        .unwrap_or_else(|| "postgres".into())
}

/// Segments from the plan's first to its last (on one timeline, or summed over the path).
fn segments_in(plan: &RecoveryPlan, segment_size: u64) -> u64 {
    use crate::pg::lsn::WalSegment;
    plan.timelines
        .iter()
        .filter_map(|(_, first, last)| {
            let (first, last) = (WalSegment::parse(first, segment_size)?, WalSegment::parse(last, segment_size)?);
            Some(last.number.saturating_sub(first.number) + 1)
        })
        .sum()
}

/// How long recovery may go without replaying anything before the wait gives up.
const STALLED_AFTER: Duration = Duration::from_secs(600);

/// Waits until recovery reached its target — paused, promoted, or (with the shutdown action) the
/// server of `data` stopped — then reports where it is. A long replay is waited for as long as it
/// advances; only one stalled for ten minutes is an error.
pub fn wait_for_target(target: &ConnTarget, data: &Path, action: TargetAction) -> Result<Reached> {
    let deadline = Instant::now() + STALLED_AFTER;
    let stopped = || PostmasterPid::running(data).is_none();
    // A server told to shut down at the target stops talking; its shutdown checkpoint says where.
    let shut_down = |error: Error| -> Result<Reached> {
        if action != TargetAction::Shutdown {
            return Err(error);
        }
        while !stopped() {
            if Instant::now() > deadline {
                return Err(error);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let control = DataDir::open(data)?.control()?;
        Ok(Reached { lsn: control.checkpoint.to_string(), time: None, state: "shut down".into() })
    };
    let session = match Session::connect_retry(target, Duration::from_secs(60)) {
        Ok(session) => session,
        Err(e) => return shut_down(e),
    };
    let (mut replayed, mut advanced) = (String::new(), Instant::now());
    loop {
        let row = match session.query_one(
            "SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() ELSE '' END, \
             coalesce(pg_last_wal_replay_lsn()::text, pg_current_wal_lsn()::text), pg_last_xact_replay_timestamp()::text",
            &[],
        ) {
            Ok(row) => row,
            Err(e) => return shut_down(e),
        };
        let (in_recovery, pause, lsn, time): (bool, String, String, Option<String>) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let state = match (in_recovery, pause.as_str()) {
            (true, "paused") => Some("paused"),
            (false, _) => Some("promoted"),
            _ => None,
        };
        if let Some(state) = state {
            return Ok(Reached { lsn, time, state: state.into() });
        }
        if lsn != replayed {
            (replayed, advanced) = (lsn, Instant::now());
        } else if advanced.elapsed() > STALLED_AFTER {
            return Err(Error::refused(
                format!(
                    "recovery on {} has replayed nothing for 10 minutes, at {replayed}, short of its target",
                    target.describe()
                ),
                Some("read the server's log: a segment restore_command cannot fetch, or a lock held by a query".into()),
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
