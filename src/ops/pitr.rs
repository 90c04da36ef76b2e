//! `pitr --fork`: point-in-time recovery onto a fork of the running cluster. The fork shares almost
//! every page with production, so the delta restore rewrites only what differs; the fork keeps its
//! own port, name and archive_mode=off; production is never touched.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::Resolved;
use crate::error::{Error, Result};
use crate::ops::fork::{ForkOptions, ForkReport, PreparedFork, start_fork};
use crate::ops::restore::{RestoreOptions, RestoreReport, restore};
use crate::pg::bins::PgBin;
use crate::pg::conf::set_auto_conf;
use crate::pg::datadir::{DataDir, PostmasterPid};
use crate::pg::session::{ConnTarget, Session};
use crate::progress::Progress;
use crate::repo::label::SetLabel;
use crate::stanza::recovery::{RECOVERY_TARGETS, RecoveryRequest, TargetAction};
use crate::util::ms_since;

/// A PITR-onto-a-fork request.
#[derive(Debug, Clone)]
pub struct PitrForkOptions {
    /// The fork to make of the stanza's running cluster.
    pub fork: ForkOptions,
    /// The target.
    pub recovery: RecoveryRequest,
    /// The set to start from; chosen from the target when `None`.
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
    /// The fork.
    pub fork: ForkReport,
    /// The restore onto it.
    pub restore: RestoreReport,
    /// Where recovery stopped, when started.
    pub reached: Option<Reached>,
    /// Wall time, milliseconds.
    pub duration_ms: f64,
}

/// Forks the stanza's cluster and recovers the fork to the target.
pub fn pitr_fork(resolved: &Resolved, opts: &PitrForkOptions, progress: &dyn Progress) -> Result<PitrForkReport> {
    let started = Instant::now();
    let mut restore_opts = RestoreOptions {
        set: opts.set.clone(),
        data: opts.fork.dst.clone(),
        delta: true,
        recovery: Some(opts.recovery.clone()),
        dry_run: true,
        tablespace_locations: Default::default(),
        live_source: None,
    };
    // Everything the recovery needs is checked before the fork is made.
    let plan = restore(resolved, &restore_opts, progress)?;
    let fork = PreparedFork::prepare(opts.fork.clone())?.run(progress)?;
    restore_opts.dry_run = false;
    restore_opts.set = Some(plan.label.clone());
    restore_opts.tablespace_locations = fork.tablespaces.iter().cloned().collect();
    restore_opts.live_source = Some(fork.plan.src.clone());
    let restored = restore(resolved, &restore_opts, progress)?;
    let dst = &fork.plan.dst;
    // The fork's own settings, except its cleared recovery targets: those are the recovery's now.
    let keep: Vec<(&str, String)> = fork
        .settings
        .iter()
        .filter(|(k, _)| !RECOVERY_TARGETS.contains(&k.as_str()))
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    set_auto_conf(dst, "pgfork: the fork's own settings, kept through recovery", &keep)?;

    let mut reached = None;
    if opts.start {
        let data = DataDir::open(dst)?;
        let bins = PgBin::locate(data.major(), opts.fork.bindir.as_deref(), Some(&opts.fork.src))?;
        let user = opts.fork.user.clone().unwrap_or_else(|| fork.plan.user.clone());
        start_fork(&bins, dst, opts.fork.dst_port, fork.connect_host.as_deref(), &user)?;
        let target = ConnTarget {
            host: fork.connect_host.clone().unwrap_or_else(|| "localhost".into()),
            port: opts.fork.dst_port,
            user,
            dbname: "postgres".into(),
        };
        reached = Some(wait_for_target(&target, dst, opts.recovery.action)?);
    }
    Ok(PitrForkReport { fork, restore: restored, reached, duration_ms: ms_since(started) })
}

/// Waits until recovery reached its target — paused, promoted, or (with the shutdown action) the
/// server of `data` stopped — then reports where it is.
pub fn wait_for_target(target: &ConnTarget, data: &Path, action: TargetAction) -> Result<Reached> {
    let deadline = Instant::now() + Duration::from_secs(600);
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
        if Instant::now() > deadline {
            return Err(Error::refused(
                format!("recovery on {} did not reach its target within 10 minutes", target.describe()),
                None,
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
