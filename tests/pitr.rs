//! WAL archiving and point-in-time recovery on PostgreSQL 15 and 18: the heartbeat scenario
//! (recover to a time, a restore point, an LSN, an XID inclusive and exclusive), a timeline
//! switch, a missing segment, a push from another cluster, concurrent pushes, and PITR onto a fork
//! while the source keeps writing.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::heartbeat::*;
use common::*;

/// Restores with `args` into a new directory, starts it, waits for recovery to pause, and returns
/// the last heartbeat (id, epoch) it holds.
fn recover(cluster: &Cluster, repo: &RepoSetup, args: &[&str]) -> (i32, f64) {
    recover_with(cluster, args, |all| repo.ok(all))
}

/// [`recover`] with the restore run by `restore`.
fn recover_with(cluster: &Cluster, args: &[&str], restore: impl FnOnce(&[&str]) -> String) -> (i32, f64) {
    let dir = PgDir::new(None, "pitr-");
    let data = dir.path().join("data");
    let mut all = vec!["restore", "--data", data.to_str().unwrap()];
    all.extend(args);
    restore(&all);
    assert!(data.join("recovery.signal").exists());
    let restored = start_copy(cluster, &data);
    wait_paused(&restored);
    let last =
        restored.psql("postgres", "SELECT id || ' ' || extract(epoch FROM ts) FROM heartbeat ORDER BY id DESC LIMIT 1");
    let (id, epoch) = last.split_once(' ').unwrap();
    (id.parse().unwrap(), epoch.parse().unwrap())
}

