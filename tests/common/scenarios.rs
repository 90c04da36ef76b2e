//! Whole fork scenarios shared by the plain and the file-system tests.

use std::path::Path;

use super::*;

/// The outcome of [`hot_fork_under_pgbench`].
pub struct HotForkOutcome {
    pub report: serde_json::Value,
    pub stderr: String,
    pub fork: RunningFork,
    pub source: Cluster,
}

/// Creates a cluster under `base` with pgbench data at `scale` and a counter table, forks it hot
/// (to a directory under `base`) while pgbench and the counter run, starts the fork, and checks
/// that the fork passes pg_amcheck and its counter lies between the source's before and after.
pub fn hot_fork_under_pgbench(version: &PgVersion, base: Option<&Path>, scale: u32) -> HotForkOutcome {
    let mut source = Cluster::init(version, base);
    source.start();
    source.pgbench_init("postgres", scale);
    source.psql("postgres", "CREATE TABLE counter (n bigint NOT NULL); INSERT INTO counter VALUES (0)");
    let script = source.root.path().join("counter.sql");
    std::fs::write(&script, "UPDATE counter SET n = n + 1;\n").unwrap();
    let script_arg = format!("{}@1", script.display());
    let mut bench = source.pgbench("postgres", &["-c", "2", "-T", "120", "-b", "tpcb-like@3", "-f", &script_arg]);
    std::thread::sleep(Duration::from_millis(1500));

    let before: i64 = source.psql("postgres", "SELECT n FROM counter").parse().unwrap();
    let dst_dir = PgDir::new(base, "fork-");
    let dst = dst_dir.path().join("data1");
    let fork_port = free_port();
    let out = pgfork(&strs(&fork_args(1, &source, &dst, fork_port, &["--start", "--json"])));
    let after: i64 = source.psql("postgres", "SELECT n FROM counter").parse().unwrap();
    let _ = bench.kill();
    let _ = bench.wait();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "fork failed: {stderr}\n{}", String::from_utf8_lossy(&out.stdout));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("fork --json prints JSON");
    std::mem::forget(dst_dir); // removed with the fork below

    let fork = RunningFork::beside(&source, &dst, fork_port);
    assert_eq!(report["mode"], "hot");
    assert_eq!(report["started"], true);
    let in_fork: i64 = fork.psql("postgres", "SELECT n FROM counter").parse().unwrap();
    assert!(before <= in_fork && in_fork <= after, "fork counter {in_fork} outside [{before}, {after}]");
    assert!(after > before, "the workload did not run during the fork");
    fork.amcheck();
    assert_eq!(fork.psql("postgres", "SHOW archive_mode"), "off");
    assert_eq!(fork.psql("postgres", "SHOW port"), fork_port.to_string());
    assert_ne!(fork.psql("postgres", "SHOW cluster_name"), source.psql("postgres", "SHOW cluster_name"));
    assert_eq!(fork.psql("postgres", "SELECT count(*) FROM pg_replication_slots"), "0");
    assert_eq!(fork.psql("postgres", "SELECT pg_is_in_recovery()"), "f");
    HotForkOutcome { report, stderr, fork, source }
}
