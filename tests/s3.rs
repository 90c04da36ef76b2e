//! Repositories in a bucket of a real S3 server (SeaweedFS on loopback): PITR to a time and onto a
//! fork from S3, two repositories (a directory and a bucket) with WAL pushed to both and restores
//! from either, the server killed during a backup and during a push, wrong credentials, a missing
//! bucket and an unreachable endpoint, and concurrent pushes of different content with and without
//! the server's conditional create.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::heartbeat::*;
use common::s3::Seaweed;
use common::*;
use pgfork::repo::storage::Storage;

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// An archiving PostgreSQL 18 cluster with an encrypted stanza in `server`'s bucket (under
/// `prefix`), a heartbeat table and a full backup.
fn s3_cluster(server: &Seaweed, prefix: &str, extra: &str) -> (Cluster, RepoSetup) {
    let mut cluster = Cluster::init(&PgVersion::get(18), None);
    let lines = format!("{}{extra}", server.repo_lines(prefix, &server.credentials_file()));
    let repo = RepoSetup::new(&cluster, Some("s3 pass"), &lines);
    repo.enable_archiving(&cluster);
    cluster.start();
    repo.ok(&["stanza-create"]);
    cluster.psql("postgres", "CREATE TABLE heartbeat (id serial PRIMARY KEY, ts timestamptz, txid bigint, lsn pg_lsn)");
    repo.backup("full");
    (cluster, repo)
}

