//! In-place PITR under a real Patroni cluster (etcd, a leader and a streaming replica of
//! PostgreSQL 15): the seeds' procedure as one command. Failover stays paused while the leader's
//! Patroni is away for longer than the leader key lives, the recovered leader comes back under
//! Patroni on a new timeline, the replica is rebuilt from it, and a fork of the leader never
//! joins the cluster.

mod common;

use std::time::{Duration, Instant};

use common::patroni::{self, PatroniCluster};
use common::{PgDir, RepoSetup, free_port, must_run_as_postgres, server_side_pgfork};

#[test]
fn in_place_pitr_under_patroni() {
    if !common::can_run("in_place_pitr_under_patroni") || !patroni::available("in_place_pitr_under_patroni") {
        return;
    }
    let mut cluster = PatroniCluster::new("pgfork-test");
    let leader = &cluster.members[0];
    let socket = cluster.socket_dir.path().display().to_string();
    let repo = RepoSetup::new_for(&leader.data, leader.port, &socket, &cluster.version, None, "");
    let archive = format!("{} archive-push %p --config {}", server_side_pgfork().display(), repo.config.display());
    cluster.start(&archive);
    let (leader, replica) = (&cluster.members[0], &cluster.members[1]);

    repo.ok(&["stanza-create"]);
    let bench = |args: &[&str]| {
        let port = leader.port.to_string();
        let mut all = vec!["-h", socket.as_str(), "-p", port.as_str()];
        all.extend(args);
        all.push("postgres");
        must_run_as_postgres(&cluster.version.bin("pgbench"), &all);
    };
    bench(&["-i", "-q", "-s", "1"]);
    repo.backup("full");
    bench(&["-T", "3", "-c", "2", "-n"]);
    cluster.psql(1, "CREATE TABLE marker(v text); INSERT INTO marker VALUES ('before')");
    let target = cluster.psql(1, "SELECT clock_timestamp()");
    std::thread::sleep(Duration::from_millis(1100));
    cluster.psql(1, "INSERT INTO marker VALUES ('after'); DROP TABLE pgbench_history");
    let check = repo.ok(&["check"]);
    assert!(check.contains("managed by Patroni: member pgfork-test-1 of scope pgfork-test"), "{check}");
    let info: serde_json::Value = serde_json::from_str(&repo.ok(&["info", "--output", "json"])).unwrap();
    assert!(info["patroni"].as_str().unwrap().contains("primary"), "{info}");
    let timeline_before = leader.rest().status().unwrap().timeline.unwrap();

    // A plain restore into a member's data directory is refused, pointing at the way that works.
    let out = repo.run(&["restore", "--delta", "--data", leader.data.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("Patroni") && stderr.contains("--in-place"), "{stderr}");

    // First half: failover paused, Patroni and PostgreSQL stopped, restored, started by hand at
    // the target.
    let first: serde_json::Value = serde_json::from_str(&repo.ok(&[
        "pitr",
        "--in-place",
        "--type",
        "time",
        "--target",
        target.trim(),
        "-y",
        "--json",
    ]))
    .unwrap();
    let steps: Vec<&str> = first["steps"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(steps, ["pause", "stop_patroni", "stop_postgres", "restore", "start_postgres"], "{first}");
    assert_eq!(first["reached"]["state"], "paused", "{first}");
    assert!(first["next"].as_str().unwrap().contains("--resume"), "{first}");
    assert_eq!(cluster.psql(1, "SELECT string_agg(v, ',') FROM marker").trim(), "before");
    assert_eq!(cluster.psql(1, "SELECT pg_is_in_recovery()").trim(), "t");
    // The leader key outlives no Patroni: wait past its TTL (20 s) with failover paused.
    let stopped = Instant::now();
    while stopped.elapsed() < Duration::from_secs(26) {
        let status = replica.rest().status().unwrap();
        assert_eq!(status.role, "replica", "the replica must not take over while failover is paused");
        assert_eq!(status.pause, Some(true));
        std::thread::sleep(Duration::from_secs(2));
    }
    // Running it again now is refused: the run waits for --resume.
    let again = repo.run(&["pitr", "--in-place", "--type", "time", "--target", target.trim(), "-y"]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));

    // Second half: promoted, back under Patroni as leader, replica rebuilt, failover resumed.
    let second: serde_json::Value =
        serde_json::from_str(&repo.ok(&["pitr", "--in-place", "--resume", "--json"])).unwrap();
    let steps: Vec<&str> = second["steps"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(steps, ["promote", "start_patroni", "reinitialize_replicas", "resume"], "{second}");
    for step in first["steps"].as_array().unwrap().iter().chain(second["steps"].as_array().unwrap()) {
        eprintln!("in-place step {:<22} {:>8.0} ms  {}", step["name"], step["ms"].as_f64().unwrap(), step["did"]);
    }
    let leader_status = leader.rest().status().unwrap();
    assert_eq!(leader_status.role, "primary");
    assert!(leader_status.timeline.unwrap() > timeline_before);
    assert_ne!(leader_status.pause, Some(true));
    let replica_status = replica.rest().status().unwrap();
    assert_eq!(replica_status.replication_state.as_deref(), Some("streaming"));
    assert_eq!(replica_status.timeline, leader_status.timeline);
    assert_eq!(cluster.psql(2, "SELECT string_agg(v, ',') FROM marker").trim(), "before");
    assert_eq!(cluster.psql(2, "SELECT count(*) > 0 FROM pgbench_history").trim(), "t");
    let idle = repo.run(&["pitr", "--in-place", "--resume"]);
    assert!(String::from_utf8_lossy(&idle.stderr).contains("no in-place recovery"));
    // The new timeline archives into the repository.
    repo.ok(&["check"]);

    // A fork of the leader: its own pg_hba.conf, not the member's that Patroni rewrites, and
    // nothing of it in etcd.
    let keys = cluster.keys();
    let dir = PgDir::new(None, "pfork-");
    let dst = dir.path().join("data");
    let port = free_port();
    let port_text = port.to_string();
    let leader_port = leader.port.to_string();
    let bindir = cluster.version.bindir.display().to_string();
    let data = leader.data.display().to_string();
    let fork = [
        "fork",
        "7",
        "-d",
        &data,
        "-p",
        &leader_port,
        "-D",
        dst.to_str().unwrap(),
        "-P",
        &port_text,
        "--bindir",
        &bindir,
        "-y",
        "--start",
    ];
    common::pgfork_ok(&fork);
    let hba = common::psql(&cluster.version, cluster.socket_dir.path(), port, "postgres", "SHOW hba_file");
    assert_eq!(hba.trim(), dst.join("pg_hba.conf").display().to_string());
    assert!(!dst.join("patroni.dynamic.json").exists());
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(cluster.keys(), keys, "the fork changed nothing in etcd");
    assert_eq!(leader.rest().cluster().unwrap().members.len(), 2);
    let pg_ctl = cluster.version.bin("pg_ctl");
    must_run_as_postgres(&pg_ctl, &["stop", "-m", "fast", "-D", dst.to_str().unwrap()]);
}
