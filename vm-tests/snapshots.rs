//! Snapshot points on XFS and Btrfs, PostgreSQL 15 and 18: with heartbeats written every 100 ms
//! under pgbench, `pitr --fork` to times across a window that spans a backup set and two
//! snapshot points lands at the last heartbeat at or before each target and within a second of
//! it, starting from the right point; production keeps writing and archiving; forks leave the
//! snapshot point unchanged; retention removes the oldest; a full file system refuses a new one;
//! another cluster's point is ignored; a killed snapshot leaves nothing listed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::heartbeat::{Beat, HEARTBEAT_SQL, archive_now};
use crate::common::*;
use crate::loopfs::{self, Kind, LoopFs};

/// Writes a heartbeat every 100 ms until stopped; returns the beats.
fn heartbeat_writer(cluster: &Cluster, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<Beat>> {
    let target = cluster.target("postgres");
    std::thread::spawn(move || {
        let session = pgfork::pg::session::Session::connect(&target).unwrap();
        let mut beats = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let row = session.query_one(HEARTBEAT_SQL, &[]).unwrap();
            beats.push(Beat { id: row.get(0), ts: row.get(1), epoch: row.get(2), txid: row.get(3), lsn: row.get(4) });
            std::thread::sleep(Duration::from_millis(100));
        }
        beats
    })
}

/// xxh3 of every file under `dir`, by path: what "unchanged" means for a snapshot point.
fn digests(dir: &Path) -> BTreeMap<PathBuf, u64> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .map(|e| (e.path().to_path_buf(), xxhash_rust::xxh3::xxh3_64(&std::fs::read(e.path()).unwrap())))
        .collect()
}

fn snapshot(repo: &RepoSetup) -> serde_json::Value {
    serde_json::from_str(&repo.ok(&["snapshot", "--json"])).unwrap()
}

fn epoch_of(server: &RunningFork) -> f64 {
    server.psql("postgres", "SELECT extract(epoch FROM max(ts)) FROM heartbeat").parse().unwrap()
}

