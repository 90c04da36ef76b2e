//! Scenarios that need root and real file systems: forks and database clones on loop-mounted XFS
//! (reflink), Btrfs, ext4 and tmpfs. Run as part of the test suite; under CI=true a missing
//! prerequisite fails instead of skipping.

#[path = "../tests/common/mod.rs"]
mod common;
mod loopfs;
mod snapshot_leases;
mod snapshots;

use std::time::Duration;

use common::*;
use loopfs::{Kind, LoopFs};

/// What a second fork of an idle source cost: the file system's growth (which the source also
/// moves, allocating a WAL segment say) and the bytes of the fork's own extents, shared with nothing.
struct ForkCost {
    grown: u64,
    exclusive: u64,
}

/// On a fresh `kind` file system: hot-forks a scale-5 cluster while pgbench runs (checked by the
/// scenario), then measures what a second fork of the now idle source costs. Returns the first
/// fork's report and stderr, the second fork's cost, and the source's size.
fn fork_on(kind: Kind, version: &PgVersion) -> Option<(serde_json::Value, String, ForkCost, u64)> {
    if !can_run("file system fork") || !loopfs::available(kind) {
        return None;
    }
    let fs = LoopFs::new(kind, 1024);
    let outcome = scenarios::hot_fork_under_pgbench(version, Some(fs.path()), 5);
    let first_fork = outcome.fork.data.parent().unwrap().to_path_buf();
    drop(outcome.fork);
    std::fs::remove_dir_all(first_fork).unwrap();
    let source = outcome.source;
    source.psql("postgres", "CHECKPOINT");

    let dst_dir = PgDir::new(Some(fs.path()), "fork-");
    let dst = dst_dir.path().join("data2");
    let used_before = fs.used_bytes();
    pgfork_ok(&strs(&fork_args(2, &source, &dst, free_port(), &[])));
    let grown = fs.used_bytes().saturating_sub(used_before);
    let exclusive = match kind {
        Kind::XfsReflink | Kind::Btrfs => pgfork::cow::shared::exclusive_bytes(&dst).unwrap(),
        Kind::Ext4 | Kind::Tmpfs => grown,
    };
    let fork_cost = ForkCost { grown, exclusive };
    let source_size = dir_size(&source.data);
    drop(source);
    drop(dst_dir);
    Some((outcome.report, outcome.stderr, fork_cost, source_size))
}

/// Bytes of the files under `path`, its WAL left out (a fork takes only the segments it needs).
fn dir_size(path: &std::path::Path) -> u64 {
    walkdir::WalkDir::new(path)
        .into_iter()
        .filter_entry(|e| e.file_name() != "pg_wal")
        .filter_map(|e| e.ok())
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

fn assert_shares_extents(kind: Kind, fs_name: &str) {
    let Some((report, _stderr, fork_cost, source_size)) = fork_on(kind, &PgVersion::get(18)) else { return };
    assert_eq!(report["method"], "reflink", "{report}");
    assert_eq!(report["dst_fs"], fs_name);
    assert_eq!(report["files"]["copied_bytes"], 0);
    // Regression: the file system's growth also counted the source allocating a WAL segment, and
    // failed now and then. The fork's own blocks are its files and the few pages it rewrote.
    assert!(
        fork_cost.exclusive < source_size / 10,
        "the fork holds {} bytes of its own for a {source_size}-byte source: extents were not shared",
        fork_cost.exclusive
    );
}

#[test]
fn fork_on_xfs_shares_extents() {
    assert_shares_extents(Kind::XfsReflink, "xfs");
}

#[test]
fn fork_on_btrfs_shares_extents() {
    assert_shares_extents(Kind::Btrfs, "btrfs");
}

fn assert_copies(kind: Kind, fs_name: &str) {
    let Some((report, stderr, fork_cost, source_size)) = fork_on(kind, &PgVersion::get(15)) else { return };
    assert_eq!(report["method"], "copy");
    assert_eq!(report["dst_fs"], fs_name);
    assert!(report["files"]["copied_bytes"].as_u64().unwrap() > 0);
    assert!(stderr.contains("no reflink") && stderr.contains("copying"), "the fallback must say so: {stderr}");
    assert!(fork_cost.grown > source_size / 2, "a copy of {source_size} bytes cost only {}", fork_cost.grown);
}

#[test]
fn fork_on_ext4_copies_and_says_so() {
    assert_copies(Kind::Ext4, "ext4");
}

#[test]
fn fork_on_tmpfs_copies_and_says_so() {
    assert_copies(Kind::Tmpfs, "tmpfs");
}

#[test]
fn clone_db_on_xfs_clones_with_postgresql_18() {
    if !can_run("clone_db_on_xfs_clones_with_postgresql_18") || !loopfs::available(Kind::XfsReflink) {
        return;
    }
    let fs = LoopFs::new(Kind::XfsReflink, 1024);
    let mut cluster = Cluster::init(&PgVersion::get(18), Some(fs.path()));
    cluster.start();
    cluster.psql("postgres", "CREATE DATABASE meta");
    cluster.pgbench_init("meta", 5);
    let used = fs.used_bytes();
    let out = pgfork_ok(&strs(&clone_db_args(&cluster, &[])));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["cloned"], true, "{report}");
    assert_eq!(cluster.psql("meta_dev", "SELECT count(*) FROM pgbench_accounts"), "500000");
    let grown = fs.used_bytes().saturating_sub(used);
    assert!(grown < 20 * 1024 * 1024, "a clone of a ~75 MB database took {grown} bytes");
    drop(cluster);
}