fn wait_paused(server: &RunningFork) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.psql("postgres", "SELECT pg_get_wal_replay_pause_state()") != "paused" {
        assert!(Instant::now() < deadline, "recovery never paused at its target");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn heartbeat_targets(version: &PgVersion) {
    let (cluster, repo) = archiving_cluster(version);
    let beats = heartbeats(&cluster, 60, Some(30));
    archive_now(&repo);

    // Time: the last heartbeat is at or before the target, and within a second of it.
    let target = &beats[20];
    let (_, epoch) = recover(&cluster, &repo, &["--type", "time", "--target", &target.ts]);
    assert!(epoch <= target.epoch && target.epoch - epoch < 1.0, "time target {} landed at {epoch}", target.epoch);

    // Regression: a relative --config was written as is into restore_command, which the server
    // runs from its data directory, so recovery could not read the configuration and stopped.
    let relative = |all: &[&str]| succeeded(all, repo.command_relative(all).output().unwrap());
    let (_, relative_epoch) = recover_with(&cluster, &["--type", "time", "--target", &target.ts], relative);
    assert_eq!(relative_epoch, epoch, "a relative --config recovered elsewhere");
    let verified = relative(&["verify", "--type", "time", "--target", &target.ts, "--output", "json"]);
    let verified: serde_json::Value = serde_json::from_str(&verified).unwrap();
    assert_eq!(verified["proven"], true, "verify with a relative --config: {verified}");

    // A named restore point created right after beat 30.
    let (id, _) = recover(&cluster, &repo, &["--type", "name", "--target", "rp1"]);
    assert_eq!(id, beats[29].id);

    // An LSN taken just before beat 41 was written.
    let target = &beats[40];
    let (id, epoch) = recover(&cluster, &repo, &["--type", "lsn", "--target", &target.lsn]);
    assert!(
        id <= target.id && id >= target.id - 2 && target.epoch - epoch < 1.0,
        "lsn target {} landed at beat {id}",
        target.lsn
    );

    // An XID, inclusive and exclusive.
    let target = &beats[50];
    let (id, _) = recover(&cluster, &repo, &["--type", "xid", "--target", &target.txid.to_string()]);
    assert_eq!(id, target.id);
    let (id, _) =
        recover(&cluster, &repo, &["--type", "xid", "--target", &target.txid.to_string(), "--target-exclusive"]);
    assert_eq!(id, target.id - 1);

    let info: serde_json::Value = repo.info();
    assert_eq!(info["archive"][0]["timeline"], 1);
    assert!(info["recovery_window"].is_array());
}
on_each_version!(heartbeat_targets_15, heartbeat_targets_18, heartbeat_targets);

#[test]
fn a_timeline_switch_and_pitr_onto_the_new_timeline() {
    if !can_run("a_timeline_switch_and_pitr_onto_the_new_timeline") {
        return;
    }
    let (cluster, repo) = archiving_cluster(&PgVersion::get(18));
    let beats = heartbeats(&cluster, 20, None);
    archive_now(&repo);

    // PITR to beat 10 and promote: timeline 2.
    let dir = PgDir::new(None, "tl2-");
    let data = dir.path().join("data");
    repo.ok(&[
        "restore",
        "--data",
        data.to_str().unwrap(),
        "--type",
        "time",
        "--target",
        &beats[10].ts,
        "--target-action",
        "promote",
    ]);
    let promoted = start_copy(&cluster, &data);
    let deadline = Instant::now() + Duration::from_secs(60);
    while promoted.psql("postgres", "SELECT pg_is_in_recovery()") != "f" {
        assert!(Instant::now() < deadline, "the recovered cluster never promoted");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(promoted.psql("postgres", "SELECT timeline_id FROM pg_control_checkpoint()"), "2");
    // Archiving back on (the documented step after a PITR), and the new history file pushed.
    promoted.psql("postgres", "ALTER SYSTEM SET archive_mode = on");
    promoted.psql(
        "postgres",
        &format!(
            "ALTER SYSTEM SET archive_command = '{} archive-push %p --config {}'",
            server_side_pgfork().display(),
            repo.config.display()
        ),
    );
    must_run_as_postgres(
        &cluster.version.bin("pg_ctl"),
        &["restart", "-w", "-D", data.to_str().unwrap(), "-l", data.with_extension("log").to_str().unwrap()],
    );
    repo.ok(&["archive-push", data.join("pg_wal/00000002.history").to_str().unwrap()]);
    for _ in 0..5 {
        promoted.psql(
            "postgres",
            "INSERT INTO heartbeat (ts, txid, lsn) VALUES (clock_timestamp(), 0, pg_current_wal_lsn())",
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let tl2_target = promoted.psql("postgres", "SELECT clock_timestamp()::text");
    // A commit after the target: recovery to a time stops at the first one past it.
    std::thread::sleep(Duration::from_millis(100));
    promoted
        .psql("postgres", "INSERT INTO heartbeat (ts, txid, lsn) VALUES (clock_timestamp(), 0, pg_current_wal_lsn())");
    let segment = promoted.psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())");
    let deadline = Instant::now() + Duration::from_secs(60);
    while promoted.psql("postgres", "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") < segment {
        assert!(Instant::now() < deadline, "timeline 2 WAL was not archived");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(promoted);

    // PITR again, to a time on timeline 2: from the timeline-1 backup through the switch.
    let (id, _) = recover(&cluster, &repo, &["--type", "time", "--target", &tl2_target, "--target-timeline", "latest"]);
    assert!(id > beats[10].id, "recovery did not follow timeline 2 (last beat {id})");
    // verify boots the same recovery on a mount (history file and timeline-2 WAL in its pg_wal).
    let check = dir.path().join("timeline2.sql");
    std::fs::write(
        &check,
        format!(
            "DO $$ BEGIN IF (SELECT max(id) FROM heartbeat) <> {id} THEN \
             RAISE EXCEPTION 'verify landed elsewhere than restore'; END IF; END $$;"
        ),
    )
    .unwrap();
    let check = check.to_str().unwrap();
    repo.ok(&["verify", "--type", "time", "--target", &tl2_target, "--target-timeline", "latest", "--sql", check]);
    let info: serde_json::Value = repo.info();
    assert!(info["archive"].as_array().unwrap().iter().any(|a| a["timeline"] == 2), "{info}");
}

#[test]
fn a_missing_segment_fails_before_anything_is_written() {
    if !can_run("a_missing_segment_fails_before_anything_is_written") {
        return;
    }
    let (cluster, repo) = archiving_cluster(&PgVersion::get(15));
    let mut segments = Vec::new();
    for _ in 0..3 {
        heartbeats(&cluster, 3, None);
        segments.push(cluster.psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())"));
    }
    let beats = heartbeats(&cluster, 3, None);
    archive_now(&repo);
    let missing = &segments[1];
    std::fs::remove_file(repo.repo_path().join("main/archive").join(&missing[..8]).join(missing)).unwrap();
    let target = PgDir::new(None, "nowal-").path().join("data");
    let out = repo.run(&["restore", "--data", target.to_str().unwrap(), "--type", "time", "--target", &beats[2].ts]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains(&format!("WAL segment {missing} is missing")), "{stderr}");
    assert!(!target.exists(), "the pre-flight check wrote something");
    // A target before the earliest backup is refused too.
    let out = repo.run(&[
        "restore",
        "--data",
        target.to_str().unwrap(),
        "--type",
        "time",
        "--target",
        "2001-01-01 00:00:00+00",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("before the earliest backup"));
}

#[test]
fn pushes_from_another_cluster_are_refused_and_concurrent_pushes_agree() {
    if !can_run("pushes_from_another_cluster_are_refused_and_concurrent_pushes_agree") {
        return;
    }
    let (cluster, repo) = archiving_cluster(&PgVersion::get(18));
    let mut other = Cluster::init(&PgVersion::get(18), None);
    other.start();
    let name = other.psql("postgres", "SELECT pg_walfile_name(pg_current_wal_lsn())");
    other.stop();
    let foreign = other.data.join("pg_wal").join(&name);
    let out = repo.run(&["archive-push", foreign.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is this the correct stanza?"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A segment of our cluster, taken out of the archive and pushed twice at the same time.
    let seg = cluster.psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())");
    archive_now(&repo);
    let archived = repo.repo_path().join("main/archive").join(&seg[..8]).join(&seg);
    std::fs::remove_file(&archived).unwrap();
    let local = cluster.data.join("pg_wal").join(&seg);
    let push = || {
        let mut push = repo.command(&["archive-push", local.to_str().unwrap()]);
        std::thread::spawn(move || push.output().unwrap())
    };
    let (a, b) = (push(), push());
    for out in [a.join().unwrap(), b.join().unwrap()] {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let get_dir = PgDir::new(None, "get-");
    let fetched = get_dir.path().join("seg");
    repo.ok(&["archive-get", &seg, fetched.to_str().unwrap(), "--no-prefetch"]);
    assert_eq!(std::fs::read(&fetched).unwrap(), std::fs::read(&local).unwrap());
    // Absent files are exit code 1, as PostgreSQL expects.
    let out = repo.run(&["archive-get", "00000009000000000000000A", fetched.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
}

/// The names of the variables in the environment of the postmaster of `data` (the first line of
/// its postmaster.pid).
fn postmaster_environment(data: &Path) -> Vec<String> {
    let pid_file = std::fs::read_to_string(data.join("postmaster.pid")).unwrap();
    let pid = pid_file.lines().next().unwrap().trim();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    environ
        .split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| String::from_utf8_lossy(v).split('=').next().unwrap().to_string())
        .collect()
}

/// Panics when the server of `data` has a PGFORK_* or AWS_* variable in its environment.
fn assert_no_secrets_in_environment(data: &Path) {
    let names = postmaster_environment(data);
    let leaked: Vec<&String> = names.iter().filter(|n| n.starts_with("PGFORK_") || n.starts_with("AWS_")).collect();
    assert!(leaked.is_empty(), "the server pgfork started on {} has {leaked:?} in its environment", data.display());
}

/// Files under `dir` (not below it) whose name mentions secrets.
fn secrets_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().contains("secrets"))
        .collect()
}

/// `repo`'s pgfork command with S3 keys in its environment too (unused by this repository: a
/// server must get them no more than the passphrase).
fn with_aws_keys(mut command: std::process::Command) -> std::process::Command {
    command.env("AWS_ACCESS_KEY_ID", "AKIAPGFORKTESTFAKE").env("AWS_SECRET_ACCESS_KEY", "pgfork/test/fake/secret");
    command
}

/// A child process interrupted (SIGINT) and waited for on drop, so a failed assertion does not leave
/// a kept verify running.
struct Interrupted(std::process::Child);

impl Drop for Interrupted {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
            let _ = self.0.wait();
        }
    }
}

/// PITR onto a fork while the source writes, then verify --keep to the same target, with the
/// repository's passphrase only in pgfork's environment: the servers pgfork starts get neither it
/// nor the S3 keys in theirs, and archive-get finds it in a private file that is gone once pgfork
/// is done.
fn pitr_onto_a_fork_while_the_source_writes(version: &PgVersion) {
    let (cluster, mut repo) = archiving_cluster(version);
    repo.secrets_from_env_only();
    let beats = heartbeats(&cluster, 30, None);
    archive_now(&repo);
    let target = beats[15].clone();
    let writer = {
        let target = cluster.target("postgres");
        std::thread::spawn(move || {
            let session = pgfork::pg::session::Session::connect(&target).unwrap();
            for _ in 0..40 {
                session.query_one(HEARTBEAT_SQL, &[]).unwrap();
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let dir = PgDir::new(None, "pitrfork-");
    let dst = dir.path().join("data1");
    let port = free_port();
    let port_text = port.to_string();
    let args = [
        "pitr",
        "--fork",
        "1",
        "-D",
        dst.to_str().unwrap(),
        "-P",
        &port_text,
        "--type",
        "time",
        "--target",
        &target.ts,
        "--start",
        "--json",
    ];
    let out = succeeded(&args, with_aws_keys(repo.command(&args)).output().unwrap());
    writer.join().unwrap();
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["reached"]["state"], "paused", "{report}");
    assert!(
        report["bytes_unchanged"].as_u64().unwrap() > report["bytes_written"].as_u64().unwrap(),
        "the fork should share most pages: {report}"
    );
    let fork = RunningFork::beside(&cluster, &dst, port);
    let last: f64 = fork.psql("postgres", "SELECT extract(epoch FROM max(ts)) FROM heartbeat").parse().unwrap();
    assert!(last <= target.epoch && target.epoch - last < 1.0, "fork landed at {last}, target {}", target.epoch);
    assert_eq!(fork.psql("postgres", "SHOW port"), port.to_string());
    assert_eq!(fork.psql("postgres", "SHOW archive_mode"), "off");
    // Recovery went past the set through archive-get, which read the passphrase from a file named
    // in restore_command: not from the server's environment, which holds no secret; the file is
    // gone now that pitr is done.
    assert_no_secrets_in_environment(&dst);
    let restore_command = fork.psql("postgres", "SHOW restore_command");
    assert!(restore_command.contains("--secrets"), "{restore_command}");
    assert_eq!(secrets_files(dir.path()), Vec::<PathBuf>::new(), "pitr left its secrets file");
    let log = std::fs::read_to_string(dst.join("log/pgfork-start.log")).unwrap();
    assert!(!log.contains("external PID file"), "{log}");
    // The source went on writing and archiving, untouched.
    assert!(cluster.psql("postgres", "SELECT count(*) FROM heartbeat").parse::<usize>().unwrap() >= 70);
    assert_eq!(cluster.psql("postgres", "SELECT pg_is_in_recovery()"), "f");
    archive_now(&repo);

    // verify --keep to the same target: the kept server has no secret in its environment either;
    // the secrets file (its owner's alone) lives in the work directory until the teardown.
    let work = dir.path().join("verify");
    let (out_log, err_log) = (dir.path().join("verify.out"), dir.path().join("verify.err"));
    let args = ["verify", "--type", "time", "--target", &target.ts, "--keep", "--work", work.to_str().unwrap()];
    let mut verify = Interrupted(
        with_aws_keys(repo.command(&args))
            .args(["--output", "json"])
            .stdout(std::fs::File::create(&out_log).unwrap())
            .stderr(std::fs::File::create(&err_log).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while !std::fs::read_to_string(&err_log).unwrap().contains("kept running") {
        assert!(
            verify.0.try_wait().unwrap().is_none(),
            "verify --keep exited: {}",
            std::fs::read_to_string(&err_log).unwrap()
        );
        assert!(Instant::now() < deadline, "verify --keep never reported its server");
        std::thread::sleep(Duration::from_millis(50));
    }
    let kept = work.join("data");
    assert_no_secrets_in_environment(&kept);
    let secrets = secrets_files(&work);
    assert_eq!(secrets.len(), 1, "{secrets:?}");
    {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&secrets[0]).unwrap();
        let postgres = nix::unistd::User::from_name(PG_USER).unwrap().unwrap();
        assert_eq!((meta.mode() & 0o777, meta.uid()), (0o600, postgres.uid.as_raw()), "{}", secrets[0].display());
    }
    let pid_file = std::fs::read_to_string(kept.join("postmaster.pid")).unwrap();
    let kept_port: u16 = pid_file.lines().nth(3).unwrap().trim().parse().unwrap();
    let kept_psql = |sql: &str| psql(version, &work.join("run"), kept_port, "postgres", sql);
    assert!(kept_psql("SHOW restore_command").contains("--secrets"));
    // It boots with syncfs, set by verify for its own server (a mounted set shows what restore writes).
    assert_eq!(kept_psql("SHOW recovery_init_sync_method"), "syncfs");
    let log = std::fs::read_to_string(work.join("postgres.log")).unwrap();
    assert!(!log.contains("external PID file"), "{log}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(verify.0.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let status = verify.0.wait().unwrap();
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out_log).unwrap()).unwrap();
    assert!(status.success() && report["proven"] == true, "{status}: {report}");
    assert!(!work.exists(), "the work directory (and the secrets file in it) outlived verify");
}
on_each_version!(pitr_fork_15, pitr_fork_18, pitr_onto_a_fork_while_the_source_writes);

#[test]
fn pg_pitr_name_recovers_a_stopped_instance_in_place() {
    if !can_run("pg_pitr_name_recovers_a_stopped_instance_in_place") {
        return;
    }
    let (mut cluster, repo) = archiving_cluster(&PgVersion::get(18));
    let beats = heartbeats(&cluster, 20, None);
    archive_now(&repo);
    let bin_dir = PgDir::new(None, "bin-");
    let pg_pitr = bin_dir.path().join("pg-pitr");
    std::os::unix::fs::symlink(server_side_pgfork(), &pg_pitr).unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(&pg_pitr)
            .args(args)
            .env("PGFORK_CONFIG", &repo.config)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let data = cluster.data.to_str().unwrap().to_string();
    // Refused while the instance runs.
    let out = run(&["-D", &data, "-t", &beats[8].ts, "-y"]);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    cluster.stop();
    // -c prints the plan and writes nothing.
    let before = std::fs::read(cluster.data.join("postgresql.auto.conf")).unwrap();
    let out = run(&["-D", &data, "-t", &beats[8].ts, "-c"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("recovery plan") && text.contains("recovery_target_time"), "{text}");
    assert_eq!(std::fs::read(cluster.data.join("postgresql.auto.conf")).unwrap(), before);
    // Without -y and without a terminal it asks for confirmation, so it refuses.
    assert_eq!(run(&["-D", &data, "-t", &beats[8].ts]).status.code(), Some(3));
    let out = run(&["-D", &data, "-t", &beats[8].ts, "-y"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    cluster.start_no_wait_check();
    let restored = RunningFork::beside(&cluster, &cluster.data, cluster.port);
    wait_paused(&restored);
    let last: f64 = restored.psql("postgres", "SELECT extract(epoch FROM max(ts)) FROM heartbeat").parse().unwrap();
    assert!(last <= beats[8].epoch && beats[8].epoch - last < 1.0);
    std::mem::forget(restored); // the cluster's own drop stops it
}
