//! Snapshot points and the forks that use them, on XFS with PostgreSQL 18 at pgbench scale 1: a
//! point whose lease is held (a shared flock of `<point>/lease`, as a fork takes it) is neither
//! deleted nor expired; a point being deleted is passed over for the next older one, and the fork
//! recovers right from it; forks racing `snapshot --delete` of their point either succeed or say
//! the point was deleted meanwhile.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

use crate::common::heartbeat::archive_now;
use crate::common::*;
use crate::loopfs::{self, Kind, LoopFs};

/// The lease file of a snapshot point, as pgfork documents it.
const LEASE: &str = pgfork::stanza::snapshots::LEASE;

/// An archiving PostgreSQL 18 cluster on `fs` with pgbench data at scale 1, a stanza, and a table
/// of marks to tell where a fork's recovery stopped.
fn small_cluster(fs: &LoopFs) -> (Cluster, RepoSetup) {
    let mut cluster = Cluster::init(&PgVersion::get(18), Some(fs.path()));
    let repo = RepoSetup::new(&cluster, None, "");
    repo.enable_archiving(&cluster);
    cluster.start();
    repo.ok(&["stanza-create"]);
    cluster.pgbench_init("postgres", 1);
    cluster.psql("postgres", "CREATE TABLE marks (n int PRIMARY KEY)");
    (cluster, repo)
}

/// Takes a snapshot point; returns its id and directory.
fn snapshot(repo: &RepoSetup) -> (String, PathBuf) {
    let report: serde_json::Value = serde_json::from_str(&repo.ok(&["snapshot", "--json"])).unwrap();
    (report["point"]["id"].as_str().unwrap().to_string(), PathBuf::from(report["dir"].as_str().unwrap()))
}

fn listed(repo: &RepoSetup) -> Vec<String> {
    let info = repo.info();
    info["snapshot_points"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap().to_string()).collect()
}