#[test]
fn backup_on_xfs_scans_a_reflink_snapshot() {
    if !can_run("backup_on_xfs_scans_a_reflink_snapshot") || !loopfs::available(Kind::XfsReflink) {
        return;
    }
    let fs = LoopFs::new(Kind::XfsReflink, 1024);
    let version = PgVersion::get(18);
    let mut cluster = Cluster::init(&version, Some(fs.path()));
    cluster.start();
    cluster.pgbench_init("postgres", 2);
    let repo = RepoSetup::new(&cluster, Some("pw"), "");
    common::append(&repo.config, "snapshot = true\n");
    repo.ok(&["stanza-create"]);
    let full = repo.backup("full");
    assert_eq!(full["snapshot"], true, "{full}");
    let mut bench = cluster.pgbench("postgres", &["-c", "2", "-T", "60"]);
    std::thread::sleep(Duration::from_millis(1000));
    // Under load, and with a table dropped meanwhile, the incr still reads a consistent snapshot.
    cluster.psql("postgres", "CREATE TABLE gone AS SELECT g FROM generate_series(1, 50000) g");
    let incr_child = std::thread::spawn({
        let config = repo.config.clone();
        move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_pgfork"))
                .args(["backup", "--json", "--config", config.to_str().unwrap()])
                .env("PGFORK_PASSPHRASE", "pw")
                .output()
                .unwrap()
        }
    });
    cluster.psql("postgres", "DROP TABLE gone");
    let out = incr_child.join().unwrap();
    let _ = bench.kill();
    let _ = bench.wait();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let incr: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(incr["snapshot"], true);
    assert!(
        !fs.path().read_dir().unwrap().any(|e| e.unwrap().file_name().to_string_lossy().contains("pgfork-snapshot"))
    );

    let (_dir, restored) = repo.restore_started(&cluster, None, Some(fs.path()));
    assert_eq!(restored.psql("postgres", "SELECT count(*) FROM pgbench_accounts"), "200000");
    restored.amcheck();
}

#[test]
fn restore_from_a_plain_repository_clones_on_xfs() {
    if !can_run("restore_from_a_plain_repository_clones_on_xfs") || !loopfs::available(Kind::XfsReflink) {
        return;
    }
    let fs = LoopFs::new(Kind::XfsReflink, 1024);
    let mut cluster = Cluster::init(&PgVersion::get(15), Some(fs.path()));
    cluster.start();
    cluster.pgbench_init("postgres", 3);
    // The repository on the same XFS, runs stored as they are: restore can clone them.
    let repo = RepoSetup::new(&cluster, None, "compression = \"none\"");
    let text = std::fs::read_to_string(&repo.config).unwrap();
    let repo_dir = PgDir::new(Some(fs.path()), "plainrepo-");
    std::fs::write(
        &repo.config,
        text.replace(&repo.repo_path().display().to_string(), &repo_dir.path().join("repo").display().to_string()),
    )
    .unwrap();
    repo.ok(&["stanza-create"]);
    repo.backup("full");
    cluster.psql("postgres", "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 100 = 0");
    repo.backup("incr");
    let expected = cluster.psql("postgres", "SELECT sum(abalance) FROM pgbench_accounts");

    // Space is measured around the restore alone: a started server adds WAL of its own.
    let dir = PgDir::new(Some(fs.path()), "restore-");
    let data = dir.path().join("data");
    let used_before = fs.used_bytes();
    let report: serde_json::Value =
        serde_json::from_str(&repo.ok(&["restore", "--data", data.to_str().unwrap(), "--json"])).unwrap();
    let cloned = report["bytes_cloned"].as_u64().unwrap();
    let written = report["bytes_written"].as_u64().unwrap();
    assert!(cloned > 10 * written, "restore copied instead of cloning: {report}");
    assert!(fs.used_bytes().saturating_sub(used_before) < cloned / 4, "cloned extents took space");
    let restored = start_copy(&cluster, &data);
    assert_eq!(restored.psql("postgres", "SELECT sum(abalance) FROM pgbench_accounts"), expected);
    restored.amcheck();
}