fn wait_paused(server: &RunningFork) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.psql("postgres", "SELECT pg_get_wal_replay_pause_state()") != "paused" {
        assert!(Instant::now() < deadline, "recovery never paused at its target");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn last_beat(server: &RunningFork) -> (i32, f64) {
    let last =
        server.psql("postgres", "SELECT id || ' ' || extract(epoch FROM ts) FROM heartbeat ORDER BY id DESC LIMIT 1");
    let (id, epoch) = last.split_once(' ').unwrap();
    (id.parse().unwrap(), epoch.parse().unwrap())
}

#[test]
fn pitr_to_a_time_and_onto_a_fork_from_s3() {
    if !can_run("pitr_to_a_time_and_onto_a_fork_from_s3") {
        return;
    }
    let server = Seaweed::start("pgfork-pitr");
    let (cluster, repo) = s3_cluster(&server, "pitr", "");
    let beats = heartbeats(&cluster, 40, None);
    archive_now(&repo);
    let target = &beats[25];

    let dir = PgDir::new(None, "s3-pitr-");
    let data = dir.path().join("data");
    repo.ok(&["restore", "--data", data.to_str().unwrap(), "--type", "time", "--target", &target.ts]);
    let restored = start_copy(&cluster, &data);
    wait_paused(&restored);
    let (_, epoch) = last_beat(&restored);
    assert!(epoch <= target.epoch && target.epoch - epoch < 1.0, "landed at {epoch}, target {}", target.epoch);
    drop(restored);

    let fork = dir.path().join("fork");
    let port = free_port();
    let report: serde_json::Value = serde_json::from_str(&repo.ok(&[
        "pitr",
        "--fork",
        "4",
        "-D",
        fork.to_str().unwrap(),
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
    assert_eq!(report["reached"]["state"], "paused", "{report}");
    let started = RunningFork::beside(&cluster, &fork, port);
    let (_, epoch) = last_beat(&started);
    assert!(epoch <= target.epoch && target.epoch - epoch < 1.0, "the fork landed at {epoch}");
    // Production kept archiving into the bucket meanwhile.
    assert_eq!(cluster.psql("postgres", "SELECT failed_count FROM pg_stat_archiver"), "0");
}

#[test]
fn two_repositories_take_every_segment_and_restore_from_either() {
    if !can_run("two_repositories_take_every_segment_and_restore_from_either") {
        return;
    }
    let server = Seaweed::start("pgfork-two");
    let mut cluster = Cluster::init(&PgVersion::get(18), None);
    let repo = RepoSetup::new(&cluster, None, "");
    repo.append_config(&format!(
        "repos = [\"main\", \"offsite\"]\n\n[repo.offsite]\n{}",
        server.repo_lines("two", &server.credentials_file())
    ));
    repo.enable_archiving(&cluster);
    cluster.start();
    repo.ok(&["stanza-create"]);
    repo.ok(&["stanza-create", "--repo", "offsite"]);
    cluster.pgbench_init("postgres", 1);
    let local = repo.backup("full")["label"].as_str().unwrap().to_string();
    let remote: serde_json::Value =
        serde_json::from_str(&repo.ok(&["backup", "--type", "full", "--repo", "offsite", "--json"])).unwrap();
    let remote = remote["label"].as_str().unwrap().to_string();
    cluster.psql("postgres", "CREATE TABLE more AS SELECT generate_series(1, 100000) AS n");
    archive_now(&repo);

    // Every archived segment is in both repositories.
    let infos: serde_json::Value = repo.info();
    let infos = infos.as_array().unwrap_or_else(|| panic!("one report per repository: {infos}"));
    assert_eq!(infos.len(), 2);
    assert_eq!(infos[0]["repo"], "main");
    assert_eq!(infos[1]["repo"], "offsite");
    // (Each repository's retention removed the WAL its own oldest set does not need.)
    assert_eq!(infos[0]["archive"][0]["max"], infos[1]["archive"][0]["max"], "the archives end apart");
    assert_eq!(infos[0]["sets"][0]["label"], local.as_str());
    assert_eq!(infos[1]["sets"][0]["label"], remote.as_str());

    // archive-get takes the first repository that has a file: remove it from the first.
    let segment = infos[0]["archive"][0]["max"].as_str().unwrap().to_string();
    std::fs::remove_file(repo.repo_path().join("main/archive").join(&segment[..8]).join(&segment)).unwrap();
    let dir = PgDir::new(None, "two-");
    let fetched = dir.path().join("seg");
    repo.ok(&["archive-get", &segment, fetched.to_str().unwrap(), "--no-prefetch"]);
    assert_eq!(std::fs::metadata(&fetched).unwrap().len(), 16 << 20);

    // A restore from either repository recovers the same data.
    for (name, label) in [("main", &local), ("offsite", &remote)] {
        let data = dir.path().join(name);
        repo.ok(&["restore", "--repo", name, "--set", label, "--data", data.to_str().unwrap()]);
        let copy = start_copy(&cluster, &data);
        assert_eq!(copy.psql("postgres", "SELECT count(*) FROM pgbench_accounts"), "100000");
    }
}

#[test]
fn a_server_that_dies_fails_the_backup_and_the_push_cleanly() {
    if !can_run("a_server_that_dies_fails_the_backup_and_the_push_cleanly") {
        return;
    }
    let mut server = Seaweed::start("pgfork-dies");
    let (cluster, repo) = s3_cluster(&server, "dies", "");
    cluster.pgbench_init("postgres", 5);

    // Killed during a backup: the backup fails naming the endpoint, and no set is listed.
    let backup = repo.command(&["backup", "--type", "full"]).stderr(std::process::Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(800));
    server.kill();
    let out = backup.wait_with_output().unwrap();
    assert!(!out.status.success(), "the backup succeeded while the server was down");
    assert!(stderr_of(&out).contains(&server.endpoint.replace("http://", "")), "{}", stderr_of(&out));

    // Killed: a push fails (PostgreSQL keeps the segment and retries).
    let segment = cluster.psql("postgres", "SELECT pg_walfile_name(pg_current_wal_lsn())");
    let path = cluster.data.join("pg_wal").join(&segment);
    let out = repo.run(&["archive-push", path.to_str().unwrap()]);
    assert!(!out.status.success());

    // Back up: the next backup removes the leftovers and succeeds; the push succeeds.
    server.restart();
    let info = repo.info();
    assert_eq!(info["sets"].as_array().unwrap().len(), 1, "a half-written set is listed: {info}");
    repo.backup("full");
    repo.ok(&["archive-push", path.to_str().unwrap()]);
    // Nothing of the failed backup is left: every set in the bucket has its manifest.
    let bucket = server.storage("dies");
    let keys: Vec<String> = bucket.list("main/backup/").unwrap().into_iter().map(|o| o.key).collect();
    let sets: std::collections::BTreeSet<&str> = keys.iter().filter_map(|k| k.split('/').nth(2)).collect();
    for set in sets {
        assert!(keys.contains(&format!("main/backup/{set}/manifest")), "{set} was left without a manifest");
    }
    let out = repo.run(&["scrub"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn wrong_credentials_a_missing_bucket_and_no_server_are_named() {
    if !can_run("wrong_credentials_a_missing_bucket_and_no_server_are_named") {
        return;
    }
    let server = Seaweed::start("pgfork-creds");
    let mut cluster = Cluster::init(&PgVersion::get(15), None);
    cluster.start();
    let dir = PgDir::new(None, "creds-");
    let bad = dir.path().join("bad-credentials");
    std::fs::write(&bad, "[default]\naws_access_key_id = pgfork-test-key\naws_secret_access_key = not-the-secret\n")
        .unwrap();
    std::fs::set_permissions(&bad, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    chown_postgres(&bad);
    let good = server.credentials_file();
    let cases = [
        ("wrong secret", server.repo_lines("x", &bad), "denied"),
        ("missing bucket", server.repo_lines("x", &good).replace("pgfork-creds", "no-such-bucket"), "does not exist"),
        ("no server", server.repo_lines("x", &good).replace(&server.endpoint, "http://127.0.0.1:9"), "127.0.0.1:9"),
    ];
    for (case, lines, expected) in cases {
        let repo = RepoSetup::new(&cluster, None, &lines);
        for args in [&["stanza-create"][..], &["info"]] {
            let out = repo.run(args);
            let stderr = stderr_of(&out);
            assert!(!out.status.success(), "{case}: {args:?} succeeded");
            assert!(stderr.contains(expected), "{case}: {args:?}: {stderr}");
            assert!(stderr.contains("127.0.0.1"), "{case}: the endpoint is not named: {stderr}");
            assert!(!stderr.contains("not-the-secret"), "{case}: the secret appears: {stderr}");
        }
        assert!(!repo.repo_path().exists(), "{case}: something was written locally");
    }
}

/// Pushes two files of one name and different content at the same time, `rounds` times; exactly
/// one wins each round (or, with the candidate protocol, both may back off: then one wins a retry).
fn race_pushes(repo: &RepoSetup, cluster: &Cluster, rounds: u8) {
    // A segment of this cluster (same system identifier), pushed under other names.
    let name = std::fs::read_dir(cluster.data.join("pg_wal"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.len() == 24)
        .unwrap();
    let original = std::fs::read(cluster.data.join("pg_wal").join(&name)).unwrap();
    let dir = PgDir::new(None, "s3-race-");
    for round in 0..rounds {
        let segment = format!("{}{:02X}", &name[..22], 0x60 + round);
        let paths: Vec<(std::path::PathBuf, Vec<u8>)> = (0..2u8)
            .map(|side| {
                let side_dir = dir.path().join(format!("{round}-{side}"));
                std::fs::create_dir(&side_dir).unwrap();
                let mut bytes = original.clone();
                bytes[4096] ^= side + 1;
                let path = side_dir.join(&segment);
                std::fs::write(&path, &bytes).unwrap();
                chown_postgres(&path);
                (path, bytes)
            })
            .collect();
        let push = |path: &Path| {
            let mut push = repo.command(&["archive-push", path.to_str().unwrap()]);
            std::thread::spawn(move || push.output().unwrap().status.success())
        };
        let handles: Vec<_> = paths.iter().map(|(p, _)| push(p)).collect();
        let mut outcomes: Vec<bool> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(outcomes.iter().filter(|ok| **ok).count() <= 1, "round {round}: both pushes succeeded");
        if !outcomes.contains(&true) {
            // Both saw each other and backed off: PostgreSQL retries; the first retry wins.
            outcomes =
                paths.iter().map(|(p, _)| repo.run(&["archive-push", p.to_str().unwrap()]).status.success()).collect();
            assert_eq!(outcomes, vec![true, false], "round {round}: the retries");
        }
        let winner = &paths[outcomes.iter().position(|ok| *ok).unwrap()].1;
        let fetched = dir.path().join(format!("fetched-{round}"));
        repo.ok(&["archive-get", &segment, fetched.to_str().unwrap(), "--no-prefetch"]);
        assert_eq!(&std::fs::read(&fetched).unwrap(), winner, "round {round}: the archive holds the loser");
    }
}

#[test]
fn concurrent_pushes_of_different_content_in_s3_have_one_winner() {
    if !can_run("concurrent_pushes_of_different_content_in_s3_have_one_winner") {
        return;
    }
    let server = Seaweed::start("pgfork-race");
    // SeaweedFS honours If-None-Match: stanza-create finds it, and pushes use it.
    let (cluster, repo) = s3_cluster(&server, "race", "");
    let created: serde_json::Value = serde_json::from_str(&repo.ok(&["stanza-create", "--json"])).unwrap();
    assert_eq!(created["exclusive_create"], true, "{created}");
    race_pushes(&repo, &cluster, 4);
    // Without it (a server that ignores the header, as Garage 2.5 does): pgfork's own protocol.
    let (cluster, repo) = s3_cluster(&server, "race-nocond", "conditional_create = false\n");
    let created: serde_json::Value = serde_json::from_str(&repo.ok(&["stanza-create", "--json"])).unwrap();
    assert_eq!(created["exclusive_create"], false, "{created}");
    race_pushes(&repo, &cluster, 4);
}
