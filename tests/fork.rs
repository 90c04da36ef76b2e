//! `pgfork fork` against real PostgreSQL 15 and 18 clusters: hot under pgbench, cold, with a
//! tablespace, and under the pg-fork name.

mod common;

use std::path::PathBuf;

use common::*;

fn hot_fork_while_pgbench_writes(version: &PgVersion) {
    let outcome = scenarios::hot_fork_under_pgbench(version, None, 1);
    let report = &outcome.report;
    assert!(report["wal_segments"].as_u64().unwrap() >= 1);
    assert!(report["start_lsn"].is_string() && report["stop_lsn"].is_string());
    // The backup label was consumed by recovery.
    assert!(outcome.fork.data.join("backup_label.old").exists());
    cleanup_fork(outcome.fork);
}
on_each_version!(hot_fork_15, hot_fork_18, hot_fork_while_pgbench_writes);

fn cold_fork_of_a_stopped_cluster(version: &PgVersion) {
    let mut source = Cluster::init(version, None);
    source.start();
    source.pgbench_init("postgres", 1);
    source.psql("postgres", "CREATE TABLE marker AS SELECT 42 AS answer");
    source.stop();
    let dst_dir = PgDir::new(None, "fork-");
    let dst = dst_dir.path().join("cold");
    let port = free_port();
    let out = pgfork_ok(&strs(&fork_args(2, &source, &dst, port, &["-s", "--json"])));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["mode"], "cold");
    assert_eq!(report["crash_recovery"], false);
    assert!(!dst.join("backup_label").exists());
    assert!(!dst.join("postmaster.pid").exists());
    must_run_as_postgres(
        &version.bin("pg_ctl"),
        &["start", "-w", "-D", dst.to_str().unwrap(), "-l", dst.join("log.txt").to_str().unwrap()],
    );
    let fork = RunningFork::beside(&source, &dst, port);
    assert_eq!(fork.psql("postgres", "SELECT answer FROM marker"), "42");
    assert_eq!(fork.psql("postgres", "SELECT count(*) FROM pgbench_accounts"), "100000");
    fork.amcheck();
    drop(fork);
    drop(dst_dir);
}
on_each_version!(cold_fork_15, cold_fork_18, cold_fork_of_a_stopped_cluster);

fn fork_with_a_tablespace(version: &PgVersion) {
    let mut source = Cluster::init(version, None);
    source.start();
    let ts_dir = PgDir::new(None, "ts-");
    source.psql("postgres", &format!("CREATE TABLESPACE extra LOCATION '{}'", ts_dir.path().display()));
    source.psql("postgres", "CREATE TABLE far TABLESPACE extra AS SELECT g AS id FROM generate_series(1, 5000) g");
    let dst_dir = PgDir::new(None, "fork-");
    let dst = dst_dir.path().join("withts");
    let port = free_port();
    let out = pgfork_ok(&strs(&fork_args(3, &source, &dst, port, &["--start", "--json"])));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let fork = RunningFork::beside(&source, &dst, port);
    let oid = source.psql("postgres", "SELECT oid FROM pg_tablespace WHERE spcname = 'extra'");
    let link = std::fs::read_link(dst.join("pg_tblspc").join(&oid)).unwrap();
    let expected = PathBuf::from(format!("{}_tblspc/{oid}", dst.display()));
    assert_eq!(link, expected, "the fork's tablespace must be its own copy");
    assert_eq!(report["tablespaces"][0][1], expected.to_str().unwrap());
    assert_eq!(fork.psql("postgres", "SELECT count(*) FROM far"), "5000");
    assert_eq!(
        fork.psql("postgres", "SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'extra'"),
        expected.to_str().unwrap()
    );
    fork.psql("postgres", "INSERT INTO far SELECT g FROM generate_series(1, 100) g; CHECKPOINT");
    assert_eq!(source.psql("postgres", "SELECT count(*) FROM far"), "5000", "writes to the fork reached the source");
    fork.amcheck();
    drop(fork);
    let _ = std::fs::remove_dir_all(expected.parent().unwrap());
}
on_each_version!(tablespace_fork_15, tablespace_fork_18, fork_with_a_tablespace);

#[test]
fn pg_fork_name_takes_the_seed_flags() {
    if !can_run("pg_fork_name_takes_the_seed_flags") {
        return;
    }
    let version = PgVersion::get(18);
    let mut source = Cluster::init(&version, None);
    source.start();
    let bin_dir = PgDir::new(None, "bin-");
    let pg_fork = bin_dir.path().join("pg-fork");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_pgfork"), &pg_fork).unwrap();
    let dst_dir = PgDir::new(None, "fork-");
    let dst = dst_dir.path().join("data4");
    let port = free_port();
    let out = std::process::Command::new(&pg_fork)
        .args(["4", "--data", source.data.to_str().unwrap(), "--dst", dst.to_str().unwrap(), "--port"])
        .arg(source.port.to_string())
        .arg("--dst-port")
        .arg(port.to_string())
        .arg("--yes")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("(hot,"), "{text}");
    assert!(text.contains(&format!("pg_ctl -D {} start", dst.display())), "{text}");
    assert!(dst.join("backup_label").exists());
    let conf = std::fs::read_to_string(dst.join("postgresql.auto.conf")).unwrap();
    assert!(conf.contains(&format!("port = '{port}'")) && conf.contains("archive_mode = 'off'"), "{conf}");
}

/// Stops a fork and removes its directory.
fn cleanup_fork(fork: RunningFork) {
    let dir = fork.data.parent().unwrap().to_path_buf();
    drop(fork);
    let _ = std::fs::remove_dir_all(dir);
}
