//! Nothing silently wrong: regressions of defects found by trying pgfork as an adversary would.
//! Each test names the defect it pins: corrupt archived WAL that ended recovery early, concurrent
//! pushes of different content that both succeeded, root-owned records, stale temporaries, a
//! prefetch spool served to the wrong stanza, a time target past the archive's end, a panic on a
//! non-ASCII label, and late or vague refusals.

mod common;

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::heartbeat::*;
use common::*;

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs pgfork `args` with another configuration file (and the repository's passphrase).
fn with_config(repo: &RepoSetup, config: &Path, args: &[&str]) -> std::process::Output {
    let mut command = std::process::Command::new(server_side_pgfork());
    command.args(args).arg("--config").arg(config);
    if let Some(pass) = &repo.passphrase {
        command.env("PGFORK_PASSPHRASE", pass);
    }
    command.output().unwrap()
}

/// The archived object of segment `name`.
fn archived(repo: &RepoSetup, name: &str) -> PathBuf {
    repo.repo_path().join("main/archive").join(&name[..8]).join(name)
}

/// Flips one byte in the middle of a stored object, past its header.
fn flip_middle(path: &Path) {
    let file = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let at = file.metadata().unwrap().len() / 2;
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, at).unwrap();
    file.write_all_at(&[byte[0] ^ 0x10], at).unwrap();
}

/// An archiving PostgreSQL 18 cluster (encrypted repository or not) with a full backup, then 3 s of
/// heartbeats archived after it; returns the beats and the archived segments written after the set.
fn cluster_with_wal_after_the_set(passphrase: Option<&str>) -> (Cluster, RepoSetup, Vec<Beat>, Vec<String>) {
    let mut cluster = Cluster::init(&PgVersion::get(18), None);
    let repo = RepoSetup::new(&cluster, passphrase, "");
    repo.enable_archiving(&cluster);
    cluster.start();
    repo.ok(&["stanza-create"]);
    cluster.psql("postgres", "CREATE TABLE heartbeat (id serial PRIMARY KEY, ts timestamptz, txid bigint, lsn pg_lsn)");
    let set_label = repo.backup("full")["label"].as_str().unwrap().to_string();
    let info = repo.info();
    let set = info["sets"].as_array().unwrap().iter().find(|s| s["label"] == set_label.as_str()).unwrap();
    let set_stop = set["wal_stop"].as_str().unwrap().to_string();
    let mut after = Vec::new();
    let mut beats = Vec::new();
    for _ in 0..3 {
        beats.extend(heartbeats(&cluster, 10, None));
        after.push(cluster.psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())"));
    }
    archive_now(&repo);
    after.retain(|segment| *segment > set_stop);
    assert!(!after.is_empty());
    (cluster, repo, beats, after)
}