fn snapshot_points_on(kind: Kind, version: &PgVersion) {
    if !can_run("snapshot points") || !loopfs::available(kind) {
        return;
    }
    let fs = LoopFs::new(kind, 2048);
    let mut cluster = Cluster::init(version, Some(fs.path()));
    let repo = RepoSetup::new(&cluster, None, "");
    repo.append_config("snapshot_retention = 3\n");
    repo.enable_archiving(&cluster);
    cluster.start();
    repo.ok(&["stanza-create"]);
    cluster.pgbench_init("postgres", 2);
    cluster.psql("postgres", "CREATE TABLE heartbeat (id serial PRIMARY KEY, ts timestamptz, txid bigint, lsn pg_lsn)");
    let mut bench = cluster.pgbench("postgres", &["-c", "1", "-R", "40", "-T", "600"]);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = heartbeat_writer(&cluster, Arc::clone(&stop));

    // A backup set, then two snapshot points, a few seconds apart.
    std::thread::sleep(Duration::from_secs(1));
    let set = repo.backup("full");
    std::thread::sleep(Duration::from_secs(2));
    let first = snapshot(&repo);
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let second = snapshot(&repo);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(second["duration_ms"].as_f64().unwrap() < 5000.0, "{second}");
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let beats = writer.join().unwrap();
    archive_now(&repo);

    let info = repo.info();
    let points = info["snapshot_points"].as_array().unwrap();
    assert_eq!(points.len(), 2, "{info}");
    let first_id = first["point"]["id"].as_str().unwrap().to_string();
    let second_id = second["point"]["id"].as_str().unwrap().to_string();
    let dir = PathBuf::from(second["dir"].as_str().unwrap());
    let before = digests(&dir);
    let stop_of = |point: &serde_json::Value| {
        chrono::DateTime::parse_from_rfc3339(point["point"]["stop_time"].as_str().unwrap()).unwrap().timestamp_millis()
            as f64
            / 1000.0
    };
    let set_stop: f64 = {
        let label = set["label"].as_str().unwrap();
        let s = info["sets"].as_array().unwrap().iter().find(|s| s["label"] == label).unwrap();
        chrono::DateTime::parse_from_rfc3339(s["stop_time"].as_str().unwrap()).unwrap().timestamp_millis() as f64
            / 1000.0
    };

    // Targets across the window: before the first point (from the set), between the points (from
    // the first), after the second (from the second).
    let pick = |after: f64, before: f64| {
        let candidates: Vec<&Beat> = beats.iter().filter(|b| b.epoch > after + 0.3 && b.epoch < before - 0.3).collect();
        assert!(!candidates.is_empty(), "no heartbeat between {after} and {before}");
        candidates[candidates.len() / 2].clone()
    };
    let end = beats.last().unwrap().epoch + 1.0;
    let cases = [
        (pick(set_stop, stop_of(&first)), format!("backup {}", set["label"].as_str().unwrap())),
        (pick(stop_of(&first), stop_of(&second)), format!("snapshot point {first_id}")),
        (pick(stop_of(&second), end), format!("snapshot point {second_id}")),
    ];
    let forks = PgDir::new(Some(fs.path()), "forks-");
    let archived_before: i64 = cluster.psql("postgres", "SELECT archived_count FROM pg_stat_archiver").parse().unwrap();
    for (n, (target, from)) in cases.iter().enumerate() {
        let dst = forks.path().join(format!("fork{n}"));
        let port = free_port();
        let report: serde_json::Value = serde_json::from_str(&repo.ok(&[
            "pitr",
            "--fork",
            &(n + 1).to_string(),
            "-D",
            dst.to_str().unwrap(),
            "-P",
            &port.to_string(),
            "--type",
            "time",
            "--target",
            &target.ts,
            "--start",
            "--json",
        ]))
        .unwrap();
        assert_eq!(report["from"], from.as_str(), "{report}");
        assert_eq!(report["reached"]["state"], "paused", "{report}");
        let fork = RunningFork::beside(&cluster, &dst, port);
        let landed = epoch_of(&fork);
        assert!(
            landed <= target.epoch && target.epoch - landed < 1.0,
            "{from}: landed at {landed}, target {}",
            target.epoch
        );
        assert_eq!(fork.psql("postgres", "SHOW archive_mode"), "off");
        assert_eq!(fork.psql("postgres", "SELECT count(*) > 0 FROM pgbench_accounts"), "t");
    }
    // `fork --at` is the same thing under the fork command's flags.
    let target = &cases[2].0;
    let dst = forks.path().join("at");
    let port = free_port();
    let report: serde_json::Value = serde_json::from_str(&repo.ok(&[
        "fork",
        "9",
        "-D",
        dst.to_str().unwrap(),
        "-P",
        &port.to_string(),
        "--at",
        &target.ts,
        "--start",
        "--json",
    ]))
    .unwrap();
    assert_eq!(report["from"], cases[2].1.as_str(), "{report}");
    let fork = RunningFork::beside(&cluster, &dst, port);
    assert!(epoch_of(&fork) <= target.epoch);
    drop(fork);

    // The snapshot point is as it was; production went on writing and archiving.
    assert_eq!(digests(&dir), before, "a fork changed the snapshot point");
    assert_eq!(cluster.psql("postgres", "SELECT pg_is_in_recovery()"), "f");
    archive_now(&repo);
    let archived_after: i64 = cluster.psql("postgres", "SELECT archived_count FROM pg_stat_archiver").parse().unwrap();
    assert!(archived_after > archived_before);
    assert_eq!(cluster.psql("postgres", "SELECT failed_count FROM pg_stat_archiver"), "0");
    // A snapshot point is not a data directory: pg_ctl refuses to start it.
    let started = run_as_postgres(
        &cluster.version.bin("pg_ctl"),
        &["start", "-w", "-t", "5", "-D", dir.join("data").to_str().unwrap()],
    );
    assert!(!started.status.success(), "a snapshot point started");

    // Another cluster's point in the same directory is ignored (and said so).
    let foreign = dir.with_file_name("20000101-000000");
    copy_tree(&dir, &foreign);
    let mut point = pgfork::stanza::snapshots::SnapshotPoint::load(&foreign).unwrap().unwrap();
    point.system_identifier += 1;
    point.id = "20000101-000000".into();
    point.save(&foreign).unwrap();
    let info = repo.info();
    assert_eq!(info["snapshot_points"].as_array().unwrap().len(), 2, "{info}");
    assert!(info["snapshot_notes"].to_string().contains("20000101-000000"), "{info}");

    // A killed snapshot leaves nothing listed (it lists only once complete), and the next
    // removes what it left. A snapshot takes a fraction of a second: kill early.
    let mut listed = 2;
    for delay in [30, 80, 150] {
        let mut killed = repo.command(&["snapshot"]).stdout(std::process::Stdio::null()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        let finished = killed.try_wait().unwrap().is_some();
        let _ = killed.kill();
        let _ = killed.wait();
        listed += usize::from(finished);
        let info = repo.info();
        assert_eq!(info["snapshot_points"].as_array().unwrap().len(), listed, "{info}");
    }
    assert!(listed <= 3, "a snapshot killed after {listed} points");

    // Retention keeps three: new points push the oldest out.
    while listed < 3 {
        snapshot(&repo);
        listed += 1;
    }
    let newest = snapshot(&repo);
    assert_eq!(newest["expired"], serde_json::json!([first_id]), "{newest}");
    let leftovers = std::fs::read_dir(dir.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
        .count();
    assert_eq!(leftovers, 0, "the killed snapshot's partial directory remains");

    // A backup with snapshot = true keeps the snapshot it scanned as a point.
    let keeping = repo.dir.path().join("keeping.toml");
    std::fs::write(&keeping, std::fs::read_to_string(&repo.config).unwrap() + "snapshot = true\n").unwrap();
    let kept: serde_json::Value =
        serde_json::from_str(&run_with_config(&repo, &keeping, &["backup", "--json"])).unwrap();
    assert!(kept["snapshot_point"].is_string(), "{kept}");

    // A file system fuller than snapshot_max_used_percent refuses a new point, saying why.
    let strict = repo.dir.path().join("strict.toml");
    std::fs::write(&strict, std::fs::read_to_string(&repo.config).unwrap() + "snapshot_max_used_percent = 0\n")
        .unwrap();
    let out = run_with_config_output(&repo, &strict, &["snapshot"]);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("full"), "{}", String::from_utf8_lossy(&out.stderr));

    let _ = bench.kill();
    let _ = bench.wait();
}

/// `pgfork <args> --config <config>` (another configuration than the repository's own); stdout.
fn run_with_config(repo: &RepoSetup, config: &Path, args: &[&str]) -> String {
    succeeded(args, run_with_config_output(repo, config, args))
}

fn run_with_config_output(_repo: &RepoSetup, config: &Path, args: &[&str]) -> std::process::Output {
    // (The repository is unencrypted: no passphrase to pass.)
    std::process::Command::new(server_side_pgfork()).args(args).arg("--config").arg(config).output().unwrap()
}

/// Copies a directory tree (files and directories, links as links).
fn copy_tree(from: &Path, to: &Path) {
    let status = std::process::Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap();
    assert!(status.success());
}

#[test]
fn snapshot_points_on_xfs_with_postgresql_18() {
    snapshot_points_on(Kind::XfsReflink, &PgVersion::get(18));
}

#[test]
fn snapshot_points_on_btrfs_with_postgresql_15() {
    snapshot_points_on(Kind::Btrfs, &PgVersion::get(15));
}