/// Holds `point`'s lease the way a fork does.
fn hold_lease(point: &Path) -> Flock<File> {
    let file = File::open(point.join(LEASE)).unwrap();
    Flock::lock(file, FlockArg::LockSharedNonblock).map_err(|(_, e)| e).unwrap()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `pitr --fork <id>` to `dst` on a free port with `target` (`--type`, then `--target` if any).
fn pitr_fork_args(id: u32, dst: &Path, port: u16, target: &[&str]) -> Vec<String> {
    let mut args: Vec<String> =
        ["pitr", "--fork", &id.to_string(), "-D", dst.to_str().unwrap(), "-P", &port.to_string(), "--json"]
            .map(String::from)
            .into();
    args.push("--type".into());
    args.extend(target.iter().map(|s| s.to_string()));
    args
}

#[test]
fn a_held_snapshot_point_is_kept_and_a_deleted_one_passed_over() {
    if !can_run("snapshot point leases") || !loopfs::available(Kind::XfsReflink) {
        return;
    }
    let fs = LoopFs::new(Kind::XfsReflink, 1024);
    let (cluster, repo) = small_cluster(&fs);
    let (first, _) = snapshot(&repo);
    cluster.psql("postgres", "INSERT INTO marks VALUES (1)");
    let (second, second_dir) = snapshot(&repo);
    cluster.psql("postgres", "INSERT INTO marks VALUES (2)");
    let (third, third_dir) = snapshot(&repo);
    cluster.psql("postgres", "INSERT INTO marks VALUES (3)");
    std::thread::sleep(Duration::from_millis(300));
    let target = cluster.psql("postgres", "SELECT clock_timestamp()::text");
    std::thread::sleep(Duration::from_millis(300));
    cluster.psql("postgres", "INSERT INTO marks VALUES (4)");
    archive_now(&repo);

    // The newest point before the target is being deleted (renamed to its deleting name): the fork
    // takes the next older one and replays from there to the target.
    let deleting = third_dir.with_file_name(format!(".{third}.deleting"));
    std::fs::rename(&third_dir, &deleting).unwrap();
    assert_eq!(listed(&repo), [first.clone(), second.clone()], "a point being deleted is listed");
    let forks = PgDir::new(Some(fs.path()), "forks-");
    let dst = forks.path().join("fork1");
    let port = free_port();
    let mut args = pitr_fork_args(1, &dst, port, &["time", "--target", &target]);
    args.push("--start".into());
    let report: serde_json::Value = serde_json::from_str(&repo.ok(&strs(&args))).unwrap();
    assert_eq!(report["from"], format!("snapshot point {second}"), "{report}");
    assert_eq!(report["reached"]["state"], "paused", "{report}");
    let fork = RunningFork::beside(&cluster, &dst, port);
    assert_eq!(fork.psql("postgres", "SELECT string_agg(n::text, ',' ORDER BY n) FROM marks"), "1,2,3");
    assert_eq!(fork.psql("postgres", "SELECT count(*) FROM pgbench_accounts"), "100000");
    drop(fork);
    // The next snapshot finishes the interrupted deletion.
    let (fourth, fourth_dir) = snapshot(&repo);
    assert!(!deleting.exists(), "the next snapshot left {}", deleting.display());

    // While a fork holds the second point, it is neither deleted nor expired.
    let lease = hold_lease(&second_dir);
    let out = repo.run(&["snapshot", "--delete", &second]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "a held point was deleted: {err}");
    assert!(err.contains(&format!("snapshot point {second} is in use")), "{err}");
    assert!(err.contains(&format!("pid {}", std::process::id())), "the holder is not named: {err}");
    repo.append_config("snapshot_retention = 1\n");
    let expired: serde_json::Value = serde_json::from_str(&repo.ok(&["expire", "--json"])).unwrap();
    assert_eq!(expired["snapshot_points_removed"], serde_json::json!([first]), "{expired}");
    let in_use = expired["snapshot_points_in_use"].as_array().unwrap();
    assert_eq!(in_use.len(), 1, "{expired}");
    assert!(in_use[0].as_str().unwrap().starts_with(&format!("{second}: pid {}", std::process::id())), "{expired}");
    assert_eq!(listed(&repo), [second.clone(), fourth.clone()]);
    assert!(second_dir.join("data").join(pgfork::stanza::snapshots::HIDDEN_PG_VERSION).is_file());

    // Let go, it goes.
    drop(lease);
    repo.ok(&["snapshot", "--delete", &second]);
    assert_eq!(listed(&repo), [fourth]);
    assert!(fourth_dir.exists());
}

#[test]
fn forks_racing_deletes_of_their_snapshot_point_never_clone_half_a_point() {
    if !can_run("forks racing snapshot deletes") || !loopfs::available(Kind::XfsReflink) {
        return;
    }
    let fs = LoopFs::new(Kind::XfsReflink, 1024);
    let (cluster, repo) = small_cluster(&fs);
    // An older point no trial deletes: a fork always has one to fall back to.
    let (oldest, _) = snapshot(&repo);
    let forks = PgDir::new(Some(fs.path()), "forks-");

    // How long a fork takes undisturbed: the deletes land across that window.
    let calibrate = forks.path().join("calibrate");
    let started = Instant::now();
    repo.ok(&strs(&pitr_fork_args(1, &calibrate, free_port(), &["immediate"])));
    let fork_time = started.elapsed();
    std::fs::remove_dir_all(&calibrate).unwrap();

    // The delete starts from well before the fork (gone before the fork lists) to well into it
    // (refused: the fork holds the point), in eighths of a fork's time.
    let mut outcomes = Vec::new();
    for (n, eighths) in (-4i32..=8).enumerate() {
        cluster.psql("postgres", &format!("INSERT INTO marks VALUES ({n})"));
        let (point, _) = snapshot(&repo);
        let dst = forks.path().join(format!("fork{n}"));
        let fork_args = pitr_fork_args(2, &dst, free_port(), &["immediate"]);
        let fork_command = || repo.command(&strs(&fork_args)).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn();
        let delete_command =
            || repo.command(&["snapshot", "--delete", &point]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn();
        let offset = fork_time * eighths.unsigned_abs() / 8;
        let (fork, delete) = if eighths < 0 {
            let delete = delete_command().unwrap();
            std::thread::sleep(offset);
            (fork_command().unwrap(), delete)
        } else {
            let fork = fork_command().unwrap();
            std::thread::sleep(offset);
            (fork, delete_command().unwrap())
        };
        let (fork, delete) = (fork.wait_with_output().unwrap(), delete.wait_with_output().unwrap());

        let (fork_err, delete_err) = (stderr(&fork), stderr(&delete));
        assert!(
            !fork_err.contains("not a snapshot point's clone"),
            "trial {n}: the fork cloned a half-deleted point: {fork_err}"
        );
        let from = if fork.status.success() {
            let report: serde_json::Value = serde_json::from_slice(&fork.stdout).unwrap();
            let from = report["from"].as_str().unwrap().to_string();
            assert!(
                from == format!("snapshot point {point}") || from == format!("snapshot point {oldest}"),
                "{report}"
            );
            assert!(is_prepared_fork(&dst), "trial {n}: {} is not a prepared fork", dst.display());
            from
        } else {
            assert!(fork_err.contains(&format!("snapshot point {point} was deleted")), "trial {n}: {fork_err}");
            "failed: deleted meanwhile".to_string()
        };
        let deleted = delete.status.success();
        if !deleted {
            assert_eq!(delete.status.code(), Some(3), "trial {n}: {delete_err}");
            assert!(delete_err.contains(&format!("snapshot point {point} is in use")), "trial {n}: {delete_err}");
            assert_eq!(
                from,
                format!("snapshot point {point}"),
                "trial {n}: a refused delete, yet the fork passed the point over"
            );
            repo.ok(&["snapshot", "--delete", &point]);
        }
        outcomes.push(format!(
            "delete started {}/8 of {} ms after the fork: fork from {from}; delete {}",
            eighths,
            fork_time.as_millis(),
            if deleted { "done" } else { "refused" }
        ));
        let _ = std::fs::remove_dir_all(&dst);
    }
    eprintln!("{}", outcomes.join("\n"));
    assert_eq!(listed(&repo), [oldest], "{outcomes:#?}");
    let leftovers: Vec<_> = std::fs::read_dir(repo_snapshot_dir(&cluster))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// The stanza's snapshot directory (the default: beside the data directory).
fn repo_snapshot_dir(cluster: &Cluster) -> PathBuf {
    cluster.data.parent().unwrap().join("pgfork-snapshots").join("main")
}

/// Whether `dst` holds a fork made ready to recover (not started).
fn is_prepared_fork(dst: &Path) -> bool {
    dst.join("PG_VERSION").is_file() && dst.join("recovery.signal").is_file() && dst.join("global/pg_control").is_file()
}