/// Regression: a byte flipped in an archived segment made archive-get exit 1 ("not archived") in
/// an encrypted repository, and return altered content with exit 0 in an unencrypted one; recovery
/// then ended early and promoted without the data. Now archive-get exits 126, PostgreSQL aborts
/// recovery instead of promoting, and verify names the segment.
fn corrupt_archived_wal_aborts_recovery(passphrase: Option<&str>) {
    let (cluster, repo, beats, after) = cluster_with_wal_after_the_set(passphrase);
    let damaged = &after[0];
    flip_middle(&archived(&repo, damaged));

    let dir = PgDir::new(None, "corrupt-");
    let dest = dir.path().join("seg");
    let out = repo.run(&["archive-get", damaged, dest.to_str().unwrap(), "--no-prefetch"]);
    assert_eq!(out.status.code(), Some(126), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains(damaged.as_str()), "{}", stderr_of(&out));
    assert!(!dest.exists(), "damaged content was delivered");
    let out = repo.run(&["archive-get", "00000001000000FF000000FF", dest.to_str().unwrap(), "--no-prefetch"]);
    assert_eq!(out.status.code(), Some(1), "an absent file is still exit 1");

    // Recovery to the end of the archive: the server must stop at the damaged segment, not promote.
    let data = dir.path().join("data");
    repo.ok(&["restore", "--data", data.to_str().unwrap(), "--type", "default", "--target-action", "promote"]);
    let port = free_port();
    append(&data.join("postgresql.auto.conf"), &format!("port = {port}\n"));
    let log = data.with_extension("log");
    let _ = run_as_postgres(
        &cluster.version.bin("pg_ctl"),
        &["start", "-w", "-t", "60", "-D", data.to_str().unwrap(), "-l", log.to_str().unwrap()],
    );
    let _server = RunningFork::beside(&cluster, &data, port);
    let deadline = Instant::now() + Duration::from_secs(60);
    while data.join("postmaster.pid").exists() {
        assert!(Instant::now() < deadline, "the server kept running past a damaged segment");
        std::thread::sleep(Duration::from_millis(200));
    }
    let server_log = std::fs::read_to_string(&log).unwrap();
    assert!(
        !server_log.contains("selected new timeline ID"),
        "recovery promoted past a damaged segment:\n{server_log}"
    );
    assert!(server_log.contains(damaged.as_str()), "the log does not name {damaged}:\n{server_log}");

    // verify to a time after the damage is not proven and names the segment.
    let target = &beats.last().unwrap().ts;
    let out = repo.run(&["verify", "--type", "time", "--target", target, "--output", "json"]);
    assert!(!out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["proven"], false);
    assert!(report.to_string().contains(damaged.as_str()), "verify does not name {damaged}: {report}");
}

#[test]
fn corrupt_archived_wal_aborts_recovery_encrypted() {
    if can_run("corrupt_archived_wal_aborts_recovery_encrypted") {
        corrupt_archived_wal_aborts_recovery(Some("integrity pass"));
    }
}

#[test]
fn corrupt_archived_wal_aborts_recovery_unencrypted() {
    if can_run("corrupt_archived_wal_aborts_recovery_unencrypted") {
        corrupt_archived_wal_aborts_recovery(None);
    }
}

/// Regression: two concurrent pushes of one segment name with different contents both exited 0
/// and the archive kept either. Now exactly one wins; the other fails, and the archive holds the
/// winner's content.
#[test]
fn concurrent_pushes_of_different_content_have_one_winner() {
    if !can_run("concurrent_pushes_of_different_content_have_one_winner") {
        return;
    }
    let mut cluster = Cluster::init(&PgVersion::get(18), None);
    cluster.start();
    let repo = RepoSetup::new(&cluster, None, "");
    repo.ok(&["stanza-create"]);
    let name = cluster.psql("postgres", "SELECT pg_walfile_name(pg_current_wal_lsn())");
    let original = std::fs::read(cluster.data.join("pg_wal").join(&name)).unwrap();
    let dir = PgDir::new(None, "race-");
    for round in 0..6u8 {
        let segment = format!("{}{:02X}", &name[..22], 0x40 + round);
        let mut paths = Vec::new();
        for side in 0..2u8 {
            let side_dir = dir.path().join(format!("{round}-{side}"));
            std::fs::create_dir(&side_dir).unwrap();
            let mut bytes = original.clone();
            // Past the long page header: same cluster, different content.
            bytes[4096] ^= side + 1;
            let path = side_dir.join(&segment);
            std::fs::write(&path, &bytes).unwrap();
            paths.push((path, bytes));
        }
        let pushes: Vec<_> = paths
            .iter()
            .map(|(path, _)| {
                let mut push = repo.command(&["archive-push", path.to_str().unwrap()]);
                std::thread::spawn(move || push.output().unwrap())
            })
            .collect();
        let outcomes: Vec<bool> = pushes.into_iter().map(|p| p.join().unwrap().status.success()).collect();
        assert_eq!(outcomes.iter().filter(|ok| **ok).count(), 1, "round {round}: {outcomes:?}");
        let winner = &paths[outcomes.iter().position(|ok| *ok).unwrap()].1;
        let fetched = dir.path().join(format!("fetched-{round}"));
        repo.ok(&["archive-get", &segment, fetched.to_str().unwrap(), "--no-prefetch"]);
        assert_eq!(&std::fs::read(&fetched).unwrap(), winner, "round {round}: the archive holds the loser");
    }
}

