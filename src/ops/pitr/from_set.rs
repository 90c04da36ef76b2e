//! PITR onto a fork from a backup set: a hot fork of production (reflinks: it shares almost every
//! page), then a delta restore of the set onto it — pages production has not changed since the
//! set began are neither read nor compared — then the fork's own settings again.

use std::time::Instant;

use crate::config::Resolved;
use crate::error::{Error, Result};
use crate::ops::fork::{ForkOptions, PreparedFork};
use crate::ops::pitr::{PitrForkOptions, PitrForkReport, segments_in};
use crate::ops::restore::{RestoreOptions, restore};
use crate::pg::conf::set_auto_conf;
use crate::progress::Progress;
use crate::stanza::recovery::RECOVERY_TARGETS;
use crate::util::Laps;

/// Forks production, then restores the set onto the fork.
pub fn run(resolved: &Resolved, opts: &PitrForkOptions, progress: &dyn Progress) -> Result<PitrForkReport> {
    let started = Instant::now();
    let mut restore_opts = RestoreOptions {
        set: opts.set.clone(),
        data: opts.fork.dst.clone(),
        delta: true,
        recovery: Some(opts.recovery.clone()),
        dry_run: true,
        tablespace_locations: Default::default(),
        live_source: None,
        in_place: false,
        config_dir: None,
    };
    // Everything the recovery needs is checked before the fork is made.
    let checked = restore(resolved, &restore_opts, progress)?;
    let mut laps = Laps::start();
    let fork = PreparedFork::prepare(ForkOptions { start: false, ..opts.fork.clone() })?.run(progress)?;
    laps.lap("fork");
    restore_opts.dry_run = false;
    restore_opts.set = Some(checked.label.clone());
    restore_opts.tablespace_locations = fork.tablespaces.iter().cloned().collect();
    restore_opts.live_source = Some(fork.plan.src.clone());
    let restored = restore(resolved, &restore_opts, progress)?;
    laps.lap("restore");
    let dst = &fork.plan.dst;
    // The fork's own settings, except its cleared recovery targets: those are the recovery's now.
    let keep: Vec<(&str, String)> = fork
        .settings
        .iter()
        .filter(|(k, _)| !RECOVERY_TARGETS.contains(&k.as_str()))
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    set_auto_conf(dst, "pgfork: the fork's own settings, kept through recovery", &keep)?;
    let plan = restored.plan.ok_or_else(|| Error::invalid("pitr", "the restore made no recovery plan"))?;
    let segment_size = crate::pg::wal::segment_size_in(&dst.join("pg_wal")).unwrap_or(16 << 20);
    Ok(PitrForkReport {
        from: format!("backup {}", restored.label),
        src: fork.plan.src.clone(),
        dst: dst.clone(),
        port: fork.plan.dst_port,
        cluster_name: fork.cluster_name.clone(),
        connect_host: fork.connect_host.clone(),
        wal_segments_to_replay: segments_in(&plan, segment_size),
        plan,
        files: restored.files,
        bytes_written: restored.bytes_written,
        bytes_unchanged: restored.bytes_unchanged,
        timings: laps.timings,
        reached: None,
        deleted_points: Vec::new(),
        duration_ms: crate::util::ms_since(started),
    })
}
