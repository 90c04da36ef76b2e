//! PITR onto a fork from a snapshot point: the point's clone reflinked into the fork (metadata, not
//! data), made bootable again, given the fork's own settings and the recovery settings against the
//! stanza's archive. Recovery then replays the WAL from the point to the target: the fork costs the
//! WAL since the point, not the database. Production and the snapshot point are not touched.

use std::time::Instant;

use crate::config::Resolved;
use crate::cow::{CopyMethod, TreePlan};
use crate::error::{Error, IoContext, Result};
use crate::ops::fork::fixup::{SourceSettings, fork_cluster_name, fork_settings};
use crate::ops::fork::preflight::{Destination, check_destination, check_port};
use crate::ops::fork::staging::Staging;
use crate::ops::fork::{ForkOptions, first_socket_dir};
use crate::ops::identity::become_owner_of;
use crate::ops::pitr::{PitrForkOptions, PitrForkReport, segments_in};
use crate::pg::backup_label::tablespace_map;
use crate::pg::bins::PgBin;
use crate::pg::conf::set_auto_conf;
use crate::pg::datadir::{DataDir, PostmasterPid};
use crate::pg::layout::Disposition;
use crate::progress::Progress;
use crate::stanza::Stanza;
use crate::stanza::preflight::StartingPoint;
use crate::stanza::recovery::{RECOVERY_TARGETS, plan, restore_command};
use crate::stanza::snapshots::{Found, HIDDEN_PG_VERSION};
use crate::util::{Laps, fsx, ms_since};

/// Forks snapshot point `found` (whose lease the caller holds) and prepares it to recover to the
/// target.
pub fn run(
    resolved: &Resolved,
    opts: &PitrForkOptions,
    found: &Found,
    progress: &dyn Progress,
) -> Result<PitrForkReport> {
    let started = Instant::now();
    let src = DataDir::open(&opts.fork.src)?;
    become_owner_of(src.path())?;
    let stanza = Stanza::open(resolved)?;
    let point = &found.point;
    // Every refusal before anything is written.
    let destination = check_destination(&opts.fork, src.path())?;
    let socket_dirs: Vec<_> = PostmasterPid::read(src.path())?.and_then(|p| p.socket_dir).into_iter().collect();
    check_port(&opts.fork, &socket_dirs)?;
    let command = restore_command(resolved);
    let plan = plan(&stanza, &StartingPoint::of_snapshot(point), &opts.recovery, &command)?;
    let bins = PgBin::locate(point.pg_version, opts.fork.bindir.as_deref(), Some(src.path()))?;

    let mut laps = Laps::start();
    let final_tblspc = ForkOptions::tablespace_root(&opts.fork.dst);
    let staging = Staging::create(&opts.fork.dst, &final_tblspc)?;
    let (tree, locations) = clone_plan(found, &staging, &final_tblspc)?;
    let files = tree.execute(CopyMethod::Reflink, false, progress)?;
    laps.lap("clone");

    let data = staging.data();
    std::fs::rename(data.join(HIDDEN_PG_VERSION), data.join("PG_VERSION")).at("restore PG_VERSION in", data)?;
    if !locations.is_empty() {
        let entries: Vec<(u32, &std::path::Path)> = locations.iter().map(|(o, p)| (*o, p.as_path())).collect();
        fsx::write_atomic(&data.join("tablespace_map"), tablespace_map(&entries)?.as_bytes(), 0o600)?;
    }
    let source = SourceSettings::read(|name| bins.config_value(data, name))?;
    let connect_host = first_socket_dir(&bins.config_value(data, "unix_socket_directories")?);
    let cluster_name = fork_cluster_name(&source, src.path(), opts.fork.id);
    let own: Vec<(&str, String)> =
        fork_settings(&source, src.path(), &opts.fork.dst, opts.fork.dst_port, &cluster_name)
            .into_iter()
            .filter(|(k, _)| !RECOVERY_TARGETS.contains(k))
            .collect();
    set_auto_conf(data, &format!("pgfork: fork {} of {}", opts.fork.id, src.path().display()), &own)?;
    let recovery: Vec<(&str, String)> = plan.settings.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    set_auto_conf(data, &format!("pgfork: recovery from snapshot point {}", point.id), &recovery)?;
    fsx::write_atomic(&data.join("recovery.signal"), b"", 0o600)?;
    fsx::sync_filesystem(data)?;
    if let Destination::Replace(paths) = &destination {
        for path in paths {
            std::fs::remove_dir_all(path).at("remove", path)?;
        }
    }
    staging.commit()?;
    laps.lap("finish");
    Ok(PitrForkReport {
        from: format!("snapshot point {}", point.id),
        src: src.path().to_path_buf(),
        dst: opts.fork.dst.clone(),
        port: opts.fork.dst_port,
        cluster_name,
        connect_host,
        wal_segments_to_replay: segments_in(&plan, point.segment_size),
        plan,
        files: files.files,
        bytes_written: 0,
        bytes_unchanged: files.logical_bytes,
        timings: laps.timings,
        reached: None,
        deleted_points: Vec::new(),
        duration_ms: ms_since(started),
    })
}

/// The clone of the point into the staging directories: the data directory with its in-place
/// tablespaces moved to the fork's tablespace directory and linked from `pg_tblspc`. Returns the
/// plan and each tablespace's final location.
fn clone_plan(
    found: &Found,
    staging: &Staging,
    final_tblspc: &std::path::Path,
) -> Result<(TreePlan, Vec<(u32, std::path::PathBuf)>)> {
    let point_data = found.data();
    if !point_data.join(HIDDEN_PG_VERSION).is_file() {
        return Err(Error::invalid(
            format!("snapshot point {}", found.point.id),
            format!("{} has no {HIDDEN_PG_VERSION}: not a snapshot point's clone", point_data.display()),
        ));
    }
    let in_place: Vec<String> = found.point.tablespaces.iter().map(|t| format!("pg_tblspc/{}", t.oid)).collect();
    let mut tree = TreePlan::default();
    tree.add_tree(&point_data, staging.data(), &|rel, _| {
        if in_place.iter().any(|t| t == rel) { Disposition::Skip } else { Disposition::Copy }
    })?;
    if !found.point.tablespaces.is_empty() {
        tree.dirs.push((staging.tablespaces().to_path_buf(), 0o700));
    }
    let mut locations = Vec::new();
    for ts in &found.point.tablespaces {
        let staged = staging.tablespaces().join(ts.oid.to_string());
        tree.add_tree(&point_data.join(format!("pg_tblspc/{}", ts.oid)), &staged, &|_, _| Disposition::Copy)?;
        let final_path = final_tblspc.join(ts.oid.to_string());
        tree.symlinks.push((staging.data().join(format!("pg_tblspc/{}", ts.oid)), final_path.clone()));
        locations.push((ts.oid, final_path));
    }
    Ok((tree, locations))
}