/// Regression: the verification record written by verify (as root) was root:root 0640, so `info`
/// run by the repository's owner failed with "Permission denied"; and a killed archive-push left
/// its temporary in the archive forever.
#[test]
fn records_written_as_root_belong_to_the_owner_and_stale_temporaries_go() {
    if !can_run("records_written_as_root_belong_to_the_owner_and_stale_temporaries_go") {
        return;
    }
    let (cluster, repo) = archiving_cluster(&PgVersion::get(15));
    chown_postgres(&repo.repo_path());
    repo.ok(&["verify"]);
    let owner = std::fs::metadata(repo.repo_path()).unwrap().uid();
    for entry in walkdir::WalkDir::new(repo.repo_path()) {
        let entry = entry.unwrap();
        assert_eq!(entry.metadata().unwrap().uid(), owner, "{} belongs to root", entry.path().display());
    }
    let out = std::process::Command::new("runuser")
        .args(["-u", PG_USER, "--"])
        .arg(server_side_pgfork())
        .args(["info", "--config", repo.config.to_str().unwrap()])
        .env("PGFORK_PASSPHRASE", repo.passphrase.as_deref().unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "info as the owner after verify: {}", stderr_of(&out));

    // What a SIGKILLed push leaves (a pid that cannot exist) is removed by the next push.
    let segment = cluster.psql("postgres", "SELECT pg_walfile_name(pg_current_wal_lsn())");
    let stale = archived(&repo, &segment).with_file_name(format!(".{segment}.pgfork-tmp.4194399.0"));
    std::fs::write(&stale, b"half a segment").unwrap();
    archive_now(&repo);
    assert!(!stale.exists(), "the next push left a dead push's temporary");
}

/// Regression: archive-get served files from the prefetch spool without knowing which repository
/// or cluster they came from, and without checking them.
#[test]
fn the_prefetch_spool_serves_only_checked_files_of_its_own_stanza() {
    if !can_run("the_prefetch_spool_serves_only_checked_files_of_its_own_stanza") {
        return;
    }
    let (_cluster, repo, _, after) = cluster_with_wal_after_the_set(None);
    assert!(after.len() >= 2);
    let dir = PgDir::new(None, "spool-");
    let wal = dir.path().join("pg_wal");
    std::fs::create_dir(&wal).unwrap();
    chown_postgres(&wal);
    // Fetching the first segment starts the prefetcher, which spools the next ones.
    repo.ok(&["archive-get", &after[0], wal.join(&after[0]).to_str().unwrap()]);
    let next = &after[1];
    let deadline = Instant::now() + Duration::from_secs(30);
    let spooled = loop {
        let found = walkdir::WalkDir::new(&wal)
            .into_iter()
            .filter_map(|e| e.ok())
            .find(|e| e.file_name().to_string_lossy() == next.as_str());
        if let Some(found) = found {
            break found.path().to_path_buf();
        }
        assert!(Instant::now() < deadline, "nothing was prefetched");
        std::thread::sleep(Duration::from_millis(100));
    };
    let spool_dir = spooled.parent().unwrap().to_path_buf();
    assert!(spool_dir.file_name().unwrap().to_string_lossy().starts_with(".pgfork-prefetch-"));

    // A spooled file changed on disk is not served: the repository's copy is.
    std::fs::write(&spooled, b"not a segment").unwrap();
    let direct = dir.path().join("direct");
    repo.ok(&["archive-get", next, direct.to_str().unwrap(), "--no-prefetch"]);
    repo.ok(&["archive-get", next, wal.join(next).to_str().unwrap(), "--no-prefetch"]);
    assert_eq!(std::fs::read(wal.join(next)).unwrap(), std::fs::read(&direct).unwrap());

    // Another stanza's archive-get into the same pg_wal never sees this spool.
    let mut other = Cluster::init(&PgVersion::get(18), None);
    other.start();
    let other_repo = RepoSetup::new(&other, None, "");
    other_repo.ok(&["stanza-create"]);
    std::fs::copy(&direct, spool_dir.join(next)).unwrap();
    let out = other_repo.run(&["archive-get", next, wal.join("other").to_str().unwrap(), "--no-prefetch"]);
    assert_eq!(out.status.code(), Some(1), "another stanza served a spooled file: {}", stderr_of(&out));
}

/// Regression: a time target past the archive's end passed the pre-flight when nothing after the
/// set was archived (the server later died with "recovery ended before configured recovery target
/// was reached").
#[test]
fn a_time_target_past_the_set_with_nothing_archived_after_it_is_refused() {
    if !can_run("a_time_target_past_the_set_with_nothing_archived_after_it_is_refused") {
        return;
    }
    let (_cluster, repo) = archiving_cluster(&PgVersion::get(18));
    let info = repo.info();
    let set = &info["sets"][0];
    let stop = set["wal_stop"].as_str().unwrap();
    for file in walkdir::WalkDir::new(repo.repo_path().join("main/archive")).into_iter().filter_map(|e| e.ok()) {
        let name = file.file_name().to_string_lossy().into_owned();
        if file.file_type().is_file() && name.len() >= 24 && name[..24] >= *stop {
            std::fs::remove_file(file.path()).unwrap();
        }
    }
    let later = (chrono::Utc::now() + chrono::Duration::minutes(10)).format("%Y-%m-%d %H:%M:%S+00").to_string();
    let dir = PgDir::new(None, "late-");
    let target = dir.path().join("data");
    let out = repo.run(&["restore", "--data", target.to_str().unwrap(), "--type", "time", "--target", &later]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("after the end of the archive"), "{}", stderr_of(&out));
    assert!(!target.exists());
}

/// Regression: `restore --set 20250715-01365é` panicked (exit 101) slicing the label; refusals came
/// late or vague: mount as non-root failed with a raw I/O error, a missing repository was not
/// named, and a configured cipher that disagreed with the stanza's asked for a passphrase.
#[test]
fn bad_input_is_refused_clearly_and_never_panics() {
    if !can_run("bad_input_is_refused_clearly_and_never_panics") {
        return;
    }
    let mut cluster = Cluster::init(&PgVersion::get(15), None);
    cluster.start();
    let repo = RepoSetup::new(&cluster, Some("pw"), "");
    repo.ok(&["stanza-create"]);
    for label in ["20250715-01365é", "é", "20250715-013657F_20250715-01372éI", "\u{1F600}\u{1F600}\u{1F600}\u{1F600}"]
    {
        for command in [&["restore", "--data", "/tmp/pgfork-never", "--set", label][..], &["info", "--set", label]] {
            let out = repo.run(command);
            assert_ne!(out.status.code(), Some(101), "{command:?} panicked: {}", stderr_of(&out));
            assert!(!out.status.success());
            assert!(stderr_of(&out).contains("backup label"), "{command:?}: {}", stderr_of(&out));
        }
    }

    let mountpoint = PgDir::new(None, "mp-");
    let out = std::process::Command::new("runuser")
        .args(["-u", PG_USER, "--"])
        .arg(server_side_pgfork())
        .args(["mount", mountpoint.path().to_str().unwrap(), "--config", repo.config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("root"), "{}", stderr_of(&out));

    let config = std::fs::read_to_string(&repo.config).unwrap();
    let missing = repo.dir.path().join("no-such-repo");
    let moved = repo.dir.path().join("moved.toml");
    std::fs::write(&moved, config.replace(repo.repo_path().to_str().unwrap(), missing.to_str().unwrap())).unwrap();
    let out = with_config(&repo, &moved, &["info"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr_of(&out).contains(missing.to_str().unwrap()), "{}", stderr_of(&out));

    let plain = repo.dir.path().join("plain.toml");
    std::fs::write(&plain, config.replace("cipher = \"aes-256-gcm\"", "cipher = \"none\"")).unwrap();
    let out = with_config(&repo, &plain, &["info"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr_of(&out).contains("created with cipher aes-256-gcm"), "{}", stderr_of(&out));
}
